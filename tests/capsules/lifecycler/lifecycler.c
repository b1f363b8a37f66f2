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
#include "astrid_json.h"

#define INPUT_CAP (1024u * 1024u)
#define ARGS_CAP (256u * 1024u)
#define BUF_CAP (256u * 1024u)

static unsigned char input[INPUT_CAP];
static unsigned char args[ARGS_CAP];
static unsigned char buf[BUF_CAP];
static unsigned char text[BUF_CAP];
static char message[1024];

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
    uint32_t i = json_skip_ws(buf, n, 0);
    if (i >= n || buf[i] != '"') return -1;
    int32_t len = json_decode_string(buf, n, i, text, BUF_CAP);
    return len > 0 ? len : -1;
}

/* astrid_elicit(request); the result lands in buf, its length is returned. */
static uint32_t elicit(const char *request) { return result(astrid_elicit(astrid_put_str(request))); }

/* Elicits `request` and stores the "value" of the answer in KV `key`. */
static int32_t elicit_value(const char *request, const char *key) {
    uint32_t n = elicit(request);
    int32_t len = json_bytes_member(buf, n, "value", text, BUF_CAP);
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

    int32_t tool_len = json_bytes_member(input, n, "name", (unsigned char *)tool, sizeof tool);
    if (tool_len < 0) return fail("lifecycler: ", "input has no tool name", 22);

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
                return fail("lifecycler: ", "bad arguments", 13);
            args[nargs++] = (unsigned char)v;
            i = json_skip_ws(input, n, i);
            if (i < n && input[i] == ',') i = json_skip_ws(input, n, i + 1);
        }
    }

    if (astrid_eq(tool, (uint64_t)tool_len, "approve"))
        return output(astrid_request_approval(astrid_put(args, nargs)));
    if (astrid_eq(tool, (uint64_t)tool_len, "request-raw")) {
        int32_t raw = json_decode_string(args, nargs, json_skip_ws(args, nargs, 0), text, BUF_CAP);
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
        int32_t k = json_bytes_member(args, nargs, "key", text, BUF_CAP);
        if (k < 0) return fail("lifecycler: ", "kv-get needs a key", 18);
        return output(astrid_kv_get(astrid_put(text, (uint64_t)k)));
    }
    if (astrid_eq(tool, (uint64_t)tool_len, "kv-keys")) {
        int32_t k = json_bytes_member(args, nargs, "prefix", text, BUF_CAP);
        if (k < 0) k = 0;
        return output(astrid_kv_list_keys(astrid_put(text, (uint64_t)k)));
    }
    return fail("lifecycler: unknown tool: ", tool, (uint32_t)tool_len);
}
