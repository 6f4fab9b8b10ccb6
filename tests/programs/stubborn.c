/* Ignores SIGTERM and forks a child that does too: stop must still end both. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    signal(SIGTERM, SIG_IGN);
    pid_t child = fork();
    printf("%s %d\n", child == 0 ? "child" : "parent", (int)getpid());
    fflush(stdout);
    for (;;) pause();
}
