/*
 * syscaller — the universal test capsule. It imports all 48 Astrid syscalls and runs scripts of
 * them (tests/syscaller.py builds scripts and decodes results).
 *
 * SCRIPT:  u8 flags (bit 0: repeat the whole script forever, bit 1: then spin in a busy loop)
 *          u8 count
 *          count x { u8 syscall index (astrid_core/syscalls.py order), u8 nargs,
 *                    nargs x { u32 LE length, bytes } }
 *          An argument whose length has bit 31 set is a FILL: (length & 0x7FFFFFFF) copies of
 *          the single byte that follows (so tests can pass a 10 MiB argument in a tiny script).
 * RESULTS: per call, value-returning: u32 LE length + the result bytes; void: u32 LE 0xFFFFFFFF.
 *
 * Exports:
 *  - astrid_tool_call: input {"name":"run","arguments":[<bytes>]} where the bytes are a JSON
 *    string literal of lowercase hex ("0102ff..."), the SCRIPT. Output: RESULTS as lowercase hex.
 *  - run_script: input = raw SCRIPT, output = raw RESULTS.
 * A malformed script (unknown index, wrong nargs, truncated, trailing bytes) fails the call with
 * "syscaller: bad script" before any syscall runs; RESULTS over 1 MiB fail it with
 * "syscaller: results exceed 1 MiB"; another tool name fails with "Unknown tool: <name>".
 * With the repeat flag, RESULTS and the Extism kernel memory are reset after every iteration
 * (so a script can repeat forever in constant memory); the call ends only by a trap, a timeout
 * or cancellation.
 */
#include "astrid.h"

#define NSYSCALLS 48
#define MAX_ARGS 3
#define SCRIPT_CAP (12u << 20)
#define RESULTS_CAP (1u << 20)
#define FLAG_REPEAT 1u
#define FLAG_SPIN 2u
#define VOID_MARKER 0xFFFFFFFFu
#define FILL_BIT 0x80000000u

static unsigned char script[SCRIPT_CAP];
static unsigned char results[RESULTS_CAP];
static uint32_t results_len;

static const uint8_t ARITY[NSYSCALLS] = {1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 2, 3, 3, 1, 2, 1, 1, 1, 1, 0, 1, 1, 2, 3, 1, 1, 1, 1, 1, 2, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

/* Calls syscall `index` with the argument offsets in a. Returns 1 and sets *result for a
 * value-returning syscall, 0 for a void one, -1 for an unknown index. */
static int dispatch(uint32_t index, const uint64_t *a, uint64_t *result) {
    switch (index) {
    case 0: *result = astrid_fs_exists(a[0]); return 1;
    case 1: astrid_fs_mkdir(a[0]); return 0;
    case 2: *result = astrid_fs_readdir(a[0]); return 1;
    case 3: *result = astrid_fs_stat(a[0]); return 1;
    case 4: astrid_fs_unlink(a[0]); return 0;
    case 5: *result = astrid_read_file(a[0]); return 1;
    case 6: astrid_write_file(a[0], a[1]); return 0;
    case 7: astrid_ipc_publish(a[0], a[1]); return 0;
    case 8: *result = astrid_ipc_subscribe(a[0]); return 1;
    case 9: astrid_ipc_unsubscribe(a[0]); return 0;
    case 10: *result = astrid_ipc_poll(a[0]); return 1;
    case 11: *result = astrid_ipc_recv(a[0], a[1]); return 1;
    case 12: *result = astrid_uplink_register(a[0], a[1], a[2]); return 1;
    case 13: *result = astrid_uplink_send(a[0], a[1], a[2]); return 1;
    case 14: *result = astrid_kv_get(a[0]); return 1;
    case 15: astrid_kv_set(a[0], a[1]); return 0;
    case 16: astrid_kv_delete(a[0]); return 0;
    case 17: *result = astrid_kv_list_keys(a[0]); return 1;
    case 18: *result = astrid_kv_clear_prefix(a[0]); return 1;
    case 19: *result = astrid_get_config(a[0]); return 1;
    case 20: *result = astrid_get_caller(); return 1;
    case 21: *result = astrid_http_request(a[0]); return 1;
    case 22: *result = astrid_trigger_hook(a[0]); return 1;
    case 23: astrid_log(a[0], a[1]); return 0;
    case 24: astrid_cron_schedule(a[0], a[1], a[2]); return 0;
    case 25: astrid_cron_cancel(a[0]); return 0;
    case 26: *result = astrid_spawn_host(a[0]); return 1;
    case 27: *result = astrid_net_bind_unix(a[0]); return 1;
    case 28: *result = astrid_net_accept(a[0]); return 1;
    case 29: *result = astrid_net_read(a[0]); return 1;
    case 30: astrid_net_write(a[0], a[1]); return 0;
    case 31: *result = astrid_elicit(a[0]); return 1;
    case 32: *result = astrid_has_secret(a[0]); return 1;
    case 33: astrid_signal_ready(); return 0;
    case 34: *result = astrid_clock_ms(); return 1;
    case 35: *result = astrid_get_interceptor_handles(); return 1;
    case 36: *result = astrid_request_approval(a[0]); return 1;
    case 37: *result = astrid_identity_resolve(a[0]); return 1;
    case 38: *result = astrid_identity_link(a[0]); return 1;
    case 39: *result = astrid_identity_unlink(a[0]); return 1;
    case 40: *result = astrid_identity_create_user(a[0]); return 1;
    case 41: *result = astrid_identity_list_links(a[0]); return 1;
    case 42: *result = astrid_check_capsule_capability(a[0]); return 1;
    case 43: *result = astrid_spawn_background_host(a[0]); return 1;
    case 44: *result = astrid_read_process_logs_host(a[0]); return 1;
    case 45: *result = astrid_kill_process_host(a[0]); return 1;
    case 46: astrid_net_close_stream(a[0]); return 0;
    case 47: *result = astrid_net_poll_accept(a[0]); return 1;
    default: return -1;
    }
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* A new Extism block of n copies of byte b (offset 0 when n == 0). */
static uint64_t put_fill(unsigned char b, uint32_t n) {
    if (n == 0) return 0;
    uint64_t off = extism_alloc(n);
    if (off == 0) __builtin_trap();
    uint64_t w = b * 0x0101010101010101ull;
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) extism_store_u64(off + i, w);
    for (; i < n; i++) extism_store_u8(off + i, b);
    return off;
}

/* 0 if script[0..n) is a well-formed script. */
static int validate(uint32_t n) {
    if (n < 2) return -1;
    uint32_t count = script[1], pos = 2;
    for (uint32_t c = 0; c < count; c++) {
        if (n - pos < 2) return -1;
        uint32_t index = script[pos], nargs = script[pos + 1];
        pos += 2;
        if (index >= NSYSCALLS || nargs != ARITY[index]) return -1;
        for (uint32_t k = 0; k < nargs; k++) {
            if (n - pos < 4) return -1;
            uint32_t len = get_u32(script + pos);
            pos += 4;
            if (len & FILL_BIT) len = 1;
            if (n - pos < len) return -1;
            pos += len;
        }
    }
    return pos == n ? 0 : -1;
}

/* Runs every call of the (validated) script once, appending to RESULTS; -1 on overflow. */
static int run_once(void) {
    uint32_t count = script[1], pos = 2;
    for (uint32_t c = 0; c < count; c++) {
        uint32_t index = script[pos], nargs = script[pos + 1];
        uint64_t a[MAX_ARGS] = {0, 0, 0};
        uint64_t result = 0;
        pos += 2;
        for (uint32_t k = 0; k < nargs; k++) {
            uint32_t len = get_u32(script + pos);
            if (len & FILL_BIT) {
                a[k] = put_fill(script[pos + 4], len & ~FILL_BIT);
                pos += 5;
            } else {
                a[k] = astrid_put(script + pos + 4, len);
                pos += 4 + len;
            }
        }
        int kind = dispatch(index, a, &result);
        if (RESULTS_CAP - results_len < 4) return -1;
        if (kind == 0) {
            put_u32(results + results_len, VOID_MARKER);
            results_len += 4;
            continue;
        }
        uint64_t len = astrid_len(result);
        if (len > RESULTS_CAP - results_len - 4) return -1;
        put_u32(results + results_len, (uint32_t)len);
        astrid_get(result, results + results_len + 4, len);
        results_len += 4 + (uint32_t)len;
    }
    return 0;
}

/* Runs script[0..n) per its flags; 0 when RESULTS are ready, 1 after astrid_error. */
static int32_t execute(uint32_t n) {
    if (validate(n) != 0) {
        astrid_error("syscaller: bad script");
        return 1;
    }
    uint32_t flags = script[0];
    for (;;) {
        results_len = 0;
        if (run_once() != 0) {
            astrid_error("syscaller: results exceed 1 MiB");
            return 1;
        }
        if (!(flags & FLAG_REPEAT)) break;
        /* The script lives in our own memory: drop this iteration's Extism blocks. */
        astrid_reset_memory();
    }
    if (flags & FLAG_SPIN) {
        volatile uint64_t spins = 0;
        for (;;) spins++;
    }
    return 0;
}

__attribute__((export_name("run_script"))) int32_t run_script(void) {
    uint64_t n = astrid_input(script, SCRIPT_CAP);
    if (n > SCRIPT_CAP) {
        astrid_error("syscaller: script too large");
        return 1;
    }
    int32_t rc = execute((uint32_t)n);
    if (rc == 0) astrid_output(results, results_len);
    return rc;
}

/* ---- astrid_tool_call: the input is streamed from the kernel in chunks ------------------- */

#define CHUNK 4096u

static uint64_t in_len;
static uint64_t chunk_start = UINT64_MAX;
static uint64_t chunk_len;
static unsigned char chunk[CHUNK];

/* Byte i of the call input, or -1 past its end. */
static int in_at(uint64_t i) {
    if (i >= in_len) return -1;
    if (chunk_start == UINT64_MAX || i < chunk_start || i >= chunk_start + chunk_len) {
        uint64_t k = 0;
        chunk_start = i & ~(uint64_t)(CHUNK - 1);
        chunk_len = in_len - chunk_start < CHUNK ? in_len - chunk_start : CHUNK;
        for (; k + 8 <= chunk_len; k += 8) {
            uint64_t w = extism_input_load_u64(chunk_start + k);
            memcpy(chunk + k, &w, 8);
        }
        for (; k < chunk_len; k++) chunk[k] = (unsigned char)extism_input_load_u8(chunk_start + k);
    }
    return chunk[i - chunk_start];
}

static uint64_t in_skip_ws(uint64_t i) {
    for (;;) {
        int c = in_at(i);
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return i;
        i++;
    }
}

/* Index of the value of the JSON member "key" (found textually), or UINT64_MAX. */
static uint64_t in_member(const char *key) {
    uint64_t klen = astrid_strlen(key);
    for (uint64_t i = 0; i + klen + 2 <= in_len; i++) {
        uint64_t k = 0;
        if (in_at(i) != '"') continue;
        while (k < klen && in_at(i + 1 + k) == (unsigned char)key[k]) k++;
        if (k < klen || in_at(i + 1 + klen) != '"') continue;
        uint64_t j = in_skip_ws(i + 2 + klen);
        if (in_at(j) == ':') return in_skip_ws(j + 1);
    }
    return UINT64_MAX;
}

static int hex_digit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes "arguments": [bytes of "<hex>"] into script; returns its length or -1. */
static int64_t decode_arguments(void) {
    uint64_t i = in_member("arguments");
    if (i == UINT64_MAX || in_at(i) != '[') return -1;
    int state = 0; /* 0: before the opening quote, 1: hex digits, 2: after the closing quote */
    int high = -1;
    uint64_t n = 0;
    i = in_skip_ws(i + 1);
    while (in_at(i) != ']') {
        uint32_t v = 0, digits = 0;
        int c;
        while ((c = in_at(i)) >= '0' && c <= '9' && digits < 4) {
            v = v * 10 + (uint32_t)(c - '0');
            digits++;
            i++;
        }
        if (digits == 0 || v > 255) return -1;
        i = in_skip_ws(i);
        if (in_at(i) == ',') i = in_skip_ws(i + 1);
        else if (in_at(i) != ']') return -1;

        if (v == ' ' || v == '\t' || v == '\n' || v == '\r') {
            if (state == 1) return -1;
        } else if (v == '"') {
            if (state == 2 || high >= 0) return -1;
            state++;
        } else {
            int d = hex_digit((int)v);
            if (state != 1 || d < 0) return -1;
            if (high < 0) {
                high = d;
            } else {
                if (n >= SCRIPT_CAP) return -1;
                script[n++] = (unsigned char)(high << 4 | d);
                high = -1;
            }
        }
    }
    return state == 2 ? (int64_t)n : -1;
}

/* Sets the call output to RESULTS as lowercase hex, built directly in an Extism block. */
static void output_hex(void) {
    static const char digits[] = "0123456789abcdef";
    uint64_t n = (uint64_t)results_len * 2;
    if (n == 0) return;
    uint64_t off = extism_alloc(n);
    if (off == 0) __builtin_trap();
    uint32_t i = 0;
    for (; i + 4 <= results_len; i += 4) {
        uint64_t w = 0;
        for (uint32_t k = 0; k < 4; k++) {
            unsigned char b = results[i + k];
            w |= (uint64_t)(unsigned char)digits[b >> 4] << (16 * k);
            w |= (uint64_t)(unsigned char)digits[b & 15] << (16 * k + 8);
        }
        extism_store_u64(off + 2 * (uint64_t)i, w);
    }
    for (; i < results_len; i++) {
        extism_store_u8(off + 2 * (uint64_t)i, (unsigned char)digits[results[i] >> 4]);
        extism_store_u8(off + 2 * (uint64_t)i + 1, (unsigned char)digits[results[i] & 15]);
    }
    extism_output_set(off, n);
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    char tool[64];
    uint32_t tlen = 0;
    in_len = extism_input_length();
    chunk_start = UINT64_MAX;

    uint64_t i = in_member("name");
    if (i == UINT64_MAX || in_at(i) != '"') {
        astrid_error("syscaller: bad script");
        return 1;
    }
    for (i++; in_at(i) >= 0 && in_at(i) != '"' && tlen < sizeof tool - 1; i++) {
        tool[tlen++] = (char)in_at(i);
    }
    tool[tlen] = 0;
    if (!astrid_eq(tool, tlen, "run")) {
        char msg[80] = "Unknown tool: ";
        memcpy(msg + 14, tool, tlen + 1);
        astrid_error(msg);
        return 1;
    }

    int64_t n = decode_arguments();
    if (n < 0) {
        astrid_error("syscaller: bad script");
        return 1;
    }
    int32_t rc = execute((uint32_t)n);
    if (rc == 0) output_hex();
    return rc;
}
