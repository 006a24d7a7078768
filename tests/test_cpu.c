/* CPU matrix products through cpu_matmul_strided: the tiled quantized path (row x token
 * blocks, leftover rows and tokens) gives every output the bits of one vec_dot on the
 * activations quantized as llama.cpp does; the default threshold sends a batch to sgemm only
 * from the type's tile crossover on; SwiGLU's vectorized exp agrees with its per-value form. */
#include "../cpu.h"
#include "../quant.h"
#include "rng_test.h"
#include "test.h"

#include <math.h>
#include <string.h>

struct case_shape {
    enum qtype type;
    int64_t n_in, n_out;
    int n_tok;
};

struct weights {
    struct cpu_matrix w;
    float *x; /* n_tok x n_in activations */
};

static struct weights make_weights(const struct case_shape *s) {
    const struct qtype_traits *tr = qtype_traits(s->type);
    struct weights k = {.w = {.type = s->type,
                              .n_in = s->n_in,
                              .n_out = s->n_out,
                              .row_bytes = qtype_row_size(s->type, s->n_in)}};
    uint8_t *data = malloc(k.w.row_bytes * (size_t)s->n_out);
    float *row = malloc((size_t)s->n_in * sizeof *row);
    for (int64_t r = 0; r < s->n_out; r++) {
        for (int64_t i = 0; i < s->n_in; i++) row[i] = rng_normal();
        tr->from_float(row, data + (size_t)r * k.w.row_bytes, s->n_in);
    }
    free(row);
    k.w.data = data;
    k.x = malloc((size_t)s->n_tok * (size_t)s->n_in * sizeof *k.x);
    for (size_t i = 0; i < (size_t)s->n_tok * (size_t)s->n_in; i++) k.x[i] = rng_normal();
    return k;
}

/* One product on a fresh two-thread context with the given sgemm threshold. */
static float *product(const struct weights *k, int n_tok, int blas_min_batch) {
    struct cpu_config cfg = {.n_threads = 2,
                             .max_batch = n_tok,
                             .max_fanout = 1,
                             .max_in = k->w.n_in,
                             .max_act_per_token = k->w.n_in,
                             .max_ctx = 1,
                             .max_head_dim = 1,
                             .blas_min_batch = blas_min_batch};
    struct cpu_ctx *c = cpu_init(&cfg);
    float *y = malloc((size_t)n_tok * (size_t)k->w.n_out * sizeof *y);
    for (size_t i = 0; i < (size_t)n_tok * (size_t)k->w.n_out; i++) y[i] = NAN; /* unwritten */
    cpu_matmul_strided(c, &k->w, k->x, k->w.n_in, n_tok, y, k->w.n_out);
    cpu_free(c);
    return y;
}

/* Each output as one vec_dot of the weight row and the token's quantized activations. */
static float *pairwise(const struct weights *k, int n_tok) {
    const struct qtype_traits *tr = qtype_traits(k->w.type);
    const enum qtype at = tr->vec_dot_type;
    const size_t act_row = qtype_row_size(at, k->w.n_in);
    uint8_t *act = malloc(act_row);
    float *y = malloc((size_t)n_tok * (size_t)k->w.n_out * sizeof *y);
    for (int t = 0; t < n_tok; t++) {
        qtype_traits(at)->from_float_act(k->x + (size_t)t * (size_t)k->w.n_in, act, k->w.n_in);
        for (int64_t r = 0; r < k->w.n_out; r++)
            tr->vec_dot(k->w.n_in, &y[(size_t)t * (size_t)k->w.n_out + (size_t)r],
                        (const uint8_t *)k->w.data + (size_t)r * k->w.row_bytes, act);
    }
    free(act);
    return y;
}

static int same_bits(const float *a, const float *b, size_t n, size_t *where) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a)) return *where = i, 0;
    return 1;
}

/* Shapes past one 32 x 32 block in both directions (row chunks of 84 and 68 rows), with
 * leftover rows (Q8_0's tiles hold 2) and tokens (tiles hold 4). */
static void test_tiled_bits(void) {
    static const struct case_shape cases[] = {
        {QT_Q4_K, 512, 1001, 70}, {QT_Q8_0, 256, 777, 69}, {QT_Q5_0, 160, 66, 38}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const struct case_shape *s = &cases[i];
        struct weights k = make_weights(s);
        float *got = product(&k, s->n_tok, -1), *want = pairwise(&k, s->n_tok);
        size_t where = 0, n = (size_t)s->n_tok * (size_t)s->n_out;
        int ok = same_bits(got, want, n, &where);
        char name[64];
        snprintf(name, sizeof name, "cpu_tiled_product_bits_%s", qtype_name(s->type));
        if (ok)
            test_report(name, 1, "%lld rows x %d tokens", (long long)s->n_out, s->n_tok);
        else
            test_report(name, 0, "%.9g, vec_dot %.9g at token %zu row %zu", (double)got[where],
                        (double)want[where], where / (size_t)s->n_out, where % (size_t)s->n_out);
        free(got);
        free(want);
        free((void *)k.w.data);
        free(k.x);
    }
}

/* Default threshold (0): below the crossover the quantized path's bits, from it on sgemm's. */
static void test_default_threshold(void) {
    if (!cpu_has_blas()) {
        test_skip("cpu_default_sgemm_threshold", "built without OpenBLAS");
        return;
    }
    const struct case_shape s = {QT_Q4_K, 2048, 8, 0};
    int cross = qtype_tile_sgemm_crossover(QT_Q4_K, s.n_in);
    if (cross < CPU_SGEMM_MIN_BATCH) cross = CPU_SGEMM_MIN_BATCH;
    int ok = 1;
    char why[160] = "";
    for (int n_tok = cross - 1; n_tok <= cross && ok; n_tok++) {
        struct case_shape at = s;
        at.n_tok = n_tok;
        struct weights k = make_weights(&at);
        float *got = product(&k, n_tok, 0);
        float *want = product(&k, n_tok, n_tok < cross ? -1 : 1);
        size_t where = 0;
        if (!same_bits(got, want, (size_t)n_tok * (size_t)s.n_out, &where)) {
            ok = 0;
            snprintf(why, sizeof why, "%d tokens (crossover %d) took the %s path", n_tok, cross,
                     n_tok < cross ? "sgemm" : "quantized");
        }
        free(got);
        free(want);
        free((void *)k.w.data);
        free(k.x);
    }
    test_report("cpu_default_sgemm_threshold", ok, "%s", ok ? "sgemm from the crossover on" : why);
}

/* cpu_swiglu takes a branch-free (vectorized) exp unless a gate lies where exp_poly needs expf,
 * an infinity or 0; then every value takes the branching form. Both must give each value the
 * same bits, in place or not, and stay within 4 ulp of the exact SiLU(gate) * up (or 1e-20
 * of it: past 126.5 ln 2, ggml's exp is infinity, so a gate of -88 or below gives 0). */
static void test_swiglu(void) {
    enum { N = 1003 };
    static const float far[] = {100.0f, 90.0f, -90.0f, -200.0f, -88.0f};
    const int n_far = (int)(sizeof far / sizeof *far);
    float gate[N + 5], up[N + 5], fast[N + 5], branching[N + 5], in_place[N + 5];
    for (int i = 0; i < N; i++) gate[i] = 4.0f * rng_normal(), up[i] = rng_normal();
    for (int i = 0; i < n_far; i++) gate[N + i] = far[i], up[N + i] = 1.5f;
    cpu_swiglu(fast, gate, up, N);
    cpu_swiglu(branching, gate, up, N + n_far);
    memcpy(in_place, gate, sizeof gate);
    cpu_swiglu(in_place, in_place, up, N + n_far);
    size_t where = 0;
    int ok = same_bits(fast, branching, N, &where);
    test_report("cpu_swiglu_vectorized_bits", ok, "%s at %zu", ok ? "same" : "differ", where);
    ok = same_bits(branching, in_place, N + (size_t)n_far, &where);
    test_report("cpu_swiglu_in_place_bits", ok, "%s at %zu", ok ? "same" : "differ", where);
    double worst = 0;
    for (int i = 0; i < N + n_far; i++) {
        double g = gate[i], want = g / (1.0 + exp(-g)) * up[i];
        double err = fabs(branching[i] - want) / (fabs(want) + 1e-20);
        if (err > worst) worst = err, where = (size_t)i;
    }
    test_report("cpu_swiglu_accuracy", worst < 4 * 0x1p-23, "max relative error %.3g at gate %g",
                worst, (double)gate[where]);
    test_report("cpu_swiglu_exp_overflow",
                branching[N + 2] == 0.0f && branching[N + 3] == 0.0f && branching[N + 4] == 0.0f,
                "gates -90, -200, -88: %g %g %g (want 0)", (double)branching[N + 2],
                (double)branching[N + 3], (double)branching[N + 4]);
}

/* Products of one call that read the same input share its quantized activations: each output
 * must still be the bits of one vec_dot on its own quantized input, whether it shares (same x,
 * stride, tokens and activation type), differs only in type (Q8_0 next to Q4_K) or in tokens. */
static void test_shared_inputs(void) {
    static const struct case_shape shapes[] = {{QT_Q4_K, 512, 40, 3},
                                               {QT_Q4_K, 512, 36, 3},
                                               {QT_Q8_0, 512, 20, 3},
                                               {QT_Q4_K, 512, 24, 3},
                                               {QT_Q4_K, 512, 28, 2}};
    enum { N = sizeof shapes / sizeof *shapes };
    struct weights k[N];
    struct cpu_product p[N];
    for (int i = 0; i < N; i++) {
        k[i] = make_weights(&shapes[i]);
        if (i != 3) memcpy(k[i].x, k[0].x, (size_t)shapes[i].n_tok * 512 * sizeof(float));
        p[i] = (struct cpu_product){k[i].w,
                                    i == 3 ? k[i].x : k[0].x,
                                    512,
                                    malloc((size_t)3 * (size_t)shapes[i].n_out * sizeof(float)),
                                    shapes[i].n_out,
                                    shapes[i].n_tok};
    }
    struct cpu_config cfg = {.n_threads = 2,
                             .max_batch = 3,
                             .max_fanout = 1,
                             .max_in = 512,
                             .max_act_per_token = N * 512,
                             .max_ctx = 1,
                             .max_head_dim = 1,
                             .blas_min_batch = -1};
    struct cpu_ctx *c = cpu_init(&cfg);
    cpu_matmul_many(c, p, N);
    cpu_free(c);
    int ok = 1;
    size_t where = 0;
    for (int i = 0; i < N && ok; i++) {
        float *want = pairwise(&k[i], shapes[i].n_tok);
        ok = same_bits(p[i].y, want, (size_t)shapes[i].n_tok * (size_t)shapes[i].n_out, &where);
        if (!ok)
            test_report("cpu_shared_input_bits", 0, "product %d output %zu: %.9g, vec_dot %.9g", i,
                        where, (double)p[i].y[where], (double)want[where]);
        free(want);
    }
    if (ok) test_report("cpu_shared_input_bits", 1, "%d products, the first two sharing", N);
    for (int i = 0; i < N; i++) {
        free(p[i].y);
        free((void *)k[i].w.data);
        free(k[i].x);
    }
}

int main(void) {
    test_tiled_bits();
    test_default_threshold();
    test_swiglu();
    test_shared_inputs();
    return test_failures ? 1 : 0;
}
