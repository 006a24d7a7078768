/* Architectures: hyper-parameters from GGUF metadata, tensors bound by their llama.cpp names
 * from one table, and the forward pass written once against the CPU backend's ops. */
#ifndef MOERUN_MODEL_H
#define MOERUN_MODEL_H

#include "cpu.h"
#include "gguf.h"
#include "moe.h"
#include "vk_model.h"

#include <stdint.h>

struct tokenizer;

enum arch_id { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN2MOE, ARCH_QWEN3MOE, ARCH_DEEPSEEK2, ARCH_COUNT };

/* Weight slots: one row each in model.c's tensor tables. */
enum weight_slot {
    W_TOKEN_EMBD,
    W_OUTPUT_NORM,
    W_OUTPUT,
    W_ROPE_FREQS,
    W_ATTN_NORM,
    W_ATTN_Q,
    W_ATTN_K,
    W_ATTN_V,
    W_ATTN_Q_BIAS,
    W_ATTN_K_BIAS,
    W_ATTN_V_BIAS,
    W_ATTN_Q_NORM,
    W_ATTN_K_NORM,
    W_ATTN_Q_A,
    W_ATTN_Q_A_NORM,
    W_ATTN_Q_B,
    W_ATTN_KV_A_MQA,
    W_ATTN_KV_A_NORM,
    W_ATTN_K_B,
    W_ATTN_V_B,
    W_ATTN_KV_B,
    W_ATTN_OUT,
    W_FFN_NORM,
    W_FFN_GATE,
    W_FFN_UP,
    W_FFN_DOWN,
    W_FFN_GATE_INP,
    W_FFN_EXP_PROBS_B,
    W_FFN_GATE_EXPS,
    W_FFN_UP_EXPS,
    W_FFN_DOWN_EXPS,
    W_FFN_GATE_UP_EXPS,
    W_FFN_GATE_INP_SHEXP,
    W_FFN_GATE_SHEXP,
    W_FFN_UP_SHEXP,
    W_FFN_DOWN_SHEXP,
    W_SLOT_COUNT
};

struct hparams {
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_ff;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;   /* key_length: per-head width of q and k as stored */
    uint32_t head_dim_v; /* value_length */
    uint32_t n_rot;      /* rope.dimension_count */
    float rope_freq_base;
    float rope_freq_scale; /* 1 / rope.scaling.factor */
    float norm_eps;
    /* YaRN (rope.scaling.type = yarn) */
    int rope_yarn;
    uint32_t n_ctx_orig;
    float yarn_beta_fast, yarn_beta_slow, yarn_log_mul;
    /* Mixture of experts */
    uint32_t n_expert, n_expert_used, n_expert_shared;
    uint32_t n_ff_exp, n_ff_shexp;
    uint32_t n_dense_lead; /* leading dense layers before the MoE ones */
    uint32_t n_group, n_group_used;
    uint32_t gating;
    int expert_weights_norm;
    float expert_weights_scale;
    /* Multi-head latent attention (deepseek2) */
    uint32_t q_lora, kv_lora;
    uint32_t head_dim_k_mla; /* qk_nope + qk_rope per head */
    uint32_t head_dim_v_mla; /* v per head */
};

struct weight {
    const struct gguf_tensor *t; /* NULL when an optional tensor is absent */
    struct cpu_matrix m;         /* 2-D view; for 3-D tensors the first matrix */
};

struct model_layer {
    struct weight w[W_SLOT_COUNT];
    int is_moe;
    /* deepseek2 files with one attn_kv_b: its key half transposed per head at load, so the
     * query can absorb it like attn_k_b; the value half is used in place. */
    float *k_b_derived; /* (n_head, kv_lora, qk_nope) or NULL */
};

/* Widths of the attention as computed (MLA attends over the latent cache). */
struct attn_geometry {
    int mla;
    int n_head_kv; /* heads of the cache: 1 for MLA */
    int q_head;    /* per-head query width in the attention */
    int v_head;    /* per-head attention output width */
    int64_t kv_k;  /* floats per token per layer in the key cache */
    int64_t kv_v;  /* floats per token per layer in the value cache (0: values in key rows) */
    int qk_nope;   /* MLA: the part of each query head without rope */
    float kq_scale;
};

struct model {
    struct gguf_file file;
    enum arch_id arch;
    const char *arch_name;
    struct hparams hp;
    struct attn_geometry ag;
    struct rope_params rope;
    struct moe_router_cfg router;
    struct weight w[W_SLOT_COUNT]; /* whole-model tensors */
    struct model_layer *layers;    /* (n_layer) */
    struct tokenizer *tok;
    uint64_t n_params;
    uint64_t n_params_active; /* per token: all but the routed experts not chosen */

    /* Runtime state, from model_init. */
    int n_ctx;
    int max_batch;
    struct cpu_ctx *cpu;
    float *k_cache;        /* (n_layer, n_ctx, kv_k) */
    float *v_cache;        /* (n_layer, n_ctx, kv_v) */
    float *x;              /* (max_batch, n_embd) residual stream */
    float *xb;             /* (max_batch, n_embd) normed input of a block */
    float *q;              /* (max_batch, n_head * max(head_dim, q_head)) */
    float *q_att;          /* (max_batch, n_head * q_head) MLA: absorbed query + roped part */
    float *kv;             /* (max_batch, max(kv_k, kv_lora + n_rot)) new keys / latent + rope */
    float *v;              /* (max_batch, kv_v) */
    float *att;            /* (max_batch, n_head * v_head) attention output */
    float *att_v;          /* (max_batch, n_head * head_dim_v_mla) MLA: per-head values */
    float *gate;           /* (max_batch * n_expert_used, max ff) */
    float *up;             /* (max_batch * n_expert_used, max ff) */
    float *proj;           /* (max_batch, n_embd) output of a block's last projection */
    float *moe_in;         /* (max_batch * n_expert_used, n_embd) rows gathered for one expert */
    float *moe_out;        /* (max_batch, n_expert_used, n_embd) each chosen expert's output */
    float *router_logits;  /* (max_batch, n_expert) */
    float *expert_w;       /* (max_batch, n_expert_used) */
    int32_t *expert_ids;   /* (max_batch, n_expert_used) */
    int32_t *expert_rows;  /* (max_batch * n_expert_used) slots grouped by expert */
    int32_t *expert_start; /* (n_expert + 1) */
    void *router_scratch;
    float *shexp_gate;    /* (max_batch) */
    int32_t *pos;         /* (max_batch) */
    struct vk_model *gpu; /* NULL: every layer on the CPU */
};

struct model_params {
    int n_ctx;          /* 0: the model's context length, capped at 4096 */
    int n_threads;      /* 0: one per online CPU */
    int max_batch;      /* 0: 512 */
    int blas_min_batch; /* 0: by weight type (see cpu_config); negative: never use sgemm */
    struct gpu_params gpu;
};

/* Maps the file, reads hyper-parameters, binds and checks every tensor, loads the tokenizer.
 * On error returns -1 with err_get() naming the file and the problem; nothing to free. */
int model_load(struct model *m, const char *path);
/* The same for computing with the weights: the file's bytes held as `hold` (enum gguf_hold
 * flags) says, a mapping populated at load (GGUF_POPULATE) where the file fits in RAM. */
int model_load_hold(struct model *m, const char *path, int hold);
/* --mlock and --no-mmap, shared by the commands that load weights: 1 when `flag` is one
 * (hold updated), else 0. hold_warn prints the one warning line when the lock was refused. */
extern const char *const hold_usage;
int hold_option(int *hold, const char *flag);
/* " locked in RAM", " read into RAM" or "" for a load summary. */
const char *hold_text(const struct model *m);
void hold_warn(const struct model *m, const char *cmd);
/* Allocates the KV cache and scratch and starts the thread pool. */
int model_init(struct model *m, const struct model_params *p);
void model_free(struct model *m);

/* Feeds n_tok tokens at positions pos0.. (any count: split into batches internally).
 * logits: (n_tok, n_vocab) when all_logits, else (n_vocab) for the last token only.
 * Returns -1 with err set for ids outside the vocabulary or positions past the context. */
int model_forward(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                  int all_logits);

/* A tensor an architecture requires, as a file must hold it. */
struct tensor_desc {
    char name[96];
    int n_dims;
    int64_t ne[3];
    int is_vector; /* norms, biases, routers' bias: kept in f32 */
};

/* Every tensor `arch` needs for these hyper-parameters (hp as model_load fills it; for
 * deepseek2, legacy_kv_b picks the single attn_kv_b layout), in the tables' order; for model
 * generators and converters. Returns the count (a malloc'd array in *out) or -1 with err set. */
int model_describe_tensors(const char *arch, const struct hparams *hp, int legacy_kv_b,
                           struct tensor_desc **out);

/* The widest values (floats per token) each scratch role holds; the GPU path sizes its own
 * scratch from these too. */
struct model_widths {
    int64_t q, kv, ff, att, att_v, in, act;
};
struct model_widths model_scratch_widths(const struct model *m);

/* Steps of the CPU forward pass, for the GPU path's CPU parts (vk_model.c): one whole layer
 * over m->x; the final norm and head for rows [first, n_tok); and the routed experts of layer
 * il over m->xb into out (routed: m->expert_ids and m->expert_w already hold the choices). */
void model_layer_cpu(struct model *m, int il, int n_tok, int pos0);
void model_output_cpu(struct model *m, int first, int n_tok, float *logits);
void model_routed_experts_cpu(struct model *m, int il, int n_tok, int routed, float *out);

/* The attention's shape over the cache (strides, heads, widths, scale) for a batch; the caller
 * sets the four pointers. GQA as stored, or MLA over the latent cache. */
struct attn_args model_attn_args(const struct model *m, int n_tok, int pos0);

/* "cpu 2 threads + OpenBLAS", or the GPU and its share of the layers, for log lines. */
void model_backend_text(const struct model *m, char *buf, size_t cap);

/* Bytes of KV cache one token takes (all layers), for a cache of elem_size-byte floats. */
uint64_t model_kv_bytes_per_token(const struct model *m, int elem_size);

#endif
