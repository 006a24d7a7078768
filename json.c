/* Strict JSON: recursive descent over the text, nodes and decoded strings in two arenas
 * sized from the input length before parsing starts (see json.h). */
#include "json.h"

#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256

struct parser {
    const char *name;
    const char *s; /* text */
    size_t n, pos;
    struct json *nodes;
    size_t n_nodes, cap_nodes;
    char *strings;
    size_t n_str, cap_str;
    int depth;
};

/* Records "json: NAME:LINE:COL: msg" for the current position; always returns -1. */
static int fail(const struct parser *p, const char *msg) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->n; i++) {
        if (p->s[i] == '\n')
            line++, col = 1;
        else
            col++;
    }
    err_set("json: %s:%zu:%zu: %s", p->name, line, col, msg);
    return -1;
}

static void skip_ws(struct parser *p) {
    while (p->pos < p->n) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static struct json *new_node(struct parser *p, enum json_type t) {
    /* cap_nodes = n + 1 and each node consumes an input byte, so this cannot overflow */
    if (p->n_nodes >= p->cap_nodes) die("json: node arena exhausted");
    struct json *v = &p->nodes[p->n_nodes++];
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static int literal(struct parser *p, const char *word, enum json_type t, struct json **out) {
    size_t k = strlen(word);
    if (p->n - p->pos < k || memcmp(p->s + p->pos, word, k)) return fail(p, "invalid literal");
    p->pos += k;
    *out = new_node(p, t);
    return 0;
}

static size_t digits(struct parser *p) {
    size_t k = 0;
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++, k++;
    return k;
}

/* Grammar check first (strtod accepts more than JSON: hex, inf, leading '+'), then convert. */
static int number(struct parser *p, struct json **out) {
    size_t start = p->pos;
    int is_int = 1;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos < p->n && p->s[p->pos] == '0')
        p->pos++;
    else if (digits(p) == 0)
        return fail(p, "invalid number");
    if (p->pos < p->n && p->s[p->pos] == '.') {
        p->pos++, is_int = 0;
        if (digits(p) == 0) return fail(p, "digit expected after '.'");
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++, is_int = 0;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (digits(p) == 0) return fail(p, "digit expected in exponent");
    }
    char buf[64];
    size_t len = p->pos - start;
    if (len >= sizeof buf) return fail(p, "number too long");
    memcpy(buf, p->s + start, len);
    buf[len] = 0;
    struct json *v = new_node(p, JSON_NUMBER);
    v->num = strtod(buf, NULL);
    if (is_int) {
        errno = 0;
        long long i = strtoll(buf, NULL, 10);
        v->is_int = errno == 0;
        v->i = i;
    }
    *out = v;
    return 0;
}

static int hex4(struct parser *p, unsigned *out) {
    if (p->n - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->pos++];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return fail(p, "invalid hex digit in \\u escape");
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct parser *p, unsigned cp) {
    char *o = p->strings + p->n_str;
    if (cp < 0x80) {
        o[0] = (char)cp, p->n_str += 1;
    } else if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6), o[1] = (char)(0x80 | (cp & 0x3f)), p->n_str += 2;
    } else if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12), o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f)), p->n_str += 3;
    } else {
        o[0] = (char)(0xf0 | cp >> 18), o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        o[2] = (char)(0x80 | (cp >> 6 & 0x3f)), o[3] = (char)(0x80 | (cp & 0x3f));
        p->n_str += 4;
    }
}

/* \uXXXX, with surrogate pairs joined; a lone surrogate is an error. Six input bytes give at
 * most three output bytes (twelve give four), so the string arena never overflows. */
static int unicode_escape(struct parser *p) {
    unsigned cp, lo;
    if (hex4(p, &cp)) return -1;
    if (cp >= 0xdc00 && cp <= 0xdfff) return fail(p, "lone low surrogate in \\u escape");
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p->n - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
            return fail(p, "high surrogate without its low half");
        p->pos += 2;
        if (hex4(p, &lo)) return -1;
        if (lo < 0xdc00 || lo > 0xdfff) return fail(p, "high surrogate without its low half");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    put_utf8(p, cp);
    return 0;
}

static int escape(struct parser *p) {
    if (p->pos >= p->n) return fail(p, "unterminated string");
    char c = p->s[p->pos++];
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = c ? strchr(from, c) : NULL;
    if (k) {
        p->strings[p->n_str++] = to[k - from];
        return 0;
    }
    if (c == 'u') return unicode_escape(p);
    p->pos--;
    return fail(p, "invalid escape");
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid (overlong, surrogate, > U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k = c < 0x80             ? 1
               : (c & 0xe0) == 0xc0 ? 2
               : (c & 0xf0) == 0xe0 ? 3
               : (c & 0xf8) == 0xf0 ? 4
                                    : 0;
    if (k == 0 || k > n) return 0;
    unsigned cp = k == 1 ? c : c & (0x7fu >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return k;
}

static int string_raw(struct parser *p, const char **out, size_t *len) {
    p->pos++; /* opening quote */
    size_t start = p->n_str;
    for (;;) {
        if (p->pos >= p->n) return fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') break;
        if (c < 0x20) return fail(p, "control character in string");
        if (c == '\\') {
            p->pos++;
            if (escape(p)) return -1;
            continue;
        }
        size_t k = utf8_len((const unsigned char *)p->s + p->pos, p->n - p->pos);
        if (k == 0) return fail(p, "invalid UTF-8 in string");
        memcpy(p->strings + p->n_str, p->s + p->pos, k);
        p->n_str += k, p->pos += k;
    }
    p->pos++;
    *len = p->n_str - start;
    p->strings[p->n_str++] = 0;
    *out = p->strings + start;
    return 0;
}

static int string(struct parser *p, struct json **out) {
    struct json *v = new_node(p, JSON_STRING);
    if (string_raw(p, &v->str, &v->len)) return -1;
    *out = v;
    return 0;
}

static int value(struct parser *p, struct json **out);

/* Appends child to parent's list (tail kept in *tail). */
static void append(struct json *parent, struct json **tail, struct json *child) {
    if (*tail)
        (*tail)->next = child;
    else
        parent->child = child;
    *tail = child;
    parent->len++;
}

static int array(struct parser *p, struct json **out) {
    struct json *a = new_node(p, JSON_ARRAY), *tail = NULL;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == ']') return p->pos++, *out = a, 0;
    for (;;) {
        struct json *e;
        if (value(p, &e)) return -1;
        append(a, &tail, e);
        skip_ws(p);
        if (p->pos >= p->n) return fail(p, "unterminated array");
        char c = p->s[p->pos++];
        if (c == ']') break;
        if (c != ',') return p->pos--, fail(p, "',' or ']' expected");
    }
    *out = a;
    return 0;
}

static int member(struct parser *p, struct json *obj, struct json **tail) {
    skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != '"') return fail(p, "string key expected");
    const char *key;
    size_t klen;
    if (string_raw(p, &key, &klen)) return -1;
    skip_ws(p);
    if (p->pos >= p->n || p->s[p->pos] != ':') return fail(p, "':' expected");
    p->pos++;
    struct json *v;
    if (value(p, &v)) return -1;
    v->key = key;
    append(obj, tail, v);
    return 0;
}

static int object(struct parser *p, struct json **out) {
    struct json *o = new_node(p, JSON_OBJECT), *tail = NULL;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->n && p->s[p->pos] == '}') return p->pos++, *out = o, 0;
    for (;;) {
        if (member(p, o, &tail)) return -1;
        skip_ws(p);
        if (p->pos >= p->n) return fail(p, "unterminated object");
        char c = p->s[p->pos++];
        if (c == '}') break;
        if (c != ',') return p->pos--, fail(p, "',' or '}' expected");
    }
    *out = o;
    return 0;
}

static int value(struct parser *p, struct json **out) {
    skip_ws(p);
    if (p->pos >= p->n) return fail(p, "value expected, end of input found");
    if (++p->depth > JSON_MAX_DEPTH) return fail(p, "nested too deeply");
    int rc;
    switch (p->s[p->pos]) {
    case '{':
        rc = object(p, out);
        break;
    case '[':
        rc = array(p, out);
        break;
    case '"':
        rc = string(p, out);
        break;
    case 't':
        rc = literal(p, "true", JSON_TRUE, out);
        break;
    case 'f':
        rc = literal(p, "false", JSON_FALSE, out);
        break;
    case 'n':
        rc = literal(p, "null", JSON_NULL, out);
        break;
    default:
        if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            rc = number(p, out);
        else
            rc = fail(p, "unexpected character");
    }
    p->depth--;
    return rc;
}

int json_parse(struct json_doc *d, const char *name, const char *text, size_t n) {
    memset(d, 0, sizeof *d);
    struct parser p = {.name = name, .s = text, .n = n};
    p.cap_nodes = n + 1;
    p.cap_str = n + 1;
    p.nodes = xmalloc(p.cap_nodes * sizeof *p.nodes);
    p.strings = xmalloc(p.cap_str);
    struct json *root;
    int rc = value(&p, &root);
    if (rc == 0) {
        skip_ws(&p);
        if (p.pos != n) rc = fail(&p, "trailing characters after the document");
    }
    if (rc) {
        free(p.nodes), free(p.strings);
        return -1;
    }
    d->root = root, d->nodes = p.nodes, d->strings = p.strings;
    return 0;
}

int json_parse_file(struct json_doc *d, const char *path, size_t max_bytes) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set("json: cannot open %s: %s", path, strerror(errno)), -1;
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap >= max_bytes) {
                fclose(f), free(buf);
                return err_set("json: %s: larger than %zu bytes", path, max_bytes), -1;
            }
            cap = cap * 2 < max_bytes ? cap * 2 : max_bytes;
            buf = xrealloc(buf, cap);
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return free(buf), err_set("json: %s: read error", path), -1;
    int rc = json_parse(d, path, buf, n);
    free(buf);
    return rc;
}

void json_free(struct json_doc *d) {
    free(d->nodes);
    free(d->strings);
    memset(d, 0, sizeof *d);
}

const struct json *json_get(const struct json *v, const char *key) {
    if (!v || v->type != JSON_OBJECT) return NULL;
    for (const struct json *m = v->child; m; m = m->next)
        if (!strcmp(m->key, key)) return m;
    return NULL;
}

const struct json *json_at(const struct json *v, size_t i) {
    if (!v || v->type != JSON_ARRAY || i >= v->len) return NULL;
    const struct json *e = v->child;
    while (i--) e = e->next;
    return e;
}

const char *json_get_str(const struct json *obj, const char *key) {
    const struct json *v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->str : NULL;
}

int json_get_int(const struct json *obj, const char *key, int64_t lo, int64_t hi, int64_t *out) {
    const struct json *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_NUMBER || !v->is_int || v->i < lo || v->i > hi) {
        err_set("\"%s\" must be an integer in [%lld, %lld]", key, (long long)lo, (long long)hi);
        return -1;
    }
    *out = v->i;
    return 0;
}

int json_get_num(const struct json *obj, const char *key, double *out) {
    const struct json *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_NUMBER) return err_set("\"%s\" must be a number", key), -1;
    *out = v->num;
    return 0;
}

int json_get_bool(const struct json *obj, const char *key, int *out) {
    const struct json *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return 1;
    if (v->type != JSON_TRUE && v->type != JSON_FALSE)
        return err_set("\"%s\" must be true or false", key), -1;
    *out = v->type == JSON_TRUE;
    return 0;
}
