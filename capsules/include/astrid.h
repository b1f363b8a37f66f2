/*
 * astrid.h — C header for Astrid OS capsules (wasm32, freestanding, no libc).
 *
 * A capsule is a WebAssembly module run by the Extism runtime. It reaches the host only through
 * the 48 Astrid syscalls (module "extism:host/user"), the Extism kernel (module
 * "extism:host/env") and WASI preview 1 (enabled for every capsule; astrid_sleep_ms uses it).
 *
 * Building (one translation unit per capsule; `python capsules/build.py DIR` does exactly this):
 *
 *     python -m ziglang cc --target=wasm32-freestanding -nostdlib -O2 -s -Wl,--no-entry \
 *         -I capsules/include -o counter.wasm counter.c
 *
 * Rules:
 *  - Export functions with __attribute__((export_name("run"))) (or "astrid_tool_call", ...).
 *    An export takes no parameters and returns int32_t: 0 = success. To fail, call
 *    astrid_error("message") and return non-zero; the host sees the call fail with that text.
 *  - Every syscall parameter is an Extism block offset (uint64_t). Make blocks with astrid_put /
 *    astrid_put_str; empty data is offset 0 (astrid_put does that for n == 0). Value-returning
 *    syscalls return a block offset (0 = empty); read it with astrid_len / astrid_get.
 *  - Never call extism_free or extism_length after each host call: both walk every block of the
 *    current call (spec/perf-baselines.md §1b). astrid_len uses length_unsafe; blocks are
 *    reclaimed when the call ends. A run loop that never returns should call
 *    astrid_reset_memory() once per iteration (it drops every block, including the input).
 *  - A host error (capability denied, limit exceeded, ...) is a trap: the guest cannot catch it,
 *    the whole export call fails.
 *  - No libc: this header provides memcpy/memmove/memset/memcmp (weak) and a few helpers. Keep large
 *    buffers static (.bss); the wasm memory limit is 64 MiB.
 */
#ifndef ASTRID_H
#define ASTRID_H

#include <stddef.h>
#include <stdint.h>

/* ============================================================================================
 * Astrid syscalls: module "extism:host/user". 48 functions; the 13 "void" ones have no result.
 * Every parameter is an i64 Extism block offset; a value-returning one returns an i64 offset.
 * ========================================================================================== */

/* ---- Filesystem (7) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_fs_exists")))
uint64_t astrid_fs_exists(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_fs_mkdir")))
void astrid_fs_mkdir(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_fs_readdir")))
uint64_t astrid_fs_readdir(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_fs_stat")))
uint64_t astrid_fs_stat(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_fs_unlink")))
void astrid_fs_unlink(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_read_file")))
uint64_t astrid_read_file(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_write_file")))
void astrid_write_file(uint64_t path, uint64_t content);

/* ---- IPC (7) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_ipc_publish")))
void astrid_ipc_publish(uint64_t topic, uint64_t payload);
__attribute__((import_module("extism:host/user"), import_name("astrid_ipc_subscribe")))
uint64_t astrid_ipc_subscribe(uint64_t topic);
__attribute__((import_module("extism:host/user"), import_name("astrid_ipc_unsubscribe")))
void astrid_ipc_unsubscribe(uint64_t handle);
__attribute__((import_module("extism:host/user"), import_name("astrid_ipc_poll")))
uint64_t astrid_ipc_poll(uint64_t handle);
__attribute__((import_module("extism:host/user"), import_name("astrid_ipc_recv")))
uint64_t astrid_ipc_recv(uint64_t handle, uint64_t timeout_ms);
__attribute__((import_module("extism:host/user"), import_name("astrid_uplink_register")))
uint64_t astrid_uplink_register(uint64_t name, uint64_t platform, uint64_t profile);
__attribute__((import_module("extism:host/user"), import_name("astrid_uplink_send")))
uint64_t astrid_uplink_send(uint64_t uplink_id, uint64_t platform_user_id, uint64_t content);

/* ---- Storage (7) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_kv_get")))
uint64_t astrid_kv_get(uint64_t key);
__attribute__((import_module("extism:host/user"), import_name("astrid_kv_set")))
void astrid_kv_set(uint64_t key, uint64_t value);
__attribute__((import_module("extism:host/user"), import_name("astrid_kv_delete")))
void astrid_kv_delete(uint64_t key);
__attribute__((import_module("extism:host/user"), import_name("astrid_kv_list_keys")))
uint64_t astrid_kv_list_keys(uint64_t prefix);
__attribute__((import_module("extism:host/user"), import_name("astrid_kv_clear_prefix")))
uint64_t astrid_kv_clear_prefix(uint64_t prefix);
__attribute__((import_module("extism:host/user"), import_name("astrid_get_config")))
uint64_t astrid_get_config(uint64_t key);
__attribute__((import_module("extism:host/user"), import_name("astrid_get_caller")))
uint64_t astrid_get_caller(void);

/* ---- Network (7) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_http_request")))
uint64_t astrid_http_request(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_bind_unix")))
uint64_t astrid_net_bind_unix(uint64_t path);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_accept")))
uint64_t astrid_net_accept(uint64_t listener);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_read")))
uint64_t astrid_net_read(uint64_t stream);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_write")))
void astrid_net_write(uint64_t stream, uint64_t data);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_close_stream")))
void astrid_net_close_stream(uint64_t stream);
__attribute__((import_module("extism:host/user"), import_name("astrid_net_poll_accept")))
uint64_t astrid_net_poll_accept(uint64_t listener);

/* ---- Identity (5) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_identity_resolve")))
uint64_t astrid_identity_resolve(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_identity_link")))
uint64_t astrid_identity_link(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_identity_unlink")))
uint64_t astrid_identity_unlink(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_identity_create_user")))
uint64_t astrid_identity_create_user(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_identity_list_links")))
uint64_t astrid_identity_list_links(uint64_t request);

/* ---- Process (4) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_spawn_host")))
uint64_t astrid_spawn_host(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_spawn_background_host")))
uint64_t astrid_spawn_background_host(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_read_process_logs_host")))
uint64_t astrid_read_process_logs_host(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_kill_process_host")))
uint64_t astrid_kill_process_host(uint64_t request);

/* ---- Lifecycle (5) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_elicit")))
uint64_t astrid_elicit(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_has_secret")))
uint64_t astrid_has_secret(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_signal_ready")))
void astrid_signal_ready(void);
__attribute__((import_module("extism:host/user"), import_name("astrid_get_interceptor_handles")))
uint64_t astrid_get_interceptor_handles(void);
__attribute__((import_module("extism:host/user"), import_name("astrid_check_capsule_capability")))
uint64_t astrid_check_capsule_capability(uint64_t request);

/* ---- System (6) ---- */
__attribute__((import_module("extism:host/user"), import_name("astrid_trigger_hook")))
uint64_t astrid_trigger_hook(uint64_t request);
__attribute__((import_module("extism:host/user"), import_name("astrid_log")))
void astrid_log(uint64_t level, uint64_t message);
__attribute__((import_module("extism:host/user"), import_name("astrid_cron_schedule")))
void astrid_cron_schedule(uint64_t name, uint64_t schedule, uint64_t payload);
__attribute__((import_module("extism:host/user"), import_name("astrid_cron_cancel")))
void astrid_cron_cancel(uint64_t name);
__attribute__((import_module("extism:host/user"), import_name("astrid_clock_ms")))
uint64_t astrid_clock_ms(void);
__attribute__((import_module("extism:host/user"), import_name("astrid_request_approval")))
uint64_t astrid_request_approval(uint64_t request);

/* ============================================================================================
 * Extism kernel: module "extism:host/env" (signatures verified against extism-sys 1.41).
 * u8 parameters/results are i32 on the wasm side (uint32_t here).
 * ========================================================================================== */

#define ASTRID_EXTISM_ENV(name) __attribute__((import_module("extism:host/env"), import_name(name)))

/* Call input */
ASTRID_EXTISM_ENV("input_length") uint64_t extism_input_length(void);
ASTRID_EXTISM_ENV("input_offset") uint64_t extism_input_offset(void);
ASTRID_EXTISM_ENV("input_load_u8") uint32_t extism_input_load_u8(uint64_t offset);
ASTRID_EXTISM_ENV("input_load_u64") uint64_t extism_input_load_u64(uint64_t offset);
/* Blocks */
ASTRID_EXTISM_ENV("alloc") uint64_t extism_alloc(uint64_t length);
ASTRID_EXTISM_ENV("free") void extism_free(uint64_t offset);
ASTRID_EXTISM_ENV("length") uint64_t extism_length(uint64_t offset);
ASTRID_EXTISM_ENV("length_unsafe") uint64_t extism_length_unsafe(uint64_t offset);
ASTRID_EXTISM_ENV("reset") void extism_reset(void);
ASTRID_EXTISM_ENV("load_u8") uint32_t extism_load_u8(uint64_t offset);
ASTRID_EXTISM_ENV("load_u64") uint64_t extism_load_u64(uint64_t offset);
ASTRID_EXTISM_ENV("store_u8") void extism_store_u8(uint64_t offset, uint32_t value);
ASTRID_EXTISM_ENV("store_u64") void extism_store_u64(uint64_t offset, uint64_t value);
/* Call output and error */
ASTRID_EXTISM_ENV("output_set") void extism_output_set(uint64_t offset, uint64_t length);
ASTRID_EXTISM_ENV("error_set") void extism_error_set(uint64_t offset);
ASTRID_EXTISM_ENV("error_get") uint64_t extism_error_get(void);
/* Extism config and vars (not used by Astrid, whose config is astrid_get_config). Quirk: these
 * free their key block, so pass a fresh block for every call ("invalid handle offset for var
 * key" otherwise). */
ASTRID_EXTISM_ENV("config_get") uint64_t extism_config_get(uint64_t key);
ASTRID_EXTISM_ENV("var_get") uint64_t extism_var_get(uint64_t key);
ASTRID_EXTISM_ENV("var_set") void extism_var_set(uint64_t key, uint64_t value);
/* Extism logging (goes to the Extism log, not to Astrid: capsules should use astrid_log) */
ASTRID_EXTISM_ENV("log_info") void extism_log_info(uint64_t message);
ASTRID_EXTISM_ENV("log_debug") void extism_log_debug(uint64_t message);
ASTRID_EXTISM_ENV("log_warn") void extism_log_warn(uint64_t message);
ASTRID_EXTISM_ENV("log_error") void extism_log_error(uint64_t message);

/* ============================================================================================
 * WASI preview 1 (the host enables WASI for every capsule): only what astrid_sleep_ms needs.
 * ========================================================================================== */

__attribute__((import_module("wasi_snapshot_preview1"), import_name("poll_oneoff")))
uint32_t wasi_poll_oneoff(const void *subscriptions, void *events, uint32_t nsubscriptions,
                          uint32_t *nevents);

/* ============================================================================================
 * Freestanding helpers
 * ========================================================================================== */

/* The compiler may emit calls to these three, so they are real (weak) functions. With the
 * bulk-memory feature (zig's wasm32 default) the builtins lower to memory.copy / memory.fill. */
__attribute__((weak)) void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
#if defined(__wasm_bulk_memory__) || defined(__wasm_bulk_memory_opt__)
    __builtin_memcpy(dst, src, n);
#else
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    while (n--) *d++ = *s++;
#endif
    return dst;
}

__attribute__((weak)) void *memmove(void *dst, const void *src, size_t n) {
#if defined(__wasm_bulk_memory__) || defined(__wasm_bulk_memory_opt__)
    __builtin_memmove(dst, src, n);
#else
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
#endif
    return dst;
}

__attribute__((weak)) void *memset(void *dst, int c, size_t n) {
#if defined(__wasm_bulk_memory__) || defined(__wasm_bulk_memory_opt__)
    __builtin_memset(dst, c, n);
#else
    unsigned char *d = (unsigned char *)dst;
    while (n--) *d++ = (unsigned char)c;
#endif
    return dst;
}

__attribute__((weak)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a;
    const unsigned char *y = (const unsigned char *)b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

static inline uint64_t astrid_strlen(const char *s) {
    uint64_t n = 0;
    while (s[n]) n++;
    return n;
}

/* 1 if the n bytes at p equal the NUL-terminated string s. */
static inline int astrid_eq(const void *p, uint64_t n, const char *s) {
    return astrid_strlen(s) == n && memcmp(p, s, (size_t)n) == 0;
}

/* Writes v in decimal (no NUL) into buf (room for 20 bytes); returns the number of digits. */
static inline uint32_t astrid_fmt_u64(char *buf, uint64_t v) {
    char tmp[20];
    uint32_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (uint32_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    return n;
}

/* Parses leading ASCII decimal digits (after optional spaces); 0 if there are none. */
static inline uint64_t astrid_parse_u64(const void *p, uint64_t n) {
    const unsigned char *s = (const unsigned char *)p;
    uint64_t i = 0, v = 0;
    while (i < n && s[i] == ' ') i++;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) v = v * 10 + (uint64_t)(s[i] - '0');
    return v;
}

/* ---- Extism blocks ---------------------------------------------------------------------- */

/* Copies n bytes into a new Extism block; returns its offset (0 when n == 0). Traps if the
 * kernel cannot allocate. */
static inline uint64_t astrid_put(const void *p, uint64_t n) {
    if (n == 0) return 0;
    uint64_t off = extism_alloc(n);
    if (off == 0) __builtin_trap();
    const unsigned char *s = (const unsigned char *)p;
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        extism_store_u64(off + i, w);
    }
    for (; i < n; i++) extism_store_u8(off + i, s[i]);
    return off;
}

static inline uint64_t astrid_put_str(const char *s) { return astrid_put(s, astrid_strlen(s)); }

/* Length of the block at off (0 for off == 0). Uses length_unsafe: off must be a block offset
 * handed out by the kernel or the host (every syscall result is). */
static inline uint64_t astrid_len(uint64_t off) {
    return off == 0 ? 0 : extism_length_unsafe(off);
}

/* Copies min(len, cap) bytes of the block at off into buf; returns the block's full length. */
static inline uint64_t astrid_get(uint64_t off, void *buf, uint64_t cap) {
    uint64_t len = astrid_len(off);
    uint64_t n = len < cap ? len : cap;
    unsigned char *d = (unsigned char *)buf;
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = extism_load_u64(off + i);
        memcpy(d + i, &w, 8);
    }
    for (; i < n; i++) d[i] = (unsigned char)extism_load_u8(off + i);
    return len;
}

/* Copies min(len, cap) bytes of the call input into buf; returns the input's full length. */
static inline uint64_t astrid_input(void *buf, uint64_t cap) {
    uint64_t len = extism_input_length();
    uint64_t n = len < cap ? len : cap;
    unsigned char *d = (unsigned char *)buf;
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = extism_input_load_u64(i);
        memcpy(d + i, &w, 8);
    }
    for (; i < n; i++) d[i] = (unsigned char)extism_input_load_u8(i);
    return len;
}

/* Sets the output of the current export call (n == 0 leaves it empty). */
static inline void astrid_output(const void *p, uint64_t n) {
    if (n == 0) return;
    extism_output_set(astrid_put(p, n), n);
}

static inline void astrid_output_str(const char *s) { astrid_output(s, astrid_strlen(s)); }

/* Sets the error message of the current export call; return non-zero from the export after it. */
static inline void astrid_error(const char *msg) {
    uint64_t n = astrid_strlen(msg);
    extism_error_set(astrid_put(n ? msg : "error", n ? n : 5));
}

/* Drops every Extism block of the current call (the input too). For run loops that never
 * return: call it once per iteration after the input and all results have been consumed. */
static inline void astrid_reset_memory(void) { extism_reset(); }

/* ---- Syscall conveniences for NUL-terminated strings -------------------------------------- */

static inline void astrid_log_str(const char *level, const char *message) {
    astrid_log(astrid_put_str(level), astrid_put_str(message));
}

static inline void astrid_kv_set_str(const char *key, const char *value) {
    astrid_kv_set(astrid_put_str(key), astrid_put_str(value));
}

/* Returns the value's block offset (0 = absent or empty); read it with astrid_get. */
static inline uint64_t astrid_kv_get_str(const char *key) {
    return astrid_kv_get(astrid_put_str(key));
}

/* ---- Sleeping ------------------------------------------------------------------------------ */

/* Blocks for ms milliseconds with WASI poll_oneoff (one relative CLOCK_MONOTONIC subscription).
 * Returns the WASI errno (0 = slept). The sleep is not interrupted by Extism cancellation or
 * timeouts: those take effect when it returns. */
static inline uint32_t astrid_sleep_ms(uint64_t ms) {
    /* subscription (48 bytes): userdata u64 @0, tag u8 @8 (0 = clock), clock id u32 @16
     * (1 = monotonic), timeout u64 ns @24, precision u64 @32, flags u16 @40 (0 = relative). */
    uint64_t sub[6];
    uint64_t event[4]; /* event (32 bytes): userdata, error u16, type u8, fd_readwrite */
    uint32_t nevents = 0;
    const uint64_t max_ms = UINT64_MAX / 1000000u;
    memset(sub, 0, sizeof sub);
    memset(event, 0, sizeof event);
    sub[0] = 0x61737472u; /* userdata: "astr" */
    ((unsigned char *)sub)[8] = 0;
    ((uint32_t *)sub)[4] = 1;
    sub[3] = (ms > max_ms ? max_ms : ms) * 1000000u;
    sub[4] = 0;
    return wasi_poll_oneoff(sub, event, 1, &nevents);
}

#endif /* ASTRID_H */
