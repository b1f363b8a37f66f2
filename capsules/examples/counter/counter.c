/*
 * counter — an example run-loop capsule.
 *
 * Export `run` never returns: it bumps KV "started" (how many times the loop has been started,
 * so restarts are visible), signals readiness, then once a second increments KV "count" and logs
 * "count is now N" at level info. KV values are ASCII decimal; an absent key counts as 0.
 */
#include "astrid.h"

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

__attribute__((export_name("run"))) int32_t run(void) {
    kv_set_u64("started", kv_get_u64("started") + 1);
    astrid_signal_ready();
    for (;;) {
        uint64_t count = kv_get_u64("count") + 1;
        kv_set_u64("count", count);

        char msg[48] = "count is now ";
        uint32_t prefix = (uint32_t)astrid_strlen(msg);
        uint32_t n = prefix + astrid_fmt_u64(msg + prefix, count);
        astrid_log(astrid_put_str("info"), astrid_put(msg, n));

        /* Nothing of this call's Extism memory is needed any more: keep it from growing. */
        astrid_reset_memory();
        astrid_sleep_ms(1000);
    }
}
