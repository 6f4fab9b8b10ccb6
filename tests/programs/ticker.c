/* A native service: prints a tick a line until stopped; exits 0 on SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;
static void on_term(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    const char *greeting = getenv("GREETING");
    printf("started %s with %d args\n", greeting ? greeting : "-", argc - 1);
    for (int i = 1; i < argc; i++) printf("arg %s\n", argv[i]);
    fflush(stdout);
    fprintf(stderr, "a line on stderr\n");
    for (int tick = 0; !stopping; tick++) {
        printf("tick %d\n", tick);
        fflush(stdout);
        usleep(100 * 1000);
    }
    printf("stopping\n");
    return 0;
}
