/* GGUF v3: a validating mmap reader and a writer (temporary file, then rename).
 * Layout as llama.cpp writes it: header, key/values, tensor infos, aligned data. */
#ifndef MOERUN_GGUF_H
#define MOERUN_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
};

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* A string inside the mapped file: not NUL-terminated. */
struct gguf_str {
    uint64_t len;
    const char *data;
};

struct gguf_kv {
    struct gguf_str key;
    enum gguf_type type;     /* value type; GGUF_TYPE_ARRAY for arrays */
    enum gguf_type arr_type; /* element type when type == GGUF_TYPE_ARRAY */
    uint64_t arr_n;          /* element count when type == GGUF_TYPE_ARRAY */
    const uint8_t *value;    /* first byte of the value (for arrays: of the first element);
                                a string is stored as its u64 length, then its bytes */
    uint64_t value_size;     /* bytes the value occupies in the file (arrays: all elements) */
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ggml order: ne[0] is the row length; unused dims are 1 */
    uint32_t type;             /* ggml type id (enum qtype in quant.h) */
    uint64_t offset;           /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* inside the map */
};

struct gguf_file {
    char *path;
    uint8_t *map;
    uint64_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t n_kv;
    struct gguf_kv *kv; /* (n_kv) */
    uint64_t n_tensors;
    struct gguf_tensor *tensors; /* (n_tensors) */
    uint64_t data_offset;        /* start of the tensor data section in the file */
    int hold;                    /* enum gguf_hold flags in effect */
    int lock_errno;              /* GGUF_LOCK asked and mlock failed: its errno, else 0 */
};

/* How the bytes are held. Mapped (the default): pages come from the file cache and may be
 * dropped under memory pressure and read again. GGUF_READ: read once into anonymous memory,
 * which the kernel does not evict as cache (VMs that reclaim idle file pages slow a mapped
 * model down). GGUF_LOCK: mlock the bytes into RAM; when the lock limit refuses, the file is
 * still usable and lock_errno says why (the caller warns). GGUF_POPULATE, with a mapping of a
 * file that fits in RAM: read the file and fill the page tables at open (MAP_POPULATE, as
 * llama.cpp maps), rather than fault page by page as the first pass over the weights touches
 * them; `hold` keeps the flag only where it was done. */
enum gguf_hold { GGUF_MAP = 0, GGUF_LOCK = 1, GGUF_READ = 2, GGUF_POPULATE = 4 };

/* Maps and validates the whole file: every count, length, type, offset and size is checked
 * against the file length. On error returns -1 with err_get() naming path and problem, and
 * leaves nothing to close. */
int gguf_open(struct gguf_file *f, const char *path);
int gguf_open_hold(struct gguf_file *f, const char *path, int hold);
void gguf_close(struct gguf_file *f);

const char *gguf_type_name(enum gguf_type t);
int gguf_str_eq(struct gguf_str s, const char *c);

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* Typed getters: 0 found, 1 absent (out untouched), -1 present with the wrong type or a value
 * out of range (err set, naming file, key, expected and actual type). Integers accept any
 * integer GGUF type whose value fits. */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out); /* f32 or f64 */
int gguf_get_bool(const struct gguf_file *f, const char *key, int *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);

/* Arrays: gguf_get_arr checks the element type and gives the count and the raw element
 * bytes (little-endian, unaligned: read with memcpy). String arrays: gguf_arr_strings fills
 * out[0..n) with views into the map (n must equal the array count). */
int gguf_get_arr(const struct gguf_file *f, const char *key, enum gguf_type elem_type, uint64_t *n,
                 const uint8_t **data);
int gguf_arr_strings(const struct gguf_kv *kv, struct gguf_str *out, uint64_t n);

/* ---- writer ---- */
struct gguf_writer;

struct gguf_writer *gguf_writer_new(void);
void gguf_writer_free(struct gguf_writer *w);

/* Setting a key twice replaces its value. Strings are copied. */
void gguf_set_u32(struct gguf_writer *w, const char *key, uint32_t v);
void gguf_set_i32(struct gguf_writer *w, const char *key, int32_t v);
void gguf_set_u64(struct gguf_writer *w, const char *key, uint64_t v);
void gguf_set_f32(struct gguf_writer *w, const char *key, float v);
void gguf_set_bool(struct gguf_writer *w, const char *key, int v);
void gguf_set_str(struct gguf_writer *w, const char *key, const char *v);
/* Array of fixed-size elements (not strings); data holds n little-endian elements. */
void gguf_set_arr(struct gguf_writer *w, const char *key, enum gguf_type elem_type,
                  const void *data, uint64_t n);
void gguf_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* Copies a key/value (any type, arrays included) from an open file. */
void gguf_set_kv(struct gguf_writer *w, const struct gguf_kv *kv);

/* Tensor whose bytes come from memory that stays valid until gguf_writer_write returns.
 * nbytes must match the type and shape (checked at write time). */
void gguf_add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                     const int64_t *ne, const void *data, uint64_t nbytes);

/* Tensor produced at write time, in order, so a converter streams one tensor at a time:
 * produce writes exactly nbytes to out through gguf_stream_write and returns 0, or returns
 * -1 with err set. */
struct gguf_stream;
typedef int (*gguf_produce_fn)(void *ctx, struct gguf_stream *out);
int gguf_stream_write(struct gguf_stream *s, const void *data, size_t n);
void gguf_add_tensor_stream(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                            const int64_t *ne, uint64_t nbytes, gguf_produce_fn produce, void *ctx);

/* Writes the file to "<path>.tmp.<pid>" then renames it over path; on error removes the
 * temporary file and returns -1 with err set. Alignment from general.alignment if set. */
int gguf_writer_write(struct gguf_writer *w, const char *path);

#endif
