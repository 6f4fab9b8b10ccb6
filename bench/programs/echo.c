/* A static TCP echo service for the tier benchmark: listens on 127.0.0.1:<port> (argv[1]) and
 * echoes what each connection sends, one connection at a time, until SIGTERM. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: echo PORT\n"); return 2; }
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 16) < 0) { perror("listen"); return 1; }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

        char buf[4096];
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            /* gVisor's host network (runsc 2022-12-19) fails a blocking read with EAGAIN now and
             * then: wait until the socket is readable, and read again. */
            if (n < 0 && errno == EAGAIN) { struct pollfd p = {.fd = c, .events = POLLIN}; poll(&p, 1, -1); continue; }
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) { if (n < 0) perror("read"); break; }
            if (write(c, buf, n) != n) { perror("write"); break; }
        }
        close(c);
    }
}
