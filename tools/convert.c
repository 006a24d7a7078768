/* moerun convert: Hugging Face safetensors checkpoints to GGUF in llama.cpp's layout.
 *
 * Flow: config.json -> architecture row and hyper-parameters -> open every safetensors shard
 * (mmap, headers validated) -> walk the source tensors in llama.cpp's order (shards sorted by
 * file name, tensors sorted by name within a shard) and plan the output tensors: renamed,
 * experts stacked into 3-D *_exps, DeepSeek's kv_b_proj split into attn_k_b (transposed per
 * head) and attn_v_b, Llama's q/k rows permuted for its rope -> metadata and tokenizer keys ->
 * gguf_writer_write, which calls back for each tensor's bytes in order, so that only one
 * chunk of rows is in memory at a time (plus the kernel's page cache, released per tensor).
 *
 * The exact rules (names, shapes, keys, output types) are llama.cpp's convert_hf_to_gguf.py's;
 * the code is our own. */
#include "tools/convert.h"

#include "gguf.h"
#include "json.h"
#include "quant.h"
#include "safetensors.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const convert_usage =
    "usage: moerun convert HF_DIR -o OUT.gguf [--outtype f32|f16|bf16|q8_0] [--name NAME]\n"
    "\n"
    "Converts a Hugging Face checkpoint directory (config.json, tokenizer.json or a\n"
    "SentencePiece tokenizer.model, tokenizer_config.json, model.safetensors or\n"
    "model.safetensors.index.json + shards) to one GGUF file with llama.cpp's tensor names,\n"
    "layouts and metadata keys. Llama, Mixtral and Qwen2 take tokenizer.model when there is\n"
    "one, as llama.cpp's converter does.\n"
    "\n"
    "  -o, --outfile FILE   output GGUF (written to a temporary file, renamed at the end)\n"
    "      --outtype T      f32, f16 (default), bf16 or q8_0 for the 2-D/3-D weights;\n"
    "                       norms, biases and routers stay f32 (as llama.cpp does)\n"
    "      --name NAME      general.name (default: the directory's name)\n"
    "  -q, --quiet          no progress bar and no summary\n"
    "\n"
    "Architectures: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, Qwen3MoeForCausalLM,\n"
    "Qwen2MoeForCausalLM, MixtralForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM.\n"
    "Source dtypes: F32, F16, BF16, and F8_E4M3 with 128x128 weight_scale_inv block scales.\n";

#define MAX_NAME 160
#define CHUNK_FLOATS (1 << 20) /* rows are converted in chunks of about 4 MiB of floats */

/* ---- hyper-parameters (config.json) ---- */

struct hparams {
    int64_t n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv, n_ctx, head_dim;
    int64_t n_expert, n_expert_used, n_ff_exp, n_ff_shexp, n_expert_shared, n_dense_lead;
    int64_t n_group, topk_group, q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head;
    int has_n_group, has_topk_group, has_q_lora, norm_topk_prob, has_norm_topk;
    double rms_eps, rope_theta, routed_scale;
    const char *scoring; /* NULL when absent */
    const struct json *rope_scaling;
    int64_t fp8_block[2]; /* quantization_config.weight_block_size, 0 when absent */
};

/* ---- the architectures ---- */

struct conv;

struct arch {
    const char *hf;   /* config.json architectures[0] */
    const char *name; /* general.architecture */
    int (*keys)(struct conv *c);
    int permute_qk;        /* Llama: llama.cpp permutes q/k rows for its rope */
    const char *moe;       /* "mlp" or "block_sparse_moe": where the experts live */
    const char *exp_hf[3]; /* expert projections as HF names them: gate, up, down */
    int exp_order[3];      /* order llama.cpp writes the stacked tensors in (0 gate 1 up 2 down) */
};

struct source {
    const struct st_file *file;
    const struct st_tensor *t;
    const struct st_tensor *scale; /* F8_E4M3: its weight_scale_inv, else NULL */
};

enum xform { X_ROWS, X_PERMUTE, X_V_OF_KV, X_K_OF_KV };

struct out_tensor {
    char name[MAX_NAME];
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    enum xform x;
    int64_t n_head;     /* X_PERMUTE: heads of this projection; X_*_OF_KV: kv heads */
    struct source *src; /* (n_src): stacked experts, or one tensor */
    int n_src;
    struct conv *c;
};

struct conv {
    const char *dir;
    const char *out_path;
    enum qtype outtype;
    const char *name;
    int quiet, tty;
    struct json_doc config;
    struct hparams hp;
    const struct arch *arch;
    struct st_file *files;
    size_t n_files;
    struct source *by_name; /* hash table over every source tensor (open addressing) */
    size_t n_slots;
    struct out_tensor *outs;
    size_t n_outs, cap_outs;
    struct gguf_writer *w;
    int64_t n_params, n_params_exps, n_exp_tensors, exp_count_sum;
    uint64_t bytes_total, bytes_done;
    size_t n_done;
    double t0;
};

static int keys_deepseek2(struct conv *c);
static int keys_qwen2moe(struct conv *c);
static int keys_qwen3moe(struct conv *c);
static int keys_llama(struct conv *c);
static int keys_qwen2(struct conv *c);

#define MLP_EXPERTS                                                                                \
    { "gate_proj", "up_proj", "down_proj" }
static const struct arch arches[] = {
    {"DeepseekV2ForCausalLM", "deepseek2", keys_deepseek2, 0, "mlp", MLP_EXPERTS, {2, 0, 1}},
    {"DeepseekV3ForCausalLM", "deepseek2", keys_deepseek2, 0, "mlp", MLP_EXPERTS, {2, 0, 1}},
    {"Qwen3MoeForCausalLM", "qwen3moe", keys_qwen3moe, 0, "mlp", MLP_EXPERTS, {2, 0, 1}},
    {"Qwen2MoeForCausalLM", "qwen2moe", keys_qwen2moe, 0, "mlp", MLP_EXPERTS, {2, 0, 1}},
    {"MixtralForCausalLM",
     "llama",
     keys_llama,
     1,
     "block_sparse_moe",
     {"w1", "w3", "w2"},
     {0, 2, 1}},
    {"LlamaForCausalLM", "llama", keys_llama, 1, "mlp", MLP_EXPERTS, {0, 1, 2}},
    {"Qwen2ForCausalLM", "qwen2", keys_qwen2, 0, "mlp", MLP_EXPERTS, {0, 1, 2}},
};
#define N_ARCHES (sizeof arches / sizeof arches[0])

/* Per-layer tensors: HF suffix after "model.layers.N." -> GGUF suffix after "blk.N.". */
static const char *const layer_names[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
    {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
    {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
    {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"},
};
static const char *const global_names[][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                              {"model.norm.weight", "output_norm.weight"},
                                              {"lm_head.weight", "output.weight"}};
static const char *const exp_gguf[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight",
                                        "ffn_down_exps.weight"};

/* ---- small helpers ---- */

static char *path_join(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void shape_text(char *buf, size_t n, const int64_t *shape, int n_dims) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* ---- hyper-parameters ---- */

/* First present integer key among names (NULL-terminated); 1 if none, -1 if malformed. */
static int hp_int(const struct json *cfg, const char *const *names, int64_t *out) {
    for (; *names; names++) {
        int rc = json_get_int(cfg, *names, 0, INT32_MAX, out);
        if (rc <= 0) return rc;
    }
    return 1;
}

#define HP(out, ...) hp_int(cfg, (const char *const[]){__VA_ARGS__, NULL}, out)

static int read_fp8_block(const struct json *cfg, struct hparams *hp) {
    const struct json *qc = json_get(cfg, "quantization_config");
    const struct json *bs = json_get(qc, "weight_block_size");
    if (!qc) return 0;
    const struct json *a = json_at(bs, 0), *b = json_at(bs, 1);
    if (!a || !b || !a->is_int || !b->is_int || a->i <= 0 || b->i <= 0)
        return err_set("config.json: quantization_config.weight_block_size must be [rows, cols]"),
               -1;
    hp->fp8_block[0] = a->i, hp->fp8_block[1] = b->i;
    return 0;
}

static int read_required(const struct json *cfg, struct hparams *hp) {
    struct {
        const char *name;
        int64_t *dst;
    } req[] = {{"hidden_size", &hp->n_embd},
               {"num_hidden_layers", &hp->n_layer},
               {"num_attention_heads", &hp->n_head},
               {"vocab_size", &hp->n_vocab}};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        int rc = json_get_int(cfg, req[i].name, 1, INT32_MAX, req[i].dst);
        if (rc) return rc > 0 ? err_set("config.json: \"%s\" is missing", req[i].name), -1 : -1;
    }
    return 0;
}

static int read_optional(const struct json *cfg, struct hparams *hp) {
    int bad = 0;
    hp->n_head_kv = hp->n_head;
    bad |= HP(&hp->n_head_kv, "num_key_value_heads") < 0;
    bad |= HP(&hp->n_ff, "intermediate_size") < 0;
    bad |= HP(&hp->n_ctx, "max_position_embeddings") < 0;
    bad |= HP(&hp->head_dim, "head_dim") < 0;
    bad |= HP(&hp->n_expert, "n_routed_experts", "num_experts", "num_local_experts") < 0;
    bad |= HP(&hp->n_expert_used, "num_experts_per_tok") < 0;
    bad |= HP(&hp->n_ff_exp, "moe_intermediate_size") < 0;
    bad |= HP(&hp->n_ff_shexp, "shared_expert_intermediate_size") < 0;
    bad |= HP(&hp->n_expert_shared, "n_shared_experts") < 0;
    bad |= HP(&hp->n_dense_lead, "first_k_dense_replace") < 0;
    int rc = HP(&hp->n_group, "n_group");
    bad |= rc < 0, hp->has_n_group = rc == 0;
    rc = HP(&hp->topk_group, "topk_group");
    bad |= rc < 0, hp->has_topk_group = rc == 0;
    rc = HP(&hp->q_lora_rank, "q_lora_rank");
    bad |= rc < 0, hp->has_q_lora = rc == 0;
    bad |= HP(&hp->kv_lora_rank, "kv_lora_rank") < 0;
    bad |= HP(&hp->qk_nope, "qk_nope_head_dim") < 0;
    bad |= HP(&hp->qk_rope, "qk_rope_head_dim") < 0;
    bad |= HP(&hp->v_head, "v_head_dim") < 0;
    hp->rope_theta = 10000.0, hp->routed_scale = 1.0, hp->rms_eps = 1e-6;
    bad |= json_get_num(cfg, "rms_norm_eps", &hp->rms_eps) < 0;
    bad |= json_get_num(cfg, "rope_theta", &hp->rope_theta) < 0;
    bad |= json_get_num(cfg, "routed_scaling_factor", &hp->routed_scale) < 0;
    rc = json_get_bool(cfg, "norm_topk_prob", &hp->norm_topk_prob);
    bad |= rc < 0, hp->has_norm_topk = rc == 0;
    hp->scoring = json_get_str(cfg, "scoring_func");
    hp->rope_scaling = json_get(cfg, "rope_scaling");
    if (bad) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", err_get());
        return err_set("config.json: %s", msg), -1;
    }
    return read_fp8_block(cfg, hp);
}

static int read_config(struct conv *c) {
    char *path = path_join(c->dir, "config.json");
    int rc = json_parse_file(&c->config, path, 16u << 20);
    free(path);
    if (rc) return -1;
    const struct json *cfg = c->config.root;
    const struct json *arr = json_at(json_get(cfg, "architectures"), 0);
    const char *a = arr && arr->type == JSON_STRING ? arr->str : NULL;
    for (size_t i = 0; a && i < N_ARCHES; i++)
        if (!strcmp(arches[i].hf, a)) c->arch = &arches[i];
    if (!c->arch) {
        char list[512] = "";
        for (size_t i = 0; i < N_ARCHES; i++)
            strncat(list, arches[i].hf, sizeof list - strlen(list) - 3),
                strcat(list, i + 1 < N_ARCHES ? ", " : "");
        return err_set("%s/config.json: unsupported architecture %s (supported: %s)", c->dir,
                       a ? a : "(no \"architectures\" entry)", list),
               -1;
    }
    if (read_required(cfg, &c->hp) || read_optional(cfg, &c->hp)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err_get());
        return err_set("%s/%s", c->dir, msg), -1;
    }
    return 0;
}

/* ---- sources: shards and the name table ---- */

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    while (*s) h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static struct source *find_source(const struct conv *c, const char *name) {
    for (size_t i = name_hash(name) & (c->n_slots - 1);; i = (i + 1) & (c->n_slots - 1)) {
        if (!c->by_name[i].t) return NULL;
        if (!strcmp(c->by_name[i].t->name, name)) return &c->by_name[i];
    }
}

static int index_sources(struct conv *c) {
    size_t n = 0;
    for (size_t f = 0; f < c->n_files; f++) n += c->files[f].n_tensors;
    c->n_slots = 16;
    while (c->n_slots < 2 * n) c->n_slots *= 2;
    c->by_name = xcalloc(c->n_slots, sizeof *c->by_name);
    for (size_t f = 0; f < c->n_files; f++) {
        for (size_t k = 0; k < c->files[f].n_tensors; k++) {
            const struct st_tensor *t = &c->files[f].tensors[k];
            if (find_source(c, t->name))
                return err_set("%s: tensor %s appears in two shards", c->files[f].path, t->name),
                       -1;
            size_t i = name_hash(t->name) & (c->n_slots - 1);
            while (c->by_name[i].t) i = (i + 1) & (c->n_slots - 1);
            c->by_name[i] = (struct source){&c->files[f], t, NULL};
        }
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The shard file names from model.safetensors.index.json's weight_map, sorted, unique;
 * a shard that is named there but absent is an error naming one tensor it should hold. */
static int shard_names(const char *dir, char ***out, size_t *n_out) {
    struct json_doc d;
    char *path = path_join(dir, "model.safetensors.index.json");
    int rc = json_parse_file(&d, path, 256u << 20);
    if (rc) return free(path), -1;
    const struct json *wm = json_get(d.root, "weight_map");
    if (!wm || wm->type != JSON_OBJECT) {
        json_free(&d);
        err_set("%s: no \"weight_map\" object", path);
        return free(path), -1;
    }
    char **names = xcalloc(wm->len + 1, sizeof *names);
    size_t n = 0;
    for (const struct json *e = wm->child; e && rc == 0; e = e->next) {
        if (e->type != JSON_STRING || strchr(e->str, '/')) {
            rc = (err_set("%s: weight_map[\"%s\"] is not a file name", path, e->key), -1);
            break;
        }
        int seen = 0;
        for (size_t i = 0; i < n && !seen; i++) seen = !strcmp(names[i], e->str);
        if (seen) continue;
        char *shard = path_join(dir, e->str);
        if (access(shard, R_OK))
            rc = (err_set("%s: missing shard %s (holds tensor %s)", path, e->str, e->key), -1);
        free(shard);
        names[n++] = xstrdup(e->str);
    }
    json_free(&d);
    free(path);
    qsort(names, n, sizeof *names, cmp_str);
    *out = names, *n_out = n;
    return rc;
}

static int open_sources(struct conv *c) {
    char *index = path_join(c->dir, "model.safetensors.index.json");
    int sharded = access(index, R_OK) == 0;
    free(index);
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    if (sharded) {
        rc = shard_names(c->dir, &names, &n);
    } else {
        names = xcalloc(1, sizeof *names);
        names[n++] = xstrdup("model.safetensors");
    }
    c->files = xcalloc(n ? n : 1, sizeof *c->files);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char *p = path_join(c->dir, names[i]);
        rc = st_open(&c->files[i], p);
        if (rc == 0) c->n_files++;
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc ? rc : index_sources(c);
}

/* ---- reading source rows as floats ---- */

static float fp8_e4m3_to_f32(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9); /* subnormal: m/8 * 2^-6 */
    else
        v = ldexpf((float)(8 + m), e - 10); /* (1 + m/8) * 2^(e-7) */
    return s ? -v : v;
}

static float read_elem(const struct st_tensor *t, uint64_t i) {
    const uint8_t *p = t->data;
    uint16_t h;
    float f;
    switch (t->dtype) {
    case ST_F32:
        memcpy(&f, p + 4 * i, 4);
        return f;
    case ST_F16:
        memcpy(&h, p + 2 * i, 2);
        return f16_to_f32(h);
    case ST_BF16:
        memcpy(&h, p + 2 * i, 2);
        return bf16_to_f32(h);
    case ST_F8_E4M3:
        return fp8_e4m3_to_f32(p[i]);
    default:
        return 0; /* refused when planning */
    }
}

static int64_t src_cols(const struct st_tensor *t) {
    return t->n_dims ? t->shape[t->n_dims - 1] : 1;
}

/* Row r (cols values) of a source as floats; FP8 weights times their block's scale. */
static void read_row(const struct source *s, int64_t r, int64_t cols, float *dst,
                     const int64_t *block) {
    uint64_t base = (uint64_t)r * (uint64_t)cols;
    if (s->t->dtype == ST_F32) {
        memcpy(dst, s->t->data + 4 * base, (size_t)cols * 4);
        return;
    }
    for (int64_t j = 0; j < cols; j++) dst[j] = read_elem(s->t, base + (uint64_t)j);
    if (!s->scale) return;
    int64_t sc_cols = src_cols(s->scale), srow = r / block[0];
    for (int64_t j = 0; j < cols; j++)
        dst[j] *= read_elem(s->scale, (uint64_t)(srow * sc_cols + j / block[1]));
}

/* ---- producing an output tensor ---- */

static void progress(struct conv *c, const struct out_tensor *o) {
    if (!c->tty || c->quiet) return;
    double dt = time_now() - c->t0;
    fprintf(stderr, "\r\033[Kconvert: [%zu/%zu] %.2f / %.2f GiB  %.0f MiB/s  %s", c->n_done + 1,
            c->n_outs, c->bytes_done / 1073741824.0, c->bytes_total / 1073741824.0,
            dt > 0 ? c->bytes_done / 1048576.0 / dt : 0.0, o->name);
    fflush(stderr);
}

/* Converts n floats (whole rows of ne[0]) to the output type and writes them. */
static int emit(struct out_tensor *o, const float *x, int64_t n, void *buf,
                struct gguf_stream *out) {
    size_t bytes;
    if (o->type == QT_F32) {
        bytes = (size_t)n * 4;
        buf = (void *)x;
    } else if (o->type == QT_F16 || o->type == QT_BF16) {
        uint16_t *h = buf;
        for (int64_t i = 0; i < n; i++)
            h[i] = o->type == QT_F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        bytes = (size_t)n * 2;
    } else {
        const struct qtype_traits *tr = qtype_traits(o->type);
        tr->from_float(x, buf, n);
        bytes = qtype_row_size(o->type, n);
    }
    o->c->bytes_done += bytes;
    return gguf_stream_write(out, buf, bytes);
}

/* Source row feeding output row r of one source (rows counted within that source). */
static int64_t map_row(const struct out_tensor *o, int64_t r, int64_t rows) {
    const struct hparams *hp = &o->c->hp;
    if (o->x == X_PERMUTE) {
        /* llama.cpp's permute: per head, rows (pair j, half s) come from row s*hd/2 + j */
        int64_t hd = rows / o->n_head, h = r / hd, i = r % hd;
        return h * hd + (i % 2) * (hd / 2) + i / 2;
    }
    if (o->x == X_V_OF_KV) {
        int64_t h = r / hp->v_head, i = r % hp->v_head;
        return h * (hp->qk_nope + hp->v_head) + hp->qk_nope + i;
    }
    return r;
}

struct chunk {
    float *x;  /* (cap) floats */
    void *out; /* converted bytes */
    int64_t n, cap;
};

static int flush(struct out_tensor *o, struct chunk *k, struct gguf_stream *out) {
    int rc = k->n ? emit(o, k->x, k->n, k->out, out) : 0;
    k->n = 0;
    return rc;
}

/* Rows of every source in turn (experts stacked), each through map_row. A permuted 1-D
 * bias is read one value per "row". */
static int produce_rows(struct out_tensor *o, struct chunk *k, struct gguf_stream *out) {
    for (int s = 0; s < o->n_src; s++) {
        const struct source *src = &o->src[s];
        int64_t cols = src_cols(src->t), rows = (int64_t)src->t->n_elem / (cols ? cols : 1);
        if (o->x == X_PERMUTE && src->t->n_dims == 1) rows = cols, cols = 1;
        int64_t out_rows = o->x == X_V_OF_KV ? o->n_head * o->c->hp.v_head : rows;
        uint64_t row_bytes = (uint64_t)cols * st_dtype_size(src->t->dtype);
        for (int64_t r = 0, done = 0; r < out_rows; r++) {
            if (k->n + cols > k->cap) {
                if (flush(o, k, out)) return -1;
                /* plain row order: drop the pages read so far, so that resident memory stays
                 * at one chunk however large the tensor */
                if (o->x == X_ROWS && !src->scale)
                    st_release_range(src->file, src->t->data + done * row_bytes,
                                     (uint64_t)(r - done) * row_bytes),
                        done = r;
            }
            read_row(src, map_row(o, r, rows), cols, k->x + k->n, o->c->hp.fp8_block);
            k->n += cols;
        }
        st_release(src->file, src->t);
    }
    return flush(o, k, out);
}

/* attn_k_b: per kv head, the first qk_nope rows of that head's block of kv_b_proj,
 * transposed to kv_lora_rank rows of qk_nope values. */
static int produce_k_of_kv(struct out_tensor *o, struct chunk *k, struct gguf_stream *out) {
    const struct hparams *hp = &o->c->hp;
    int64_t nope = hp->qk_nope, lora = hp->kv_lora_rank;
    float *tmp = xmalloc((size_t)(nope * lora) * sizeof *tmp);
    int rc = 0;
    for (int64_t h = 0; h < o->n_head && rc == 0; h++) {
        for (int64_t j = 0; j < nope; j++)
            read_row(&o->src[0], h * (nope + hp->v_head) + j, lora, tmp + j * lora, hp->fp8_block);
        for (int64_t l = 0; l < lora; l++) {
            if (k->n + nope > k->cap && (rc = flush(o, k, out))) break;
            for (int64_t j = 0; j < nope; j++) k->x[k->n + j] = tmp[j * lora + l];
            k->n += nope;
        }
    }
    free(tmp);
    st_release(o->src[0].file, o->src[0].t);
    return rc ? rc : flush(o, k, out);
}

static int produce(void *ctx, struct gguf_stream *out) {
    struct out_tensor *o = ctx;
    progress(o->c, o);
    /* whole output rows per chunk, and at least one row */
    int64_t ne0 = o->ne[0], cap = ne0 * (CHUNK_FLOATS / ne0 > 0 ? CHUNK_FLOATS / ne0 : 1);
    struct chunk k = {xmalloc((size_t)cap * sizeof(float)), xmalloc((size_t)cap * sizeof(float)), 0,
                      cap};
    int rc = o->x == X_K_OF_KV ? produce_k_of_kv(o, &k, out) : produce_rows(o, &k, out);
    free(k.x), free(k.out);
    o->c->n_done++;
    return rc;
}

/* ---- planning ---- */

/* llama.cpp's output type for a tensor: 1-D tensors, norms, routers and biases stay F32;
 * Q8_0 needs rows that are whole blocks and falls back to F16. */
static uint32_t out_type(const struct conv *c, const char *name, uint32_t n_dims, int64_t ne0) {
    if (n_dims <= 1 || ends_with(name, "_norm.weight") || strstr(name, "ffn_gate_inp") ||
        !ends_with(name, ".weight"))
        return QT_F32;
    if (c->outtype == QT_Q8_0 && ne0 % 32) return QT_F16;
    return c->outtype;
}

static int check_dtype(const struct conv *c, struct source *s) {
    const struct st_tensor *t = s->t;
    if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16) return 0;
    if (t->dtype != ST_F8_E4M3)
        return err_set("%s: tensor %s: unsupported dtype %s (F32, F16, BF16, F8_E4M3 are)",
                       s->file->path, t->name, t->dtype_name),
               -1;
    char name[MAX_NAME + 16];
    snprintf(name, sizeof name, "%s_scale_inv", t->name);
    const struct source *sc = find_source(c, name);
    if (!sc || !c->hp.fp8_block[0] || t->n_dims != 2)
        return err_set("%s: tensor %s: F8_E4M3 needs %s and quantization_config.weight_block_size",
                       s->file->path, t->name, name),
               -1;
    int64_t want0 = (t->shape[0] + c->hp.fp8_block[0] - 1) / c->hp.fp8_block[0];
    int64_t want1 = (t->shape[1] + c->hp.fp8_block[1] - 1) / c->hp.fp8_block[1];
    if (sc->t->n_dims != 2 || sc->t->shape[0] != want0 || sc->t->shape[1] != want1 ||
        (sc->t->dtype != ST_F32 && sc->t->dtype != ST_BF16 && sc->t->dtype != ST_F16))
        return err_set("%s: tensor %s: shape or dtype does not match %s", sc->file->path,
                       sc->t->name, t->name),
               -1;
    s->scale = sc->t;
    return 0;
}

static struct out_tensor *new_out(struct conv *c, const char *name, int n_src) {
    if (c->n_outs == c->cap_outs) {
        c->cap_outs = c->cap_outs ? 2 * c->cap_outs : 256;
        c->outs = xrealloc(c->outs, c->cap_outs * sizeof *c->outs);
    }
    struct out_tensor *o = &c->outs[c->n_outs++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->src = xcalloc((size_t)n_src, sizeof *o->src);
    o->n_src = n_src;
    o->c = c;
    return o;
}

/* ne in ggml order from the (first) source's shape, with n_stack experts as the last dim. */
static void set_shape(struct out_tensor *o, const struct st_tensor *t, int64_t n_stack) {
    o->n_dims = (uint32_t)t->n_dims;
    for (int i = 0; i < t->n_dims; i++) o->ne[i] = t->shape[t->n_dims - 1 - i];
    if (n_stack) o->ne[o->n_dims++] = n_stack;
    for (uint32_t i = o->n_dims; i < GGUF_MAX_DIMS; i++) o->ne[i] = 1;
}

/* Expected ggml shape of a tensor from config.json; 0 when no rule applies. */
static int expected_shape(const struct conv *c, const char *gname, int64_t *ne) {
    const struct hparams *hp = &c->hp;
    const char *s = strncmp(gname, "blk.", 4) ? gname : strchr(gname + 4, '.') + 1;
    int64_t ff_exp = hp->n_ff_exp ? hp->n_ff_exp : hp->n_ff;
    ne[1] = 0;
    if (!strcmp(s, "token_embd.weight") || !strcmp(s, "output.weight"))
        ne[0] = hp->n_embd, ne[1] = hp->n_vocab;
    else if (!strcmp(s, "attn_norm.weight") || !strcmp(s, "ffn_norm.weight") ||
             !strcmp(s, "output_norm.weight"))
        ne[0] = hp->n_embd;
    else if (!strcmp(s, "ffn_gate.weight") || !strcmp(s, "ffn_up.weight"))
        ne[0] = hp->n_embd, ne[1] = hp->n_ff;
    else if (!strcmp(s, "ffn_down.weight"))
        ne[0] = hp->n_ff, ne[1] = hp->n_embd;
    else if (!strcmp(s, "ffn_gate_inp.weight"))
        ne[0] = hp->n_embd, ne[1] = hp->n_expert;
    else if (!strcmp(s, "ffn_gate_exps.weight") || !strcmp(s, "ffn_up_exps.weight"))
        ne[0] = hp->n_embd, ne[1] = ff_exp;
    else if (!strcmp(s, "ffn_down_exps.weight"))
        ne[0] = ff_exp, ne[1] = hp->n_embd;
    else
        return 0;
    return 1;
}

static int check_shape(const struct conv *c, const char *gname, const struct source *s) {
    int64_t ne[2];
    if (!expected_shape(c, gname, ne)) return 0;
    const struct st_tensor *t = s->t;
    int nd = ne[1] ? 2 : 1;
    int ok = t->n_dims == nd && t->shape[nd - 1] == ne[0] && (nd == 1 || t->shape[0] == ne[1]);
    if (ok) return 0;
    char got[96], want[96];
    int64_t w[2] = {ne[1], ne[0]};
    shape_text(got, sizeof got, t->shape, t->n_dims);
    shape_text(want, sizeof want, nd == 2 ? w : ne, nd);
    return err_set("%s: tensor %s has shape %s, but config.json implies %s", s->file->path, t->name,
                   got, want),
           -1;
}

static int plan_simple(struct conv *c, const char *gname, struct source *s, int64_t layer) {
    char name[MAX_NAME];
    if (layer >= 0)
        snprintf(name, sizeof name, "blk.%lld.%s", (long long)layer, gname);
    else
        snprintf(name, sizeof name, "%s", gname);
    if (check_dtype(c, s) || check_shape(c, name, s)) return -1;
    struct out_tensor *o = new_out(c, name, 1);
    o->src[0] = *s;
    set_shape(o, s->t, 0);
    if (c->arch->permute_qk && layer >= 0 && !strncmp(gname, "attn_q.", 7))
        o->x = X_PERMUTE, o->n_head = c->hp.n_head;
    if (c->arch->permute_qk && layer >= 0 && !strncmp(gname, "attn_k.", 7))
        o->x = X_PERMUTE, o->n_head = c->hp.n_head_kv;
    return 0;
}

/* kv_b_proj (n_head_kv * (qk_nope + v_head) rows of kv_lora_rank) -> attn_k_b {qk_nope,
 * kv_lora_rank, n_head_kv} and attn_v_b {kv_lora_rank, v_head, n_head_kv}. */
static int plan_kv_b(struct conv *c, struct source *s, int64_t layer) {
    const struct hparams *hp = &c->hp;
    const struct st_tensor *t = s->t;
    if (check_dtype(c, s)) return -1;
    if (t->n_dims != 2 || t->shape[0] != hp->n_head_kv * (hp->qk_nope + hp->v_head) ||
        t->shape[1] != hp->kv_lora_rank || !hp->qk_nope || !hp->v_head) {
        char got[96];
        shape_text(got, sizeof got, t->shape, t->n_dims);
        return err_set("%s: tensor %s has shape %s, but config.json implies [%lld, %lld]",
                       s->file->path, t->name, got,
                       (long long)(hp->n_head_kv * (hp->qk_nope + hp->v_head)),
                       (long long)hp->kv_lora_rank),
               -1;
    }
    char name[MAX_NAME];
    snprintf(name, sizeof name, "blk.%lld.attn_k_b.weight", (long long)layer);
    struct out_tensor *k = new_out(c, name, 1);
    k->src[0] = *s, k->x = X_K_OF_KV, k->n_head = hp->n_head_kv, k->n_dims = 3;
    k->ne[0] = hp->qk_nope, k->ne[1] = hp->kv_lora_rank, k->ne[2] = hp->n_head_kv, k->ne[3] = 1;
    snprintf(name, sizeof name, "blk.%lld.attn_v_b.weight", (long long)layer);
    struct out_tensor *v = new_out(c, name, 1);
    v->src[0] = *s, v->x = X_V_OF_KV, v->n_head = hp->n_head_kv, v->n_dims = 3;
    v->ne[0] = hp->kv_lora_rank, v->ne[1] = hp->v_head, v->ne[2] = hp->n_head_kv, v->ne[3] = 1;
    return 0;
}

/* All n_expert tensors of one projection of one layer, stacked; they must share one shape. */
static int plan_experts(struct conv *c, int64_t layer, int which) {
    char name[MAX_NAME];
    snprintf(name, sizeof name, "blk.%lld.%s", (long long)layer, exp_gguf[which]);
    struct out_tensor *o = new_out(c, name, (int)c->hp.n_expert);
    for (int64_t e = 0; e < c->hp.n_expert; e++) {
        char hf[MAX_NAME];
        snprintf(hf, sizeof hf, "model.layers.%lld.%s.experts.%lld.%s.weight", (long long)layer,
                 c->arch->moe, (long long)e, c->arch->exp_hf[which]);
        struct source *s = find_source(c, hf);
        if (!s) return err_set("%s: tensor %s is missing", c->dir, hf), -1;
        if (check_dtype(c, s) || (e == 0 && check_shape(c, name, s))) return -1;
        if (e && (s->t->n_dims != o->src[0].t->n_dims ||
                  memcmp(s->t->shape, o->src[0].t->shape, sizeof s->t->shape)))
            return err_set("%s: tensor %s: shape differs from expert 0's", s->file->path, hf), -1;
        o->src[e] = *s;
    }
    set_shape(o, o->src[0].t, c->hp.n_expert);
    return 0;
}

/* What one HF tensor name is: returns its layer (-1 for global) and sets *kind. */
enum kind { K_SKIP, K_SIMPLE, K_KV_B, K_EXPERT, K_UNKNOWN };

static enum kind classify(const struct conv *c, const char *name, int64_t *layer,
                          const char **gname) {
    *layer = -1;
    if (ends_with(name, "_scale_inv") || ends_with(name, "rotary_emb.inv_freq")) return K_SKIP;
    for (size_t i = 0; i < sizeof global_names / sizeof global_names[0]; i++)
        if (!strcmp(name, global_names[i][0])) return *gname = global_names[i][1], K_SIMPLE;
    long long l;
    int off = 0;
    if (sscanf(name, "model.layers.%lld.%n", &l, &off) != 1 || off == 0) return K_UNKNOWN;
    *layer = l;
    const char *rest = name + off;
    if (l >= c->hp.n_layer) return K_SKIP; /* DeepSeek-V3's multi-token-prediction layers */
    if (!strcmp(rest, "self_attn.kv_b_proj.weight")) return K_KV_B;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.experts.", c->arch->moe);
    if (!strncmp(rest, prefix, strlen(prefix))) return K_EXPERT;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(rest, layer_names[i][0])) return *gname = layer_names[i][1], K_SIMPLE;
    return K_UNKNOWN;
}

/* Per layer, how many expert tensors have been seen; at n_expert * 3 the stacks are planned
 * (where llama.cpp writes them: at the last expert tensor in its order). */
static int plan_one(struct conv *c, struct source *s, int64_t *exp_seen) {
    int64_t layer;
    const char *gname = NULL;
    switch (classify(c, s->t->name, &layer, &gname)) {
    case K_SKIP:
        return 0;
    case K_SIMPLE:
        return plan_simple(c, gname, s, layer);
    case K_KV_B:
        return plan_kv_b(c, s, layer);
    case K_EXPERT:
        if (!c->hp.n_expert)
            return err_set("%s: tensor %s: config.json has no expert count", s->file->path,
                           s->t->name),
                   -1;
        if (++exp_seen[layer] != 3 * c->hp.n_expert) return 0;
        for (int i = 0; i < 3; i++)
            if (plan_experts(c, layer, c->arch->exp_order[i])) return -1;
        return 0;
    default:
        return err_set("%s: tensor %s: not a tensor of %s that moerun knows", s->file->path,
                       s->t->name, c->arch->hf),
               -1;
    }
}

static int plan(struct conv *c) {
    int64_t *exp_seen = xcalloc((size_t)c->hp.n_layer, sizeof *exp_seen);
    int rc = 0;
    for (size_t f = 0; f < c->n_files && rc == 0; f++) {
        const struct st_file *sf = &c->files[f];
        const char **names = xmalloc((sf->n_tensors + 1) * sizeof *names);
        for (size_t i = 0; i < sf->n_tensors; i++) names[i] = sf->tensors[i].name;
        qsort(names, sf->n_tensors, sizeof *names, cmp_str);
        for (size_t i = 0; i < sf->n_tensors && rc == 0; i++)
            rc = plan_one(c, find_source(c, names[i]), exp_seen);
        free(names);
    }
    for (int64_t l = 0; l < c->hp.n_layer && rc == 0; l++)
        if (exp_seen[l] && exp_seen[l] != 3 * c->hp.n_expert)
            rc =
                (err_set("%s: layer %lld has %lld expert tensors, config.json implies %lld", c->dir,
                         (long long)l, (long long)exp_seen[l], (long long)(3 * c->hp.n_expert)),
                 -1);
    free(exp_seen);
    if (rc == 0 && c->n_outs == 0) rc = (err_set("%s: no tensors found", c->dir), -1);
    return rc;
}

/* Registers every planned tensor with the writer, with its type and size; counts the
 * parameters for general.size_label as gguf-py does. */
static void add_tensors(struct conv *c) {
    for (size_t i = 0; i < c->n_outs; i++) {
        struct out_tensor *o = &c->outs[i];
        o->type = out_type(c, o->name, o->n_dims, o->ne[0]);
        int64_t n = 1;
        for (uint32_t d = 0; d < o->n_dims; d++) n *= o->ne[d];
        c->n_params += n;
        if (strstr(o->name, "_exps.")) {
            c->n_params_exps += n;
            c->exp_count_sum += o->ne[o->n_dims - 1];
            c->n_exp_tensors++;
        }
        uint64_t bytes = qtype_row_size((enum qtype)o->type, o->ne[0]) * (uint64_t)(n / o->ne[0]);
        c->bytes_total += bytes;
        gguf_add_tensor_stream(c->w, o->name, o->type, o->n_dims, o->ne, bytes, produce, o);
    }
}

/* ---- metadata ---- */

static void key_u32(struct conv *c, const char *suffix, int64_t v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", c->arch->name, suffix);
    gguf_set_u32(c->w, key, (uint32_t)v);
}

static void key_f32(struct conv *c, const char *suffix, double v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", c->arch->name, suffix);
    gguf_set_f32(c->w, key, (float)v);
}

/* gguf-py's model_weight_count_rounded_notation with min_digits 2. */
static void rounded_count(char *buf, size_t n, double count) {
    const char *suffix = "K";
    double scaled = count * 1e-3;
    if (count > 1e12)
        scaled = count * 1e-12, suffix = "T";
    else if (count > 1e9)
        scaled = count * 1e-9, suffix = "B";
    else if (count > 1e6)
        scaled = count * 1e-6, suffix = "M";
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", scaled);
    int fix = 2 - (int)strlen(digits);
    snprintf(buf, n, "%.*f%s", fix > 0 ? fix : 0, scaled, suffix);
}

static void key_general(struct conv *c) {
    gguf_set_str(c->w, "general.architecture", c->arch->name);
    gguf_set_str(c->w, "general.type", "model");
    gguf_set_str(c->w, "general.name", c->name);
    char label[64];
    if (c->n_exp_tensors) {
        int64_t n_exp = c->exp_count_sum / c->n_exp_tensors;
        char size[32];
        rounded_count(size, sizeof size,
                      (double)(c->n_params - c->n_params_exps + c->n_params_exps / n_exp));
        snprintf(label, sizeof label, "%lldx%s", (long long)n_exp, size);
    } else {
        rounded_count(label, sizeof label, (double)c->n_params);
    }
    gguf_set_str(c->w, "general.size_label", label);
}

static uint32_t file_type(enum qtype t) {
    return t == QT_F32 ? 0 : t == QT_F16 ? 1 : t == QT_BF16 ? 32 : 7;
}

/* TextModel.set_gguf_parameters: the keys every architecture writes, in its order. */
static int keys_common(struct conv *c) {
    const struct hparams *hp = &c->hp;
    key_u32(c, "block_count", hp->n_layer);
    if (hp->n_ctx) key_u32(c, "context_length", hp->n_ctx);
    key_u32(c, "embedding_length", hp->n_embd);
    if (hp->n_ff) key_u32(c, "feed_forward_length", hp->n_ff);
    key_u32(c, "attention.head_count", hp->n_head);
    key_u32(c, "attention.head_count_kv", hp->n_head_kv);
    key_f32(c, "rope.freq_base", hp->rope_theta);
    key_f32(c, "attention.layer_norm_rms_epsilon", hp->rms_eps);
    if (hp->n_expert) key_u32(c, "expert_count", hp->n_expert);
    if (hp->n_expert_used) key_u32(c, "expert_used_count", hp->n_expert_used);
    if (hp->has_n_group) key_u32(c, "expert_group_count", hp->n_group);
    if (hp->has_topk_group) key_u32(c, "expert_group_used_count", hp->topk_group);
    if (hp->scoring) {
        if (strcmp(hp->scoring, "softmax") && strcmp(hp->scoring, "sigmoid"))
            return err_set("%s/config.json: scoring_func %s (softmax or sigmoid expected)", c->dir,
                           hp->scoring),
                   -1;
        key_u32(c, "expert_gating_func", strcmp(hp->scoring, "softmax") ? 2 : 1);
    }
    if (hp->head_dim) key_u32(c, "attention.key_length", hp->head_dim);
    if (hp->head_dim) key_u32(c, "attention.value_length", hp->head_dim);
    gguf_set_u32(c->w, "general.file_type", file_type(c->outtype));
    return 0;
}

static int keys_yarn(struct conv *c) {
    const struct json *rs = c->hp.rope_scaling;
    const char *type = json_get_str(rs, "type");
    if (!type) type = json_get_str(rs, "rope_type");
    double factor = 0, mscale_all = 0, v;
    int64_t orig = 0;
    if (!type || strcmp(type, "yarn") || json_get_num(rs, "factor", &factor)) return 0;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", c->arch->name);
    gguf_set_str(c->w, key, "yarn");
    key_f32(c, "rope.scaling.factor", factor);
    if (json_get_int(rs, "original_max_position_embeddings", 1, INT32_MAX, &orig) == 0)
        key_u32(c, "rope.scaling.original_context_length", orig);
    if (json_get_num(rs, "beta_fast", &v) == 0) key_f32(c, "rope.scaling.yarn_beta_fast", v);
    if (json_get_num(rs, "beta_slow", &v) == 0) key_f32(c, "rope.scaling.yarn_beta_slow", v);
    if (json_get_num(rs, "mscale_all_dim", &mscale_all) == 0)
        key_f32(c, "rope.scaling.yarn_log_multiplier", 0.1 * mscale_all);
    /* GGUF (llama.cpp's keys) has no place for mscale: Hugging Face's rope scales cos and sin
     * by yarn_get_mscale(mscale) / yarn_get_mscale(mscale_all_dim), 1 when they are equal as in
     * every released DeepSeek config; otherwise the file computes something else. */
    double mscale = mscale_all;
    if (json_get_num(rs, "mscale", &mscale) == 0 && mscale != mscale_all)
        fprintf(stderr,
                "moerun convert: warning: %s/config.json: rope_scaling.mscale = %g differs from "
                "mscale_all_dim = %g; GGUF keeps only mscale_all_dim, so the converted model's "
                "rope magnitudes differ from the checkpoint's\n",
                c->dir, mscale, mscale_all);
    return 0;
}

static int keys_deepseek2(struct conv *c) {
    struct hparams *hp = &c->hp;
    if (!hp->kv_lora_rank || !hp->qk_rope || !hp->qk_nope || !hp->v_head || !hp->n_ff_exp)
        return err_set("%s/config.json: kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, "
                       "v_head_dim and moe_intermediate_size are required",
                       c->dir),
               -1;
    int64_t n_head_kv = hp->n_head_kv;
    hp->n_head_kv = 1; /* MLA is stored as MQA over the compressed latent */
    int rc = keys_common(c);
    hp->n_head_kv = n_head_kv;
    if (rc) return -1;
    key_u32(c, "leading_dense_block_count", hp->n_dense_lead);
    key_u32(c, "vocab_size", hp->n_vocab);
    if (hp->has_q_lora) key_u32(c, "attention.q_lora_rank", hp->q_lora_rank);
    key_u32(c, "attention.kv_lora_rank", hp->kv_lora_rank);
    key_u32(c, "attention.key_length", hp->kv_lora_rank + hp->qk_rope);
    key_u32(c, "attention.value_length", hp->kv_lora_rank);
    key_u32(c, "attention.key_length_mla", hp->qk_nope + hp->qk_rope);
    key_u32(c, "attention.value_length_mla", hp->v_head);
    key_u32(c, "expert_feed_forward_length", hp->n_ff_exp);
    key_u32(c, "expert_shared_count", hp->n_expert_shared);
    key_f32(c, "expert_weights_scale", hp->routed_scale);
    if (hp->norm_topk_prob) gguf_set_bool(c->w, "deepseek2.expert_weights_norm", 1);
    /* DeepSeek-V2's own code skips routed_scaling_factor after renormalizing; llama.cpp (and
     * moerun) always apply it. Released V2 configs never combine the two. */
    if (hp->norm_topk_prob && hp->routed_scale != 1.0 &&
        !strcmp(c->arch->hf, "DeepseekV2ForCausalLM"))
        fprintf(stderr,
                "moerun convert: warning: %s/config.json: norm_topk_prob with "
                "routed_scaling_factor = %g: llama.cpp-format files scale the renormalized "
                "weights, DeepSeek-V2's code does not\n",
                c->dir, hp->routed_scale);
    key_u32(c, "rope.dimension_count", hp->qk_rope);
    if (keys_yarn(c)) return -1;
    if (!hp->has_q_lora) key_u32(c, "attention.q_lora_rank", 0);
    return 0;
}

static int keys_qwen2moe(struct conv *c) {
    if (keys_common(c)) return -1;
    if (c->hp.n_ff_exp) key_u32(c, "expert_feed_forward_length", c->hp.n_ff_exp);
    if (c->hp.n_ff_shexp) key_u32(c, "expert_shared_feed_forward_length", c->hp.n_ff_shexp);
    return 0;
}

static int keys_qwen3moe(struct conv *c) {
    if (keys_common(c)) return -1;
    if (c->hp.n_ff_exp) key_u32(c, "expert_feed_forward_length", c->hp.n_ff_exp);
    return 0;
}

static int keys_llama(struct conv *c) {
    if (keys_common(c)) return -1;
    key_u32(c, "vocab_size", c->hp.n_vocab);
    key_u32(c, "rope.dimension_count",
            c->hp.head_dim ? c->hp.head_dim : c->hp.n_embd / c->hp.n_head);
    return 0;
}

static int keys_qwen2(struct conv *c) { return keys_common(c); }

/* ---- command line ---- */

static int parse_outtype(const char *s, enum qtype *t) {
    static const struct {
        const char *name;
        enum qtype t;
    } types[] = {{"f32", QT_F32}, {"f16", QT_F16}, {"bf16", QT_BF16}, {"q8_0", QT_Q8_0}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, types[i].name)) return *t = types[i].t, 0;
    return err_set("--outtype %s: expected f32, f16, bf16 or q8_0", s), -1;
}

/* 0 parsed, 1 help printed, -1 error (err set). */
static int parse_args(struct conv *c, int argc, char **argv) {
    c->outtype = QT_F16;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return fputs(convert_usage, stdout), 1;
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            c->quiet = 1;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--outfile") || !strcmp(a, "--outtype") ||
                   !strcmp(a, "--name")) {
            if (!v) return err_set("%s needs a value", a), -1;
            i++;
            if (!strcmp(a, "--outtype") && parse_outtype(v, &c->outtype)) return -1;
            if (!strcmp(a, "--name")) c->name = v;
            if (a[1] == 'o' || !strcmp(a, "--outfile")) c->out_path = v;
        } else if (a[0] == '-' && a[1]) {
            return err_set("unknown option %s (see moerun convert --help)", a), -1;
        } else if (c->dir) {
            return err_set("more than one HF_DIR: %s and %s", c->dir, a), -1;
        } else {
            c->dir = a;
        }
    }
    if (!c->dir || !c->out_path)
        return err_set("HF_DIR and -o OUT.gguf are required\n%s", convert_usage), -1;
    return 0;
}

/* general.name default: the directory's last component. */
static char *default_name(const char *dir) {
    char *d = xstrdup(dir);
    size_t n = strlen(d);
    while (n > 1 && d[n - 1] == '/') d[--n] = 0;
    const char *slash = strrchr(d, '/');
    char *name = xstrdup(slash ? slash + 1 : d);
    free(d);
    return name;
}

/* ---- Ctrl-C: no OUT file, no temporary left behind ---- */

static char tmp_path[4096];

static void on_signal(int sig) {
    if (tmp_path[0]) unlink(tmp_path);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void catch_signals(const char *out) {
    /* gguf_writer_write's temporary name, documented in gguf.h */
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp.%ld", out, (long)getpid());
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

static void free_conv(struct conv *c) {
    for (size_t i = 0; i < c->n_outs; i++) free(c->outs[i].src);
    free(c->outs);
    free(c->by_name);
    for (size_t f = 0; f < c->n_files; f++) st_close(&c->files[f]);
    free(c->files);
    json_free(&c->config);
    gguf_writer_free(c->w);
}

static int convert(struct conv *c) {
    if (read_config(c) || open_sources(c) || plan(c)) return -1;
    c->w = gguf_writer_new();
    add_tensors(c);
    key_general(c);
    if (c->arch->keys(c)) return -1;
    gguf_set_u32(c->w, "general.quantization_version", 2);
    if (convert_vocab(c->w, c->dir, c->config.root, c->hp.n_vocab, c->arch->hf)) return -1;
    catch_signals(c->out_path);
    c->t0 = time_now();
    int rc = gguf_writer_write(c->w, c->out_path);
    if (c->tty && !c->quiet) fputs("\r\033[K", stderr);
    tmp_path[0] = 0;
    return rc;
}

int cmd_convert(int argc, char **argv) {
    struct conv c = {0};
    int rc = parse_args(&c, argc, argv);
    if (rc) {
        if (rc < 0) fprintf(stderr, "moerun convert: %s\n", err_get());
        return rc < 0;
    }
    char *name = c.name ? NULL : default_name(c.dir);
    if (name) c.name = name;
    c.tty = isatty(2);
    rc = convert(&c);
    if (rc)
        fprintf(stderr, "moerun convert: %s\n", err_get());
    else if (!c.quiet)
        fprintf(stderr, "moerun convert: wrote %s: %zu tensors, %.1f MiB, %s in %.1f s\n",
                c.out_path, c.n_outs, c.bytes_total / 1048576.0, c.arch->name, time_now() - c.t0);
    free_conv(&c);
    free(name);
    return rc ? 1 : 0;
}
