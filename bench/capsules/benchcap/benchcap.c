/*
 * benchcap — the benchmark capsule of `make bench` (bench/README.md).
 *
 * Export astrid_tool_call, tool "bench", arguments: a JSON array of five integers
 *     [op, size, n, t_start_ns, t_end_ns]
 * op: 0 = astrid_kv_get (16 B key, the stored value has `size` bytes; store it first with op 1),
 *     1 = astrid_kv_set (16 B key, `size`-byte value),
 *     2 = astrid_ipc_publish (topic "bench.load", a `size`-byte JSON string as payload),
 *     3 = no host call (measures the cost of the timing itself).
 * Every argument block is made once, before the loop; results are read with astrid_len
 * (length_unsafe) and never freed (spec/perf-baselines.md §1b).
 *
 * Latency mode (t_end_ns == 0): n calls, each timed with WASI clock_time_get(MONOTONIC) around
 * the call. Output (decimal text): "<loop ns> <call 1 ns> ... <call n ns>".
 * Throughput mode (t_end_ns > 0): calls back to back until CLOCK_REALTIME reaches t_end_ns
 * (at most n calls when n > 0); counts the calls that started at or after t_start_ns and ended
 * by t_end_ns. Output: "<counted> <all calls> <first start ns> <last end ns>" (REALTIME, so
 * several workers can be compared with each other and with the host).
 * A kv_get whose value does not have `size` bytes fails the call.
 */
#include "astrid.h"

#define INPUT_CAP (16u * 1024u)
#define ARGS_CAP 512u
#define MAX_SIZE (64u * 1024u)
#define MAX_SAMPLES 8192u
#define OUT_CAP (MAX_SAMPLES * 12u + 128u)
#define KEY_LEN 16u

#define CLOCK_REALTIME 0u
#define CLOCK_MONOTONIC 1u

__attribute__((import_module("wasi_snapshot_preview1"), import_name("clock_time_get")))
uint32_t wasi_clock_time_get(uint32_t clock_id, uint64_t precision, uint64_t *time);

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static unsigned char data[MAX_SIZE];
static uint32_t samples[MAX_SAMPLES];
static char out[OUT_CAP];
static uint32_t out_len;

static uint64_t now_ns(uint32_t clock) {
    uint64_t t = 0;
    wasi_clock_time_get(clock, 1, &t);
    return t;
}

static void emit_u64(uint64_t v) {
    if (out_len) out[out_len++] = ' ';
    out_len += astrid_fmt_u64(out + out_len, v);
}

static int32_t fail(const char *msg) {
    astrid_error(msg);
    return 1;
}

/* The bytes of "arguments":[b, b, ...] (the JSON text of the tool arguments); -1 if absent. */
static int32_t decode_arguments(uint32_t n) {
    static const char tag[] = "\"arguments\":[";
    const uint32_t tag_len = sizeof tag - 1;
    uint32_t i = 0, len = 0;
    for (;; i++) {
        if (i + tag_len > n) return -1;
        if (memcmp(input + i, tag, tag_len) == 0) break;
    }
    i += tag_len;
    while (i < n && input[i] != ']') {
        uint32_t v = 0, digits = 0;
        while (i < n && input[i] >= '0' && input[i] <= '9') {
            v = v * 10 + (uint32_t)(input[i++] - '0');
            digits++;
        }
        if (!digits || v > 255 || len >= ARGS_CAP) return -1;
        args[len++] = (unsigned char)v;
        if (i < n && input[i] == ',') i++;
    }
    return (int32_t)len;
}

/* Parses up to `max` unsigned integers out of the argument text; returns how many. */
static uint32_t parse_numbers(uint32_t n, uint64_t *values, uint32_t max) {
    uint32_t i = 0, count = 0;
    while (i < n && count < max) {
        while (i < n && !(args[i] >= '0' && args[i] <= '9')) i++;
        if (i >= n) break;
        uint64_t v = 0;
        while (i < n && args[i] >= '0' && args[i] <= '9') v = v * 10 + (uint64_t)(args[i++] - '0');
        values[count++] = v;
    }
    return count;
}

static uint64_t make_key(uint64_t size) {
    char key[KEY_LEN];
    memset(key, '0', KEY_LEN);
    key[0] = 'k';
    for (uint32_t i = KEY_LEN - 1; i > 0 && size; i--, size /= 10) key[i] = (char)('0' + size % 10);
    return astrid_put(key, KEY_LEN);
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint64_t in_len = astrid_input(input, INPUT_CAP);
    if (in_len > INPUT_CAP) return fail("benchcap: input too long");
    int32_t args_len = decode_arguments((uint32_t)in_len);
    if (args_len < 0) return fail("benchcap: no arguments");
    uint64_t v[5];
    if (parse_numbers((uint32_t)args_len, v, 5) != 5) return fail("benchcap: need 5 arguments");
    uint64_t op = v[0], size = v[1], n = v[2], t_start = v[3], t_end = v[4];
    if (op > 3) return fail("benchcap: unknown op");
    if (size > MAX_SIZE) return fail("benchcap: size too large");
    if (t_end == 0 && (n == 0 || n > MAX_SAMPLES)) return fail("benchcap: bad n");

    uint64_t a = 0, b = 0;
    if (op == 0) {
        a = make_key(size);
    } else if (op == 1) {
        memset(data, 'v', (size_t)size);
        a = make_key(size);
        b = astrid_put(data, size);
    } else if (op == 2) {
        if (size < 2) return fail("benchcap: ipc payload needs at least 2 bytes");
        memset(data, 'x', (size_t)size);
        data[0] = '"';
        data[size - 1] = '"';
        a = astrid_put_str("bench.load");
        b = astrid_put(data, size);
    }

    out_len = 0;
    if (t_end == 0) {
        uint64_t loop_start = now_ns(CLOCK_MONOTONIC);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t t0 = now_ns(CLOCK_MONOTONIC);
            uint64_t r = 0;
            switch (op) {
            case 0: r = astrid_kv_get(a); break;
            case 1: astrid_kv_set(a, b); break;
            case 2: astrid_ipc_publish(a, b); break;
            default: break;
            }
            uint64_t t1 = now_ns(CLOCK_MONOTONIC);
            samples[i] = (uint32_t)(t1 - t0);
            if (op == 0 && i == 0 && astrid_len(r) != size) return fail("benchcap: kv_get size");
        }
        emit_u64(now_ns(CLOCK_MONOTONIC) - loop_start);
        for (uint64_t i = 0; i < n; i++) emit_u64(samples[i]);
    } else {
        uint64_t counted = 0, calls = 0, first = 0, last = 0;
        for (;;) {
            uint64_t t0 = now_ns(CLOCK_REALTIME);
            if (t0 >= t_end || (n && calls >= n)) break;
            uint64_t r = 0;
            switch (op) {
            case 0: r = astrid_kv_get(a); break;
            case 1: astrid_kv_set(a, b); break;
            case 2: astrid_ipc_publish(a, b); break;
            default: break;
            }
            uint64_t t1 = now_ns(CLOCK_REALTIME);
            if (op == 0 && calls == 0 && astrid_len(r) != size) return fail("benchcap: kv_get size");
            if (!calls) first = t0;
            last = t1;
            calls++;
            if (t0 >= t_start && t1 <= t_end) counted++;
        }
        emit_u64(counted);
        emit_u64(calls);
        emit_u64(first);
        emit_u64(last);
    }
    astrid_output(out, out_len);
    return 0;
}
