/* moerun quantize IN.gguf OUT.gguf TYPE [options]
 *
 * Rewrites a GGUF model with its weights in another block format. Which type each tensor gets
 * follows llama.cpp's llama-quantize (src/llama-quant.cpp: tensor_allows_quantization,
 * llama_tensor_get_type_impl, tensor_type_fallback), and the bytes are its bytes: quant.c's
 * from_float are ggml's reference quantizers, which llama-quantize uses when it has no
 * importance matrix. The IQ, MXFP4, Falcon and imatrix branches of those rules are left out:
 * moerun writes none of those types and runs none of those models.
 *
 * Output layout as llama-quantize writes it, so a file can be compared byte for byte: the
 * input's keys in order without general.quantization_version / general.file_type, then those
 * two; tensors sorted by layer number, then by name (llama_model_loader's weights_map order).
 *
 * Memory: the input is mapped; each tensor is converted in chunks of rows (CHUNK_BYTES of
 * output at most) and streamed to gguf.c's writer, which writes a temporary file and renames
 * it at the end, so an error or Ctrl-C leaves no OUT file. */
#include "tools/quantize.h"

#include "gguf.h"
#include "quant.h"
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_BYTES (16u << 20) /* output bytes converted per step, split over the threads */
#define MAX_THREADS 256
#define QUANT_VERSION 2 /* ggml's GGML_QNT_VERSION, stored as general.quantization_version */

const char *const quantize_usage =
    "usage: moerun quantize IN.gguf OUT.gguf TYPE [options]\n"
    "\n"
    "Writes IN's weights in TYPE, tensor by tensor, with llama-quantize's choice of type per\n"
    "tensor and its bytes (reference quantizers, no importance matrix). Norms, biases and\n"
    "routers stay F32. OUT appears only when complete (temporary file, then rename).\n"
    "\n"
    "TYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M\n"
    "      Q5_K_S Q5_K_M Q6_K (Q3_K, Q4_K, Q5_K: the _M mixes). The _S/_M/_L mixes give some\n"
    "      tensors more bits (attn_v, ffn_down, attn_output, output) as llama.cpp does; a row\n"
    "      length that is not a multiple of 256 falls back: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,\n"
    "      Q5_K -> Q5_1, Q6_K -> Q8_0.\n"
    "\n"
    "Tensor types below are ggml's names (case-insensitive): f32 f16 bf16 q8_0 q4_0 q4_1\n"
    "q5_0 q5_1 q2_K q3_K q4_K q5_K q6_K.\n"
    "      --expert-type T       routed experts (*_exps) in T, the rest as TYPE says\n"
    "      --tensor-type RE=T    tensors whose name matches the POSIX extended regex RE in T\n"
    "                            (repeatable; the first match wins, before --expert-type)\n"
    "      --output-type T       output.weight in T\n"
    "      --embd-type T         token_embd.weight in T\n"
    "      --pure                every quantizable tensor in TYPE's base type (no mix)\n"
    "      --allow-requantize    accept an already quantized IN (quality suffers)\n"
    "      --dry-run             print each tensor's type and the final size; write nothing\n"
    "                            (OUT may then be left out)\n"
    "  -t, --threads N           threads quantizing rows (default: online CPUs)\n"
    "  -h, --help                this text\n";

/* ---- file types: llama.cpp's llama_ftype values, stored as general.file_type ---- */

enum ftype {
    FT_F32 = 0,
    FT_F16 = 1,
    FT_Q4_0 = 2,
    FT_Q4_1 = 3,
    FT_Q8_0 = 7,
    FT_Q5_0 = 8,
    FT_Q5_1 = 9,
    FT_Q2_K = 10,
    FT_Q3_K_S = 11,
    FT_Q3_K_M = 12,
    FT_Q3_K_L = 13,
    FT_Q4_K_S = 14,
    FT_Q4_K_M = 15,
    FT_Q5_K_S = 16,
    FT_Q5_K_M = 17,
    FT_Q6_K = 18,
    FT_BF16 = 32,
};

struct ftype_row {
    const char *name;
    enum ftype ft;
    enum qtype base; /* llama_ftype_get_default_type */
};

static const struct ftype_row ftypes[] = {
    {"F32", FT_F32, QT_F32},
    {"F16", FT_F16, QT_F16},
    {"BF16", FT_BF16, QT_BF16},
    {"Q8_0", FT_Q8_0, QT_Q8_0},
    {"Q4_0", FT_Q4_0, QT_Q4_0},
    {"Q4_1", FT_Q4_1, QT_Q4_1},
    {"Q5_0", FT_Q5_0, QT_Q5_0},
    {"Q5_1", FT_Q5_1, QT_Q5_1},
    {"Q2_K", FT_Q2_K, QT_Q2_K},
    {"Q3_K_S", FT_Q3_K_S, QT_Q3_K},
    {"Q3_K_M", FT_Q3_K_M, QT_Q3_K},
    {"Q3_K_L", FT_Q3_K_L, QT_Q3_K},
    {"Q4_K_S", FT_Q4_K_S, QT_Q4_K},
    {"Q4_K_M", FT_Q4_K_M, QT_Q4_K},
    {"Q5_K_S", FT_Q5_K_S, QT_Q5_K},
    {"Q5_K_M", FT_Q5_K_M, QT_Q5_K},
    {"Q6_K", FT_Q6_K, QT_Q6_K},
    /* llama-quantize's aliases (after N_MAIN_FTYPES) */
    {"Q3_K", FT_Q3_K_M, QT_Q3_K},
    {"Q4_K", FT_Q4_K_M, QT_Q4_K},
    {"Q5_K", FT_Q5_K_M, QT_Q5_K},
};
#define N_FTYPES (sizeof ftypes / sizeof ftypes[0])
#define N_MAIN_FTYPES (N_FTYPES - 3)

static const struct ftype_row *ftype_parse(const char *s) {
    for (size_t i = 0; i < N_FTYPES; i++)
        if (!strcasecmp(s, ftypes[i].name)) return &ftypes[i];
    return NULL;
}

/* The types a tensor may be written in. */
static const enum qtype out_types[] = {QT_F32,  QT_F16,  QT_BF16, QT_Q8_0, QT_Q4_0,
                                       QT_Q4_1, QT_Q5_0, QT_Q5_1, QT_Q2_K, QT_Q3_K,
                                       QT_Q4_K, QT_Q5_K, QT_Q6_K};

static int qtype_parse(const char *s) {
    for (size_t i = 0; i < sizeof out_types / sizeof out_types[0]; i++)
        if (!strcasecmp(s, qtype_name(out_types[i]))) return (int)out_types[i];
    return -1;
}

/* F32, F16 and BF16 convert exactly; the block types are "quantized" in ggml's sense. */
static int is_quantized(uint32_t type) {
    return type != QT_F32 && type != QT_F16 && type != QT_BF16;
}

static int64_t blck_size(uint32_t type) {
    const struct qtype_traits *tr = qtype_traits(type);
    return tr ? tr->blck_size : 1;
}

/* ---- options ---- */

struct override {
    regex_t re;
    uint32_t type;
};

struct qz_opts {
    const char *in, *out;
    const struct ftype_row *ft;
    int expert_type, output_type, embd_type; /* qtype, or -1 when not given */
    struct override *ov;                     /* (n_ov) --tensor-type, then --expert-type */
    int n_ov;
    int pure, dry_run, allow_requantize, threads;
};

/* ---- tensor categories and the mix rules (llama_tensor_get_type_impl) ---- */

enum cat {
    CAT_TOKEN_EMBD,
    CAT_ATTN_Q,
    CAT_ATTN_V,
    CAT_ATTN_K,
    CAT_ATTN_QKV,
    CAT_ATTN_KV_B,
    CAT_ATTN_OUTPUT,
    CAT_FFN_UP,
    CAT_FFN_GATE,
    CAT_FFN_DOWN,
    CAT_OUTPUT,
    CAT_OTHER
};

/* Broad categories by substring, in llama.cpp's order (the first match decides). */
static enum cat tensor_cat(const char *name) {
    static const struct {
        const char *sub;
        enum cat c;
    } subs[] = {{"attn_qkv.weight", CAT_ATTN_QKV},
                {"attn_kv_b.weight", CAT_ATTN_KV_B},
                {"attn_v.weight", CAT_ATTN_V},
                {"attn_k.weight", CAT_ATTN_K},
                {"attn_q.weight", CAT_ATTN_Q},
                {"attn_output.weight", CAT_ATTN_OUTPUT},
                {"ffn_up", CAT_FFN_UP},
                {"ffn_gate", CAT_FFN_GATE},
                {"ffn_down", CAT_FFN_DOWN}};
    if (!strcmp(name, "output.weight")) return CAT_OUTPUT;
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "per_layer_token_embd.weight"))
        return CAT_TOKEN_EMBD;
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
        if (strstr(name, subs[i].sub)) return subs[i].c;
    return CAT_OTHER;
}

/* attn_v-like tensors are the most sensitive to quantization */
static int cat_is_attn_v(enum cat c) {
    return c == CAT_ATTN_V || c == CAT_ATTN_QKV || c == CAT_ATTN_KV_B;
}

/* Model facts the rules read, and llama.cpp's running counters (quantize_state_impl). */
struct mix {
    enum ftype ft;
    int n_layer, n_expert, n_gqa, is_70b, tied;
    int n_attn_v, i_attn_v, i_ffn_down, i_ffn_gate, i_ffn_up;
};

/* The first and last eighth of the layers, and every third one between, get more bits. */
static int use_more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* The layer of an ffn tensor: Mixtral-style files do not list experts in layer order, so with
 * experts llama.cpp reads it from the name; otherwise the running count is the layer. */
static int layer_of(const struct mix *m, int counter, const char *name, int *layer) {
    if (m->n_expert <= 1) {
        *layer = counter;
        return 0;
    }
    if (sscanf(name, "blk.%d.", layer) != 1 || *layer < 0 || *layer >= m->n_layer) {
        err_set("tensor '%s': no layer number in [0, %d) in its name (needed for the mix)", name,
                m->n_layer);
        return -1;
    }
    return 0;
}

static uint32_t mix_output(const struct mix *m, uint32_t t, int64_t ne0) {
    if (ne0 % blck_size(t) != 0) return QT_Q8_0;
    (void)m;
    return t != QT_Q8_0 ? QT_Q6_K : t;
}

static uint32_t mix_attn_v(struct mix *m, uint32_t t) {
    enum ftype ft = m->ft;
    if (ft == FT_Q2_K)
        t = m->n_gqa >= 4 ? QT_Q4_K : QT_Q3_K;
    else if (ft == FT_Q3_K_M)
        t = m->i_attn_v < 2 ? QT_Q5_K : QT_Q4_K;
    else if (ft == FT_Q3_K_L)
        t = QT_Q5_K;
    else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && use_more_bits(m->i_attn_v, m->n_attn_v))
        t = QT_Q6_K;
    else if (ft == FT_Q4_K_S && m->i_attn_v < 4)
        t = QT_Q5_K;
    /* 70B: 8 heads share attn_v, so more bits there cost little */
    if (m->is_70b && (t == QT_Q3_K || t == QT_Q4_K)) t = QT_Q5_K;
    if (m->n_expert == 8) t = QT_Q8_0;
    m->i_attn_v++;
    return t;
}

static int mix_ffn_down(struct mix *m, uint32_t *t, const char *name) {
    int il, n = m->n_layer;
    enum ftype ft = m->ft;
    if (layer_of(m, m->i_ffn_down, name, &il)) return -1;
    if (ft == FT_Q2_K)
        *t = QT_Q3_K;
    else if (ft == FT_Q3_K_M)
        *t = il < n / 16 ? QT_Q5_K : QT_Q4_K;
    else if (ft == FT_Q3_K_L)
        *t = QT_Q5_K;
    else if (ft == FT_Q4_K_M) {
        if (use_more_bits(il, n)) *t = QT_Q6_K;
    } else if (ft == FT_Q5_K_M && use_more_bits(il, n))
        *t = QT_Q6_K;
    else if (ft == FT_Q4_K_S && il < n / 8)
        *t = QT_Q5_K;
    m->i_ffn_down++;
    return 0;
}

static uint32_t mix_attn_output(const struct mix *m, uint32_t t) {
    enum ftype ft = m->ft;
    if (m->n_expert == 8) {
        if (ft == FT_Q2_K || ft == FT_Q3_K_S || ft == FT_Q3_K_M || ft == FT_Q4_K_S ||
            ft == FT_Q4_K_M)
            t = QT_Q5_K;
        return t;
    }
    if (ft == FT_Q2_K) return QT_Q3_K;
    if (ft == FT_Q3_K_M) return QT_Q4_K;
    if (ft == FT_Q3_K_L) return QT_Q5_K;
    return t;
}

static uint32_t mix_qkv(const struct mix *m, uint32_t t) {
    if (m->ft == FT_Q3_K_M || m->ft == FT_Q3_K_L) return QT_Q4_K;
    if (m->ft == FT_Q4_K_M) return QT_Q5_K;
    if (m->ft == FT_Q5_K_M) return QT_Q6_K;
    return t;
}

/* llama_tensor_get_type_impl for the non-IQ file types; t is the file type's base type. */
static int mix_type(struct mix *m, enum cat c, const char *name, int64_t ne0, uint32_t *t) {
    if (c == CAT_OUTPUT || (m->tied && c == CAT_TOKEN_EMBD))
        *t = mix_output(m, *t, ne0);
    else if (cat_is_attn_v(c))
        *t = mix_attn_v(m, *t);
    else if (c == CAT_ATTN_K && m->n_expert == 8)
        *t = QT_Q8_0; /* 8 experts: attn_k costs little next to them */
    else if (c == CAT_FFN_DOWN)
        return mix_ffn_down(m, t, name);
    else if (c == CAT_ATTN_OUTPUT)
        *t = mix_attn_output(m, *t);
    else if (c == CAT_ATTN_QKV)
        *t = mix_qkv(m, *t);
    else if (c == CAT_FFN_GATE)
        m->i_ffn_gate++; /* counted as llama.cpp does; only IQ types read them */
    else if (c == CAT_FFN_UP)
        m->i_ffn_up++;
    return 0;
}

/* A row length that the block size does not divide: llama.cpp's tensor_type_fallback, and
 * F16 where even that does not fit (llama.cpp has no fallback for the 32-blocks; F16 is
 * exact and always fits). */
static uint32_t fallback_type(uint32_t t, int64_t ne0) {
    if (ne0 % blck_size(t) == 0) return t;
    uint32_t f = QT_F16;
    if (t == QT_Q2_K || t == QT_Q3_K) f = QT_Q4_0;
    if (t == QT_Q4_K) f = QT_Q5_0;
    if (t == QT_Q5_K) f = QT_Q5_1;
    if (t == QT_Q6_K) f = QT_Q8_0;
    return ne0 % blck_size(f) == 0 ? f : QT_F16;
}

/* ---- the plan: every tensor, its new type and size ---- */

struct qz_tensor {
    const struct gguf_tensor *src;
    char *name;
    int layer; /* blk.N, or -1 */
    enum cat cat;
    uint32_t n_dims; /* ggml_n_dims: trailing dimensions of 1 dropped, as llama.cpp writes */
    int64_t nrows;   /* ne1 * ne2 * ne3 */
    uint32_t type;   /* the new type */
    uint32_t wanted; /* the type before the fallback (== type when none) */
    uint64_t nbytes; /* in the new type */
};

struct plan {
    struct qz_tensor *t; /* (n) in output order */
    size_t n;
    struct mix mix;
    uint64_t bytes_in, bytes_out, n_elements;
    int n_fallback;
};

/* Only 2-D and 3-D weights are quantized: not norms, not the routers (ffn_gate_inp; the
 * shared-expert gate ffn_gate_inp_shexp is {n_embd, 1}, 1-D to ggml), not biases. */
static int allows_quantization(const struct qz_tensor *t) {
    static const char *const keep[] = {
        "_norm.weight",       "ffn_gate_inp.weight", "ffn_gate_inp_shexp", "position_embd.weight",
        "token_types.weight", "ssm_conv1d",          "attn_rel_b.weight"};
    size_t len = strlen(t->name);
    if (t->n_dims < 2 || len < 6 || strcmp(t->name + len - 6, "weight") != 0) return 0;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        if (strstr(t->name, keep[i])) return 0;
    return 1;
}

static int match_override(const struct qz_opts *o, const char *name, uint32_t *type) {
    for (int i = 0; i < o->n_ov; i++) {
        if (regexec(&o->ov[i].re, name, 0, NULL, 0) == 0) {
            *type = o->ov[i].type;
            return 1;
        }
    }
    return 0;
}

/* llama_tensor_get_type: the options first, then the mix, then the fallback. Unlike
 * llama.cpp, --tensor-type / --expert-type also apply with an F16/BF16/F32 TYPE (llama.cpp
 * ignores them there without a word) and the fallback also guards --output/--embd-type. */
static int choose_type(const struct qz_opts *o, struct plan *p, struct qz_tensor *t) {
    uint32_t type = o->ft->base;
    int64_t ne0 = t->src->ne[0];
    if (!allows_quantization(t))
        type = t->src->type;
    else if (o->embd_type >= 0 && t->cat == CAT_TOKEN_EMBD)
        type = (uint32_t)o->embd_type;
    else if (o->output_type >= 0 &&
             (t->cat == CAT_OUTPUT || (p->mix.tied && t->cat == CAT_TOKEN_EMBD)))
        type = (uint32_t)o->output_type;
    else if (!match_override(o, t->name, &type) && !o->pure && is_quantized(type) &&
             mix_type(&p->mix, t->cat, t->name, ne0, &type))
        return -1;
    t->wanted = type;
    t->type = allows_quantization(t) ? fallback_type(type, ne0) : type;
    p->n_fallback += t->type != t->wanted;
    return 0;
}

static uint32_t ggml_n_dims(const int64_t *ne) {
    for (int i = GGUF_MAX_DIMS - 1; i >= 1; i--)
        if (ne[i] > 1) return (uint32_t)i + 1;
    return 1;
}

static int cmp_tensor(const void *a, const void *b) {
    const struct qz_tensor *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    return strcmp(x->name, y->name);
}

static void plan_free(struct plan *p) {
    for (size_t i = 0; i < p->n; i++) free(p->t[i].name);
    free(p->t);
    memset(p, 0, sizeof *p);
}

/* Names, categories and the output order (llama.cpp's weights_map: layer, then name). */
static void plan_list(struct plan *p, const struct gguf_file *in) {
    p->n = in->n_tensors;
    p->t = xcalloc(p->n ? p->n : 1, sizeof *p->t);
    for (size_t i = 0; i < p->n; i++) {
        struct qz_tensor *t = &p->t[i];
        t->src = &in->tensors[i];
        t->name = xmalloc(t->src->name.len + 1);
        memcpy(t->name, t->src->name.data, t->src->name.len);
        t->name[t->src->name.len] = 0;
        t->layer = -1;
        sscanf(t->name, "blk.%d.", &t->layer);
        t->cat = tensor_cat(t->name);
        t->n_dims = ggml_n_dims(t->src->ne);
        t->nrows = t->src->ne[1] * t->src->ne[2] * t->src->ne[3];
        p->mix.n_attn_v += cat_is_attn_v(t->cat);
        if (t->cat == CAT_OUTPUT) p->mix.tied = 0;
    }
    qsort(p->t, p->n, sizeof *p->t, cmp_tensor);
}

/* A u32 hyper-parameter that may be stored per layer (an array): its first element. */
static int hparam_u32(const struct gguf_file *f, const char *arch, const char *suffix,
                      uint32_t dflt, uint32_t *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    *out = dflt;
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    if (kv && kv->type == GGUF_TYPE_ARRAY && kv->arr_n > 0 &&
        (kv->arr_type == GGUF_TYPE_UINT32 || kv->arr_type == GGUF_TYPE_INT32)) {
        memcpy(out, kv->value, 4);
        return 0;
    }
    return gguf_get_u32(f, key, out) < 0 ? -1 : 0;
}

/* The facts the mix rules read (llama.cpp: hparams after load_hparams, and model.type). */
static int plan_model(struct plan *p, const struct gguf_file *in, enum ftype ft) {
    struct gguf_str a;
    char arch[64];
    uint32_t n_layer, n_expert, n_head, n_head_kv;
    if (gguf_get_str(in, "general.architecture", &a) != 0 || a.len == 0 || a.len >= sizeof arch) {
        err_set("%s: no usable general.architecture key", in->path);
        return -1;
    }
    memcpy(arch, a.data, a.len);
    arch[a.len] = 0;
    if (hparam_u32(in, arch, "block_count", 0, &n_layer) ||
        hparam_u32(in, arch, "expert_count", 0, &n_expert) ||
        hparam_u32(in, arch, "attention.head_count", 0, &n_head) ||
        hparam_u32(in, arch, "attention.head_count_kv", n_head, &n_head_kv))
        return -1;
    p->mix = (struct mix){.ft = ft, .n_layer = (int)n_layer, .n_expert = (int)n_expert, .tied = 1};
    p->mix.n_gqa = n_head_kv ? (int)(n_head / n_head_kv) : 0;
    /* LLM_TYPE_70B, the one model size the rules single out */
    p->mix.is_70b = !strcmp(arch, "llama") && n_layer == 80 && n_head != n_head_kv;
    return 0;
}

/* Whether the tensor can be converted as planned; errors name the file and the tensor. */
static int check_tensor(const struct qz_opts *o, const struct qz_tensor *t) {
    uint32_t from = t->src->type;
    const struct qtype_traits *src = qtype_traits(from), *dst = qtype_traits(t->type);
    if (from == t->type) return 0;
    if (!src || !src->to_float) {
        err_set("%s: tensor '%s': cannot convert from type %s (not supported)", o->in, t->name,
                qtype_name(from));
        return -1;
    }
    if (is_quantized(from) && !o->allow_requantize) {
        err_set("%s: tensor '%s' is already quantized (%s); quantizing it again to %s loses "
                "quality: start from an F32/F16/BF16 file, or pass --allow-requantize",
                o->in, t->name, qtype_name(from), qtype_name(t->type));
        return -1;
    }
    if (!dst || !dst->from_float) {
        err_set("%s: tensor '%s': cannot write type %s", o->in, t->name, qtype_name(t->type));
        return -1;
    }
    return 0;
}

static int plan_make(struct plan *p, const struct qz_opts *o, const struct gguf_file *in) {
    memset(p, 0, sizeof *p);
    if (plan_model(p, in, o->ft->ft)) return -1;
    plan_list(p, in);
    for (size_t i = 0; i < p->n; i++) {
        struct qz_tensor *t = &p->t[i];
        if (choose_type(o, p, t) || check_tensor(o, t)) return -1;
        t->nbytes = qtype_row_size(t->type, t->src->ne[0]) * (uint64_t)t->nrows;
        if (t->type == t->src->type) t->nbytes = t->src->nbytes;
        p->bytes_in += t->src->nbytes;
        p->bytes_out += t->nbytes;
        p->n_elements += (uint64_t)t->src->ne[0] * (uint64_t)t->nrows;
    }
    return 0;
}

/* ---- converting rows, in parallel ---- */

static volatile sig_atomic_t qz_interrupted; /* set by SIGINT/SIGTERM, read between chunks */

static void on_signal(int sig) {
    (void)sig;
    qz_interrupted = 1;
}

/* One thread's rows of a chunk: source rows to float, to the new type, and back to float
 * for the error figure. */
struct slice {
    const struct qtype_traits *st, *dt;
    const uint8_t *src; /* first row of the slice */
    uint8_t *dst;
    size_t src_row, dst_row;
    int64_t ne0, rows;
    double err2, ref2; /* sum of (x - q(x))^2 and of x^2 */
    int64_t bad_row;   /* first row (within the slice) holding a NaN or infinity, or -1 */
};

static void slice_row(struct slice *s, int64_t r, float *x, float *y) {
    s->st->to_float(s->src + (size_t)r * s->src_row, x, s->ne0);
    for (int64_t i = 0; i < s->ne0; i++) {
        if (!isfinite(x[i]) && s->bad_row < 0) s->bad_row = r;
    }
    uint8_t *q = s->dst + (size_t)r * s->dst_row;
    s->dt->from_float(x, q, s->ne0);
    s->dt->to_float(q, y, s->ne0);
    for (int64_t i = 0; i < s->ne0; i++) {
        double d = (double)x[i] - y[i];
        s->err2 += d * d;
        s->ref2 += (double)x[i] * x[i];
    }
}

static void *slice_run(void *arg) {
    struct slice *s = arg;
    float *x = xmalloc((size_t)s->ne0 * sizeof *x), *y = xmalloc((size_t)s->ne0 * sizeof *y);
    for (int64_t r = 0; r < s->rows && s->bad_row < 0; r++) slice_row(s, r, x, y);
    free(x);
    free(y);
    return NULL;
}

/* Converts rows [0, rows) of a chunk over n_threads threads (the caller's included). */
static void convert_chunk(struct slice *proto, int64_t rows, int n_threads, struct slice *out) {
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int n = rows < n_threads ? (int)rows : n_threads;
    for (int i = 0; i < n; i++) {
        int64_t r0 = rows * i / n, r1 = rows * (i + 1) / n;
        out[i] = *proto;
        out[i].src += (size_t)r0 * proto->src_row;
        out[i].dst += (size_t)r0 * proto->dst_row;
        out[i].rows = r1 - r0;
        if (i > 0) started[i] = pthread_create(&tid[i], NULL, slice_run, &out[i]) == 0;
    }
    for (int i = 0; i < n; i++)
        if (!started[i]) slice_run(&out[i]); /* thread 0, or a thread that did not start */
    for (int i = 1; i < n; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    for (int i = 0; i < n; i++) {
        proto->err2 += out[i].err2, proto->ref2 += out[i].ref2;
        if (out[i].bad_row >= 0 && proto->bad_row < 0)
            proto->bad_row = rows * i / n + out[i].bad_row;
    }
}

/* ---- writing: the producer gguf.c calls for each tensor ---- */

struct run {
    const struct qz_opts *o;
    const struct gguf_file *in;
    struct plan *p;
    uint64_t done_in; /* input bytes handled so far, for the progress bar */
    int tty;
    double t0;
};

struct job {
    struct run *r;
    size_t i;
};

static void progress(const struct run *r, size_t i) {
    if (!r->tty || r->p->bytes_in == 0) return;
    double f = (double)r->done_in / (double)r->p->bytes_in;
    int w = 30, fill = (int)(f * w);
    char bar[32];
    for (int k = 0; k < w; k++) bar[k] = k < fill ? '#' : '.';
    bar[w] = 0;
    double el = time_now() - r->t0;
    fprintf(stderr, "\r[%s] %3.0f%%  tensor %zu/%zu  %.2f / %.2f GiB  %.0f MiB/s\033[K", bar,
            100 * f, i + 1, r->p->n, r->done_in / 1073741824.0, r->p->bytes_in / 1073741824.0,
            el > 0 ? r->done_in / 1048576.0 / el : 0.0);
}

static int interrupted(void) {
    if (!qz_interrupted) return 0;
    err_set("interrupted");
    return 1;
}

/* Tells the kernel it may drop the input pages just read: a model larger than RAM streams. */
static void release_input(const struct gguf_tensor *t) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data, b = a + t->nbytes;
    if (page <= 0 || t->nbytes == 0) return;
    a = a / (uintptr_t)page * (uintptr_t)page;
    madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Same type: the bytes as they are. */
static int copy_tensor(struct run *r, size_t i, struct gguf_stream *out) {
    const struct qz_tensor *t = &r->p->t[i];
    const uint8_t *src = t->src->data;
    for (uint64_t off = 0; off < t->nbytes; off += CHUNK_BYTES) {
        uint64_t n = t->nbytes - off < CHUNK_BYTES ? t->nbytes - off : CHUNK_BYTES;
        if (interrupted() || gguf_stream_write(out, src + off, n)) return -1;
        r->done_in += n;
        progress(r, i);
    }
    return 0;
}

static int convert_tensor(struct run *r, size_t i, struct gguf_stream *out, double *rel_err) {
    const struct qz_tensor *t = &r->p->t[i];
    int64_t ne0 = t->src->ne[0];
    struct slice s = {.st = qtype_traits(t->src->type),
                      .dt = qtype_traits(t->type),
                      .src = t->src->data,
                      .src_row = qtype_row_size(t->src->type, ne0),
                      .dst_row = qtype_row_size(t->type, ne0),
                      .ne0 = ne0,
                      .bad_row = -1};
    int64_t chunk = CHUNK_BYTES / s.dst_row > 0 ? (int64_t)(CHUNK_BYTES / s.dst_row) : 1;
    uint8_t *buf = xmalloc((size_t)(chunk < t->nrows ? chunk : t->nrows) * s.dst_row);
    struct slice *sl = xmalloc(sizeof *sl * (size_t)r->o->threads);
    int rc = 0;
    for (int64_t r0 = 0; r0 < t->nrows && rc == 0; r0 += chunk) {
        int64_t n = t->nrows - r0 < chunk ? t->nrows - r0 : chunk;
        struct slice proto = s;
        proto.src += (size_t)r0 * s.src_row;
        proto.dst = buf;
        if ((rc = interrupted() ? -1 : 0)) break;
        convert_chunk(&proto, n, r->o->threads, sl);
        s.err2 += proto.err2, s.ref2 += proto.ref2;
        if (proto.bad_row >= 0) {
            err_set("%s: tensor '%s' row %" PRId64 " holds a NaN or infinity", r->o->in, t->name,
                    r0 + proto.bad_row);
            rc = -1;
        } else if ((rc = gguf_stream_write(out, buf, (size_t)n * s.dst_row)) == 0) {
            r->done_in += (uint64_t)n * s.src_row;
            progress(r, i);
        }
    }
    free(sl);
    free(buf);
    *rel_err = s.ref2 > 0 ? sqrt(s.err2 / s.ref2) : 0.0;
    return rc;
}

/* "[256, 512, 8]" */
static const char *shape_str(const struct qz_tensor *t, char *buf, size_t cap) {
    int n = snprintf(buf, cap, "[");
    for (uint32_t d = 0; d < t->n_dims && n > 0 && (size_t)n < cap; d++)
        n += snprintf(buf + n, cap - (size_t)n, "%s%" PRId64, d ? ", " : "", t->src->ne[d]);
    if (n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, "]");
    return buf;
}

/* One line per tensor: index, name, shape, old -> new type, sizes, and the relative RMS
 * error of the conversion (rel_err < 0: not measured). */
static void tensor_line(const struct run *r, size_t i, double rel_err) {
    const struct qz_tensor *t = &r->p->t[i];
    char shape[96], why[96] = "", err[32] = "";
    if (t->type != t->wanted)
        snprintf(why, sizeof why, "  (%s needs rows of %" PRId64 ")", qtype_name(t->wanted),
                 blck_size(t->wanted));
    if (rel_err >= 0) snprintf(err, sizeof err, "  err %.2f%%", 100 * rel_err);
    fprintf(stderr, "%s[%4zu/%4zu] %-34s %-16s %5s -> %-5s %9.2f -> %9.2f KiB%s%s\n",
            r->tty ? "\r\033[K" : "", i + 1, r->p->n, t->name, shape_str(t, shape, sizeof shape),
            qtype_name(t->src->type), qtype_name(t->type), t->src->nbytes / 1024.0,
            t->nbytes / 1024.0, err, why);
}

static int produce(void *ctx, struct gguf_stream *out) {
    struct job *j = ctx;
    const struct qz_tensor *t = &j->r->p->t[j->i];
    double rel_err = -1;
    int rc = t->type == t->src->type ? copy_tensor(j->r, j->i, out)
                                     : convert_tensor(j->r, j->i, out, &rel_err);
    release_input(t->src);
    if (rc == 0) tensor_line(j->r, j->i, rel_err);
    return rc;
}

/* The input's keys as llama.cpp copies them, then the two it sets (appended, as ggml's
 * gguf_set_val_* removes a key before adding it). */
static void copy_keys(struct gguf_writer *w, const struct gguf_file *in, enum ftype ft) {
    static const char *const drop[] = {"general.quantization_version", "general.file_type",
                                       "split.no", "split.count", "split.tensors.count"};
    for (uint64_t i = 0; i < in->n_kv; i++) {
        int skip = 0;
        for (size_t k = 0; k < sizeof drop / sizeof drop[0]; k++)
            skip |= gguf_str_eq(in->kv[i].key, drop[k]);
        if (!skip) gguf_set_kv(w, &in->kv[i]);
    }
    gguf_set_u32(w, "general.quantization_version", QUANT_VERSION);
    gguf_set_u32(w, "general.file_type", (uint32_t)ft);
}

static int write_model(struct run *r) {
    struct gguf_writer *w = gguf_writer_new();
    struct job *jobs = xcalloc(r->p->n ? r->p->n : 1, sizeof *jobs);
    copy_keys(w, r->in, r->o->ft->ft);
    for (size_t i = 0; i < r->p->n; i++) {
        const struct qz_tensor *t = &r->p->t[i];
        jobs[i] = (struct job){r, i};
        gguf_add_tensor_stream(w, t->name, t->type, t->n_dims, t->src->ne, t->nbytes, produce,
                               &jobs[i]);
    }
    int rc = gguf_writer_write(w, r->o->out);
    gguf_writer_free(w);
    free(jobs);
    return rc;
}

static void summary(const struct run *r) {
    const struct plan *p = r->p;
    double ne = p->n_elements ? (double)p->n_elements : 1;
    if (r->o->dry_run)
        fprintf(stderr, "dry run: nothing written\n");
    else
        fprintf(stderr, "wrote %s\n", r->o->out);
    fprintf(stderr,
            "%s (%zu tensors): %.2f MiB (%.2f bits per weight) -> %.2f MiB (%.2f bits per "
            "weight)",
            r->o->ft->name, p->n, p->bytes_in / 1048576.0, 8.0 * p->bytes_in / ne,
            p->bytes_out / 1048576.0, 8.0 * p->bytes_out / ne);
    if (p->n_fallback) fprintf(stderr, ", %d tensors fell back to another type", p->n_fallback);
    fprintf(stderr, ", %.1f s\n", time_now() - r->t0);
}

static void dry_run(struct run *r) {
    for (size_t i = 0; i < r->p->n; i++) tensor_line(r, i, -1);
}

/* ---- arguments ---- */

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "moerun quantize: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see moerun quantize --help)\n");
    return -1;
}

static int bad_ftype(const char *s) {
    fprintf(stderr, "moerun quantize: unknown type '%s'; valid types:", s);
    for (size_t i = 0; i < N_FTYPES; i++) {
        if (i == N_MAIN_FTYPES) fprintf(stderr, " (aliases of the _M mixes:");
        fprintf(stderr, " %s", ftypes[i].name);
    }
    fprintf(stderr, ")\n");
    return -1;
}

static int tensor_type_arg(const char *flag, const char *s, int *out) {
    if ((*out = qtype_parse(s)) >= 0) return 0;
    fprintf(stderr, "moerun quantize: %s: unknown tensor type '%s'; valid:", flag, s);
    for (size_t i = 0; i < sizeof out_types / sizeof out_types[0]; i++)
        fprintf(stderr, " %s", qtype_name(out_types[i]));
    fprintf(stderr, "\n");
    return -1;
}

static int add_override(struct qz_opts *o, const char *re, const char *type_s, const char *flag) {
    int type;
    if (tensor_type_arg(flag, type_s, &type)) return -1;
    o->ov = xrealloc(o->ov, sizeof *o->ov * (size_t)(o->n_ov + 1));
    int e = regcomp(&o->ov[o->n_ov].re, re, REG_EXTENDED | REG_NOSUB);
    if (e) {
        char msg[128];
        regerror(e, &o->ov[o->n_ov].re, msg, sizeof msg);
        fprintf(stderr, "moerun quantize: %s: bad regex '%s': %s\n", flag, re, msg);
        return -1;
    }
    o->ov[o->n_ov++].type = (uint32_t)type;
    return 0;
}

static int tensor_type_override(struct qz_opts *o, const char *v) {
    const char *eq = strrchr(v, '=');
    if (!eq || eq == v) return usage_error("--tensor-type needs REGEX=TYPE, got '%s'", v);
    char *re = xmalloc((size_t)(eq - v) + 1);
    memcpy(re, v, (size_t)(eq - v));
    re[eq - v] = 0;
    int rc = add_override(o, re, eq + 1, "--tensor-type");
    free(re);
    return rc;
}

static int threads_arg(struct qz_opts *o, const char *v) {
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || end == v || n < 1 || n > MAX_THREADS)
        return usage_error("--threads needs a number from 1 to 256, got '%s'", v);
    o->threads = (int)n;
    return 0;
}

/* An option with a value: --opt VALUE or --opt=VALUE. 1 when it is not one of them. */
static int valued_option(struct qz_opts *o, const char *name, const char *v) {
    if (!strcmp(name, "--tensor-type")) return tensor_type_override(o, v);
    if (!strcmp(name, "--expert-type")) return tensor_type_arg(name, v, &o->expert_type);
    if (!strcmp(name, "--output-type")) return tensor_type_arg(name, v, &o->output_type);
    if (!strcmp(name, "--embd-type") || !strcmp(name, "--token-embedding-type"))
        return tensor_type_arg(name, v, &o->embd_type);
    if (!strcmp(name, "--threads") || !strcmp(name, "-t")) return threads_arg(o, v);
    return 1;
}

static int flag_option(struct qz_opts *o, const char *a) {
    if (!strcmp(a, "--pure")) return o->pure = 1, 0;
    if (!strcmp(a, "--dry-run")) return o->dry_run = 1, 0;
    if (!strcmp(a, "--allow-requantize")) return o->allow_requantize = 1, 0;
    return 1;
}

/* One option at argv[*i]; advances *i past its value. */
static int parse_option(struct qz_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *eq = strchr(a, '=');
    char name[64];
    int rc = flag_option(o, a);
    if (rc <= 0) return rc;
    if (eq && a[1] == '-' && (size_t)(eq - a) < sizeof name) {
        memcpy(name, a, (size_t)(eq - a));
        name[eq - a] = 0;
        rc = valued_option(o, name, eq + 1);
    } else if (*i + 1 < argc) {
        rc = valued_option(o, a, argv[*i + 1]);
        if (rc <= 0) ++*i;
    }
    return rc > 0 ? usage_error("unknown option or missing value: '%s'", a) : rc;
}

/* Positionals IN OUT TYPE (with --dry-run also IN TYPE). */
static int parse_positionals(struct qz_opts *o, char **pos, int n) {
    if (n == 2 && o->dry_run) {
        o->in = pos[0];
        o->ft = ftype_parse(pos[1]);
        return o->ft ? 0 : bad_ftype(pos[1]);
    }
    if (n != 3)
        return usage_error("%s", n < 3 ? "needs IN.gguf OUT.gguf TYPE" : "too many arguments");
    o->in = pos[0], o->out = pos[1];
    o->ft = ftype_parse(pos[2]);
    return o->ft ? 0 : bad_ftype(pos[2]);
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
}

/* 1: --help printed; 0: parsed; -1: usage error printed. */
static int parse_args(struct qz_opts *o, int argc, char **argv) {
    char **pos = xmalloc(sizeof *pos * (size_t)(argc + 1));
    int n_pos = 0, rc = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(quantize_usage, stdout);
            rc = 1;
        } else if (argv[i][0] == '-' && argv[i][1])
            rc = parse_option(o, argc, argv, &i);
        else
            pos[n_pos++] = argv[i];
    }
    if (rc == 0) rc = parse_positionals(o, pos, n_pos);
    if (rc == 0 && o->expert_type >= 0)
        rc = add_override(o, "_exps\\.", qtype_name((uint32_t)o->expert_type), "--expert-type");
    if (o->threads == 0) o->threads = online_cpus();
    free(pos);
    return rc;
}

static void opts_free(struct qz_opts *o) {
    for (int i = 0; i < o->n_ov; i++) regfree(&o->ov[i].re);
    free(o->ov);
}

/* ---- the command ---- */

/* OUT must not be IN: the rename would replace the file being read. */
static int check_paths(const struct qz_opts *o) {
    struct stat a, b;
    if (!o->out || stat(o->in, &a) != 0 || stat(o->out, &b) != 0) return 0;
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino) return 0;
    err_set("%s: OUT is the input file; write to another path", o->out);
    return -1;
}

static int split_input(const struct gguf_file *in) {
    uint32_t n = 1;
    if (gguf_get_u32(in, "split.count", &n) < 0 || n <= 1) return 0;
    err_set("%s: one of %" PRIu32 " split files; merge them first (llama-gguf-split --merge)",
            in->path, n);
    return -1;
}

static int quantize_file(const struct qz_opts *o, int tty) {
    struct gguf_file in;
    struct plan p = {0};
    if (check_paths(o) || gguf_open(&in, o->in)) return -1;
    int rc = split_input(&in) ? -1 : plan_make(&p, o, &in);
    if (rc == 0) {
        struct run r = {.o = o, .in = &in, .p = &p, .tty = tty, .t0 = time_now()};
        if (o->dry_run)
            dry_run(&r);
        else
            rc = write_model(&r);
        if (tty) fprintf(stderr, "\r\033[K");
        if (rc == 0) summary(&r);
    }
    plan_free(&p);
    gguf_close(&in);
    return rc;
}

int cmd_quantize(int argc, char **argv) {
    struct qz_opts o = {.expert_type = -1, .output_type = -1, .embd_type = -1};
    int rc = parse_args(&o, argc, argv);
    if (rc) {
        opts_free(&o);
        return rc > 0 ? 0 : 1;
    }
    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    qz_interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc = quantize_file(&o, isatty(STDERR_FILENO));
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc && qz_interrupted)
        fprintf(stderr, "moerun quantize: interrupted; %s not written\n", o.out);
    else if (rc)
        fprintf(stderr, "moerun quantize: %s\n", err_get());
    opts_free(&o);
    return rc == 0 ? 0 : qz_interrupted ? 130 : 1;
}
