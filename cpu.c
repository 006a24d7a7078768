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

/* Query rows per tile of the batched (sgemm) attention. */
enum { ATTN_TILE = 32 };

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
    atomic_int n_sleeping; /* workers blocked on the condition variable */
    cpu_task_fn fn;
    void *fn_ctx;

    uint8_t *act; /* (act_bytes) activations in the weights' vec_dot types */
    size_t act_bytes;
    float *tiles; /* (n_threads, tile_rows, max_in) dequantized weight rows for sgemm */
    int64_t tile_rows;
    float *scores;  /* (n_threads, ATTN_TILE, max_ctx) attention probabilities */
    float *v_lanes; /* (n_threads, ACC_LANES, max_head_dim) partial sums of P * V */
};

static void wait_for_job(struct cpu_ctx *c, unsigned seen) {
    for (int i = 0; i < SPIN_POLLS; i++) {
        if (atomic_load_explicit(&c->generation, memory_order_acquire) != seen) return;
        if ((i & 255) == 255) sched_yield();
    }
    pthread_mutex_lock(&c->mu);
    atomic_fetch_add(&c->n_sleeping, 1);
    while (atomic_load(&c->generation) == seen) pthread_cond_wait(&c->wake, &c->mu);
    atomic_fetch_sub(&c->n_sleeping, 1);
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
    /* Sequentially consistent: a worker counts itself asleep before its last look at the
     * generation, so either it sees the new job or this sees it asleep. Spinning workers (the
     * usual case inside a forward pass) cost no lock and no wake-up call. */
    atomic_fetch_add(&c->generation, 1);
    if (atomic_load(&c->n_sleeping) > 0) {
        pthread_mutex_lock(&c->mu);
        pthread_cond_broadcast(&c->wake);
        pthread_mutex_unlock(&c->mu);
    }
    fn(ctx, 0, c->n_threads);
    for (int i = 0; atomic_load_explicit(&c->n_done, memory_order_acquire) < c->n_threads - 1; i++)
        if ((i & 255) == 255) sched_yield();
}

enum { MAX_TILE_ROWS = 256 };

static int64_t pick_tile_rows(int64_t max_in) {
    /* about 2 MiB of floats per thread: large enough for sgemm, small enough for L2/L3 */
    int64_t rows = (2 << 20) / (max_in * (int64_t)sizeof(float));
    if (rows < 16) rows = 16;
    if (rows > MAX_TILE_ROWS) rows = MAX_TILE_ROWS;
    return rows;
}

struct cpu_ctx *cpu_init(const struct cpu_config *cfg) {
    struct cpu_ctx *c = xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    c->n_threads = cfg->n_threads > 0 ? cfg->n_threads : 1;
    /* vec_dot types take at most 2 bytes a value (f16, bf16; q8 blocks about 1.1) */
    c->act_bytes = (size_t)cfg->max_batch * (size_t)cfg->max_act_per_token * 2 + 4096;
    c->act = xaligned_alloc(c->act_bytes);
    c->tile_rows = pick_tile_rows(cfg->max_in);
#ifdef MOERUN_BLAS
    /* One sgemm per thread on its own tile: OpenBLAS must not start threads of its own. */
    openblas_set_num_threads(1);
    c->tiles = xaligned_alloc((size_t)c->n_threads * (size_t)c->tile_rows * (size_t)cfg->max_in *
                              sizeof(float));
#endif
    c->scores =
        xaligned_alloc((size_t)c->n_threads * ATTN_TILE * (size_t)cfg->max_ctx * sizeof(float));
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

/* Several independent products run in two parallel sections: every input row is quantized
 * to its weight's vec_dot type once, then all output rows of all products are shared among
 * the threads (heads of MLA, experts of a MoE layer: one barrier pair for all of them). */
struct matmul_job {
    struct cpu_ctx *c;
    const struct cpu_product *p;
    int n;
    size_t act_off[CPU_MAX_PRODUCTS];  /* each product's first activation row in c->act */
    size_t act_row[CPU_MAX_PRODUCTS];  /* bytes per activation row (0: rows are the floats) */
    int act_reused[CPU_MAX_PRODUCTS];  /* an earlier product quantizes the same input */
    int64_t act_rows;                  /* input rows to quantize, over all products */
    int64_t row_end[CPU_MAX_PRODUCTS]; /* running total of output rows */
    int64_t tok_end[CPU_MAX_PRODUCTS]; /* running total of input rows */
    atomic_llong next_row;             /* the next unit of row_end's running total to take */
};

static const uint8_t *activation(const struct matmul_job *j, int i, int t) {
    const struct cpu_product *p = &j->p[i];
    if (!j->act_row[i]) return (const uint8_t *)(p->x + (size_t)t * (size_t)p->x_stride);
    return j->c->act + j->act_off[i] + (size_t)t * j->act_row[i];
}

/* Which product holds unit u of the running totals ends[0..n). */
static int product_of(const int64_t *ends, int n, int64_t u) {
    int i = 0;
    while (i < n - 1 && u >= ends[i]) i++;
    return i;
}

static void quantize_activations(void *arg, int ith, int nth) {
    struct matmul_job *j = arg;
    int64_t lo, hi;
    split_range(j->tok_end[j->n - 1], ith, nth, &lo, &hi);
    for (int64_t u = lo; u < hi; u++) {
        int i = product_of(j->tok_end, j->n, u);
        const struct cpu_product *p = &j->p[i];
        int t = (int)(u - (i ? j->tok_end[i - 1] : 0));
        if (!j->act_row[i] || j->act_reused[i]) continue;
        const struct qtype_traits *at = qtype_traits(qtype_traits(p->w.type)->vec_dot_type);
        at->from_float_act(p->x + (size_t)t * (size_t)p->x_stride, (uint8_t *)activation(j, i, t),
                           p->w.n_in);
    }
}

/* ggml's vec_dot order for F32 rows (llama.cpp's expert products); traits' vec_dot otherwise. */
static void dot_vec_order(int64_t n, float *out, const void *x, const void *y) {
    *out = qt_dot_f32_vec(x, y, n);
}

/* Rows per vec_dot_rows call: a block that stays in L1/L2 while each leftover token (at most
 * 3 past the tiles) passes over it. */
enum { ROWS_BLOCK = 32 };

/* Output rows [r0, r1) of product i for tokens [t0, n_tok), one dot product per pair: blocks
 * of rows per token where the type has a rows kernel. */
static void product_pairs(const struct matmul_job *j, int i, int64_t r0, int64_t r1, int t0) {
    const struct cpu_product *p = &j->p[i];
    const struct cpu_matrix *w = &p->w;
    const struct qtype_traits *tr = qtype_traits(w->type);
    const uint8_t *data = w->data;
    if (tr->vec_dot_rows) {
        for (int64_t rb = r0; rb < r1; rb += ROWS_BLOCK)
            for (int t = t0; t < p->n_tok; t++)
                tr->vec_dot_rows(w->n_in, data + (size_t)rb * w->row_bytes, w->row_bytes,
                                 activation(j, i, t),
                                 &p->y[(size_t)t * (size_t)p->y_stride + (size_t)rb],
                                 r1 - rb < ROWS_BLOCK ? r1 - rb : ROWS_BLOCK);
        return;
    }
    qt_vec_dot_fn dot = w->type == QT_F32 && w->vec_order ? dot_vec_order : tr->vec_dot;
    for (int64_t r = r0; r < r1; r++)
        for (int t = t0; t < p->n_tok; t++)
            dot(w->n_in, &p->y[(size_t)t * (size_t)p->y_stride + (size_t)r],
                data + (size_t)r * w->row_bytes, activation(j, i, t));
}

/* Multiples of every tile's rows (1, 2) and tokens (4). */
enum { TILE_BLOCK_ROWS = 32, TILE_BLOCK_TOKS = 32 };

/* Rows [r0, r1) x tokens [t0, t1) of product i, whole tiles. */
static void product_tiles(const struct matmul_job *j, int i, int64_t r0, int64_t r1, int t0,
                          int t1) {
    const struct cpu_product *p = &j->p[i];
    const struct cpu_matrix *w = &p->w;
    const struct qtype_traits *tr = qtype_traits(w->type);
    for (int64_t r = r0; r < r1; r += tr->tile_rows)
        for (int t = t0; t < t1; t += tr->tile_toks)
            tr->vec_dot_tile(w->n_in, (const uint8_t *)w->data + (size_t)r * w->row_bytes,
                             w->row_bytes, activation(j, i, t), j->act_row[i],
                             &p->y[(size_t)t * (size_t)p->y_stride + (size_t)r], p->y_stride);
}

/* Rows [r0, r1) of product i: whole tiles of rows x tokens where the type has a tile kernel,
 * the rest pair by pair. Both give every pair the same bits. */
static void product_rows(const struct matmul_job *j, int i, int64_t r0, int64_t r1) {
    const struct cpu_product *p = &j->p[i];
    const struct cpu_matrix *w = &p->w;
    const struct qtype_traits *tr = qtype_traits(w->type);
    if (!tr->vec_dot_tile || !j->act_row[i] || p->n_tok < tr->tile_toks) {
        product_pairs(j, i, r0, r1, 0);
        return;
    }
    int tiled_toks = p->n_tok - p->n_tok % tr->tile_toks;
    int64_t tiled_end = r0 + (r1 - r0) / tr->tile_rows * tr->tile_rows;
    /* Blocks of rows x tokens small enough for L2: over a whole batch, each row would stream
     * every token's activations from further out (Q4_K 64-token tile: 45 -> 70 GFLOPS). */
    for (int64_t rb = r0; rb < tiled_end; rb += TILE_BLOCK_ROWS)
        for (int tb = 0; tb < tiled_toks; tb += TILE_BLOCK_TOKS)
            product_tiles(j, i, rb,
                          rb + TILE_BLOCK_ROWS < tiled_end ? rb + TILE_BLOCK_ROWS : tiled_end, tb,
                          tb + TILE_BLOCK_TOKS < tiled_toks ? tb + TILE_BLOCK_TOKS : tiled_toks);
    product_pairs(j, i, tiled_end, r1, 0);          /* rows left over: every token */
    product_pairs(j, i, r0, tiled_end, tiled_toks); /* tokens left over */
}

/* Guided self-scheduling: each take is a 1/(ROW_SHARE * threads) share of the rows still
 * left, a multiple of 4 rows (whole tiles), at least MIN_CHUNK_ROWS. Early takes are long
 * streams, the last ones short, so the threads reach the barrier together: with equal chunks
 * (6 per thread) a thread waited about half a chunk at the end of every product, 7-8% of
 * V2-Lite Q4_K_M decode, whose kernels are bound by compute rather than by memory. */
enum { ROW_SHARE = 2, MIN_CHUNK_ROWS = 16 };
static int take_rows(atomic_llong *next, int64_t total, int nth, int64_t *lo, int64_t *hi) {
    long long cur = atomic_load_explicit(next, memory_order_relaxed);
    for (;;) {
        if (cur >= total) return 0;
        int64_t chunk = (total - cur) / ((int64_t)nth * ROW_SHARE);
        chunk = (chunk + 3) / 4 * 4;
        if (chunk < MIN_CHUNK_ROWS) chunk = MIN_CHUNK_ROWS;
        if (atomic_compare_exchange_weak_explicit(next, &cur, cur + chunk, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *lo = cur;
            *hi = cur + chunk < total ? cur + chunk : total;
            return 1;
        }
    }
}

/* Threads take chunks of rows from a shared counter rather than fixed halves: on a shared VM
 * one core often runs slower than the other for a while, and a fixed split leaves the fast
 * one waiting at the barrier. */
static void matmul_rows_quantized(void *arg, int ith, int nth) {
    (void)ith;
    struct matmul_job *j = arg;
    const int64_t total = j->row_end[j->n - 1];
    int64_t lo, hi;
    while (take_rows(&j->next_row, total, nth, &lo, &hi)) {
        while (lo < hi) {
            int i = product_of(j->row_end, j->n, lo);
            int64_t base = i ? j->row_end[i - 1] : 0;
            int64_t end = hi < j->row_end[i] ? hi : j->row_end[i];
            product_rows(j, i, lo - base, end - base);
            lo = end;
        }
    }
}

#ifdef MOERUN_BLAS
/* Float activations times dequantized weights: the path that drifts from llama.cpp's
 * quantized-activation results by design (see DESIGN.md, Numerics). All products of one call
 * are cut into tiles of rows that the threads take one at a time from a shared counter: many
 * small products (every head of MLA) and a neighbour stealing a core both stay balanced. */
struct sgemm_job {
    struct cpu_ctx *c;
    const struct cpu_product *p;
    int n;
    int64_t tile_end[CPU_MAX_PRODUCTS]; /* running total of tiles */
    atomic_llong next;                  /* the next tile to take */
};

/* Rows per sgemm tile of a product whose rows hold n_in values: as many as the per-thread
 * buffer (tile_rows rows of the widest input) takes, at most MAX_TILE_ROWS. Every sgemm call
 * packs the batch's activations anew, so narrow rows take more per call: V2-Lite's 2048-wide
 * products had 47 (the buffer's rows for its 10944-wide dense down projection). */
static int64_t tile_rows_for(const struct cpu_ctx *c, int64_t n_in) {
    int64_t rows = c->tile_rows * c->cfg.max_in / n_in;
    return rows < MAX_TILE_ROWS ? rows : MAX_TILE_ROWS;
}

static void sgemm_tile(const struct cpu_ctx *c, const struct cpu_product *p, int64_t ti,
                       float *tile) {
    const struct cpu_matrix *w = &p->w;
    const int64_t tile_rows = tile_rows_for(c, w->n_in);
    int64_t r0 = ti * tile_rows;
    int64_t rows = w->n_out - r0 < tile_rows ? w->n_out - r0 : tile_rows;
    const float *b;
    if (w->type == QT_F32) {
        b = (const float *)((const uint8_t *)w->data + (size_t)r0 * w->row_bytes);
    } else {
        const struct qtype_traits *wt = qtype_traits(w->type);
        for (int64_t r = 0; r < rows; r++)
            wt->to_float((const uint8_t *)w->data + (size_t)(r0 + r) * w->row_bytes,
                         tile + (size_t)r * (size_t)w->n_in, w->n_in);
        b = tile;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->n_tok, (int)rows, (int)w->n_in, 1.0f,
                p->x, (int)p->x_stride, b, (int)w->n_in, 0.0f, p->y + r0, (int)p->y_stride);
}

static void matmul_tiles_sgemm(void *arg, int ith, int nth) {
    (void)nth;
    struct sgemm_job *j = arg;
    float *tile = j->c->tiles + (size_t)ith * (size_t)j->c->tile_rows * (size_t)j->c->cfg.max_in;
    for (;;) {
        int64_t u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->tile_end[j->n - 1]) return;
        int i = product_of(j->tile_end, j->n, u);
        sgemm_tile(j->c, &j->p[i], u - (i ? j->tile_end[i - 1] : 0), tile);
    }
}
#endif

static void check_product(const struct cpu_ctx *c, const struct cpu_product *p) {
    if (p->n_tok > c->cfg.max_batch * c->cfg.max_fanout || p->w.n_in > c->cfg.max_in)
        die("matmul of %d x %lld exceeds the scratch sized at load (%d x %lld)", p->n_tok,
            (long long)p->w.n_in, c->cfg.max_batch * c->cfg.max_fanout, (long long)c->cfg.max_in);
    if (!qtype_traits(p->w.type) || !qtype_traits(p->w.type)->vec_dot)
        die("matmul on unsupported type %u", p->w.type);
}

/* An earlier product of the job with the same input in the same vec_dot type (the chosen
 * experts' gate and up in decode all read the one token), or -1. */
static int same_input(const struct matmul_job *j, int i, enum qtype vt) {
    const struct cpu_product *p = &j->p[i];
    for (int k = 0; k < i; k++) {
        const struct cpu_product *q = &j->p[k];
        if (q->x == p->x && q->x_stride == p->x_stride && q->n_tok == p->n_tok &&
            q->w.n_in == p->w.n_in && qtype_traits(q->w.type)->vec_dot_type == vt)
            return k;
    }
    return -1;
}

/* Fills the job's running totals and activation layout; returns the activation bytes. */
static size_t plan_products(struct matmul_job *j) {
    size_t off = 0;
    int64_t rows = 0, toks = 0;
    for (int i = 0; i < j->n; i++) {
        const struct cpu_product *p = &j->p[i];
        enum qtype vt = qtype_traits(p->w.type)->vec_dot_type;
        j->act_row[i] = vt == QT_F32 ? 0 : qtype_row_size(vt, p->w.n_in);
        int k = j->act_row[i] ? same_input(j, i, vt) : -1;
        j->act_reused[i] = k >= 0;
        j->act_off[i] = k >= 0 ? j->act_off[k] : off;
        if (k < 0) off += j->act_row[i] * (size_t)p->n_tok;
        if (k < 0 && j->act_row[i]) j->act_rows += p->n_tok;
        rows += p->n_tok ? p->w.n_out : 0;
        toks += p->n_tok;
        j->row_end[i] = rows;
        j->tok_end[i] = toks;
    }
    return off;
}

#ifdef MOERUN_BLAS
/* The batch from which work goes to sgemm (<= 0: never): the configured size, or by default
 * the crossover from the integer path (0 where it has none), at least CPU_SGEMM_MIN_BATCH. */
static int sgemm_min_toks(const struct cpu_ctx *c, int crossover) {
    if (c->cfg.blas_min_batch) return c->cfg.blas_min_batch;
    return crossover > CPU_SGEMM_MIN_BATCH ? crossover : CPU_SGEMM_MIN_BATCH;
}
#endif

/* Products with enough rows for sgemm, when built with OpenBLAS, run together; returns how
 * many it ran and moves the others to the front of `rest`. */
static int run_sgemm_products(struct cpu_ctx *c, const struct cpu_product *p, int n,
                              struct cpu_product *rest, int *n_rest) {
    *n_rest = 0;
#ifdef MOERUN_BLAS
    struct sgemm_job j;
    struct cpu_product big[CPU_MAX_PRODUCTS];
    int n_big = 0;
    int64_t tiles = 0;
    for (int i = 0; i < n; i++) {
        const int from = sgemm_min_toks(c, qtype_tile_sgemm_crossover(p[i].w.type, p[i].w.n_in));
        if (from > 0 && p[i].n_tok >= from) {
            const int64_t tile_rows = tile_rows_for(c, p[i].w.n_in);
            tiles += (p[i].w.n_out + tile_rows - 1) / tile_rows;
            j.tile_end[n_big] = tiles;
            big[n_big++] = p[i];
        } else {
            rest[(*n_rest)++] = p[i];
        }
    }
    if (n_big) {
        j.c = c, j.p = big, j.n = n_big;
        atomic_store(&j.next, 0);
        cpu_parallel(c, matmul_tiles_sgemm, &j);
    }
    return n_big;
#else
    (void)c;
    for (int i = 0; i < n; i++) rest[(*n_rest)++] = p[i];
    return 0;
#endif
}

void cpu_matmul_many(struct cpu_ctx *c, const struct cpu_product *p, int n) {
    if (n <= 0) return;
    if (n > CPU_MAX_PRODUCTS) die("%d products in one call (at most %d)", n, CPU_MAX_PRODUCTS);
    for (int i = 0; i < n; i++) check_product(c, &p[i]);
    struct cpu_product rest[CPU_MAX_PRODUCTS];
    int n_rest;
    run_sgemm_products(c, p, n, rest, &n_rest);
    if (!n_rest) return;
    struct matmul_job j = {.c = c, .p = rest, .n = n_rest};
    size_t act_bytes = plan_products(&j);
    if (act_bytes > c->act_bytes)
        die("activations of %zu bytes exceed the %zu sized at load", act_bytes, c->act_bytes);
    /* A single row to quantize (decode, where the products share xb or there is one) goes to
     * one thread whatever the split: the caller does it, without a job and its barrier */
    if (j.act_rows == 1)
        quantize_activations(&j, 0, 1);
    else if (j.act_rows)
        cpu_parallel(c, quantize_activations, &j);
    atomic_store(&j.next_row, 0);
    cpu_parallel(c, matmul_rows_quantized, &j);
}

void cpu_matmul_strided(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x,
                        int64_t x_stride, int n_tok, float *y, int64_t y_stride) {
    struct cpu_product p = {*w, x, x_stride, y, y_stride, n_tok};
    cpu_matmul_many(c, &p, 1);
}

void cpu_matmul(struct cpu_ctx *c, const struct cpu_matrix *w, const float *x, int n_tok,
                float *y) {
    cpu_matmul_strided(c, w, x, w->n_in, n_tok, y, w->n_out);
}

void cpu_get_row(const struct cpu_matrix *w, int64_t id, float *out) {
    const struct qtype_traits *t = qtype_traits(w->type);
    if (!t) die("embedding row of unsupported type %u", w->type);
    t->to_float((const uint8_t *)w->data + (size_t)id * w->row_bytes, out, w->n_in);
}

/* ---- element-wise ops (small: run on the calling thread) ---- */

/* exp(x) as ggml's SIMD kernels compute it for softmax and SiLU (the Arm optimized-routines
 * polynomial: x = n ln2 + b, exp(b) by a degree-5 polynomial, scaled by 2^n). Within 1.5 ulp
 * of expf; using the same approximation keeps us bit-close to llama.cpp.
 * exp_poly_core is the branch-free part, for |n| <= 126 (n clamped into that range keeps every
 * input defined), so loops over it vectorize; exp_poly_outside says where the library's expf
 * (or an infinity or 0) is the answer instead. */
static inline float exp_poly_n(float x) {
    const float shift = 0x1.8p23f; /* adding it rounds to an integer */
    return fmaf(x, 0x1.715476p+0f, shift) - shift;
}

static inline int exp_poly_outside(float x) { return fabsf(exp_poly_n(x)) > 126.0f; }

static inline float exp_poly_core(float x) {
    float n = exp_poly_n(x);
    n = n < 126.0f ? n : 126.0f; /* (NaN becomes 126 here, and x keeps the result NaN) */
    n = n > -126.0f ? n : -126.0f;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)); /* x - n ln2, two parts */
    float u = b * b;
    float p = fmaf(
        fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
        u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    /* p * 2^n with 2^n built from its bits: |n| <= 126 keeps 2^n normal, so this is one
     * rounding of the exact product, as ldexpf's result is, without the library call */
    uint32_t bits = (uint32_t)((int)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float exp_poly(float x) {
    if (exp_poly_outside(x)) return x > 0.0f ? INFINITY : (x < -104.0f ? 0.0f : expf(x));
    return exp_poly_core(x);
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
    int outside = 0; /* rare: then every value takes the branching form (out may be gate) */
    for (int64_t i = 0; i < n; i++) outside |= exp_poly_outside(-gate[i]);
    if (outside)
        for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + exp_poly(-gate[i])) * up[i];
    else /* without a branch, so it vectorizes */
        for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + exp_poly_core(-gate[i])) * up[i];
}

void cpu_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    swiglu_rows(out, gate, up, n);
}

void cpu_add(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* ggml's softmax: whole 16-value chunks through exp_poly and a lane tree, the rest through
 * expf one by one, all summed in double. padded: the row stands for a longer one whose extra
 * values are masked (-inf), as llama.cpp's attention rows are (its KV length is padded), so
 * the last partial chunk also takes the chunk path. */
FMA_CLONES static void softmax_row(float *x, int64_t n, int padded) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    double sum = 0.0;
    int64_t chunked = padded ? n : n - n % ACC_LANES;
    for (int64_t i0 = 0; i0 < chunked; i0 += ACC_LANES) {
        float lanes[ACC_LANES] = {0};
        for (int64_t i = i0; i < n && i < i0 + ACC_LANES; i++)
            lanes[i - i0] = x[i] = exp_poly(x[i] - max);
        sum += qt_reduce_lanes16(lanes, 1);
    }
    for (int64_t i = chunked; i < n; i++) sum += (double)(x[i] = expf(x[i] - max));
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void cpu_softmax(float *x, int64_t n) { softmax_row(x, n, 0); }

/* Where YaRN switches from extrapolating to interpolating a rotary dimension pair: the
 * dimension that turns n_turns times over the original context. */
static float yarn_corr_dim(int n_rot, int n_ctx_orig, float n_turns, float base) {
    return (float)n_rot * logf((float)n_ctx_orig / (n_turns * 2.0f * (float)M_PI)) /
           (2.0f * logf(base));
}

void cpu_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float freq_base, float beta_fast,
                             float beta_slow, float dims[2]) {
    float start = floorf(yarn_corr_dim(n_rot, n_ctx_orig, beta_fast, freq_base));
    float end = ceilf(yarn_corr_dim(n_rot, n_ctx_orig, beta_slow, freq_base));
    dims[0] = start > 0.0f ? start : 0.0f;
    dims[1] = end < (float)(n_rot - 1) ? end : (float)(n_rot - 1);
}

/* 1 below the band (extrapolate), 0 above it (interpolate), linear between. */
static float yarn_ramp(const float dims[2], int i0) {
    float span = dims[1] - dims[0] > 0.001f ? dims[1] - dims[0] : 0.001f;
    float y = ((float)(i0 / 2) - dims[0]) / span;
    return 1.0f - fminf(1.0f, fmaxf(0.0f, y));
}

/* cos and sin of every pair's angle at one position, in ggml's arithmetic: theta advances
 * by repeated multiplication, YaRN blends the interpolated and extrapolated angles. */
FMA_CLONES static void rope_angles(float pos, const struct rope_params *rp,
                                   const float *freq_factors, float *cs) {
    float theta_scale = powf(rp->freq_base, -2.0f / (float)rp->n_rot);
    float theta_base = pos;
    for (int i0 = 0; i0 < rp->n_rot; i0 += 2) {
        float theta_extrap = theta_base / (freq_factors ? freq_factors[i0 / 2] : 1.0f);
        float theta_interp = rp->freq_scale * theta_extrap;
        float theta = theta_interp, mscale = rp->attn_factor;
        if (rp->ext_factor != 0.0f) {
            float mix = yarn_ramp(rp->corr_dims, i0) * rp->ext_factor;
            theta = fmaf(theta_interp, 1.0f - mix, theta_extrap * mix);
            mscale *= 1.0f + 0.1f * logf(1.0f / rp->freq_scale);
        }
        cs[i0] = cosf(theta) * mscale;
        cs[i0 + 1] = sinf(theta) * mscale;
        theta_base *= theta_scale;
    }
}

/* The fused forms llama.cpp's compiled rotation takes. */
FMA_CLONES static void rope_rotate(float *h, const float *cs, int n_rot, enum rope_mode mode) {
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
        int a = mode == ROPE_NEOX ? i0 / 2 : i0;
        int b = mode == ROPE_NEOX ? i0 / 2 + n_rot / 2 : i0 + 1;
        float x0 = h[a], x1 = h[b];
        h[a] = fmaf(x0, cs[i0], -(x1 * cs[i0 + 1]));
        h[b] = fmaf(x0, cs[i0 + 1], x1 * cs[i0]);
    }
}

void cpu_rope(float *x, int n_tok, int n_head, int64_t head_stride, int64_t row_stride,
              const int32_t *pos, const struct rope_params *rp, const float *freq_factors) {
    float cs[ROPE_MAX_DIMS];
    if (rp->n_rot > ROPE_MAX_DIMS)
        die("rope over %d dimensions (at most %d)", rp->n_rot, ROPE_MAX_DIMS);
    for (int t = 0; t < n_tok; t++) {
        rope_angles((float)pos[t], rp, freq_factors, cs);
        for (int h = 0; h < n_head; h++)
            rope_rotate(x + (size_t)t * (size_t)row_stride + (size_t)h * (size_t)head_stride, cs,
                        rp->n_rot, rp->mode);
    }
}

/* ggml's sigmoid is the plain formula with the C library's expf. */
void cpu_sigmoid(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

/* ---- attention ---- */

struct attn_job {
    struct cpu_ctx *c;
    const struct attn_args *a;
};

/* out (head_dim_v) = sum over j of p[j] * v_j, in ACC_LANES lanes of fused multiply-adds (lane
 * j % ACC_LANES), reduced by qt_reduce_lanes16 a whole lane row at a time: the order of
 * llama.cpp's sgemm for P * V. */
static void weighted_values(const struct attn_args *a, int kvh, const float *p, int n_kv,
                            float *lanes, float *out) {
    int hd = a->head_dim_v;
    qt_fma_lanes16(p, n_kv, a->v_cache + (size_t)kvh * (size_t)hd, a->v_stride, hd, lanes);
    qt_reduce_lanes16(lanes, hd);
    memcpy(out, lanes, (size_t)hd * sizeof *out);
}

static void attend_one(const struct attn_args *a, int t, int h, float *p, float *lanes) {
    int kvh = h / (a->n_head / a->n_head_kv);
    int n_kv = a->pos0 + t + 1; /* causal: this token sees itself and everything before */
    const float *q = a->q + (size_t)t * (size_t)a->q_stride + (size_t)h * (size_t)a->head_dim;
    qt_dot_f32_vec_rows(q, a->k_cache + (size_t)kvh * a->head_dim, a->k_stride, a->head_dim, n_kv,
                        p);
    for (int j = 0; j < n_kv; j++) p[j] *= a->scale;
    softmax_row(p, n_kv, 1);
    float *out = a->out + (size_t)t * (size_t)a->out_stride + (size_t)h * (size_t)a->head_dim_v;
    weighted_values(a, kvh, p, n_kv, lanes, out);
}

static void attention_task(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    const struct attn_args *a = j->a;
    float *p = j->c->scores + (size_t)ith * ATTN_TILE * (size_t)j->c->cfg.max_ctx;
    float *lanes = j->c->v_lanes + (size_t)ith * ACC_LANES * (size_t)j->c->cfg.max_head_dim;
    int n_items = a->n_tok * a->n_head;
    for (int i = ith; i < n_items; i += nth) attend_one(a, i / a->n_head, i % a->n_head, p, lanes);
}

#ifdef MOERUN_BLAS
/* Large batches (the sgemm path, which drifts from llama.cpp's order by design): per head and
 * tile of query rows, the scores Q K^T and the output P V are one sgemm each; the causal part
 * of each score row goes through the softmax, the rest is zeroed. Tiles are taken from a
 * shared counter. */
struct attn_tiles_job {
    struct cpu_ctx *c;
    const struct attn_args *a;
    int n_tiles; /* per head */
    atomic_int next;
};

static void attend_tile(const struct attn_args *a, int h, int t0, float *s) {
    int t1 = t0 + ATTN_TILE < a->n_tok ? t0 + ATTN_TILE : a->n_tok, rows = t1 - t0;
    int kvh = h / (a->n_head / a->n_head_kv), n_kv = a->pos0 + t1;
    const float *q = a->q + (size_t)t0 * (size_t)a->q_stride + (size_t)h * (size_t)a->head_dim;
    const float *k = a->k_cache + (size_t)kvh * (size_t)a->head_dim;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_kv, a->head_dim, a->scale, q,
                (int)a->q_stride, k, (int)a->k_stride, 0.0f, s, n_kv);
    for (int r = 0; r < rows; r++) {
        float *row = s + (size_t)r * (size_t)n_kv;
        int seen = a->pos0 + t0 + r + 1;
        softmax_row(row, seen, 0);
        memset(row + seen, 0, (size_t)(n_kv - seen) * sizeof *row);
    }
    const float *v = a->v_cache + (size_t)kvh * (size_t)a->head_dim_v;
    float *out = a->out + (size_t)t0 * (size_t)a->out_stride + (size_t)h * (size_t)a->head_dim_v;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, a->head_dim_v, n_kv, 1.0f, s, n_kv,
                v, (int)a->v_stride, 0.0f, out, (int)a->out_stride);
}

static void attention_tiles_task(void *arg, int ith, int nth) {
    (void)nth;
    struct attn_tiles_job *j = arg;
    float *s = j->c->scores + (size_t)ith * ATTN_TILE * (size_t)j->c->cfg.max_ctx;
    for (;;) {
        int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (u >= j->n_tiles * j->a->n_head) return;
        attend_tile(j->a, u / j->n_tiles, u % j->n_tiles * ATTN_TILE, s);
    }
}
#endif

void cpu_attention(struct cpu_ctx *c, const struct attn_args *a) {
    if (a->head_dim_v > c->cfg.max_head_dim)
        die("attention head width %d exceeds the scratch sized at load (%d)", a->head_dim_v,
            c->cfg.max_head_dim);
    if (a->pos0 + a->n_tok > c->cfg.max_ctx)
        die("attention over %d positions exceeds the context %d", a->pos0 + a->n_tok,
            c->cfg.max_ctx);
#ifdef MOERUN_BLAS
    const int from = sgemm_min_toks(c, 0);
    if (from > 0 && a->n_tok >= from) {
        struct attn_tiles_job j = {
            .c = c, .a = a, .n_tiles = (a->n_tok + ATTN_TILE - 1) / ATTN_TILE};
        atomic_store(&j.next, 0);
        cpu_parallel(c, attention_tiles_task, &j);
        return;
    }
#endif
    struct attn_job j = {c, a};
    cpu_parallel(c, attention_task, &j);
}
