/* The expert router against a direct, sort-based reference: random and adversarial scores
 * (exact ties within and across groups and at the group boundary, a bias that flips a choice,
 * all-equal scores), both group rules, weight normalization and scaling, and the load checks. */
#include "cpu.h"
#include "moe.h"
#include "router_test.h"
#include "test.h"
#include "util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERT 256
#define WEIGHT_RTOL 1e-6

/* ---- the reference: every step a full sort, nothing clever ---- */

struct scored {
    int id;
    float score;
};

/* Higher score first; on equal scores the lower id first (the documented tie rule). */
static int by_score_then_id(const void *pa, const void *pb) {
    const struct scored *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->id - b->id;
}

/* The probabilities are defined as ggml computes them (its softmax, which cpu_softmax
 * reproduces, and 1 / (1 + expf(-x))); what the reference checks is everything after them.
 * probs_vs_double below checks these against exact math. */
static void ref_probs(const struct moe_router_cfg *c, const float *logits, float *probs) {
    for (int i = 0; i < c->n_expert; i++)
        probs[i] = c->gating == MOE_GATING_SIGMOID ? 1.0f / (1.0f + expf(-logits[i])) : logits[i];
    if (c->gating != MOE_GATING_SIGMOID) cpu_softmax(probs, c->n_expert);
}

/* With a bias (DeepSeek-V3) a group scores the sum of its best two; without (V2) its best. */
static float ref_group_score(const float *sel, int per_group, int has_bias) {
    struct scored s[MAX_EXPERT];
    for (int i = 0; i < per_group; i++) s[i] = (struct scored){i, sel[i]};
    qsort(s, (size_t)per_group, sizeof s[0], by_score_then_id);
    return has_bias ? (float)((double)s[0].score + (double)s[1].score) : s[0].score;
}

/* allowed[i] = 1 for the experts of the n_group_used best groups (all experts without groups). */
static void ref_allowed(const struct moe_router_cfg *c, const float *sel, int *allowed) {
    for (int i = 0; i < c->n_expert; i++) allowed[i] = 1;
    if (c->n_group <= 1) return;
    int per_group = c->n_expert / c->n_group;
    struct scored g[MAX_EXPERT];
    for (int k = 0; k < c->n_group; k++)
        g[k] = (struct scored){k, ref_group_score(sel + k * per_group, per_group, c->bias != NULL)};
    qsort(g, (size_t)c->n_group, sizeof g[0], by_score_then_id);
    for (int k = c->n_group_used; k < c->n_group; k++)
        for (int i = 0; i < per_group; i++) allowed[g[k].id * per_group + i] = 0;
}

static void ref_route(const struct moe_router_cfg *c, const float *logits, int32_t *ids, float *w) {
    float probs[MAX_EXPERT], sel[MAX_EXPERT];
    int allowed[MAX_EXPERT], n = 0;
    ref_probs(c, logits, probs);
    for (int i = 0; i < c->n_expert; i++) sel[i] = probs[i] + (c->bias ? c->bias[i] : 0.0f);
    ref_allowed(c, sel, allowed);
    struct scored e[MAX_EXPERT];
    for (int i = 0; i < c->n_expert; i++)
        if (allowed[i]) e[n++] = (struct scored){i, sel[i]};
    qsort(e, (size_t)n, sizeof e[0], by_score_then_id);
    double sum = 0.0;
    for (int j = 0; j < c->n_expert_used; j++) ids[j] = e[j].id, sum += probs[e[j].id];
    double denom = c->norm_weights ? fmax(sum, 6.103515625e-5) : 1.0;
    double scale = c->weights_scale == 0.0f ? 1.0 : c->weights_scale;
    for (int j = 0; j < c->n_expert_used; j++) w[j] = (float)(probs[ids[j]] / denom * scale);
}

/* ---- helpers ---- */

/* Runs moe_route with scratch of exactly the advertised size (ASan sees any overrun). */
static void route(const struct moe_router_cfg *c, const float *logits, int32_t *ids, float *w) {
    void *scratch = xmalloc(moe_route_scratch_bytes(c));
    moe_route(c, logits, scratch, ids, w);
    free(scratch);
}

/* Returns 1 when moe_route and the reference agree; otherwise describes the first difference. */
static int agrees(const struct moe_router_cfg *c, const float *logits, char *why, size_t len) {
    int32_t ids[MAX_EXPERT], rids[MAX_EXPERT];
    float w[MAX_EXPERT], rw[MAX_EXPERT];
    route(c, logits, ids, w);
    ref_route(c, logits, rids, rw);
    for (int j = 0; j < c->n_expert_used; j++) {
        if (ids[j] != rids[j]) {
            snprintf(why, len, "slot %d: expert %d, reference %d", j, ids[j], rids[j]);
            return 0;
        }
        if (fabs((double)w[j] - rw[j]) > WEIGHT_RTOL * fmax(fabs((double)rw[j]), 1e-30)) {
            snprintf(why, len, "slot %d (expert %d): weight %.9g, reference %.9g", j, ids[j],
                     (double)w[j], (double)rw[j]);
            return 0;
        }
    }
    return 1;
}

static struct moe_router_cfg cfg_plain(int n_expert, int n_used, enum moe_gating gating) {
    struct moe_router_cfg c = {0};
    c.n_expert = n_expert;
    c.n_expert_used = n_used;
    c.gating = gating;
    c.weights_scale = 1.0f;
    return c;
}

static struct moe_router_cfg cfg_grouped(int n_expert, int n_used, int n_group, int n_group_used,
                                         enum moe_gating gating) {
    struct moe_router_cfg c = cfg_plain(n_expert, n_used, gating);
    c.n_group = n_group;
    c.n_group_used = n_group_used;
    return c;
}

/* ---- random and tie-heavy scores against the reference ---- */

static const struct shape shapes[] = {
    {"mixtral-4x2", 4, 2, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"v2-lite-fixture", 8, 2, 0, 0, MOE_GATING_NONE, 0, 0, 1.0f},
    {"one-group", 8, 2, 1, 1, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"qwen2moe-60", 60, 4, 0, 0, MOE_GATING_SOFTMAX, 0, 0, 0.0f},
    {"qwen3moe-128", 128, 8, 0, 0, MOE_GATING_SOFTMAX, 0, 1, 1.0f},
    {"v2-lite-64", 64, 6, 0, 0, MOE_GATING_SOFTMAX, 0, 0, 1.0f},
    {"v2-160-groups", 160, 6, 8, 3, MOE_GATING_SOFTMAX, 0, 0, 16.0f},
    {"v3-fixture", 16, 4, 4, 2, MOE_GATING_SIGMOID, 1, 1, 2.5f},
    {"v3-256", 256, 8, 8, 4, MOE_GATING_SIGMOID, 1, 1, 2.5f},
    {"sigmoid-groups-nobias", 64, 6, 8, 3, MOE_GATING_SIGMOID, 0, 1, 1.0f},
    {"softmax-bias-groups", 32, 4, 8, 2, MOE_GATING_SOFTMAX, 1, 0, 1.0f},
    {"all-groups-used", 32, 8, 4, 4, MOE_GATING_SOFTMAX, 1, 1, 1.0f},
    {"groups-just-enough", 16, 8, 8, 4, MOE_GATING_SIGMOID, 1, 1, 1.0f},
    {"all-experts", 16, 16, 4, 4, MOE_GATING_SIGMOID, 1, 1, 1.0f},
    {"one-of-many", 256, 1, 0, 0, MOE_GATING_SIGMOID, 0, 1, 1.0f},
};

static void test_shape(const struct shape *s) {
    struct moe_router_cfg c =
        cfg_grouped(s->n_expert, s->n_used, s->n_group, s->n_group_used, s->gating);
    float logits[MAX_EXPERT], bias[MAX_EXPERT];
    char name[96], why[160];
    c.norm_weights = s->norm;
    c.weights_scale = s->scale;
    c.bias = s->has_bias ? bias : NULL;
    if (moe_router_cfg_validate(&c, "test.gguf", "deepseek2") != 0) {
        snprintf(name, sizeof name, "moe_route_%s", s->name);
        test_report(name, 0, "validate rejected a good shape: %s", err_get());
        return;
    }
    for (int kind = 0; kind < N_SCORE_KINDS; kind++) {
        int ok = 1;
        for (int trial = 0; trial < 300 && ok; trial++) {
            fill_logits(logits, s->n_expert, (enum score_kind)kind);
            fill_bias(bias, s->n_expert, trial % 3);
            ok = agrees(&c, logits, why, sizeof why);
        }
        snprintf(name, sizeof name, "moe_route_%s_scores%d", s->name, kind);
        test_report(name, ok, ok ? NULL : "%s", why);
    }
}

/* ---- cases written out by hand ---- */

static void test_all_equal(void) {
    float logits[8];
    int32_t ids[8];
    float w[8];
    for (int i = 0; i < 8; i++) logits[i] = 0.5f;
    struct moe_router_cfg c = cfg_plain(8, 3, MOE_GATING_SOFTMAX);
    route(&c, logits, ids, w);
    int ok = ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && w[0] == 0.125f && w[2] == 0.125f;
    test_report("moe_ties_all_equal_lowest_ids", ok, "ids %d %d %d, w %g", ids[0], ids[1], ids[2],
                (double)w[0]);

    c = cfg_grouped(8, 3, 4, 2, MOE_GATING_SIGMOID); /* groups 0 and 1 win the tie */
    route(&c, logits, ids, w);
    ok = ids[0] == 0 && ids[1] == 1 && ids[2] == 2;
    test_report("moe_ties_all_equal_lowest_groups", ok, "ids %d %d %d", ids[0], ids[1], ids[2]);
}

/* Groups 1, 2, 3 score the same and two of them fit: 1 and 2 win; their experts tie in pairs
 * across the groups and come out in ascending id order within each score. */
static void test_group_boundary_tie(void) {
    float logits[16] = {0};
    int32_t ids[4];
    float w[4];
    for (int g = 1; g < 4; g++) logits[g * 4] = 1.0f, logits[g * 4 + 1] = 0.5f;
    struct moe_router_cfg c = cfg_grouped(16, 4, 4, 2, MOE_GATING_SOFTMAX);
    route(&c, logits, ids, w);
    int ok = ids[0] == 4 && ids[1] == 8 && ids[2] == 5 && ids[3] == 9;
    test_report("moe_ties_group_boundary", ok, "ids %d %d %d %d, want 4 8 5 9", ids[0], ids[1],
                ids[2], ids[3]);
}

/* The bias changes which expert is chosen but not the weight it gets. */
static void test_bias_flips_choice(void) {
    float logits[4] = {1.0f, 0.9f, 0.0f, 0.0f}, bias[4] = {0.0f, 0.1f, 0.0f, 0.0f}, probs[4];
    int32_t id;
    float w;
    memcpy(probs, logits, sizeof probs);
    cpu_softmax(probs, 4);
    struct moe_router_cfg c = cfg_plain(4, 1, MOE_GATING_SOFTMAX);
    route(&c, logits, &id, &w);
    int ok = id == 0 && w == probs[0];
    c.bias = bias;
    int32_t id_b;
    float w_b;
    route(&c, logits, &id_b, &w_b);
    ok = ok && id_b == 1 && w_b == probs[1];
    test_report("moe_bias_flips_choice_not_weight", ok,
                "unbiased: %d (%g), biased: %d (%g); probs %g %g", id, (double)w, id_b, (double)w_b,
                (double)probs[0], (double)probs[1]);
}

/* Group 0 has the single best expert, group 1 the best pair. Without a bias (V2,
 * group_limited_greedy) the group maximum decides: group 0, experts 0 and then 1 (1, 2, 3 tie).
 * With a bias, even all zeros (V3, noaux_tc), the top-two sum decides: group 1, experts 4, 5. */
static void test_v2_v3_group_rules(void) {
    float logits[8] = {3.0f, 0, 0, 0, 2.5f, 2.5f, 0, 0}, zeros[8] = {0};
    int32_t ids[2];
    float w[2];
    struct moe_router_cfg c = cfg_grouped(8, 2, 2, 1, MOE_GATING_SOFTMAX);
    route(&c, logits, ids, w);
    int ok = ids[0] == 0 && ids[1] == 1;
    test_report("moe_group_rule_v2_max", ok, "ids %d %d, want 0 1", ids[0], ids[1]);
    c.bias = zeros;
    route(&c, logits, ids, w);
    ok = ids[0] == 4 && ids[1] == 5;
    test_report("moe_group_rule_v3_top2_sum", ok, "ids %d %d, want 4 5", ids[0], ids[1]);
}

/* The weights are the gate's own numbers, bit for bit, when neither norm nor scale applies,
 * and they are within 1e-6 of exact math. */
static void test_probs_exact(void) {
    float logits[16], probs[16], w[16];
    int32_t ids[16];
    int ok_bits = 1, ok_math = 1;
    for (int g = MOE_GATING_SOFTMAX; g <= MOE_GATING_SIGMOID; g++) {
        struct moe_router_cfg c = cfg_plain(16, 16, (enum moe_gating)g);
        fill_logits(logits, 16, SCORES_NORMAL);
        memcpy(probs, logits, sizeof probs);
        if (g == MOE_GATING_SOFTMAX) cpu_softmax(probs, 16);
        double sum = 0.0, mx = -INFINITY;
        for (int i = 0; i < 16; i++) mx = fmax(mx, logits[i]);
        for (int i = 0; i < 16; i++) sum += exp((double)logits[i] - mx);
        route(&c, logits, ids, w);
        for (int j = 0; j < 16; j++) {
            int i = ids[j];
            float bits = g == MOE_GATING_SIGMOID ? 1.0f / (1.0f + expf(-logits[i])) : probs[i];
            double exact = g == MOE_GATING_SIGMOID ? 1.0 / (1.0 + exp(-(double)logits[i]))
                                                   : exp((double)logits[i] - mx) / sum;
            ok_bits &= w[j] == bits;
            ok_math &= fabs(w[j] - exact) <= 1e-6 * exact;
        }
    }
    test_report("moe_weights_are_gate_bits", ok_bits, NULL);
    test_report("moe_weights_vs_exact_math", ok_math, NULL);
}

/* Tiny sigmoid weights: the sum is clamped to 2^-14 as llama.cpp does, so they stay tiny. */
static void test_norm_clamp_and_scale(void) {
    float logits[4] = {-20.0f, -21.0f, -22.0f, -23.0f};
    int32_t ids[2];
    float w[2];
    struct moe_router_cfg c = cfg_plain(4, 2, MOE_GATING_SIGMOID);
    c.norm_weights = 1;
    route(&c, logits, ids, w);
    float p0 = 1.0f / (1.0f + expf(20.0f));
    int ok = ids[0] == 0 && w[0] == p0 / 6.103515625e-5f && w[0] + w[1] < 0.01f;
    test_report("moe_norm_clamps_tiny_sum", ok, "w %g %g", (double)w[0], (double)w[1]);

    float lg[4] = {1.0f, 0.5f, -1.0f, 0.0f};
    float w1[2], w0[2], w25[2];
    c.norm_weights = 1;
    c.weights_scale = 1.0f;
    route(&c, lg, ids, w1);
    c.weights_scale = 0.0f;
    route(&c, lg, ids, w0);
    c.weights_scale = 2.5f;
    route(&c, lg, ids, w25);
    ok = w0[0] == w1[0] && w0[1] == w1[1] && w25[0] == w1[0] * 2.5f &&
         fabs(w1[0] + w1[1] - 1.0) < 1e-6;
    test_report("moe_scale_zero_is_none_and_multiplies", ok, "w %g %g, x2.5 %g", (double)w1[0],
                (double)w1[1], (double)w25[0]);
}

static void test_logits_untouched(void) {
    float logits[8], copy[8], w[2];
    int32_t ids[2];
    fill_logits(logits, 8, SCORES_NORMAL);
    memcpy(copy, logits, sizeof copy);
    struct moe_router_cfg c = cfg_plain(8, 2, MOE_GATING_SOFTMAX);
    route(&c, logits, ids, w);
    test_report("moe_logits_untouched", memcmp(logits, copy, sizeof copy) == 0, NULL);
}

/* ---- load checks ---- */

static void expect_rejected(const char *name, const struct moe_router_cfg *c, const char *key) {
    int rc = moe_router_cfg_validate(c, "models/x.gguf", "deepseek2");
    const char *msg = err_get();
    int ok = rc == -1 && strstr(msg, key) && strstr(msg, "models/x.gguf");
    test_report(name, ok, "rc %d, message '%s', want key %s", rc, msg, key);
}

static void test_validate(void) {
    float bias[16] = {0};
    struct moe_router_cfg c = cfg_plain(8, 9, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_used_over_count", &c, "deepseek2.expert_used_count");
    c = cfg_plain(8, 0, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_used_zero", &c, "deepseek2.expert_used_count");
    c = cfg_plain(0, 0, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_no_experts", &c, "deepseek2.expert_count");
    c = cfg_grouped(10, 2, 4, 2, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_groups_not_dividing", &c, "deepseek2.expert_group_count");
    c = cfg_grouped(8, 2, 8, 4, MOE_GATING_SIGMOID);
    c.bias = bias;
    expect_rejected("moe_validate_biased_groups_of_one", &c, "deepseek2.expert_group_count");
    c = cfg_grouped(16, 2, 4, 5, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_group_used_over_groups", &c, "deepseek2.expert_group_used_count");
    c = cfg_grouped(16, 2, 4, 0, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_group_used_zero", &c, "deepseek2.expert_group_used_count");
    c = cfg_grouped(16, 9, 4, 2, MOE_GATING_SOFTMAX);
    expect_rejected("moe_validate_groups_too_few_experts", &c, "deepseek2.expert_group_used_count");
    c = cfg_plain(8, 2, (enum moe_gating)3);
    expect_rejected("moe_validate_gating", &c, "deepseek2.expert_gating_func");
    c = cfg_plain(8, 2, MOE_GATING_SOFTMAX);
    c.weights_scale = NAN;
    expect_rejected("moe_validate_scale", &c, "deepseek2.expert_weights_scale");

    c = cfg_grouped(16, 8, 4, 2, MOE_GATING_SIGMOID); /* exactly enough experts */
    c.bias = bias;
    int ok = moe_router_cfg_validate(&c, "x.gguf", "deepseek2") == 0;
    c = cfg_grouped(8, 2, 1, 0, MOE_GATING_NONE); /* one group: group keys unused */
    ok = ok && moe_router_cfg_validate(&c, "x.gguf", "deepseek2") == 0;
    test_report("moe_validate_accepts_edges", ok, ok ? NULL : "%s", err_get());
}

int main(void) {
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) test_shape(&shapes[i]);
    test_all_equal();
    test_group_boundary_tie();
    test_bias_flips_choice();
    test_v2_v3_group_rules();
    test_probs_exact();
    test_norm_clamp_and_scale();
    test_logits_untouched();
    test_validate();
    TEST_EXIT();
}
