/* nex.h: the host services of Nex for WebAssembly functions (WASI preview 1 commands).
 *
 * Imports of the module "nex", all scoped to the function's namespace (see
 * docs/functions.md). Every call returns an int32_t: zero or more is success,
 * a negative value is one of the NEX_ERR_* codes, and nex_last_error() then gives
 * the message. Calls that produce bytes return their full length and write as
 * much as fits in `cap` bytes at `out`: a result larger than `cap` is cut, and
 * the call may be repeated with a larger buffer.
 *
 * Timeouts are in milliseconds; 0 means the default (2 s). No call outlives the
 * invocation's own time limit.
 */
#ifndef NEX_H
#define NEX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NEX_OK 0
#define NEX_ERR_INVALID -1     /* a bad argument: a bucket name, key or subject */
#define NEX_ERR_DENIED -2      /* outside the function's namespace, or not allowed by the node */
#define NEX_ERR_NOT_FOUND -3   /* no such key or object */
#define NEX_ERR_TIMEOUT -4     /* no answer in time */
#define NEX_ERR_TOO_LARGE -5   /* a value, message or body over its limit */
#define NEX_ERR_UNAVAILABLE -6 /* nobody answers the request, or NATS is not there */
#define NEX_ERR_FAILED -7      /* anything else (an HTTP server that refuses the connection, ...) */
#define NEX_ERR_MEMORY -8      /* a pointer and length outside the module's memory */

#define NEX_IMPORT(name) __attribute__((import_module("nex"), import_name(name)))

/* Key-value: the namespace's JetStream KV bucket `bucket` (letters, digits, '-'). */
NEX_IMPORT("kv_get") int32_t nex_kv_get(const char *bucket, size_t bucket_len, const char *key, size_t key_len,
                                        void *out, size_t cap);
NEX_IMPORT("kv_put") int32_t nex_kv_put(const char *bucket, size_t bucket_len, const char *key, size_t key_len,
                                        const void *value, size_t value_len);
NEX_IMPORT("kv_delete") int32_t nex_kv_delete(const char *bucket, size_t bucket_len, const char *key, size_t key_len);
/* The keys, each followed by '\n'. */
NEX_IMPORT("kv_keys") int32_t nex_kv_keys(const char *bucket, size_t bucket_len, char *out, size_t cap);

/* Object store: the namespace's JetStream object store `bucket`. */
NEX_IMPORT("object_get") int32_t nex_object_get(const char *bucket, size_t bucket_len, const char *name,
                                                size_t name_len, void *out, size_t cap);
NEX_IMPORT("object_put") int32_t nex_object_put(const char *bucket, size_t bucket_len, const char *name,
                                                size_t name_len, const void *data, size_t data_len);
NEX_IMPORT("object_delete") int32_t nex_object_delete(const char *bucket, size_t bucket_len, const char *name,
                                                      size_t name_len);
/* The names, each followed by '\n'. */
NEX_IMPORT("object_list") int32_t nex_object_list(const char *bucket, size_t bucket_len, char *out, size_t cap);

/* Messaging: subjects under nex.<namespace>. and the function's own trigger subjects. */
NEX_IMPORT("publish") int32_t nex_publish(const char *subject, size_t subject_len, const void *data, size_t data_len);
/* The reply's payload. */
NEX_IMPORT("request") int32_t nex_request(const char *subject, size_t subject_len, const void *data, size_t data_len,
                                          int32_t timeout_ms, void *out, size_t cap);

/* HTTP: method "GET", "POST", "PUT" or "DELETE", to the hosts the node allows.
 * headers: "Name: value" lines separated by '\n' (may be empty). The response's
 * status goes to *status (when not NULL), its body to out. */
NEX_IMPORT("http") int32_t nex_http(const char *method, size_t method_len, const char *url, size_t url_len,
                                    const char *headers, size_t headers_len, const void *body, size_t body_len,
                                    int32_t timeout_ms, int32_t *status, void *out, size_t cap);

/* The message of the last call that failed. */
NEX_IMPORT("last_error") int32_t nex_last_error(char *out, size_t cap);

/* Shorthands for NUL-terminated names and values. */
static inline int32_t nex_kv_get_s(const char *bucket, const char *key, void *out, size_t cap) {
    return nex_kv_get(bucket, strlen(bucket), key, strlen(key), out, cap);
}
static inline int32_t nex_kv_put_s(const char *bucket, const char *key, const char *value) {
    return nex_kv_put(bucket, strlen(bucket), key, strlen(key), value, strlen(value));
}
static inline int32_t nex_kv_delete_s(const char *bucket, const char *key) {
    return nex_kv_delete(bucket, strlen(bucket), key, strlen(key));
}
static inline int32_t nex_publish_s(const char *subject, const char *data) {
    return nex_publish(subject, strlen(subject), data, strlen(data));
}
static inline int32_t nex_request_s(const char *subject, const char *data, int32_t timeout_ms, void *out, size_t cap) {
    return nex_request(subject, strlen(subject), data, strlen(data), timeout_ms, out, cap);
}
static inline int32_t nex_http_s(const char *method, const char *url, const char *body, int32_t timeout_ms,
                                 int32_t *status, void *out, size_t cap) {
    return nex_http(method, strlen(method), url, strlen(url), "", 0, body, strlen(body), timeout_ms, status, out, cap);
}

#endif
