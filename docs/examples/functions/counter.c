/* The example of docs/functions.md: a counter per key in the namespace's KV bucket
 * "counters". The payload names the key; the reply is the new count, which is
 * also published on the subject in the NOTIFY environment variable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nex.h"

/* Log the message of the host call that failed, and end the call with an error. */
static int fail(const char *what) {
    char message[512];
    int32_t n = nex_last_error(message, sizeof message - 1);
    message[n < (int32_t)sizeof message ? n : (int32_t)sizeof message - 1] = 0;
    fprintf(stderr, "%s: %s\n", what, message);
    return 1;
}

int main(void) {
    char key[256], value[32];
    size_t n = fread(key, 1, sizeof key - 1, stdin);
    key[n] = 0;

    long count = 0;
    int32_t got = nex_kv_get_s("counters", key, value, sizeof value - 1);
    if (got >= 0) {
        value[got < (int32_t)sizeof value ? got : (int32_t)sizeof value - 1] = 0;
        count = strtol(value, NULL, 10);
    } else if (got != NEX_ERR_NOT_FOUND) {
        return fail("cannot read the count");
    }
    snprintf(value, sizeof value, "%ld", count + 1);
    if (nex_kv_put_s("counters", key, value) < 0) return fail("cannot store the count");
    const char *notify = getenv("NOTIFY");
    if (notify && nex_publish_s(notify, value) < 0) return fail("cannot publish the count");
    printf("%s", value);
    return 0;
}
