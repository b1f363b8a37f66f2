/*
 * cronner — test capsule for cron (DESIGN §6.10).
 *
 * Tools (export astrid_tool_call, input {"name": "<tool>", "arguments": [<bytes of JSON args>]}):
 *   schedule {name, schedule, payload}  -> astrid_cron_schedule(name, schedule, payload)
 *   cancel   {name}                     -> astrid_cron_cancel(name)
 * Each string argument may instead be given in hex as <field>_hex (for bytes JSON cannot carry);
 * "payload_size": N makes the payload N bytes of 'x'. A missing argument is passed as empty.
 * Both answer {"content": "ok", "is_error": false}; a refused call traps the whole invocation.
 *
 * Export astrid_cron_trigger (input {"name": ..., "arguments": [<bytes>]}): increments KV
 * "count:<name>" (ASCII decimal) and sets KV "last:<name>" to the argument bytes.
 */
#include "astrid.h"
#include "astrid_json.h"

#define INPUT_CAP (5u * 1024u * 1024u)
#define ARGS_CAP (2u * 1024u * 1024u)
#define FIELD_CAP (64u * 1024u)
#define OUT_CAP 1024u

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static char out[OUT_CAP];
static uint32_t out_len;

/* ---- Output ------------------------------------------------------------------------------- */

static void out_raw(const void *p, uint32_t n) {
    if (out_len + n > OUT_CAP) n = OUT_CAP - out_len;
    memcpy(out + out_len, p, n);
    out_len += n;
}

static void out_str(const char *s) { out_raw(s, (uint32_t)astrid_strlen(s)); }

static int32_t reply_ok(void) {
    astrid_output_str("{\"content\":\"ok\",\"is_error\":false}");
    return 0;
}

static int32_t fail(const char *prefix, const char *detail) {
    out_len = 0;
    out_str(prefix);
    out_str(detail);
    out[out_len < OUT_CAP ? out_len : OUT_CAP - 1] = 0;
    astrid_error(out);
    return 1;
}

/* ---- Arguments ------------------------------------------------------------------------------ */

static char text[FIELD_CAP];
static unsigned char name[FIELD_CAP], schedule[FIELD_CAP], payload[ARGS_CAP];

/* Argument `key` (text) or `key`_hex (hex) of args[0..nargs) as bytes in o; its length, 0 when
 * absent, -1 when malformed. */
static int32_t bytes_arg(uint32_t nargs, const char *key, unsigned char *o, uint32_t cap) {
    char hex_key[64];
    uint32_t klen = (uint32_t)astrid_strlen(key);
    int32_t len = json_string_member(args, nargs, key, (char *)o, cap);
    if (len >= 0) return len;
    memcpy(hex_key, key, klen);
    memcpy(hex_key + klen, "_hex", 5);
    len = json_string_member(args, nargs, hex_key, text, sizeof text);
    if (len < 0) return 0;
    if (len % 2 || (uint32_t)len / 2 > cap) return -1;
    for (int32_t i = 0; i < len; i += 2) {
        uint32_t hi = json_hex_val((unsigned char)text[i]), lo = json_hex_val((unsigned char)text[i + 1]);
        if (hi > 15 || lo > 15) return -1;
        o[i / 2] = (unsigned char)(hi * 16 + lo);
    }
    return len / 2;
}

static int32_t tool_schedule(uint32_t nargs) {
    int32_t nlen = bytes_arg(nargs, "name", name, sizeof name);
    int32_t slen = bytes_arg(nargs, "schedule", schedule, sizeof schedule);
    int32_t plen;
    int32_t size_at = json_find_member(args, nargs, "payload_size");
    if (size_at >= 0) {
        uint64_t size = astrid_parse_u64(args + size_at, nargs - (uint32_t)size_at);
        if (size > sizeof payload) return fail("schedule: ", "payload_size too large");
        memset(payload, 'x', (size_t)size);
        plen = (int32_t)size;
    } else {
        plen = bytes_arg(nargs, "payload", payload, sizeof payload);
    }
    if (nlen < 0 || slen < 0 || plen < 0) return fail("schedule: ", "malformed arguments");
    astrid_cron_schedule(astrid_put(name, (uint64_t)nlen), astrid_put(schedule, (uint64_t)slen),
                         astrid_put(payload, (uint64_t)plen));
    return reply_ok();
}

static int32_t tool_cancel(uint32_t nargs) {
    int32_t nlen = bytes_arg(nargs, "name", name, sizeof name);
    if (nlen < 0) return fail("cancel: ", "malformed arguments");
    astrid_cron_cancel(astrid_put(name, (uint64_t)nlen));
    return reply_ok();
}

/* ---- Exports -------------------------------------------------------------------------------- */

static char invoked[FIELD_CAP];

/* Reads the invocation input: `invoked` gets its name, args[0..*nargs) its argument bytes. */
static int32_t read_invocation(uint32_t *nargs_out, const char *who) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    if (len > INPUT_CAP) return fail(who, "input too large");
    uint32_t n = (uint32_t)len;
    int32_t name_len = json_string_member(input, n, "name", invoked, sizeof invoked);
    if (name_len < 0) return fail(who, "input has no name");

    /* "arguments": [byte, byte, ...] */
    uint32_t nargs = 0;
    int32_t a = json_find_member(input, n, "arguments");
    if (a >= 0 && input[a] == '[') {
        uint32_t i = json_skip_ws(input, n, (uint32_t)a + 1);
        while (i < n && input[i] != ']') {
            uint32_t v = 0, digits = 0;
            while (i < n && input[i] >= '0' && input[i] <= '9') {
                v = v * 10 + (input[i++] - '0');
                digits++;
            }
            if (!digits || v > 255 || nargs >= ARGS_CAP) return fail(who, "bad arguments");
            args[nargs++] = (unsigned char)v;
            i = json_skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = json_skip_ws(input, n, i + 1);
        }
    }
    *nargs_out = nargs;
    return -1;
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint32_t nargs = 0;
    int32_t failed = read_invocation(&nargs, "cronner: ");
    if (failed >= 0) return failed;
    uint64_t tool_len = astrid_strlen(invoked);
    if (astrid_eq(invoked, tool_len, "schedule")) return tool_schedule(nargs);
    if (astrid_eq(invoked, tool_len, "cancel")) return tool_cancel(nargs);
    return fail("Unknown tool: ", invoked);
}

static char key[FIELD_CAP + 16];

static uint64_t key_block(const char *prefix) {
    uint32_t plen = (uint32_t)astrid_strlen(prefix);
    uint32_t nlen = (uint32_t)astrid_strlen(invoked);
    memcpy(key, prefix, plen);
    memcpy(key + plen, invoked, nlen);
    return astrid_put(key, plen + nlen);
}

__attribute__((export_name("astrid_cron_trigger"))) int32_t astrid_cron_trigger(void) {
    uint32_t nargs = 0;
    int32_t failed = read_invocation(&nargs, "cronner trigger: ");
    if (failed >= 0) return failed;

    char digits[24];
    uint64_t len = astrid_get(astrid_kv_get(key_block("count:")), digits, sizeof digits);
    uint64_t count = astrid_parse_u64(digits, len < sizeof digits ? len : sizeof digits);
    uint32_t n = astrid_fmt_u64(digits, count + 1);
    astrid_kv_set(key_block("count:"), astrid_put(digits, n));
    astrid_kv_set(key_block("last:"), astrid_put(args, nargs));
    return 0;
}
