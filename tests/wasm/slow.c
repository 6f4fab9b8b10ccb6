/* A WASI command for the concurrency tests (tests/test_concurrency.py).
 *
 *   "gate TEXT"  asks the subject in the GATE environment variable (a host request that
 *                the test answers when it lets the call go on) and replies with the answer
 *   "sleep MS"   sleeps MS milliseconds (WASI poll_oneoff: no CPU) and replies "slept MS"
 *   "count"      replies with how many calls this instance has seen: 1 in a fresh one
 *   "dirty"      leaves its global state changed, then traps
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nex.h"

static int calls;
static char payload[4096];

int main(void) {
    calls++;
    size_t n = fread(payload, 1, sizeof payload - 1, stdin);
    payload[n] = 0;
    if (strncmp(payload, "gate ", 5) == 0) {
        const char *gate = getenv("GATE");
        char answer[256];
        int32_t got = nex_request_s(gate ? gate : "", payload + 5, 20000, answer, sizeof answer - 1);
        if (got < 0) {
            char message[256];
            int32_t m = nex_last_error(message, sizeof message - 1);
            message[m < (int32_t)sizeof message ? m : (int32_t)sizeof message - 1] = 0;
            fprintf(stderr, "gate: %s\n", message);
            return 1;
        }
        answer[got < (int32_t)sizeof answer ? got : (int32_t)sizeof answer - 1] = 0;
        printf("%s", answer);
    } else if (strncmp(payload, "sleep ", 6) == 0) {
        long ms = strtol(payload + 6, NULL, 10);
        usleep((useconds_t)(ms * 1000));
        printf("slept %ld", ms);
    } else if (strcmp(payload, "count") == 0) {
        printf("%d", calls);
    } else if (strcmp(payload, "dirty") == 0) {
        calls += 100;
        memset(payload, 'x', sizeof payload - 1);
        __builtin_trap();
    }
    return 0;
}
