/* A TCP service for health checks: listens on 127.0.0.1:<port> (argv[1]) and accepts
 * connections; given argv[2], stops listening after that many seconds but keeps running,
 * like a service whose port died while its process lives on. Exits 0 on SIGTERM. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;

static void on_term(int sig) { (void)sig; stopping = 1; }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: listener PORT [SECONDS]\n");
        return 2;
    }
    signal(SIGTERM, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int port = atoi(argv[1]);
    double serve_for = argc > 2 ? atof(argv[2]) : -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("listening on %d\n", port);
    time_t started = time(NULL);
    while (!stopping) {
        if (fd >= 0 && serve_for >= 0 && difftime(time(NULL), started) >= serve_for) {
            close(fd);
            fd = -1;
            printf("stopped listening\n");
        }
        if (fd < 0) {
            usleep(50000);
            continue;
        }
        fd_set ready;
        FD_ZERO(&ready);
        FD_SET(fd, &ready);
        struct timeval tick = {0, 50000};
        if (select(fd + 1, &ready, NULL, NULL, &tick) > 0) {
            int client = accept(fd, NULL, NULL);
            if (client >= 0)
                close(client);
        }
    }
    printf("stopping\n");
    return 0;
}
