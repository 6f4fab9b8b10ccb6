// upper in Go: the payload in upper case; the subject in the log.
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

func main() {
	payload, _ := io.ReadAll(os.Stdin)
	fmt.Fprintln(os.Stderr, "called on", os.Args[1])
	os.Stdout.Write(bytes.ToUpper(payload))
}
