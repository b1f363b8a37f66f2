/*
 * sleeper — test capsule for guests that run past their call timeout.
 *
 * Export `astrid_tool_call` receives {"name": "<tool>", "arguments": [<bytes>]} where the bytes
 * are the UTF-8 text of the tool's JSON arguments, and outputs {"content": "...",
 * "is_error": false}. Tools:
 *   - sleep {ms}: astrid_sleep_ms(ms) (WASI poll_oneoff: Extism's timeout cannot interrupt it),
 *     then "slept <ms>";
 *   - spin {}: an infinite loop without host calls (the epoch timeout traps it);
 *   - ok {}: "ok".
 * The first run of decimal digits in the arguments is taken as ms (no full JSON parser needed).
 */
#include "astrid.h"

#define INPUT_CAP (64u * 1024u)

static unsigned char input[INPUT_CAP];
static char out[256];

static void reply(const char *content, uint32_t n) {
    static const char head[] = "{\"content\":\"";
    static const char tail[] = "\",\"is_error\":false}";
    uint32_t len = 0;
    memcpy(out, head, sizeof head - 1);
    len += sizeof head - 1;
    memcpy(out + len, content, n);
    len += n;
    memcpy(out + len, tail, sizeof tail - 1);
    len += sizeof tail - 1;
    astrid_output(out, len);
}

/* The value of the "name" member: the bytes between the quotes after "name":, or -1. */
static int32_t tool_name(const unsigned char *p, uint32_t n, uint32_t *start) {
    static const char key[] = "\"name\"";
    for (uint32_t i = 0; i + sizeof key - 1 <= n; i++) {
        if (memcmp(p + i, key, sizeof key - 1) != 0) continue;
        uint32_t j = i + sizeof key - 1;
        while (j < n && (p[j] == ' ' || p[j] == ':')) j++;
        if (j >= n || p[j] != '"') return -1;
        *start = ++j;
        while (j < n && p[j] != '"') j++;
        return j < n ? (int32_t)(j - *start) : -1;
    }
    return -1;
}

/* The arguments are a JSON array of byte values: decode them and parse the first number in the
 * text they spell. */
static uint64_t first_number_in_arguments(const unsigned char *p, uint32_t n) {
    static const char key[] = "\"arguments\"";
    uint32_t i = 0;
    for (; i + sizeof key - 1 <= n; i++) {
        if (memcmp(p + i, key, sizeof key - 1) == 0) break;
    }
    uint64_t value = 0;
    int digits = 0;
    for (i += sizeof key - 1; i < n && p[i] != ']'; i++) {
        if (p[i] < '0' || p[i] > '9') continue;
        uint32_t byte = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') byte = byte * 10 + (uint32_t)(p[i++] - '0');
        if (byte >= '0' && byte <= '9') {
            value = value * 10 + (byte - '0');
            digits = 1;
        } else if (digits) {
            break;
        }
        if (i < n && p[i] == ']') break;
    }
    return value;
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    uint32_t n = (uint32_t)(len < INPUT_CAP ? len : INPUT_CAP);
    uint32_t start = 0;
    int32_t name_len = tool_name(input, n, &start);
    if (name_len < 0) {
        astrid_error("sleeper: input has no tool name");
        return 1;
    }
    const unsigned char *name = input + start;
    if (astrid_eq(name, (uint64_t)name_len, "ok")) {
        reply("ok", 2);
        return 0;
    }
    if (astrid_eq(name, (uint64_t)name_len, "spin")) {
        volatile uint64_t counter = 0;
        for (;;) counter++;
    }
    if (astrid_eq(name, (uint64_t)name_len, "sleep")) {
        uint64_t ms = first_number_in_arguments(input, n);
        astrid_sleep_ms(ms);
        char text[32];
        memcpy(text, "slept ", 6);
        uint32_t digits = astrid_fmt_u64(text + 6, ms);
        reply(text, 6 + digits);
        return 0;
    }
    astrid_error("sleeper: unknown tool");
    return 1;
}
