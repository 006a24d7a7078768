/* Sampler: greedy, reproducibility, and the filters checked against exact probabilities. */
#include "sampler.h"
#include "test.h"
#include "util.h"

#include <math.h>
#include <string.h>

/* Draw counts are compared with exact probabilities. With N = 200000 draws a frequency has
 * standard deviation sqrt(p(1-p)/N) <= 0.00112; a tolerance of 0.006 is over 5 sigma, and
 * the seed is fixed, so the check is deterministic yet would catch any real bias (a wrong
 * filter or temperature moves some frequency by 0.02 or more in these cases). */
#define N_DRAWS 200000
#define FREQ_TOL 0.006

static struct sampler_params params_off(void) {
    struct sampler_params p;
    sampler_params_default(&p);
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.seed = 1234;
    return p;
}

/* Logits whose softmax is exactly probs (log of each). */
static void logits_from_probs(const double *probs, float *logits, int n) {
    for (int i = 0; i < n; i++) logits[i] = probs[i] > 0 ? (float)log(probs[i]) : -INFINITY;
}

/* Draws N_DRAWS tokens and compares the frequencies with want[]; returns 1 when all fit. */
static int check_freqs(const char *name, const struct sampler_params *p, const float *logits,
                       const double *want, int n) {
    struct sampler *s = sampler_new(p, n);
    if (!s) return test_report(name, 0, "sampler_new: %s", err_get());
    long counts[16] = {0};
    for (int i = 0; i < N_DRAWS; i++) {
        int32_t t = sampler_sample(s, logits);
        if (t < 0 || t >= n) {
            sampler_free(s);
            return test_report(name, 0, "token %d out of range", t);
        }
        counts[t]++;
    }
    sampler_free(s);
    for (int i = 0; i < n; i++) {
        double f = (double)counts[i] / N_DRAWS;
        if (want[i] == 0.0 && counts[i] != 0)
            return test_report(name, 0, "token %d drawn %ld times, must be excluded", i, counts[i]);
        if (fabs(f - want[i]) > FREQ_TOL)
            return test_report(name, 0, "token %d frequency %.4f, expected %.4f", i, f, want[i]);
    }
    return test_report(name, 1, NULL);
}

static void test_greedy(void) {
    struct sampler_params p = params_off();
    p.temp = 0.0f;
    float logits[6] = {0.1f, -3.0f, 2.5f, 2.4f, 2.5f, -INFINITY};
    struct sampler *s = sampler_new(&p, 6);
    int32_t t = sampler_sample(s, logits);
    test_report("sampler_greedy_argmax_lowest_tie", t == 2, "got %d, want 2", t);
    logits[3] = 7.0f;
    t = sampler_sample(s, logits);
    test_report("sampler_greedy_argmax", t == 3, "got %d, want 3", t);
    sampler_free(s);
}

static void fill_sequence(uint64_t seed, int32_t *out, int n) {
    struct sampler_params p = params_off();
    p.seed = seed;
    float logits[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* uniform: every draw is pure RNG */
    struct sampler *s = sampler_new(&p, 8);
    for (int i = 0; i < n; i++) out[i] = sampler_sample(s, logits);
    sampler_free(s);
}

static void test_seed(void) {
    enum { N = 64 };
    int32_t a[N], b[N], c[N];
    fill_sequence(42, a, N);
    fill_sequence(42, b, N);
    fill_sequence(43, c, N);
    test_report("sampler_same_seed_same_sequence", memcmp(a, b, sizeof a) == 0,
                "two runs with seed 42 must match");
    /* Two independent uniform sequences over 8 values agree everywhere with prob 8^-64. */
    test_report("sampler_different_seed_differs", memcmp(a, c, sizeof a) != 0,
                "seeds 42 and 43 must give different sequences");
}

static float rand_logit(uint64_t *x) {
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*x >> 40) % 2000) / 100.0f - 10.0f;
}

static void test_top_k_1_is_greedy(void) {
    enum { NV = 50 };
    struct sampler_params p = params_off();
    p.top_k = 1;
    struct sampler_params g = params_off();
    g.temp = 0.0f;
    struct sampler *s = sampler_new(&p, NV), *sg = sampler_new(&g, NV);
    uint64_t x = 7;
    float logits[NV];
    int ok = 1, trial = 0;
    for (trial = 0; trial < 500 && ok; trial++) {
        for (int i = 0; i < NV; i++) logits[i] = rand_logit(&x); /* ties occur: 2000 levels */
        ok = sampler_sample(s, logits) == sampler_sample(sg, logits);
    }
    test_report("sampler_top_k_1_equals_greedy", ok, "%d trials, last %d", trial, trial - 1);
    sampler_free(s);
    sampler_free(sg);
}

static void test_top_k_large(void) {
    enum { NV = 300 };
    struct sampler_params p = params_off();
    p.top_k = 37;
    float logits[NV];
    uint64_t x = 99;
    for (int i = 0; i < NV; i++) logits[i] = rand_logit(&x);
    /* The k-th best logit: no draw may fall below it. */
    float sorted[NV];
    memcpy(sorted, logits, sizeof sorted);
    for (int i = 0; i < NV; i++)
        for (int j = i + 1; j < NV; j++)
            if (sorted[j] > sorted[i]) {
                float t = sorted[i];
                sorted[i] = sorted[j];
                sorted[j] = t;
            }
    float kth = sorted[p.top_k - 1];
    struct sampler *s = sampler_new(&p, NV);
    int ok = 1;
    int32_t bad = -1;
    for (int i = 0; i < 20000 && ok; i++) {
        int32_t t = sampler_sample(s, logits);
        if (logits[t] < kth) ok = 0, bad = t;
    }
    sampler_free(s);
    test_report("sampler_top_k_excludes_rest", ok, "first draw below the k-th logit %g: %d", kth,
                bad);
}

static void test_distributions(void) {
    static const double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    logits_from_probs(probs, logits, 4);

    struct sampler_params p = params_off();
    check_freqs("sampler_plain_softmax_frequencies", &p, logits, probs, 4);

    /* top-p 0.75: 0.5 < 0.75 <= 0.5 + 0.3, so {0, 1} remain, renormalized. */
    p = params_off();
    p.top_p = 0.75f;
    double want_p[4] = {0.5 / 0.8, 0.3 / 0.8, 0, 0};
    check_freqs("sampler_top_p_frequencies", &p, logits, want_p, 4);

    /* top-p 0.1: the best token alone reaches it. */
    p.top_p = 0.1f;
    double want_p1[4] = {1, 0, 0, 0};
    check_freqs("sampler_top_p_keeps_at_least_one", &p, logits, want_p1, 4);

    /* min-p 0.2: threshold 0.2 * 0.5 = 0.1 drops only the 0.05 token. */
    p = params_off();
    p.min_p = 0.2f;
    double want_m[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_freqs("sampler_min_p_frequencies", &p, logits, want_m, 4);

    /* Temperature 2 on the unfiltered distribution: probs proportional to sqrt(p). */
    p = params_off();
    p.temp = 2.0f;
    double want_t[4], z = 0;
    for (int i = 0; i < 4; i++) z += sqrt(probs[i]);
    for (int i = 0; i < 4; i++) want_t[i] = sqrt(probs[i]) / z;
    check_freqs("sampler_temperature_frequencies", &p, logits, want_t, 4);

    /* Chain order: top-p and min-p see temperature-1 probabilities (as llama.cpp), then
     * temperature 0.5 squares and renormalizes the survivors {0, 1, 2}. */
    p = params_off();
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.temp = 0.5f;
    double want_c[4] = {0.25 / 0.3625, 0.09 / 0.3625, 0.0225 / 0.3625, 0};
    check_freqs("sampler_chain_order_frequencies", &p, logits, want_c, 4);
}

static void test_repeat_penalty(void) {
    struct sampler_params p = params_off();
    p.temp = 0.0f;
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    float pos[3] = {2.0f, 1.9f, 0.0f}; /* 2.0 / 1.1 = 1.82 < 1.9 */
    struct sampler *s = sampler_new(&p, 3);
    int32_t before = sampler_sample(s, pos);
    sampler_accept(s, 0);
    sampler_accept(s, 0); /* a repeated token is penalized once, not twice */
    int32_t after = sampler_sample(s, pos);
    test_report("sampler_repeat_penalty_positive", before == 0 && after == 1,
                "picks %d then %d, want 0 then 1", before, after);

    float pos2[3] = {2.0f, 1.7f, 0.0f}; /* once: 1.82 > 1.7; twice would be 1.65 < 1.7 */
    int32_t once = sampler_sample(s, pos2);
    test_report("sampler_repeat_penalty_once_per_token", once == 0, "picked %d, want 0", once);

    float neg[3] = {-1.0f, -1.05f, -5.0f}; /* -1.0 * 1.1 = -1.1 < -1.05 */
    int32_t n = sampler_sample(s, neg);
    test_report("sampler_repeat_penalty_negative", n == 1, "picked %d, want 1", n);

    sampler_accept(s, 2);
    sampler_accept(s, 2); /* token 0 leaves the window of 2 */
    int32_t out = sampler_sample(s, pos);
    test_report("sampler_repeat_penalty_window", out == 0, "picked %d, want 0", out);
    sampler_free(s);
}

static void test_invalid_params(void) {
    struct sampler_params p = params_off();
    int ok = 1;
    p.top_p = 0.0f;
    ok &= sampler_new(&p, 10) == NULL;
    p = params_off();
    p.temp = NAN;
    ok &= sampler_new(&p, 10) == NULL;
    p = params_off();
    p.min_p = 1.5f;
    ok &= sampler_new(&p, 10) == NULL;
    p = params_off();
    p.repeat_last_n = -1;
    ok &= sampler_new(&p, 10) == NULL;
    p = params_off();
    ok &= sampler_new(&p, 0) == NULL;
    test_report("sampler_rejects_invalid_params", ok, "%s",
                ok ? "" : "an invalid setting was accepted");
}

int main(void) {
    test_greedy();
    test_seed();
    test_top_k_1_is_greedy();
    test_top_k_large();
    test_distributions();
    test_repeat_penalty();
    test_invalid_params();
    TEST_EXIT();
}
