/* A WASI command for the host services tests: the payload is one host call,
 * its words separated by single spaces:
 *   put BUCKET KEY VALUE | get BUCKET KEY | del BUCKET KEY | keys BUCKET
 *   oput BUCKET NAME DATA | oget BUCKET NAME | odel BUCKET NAME | olist BUCKET
 *   pub SUBJECT DATA | req SUBJECT DATA TIMEOUT_MS | http METHOD URL BODY
 *   badptr BUCKET KEY (a buffer outside memory)
 * The reply is "ok", the bytes the call returned, or "error CODE MESSAGE". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nex.h"

static char payload[1 << 16];
static char out[1 << 20];

static int failed(int32_t code) {
    char message[1024];
    int32_t n = nex_last_error(message, sizeof message - 1);
    message[n < (int32_t)sizeof message ? n : (int32_t)sizeof message - 1] = 0;
    printf("error %d %s", code, message);
    return 0;
}

static int result(int32_t n) {
    if (n < 0) return failed(n);
    fwrite(out, 1, (size_t)n < sizeof out ? (size_t)n : sizeof out, stdout);
    return 0;
}

static int done(int32_t n) {
    if (n < 0) return failed(n);
    printf("ok");
    return 0;
}

static char *word(char **rest) {
    char *start = *rest;
    char *space = start ? strchr(start, ' ') : NULL;
    if (space) {
        *space = 0;
        *rest = space + 1;
    } else {
        *rest = NULL;
    }
    return start ? start : "";
}

int main(void) {
    size_t n = fread(payload, 1, sizeof payload - 1, stdin);
    payload[n] = 0;
    char *rest = payload;
    char *op = word(&rest);
    if (strcmp(op, "put") == 0) {
        char *bucket = word(&rest), *key = word(&rest);
        return done(nex_kv_put_s(bucket, key, rest ? rest : ""));
    } else if (strcmp(op, "get") == 0) {
        char *bucket = word(&rest), *key = word(&rest);
        return result(nex_kv_get_s(bucket, key, out, sizeof out));
    } else if (strcmp(op, "del") == 0) {
        char *bucket = word(&rest), *key = word(&rest);
        return done(nex_kv_delete_s(bucket, key));
    } else if (strcmp(op, "keys") == 0) {
        char *bucket = word(&rest);
        return result(nex_kv_keys(bucket, strlen(bucket), out, sizeof out));
    } else if (strcmp(op, "oput") == 0) {
        char *bucket = word(&rest), *name = word(&rest);
        const char *data = rest ? rest : "";
        return done(nex_object_put(bucket, strlen(bucket), name, strlen(name), data, strlen(data)));
    } else if (strcmp(op, "oget") == 0) {
        char *bucket = word(&rest), *name = word(&rest);
        return result(nex_object_get(bucket, strlen(bucket), name, strlen(name), out, sizeof out));
    } else if (strcmp(op, "odel") == 0) {
        char *bucket = word(&rest), *name = word(&rest);
        return done(nex_object_delete(bucket, strlen(bucket), name, strlen(name)));
    } else if (strcmp(op, "olist") == 0) {
        char *bucket = word(&rest);
        return result(nex_object_list(bucket, strlen(bucket), out, sizeof out));
    } else if (strcmp(op, "pub") == 0) {
        char *subject = word(&rest);
        return done(nex_publish_s(subject, rest ? rest : ""));
    } else if (strcmp(op, "req") == 0) {
        char *subject = word(&rest), *data = word(&rest);
        int32_t timeout_ms = rest ? atoi(rest) : 0;
        return result(nex_request_s(subject, data, timeout_ms, out, sizeof out));
    } else if (strcmp(op, "http") == 0) {
        char *method = word(&rest), *url = word(&rest);
        int32_t status = 0;
        int32_t got = nex_http_s(method, url, rest ? rest : "", 0, &status, out, sizeof out);
        if (got < 0) return failed(got);
        printf("%d ", status);
        return result(got);
    } else if (strcmp(op, "badptr") == 0) {
        char *bucket = word(&rest), *key = word(&rest);
        return result(nex_kv_get_s(bucket, key, (void *)0x7ffffff0, 4096));
    }
    printf("unknown op %s", op);
    return 0;
}
