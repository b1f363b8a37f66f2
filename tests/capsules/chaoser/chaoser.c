/*
 * chaoser — the run-loop capsule of the chaos test (tests/chaos/).
 *
 * At start: run = KV "started" + 1 is stored back in "started" (so every run that publishes
 * anything has a larger run number than the runs before it), n = KV "last" + 1, then readiness
 * is signalled. Then, for ever:
 *
 *     kv_set   "seq:<n>" = "<n>"
 *     publish  <chaos_topic>  {"n": n, "run": run}
 *     kv_set   "last"    = "<n>"
 *     n += 1; sleep chaos_interval_ms
 *
 * Host calls are synchronous and a failed one traps, so the capsule reaches a host call only
 * after the broker acknowledged the one before: a message n on the bus proves that "seq:<n>"
 * was acknowledged, and "last" = n proves it too. Because a run starts at "last" + 1, every
 * seq:<m> with m <= n was acknowledged by some run (tests/chaos/chaos.py relies on this).
 *
 * Every chaos_spawn_every iterations it kills its previous background host process (if any) and
 * starts `sh -c 'sleep 60 & sleep 60'`, so the chaos test has host processes, with children, to
 * kill. KV values are ASCII decimal. Configuration ([env], JSON strings): chaos_topic,
 * chaos_interval_ms, chaos_spawn_every.
 */
#include "astrid.h"

static char topic[256];
static uint64_t topic_len;

static uint64_t kv_get_u64(const char *key) {
    char buf[32];
    uint64_t len = astrid_get(astrid_kv_get_str(key), buf, sizeof buf);
    return astrid_parse_u64(buf, len < sizeof buf ? len : sizeof buf);
}

static void kv_set_u64(const char *key, uint64_t value) {
    char buf[20];
    uint32_t n = astrid_fmt_u64(buf, value);
    astrid_kv_set(astrid_put_str(key), astrid_put(buf, n));
}

/* A config value without the quotes of its JSON string form; returns its length (0 = absent). */
static uint64_t config_text(const char *key, char *buf, uint64_t cap) {
    uint64_t len = astrid_get(astrid_get_config(astrid_put_str(key)), buf, cap);
    if (len > cap) return 0;
    if (len >= 2 && buf[0] == '"' && buf[len - 1] == '"') {
        memmove(buf, buf + 1, (size_t)(len - 2));
        len -= 2;
    }
    return len;
}

static uint64_t config_u64(const char *key, uint64_t fallback) {
    char buf[32];
    uint64_t len = config_text(key, buf, sizeof buf);
    if (len == 0 || buf[0] < '0' || buf[0] > '9') return fallback;
    return astrid_parse_u64(buf, len);
}

/* The first decimal number in the block at off (the "id" of {"id": n}). */
static uint64_t first_number(uint64_t off) {
    char buf[64];
    uint64_t len = astrid_get(off, buf, sizeof buf);
    if (len > sizeof buf) len = sizeof buf;
    uint64_t i = 0;
    while (i < len && (buf[i] < '0' || buf[i] > '9')) i++;
    return astrid_parse_u64(buf + i, len - i);
}

static uint32_t append(char *dst, uint32_t at, const char *text) {
    uint64_t n = astrid_strlen(text);
    memcpy(dst + at, text, (size_t)n);
    return at + (uint32_t)n;
}

static uint64_t background = 0; /* id of this run's background host process, 0 = none */

static void respawn_background(void) {
    char request[48];
    if (background != 0) {
        uint32_t n = append(request, 0, "{\"id\":");
        n += astrid_fmt_u64(request + n, background);
        n = append(request, n, "}");
        astrid_kill_process_host(astrid_put(request, n));
        background = 0;
    }
    background = first_number(astrid_spawn_background_host(
        astrid_put_str("{\"cmd\":\"sh\",\"args\":[\"-c\",\"sleep 60 & sleep 60\"]}")));
}

__attribute__((export_name("run"))) int32_t run(void) {
    topic_len = config_text("chaos_topic", topic, sizeof topic);
    if (topic_len == 0) {
        topic_len = astrid_strlen("chaos.chaoser");
        memcpy(topic, "chaos.chaoser", (size_t)topic_len);
    }
    uint64_t interval_ms = config_u64("chaos_interval_ms", 10);
    uint64_t spawn_every = config_u64("chaos_spawn_every", 300);

    uint64_t run_number = kv_get_u64("started") + 1;
    kv_set_u64("started", run_number);
    uint64_t n = kv_get_u64("last") + 1;
    astrid_signal_ready();

    for (uint64_t iteration = 0;; iteration++, n++) {
        char key[32];
        char value[20];
        uint32_t klen = append(key, 0, "seq:");
        klen += astrid_fmt_u64(key + klen, n);
        uint32_t vlen = astrid_fmt_u64(value, n);
        astrid_kv_set(astrid_put(key, klen), astrid_put(value, vlen));

        char payload[64];
        uint32_t plen = append(payload, 0, "{\"n\":");
        plen += astrid_fmt_u64(payload + plen, n);
        plen = append(payload, plen, ",\"run\":");
        plen += astrid_fmt_u64(payload + plen, run_number);
        plen = append(payload, plen, "}");
        astrid_ipc_publish(astrid_put(topic, topic_len), astrid_put(payload, plen));

        astrid_kv_set(astrid_put_str("last"), astrid_put(value, vlen));

        if (spawn_every != 0 && iteration % spawn_every == 0) respawn_background();
        astrid_reset_memory();
        if (interval_ms != 0) astrid_sleep_ms(interval_ms);
    }
}
