#include "model.h"

#include "quant.h"
#include "tokenizer.h"
#include "util.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- the architecture tables ---- */

/* Tensor dimensions are named by what they mean, so one shape table serves every model. */
enum dim {
    D_ONE = 0,
    D_EMBD,     /* n_embd */
    D_VOCAB,    /* n_vocab */
    D_FF,       /* n_ff */
    D_Q,        /* n_head * head_dim */
    D_K,        /* n_head_kv * head_dim */
    D_V,        /* n_head_kv * head_dim_v */
    D_ATTN_O,   /* n_head * head_dim_v */
    D_HEAD,     /* head_dim */
    D_ROT_2,    /* n_rot / 2 */
    D_EXPERT,   /* n_expert */
    D_FF_EXP,   /* n_ff_exp */
    D_FF_EXP_2, /* 2 * n_ff_exp (fused gate and up) */
    D_FF_SHEXP, /* n_ff_shexp */
    D_Q_LORA,   /* q_lora */
    D_KV_LORA,  /* kv_lora */
    D_KV_A,     /* kv_lora + n_rot */
    D_Q_MLA,    /* n_head * head_dim_k_mla */
    D_QK_NOPE,  /* head_dim_k_mla - n_rot */
    D_V_MLA,    /* head_dim_v_mla */
    D_HEADS,    /* n_head */
    D_KV_B,     /* n_head * (qk_nope + head_dim_v_mla) */
    D_O_MLA,    /* n_head * head_dim_v_mla */
};

/* When a tensor must be there; anything else is optional. */
enum need {
    N_ALWAYS,
    N_OPTIONAL,
    N_DENSE,      /* the dense feed-forward of a non-MoE layer */
    N_MOE,        /* router and routed experts of a MoE layer */
    N_MOE_SPLIT,  /* separate gate and up experts (no fused ffn_gate_up_exps) */
    N_MOE_OPT,    /* optional in a MoE layer */
    N_SHEXP,      /* shared expert of a MoE layer, where the model has one */
    N_Q_LORA,     /* deepseek2 with q_lora_rank > 0 */
    N_NO_Q_LORA,  /* deepseek2 without */
    N_MLA_SPLIT,  /* deepseek2 files with attn_k_b / attn_v_b */
    N_MLA_LEGACY, /* older deepseek2 files with one attn_kv_b */
};

struct tensor_spec {
    enum weight_slot slot;
    const char *name; /* llama.cpp's name; "%d" is the layer */
    enum need need;
    int per_layer;
    enum dim shape[3]; /* ggml order: shape[0] is the row length */
};

#define GLOBAL(slot, name, need, ...)                                                              \
    {                                                                                              \
        slot, name, need, 0, { __VA_ARGS__ }                                                       \
    }
#define LAYER(slot, name, need, ...)                                                               \
    {                                                                                              \
        slot, "blk.%d." name, need, 1, { __VA_ARGS__ }                                             \
    }

#define EMBEDDINGS                                                                                 \
    GLOBAL(W_TOKEN_EMBD, "token_embd.weight", N_ALWAYS, D_EMBD, D_VOCAB),                          \
        GLOBAL(W_OUTPUT_NORM, "output_norm.weight", N_ALWAYS, D_EMBD),                             \
        GLOBAL(W_OUTPUT, "output.weight", N_OPTIONAL, D_EMBD, D_VOCAB) /* absent: tied */

#define GQA_ATTENTION                                                                              \
    LAYER(W_ATTN_NORM, "attn_norm.weight", N_ALWAYS, D_EMBD),                                      \
        LAYER(W_ATTN_Q, "attn_q.weight", N_ALWAYS, D_EMBD, D_Q),                                   \
        LAYER(W_ATTN_K, "attn_k.weight", N_ALWAYS, D_EMBD, D_K),                                   \
        LAYER(W_ATTN_V, "attn_v.weight", N_ALWAYS, D_EMBD, D_V),                                   \
        LAYER(W_ATTN_OUT, "attn_output.weight", N_ALWAYS, D_ATTN_O, D_EMBD)

#define QKV_BIASES(need)                                                                           \
    LAYER(W_ATTN_Q_BIAS, "attn_q.bias", need, D_Q),                                                \
        LAYER(W_ATTN_K_BIAS, "attn_k.bias", need, D_K),                                            \
        LAYER(W_ATTN_V_BIAS, "attn_v.bias", need, D_V)

#define DENSE_FFN                                                                                  \
    LAYER(W_FFN_NORM, "ffn_norm.weight", N_ALWAYS, D_EMBD),                                        \
        LAYER(W_FFN_GATE, "ffn_gate.weight", N_DENSE, D_EMBD, D_FF),                               \
        LAYER(W_FFN_UP, "ffn_up.weight", N_DENSE, D_EMBD, D_FF),                                   \
        LAYER(W_FFN_DOWN, "ffn_down.weight", N_DENSE, D_FF, D_EMBD)

#define ROUTED_EXPERTS                                                                             \
    LAYER(W_FFN_GATE_INP, "ffn_gate_inp.weight", N_MOE, D_EMBD, D_EXPERT),                         \
        LAYER(W_FFN_GATE_EXPS, "ffn_gate_exps.weight", N_MOE_SPLIT, D_EMBD, D_FF_EXP, D_EXPERT),   \
        LAYER(W_FFN_UP_EXPS, "ffn_up_exps.weight", N_MOE_SPLIT, D_EMBD, D_FF_EXP, D_EXPERT),       \
        LAYER(W_FFN_GATE_UP_EXPS, "ffn_gate_up_exps.weight", N_MOE_OPT, D_EMBD, D_FF_EXP_2,        \
              D_EXPERT),                                                                           \
        LAYER(W_FFN_DOWN_EXPS, "ffn_down_exps.weight", N_MOE, D_FF_EXP, D_EMBD, D_EXPERT)

#define SHARED_EXPERT                                                                              \
    LAYER(W_FFN_GATE_SHEXP, "ffn_gate_shexp.weight", N_SHEXP, D_EMBD, D_FF_SHEXP),                 \
        LAYER(W_FFN_UP_SHEXP, "ffn_up_shexp.weight", N_SHEXP, D_EMBD, D_FF_SHEXP),                 \
        LAYER(W_FFN_DOWN_SHEXP, "ffn_down_shexp.weight", N_SHEXP, D_FF_SHEXP, D_EMBD)

static const struct tensor_spec llama_tensors[] = {
    EMBEDDINGS,    GLOBAL(W_ROPE_FREQS, "rope_freqs.weight", N_OPTIONAL, D_ROT_2), /* Llama 3.1 */
    GQA_ATTENTION, QKV_BIASES(N_OPTIONAL),
    DENSE_FFN,     ROUTED_EXPERTS, /* Mixtral: llama with expert_count */
};

static const struct tensor_spec qwen2_tensors[] = {
    EMBEDDINGS,
    GQA_ATTENTION,
    QKV_BIASES(N_ALWAYS),
    DENSE_FFN,
};

static const struct tensor_spec qwen2moe_tensors[] = {
    EMBEDDINGS,
    GQA_ATTENTION,
    QKV_BIASES(N_ALWAYS),
    DENSE_FFN,
    ROUTED_EXPERTS,
    SHARED_EXPERT,
    LAYER(W_FFN_GATE_INP_SHEXP, "ffn_gate_inp_shexp.weight", N_SHEXP, D_EMBD),
};

static const struct tensor_spec qwen3moe_tensors[] = {
    EMBEDDINGS,
    GQA_ATTENTION,
    LAYER(W_ATTN_Q_NORM, "attn_q_norm.weight", N_ALWAYS, D_HEAD),
    LAYER(W_ATTN_K_NORM, "attn_k_norm.weight", N_ALWAYS, D_HEAD),
    DENSE_FFN,
    ROUTED_EXPERTS,
};

static const struct tensor_spec deepseek2_tensors[] = {
    EMBEDDINGS,
    LAYER(W_ATTN_NORM, "attn_norm.weight", N_ALWAYS, D_EMBD),
    LAYER(W_ATTN_Q, "attn_q.weight", N_NO_Q_LORA, D_EMBD, D_Q_MLA),
    LAYER(W_ATTN_Q_A, "attn_q_a.weight", N_Q_LORA, D_EMBD, D_Q_LORA),
    LAYER(W_ATTN_Q_A_NORM, "attn_q_a_norm.weight", N_Q_LORA, D_Q_LORA),
    LAYER(W_ATTN_Q_B, "attn_q_b.weight", N_Q_LORA, D_Q_LORA, D_Q_MLA),
    LAYER(W_ATTN_KV_A_MQA, "attn_kv_a_mqa.weight", N_ALWAYS, D_EMBD, D_KV_A),
    LAYER(W_ATTN_KV_A_NORM, "attn_kv_a_norm.weight", N_ALWAYS, D_KV_LORA),
    LAYER(W_ATTN_K_B, "attn_k_b.weight", N_MLA_SPLIT, D_QK_NOPE, D_KV_LORA, D_HEADS),
    LAYER(W_ATTN_V_B, "attn_v_b.weight", N_MLA_SPLIT, D_KV_LORA, D_V_MLA, D_HEADS),
    LAYER(W_ATTN_KV_B, "attn_kv_b.weight", N_MLA_LEGACY, D_KV_LORA, D_KV_B),
    LAYER(W_ATTN_OUT, "attn_output.weight", N_ALWAYS, D_O_MLA, D_EMBD),
    DENSE_FFN,
    ROUTED_EXPERTS,
    LAYER(W_FFN_EXP_PROBS_B, "exp_probs_b.bias", N_MOE_OPT, D_EXPERT),
    SHARED_EXPERT,
};

/* How an architecture differs; the forward pass branches on these, never on the name. */
struct arch_info {
    const char *name; /* general.architecture */
    const struct tensor_spec *tensors;
    size_t n_tensors;
    enum rope_mode rope_mode;
    int mla;            /* multi-head latent attention (deepseek2) */
    int shexp_gated;    /* shared expert scaled by sigmoid(ffn_gate_inp_shexp . x) */
    int shexp_always;   /* a shared expert in every MoE layer, whatever expert_shared_count says */
    int norm_w_default; /* renormalize the chosen weights unless expert_weights_norm says */
    int n_ff_exp_is_n_ff; /* experts as wide as feed_forward_length (Mixtral in llama files) */
};

#define TABLE(t) t, sizeof t / sizeof t[0]
static const struct arch_info arches[ARCH_COUNT] = {
    [ARCH_LLAMA] = {"llama", TABLE(llama_tensors), ROPE_NORM, 0, 0, 0, 1, 1},
    [ARCH_QWEN2] = {"qwen2", TABLE(qwen2_tensors), ROPE_NEOX, 0, 0, 0, 0, 0},
    [ARCH_QWEN2MOE] = {"qwen2moe", TABLE(qwen2moe_tensors), ROPE_NEOX, 0, 1, 1, 0, 0},
    [ARCH_QWEN3MOE] = {"qwen3moe", TABLE(qwen3moe_tensors), ROPE_NEOX, 0, 0, 0, 1, 0},
    [ARCH_DEEPSEEK2] = {"deepseek2", TABLE(deepseek2_tensors), ROPE_NORM, 1, 0, 0, 0, 0},
};

/* Hyper-parameter keys, read as "<arch>.<suffix>"; absent ones keep their defaults. */
enum hp_kind { HP_U32, HP_F32, HP_BOOL };
struct hparam_key {
    const char *suffix;
    size_t offset; /* into struct hparams */
    enum hp_kind kind;
    int required;
};

#define HP(field) offsetof(struct hparams, field)
static const struct hparam_key hparam_keys[] = {
    {"context_length", HP(n_ctx_train), HP_U32, 1},
    {"embedding_length", HP(n_embd), HP_U32, 1},
    {"block_count", HP(n_layer), HP_U32, 1},
    {"feed_forward_length", HP(n_ff), HP_U32, 0},
    {"attention.head_count", HP(n_head), HP_U32, 1},
    {"attention.head_count_kv", HP(n_head_kv), HP_U32, 0},
    {"attention.key_length", HP(head_dim), HP_U32, 0},
    {"attention.value_length", HP(head_dim_v), HP_U32, 0},
    {"attention.key_length_mla", HP(head_dim_k_mla), HP_U32, 0},
    {"attention.value_length_mla", HP(head_dim_v_mla), HP_U32, 0},
    {"attention.q_lora_rank", HP(q_lora), HP_U32, 0},
    {"attention.kv_lora_rank", HP(kv_lora), HP_U32, 0},
    {"rope.dimension_count", HP(n_rot), HP_U32, 0},
    {"vocab_size", HP(n_vocab), HP_U32, 0},
    {"rope.freq_base", HP(rope_freq_base), HP_F32, 0},
    {"attention.layer_norm_rms_epsilon", HP(norm_eps), HP_F32, 1},
    {"rope.scaling.original_context_length", HP(n_ctx_orig), HP_U32, 0},
    {"rope.scaling.yarn_beta_fast", HP(yarn_beta_fast), HP_F32, 0},
    {"rope.scaling.yarn_beta_slow", HP(yarn_beta_slow), HP_F32, 0},
    {"rope.scaling.yarn_log_multiplier", HP(yarn_log_mul), HP_F32, 0},
    {"expert_count", HP(n_expert), HP_U32, 0},
    {"expert_used_count", HP(n_expert_used), HP_U32, 0},
    {"expert_shared_count", HP(n_expert_shared), HP_U32, 0},
    {"expert_feed_forward_length", HP(n_ff_exp), HP_U32, 0},
    {"expert_shared_feed_forward_length", HP(n_ff_shexp), HP_U32, 0},
    {"leading_dense_block_count", HP(n_dense_lead), HP_U32, 0},
    {"expert_group_count", HP(n_group), HP_U32, 0},
    {"expert_group_used_count", HP(n_group_used), HP_U32, 0},
    {"expert_gating_func", HP(gating), HP_U32, 0},
    {"expert_weights_norm", HP(expert_weights_norm), HP_BOOL, 0},
    {"expert_weights_scale", HP(expert_weights_scale), HP_F32, 0},
};
#undef HP

/* ---- hyper-parameters ---- */

static int read_hparam(struct model *m, const struct hparam_key *k) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch_name, k->suffix);
    void *dst = (char *)&m->hp + k->offset;
    int rc = k->kind == HP_F32    ? gguf_get_f32(&m->file, key, dst)
             : k->kind == HP_BOOL ? gguf_get_bool(&m->file, key, dst)
                                  : gguf_get_u32(&m->file, key, dst);
    if (rc < 0) return -1;
    if (rc == 1 && k->required) {
        err_set("model: %s: missing required key '%s'", m->file.path, key);
        return -1;
    }
    return 0;
}

static int bad_value(const struct model *m, const char *what, const char *why) {
    err_set("model: %s: %s.%s %s", m->file.path, m->arch_name, what, why);
    return -1;
}

static int check_range(const struct model *m, const char *what, uint32_t v, uint32_t max) {
    if (v >= 1 && v <= max) return 0;
    char why[96];
    snprintf(why, sizeof why, "= %u is out of range (1..%u)", v, max);
    return bad_value(m, what, why);
}

static int read_rope_scaling(struct model *m) {
    struct hparams *hp = &m->hp;
    char key[128];
    struct gguf_str type = {0, NULL};
    float factor = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch_name);
    if (gguf_get_str(&m->file, key, &type) < 0) return -1;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", m->arch_name);
    if (gguf_get_f32(&m->file, key, &factor) < 0) return -1;
    hp->rope_freq_scale = 1.0f;
    if (type.data == NULL || gguf_str_eq(type, "none")) return 0;
    int linear = gguf_str_eq(type, "linear");
    hp->rope_yarn = gguf_str_eq(type, "yarn");
    if (!linear && !hp->rope_yarn) {
        err_set("model: %s: %s.rope.scaling.type = '%.*s' is not supported (supported: none, "
                "linear, yarn)",
                m->file.path, m->arch_name, (int)(type.len > 32 ? 32 : type.len), type.data);
        return -1;
    }
    if (!(factor > 0.0f)) return bad_value(m, "rope.scaling.factor", "must be positive");
    hp->rope_freq_scale = 1.0f / factor;
    return 0;
}

/* Widths that later checks and tables depend on, from keys or llama.cpp's defaults. */
static void default_widths(struct model *m) {
    struct hparams *hp = &m->hp;
    const struct arch_info *a = &arches[m->arch];
    if (!hp->n_head_kv) hp->n_head_kv = hp->n_head;
    if (!hp->head_dim) hp->head_dim = hp->n_embd / hp->n_head;
    if (!hp->head_dim_v) hp->head_dim_v = hp->head_dim;
    if (!hp->n_rot) hp->n_rot = hp->head_dim;
    if (!hp->head_dim_k_mla) hp->head_dim_k_mla = hp->head_dim;
    if (!hp->head_dim_v_mla) hp->head_dim_v_mla = hp->head_dim_v;
    if (a->n_ff_exp_is_n_ff && !hp->n_ff_exp) hp->n_ff_exp = hp->n_ff;
    if (!hp->n_ff_shexp)
        hp->n_ff_shexp = hp->n_ff_exp * (hp->n_expert_shared ? hp->n_expert_shared : 1);
    if (!hp->gating) hp->gating = MOE_GATING_SOFTMAX;
    if (!hp->yarn_beta_fast) hp->yarn_beta_fast = 32.0f;
    if (!hp->yarn_beta_slow) hp->yarn_beta_slow = 1.0f;
    if (!hp->n_ctx_orig) hp->n_ctx_orig = hp->n_ctx_train;
}

static int check_attention(const struct model *m) {
    const struct hparams *hp = &m->hp;
    if (hp->n_head_kv > hp->n_head || hp->n_head % hp->n_head_kv != 0)
        return bad_value(m, "attention.head_count_kv", "must divide attention.head_count");
    if (hp->head_dim == 0 || hp->head_dim > 4096 || hp->head_dim_v > 4096)
        return bad_value(m, "attention.key_length", "is out of range (1..4096)");
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0 || hp->n_rot > ROPE_MAX_DIMS)
        return bad_value(m, "rope.dimension_count", "must be even and at most the head width");
    if (arches[m->arch].mla &&
        (hp->kv_lora == 0 || hp->kv_lora > 8192 || hp->head_dim_k_mla <= hp->n_rot ||
         hp->q_lora > 65536 || hp->head_dim_v_mla == 0))
        return bad_value(m, "attention.kv_lora_rank",
                         "and the *_length(_mla) keys do not describe an MLA attention");
    if (!(hp->norm_eps > 0.0f) || !(hp->rope_freq_base > 0.0f))
        return bad_value(m, "attention.layer_norm_rms_epsilon", "and rope.freq_base must be > 0");
    return 0;
}

static int check_experts(struct model *m) {
    const struct hparams *hp = &m->hp;
    if (!hp->n_expert) return 0;
    if (hp->n_expert > 4096 || hp->n_ff_exp == 0 || hp->n_ff_exp > (1u << 20))
        return bad_value(m, "expert_count",
                         "or expert_feed_forward_length is out of range (experts 1..4096)");
    if (hp->n_dense_lead > hp->n_layer)
        return bad_value(m, "leading_dense_block_count", "exceeds block_count");
    return moe_router_cfg_validate(&m->router, m->file.path, m->arch_name);
}

static void fill_router(struct model *m) {
    const struct hparams *hp = &m->hp;
    char key[128];
    snprintf(key, sizeof key, "%s.expert_weights_norm", m->arch_name);
    int norm =
        gguf_find_kv(&m->file, key) ? hp->expert_weights_norm : arches[m->arch].norm_w_default;
    m->router = (struct moe_router_cfg){
        .n_expert = (int)hp->n_expert,
        .n_expert_used = (int)hp->n_expert_used,
        .gating = (enum moe_gating)hp->gating,
        .n_group = (int)hp->n_group,
        .n_group_used = (int)hp->n_group_used,
        .norm_weights = norm,
        .weights_scale = hp->expert_weights_scale,
    };
}

static int read_hparams(struct model *m) {
    struct hparams *hp = &m->hp;
    memset(hp, 0, sizeof *hp);
    hp->rope_freq_base = 10000.0f;
    for (size_t i = 0; i < sizeof hparam_keys / sizeof hparam_keys[0]; i++)
        if (read_hparam(m, &hparam_keys[i]) < 0) return -1;
    if (check_range(m, "embedding_length", hp->n_embd, 1u << 20) < 0 ||
        check_range(m, "block_count", hp->n_layer, 4096) < 0 ||
        check_range(m, "attention.head_count", hp->n_head, 4096) < 0 ||
        (hp->n_ff && check_range(m, "feed_forward_length", hp->n_ff, 1u << 22) < 0))
        return -1;
    default_widths(m);
    fill_router(m);
    if (read_rope_scaling(m) < 0 || check_attention(m) < 0 || check_experts(m) < 0) return -1;
    return 0;
}

/* ---- tensor binding ---- */

static int64_t dim_value(const struct hparams *hp, enum dim d) {
    int64_t nope = (int64_t)hp->head_dim_k_mla - hp->n_rot;
    switch (d) {
    case D_ONE:
        return 1;
    case D_EMBD:
        return hp->n_embd;
    case D_VOCAB:
        return hp->n_vocab;
    case D_FF:
        return hp->n_ff;
    case D_Q:
        return (int64_t)hp->n_head * hp->head_dim;
    case D_K:
        return (int64_t)hp->n_head_kv * hp->head_dim;
    case D_V:
        return (int64_t)hp->n_head_kv * hp->head_dim_v;
    case D_ATTN_O:
        return (int64_t)hp->n_head * hp->head_dim_v;
    case D_HEAD:
        return hp->head_dim;
    case D_ROT_2:
        return hp->n_rot / 2;
    case D_EXPERT:
        return hp->n_expert;
    case D_FF_EXP:
        return hp->n_ff_exp;
    case D_FF_EXP_2:
        return 2 * (int64_t)hp->n_ff_exp;
    case D_FF_SHEXP:
        return hp->n_ff_shexp;
    case D_Q_LORA:
        return hp->q_lora;
    case D_KV_LORA:
        return hp->kv_lora;
    case D_KV_A:
        return (int64_t)hp->kv_lora + hp->n_rot;
    case D_Q_MLA:
        return (int64_t)hp->n_head * hp->head_dim_k_mla;
    case D_QK_NOPE:
        return nope;
    case D_V_MLA:
        return hp->head_dim_v_mla;
    case D_HEADS:
        return hp->n_head;
    case D_KV_B:
        return (int64_t)hp->n_head * (nope + hp->head_dim_v_mla);
    case D_O_MLA:
        return (int64_t)hp->n_head * hp->head_dim_v_mla;
    }
    return -1;
}

static int check_shape(const struct model *m, const struct gguf_tensor *t,
                       const struct tensor_spec *s) {
    int64_t want[GGUF_MAX_DIMS] = {1, 1, 1, 1};
    for (int i = 0; i < 3; i++) want[i] = dim_value(&m->hp, s->shape[i]);
    for (int i = 0; i < GGUF_MAX_DIMS; i++) {
        if (t->ne[i] != want[i]) {
            err_set("model: %s: tensor '%.*s' has shape [%lld, %lld, %lld, %lld], the "
                    "hyper-parameters say [%lld, %lld, %lld, %lld]",
                    m->file.path, (int)t->name.len, t->name.data, (long long)t->ne[0],
                    (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                    (long long)want[0], (long long)want[1], (long long)want[2], (long long)want[3]);
            return -1;
        }
    }
    return 0;
}

static int check_type(const struct model *m, const struct gguf_tensor *t,
                      const struct tensor_spec *s) {
    int is_vector = s->shape[1] == D_ONE && s->shape[2] == D_ONE;
    const struct qtype_traits *tr = qtype_traits(t->type);
    if (!tr || tr->vec_dot == NULL || (is_vector && t->type != QT_F32)) {
        err_set("model: %s: tensor '%.*s' has type %s, which is not supported here (%s)",
                m->file.path, (int)t->name.len, t->name.data, qtype_name(t->type),
                is_vector ? "norms and vectors must be f32"
                          : "supported: f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_K..q6_K");
        return -1;
    }
    return 0;
}

/* Layout facts found in the file itself, which decide what the tables require. */
struct layout {
    int mla_legacy; /* attn_kv_b instead of attn_k_b / attn_v_b */
    int fused_gate_up;
};

static int required(const struct model *m, const struct layout *lo, enum need need, int il) {
    const struct hparams *hp = &m->hp;
    int moe = il >= 0 && m->layers[il].is_moe;
    switch (need) {
    case N_ALWAYS:
        return 1;
    case N_OPTIONAL:
        return 0;
    case N_DENSE:
        return !moe;
    case N_MOE:
        return moe;
    case N_MOE_SPLIT:
        return moe && !lo->fused_gate_up;
    case N_MOE_OPT:
        return 0;
    case N_SHEXP:
        return moe && (arches[m->arch].shexp_always || hp->n_expert_shared > 0);
    case N_Q_LORA:
        return hp->q_lora > 0;
    case N_NO_Q_LORA:
        return hp->q_lora == 0;
    case N_MLA_SPLIT:
        return !lo->mla_legacy;
    case N_MLA_LEGACY:
        return lo->mla_legacy;
    }
    return 0;
}

/* Tensors a layer of this kind never uses are not looked at (a dense layer's experts). */
static int applicable(const struct model *m, enum need need, int il) {
    int moe = il >= 0 && m->layers[il].is_moe;
    if (need == N_DENSE) return !moe;
    if (need == N_MOE || need == N_MOE_SPLIT || need == N_MOE_OPT || need == N_SHEXP) return moe;
    return 1;
}

static int bind_one(struct model *m, const struct layout *lo, const struct tensor_spec *s, int il,
                    struct weight *w) {
    char name[96];
    snprintf(name, sizeof name, s->name, il);
    memset(w, 0, sizeof *w);
    if (!applicable(m, s->need, il)) return 0;
    const struct gguf_tensor *t = gguf_find_tensor(&m->file, name);
    if (!t) {
        if (!required(m, lo, s->need, il)) return 0;
        err_set("model: %s: missing tensor '%s' (architecture %s)", m->file.path, name,
                m->arch_name);
        return -1;
    }
    if (check_shape(m, t, s) < 0 || check_type(m, t, s) < 0) return -1;
    w->t = t;
    w->m = (struct cpu_matrix){
        t->data, t->type, t->ne[0], t->ne[1], qtype_row_size(t->type, t->ne[0]), 0};
    return 0;
}

static void find_layout(const struct model *m, struct layout *lo) {
    char name[96];
    lo->mla_legacy = arches[m->arch].mla && gguf_find_tensor(&m->file, "blk.0.attn_kv_b.weight");
    snprintf(name, sizeof name, "blk.%u.ffn_gate_up_exps.weight", m->hp.n_dense_lead);
    lo->fused_gate_up = gguf_find_tensor(&m->file, name) != NULL;
}

static int bind_tensors(struct model *m) {
    const struct arch_info *a = &arches[m->arch];
    struct layout lo;
    m->layers = xcalloc(m->hp.n_layer, sizeof *m->layers);
    for (uint32_t l = 0; l < m->hp.n_layer; l++)
        m->layers[l].is_moe = m->hp.n_expert > 0 && l >= m->hp.n_dense_lead;
    find_layout(m, &lo);
    for (size_t i = 0; i < a->n_tensors; i++) {
        const struct tensor_spec *s = &a->tensors[i];
        if (!s->per_layer) {
            if (bind_one(m, &lo, s, -1, &m->w[s->slot]) < 0) return -1;
            continue;
        }
        for (uint32_t l = 0; l < m->hp.n_layer; l++)
            if (bind_one(m, &lo, s, (int)l, &m->layers[l].w[s->slot]) < 0) return -1;
    }
    if (!m->w[W_OUTPUT].t) m->w[W_OUTPUT] = m->w[W_TOKEN_EMBD]; /* tied embeddings */
    return 0;
}

/* ---- deepseek2: older files with one attn_kv_b ---- */

/* attn_kv_b maps the latent to every head's [k_nope; v] rows. Absorbing k_nope into the
 * query needs its transpose, per head (kv_lora, qk_nope) in f32; dequantized once here. */
static void derive_k_b(struct model *m, struct model_layer *L) {
    const struct hparams *hp = &m->hp;
    int nope = (int)hp->head_dim_k_mla - (int)hp->n_rot, lora = (int)hp->kv_lora;
    int per_head = nope + (int)hp->head_dim_v_mla;
    const struct cpu_matrix *kv_b = &L->w[W_ATTN_KV_B].m;
    float *row = xmalloc((size_t)lora * sizeof *row);
    L->k_b_derived = xmalloc((size_t)hp->n_head * (size_t)lora * (size_t)nope * sizeof(float));
    for (uint32_t h = 0; h < hp->n_head; h++) {
        float *kb = L->k_b_derived + (size_t)h * (size_t)lora * (size_t)nope;
        for (int d = 0; d < nope; d++) {
            cpu_get_row(kv_b, (int64_t)h * per_head + d, row);
            for (int r = 0; r < lora; r++) kb[(size_t)r * (size_t)nope + (size_t)d] = row[r];
        }
    }
    free(row);
}

/* ---- attention geometry and rope ---- */

static void setup_attention(struct model *m) {
    const struct hparams *hp = &m->hp;
    struct attn_geometry *g = &m->ag;
    /* llama.cpp divides the stored multiplier by 0.1 and multiplies by 0.1 again; the
     * factors of mscale are kept in its order so kq_scale rounds the same way. */
    float log_inv_scale = logf(1.0f / hp->rope_freq_scale);
    float attn_factor = hp->rope_yarn ? 1.0f / (1.0f + 0.1f * log_inv_scale) : 1.0f;
    m->rope = (struct rope_params){
        .mode = arches[m->arch].rope_mode,
        .n_rot = (int)hp->n_rot,
        .freq_base = hp->rope_freq_base,
        .freq_scale = hp->rope_freq_scale,
        .ext_factor = hp->rope_yarn ? 1.0f : 0.0f,
        .attn_factor = attn_factor,
    };
    if (hp->rope_yarn)
        cpu_rope_yarn_corr_dims((int)hp->n_rot, (int)hp->n_ctx_orig, hp->rope_freq_base,
                                hp->yarn_beta_fast, hp->yarn_beta_slow, m->rope.corr_dims);
    if (!arches[m->arch].mla) {
        *g = (struct attn_geometry){0,
                                    (int)hp->n_head_kv,
                                    (int)hp->head_dim,
                                    (int)hp->head_dim_v,
                                    (int64_t)hp->n_head_kv * hp->head_dim,
                                    (int64_t)hp->n_head_kv * hp->head_dim_v,
                                    0,
                                    1.0f / sqrtf((float)hp->head_dim)};
        return;
    }
    float yarn_log_mul = hp->yarn_log_mul / 0.1f;
    float attn_factor_org = attn_factor * (1.0f + 0.1f * log_inv_scale);
    float mscale = attn_factor_org * (1.0f + 0.1f * yarn_log_mul * log_inv_scale);
    int latent = (int)(hp->kv_lora + hp->n_rot);
    *g = (struct attn_geometry){1,
                                1,
                                latent,
                                (int)hp->kv_lora,
                                latent,
                                0,
                                (int)(hp->head_dim_k_mla - hp->n_rot),
                                mscale * mscale / sqrtf((float)hp->head_dim_k_mla)};
}

/* ---- loading ---- */

/* The vocabulary size comes from the embedding when the file does not state it. */
static int resolve_vocab(struct model *m) {
    const struct gguf_tensor *e = gguf_find_tensor(&m->file, "token_embd.weight");
    if (!e) {
        err_set("model: %s: missing tensor 'token_embd.weight'", m->file.path);
        return -1;
    }
    if (!m->hp.n_vocab) m->hp.n_vocab = (uint32_t)e->ne[1];
    int32_t n_tok = tokenizer_n_vocab(m->tok);
    if ((uint32_t)n_tok != m->hp.n_vocab) {
        err_set("model: %s: tokenizer.ggml.tokens has %d entries but the model's vocabulary "
                "(token_embd.weight) is %u",
                m->file.path, n_tok, m->hp.n_vocab);
        return -1;
    }
    return 0;
}

static int find_arch(struct model *m) {
    struct gguf_str arch;
    int rc = gguf_get_str(&m->file, "general.architecture", &arch);
    if (rc < 0) return -1;
    if (rc == 1) {
        err_set("model: %s: missing key 'general.architecture'", m->file.path);
        return -1;
    }
    for (int i = 0; i < ARCH_COUNT; i++) {
        if (gguf_str_eq(arch, arches[i].name)) {
            m->arch = (enum arch_id)i;
            m->arch_name = arches[i].name;
            return 0;
        }
    }
    err_set("model: %s: unknown architecture '%.*s' (supported: llama, qwen2, qwen2moe, "
            "qwen3moe, deepseek2)",
            m->file.path, (int)(arch.len > 64 ? 64 : arch.len), arch.data);
    return -1;
}

static uint64_t n_elements(const struct gguf_tensor *t) {
    return (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
}

/* All parameters, and those one token uses: routed experts count n_expert_used / n_expert. */
static void count_params(struct model *m) {
    static const enum weight_slot routed[] = {W_FFN_GATE_EXPS, W_FFN_UP_EXPS, W_FFN_DOWN_EXPS,
                                              W_FFN_GATE_UP_EXPS};
    uint64_t total = 0, unused = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) total += n_elements(&m->file.tensors[i]);
    for (uint32_t l = 0; l < m->hp.n_layer; l++)
        for (size_t k = 0; k < sizeof routed / sizeof routed[0]; k++) {
            const struct gguf_tensor *t = m->layers[l].w[routed[k]].t;
            if (t)
                unused += n_elements(t) / m->hp.n_expert * (m->hp.n_expert - m->hp.n_expert_used);
        }
    m->n_params = total;
    m->n_params_active = total - unused;
}

static void prepare_layers(struct model *m) {
    for (uint32_t l = 0; l < m->hp.n_layer; l++) {
        struct model_layer *L = &m->layers[l];
        if (L->w[W_ATTN_KV_B].t) derive_k_b(m, L);
        /* llama.cpp's per-head k_b and expert products run through ggml's vec_dot */
        L->w[W_ATTN_K_B].m.vec_order = 1;
        L->w[W_FFN_GATE_EXPS].m.vec_order = 1;
        L->w[W_FFN_UP_EXPS].m.vec_order = 1;
        L->w[W_FFN_GATE_UP_EXPS].m.vec_order = 1;
        L->w[W_FFN_DOWN_EXPS].m.vec_order = 1;
    }
}

const char *const hold_usage =
    "      --mlock            lock the weights in RAM (never paged out or dropped)\n"
    "      --no-mmap          read the weights into memory instead of mapping the file\n"
    "                         (steady speed where idle file cache is reclaimed)\n";

int hold_option(int *hold, const char *flag) {
    if (!strcmp(flag, "--mlock")) return *hold |= GGUF_LOCK, 1;
    if (!strcmp(flag, "--no-mmap")) return *hold |= GGUF_READ, 1;
    return 0;
}

const char *hold_text(const struct model *m) {
    return m->file.hold & GGUF_LOCK   ? " locked in RAM"
           : m->file.hold & GGUF_READ ? " read into RAM"
                                      : "";
}

void hold_warn(const struct model *m, const char *cmd) {
    if (!m->file.lock_errno) return;
    struct rlimit rl;
    char limit[32] = "unknown";
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        snprintf(limit, sizeof limit, "%llu KiB", (unsigned long long)rl.rlim_cur / 1024);
    fprintf(stderr,
            "moerun %s: warning: --mlock: %s: cannot lock %.1f MiB in RAM: %s (RLIMIT_MEMLOCK "
            "%s; raise it with ulimit -l); running unlocked\n",
            cmd, m->file.path, (double)m->file.size / (1 << 20), strerror(m->file.lock_errno),
            limit);
}

static int load_held(struct model *m, const char *path, int hold) {
    memset(m, 0, sizeof *m);
    if (gguf_open_hold(&m->file, path, hold) < 0) return -1;
    if (find_arch(m) < 0 || read_hparams(m) < 0) goto fail;
    m->tok = tokenizer_load(&m->file);
    if (!m->tok || resolve_vocab(m) < 0 || bind_tensors(m) < 0) goto fail;
    prepare_layers(m);
    setup_attention(m);
    count_params(m);
    return 0;
fail:
    model_free(m);
    return -1;
}

int model_load(struct model *m, const char *path) { return load_held(m, path, GGUF_MAP); }

int model_load_hold(struct model *m, const char *path, int hold) {
    return load_held(m, path, hold | GGUF_POPULATE); /* gguf drops it where it does not apply */
}

uint64_t model_kv_bytes_per_token(const struct model *m, int elem_size) {
    return (uint64_t)m->hp.n_layer * (uint64_t)(m->ag.kv_k + m->ag.kv_v) * (uint64_t)elem_size;
}

/* ---- describing a model's tensors (generators, converters) ---- */

static int describe_one(const struct model *m, const struct layout *lo, const struct tensor_spec *s,
                        int il, struct tensor_desc *d) {
    if (!applicable(m, s->need, il) || !required(m, lo, s->need, il)) return 0;
    snprintf(d->name, sizeof d->name, s->name, il);
    d->n_dims = s->shape[2] != D_ONE ? 3 : s->shape[1] != D_ONE ? 2 : 1;
    for (int i = 0; i < 3; i++) d->ne[i] = dim_value(&m->hp, s->shape[i]);
    d->is_vector = d->n_dims == 1;
    return 1;
}

int model_describe_tensors(const char *arch, const struct hparams *hp, int legacy_kv_b,
                           struct tensor_desc **out) {
    struct model m;
    memset(&m, 0, sizeof m);
    int a = 0;
    while (a < ARCH_COUNT && strcmp(arches[a].name, arch)) a++;
    if (a == ARCH_COUNT) {
        err_set("model: unknown architecture '%s'", arch);
        return -1;
    }
    m.arch = (enum arch_id)a;
    m.hp = *hp;
    m.layers = xcalloc(hp->n_layer, sizeof *m.layers);
    for (uint32_t l = 0; l < hp->n_layer; l++)
        m.layers[l].is_moe = hp->n_expert > 0 && l >= hp->n_dense_lead;
    struct layout lo = {legacy_kv_b, 0};
    const struct arch_info *ai = &arches[a];
    size_t cap = ai->n_tensors * (hp->n_layer + 1), n = 0;
    struct tensor_desc *d = xcalloc(cap, sizeof *d);
    for (size_t i = 0; i < ai->n_tensors; i++) {
        const struct tensor_spec *s = &ai->tensors[i];
        if (!s->per_layer) {
            n += (size_t)describe_one(&m, &lo, s, -1, &d[n]);
            continue;
        }
        for (uint32_t l = 0; l < hp->n_layer; l++)
            n += (size_t)describe_one(&m, &lo, s, (int)l, &d[n]);
    }
    free(m.layers);
    *out = d;
    return (int)n;
}

/* ---- runtime state ---- */

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) {
    int64_t m = a > b ? a : b;
    return m > c ? m : c;
}

struct model_widths model_scratch_widths(const struct model *m) {
    const struct hparams *hp = &m->hp;
    const struct attn_geometry *g = &m->ag;
    struct model_widths w;
    int64_t used = hp->n_expert_used ? hp->n_expert_used : 1;
    w.q = max3((int64_t)hp->n_head * hp->head_dim, (int64_t)hp->n_head * hp->head_dim_k_mla,
               hp->q_lora);
    w.kv = max3(g->kv_k, (int64_t)hp->kv_lora + hp->n_rot, 1);
    w.ff = max3(hp->n_ff, hp->n_ff_exp, hp->n_ff_shexp);
    w.att = (int64_t)hp->n_head * g->v_head;
    w.att_v = (int64_t)hp->n_head * hp->head_dim_v_mla;
    w.in = max3(max3(hp->n_embd, w.ff, w.att), w.att_v, max3(hp->q_lora, hp->kv_lora, 1));
    /* widest cpu_matmul_many: every head's latent query, or every chosen expert's rows */
    w.act = max3(w.in * used, (int64_t)hp->n_head * max3(g->qk_nope, hp->kv_lora, 1), w.q);
    return w;
}

static void alloc_scratch(struct model *m) {
    const struct hparams *hp = &m->hp;
    struct model_widths w = model_scratch_widths(m);
    size_t B = (size_t)m->max_batch, used = hp->n_expert_used ? hp->n_expert_used : 1;
    m->k_cache =
        xcalloc((size_t)hp->n_layer * (size_t)m->n_ctx * (size_t)m->ag.kv_k, sizeof(float));
    m->v_cache =
        xcalloc((size_t)hp->n_layer * (size_t)m->n_ctx * (size_t)m->ag.kv_v, sizeof(float));
    m->x = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->xb = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->proj = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->q = xaligned_alloc(B * (size_t)w.q * sizeof(float));
    m->q_att = xaligned_alloc(B * (size_t)hp->n_head * (size_t)m->ag.q_head * sizeof(float));
    m->kv = xaligned_alloc(B * (size_t)w.kv * sizeof(float));
    m->v = xaligned_alloc(B * (size_t)(m->ag.kv_v ? m->ag.kv_v : 1) * sizeof(float));
    m->att = xaligned_alloc(B * (size_t)w.att * sizeof(float));
    m->att_v = xaligned_alloc(B * (size_t)w.att_v * sizeof(float));
    m->gate = xaligned_alloc(B * used * (size_t)w.ff * sizeof(float));
    m->up = xaligned_alloc(B * used * (size_t)w.ff * sizeof(float));
    m->moe_in = xaligned_alloc(B * used * hp->n_embd * sizeof(float));
    m->moe_out = xaligned_alloc(B * used * hp->n_embd * sizeof(float));
    m->router_logits = xmalloc(B * (hp->n_expert ? hp->n_expert : 1) * sizeof(float));
    m->expert_w = xmalloc(B * used * sizeof(float));
    m->expert_ids = xmalloc(B * used * sizeof(int32_t));
    m->expert_rows = xmalloc(B * used * sizeof(int32_t));
    m->expert_start = xmalloc(((size_t)hp->n_expert + 1) * sizeof(int32_t));
    m->router_scratch = hp->n_expert ? xmalloc(moe_route_scratch_bytes(&m->router)) : NULL;
    m->shexp_gate = xmalloc(B * sizeof(float));
    m->pos = xmalloc(B * sizeof(int32_t));
}

int model_init(struct model *m, const struct model_params *p) {
    const struct hparams *hp = &m->hp;
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (int)(hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    if (n_ctx <= 0) n_ctx = 4096;
    m->n_ctx = n_ctx;
    m->max_batch = p->max_batch > 0 ? p->max_batch : 512;
    if (m->max_batch > n_ctx) m->max_batch = n_ctx;
    struct model_widths w = model_scratch_widths(m);
    struct cpu_config cc = {
        .n_threads = p->n_threads > 0 ? p->n_threads : default_threads(),
        .max_batch = m->max_batch,
        .max_fanout = hp->n_expert_used ? (int)hp->n_expert_used : 1,
        .max_in = w.in,
        .max_act_per_token = w.act,
        .max_ctx = n_ctx,
        .max_head_dim = (int)max3(m->ag.q_head, m->ag.v_head, 1),
        .blas_min_batch = p->blas_min_batch,
    };
    m->cpu = cpu_init(&cc);
    alloc_scratch(m);
    if (p->gpu.enabled && vk_model_init(m, &p->gpu) < 0) return -1;
    if (m->gpu && vk_model_gpu_layers(m) == (int)hp->n_layer) { /* the GPU holds the cache */
        free(m->k_cache), free(m->v_cache);
        m->k_cache = m->v_cache = NULL;
    }
    return 0;
}

void model_free(struct model *m) {
    vk_model_free(m);
    cpu_free(m->cpu);
    void *bufs[] = {m->k_cache,
                    m->v_cache,
                    m->x,
                    m->xb,
                    m->proj,
                    m->q,
                    m->q_att,
                    m->kv,
                    m->v,
                    m->att,
                    m->att_v,
                    m->gate,
                    m->up,
                    m->moe_in,
                    m->moe_out,
                    m->router_logits,
                    m->expert_w,
                    m->expert_ids,
                    m->expert_rows,
                    m->expert_start,
                    m->router_scratch,
                    m->shexp_gate,
                    m->pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    for (uint32_t l = 0; m->layers && l < m->hp.n_layer; l++) free(m->layers[l].k_b_derived);
    free(m->layers);
    tokenizer_free(m->tok);
    gguf_close(&m->file);
    memset(m, 0, sizeof *m);
}

/* ---- forward pass ---- */

static const float *vec(const struct weight *w) { return (const float *)w->m.data; }

/* Matrix `index` of a 3-D tensor (an expert or a head), rows [r0, r0 + n_out). */
static struct cpu_matrix slice(const struct weight *w, int64_t index, int64_t r0, int64_t n_out) {
    struct cpu_matrix s = w->m;
    s.data = (const uint8_t *)w->m.data +
             ((size_t)index * (size_t)w->t->ne[1] + (size_t)r0) * w->m.row_bytes;
    s.n_out = n_out;
    return s;
}

static void add_bias(float *y, const struct weight *b, int n_tok, int64_t n) {
    if (!b->t) return;
    for (int t = 0; t < n_tok; t++) cpu_add(y + (size_t)t * (size_t)n, vec(b), n);
}

static void matmul(struct model *m, const struct weight *w, const float *x, int n_tok, float *y) {
    cpu_matmul(m->cpu, &w->m, x, n_tok, y);
}

/* y (n_tok, n_out) = x (n_tok, n_in) times w, as one of several products run together. */
static struct cpu_product product(const struct weight *w, const float *x, int n_tok, float *y) {
    return (struct cpu_product){w->m, x, w->m.n_in, y, w->m.n_out, n_tok};
}

struct attn_args model_attn_args(const struct model *m, int n_tok, int pos0) {
    const struct hparams *hp = &m->hp;
    const struct attn_geometry *g = &m->ag;
    int64_t q_width = g->mla ? g->kv_k : hp->head_dim;
    return (struct attn_args){
        .q_stride = (int64_t)hp->n_head * q_width,
        .k_stride = g->kv_k,
        .v_stride = g->mla ? g->kv_k : g->kv_v,
        .out_stride = (int64_t)hp->n_head * g->v_head,
        .n_tok = n_tok,
        .pos0 = pos0,
        .n_head = (int)hp->n_head,
        .n_head_kv = g->n_head_kv,
        .head_dim = (int)q_width,
        .head_dim_v = g->v_head,
        .scale = g->kq_scale,
    };
}

/* Standard attention (llama, qwen): new keys and values go to the cache, then GQA over it. */
static void gqa_attention(struct model *m, int il, int n_tok, int pos0) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    const struct attn_geometry *g = &m->ag;
    float *k_cache = m->k_cache + (size_t)il * (size_t)m->n_ctx * (size_t)g->kv_k;
    float *v_cache = m->v_cache + (size_t)il * (size_t)m->n_ctx * (size_t)g->kv_v;
    int64_t q_row = (int64_t)hp->n_head * hp->head_dim;
    const float *freqs = m->w[W_ROPE_FREQS].t ? vec(&m->w[W_ROPE_FREQS]) : NULL;

    const struct cpu_product qkv[3] = {product(&L->w[W_ATTN_Q], m->xb, n_tok, m->q),
                                       product(&L->w[W_ATTN_K], m->xb, n_tok, m->kv),
                                       product(&L->w[W_ATTN_V], m->xb, n_tok, m->v)};
    cpu_matmul_many(m->cpu, qkv, 3);
    add_bias(m->q, &L->w[W_ATTN_Q_BIAS], n_tok, q_row);
    add_bias(m->kv, &L->w[W_ATTN_K_BIAS], n_tok, g->kv_k);
    add_bias(m->v, &L->w[W_ATTN_V_BIAS], n_tok, g->kv_v);
    if (L->w[W_ATTN_Q_NORM].t) { /* qwen3: each head normalized before rope */
        cpu_rmsnorm(m->q, m->q, vec(&L->w[W_ATTN_Q_NORM]), hp->head_dim, n_tok * (int)hp->n_head,
                    hp->norm_eps);
        cpu_rmsnorm(m->kv, m->kv, vec(&L->w[W_ATTN_K_NORM]), hp->head_dim,
                    n_tok * (int)hp->n_head_kv, hp->norm_eps);
    }
    cpu_rope(m->q, n_tok, (int)hp->n_head, hp->head_dim, q_row, m->pos, &m->rope, freqs);
    cpu_rope(m->kv, n_tok, (int)hp->n_head_kv, hp->head_dim, g->kv_k, m->pos, &m->rope, freqs);
    memcpy(k_cache + (size_t)pos0 * (size_t)g->kv_k, m->kv, (size_t)n_tok * (size_t)g->kv_k * 4);
    memcpy(v_cache + (size_t)pos0 * (size_t)g->kv_v, m->v, (size_t)n_tok * (size_t)g->kv_v * 4);

    struct attn_args a = model_attn_args(m, n_tok, pos0);
    a.q = m->q, a.k_cache = k_cache, a.v_cache = v_cache, a.out = m->att;
    cpu_attention(m->cpu, &a);
    matmul(m, &L->w[W_ATTN_OUT], m->att, n_tok, m->proj);
}

/* One product per head: head h of every token row (strides in floats) times matrix h. */
static void per_head(struct model *m, const struct cpu_matrix *mats, const float *x, int64_t x_head,
                     int64_t x_row, float *y, int64_t y_head, int64_t y_row, int n_tok) {
    struct cpu_product p[CPU_MAX_PRODUCTS];
    int n_head = (int)m->hp.n_head;
    if (n_head > CPU_MAX_PRODUCTS) die("%d heads (at most %d)", n_head, CPU_MAX_PRODUCTS);
    for (int h = 0; h < n_head; h++)
        p[h] = (struct cpu_product){mats[h], x + (size_t)h * (size_t)x_head,
                                    x_row,   y + (size_t)h * (size_t)y_head,
                                    y_row,   n_tok};
    cpu_matmul_many(m->cpu, p, n_head);
}

/* The query (from attn_q, or through the low-rank attn_q_a, its norm and attn_q_b) and the
 * compressed key-value row: the two products that read xb run together. */
static void mla_query_kv(struct model *m, const struct model_layer *L, int n_tok) {
    const struct hparams *hp = &m->hp;
    int low_rank = L->w[W_ATTN_Q_A].t != NULL;
    float *q_a = m->att; /* free until the attention itself */
    const struct cpu_product p[2] = {
        low_rank ? product(&L->w[W_ATTN_Q_A], m->xb, n_tok, q_a)
                 : product(&L->w[W_ATTN_Q], m->xb, n_tok, m->q),
        product(&L->w[W_ATTN_KV_A_MQA], m->xb, n_tok, m->kv),
    };
    cpu_matmul_many(m->cpu, p, 2);
    if (!low_rank) return;
    cpu_rmsnorm(q_a, q_a, vec(&L->w[W_ATTN_Q_A_NORM]), hp->q_lora, n_tok, hp->norm_eps);
    matmul(m, &L->w[W_ATTN_Q_B], q_a, n_tok, m->q);
}

/* Multi-head latent attention (deepseek2). The cache keeps, per token, the normalized latent
 * (kv_lora) and the roped shared key part (n_rot). Each head's query absorbs attn_k_b, so
 * scores are taken against the latent directly; attn_v_b turns the attended latent into the
 * head's values. This is llama.cpp's MLA computation, in prefill and decode alike. */
static void mla_attention(struct model *m, int il, int n_tok, int pos0) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    const struct attn_geometry *g = &m->ag;
    int64_t lora = hp->kv_lora, nope = g->qk_nope, rot = hp->n_rot;
    int64_t q_head = hp->head_dim_k_mla, q_row = (int64_t)hp->n_head * q_head;
    int64_t latent = g->kv_k, qa_row = (int64_t)hp->n_head * latent;
    float *cache = m->k_cache + (size_t)il * (size_t)m->n_ctx * (size_t)latent;
    struct cpu_matrix mats[CPU_MAX_PRODUCTS];

    mla_query_kv(m, L, n_tok);
    cpu_rope(m->q + nope, n_tok, (int)hp->n_head, q_head, q_row, m->pos, &m->rope, NULL);
    cpu_rope(m->kv + lora, n_tok, 1, latent, latent, m->pos, &m->rope, NULL);
    for (int t = 0; t < n_tok; t++) {
        float *c = m->kv + (size_t)t * (size_t)latent;
        cpu_rmsnorm(c, c, vec(&L->w[W_ATTN_KV_A_NORM]), lora, 1, hp->norm_eps);
    }
    memcpy(cache + (size_t)pos0 * (size_t)latent, m->kv, (size_t)n_tok * (size_t)latent * 4);

    for (uint32_t h = 0; h < hp->n_head; h++)
        mats[h] = L->k_b_derived
                      ? (struct cpu_matrix){L->k_b_derived + (size_t)h * (size_t)(lora * nope),
                                            QT_F32,
                                            nope,
                                            lora,
                                            (size_t)nope * 4,
                                            0}
                      : slice(&L->w[W_ATTN_K_B], h, 0, lora);
    per_head(m, mats, m->q, q_head, q_row, m->q_att, latent, qa_row, n_tok);
    for (int t = 0; t < n_tok; t++)
        for (uint32_t h = 0; h < hp->n_head; h++)
            memcpy(m->q_att + (size_t)t * (size_t)qa_row + (size_t)h * (size_t)latent + lora,
                   m->q + (size_t)t * (size_t)q_row + (size_t)h * (size_t)q_head + nope,
                   (size_t)rot * 4);

    struct attn_args a = model_attn_args(m, n_tok, pos0);
    a.q = m->q_att, a.k_cache = cache, a.v_cache = cache, a.out = m->att;
    cpu_attention(m->cpu, &a);

    int64_t v_dim = hp->head_dim_v_mla, v_row = (int64_t)hp->n_head * v_dim;
    for (uint32_t h = 0; h < hp->n_head; h++)
        mats[h] = L->k_b_derived
                      ? slice(&L->w[W_ATTN_KV_B], 0, (int64_t)h * (nope + v_dim) + nope, v_dim)
                      : slice(&L->w[W_ATTN_V_B], h, 0, v_dim);
    per_head(m, mats, m->att, lora, (int64_t)hp->n_head * lora, m->att_v, v_dim, v_row, n_tok);
    matmul(m, &L->w[W_ATTN_OUT], m->att_v, n_tok, m->proj);
}

static void attention_block(struct model *m, int il, int n_tok, int pos0) {
    const struct hparams *hp = &m->hp;
    cpu_rmsnorm(m->xb, m->x, vec(&m->layers[il].w[W_ATTN_NORM]), hp->n_embd, n_tok, hp->norm_eps);
    if (m->ag.mla)
        mla_attention(m, il, n_tok, pos0);
    else
        gqa_attention(m, il, n_tok, pos0);
    cpu_add(m->x, m->proj, (int64_t)n_tok * hp->n_embd);
}

/* out = W_down (silu(W_gate x) * W_up x) for n rows. */
static void swiglu_ffn(struct model *m, const struct weight *gate, const struct weight *up,
                       const struct weight *down, const float *x, int n, int64_t n_ff, float *out) {
    const struct cpu_product gate_up[2] = {product(gate, x, n, m->gate), product(up, x, n, m->up)};
    cpu_matmul_many(m->cpu, gate_up, 2); /* one input, two products: one pair of barriers */
    cpu_swiglu(m->gate, m->gate, m->up, (int64_t)n * n_ff);
    matmul(m, down, m->gate, n, out);
}

/* Routes every token, then lists the (token, choice) slots of each expert together. */
static void route_tokens(struct model *m, const struct model_layer *L, int n_tok, int routed) {
    int n_exp = (int)m->hp.n_expert, k = (int)m->hp.n_expert_used;
    struct moe_router_cfg cfg = m->router;
    cfg.bias = L->w[W_FFN_EXP_PROBS_B].t ? vec(&L->w[W_FFN_EXP_PROBS_B]) : NULL;
    if (!routed) matmul(m, &L->w[W_FFN_GATE_INP], m->xb, n_tok, m->router_logits);
    for (int t = 0; t < n_tok && !routed; t++)
        moe_route(&cfg, m->router_logits + (size_t)t * (size_t)n_exp, m->router_scratch,
                  m->expert_ids + (size_t)t * (size_t)k, m->expert_w + (size_t)t * (size_t)k);
    memset(m->expert_start, 0, ((size_t)n_exp + 1) * sizeof(int32_t));
    for (int s = 0; s < n_tok * k; s++) m->expert_start[m->expert_ids[s] + 1]++;
    for (int e = 0; e < n_exp; e++) m->expert_start[e + 1] += m->expert_start[e];
    int32_t *fill = m->expert_rows; /* counting sort of slots by expert, stable */
    for (int e = 0, w = 0; e < n_exp; e++)
        for (int s = 0; s < n_tok * k; s++)
            if (m->expert_ids[s] == e) fill[w++] = s;
}

/* One product per active expert over its gathered rows, appended to p (n so far; run first
 * when full); out rows follow m->expert_rows. x_slot: floats from one slot's input row to the
 * next (n_in, or 0 where every slot reads the same row). */
static int expert_products(struct model *m, struct cpu_product *p, int n, const struct weight *w,
                           int64_t r0, int64_t n_out, const float *x, int64_t x_slot, int64_t n_in,
                           float *y) {
    for (int e = 0; e < (int)m->hp.n_expert; e++) {
        int start = m->expert_start[e], count = m->expert_start[e + 1] - start;
        if (!count) continue;
        if (n == CPU_MAX_PRODUCTS) {
            cpu_matmul_many(m->cpu, p, n);
            n = 0;
        }
        p[n++] = (struct cpu_product){slice(w, e, r0, n_out),
                                      x + (size_t)start * (size_t)x_slot,
                                      n_in,
                                      y + (size_t)start * (size_t)n_out,
                                      n_out,
                                      count};
    }
    return n;
}

/* Routed experts: gather each expert's tokens, run its SwiGLU once over them, then add the
 * outputs per token weighted, in the router's order (llama.cpp's summation order). */
void model_routed_experts_cpu(struct model *m, int il, int n_tok, int routed, float *out) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    int k = (int)hp->n_expert_used, slots = n_tok * k;
    int64_t E = hp->n_embd, F = hp->n_ff_exp;
    route_tokens(m, L, n_tok, routed);
    /* One token: every expert reads xb itself, so its activations are quantized once */
    const float *in = n_tok == 1 ? m->xb : m->moe_in;
    const int64_t in_slot = n_tok == 1 ? 0 : E;
    if (n_tok > 1)
        for (int i = 0; i < slots; i++)
            memcpy(m->moe_in + (size_t)i * (size_t)E,
                   m->xb + (size_t)(m->expert_rows[i] / k) * (size_t)E, (size_t)E * 4);
    int fused = L->w[W_FFN_GATE_UP_EXPS].t != NULL;
    struct cpu_product p[CPU_MAX_PRODUCTS];
    int n = expert_products(m, p, 0, fused ? &L->w[W_FFN_GATE_UP_EXPS] : &L->w[W_FFN_GATE_EXPS], 0,
                            F, in, in_slot, E, m->gate);
    n = expert_products(m, p, n, fused ? &L->w[W_FFN_GATE_UP_EXPS] : &L->w[W_FFN_UP_EXPS],
                        fused ? F : 0, F, in, in_slot, E, m->up);
    cpu_matmul_many(m->cpu, p, n); /* gate and up of every expert together */
    cpu_swiglu(m->gate, m->gate, m->up, (int64_t)slots * F);
    n = expert_products(m, p, 0, &L->w[W_FFN_DOWN_EXPS], 0, E, m->gate, F, F, m->moe_in);
    cpu_matmul_many(m->cpu, p, n);
    for (int i = 0; i < slots; i++) /* back to (token, choice) order */
        memcpy(m->moe_out + (size_t)m->expert_rows[i] * (size_t)E,
               m->moe_in + (size_t)i * (size_t)E, (size_t)E * 4);
    for (int t = 0; t < n_tok; t++) {
        float *o = out + (size_t)t * (size_t)E;
        for (int64_t d = 0; d < E; d++) {
            float acc = 0.0f;
            for (int c = 0; c < k; c++) {
                size_t s = (size_t)t * (size_t)k + (size_t)c;
                float v = m->moe_out[s * (size_t)E + (size_t)d] * m->expert_w[s];
                acc = c ? acc + v : v;
            }
            o[d] = acc;
        }
    }
}

/* Shared experts see every token; qwen2moe scales theirs by a sigmoid gate. */
static void shared_experts(struct model *m, const struct model_layer *L, int n_tok, float *out) {
    const struct hparams *hp = &m->hp;
    int64_t E = hp->n_embd;
    swiglu_ffn(m, &L->w[W_FFN_GATE_SHEXP], &L->w[W_FFN_UP_SHEXP], &L->w[W_FFN_DOWN_SHEXP], m->xb,
               n_tok, hp->n_ff_shexp, m->moe_in);
    if (L->w[W_FFN_GATE_INP_SHEXP].t) {
        struct cpu_matrix g = L->w[W_FFN_GATE_INP_SHEXP].m;
        g.n_out = 1;
        cpu_matmul(m->cpu, &g, m->xb, n_tok, m->shexp_gate);
        cpu_sigmoid(m->shexp_gate, m->shexp_gate, n_tok);
        for (int t = 0; t < n_tok; t++)
            for (int64_t d = 0; d < E; d++)
                m->moe_in[(size_t)t * (size_t)E + (size_t)d] *= m->shexp_gate[t];
    }
    cpu_add(out, m->moe_in, (int64_t)n_tok * E);
}

static void ffn_block(struct model *m, int il, int n_tok) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    cpu_rmsnorm(m->xb, m->x, vec(&L->w[W_FFN_NORM]), hp->n_embd, n_tok, hp->norm_eps);
    if (!L->is_moe) {
        swiglu_ffn(m, &L->w[W_FFN_GATE], &L->w[W_FFN_UP], &L->w[W_FFN_DOWN], m->xb, n_tok, hp->n_ff,
                   m->proj);
    } else {
        model_routed_experts_cpu(m, il, n_tok, 0, m->proj);
        if (L->w[W_FFN_DOWN_SHEXP].t) shared_experts(m, L, n_tok, m->proj);
    }
    cpu_add(m->x, m->proj, (int64_t)n_tok * hp->n_embd);
}

/* Final norm and output head for rows [first, n_tok) of the batch. */
void model_output_cpu(struct model *m, int first, int n_tok, float *logits) {
    const struct hparams *hp = &m->hp;
    int n = n_tok - first;
    float *xr = m->x + (size_t)first * hp->n_embd;
    cpu_rmsnorm(m->xb, xr, vec(&m->w[W_OUTPUT_NORM]), hp->n_embd, n, hp->norm_eps);
    matmul(m, &m->w[W_OUTPUT], m->xb, n, logits);
}

void model_layer_cpu(struct model *m, int il, int n_tok, int pos0) {
    attention_block(m, il, n_tok, pos0);
    ffn_block(m, il, n_tok);
}

static int forward_batch(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                         int all_logits) {
    const struct hparams *hp = &m->hp;
    if (m->gpu) return vk_model_forward(m, tokens, n_tok, pos0, logits, all_logits);
    for (int t = 0; t < n_tok; t++) {
        cpu_get_row(&m->w[W_TOKEN_EMBD].m, tokens[t], m->x + (size_t)t * hp->n_embd);
        m->pos[t] = pos0 + t;
    }
    for (int il = 0; il < (int)hp->n_layer; il++) model_layer_cpu(m, il, n_tok, pos0);
    if (logits) model_output_cpu(m, all_logits ? 0 : n_tok - 1, n_tok, logits);
    return 0;
}

int model_forward(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                  int all_logits) {
    if (n_tok <= 0) return 0;
    if (pos0 < 0 || (int64_t)pos0 + n_tok > m->n_ctx) {
        err_set("model: positions %d..%d do not fit the context of %d tokens (-c)", pos0,
                pos0 + n_tok - 1, m->n_ctx);
        return -1;
    }
    for (int t = 0; t < n_tok; t++) {
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= m->hp.n_vocab) {
            err_set("model: token id %d at position %d is outside the vocabulary (0..%u)",
                    tokens[t], pos0 + t, m->hp.n_vocab - 1);
            return -1;
        }
    }
    for (int done = 0; done < n_tok; done += m->max_batch) {
        int n = n_tok - done < m->max_batch ? n_tok - done : m->max_batch;
        int last_chunk = done + n == n_tok;
        float *out = NULL;
        if (all_logits)
            out = logits + (size_t)done * m->hp.n_vocab;
        else if (last_chunk)
            out = logits;
        if (forward_batch(m, tokens + done, n, pos0 + done, out, all_logits)) return -1;
    }
    return 0;
}
