/* A WebAssembly function (a WASI command): the payload on stdin, the reply on stdout. */
#include <ctype.h>
#include <stdio.h>

int main(void) {
    for (int c; (c = getchar()) != EOF;) putchar(toupper(c));
    return 0;
}
