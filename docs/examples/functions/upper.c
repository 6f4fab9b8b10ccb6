/* upper.c: replies with its payload in upper case, after a greeting from the env. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    fprintf(stderr, "called on %s\n", argv[1]);        /* a log line */
    if (greeting) printf("%s: ", greeting);
    for (int c; (c = getchar()) != EOF;) putchar(toupper(c));
    return 0;
}
