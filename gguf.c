/* GGUF v2/v3 reader (mmap, every field checked against the file length) and writer
 * (temporary file, fsync, rename). Layout: header, key/values, tensor infos, padding to the
 * alignment, tensor data (each tensor padded to the alignment). All integers little-endian. */
#include "gguf.h"

#include "quant.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads and writes little-endian GGUF by memcpy: it needs a little-endian host"
#endif

#define GGUF_MAGIC "GGUF"
#define GGUF_VERSION 3
#define GGUF_MAX_NAME 64 /* ggml's limit on tensor names, NUL included: the writer keeps to it */
#define NAME_SHOWN 96    /* longest key or tensor name quoted in an error message */
/* Smallest possible encodings, used to bound counts by the bytes left in the file. */
#define MIN_KV_BYTES 14 /* key length (8) + 1 key byte + type (4) + 1 value byte */
#define MIN_TENSOR_BYTES                                                                           \
    33 /* name length (8) + 1 name byte + n_dims (4) + 1 dim (8) +                                 \
          type (4) + offset (8) */

static const char *const type_names[GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

/* Bytes of one value of each fixed-size type; 0 for string and array. */
static const uint8_t type_sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_type_name(enum gguf_type t) {
    return (unsigned)t < GGUF_TYPE_COUNT ? type_names[t] : "unknown";
}

int gguf_str_eq(struct gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && memcmp(s.data, c, n) == 0;
}

/* Length to print of a name from the file, for "%.*s". */
static int shown(struct gguf_str s) { return s.len > NAME_SHOWN ? NAME_SHOWN : (int)s.len; }

static int str_cmp(struct gguf_str a, struct gguf_str b) {
    int r = memcmp(a.data, b.data, a.len < b.len ? a.len : b.len);
    return r ? r : (a.len > b.len) - (a.len < b.len);
}

/* ---- reader: a cursor over the mapped bytes ---- */

struct cursor {
    const char *path;
    const uint8_t *base;
    uint64_t size; /* file length */
    uint64_t pos;  /* next byte to read */
};

__attribute__((format(printf, 2, 3))) static int fail(const struct cursor *c, const char *fmt,
                                                      ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    err_set("gguf: %s: %s", c->path, msg);
    return -1;
}

static uint64_t left(const struct cursor *c) { return c->size - c->pos; }

static int read_bytes(struct cursor *c, void *out, uint64_t n, const char *what) {
    if (n > left(c))
        return fail(c, "%s at offset %" PRIu64 " needs %" PRIu64 " bytes, only %" PRIu64 " left",
                    what, c->pos, n, left(c));
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return 0;
}

static int read_u32(struct cursor *c, uint32_t *v, const char *what) {
    return read_bytes(c, v, sizeof *v, what);
}

static int read_u64(struct cursor *c, uint64_t *v, const char *what) {
    return read_bytes(c, v, sizeof *v, what);
}

static int read_str(struct cursor *c, struct gguf_str *s, const char *what) {
    if (read_u64(c, &s->len, what)) return -1;
    if (s->len > left(c))
        return fail(c,
                    "%s: string length %" PRIu64 " at offset %" PRIu64
                    " runs past the end of the file (%" PRIu64 " bytes left)",
                    what, s->len, c->pos - 8, left(c));
    s->data = (const char *)c->base + c->pos;
    c->pos += s->len;
    return 0;
}

static int read_type(struct cursor *c, enum gguf_type *t, const char *what) {
    uint32_t v = 0;
    if (read_u32(c, &v, what)) return -1;
    if (v >= GGUF_TYPE_COUNT)
        return fail(c, "%s has unknown value type %" PRIu32 " (expected 0..%d)", what, v,
                    GGUF_TYPE_COUNT - 1);
    *t = (enum gguf_type)v;
    return 0;
}

/* ---- reader: header and key/values ---- */

static int read_header(struct cursor *c, struct gguf_file *f) {
    uint8_t m[4];
    if (c->size < 4) return fail(c, "file is too short for GGUF (%" PRIu64 " bytes)", c->size);
    memcpy(m, c->base, 4);
    if (memcmp(m, GGUF_MAGIC, 4) != 0)
        return fail(c, "bad magic %02x %02x %02x %02x (expected \"GGUF\"): not a GGUF file", m[0],
                    m[1], m[2], m[3]);
    c->pos = 4;
    if (read_u32(c, &f->version, "header version")) return -1;
    uint32_t v = f->version, swapped = __builtin_bswap32(v);
    if (v != 2 && v != 3 && swapped >= 1 && swapped <= 3)
        return fail(
            c, "version 0x%08" PRIx32 " looks byte-swapped: big-endian GGUF is not supported", v);
    if (v != 2 && v != 3)
        return fail(c, "unsupported GGUF version %" PRIu32 " (expected 2 or 3)", v);
    if (read_u64(c, &f->n_tensors, "header n_tensors")) return -1;
    if (read_u64(c, &f->n_kv, "header n_kv")) return -1;
    if (f->n_kv > left(c) / MIN_KV_BYTES)
        return fail(c, "n_kv %" PRIu64 " is more than the file can hold (%" PRIu64 " bytes left)",
                    f->n_kv, left(c));
    if (f->n_tensors > left(c) / MIN_TENSOR_BYTES)
        return fail(c,
                    "n_tensors %" PRIu64 " is more than the file can hold (%" PRIu64 " bytes left)",
                    f->n_tensors, left(c));
    return 0;
}

/* Skips n values of the non-array type t, checking lengths and bool values. */
static int read_values(struct cursor *c, enum gguf_type t, uint64_t n, const char *what) {
    if (t == GGUF_TYPE_STRING) {
        if (n > left(c) / 8)
            return fail(c, "%s: %" PRIu64 " strings cannot fit in the %" PRIu64 " bytes left", what,
                        n, left(c));
        for (uint64_t i = 0; i < n; i++) {
            struct gguf_str s = {0};
            if (read_str(c, &s, what)) return -1;
        }
        return 0;
    }
    uint64_t bytes;
    if (size_mul(n, type_sizes[t], &bytes))
        return fail(c, "%s: array count %" PRIu64 " of %s overflows", what, n, type_names[t]);
    if (bytes > left(c))
        return fail(c,
                    "%s: %" PRIu64 " values of type %s (%" PRIu64 " bytes) at offset %" PRIu64
                    " run past the end of the file (%" PRIu64 " bytes left)",
                    what, n, type_names[t], bytes, c->pos, left(c));
    for (uint64_t i = 0; t == GGUF_TYPE_BOOL && i < n; i++)
        if (c->base[c->pos + i] > 1)
            return fail(c, "%s has bool value %u (expected 0 or 1)", what, c->base[c->pos + i]);
    c->pos += bytes;
    return 0;
}

static int read_kv(struct cursor *c, struct gguf_kv *kv, uint64_t i) {
    char what[NAME_SHOWN + 32];
    snprintf(what, sizeof what, "key #%" PRIu64, i);
    if (read_str(c, &kv->key, what)) return -1;
    if (kv->key.len == 0)
        return fail(c, "key #%" PRIu64 " at offset %" PRIu64 " is empty", i, c->pos - 8);
    snprintf(what, sizeof what, "key '%.*s'", shown(kv->key), kv->key.data);
    if (read_type(c, &kv->type, what)) return -1;
    enum gguf_type elem = kv->type;
    uint64_t n = 1;
    if (kv->type == GGUF_TYPE_ARRAY) {
        if (read_type(c, &kv->arr_type, what)) return -1;
        if (kv->arr_type == GGUF_TYPE_ARRAY)
            return fail(c, "%s is a nested array (arrays of arrays are not supported)", what);
        if (read_u64(c, &kv->arr_n, what)) return -1;
        elem = kv->arr_type;
        n = kv->arr_n;
    }
    uint64_t start = c->pos;
    if (read_values(c, elem, n, what)) return -1;
    kv->value = c->base + start;
    kv->value_size = c->pos - start;
    return 0;
}

static int cmp_kv_ptr(const void *a, const void *b) {
    return str_cmp((*(const struct gguf_kv *const *)a)->key,
                   (*(const struct gguf_kv *const *)b)->key);
}

static int check_duplicate_keys(struct cursor *c, const struct gguf_file *f) {
    const struct gguf_kv **p = xmalloc(f->n_kv * sizeof *p);
    for (uint64_t i = 0; i < f->n_kv; i++) p[i] = &f->kv[i];
    qsort(p, f->n_kv, sizeof *p, cmp_kv_ptr);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_kv && rc == 0; i++)
        if (str_cmp(p[i - 1]->key, p[i]->key) == 0)
            rc = fail(c, "key '%.*s' appears more than once", shown(p[i]->key), p[i]->key.data);
    free(p);
    return rc;
}

static int read_alignment(struct cursor *c, struct gguf_file *f) {
    const struct gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv) return 0;
    if (kv->type != GGUF_TYPE_UINT32)
        return fail(c, "general.alignment has type %s (expected u32)", type_names[kv->type]);
    uint32_t a;
    memcpy(&a, kv->value, sizeof a);
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(c, "general.alignment is %" PRIu32 " (expected a non-zero power of two)", a);
    f->alignment = a;
    return 0;
}

static int read_kvs(struct cursor *c, struct gguf_file *f) {
    f->kv = xcalloc(f->n_kv, sizeof *f->kv); /* n_kv was bounded by the file length */
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (read_kv(c, &f->kv[i], i)) return -1;
    if (check_duplicate_keys(c, f)) return -1;
    return read_alignment(c, f);
}

/* ---- reader: tensor infos and layout ---- */

/* Type, shape, byte size and alignment of one tensor info. */
static int check_tensor(struct cursor *c, const struct gguf_file *f, struct gguf_tensor *t,
                        const char *what) {
    int64_t blck;
    size_t type_size;
    if (qtype_layout(t->type, &blck, &type_size) < 0)
        return fail(c, "%s has unknown type %" PRIu32, what, t->type);
    uint64_t n = 1, bytes = (uint64_t)(t->ne[0] / blck) * type_size;
    for (int j = 0; j < GGUF_MAX_DIMS; j++)
        if (size_mul(n, (uint64_t)t->ne[j], &n) || n > INT64_MAX)
            return fail(c,
                        "%s: element count overflows (ne = [%" PRId64 ", %" PRId64 ", %" PRId64
                        ", %" PRId64 "])",
                        what, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
    if (t->ne[0] % blck != 0)
        return fail(c,
                    "%s: row length %" PRId64 " is not a multiple of the block size %" PRId64
                    " of type %s",
                    what, t->ne[0], blck, qtype_name(t->type));
    for (int j = 1; j < GGUF_MAX_DIMS; j++)
        if (size_mul(bytes, (uint64_t)t->ne[j], &bytes))
            return fail(c, "%s: byte size overflows", what);
    t->nbytes = bytes;
    if (t->offset % f->alignment != 0)
        return fail(c, "%s: data offset %" PRIu64 " is not a multiple of the alignment %" PRIu32,
                    what, t->offset, f->alignment);
    return 0;
}

static int read_tensor_info(struct cursor *c, const struct gguf_file *f, struct gguf_tensor *t,
                            uint64_t i) {
    char what[NAME_SHOWN + 32];
    snprintf(what, sizeof what, "tensor #%" PRIu64, i);
    if (read_str(c, &t->name, what)) return -1;
    if (t->name.len == 0)
        return fail(c, "tensor #%" PRIu64 " at offset %" PRIu64 " has an empty name", i,
                    c->pos - 8);
    if (t->name.len >= GGUF_MAX_NAME) /* llama.cpp refuses these too */
        return fail(c,
                    "tensor #%" PRIu64 " name '%.*s...' is %" PRIu64
                    " bytes, longer than %d bytes",
                    i, shown(t->name), t->name.data, t->name.len, GGUF_MAX_NAME - 1);
    snprintf(what, sizeof what, "tensor '%.*s'", shown(t->name), t->name.data);
    if (read_u32(c, &t->n_dims, what)) return -1;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
        return fail(c, "%s has n_dims %" PRIu32 " (expected 1..%d)", what, t->n_dims,
                    GGUF_MAX_DIMS);
    for (int j = 0; j < GGUF_MAX_DIMS; j++) t->ne[j] = 1;
    for (uint32_t j = 0; j < t->n_dims; j++) {
        if (read_bytes(c, &t->ne[j], sizeof t->ne[j], what)) return -1;
        if (t->ne[j] <= 0)
            return fail(c, "%s: dimension %" PRIu32 " is %" PRId64 " (expected > 0)", what, j,
                        t->ne[j]);
    }
    if (read_u32(c, &t->type, what) || read_u64(c, &t->offset, what)) return -1;
    return check_tensor(c, f, t, what);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return str_cmp((*(const struct gguf_tensor *const *)a)->name,
                   (*(const struct gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    uint64_t x = (*(const struct gguf_tensor *const *)a)->offset;
    uint64_t y = (*(const struct gguf_tensor *const *)b)->offset;
    return (x > y) - (x < y);
}

/* Sorts pointers to the tensors by name, then by offset: duplicates and overlaps are
 * neighbours. */
static int check_tensor_set(struct cursor *c, const struct gguf_file *f) {
    const struct gguf_tensor **p = xmalloc(f->n_tensors * sizeof *p);
    for (uint64_t i = 0; i < f->n_tensors; i++) p[i] = &f->tensors[i];
    qsort(p, f->n_tensors, sizeof *p, cmp_tensor_name);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_tensors && rc == 0; i++)
        if (str_cmp(p[i - 1]->name, p[i]->name) == 0)
            rc = fail(c, "tensor name '%.*s' appears more than once", shown(p[i]->name),
                      p[i]->name.data);
    qsort(p, f->n_tensors, sizeof *p, cmp_tensor_offset);
    for (uint64_t i = 1; i < f->n_tensors && rc == 0; i++) {
        const struct gguf_tensor *a = p[i - 1], *b = p[i];
        if (a->offset + a->nbytes > b->offset) /* both end inside the file: no overflow */
            rc = fail(c,
                      "tensors '%.*s' [offset %" PRIu64 ", %" PRIu64
                      " bytes] and '%.*s' [offset %" PRIu64 "] overlap",
                      shown(a->name), a->name.data, a->offset, a->nbytes, shown(b->name),
                      b->name.data, b->offset);
    }
    free(p);
    return rc;
}

/* Places the data section and checks that each tensor's bytes lie inside the file. */
static int place_tensors(struct cursor *c, struct gguf_file *f) {
    uint64_t a = f->alignment, start;
    if (size_add(c->pos, a - 1, &start)) return fail(c, "data section offset overflows");
    f->data_offset = start / a * a;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        uint64_t pos, end;
        if (size_add(f->data_offset, t->offset, &pos) || size_add(pos, t->nbytes, &end) ||
            end > c->size)
            return fail(c,
                        "tensor '%.*s' data [offset %" PRIu64 ", %" PRIu64
                        " bytes] runs past the end of the file (%" PRIu64 " bytes)",
                        shown(t->name), t->name.data, f->data_offset + t->offset, t->nbytes,
                        c->size);
        t->data = c->base + pos;
    }
    return check_tensor_set(c, f);
}

static int read_tensors(struct cursor *c, struct gguf_file *f) {
    if (f->n_tensors > left(c) / MIN_TENSOR_BYTES)
        return fail(c,
                    "n_tensors %" PRIu64 " is more than the file can hold (%" PRIu64
                    " bytes left after the key/values)",
                    f->n_tensors, left(c));
    f->tensors = xcalloc(f->n_tensors, sizeof *f->tensors);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (read_tensor_info(c, f, &f->tensors[i], i)) return -1;
    return place_tensors(c, f);
}

/* The whole file into anonymous memory; the file's cached pages are dropped afterwards, so
 * the bytes are not held twice. */
static const char *read_whole(int fd, uint64_t size, uint8_t **out) {
    void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return strerror(errno);
#ifdef MADV_HUGEPAGE
    /* 2 MiB pages where the kernel offers them (THP "madvise" mode is common): routed experts
     * are read from all over the weights, and 4 KiB pages would miss the TLB on most of them. */
    madvise(m, (size_t)size, MADV_HUGEPAGE);
#endif
    for (uint64_t done = 0; done < size;) {
        size_t chunk = size - done < (1u << 30) ? (size_t)(size - done) : (1u << 30);
        ssize_t got = read(fd, (uint8_t *)m + done, chunk);
        if (got <= 0) {
            munmap(m, (size_t)size);
            return got < 0 ? strerror(errno) : "file shrank while it was read";
        }
        done += (uint64_t)got;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    mprotect(m, (size_t)size, PROT_READ);
    *out = m;
    return NULL;
}

/* mmap's flags for `hold`, which loses GGUF_POPULATE where it is not done. A file larger than
 * three quarters of RAM is not populated: reading it all at open would only drop its start
 * again (the rest of RAM is for the KV cache and other work). */
static int map_flags(int *hold, uint64_t size) {
#ifdef MAP_POPULATE
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if ((*hold & GGUF_POPULATE) && pages > 0 && page > 0 &&
        size <= (uint64_t)pages / 4 * 3 * (uint64_t)page)
        return MAP_PRIVATE | MAP_POPULATE;
#endif
    (void)size;
    *hold &= ~GGUF_POPULATE;
    return MAP_PRIVATE;
}

static int map_file(struct gguf_file *f, const char *path, int hold) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set("gguf: %s: cannot open: %s", path, strerror(errno)), -1;
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st) != 0)
        why = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "not a regular file";
    else if (st.st_size == 0)
        why = "file is empty (0 bytes)";
    if (!why) {
        f->size = (uint64_t)st.st_size;
        if (hold & GGUF_READ) {
            hold &= ~GGUF_POPULATE;
            why = read_whole(fd, f->size, &f->map);
        } else {
            void *m = mmap(NULL, (size_t)f->size, PROT_READ, map_flags(&hold, f->size), fd, 0);
            if (m == MAP_FAILED)
                why = strerror(errno);
            else
                f->map = m;
        }
    }
    close(fd);
    if (why) return err_set("gguf: %s: %s", path, why), -1;
    f->hold = hold;
    if ((hold & GGUF_LOCK) && mlock(f->map, (size_t)f->size) != 0) {
        f->lock_errno = errno;
        f->hold &= ~GGUF_LOCK;
    }
    return 0;
}

int gguf_open_hold(struct gguf_file *f, const char *path, int hold) {
    memset(f, 0, sizeof *f);
    if (map_file(f, path, hold)) return -1;
    f->path = xstrdup(path);
    struct cursor c = {f->path, f->map, f->size, 0};
    if (read_header(&c, f) || read_kvs(&c, f) || read_tensors(&c, f)) {
        gguf_close(f);
        return -1;
    }
    return 0;
}

int gguf_open(struct gguf_file *f, const char *path) { return gguf_open_hold(f, path, GGUF_MAP); }

void gguf_close(struct gguf_file *f) {
    if (f->map) munmap(f->map, (size_t)f->size);
    free(f->kv);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* ---- lookups and typed getters ---- */

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static int wrong_type(const struct gguf_file *f, const char *key, const char *expected,
                      enum gguf_type actual) {
    err_set("gguf: %s: key '%s' has type %s (expected %s)", f->path, key, gguf_type_name(actual),
            expected);
    return -1;
}

/* An integer value as sign and magnitude: *neg set for negative values. */
static int kv_int(const struct gguf_kv *kv, int *neg, uint64_t *mag) {
    enum gguf_type t = kv->type;
    if (t > GGUF_TYPE_INT32 && t != GGUF_TYPE_UINT64 && t != GGUF_TYPE_INT64) return -1;
    int is_signed =
        t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
    unsigned bits = 8u * type_sizes[t];
    uint64_t u = 0;
    memcpy(&u, kv->value, type_sizes[t]); /* little-endian host */
    *neg = is_signed && (u >> (bits - 1)) != 0;
    *mag = !*neg ? u : bits == 64 ? 0 - u : (1ull << bits) - u; /* two's complement */
    return 0;
}

/* Finds key as an integer within [-neg_max, pos_max]; 1 when absent. */
static int get_int(const struct gguf_file *f, const char *key, const char *tname, uint64_t neg_max,
                   uint64_t pos_max, int *neg, uint64_t *mag) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv_int(kv, neg, mag)) return wrong_type(f, key, tname, kv->type);
    if (*mag > (*neg ? neg_max : pos_max)) {
        err_set("gguf: %s: key '%s' value %s%" PRIu64 " (type %s) does not fit in %s", f->path, key,
                *neg ? "-" : "", *mag, gguf_type_name(kv->type), tname);
        return -1;
    }
    return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out) {
    int neg;
    uint64_t m;
    int rc = get_int(f, key, "u32", 0, UINT32_MAX, &neg, &m);
    if (rc == 0) *out = (uint32_t)m;
    return rc;
}

int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out) {
    int neg;
    uint64_t m;
    int rc = get_int(f, key, "i32", (uint64_t)INT32_MAX + 1, INT32_MAX, &neg, &m);
    if (rc == 0) *out = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    return rc;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out) {
    int neg;
    uint64_t m;
    int rc = get_int(f, key, "u64", 0, UINT64_MAX, &neg, &m);
    if (rc == 0) *out = m;
    return rc;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type == GGUF_TYPE_FLOAT32) {
        memcpy(out, kv->value, sizeof *out);
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        double d;
        memcpy(&d, kv->value, sizeof d);
        *out = (float)d;
    } else {
        return wrong_type(f, key, "f32 or f64", kv->type);
    }
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, int *out) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type != GGUF_TYPE_BOOL) return wrong_type(f, key, "bool", kv->type);
    *out = kv->value[0] != 0;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type != GGUF_TYPE_STRING) return wrong_type(f, key, "string", kv->type);
    memcpy(&out->len, kv->value, sizeof out->len);
    out->data = (const char *)kv->value + 8;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_type elem_type, uint64_t *n,
                 const uint8_t **data) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 1;
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != elem_type) {
        err_set("gguf: %s: key '%s' has type %s%s%s (expected array of %s)", f->path, key,
                gguf_type_name(kv->type), kv->type == GGUF_TYPE_ARRAY ? " of " : "",
                kv->type == GGUF_TYPE_ARRAY ? gguf_type_name(kv->arr_type) : "",
                gguf_type_name(elem_type));
        return -1;
    }
    *n = kv->arr_n;
    *data = kv->value;
    return 0;
}

int gguf_arr_strings(const struct gguf_kv *kv, struct gguf_str *out, uint64_t n) {
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || kv->arr_n != n) {
        err_set("gguf: key '%.*s' is not an array of %" PRIu64 " strings", shown(kv->key),
                kv->key.data, n);
        return -1;
    }
    const uint8_t *p = kv->value; /* lengths were checked by gguf_open */
    for (uint64_t i = 0; i < n; i++) {
        memcpy(&out[i].len, p, 8);
        out[i].data = (const char *)p + 8;
        p += 8 + out[i].len;
    }
    return 0;
}

/* ---- writer ---- */

struct wkv {
    char *key;
    uint64_t key_len;
    enum gguf_type type, arr_type;
    uint64_t arr_n;
    uint8_t *val; /* the value's bytes as in the file (after the type, or the array header) */
    uint64_t val_size;
};

struct wtensor {
    char *name;
    uint32_t type, n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
    const void *data; /* or: */
    gguf_produce_fn produce;
    void *ctx;
};

struct gguf_writer {
    struct wkv *kv; /* (n_kv) in insertion order */
    size_t n_kv, cap_kv;
    struct wtensor *t; /* (n_t) in insertion order */
    size_t n_t, cap_t;
    char err[512]; /* first error found by a setter, reported by gguf_writer_write */
};

struct wout {
    FILE *fp;
    const char *path; /* the final path, for messages */
    uint64_t pos;
};

struct gguf_stream {
    struct wout *o;
    const struct wtensor *t;
    uint64_t written;
};

struct gguf_writer *gguf_writer_new(void) {
    return xcalloc(1, sizeof(struct gguf_writer));
}

void gguf_writer_free(struct gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) free(w->kv[i].key), free(w->kv[i].val);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

__attribute__((format(printf, 2, 3))) static void werr(struct gguf_writer *w, const char *fmt,
                                                       ...) {
    if (w->err[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

/* Adds or replaces a key with the value bytes val[0..size). */
static void set_raw(struct gguf_writer *w, struct gguf_str key, enum gguf_type type,
                    enum gguf_type arr_type, uint64_t arr_n, const void *val, uint64_t size) {
    if (key.len == 0) {
        werr(w, "empty key");
        return;
    }
    struct wkv *kv = NULL;
    for (size_t i = 0; i < w->n_kv && !kv; i++)
        if (w->kv[i].key_len == key.len && memcmp(w->kv[i].key, key.data, key.len) == 0)
            kv = &w->kv[i];
    if (kv) {
        free(kv->val);
    } else {
        if (w->n_kv == w->cap_kv) {
            w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 32;
            w->kv = xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
        }
        kv = &w->kv[w->n_kv++];
        kv->key = memcpy(xmalloc(key.len), key.data, key.len);
        kv->key_len = key.len;
    }
    kv->type = type;
    kv->arr_type = arr_type;
    kv->arr_n = arr_n;
    kv->val = xmalloc(size);
    if (size) memcpy(kv->val, val, size);
    kv->val_size = size;
}

static struct gguf_str cstr(const char *s) { return (struct gguf_str){strlen(s), s}; }

static void set_scalar(struct gguf_writer *w, const char *key, enum gguf_type t, const void *v) {
    set_raw(w, cstr(key), t, 0, 0, v, type_sizes[t]);
}

void gguf_set_u32(struct gguf_writer *w, const char *key, uint32_t v) {
    set_scalar(w, key, GGUF_TYPE_UINT32, &v);
}

void gguf_set_i32(struct gguf_writer *w, const char *key, int32_t v) {
    set_scalar(w, key, GGUF_TYPE_INT32, &v);
}

void gguf_set_u64(struct gguf_writer *w, const char *key, uint64_t v) {
    set_scalar(w, key, GGUF_TYPE_UINT64, &v);
}

void gguf_set_f32(struct gguf_writer *w, const char *key, float v) {
    set_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}

void gguf_set_bool(struct gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    set_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

/* Encodes strings as the file does (u64 length, bytes) into one buffer of *size bytes. */
static uint8_t *encode_strings(const char *const *v, uint64_t n, uint64_t *size) {
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) total += 8 + strlen(v[i]);
    uint8_t *buf = xmalloc(total), *p = buf;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = strlen(v[i]);
        memcpy(p, &len, 8);
        memcpy(p + 8, v[i], len);
        p += 8 + len;
    }
    *size = total;
    return buf;
}

void gguf_set_str(struct gguf_writer *w, const char *key, const char *v) {
    uint64_t size;
    uint8_t *buf = encode_strings(&v, 1, &size);
    set_raw(w, cstr(key), GGUF_TYPE_STRING, 0, 0, buf, size);
    free(buf);
}

void gguf_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type,
                  const void *data, uint64_t n) {
    uint64_t size;
    if ((unsigned)elem_type >= GGUF_TYPE_COUNT || type_sizes[elem_type] == 0) {
        werr(w, "key '%s': gguf_set_arr needs a fixed-size element type, not %s", key,
             gguf_type_name(elem_type));
        return;
    }
    if (size_mul(n, type_sizes[elem_type], &size) || size > SIZE_MAX) {
        werr(w, "key '%s': array of %" PRIu64 " elements is too large", key, n);
        return;
    }
    set_raw(w, cstr(key), GGUF_TYPE_ARRAY, elem_type, n, data, size);
}

void gguf_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    uint64_t size;
    uint8_t *buf = encode_strings(v, n, &size);
    set_raw(w, cstr(key), GGUF_TYPE_ARRAY, GGUF_TYPE_STRING, n, buf, size);
    free(buf);
}

void gguf_set_kv(struct gguf_writer *w, const struct gguf_kv *kv) {
    set_raw(w, kv->key, kv->type, kv->arr_type, kv->arr_n, kv->value, kv->value_size);
}

static struct wtensor *new_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                                  uint32_t n_dims, const int64_t *ne, uint64_t nbytes) {
    if (!name[0]) return werr(w, "tensor with an empty name"), NULL;
    if (strlen(name) >= GGUF_MAX_NAME)
        return werr(w, "tensor name '%s' is longer than %d bytes (llama.cpp's limit)", name,
                    GGUF_MAX_NAME - 1),
               NULL;
    if (n_dims == 0 || n_dims > GGUF_MAX_DIMS)
        return werr(w, "tensor '%s': n_dims %" PRIu32 " (expected 1..4)", name, n_dims), NULL;
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return werr(w, "tensor '%s' added twice", name), NULL;
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 64;
        w->t = xrealloc(w->t, w->cap_t * sizeof *w->t);
    }
    struct wtensor *t = memset(&w->t[w->n_t++], 0, sizeof *t);
    t->name = xstrdup(name);
    t->type = type;
    t->n_dims = n_dims;
    for (int j = 0; j < GGUF_MAX_DIMS; j++) t->ne[j] = (uint32_t)j < n_dims ? ne[j] : 1;
    t->nbytes = nbytes;
    return t;
}

void gguf_add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                     const int64_t *ne, const void *data, uint64_t nbytes) {
    struct wtensor *t = new_tensor(w, name, type, n_dims, ne, nbytes);
    if (t) t->data = data;
}

void gguf_add_tensor_stream(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                            const int64_t *ne, uint64_t nbytes, gguf_produce_fn produce,
                            void *ctx) {
    struct wtensor *t = new_tensor(w, name, type, n_dims, ne, nbytes);
    if (t) t->produce = produce, t->ctx = ctx;
}

/* ---- writer: layout ---- */

static int writer_alignment(const struct gguf_writer *w, const char *path, uint32_t *align) {
    *align = GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < w->n_kv; i++) {
        const struct wkv *kv = &w->kv[i];
        if (kv->key_len != 17 || memcmp(kv->key, "general.alignment", 17) != 0) continue;
        uint32_t a = 0;
        if (kv->type == GGUF_TYPE_UINT32) memcpy(&a, kv->val, 4);
        if (a == 0 || (a & (a - 1)) != 0) {
            err_set("gguf: %s: general.alignment must be a non-zero power of two of type u32",
                    path);
            return -1;
        }
        *align = a;
    }
    return 0;
}

/* Bytes of a tensor from its type and shape, or -1 with err set. */
static int tensor_bytes(const struct wtensor *t, const char *path, uint64_t *bytes) {
    const struct qtype_traits *tr = qtype_traits(t->type);
    const char *why = NULL;
    if (!tr)
        why = "unknown or unsupported type";
    else if (t->ne[0] % tr->blck_size != 0)
        why = "row length is not a multiple of the block size";
    for (int j = 0; j < GGUF_MAX_DIMS && !why; j++)
        if (t->ne[j] <= 0) why = "a dimension is not positive";
    *bytes = why ? 0 : (uint64_t)(t->ne[0] / tr->blck_size) * tr->type_size;
    for (int j = 1; j < GGUF_MAX_DIMS && !why; j++)
        if (size_mul(*bytes, (uint64_t)t->ne[j], bytes)) why = "byte size overflows";
    if (!why) return 0;
    err_set("gguf: %s: tensor '%s' (type %s, block size %" PRId64 ", ne [%" PRId64 ", %" PRId64
            ", %" PRId64 ", %" PRId64 "]): %s",
            path, t->name, qtype_name(t->type), tr ? tr->blck_size : 0, t->ne[0], t->ne[1],
            t->ne[2], t->ne[3], why);
    return -1;
}

/* Checks each tensor's byte size against its type and shape; assigns aligned offsets. */
static int plan_tensors(struct gguf_writer *w, const char *path, uint32_t align) {
    uint64_t off = 0, want;
    for (size_t i = 0; i < w->n_t; i++) {
        struct wtensor *t = &w->t[i];
        if (tensor_bytes(t, path, &want)) return -1;
        if (want != t->nbytes || (!t->produce && !t->data)) {
            err_set("gguf: %s: tensor '%s' (type %s) has %" PRIu64 " bytes%s, expected %" PRIu64,
                    path, t->name, qtype_name(t->type), t->nbytes,
                    t->produce || t->data ? "" : " and no data", want);
            return -1;
        }
        t->offset = off;
        if (size_add(off, t->nbytes, &off) || size_add(off, align - 1, &off)) {
            err_set("gguf: %s: data section size overflows", path);
            return -1;
        }
        off = off / align * align;
    }
    return 0;
}

/* ---- writer: output ---- */

static int out_write(struct wout *o, const void *p, uint64_t n) {
    if (n && fwrite(p, 1, n, o->fp) != n) {
        err_set("gguf: %s: write failed: %s", o->path, strerror(errno));
        return -1;
    }
    o->pos += n;
    return 0;
}

static int out_u32(struct wout *o, uint32_t v) { return out_write(o, &v, 4); }
static int out_u64(struct wout *o, uint64_t v) { return out_write(o, &v, 8); }

static int out_pad(struct wout *o, uint32_t align) {
    static const uint8_t zeros[256];
    while (o->pos % align != 0) {
        uint64_t n = align - o->pos % align;
        if (out_write(o, zeros, n < sizeof zeros ? n : sizeof zeros)) return -1;
    }
    return 0;
}

static int out_kv(struct wout *o, const struct wkv *kv) {
    if (out_u64(o, kv->key_len) || out_write(o, kv->key, kv->key_len) || out_u32(o, kv->type))
        return -1;
    if (kv->type == GGUF_TYPE_ARRAY && (out_u32(o, kv->arr_type) || out_u64(o, kv->arr_n)))
        return -1;
    return out_write(o, kv->val, kv->val_size);
}

static int out_tensor_info(struct wout *o, const struct wtensor *t) {
    uint64_t len = strlen(t->name);
    if (out_u64(o, len) || out_write(o, t->name, len) || out_u32(o, t->n_dims)) return -1;
    if (out_write(o, t->ne, 8 * (uint64_t)t->n_dims)) return -1;
    return out_u32(o, t->type) || out_u64(o, t->offset);
}

int gguf_stream_write(struct gguf_stream *s, const void *data, size_t n) {
    if (n > s->t->nbytes - s->written) {
        err_set("gguf: %s: producer of tensor '%s' wrote more than its %" PRIu64 " bytes",
                s->o->path, s->t->name, s->t->nbytes);
        return -1;
    }
    s->written += n;
    return out_write(s->o, data, n);
}

static int out_tensor_data(struct wout *o, const struct wtensor *t) {
    if (!t->produce) return out_write(o, t->data, t->nbytes);
    struct gguf_stream s = {o, t, 0};
    if (t->produce(t->ctx, &s) != 0) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", err_get());
        err_set("gguf: %s: producing tensor '%s' failed: %s", o->path, t->name, msg);
        return -1;
    }
    if (s.written != t->nbytes) {
        err_set("gguf: %s: producer of tensor '%s' wrote %" PRIu64 " bytes, expected %" PRIu64,
                o->path, t->name, s.written, t->nbytes);
        return -1;
    }
    return 0;
}

static int out_file(struct wout *o, const struct gguf_writer *w, uint32_t align) {
    if (out_write(o, GGUF_MAGIC, 4) || out_u32(o, GGUF_VERSION) || out_u64(o, w->n_t) ||
        out_u64(o, w->n_kv))
        return -1;
    for (size_t i = 0; i < w->n_kv; i++)
        if (out_kv(o, &w->kv[i])) return -1;
    for (size_t i = 0; i < w->n_t; i++)
        if (out_tensor_info(o, &w->t[i])) return -1;
    if (out_pad(o, align)) return -1;
    for (size_t i = 0; i < w->n_t; i++)
        if (out_tensor_data(o, &w->t[i]) || out_pad(o, align)) return -1;
    return 0;
}

/* Flushes, syncs and closes; fp is closed whatever happens. */
static int out_close(struct wout *o) {
    errno = 0;
    /* EINVAL/ENOTSUP: a device or pipe that has nothing to sync (/dev/null) */
    int ok = fflush(o->fp) == 0 &&
             (fsync(fileno(o->fp)) == 0 || errno == EINVAL || errno == ENOTSUP);
    if (ok) errno = 0;
    int e = errno;
    ok = (fclose(o->fp) == 0) && ok;
    if (!ok) err_set("gguf: %s: write failed: %s", o->path, strerror(e ? e : errno));
    return ok ? 0 : -1;
}

static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path + 1)) : xstrdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY) : -1;
    if (fd >= 0) fsync(fd), close(fd);
    free(dir);
}

int gguf_writer_write(struct gguf_writer *w, const char *path) {
    uint32_t align;
    if (w->err[0]) return err_set("gguf: %s: %s", path, w->err), -1;
    if (writer_alignment(w, path, &align) || plan_tensors(w, path, align)) return -1;
    size_t n = strlen(path) + 32;
    char *tmp = xmalloc(n);
    int direct = path_is_special(path); /* /dev/null, a pipe: no temporary, no rename */
    snprintf(tmp, n, direct ? "%s" : "%s.tmp.%ld", path, (long)getpid());
    int fd = direct ? open(tmp, O_WRONLY) : open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!fp) {
        err_set("gguf: %s: cannot create %s: %s", path, tmp, strerror(errno));
        if (fd >= 0) close(fd);
        if (fd >= 0 && !direct) unlink(tmp);
        free(tmp);
        return -1;
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 20);
    struct wout o = {fp, path, 0};
    int rc = out_file(&o, w, align);
    if (rc)
        fclose(fp);
    else
        rc = out_close(&o);
    if (rc == 0 && !direct && rename(tmp, path) != 0) {
        err_set("gguf: %s: cannot rename %s to it: %s", path, tmp, strerror(errno));
        rc = -1;
    }
    if (rc && !direct)
        unlink(tmp);
    else if (!direct)
        sync_parent_dir(path);
    free(tmp);
    return rc;
}
