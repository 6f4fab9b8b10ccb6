/* Reports what a workload can see and do, one "key value" line each; also the limit tests' loads.
 *
 *   probe report NODE_PID PATH...  what it sees, then exits 0
 *   probe hog MIB                  touches MIB MiB, one MiB at a time, then waits
 *   probe forkbomb                 forks until it cannot, says how far it got, then waits
 *   probe threads                  starts threads until it cannot, says how far it got, then waits
 *   probe connect PORT             connects to 127.0.0.1:PORT over TCP, says whether it could, exits 0
 *   probe spin                     burns CPU until stopped
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void result(const char *key, int ok) {
    if (ok) printf("%s ok\n", key);
    else printf("%s %s\n", key, strerror(errno));
}

static int can_read(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    char buf[16];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    return n >= 0;
}

static int can_write(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 0;
    ssize_t n = write(fd, "x", 1);
    close(fd);
    return n == 1;
}

static void status_field(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t len = strlen(name);
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, name, len) == 0 && line[len] == ':') {
            char *value = line + len + 1;
            while (*value == ' ' || *value == '\t') value++;
            printf("%s %s", name, value);
        }
    }
    if (f) fclose(f);
}

static void report(int argc, char **argv) {
    pid_t node = argc > 2 ? (pid_t)atoi(argv[2]) : 0;
    printf("uid %d\ngid %d\npid %d\n", (int)getuid(), (int)getgid(), (int)getpid());
    result("read_shadow", can_read("/etc/shadow"));
    for (int i = 3; i < argc; i++) {
        printf("read_path %s ", argv[i]);
        result("", can_read(argv[i]));
    }
    if (node > 1) result("kill_node", kill(node, SIGCONT) == 0);
    result("kill_init", kill(1, 0) == 0);
    result("write_root", can_write("/probe-was-here"));
    result("write_bin", can_write("/bin/probe-was-here"));
    result("write_tmp", can_write("/tmp/probe-was-here"));
    result("unshare_user", unshare(CLONE_NEWUSER) == 0);
#ifdef __x86_64__
    long ret, nr = 310, flags = CLONE_NEWUSER;  /* unshare through the 32-bit ABI */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(flags) : "memory");
    errno = ret < 0 ? (int)-ret : 0;
    result("unshare_user_i386", ret == 0);
#endif
    result("mkdir_proc", mkdir("/proc/probe", 0755) == 0);
    DIR *proc = opendir("/proc");
    printf("proc_pids");
    struct dirent *entry;
    while (proc && (entry = readdir(proc)) != NULL) {
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9') printf(" %s", entry->d_name);
    }
    printf("\n");
    if (proc) closedir(proc);
    FILE *net = fopen("/proc/net/dev", "r");
    char line[512];
    printf("net_ifaces");
    for (int n = 0; net && fgets(line, sizeof line, net); n++) {
        char *colon = strchr(line, ':');
        if (n < 2 || !colon) continue;
        *colon = 0;
        char *name = line;
        while (*name == ' ') name++;
        printf(" %s", name);
    }
    printf("\n");
    if (net) fclose(net);
    status_field("CapEff");
    status_field("CapBnd");
    status_field("NoNewPrivs");
    status_field("Seccomp");
    char host[256] = "";
    gethostname(host, sizeof host);
    printf("hostname %s\nend\n", host);
}

static void hog(long mib) {
    for (long i = 1; i <= mib; i++) {
        char *block = malloc(1 << 20);
        if (!block) { printf("malloc failed at %ld\n", i); fflush(stdout); break; }
        memset(block, 1, 1 << 20);
        if (i % 8 == 0) { printf("touched %ld MiB\n", i); fflush(stdout); }
    }
    printf("hog done\n");
    fflush(stdout);
    for (;;) pause();
}

static void *idle_thread(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

static void threads(void) {
    int started = 0, error;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 65536);
    while ((error = pthread_create(&thread, &attr, idle_thread, NULL)) == 0) started++;
    printf("threads %d stopped by %s\n", started, strerror(error));
    fflush(stdout);
    for (;;) pause();
}

static void connect_loopback(const char *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    result("connect", fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    fflush(stdout);
}

static void forkbomb(void) {
    int forks = 0;
    for (;;) {
        pid_t child = fork();
        if (child == 0) { for (;;) pause(); }
        if (child < 0) break;
        forks++;
    }
    printf("forks %d stopped by %s\n", forks, strerror(errno));
    fflush(stdout);
    for (;;) pause();
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "report";
    if (strcmp(mode, "hog") == 0) hog(argc > 2 ? atol(argv[2]) : 64);
    else if (strcmp(mode, "forkbomb") == 0) forkbomb();
    else if (strcmp(mode, "threads") == 0) threads();
    else if (strcmp(mode, "connect") == 0 && argc > 2) connect_loopback(argv[2]);
    else if (strcmp(mode, "spin") == 0) { printf("spinning\n"); for (volatile unsigned long i = 0;; i++) {} }
    else report(argc, argv);
    return 0;
}
