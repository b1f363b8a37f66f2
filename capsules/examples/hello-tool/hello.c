/*
 * hello-tool — an example tool capsule (no run loop).
 *
 * Export `astrid_tool_call` receives {"name": "<tool>", "arguments": [<bytes>]} where the bytes
 * are the UTF-8 text of the tool's JSON arguments, and outputs {"content": "...",
 * "is_error": false}. Tools: greet {name}, remember {key, value}, recall {key}, now {}.
 */
#include "astrid.h"
#include "astrid_json.h"

#define INPUT_CAP (256u * 1024u)
#define ARGS_CAP (64u * 1024u)
#define FIELD_CAP (16u * 1024u)
#define OUT_CAP (6u * FIELD_CAP + 256u)

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

static void out_json_escaped(const void *p, uint32_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)p;
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            out_raw(e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            out_raw(e, 6);
        } else {
            out_raw(&c, 1);
        }
    }
}

static int32_t reply(const void *content, uint32_t n) {
    out_len = 0;
    out_str("{\"content\":\"");
    out_json_escaped(content, n);
    out_str("\",\"is_error\":false}");
    astrid_output(out, out_len);
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

/* ---- Tools ----------------------------------------------------------------------------------- */

static char tool[FIELD_CAP], name[FIELD_CAP], key[FIELD_CAP], value[FIELD_CAP], text[2 * FIELD_CAP];

static int32_t tool_greet(uint32_t nargs) {
    if (json_string_member(args, nargs, "name", name, sizeof name) < 0) memcpy(name, "world", 6);
    uint32_t n = 0;
    memcpy(text, "Hello, ", 7);
    n = 7;
    uint32_t len = (uint32_t)astrid_strlen(name);
    memcpy(text + n, name, len);
    n += len;
    text[n++] = '!';
    return reply(text, n);
}

static int32_t tool_remember(uint32_t nargs) {
    int32_t klen = json_string_member(args, nargs, "key", key, sizeof key);
    int32_t vlen = json_string_member(args, nargs, "value", value, sizeof value);
    if (klen <= 0 || vlen < 0) return fail("remember: ", "needs string arguments key and value");
    astrid_kv_set(astrid_put(key, (uint64_t)klen), astrid_put(value, (uint64_t)vlen));
    memcpy(text, "remembered ", 11);
    memcpy(text + 11, key, (uint32_t)klen);
    return reply(text, 11 + (uint32_t)klen);
}

static int32_t tool_recall(uint32_t nargs) {
    int32_t klen = json_string_member(args, nargs, "key", key, sizeof key);
    if (klen <= 0) return fail("recall: ", "needs a string argument key");
    uint64_t len = astrid_get(astrid_kv_get(astrid_put(key, (uint64_t)klen)), value, sizeof value);
    return reply(value, (uint32_t)(len < sizeof value ? len : sizeof value));
}

static int32_t tool_now(void) {
    char ms[24];
    uint64_t len = astrid_get(astrid_clock_ms(), ms, sizeof ms);
    return reply(ms, (uint32_t)(len < sizeof ms ? len : sizeof ms));
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    if (len > INPUT_CAP) return fail("hello-tool: ", "input too large");
    uint32_t n = (uint32_t)len;

    int32_t tool_len = json_string_member(input, n, "name", tool, sizeof tool);
    if (tool_len < 0) return fail("hello-tool: ", "input has no tool name");

    /* "arguments": [byte, byte, ...] -> the UTF-8 text of the JSON arguments. */
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
            if (!digits || v > 255 || nargs >= ARGS_CAP)
                return fail("hello-tool: ", "bad arguments");
            args[nargs++] = (unsigned char)v;
            i = json_skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = json_skip_ws(input, n, i + 1);
        }
    }

    if (astrid_eq(tool, (uint64_t)tool_len, "greet")) return tool_greet(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "remember")) return tool_remember(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "recall")) return tool_recall(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "now")) return tool_now();
    return fail("Unknown tool: ", tool);
}
