/* Tokenizers named by tokenizer.ggml.model, both as llama.cpp runs them. "llama" is
 * SentencePiece BPE: special-token texts are cut out first, each text fragment gets its spaces
 * escaped to U+2581 (plus a leading one when add_space_prefix holds and the fragment starts the
 * text or follows a special token), is split into UTF-8 characters, and the best-scoring adjacent
 * pair in the vocabulary is merged until none is left; pieces outside the vocabulary fall
 * back to byte tokens. "gpt2" is byte-level BPE: the text is split into words by the rules
 * tokenizer.ggml.pre names, each word's bytes become one symbol each, and adjacent pairs are
 * merged in the order of tokenizer.ggml.merges. A new model kind adds a loader branch and an
 * encode_<kind> function; partitioning, lookup and pieces are shared. */
#include "tokenizer.h"

#include "gguf.h"
#include "unicode.h"
#include "util.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_ADD_BOS "tokenizer.ggml.add_bos_token"
#define KEY_ADD_EOS "tokenizer.ggml.add_eos_token"
#define KEY_ADD_PREFIX "tokenizer.ggml.add_space_prefix"
#define KEY_MERGES "tokenizer.ggml.merges"
#define KEY_PRE "tokenizer.ggml.pre"

struct tok {
    const char *text; /* view into the file's map, not NUL-terminated */
    uint32_t len;
    float score;
    uint8_t type; /* enum token_type */
    uint8_t byte; /* the byte a TOKEN_BYTE <0xXX> stands for */
};

struct tokenizer {
    enum tokenizer_kind kind;
    int32_t n_vocab;
    struct tok *toks; /* (n_vocab) */
    int32_t *slots;   /* (slot_mask + 1) open-addressing text -> id table, -1 = empty */
    uint64_t slot_mask;
    int32_t byte_tok[256]; /* byte fallback: "<0xXX>", else the 1-char token, else -1 */
    int32_t bos, eos, eot, eom, unk, pad;
    int add_bos, add_eos, add_space_prefix;
    int32_t *special; /* (n_special) ids matched before tokenizing, longest text first */
    int32_t n_special;
    int32_t *eog; /* (n_eog) ids that end generation */
    int32_t n_eog;
    int max_piece;
    /* byte-level BPE */
    struct merge *merges; /* (merge_mask + 1) open-addressing (left, right) -> merge */
    uint64_t merge_mask;
    const struct pre_rules *pre;
    int pre_fallback;       /* tokenizer.ggml.pre was missing or unknown */
    int ignore_merges;      /* llama3: a word that is a whole token is not merged */
    int32_t byte_sym[256];  /* token of each byte's GPT-2 character, or -1 */
    int16_t cp_byte[0x144]; /* GPT-2 character -> the byte it shows, or -1 */
};

struct merge {
    int32_t left, right; /* left < 0: empty slot */
    int32_t result, rank;
};

static int load_bpe(struct tokenizer *t, const struct gguf_file *f);

/* ---- text -> id table ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

static int32_t vocab_find(const struct tokenizer *t, const char *s, size_t n) {
    for (uint64_t i = hash_bytes(s, n) & t->slot_mask;; i = (i + 1) & t->slot_mask) {
        int32_t id = t->slots[i];
        if (id < 0) return -1;
        if (t->toks[id].len == n && memcmp(t->toks[id].text, s, n) == 0) return id;
    }
}

/* Returns -1 after inserting, or the id that already holds the same text. */
static int32_t vocab_insert(struct tokenizer *t, int32_t id) {
    const struct tok *k = &t->toks[id];
    uint64_t i = hash_bytes(k->text, k->len) & t->slot_mask;
    for (; t->slots[i] >= 0; i = (i + 1) & t->slot_mask) {
        const struct tok *o = &t->toks[t->slots[i]];
        if (o->len == k->len && memcmp(o->text, k->text, k->len) == 0) return t->slots[i];
    }
    t->slots[i] = id;
    return -1;
}

/* ---- loading ---- */

static int load_kind(struct tokenizer *t, const struct gguf_file *f) {
    struct gguf_str model;
    int rc = gguf_get_str(f, KEY_MODEL, &model);
    if (rc < 0) return -1;
    if (rc > 0) {
        err_set("tokenizer: %s: key '%s' is missing", f->path, KEY_MODEL);
        return -1;
    }
    if (gguf_str_eq(model, "llama")) {
        t->kind = TOKENIZER_SPM;
        return 0;
    }
    if (gguf_str_eq(model, "gpt2")) {
        t->kind = TOKENIZER_BPE;
        return 0;
    }
    err_set("tokenizer: %s: unsupported tokenizer model '%.*s' (key '%s')", f->path,
            model.len > 64 ? 64 : (int)model.len, model.data, KEY_MODEL);
    return -1;
}

static int load_tokens(struct tokenizer *t, const struct gguf_file *f) {
    const struct gguf_kv *kv = gguf_find_kv(f, KEY_TOKENS);
    if (!kv) {
        err_set("tokenizer: %s: key '%s' is missing", f->path, KEY_TOKENS);
        return -1;
    }
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || kv->arr_n == 0 ||
        kv->arr_n > INT32_MAX / 4) {
        err_set("tokenizer: %s: key '%s' must be a non-empty array of strings (at most %d)",
                f->path, KEY_TOKENS, INT32_MAX / 4);
        return -1;
    }
    struct gguf_str *strs = xmalloc(kv->arr_n * sizeof *strs);
    if (gguf_arr_strings(kv, strs, kv->arr_n) < 0) {
        free(strs);
        return -1;
    }
    t->n_vocab = (int32_t)kv->arr_n;
    t->toks = xcalloc((size_t)t->n_vocab, sizeof *t->toks);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (strs[i].len > UINT32_MAX / 2) {
            free(strs);
            err_set("tokenizer: %s: key '%s': token %d is too long", f->path, KEY_TOKENS, i);
            return -1;
        }
        t->toks[i].text = strs[i].data;
        t->toks[i].len = (uint32_t)strs[i].len;
        t->toks[i].type = TOKEN_NORMAL; /* llama.cpp's default without token_type */
    }
    free(strs);
    return 0;
}

/* A per-token array: absent is fine (1), else it must have one element per token. */
static int find_token_array(const struct tokenizer *t, const struct gguf_file *f, const char *key,
                            const struct gguf_kv **out) {
    const struct gguf_kv *kv = gguf_find_kv(f, key);
    *out = kv;
    if (!kv) return 1;
    if (kv->type != GGUF_TYPE_ARRAY) {
        err_set("tokenizer: %s: key '%s' has type %s (expected an array)", f->path, key,
                gguf_type_name(kv->type));
        return -1;
    }
    if (kv->arr_n != (uint64_t)t->n_vocab) {
        err_set("tokenizer: %s: key '%s' has %" PRIu64 " elements, but '%s' has %d", f->path, key,
                kv->arr_n, KEY_TOKENS, t->n_vocab);
        return -1;
    }
    return 0;
}

/* Scores are f32; llama.cpp also takes i32, and so do we. */
static int load_scores(struct tokenizer *t, const struct gguf_file *f) {
    const struct gguf_kv *kv;
    int rc = find_token_array(t, f, KEY_SCORES, &kv);
    if (rc) return rc < 0 ? -1 : 0;
    if (kv->arr_type != GGUF_TYPE_FLOAT32 && kv->arr_type != GGUF_TYPE_INT32) {
        err_set("tokenizer: %s: key '%s' is an array of %s (expected f32)", f->path, KEY_SCORES,
                gguf_type_name(kv->arr_type));
        return -1;
    }
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const uint8_t *p = kv->value + 4 * (size_t)i;
        if (kv->arr_type == GGUF_TYPE_FLOAT32) {
            memcpy(&t->toks[i].score, p, 4);
        } else {
            int32_t v;
            memcpy(&v, p, 4);
            t->toks[i].score = (float)v;
        }
    }
    return 0;
}

/* "<0xXX>" with two hex digits; returns the byte or -1. */
static int parse_byte_token(const char *s, uint32_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static int load_types(struct tokenizer *t, const struct gguf_file *f) {
    const struct gguf_kv *kv;
    int rc = find_token_array(t, f, KEY_TYPES, &kv);
    if (rc) return rc < 0 ? -1 : 0;
    if (kv->arr_type != GGUF_TYPE_INT32) {
        err_set("tokenizer: %s: key '%s' is an array of %s (expected i32)", f->path, KEY_TYPES,
                gguf_type_name(kv->arr_type));
        return -1;
    }
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int32_t v;
        memcpy(&v, kv->value + 4 * (size_t)i, 4);
        if (v < TOKEN_UNDEFINED || v > TOKEN_BYTE) {
            err_set("tokenizer: %s: key '%s': token %d has type %d (expected 0..6)", f->path,
                    KEY_TYPES, i, v);
            return -1;
        }
        struct tok *k = &t->toks[i];
        k->type = (uint8_t)v;
        if (v != TOKEN_BYTE) continue;
        int b = parse_byte_token(k->text, k->len);
        if (b < 0) {
            err_set("tokenizer: %s: key '%s': byte token %d is '%.*s' (expected <0xXX>)", f->path,
                    KEY_TOKENS, i, k->len > 32 ? 32 : (int)k->len, k->text);
            return -1;
        }
        k->byte = (uint8_t)b;
    }
    return 0;
}

/* llama.cpp now refuses vocabularies with a repeated text, since lookups would be ambiguous. */
static int build_index(struct tokenizer *t, const struct gguf_file *f) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)t->n_vocab) cap *= 2;
    t->slots = xmalloc(cap * sizeof *t->slots);
    memset(t->slots, 0xff, cap * sizeof *t->slots);
    t->slot_mask = cap - 1;
    t->max_piece = 1;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const struct tok *k = &t->toks[i];
        if ((int)k->len > t->max_piece) t->max_piece = (int)k->len;
        if (k->len == 0) continue; /* matches nothing; llama.cpp renames it */
        int32_t dup = vocab_insert(t, i);
        if (dup >= 0) {
            err_set("tokenizer: %s: key '%s': tokens %d and %d are both '%.*s'", f->path,
                    KEY_TOKENS, dup, i, k->len > 32 ? 32 : (int)k->len, k->text);
            return -1;
        }
    }
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
        char one = (char)b;
        int32_t id = vocab_find(t, name, 6);
        t->byte_tok[b] = id >= 0 ? id : vocab_find(t, &one, 1);
    }
    return 0;
}

/* An id key: absent keeps *id; present must name a token. Converters write -1 as u32 for
 * "none" (llama2.c's padding id); llama.cpp keeps its default then, and so do we. */
static int load_id(const struct tokenizer *t, const struct gguf_file *f, const char *key,
                   int32_t *id) {
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc < 0) return -1;
    if (rc > 0 || v == UINT32_MAX) return 0;
    if (v >= (uint32_t)t->n_vocab) {
        err_set("tokenizer: %s: key '%s' is %u, outside the vocabulary of %d tokens", f->path, key,
                v, t->n_vocab);
        return -1;
    }
    *id = (int32_t)v;
    return 0;
}

static int load_bool(const struct gguf_file *f, const char *key, int *out) {
    return gguf_get_bool(f, key, out) < 0 ? -1 : 0;
}

/* llama.cpp's defaults, dropped when the vocabulary is too small for them; a BPE tokenizer
 * has set add_bos from its pre-tokenizer already. */
static void default_specials(struct tokenizer *t) {
    int spm = t->kind == TOKENIZER_SPM;
    int32_t bos = spm ? 1 : 11, eos = spm ? 2 : 11;
    t->bos = bos < t->n_vocab ? bos : -1;
    t->eos = eos < t->n_vocab ? eos : -1;
    t->unk = spm ? 0 : -1;
    t->eot = t->eom = t->pad = -1;
    if (spm) t->add_bos = 1;
    t->add_eos = 0;
    t->add_space_prefix = spm;
}

static int load_specials(struct tokenizer *t, const struct gguf_file *f) {
    default_specials(t);
    if (load_id(t, f, "tokenizer.ggml.bos_token_id", &t->bos) ||
        load_id(t, f, "tokenizer.ggml.eos_token_id", &t->eos) ||
        load_id(t, f, "tokenizer.ggml.unknown_token_id", &t->unk) ||
        load_id(t, f, "tokenizer.ggml.padding_token_id", &t->pad) ||
        load_id(t, f, "tokenizer.ggml.eot_token_id", &t->eot) ||
        load_id(t, f, "tokenizer.ggml.eom_token_id", &t->eom) ||
        load_bool(f, KEY_ADD_BOS, &t->add_bos) || load_bool(f, KEY_ADD_EOS, &t->add_eos) ||
        load_bool(f, KEY_ADD_PREFIX, &t->add_space_prefix))
        return -1;
    if (t->add_bos && t->bos < 0) {
        err_set("tokenizer: %s: %s is true, but there is no BOS token", f->path, KEY_ADD_BOS);
        return -1;
    }
    if (t->add_eos && t->eos < 0) {
        err_set("tokenizer: %s: %s is true, but there is no EOS token", f->path, KEY_ADD_EOS);
        return -1;
    }
    return 0;
}

/* llama.cpp recognizes end-of-turn tokens by their text, since converters often leave them
 * out of the metadata; it also forces them to be control tokens. */
static const char *const eot_texts[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "<|end_of_text|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "[EOT]",
                                        "<\xef\xbd\x9c"
                                        "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                        "<end_of_utterance>",
                                        NULL};
static const char *const eog_texts[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<|return|>",
                                        "<|call|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "<|eom_id|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "[EOT]",
                                        "[EOS]",
                                        "<|end_of_text|>",
                                        "<end_of_utterance>",
                                        "<|fim_pad|>",
                                        "<fim-pad>",
                                        "<fim_pad>",
                                        "<|fim_repo|>",
                                        "<|repo_name|>",
                                        "<fim-repo>",
                                        "<|file_sep|>",
                                        "<\xef\xbd\x9c"
                                        "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                        NULL};

static int32_t find_cstr(const struct tokenizer *t, const char *s) {
    return vocab_find(t, s, strlen(s));
}

static void make_control(struct tokenizer *t, int32_t id) {
    if (id >= 0) t->toks[id].type = TOKEN_CONTROL;
}

static void add_eog(struct tokenizer *t, int32_t id) {
    if (id < 0) return;
    for (int32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return;
    t->eog[t->n_eog++] = id;
}

static void detect_eog(struct tokenizer *t) {
    for (int i = 0; t->eot < 0 && eot_texts[i]; i++) t->eot = find_cstr(t, eot_texts[i]);
    if (t->eom < 0) t->eom = find_cstr(t, "<|eom_id|>");
    make_control(t, t->eot);
    make_control(t, t->eom);
    int n_texts = 0;
    while (eog_texts[n_texts]) n_texts++;
    t->eog = xmalloc((size_t)(n_texts + 3) * sizeof *t->eog);
    for (int i = 0; i < n_texts; i++) {
        int32_t id = find_cstr(t, eog_texts[i]);
        make_control(t, id);
        add_eog(t, id);
    }
    add_eog(t, t->eos);
    add_eog(t, t->eot);
    add_eog(t, t->eom);
}

static int is_special_type(uint8_t type) {
    return type == TOKEN_CONTROL || type == TOKEN_USER_DEFINED || type == TOKEN_UNKNOWN;
}

/* Longest first so that a special text containing another wins; ties by id for
 * determinism (llama.cpp leaves their order unspecified). */
struct special_key {
    uint32_t len;
    int32_t id;
};

static int cmp_special(const void *pa, const void *pb) {
    const struct special_key *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static void build_special_list(struct tokenizer *t) {
    struct special_key *keys = xmalloc((size_t)t->n_vocab * sizeof *keys);
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->toks[i].type) && t->toks[i].len > 0)
            keys[n++] = (struct special_key){t->toks[i].len, i};
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    t->special = xmalloc((size_t)(n ? n : 1) * sizeof *t->special);
    for (int32_t i = 0; i < n; i++) t->special[i] = keys[i].id;
    t->n_special = n;
    free(keys);
}

struct tokenizer *tokenizer_load(const struct gguf_file *f) {
    struct tokenizer *t = xcalloc(1, sizeof *t);
    if (load_kind(t, f) || load_tokens(t, f) || load_scores(t, f) || load_types(t, f) ||
        build_index(t, f) || (t->kind == TOKENIZER_BPE && load_bpe(t, f)) || load_specials(t, f)) {
        tokenizer_free(t);
        return NULL;
    }
    detect_eog(t);
    build_special_list(t);
    return t;
}

void tokenizer_free(struct tokenizer *t) {
    if (!t) return;
    free(t->toks);
    free(t->slots);
    free(t->special);
    free(t->eog);
    free(t->merges);
    free(t);
}

enum tokenizer_kind tokenizer_kind(const struct tokenizer *t) { return t->kind; }
int32_t tokenizer_n_vocab(const struct tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const struct tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const struct tokenizer *t) { return t->eos; }
int tokenizer_add_bos(const struct tokenizer *t) { return t->add_bos; }
int tokenizer_add_eos(const struct tokenizer *t) { return t->add_eos; }
int tokenizer_add_space_prefix(const struct tokenizer *t) { return t->add_space_prefix; }
int tokenizer_max_piece(const struct tokenizer *t) { return t->max_piece; }

int tokenizer_is_eog(const struct tokenizer *t, int32_t id) {
    for (int32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return 1;
    return 0;
}

int32_t tokenizer_find(const struct tokenizer *t, const char *text, size_t len) {
    return len ? vocab_find(t, text, len) : -1;
}

enum token_type tokenizer_token_type(const struct tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? (enum token_type)t->toks[id].type : TOKEN_UNDEFINED;
}

/* ---- output buffer ---- */

struct ids {
    int32_t *v;
    int64_t n, cap;
};

static void ids_push(struct ids *o, int32_t id) {
    if (o->n == o->cap) {
        o->cap = o->cap ? 2 * o->cap : 64;
        o->v = xrealloc(o->v, (size_t)o->cap * sizeof *o->v);
    }
    o->v[o->n++] = id;
}

/* ---- special-token partition ---- */

/* A piece of the input: a token already decided (id >= 0) or text still to tokenize. */
struct frag {
    int32_t id;
    size_t off, len;
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static void frags_push(struct frags *fs, int32_t id, size_t off, size_t len) {
    if (fs->n == fs->cap) {
        fs->cap = fs->cap ? 2 * fs->cap : 16;
        fs->v = xrealloc(fs->v, fs->cap * sizeof *fs->v);
    }
    fs->v[fs->n++] = (struct frag){id, off, len};
}

/* llama.cpp cuts special tokens out of the text one token at a time, longest text first,
 * each at its leftmost non-overlapping occurrences in the text not yet cut. The same result
 * comes from marking claimed bytes: an occurrence counts when none of its bytes is claimed.
 * Occurrences are found through an index of byte-pair positions, so that thousands of
 * special tokens (DeepSeek LLM has 2400 user-defined ones) cost one pass over the text. */
struct claims {
    const char *text;
    size_t len;
    int32_t *id_at;       /* (len) the token claimed starting here, or -1 */
    uint8_t *taken;       /* (len) byte belongs to a claimed token */
    uint32_t *pair_first; /* (65537) start of each byte pair's positions in pair_pos */
    uint32_t *pair_pos;   /* (len - 1) positions, grouped by the pair starting there */
};

static unsigned byte_pair(const char *s) { return (unsigned)(uint8_t)s[0] << 8 | (uint8_t)s[1]; }

static void index_pairs(struct claims *c) {
    c->pair_first = xcalloc(65537, sizeof *c->pair_first);
    c->pair_pos = xmalloc((c->len > 1 ? c->len - 1 : 1) * sizeof *c->pair_pos);
    for (size_t i = 0; i + 1 < c->len; i++) c->pair_first[byte_pair(c->text + i) + 1]++;
    for (unsigned v = 0; v < 65536; v++) c->pair_first[v + 1] += c->pair_first[v];
    uint32_t *fill = xmalloc(65536 * sizeof *fill);
    memcpy(fill, c->pair_first, 65536 * sizeof *fill);
    for (size_t i = 0; i + 1 < c->len; i++)
        c->pair_pos[fill[byte_pair(c->text + i)]++] = (uint32_t)i;
    free(fill);
}

static void claim_at(struct claims *c, size_t pos, const struct tok *k, int32_t id) {
    if (pos + k->len > c->len || memcmp(c->text + pos, k->text, k->len) != 0) return;
    if (memchr(c->taken + pos, 1, k->len)) return;
    memset(c->taken + pos, 1, k->len);
    c->id_at[pos] = id;
}

static void claim_token(struct claims *c, const struct tok *k, int32_t id) {
    if (k->len == 1) {
        for (const char *p = c->text; (p = memchr(p, k->text[0], c->len - (size_t)(p - c->text)));
             p++)
            claim_at(c, (size_t)(p - c->text), k, id);
        return;
    }
    if (!c->pair_first) index_pairs(c);
    unsigned v = byte_pair(k->text);
    for (uint32_t i = c->pair_first[v]; i < c->pair_first[v + 1]; i++)
        claim_at(c, c->pair_pos[i], k, id);
}

/* The claimed tokens and the unclaimed stretches between them, in order. */
static void claims_to_frags(const struct claims *c, const struct tok *toks, struct frags *out) {
    size_t gap = 0;
    for (size_t i = 0; i < c->len;) {
        if (!c->taken[i]) {
            i++;
            continue;
        }
        if (gap < i) frags_push(out, -1, gap, i - gap);
        frags_push(out, c->id_at[i], 0, 0);
        i += toks[c->id_at[i]].len;
        gap = i;
    }
    if (gap < c->len) frags_push(out, -1, gap, c->len - gap);
}

/* llama.cpp's rule: user-defined tokens are always matched in the text; control and unknown
 * tokens only with parse_special. */
static void partition(const struct tokenizer *t, const char *text, size_t len, int parse_special,
                      struct frags *out) {
    out->n = 0;
    if (!len) return;
    struct claims c = {text, len, xmalloc(len * sizeof(int32_t)), xcalloc(len, 1), NULL, NULL};
    for (int32_t s = 0; s < t->n_special; s++) {
        const struct tok *k = &t->toks[t->special[s]];
        if (parse_special || k->type == TOKEN_USER_DEFINED) claim_token(&c, k, t->special[s]);
    }
    claims_to_frags(&c, t->toks, out);
    free(c.id_at);
    free(c.taken);
    free(c.pair_first);
    free(c.pair_pos);
}

/* ---- SPM ---- */

/* Byte length of a UTF-8 character from its first byte, as llama.cpp counts it: stray
 * continuation bytes count as one, and 0xF8..0xFF as four. */
static size_t utf8_len_lead(uint8_t c) {
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

struct sym {
    int32_t prev, next; /* neighbours in the linked list of live symbols, -1 at the ends */
    uint32_t off, n;    /* bytes of the escaped text; n == 0 once merged into its left */
};

struct bigram {
    int32_t left, right;
    float score;
    uint32_t size; /* bytes of left + right when queued; stale entries no longer match */
};

struct spm {
    const struct tokenizer *t;
    const char *s; /* escaped fragment */
    struct sym *syms;
    struct bigram *heap;
    size_t n_heap;
};

/* Pops first: higher score, then the leftmost pair, as llama.cpp orders its queue. */
static int bigram_before(const struct bigram *a, const struct bigram *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(struct spm *m, struct bigram b) {
    size_t i = m->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&b, &m->heap[p])) break;
        m->heap[i] = m->heap[p];
        i = p;
    }
    m->heap[i] = b;
}

static struct bigram heap_pop(struct spm *m) {
    struct bigram top = m->heap[0], last = m->heap[--m->n_heap];
    size_t i = 0, n = m->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&m->heap[c + 1], &m->heap[c])) c++;
        if (!bigram_before(&m->heap[c], &last)) break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    if (n) m->heap[i] = last;
    return top;
}

static void try_bigram(struct spm *m, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const struct sym *l = &m->syms[left], *r = &m->syms[right];
    int32_t id = vocab_find(m->t, m->s + l->off, l->n + r->n);
    if (id < 0) return;
    heap_push(m, (struct bigram){left, right, m->t->toks[id].score, l->n + r->n});
}

/* A final symbol is a vocabulary token, or its bytes go out as byte tokens. */
static int emit_symbol(const struct spm *m, const struct sym *y, struct ids *out) {
    const struct tokenizer *t = m->t;
    int32_t id = vocab_find(t, m->s + y->off, y->n);
    if (id >= 0) {
        ids_push(out, id);
        return 0;
    }
    for (uint32_t j = 0; j < y->n; j++) {
        uint8_t b = (uint8_t)m->s[y->off + j];
        id = t->byte_tok[b] >= 0 ? t->byte_tok[b] : t->unk;
        if (id < 0) {
            err_set("tokenizer: byte 0x%02X has no token and there is no unknown token", b);
            return -1;
        }
        ids_push(out, id);
    }
    return 0;
}

/* Spaces become U+2581, the leading one too when prefix is set. */
static char *spm_escape(const char *text, size_t len, int prefix, size_t *out_len) {
    size_t n = prefix ? 3 : 0;
    for (size_t i = 0; i < len; i++) n += text[i] == ' ' ? 3 : 1;
    char *s = xmalloc(n), *p = s;
    if (prefix) memcpy(p, "\xe2\x96\x81", 3), p += 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(p, "\xe2\x96\x81", 3), p += 3;
        else
            *p++ = text[i];
    }
    *out_len = n;
    return s;
}

static int spm_merge_and_emit(struct spm *m, size_t len, struct ids *out) {
    int32_t n_syms = 0;
    for (size_t off = 0; off < len; n_syms++) {
        size_t n = utf8_len_lead((uint8_t)m->s[off]);
        if (n > len - off) n = len - off;
        m->syms[n_syms] = (struct sym){n_syms - 1, -1, (uint32_t)off, (uint32_t)n};
        if (n_syms > 0) m->syms[n_syms - 1].next = n_syms;
        off += n;
    }
    for (int32_t i = 1; i < n_syms; i++) try_bigram(m, i - 1, i);
    while (m->n_heap) {
        struct bigram b = heap_pop(m);
        struct sym *l = &m->syms[b.left], *r = &m->syms[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) m->syms[r->next].prev = b.left;
        try_bigram(m, l->prev, b.left);
        try_bigram(m, b.left, l->next);
    }
    for (int32_t i = n_syms ? 0 : -1; i >= 0; i = m->syms[i].next)
        if (emit_symbol(m, &m->syms[i], out)) return -1;
    return 0;
}

static int encode_spm_fragment(const struct tokenizer *t, const char *text, size_t len, int prefix,
                               struct ids *out) {
    size_t n;
    char *s = spm_escape(text, len, prefix, &n);
    if (n > UINT32_MAX / 4) {
        free(s);
        err_set("tokenizer: text fragment of %zu bytes is too long", len);
        return -1;
    }
    /* Each merge queues at most two pairs, on top of the n - 1 initial ones. */
    struct spm m = {t, s, xmalloc((n ? n : 1) * sizeof(struct sym)),
                    xmalloc((3 * n + 1) * sizeof(struct bigram)), 0};
    int rc = spm_merge_and_emit(&m, n, out);
    free(m.syms);
    free(m.heap);
    free(s);
    return rc;
}

static int encode_spm(const struct tokenizer *t, const char *text, const struct frags *fs,
                      struct ids *out) {
    int prev_special = 1; /* the first fragment is prefixed like one after a special token */
    for (size_t i = 0; i < fs->n; i++) {
        const struct frag *fr = &fs->v[i];
        if (fr->id >= 0) {
            ids_push(out, fr->id);
            prev_special = 1;
            continue;
        }
        if (encode_spm_fragment(t, text + fr->off, fr->len, t->add_space_prefix && prev_special,
                                out))
            return -1;
        prev_special = 0;
    }
    return 0;
}

/* ---- byte-level BPE: pre-tokenizers ---- */

/* The split rules llama.cpp applies for each tokenizer.ggml.pre. Each rule is one of its
 * regular expressions written out by hand: it cuts every piece left by the previous rules
 * into its matches and the stretches between them, scanning leftmost-first like std::regex.
 * llama.cpp runs most rules over a "collapsed" text in which ASCII stays itself and every
 * other character stands for its category, so \p{L} there is A-Za-z or a non-ASCII letter,
 * \s is ASCII white space or a non-ASCII White_Space character, and '~' is in neither \p{P}
 * nor \p{S}; the rules below keep those quirks because the reference ids depend on them. */

#define CLS_SPACE 8 /* white-space bit beside the enum ucat group in a class byte */

struct pre_text {
    const uint32_t *cp; /* (n) code points of the text fragment */
    const uint8_t *cls; /* (n) enum ucat | CLS_SPACE */
};

/* Returns the length of the match starting exactly at pos (0 if none), looking no further
 * than end; on 0 it may set *skip to how many positions from pos are known not to match. */
typedef size_t (*pre_rule)(const struct pre_text *x, size_t pos, size_t end, size_t *skip);

static int is_space(const struct pre_text *x, size_t i) { return x->cls[i] & CLS_SPACE; }
static int is_cat(const struct pre_text *x, size_t i, enum ucat c) {
    return (x->cls[i] & ~CLS_SPACE) == c;
}
static int is_letter(const struct pre_text *x, size_t i) { return is_cat(x, i, UCAT_L); }
static int is_number(const struct pre_text *x, size_t i) { return is_cat(x, i, UCAT_N); }
static int is_letter_or_mark(const struct pre_text *x, size_t i) {
    return is_letter(x, i) || is_cat(x, i, UCAT_M);
}
/* [^\s\p{L}\p{N}] */
static int is_other(const struct pre_text *x, size_t i) {
    return !is_space(x, i) && !is_letter(x, i) && !is_number(x, i);
}
static int is_punct(const struct pre_text *x, size_t i) { return is_cat(x, i, UCAT_P); }
/* [\p{P}\p{S}] as the collapsed text sees it */
static int is_punct_or_symbol(const struct pre_text *x, size_t i) {
    return is_punct(x, i) || (is_cat(x, i, UCAT_S) && x->cp[i] != '~');
}
static int is_newline(const struct pre_text *x, size_t i) {
    return x->cp[i] == '\r' || x->cp[i] == '\n';
}
static int is_ascii_letter(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }

typedef int (*char_pred)(const struct pre_text *x, size_t i);

static size_t run_of(const struct pre_text *x, size_t pos, size_t end, char_pred pred) {
    size_t i = pos;
    while (i < end && pred(x, i)) i++;
    return i - pos;
}

/* An optional lead character the class lead_ok accepts, then one or more of body:
 * [lead]?[body]+ with the regex's backtracking (the lead is only taken when body follows). */
static size_t lead_then_run(const struct pre_text *x, size_t pos, size_t end, char_pred lead_ok,
                            char_pred body) {
    if (lead_ok(x, pos) && pos + 1 < end && body(x, pos + 1))
        return 1 + run_of(x, pos + 1, end, body);
    return run_of(x, pos, end, body);
}

/* 's 't 're 've 'm 'll 'd, optionally in any case */
static size_t contraction(const struct pre_text *x, size_t pos, size_t end, int any_case) {
    if (x->cp[pos] != '\'' || pos + 1 >= end) return 0;
    uint32_t a = x->cp[pos + 1], b = pos + 2 < end ? x->cp[pos + 2] : 0;
    if (any_case) {
        a = a < 128 ? (uint32_t)tolower((int)a) : a;
        b = b < 128 ? (uint32_t)tolower((int)b) : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* The white-space tail shared by the GPT-2 family: \s*[\r\n]+ (when with_newlines), then
 * \s+(?!\S), then \s+. */
static size_t space_run(const struct pre_text *x, size_t pos, size_t end, int with_newlines) {
    size_t n = run_of(x, pos, end, is_space);
    if (n == 0) return 0;
    if (with_newlines) {
        for (size_t i = pos + n; i > pos; i--)
            if (is_newline(x, i - 1)) return i - pos;
    }
    if (pos + n == end || n == 1) return n;
    return n - 1; /* leave the last space to lead the next word */
}

static int is_space_lead(const struct pre_text *x, size_t i) { return x->cp[i] == ' '; }

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S), plus a final \s+
 * as llama.cpp's hand-written version has. */
static size_t rule_gpt2(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    size_t n = contraction(x, pos, end, 0);
    if (!n) n = lead_then_run(x, pos, end, is_space_lead, is_letter);
    if (!n) n = lead_then_run(x, pos, end, is_space_lead, is_number);
    if (!n) n = lead_then_run(x, pos, end, is_space_lead, is_other);
    if (!n) n = space_run(x, pos, end, 0);
    return n;
}

/* [^\r\n\p{L}\p{N}] */
static int is_word_lead(const struct pre_text *x, size_t i) {
    return !is_newline(x, i) && !is_letter(x, i) && !is_number(x, i);
}

/* ?[^\s\p{L}\p{N}]+[\r\n]* */
static size_t other_then_newlines(const struct pre_text *x, size_t pos, size_t end,
                                  char_pred body) {
    size_t n = lead_then_run(x, pos, end, is_space_lead, body);
    return n ? n + run_of(x, pos + n, end, is_newline) : 0;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t llama3_like(const struct pre_text *x, size_t pos, size_t end, size_t max_digits) {
    size_t n = contraction(x, pos, end, 1);
    if (!n) n = lead_then_run(x, pos, end, is_word_lead, is_letter);
    if (!n && is_number(x, pos)) {
        n = run_of(x, pos, end, is_number);
        return n < max_digits ? n : max_digits;
    }
    if (!n) n = other_then_newlines(x, pos, end, is_other);
    if (!n) n = space_run(x, pos, end, 1);
    return n;
}

static size_t rule_llama3(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return llama3_like(x, pos, end, 3);
}

static size_t rule_qwen2(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return llama3_like(x, pos, end, 1);
}

/* [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ */
static size_t ascii_punct_word(const struct pre_text *x, size_t pos, size_t end) {
    uint32_t c = x->cp[pos];
    if (c < 0x21 || c > 0x7e || is_ascii_letter(c) || is_ascii_digit(c)) return 0;
    size_t i = pos + 1;
    while (i < end && is_ascii_letter(x->cp[i])) i++;
    return i - pos > 1 ? i - pos : 0;
}

/* [^\r\n\p{L}\p{P}\p{S}] */
static int is_ds3_lead(const struct pre_text *x, size_t i) {
    return !is_newline(x, i) && !is_letter(x, i) && !is_punct_or_symbol(x, i);
}

/* DeepSeek-V3's word rule: [!"#...~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
 *  ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t rule_deepseek3_words(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    size_t n = ascii_punct_word(x, pos, end);
    if (!n) n = lead_then_run(x, pos, end, is_ds3_lead, is_letter_or_mark);
    if (!n) n = other_then_newlines(x, pos, end, is_punct_or_symbol);
    if (!n) n = space_run(x, pos, end, 1);
    return n;
}

/* \p{N}{1,3} */
static size_t rule_digits_by_three(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    size_t n = run_of(x, pos, end, is_number);
    return n < 3 ? n : 3;
}

/* \p{N}+ */
static size_t rule_digits(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    size_t n = run_of(x, pos, end, is_number);
    if (!n) *skip = 1;
    return n;
}

/* \p{N} */
static size_t rule_digit(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip, (void)end;
    return is_number(x, pos) ? 1 : 0;
}

/* [0-9][0-9][0-9] */
static size_t rule_three_ascii_digits(const struct pre_text *x, size_t pos, size_t end,
                                      size_t *skip) {
    (void)skip;
    for (size_t i = 0; i < 3; i++)
        if (pos + i >= end || !is_ascii_digit(x->cp[pos + i])) return 0;
    return 3;
}

/* [\r\n] */
static size_t rule_newline(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip, (void)end;
    return is_newline(x, pos) ? 1 : 0;
}

/* \s+$ */
static size_t rule_trailing_space(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    size_t n = run_of(x, pos, end, is_space);
    if (n && pos + n == end) return n;
    *skip = n ? n : 1; /* no later start inside this run can reach the end either */
    return 0;
}

/* \s?\p{L}+ and \s?\p{P}+ */
static size_t rule_space_letters(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return lead_then_run(x, pos, end, is_space, is_letter);
}

static size_t rule_space_punct(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return lead_then_run(x, pos, end, is_space, is_punct);
}

/* [\p{P}\$\+<=>\^~\|]+ */
static int is_default_punct(const struct pre_text *x, size_t i) {
    uint32_t c = x->cp[i];
    return is_punct(x, i) || (c < 128 && c && strchr("$+<=>^~|", (int)c));
}

static size_t rule_default_punct(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return run_of(x, pos, end, is_default_punct);
}

/* Character sets the DeepSeek rules spell out as ranges (llama.cpp's wide-character path,
 * where non-ASCII white space reads as \v and so matches none of them). */
struct cp_range {
    uint32_t lo, hi;
};

static int in_ranges(uint32_t c, const struct cp_range *r, size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo)
            hi = mid;
        else if (c > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

#define RANGES_HAVE(x, i, table)                                                                   \
    (!is_space(x, i) && in_ranges((x)->cp[i], table, sizeof table / sizeof table[0]))

/* 一-龥ࠀ-一가-퟿ */
static const struct cp_range cjk_deepseek[] = {{0x0800, 0x9fa5}, {0xac00, 0xd7ff}};
/* 一-龥぀-ゟ゠-ヿ */
static const struct cp_range cjk_deepseek3[] = {{0x3040, 0x30ff}, {0x4e00, 0x9fa5}};
/* !-/:-~！-／：-～‘-‟　-。 */
static const struct cp_range punct_deepseek_llm[] = {{0x21, 0x2f},     {0x3a, 0x7e},
                                                     {0x2018, 0x201f}, {0x3000, 0x3002},
                                                     {0xff01, 0xff0f}, {0xff1a, 0xff5e}};
/* The cased letters (Lu, Ll, Lt) DeepSeek LLM's tokenizer lists one range at a time. */
static const struct cp_range letters_deepseek_llm[] = {
    {0x0041, 0x005A},   {0x0061, 0x007A},   {0x00B5, 0x00B5},   {0x00C0, 0x00D6},
    {0x00D8, 0x00F6},   {0x00F8, 0x01BA},   {0x01BC, 0x01BF},   {0x01C4, 0x0293},
    {0x0295, 0x02AF},   {0x0370, 0x0373},   {0x0376, 0x0377},   {0x037B, 0x037D},
    {0x037F, 0x037F},   {0x0386, 0x0386},   {0x0388, 0x038A},   {0x038C, 0x038C},
    {0x038E, 0x03A1},   {0x03A3, 0x03F5},   {0x03F7, 0x0481},   {0x048A, 0x052F},
    {0x0531, 0x0556},   {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943}};

static int is_cjk_deepseek(const struct pre_text *x, size_t i) {
    return RANGES_HAVE(x, i, cjk_deepseek);
}
static int is_cjk_deepseek3(const struct pre_text *x, size_t i) {
    return RANGES_HAVE(x, i, cjk_deepseek3);
}
static int is_deepseek_llm_punct(const struct pre_text *x, size_t i) {
    return RANGES_HAVE(x, i, punct_deepseek_llm);
}
static int is_deepseek_llm_letter(const struct pre_text *x, size_t i) {
    return RANGES_HAVE(x, i, letters_deepseek_llm);
}

static size_t rule_cjk_deepseek(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return run_of(x, pos, end, is_cjk_deepseek);
}

static size_t rule_cjk_deepseek3(const struct pre_text *x, size_t pos, size_t end, size_t *skip) {
    (void)skip;
    return run_of(x, pos, end, is_cjk_deepseek3);
}

static size_t rule_deepseek_llm_letters(const struct pre_text *x, size_t pos, size_t end,
                                        size_t *skip) {
    (void)skip;
    return lead_then_run(x, pos, end, is_space, is_deepseek_llm_letter);
}

static size_t rule_deepseek_llm_punct(const struct pre_text *x, size_t pos, size_t end,
                                      size_t *skip) {
    (void)skip;
    return lead_then_run(x, pos, end, is_space, is_deepseek_llm_punct);
}

#define MAX_PRE_RULES 6

struct pre_rules {
    const char *name; /* what tokenizer_pre reports */
    pre_rule rules[MAX_PRE_RULES + 1];
};

enum pre_kind {
    PRE_DEFAULT,
    PRE_GPT2,
    PRE_LLAMA3,
    PRE_QWEN2,
    PRE_DEEPSEEK_LLM,
    PRE_DEEPSEEK_CODER,
    PRE_DEEPSEEK3,
};

static const struct pre_rules pre_rule_sets[] = {
    [PRE_DEFAULT] = {"default",
                     {rule_default_punct, rule_gpt2, rule_digits, rule_three_ascii_digits}},
    [PRE_GPT2] = {"gpt-2", {rule_gpt2}},
    [PRE_LLAMA3] = {"llama3", {rule_llama3}},
    [PRE_QWEN2] = {"qwen2", {rule_qwen2}},
    [PRE_DEEPSEEK_LLM] = {"deepseek-llm",
                          {rule_newline, rule_deepseek_llm_letters, rule_deepseek_llm_punct,
                           rule_trailing_space, rule_cjk_deepseek, rule_digits}},
    [PRE_DEEPSEEK_CODER] = {"deepseek-coder",
                            {rule_newline, rule_space_letters, rule_space_punct, rule_cjk_deepseek,
                             rule_digit}},
    [PRE_DEEPSEEK3] = {"deepseek-v3",
                       {rule_digits_by_three, rule_cjk_deepseek3, rule_deepseek3_words}},
};

/* tokenizer.ggml.pre values that llama.cpp maps to the same split rules. */
struct pre_name {
    const char *name;
    enum pre_kind kind;
    int ignore_merges; /* a word that is a whole token is taken as is */
};

static const struct pre_name pre_names[] = {
    {"default", PRE_DEFAULT, 0},
    {"gpt-2", PRE_GPT2, 0},
    {"phi-2", PRE_GPT2, 0},
    {"jina-es", PRE_GPT2, 0},
    {"jina-de", PRE_GPT2, 0},
    {"gigachat", PRE_GPT2, 0},
    {"jina-v2-es", PRE_GPT2, 0},
    {"jina-v2-de", PRE_GPT2, 0},
    {"a.x-4.0", PRE_GPT2, 0},
    {"mellum", PRE_GPT2, 0},
    {"mpt", PRE_GPT2, 0},
    {"olmo", PRE_GPT2, 0},
    {"jais", PRE_GPT2, 0},
    {"trillion", PRE_GPT2, 0},
    {"granite-docling", PRE_GPT2, 0},
    {"exaone4", PRE_GPT2, 0},
    {"llama3", PRE_LLAMA3, 1},
    {"llama-v3", PRE_LLAMA3, 1},
    {"llama-bpe", PRE_LLAMA3, 1},
    {"falcon3", PRE_LLAMA3, 1},
    {"falcon-h1", PRE_LLAMA3, 1},
    {"pixtral", PRE_LLAMA3, 1},
    {"midm-2.0", PRE_LLAMA3, 1},
    {"lfm2", PRE_LLAMA3, 1},
    {"dbrx", PRE_LLAMA3, 0},
    {"smaug-bpe", PRE_LLAMA3, 0},
    {"qwen2", PRE_QWEN2, 0},
    {"deepseek-r1-qwen", PRE_QWEN2, 0},
    {"megrez", PRE_QWEN2, 0},
    {"stablelm2", PRE_QWEN2, 0},
    {"hunyuan", PRE_QWEN2, 0},
    {"deepseek-llm", PRE_DEEPSEEK_LLM, 0},
    {"deepseek-coder", PRE_DEEPSEEK_CODER, 0},
    {"deepseek-v3", PRE_DEEPSEEK3, 0},
    {"hunyuan-dense", PRE_DEEPSEEK3, 0},
};

/* ---- pieces of text as code-point spans ---- */

struct span {
    size_t start, end;
};

struct spans {
    struct span *v;
    size_t n, cap;
};

static void spans_push(struct spans *s, size_t start, size_t end) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = (struct span){start, end};
}

/* Cuts [sp.start, sp.end) into the rule's matches and the stretches between them. */
static void split_span(const struct pre_text *x, pre_rule rule, struct span sp, struct spans *out) {
    size_t gap = sp.start, pos = sp.start;
    while (pos < sp.end) {
        size_t skip = 1, n = rule(x, pos, sp.end, &skip);
        if (n == 0) {
            pos += skip;
            continue;
        }
        if (gap < pos) spans_push(out, gap, pos);
        spans_push(out, pos, pos + n);
        pos += n;
        gap = pos;
    }
    if (gap < sp.end) spans_push(out, gap, sp.end);
}

static void pre_split(const struct pre_rules *rs, const struct pre_text *x, size_t n,
                      struct spans *words, struct spans *tmp) {
    words->n = 0;
    if (n) spans_push(words, 0, n);
    for (int r = 0; r < MAX_PRE_RULES && rs->rules[r]; r++) {
        tmp->n = 0;
        for (size_t i = 0; i < words->n; i++) split_span(x, rs->rules[r], words->v[i], tmp);
        struct spans sw = *words;
        *words = *tmp;
        *tmp = sw;
    }
}

/* ---- byte-level BPE: merges and encoding ---- */

/* GPT-2 shows each byte as a printable character: bytes that already are one ('!'..'~',
 * '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 take U+0100.. in byte order. */
static uint32_t byte_to_cp(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae)) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae))) n++;
    return 0x100 + n;
}

#define BYTE_CP_LIMIT 0x144 /* every mapped character is below U+0144 */

static void build_byte_maps(struct tokenizer *t) {
    for (int i = 0; i < BYTE_CP_LIMIT; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cp = byte_to_cp((uint8_t)b);
        char s[4];
        size_t n = utf8_encode(cp, s);
        t->cp_byte[cp] = (int16_t)b;
        t->byte_sym[b] = vocab_find(t, s, n);
    }
}

static uint64_t pair_hash(int32_t a, int32_t b) {
    uint64_t h = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static const struct merge *merge_find(const struct tokenizer *t, int32_t a, int32_t b) {
    for (uint64_t i = pair_hash(a, b) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge *m = &t->merges[i];
        if (m->left < 0) return NULL;
        if (m->left == a && m->right == b) return m;
    }
}

/* Keeps the first (best-ranked) of repeated pairs, as llama.cpp does. */
static void merge_insert(struct tokenizer *t, struct merge m) {
    uint64_t i = pair_hash(m.left, m.right) & t->merge_mask;
    for (; t->merges[i].left >= 0; i = (i + 1) & t->merge_mask)
        if (t->merges[i].left == m.left && t->merges[i].right == m.right) return;
    t->merges[i] = m;
}

/* "A B": llama.cpp splits at the first space after the first byte. Both halves and their
 * concatenation must be tokens, as Hugging Face requires when it loads merges. */
static int parse_merge(struct tokenizer *t, const struct gguf_file *f, uint64_t index,
                       struct gguf_str s, char **buf, size_t *cap) {
    const char *sp = s.len > 1 ? memchr(s.data + 1, ' ', s.len - 1) : NULL;
    size_t a_len = sp ? (size_t)(sp - s.data) : 0, b_len = sp ? s.len - a_len - 1 : 0;
    int shown = s.len > 64 ? 64 : (int)s.len;
    if (!sp || b_len == 0) {
        err_set("tokenizer: %s: key '%s': merge %" PRIu64 " is '%.*s' (expected 'A B', both "
                "non-empty)",
                f->path, KEY_MERGES, index, shown, s.data);
        return -1;
    }
    int32_t a = vocab_find(t, s.data, a_len), b = vocab_find(t, sp + 1, b_len);
    if (a_len + b_len > *cap) *buf = xrealloc(*buf, *cap = 2 * (a_len + b_len));
    memcpy(*buf, s.data, a_len);
    memcpy(*buf + a_len, sp + 1, b_len);
    int32_t ab = vocab_find(t, *buf, a_len + b_len);
    if (a < 0 || b < 0 || ab < 0) {
        err_set("tokenizer: %s: key '%s': merge %" PRIu64 " '%.*s': %s is not in '%s'", f->path,
                KEY_MERGES, index, shown, s.data,
                a < 0   ? "its left part"
                : b < 0 ? "its right part"
                        : "the merged token",
                KEY_TOKENS);
        return -1;
    }
    merge_insert(t, (struct merge){a, b, ab, (int32_t)index});
    return 0;
}

static int load_merges(struct tokenizer *t, const struct gguf_file *f) {
    const struct gguf_kv *kv = gguf_find_kv(f, KEY_MERGES);
    if (!kv) {
        err_set("tokenizer: %s: key '%s' is missing (byte-level BPE needs it)", f->path,
                KEY_MERGES);
        return -1;
    }
    if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING ||
        kv->arr_n > INT32_MAX / 4) {
        err_set("tokenizer: %s: key '%s' must be an array of strings (at most %d)", f->path,
                KEY_MERGES, INT32_MAX / 4);
        return -1;
    }
    uint64_t cap = 16;
    while (cap < 2 * kv->arr_n) cap *= 2;
    t->merges = xmalloc(cap * sizeof *t->merges);
    for (uint64_t i = 0; i < cap; i++) t->merges[i].left = -1;
    t->merge_mask = cap - 1;
    struct gguf_str *strs = xmalloc((kv->arr_n ? kv->arr_n : 1) * sizeof *strs);
    size_t buf_cap = 64;
    char *buf = xmalloc(buf_cap);
    int rc = gguf_arr_strings(kv, strs, kv->arr_n);
    for (uint64_t i = 0; rc == 0 && i < kv->arr_n; i++)
        rc = parse_merge(t, f, i, strs[i], &buf, &buf_cap);
    free(buf);
    free(strs);
    return rc;
}

static const struct pre_name *find_pre_name(struct gguf_str pre) {
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++)
        if (gguf_str_eq(pre, pre_names[i].name)) return &pre_names[i];
    return NULL;
}

/* An unknown or missing pre-tokenizer is not fatal: llama.cpp's default rules are close to
 * most GPT-2-style splits, so the model still runs, with a warning that ids may differ. */
static int load_pre(struct tokenizer *t, const struct gguf_file *f) {
    struct gguf_str pre;
    int rc = gguf_get_str(f, KEY_PRE, &pre);
    if (rc < 0) return -1;
    const struct pre_name *p = rc == 0 ? find_pre_name(pre) : NULL;
    t->pre = &pre_rule_sets[p ? p->kind : PRE_DEFAULT];
    t->ignore_merges = p ? p->ignore_merges : 0;
    t->add_bos = p && p->kind == PRE_LLAMA3;
    if (p) return 0;
    if (rc > 0)
        fprintf(stderr,
                "moerun: warning: %s: key '%s' is missing; using the default pre-tokenizer\n",
                f->path, KEY_PRE);
    else
        fprintf(stderr,
                "moerun: warning: %s: unknown pre-tokenizer '%.*s' (key '%s'); using the default "
                "rules, token ids may differ from the model's own tokenizer\n",
                f->path, pre.len > 64 ? 64 : (int)pre.len, pre.data, KEY_PRE);
    t->pre_fallback = 1;
    return 0;
}

const char *tokenizer_pre(const struct tokenizer *t) { return t->pre ? t->pre->name : NULL; }

static int load_bpe(struct tokenizer *t, const struct gguf_file *f) {
    if (load_merges(t, f) || load_pre(t, f)) return -1;
    build_byte_maps(t);
    return 0;
}

/* Per-call scratch, grown as needed and reused across the words of one encode call. */
struct bpe_scratch {
    uint32_t *cp;
    uint8_t *cls;
    size_t cap_text;
    struct spans words, tmp;
    char *bytes; /* (3 * cap_word) the word as bytes, then as GPT-2 characters */
    struct bpe_sym *syms;
    struct bpe_pair *heap;
    size_t cap_word, n_heap;
};

struct bpe_sym {
    int32_t id; /* token of the bytes so far; -1 for a byte whose character is no token */
    int32_t prev, next;
    uint32_t off, n; /* bytes of the word; n == 0 once merged into its left neighbour */
};

struct bpe_pair {
    int32_t left, right, rank;
    int32_t left_id, right_id; /* stale once either symbol changed */
    int32_t result;
};

/* Pops first: the best rank, then the leftmost pair, as llama.cpp orders its queue. */
static int pair_before(const struct bpe_pair *a, const struct bpe_pair *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void pair_push(struct bpe_scratch *s, struct bpe_pair p) {
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_before(&p, &s->heap[up])) break;
        s->heap[i] = s->heap[up];
        i = up;
    }
    s->heap[i] = p;
}

static struct bpe_pair pair_pop(struct bpe_scratch *s) {
    struct bpe_pair top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && pair_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!pair_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static void try_pair(const struct tokenizer *t, struct bpe_scratch *s, int32_t left,
                     int32_t right) {
    if (left < 0 || right < 0) return;
    int32_t a = s->syms[left].id, b = s->syms[right].id;
    if (a < 0 || b < 0) return;
    const struct merge *m = merge_find(t, a, b);
    if (m) pair_push(s, (struct bpe_pair){left, right, m->rank, a, b, m->result});
}

static void scratch_reserve_word(struct bpe_scratch *s, size_t n) {
    if (n <= s->cap_word) return;
    s->cap_word = 2 * n;
    s->bytes = xrealloc(s->bytes, 3 * s->cap_word);
    s->syms = xrealloc(s->syms, s->cap_word * sizeof *s->syms);
    s->heap = xrealloc(s->heap, 3 * s->cap_word * sizeof *s->heap);
}

/* The word's bytes shown as GPT-2 characters, the form vocabulary texts take. */
static size_t to_gpt2_chars(const char *bytes, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) w += utf8_encode(byte_to_cp((uint8_t)bytes[i]), out + w);
    return w;
}

/* A symbol that is no token (a byte whose character is missing from the vocabulary): its
 * character's bytes go out one by one where they are tokens, as llama.cpp does. */
static void emit_untokened_byte(const struct tokenizer *t, uint8_t b, struct ids *out) {
    char s[4];
    size_t n = utf8_encode(byte_to_cp(b), s);
    for (size_t i = 0; i < n; i++) {
        int32_t id = vocab_find(t, &s[i], 1);
        if (id >= 0) ids_push(out, id);
    }
}

static void bpe_merge_word(const struct tokenizer *t, struct bpe_scratch *s, size_t n,
                           struct ids *out) {
    for (size_t i = 0; i < n; i++)
        s->syms[i] = (struct bpe_sym){t->byte_sym[(uint8_t)s->bytes[i]], (int32_t)i - 1,
                                      i + 1 < n ? (int32_t)i + 1 : -1, (uint32_t)i, 1};
    s->n_heap = 0;
    for (size_t i = 1; i < n; i++) try_pair(t, s, (int32_t)i - 1, (int32_t)i);
    while (s->n_heap) {
        struct bpe_pair p = pair_pop(s);
        struct bpe_sym *l = &s->syms[p.left], *r = &s->syms[p.right];
        if (l->n == 0 || r->n == 0 || l->id != p.left_id || r->id != p.right_id) continue;
        l->id = p.result;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s->syms[r->next].prev = p.left;
        try_pair(t, s, l->prev, p.left);
        try_pair(t, s, p.left, l->next);
    }
    for (int32_t i = n ? 0 : -1; i >= 0; i = s->syms[i].next) {
        if (s->syms[i].id >= 0)
            ids_push(out, s->syms[i].id);
        else
            emit_untokened_byte(t, (uint8_t)s->bytes[s->syms[i].off], out);
    }
}

static void bpe_word(const struct tokenizer *t, struct bpe_scratch *s, const uint32_t *cp,
                     size_t n_cp, struct ids *out) {
    scratch_reserve_word(s, 4 * n_cp);
    size_t n = 0;
    for (size_t i = 0; i < n_cp; i++) n += utf8_encode(cp[i], s->bytes + n);
    if (t->ignore_merges) {
        char *shown = s->bytes + n;
        int32_t id = vocab_find(t, shown, to_gpt2_chars(s->bytes, n, shown));
        if (id >= 0) {
            ids_push(out, id);
            return;
        }
    }
    bpe_merge_word(t, s, n, out);
}

/* llama.cpp decodes leniently (a broken byte becomes U+FFFD) before splitting. */
static size_t decode_fragment(struct bpe_scratch *s, const char *text, size_t len) {
    if (len > s->cap_text) {
        s->cap_text = len;
        s->cp = xrealloc(s->cp, len * sizeof *s->cp);
        s->cls = xrealloc(s->cls, len);
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        size_t k;
        uint32_t c = utf8_decode(text + i, len - i, &k);
        s->cp[n] = c;
        s->cls[n] = (uint8_t)(unicode_category(c) | (unicode_is_space(c) ? CLS_SPACE : 0));
        i += k;
    }
    return n;
}

static void encode_bpe_fragment(const struct tokenizer *t, struct bpe_scratch *s, const char *text,
                                size_t len, struct ids *out) {
    size_t n = decode_fragment(s, text, len);
    struct pre_text x = {s->cp, s->cls};
    pre_split(t->pre, &x, n, &s->words, &s->tmp);
    for (size_t i = 0; i < s->words.n; i++) {
        struct span w = s->words.v[i];
        bpe_word(t, s, s->cp + w.start, w.end - w.start, out);
    }
}

static int encode_bpe(const struct tokenizer *t, const char *text, const struct frags *fs,
                      struct ids *out) {
    struct bpe_scratch s = {0};
    for (size_t i = 0; i < fs->n; i++) {
        const struct frag *fr = &fs->v[i];
        if (fr->id >= 0)
            ids_push(out, fr->id);
        else
            encode_bpe_fragment(t, &s, text + fr->off, fr->len, out);
    }
    free(s.cp);
    free(s.cls);
    free(s.words.v);
    free(s.tmp.v);
    free(s.bytes);
    free(s.syms);
    free(s.heap);
    return 0;
}

int64_t tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, int add_bos,
                         int parse_special, int32_t **out) {
    struct ids o = {0};
    struct frags fs = {0};
    *out = NULL;
    if (add_bos) {
        if (t->bos < 0) {
            err_set("tokenizer_encode: BOS requested, but the vocabulary has none");
            return -1;
        }
        ids_push(&o, t->bos);
    }
    partition(t, text, len, parse_special, &fs);
    int rc = t->kind == TOKENIZER_BPE ? encode_bpe(t, text, &fs, &o) : encode_spm(t, text, &fs, &o);
    free(fs.v);
    if (rc) {
        free(o.v);
        return -1;
    }
    *out = o.v ? o.v : xmalloc(sizeof **out);
    return o.n;
}

/* ---- pieces ---- */

/* Copies s with each U+2581 turned into a space; returns the length. */
static size_t unescape_spaces(const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
            out[w++] = ' ';
            i += 3;
        } else {
            out[w++] = s[i++];
        }
    }
    return w;
}

/* Each GPT-2 character back to its byte; a character outside the map (a hand-added token)
 * is copied as it is. Never longer than the token's text. */
static size_t gpt2_chars_to_bytes(const struct tokenizer *t, const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        size_t k;
        uint32_t c = utf8_decode(s + i, n - i, &k);
        if (c < BYTE_CP_LIMIT && t->cp_byte[c] >= 0) {
            out[w++] = (char)t->cp_byte[c];
        } else {
            memcpy(out + w, s + i, k);
            w += k;
        }
        i += k;
    }
    return w;
}

int tokenizer_piece(const struct tokenizer *t, int32_t id, int show_special, char *buf,
                    size_t cap) {
    if (id < 0 || id >= t->n_vocab) {
        err_set("tokenizer_piece: token id %d is outside the vocabulary of %d", id, t->n_vocab);
        return -1;
    }
    const struct tok *k = &t->toks[id];
    if (cap < k->len) { /* every piece is at most the token's text */
        err_set("tokenizer_piece: buffer of %zu bytes is too small for token %d (%u bytes)", cap,
                id, k->len);
        return -1;
    }
    switch (k->type) {
    case TOKEN_CONTROL:
    case TOKEN_UNKNOWN:
        if (!show_special) return 0;
        /* fallthrough */
    case TOKEN_USER_DEFINED:
        memcpy(buf, k->text, k->len);
        return (int)k->len;
    case TOKEN_NORMAL:
        if (t->kind == TOKENIZER_BPE) return (int)gpt2_chars_to_bytes(t, k->text, k->len, buf);
        return (int)unescape_spaces(k->text, k->len, buf);
    case TOKEN_BYTE:
        buf[0] = (char)k->byte;
        return 1;
    default:
        return 0; /* undefined and unused tokens print nothing, as in llama.cpp */
    }
}

/* ---- streaming UTF-8 ---- */

static const char replacement[3] = {'\xef', '\xbf', '\xbd'}; /* U+FFFD */

/* Sequence length announced by a lead byte; 0 for bytes that cannot start one. */
static int utf8_seq_len(uint8_t c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

/* Whether c may follow the bytes p[0..n) of a sequence; the second byte's range depends on
 * the lead so that overlong forms, surrogates and values past U+10FFFF are rejected. */
static int utf8_next_ok(const char *p, int n, uint8_t c) {
    uint8_t lo = 0x80, hi = 0xbf;
    if (n == 1) {
        switch ((uint8_t)p[0]) {
        case 0xe0:
            lo = 0xa0;
            break;
        case 0xed:
            hi = 0x9f;
            break;
        case 0xf0:
            lo = 0x90;
            break;
        case 0xf4:
            hi = 0x8f;
            break;
        default:
            break;
        }
    }
    return c >= lo && c <= hi;
}

void detok_init(struct detok_stream *d, int strip_leading_space) {
    d->n_pending = 0;
    d->at_start = strip_leading_space != 0;
}

static void put(char *out, size_t *w, const char *s, size_t n) {
    memcpy(out + *w, s, n);
    *w += n;
}

/* Feeds one byte through the pending character; completed characters and U+FFFD for broken
 * ones go to out. */
static void detok_byte(struct detok_stream *d, uint8_t c, char *out, size_t *w) {
    if (d->n_pending > 0) {
        if (utf8_next_ok(d->pending, d->n_pending, c)) {
            d->pending[d->n_pending++] = (char)c;
            if (d->n_pending == utf8_seq_len((uint8_t)d->pending[0])) {
                put(out, w, d->pending, (size_t)d->n_pending);
                d->n_pending = 0;
            }
            return;
        }
        put(out, w, replacement, 3); /* the broken prefix; c starts afresh */
        d->n_pending = 0;
    }
    int n = utf8_seq_len(c);
    if (n == 1) {
        out[(*w)++] = (char)c;
    } else if (n == 0) {
        put(out, w, replacement, 3);
    } else {
        d->pending[0] = (char)c;
        d->n_pending = 1;
    }
}

size_t detok_push(struct detok_stream *d, const char *piece, size_t len, char *out, size_t cap) {
    if (cap < DETOK_OUT_CAP(len))
        die("detok_push: output buffer %zu < %zu", cap, DETOK_OUT_CAP(len));
    if (d->at_start && len > 0) {
        if (piece[0] == ' ') piece++, len--;
        d->at_start = 0;
    }
    size_t w = 0;
    for (size_t i = 0; i < len; i++) detok_byte(d, (uint8_t)piece[i], out, &w);
    return w;
}

size_t detok_flush(struct detok_stream *d, char *out, size_t cap) {
    if (d->n_pending == 0) return 0;
    if (cap < sizeof replacement) die("detok_flush: output buffer %zu < 3", cap);
    d->n_pending = 0;
    memcpy(out, replacement, sizeof replacement);
    return sizeof replacement;
}

/* ---- whole-text decoding ---- */

static void append_clipped(char *out, size_t cap, int64_t at, const char *s, size_t n) {
    if (at >= (int64_t)cap) return;
    size_t room = cap - (size_t)at;
    memcpy(out + at, s, n < room ? n : room);
}

int64_t tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, int show_special,
                         char *out, size_t cap) {
    size_t cap_piece = (size_t)t->max_piece;
    char *piece = xmalloc(cap_piece), *chars = xmalloc(DETOK_OUT_CAP(cap_piece));
    struct detok_stream d;
    detok_init(&d, t->add_space_prefix);
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int pn = tokenizer_piece(t, ids[i], show_special, piece, cap_piece);
        if (pn < 0) {
            total = -1;
            break;
        }
        size_t k = detok_push(&d, piece, (size_t)pn, chars, DETOK_OUT_CAP(cap_piece));
        append_clipped(out, cap, total, chars, k);
        total += (int64_t)k;
    }
    if (total >= 0) {
        size_t k = detok_flush(&d, chars, DETOK_OUT_CAP(cap_piece));
        append_clipped(out, cap, total, chars, k);
        total += (int64_t)k;
    }
    free(piece);
    free(chars);
    return total;
}
