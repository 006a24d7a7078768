/* mktiny: writes a random-weight GGUF model of any architecture moerun runs, in any shape, for
 * tests and benchmarks. The tensor list comes from the loader's own tables
 * (model_describe_tensors); the weights are seeded pseudo-random numbers, quantized with the
 * reference quantizers, streamed one tensor at a time so a model larger than RAM can be made.
 *
 *   mktiny OUT.gguf [--arch A] [--preset NAME] [shape flags] [--type T] [--seed S] [--vocab N]
 *
 * Weights: approximately N(0,1) (sum of four uniforms) times 1/sqrt(row length); token_embd and
 * output times 2/sqrt(n_embd) (logits of std about 2); norms uniform in [0.9, 1.1]; biases 0.3,
 * exp_probs_b 0.05 (times N(0,1)). Vectors and routers (ffn_gate_inp) stay F32, as llama.cpp
 * keeps them. A matrix whose row length is not a multiple of the type's block falls back as
 * llama-quantize does: q2_k/q3_k -> q4_0, q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0, then f16.
 * The tokenizer is a synthetic SentencePiece ("llama") vocabulary: <unk> <s> </s>, the 256 byte
 * tokens, then filler pieces; the output rows of those three are zero, so greedy runs do not
 * stop early at end of text. deepseek2's attn_k_b / attn_v_b are drawn as the attn_kv_b of the
 * legacy layout and split as llama.cpp's converter does: with one seed, --legacy-kv-b and the
 * split layout write the same model. The written file is loaded once with model_load as a check. */
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MAX_THREADS 64

/* ---- shapes and presets ---- */

struct shape {
    const char *name; /* preset name, also general.name */
    const char *arch; /* general.architecture */
    uint32_t n_vocab, n_ctx, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim;
    float rope_base, norm_eps;
    uint32_t n_expert, n_expert_used, n_expert_shared, n_ff_exp, n_ff_shexp, n_dense_lead;
    uint32_t n_group, n_group_used, gating; /* gating: 0 unset, 1 softmax, 2 sigmoid */
    uint32_t w_norm;                        /* expert_weights_norm: 0 unset, 1 false, 2 true */
    float w_scale;                          /* expert_weights_scale: 0 unset */
    uint32_t q_lora, kv_lora, qk_nope, qk_rope, v_head; /* deepseek2 MLA */
    uint32_t legacy_kv_b, exp_probs_b, untied;          /* 0 / 1 */
    float yarn_factor;                                  /* > 0: rope.scaling.type = yarn */
    uint32_t yarn_orig_ctx;
    float yarn_log_mul;
};

#define TINY .n_vocab = 512, .n_ctx = 256, .n_embd = 256
#define DS_TINY                                                                                    \
    TINY, .arch = "deepseek2", .n_layer = 3, .n_head = 4, .n_ff = 64, .n_ff_exp = 32,              \
          .n_expert_shared = 1, .n_dense_lead = 1, .kv_lora = 128, .qk_nope = 64, .qk_rope = 32,   \
          .v_head = 64, .norm_eps = 1e-6f
#define DS_BENCH                                                                                   \
    .arch = "deepseek2", .n_vocab = 102400, .n_ctx = 4096, .n_head = 16, .n_expert_shared = 2,     \
    .n_dense_lead = 1, .w_scale = 1.0f, .norm_eps = 1e-6f, .untied = 1

static const struct shape presets[] = {
    {TINY, .name = "tiny-llama", .arch = "llama", .n_layer = 2, .n_head = 8, .n_head_kv = 4,
     .n_ff = 512, .untied = 1},
    {TINY, .name = "tiny-llama-moe", .arch = "llama", .n_layer = 2, .n_head = 4, .n_head_kv = 2,
     .head_dim = 32, .n_ff = 64, .n_expert = 4, .n_expert_used = 2},
    {TINY, .name = "tiny-qwen2", .arch = "qwen2", .n_layer = 2, .n_head = 8, .n_head_kv = 2,
     .n_ff = 128, .rope_base = 1e6f, .norm_eps = 1e-6f},
    {TINY, .name = "tiny-qwen2moe", .arch = "qwen2moe", .n_layer = 2, .n_head = 8, .n_head_kv = 1,
     .head_dim = 32, .n_ff = 128, .n_expert = 4, .n_expert_used = 2, .n_ff_exp = 32,
     .n_ff_shexp = 64, .rope_base = 1e6f, .norm_eps = 1e-6f, .untied = 1},
    {TINY, .name = "tiny-qwen3moe", .arch = "qwen3moe", .n_layer = 2, .n_head = 4, .n_head_kv = 2,
     .head_dim = 32, .n_ff = 256, .n_expert = 8, .n_expert_used = 2, .n_ff_exp = 32,
     .rope_base = 1e6f, .norm_eps = 1e-6f},
    {DS_TINY, .name = "tiny-deepseek2", .n_expert = 8, .n_expert_used = 2, .w_scale = 1.0f},
    {DS_TINY, .name = "tiny-deepseek2-v3", .q_lora = 128, .n_expert = 16, .n_expert_used = 4,
     .n_group = 4, .n_group_used = 2, .gating = 2, .w_norm = 2, .w_scale = 2.5f, .exp_probs_b = 1,
     .yarn_factor = 4.0f, .yarn_orig_ctx = 64, .yarn_log_mul = 0.1f},
    {DS_TINY, .name = "tiny-deepseek2-legacy", .n_expert = 8, .n_expert_used = 2, .w_scale = 1.0f,
     .legacy_kv_b = 1},
    {DS_BENCH, .name = "deepseek-v2-lite", .n_embd = 2048, .n_layer = 27, .n_ff = 10944,
     .n_expert = 64, .n_expert_used = 6, .n_ff_exp = 1408, .kv_lora = 512, .qk_nope = 128,
     .qk_rope = 64, .v_head = 128},
    {DS_BENCH, .name = "deepseek-small", .n_embd = 1024, .n_layer = 12, .n_ff = 2816,
     .n_expert = 32, .n_expert_used = 4, .n_ff_exp = 512, .kv_lora = 256, .qk_nope = 64,
     .qk_rope = 32, .v_head = 64},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

/* The tiny preset an --arch alone stands for. */
static const char *default_preset(const char *arch) {
    for (size_t i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].arch, arch)) return presets[i].name;
    return NULL;
}

static const struct shape *find_preset(const char *name) {
    for (size_t i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, name)) return &presets[i];
    return NULL;
}

/* ---- command line ---- */

enum flag_kind { F_U32, F_BOOL, F_F32, F_SWITCH }; /* F_BOOL: 0/1 stored as 1/2 */
struct flag {
    const char *name;
    size_t offset; /* into struct shape */
    enum flag_kind kind;
    const char *help;
};

#define SF(f) offsetof(struct shape, f)
static const struct flag shape_flags[] = {
    {"--vocab", SF(n_vocab), F_U32, "vocabulary size (>= 259)"},
    {"--ctx", SF(n_ctx), F_U32, "context_length"},
    {"--embd", SF(n_embd), F_U32, "embedding_length"},
    {"--layers", SF(n_layer), F_U32, "block_count"},
    {"--ff", SF(n_ff), F_U32, "feed_forward_length (dense layers; Mixtral: experts too)"},
    {"--heads", SF(n_head), F_U32, "attention.head_count"},
    {"--heads-kv", SF(n_head_kv), F_U32, "attention.head_count_kv (GQA; default heads)"},
    {"--head-dim", SF(head_dim), F_U32, "key/value_length (GQA; default embd/heads)"},
    {"--rope-base", SF(rope_base), F_F32, "rope.freq_base"},
    {"--eps", SF(norm_eps), F_F32, "attention.layer_norm_rms_epsilon"},
    {"--experts", SF(n_expert), F_U32, "expert_count (0: dense)"},
    {"--experts-used", SF(n_expert_used), F_U32, "expert_used_count"},
    {"--experts-shared", SF(n_expert_shared), F_U32, "expert_shared_count (deepseek2)"},
    {"--ff-exp", SF(n_ff_exp), F_U32, "expert_feed_forward_length"},
    {"--ff-shexp", SF(n_ff_shexp), F_U32, "expert_shared_feed_forward_length (qwen2moe)"},
    {"--dense-lead", SF(n_dense_lead), F_U32, "leading_dense_block_count"},
    {"--groups", SF(n_group), F_U32, "expert_group_count"},
    {"--groups-used", SF(n_group_used), F_U32, "expert_group_used_count"},
    {"--gating", SF(gating), F_U32, "expert_gating_func: 1 softmax, 2 sigmoid"},
    {"--weights-norm", SF(w_norm), F_BOOL, "expert_weights_norm: 0 or 1"},
    {"--weights-scale", SF(w_scale), F_F32, "expert_weights_scale"},
    {"--q-lora", SF(q_lora), F_U32, "attention.q_lora_rank (0: attn_q)"},
    {"--kv-lora", SF(kv_lora), F_U32, "attention.kv_lora_rank"},
    {"--qk-nope", SF(qk_nope), F_U32, "per-head query/key width without rope"},
    {"--qk-rope", SF(qk_rope), F_U32, "rope.dimension_count (MLA)"},
    {"--v-head", SF(v_head), F_U32, "per-head value width (MLA)"},
    {"--legacy-kv-b", SF(legacy_kv_b), F_SWITCH, "deepseek2: one attn_kv_b, no *_mla keys"},
    {"--exp-probs-b", SF(exp_probs_b), F_SWITCH, "deepseek2: exp_probs_b.bias"},
    {"--untied", SF(untied), F_SWITCH, "write output.weight (default: tied to token_embd)"},
    {"--yarn", SF(yarn_factor), F_F32, "YaRN rope scaling factor"},
    {"--yarn-orig-ctx", SF(yarn_orig_ctx), F_U32, "rope.scaling.original_context_length"},
    {"--yarn-log-mul", SF(yarn_log_mul), F_F32, "rope.scaling.yarn_log_multiplier"},
};
#define N_FLAGS (sizeof shape_flags / sizeof shape_flags[0])

struct options {
    const char *out;
    const char *arch;
    const char *preset;
    const char *type_name;
    uint64_t seed;
    int n_threads;
    struct shape s;
};

static void usage(FILE *f) {
    fprintf(f, "usage: mktiny OUT.gguf [--arch A] [--preset NAME] [shape flags] [--type T]\n"
               "              [--seed S] [--vocab N]\n"
               "Writes a random-weight model. --arch A alone uses the tiny preset of A; shape\n"
               "flags override the preset's values.\n"
               "  --type T       f32 (default), f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k,\n"
               "                 q3_k, q4_k, q5_k, q6_k, or q4_k_m (an approximation of\n"
               "                 llama.cpp's Q4_K_M mix)\n"
               "  --seed S       PRNG seed (default 1); the same seed gives the same file\n"
               "  --threads N    threads generating weights (default: online CPUs); the file\n"
               "                 does not depend on N\n"
               "  --list-presets print the preset names, one per line\n");
    for (size_t i = 0; i < N_FLAGS; i++)
        fprintf(f, "  %-16s %s %s\n", shape_flags[i].name,
                shape_flags[i].kind == F_SWITCH ? "  " : "N", shape_flags[i].help);
    fprintf(f, "presets:");
    for (size_t i = 0; i < N_PRESETS; i++) fprintf(f, " %s", presets[i].name);
    fprintf(f, "\n");
}

static int parse_number(const char *flag, const char *v, enum flag_kind kind, void *dst) {
    char *end;
    if (kind == F_F32) {
        float x = strtof(v, &end);
        if (*end == '\0' && end != v && isfinite(x)) return memcpy(dst, &x, 4), 0;
    } else {
        long long x = strtoll(v, &end, 10);
        if (*end == '\0' && end != v && x >= 0 && x <= (kind == F_BOOL ? 1 : 0xffffffffLL)) {
            uint32_t u = (uint32_t)x + (kind == F_BOOL);
            return memcpy(dst, &u, 4), 0;
        }
    }
    err_set("mktiny: %s: '%s' is not a valid value", flag, v);
    return -1;
}

/* Applies one shape flag; returns the arguments used (1 or 2), 0 if a not a shape flag. */
static int parse_shape_flag(struct shape *s, int argc, char **argv, int i) {
    for (size_t k = 0; k < N_FLAGS; k++) {
        const struct flag *f = &shape_flags[k];
        if (strcmp(argv[i], f->name)) continue;
        void *dst = (char *)s + f->offset;
        if (f->kind == F_SWITCH) return *(uint32_t *)dst = 1, 1;
        if (i + 1 >= argc) {
            err_set("mktiny: %s needs a value", f->name);
            return -1;
        }
        return parse_number(f->name, argv[i + 1], f->kind, dst) < 0 ? -1 : 2;
    }
    return 0;
}

/* Whether argument a is a flag that takes a value. */
static int takes_value(const char *a) {
    static const char *const own[] = {"--arch", "--preset", "--type", "--seed", "--threads"};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (!strcmp(a, own[i])) return 1;
    for (size_t k = 0; k < N_FLAGS; k++)
        if (!strcmp(a, shape_flags[k].name)) return shape_flags[k].kind != F_SWITCH;
    return 0;
}

/* First pass: output, arch, preset (the base the shape flags then change). */
static int parse_base(struct options *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--arch") && v) o->arch = v;
        if (!strcmp(a, "--preset") && v) o->preset = v;
        if (a[0] != '-' && !o->out) o->out = a;
        if (takes_value(a)) i++;
    }
    if (!o->out || (!o->arch && !o->preset)) {
        err_set("mktiny: need OUT.gguf and --arch or --preset (see --help)");
        return -1;
    }
    if (!o->preset && !(o->preset = default_preset(o->arch))) {
        err_set("mktiny: unknown architecture '%s' (llama qwen2 qwen2moe qwen3moe deepseek2)",
                o->arch);
        return -1;
    }
    const struct shape *p = find_preset(o->preset);
    if (!p) {
        err_set("mktiny: unknown preset '%s' (see --list-presets)", o->preset);
        return -1;
    }
    if (o->arch && strcmp(o->arch, p->arch)) {
        err_set("mktiny: preset '%s' is architecture %s, not %s", p->name, p->arch, o->arch);
        return -1;
    }
    o->s = *p;
    return 0;
}

/* Second pass: everything else. */
static int parse_rest(struct options *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int used = parse_shape_flag(&o->s, argc, argv, i);
        if (used < 0) return -1;
        if (used) {
            i += used - 1;
            continue;
        }
        if (!strcmp(a, "--arch") || !strcmp(a, "--preset")) {
            i++;
        } else if (!strcmp(a, "--type") && i + 1 < argc) {
            o->type_name = argv[++i];
        } else if (!strcmp(a, "--seed") && i + 1 < argc) {
            char *end;
            o->seed = strtoull(argv[++i], &end, 10);
            if (*end) return err_set("mktiny: --seed: '%s' is not a number", argv[i]), -1;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            o->n_threads = atoi(argv[++i]);
            if (o->n_threads < 1 || o->n_threads > MAX_THREADS)
                return err_set("mktiny: --threads must be 1..%d", MAX_THREADS), -1;
        } else if (a[0] == '-' || a != o->out) {
            err_set("mktiny: unknown or incomplete argument '%s' (see --help)", a);
            return -1;
        }
    }
    return 0;
}

static int parse_args(struct options *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->seed = 1;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o->n_threads = ncpu < 1 ? 1 : ncpu > MAX_THREADS ? MAX_THREADS : (int)ncpu;
    o->type_name = "f32";
    return parse_base(o, argc, argv) < 0 ? -1 : parse_rest(o, argc, argv);
}

/* ---- hyper-parameters ---- */

static int is_arch(const struct shape *s, const char *a) { return !strcmp(s->arch, a); }

/* Attention widths as model_load derives them from the keys mktiny writes. */
static void fill_attention(const struct shape *s, struct hparams *hp) {
    if (is_arch(s, "deepseek2")) {
        uint32_t k = s->qk_nope + s->qk_rope;
        hp->n_head_kv = s->legacy_kv_b ? s->n_head : 1;
        hp->head_dim = s->legacy_kv_b ? k : s->kv_lora + s->qk_rope;
        hp->head_dim_v = s->legacy_kv_b ? s->v_head : s->kv_lora;
        hp->n_rot = s->qk_rope;
        hp->head_dim_k_mla = k;
        hp->head_dim_v_mla = s->v_head;
        hp->q_lora = s->q_lora;
        hp->kv_lora = s->kv_lora;
        return;
    }
    hp->n_head_kv = s->n_head_kv ? s->n_head_kv : s->n_head;
    hp->head_dim = s->head_dim ? s->head_dim : s->n_embd / s->n_head;
    hp->head_dim_v = hp->n_rot = hp->head_dim_k_mla = hp->head_dim_v_mla = hp->head_dim;
}

static void fill_experts(const struct shape *s, struct hparams *hp) {
    hp->n_expert = s->n_expert;
    hp->n_expert_used = s->n_expert_used;
    hp->n_expert_shared = s->n_expert_shared;
    hp->n_dense_lead = s->n_dense_lead;
    hp->n_group = s->n_group;
    hp->n_group_used = s->n_group_used;
    hp->gating = s->gating;
    hp->n_ff_exp = s->n_ff_exp ? s->n_ff_exp : s->n_ff; /* Mixtral: experts of width n_ff */
    hp->n_ff_shexp = s->n_ff_shexp;
    if (!hp->n_ff_shexp)
        hp->n_ff_shexp = hp->n_ff_exp * (s->n_expert_shared ? s->n_expert_shared : 1);
}

static void fill_hparams(const struct shape *s, struct hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->n_vocab = s->n_vocab;
    hp->n_ctx_train = s->n_ctx;
    hp->n_embd = s->n_embd;
    hp->n_layer = s->n_layer;
    hp->n_ff = s->n_ff;
    hp->n_head = s->n_head;
    fill_attention(s, hp);
    fill_experts(s, hp);
}

/* What model_load would refuse, found before minutes of writing; NULL when fine. */
static const char *shape_problem(const struct shape *s) {
    if (!s->n_embd || !s->n_layer || !s->n_head || s->n_vocab < 259)
        return "embd, layers and heads must be > 0 and vocab >= 259";
    if (!is_arch(s, "deepseek2") && !s->head_dim && s->n_embd % s->n_head)
        return "heads must divide embd (or give --head-dim)";
    if (s->n_expert && (!s->n_expert_used || s->n_expert_used > s->n_expert))
        return "experts-used must be 1..experts";
    if (s->n_group && (s->n_expert % s->n_group || s->n_group_used > s->n_group))
        return "groups must divide experts, and groups-used be at most groups";
    if (is_arch(s, "deepseek2") &&
        (!s->kv_lora || !s->qk_nope || !s->qk_rope || !s->v_head || s->qk_rope % 2))
        return "deepseek2 needs kv-lora, qk-nope, qk-rope (even) and v-head";
    if ((!s->n_expert || s->n_dense_lead) && !s->n_ff) return "dense layers need --ff";
    return NULL;
}

static int check_shape(const struct shape *s) {
    const char *why = shape_problem(s);
    if (why) err_set("mktiny: shape '%s': %s", s->name, why);
    return why ? -1 : 0;
}

/* ---- metadata ---- */

struct keys {
    struct gguf_writer *w;
    const char *arch;
};

static void key_u32(const struct keys *k, const char *suffix, uint32_t v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", k->arch, suffix);
    gguf_set_u32(k->w, key, v);
}

static void key_f32(const struct keys *k, const char *suffix, float v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", k->arch, suffix);
    gguf_set_f32(k->w, key, v);
}

static void write_common_keys(const struct keys *k, const struct shape *s,
                              const struct hparams *hp) {
    key_u32(k, "vocab_size", hp->n_vocab);
    key_u32(k, "context_length", hp->n_ctx_train);
    key_u32(k, "embedding_length", hp->n_embd);
    key_u32(k, "block_count", hp->n_layer);
    if (hp->n_ff) key_u32(k, "feed_forward_length", hp->n_ff);
    key_u32(k, "attention.head_count", hp->n_head);
    key_u32(k, "attention.head_count_kv", hp->n_head_kv);
    key_u32(k, "attention.key_length", hp->head_dim);
    key_u32(k, "attention.value_length", hp->head_dim_v);
    key_u32(k, "rope.dimension_count", hp->n_rot);
    key_f32(k, "rope.freq_base", s->rope_base > 0 ? s->rope_base : 10000.0f);
    key_f32(k, "attention.layer_norm_rms_epsilon", s->norm_eps > 0 ? s->norm_eps : 1e-5f);
}

static void write_mla_keys(const struct keys *k, const struct shape *s, const struct hparams *hp) {
    if (!is_arch(s, "deepseek2")) return;
    key_u32(k, "attention.q_lora_rank", hp->q_lora); /* 0 too, as the fixtures do */
    key_u32(k, "attention.kv_lora_rank", hp->kv_lora);
    if (s->legacy_kv_b) return;
    key_u32(k, "attention.key_length_mla", hp->head_dim_k_mla);
    key_u32(k, "attention.value_length_mla", hp->head_dim_v_mla);
}

static void write_expert_keys(const struct keys *k, const struct shape *s,
                              const struct hparams *hp) {
    if (!hp->n_expert) return;
    key_u32(k, "expert_count", hp->n_expert);
    key_u32(k, "expert_used_count", hp->n_expert_used);
    if (!is_arch(s, "llama") || hp->n_ff_exp != hp->n_ff)
        key_u32(k, "expert_feed_forward_length", hp->n_ff_exp);
    if (s->n_expert_shared) key_u32(k, "expert_shared_count", s->n_expert_shared);
    if (is_arch(s, "qwen2moe")) key_u32(k, "expert_shared_feed_forward_length", hp->n_ff_shexp);
    if (s->n_dense_lead) key_u32(k, "leading_dense_block_count", s->n_dense_lead);
    if (s->n_group) key_u32(k, "expert_group_count", s->n_group);
    if (s->n_group) key_u32(k, "expert_group_used_count", s->n_group_used);
    if (s->gating) key_u32(k, "expert_gating_func", s->gating);
    if (s->w_scale > 0) key_f32(k, "expert_weights_scale", s->w_scale);
    if (s->w_norm) {
        char key[128];
        snprintf(key, sizeof key, "%s.expert_weights_norm", k->arch);
        gguf_set_bool(k->w, key, s->w_norm == 2);
    }
}

static void write_yarn_keys(const struct keys *k, const struct shape *s) {
    if (!(s->yarn_factor > 0)) return;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", k->arch);
    gguf_set_str(k->w, key, "yarn");
    key_f32(k, "rope.scaling.factor", s->yarn_factor);
    if (s->yarn_orig_ctx) key_u32(k, "rope.scaling.original_context_length", s->yarn_orig_ctx);
    if (s->yarn_log_mul > 0) key_f32(k, "rope.scaling.yarn_log_multiplier", s->yarn_log_mul);
}

/* A SentencePiece vocabulary: <unk> <s> </s>, the byte tokens, then filler pieces
 * ("▁a", "a", "▁b", ... then two letters and more) with falling scores. */
static void write_tokenizer(struct gguf_writer *w, uint32_t n) {
    char **tok = xcalloc(n, sizeof *tok);
    float *score = xcalloc(n, sizeof *score);
    int32_t *type = xcalloc(n, sizeof *type);
    static const char *special[3] = {"<unk>", "<s>", "</s>"};
    for (uint32_t i = 0; i < n; i++) {
        char buf[32];
        if (i < 3) {
            snprintf(buf, sizeof buf, "%s", special[i]);
            type[i] = i == 0 ? 2 : 3; /* unknown, control */
        } else if (i < 259) {
            snprintf(buf, sizeof buf, "<0x%02X>", i - 3);
            type[i] = 6; /* byte */
        } else {
            uint32_t f = (i - 259) / 2, len = 0;
            char word[16];
            for (f++; f > 0 && len < sizeof word - 1; f = (f - 1) / 26)
                word[len++] = (char)('a' + (f - 1) % 26);
            word[len] = '\0';
            snprintf(buf, sizeof buf, "%s%s", (i - 259) % 2 ? "" : "\xe2\x96\x81", word);
            type[i] = 1;
            score[i] = -(float)(i - 259);
        }
        tok[i] = xstrdup(buf);
    }
    gguf_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, n);
    gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, score, n);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, type, n);
    gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    for (uint32_t i = 0; i < n; i++) free(tok[i]);
    free(tok);
    free(score);
    free(type);
}

/* ---- tensor types ---- */

struct type_choice {
    uint32_t type; /* the type asked for */
    int q4_k_m;    /* the Q4_K_M mix on top of Q4_K */
    int file_type; /* general.file_type (llama_ftype), -1: not written */
};

static int parse_type(const char *name, struct type_choice *tc) {
    tc->q4_k_m = !strcasecmp(name, "q4_k_m");
    if (tc->q4_k_m) name = "q4_k";
    for (uint32_t t = 0; t < QT_COUNT; t++) {
        const struct qtype_traits *tr = qtype_traits(t);
        if (!tr || !tr->vec_dot || !tr->from_float || strcasecmp(tr->name, name)) continue;
        static const struct {
            uint32_t type;
            int ftype;
        } ftypes[] = {{QT_F32, 0},   {QT_F16, 1},   {QT_Q4_0, 2}, {QT_Q8_0, 7},
                      {QT_Q4_K, 14}, {QT_Q6_K, 18}, {QT_BF16, 32}};
        tc->type = t;
        tc->file_type = tc->q4_k_m ? 15 : -1;
        for (size_t i = 0; !tc->q4_k_m && i < sizeof ftypes / sizeof ftypes[0]; i++)
            if (ftypes[i].type == t) tc->file_type = ftypes[i].ftype;
        return 0;
    }
    err_set("mktiny: --type '%s' is not a weight type moerun computes with (see --help)", name);
    return -1;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers and every third between. */
static int more_bits(int il, int n) {
    return il < n / 8 || il >= 7 * n / 8 || (il - n / 8) % 3 == 2;
}

static int layer_of(const char *name) { return strncmp(name, "blk.", 4) ? -1 : atoi(name + 4); }

/* The Q4_K_M mix, approximated: Q6_K for the output head (token_embd when tied) and for attn_v
 * and ffn_down* in use_more_bits layers; with exactly 8 experts, attn_k/attn_v Q8_0 and
 * attn_output Q5_K (llama.cpp's n_expert == 8 rules). */
static uint32_t mix_q4_k_m(const char *name, const struct hparams *hp, int tied) {
    int il = layer_of(name), n = (int)hp->n_layer;
    if (!strcmp(name, "output.weight") || (tied && !strcmp(name, "token_embd.weight")))
        return QT_Q6_K;
    if (hp->n_expert == 8 && (strstr(name, "attn_k.weight") || strstr(name, "attn_v.weight")))
        return QT_Q8_0;
    if (hp->n_expert == 8 && strstr(name, "attn_output.weight")) return QT_Q5_K;
    if ((strstr(name, "attn_v.weight") || strstr(name, "ffn_down")) && more_bits(il, n))
        return QT_Q6_K;
    return QT_Q4_K;
}

/* llama-quantize's fallback when the row length is not a multiple of the block. */
static uint32_t fallback(uint32_t type, int64_t n0) {
    switch (type) {
    case QT_Q2_K:
    case QT_Q3_K:
        type = QT_Q4_0;
        break;
    case QT_Q4_K:
        type = QT_Q5_0;
        break;
    case QT_Q5_K:
        type = QT_Q5_1;
        break;
    case QT_Q6_K:
        type = QT_Q8_0;
        break;
    default:
        break;
    }
    return qtype_row_size(type, n0) ? type : QT_F16;
}

static uint32_t tensor_type(const struct tensor_desc *d, const struct type_choice *tc,
                            const struct hparams *hp, int tied) {
    if (d->is_vector || strstr(d->name, "ffn_gate_inp")) return QT_F32;
    uint32_t t = tc->q4_k_m ? mix_q4_k_m(d->name, hp, tied) : tc->type;
    return qtype_row_size(t, d->ne[0]) ? t : fallback(t, d->ne[0]);
}

/* ---- random weights ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* One tensor's stream: independent of the others, so the file does not depend on order. */
static uint64_t tensor_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    uint64_t s = seed ^ h;
    return splitmix64(&s);
}

/* Sum of four 16-bit uniforms, centred and scaled to unit variance: N(0,1)-ish, fast. */
static float gauss(uint64_t *s) {
    uint64_t r = splitmix64(s);
    int32_t sum = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) +
                  (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48);
    return (float)(sum - 131070) * (1.7320508f / 65536.0f);
}

static float uniform01(uint64_t *s) { return (float)(splitmix64(s) >> 40) / 16777216.0f; }

enum init { INIT_GAUSS, INIT_NORM };

struct job {
    struct tensor_desc d;
    uint32_t type;
    uint64_t seed;
    enum init init;
    float scale;
    int64_t zero_rows; /* leading rows set to 0 */
    int n_threads;
    /* deepseek2 attn_k_b (1) / attn_v_b (2): the numbers attn_kv_b.weight would hold, split
     * as llama.cpp's converter splits it, so both layouts of one seed are the same model */
    int kv_b_part;
    int64_t qk_nope, v_head, kv_lora;
};

/* attn_k_b / attn_v_b take attn_kv_b's seed and scale. */
static void job_kv_b(struct job *j, const struct tensor_desc *d, uint64_t seed,
                     const struct hparams *hp) {
    const char *k = strstr(d->name, "attn_k_b."), *v = strstr(d->name, "attn_v_b.");
    if (!k && !v) return;
    char name[96];
    snprintf(name, sizeof name, "%.*sattn_kv_b.weight", (int)((k ? k : v) - d->name), d->name);
    j->kv_b_part = k ? 1 : 2;
    j->seed = tensor_seed(seed, name);
    j->qk_nope = (int64_t)hp->head_dim_k_mla - hp->n_rot;
    j->v_head = hp->head_dim_v_mla;
    j->kv_lora = hp->kv_lora;
    j->scale = 1.0f / sqrtf((float)hp->kv_lora);
}

static void job_init(struct job *j, const struct tensor_desc *d, uint32_t type, uint64_t seed,
                     const struct hparams *hp, int tied) {
    uint32_t n_embd = hp->n_embd;
    j->d = *d;
    j->type = type;
    j->seed = tensor_seed(seed, d->name);
    j->init = d->is_vector && strstr(d->name, "norm") ? INIT_NORM : INIT_GAUSS;
    j->scale = 1.0f / sqrtf((float)d->ne[0]);
    if (strstr(d->name, "exp_probs_b"))
        j->scale = 0.05f;
    else if (strstr(d->name, ".bias"))
        j->scale = 0.3f;
    else if (!strcmp(d->name, "token_embd.weight") || !strcmp(d->name, "output.weight"))
        j->scale = 2.0f / sqrtf((float)n_embd);
    /* the output rows of <unk> <s> </s> are zero (logit 0, far below the maximum), so that
     * greedy runs of a random model do not stop early at the end-of-text token */
    if (!strcmp(d->name, tied ? "token_embd.weight" : "output.weight")) j->zero_rows = 3;
    job_kv_b(j, d, seed, hp);
}

/* Rows [row0, row0 + nr) of a tensor, each from its own seed, so the bytes do not depend on
 * how rows are split over threads; x and q hold those rows. */
struct part {
    const struct job *j;
    int64_t row0, nr;
    float *x;
    uint8_t *q;
};

static void fill_row(const struct job *j, int64_t n, int64_t row, float *x) {
    uint64_t rng = j->seed ^ ((uint64_t)row * 0xd1b54a32d192ed03ull);
    splitmix64(&rng);
    if (row < j->zero_rows)
        memset(x, 0, (size_t)n * sizeof *x);
    else if (j->init == INIT_NORM)
        for (int64_t i = 0; i < n; i++) x[i] = 0.9f + 0.2f * uniform01(&rng);
    else
        for (int64_t i = 0; i < n; i++) x[i] = j->scale * gauss(&rng);
}

static void *make_part(void *arg) {
    const struct part *p = arg;
    int64_t n0 = p->j->d.ne[0];
    for (int64_t r = 0; r < p->nr; r++) fill_row(p->j, n0, p->row0 + r, p->x + r * n0);
    qtype_traits(p->j->type)->from_float(p->x, p->q, p->nr * n0);
    return NULL;
}

/* Rows [row0, row0 + nr) split over n_threads threads (this one included). */
static void make_rows(const struct job *j, int64_t row0, int64_t nr, float *x, uint8_t *q) {
    struct part parts[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int nt = j->n_threads < nr ? j->n_threads : (int)nr;
    int64_t n0 = j->d.ne[0], per = (nr + nt - 1) / nt, r = 0;
    size_t row_bytes = qtype_row_size(j->type, n0);
    for (int t = 0; t < nt; t++, r += per) {
        int64_t k = nr - r < per ? nr - r : per;
        parts[t] = (struct part){j, row0 + r, k, x + r * n0, q + (size_t)r * row_bytes};
        if (t > 0 && pthread_create(&tid[t], NULL, make_part, &parts[t]) != 0)
            die("mktiny: pthread_create failed");
    }
    make_part(&parts[0]);
    for (int t = 1; t < nt; t++) pthread_join(tid[t], NULL);
}

/* One head of attn_k_b (ne {nope, kv_lora}: k_b[c][i] = kv_b[i][c], transposed) or of attn_v_b
 * (ne {kv_lora, v}: v_b[r][c] = kv_b[nope + r][c]) from kv_b's rows of head h; x holds the head. */
static void kv_b_head(const struct job *j, int64_t h, float *rows, float *x) {
    int64_t L = j->kv_lora, per_head = j->qk_nope + j->v_head;
    int64_t first = j->kv_b_part == 1 ? 0 : j->qk_nope;
    int64_t n = j->kv_b_part == 1 ? j->qk_nope : j->v_head;
    for (int64_t r = 0; r < n; r++) fill_row(j, L, h * per_head + first + r, rows + r * L);
    if (j->kv_b_part == 2) {
        memcpy(x, rows, (size_t)(n * L) * sizeof *x);
        return;
    }
    for (int64_t c = 0; c < L; c++)
        for (int64_t i = 0; i < n; i++) x[c * n + i] = rows[i * L + c];
}

static int produce_kv_b(const struct job *j, struct gguf_stream *s) {
    int64_t per = j->d.ne[0] * j->d.ne[1];
    size_t bytes = qtype_row_size(j->type, j->d.ne[0]) * (size_t)j->d.ne[1];
    float *rows = xmalloc((size_t)per * sizeof *rows), *x = xmalloc((size_t)per * sizeof *x);
    uint8_t *q = xmalloc(bytes);
    int rc = 0;
    for (int64_t h = 0; h < j->d.ne[2] && rc == 0; h++) {
        kv_b_head(j, h, rows, x);
        qtype_traits(j->type)->from_float(x, q, per);
        rc = gguf_stream_write(s, q, bytes);
    }
    free(rows);
    free(x);
    free(q);
    return rc;
}

/* Streams the tensor in chunks of whole rows (about 1M values per thread at a time). */
static int produce(void *ctx, struct gguf_stream *s) {
    const struct job *j = ctx;
    if (j->kv_b_part) return produce_kv_b(j, s);
    int64_t n0 = j->d.ne[0], rows = j->d.ne[1] * j->d.ne[2];
    size_t row_bytes = qtype_row_size(j->type, n0);
    int64_t chunk = (n0 >= (1 << 20) ? 1 : (1 << 20) / n0) * j->n_threads;
    float *x = xmalloc((size_t)(chunk * n0) * sizeof *x);
    uint8_t *q = xmalloc((size_t)chunk * row_bytes);
    int rc = 0;
    for (int64_t r0 = 0; r0 < rows && rc == 0; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        make_rows(j, r0, nr, x, q);
        rc = gguf_stream_write(s, q, (size_t)nr * row_bytes);
    }
    free(x);
    free(q);
    return rc;
}

/* ---- the model ---- */

static struct tensor_desc *add_desc(struct tensor_desc **d, int *n, const char *name, int64_t ne0,
                                    int64_t ne1) {
    *d = xrealloc(*d, (size_t)(*n + 1) * sizeof **d);
    struct tensor_desc *o = &(*d)[(*n)++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->n_dims = ne1 > 1 ? 2 : 1;
    o->ne[0] = ne0, o->ne[1] = ne1, o->ne[2] = 1;
    o->is_vector = o->n_dims == 1;
    return o;
}

/* The loader's list of required tensors, plus the optional ones the shape asks for:
 * output.weight (untied) and exp_probs_b.bias (deepseek2's selection bias, MoE layers). */
static int describe(const struct shape *s, const struct hparams *hp, struct tensor_desc **out) {
    int n = model_describe_tensors(s->arch, hp, (int)s->legacy_kv_b, out);
    if (n < 0) return n;
    if (s->untied) add_desc(out, &n, "output.weight", hp->n_embd, hp->n_vocab);
    for (uint32_t l = hp->n_dense_lead; s->exp_probs_b && hp->n_expert && l < hp->n_layer; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%u.exp_probs_b.bias", l);
        add_desc(out, &n, name, hp->n_expert, 1);
    }
    return n;
}

static uint64_t add_tensors(struct gguf_writer *w, struct job *jobs, const struct tensor_desc *d,
                            int n, const struct options *o, const struct type_choice *tc,
                            const struct hparams *hp) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        struct job *j = &jobs[i];
        int tied = !o->s.untied;
        job_init(j, &d[i], tensor_type(&d[i], tc, hp, tied), o->seed, hp, tied);
        j->n_threads = o->n_threads;
        uint64_t nbytes = qtype_row_size(j->type, d[i].ne[0]) * (uint64_t)(d[i].ne[1] * d[i].ne[2]);
        gguf_add_tensor_stream(w, d[i].name, j->type, (uint32_t)d[i].n_dims, d[i].ne, nbytes,
                               produce, j);
        total += nbytes;
    }
    return total;
}

static void write_metadata(struct gguf_writer *w, const struct options *o,
                           const struct type_choice *tc, const struct hparams *hp) {
    struct keys k = {w, o->s.arch};
    gguf_set_str(w, "general.architecture", o->s.arch);
    gguf_set_str(w, "general.name", o->s.name);
    if (tc->file_type >= 0) gguf_set_u32(w, "general.file_type", (uint32_t)tc->file_type);
    if (tc->type != QT_F32) gguf_set_u32(w, "general.quantization_version", 2);
    write_common_keys(&k, &o->s, hp);
    write_mla_keys(&k, &o->s, hp);
    write_expert_keys(&k, &o->s, hp);
    write_yarn_keys(&k, &o->s);
    write_tokenizer(w, hp->n_vocab);
}

/* Loads the written file as moerun would, so a shape the loader refuses is an error here. */
static int verify(const char *path) {
    struct model m;
    if (model_load(&m, path) < 0) return -1;
    fprintf(stderr, "mktiny: %s loads: %s, %.2fM parameters, %.2fM active per token\n", path,
            m.arch_name, (double)m.n_params / 1e6, (double)m.n_params_active / 1e6);
    model_free(&m);
    return 0;
}

static int make_model(const struct options *o) {
    struct type_choice tc;
    struct hparams hp;
    struct tensor_desc *d = NULL;
    if (parse_type(o->type_name, &tc) < 0 || check_shape(&o->s) < 0) return -1;
    fill_hparams(&o->s, &hp);
    int n = describe(&o->s, &hp, &d);
    if (n < 0) return -1;
    struct gguf_writer *w = gguf_writer_new();
    struct job *jobs = xcalloc((size_t)n, sizeof *jobs);
    write_metadata(w, o, &tc, &hp);
    uint64_t bytes = add_tensors(w, jobs, d, n, o, &tc, &hp);
    fprintf(stderr, "mktiny: writing %s: %s, %d tensors, %.1f MiB of weights\n", o->out, o->s.name,
            n, (double)bytes / (1 << 20));
    double t0 = time_now();
    int rc = gguf_writer_write(w, o->out);
    if (rc == 0) fprintf(stderr, "mktiny: wrote %s in %.1f s\n", o->out, time_now() - t0);
    gguf_writer_free(w);
    free(jobs);
    free(d);
    return rc < 0 ? -1 : verify(o->out);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return usage(stdout), 0;
        if (!strcmp(argv[i], "--list-presets")) {
            for (size_t p = 0; p < N_PRESETS; p++) printf("%s\n", presets[p].name);
            return 0;
        }
    }
    struct options o;
    if (parse_args(&o, argc, argv) < 0 || make_model(&o) < 0) {
        fprintf(stderr, "%s\n", err_get());
        return 1;
    }
    return 0;
}
