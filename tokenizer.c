/* Tokenizers named by tokenizer.ggml.model. "llama" is SentencePiece BPE as llama.cpp runs
 * it: special-token texts are cut out first, each text fragment gets its spaces escaped to
 * U+2581 (plus a leading one when add_space_prefix holds and the fragment starts the text or
 * follows a special token), is split into UTF-8 characters, and the best-scoring adjacent
 * pair in the vocabulary is merged until none is left; pieces outside the vocabulary fall
 * back to byte tokens. A new model kind adds a loader branch and an encode_<kind> function;
 * partitioning, lookup and pieces are shared. */
#include "tokenizer.h"

#include "gguf.h"
#include "util.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_ADD_BOS "tokenizer.ggml.add_bos_token"
#define KEY_ADD_EOS "tokenizer.ggml.add_eos_token"
#define KEY_ADD_PREFIX "tokenizer.ggml.add_space_prefix"

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
};

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

static int load_specials(struct tokenizer *t, const struct gguf_file *f) {
    /* llama.cpp's SPM defaults, dropped when the vocabulary is too small for them. */
    t->bos = 1 < t->n_vocab ? 1 : -1;
    t->eos = 2 < t->n_vocab ? 2 : -1;
    t->unk = 0;
    t->eot = t->eom = t->pad = -1;
    t->add_bos = 1;
    t->add_eos = 0;
    t->add_space_prefix = 1;
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
        build_index(t, f) || load_specials(t, f)) {
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
    free(t);
}

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

/* Cuts every occurrence of token id out of the text fragments of src, leftmost first. */
static void split_on(const struct tok *k, int32_t id, const char *text, const struct frags *src,
                     struct frags *dst) {
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++) {
        struct frag fr = src->v[i];
        if (fr.id >= 0) {
            frags_push(dst, fr.id, 0, 0);
            continue;
        }
        size_t pos = fr.off, end = fr.off + fr.len;
        const char *hit;
        while (pos < end && (hit = memmem(text + pos, end - pos, k->text, k->len))) {
            size_t at = (size_t)(hit - text);
            if (at > pos) frags_push(dst, -1, pos, at - pos);
            frags_push(dst, id, 0, 0);
            pos = at + k->len;
        }
        if (pos < end) frags_push(dst, -1, pos, end - pos);
    }
}

static int text_contains(const struct frags *fs, const char *text, const struct tok *k) {
    for (size_t i = 0; i < fs->n; i++)
        if (fs->v[i].id < 0 && memmem(text + fs->v[i].off, fs->v[i].len, k->text, k->len)) return 1;
    return 0;
}

/* llama.cpp's rule: user-defined tokens are always matched in the text; control and unknown
 * tokens only with parse_special. */
static void partition(const struct tokenizer *t, const char *text, size_t len, int parse_special,
                      struct frags *out) {
    struct frags tmp = {0};
    out->n = 0;
    if (len) frags_push(out, -1, 0, len);
    for (int32_t s = 0; s < t->n_special; s++) {
        const struct tok *k = &t->toks[t->special[s]];
        if (!parse_special && k->type != TOKEN_USER_DEFINED) continue;
        if (!text_contains(out, text, k)) continue;
        split_on(k, t->special[s], text, out, &tmp);
        struct frags sw = *out;
        *out = tmp;
        tmp = sw;
    }
    free(tmp.v);
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
    int rc = encode_spm(t, text, &fs, &o);
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
