/* Block formats, byte-identical to ggml: sizes, dequantize, reference quantize, dot products.
 * One traits row per type; every path (CPU, tools, GPU upload) goes through it. */
#ifndef MOERUN_QUANT_H
#define MOERUN_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* ggml type ids as stored in GGUF tensor infos. */
enum qtype {
    QT_F32 = 0,
    QT_F16 = 1,
    QT_Q4_0 = 2,
    QT_Q4_1 = 3,
    QT_Q5_0 = 6,
    QT_Q5_1 = 7,
    QT_Q8_0 = 8,
    QT_Q8_1 = 9,
    QT_Q2_K = 10,
    QT_Q3_K = 11,
    QT_Q4_K = 12,
    QT_Q5_K = 13,
    QT_Q6_K = 14,
    QT_Q8_K = 15,
    QT_BF16 = 30,
    QT_COUNT = 40 /* bound on ids we look at; unknown ids have no traits */
};

/* to_float: n values (multiple of blck_size) from blocks to floats.
 * from_float: reference quantization, the same bytes ggml's *_ref functions write.
 * vec_dot: sum over n of x (this type) times y (vec_dot_type), the way ggml's generic CPU
 *          kernels compute it (integer block products for the quantized types); NULL for
 *          the activation-only types Q8_1 and Q8_K. */
typedef void (*qt_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*qt_from_float_fn)(const float *src, void *dst, int64_t n);
typedef void (*qt_vec_dot_fn)(int64_t n, float *out, const void *x, const void *y);
/* A tile of tile_rows weight rows (x, x_stride bytes apart) times tile_toks activation rows
 * (y, y_stride bytes apart): out[t * out_stride + r] for every pair, each the same bits that
 * vec_dot gives for it. Loads each block once per tile and keeps the pairs' accumulations
 * independent, so small batches (an expert's share of a prefill) run near the core's
 * throughput instead of one dot product's latency. */
typedef void (*qt_vec_dot_tile_fn)(int64_t n, const void *x, size_t x_stride, const void *y,
                                   size_t y_stride, float *out, int64_t out_stride);
/* n_rows weight rows (x, x_stride bytes apart) times one activation row: out[r], each the
 * same bits that vec_dot gives. Decode's kernel where one exists: it shares the activation's
 * unpacking between rows. */
typedef void (*qt_vec_dot_rows_fn)(int64_t n, const void *x, size_t x_stride, const void *y,
                                   float *out, int64_t n_rows);

struct qtype_traits {
    const char *name; /* ggml's name: "q4_K", "f32", ... */
    int64_t blck_size;
    size_t type_size; /* bytes per block */
    qt_to_float_fn to_float;
    qt_from_float_fn from_float;
    /* How ggml-cpu on x86 quantizes activations into this type (use it on the vec_dot_type
     * row): differs from from_float only for Q8_0 and Q8_1 (AVX path: 127/amax and
     * round-half-even instead of the reference 1/d and roundf). */
    qt_from_float_fn from_float_act;
    enum qtype vec_dot_type;
    qt_vec_dot_fn vec_dot;
    qt_vec_dot_tile_fn vec_dot_tile; /* NULL: vec_dot pair by pair */
    qt_vec_dot_rows_fn vec_dot_rows; /* NULL: vec_dot row by row */
    int tile_rows, tile_toks;
};

/* NULL for ids that are unknown or not supported (e.g. IQ types for now). */
const struct qtype_traits *qtype_traits(uint32_t type);
/* ggml's name; "type 23" style text for unknown ids, never NULL. */
const char *qtype_name(uint32_t type);
/* Block layout of any ggml type id, including those without traits (IQ, integer types):
 * 0, or -1 for an id ggml does not define. For parsing and sizing files. */
int qtype_layout(uint32_t type, int64_t *blck_size, size_t *type_size);
/* Bytes of a row of n values; 0 when n is not a multiple of the block size or the type is
 * unknown. */
size_t qtype_row_size(enum qtype type, int64_t n);

/* The portable C kernel of a type's vec_dot (traits' vec_dot may pick an AVX2 one at run
 * time); for tests and for comparing paths. NULL where traits' vec_dot is NULL. */
qt_vec_dot_fn qtype_vec_dot_scalar(uint32_t type);
/* The same for to_float (the AVX2 dequantizers give the same bits; tests check it). */
qt_to_float_fn qtype_to_float_scalar(uint32_t type);
/* 1 when traits' vec_dot uses the AVX2+FMA kernels on this CPU, 0 for portable C only. */
int qtype_simd_level(void);
/* The batch from which OpenBLAS sgemm on dequantized rows of n_in values beats the type's tile
 * kernel on this CPU; 0 where the type has no SIMD tile kernel here. */
int qtype_tile_sgemm_crossover(uint32_t type, int64_t n_in);

/* F32 dot products in llama.cpp's CPU summation orders (see quant.c): qt_dot_f32 is what its
 * matrix products compute for a row of n values (sgemm order when n % 16 == 0), qt_dot_f32_vec
 * the order of ggml's vec_dot_f32 (used by its attention scores). */
float qt_dot_f32(const float *x, const float *y, int64_t n);
float qt_dot_f32_vec(const float *x, const float *y, int64_t n);
/* out[r] = qt_dot_f32_vec(x, rows + r * row_stride, n) for r < n_rows, bit for bit. */
void qt_dot_f32_vec_rows(const float *x, const float *rows, int64_t row_stride, int64_t n,
                         int64_t n_rows, float *out);
/* lanes[l * width + d] (16 lanes) = the sum over rows j = l (mod 16), j < n, of
 * p[j] * rows[j * row_stride + d], as fused multiply-adds in increasing j from zero: the lanes
 * of llama.cpp's sgemm for P * V, before qt_reduce_lanes16. */
void qt_fma_lanes16(const float *p, int64_t n, const float *rows, int64_t row_stride,
                    int64_t width, float *lanes);
/* Pairwise sums of 16 rows of n values (row i at lanes + i * n): row i += row i+8, then +4,
 * +2, +1, in place, so row 0 ends with the sums; returns its first value. */
float qt_reduce_lanes16(float *lanes, int64_t n);

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f); /* round to nearest even, as ggml */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f); /* round to nearest even, NaN kept quiet, as ggml */

#endif
