/* Safetensors reader: maps a .safetensors file read-only, parses its JSON header, and checks
 * every tensor's dtype, shape and data offsets against the file size before anything reads
 * tensor bytes. Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {...}}, then the data section that the offsets are relative to. */
#ifndef MOERUN_SAFETENSORS_H
#define MOERUN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

enum st_dtype {
    ST_UNKNOWN = 0, /* a dtype this reader does not convert; its name is kept for messages */
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_F8_E4M3,
    ST_F64,
    ST_I8,
    ST_I16,
    ST_I32,
    ST_I64,
    ST_U8,
    ST_BOOL,
};

struct st_tensor {
    const char *name; /* NUL-terminated, owned by the file */
    enum st_dtype dtype;
    const char *dtype_name; /* as written in the header ("BF16") */
    int n_dims;
    int64_t shape[ST_MAX_DIMS]; /* row-major (PyTorch) order: shape[n_dims-1] is contiguous */
    uint64_t n_elem;
    uint64_t nbytes;
    const uint8_t *data; /* inside the map */
};

struct st_file {
    char *path;
    uint8_t *map;
    uint64_t size;
    size_t n_tensors;
    struct st_tensor *tensors; /* (n_tensors), in header order */
    void *priv;                /* the parsed header (names point into it) */
};

/* Bytes per element of a dtype, 0 for ST_UNKNOWN. */
size_t st_dtype_size(enum st_dtype t);

/* Maps and validates the file. Returns 0, or -1 with err set naming the path and the tensor. */
int st_open(struct st_file *f, const char *path);
void st_close(struct st_file *f);
const struct st_tensor *st_find(const struct st_file *f, const char *name);
/* Tells the kernel that a tensor's pages are no longer needed (keeps resident memory flat
 * while a converter streams through a file larger than RAM). */
void st_release(const struct st_file *f, const struct st_tensor *t);
/* The same for bytes p[0..n) inside the map (a converter releases each chunk it has read). */
void st_release_range(const struct st_file *f, const void *p, uint64_t n);

#endif
