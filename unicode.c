/* Category lookup through the generated two-stage table, and lenient UTF-8. */
#include "unicode.h"

#include "unicode_table.h"

#define CLASS_GROUP_MASK 7
#define CLASS_WHITE_SPACE 8

static uint8_t unicode_class(uint32_t cp) {
    if (cp >= 0x110000) return 0;
    uint32_t block = unicode_stage1[cp >> UNICODE_BLOCK_SHIFT];
    return unicode_stage2[block][cp & ((1u << UNICODE_BLOCK_SHIFT) - 1)];
}

enum ucat unicode_category(uint32_t cp) {
    return (enum ucat)(unicode_class(cp) & CLASS_GROUP_MASK);
}

int unicode_is_space(uint32_t cp) { return (unicode_class(cp) & CLASS_WHITE_SPACE) != 0; }

static int is_continuation(const char *s, size_t n, size_t i) {
    return i < n && ((uint8_t)s[i] & 0xc0) == 0x80;
}

uint32_t utf8_decode(const char *s, size_t n, size_t *len) {
    uint8_t b = (uint8_t)s[0];
    *len = 1;
    if (b < 0x80) return b;
    size_t need = b >= 0xf0 && b < 0xf8   ? 4
                  : b >= 0xe0 && b < 0xf0 ? 3
                  : b >= 0xc0 && b < 0xe0 ? 2
                                          : 0;
    if (need == 0) return UNICODE_REPLACEMENT; /* stray continuation byte or 0xF8..0xFF */
    uint32_t cp = b & (0x7f >> need);
    for (size_t i = 1; i < need; i++) {
        if (!is_continuation(s, n, i)) return UNICODE_REPLACEMENT;
        cp = (cp << 6) | ((uint8_t)s[i] & 0x3f);
    }
    *len = need;
    return cp;
}

size_t utf8_encode(uint32_t cp, char *out) {
    if (cp > 0x10ffff) cp = UNICODE_REPLACEMENT;
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}
