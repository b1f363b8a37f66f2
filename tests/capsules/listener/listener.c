/*
 * listener — test capsule for run-loop interceptors (auto-subscribed interceptor handles).
 *
 * Export `run`: signals readiness, reads astrid_get_interceptor_handles() once and stores the
 * JSON in KV "handles", then loops forever: for each handle, astrid_ipc_recv(handle, "200").
 * Every envelope holding at least one message is stored raw in KV "last:<action>" and adds its
 * number of messages to KV "count:<action>" (ASCII decimal). Commands, found as text in an
 * envelope:
 *   "cmd":"unsubscribe-interceptor"  astrid_ipc_unsubscribe(<that interceptor's handle>), which
 *                                    must trap (runtime-owned handle) and end the run loop;
 *   "cmd":"subscribe-many"           astrid_ipc_subscribe("listener.extra") until it traps,
 *                                    KV "subscribed" = how many succeeded so far.
 */
#include "astrid.h"

#define ENV_CAP (2u * 1024u * 1024u)
#define HANDLES_CAP (64u * 1024u)
#define MAX_HANDLES 64
#define ACTION_CAP 128

static unsigned char envelope[ENV_CAP];
static unsigned char handles_json[HANDLES_CAP];

static uint32_t nhandles;
static char handle_text[MAX_HANDLES][24];
static uint32_t handle_len[MAX_HANDLES];
static char action[MAX_HANDLES][ACTION_CAP];
static uint32_t action_len[MAX_HANDLES];

/* ---- A tiny JSON scanner ------------------------------------------------------------------- */

static uint32_t skip_ws(const unsigned char *p, uint32_t n, uint32_t i) {
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

/* Index just past the string starting at p[i] == '"', or 0 if it is unterminated. */
static uint32_t skip_string(const unsigned char *p, uint32_t n, uint32_t i) {
    for (i++; i < n; i++) {
        if (p[i] == '\\') i++;
        else if (p[i] == '"') return i + 1;
    }
    return 0;
}

/* Index just past the value starting at p[i], or 0 if it is malformed. */
static uint32_t skip_value(const unsigned char *p, uint32_t n, uint32_t i) {
    if (i >= n) return 0;
    if (p[i] == '"') return skip_string(p, n, i);
    if (p[i] == '{' || p[i] == '[') {
        uint32_t depth = 0;
        while (i < n) {
            unsigned char c = p[i];
            if (c == '"') {
                i = skip_string(p, n, i);
                if (!i) return 0;
                continue;
            }
            if (c == '{' || c == '[') depth++;
            if (c == '}' || c == ']') {
                if (--depth == 0) return i + 1;
            }
            i++;
        }
        return 0;
    }
    while (i < n && p[i] != ',' && p[i] != '}' && p[i] != ']' && p[i] != ' ' && p[i] != '\n' &&
           p[i] != '\r' && p[i] != '\t')
        i++;
    return i;
}

/* Finds member `key` of the JSON object in p[0..n); returns the index of its value or -1. */
static int32_t find_member(const unsigned char *p, uint32_t n, const char *key) {
    uint32_t i = skip_ws(p, n, 0);
    if (i >= n || p[i] != '{') return -1;
    i = skip_ws(p, n, i + 1);
    while (i < n && p[i] == '"') {
        uint32_t kstart = i + 1;
        uint32_t kend = skip_string(p, n, i);
        if (!kend) return -1;
        i = skip_ws(p, n, kend);
        if (i >= n || p[i] != ':') return -1;
        i = skip_ws(p, n, i + 1);
        if (astrid_eq(p + kstart, kend - 1 - kstart, key)) return (int32_t)i;
        i = skip_value(p, n, i);
        if (!i) return -1;
        i = skip_ws(p, n, i);
        if (i < n && p[i] == ',') i = skip_ws(p, n, i + 1);
    }
    return -1;
}

/* 1 if the NUL-terminated needle occurs in p[0..n). */
static int contains(const unsigned char *p, uint64_t n, const char *needle) {
    uint64_t m = astrid_strlen(needle);
    if (m > n) return 0;
    for (uint64_t i = 0; i + m <= n; i++) {
        if (memcmp(p + i, needle, (size_t)m) == 0) return 1;
    }
    return 0;
}

/* ---- KV helpers ---------------------------------------------------------------------------- */

static uint32_t kv_key(char *key, const char *prefix, uint32_t h) {
    uint32_t n = (uint32_t)astrid_strlen(prefix);
    memcpy(key, prefix, n);
    memcpy(key + n, action[h], action_len[h]);
    return n + action_len[h];
}

static void kv_add(const char *key, uint32_t key_len, uint64_t delta) {
    char buf[24];
    uint64_t k = astrid_put(key, key_len);
    uint64_t len = astrid_get(astrid_kv_get(k), buf, sizeof buf);
    uint64_t value = astrid_parse_u64(buf, len < sizeof buf ? len : sizeof buf) + delta;
    uint32_t n = astrid_fmt_u64(buf, value);
    astrid_kv_set(astrid_put(key, key_len), astrid_put(buf, n));
}

/* ---- Reading the interceptor handles -------------------------------------------------------- */

static void read_handles(void) {
    uint64_t off = astrid_get_interceptor_handles();
    uint64_t len = astrid_get(off, handles_json, HANDLES_CAP);
    if (len > HANDLES_CAP) len = HANDLES_CAP;
    astrid_kv_set(astrid_put_str("handles"), astrid_put(handles_json, len));

    uint32_t n = (uint32_t)len;
    uint32_t i = skip_ws(handles_json, n, 0);
    if (i >= n || handles_json[i] != '[') return;
    i = skip_ws(handles_json, n, i + 1);
    while (i < n && handles_json[i] == '{' && nhandles < MAX_HANDLES) {
        uint32_t end = skip_value(handles_json, n, i);
        if (!end) return;
        const unsigned char *obj = handles_json + i;
        uint32_t olen = end - i;
        int32_t h = find_member(obj, olen, "handle_id");
        int32_t a = find_member(obj, olen, "action");
        if (h >= 0 && a >= 0 && obj[a] == '"') {
            uint32_t hend = skip_value(obj, olen, (uint32_t)h);
            uint32_t aend = skip_string(obj, olen, (uint32_t)a);
            uint32_t hl = hend - (uint32_t)h;
            uint32_t al = aend - (uint32_t)a - 2;
            if (hend && aend && hl < sizeof handle_text[0] && al < ACTION_CAP) {
                memcpy(handle_text[nhandles], obj + h, hl);
                handle_len[nhandles] = hl;
                memcpy(action[nhandles], obj + a + 1, al);
                action_len[nhandles] = al;
                nhandles++;
            }
        }
        i = skip_ws(handles_json, n, end);
        if (i < n && handles_json[i] == ',') i = skip_ws(handles_json, n, i + 1);
    }
}

/* Number of elements of the envelope's "messages" array. */
static uint32_t count_messages(const unsigned char *p, uint32_t n) {
    int32_t m = find_member(p, n, "messages");
    if (m < 0 || p[m] != '[') return 0;
    uint32_t count = 0;
    uint32_t i = skip_ws(p, n, (uint32_t)m + 1);
    while (i < n && p[i] != ']') {
        uint32_t end = skip_value(p, n, i);
        if (!end) return count;
        count++;
        i = skip_ws(p, n, end);
        if (i < n && p[i] == ',') i = skip_ws(p, n, i + 1);
    }
    return count;
}

static void subscribe_many(void) {
    char buf[24];
    for (uint64_t done = 0;;) {
        astrid_ipc_subscribe(astrid_put_str("listener.extra"));
        done++;
        uint32_t n = astrid_fmt_u64(buf, done);
        astrid_kv_set(astrid_put_str("subscribed"), astrid_put(buf, n));
    }
}

__attribute__((export_name("run"))) int32_t run(void) {
    char key[ACTION_CAP + 16];
    astrid_signal_ready();
    read_handles();
    astrid_reset_memory();
    for (;;) {
        for (uint32_t h = 0; h < nhandles; h++) {
            uint64_t off =
                astrid_ipc_recv(astrid_put(handle_text[h], handle_len[h]), astrid_put_str("200"));
            uint64_t len = astrid_get(off, envelope, ENV_CAP);
            if (len > ENV_CAP) len = ENV_CAP;
            uint32_t count = count_messages(envelope, (uint32_t)len);
            if (count > 0) {
                uint32_t klen = kv_key(key, "last:", h);
                astrid_kv_set(astrid_put(key, klen), astrid_put(envelope, len));
                klen = kv_key(key, "count:", h);
                kv_add(key, klen, count);
                if (contains(envelope, len, "\"cmd\":\"unsubscribe-interceptor\""))
                    astrid_ipc_unsubscribe(astrid_put(handle_text[h], handle_len[h]));
                if (contains(envelope, len, "\"cmd\":\"subscribe-many\"")) subscribe_many();
            }
            astrid_reset_memory();
        }
        if (nhandles == 0) astrid_sleep_ms(200);
    }
}
