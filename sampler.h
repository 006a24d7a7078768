/* Token sampling: greedy at temp 0; otherwise repetition penalty, top-k, top-p, min-p and
 * temperature over a seeded RNG, so a seed reproduces a run. */
#ifndef MOERUN_SAMPLER_H
#define MOERUN_SAMPLER_H

#include <stdint.h>

struct sampler_params {
    float temp;            /* 0: greedy */
    int32_t top_k;         /* 0: off */
    float top_p;           /* 1: off */
    float min_p;           /* 0: off */
    float repeat_penalty;  /* 1: off */
    int32_t repeat_last_n; /* window of recent tokens the penalty looks at */
    uint64_t seed;
};

void sampler_params_default(struct sampler_params *p);

struct sampler; /* opaque; owns its scratch, sized at init */

/* NULL with err set when a parameter is out of range (temp < 0, top_p outside (0, 1], min_p
 * outside [0, 1], repeat_penalty <= 0, repeat_last_n < 0, NaN anywhere, n_vocab <= 0). */
struct sampler *sampler_new(const struct sampler_params *p, int32_t n_vocab);
void sampler_free(struct sampler *s);
/* Records a token (prompt or generated) for the repetition window. */
void sampler_accept(struct sampler *s, int32_t token);
/* Picks the next token from logits (n_vocab values; the sampler may modify a copy only). */
int32_t sampler_sample(struct sampler *s, const float *logits);

#endif
