#include "cpu.h"

#include "quant.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef MOERUN_BLAS
#include <cblas.h>
#endif

/* Workers spin this many polls for the next job before sleeping: ops in one forward pass
 * follow each other within microseconds, a condition-variable wake costs more than that. */
enum { SPIN_POLLS = 20000 };

/* Sums that llama.cpp's CPU backend forms in 16-float (AVX-512) registers are formed here in
 * the same 16 lanes and reduced in the same tree: the activations then agree with its results
 * to the last bit often enough that their int8 quantization rounds the same way. */
enum { ACC_LANES = 16 };

/* The loops below use fmaf for llama.cpp's rounding; without hardware FMA that is a library
 * call per element. An x86-64-v3 (AVX2 + FMA) clone of each, chosen at load time, makes it one
 * instruction and lets the compiler vectorize; the default clone keeps the same results. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FMA_CLONES
#endif

struct worker {
    struct cpu_ctx *ctx;
    int ith;
};

struct cpu_ctx {
    struct cpu_config cfg;
    int n_threads;
    pthread_t *threads;     /* (n_threads - 1) */
    struct worker *workers; /* (n_threads - 1) */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint generation; /* bumped once per job */
    atomic_int n_done;      /* workers finished with the current job */
    atomic_int stop;
    cpu_task_fn fn;
    void *fn_ctx;

    uint8_t *act; /* (max_batch, max_in) activations in the weight's vec_dot type */
    float *tiles; /* (n_threads, tile_rows, max_in) dequantized weight rows for sgemm */
    int64_t tile_rows;
    float *scores;  /* (n_threads, max_ctx) attention probabilities */
    float *v_lanes; /* (n_threads, ACC_LANES, max_head_dim) partial sums of P * V */
};

static void wait_for_job(struct cpu_ctx *c, unsigned seen) {
    for (int i = 0; i < SPIN_POLLS; i++) {
        if (atomic_load_explicit(&c->generation, memory_order_acquire) != seen) return;
        if ((i & 255) == 255) sched_yield();
    }
    pthread_mutex_lock(&c->mu);
    while (atomic_load(&c->generation) == seen) pthread_cond_wait(&c->wake, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct cpu_ctx *c = w->ctx;
    unsigned seen = 0;
    for (;;) {
        wait_for_job(c, seen);
        seen = atomic_load_explicit(&c->generation, memory_order_acquire);
        if (atomic_load(&c->stop)) return NULL;
        c->fn(c->fn_ctx, w->ith, c->n_threads);
        atomic_fetch_add_explicit(&c->n_done, 1, memory_order_release);
    }
}

void cpu_parallel(struct cpu_ctx *c, cpu_task_fn fn, void *ctx) {
    if (c->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    c->fn = fn;
    c->fn_ctx = ctx;
    atomic_store(&c->n_done, 0);
    pthread_mutex_lock(&c->mu);
    atomic_fetch_add_explicit(&c->generation, 1, memory_order_release);
    pthread_cond_broadcast(&c->wake);
    pthread_mutex_unlock(&c->mu);
    fn(ctx, 0, c->n_threads);
    for (int i = 0; atomic_load_explicit(&c->n_done, memory_order_acquire) < c->n_threads - 1; i++)
        if ((i & 255) == 255) sched_yield();
}

static int64_t pick_tile_rows(int64_t max_in) {
    /* about 2 MiB of floats per thread: large enough for sgemm, small enough for L2/L3 */
    int64_t rows = (2 << 20) / (max_in * (int64_t)sizeof(float));
    if (rows < 16) rows = 16;
    if (rows > 256) rows = 256;
    return rows;
}

struct cpu_ctx *cpu_init(const struct cpu_config *cfg) {
    struct cpu_ctx *c = xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->n_threads = cfg->n_threads > 0 ? cfg->n_threads : 1;
    /* Quantized activation rows are never larger than the float rows. */
    c->act = xaligned_alloc((size_t)cfg->max_batch * (size_t)cfg->max_in * sizeof(float));
    c->tile_rows = pick_tile_rows(cfg->max_in);
#ifdef MOERUN_BLAS
    /* One sgemm per thread on its own tile: OpenBLAS must not start threads of its own. */
    openblas_set_num_threads(1);
    c->tiles = xaligned_alloc((size_t)c->n_threads * (size_t)c->tile_rows * (size_t)cfg->max_in *
                              sizeof(float));
#endif
    c->scores = xaligned_alloc((size_t)c->n_threads * (size_t)cfg->max_ctx * sizeof(float));
    c->v_lanes = xaligned_alloc((size_t)c->n_threads * ACC_LANES * (size_t)cfg->max_head_dim *
                                sizeof(float));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->wake, NULL);
    c->threads = xcalloc((size_t)c->n_threads, sizeof *c->threads);
    c->workers = xcalloc((size_t)c->n_threads, sizeof *c->workers);
    for (int i = 1; i < c->n_threads; i++) {
        c->workers[i] = (struct worker){c, i};
        if (pthread_create(&c->threads[i], NULL, worker_main, &c->workers[i]) != 0)
            die("pthread_create failed for worker %d", i);
    }
    return c;
}

void cpu_free(struct cpu_ctx *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    atomic_store(&c->stop, 1);
    atomic_fetch_add(&c->generation, 1);
    pthread_cond_broadcast(&c->wake);
    pthread_mutex_unlock(&c->mu);
    for (int i = 1; i < c->n_threads; i++) pthread_join(c->threads[i], NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->wake);
    free(c->threads);
    free(c->workers);
    free(c->act);
    free(c->tiles);
    free(c->scores);
    free(c->v_lanes);
    free(c);
}

int cpu_n_threads(const struct cpu_ctx *c) { return c->n_threads; }

int cpu_has_blas(void) {
#ifdef MOERUN_BLAS
    return 1;
#else
    return 0;
#endif
}

/* Splits [0, n) evenly: thread ith gets [*lo, *hi). */
static void split_range(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi) {
    *lo = n * ith / nth;
    *hi = n * (ith + 1) / nth;
}

/* ---- matrix products ---- */

struct matmul_job {
    struct cpu_ctx *c;
    const struct cpu_matrix *w;
    const struct qtype_traits *wt;
    const float *x;
    int n_tok;
    float *y;
    const uint8_t *act; /* activations in the vec_dot type */
    size_t act_row;     /* bytes per activation row */
};

static void quantize_activations(void *arg, int ith, int nth) {
    struct matmul_job *j = arg;
    const struct qtype_traits *at = qtype_traits(j->wt->vec_dot_type);
    uint8_t *dst = (uint8_t *)j->act;
    for (int t = ith; t < j->n_tok; t += nth)
        at->from_float_act(j->x + (size_t)t * (size_t)j->w->n_in, dst + (size_t)t * j->act_row,
                           j->w->n_in);
}

static void matmul_rows_quantized(void *arg, int ith, int nth) {
    struct matmul_job *j = arg;
    const struct cpu_matrix *w = j->w;
    int64_t lo, hi;
    split_range(w->n_out, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        for (int t = 0; t < j->n_tok; t++)
            j->wt->vec_dot(w->n_in, &j->y[(size_t)t * (size_t)w->n_out + (size_t)r], row,
                           j->act + (size_t)t * j->act_row);
    }
}

#ifdef MOERUN_BLAS
/* Float activations times dequantized weights: the path that drifts from llama.cpp's
 * quantized-activation results by design (see DESIGN.md, Numerics). */
static void matmul_rows_sgemm(void *arg, int ith, int nth) {
    struct matmul_job *j = arg;
    const struct cpu_matrix *w = j->w;
    int64_t tile_rows = j->c->tile_rows;
    int64_t n_tiles = (w->n_out + tile_rows - 1) / tile_rows;
    float *tile = j->c->tiles + (size_t)ith * (size_t)tile_rows * (size_t)j->c->cfg.max_in;
    int64_t lo, hi;
    split_range(n_tiles, ith, nth, &lo, &hi);
    for (int64_t ti = lo; ti < hi; ti++) {
        int64_t r0 = ti * tile_rows;
        int64_t rows = w->n_out - r0 < tile_rows ? w->n_out - r0 : tile_rows;
        const float *b;
        if (w->type == QT_F32) {
            b = (const float *)((const uint8_t *)w->data + (size_t)r0 * w->row_bytes);
        } else {
            for (int64_t r = 0; r < rows; r++)
                j->wt->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes,
                                tile + (size_t)r * (size_t)w->n_in, w->n_in);
            b = tile;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n_tok, (int)rows, (int)w->n_in,
                    1.0f, j->x, (int)w->n_in, b, (int)w->n_in, 0.0f, j->y + r0, (int)w->n_out);
    }
}
#endif

void cpu_matmul(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x, int n_tok,
                float *y) {
    if (n_tok > c->cfg.max_batch || w->n_in > c->cfg.max_in)
        die("matmul of %d x %lld exceeds the scratch sized at load (%d x %lld)", n_tok,
            (long long)w->n_in, c->cfg.max_batch, (long long)c->cfg.max_in);
    struct matmul_job j = {
        .c = c, .w = w, .wt = qtype_traits(w->type), .x = x, .n_tok = n_tok, .y = y};
    if (!j.wt) die("matmul on unsupported type %u", w->type);
#ifdef MOERUN_BLAS
    if (c->cfg.blas_min_batch > 0 && n_tok >= c->cfg.blas_min_batch) {
        cpu_parallel(c, matmul_rows_sgemm, &j);
        return;
    }
#endif
    if (j.wt->vec_dot_type == QT_F32) {
        j.act = (const uint8_t *)x;
        j.act_row = (size_t)w->n_in * sizeof(float);
    } else {
        j.act = c->act;
        j.act_row = qtype_row_size(j.wt->vec_dot_type, w->n_in);
        cpu_parallel(c, quantize_activations, &j);
    }
    cpu_parallel(c, matmul_rows_quantized, &j);
}

void cpu_get_row(const struct cpu_matrix *w, int64_t id, float *out) {
    const struct qtype_traits *t = qtype_traits(w->type);
    if (!t) die("embedding row of unsupported type %u", w->type);
    t->to_float((const uint8_t *)w->data + (size_t)id * w->row_bytes, out, w->n_in);
}

/* ---- element-wise ops (small: run on the calling thread) ---- */

/* exp(x) as ggml's SIMD kernels compute it for softmax and SiLU (the Arm optimized-routines
 * polynomial: x = n ln2 + b, exp(b) by a degree-5 polynomial, scaled by 2^n). Within 1.5 ulp
 * of expf; using the same approximation keeps us bit-close to llama.cpp. */
static inline float exp_poly(float x) {
    const float shift = 0x1.8p23f; /* adding it rounds to an integer */
    float z = fmaf(x, 0x1.715476p+0f, shift);
    float n = z - shift;
    if (fabsf(n) > 126.0f) return x > 0.0f ? INFINITY : (x < -104.0f ? 0.0f : expf(x));
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)); /* x - n ln2, two parts */
    float u = b * b;
    float p = fmaf(
        fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
        u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(p, (int)n);
}

void cpu_rmsnorm(float *y, const float *x, const float *weight, int64_t n, int n_rows, float eps) {
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * (size_t)n;
        float *yr = y + (size_t)r * (size_t)n;
        double sum = 0.0; /* ggml sums squares in double */
        for (int64_t i = 0; i < n; i++) sum += (double)(xr[i] * xr[i]);
        float mean = (float)(sum / (double)n);
        float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++) yr[i] = (xr[i] * scale) * weight[i];
    }
}

/* (Clones stay static: clang 14 emits no resolver for an exported cloned function.) */
FMA_CLONES static void swiglu_rows(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
}

void cpu_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    swiglu_rows(out, gate, up, n);
}

void cpu_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

FMA_CLONES static void softmax_row(float *x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    double sum = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += ACC_LANES) {
        float lanes[ACC_LANES] = {0};
        for (int64_t i = i0; i < n && i < i0 + ACC_LANES; i++)
            lanes[i - i0] = x[i] = exp_poly(x[i] - max);
        sum += qt_reduce_lanes16(lanes, 1);
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void cpu_softmax(float *x, int64_t n) { softmax_row(x, n); }

/* ggml advances theta by repeated multiplication rather than pow per pair; doing the same
 * keeps our angles within float rounding of llama.cpp's. */
FMA_CLONES static void rope_one_head(float *h, int n_rot, float pos, const struct rope_params *rp,
                                     const float *freq_factors) {
    float theta_scale = powf(rp->freq_base, -2.0f / (float)n_rot);
    float theta = pos;
    for (int i = 0; i < n_rot; i += 2) {
        float ff = freq_factors ? freq_factors[i / 2] : 1.0f;
        float angle = theta / ff * rp->freq_scale;
        float cos_t = cosf(angle), sin_t = sinf(angle);
        int a = rp->mode == ROPE_NEOX ? i / 2 : i;
        int b = rp->mode == ROPE_NEOX ? i / 2 + n_rot / 2 : i + 1;
        float x0 = h[a], x1 = h[b];
        /* the fused forms llama.cpp's compiled rotation takes */
        h[a] = fmaf(x0, cos_t, -(x1 * sin_t));
        h[b] = fmaf(x0, sin_t, x1 * cos_t);
        theta *= theta_scale;
    }
}

void cpu_rope(float *x, int n_tok, int n_head, int head_dim, int64_t row_stride, const int32_t *pos,
              const struct rope_params *rp, const float *freq_factors) {
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < n_head; h++)
            rope_one_head(x + (size_t)t * (size_t)row_stride + (size_t)h * (size_t)head_dim,
                          rp->n_rot, (float)pos[t], rp, freq_factors);
}

/* ---- attention ---- */

struct attn_job {
    struct cpu_ctx *c;
    const struct attn_args *a;
};

/* out (head_dim_v) = sum over j of p[j] * v_j, in ACC_LANES lanes of fused multiply-adds (lane
 * j % ACC_LANES), reduced by reduce_lanes: the order of llama.cpp's sgemm for P * V. */
FMA_CLONES static void weighted_values(const struct attn_args *a, int kvh, const float *p, int n_kv,
                                       float *lanes, float *out) {
    int64_t v_stride = (int64_t)a->n_head_kv * a->head_dim_v;
    int hd = a->head_dim_v;
    memset(lanes, 0, (size_t)ACC_LANES * (size_t)hd * sizeof *lanes);
    for (int j = 0; j < n_kv; j++) {
        const float *v = a->v_cache + (size_t)j * (size_t)v_stride + (size_t)kvh * (size_t)hd;
        float *l = lanes + (size_t)(j % ACC_LANES) * (size_t)hd;
        for (int d = 0; d < hd; d++) l[d] = fmaf(p[j], v[d], l[d]);
    }
    for (int d = 0; d < hd; d++) out[d] = qt_reduce_lanes16(lanes + d, hd);
}

static void attend_one(const struct attn_args *a, int t, int h, float *p, float *lanes) {
    int kvh = h / (a->n_head / a->n_head_kv);
    int n_kv = a->pos0 + t + 1; /* causal: this token sees itself and everything before */
    int64_t kv_stride = (int64_t)a->n_head_kv * a->head_dim;
    const float *q = a->q + (size_t)t * (size_t)a->n_head * (size_t)a->head_dim +
                     (size_t)h * (size_t)a->head_dim;
    for (int j = 0; j < n_kv; j++) {
        const float *k = a->k_cache + (size_t)j * (size_t)kv_stride + (size_t)kvh * a->head_dim;
        p[j] = qt_dot_f32_vec(q, k, a->head_dim) * a->scale;
    }
    cpu_softmax(p, n_kv);
    float *out = a->out + (size_t)t * (size_t)a->n_head * (size_t)a->head_dim_v +
                 (size_t)h * (size_t)a->head_dim_v;
    weighted_values(a, kvh, p, n_kv, lanes, out);
}

static void attention_task(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    const struct attn_args *a = j->a;
    float *p = j->c->scores + (size_t)ith * (size_t)j->c->cfg.max_ctx;
    float *lanes = j->c->v_lanes + (size_t)ith * ACC_LANES * (size_t)j->c->cfg.max_head_dim;
    int n_items = a->n_tok * a->n_head;
    for (int i = ith; i < n_items; i += nth) attend_one(a, i / a->n_head, i % a->n_head, p, lanes);
}

void cpu_attention(struct cpu_ctx *c, const struct attn_args *a) {
    if (a->head_dim_v > c->cfg.max_head_dim)
        die("attention head width %d exceeds the scratch sized at load (%d)", a->head_dim_v,
            c->cfg.max_head_dim);
    if (a->pos0 + a->n_tok > c->cfg.max_ctx)
        die("attention over %d positions exceeds the context %d", a->pos0 + a->n_tok,
            c->cfg.max_ctx);
    struct attn_job j = {c, a};
    cpu_parallel(c, attention_task, &j);
}
