/* A job: prints its arguments and exits with the code of its first argument. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) printf("job arg %s\n", argv[i]);
    return argc > 1 ? atoi(argv[1]) : 0;
}
