/* Token sampling. The chain follows llama.cpp's common default order:
 *   repetition penalty -> top-k -> top-p -> min-p -> temperature -> softmax -> draw.
 * top-p and min-p therefore judge the distribution at temperature 1, as llama.cpp's do.
 * At temp <= 0 the penalty still applies (as in llama.cpp) and the pick is the argmax,
 * ties going to the lowest id. Every buffer is allocated in sampler_new; sampling allocates
 * nothing. */
#include "sampler.h"

#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    struct sampler_params p;
    int32_t n_vocab;
    float *logits;   /* (n_vocab) working copy of the caller's logits */
    int32_t *cand;   /* (n_vocab) candidate ids still in play */
    float *probs;    /* (n_vocab) probabilities of cand[i] */
    uint8_t *seen;   /* (n_vocab) marks tokens already penalized in this step */
    int32_t *recent; /* (repeat_last_n) ring of accepted tokens */
    int32_t n_recent, recent_head;
    uint64_t rng[4]; /* xoshiro256** state */
};

void sampler_params_default(struct sampler_params *p) {
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0; /* fixed so that a run is reproducible unless the caller picks a seed */
}

/* ---- PRNG: xoshiro256**, seeded through splitmix64 so that nearby seeds diverge ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- setup ---- */

static int params_valid(const struct sampler_params *p, int32_t n_vocab) {
    if (n_vocab <= 0) {
        err_set("sampler_new: n_vocab must be positive, got %d", n_vocab);
        return 0;
    }
    /* The negated comparisons also reject NaN. */
    if (!(p->temp >= 0.0f) || isinf(p->temp)) {
        err_set("sampler_new: temperature must be finite and >= 0, got %g", p->temp);
        return 0;
    }
    if (p->top_k < 0) {
        err_set("sampler_new: top-k must be >= 0 (0 = off), got %d", p->top_k);
        return 0;
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        err_set("sampler_new: top-p must be in (0, 1], got %g", p->top_p);
        return 0;
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        err_set("sampler_new: min-p must be in [0, 1], got %g", p->min_p);
        return 0;
    }
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty)) {
        err_set("sampler_new: repeat penalty must be finite and > 0, got %g", p->repeat_penalty);
        return 0;
    }
    if (p->repeat_last_n < 0) {
        err_set("sampler_new: repeat-last-n must be >= 0, got %d", p->repeat_last_n);
        return 0;
    }
    return 1;
}

struct sampler *sampler_new(const struct sampler_params *p, int32_t n_vocab) {
    if (!params_valid(p, n_vocab)) return NULL;
    struct sampler *s = xcalloc(1, sizeof *s);
    s->p = *p;
    s->n_vocab = n_vocab;
    s->logits = xmalloc((size_t)n_vocab * sizeof *s->logits);
    s->cand = xmalloc((size_t)n_vocab * sizeof *s->cand);
    s->probs = xmalloc((size_t)n_vocab * sizeof *s->probs);
    s->seen = xcalloc((size_t)n_vocab, 1);
    s->recent = xmalloc((size_t)(p->repeat_last_n ? p->repeat_last_n : 1) * sizeof *s->recent);
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
}

void sampler_free(struct sampler *s) {
    if (!s) return;
    free(s->logits);
    free(s->cand);
    free(s->probs);
    free(s->seen);
    free(s->recent);
    free(s);
}

void sampler_accept(struct sampler *s, int32_t token) {
    int32_t n = s->p.repeat_last_n;
    if (n == 0 || token < 0 || token >= s->n_vocab) return;
    s->recent[s->recent_head] = token;
    s->recent_head = (s->recent_head + 1) % n;
    if (s->n_recent < n) s->n_recent++;
}

/* ---- chain steps ---- */

/* llama.cpp's rule: each distinct recent token once, positive logits divided by the
 * penalty, the others multiplied, so that a penalty > 1 always makes the token less likely. */
static void apply_repeat_penalty(struct sampler *s) {
    float pen = s->p.repeat_penalty;
    if (pen == 1.0f || s->n_recent == 0) return;
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i];
        if (s->seen[t]) continue;
        s->seen[t] = 1;
        s->logits[t] = s->logits[t] <= 0.0f ? s->logits[t] * pen : s->logits[t] / pen;
    }
    for (int32_t i = 0; i < s->n_recent; i++) s->seen[s->recent[i]] = 0;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* strict: ties keep the lower id */
    return best;
}

/* Candidate order: higher logit first, then lower id, so results are fully determined. */
static int ranks_before(const float *logits, int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

/* Min-heap (worst candidate at the root): top-k in O(n log k), and heapsort without the
 * global context qsort's comparator would need. */
static void heap_sift_down(const float *logits, int32_t *h, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && ranks_before(logits, h[w], h[l])) w = l;
        if (r < n && ranks_before(logits, h[w], h[r])) w = r;
        if (w == i) return;
        int32_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void heapify(const float *logits, int32_t *h, int32_t n) {
    for (int32_t i = n / 2 - 1; i >= 0; i--) heap_sift_down(logits, h, n, i);
}

/* Moving the worst to the back each round leaves the array best first. */
static void sort_cand(const float *logits, int32_t *cand, int32_t n) {
    heapify(logits, cand, n);
    for (int32_t end = n - 1; end > 0; end--) {
        int32_t t = cand[0];
        cand[0] = cand[end];
        cand[end] = t;
        heap_sift_down(logits, cand, end, 0);
    }
}

/* Leaves the k best ids in cand[0..k), sorted best first. */
static void top_k_select(const float *logits, int32_t n_vocab, int32_t *cand, int32_t k) {
    for (int32_t i = 0; i < k; i++) cand[i] = i;
    heapify(logits, cand, k);
    for (int32_t t = k; t < n_vocab; t++) {
        if (!ranks_before(logits, t, cand[0])) continue;
        cand[0] = t;
        heap_sift_down(logits, cand, k, 0);
    }
    sort_cand(logits, cand, k);
}

/* probs[i] = softmax over the candidates of logits[cand[i]] / temp. */
static void softmax_cand(const float *logits, const int32_t *cand, int32_t n, float temp,
                         float *probs) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++) mx = fmaxf(mx, logits[cand[i]]);
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        /* An all -inf row would give NaN; treat it as uniform. */
        float e = isinf(mx) ? 1.0f : expf((logits[cand[i]] - mx) / temp);
        probs[i] = e;
        sum += e;
    }
    for (int32_t i = 0; i < n; i++) probs[i] = (float)(probs[i] / sum);
}

/* Smallest prefix of the sorted candidates whose probability reaches p (at least one). */
static int32_t top_p_cut(struct sampler *s, int32_t n) {
    softmax_cand(s->logits, s->cand, n, 1.0f, s->probs);
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += s->probs[i];
        if (cum >= s->p.top_p) return i + 1;
    }
    return n;
}

/* Keeps candidates with prob >= min_p * max prob, i.e. logit >= max logit + log(min_p).
 * Order is preserved; the best candidate always survives. */
static int32_t min_p_cut(struct sampler *s, int32_t n) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++) mx = fmaxf(mx, s->logits[s->cand[i]]);
    float min_logit = mx + logf(s->p.min_p);
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++)
        if (s->logits[s->cand[i]] >= min_logit) s->cand[kept++] = s->cand[i];
    return kept ? kept : n;
}

static int32_t draw(struct sampler *s, int32_t n) {
    softmax_cand(s->logits, s->cand, n, s->p.temp, s->probs);
    double u = rng_uniform(s->rng), cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += s->probs[i];
        if (u < cum) return s->cand[i];
    }
    return s->cand[n - 1]; /* rounding left u just above the total */
}

int32_t sampler_sample(struct sampler *s, const float *logits) {
    int32_t nv = s->n_vocab;
    memcpy(s->logits, logits, (size_t)nv * sizeof *logits);
    apply_repeat_penalty(s);
    if (s->p.temp <= 0.0f) return argmax(s->logits, nv);

    int32_t n = nv, sorted = 0;
    if (s->p.top_k > 0 && s->p.top_k < nv) {
        n = s->p.top_k;
        top_k_select(s->logits, nv, s->cand, n);
        sorted = 1;
    } else {
        for (int32_t i = 0; i < nv; i++) s->cand[i] = i;
    }
    if (s->p.top_p < 1.0f) {
        if (!sorted) sort_cand(s->logits, s->cand, n);
        n = top_p_cut(s, n);
    }
    if (s->p.min_p > 0.0f) n = min_p_cut(s, n);
    return draw(s, n);
}
