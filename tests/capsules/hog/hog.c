/*
 * hog — a test capsule that makes its worker's resident memory grow.
 *
 * Tool "fill": grows the linear memory one 64 KiB page at a time to 1000 pages (just under the
 * capsule memory cap of 1024 pages = 64 MiB), writes to every new page so that it is resident,
 * then sleeps in 50 ms steps for 5 s, holding the memory, and answers with the number of
 * MiB it added. The supervisor's RSS limit is expected to kill the worker during the sleep.
 * Tool "ping": answers "pong".
 */
#include "astrid.h"

#define PAGE 65536u
#define MAX_PAGES 1000u
#define INPUT_CAP 4096u

static unsigned char input[INPUT_CAP];
static char out[128];

static int32_t reply(const char *text, uint32_t n) {
    uint32_t len = 0;
    const char *head = "{\"content\":\"";
    const char *tail = "\",\"is_error\":false}";
    memcpy(out, head, astrid_strlen(head));
    len += (uint32_t)astrid_strlen(head);
    memcpy(out + len, text, n);
    len += n;
    memcpy(out + len, tail, astrid_strlen(tail));
    len += (uint32_t)astrid_strlen(tail);
    astrid_output(out, len);
    return 0;
}

static int32_t fill(void) {
    uint32_t pages = 0;
    /* Stop short of the cap: growing past it is a trap ("oom"), not a -1 from memory.grow. */
    while (__builtin_wasm_memory_size(0) < MAX_PAGES) {
        int32_t previous = __builtin_wasm_memory_grow(0, 1);
        if (previous < 0) break;
        /* One byte per 4 KiB makes every host page of the new wasm page resident. */
        volatile unsigned char *base = (volatile unsigned char *)((uintptr_t)previous * PAGE);
        for (uint32_t offset = 0; offset < PAGE; offset += 4096u) base[offset] = 0xA5;
        pages++;
    }
    for (uint32_t step = 0; step < 100; step++) astrid_sleep_ms(50);
    char digits[16];
    uint32_t n = astrid_fmt_u64(digits, (uint64_t)pages * PAGE / (1024u * 1024u));
    return reply(digits, n);
}

__attribute__((export_name("astrid_tool_call"))) int32_t astrid_tool_call(void) {
    uint64_t len = astrid_input(input, INPUT_CAP);
    uint32_t n = (uint32_t)(len < INPUT_CAP ? len : INPUT_CAP);
    /* {"name":"fill",...} or {"name":"ping",...}: the tool name is all that matters. */
    for (uint32_t i = 0; i + 6 <= n; i++) {
        if (astrid_eq(input + i, 6, "\"fill\"")) return fill();
        if (astrid_eq(input + i, 6, "\"ping\"")) return reply("pong", 4);
    }
    astrid_error("hog: unknown tool");
    return 1;
}
