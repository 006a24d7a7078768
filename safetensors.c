#include "safetensors.h"

#include "json.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The header may be large (hundreds of thousands of tensors) but not absurd; the format's
 * reference implementation caps it at 100 MB. */
#define ST_MAX_HEADER (100ull << 20)

static const struct {
    const char *name;
    enum st_dtype t;
    size_t size;
} dtypes[] = {{"F32", ST_F32, 4},         {"F16", ST_F16, 2},  {"BF16", ST_BF16, 2},
              {"F8_E4M3", ST_F8_E4M3, 1}, {"F64", ST_F64, 8},  {"I8", ST_I8, 1},
              {"I16", ST_I16, 2},         {"I32", ST_I32, 4},  {"I64", ST_I64, 8},
              {"U8", ST_U8, 1},           {"BOOL", ST_BOOL, 1}};

size_t st_dtype_size(enum st_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

static enum st_dtype dtype_of(const char *name) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dtypes[i].name, name)) return dtypes[i].t;
    return ST_UNKNOWN;
}

static int map_file(struct st_file *f, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set("safetensors: cannot open %s: %s", path, strerror(errno)), -1;
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size < 8) {
        close(fd);
        return err_set("safetensors: %s: too short to hold a header", path), -1;
    }
    f->size = (uint64_t)sb.st_size;
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return err_set("safetensors: cannot map %s: %s", path, strerror(errno)), -1;
    }
    return 0;
}

static int tensor_shape(struct st_tensor *t, const struct json *shape, const char *path) {
    if (!shape || shape->type != JSON_ARRAY || shape->len > ST_MAX_DIMS)
        return err_set("safetensors: %s: tensor %s: bad \"shape\"", path, t->name), -1;
    t->n_dims = (int)shape->len;
    t->n_elem = 1;
    int i = 0;
    for (const struct json *d = shape->child; d; d = d->next, i++) {
        if (d->type != JSON_NUMBER || !d->is_int || d->i < 0 || d->i > (1ll << 40) ||
            size_mul(t->n_elem, (uint64_t)d->i, &t->n_elem))
            return err_set("safetensors: %s: tensor %s: bad dimension %d", path, t->name, i), -1;
        t->shape[i] = d->i;
    }
    return 0;
}

/* dtype, shape and offsets of one header entry, checked against the data section. */
static int tensor_info(struct st_file *f, struct st_tensor *t, const struct json *e,
                       uint64_t data_start) {
    const char *path = f->path;
    t->name = e->key;
    t->dtype_name = json_get_str(e, "dtype");
    if (!t->dtype_name) return err_set("safetensors: %s: tensor %s: no dtype", path, t->name), -1;
    t->dtype = dtype_of(t->dtype_name);
    if (tensor_shape(t, json_get(e, "shape"), path)) return -1;
    const struct json *off = json_get(e, "data_offsets");
    const struct json *b = json_at(off, 0), *en = json_at(off, 1);
    if (!b || !en || off->len != 2 || b->type != JSON_NUMBER || en->type != JSON_NUMBER ||
        !b->is_int || !en->is_int || b->i < 0 || en->i < b->i)
        return err_set("safetensors: %s: tensor %s: bad data_offsets", path, t->name), -1;
    t->nbytes = (uint64_t)(en->i - b->i);
    uint64_t want, end;
    if (size_mul(t->n_elem, st_dtype_size(t->dtype), &want) ||
        (t->dtype != ST_UNKNOWN && want != t->nbytes))
        return err_set("safetensors: %s: tensor %s: %s shape needs %llu bytes, offsets give %llu",
                       path, t->name, t->dtype_name, (unsigned long long)want,
                       (unsigned long long)t->nbytes),
               -1;
    if (size_add(data_start, (uint64_t)en->i, &end) || end > f->size)
        return err_set("safetensors: %s: tensor %s: data ends at byte %llu, past the file end "
                       "(%llu bytes): truncated file?",
                       path, t->name, (unsigned long long)end, (unsigned long long)f->size),
               -1;
    t->data = f->map + data_start + b->i;
    return 0;
}

static int parse_header(struct st_file *f) {
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->map[i] << (8 * i);
    if (hlen > ST_MAX_HEADER || hlen > f->size - 8)
        return err_set("safetensors: %s: header length %llu exceeds the file (%llu bytes)", f->path,
                       (unsigned long long)hlen, (unsigned long long)f->size),
               -1;
    struct json_doc *doc = xcalloc(1, sizeof *doc);
    f->priv = doc;
    if (json_parse(doc, f->path, (const char *)f->map + 8, hlen)) return -1;
    if (doc->root->type != JSON_OBJECT)
        return err_set("safetensors: %s: header is not a JSON object", f->path), -1;
    f->tensors = xcalloc(doc->root->len ? doc->root->len : 1, sizeof *f->tensors);
    for (const struct json *e = doc->root->child; e; e = e->next) {
        if (!strcmp(e->key, "__metadata__")) continue;
        if (e->type != JSON_OBJECT)
            return err_set("safetensors: %s: entry %s is not an object", f->path, e->key), -1;
        if (tensor_info(f, &f->tensors[f->n_tensors], e, 8 + hlen)) return -1;
        f->n_tensors++;
    }
    return 0;
}

int st_open(struct st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = xstrdup(path);
    if (map_file(f, path) || parse_header(f)) {
        st_close(f);
        return -1;
    }
    return 0;
}

void st_close(struct st_file *f) {
    if (f->map) munmap(f->map, f->size);
    if (f->priv) json_free(f->priv);
    free(f->priv);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const struct st_tensor *st_find(const struct st_file *f, const char *name) {
    for (size_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

void st_release(const struct st_file *f, const struct st_tensor *t) {
    st_release_range(f, t->data, t->nbytes);
}

/* Whole pages only from the start: the page holding p's first byte may be shared with the
 * previous tensor, which dropping merely makes the kernel read again. */
void st_release_range(const struct st_file *f, const void *p, uint64_t n) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p, hi = lo + n;
    uintptr_t base = (uintptr_t)f->map;
    lo = base + (lo - base) / (uintptr_t)page * (uintptr_t)page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
