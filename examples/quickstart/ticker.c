/* A service: ticks every second until SIGTERM (in its sandbox it is process 1, which has no
   default action for SIGTERM, so it says how to end). Its arguments and MODE go to its log. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t done;
static void stop(int sig) { done = sig; }

int main(int argc, char **argv) {
    signal(SIGTERM, stop);
    const char *mode = getenv("MODE");
    printf("started in mode %s with %d args\n", mode ? mode : "-", argc - 1);
    for (int i = 1; i < argc; i++) printf("arg %s\n", argv[i]);
    for (int i = 0; !done; i++) { printf("tick %d\n", i); fflush(stdout); sleep(1); }
    return 0;
}
