/*
 * hello-tool — an example tool capsule (no run loop).
 *
 * Export `astrid_tool_call` receives {"name": "<tool>", "arguments": [<bytes>]} where the bytes
 * are the UTF-8 text of the tool's JSON arguments, and outputs {"content": "...",
 * "is_error": false}. Tools: greet {name}, remember {key, value}, recall {key}, now {}.
 */
#include "astrid.h"

#define INPUT_CAP (256u * 1024u)
#define ARGS_CAP (64u * 1024u)
#define FIELD_CAP (16u * 1024u)
#define OUT_CAP (6u * FIELD_CAP + 256u)

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static char out[OUT_CAP];
static uint32_t out_len;

/* ---- A tiny JSON scanner: enough to find members of an object --------------------------- */

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

static uint32_t hex_val(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 16;
}

static uint32_t put_utf8(unsigned char *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

static int32_t read_u16_escape(const unsigned char *p, uint32_t n, uint32_t i) {
    uint32_t v = 0;
    if (i + 4 > n) return -1;
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t h = hex_val(p[i + k]);
        if (h > 15) return -1;
        v = v * 16 + h;
    }
    return (int32_t)v;
}

/* Decodes the JSON string at p[i] == '"' into o (cap bytes); returns its length, or -1. */
static int32_t decode_string(const unsigned char *p, uint32_t n, uint32_t i, unsigned char *o,
                             uint32_t cap) {
    uint32_t len = 0;
    if (i >= n || p[i] != '"') return -1;
    for (i++; i < n; i++) {
        unsigned char c = p[i];
        if (len + 4 > cap) return -1;
        if (c == '"') return (int32_t)len;
        if (c != '\\') {
            o[len++] = c;
            continue;
        }
        if (++i >= n) return -1;
        switch (p[i]) {
        case '"': o[len++] = '"'; break;
        case '\\': o[len++] = '\\'; break;
        case '/': o[len++] = '/'; break;
        case 'b': o[len++] = '\b'; break;
        case 'f': o[len++] = '\f'; break;
        case 'n': o[len++] = '\n'; break;
        case 'r': o[len++] = '\r'; break;
        case 't': o[len++] = '\t'; break;
        case 'u': {
            int32_t cp = read_u16_escape(p, n, i + 1);
            if (cp < 0) return -1;
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 2 < n && p[i + 1] == '\\' && p[i + 2] == 'u') {
                int32_t lo = read_u16_escape(p, n, i + 3);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            len += put_utf8(o + len, (uint32_t)cp);
            break;
        }
        default: return -1;
        }
    }
    return -1;
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

/* The string member `key` of the object p[0..n), decoded into o (NUL-terminated); -1 if absent. */
static int32_t string_member(const unsigned char *p, uint32_t n, const char *key, char *o,
                             uint32_t cap) {
    int32_t v = find_member(p, n, key);
    if (v < 0) return -1;
    int32_t len = decode_string(p, n, (uint32_t)v, (unsigned char *)o, cap - 1);
    if (len < 0) return -1;
    o[len] = 0;
    return len;
}

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
    if (string_member(args, nargs, "name", name, sizeof name) < 0) memcpy(name, "world", 6);
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
    int32_t klen = string_member(args, nargs, "key", key, sizeof key);
    int32_t vlen = string_member(args, nargs, "value", value, sizeof value);
    if (klen <= 0 || vlen < 0) return fail("remember: ", "needs string arguments key and value");
    astrid_kv_set(astrid_put(key, (uint64_t)klen), astrid_put(value, (uint64_t)vlen));
    memcpy(text, "remembered ", 11);
    memcpy(text + 11, key, (uint32_t)klen);
    return reply(text, 11 + (uint32_t)klen);
}

static int32_t tool_recall(uint32_t nargs) {
    int32_t klen = string_member(args, nargs, "key", key, sizeof key);
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

    int32_t tool_len = string_member(input, n, "name", tool, sizeof tool);
    if (tool_len < 0) return fail("hello-tool: ", "input has no tool name");

    /* "arguments": [byte, byte, ...] -> the UTF-8 text of the JSON arguments. */
    uint32_t nargs = 0;
    int32_t a = find_member(input, n, "arguments");
    if (a >= 0 && input[a] == '[') {
        uint32_t i = skip_ws(input, n, (uint32_t)a + 1);
        while (i < n && input[i] != ']') {
            uint32_t v = 0, digits = 0;
            while (i < n && input[i] >= '0' && input[i] <= '9') {
                v = v * 10 + (input[i++] - '0');
                digits++;
            }
            if (!digits || v > 255 || nargs >= ARGS_CAP)
                return fail("hello-tool: ", "bad arguments");
            args[nargs++] = (unsigned char)v;
            i = skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = skip_ws(input, n, i + 1);
        }
    }

    if (astrid_eq(tool, (uint64_t)tool_len, "greet")) return tool_greet(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "remember")) return tool_remember(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "recall")) return tool_recall(nargs);
    if (astrid_eq(tool, (uint64_t)tool_len, "now")) return tool_now();
    return fail("Unknown tool: ", tool);
}
