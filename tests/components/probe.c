/* A component of the world nex:function/function for the tests, in C without a WASI libc
 * or a bindings generator: the canonical ABI by hand. The payload is a command, its words
 * separated by single spaces:
 *   count (calls this instance has answered) | subject | error MESSAGE | trap | loop
 *   grow (until memory runs out)
 *   put BUCKET KEY VALUE | get BUCKET KEY | del BUCKET KEY | keys BUCKET
 *   oput BUCKET NAME DATA | oget BUCKET NAME | odel BUCKET NAME | olist BUCKET
 *   pub SUBJECT DATA | req SUBJECT DATA TIMEOUT_MS | http METHOD URL
 * Anything else is answered in upper case. A host call's error is the reply
 * "error KIND MESSAGE"; a get of nothing is "(none)". */
#include <stddef.h>
#include <stdint.h>

#define IMPORT(interface, name) __attribute__((import_module("nex:host/" interface "@0.1.0"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

typedef struct { const char *ptr; size_t len; } str;
typedef struct { str name, value; } header;

IMPORT("kv", "get") void kv_get(const char *, size_t, const char *, size_t, void *ret);
IMPORT("kv", "put") void kv_put(const char *, size_t, const char *, size_t, const char *, size_t, void *ret);
IMPORT("kv", "delete") void kv_delete(const char *, size_t, const char *, size_t, void *ret);
IMPORT("kv", "keys") void kv_keys(const char *, size_t, void *ret);
IMPORT("objects", "get") void objects_get(const char *, size_t, const char *, size_t, void *ret);
IMPORT("objects", "put") void objects_put(const char *, size_t, const char *, size_t, const char *, size_t, void *ret);
IMPORT("objects", "delete") void objects_delete(const char *, size_t, const char *, size_t, void *ret);
IMPORT("objects", "list-objects") void objects_list(const char *, size_t, void *ret);
IMPORT("messaging", "publish") void publish(const char *, size_t, const char *, size_t, const header *, size_t,
                                            void *ret);
IMPORT("messaging", "request") void request(const char *, size_t, const char *, size_t, const header *, size_t,
                                            int32_t has_timeout, uint32_t timeout_ms, void *ret);
IMPORT("http", "send") void http_send(const char *, size_t, const char *, size_t, const header *, size_t,
                                      const char *, size_t, int32_t has_timeout, uint32_t timeout_ms, void *ret);

extern unsigned char __heap_base;
static uintptr_t heap = 0;
static unsigned calls = 0;
static const char *kinds[] = {"invalid", "denied", "not-found", "timeout", "too-large", "unavailable", "failed"};

/* A bump allocator, emptied after every call (cabi_post_handle). */
EXPORT("cabi_realloc") __attribute__((noinline)) void *cabi_realloc(void *old, size_t old_size, size_t align, size_t size) {
    if (!heap) heap = (uintptr_t)&__heap_base;
    uintptr_t p = (heap + align - 1) & ~(uintptr_t)(align - 1);
    while (p + size > __builtin_wasm_memory_size(0) * 65536)
        if (__builtin_wasm_memory_grow(0, 1) == (size_t)-1) __builtin_trap();
    heap = p + size;
    unsigned char *to = (unsigned char *)p;
    for (size_t i = 0; i < old_size && i < size; i++) to[i] = ((unsigned char *)old)[i];
    return to;
}

EXPORT("cabi_post_handle") void post_handle(void *ret) { heap = (uintptr_t)&__heap_base; }

static size_t length(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
static int same(str a, const char *b) {
    size_t n = length(b);
    if (a.len != n) return 0;
    for (size_t i = 0; i < n; i++) if (a.ptr[i] != b[i]) return 0;
    return 1;
}

/* The next word of *rest, and *rest past it. */
static str word(str *rest) {
    size_t n = 0;
    while (n < rest->len && rest->ptr[n] != ' ') n++;
    str w = {rest->ptr, n};
    rest->ptr += n < rest->len ? n + 1 : n;
    rest->len -= n < rest->len ? n + 1 : n;
    return w;
}

/* The reply being built, in the call's heap. */
static char *out;
static size_t out_len;
static void put(const char *data, size_t n) {
    char *more = cabi_realloc(out, out_len, 1, out_len + n);
    for (size_t i = 0; i < n; i++) more[out_len + i] = data[i];
    out = more;
    out_len += n;
}
static void puts_(const char *s) { put(s, length(s)); }
static void put_number(uint64_t n) {
    char digits[24];
    int i = sizeof digits;
    do { digits[--i] = '0' + n % 10; n /= 10; } while (n);
    put(digits + i, sizeof digits - i);
}

/* The result of a host call, laid out by the canonical ABI: a discriminant, then the payload at 4. */
struct ret { uint8_t is_err; uint8_t _pad[3]; uint32_t a, b, c, d, e; };

static int host_failed(struct ret *r) {
    if (!r->is_err) return 0;
    /* host-error: kind (an enum, one byte) at 4, message (string) at 8 */
    uint8_t kind = *((uint8_t *)r + 4);
    puts_("error ");
    puts_(kind < 7 ? kinds[kind] : "?");
    puts_(" ");
    put((const char *)r->b, r->c);
    return 1;
}

static void ok(struct ret *r) { if (!host_failed(r)) puts_("ok"); }

static void option_bytes(struct ret *r) {
    if (host_failed(r)) return;
    /* option<list<u8>>: a discriminant at 4, the list at 8 */
    if (*((uint8_t *)r + 4) == 0) puts_("(none)");
    else put((const char *)r->b, r->c);
}

/* Where the result of handle lies: result<list<u8>, string> */
static struct { uint8_t is_err; uint8_t _pad[3]; const char *ptr; size_t len; } result;

EXPORT("handle") void *handle(const char *subject, size_t subject_len, const char *payload, size_t payload_len) {
    struct ret r = {0};
    str rest = {payload, payload_len};
    str op = word(&rest);
    out = 0;
    out_len = 0;
    calls++;
    result.is_err = 0;
    if (same(op, "count")) {
        put_number(calls);
    } else if (same(op, "subject")) {
        put(subject, subject_len);
    } else if (same(op, "error")) {
        result.is_err = 1;
        put(rest.ptr, rest.len);
    } else if (same(op, "trap")) {
        __builtin_trap();
    } else if (same(op, "loop")) {
        for (volatile int spin = 1; spin;) {}
    } else if (same(op, "grow")) {
        for (;;) cabi_realloc(0, 0, 1, 1 << 20);
    } else if (same(op, "put")) {
        str bucket = word(&rest), key = word(&rest);
        kv_put(bucket.ptr, bucket.len, key.ptr, key.len, rest.ptr, rest.len, &r);
        ok(&r);
    } else if (same(op, "get")) {
        str bucket = word(&rest), key = word(&rest);
        kv_get(bucket.ptr, bucket.len, key.ptr, key.len, &r);
        option_bytes(&r);
    } else if (same(op, "del")) {
        str bucket = word(&rest), key = word(&rest);
        kv_delete(bucket.ptr, bucket.len, key.ptr, key.len, &r);
        ok(&r);
    } else if (same(op, "keys")) {
        str bucket = word(&rest);
        kv_keys(bucket.ptr, bucket.len, &r);
        if (!host_failed(&r)) {
            str *keys = (str *)r.a;
            for (uint32_t i = 0; i < r.b; i++) { put(keys[i].ptr, keys[i].len); puts_("\n"); }
        }
    } else if (same(op, "oput")) {
        str bucket = word(&rest), name = word(&rest);
        objects_put(bucket.ptr, bucket.len, name.ptr, name.len, rest.ptr, rest.len, &r);
        ok(&r);
    } else if (same(op, "oget")) {
        str bucket = word(&rest), name = word(&rest);
        objects_get(bucket.ptr, bucket.len, name.ptr, name.len, &r);
        option_bytes(&r);
    } else if (same(op, "odel")) {
        str bucket = word(&rest), name = word(&rest);
        objects_delete(bucket.ptr, bucket.len, name.ptr, name.len, &r);
        ok(&r);
    } else if (same(op, "olist")) {
        str bucket = word(&rest);
        objects_list(bucket.ptr, bucket.len, &r);
        if (!host_failed(&r)) {
            /* object-info: name (string) at 0, size (u64) at 8 */
            struct { str name; uint64_t size; } *infos = (void *)r.a;
            for (uint32_t i = 0; i < r.b; i++) {
                put(infos[i].name.ptr, infos[i].name.len);
                puts_(" ");
                put_number(infos[i].size);
                puts_("\n");
            }
        }
    } else if (same(op, "pub")) {
        str subj = word(&rest);
        header h = {{"from", 4}, {"probe", 5}};
        publish(subj.ptr, subj.len, rest.ptr, rest.len, &h, 1, &r);
        ok(&r);
    } else if (same(op, "req")) {
        str subj = word(&rest), data = word(&rest);
        uint32_t timeout = 0;
        for (size_t i = 0; i < rest.len; i++) timeout = timeout * 10 + (rest.ptr[i] - '0');
        request(subj.ptr, subj.len, data.ptr, data.len, 0, 0, rest.len > 0, timeout, &r);
        /* message: data at 4, headers at 12 */
        if (!host_failed(&r)) put((const char *)r.a, r.b);
    } else if (same(op, "http")) {
        str method = word(&rest), url = word(&rest);
        http_send(method.ptr, method.len, url.ptr, url.len, 0, 0, rest.ptr, rest.len, 0, 0, &r);
        /* response: status (u16) at 4, headers at 8, body at 16 */
        if (!host_failed(&r)) {
            put_number(r.a & 0xffff);
            puts_(" ");
            put((const char *)r.d, r.e);
        }
    } else {
        for (size_t i = 0; i < payload_len; i++) {
            char c = payload[i];
            put(&c, 1);
            if (c >= 'a' && c <= 'z') out[out_len - 1] = c - 32;
        }
    }
    result.ptr = out;
    result.len = out_len;
    return &result;
}
