/* The Vulkan attention and router kernels against the CPU path: shaders/attention.comp against
 * cpu_attention (GQA, MQA, the MLA shape with values inside the key rows, prefill after a
 * cache, long contexts, strides wider than the rows) and shaders/router.comp against
 * moe_route (the real models' router shapes, random and tied scores, biases).
 * Runs on the first Vulkan device, the CPU one (lavapipe) included; without one every case
 * is skipped, unless MOERUN_REQUIRE_VULKAN=1, which makes that a failure. */
#include "cpu.h"
#include "moe.h"
#define RNG_SEED 0x243f6a8885a308d3ull
#include "router_test.h"
#include "test.h"
#include "util.h"
#include "vk.h"
#include "vk_ops.h"
#include "vk_test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

/* ---- attention ---- */

enum { MAX_CTX = 8192, MAX_HEAD = 1024 };

struct attn_case {
    const char *name;
    int n_head, n_head_kv, head_dim, head_dim_v;
    int n_tok, pos0;
    int mla;          /* values are the first head_dim_v floats of the key rows */
    int pad;          /* extra floats at the end of every q, k, v and out row */
    float score_gain; /* scales q: 1 gives scores of about unit size, more makes them peaky */
    int n_split;      /* > 1: split over the keys (flash-decoding), then attn_combine */
};

static const struct attn_case attn_cases[] = {
    {"gqa_decode", 8, 2, 64, 64, 1, 37, 0, 0, 1.0f, 1},
    {"gqa_prefill", 8, 2, 64, 64, 7, 20, 0, 3, 1.0f, 1},
    {"gqa_first_token", 8, 2, 64, 64, 1, 0, 0, 0, 1.0f, 1},
    {"gqa_prefill_from_empty", 8, 2, 64, 64, 7, 0, 0, 1, 1.0f, 1},
    {"gqa_peaky", 8, 2, 64, 64, 3, 600, 0, 0, 6.0f, 1},
    {"mqa_decode", 8, 1, 128, 128, 1, 100, 0, 5, 1.0f, 1},
    {"mqa_prefill", 8, 1, 128, 128, 7, 250, 0, 0, 2.0f, 1},
    {"mha_odd_dims", 4, 4, 40, 24, 7, 9, 0, 7, 1.0f, 1},
    {"mha_odd_dims_vec4", 4, 4, 40, 24, 7, 9, 0, 4, 1.0f, 1},
    {"gqa_wide_stride_vec4", 8, 2, 64, 64, 3, 70, 0, 12, 2.0f, 1},
    {"mla_decode", 16, 1, 576, 512, 1, 300, 1, 0, 1.0f, 1},
    {"mla_prefill", 16, 1, 576, 512, 7, 50, 1, 3, 1.0f, 1},
    {"mla_peaky", 16, 1, 576, 512, 2, 1000, 1, 0, 4.0f, 1},
    {"long_gqa", 8, 2, 128, 128, 1, 2999, 0, 0, 1.0f, 1},
    {"long_gqa_prefill", 8, 2, 128, 128, 7, 2993, 0, 2, 3.0f, 1},
    {"long_mla", 16, 1, 576, 512, 1, 4095, 1, 0, 2.0f, 1},
    /* split: chunks not a multiple of a key tile; prefill tokens whose last splits see no
     * key at all; the split count's limit */
    {"gqa_decode_split3", 8, 2, 64, 64, 1, 37, 0, 0, 1.0f, 3},
    {"gqa_prefill_split4", 8, 2, 64, 64, 7, 20, 0, 3, 1.0f, 4},
    {"mla_decode_split5", 16, 1, 576, 512, 1, 300, 1, 0, 1.0f, 5},
    {"mla_peaky_split7", 16, 1, 576, 512, 2, 1000, 1, 0, 4.0f, 7},
    {"long_gqa_prefill_split16", 8, 2, 128, 128, 7, 2993, 0, 2, 3.0f, 16},
    {"long_mla_split64", 16, 1, 576, 512, 1, 4095, 1, 0, 2.0f, VK_ATTN_MAX_SPLIT},
};

/* Exact (double) attention for one (token, head): out[d], and in scale_d[d] the sum over
 * positions of p_j * |v_j[d]|, the size the float rounding of the result is relative to. */
static void attn_exact(const struct attn_args *a, int t, int h, double *out, double *scale_d,
                       double *p) {
    int kvh = h / (a->n_head / a->n_head_kv), n_kv = a->pos0 + t + 1;
    const float *q = a->q + (size_t)t * (size_t)a->q_stride + (size_t)h * (size_t)a->head_dim;
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < n_kv; j++) {
        const float *k =
            a->k_cache + (size_t)j * (size_t)a->k_stride + (size_t)kvh * (size_t)a->head_dim;
        double s = 0.0;
        for (int i = 0; i < a->head_dim; i++) s += (double)q[i] * (double)k[i];
        p[j] = s * (double)a->scale;
        mx = fmax(mx, p[j]);
    }
    for (int j = 0; j < n_kv; j++) sum += p[j] = exp(p[j] - mx);
    for (int d = 0; d < a->head_dim_v; d++) out[d] = scale_d[d] = 0.0;
    for (int j = 0; j < n_kv; j++) {
        const float *v =
            a->v_cache + (size_t)j * (size_t)a->v_stride + (size_t)kvh * (size_t)a->head_dim_v;
        for (int d = 0; d < a->head_dim_v; d++) {
            out[d] += p[j] / sum * v[d];
            scale_d[d] += p[j] / sum * fabs((double)v[d]);
        }
    }
}

/* Bound on |gpu - cpu| relative to sum_j p_j |v_j[d]|, the size of the terms the output
 * sums. Both sides round the dot products differently (a few ulps times sqrt(head_dim) of
 * sum |q_i k_i| * scale: about 1e-6 absolute on the scores of the peaky cases, which moves the
 * weights by that much relatively) and the GPU's exp may be off by 3 + 2|x| ulps (Vulkan's
 * precision rule) where the CPU's is within 1.5; the weighted sums add a few ulps each. The
 * CPU's own distance to exact math is printed alongside: up to 1.3e-6 in the peaky cases,
 * where lavapipe's is 4e-6, so 1e-5 keeps a margin of 2.5 there and of 10 elsewhere. */
#define ATTN_RTOL 1e-5

static void test_attention_case(struct vk_ctx *vk, struct cpu_ctx *cpu, const struct attn_case *c) {
    int n_ctx = c->pos0 + c->n_tok;
    int q_stride = c->n_head * c->head_dim + c->pad;
    int k_stride = c->n_head_kv * c->head_dim + c->pad;
    int v_stride = c->mla ? k_stride : c->n_head_kv * c->head_dim_v + c->pad;
    int out_stride = c->n_head * c->head_dim_v + c->pad;
    size_t q_n = (size_t)c->n_tok * (size_t)q_stride, k_n = (size_t)n_ctx * (size_t)k_stride;
    size_t v_n = c->mla ? 0 : (size_t)n_ctx * (size_t)v_stride;
    size_t o_n = (size_t)c->n_tok * (size_t)out_stride;
    int n_split = c->n_split > 1 ? c->n_split : 1;
    size_t part_n = (size_t)c->n_tok * c->n_head * n_split * (c->head_dim_v + 2);
    struct vk_buf q = vk_test_buf(vk, NULL, q_n * 4), k = vk_test_buf(vk, NULL, k_n * 4),
                  v = c->mla ? k : vk_test_buf(vk, NULL, v_n * 4),
                  o = vk_test_buf(vk, NULL, o_n * 4), part = vk_test_buf(vk, NULL, part_n * 4);
    float *qf = q.map, *kf = k.map, *vf = v.map, *of = o.map;
    for (size_t i = 0; i < q_n; i++) qf[i] = c->score_gain * rng_normal();
    for (size_t i = 0; i < k_n; i++) kf[i] = rng_normal();
    for (size_t i = 0; i < v_n; i++) vf[i] = rng_normal();
    const float sentinel = 1234.5f;
    for (size_t i = 0; i < o_n; i++) of[i] = sentinel;

    float scale = 1.0f / sqrtf((float)c->head_dim);
    struct vk_attention_push pa = {
        .q = q.addr,
        .k = k.addr,
        .v = v.addr,
        .out = o.addr,
        .q_stride = (uint32_t)q_stride,
        .k_stride = (uint32_t)k_stride,
        .v_stride = (uint32_t)v_stride,
        .out_stride = (uint32_t)out_stride,
        .n_tok = (uint32_t)c->n_tok,
        .pos0 = (uint32_t)c->pos0,
        .n_head = (uint32_t)c->n_head,
        .n_head_kv = (uint32_t)c->n_head_kv,
        .head_dim = (uint32_t)c->head_dim,
        .head_dim_v = (uint32_t)c->head_dim_v,
        .scale = scale,
        .part = part.addr,
        .chunk = n_split > 1 ? (uint32_t)((n_ctx + n_split - 1) / n_split) : 0,
    };
    struct vk_attn_combine_push pc = {part.addr,
                                      o.addr,
                                      (uint32_t)c->n_head,
                                      (uint32_t)n_split,
                                      (uint32_t)c->head_dim_v,
                                      (uint32_t)out_stride};
    char name[96];
    snprintf(name, sizeof name, "vk_attention_%s", c->name);
    double t0 = time_now();
    if (vk_begin(vk) != 0) {
        test_report(name, 0, "vk_begin: %s", err_get());
        goto done;
    }
    vk_dispatch(vk, VK_ATTENTION, &pa, sizeof pa, (uint32_t)c->n_head, (uint32_t)c->n_tok,
                (uint32_t)n_split);
    if (n_split > 1) {
        vk_barrier(vk);
        vk_dispatch(vk, VK_ATTN_COMBINE, &pc, sizeof pc, (uint32_t)c->n_head, (uint32_t)c->n_tok,
                    1);
    }
    if (vk_submit(vk) != 0) {
        test_report(name, 0, "vk_submit: %s", err_get());
        goto done;
    }
    double gpu_s = time_now() - t0;

    float *ref = xmalloc(o_n * 4);
    for (size_t i = 0; i < o_n; i++) ref[i] = sentinel;
    struct attn_args a = {.q = qf,
                          .k_cache = kf,
                          .v_cache = c->mla ? kf : vf,
                          .out = ref,
                          .q_stride = q_stride,
                          .k_stride = k_stride,
                          .v_stride = v_stride,
                          .out_stride = out_stride,
                          .n_tok = c->n_tok,
                          .pos0 = c->pos0,
                          .n_head = c->n_head,
                          .n_head_kv = c->n_head_kv,
                          .head_dim = c->head_dim,
                          .head_dim_v = c->head_dim_v,
                          .scale = scale};
    cpu_attention(cpu, &a);

    double *ex = xmalloc(sizeof(double) * (size_t)c->head_dim_v);
    double *sc = xmalloc(sizeof(double) * (size_t)c->head_dim_v);
    double *p = xmalloc(sizeof(double) * (size_t)n_ctx);
    double worst = 0.0, worst_cpu = 0.0;
    int bad_sentinel = 0, bad_at = -1;
    for (int t = 0; t < c->n_tok; t++) {
        for (int h = 0; h < c->n_head; h++) {
            attn_exact(&a, t, h, ex, sc, p);
            size_t base = (size_t)t * (size_t)out_stride + (size_t)h * (size_t)c->head_dim_v;
            for (int d = 0; d < c->head_dim_v; d++) {
                double g = of[base + (size_t)d], r = ref[base + (size_t)d];
                double e = fabs(g - r) / sc[d], e_cpu = fabs(r - ex[d]) / sc[d];
                if (!(e <= worst)) worst = e, bad_at = (int)(base + (size_t)d);
                if (e_cpu > worst_cpu) worst_cpu = e_cpu;
            }
        }
        for (int i = c->n_head * c->head_dim_v; i < out_stride; i++)
            bad_sentinel += of[(size_t)t * (size_t)out_stride + (size_t)i] != sentinel;
    }
    int ok = worst <= ATTN_RTOL && !bad_sentinel;
    test_report(name, ok,
                "%d positions, max |gpu - cpu| %.2e, |cpu - exact| %.2e (relative to sum p|v|, "
                "bound %.0e)%s; gpu %.1f ms; at %d: gpu %.9g cpu %.9g",
                n_ctx, worst, worst_cpu, ATTN_RTOL, bad_sentinel ? ", WROTE PAST THE HEADS" : "",
                gpu_s * 1e3, bad_at, bad_at >= 0 ? (double)of[bad_at] : 0.0,
                bad_at >= 0 ? (double)ref[bad_at] : 0.0);
    free(p);
    free(sc);
    free(ex);
    free(ref);
done:
    vk_free(vk, &part);
    vk_free(vk, &o);
    if (!c->mla) vk_free(vk, &v);
    vk_free(vk, &k);
    vk_free(vk, &q);
}

static void test_attention(struct vk_ctx *vk) {
    struct cpu_config cfg = {.n_threads = 2,
                             .max_batch = 1,
                             .max_fanout = 1,
                             .max_in = 64,
                             .max_act_per_token = 64,
                             .max_ctx = MAX_CTX,
                             .max_head_dim = MAX_HEAD,
                             .blas_min_batch = 1 << 30};
    struct cpu_ctx *cpu = cpu_init(&cfg);
    for (size_t i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++)
        test_attention_case(vk, cpu, &attn_cases[i]);
    cpu_free(cpu);
}

/* ---- router ---- */

enum { MAX_EXPERT = 512, MAX_USED = 16, ROUTER_TOKENS = 300 };
#define WEIGHT_RTOL 1e-6

static const struct shape shapes[] = {
    {"mixtral_8_top2", 8, 2, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"qwen2moe_60_top4", 60, 4, 0, 0, MOE_GATING_SOFTMAX, 0, 0, 0.0f},
    {"qwen3moe_128_top8", 128, 8, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"v2_lite_64_top6", 64, 6, 0, 0, MOE_GATING_NONE, 0, 0, 1.0f},
    {"v2_160_groups_8_3", 160, 6, 8, 3, MOE_GATING_SOFTMAX, 0, 0, 16.0f},
    {"v3_256_sigmoid_groups_8_4", 256, 8, 8, 4, MOE_GATING_SIGMOID, 1, 1, 2.5f},
    {"v3_fixture_16", 16, 4, 4, 2, MOE_GATING_SIGMOID, 1, 1, 2.5f},
    {"sigmoid_groups_nobias", 64, 6, 8, 3, MOE_GATING_SIGMOID, 0, 1, 1.0f},
    {"softmax_bias_groups", 32, 4, 8, 2, MOE_GATING_SOFTMAX, 1, 0, 1.0f},
    {"all_groups_used", 32, 8, 4, 4, MOE_GATING_SOFTMAX, 1, 1, 1.0f},
    {"one_group", 8, 2, 1, 1, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"all_experts", 16, 16, 4, 4, MOE_GATING_SIGMOID, 1, 1, 1.0f},
    {"softmax_512_top16", 512, 16, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"sigmoid_512_groups_16_5", 512, 12, 16, 5, MOE_GATING_SIGMOID, 1, 1, 2.0f},
    {"softmax_100_top3_chunks_and_tail", 100, 3, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
};

static const char *const kind_names[] = {"normal", "tied", "equal", "very_negative"};

/* One dispatch over ROUTER_TOKENS tokens against moe_route; per_token_grid: one workgroup
 * per token instead of the contract's ceil(n_tok / 64). Returns 0 and fills why on the first
 * difference; counts weights equal to the CPU's to the bit. */
static int router_run(struct vk_ctx *vk, const struct moe_router_cfg *c, struct vk_buf *logits,
                      struct vk_buf *bias, struct vk_buf *ids, struct vk_buf *w, int per_token_grid,
                      long *n_w, long *n_bits, double *worst, char *why, size_t len) {
    int n = c->n_expert, k = c->n_expert_used;
    struct vk_router_push pr = {.logits = logits->addr,
                                .bias = c->bias ? bias->addr : 0,
                                .ids = ids->addr,
                                .weights = w->addr,
                                .n_tok = ROUTER_TOKENS,
                                .n_expert = (uint32_t)n,
                                .k = (uint32_t)k,
                                .gating = (uint32_t)c->gating,
                                .n_group = (uint32_t)c->n_group,
                                .n_group_used = (uint32_t)c->n_group_used,
                                .norm_weights = (uint32_t)c->norm_weights,
                                .weights_scale = c->weights_scale};
    memset(ids->map, 0xff, (size_t)ROUTER_TOKENS * (size_t)k * 4);
    if (vk_begin(vk) != 0) return snprintf(why, len, "vk_begin: %s", err_get()), 0;
    uint32_t groups = per_token_grid ? ROUTER_TOKENS : (ROUTER_TOKENS + 63) / 64;
    vk_dispatch(vk, VK_ROUTER, &pr, sizeof pr, groups, 1, 1);
    if (vk_submit(vk) != 0) return snprintf(why, len, "vk_submit: %s", err_get()), 0;
    void *scratch = xmalloc(moe_route_scratch_bytes(c));
    const int32_t *gid = ids->map;
    const float *gw = w->map;
    int ok = 1;
    for (int t = 0; t < ROUTER_TOKENS && ok; t++) {
        int32_t rid[MAX_EXPERT];
        float rw[MAX_EXPERT];
        moe_route(c, (const float *)logits->map + (size_t)t * (size_t)n, scratch, rid, rw);
        for (int j = 0; j < k && ok; j++) {
            int32_t g = gid[(size_t)t * (size_t)k + (size_t)j];
            float gv = gw[(size_t)t * (size_t)k + (size_t)j];
            if (g != rid[j]) {
                snprintf(why, len, "token %d slot %d: expert %d, moe_route %d", t, j, g, rid[j]);
                ok = 0;
                break;
            }
            double e = fabs((double)gv - rw[j]) / fmax(fabs((double)rw[j]), 1e-30);
            if (e > *worst) *worst = e;
            if (!(e <= WEIGHT_RTOL)) {
                snprintf(why, len, "token %d slot %d (expert %d): weight %.9g, moe_route %.9g", t,
                         j, g, (double)gv, (double)rw[j]);
                ok = 0;
            }
            (*n_w)++;
            *n_bits += gv == rw[j];
        }
    }
    free(scratch);
    return ok;
}

static void test_router(struct vk_ctx *vk) {
    struct vk_buf logits = vk_test_buf(vk, NULL, (size_t)ROUTER_TOKENS * MAX_EXPERT * 4);
    struct vk_buf bias = vk_test_buf(vk, NULL, MAX_EXPERT * 4);
    struct vk_buf ids = vk_test_buf(vk, NULL, (size_t)ROUTER_TOKENS * MAX_EXPERT * 4);
    struct vk_buf w = vk_test_buf(vk, NULL, (size_t)ROUTER_TOKENS * MAX_EXPERT * 4);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const struct shape *sh = &shapes[s];
        struct moe_router_cfg c = {.n_expert = sh->n_expert,
                                   .n_expert_used = sh->n_used,
                                   .gating = sh->gating,
                                   .bias = sh->has_bias ? bias.map : NULL,
                                   .n_group = sh->n_group,
                                   .n_group_used = sh->n_group_used,
                                   .norm_weights = sh->norm,
                                   .weights_scale = sh->scale};
        char name[128], why[200] = "";
        if (moe_router_cfg_validate(&c, "test.gguf", "test") != 0) {
            snprintf(name, sizeof name, "vk_router_%s", sh->name);
            test_report(name, 0, "validate rejected the shape: %s", err_get());
            continue;
        }
        for (int kind = 0; kind < N_SCORE_KINDS; kind++) {
            long n_w = 0, n_bits = 0;
            double worst = 0.0;
            int ok = 1;
            for (int run = 0; run < 3 && ok; run++) {
                fill_logits(logits.map, ROUTER_TOKENS * sh->n_expert, (enum score_kind)kind);
                fill_bias(bias.map, sh->n_expert, run);
                ok = router_run(vk, &c, &logits, &bias, &ids, &w, run == 1, &n_w, &n_bits, &worst,
                                why, sizeof why);
            }
            snprintf(name, sizeof name, "vk_router_%s_%s", sh->name, kind_names[kind]);
            if (ok)
                test_report(name, 1,
                            "%d tokens x 3, ids equal; weights max rel diff %.1e, %ld of %ld "
                            "bit-equal",
                            ROUTER_TOKENS, worst, n_bits, n_w);
            else
                test_report(name, 0, "%s", why);
        }
    }
    vk_free(vk, &w);
    vk_free(vk, &ids);
    vk_free(vk, &bias);
    vk_free(vk, &logits);
}

int main(void) {
    struct vk_ctx *vk = vk_test_open("vk_attn_router");
    if (!vk) TEST_EXIT();
    printf("# device: %s%s\n", vk_device_name(vk), vk_device_is_cpu(vk) ? " (CPU)" : "");
    test_attention(vk);
    test_router(vk);
    vk_close(vk);
    TEST_EXIT();
}
