/*
 * lifecycler — test capsule for the install/upgrade hooks, elicitation, secrets and approvals.
 *
 * Export `astrid_install` (empty input):
 *   - config "elicit_raw" set: passes its text to astrid_elicit, stores the raw result in KV
 *     "elicit_result" and returns (the error-text tests);
 *   - config "install_fail" set: fails with "lifecycler: install failed: <value>";
 *   - otherwise: elicit text app_name (description "Application name", default "demo") → KV
 *     "install_app_name" = the value; if astrid_has_secret({"key":"api_key"}) is
 *     {"exists":false}, elicit secret api_key; elicit select mode (options fast, safe) → KV
 *     "install_mode" = the value; elicit array relays → KV "install_relays" = the raw
 *     {"values":[...]} result; KV "install_ran" = "true".
 * Export `astrid_upgrade` (input {"prev_version": "..."}): KV "upgrade_ran" = "true",
 *   KV "upgrade_input" = the raw input.
 * Export `astrid_tool_call`, input {"name": "<tool>", "arguments": [<bytes of the JSON args>]}:
 *   approve      arguments passed as is to astrid_request_approval; output = its raw result
 *   request-raw  arguments are a JSON string; its text is passed to astrid_request_approval
 *   has-secret   arguments passed as is to astrid_has_secret; output = its raw result
 *   elicit-now   astrid_elicit with the arguments (a valid text request when they are {}): it
 *                must trap, since no lifecycle hook is running
 *   kv-get       {"key"} → raw astrid_kv_get result;  kv-keys  {"prefix"} → raw list_keys result
 * Config values come from astrid_get_config as JSON strings and are decoded here.
 */
#include "astrid.h"

#define INPUT_CAP (1024u * 1024u)
#define ARGS_CAP (256u * 1024u)
#define BUF_CAP (256u * 1024u)

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static unsigned char buf[BUF_CAP];
static unsigned char text[BUF_CAP];
static char message[1024];

/* ---- A tiny JSON scanner ------------------------------------------------------------------- */

static uint32_t skip_ws(const unsigned char *p, uint32_t n, uint32_t i) {
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

static uint32_t skip_string(const unsigned char *p, uint32_t n, uint32_t i) {
    for (i++; i < n; i++) {
        if (p[i] == '\\') i++;
        else if (p[i] == '"') return i + 1;
    }
    return 0;
}

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

/* The string member `key` of the object p[0..n), decoded into o; -1 if absent or not a string. */
static int32_t string_member(const unsigned char *p, uint32_t n, const char *key,
                             unsigned char *o, uint32_t cap) {
    int32_t v = find_member(p, n, key);
    if (v < 0) return -1;
    return decode_string(p, n, (uint32_t)v, o, cap);
}

/* ---- Host helpers ------------------------------------------------------------------------- */

static int32_t fail(const char *prefix, const void *detail, uint32_t detail_len) {
    uint32_t n = (uint32_t)astrid_strlen(prefix);
    if (n > sizeof message - 1) n = sizeof message - 1;
    memcpy(message, prefix, n);
    if (detail_len > sizeof message - 1 - n) detail_len = sizeof message - 1 - n;
    memcpy(message + n, detail, detail_len);
    message[n + detail_len] = 0;
    astrid_error(message);
    return 1;
}

/* Copies the block at off into buf; returns its length (capped at BUF_CAP). */
static uint32_t result(uint64_t off) {
    uint64_t len = astrid_get(off, buf, BUF_CAP);
    return (uint32_t)(len < BUF_CAP ? len : BUF_CAP);
}

static void kv_set(const char *key, const void *value, uint32_t n) {
    astrid_kv_set(astrid_put_str(key), astrid_put(value, n));
}

/* The string config value `key` decoded into text; -1 when absent or empty. */
static int32_t config_string(const char *key) {
    uint32_t n = result(astrid_get_config(astrid_put_str(key)));
    uint32_t i = skip_ws(buf, n, 0);
    if (i >= n || buf[i] != '"') return -1;
    int32_t len = decode_string(buf, n, i, text, BUF_CAP);
    return len > 0 ? len : -1;
}

/* astrid_elicit(request); the result lands in buf, its length is returned. */
static uint32_t elicit(const char *request) { return result(astrid_elicit(astrid_put_str(request))); }

/* Elicits `request` and stores the "value" of the answer in KV `key`. */
static int32_t elicit_value(const char *request, const char *key) {
    uint32_t n = elicit(request);
    int32_t len = string_member(buf, n, "value", text, BUF_CAP);
    if (len < 0) return fail("lifecycler: no value in ", buf, n);
    kv_set(key, text, (uint32_t)len);
    return 0;
}

/* ---- Lifecycle hooks ------------------------------------------------------------------------ */

__attribute__((export_name("astrid_install"))) int32_t astrid_install(void) {
    int32_t len = config_string("elicit_raw");
    if (len > 0) {
        uint32_t n = result(astrid_elicit(astrid_put(text, (uint64_t)len)));
        kv_set("elicit_result", buf, n);
        return 0;
    }
    len = config_string("install_fail");
    if (len > 0) return fail("lifecycler: install failed: ", text, (uint32_t)len);

    if (elicit_value("{\"type\":\"text\",\"key\":\"app_name\",\"description\":\"Application name\","
                     "\"default\":\"demo\"}",
                     "install_app_name"))
        return 1;

    uint32_t n = result(astrid_has_secret(astrid_put_str("{\"key\":\"api_key\"}")));
    if (astrid_eq(buf, n, "{\"exists\":false}")) {
        n = elicit("{\"type\":\"secret\",\"key\":\"api_key\",\"description\":\"API key\"}");
        if (!astrid_eq(buf, n, "{\"ok\":true}")) return fail("lifecycler: secret not stored: ", buf, n);
    }

    if (elicit_value("{\"type\":\"select\",\"key\":\"mode\",\"description\":\"Mode\","
                     "\"options\":[\"fast\",\"safe\"]}",
                     "install_mode"))
        return 1;

    n = elicit("{\"type\":\"array\",\"key\":\"relays\"}");
    kv_set("install_relays", buf, n);
    kv_set("install_ran", "true", 4);
    return 0;
}

__attribute__((export_name("astrid_upgrade"))) int32_t astrid_upgrade(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    if (len > INPUT_CAP) return fail("lifecycler: ", "input too large", 15);
    kv_set("upgrade_ran", "true", 4);
    kv_set("upgrade_input", input, (uint32_t)len);
    return 0;
}

/* ---- Tools ------------------------------------------------------------------------------------ */

static char tool[256];

static int32_t output(uint64_t off) {
    uint32_t n = result(off);
    astrid_output(buf, n);
    return 0;
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    if (len > INPUT_CAP) return fail("lifecycler: ", "input too large", 15);
    uint32_t n = (uint32_t)len;

    int32_t tool_len = string_member(input, n, "name", (unsigned char *)tool, sizeof tool);
    if (tool_len < 0) return fail("lifecycler: ", "input has no tool name", 22);

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
                return fail("lifecycler: ", "bad arguments", 13);
            args[nargs++] = (unsigned char)v;
            i = skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = skip_ws(input, n, i + 1);
        }
    }

    if (astrid_eq(tool, (uint64_t)tool_len, "approve"))
        return output(astrid_request_approval(astrid_put(args, nargs)));
    if (astrid_eq(tool, (uint64_t)tool_len, "request-raw")) {
        int32_t raw = decode_string(args, nargs, skip_ws(args, nargs, 0), text, BUF_CAP);
        if (raw < 0) return fail("lifecycler: ", "request-raw needs a JSON string", 31);
        return output(astrid_request_approval(astrid_put(text, (uint64_t)raw)));
    }
    if (astrid_eq(tool, (uint64_t)tool_len, "has-secret"))
        return output(astrid_has_secret(astrid_put(args, nargs)));
    if (astrid_eq(tool, (uint64_t)tool_len, "elicit-now")) {
        if (nargs == 0 || astrid_eq(args, nargs, "{}"))
            return output(astrid_elicit(astrid_put_str("{\"type\":\"text\",\"key\":\"late\"}")));
        return output(astrid_elicit(astrid_put(args, nargs)));
    }
    if (astrid_eq(tool, (uint64_t)tool_len, "kv-get")) {
        int32_t k = string_member(args, nargs, "key", text, BUF_CAP);
        if (k < 0) return fail("lifecycler: ", "kv-get needs a key", 18);
        return output(astrid_kv_get(astrid_put(text, (uint64_t)k)));
    }
    if (astrid_eq(tool, (uint64_t)tool_len, "kv-keys")) {
        int32_t k = string_member(args, nargs, "prefix", text, BUF_CAP);
        if (k < 0) k = 0;
        return output(astrid_kv_list_keys(astrid_put(text, (uint64_t)k)));
    }
    return fail("lifecycler: unknown tool: ", tool, (uint32_t)tool_len);
}
