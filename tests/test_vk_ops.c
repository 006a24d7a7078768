/* The small Vulkan kernels against the CPU ops they mirror: rmsnorm, rope (normal, NeoX,
 * YaRN, frequency factors, in place and into another buffer), add (plain and a broadcast
 * bias), copy2d, and a MoE layer's residual step (the weighted expert sum with the shared
 * experts' (gated) output, added to x, then the norm). Bounds: these
 * are a handful of float operations per value, so they differ from the CPU only by rounding order
 * and the GPU's exp/sin/cos/pow (NMSE 1e-10, i.e. about 1e-5 relative); rope angles at positions up
 * to 4000 carry the driver's sin/cos error on large arguments, hence its looser 1e-8. */
#include "cpu.h"
#include "vk_ops.h"
#include "vk_test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}
static float *randv(size_t n, float scale) {
    float *v = xmalloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = frand() * scale;
    return v;
}

static void check(const char *name, const float *got, const float *ref, size_t n, double bound) {
    double e = vk_test_nmse(got, ref, n);
    test_report(name, e <= bound, "nmse %.3g (bound %.0e), max |diff| %.3g", e, bound,
                vk_test_max_diff(got, ref, n));
}

static void test_rmsnorm(struct vk_ctx *c) {
    int n = 576, rows = 5, stride = 600;
    float *x = randv((size_t)rows * stride, 3.0f), *w = randv((size_t)n, 1.0f);
    float *ref = xcalloc((size_t)rows * n, sizeof *ref);
    for (int r = 0; r < rows; r++)
        cpu_rmsnorm(ref + (size_t)r * n, x + (size_t)r * stride, w, n, 1, 1e-6f);
    struct vk_buf bx = vk_test_buf(c, x, (size_t)rows * stride * 4), bw = vk_test_buf(c, w, n * 4);
    struct vk_rmsnorm_push p = {.x = bx.addr,
                                .y = bx.addr,
                                .w = bw.addr,
                                .n = (uint32_t)n,
                                .n_rows = (uint32_t)rows,
                                .x_stride = (uint32_t)stride,
                                .y_stride = (uint32_t)stride,
                                .eps = 1e-6f};
    vk_test_run(c, VK_RMSNORM, &p, sizeof p, (uint32_t)rows, 1, 1);
    float *got = xcalloc((size_t)rows * n, sizeof *got);
    for (int r = 0; r < rows; r++)
        memcpy(got + (size_t)r * n, (float *)bx.map + (size_t)r * stride, (size_t)n * 4);
    check("vk rmsnorm (strided rows, in place)", got, ref, (size_t)rows * n, 1e-10);

    /* with the residual step fused in: x += a, y = rmsnorm(x) * w */
    float *a = randv((size_t)rows * stride, 1.0f), *sum = xmalloc((size_t)rows * stride * 4);
    for (size_t i = 0; i < (size_t)rows * stride; i++) sum[i] = x[i] + a[i];
    for (int r = 0; r < rows; r++)
        cpu_rmsnorm(ref + (size_t)r * n, sum + (size_t)r * stride, w, n, 1, 1e-6f);
    memcpy(bx.map, x, (size_t)rows * stride * 4);
    struct vk_buf ba = vk_test_buf(c, a, (size_t)rows * stride * 4);
    struct vk_buf by = vk_test_buf(c, NULL, (size_t)rows * stride * 4);
    p.y = by.addr, p.add = ba.addr;
    vk_test_run(c, VK_RMSNORM, &p, sizeof p, (uint32_t)rows, 1, 1);
    for (int r = 0; r < rows; r++)
        memcpy(got + (size_t)r * n, (float *)by.map + (size_t)r * stride, (size_t)n * 4);
    check("vk rmsnorm with the residual add", got, ref, (size_t)rows * n, 1e-10);
    float *xs = bx.map;
    int kept = 1;
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < n; i++) kept &= xs[r * stride + i] == sum[r * stride + i];
    test_report("vk rmsnorm with the residual add: x keeps the sum", kept, NULL);
    vk_free(c, &ba), vk_free(c, &by);
    free(a), free(sum);
    vk_free(c, &bx), vk_free(c, &bw);
    free(x), free(w), free(ref), free(got);
}

/* dst: rotate into another buffer (rows and heads at other strides) instead of in place */
static void rope_case(struct vk_ctx *c, const char *name, enum rope_mode mode, int yarn,
                      int with_factors, int dst) {
    int n_tok = 3, n_head = 4, head = 96, n_rot = 64, row = n_head * head + 8;
    int32_t pos[3] = {0, 17, 4000};
    struct rope_params rp = {.mode = mode,
                             .n_rot = n_rot,
                             .freq_base = 10000.0f,
                             .freq_scale = yarn ? 0.25f : 1.0f,
                             .ext_factor = yarn ? 1.0f : 0.0f,
                             .attn_factor = yarn ? 0.9f : 1.0f};
    if (yarn) cpu_rope_yarn_corr_dims(n_rot, 4096, 10000.0f, 32.0f, 1.0f, rp.corr_dims);
    float *ff = with_factors ? randv((size_t)n_rot / 2, 1.0f) : NULL;
    for (int i = 0; ff && i < n_rot / 2; i++) ff[i] = 1.0f + fabsf(ff[i]) * 4.0f;
    size_t n = (size_t)n_tok * row;
    float *x = randv(n, 1.0f), *ref = xmalloc(n * 4);
    memcpy(ref, x, n * 4);
    cpu_rope(ref, n_tok, n_head, head, row, pos, &rp, ff);
    struct vk_buf bx = vk_test_buf(c, x, n * 4), bp = vk_test_buf(c, pos, sizeof pos);
    struct vk_buf bf = vk_test_buf(c, ff, ff ? (size_t)n_rot / 2 * 4 : 4);
    /* into y: head h of token t at y + t * y_row + h * y_head, n_rot values each */
    int y_head = n_rot + 3, y_row = n_head * y_head + 5;
    size_t ny = (size_t)n_tok * y_row;
    float *y0 = randv(ny, 1.0f);
    struct vk_buf by = vk_test_buf(c, y0, ny * 4);
    struct vk_rope_push p = {.x = bx.addr,
                             .y = dst ? by.addr : bx.addr,
                             .pos = bp.addr,
                             .freq_factors = ff ? bf.addr : 0,
                             .n_tok = (uint32_t)n_tok,
                             .n_head = (uint32_t)n_head,
                             .head_stride = (uint32_t)head,
                             .row_stride = (uint32_t)row,
                             .y_head_stride = (uint32_t)(dst ? y_head : head),
                             .y_row_stride = (uint32_t)(dst ? y_row : row),
                             .n_rot = (uint32_t)n_rot,
                             .mode = (uint32_t)mode,
                             .theta_scale = powf(rp.freq_base, -2.0f / (float)n_rot),
                             .freq_scale = rp.freq_scale,
                             .ext_factor = rp.ext_factor,
                             .attn_factor = rp.attn_factor,
                             .corr0 = rp.corr_dims[0],
                             .corr1 = rp.corr_dims[1]};
    vk_test_run(c, VK_ROPE, &p, sizeof p, (uint32_t)n_head, (uint32_t)n_tok, 1);
    if (!dst) {
        check(name, bx.map, ref, n, 1e-8);
    } else {
        /* the rotated values where they belong; x and y's other values untouched */
        float *want = xmalloc(ny * 4);
        memcpy(want, y0, ny * 4);
        for (int t = 0; t < n_tok; t++)
            for (int h = 0; h < n_head; h++)
                memcpy(want + (size_t)t * y_row + (size_t)h * y_head,
                       ref + (size_t)t * row + (size_t)h * head, (size_t)n_rot * 4);
        check(name, by.map, want, ny, 1e-8);
        test_report("vk rope into another buffer: its source untouched", !memcmp(bx.map, x, n * 4),
                    NULL);
        free(want);
    }
    vk_free(c, &bx), vk_free(c, &bp), vk_free(c, &bf), vk_free(c, &by);
    free(x), free(ref), free(ff), free(y0);
}

static void test_elementwise(struct vk_ctx *c) {
    size_t n = 70000, period = 1000;
    float *g = randv(n, 8.0f), *u = randv(n, 2.0f), *ref = xmalloc(n * 4);
    struct vk_buf bg = vk_test_buf(c, g, n * 4), bu = vk_test_buf(c, u, n * 4);
    memcpy(ref, g, n * 4);
    for (size_t i = 0; i < n; i++) ref[i] += u[i % period];
    struct vk_add_push ap = {bg.addr, bu.addr, (uint32_t)n, (uint32_t)period};
    vk_test_run(c, VK_ADD, &ap, sizeof ap, 3, 1, 1); /* few groups: the grid-stride loop */
    check("vk add (bias broadcast)", bg.map, ref, n, 0);

    int32_t ids[6] = {5, -1, 1 << 30, 7, 0, 3}; /* words copied as bits, ints included */
    struct vk_buf bi = vk_test_buf(c, ids, sizeof ids), bo = vk_test_buf(c, NULL, 4 * 4);
    struct vk_copy2d_push cp = {bi.addr, bo.addr, 2, 2, 3, 2};
    vk_test_run(c, VK_COPY2D, &cp, sizeof cp, 2, 1, 1);
    int32_t *o = bo.map;
    test_report("vk copy2d (ints as bits, strides)",
                o[0] == 5 && o[1] == -1 && o[2] == 7 && o[3] == 0, "%d %d %d %d", o[0], o[1], o[2],
                o[3]);
    vk_free(c, &bg), vk_free(c, &bu), vk_free(c, &bi), vk_free(c, &bo);
    free(g), free(u), free(ref);
}

/* moe_residual with k weighted parts (or unweighted: weights = 0), an optional shared output,
 * plain or sigmoid-gated, and the norm after it or none; the reference sums in the same
 * order. E = 300: more than a workgroup's 256 invocations. */
static void moe_residual_case(struct vk_ctx *c, const char *name, int weighted, int shared,
                              int gated, int norm) {
    int n_tok = 3, k = weighted ? 6 : 1, E = 300;
    size_t np = (size_t)n_tok * k * E, ne = (size_t)n_tok * E;
    float *parts = randv(np, 1.0f), *w = randv((size_t)n_tok * k, 1.0f), *sh = randv(ne, 1.0f);
    float *x = randv(ne, 2.0f), *nw = randv((size_t)E, 1.0f), *y0 = randv(ne, 1.0f);
    float gate[6] = {0.5f, 9.0f, -2.0f, 9.0f, 7.0f, 9.0f}; /* stride 2: every other one */
    float *want_x = xmalloc(ne * 4), *want_y = xmalloc(ne * 4);
    memcpy(want_y, y0, ne * 4);
    for (int t = 0; t < n_tok; t++) {
        float g = gated ? 1.0f / (1.0f + expf(-gate[2 * t])) : 1.0f;
        for (int d = 0; d < E; d++) {
            float acc = 0;
            for (int j = 0; j < k; j++)
                acc += parts[((size_t)t * k + j) * E + d] * (weighted ? w[t * k + j] : 1.0f);
            if (shared) acc += sh[(size_t)t * E + d] * g;
            want_x[(size_t)t * E + d] = x[(size_t)t * E + d] + acc;
        }
        if (norm) cpu_rmsnorm(want_y + (size_t)t * E, want_x + (size_t)t * E, nw, E, 1, 1e-6f);
    }
    struct vk_buf bp = vk_test_buf(c, parts, np * 4), bw = vk_test_buf(c, w, (size_t)n_tok * k * 4);
    struct vk_buf bs = vk_test_buf(c, sh, ne * 4), bg = vk_test_buf(c, gate, sizeof gate);
    struct vk_buf bx = vk_test_buf(c, x, ne * 4), by = vk_test_buf(c, y0, ne * 4);
    struct vk_buf bn = vk_test_buf(c, nw, (size_t)E * 4);
    struct vk_moe_residual_push p = {.x = bx.addr,
                                     .y = norm ? by.addr : 0,
                                     .w = bn.addr,
                                     .parts = bp.addr,
                                     .weights = weighted ? bw.addr : 0,
                                     .shared = shared ? bs.addr : 0,
                                     .gate = gated ? bg.addr : 0,
                                     .n_tok = (uint32_t)n_tok,
                                     .k = (uint32_t)k,
                                     .E = (uint32_t)E,
                                     .gate_stride = 2,
                                     .eps = 1e-6f};
    vk_test_run(c, VK_MOE_RESIDUAL, &p, sizeof p, 2, 1, 1); /* 2 groups: the token stride */
    char full[160];
    snprintf(full, sizeof full, "%s: the residual", name);
    check(full, bx.map, want_x, ne, 1e-12);
    snprintf(full, sizeof full, "%s: %s", name, norm ? "the norm" : "no norm written");
    check(full, by.map, want_y, ne, norm ? 1e-10 : 0);
    vk_free(c, &bp), vk_free(c, &bw), vk_free(c, &bs), vk_free(c, &bg);
    vk_free(c, &bx), vk_free(c, &by), vk_free(c, &bn);
    free(parts), free(w), free(sh), free(x), free(nw), free(y0), free(want_x), free(want_y);
}

int main(void) {
    struct vk_ctx *c = vk_test_open("vk ops");
    if (!c) return test_failures ? 1 : 0;
    test_rmsnorm(c);
    rope_case(c, "vk rope normal", ROPE_NORM, 0, 0, 0);
    rope_case(c, "vk rope neox", ROPE_NEOX, 0, 0, 0);
    rope_case(c, "vk rope neox + freq factors", ROPE_NEOX, 0, 1, 0);
    rope_case(c, "vk rope yarn", ROPE_NORM, 1, 0, 0);
    rope_case(c, "vk rope normal into another buffer", ROPE_NORM, 0, 0, 1);
    rope_case(c, "vk rope neox into another buffer", ROPE_NEOX, 0, 1, 1);
    test_elementwise(c);
    moe_residual_case(c, "vk moe_residual", 1, 0, 0, 1);
    moe_residual_case(c, "vk moe_residual + shared experts", 1, 1, 0, 1);
    moe_residual_case(c, "vk moe_residual + sigmoid-gated shared expert", 1, 1, 1, 1);
    moe_residual_case(c, "vk moe_residual of one unweighted part (the CPU's sum)", 0, 1, 0, 1);
    moe_residual_case(c, "vk moe_residual, no norm after it", 1, 1, 1, 0);
    vk_close(c);
    return test_failures ? 1 : 0;
}
