/* What the router tests share (test_moe.c against a sort-based reference, test_vk_attn_router.c
 * for the GPU kernel): the router inputs they draw. */
#ifndef MOERUN_ROUTER_TEST_H
#define MOERUN_ROUTER_TEST_H

#include "moe.h"
#include "rng_test.h"

/* A router configuration to test: a model's expert count, choices, groups, gating, bias,
 * weight normalization and scale. */
struct shape {
    const char *name;
    int n_expert, n_used, n_group, n_group_used;
    enum moe_gating gating;
    int has_bias, norm;
    float scale;
};

enum score_kind { SCORES_NORMAL, SCORES_TIED, SCORES_EQUAL, SCORES_VERY_NEGATIVE, N_SCORE_KINDS };

/* TIED draws from five values, so exact ties within and across groups, across the softmax's
 * 16-value chunks and its tail, and at every boundary are common; VERY_NEGATIVE drives sigmoid
 * weights below the normalization clamp. */
__attribute__((unused)) static void fill_logits(float *x, int n, enum score_kind kind) {
    for (int i = 0; i < n; i++) {
        switch (kind) {
        case SCORES_NORMAL:
            x[i] = 2.0f * rng_normal();
            break;
        case SCORES_TIED:
            x[i] = 0.5f * (float)(rng_int(5) - 2);
            break;
        case SCORES_EQUAL:
            x[i] = -1.25f;
            break;
        default:
            x[i] = -20.0f - (float)rng_int(10);
            break;
        }
    }
}

/* Biases of the fixtures' size (0.05), coarse ones that tie and flip choices, and zeros. */
__attribute__((unused)) static void fill_bias(float *b, int n, int kind) {
    for (int i = 0; i < n; i++)
        b[i] = kind == 0 ? 0.05f * rng_normal() : kind == 1 ? 0.25f * (float)(rng_int(3) - 1) : 0;
}

#endif
