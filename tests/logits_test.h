/* What the logits tests share: the compat fixtures' token ids, reading reference logits,
 * the compat README's comparison (max |diff|, argmax where the gap is clear) and running a
 * model in one batch or one token at a time. */
#ifndef MOERUN_LOGITS_TEST_H
#define MOERUN_LOGITS_TEST_H

#include "model.h"
#include "test.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const int32_t compat_tokens[] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315,
                                        421, 395, 317, 426, 3,   511, 130, 259, 2,   62,  499, 403};
enum { N_COMPAT = sizeof compat_tokens / sizeof compat_tokens[0] };

__attribute__((unused)) static float *read_floats(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    float *v = xmalloc(n * sizeof *v);
    size_t got = fread(v, sizeof *v, n, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    if (got != n || extra) {
        free(v);
        return NULL;
    }
    return v;
}

struct diff {
    float max_abs;
    int argmax_mismatch; /* positions with a clear gap whose argmax differs */
    int clear;           /* positions with a clear gap */
};

__attribute__((unused)) static int argmax_and_gap(const float *row, int n, float *gap) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && row[i] > second) second = row[i];
    *gap = row[best] - second;
    return best;
}

/* max |got - want|, and the argmax at positions whose top-1/top-2 gap in want exceeds clear_gap. */
__attribute__((unused)) static struct diff compare(const float *got, const float *want, int n_tok,
                                                   int n_vocab, float clear_gap) {
    struct diff d = {0, 0, 0};
    for (int t = 0; t < n_tok; t++) {
        const float *g = got + (size_t)t * n_vocab, *w = want + (size_t)t * n_vocab;
        for (int i = 0; i < n_vocab; i++) {
            float e = fabsf(g[i] - w[i]);
            if (!(e <= d.max_abs)) d.max_abs = e; /* NaN propagates as a failure */
        }
        float gap, unused;
        int aw = argmax_and_gap(w, n_vocab, &gap);
        if (gap > clear_gap) {
            d.clear++;
            if (argmax_and_gap(g, n_vocab, &unused) != aw) d.argmax_mismatch++;
        }
    }
    return d;
}

enum path { PATH_BATCH, PATH_DECODE, PATH_CHUNKS };

/* PATH_CHUNKS: batches of this many tokens, so that batches start past position 0. */
enum { TEST_CHUNK = 13 };

/* Logits of every position: in one batch, one token at a time, or in chunks. */
__attribute__((unused)) static float *run_model(struct model *m, const int32_t *ids, int n,
                                                enum path path) {
    float *logits = xmalloc((size_t)n * m->hp.n_vocab * sizeof(float));
    int rc = 0;
    int step = path == PATH_BATCH ? n : path == PATH_CHUNKS ? TEST_CHUNK : 1;
    for (int i = 0; i < n && rc == 0; i += step) {
        int k = n - i < step ? n - i : step;
        rc = model_forward(m, ids + i, k, i, logits + (size_t)i * m->hp.n_vocab, 1);
    }
    if (rc < 0) {
        free(logits);
        return NULL;
    }
    return logits;
}

#endif
