/* CPU backend: a persistent thread pool and the ops the forward pass calls.
 * Matrix products: quantized activations times quantized weights (ggml's integer block dot
 * products) for small batches; dequantized weight tiles and OpenBLAS sgemm for large ones. */
#ifndef MOERUN_CPU_H
#define MOERUN_CPU_H

#include <stddef.h>
#include <stdint.h>

/* A weight matrix: n_out rows of n_in values each, in a block format, usually in the mmap. */
struct cpu_matrix {
    const void *data;
    uint32_t type;
    int64_t n_in;
    int64_t n_out;
    size_t row_bytes;
};

struct cpu_ctx;

struct cpu_config {
    int n_threads;
    int max_batch;      /* most tokens one matmul sees */
    int64_t max_in;     /* longest input row of any matrix */
    int max_ctx;        /* longest sequence attention looks at */
    int max_head_dim;   /* widest attention head (values) */
    int blas_min_batch; /* batches this large use dequantized tiles + sgemm (when built in) */
};

struct cpu_ctx *cpu_init(const struct cpu_config *cfg);
void cpu_free(struct cpu_ctx *c);
int cpu_n_threads(const struct cpu_ctx *c);
int cpu_has_blas(void);

/* Runs fn(ctx, ith, nth) on every pool thread (the caller is thread 0) and returns when all
 * are done. */
typedef void (*cpu_task_fn)(void *ctx, int ith, int nth);
void cpu_parallel(struct cpu_ctx *c, cpu_task_fn fn, void *ctx);

/* y (n_tok, n_out) = x (n_tok, n_in) times w transposed. */
void cpu_matmul(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x, int n_tok, float *y);

/* y (n) = x (n) / rms(x) * weight, per row of n values, n_rows rows, in place allowed. */
void cpu_rmsnorm(float *y, const float *x, const float *weight, int64_t n, int n_rows, float eps);

/* One row of embeddings: dequantizes row `id` of a (n_vocab, n_embd) matrix. */
void cpu_get_row(const struct cpu_matrix *w, int64_t id, float *out);

enum rope_mode { ROPE_NORM = 0, ROPE_NEOX = 2 }; /* ggml's mode values */

struct rope_params {
    enum rope_mode mode;
    int n_rot; /* dimensions rotated per head (the first n_rot) */
    float freq_base;
    float freq_scale; /* 1 / linear scaling factor */
};

/* Rotates each of n_head heads (head_dim apart) of each token's row (row_stride apart).
 * freq_factors (n_rot / 2) divide each pair's angle when the model has them, else NULL. */
void cpu_rope(float *x, int n_tok, int n_head, int head_dim, int64_t row_stride, const int32_t *pos,
              const struct rope_params *rp, const float *freq_factors);

/* out = silu(gate) * up, n values. */
void cpu_swiglu(float *out, const float *gate, const float *up, int64_t n);
void cpu_add(float *y, const float *x, int64_t n); /* y += x */
void cpu_softmax(float *x, int64_t n);

/* Causal grouped-query attention for n_tok new tokens at positions pos0.. over a float KV
 * cache of this layer: k_cache/v_cache (n_ctx, n_head_kv * head_dim), filled up to
 * pos0 + n_tok. q (n_tok, n_head * head_dim) in, out (n_tok, n_head * head_dim_v). */
struct attn_args {
    const float *q;
    const float *k_cache;
    const float *v_cache;
    float *out;
    int n_tok;
    int pos0;
    int n_head;
    int n_head_kv;
    int head_dim;
    int head_dim_v;
    float scale;
};
void cpu_attention(struct cpu_ctx *c, const struct attn_args *a);

#endif
