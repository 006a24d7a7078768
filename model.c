#include "model.h"

#include "quant.h"
#include "tokenizer.h"
#include "util.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- the architecture table ---- */

/* Tensor dimensions are named by what they mean, so one shape table serves every model. */
enum dim {
    D_NONE = 0,
    D_EMBD,   /* n_embd */
    D_VOCAB,  /* n_vocab */
    D_FF,     /* n_ff */
    D_Q,      /* n_head * head_dim */
    D_K,      /* n_head_kv * head_dim */
    D_V,      /* n_head_kv * head_dim_v */
    D_ATTN_O, /* n_head * head_dim_v */
    D_ROT_2,  /* n_rot / 2 */
};

enum { T_REQUIRED = 1, T_LAYER = 2 };

struct tensor_spec {
    enum weight_slot slot;
    const char *name; /* llama.cpp's name; "%d" is the layer */
    unsigned flags;
    enum dim shape[2]; /* ggml order: shape[0] is the row length */
};

static const struct tensor_spec llama_tensors[] = {
    {W_TOKEN_EMBD, "token_embd.weight", T_REQUIRED, {D_EMBD, D_VOCAB}},
    {W_OUTPUT_NORM, "output_norm.weight", T_REQUIRED, {D_EMBD}},
    {W_OUTPUT, "output.weight", 0, {D_EMBD, D_VOCAB}}, /* absent: tied to token_embd */
    {W_ROPE_FREQS, "rope_freqs.weight", 0, {D_ROT_2}}, /* Llama 3.1 frequency factors */
    {W_ATTN_NORM, "blk.%d.attn_norm.weight", T_REQUIRED | T_LAYER, {D_EMBD}},
    {W_ATTN_Q, "blk.%d.attn_q.weight", T_REQUIRED | T_LAYER, {D_EMBD, D_Q}},
    {W_ATTN_K, "blk.%d.attn_k.weight", T_REQUIRED | T_LAYER, {D_EMBD, D_K}},
    {W_ATTN_V, "blk.%d.attn_v.weight", T_REQUIRED | T_LAYER, {D_EMBD, D_V}},
    {W_ATTN_OUT, "blk.%d.attn_output.weight", T_REQUIRED | T_LAYER, {D_ATTN_O, D_EMBD}},
    {W_FFN_NORM, "blk.%d.ffn_norm.weight", T_REQUIRED | T_LAYER, {D_EMBD}},
    {W_FFN_GATE, "blk.%d.ffn_gate.weight", T_REQUIRED | T_LAYER, {D_EMBD, D_FF}},
    {W_FFN_UP, "blk.%d.ffn_up.weight", T_REQUIRED | T_LAYER, {D_EMBD, D_FF}},
    {W_FFN_DOWN, "blk.%d.ffn_down.weight", T_REQUIRED | T_LAYER, {D_FF, D_EMBD}},
};

struct arch_info {
    const char *name; /* general.architecture */
    const struct tensor_spec *tensors;
    size_t n_tensors;
    enum rope_mode rope_mode;
};

static const struct arch_info arches[ARCH_COUNT] = {
    [ARCH_LLAMA] = {"llama", llama_tensors, sizeof llama_tensors / sizeof llama_tensors[0],
                    ROPE_NORM},
};

/* Hyper-parameter keys, read as "<arch>.<suffix>". */
struct hparam_key {
    const char *suffix;
    size_t offset; /* into struct hparams */
    int is_float;
    int required;
};

#define HP(field) offsetof(struct hparams, field)
static const struct hparam_key hparam_keys[] = {
    {"context_length", HP(n_ctx_train), 0, 1},
    {"embedding_length", HP(n_embd), 0, 1},
    {"block_count", HP(n_layer), 0, 1},
    {"feed_forward_length", HP(n_ff), 0, 1},
    {"attention.head_count", HP(n_head), 0, 1},
    {"attention.head_count_kv", HP(n_head_kv), 0, 0},
    {"attention.key_length", HP(head_dim), 0, 0},
    {"attention.value_length", HP(head_dim_v), 0, 0},
    {"rope.dimension_count", HP(n_rot), 0, 0},
    {"vocab_size", HP(n_vocab), 0, 0},
    {"rope.freq_base", HP(rope_freq_base), 1, 0},
    {"attention.layer_norm_rms_epsilon", HP(norm_eps), 1, 1},
};
#undef HP

/* ---- hyper-parameters ---- */

static int read_hparam(struct model *m, const struct hparam_key *k) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch_name, k->suffix);
    void *dst = (char *)&m->hp + k->offset;
    int rc = k->is_float ? gguf_get_f32(&m->file, key, dst) : gguf_get_u32(&m->file, key, dst);
    if (rc < 0) return -1;
    if (rc == 1 && k->required) {
        err_set("model: %s: missing required key '%s'", m->file.path, key);
        return -1;
    }
    return 0;
}

static int check_positive(const struct model *m, const char *what, uint32_t v, uint32_t max) {
    if (v == 0 || v > max) {
        err_set("model: %s: %s.%s = %u is out of range (1..%u)", m->file.path, m->arch_name, what,
                v, max);
        return -1;
    }
    return 0;
}

static int read_rope_scaling(struct model *m) {
    char key[128];
    struct gguf_str type = {0, NULL};
    float factor = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch_name);
    if (gguf_get_str(&m->file, key, &type) < 0) return -1;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", m->arch_name);
    if (gguf_get_f32(&m->file, key, &factor) < 0) return -1;
    m->hp.rope_freq_scale = 1.0f;
    if (type.data == NULL || gguf_str_eq(type, "none")) return 0;
    if (!gguf_str_eq(type, "linear")) {
        err_set("model: %s: %s = '%.*s' is not supported for architecture %s (supported: none, "
                "linear)",
                m->file.path, key, (int)type.len, type.data, m->arch_name);
        return -1;
    }
    if (!(factor > 0.0f)) {
        err_set("model: %s: %s = %g must be positive", m->file.path, key, (double)factor);
        return -1;
    }
    m->hp.rope_freq_scale = 1.0f / factor;
    return 0;
}

static int read_hparams(struct model *m) {
    struct hparams *hp = &m->hp;
    memset(hp, 0, sizeof *hp);
    hp->rope_freq_base = 10000.0f;
    for (size_t i = 0; i < sizeof hparam_keys / sizeof hparam_keys[0]; i++)
        if (read_hparam(m, &hparam_keys[i]) < 0) return -1;
    if (check_positive(m, "embedding_length", hp->n_embd, 1u << 20) < 0 ||
        check_positive(m, "block_count", hp->n_layer, 4096) < 0 ||
        check_positive(m, "feed_forward_length", hp->n_ff, 1u << 22) < 0 ||
        check_positive(m, "attention.head_count", hp->n_head, 4096) < 0)
        return -1;
    if (!hp->n_head_kv) hp->n_head_kv = hp->n_head;
    if (!hp->head_dim) hp->head_dim = hp->n_embd / hp->n_head;
    if (!hp->head_dim_v) hp->head_dim_v = hp->head_dim;
    if (!hp->n_rot) hp->n_rot = hp->head_dim;
    if (hp->n_head_kv > hp->n_head || hp->n_head % hp->n_head_kv != 0) {
        err_set("model: %s: %s.attention.head_count_kv = %u must divide head_count = %u",
                m->file.path, m->arch_name, hp->n_head_kv, hp->n_head);
        return -1;
    }
    if (hp->head_dim == 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0) {
        err_set("model: %s: %s.rope.dimension_count = %u must be even and at most the head "
                "width %u",
                m->file.path, m->arch_name, hp->n_rot, hp->head_dim);
        return -1;
    }
    if (!(hp->norm_eps > 0.0f) || !(hp->rope_freq_base > 0.0f)) {
        err_set("model: %s: rms epsilon %g and rope.freq_base %g must be positive", m->file.path,
                (double)hp->norm_eps, (double)hp->rope_freq_base);
        return -1;
    }
    return read_rope_scaling(m);
}

/* ---- tensor binding ---- */

static int64_t dim_value(const struct hparams *hp, enum dim d) {
    switch (d) {
    case D_NONE:
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
    case D_ROT_2:
        return hp->n_rot / 2;
    }
    return -1;
}

static int check_shape(const struct model *m, const struct gguf_tensor *t,
                       const struct tensor_spec *s) {
    int64_t want[GGUF_MAX_DIMS] = {1, 1, 1, 1};
    for (int i = 0; i < 2; i++) want[i] = dim_value(&m->hp, s->shape[i]);
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
    int is_vector = s->shape[1] == D_NONE;
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

static int bind_one(struct model *m, const struct tensor_spec *s, int layer, struct weight *w) {
    char name[96];
    if (s->flags & T_LAYER)
        snprintf(name, sizeof name, s->name, layer);
    else
        snprintf(name, sizeof name, "%s", s->name);
    const struct gguf_tensor *t = gguf_find_tensor(&m->file, name);
    memset(w, 0, sizeof *w);
    if (!t) {
        if (!(s->flags & T_REQUIRED)) return 0;
        err_set("model: %s: missing tensor '%s' (architecture %s)", m->file.path, name,
                m->arch_name);
        return -1;
    }
    if (check_shape(m, t, s) < 0 || check_type(m, t, s) < 0) return -1;
    w->t = t;
    w->m = (struct cpu_matrix){t->data, t->type, t->ne[0], t->ne[1],
                               qtype_row_size(t->type, t->ne[0])};
    return 0;
}

static int bind_tensors(struct model *m) {
    const struct arch_info *a = &arches[m->arch];
    m->layers = xcalloc(m->hp.n_layer, sizeof *m->layers);
    for (size_t i = 0; i < a->n_tensors; i++) {
        const struct tensor_spec *s = &a->tensors[i];
        if (!(s->flags & T_LAYER)) {
            if (bind_one(m, s, 0, &m->w[s->slot]) < 0) return -1;
            continue;
        }
        for (uint32_t l = 0; l < m->hp.n_layer; l++)
            if (bind_one(m, s, (int)l, &m->layers[l].w[s->slot]) < 0) return -1;
    }
    if (!m->w[W_OUTPUT].t) m->w[W_OUTPUT] = m->w[W_TOKEN_EMBD]; /* tied embeddings */
    return 0;
}

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
    err_set("model: %s: unknown architecture '%.*s' (supported: llama)", m->file.path,
            (int)(arch.len > 64 ? 64 : arch.len), arch.data);
    return -1;
}

static uint64_t count_params(const struct gguf_file *f) {
    uint64_t n = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        n += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    return n;
}

int model_load(struct model *m, const char *path) {
    memset(m, 0, sizeof *m);
    if (gguf_open(&m->file, path) < 0) return -1;
    if (find_arch(m) < 0 || read_hparams(m) < 0) goto fail;
    m->tok = tokenizer_load(&m->file);
    if (!m->tok || resolve_vocab(m) < 0 || bind_tensors(m) < 0) goto fail;
    m->n_params = count_params(&m->file);
    return 0;
fail:
    model_free(m);
    return -1;
}

/* ---- runtime state ---- */

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int64_t max_matrix_input(const struct hparams *hp) {
    int64_t m = hp->n_embd;
    if (hp->n_ff > m) m = hp->n_ff;
    if ((int64_t)hp->n_head * hp->head_dim_v > m) m = (int64_t)hp->n_head * hp->head_dim_v;
    return m;
}

int model_init(struct model *m, const struct model_params *p) {
    const struct hparams *hp = &m->hp;
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (int)(hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    if (n_ctx <= 0) n_ctx = 4096;
    m->n_ctx = n_ctx;
    m->max_batch = p->max_batch > 0 ? p->max_batch : 512;
    if (m->max_batch > n_ctx) m->max_batch = n_ctx;
    struct cpu_config cc = {
        .n_threads = p->n_threads > 0 ? p->n_threads : default_threads(),
        .max_batch = m->max_batch,
        .max_in = max_matrix_input(hp),
        .max_ctx = n_ctx,
        .max_head_dim = (int)(hp->head_dim > hp->head_dim_v ? hp->head_dim : hp->head_dim_v),
        .blas_min_batch = p->blas_min_batch == 0 ? 32 : p->blas_min_batch,
    };
    m->cpu = cpu_init(&cc);
    size_t B = (size_t)m->max_batch;
    size_t kv_k = (size_t)hp->n_head_kv * hp->head_dim,
           kv_v = (size_t)hp->n_head_kv * hp->head_dim_v;
    m->k_cache = xcalloc((size_t)hp->n_layer * (size_t)n_ctx * kv_k, sizeof(float));
    m->v_cache = xcalloc((size_t)hp->n_layer * (size_t)n_ctx * kv_v, sizeof(float));
    m->x = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->xb = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->proj = xaligned_alloc(B * hp->n_embd * sizeof(float));
    m->q = xaligned_alloc(B * hp->n_head * hp->head_dim * sizeof(float));
    m->k = xaligned_alloc(B * kv_k * sizeof(float));
    m->v = xaligned_alloc(B * kv_v * sizeof(float));
    m->att = xaligned_alloc(B * hp->n_head * hp->head_dim_v * sizeof(float));
    m->gate = xaligned_alloc(B * hp->n_ff * sizeof(float));
    m->up = xaligned_alloc(B * hp->n_ff * sizeof(float));
    m->pos = xmalloc(B * sizeof(int32_t));
    return 0;
}

void model_free(struct model *m) {
    cpu_free(m->cpu);
    free(m->k_cache);
    free(m->v_cache);
    free(m->x);
    free(m->xb);
    free(m->proj);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->att);
    free(m->gate);
    free(m->up);
    free(m->pos);
    free(m->layers);
    tokenizer_free(m->tok);
    gguf_close(&m->file);
    memset(m, 0, sizeof *m);
}

/* ---- forward pass ---- */

static const float *vec(const struct weight *w) { return (const float *)w->m.data; }

/* Attention block: x += Wo * attend(rope(Wq xn), cache(rope(Wk xn), Wv xn)). */
static void attention_block(struct model *m, int il, int n_tok, int pos0) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    size_t kv_k = (size_t)hp->n_head_kv * hp->head_dim,
           kv_v = (size_t)hp->n_head_kv * hp->head_dim_v;
    float *k_cache = m->k_cache + (size_t)il * (size_t)m->n_ctx * kv_k;
    float *v_cache = m->v_cache + (size_t)il * (size_t)m->n_ctx * kv_v;
    struct rope_params rp = {arches[m->arch].rope_mode, (int)hp->n_rot, hp->rope_freq_base,
                             hp->rope_freq_scale};

    cpu_rmsnorm(m->xb, m->x, vec(&L->w[W_ATTN_NORM]), hp->n_embd, n_tok, hp->norm_eps);
    cpu_matmul(m->cpu, &L->w[W_ATTN_Q].m, m->xb, n_tok, m->q);
    cpu_matmul(m->cpu, &L->w[W_ATTN_K].m, m->xb, n_tok, m->k);
    cpu_matmul(m->cpu, &L->w[W_ATTN_V].m, m->xb, n_tok, m->v);
    cpu_rope(m->q, n_tok, (int)hp->n_head, (int)hp->head_dim, (int64_t)hp->n_head * hp->head_dim,
             m->pos, &rp, m->w[W_ROPE_FREQS].t ? vec(&m->w[W_ROPE_FREQS]) : NULL);
    cpu_rope(m->k, n_tok, (int)hp->n_head_kv, (int)hp->head_dim, (int64_t)kv_k, m->pos, &rp,
             m->w[W_ROPE_FREQS].t ? vec(&m->w[W_ROPE_FREQS]) : NULL);
    memcpy(k_cache + (size_t)pos0 * kv_k, m->k, (size_t)n_tok * kv_k * sizeof(float));
    memcpy(v_cache + (size_t)pos0 * kv_v, m->v, (size_t)n_tok * kv_v * sizeof(float));

    struct attn_args a = {
        .q = m->q,
        .k_cache = k_cache,
        .v_cache = v_cache,
        .out = m->att,
        .n_tok = n_tok,
        .pos0 = pos0,
        .n_head = (int)hp->n_head,
        .n_head_kv = (int)hp->n_head_kv,
        .head_dim = (int)hp->head_dim,
        .head_dim_v = (int)hp->head_dim_v,
        .scale = 1.0f / sqrtf((float)hp->head_dim),
    };
    cpu_attention(m->cpu, &a);
    cpu_matmul(m->cpu, &L->w[W_ATTN_OUT].m, m->att, n_tok, m->proj);
    cpu_add(m->x, m->proj, (int64_t)n_tok * hp->n_embd);
}

/* Feed-forward block: x += W_down (silu(W_gate xn) * W_up xn). */
static void ffn_block(struct model *m, int il, int n_tok) {
    const struct hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    cpu_rmsnorm(m->xb, m->x, vec(&L->w[W_FFN_NORM]), hp->n_embd, n_tok, hp->norm_eps);
    cpu_matmul(m->cpu, &L->w[W_FFN_GATE].m, m->xb, n_tok, m->gate);
    cpu_matmul(m->cpu, &L->w[W_FFN_UP].m, m->xb, n_tok, m->up);
    cpu_swiglu(m->gate, m->gate, m->up, (int64_t)n_tok * hp->n_ff);
    cpu_matmul(m->cpu, &L->w[W_FFN_DOWN].m, m->gate, n_tok, m->proj);
    cpu_add(m->x, m->proj, (int64_t)n_tok * hp->n_embd);
}

/* Final norm and output head for rows [first, n_tok) of the batch. */
static void output_head(struct model *m, int first, int n_tok, float *logits) {
    const struct hparams *hp = &m->hp;
    int n = n_tok - first;
    float *xr = m->x + (size_t)first * hp->n_embd;
    cpu_rmsnorm(m->xb, xr, vec(&m->w[W_OUTPUT_NORM]), hp->n_embd, n, hp->norm_eps);
    cpu_matmul(m->cpu, &m->w[W_OUTPUT].m, m->xb, n, logits);
}

static void forward_batch(struct model *m, const int32_t *tokens, int n_tok, int pos0,
                          float *logits, int all_logits) {
    const struct hparams *hp = &m->hp;
    for (int t = 0; t < n_tok; t++) {
        cpu_get_row(&m->w[W_TOKEN_EMBD].m, tokens[t], m->x + (size_t)t * hp->n_embd);
        m->pos[t] = pos0 + t;
    }
    for (int il = 0; il < (int)hp->n_layer; il++) {
        attention_block(m, il, n_tok, pos0);
        ffn_block(m, il, n_tok);
    }
    if (logits) output_head(m, all_logits ? 0 : n_tok - 1, n_tok, logits);
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
        forward_batch(m, tokens + done, n, pos0 + done, out, all_logits);
    }
    return 0;
}
