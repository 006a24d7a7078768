/* SentencePiece's tokenizer.model for moerun convert: a serialized sentencepiece.ModelProto
 * (protobuf, proto2). Only the pieces are needed: field 1, repeated SentencePiece {1: piece
 * (string), 2: score (float), 3: type (enum)}. trainer_spec, normalizer_spec and any field a
 * newer SentencePiece adds are skipped by their wire type, as a protobuf reader must.
 *
 * The file comes from the user: every length is checked against the bytes left in its
 * message, and anything malformed is an error naming the file, the field and the offset. */
#include "tools/convert.h"

#include "unicode.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE (1u << 30) /* real ones are 0.5-5 MB */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

struct pb {
    const char *file;
    const uint8_t *buf;
    size_t pos, end; /* reading buf[pos..end), the current message */
    char where[96];  /* what is being read, for messages */
};

__attribute__((format(printf, 3, 4))) static int fail(const struct pb *b, size_t at,
                                                      const char *fmt, ...) {
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    err_set("%s: %s at offset %zu: %s", b->file, b->where, at, what);
    return -1;
}

static int varint(struct pb *b, uint64_t *v) {
    size_t at = b->pos;
    uint64_t x = 0;
    for (int i = 0; i < 10; i++) {
        if (b->pos >= b->end) return fail(b, at, "truncated varint");
        uint8_t c = b->buf[b->pos++];
        /* the 10th byte holds bit 63 only, and ends the varint */
        if (i == 9 && c > 1) return fail(b, at, "varint longer than 64 bits");
        x |= (uint64_t)(c & 0x7f) << (7 * i);
        if (!(c & 0x80)) return *v = x, 0;
    }
    return fail(b, at, "varint longer than 64 bits");
}

static int take(struct pb *b, size_t n, const char *what) {
    if (b->end - b->pos < n)
        return fail(b, b->pos, "truncated %s: %zu bytes needed, %zu left", what, n,
                    b->end - b->pos);
    b->pos += n;
    return 0;
}

/* A length-delimited value: its bytes are buf[*start .. *start + *len). */
static int len_delim(struct pb *b, size_t *start, size_t *len) {
    size_t at = b->pos;
    uint64_t n;
    if (varint(b, &n)) return -1;
    if (n > b->end - b->pos)
        return fail(b, at, "length %llu runs past the end (%zu bytes left)", (unsigned long long)n,
                    b->end - b->pos);
    *start = b->pos, *len = (size_t)n;
    b->pos += (size_t)n;
    return 0;
}

/* The next field's key: 0 read, 1 end of the message, -1 error. Groups (wire types 3 and 4,
 * deprecated, never in a SentencePiece model) and 6, 7 (undefined) are refused. */
static int key(struct pb *b, const char *msg, uint32_t *field, int *wt, size_t *at) {
    if (b->pos == b->end) return 1;
    *at = b->pos;
    snprintf(b->where, sizeof b->where, "%s field key", msg);
    uint64_t k;
    if (varint(b, &k)) return -1;
    *field = (uint32_t)(k >> 3), *wt = (int)(k & 7);
    if (k >> 3 == 0 || k >> 3 > 0x1fffffff)
        return fail(b, *at, "field number %llu out of range", (unsigned long long)(k >> 3));
    snprintf(b->where, sizeof b->where, "%s field %u", msg, *field);
    if (*wt != WT_VARINT && *wt != WT_I64 && *wt != WT_LEN && *wt != WT_I32)
        return fail(b, *at, "unsupported wire type %d", *wt);
    return 0;
}

static int skip(struct pb *b, int wt) {
    uint64_t v;
    size_t s, n;
    switch (wt) {
    case WT_VARINT:
        return varint(b, &v);
    case WT_I64:
        return take(b, 8, "fixed64");
    case WT_I32:
        return take(b, 4, "fixed32");
    default:
        return len_delim(b, &s, &n);
    }
}

static int expect_wt(const struct pb *b, size_t at, int wt, int want) {
    static const char *const names[] = {"varint", "fixed64", "length-delimited", "", "", "fixed32"};
    if (wt == want) return 0;
    return fail(b, at, "wire type %d, expected %d (%s)", wt, want, names[want]);
}

/* The text must be able to go into a GGUF string array: UTF-8, no NUL, not empty. */
static int check_text(const struct pb *b, size_t at, const char *s, size_t n) {
    if (n == 0) return fail(b, at, "empty piece");
    for (size_t i = 0, l; i < n; i += l) {
        if (s[i] == 0) return fail(b, at + i, "piece holds a NUL byte");
        if (utf8_decode(s + i, n - i, &l) == 0xfffd && l == 1)
            return fail(b, at + i, "piece is not valid UTF-8");
    }
    return 0;
}

static int read_piece(struct pb *b, int64_t idx, struct spm_piece *p) {
    char msg[48];
    snprintf(msg, sizeof msg, "pieces[%lld]", (long long)idx);
    p->text = NULL, p->score = 0, p->type = SPM_NORMAL; /* proto2 defaults */
    uint32_t field;
    int wt, rc;
    size_t at, s = 0, n = 0;
    uint64_t v;
    while ((rc = key(b, msg, &field, &wt, &at)) == 0) {
        if (field == 1) { /* piece; a repeated scalar field: the last one counts */
            if (expect_wt(b, at, wt, WT_LEN) || len_delim(b, &s, &n)) return -1;
            if (check_text(b, s, (const char *)b->buf + s, n)) return -1;
            free(p->text);
            p->text = xmalloc(n + 1);
            memcpy(p->text, b->buf + s, n);
            p->text[n] = 0;
        } else if (field == 2) { /* score, little-endian float */
            if (expect_wt(b, at, wt, WT_I32) || take(b, 4, "fixed32")) return -1;
            uint32_t u = (uint32_t)b->buf[b->pos - 4] | (uint32_t)b->buf[b->pos - 3] << 8 |
                         (uint32_t)b->buf[b->pos - 2] << 16 | (uint32_t)b->buf[b->pos - 1] << 24;
            memcpy(&p->score, &u, 4);
        } else if (field == 3) { /* type */
            size_t vat = b->pos;
            if (expect_wt(b, at, wt, WT_VARINT) || varint(b, &v)) return -1;
            if (v < SPM_NORMAL || v > SPM_BYTE)
                return fail(b, vat, "type %llu is not a SentencePiece piece type (1..6)",
                            (unsigned long long)v);
            p->type = (int32_t)v;
        } else if (skip(b, wt)) {
            return -1;
        }
    }
    if (rc < 0) return -1;
    if (!p->text) {
        snprintf(b->where, sizeof b->where, "%s", msg);
        return fail(b, b->pos, "no piece text (field 1)");
    }
    return 0;
}

int spm_parse(struct spm_model *m, const char *file, const uint8_t *buf, size_t len) {
    memset(m, 0, sizeof *m);
    struct pb b = {.file = file, .buf = buf, .pos = 0, .end = len};
    size_t cap = 0, at, s = 0, n = 0;
    uint32_t field;
    int wt, rc = 0, bad = 0;
    while (!bad && (rc = key(&b, "ModelProto", &field, &wt, &at)) == 0) {
        if (field != 1) {
            bad = skip(&b, wt);
            continue;
        }
        snprintf(b.where, sizeof b.where, "ModelProto field 1 (pieces[%lld])", (long long)m->n);
        if ((bad = expect_wt(&b, at, wt, WT_LEN) || len_delim(&b, &s, &n))) break;
        if ((size_t)m->n == cap) {
            cap = cap ? 2 * cap : 1024;
            m->pieces = xrealloc(m->pieces, cap * sizeof *m->pieces);
        }
        struct pb sub = b;
        sub.pos = s, sub.end = s + n;
        if ((bad = read_piece(&sub, m->n, &m->pieces[m->n])))
            free(m->pieces[m->n].text);
        else
            m->n++;
    }
    if (!bad && rc == 1 && m->n == 0) {
        snprintf(b.where, sizeof b.where, "ModelProto");
        fail(&b, b.pos, "no pieces (field 1): not a SentencePiece model");
    } else if (!bad && rc == 1) {
        return 0;
    }
    spm_free(m);
    return -1;
}

int spm_load(struct spm_model *m, const char *path) {
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set("cannot open %s: %s", path, strerror(errno)), -1;
    size_t cap = 1 << 16, n = 0, k;
    uint8_t *buf = xmalloc(cap);
    while ((k = fread(buf + n, 1, cap - n, f)) > 0) {
        if ((n += k) < cap) continue;
        if (cap >= MAX_FILE) {
            fclose(f), free(buf);
            return err_set("%s: larger than %u bytes", path, MAX_FILE), -1;
        }
        buf = xrealloc(buf, cap *= 2);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return free(buf), err_set("%s: read error", path), -1;
    int rc = spm_parse(m, path, buf, n);
    free(buf);
    return rc;
}

void spm_free(struct spm_model *m) {
    for (int64_t i = 0; i < m->n; i++) free(m->pieces[i].text);
    free(m->pieces);
    memset(m, 0, sizeof *m);
}
