/* The Mixture-of-Experts router: from one token's router logits to the experts it uses and
 * their weights, computed as llama.cpp's build_moe_ffn does on the CPU (except the V2 group
 * score, see moe.c), so that expert choices and weights agree with llama.cpp's files. */
#ifndef MOERUN_MOE_H
#define MOERUN_MOE_H

#include <stddef.h>
#include <stdint.h>

/* GGUF `<arch>.expert_gating_func` values; 0 (key absent) means softmax. */
enum moe_gating { MOE_GATING_NONE = 0, MOE_GATING_SOFTMAX = 1, MOE_GATING_SIGMOID = 2 };

struct moe_router_cfg {
    int n_expert;      /* expert_count */
    int n_expert_used; /* expert_used_count: experts per token */
    enum moe_gating gating;
    const float *bias;   /* exp_probs_b (n_expert): for choosing only, never in weights; or NULL */
    int n_group;         /* expert_group_count; 0 or 1: no groups */
    int n_group_used;    /* expert_group_used_count */
    int norm_weights;    /* expert_weights_norm: chosen weights divided by their sum */
    float weights_scale; /* expert_weights_scale; 0 and 1 both mean none, as in llama.cpp */
};

/* Checks a configuration read from a file: returns 0, or -1 with err_set naming `path` and
 * the offending `<arch>.*` key. moe_route trusts a configuration that passed. */
int moe_router_cfg_validate(const struct moe_router_cfg *cfg, const char *path, const char *arch);

/* Bytes of scratch moe_route needs for cfg (4-byte aligned); allocate once at load. */
size_t moe_route_scratch_bytes(const struct moe_router_cfg *cfg);

/* One token: logits (n_expert) = ffn_gate_inp . x, left unchanged. Writes the chosen expert
 * ids (n_expert_used), best first by (biased) score, equal scores in ascending id order, and
 * their weights (n_expert_used). Summing the experts' outputs in this order (out = e[0] + e[1],
 * then + e[2], ...) is llama.cpp's order. No allocation; scratch as sized above. */
void moe_route(const struct moe_router_cfg *cfg, const float *logits, void *scratch, int32_t *ids,
               float *weights);

#endif
