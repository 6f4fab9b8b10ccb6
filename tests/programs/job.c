/* A job: prints its arguments and exits with the code of its first argument, saying so on
   stderr when that is not 0. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("job arg %s\n", argv[i]);
    int code = argc > 1 ? atoi(argv[1]) : 0;
    if (code != 0) fprintf(stderr, "job gives up with code %d\n", code);
    return code;
}
