/* A WASI command for the wasm tests: what it does depends on its payload. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char payload[1 << 16];

int main(int argc, char **argv) {
    size_t n = fread(payload, 1, sizeof payload - 1, stdin);
    payload[n] = 0;
    if (strcmp(payload, "argv") == 0) {
        printf("%d %s %s", argc, argv[0], argc > 1 ? argv[1] : "-");
    } else if (strncmp(payload, "env ", 4) == 0) {
        const char *value = getenv(payload + 4);
        printf("%s", value ? value : "(unset)");
    } else if (strcmp(payload, "log") == 0) {
        fprintf(stderr, "first line\nsecond line\n");
        fprintf(stderr, "no newline at the end");
        printf("logged");
    } else if (strcmp(payload, "trap") == 0) {
        __builtin_trap();
    } else if (strcmp(payload, "exit") == 0) {
        printf("not a reply");
        exit(3);
    } else if (strcmp(payload, "loop") == 0) {
        volatile unsigned long spins = 0;
        for (;;) spins++;
    } else if (strcmp(payload, "hog") == 0) {
        char **kept = NULL;  /* a list of every block, so the compiler cannot drop them */
        for (;;) {
            char **block = malloc(1 << 20);
            if (!block) abort();
            memset(block, 1, 1 << 20);
            *block = (char *)kept;
            kept = block;
        }
    } else {
        for (size_t i = 0; i < n; i++) putchar(toupper((unsigned char)payload[i]));
    }
    return 0;
}
