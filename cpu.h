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
    /* F32 rows summed in ggml's vec_dot order, as llama.cpp's expert products (mul_mat_id)
     * are, rather than in its sgemm order (see qt_dot_f32). */
    int vec_order;
};

struct cpu_ctx;

struct cpu_config {
    int n_threads;
    int max_batch;             /* most tokens one forward batch holds */
    int max_fanout;            /* input rows per token one product may see (experts per token) */
    int64_t max_in;            /* longest input row of any matrix */
    int64_t max_act_per_token; /* input values per token of the widest cpu_matmul_many call */
    int max_ctx;               /* longest sequence attention looks at */
    int max_head_dim;          /* widest attention head (values) */
    /* Batches this large use dequantized tiles + sgemm (when built in); 0: by weight type
     * (qtype_tile_sgemm_crossover, at least CPU_SGEMM_MIN_BATCH); negative: never. */
    int blas_min_batch;
};

/* The default batch from which products without a faster tile kernel, and attention, use sgemm. */
enum { CPU_SGEMM_MIN_BATCH = 16 };

struct cpu_ctx *cpu_init(const struct cpu_config *cfg);
void cpu_free(struct cpu_ctx *c);
int cpu_n_threads(const struct cpu_ctx *c);
int cpu_has_blas(void);

/* Runs fn(ctx, ith, nth) on every pool thread (the caller is thread 0) and returns when all
 * are done. */
typedef void (*cpu_task_fn)(void *ctx, int ith, int nth);
void cpu_parallel(struct cpu_ctx *c, cpu_task_fn fn, void *ctx);

/* One product y (n_tok, n_out) = x (n_tok, n_in) times w transposed, rows x_stride and
 * y_stride floats apart. */
struct cpu_product {
    struct cpu_matrix w;
    const float *x;
    int64_t x_stride;
    float *y;
    int64_t y_stride;
    int n_tok;
};

enum { CPU_MAX_PRODUCTS = 512 };

/* Independent products (heads, experts) computed together with one pair of barriers. */
void cpu_matmul_many(struct cpu_ctx *c, const struct cpu_product *p, int n);

/* y (n_tok, n_out) = x (n_tok, n_in) times w transposed. */
void cpu_matmul(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x, int n_tok, float *y);
/* The same with rows x_stride and y_stride floats apart (per-head products on a wider row). */
void cpu_matmul_strided(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x,
                        int64_t x_stride, int n_tok, float *y, int64_t y_stride);

/* y (n) = x (n) / rms(x) * weight, per row of n values, n_rows rows, in place allowed. */
void cpu_rmsnorm(float *y, const float *x, const float *weight, int64_t n, int n_rows, float eps);

/* One row of embeddings: dequantizes row `id` of a (n_vocab, n_embd) matrix. */
void cpu_get_row(const struct cpu_matrix *w, int64_t id, float *out);

enum rope_mode { ROPE_NORM = 0, ROPE_NEOX = 2 }; /* ggml's mode values */

struct rope_params {
    enum rope_mode mode;
    int n_rot; /* dimensions rotated per head (the first n_rot) */
    float freq_base;
    float freq_scale; /* 1 / scaling factor (linear or YaRN) */
    /* YaRN: ext_factor 0 turns it off; corr_dims from cpu_rope_yarn_corr_dims; attn_factor
     * scales cos and sin (llama.cpp's mscale bookkeeping, see model.c). */
    float ext_factor;
    float attn_factor;
    float corr_dims[2];
};

enum { ROPE_MAX_DIMS = 1024 };

/* The band of rotary dimensions YaRN blends between interpolation and extrapolation. */
void cpu_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float freq_base, float beta_fast,
                             float beta_slow, float dims[2]);

/* Rotates the n_rot dimensions starting at x + t * row_stride + h * head_stride of each token
 * t and head h. freq_factors (n_rot / 2) divide each pair's angle when the model has them. */
void cpu_rope(float *x, int n_tok, int n_head, int64_t head_stride, int64_t row_stride,
              const int32_t *pos, const struct rope_params *rp, const float *freq_factors);

/* y = sigmoid(x), n values, as ggml computes it. */
void cpu_sigmoid(float *y, const float *x, int64_t n);

/* out = silu(gate) * up, n values. */
void cpu_swiglu(float *out, const float *gate, const float *up, int64_t n);
void cpu_add(float *y, const float *x, int64_t n); /* y += x */
void cpu_softmax(float *x, int64_t n);

/* Causal grouped-query attention for n_tok new tokens at positions pos0.. over a float KV
 * cache filled up to pos0 + n_tok. Head h of token t: its query at q + t * q_stride + h *
 * head_dim, keys of position j at k_cache + j * k_stride + (h / group) * head_dim, values at
 * v_cache + j * v_stride + (h / group) * head_dim_v, output at out + t * out_stride + h *
 * head_dim_v. MLA is the case n_head_kv = 1 with values inside the key rows. */
struct attn_args {
    const float *q;
    const float *k_cache;
    const float *v_cache;
    float *out;
    int64_t q_stride, k_stride, v_stride, out_stride;
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
