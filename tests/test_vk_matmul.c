/* The Vulkan mul_mat and get_rows kernels (shaders/mul_mat.comp, get_rows.comp, dequant.glsl)
 * for every block format, against the CPU: random weights quantized with quant.c's reference
 * quantizers, random f32 activations, products compared with a double-precision reference
 * computed from quant.c's dequantized weights; get_rows compared bit for bit with to_float.
 * Runs on any Vulkan device, Mesa's lavapipe included (vk_open allows CPU devices here); without
 * one it prints SKIP, or FAIL when MOERUN_REQUIRE_VULKAN=1. */
#include "quant.h"
#define RNG_SEED 0x2545F4914F6CDD1Dull
#include "rng_test.h"
#include "test.h"
#include "util.h"
#include "vk.h"
#include "vk_ops.h"
#include "vk_test.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static const uint32_t vk_types[] = {QT_F32,  QT_F16,  QT_BF16, QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1,
                                    QT_Q8_0, QT_Q2_K, QT_Q3_K, QT_Q4_K, QT_Q5_K, QT_Q6_K};
#define N_TYPES (sizeof vk_types / sizeof *vk_types)

/* Outputs the kernel must not touch hold this pattern (a NaN no float op produces). */
static const uint32_t SENTINEL = 0x7fc0dead;

/* n rows of n_in random weights, each row scaled differently (as real matrices are), quantized
 * row by row; deq gets the dequantized values. Returns the blocks (row_bytes per row). */
static uint8_t *random_matrix(const struct qtype_traits *tr, int64_t rows, int64_t n_in,
                              size_t row_bytes, float *deq) {
    uint8_t *q = xmalloc((size_t)rows * row_bytes);
    float *row = xmalloc((size_t)n_in * sizeof(float));
    for (int64_t r = 0; r < rows; ++r) {
        const float scale = (float)(0.02 + 0.2 * rng_uniform());
        const float shift = (r % 3 == 0) ? 0.01f : 0.0f; /* some rows off-centre (mins) */
        for (int64_t i = 0; i < n_in; ++i) row[i] = scale * rng_normal() + shift;
        tr->from_float(row, q + (size_t)r * row_bytes, n_in);
        tr->to_float(q + (size_t)r * row_bytes, deq + (size_t)r * n_in, n_in);
    }
    free(row);
    return q;
}

static int upload_new(struct vk_ctx *c, struct vk_buf *b, const void *data, size_t n) {
    if (vk_alloc(c, n, VK_MEM_DEVICE, b)) return -1;
    return vk_upload(c, b, 0, data, n);
}

/* ---------------------------------------------------------------- mul_mat */

struct mm_case {
    const char *name;
    int64_t n_in_f, n_in_32, n_in_256; /* n_in by block size (1, 32, 256) */
    uint32_t n_out, n_tok;
    uint32_t gz, n_mats; /* z count; matrices in W */
    int use_ids;         /* 0: matrix z for z (n_mats = gz) */
    int32_t ids[8];
    uint32_t x_zdiv, x_pad, x_zpad, y_pad, y_zpad; /* strides = dense size + pad */
    enum vk_mm_fuse fuse; /* SWIGLU_IN: input silu(x) * up; GATE_UP: silu(W x) * (W_up x) */
    int tiled;            /* mul_mm, the tiled kernel for batches; 2: its expert groups (the
                           * slots of experts 0 and 2 of 3 made by moe_group, not ids[]) */
};

/* clang-format off */
static const struct mm_case mm_cases[] = {
    /* decode: one token, n_out not a multiple of VK_MM_ROWS, rows longer than a workgroup's
     * threads take in one pass (2304 / 16 = 144 chunks > 64 threads) */
    {"decode", 2304, 2336, 2304, 37, 1, 1, 1, 0, {0}, 1, 0, 0, 0, 0, VK_MM_PLAIN, 0},
    /* three tokens, x rows at an odd stride (unaligned: the scalar loads), y strided; float
     * types: n_in % 4 != 0 (F32/F16/BF16 one value at a time) */
    {"tok3_strided", 770, 96, 768, 5, 3, 1, 1, 0, {0}, 1, 5, 0, 3, 0, VK_MM_PLAIN, 0},
    /* 17 tokens (3 token tiles, the last partial), expert products: ids pick matrices out of
     * order and repeat one, x_zdiv 2 (z reads x slice z/2), x/y slices padded */
    {"tok17_ids", 515, 512, 512, 9, 17, 6, 4, 1, {3, 1, 1, 0, 2, 3}, 2, 4, 8, 1, 2, VK_MM_PLAIN, 0},
    /* MoE decode: 8 of 8 experts, permuted, of one token (x_zdiv 8: every z reads x row 0) */
    {"decode_moe", 1024, 1024, 1024, 33, 1, 8, 8, 1, {5, 2, 7, 0, 3, 6, 1, 4}, 8, 0, 0, 0, 0,
     VK_MM_PLAIN, 0},
    /* the SwiGLU fusions: a down product that forms silu(x) * up as it loads x (aligned, and
     * at odd strides: the scalar loads), and gate + up products in one (decode, 17 tokens
     * with expert ids) */
    {"swiglu_in", 2304, 2336, 2304, 37, 1, 1, 1, 0, {0}, 1, 0, 0, 0, 0, VK_MM_SWIGLU_IN, 0},
    {"swiglu_in_tok3_strided", 770, 96, 768, 5, 3, 1, 1, 0, {0}, 1, 5, 0, 3, 0, VK_MM_SWIGLU_IN, 0},
    {"gate_up", 2304, 2336, 2304, 37, 1, 1, 1, 0, {0}, 1, 0, 0, 0, 0, VK_MM_GATE_UP, 0},
    {"gate_up_tok17_ids", 515, 512, 512, 9, 17, 6, 4, 1, {3, 1, 1, 0, 2, 3}, 2, 4, 8, 1, 2,
     VK_MM_GATE_UP, 0},
    /* mul_mm (tiled): partial row and token tiles, a last 64-value step that is partial
     * (2336 = 36.5 x 64, 770 floats), unaligned strides; the SwiGLU input; expert ids */
    {"tiled_tok70", 2304, 2336, 2304, 37, 70, 1, 1, 0, {0}, 1, 0, 0, 0, 0, VK_MM_PLAIN, 1},
    {"tiled_tok65_strided", 770, 96, 768, 70, 65, 1, 1, 0, {0}, 1, 5, 0, 3, 0, VK_MM_PLAIN, 1},
    {"tiled_swiglu_tok70", 2304, 2336, 2304, 37, 70, 1, 1, 0, {0}, 1, 0, 0, 0, 0, VK_MM_SWIGLU_IN, 1},
    {"tiled_tok17_ids", 515, 512, 512, 9, 17, 6, 4, 1, {3, 1, 1, 0, 2, 3}, 2, 4, 8, 1, 2,
     VK_MM_PLAIN, 1},
    /* a batch's expert products by expert: 150 slots of 50 tokens (3 choices each), 86 and 64
     * slots (two token tiles, one full) for experts 0 and 2, none for 1; SwiGLU input too */
    {"grouped", 2304, 2336, 2304, 37, 1, 150, 3, 1, {0}, 3, 0, 4, 0, 3, VK_MM_PLAIN, 2},
    {"grouped_swiglu", 770, 96, 768, 70, 1, 150, 3, 1, {0}, 3, 0, 4, 0, 3, VK_MM_SWIGLU_IN, 2},
};
/* clang-format on */

static double silu(double v) { return v / (1.0 + exp(-v)); }

/* Runs one case; returns the normalized error max|gpu - ref| / max|ref| (or +inf with why
 * set when something other than precision is wrong). */
static double mm_run(struct vk_ctx *c, uint32_t type, const struct mm_case *k, char *why,
                     size_t why_n) {
    const struct qtype_traits *tr = qtype_traits(type);
    const int64_t n_in = tr->blck_size == 1    ? k->n_in_f
                         : tr->blck_size == 32 ? k->n_in_32
                                               : k->n_in_256;
    const size_t row_bytes = qtype_row_size(type, n_in);
    const int has_ids = k->use_ids;
    const uint32_t x_stride = (uint32_t)n_in + k->x_pad, y_stride = k->n_out + k->y_pad;
    const uint32_t x_zstride = k->n_tok * x_stride + k->x_zpad;
    const uint32_t y_zstride = k->n_tok * y_stride + k->y_zpad;
    const uint32_t n_xz = (k->gz - 1) / k->x_zdiv + 1;
    const size_t w_rows = (size_t)k->n_mats * k->n_out;
    const size_t nx = (size_t)n_xz * x_zstride, ny = (size_t)k->gz * y_zstride;

    const int gate_up = k->fuse == VK_MM_GATE_UP, swiglu_in = k->fuse == VK_MM_SWIGLU_IN;
    const int grouped = k->tiled == 2;
    int32_t *ids = xmalloc(k->gz * sizeof *ids); /* grouped: slot s of expert 0 or 2 */
    for (uint32_t s = 0; s < k->gz; ++s)
        ids[s] = grouped ? ((s * 5) % 7 < 4 ? 0 : 2) : k->ids[s % 8];
    float *deq = xmalloc(w_rows * (size_t)n_in * sizeof(float));
    uint8_t *wq = random_matrix(tr, (int64_t)w_rows, n_in, row_bytes, deq);
    /* the up matrices (gate_up) or the up rows (swiglu_in); a dummy otherwise */
    float *deq_up = xmalloc((gate_up ? w_rows * (size_t)n_in : 1) * sizeof(float));
    uint8_t *wq_up =
        gate_up ? random_matrix(tr, (int64_t)w_rows, n_in, row_bytes, deq_up) : xcalloc(1, 1);
    float *x = xmalloc(nx * sizeof(float)), *x_up = xmalloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; ++i) x[i] = rng_normal(); /* padding too: must not be read */
    for (size_t i = 0; i < nx; ++i) x_up[i] = rng_normal();
    uint32_t *y = xmalloc(ny * sizeof(float));
    for (size_t i = 0; i < ny; ++i) y[i] = SENTINEL;

    double err = INFINITY;
    struct vk_buf bw = {0}, bx = {0}, by = {0}, bi = {0}, bwu = {0}, bxu = {0}, boff = {0},
                  bord = {0};
    if (upload_new(c, &bw, wq, w_rows * row_bytes) || upload_new(c, &bx, x, nx * sizeof(float)) ||
        upload_new(c, &by, y, ny * sizeof(float)) ||
        upload_new(c, &bxu, x_up, nx * sizeof(float)) ||
        upload_new(c, &bwu, wq_up, gate_up ? w_rows * row_bytes : 1) ||
        (has_ids && upload_new(c, &bi, ids, k->gz * sizeof(int32_t))) ||
        vk_alloc(c, (k->n_mats + 1) * sizeof(int32_t), VK_MEM_DEVICE, &boff) ||
        vk_alloc(c, k->gz * sizeof(int32_t), VK_MEM_DEVICE, &bord)) {
        snprintf(why, why_n, "%s", err_get());
        goto out;
    }
    struct vk_mul_mat_push p = {.w = bw.addr,
                                .x = bx.addr,
                                .y = by.addr,
                                .ids = has_ids ? bi.addr : 0,
                                .x_up = swiglu_in ? bxu.addr : 0,
                                .w_up = gate_up ? bwu.addr : 0,
                                .w_zstride = (uint64_t)k->n_out * row_bytes,
                                .n_in = (uint32_t)n_in,
                                .n_out = k->n_out,
                                .n_tok = k->n_tok,
                                .row_bytes = (uint32_t)row_bytes,
                                .x_stride = x_stride,
                                .y_stride = y_stride,
                                .x_zstride = x_zstride,
                                .y_zstride = y_zstride,
                                .x_zdiv = k->x_zdiv};
    if (vk_begin(c)) {
        snprintf(why, why_n, "%s", err_get());
        goto out;
    }
    const uint32_t rows = k->tiled ? VK_MM_TILE_ROWS : gate_up ? 1 : VK_MM_ROWS;
    const uint32_t toks = k->tiled ? VK_MM_TILE_TOKS : VK_MM_TOKS;
    const int kernel =
        k->tiled ? vk_mul_mm_kernel(type, k->fuse) : vk_mul_mat_fused_kernel(type, k->fuse);
    if (grouped) { /* moe_group's lists, then z = expert over its slots */
        struct vk_moe_group_push gp = {bi.addr, boff.addr, bord.addr, k->gz, k->n_mats};
        vk_dispatch(c, VK_MOE_GROUP, &gp, sizeof gp, 1, 1, 1);
        vk_barrier(c);
        p.ids = bord.addr, p.groups = boff.addr, p.n_tok = k->gz;
    }
    vk_dispatch(c, (enum vk_kernel)kernel, &p, sizeof p, (k->n_out + rows - 1) / rows,
                (p.n_tok + toks - 1) / toks, grouped ? k->n_mats : k->gz);
    if (vk_submit(c) || vk_download(c, &by, 0, y, ny * sizeof(float))) {
        snprintf(why, why_n, "%s", err_get());
        goto out;
    }

    /* reference in double from the dequantized weights; every other y must be untouched */
    double max_ref = 0, max_diff = 0;
    char *written = xcalloc(ny, 1);
    for (uint32_t z = 0; z < k->gz; ++z) {
        const uint32_t m = has_ids ? (uint32_t)ids[z] : z;
        for (uint32_t t = 0; t < k->n_tok; ++t) {
            const size_t xo = (size_t)(z / k->x_zdiv) * x_zstride + (size_t)t * x_stride;
            const float *xr = x + xo, *ur = x_up + xo;
            for (uint32_t o = 0; o < k->n_out; ++o) {
                const size_t wo = ((size_t)m * k->n_out + o) * (size_t)n_in;
                const float *wr = deq + wo;
                double ref = 0, ref_up = 0;
                for (int64_t i = 0; i < n_in; ++i)
                    ref += (double)wr[i] * (swiglu_in ? silu(xr[i]) * ur[i] : xr[i]);
                for (int64_t i = 0; gate_up && i < n_in; ++i)
                    ref_up += (double)deq_up[wo + i] * xr[i];
                if (gate_up) ref = silu(ref) * ref_up;
                const size_t yi = (size_t)z * y_zstride + (size_t)t * y_stride + o;
                float got;
                memcpy(&got, &y[yi], sizeof got);
                written[yi] = 1;
                const double d = fabs((double)got - ref);
                if (!(d <= max_diff)) max_diff = d; /* NaN (an unwritten y) sticks */
                if (fabs(ref) > max_ref) max_ref = fabs(ref);
            }
        }
    }
    size_t stray = 0;
    for (size_t i = 0; i < ny; ++i) stray += !written[i] && y[i] != SENTINEL;
    free(written);
    if (stray)
        snprintf(why, why_n, "%zu values outside the output written", stray);
    else if (isnan(max_diff))
        snprintf(why, why_n, "some outputs not written (NaN)");
    else
        err = max_diff / max_ref;
out:
    vk_free(c, &bw);
    vk_free(c, &bx);
    vk_free(c, &by);
    vk_free(c, &bwu);
    vk_free(c, &bxu);
    if (has_ids) vk_free(c, &bi);
    vk_free(c, &boff);
    vk_free(c, &bord);
    free(ids);
    free(deq);
    free(wq);
    free(deq_up);
    free(wq_up);
    free(x);
    free(x_up);
    free(y);
    return err;
}

/* f32 rounding only. The kernel decodes exactly the levels q quant.c decodes (get_rows checks
 * the same decoding bit for bit) and sums a * sum(q * x) + b * sum(x) per run of 8 values (a, b
 * the run's scale and offset). A thread adds at most ceil(2336 / 16 / 64) = 3 chunks of 4
 * dot4s, then come a subgroup tree and a sum over subgroups: fewer than ~25 roundings on any
 * path, each <= 2^-24 relative to partial sums that stay within a few times max |ref| for random
 * data (the offset terms b * sum(x) are about as large as the result: Q4_K's min is about the
 * block's spread), so the worst case is about 25 * 6e-8 * (a few) ~ 5e-6; the rounding errors
 * are random and largely cancel, and ~1e-7 to 3e-7 is observed. A wrong level or a missed x
 * shows up at ~1e-3 or more (one term of n_in is ~ 1/sqrt(n_in) of max |ref|). */
static const double MM_BOUND = 1e-5;

static void test_mul_mat(struct vk_ctx *c) {
    for (size_t ti = 0; ti < N_TYPES; ++ti) {
        const uint32_t type = vk_types[ti];
        char name[64], why[256] = "", detail[512] = "";
        snprintf(name, sizeof name, "vk_mul_mat_%s", qtype_name(type));
        if (vk_mul_mat_kernel(type) < 0) {
            test_report(name, 0, "no kernel for the type");
            continue;
        }
        double worst = 0;
        int ok = 1;
        size_t len = 0;
        for (size_t ci = 0; ci < sizeof mm_cases / sizeof *mm_cases; ++ci) {
            why[0] = 0;
            const double e = mm_run(c, type, &mm_cases[ci], why, sizeof why);
            if (!(e <= MM_BOUND)) ok = 0;
            if (e > worst || isnan(e)) worst = e;
            if (len < sizeof detail)
                len +=
                    (size_t)snprintf(detail + len, sizeof detail - len, "%s%s %.2g%s%s",
                                     ci ? ", " : "", mm_cases[ci].name, e, why[0] ? ": " : "", why);
        }
        test_report(name, ok, "max |gpu - ref| / max |ref|: %s (bound %.0e)", detail, MM_BOUND);
    }
}

/* ---------------------------------------------------------------- get_rows */

static void test_get_rows(struct vk_ctx *c) {
    static const int32_t ids[] = {5, 0, 6, 5, 2};
    const uint32_t n_rows = sizeof ids / sizeof *ids, w_rows = 7;
    for (size_t ti = 0; ti < N_TYPES; ++ti) {
        const uint32_t type = vk_types[ti];
        const struct qtype_traits *tr = qtype_traits(type);
        char name[64];
        snprintf(name, sizeof name, "vk_get_rows_%s", qtype_name(type));
        if (vk_get_rows_kernel(type) < 0) {
            test_report(name, 0, "no kernel for the type");
            continue;
        }
        /* 2304 = 9 K blocks / 72 small ones: more chunks than a workgroup's threads;
         * float types 2303: odd, F16/BF16 rows only 2-byte aligned */
        const int64_t n_in = tr->blck_size == 1 ? 2303 : 2304;
        const size_t row_bytes = qtype_row_size(type, n_in);
        float *deq = xmalloc((size_t)w_rows * n_in * sizeof(float));
        uint8_t *wq = random_matrix(tr, w_rows, n_in, row_bytes, deq);
        const size_t ny = (size_t)n_rows * n_in + 16; /* 16 past the end must stay */
        uint32_t *y = xmalloc(ny * sizeof(float));
        for (size_t i = 0; i < ny; ++i) y[i] = SENTINEL;
        struct vk_buf bw = {0}, bi = {0}, by = {0};
        if (upload_new(c, &bw, wq, w_rows * row_bytes) || upload_new(c, &bi, ids, sizeof ids) ||
            upload_new(c, &by, y, ny * sizeof(float)) || vk_begin(c)) {
            test_report(name, 0, "%s", err_get());
        } else {
            struct vk_get_rows_push p = {.w = bw.addr,
                                         .ids = bi.addr,
                                         .y = by.addr,
                                         .n_in = (uint32_t)n_in,
                                         .row_bytes = (uint32_t)row_bytes,
                                         .n_rows = n_rows};
            vk_dispatch(c, (enum vk_kernel)vk_get_rows_kernel(type), &p, sizeof p, n_rows, 1, 1);
            if (vk_submit(c) || vk_download(c, &by, 0, y, ny * sizeof(float))) {
                test_report(name, 0, "%s", err_get());
            } else {
                size_t bad = 0, first = 0;
                for (uint32_t r = 0; r < n_rows; ++r)
                    for (int64_t i = 0; i < n_in; ++i) {
                        const size_t yi = (size_t)r * n_in + i;
                        if (memcmp(&y[yi], &deq[(size_t)ids[r] * n_in + i], 4) && !bad++)
                            first = yi;
                    }
                size_t stray = 0;
                for (size_t i = (size_t)n_rows * n_in; i < ny; ++i) stray += y[i] != SENTINEL;
                float got = 0, want = 0;
                if (bad) {
                    memcpy(&got, &y[first], 4);
                    want = deq[(size_t)ids[first / n_in] * n_in + first % n_in];
                }
                test_report(name, !bad && !stray,
                            "%u rows of %lld: %zu values differ from quant.c%s, %zu written past "
                            "the end",
                            n_rows, (long long)n_in, bad,
                            bad ? " (first shown below)" : " (bit-identical)", stray);
                if (bad)
                    printf("    value %zu: gpu %.9g, cpu %.9g\n", first, (double)got, (double)want);
            }
        }
        vk_free(c, &bw);
        vk_free(c, &bi);
        vk_free(c, &by);
        free(deq);
        free(wq);
        free(y);
    }
}

int main(void) {
    struct vk_ctx *c = vk_test_open("vk_matmul"); /* SKIP, or FAIL if MOERUN_REQUIRE_VULKAN=1 */
    if (!c) TEST_EXIT();
    printf("# device: %s%s\n", vk_device_name(c), vk_device_is_cpu(c) ? " (CPU)" : "");
    test_get_rows(c);
    test_mul_mat(c);
    vk_close(c);
    TEST_EXIT();
}
