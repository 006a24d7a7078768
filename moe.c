/* The expert router. Order of operations, as llama.cpp's build_moe_ffn on the CPU:
 *   probs  = softmax(logits) or sigmoid(logits)       (the weights come from these)
 *   select = probs + exp_probs_b when the file has it  (choosing only)
 *   groups: score each group, keep the best n_group_used, drop the others' experts
 *   ids    = the n_expert_used best remaining experts by select, best first
 *   w      = probs[ids]; if norm: w / max(sum w, 2^-14); if scale not 0 or 1: w * scale
 * Ties: llama.cpp sorts with std::sort, which for 16 or fewer items (the fixtures' 4 to 16
 * experts) is an insertion sort and keeps equal scores in index order; for more the order of
 * equal scores is unspecified. We keep
 * the lower expert id (and the lower group id) first on equal scores, always, so choices are
 * reproducible and equal llama.cpp's wherever llama.cpp's are defined. */
#include "moe.h"

#include <math.h>

#include "cpu.h"
#include "util.h"

/* llama.cpp clamps the sum of the chosen weights to the smallest normal F16 before dividing. */
#define MOE_MIN_WEIGHT_SUM 6.103515625e-5f

/* Views into the caller's scratch; every element is 4 bytes, so no padding is needed. */
struct route_scratch {
    float *probs;       /* (n_expert) unbiased scores */
    float *select;      /* (n_expert) biased scores, only with a bias */
    int32_t *group_ids; /* (n_group_used) chosen groups */
    float *group_best;  /* (n_group_used) their scores while choosing */
    float *top_score;   /* (n_expert_used) chosen experts' scores while choosing */
};

static int has_groups(const struct moe_router_cfg *cfg) {
    return cfg->n_group > 1 && cfg->n_group_used < cfg->n_group;
}

size_t moe_route_scratch_bytes(const struct moe_router_cfg *cfg) {
    size_t n = 2 * (size_t)cfg->n_expert + (size_t)cfg->n_expert_used;
    if (cfg->n_group > 1) n += 2 * (size_t)cfg->n_group_used;
    return n * 4;
}

static struct route_scratch carve_scratch(const struct moe_router_cfg *cfg, void *scratch) {
    float *p = scratch;
    struct route_scratch s;
    s.probs = p, p += cfg->n_expert;
    s.select = p, p += cfg->n_expert;
    s.top_score = p, p += cfg->n_expert_used;
    s.group_ids = (int32_t *)p; /* these two are unused without groups */
    if (cfg->n_group > 1) p += cfg->n_group_used;
    s.group_best = p;
    return s;
}

/* ggml's CPU sigmoid is this formula with the C library's expf (no SIMD approximation). */
static void sigmoid_row(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

static void gate_probs(const struct moe_router_cfg *cfg, const float *logits, float *probs) {
    if (cfg->gating == MOE_GATING_SIGMOID) {
        sigmoid_row(probs, logits, cfg->n_expert);
        return;
    }
    for (int i = 0; i < cfg->n_expert; i++) probs[i] = logits[i];
    cpu_softmax(probs, cfg->n_expert);
}

/* Keeps the k best (id, score) pairs offered so far in ids/best, best first. Offering ids in
 * ascending order and inserting only before strictly lower scores is what puts the lower id
 * first on a tie. */
static void top_offer(int32_t *ids, float *best, int *n, int k, int32_t id, float score) {
    int pos = *n;
    while (pos > 0 && score > best[pos - 1]) pos--;
    if (pos >= k) return;
    int last = *n < k ? *n : k - 1;
    for (int j = last; j > pos; j--) ids[j] = ids[j - 1], best[j] = best[j - 1];
    ids[pos] = id, best[pos] = score;
    if (*n < k) (*n)++;
}

/* A group's score. DeepSeek's official code (modeling_deepseek.py) differs by version:
 *   V3 (noaux_tc, the files with exp_probs_b): the sum of the group's two best biased scores;
 *   V2 / V2.5 (group_limited_greedy, no bias):   the group's maximum score.
 * llama.cpp sums the top two for every file, which changes which groups V2 / V2.5 models use;
 * we follow DeepSeek. The sum goes through double, as ggml's sum_rows does. */
static float group_score(const float *s, int n, int top_two) {
    float a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (s[i] > a)
            b = a, a = s[i];
        else if (s[i] > b)
            b = s[i];
    }
    return top_two ? (float)((double)a + (double)b) : a;
}

static void sort_ids_ascending(int32_t *ids, int n) {
    for (int i = 1; i < n; i++) {
        int32_t v = ids[i];
        int j = i;
        for (; j > 0 && ids[j - 1] > v; j--) ids[j] = ids[j - 1];
        ids[j] = v;
    }
}

/* The n_group_used best groups, returned in ascending group order so that their experts are
 * offered to top_offer in ascending id order. */
static void choose_groups(const struct moe_router_cfg *cfg, const float *select,
                          const struct route_scratch *s) {
    int per_group = cfg->n_expert / cfg->n_group, n = 0;
    for (int g = 0; g < cfg->n_group; g++) {
        float score = group_score(select + g * per_group, per_group, cfg->bias != NULL);
        top_offer(s->group_ids, s->group_best, &n, cfg->n_group_used, g, score);
    }
    sort_ids_ascending(s->group_ids, cfg->n_group_used);
}

static void choose_experts(const struct moe_router_cfg *cfg, const float *select,
                           const struct route_scratch *s, int32_t *ids) {
    int n = 0, k = cfg->n_expert_used;
    if (!has_groups(cfg)) {
        for (int i = 0; i < cfg->n_expert; i++) top_offer(ids, s->top_score, &n, k, i, select[i]);
        return;
    }
    int per_group = cfg->n_expert / cfg->n_group;
    choose_groups(cfg, select, s);
    for (int j = 0; j < cfg->n_group_used; j++) {
        int first = s->group_ids[j] * per_group;
        for (int i = first; i < first + per_group; i++)
            top_offer(ids, s->top_score, &n, k, i, select[i]);
    }
}

/* ggml sums the row in double and rounds once; the division is a true division. */
static void finish_weights(const struct moe_router_cfg *cfg, const float *probs, const int32_t *ids,
                           float *w) {
    int k = cfg->n_expert_used;
    for (int j = 0; j < k; j++) w[j] = probs[ids[j]];
    if (cfg->norm_weights) {
        double sum = 0.0;
        for (int j = 0; j < k; j++) sum += (double)w[j];
        float denom = fmaxf((float)sum, MOE_MIN_WEIGHT_SUM);
        for (int j = 0; j < k; j++) w[j] = w[j] / denom;
    }
    if (cfg->weights_scale != 0.0f && cfg->weights_scale != 1.0f)
        for (int j = 0; j < k; j++) w[j] *= cfg->weights_scale;
}

void moe_route(const struct moe_router_cfg *cfg, const float *logits, void *scratch, int32_t *ids,
               float *weights) {
    struct route_scratch s = carve_scratch(cfg, scratch);
    gate_probs(cfg, logits, s.probs);
    const float *select = s.probs;
    if (cfg->bias) {
        for (int i = 0; i < cfg->n_expert; i++) s.select[i] = s.probs[i] + cfg->bias[i];
        select = s.select;
    }
    choose_experts(cfg, select, &s, ids);
    finish_weights(cfg, s.probs, ids, weights);
}

/* ---- checks at load ---- */

static int validate_groups(const struct moe_router_cfg *c, const char *path, const char *arch) {
    if (c->n_group < 0) {
        err_set("moe: %s: %s.expert_group_count = %d is negative", path, arch, c->n_group);
        return -1;
    }
    if (c->n_group <= 1) return 0;
    int per_group = c->n_expert / c->n_group;
    if (c->n_expert % c->n_group != 0 || (c->bias && per_group < 2)) {
        err_set("moe: %s: %s.expert_group_count = %d must divide %s.expert_count = %d into "
                "groups of %s",
                path, arch, c->n_group, arch, c->n_expert,
                c->bias ? "two or more (a biased group score sums its best two)" : "equal size");
        return -1;
    }
    if (c->n_group_used < 1 || c->n_group_used > c->n_group) {
        err_set("moe: %s: %s.expert_group_used_count = %d is outside 1..%d (%s.expert_group_count)",
                path, arch, c->n_group_used, c->n_group, arch);
        return -1;
    }
    if ((long)c->n_group_used * per_group < c->n_expert_used) {
        err_set("moe: %s: %s.expert_group_used_count = %d groups of %d experts hold fewer than "
                "%s.expert_used_count = %d",
                path, arch, c->n_group_used, per_group, arch, c->n_expert_used);
        return -1;
    }
    return 0;
}

int moe_router_cfg_validate(const struct moe_router_cfg *c, const char *path, const char *arch) {
    if (c->n_expert < 1) {
        err_set("moe: %s: %s.expert_count = %d, expected at least 1", path, arch, c->n_expert);
        return -1;
    }
    if (c->n_expert_used < 1 || c->n_expert_used > c->n_expert) {
        err_set("moe: %s: %s.expert_used_count = %d is outside 1..%d (%s.expert_count)", path, arch,
                c->n_expert_used, c->n_expert, arch);
        return -1;
    }
    if (c->gating != MOE_GATING_NONE && c->gating != MOE_GATING_SOFTMAX &&
        c->gating != MOE_GATING_SIGMOID) {
        err_set("moe: %s: %s.expert_gating_func = %d, expected 1 (softmax) or 2 (sigmoid)", path,
                arch, (int)c->gating);
        return -1;
    }
    if (!isfinite(c->weights_scale)) {
        err_set("moe: %s: %s.expert_weights_scale = %g is not finite", path, arch,
                (double)c->weights_scale);
        return -1;
    }
    return validate_groups(c, path, arch);
}
