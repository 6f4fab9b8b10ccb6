/* The program of the test images: reports what its container gave it; with a last
   argument "serve" it then ticks until SIGTERM, otherwise it exits with 0. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;
static void on_term(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    char cwd[512];
    const char *greeting = getenv("GREETING"), *mode = getenv("MODE");
    printf("cwd %s\n", getcwd(cwd, sizeof cwd) ? cwd : "?");
    printf("uid %d gid %d\n", (int)getuid(), (int)getgid());
    printf("GREETING %s MODE %s\n", greeting ? greeting : "-", mode ? mode : "-");
    for (int i = 0; i < argc; i++) printf("arg %s\n", argv[i]);
    fflush(stdout);
    fprintf(stderr, "hello from stderr\n");
    if (argc < 2 || strcmp(argv[argc - 1], "serve") != 0) return 0;
    for (int tick = 0; !stopping; tick++) {
        printf("tick %d\n", tick);
        fflush(stdout);
        usleep(50 * 1000);
    }
    printf("stopping\n");
    return 0;
}
