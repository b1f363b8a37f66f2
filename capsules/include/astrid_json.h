/*
 * astrid_json.h — a tiny JSON reader for capsules written in C: enough to find the members of an
 * object and decode string values (escapes and \uXXXX surrogate pairs included). Header-only;
 * include it after astrid.h. Offsets are indexes into the byte buffer p[0..n).
 */
#ifndef ASTRID_JSON_H
#define ASTRID_JSON_H

#include "astrid.h"


static inline uint32_t json_skip_ws(const unsigned char *p, uint32_t n, uint32_t i) {
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

/* Index just past the string starting at p[i] == '"', or 0 if it is unterminated. */
static inline uint32_t json_skip_string(const unsigned char *p, uint32_t n, uint32_t i) {
    for (i++; i < n; i++) {
        if (p[i] == '\\') i++;
        else if (p[i] == '"') return i + 1;
    }
    return 0;
}

/* Index just past the value starting at p[i], or 0 if it is malformed. */
static inline uint32_t json_skip_value(const unsigned char *p, uint32_t n, uint32_t i) {
    if (i >= n) return 0;
    if (p[i] == '"') return json_skip_string(p, n, i);
    if (p[i] == '{' || p[i] == '[') {
        uint32_t depth = 0;
        while (i < n) {
            unsigned char c = p[i];
            if (c == '"') {
                i = json_skip_string(p, n, i);
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

static inline uint32_t json_hex_val(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return 16;
}

static inline uint32_t json_put_utf8(unsigned char *o, uint32_t cp) {
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

static inline int32_t json_read_u16_escape(const unsigned char *p, uint32_t n, uint32_t i) {
    uint32_t v = 0;
    if (i + 4 > n) return -1;
    for (uint32_t k = 0; k < 4; k++) {
        uint32_t h = json_hex_val(p[i + k]);
        if (h > 15) return -1;
        v = v * 16 + h;
    }
    return (int32_t)v;
}

/* Decodes the JSON string at p[i] == '"' into o (cap bytes); returns its length, or -1. */
static inline int32_t json_decode_string(const unsigned char *p, uint32_t n, uint32_t i,
                                         unsigned char *o, uint32_t cap) {
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
            int32_t cp = json_read_u16_escape(p, n, i + 1);
            if (cp < 0) return -1;
            i += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && i + 2 < n && p[i + 1] == '\\' && p[i + 2] == 'u') {
                int32_t lo = json_read_u16_escape(p, n, i + 3);
                if (lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            len += json_put_utf8(o + len, (uint32_t)cp);
            break;
        }
        default: return -1;
        }
    }
    return -1;
}

/* Finds member `key` of the JSON object in p[0..n); returns the index of its value or -1. */
static inline int32_t json_find_member(const unsigned char *p, uint32_t n, const char *key) {
    uint32_t i = json_skip_ws(p, n, 0);
    if (i >= n || p[i] != '{') return -1;
    i = json_skip_ws(p, n, i + 1);
    while (i < n && p[i] == '"') {
        uint32_t kstart = i + 1;
        uint32_t kend = json_skip_string(p, n, i);
        if (!kend) return -1;
        i = json_skip_ws(p, n, kend);
        if (i >= n || p[i] != ':') return -1;
        i = json_skip_ws(p, n, i + 1);
        if (astrid_eq(p + kstart, kend - 1 - kstart, key)) return (int32_t)i;
        i = json_skip_value(p, n, i);
        if (!i) return -1;
        i = json_skip_ws(p, n, i);
        if (i < n && p[i] == ',') i = json_skip_ws(p, n, i + 1);
    }
    return -1;
}

/* The string member `key` of the object p[0..n), decoded into o (NUL-terminated); -1 if absent. */
static inline int32_t json_string_member(const unsigned char *p, uint32_t n, const char *key,
                                         char *o, uint32_t cap) {
    int32_t v = json_find_member(p, n, key);
    if (v < 0) return -1;
    int32_t len = json_decode_string(p, n, (uint32_t)v, (unsigned char *)o, cap - 1);
    if (len < 0) return -1;
    o[len] = 0;
    return len;
}

/* The string member `key` of the object p[0..n), decoded into o (not NUL-terminated): its
 * length, or -1 if absent or not a string. */
static inline int32_t json_bytes_member(const unsigned char *p, uint32_t n, const char *key,
                                        unsigned char *o, uint32_t cap) {
    int32_t v = json_find_member(p, n, key);
    if (v < 0) return -1;
    return json_decode_string(p, n, (uint32_t)v, o, cap);
}

#endif
