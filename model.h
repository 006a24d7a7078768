/* Architectures: hyper-parameters from GGUF metadata, tensors bound by their llama.cpp names
 * from one table, and the forward pass written once against the CPU backend's ops. */
#ifndef MOERUN_MODEL_H
#define MOERUN_MODEL_H

#include "cpu.h"
#include "gguf.h"

#include <stdint.h>

struct tokenizer;

enum arch_id { ARCH_LLAMA = 0, ARCH_COUNT };

/* Weight slots: one row each in model.c's tensor table. */
enum weight_slot {
    W_TOKEN_EMBD,
    W_OUTPUT_NORM,
    W_OUTPUT,
    W_ROPE_FREQS,
    W_ATTN_NORM,
    W_ATTN_Q,
    W_ATTN_K,
    W_ATTN_V,
    W_ATTN_OUT,
    W_FFN_NORM,
    W_FFN_GATE,
    W_FFN_UP,
    W_FFN_DOWN,
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
    uint32_t head_dim;   /* key_length: per-head width of q and k */
    uint32_t head_dim_v; /* value_length */
    uint32_t n_rot;      /* rope.dimension_count */
    float rope_freq_base;
    float rope_freq_scale; /* 1 / rope.scaling.factor for linear scaling */
    float norm_eps;
};

struct weight {
    const struct gguf_tensor *t; /* NULL when an optional tensor is absent */
    struct cpu_matrix m;         /* 2-D view (a 1-D tensor is one row) */
};

struct model_layer {
    struct weight w[W_SLOT_COUNT];
};

struct model {
    struct gguf_file file;
    enum arch_id arch;
    const char *arch_name;
    struct hparams hp;
    struct weight w[W_SLOT_COUNT]; /* whole-model tensors */
    struct model_layer *layers;    /* (n_layer) */
    struct tokenizer *tok;
    uint64_t n_params;

    /* Runtime state, from model_init. */
    int n_ctx;
    int max_batch;
    struct cpu_ctx *cpu;
    float *k_cache; /* (n_layer, n_ctx, n_head_kv * head_dim) */
    float *v_cache; /* (n_layer, n_ctx, n_head_kv * head_dim_v) */
    float *x;       /* (max_batch, n_embd) residual stream */
    float *xb;      /* (max_batch, n_embd) normed input of a block */
    float *q;       /* (max_batch, n_head * head_dim) */
    float *k;       /* (max_batch, n_head_kv * head_dim) */
    float *v;       /* (max_batch, n_head_kv * head_dim_v) */
    float *att;     /* (max_batch, n_head * head_dim_v) attention output */
    float *gate;    /* (max_batch, n_ff) */
    float *up;      /* (max_batch, n_ff) */
    float *proj;    /* (max_batch, n_embd) output of a block's last projection */
    int32_t *pos;   /* (max_batch) */
};

struct model_params {
    int n_ctx;          /* 0: the model's context length, capped at 4096 */
    int n_threads;      /* 0: one per online CPU */
    int max_batch;      /* 0: 512 */
    int blas_min_batch; /* 0: default (32); negative: never use sgemm */
};

/* Maps the file, reads hyper-parameters, binds and checks every tensor, loads the tokenizer.
 * On error returns -1 with err_get() naming the file and the problem; nothing to free. */
int model_load(struct model *m, const char *path);
/* Allocates the KV cache and scratch and starts the thread pool. */
int model_init(struct model *m, const struct model_params *p);
void model_free(struct model *m);

/* Feeds n_tok tokens at positions pos0.. (any count: split into batches internally).
 * logits: (n_tok, n_vocab) when all_logits, else (n_vocab) for the last token only.
 * Returns -1 with err set for ids outside the vocabulary or positions past the context. */
int model_forward(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                  int all_logits);

#endif
