/*
 * hooker — test capsule for interceptors of non-run-loop capsules and astrid_trigger_hook.
 *
 * Export `astrid_hook_trigger`, input {"name": "<action>", "arguments": [<bytes>]}:
 *   - sets KV "args:<action>" to the argument bytes (the JSON text the kernel delivered), then
 *     increments KV "count:<action>" (ASCII decimal);
 *   - waits config "delay_ms" milliseconds (a decimal string, default "0"), so that tests can
 *     tell completion order from registration order;
 *   - outputs {"capsule": <config "capsule_name">, "action": "<action>"}, except for the actions
 *     "silent" (empty output), "broken" (output that is not JSON) and "trap" (fails the call with
 *     "hooker: trap requested").
 * Config values come from astrid_get_config as JSON strings ("\"hooker\""), so capsule_name is
 * copied into the output as is.
 */
#include "astrid.h"
#include "astrid_json.h"

#define INPUT_CAP (6u * 1024u * 1024u)
#define ARGS_CAP (1536u * 1024u)
#define ACTION_CAP 256u
#define OUT_CAP 1024u

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static char name[ACTION_CAP];
static char out[OUT_CAP];
static uint32_t out_len;

/* ---- Output and KV ------------------------------------------------------------------------- */

static void out_raw(const void *p, uint32_t n) {
    if (out_len + n > OUT_CAP) n = OUT_CAP - out_len;
    memcpy(out + out_len, p, n);
    out_len += n;
}

static void out_str(const char *s) { out_raw(s, (uint32_t)astrid_strlen(s)); }

static int32_t fail(const char *message) {
    astrid_error(message);
    return 1;
}

static uint32_t make_key(char *key, const char *prefix, uint32_t name_len) {
    uint32_t n = (uint32_t)astrid_strlen(prefix);
    memcpy(key, prefix, n);
    memcpy(key + n, name, name_len);
    return n + name_len;
}

static void kv_increment(const char *key, uint32_t key_len) {
    char buf[24];
    uint64_t len = astrid_get(astrid_kv_get(astrid_put(key, key_len)), buf, sizeof buf);
    uint64_t value = astrid_parse_u64(buf, len < sizeof buf ? len : sizeof buf) + 1;
    uint32_t n = astrid_fmt_u64(buf, value);
    astrid_kv_set(astrid_put(key, key_len), astrid_put(buf, n));
}

/* The decimal number inside a config value such as "\"250\"" (0 when absent). */
static uint64_t config_u64(const char *key) {
    char buf[32];
    uint64_t len = astrid_get(astrid_get_config(astrid_put_str(key)), buf, sizeof buf);
    if (len > sizeof buf) len = sizeof buf;
    uint64_t i = 0;
    while (i < len && (buf[i] == '"' || buf[i] == ' ')) i++;
    return astrid_parse_u64(buf + i, len - i);
}

__attribute__((export_name("astrid_hook_trigger"))) int32_t astrid_hook_trigger(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    if (len > INPUT_CAP) return fail("hooker: input too large");
    uint32_t n = (uint32_t)len;

    int32_t v = json_find_member(input, n, "name");
    if (v < 0 || input[v] != '"') return fail("hooker: input has no name");
    uint32_t vend = json_skip_string(input, n, (uint32_t)v);
    if (!vend) return fail("hooker: bad name");
    uint32_t name_len = vend - (uint32_t)v - 2;
    if (name_len >= ACTION_CAP) return fail("hooker: name too long");
    memcpy(name, input + v + 1, name_len);
    for (uint32_t k = 0; k < name_len; k++) {
        if (name[k] == '\\') return fail("hooker: escaped names are not supported");
    }

    /* "arguments": [byte, byte, ...] -> the bytes the kernel delivered. */
    uint32_t nargs = 0;
    int32_t a = json_find_member(input, n, "arguments");
    if (a >= 0 && input[a] == '[') {
        uint32_t i = json_skip_ws(input, n, (uint32_t)a + 1);
        while (i < n && input[i] != ']') {
            uint32_t value = 0, digits = 0;
            while (i < n && input[i] >= '0' && input[i] <= '9') {
                value = value * 10 + (input[i++] - '0');
                digits++;
            }
            if (!digits || value > 255 || nargs >= ARGS_CAP) return fail("hooker: bad arguments");
            args[nargs++] = (unsigned char)value;
            i = json_skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = json_skip_ws(input, n, i + 1);
        }
    }

    /* The arguments first: a test that sees the count go up finds them in place. */
    char key[ACTION_CAP + 16];
    uint32_t klen = make_key(key, "args:", name_len);
    astrid_kv_set(astrid_put(key, klen), astrid_put(args, nargs));
    klen = make_key(key, "count:", name_len);
    kv_increment(key, klen);

    uint64_t delay = config_u64("delay_ms");
    if (delay) astrid_sleep_ms(delay);

    if (astrid_eq(name, name_len, "silent")) return 0;
    if (astrid_eq(name, name_len, "broken")) {
        astrid_output_str("this is not JSON {");
        return 0;
    }
    if (astrid_eq(name, name_len, "trap")) return fail("hooker: trap requested");

    char capsule[256];
    uint64_t clen = astrid_get(astrid_get_config(astrid_put_str("capsule_name")), capsule,
                               sizeof capsule);
    out_len = 0;
    out_str("{\"capsule\":");
    if (clen == 0 || clen > sizeof capsule) out_str("null");
    else out_raw(capsule, (uint32_t)clen);
    out_str(",\"action\":\"");
    out_raw(name, name_len);
    out_str("\"}");
    astrid_output(out, out_len);
    return 0;
}
