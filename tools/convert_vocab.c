/* The tokenizer half of moerun convert: a byte-level BPE tokenizer.json, or for the
 * architectures whose llama.cpp converter prefers it a SentencePiece tokenizer.model, into the
 * tokenizer.ggml.* keys, with the token types, special token ids and flags that llama.cpp's
 * converter (gguf-py's SpecialVocab) derives, and the pre-tokenizer name recognized from the
 * split rules instead of llama.cpp's hash of a sample tokenization. */
#include "tools/convert.h"

#include "gguf.h"
#include "json.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum tok_type {
    TOK_NORMAL = 1,
    TOK_UNKNOWN = 2,
    TOK_CONTROL = 3,
    TOK_USER_DEFINED = 4,
    TOK_UNUSED = 5,
    TOK_BYTE = 6
};

struct vocab {
    int64_t n;
    char **tokens;  /* (n) owned */
    int32_t *types; /* (n) */
};

static char *path_join(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static int starts_ends(const char *s, const char *a, const char *b) {
    size_t n = strlen(s), na = strlen(a), nb = strlen(b);
    return n >= na + nb && !memcmp(s, a, na) && !memcmp(s + n - nb, b, nb);
}

/* llama.cpp marks added tokens that look like control tokens as such even when the
 * tokenizer does not call them special (deepseek-coder, gemma). */
static int looks_special(const char *t) {
    return !strcmp(t, "<pad>") || !strcmp(t, "<mask>") || !strcmp(t, "<2mass>") ||
           !strcmp(t, "[@BOS@]") || starts_ends(t, "<|", "|>") ||
           starts_ends(t, "<\xef\xbd\x9c", "\xef\xbd\x9c>") || starts_ends(t, "<unused", ">");
}

/* User-defined tokens are stored pre-normalized: SentencePiece's U+2581 becomes a space. */
static char *spaces_for_u2581(const char *s) {
    char *o = xmalloc(strlen(s) + 1), *p = o;
    while (*s) {
        if (!memcmp(s, "\xe2\x96\x81", 3))
            *p++ = ' ', s += 3;
        else
            *p++ = *s++;
    }
    *p = 0;
    return o;
}

static int set_token(struct vocab *v, int64_t id, const char *text, int32_t type) {
    if (id < 0 || id >= v->n)
        return err_set("token id %lld of \"%s\" is outside vocab_size %lld", (long long)id, text,
                       (long long)v->n),
               -1;
    free(v->tokens[id]);
    v->tokens[id] = type == TOK_USER_DEFINED ? spaces_for_u2581(text) : xstrdup(text);
    v->types[id] = type;
    return 0;
}

static int fill_vocab(struct vocab *v, const struct json *tok) {
    const struct json *vocab = json_get(json_get(tok, "model"), "vocab");
    if (!vocab || vocab->type != JSON_OBJECT) return err_set("no model.vocab object"), -1;
    for (const struct json *e = vocab->child; e; e = e->next) {
        if (e->type != JSON_NUMBER || !e->is_int)
            return err_set("model.vocab[\"%s\"] is not an integer id", e->key), -1;
        if (set_token(v, e->i, e->key, TOK_NORMAL)) return -1;
    }
    const struct json *added = json_get(tok, "added_tokens");
    for (const struct json *a = added ? added->child : NULL; a; a = a->next) {
        int64_t id;
        const char *text = json_get_str(a, "content");
        int special = 0;
        if (!text || json_get_int(a, "id", 0, INT32_MAX, &id))
            return err_set("bad added_tokens entry"), -1;
        json_get_bool(a, "special", &special);
        int32_t type = special || looks_special(text) ? TOK_CONTROL : TOK_USER_DEFINED;
        if (set_token(v, id, text, type)) return -1;
    }
    for (int64_t i = 0; i < v->n; i++) {
        if (v->tokens[i]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
        v->tokens[i] = xstrdup(pad);
        v->types[i] = TOK_UNUSED;
    }
    return 0;
}

/* merges are "a b" strings (older files) or ["a", "b"] pairs (newer ones). */
static int write_merges(struct gguf_writer *w, const struct json *tok) {
    const struct json *m = json_get(json_get(tok, "model"), "merges");
    if (!m || m->type != JSON_ARRAY) return err_set("no model.merges array"), -1;
    char **s = xcalloc(m->len ? m->len : 1, sizeof *s);
    size_t i = 0;
    int rc = 0;
    for (const struct json *e = m->child; e; e = e->next, i++) {
        const struct json *a = json_at(e, 0), *b = json_at(e, 1);
        if (e->type == JSON_STRING) {
            s[i] = xstrdup(e->str);
        } else if (a && b && e->len == 2 && a->type == JSON_STRING && b->type == JSON_STRING) {
            s[i] = xmalloc(a->len + b->len + 2);
            sprintf(s[i], "%s %s", a->str, b->str);
        } else {
            rc = (err_set("model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", i), -1);
            break;
        }
    }
    if (rc == 0) gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)s, m->len);
    for (size_t k = 0; k < m->len; k++) free(s[k]);
    free(s);
    return rc;
}

/* ---- pre-tokenizer recognition ---- */

/* Regexes as tokenizer.json spells them once decoded, with CR and LF written as \r and \n
 * (files differ in whether the JSON escapes the backslash). */
static const char *const re_deepseek3[] = {
    "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
    ("[!\"#$%&'()*+,\\-./"
     ":;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| "
     "?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")};
static const char *const re_llama3[] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
static const char *const re_qwen2[] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
static const char *const re_deepseek_coder[] = {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+",
                                                "[一-龥ࠀ-一가-퟿]+"};

struct split_list {
    char *re[16];
    int n;
    int byte_level_regex; /* a ByteLevel step with use_regex true (GPT-2's own split) */
    int digits;           /* a Digits step */
    int other;            /* any step not understood */
};

static char *normalized_regex(const char *s) {
    char *o = xmalloc(2 * strlen(s) + 1), *p = o;
    for (; *s; s++) {
        if (*s == '\r' || *s == '\n')
            *p++ = '\\', *p++ = *s == '\r' ? 'r' : 'n';
        else
            *p++ = *s;
    }
    *p = 0;
    return o;
}

static void add_step(struct split_list *l, const struct json *st) {
    const char *type = json_get_str(st, "type");
    const char *re = json_get_str(json_get(st, "pattern"), "Regex");
    int use_regex = 1;
    if (type && !strcmp(type, "Split") && re && l->n < 16) {
        l->re[l->n++] = normalized_regex(re);
    } else if (type && !strcmp(type, "ByteLevel")) {
        json_get_bool(st, "use_regex", &use_regex);
        l->byte_level_regex |= use_regex;
    } else if (type && !strcmp(type, "Digits")) {
        l->digits = 1;
    } else {
        l->other = 1;
    }
}

static int list_is(const struct split_list *l, const char *const *re, int n) {
    if (l->n != n || l->byte_level_regex || l->other) return 0;
    for (int i = 0; i < n; i++)
        if (strcmp(l->re[i], re[i])) return 0;
    return 1;
}

#define LIST_IS(l, a) list_is(l, a, (int)(sizeof a / sizeof a[0]))

static const char *pre_name(const struct split_list *l) {
    if (l->n == 0 && l->byte_level_regex && !l->other && !l->digits) return "gpt-2";
    if (LIST_IS(l, re_deepseek3)) return "deepseek-v3";
    if (LIST_IS(l, re_llama3)) return "llama-bpe";
    if (LIST_IS(l, re_qwen2)) return "qwen2";
    if (l->digits && LIST_IS(l, re_deepseek_coder)) return "deepseek-coder";
    /* DeepSeek-LLM: newline, a long list of letter ranges, ASCII and full-width punctuation,
     * trailing spaces, CJK, then single digits */
    if (l->digits && l->n == 5 && !strcmp(l->re[0], "[\\r\\n]") && !strcmp(l->re[3], "\\s+$") &&
        !strncmp(l->re[1], "\\s?[A-Za-z", 10))
        return "deepseek-llm";
    return NULL;
}

static const char *recognize_pre(const struct json *tok) {
    const struct json *pt = json_get(tok, "pre_tokenizer");
    struct split_list l = {0};
    const char *type = json_get_str(pt, "type");
    const struct json *seq = json_get(pt, "pretokenizers");
    if (type && !strcmp(type, "Sequence") && seq)
        for (const struct json *st = seq->child; st; st = st->next) add_step(&l, st);
    else if (pt)
        add_step(&l, pt);
    const char *name = pre_name(&l);
    for (int i = 0; i < l.n; i++) free(l.re[i]);
    if (!name)
        fprintf(stderr, "moerun convert: warning: tokenizer.json's pre-tokenizer rules are not "
                        "recognized (known: gpt-2, deepseek-v3, deepseek-llm, deepseek-coder, "
                        "llama-bpe, qwen2); writing tokenizer.ggml.pre = \"default\"\n");
    return name ? name : "default";
}

/* ---- special tokens (gguf-py SpecialVocab) ---- */

static const char *const special_types[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
static const char *const special_keys[] = {"bos",     "eos", "unknown", "seperator",
                                           "padding", "cls", "mask"};
#define N_SPECIAL 7

static int64_t added_token_id(const struct json *tok, const char *content) {
    const struct json *added = json_get(tok, "added_tokens");
    for (const struct json *a = added ? added->child : NULL; a; a = a->next) {
        const char *c = json_get_str(a, "content");
        int64_t id;
        if (c && !strcmp(c, content) && json_get_int(a, "id", 0, INT32_MAX, &id) == 0) return id;
    }
    return -1;
}

/* Ids in the order SpecialVocab sets them: tokenizer_config.json's tokens first, then
 * config.json's *_token_id for the types still unset. order[] lists the types set. */
static int special_ids(const struct json *tok, const struct json *tc, const struct json *cfg,
                       int64_t n_vocab, int64_t ids[N_SPECIAL], int order[N_SPECIAL]) {
    int n = 0;
    for (int t = 0; t < N_SPECIAL; t++) ids[t] = -1;
    for (int t = 0; t < N_SPECIAL; t++) {
        char key[32];
        snprintf(key, sizeof key, "%s_token", special_types[t]);
        const struct json *e = json_get(tc, key);
        const char *content = e && e->type == JSON_STRING ? e->str : json_get_str(e, "content");
        int64_t id = content ? added_token_id(tok, content) : -1;
        if (id >= 0 && id < n_vocab) ids[t] = id, order[n++] = t;
    }
    for (int t = 0; t < N_SPECIAL; t++) {
        char key[32];
        int64_t id;
        snprintf(key, sizeof key, "%s_token_id", special_types[t]);
        if (ids[t] < 0 && json_get_int(cfg, key, 0, n_vocab - 1, &id) == 0)
            ids[t] = id, order[n++] = t;
    }
    return n;
}

static void write_specials(struct gguf_writer *w, const struct json *tok, const struct json *tc,
                           const struct json *cfg, int64_t n_vocab) {
    int64_t ids[N_SPECIAL];
    int order[N_SPECIAL];
    int n = special_ids(tok, tc, cfg, n_vocab, ids, order);
    for (int k = 0; k < n; k++) {
        char key[64];
        snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", special_keys[order[k]]);
        gguf_set_u32(w, key, (uint32_t)ids[order[k]]);
    }
    for (int t = 0; t < N_SPECIAL; t++) {
        char key[64];
        int b;
        snprintf(key, sizeof key, "add_%s_token", special_types[t]);
        if (json_get_bool(tc, key, &b) != 0) continue;
        snprintf(key, sizeof key, "tokenizer.ggml.add_%s_token", special_types[t]);
        gguf_set_bool(w, key, b);
    }
}

/* tokenizer_config.json's chat_template (a string, or a list of {name, template}), else a
 * chat_template.jinja file beside it. */
static void write_template(struct gguf_writer *w, const char *dir, const struct json *tc) {
    const struct json *t = json_get(tc, "chat_template");
    if (t && t->type == JSON_STRING) {
        gguf_set_str(w, "tokenizer.chat_template", t->str);
        return;
    }
    for (const struct json *e = t && t->type == JSON_ARRAY ? t->child : NULL; e; e = e->next) {
        const char *name = json_get_str(e, "name"), *text = json_get_str(e, "template");
        if (!name || !text) continue;
        char key[256];
        snprintf(key, sizeof key, "tokenizer.chat_template%s%s", strcmp(name, "default") ? "." : "",
                 strcmp(name, "default") ? name : "");
        gguf_set_str(w, key, text);
    }
    if (t) return;
    char *path = path_join(dir, "chat_template.jinja");
    FILE *f = fopen(path, "rb");
    free(path);
    if (!f) return;
    size_t cap = 1 << 16, n = 0, k;
    char *buf = xmalloc(cap + 1);
    while ((k = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += k) == cap) buf = xrealloc(buf, (cap *= 2) + 1);
    fclose(f);
    buf[n] = 0;
    gguf_set_str(w, "tokenizer.chat_template", buf);
    free(buf);
}

static int load_json(struct json_doc *d, const char *dir, const char *file, int required) {
    char *path = path_join(dir, file);
    FILE *f = fopen(path, "rb");
    if (!f && !required) {
        free(path);
        return json_parse(d, file, "{}", 2);
    }
    if (f) fclose(f);
    int rc = json_parse_file(d, path, 1ull << 30);
    free(path);
    return rc;
}

static int vocab_from(struct gguf_writer *w, const char *dir, const struct json *tok,
                      const struct json *tc, const struct json *cfg, int64_t n_vocab) {
    const char *type = json_get_str(json_get(tok, "model"), "type");
    if (!type || strcmp(type, "BPE"))
        return err_set("%s/tokenizer.json: model type %s: only byte-level BPE tokenizers are "
                       "supported",
                       dir, type ? type : "(none)"),
               -1;
    struct vocab v = {n_vocab, xcalloc((size_t)n_vocab, sizeof(char *)),
                      xcalloc((size_t)n_vocab, sizeof(int32_t))};
    int rc = fill_vocab(&v, tok);
    if (rc == 0) {
        gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_set_str(w, "tokenizer.ggml.pre", recognize_pre(tok));
        gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, (uint64_t)v.n);
        gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v.types, (uint64_t)v.n);
        rc = write_merges(w, tok);
    }
    if (rc == 0) {
        write_specials(w, tok, tc, cfg, n_vocab);
        write_template(w, dir, tc);
    } else {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err_get());
        err_set("%s/tokenizer.json: %s", dir, msg);
    }
    for (int64_t i = 0; i < v.n; i++) free(v.tokens[i]);
    free(v.tokens), free(v.types);
    return rc;
}

/* ---- SentencePiece (tokenizer.model), as llama.cpp's _create_vocab_sentencepiece ---- */

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Python's bool() of a JSON value, which is what llama.cpp's converter writes */
static int truthy(const struct json *e) {
    int container = e->type == JSON_STRING || e->type == JSON_ARRAY || e->type == JSON_OBJECT;
    return e->type == JSON_TRUE || (e->type == JSON_NUMBER && e->num != 0) ||
           (container && e->len > 0);
}

struct spm_vocab {
    int64_t n;
    char **tokens;  /* (n) owned */
    float *scores;  /* (n) */
    int32_t *types; /* (n) */
};

static void spm_set(struct spm_vocab *v, int64_t id, char *text, float score, int32_t type) {
    free(v->tokens[id]);
    v->tokens[id] = text;
    v->scores[id] = score;
    v->types[id] = type;
}

static void warn_range(const char *file, int64_t id, const char *text, int64_t n) {
    fprintf(stderr,
            "moerun convert: warning: %s: token id %lld (\"%s\") is outside vocab_size %lld; "
            "ignored\n",
            file, (long long)id, text, (long long)n);
}

/* added_tokens.json: {"text": id, ...}, user-defined tokens taken as written. */
static int spm_added_json(struct spm_vocab *v, const char *dir) {
    char *path = path_join(dir, "added_tokens.json");
    struct json_doc d = {0};
    int rc = is_file(path) ? json_parse_file(&d, path, 1u << 30) : 0;
    if (rc == 0 && d.root && d.root->type != JSON_OBJECT)
        rc = (err_set("%s: not a JSON object", path), -1);
    for (const struct json *e = rc == 0 && d.root ? d.root->child : NULL; e; e = e->next) {
        if (e->type != JSON_NUMBER || !e->is_int || e->i < 0) {
            rc = (err_set("%s: \"%s\" is not a token id", path, e->key), -1);
            break;
        }
        if (e->i >= v->n)
            warn_range(path, e->i, e->key, v->n);
        else
            spm_set(v, e->i, xstrdup(e->key), -1000.0f, TOK_USER_DEFINED);
    }
    json_free(&d);
    free(path);
    return rc;
}

/* tokenizer_config.json's added_tokens_decoder: {"id": {"content": ..., "special": ...}}.
 * Special (or special-looking) ones are control tokens; the others user-defined, stored
 * pre-normalized (U+2581 as a space). */
static int spm_added_decoder(struct spm_vocab *v, const char *dir, const struct json *tc) {
    const struct json *dec = json_get(tc, "added_tokens_decoder");
    for (const struct json *e = dec ? dec->child : NULL; e; e = e->next) {
        char *end = NULL;
        long long id = e->key ? strtoll(e->key, &end, 10) : -1;
        const char *content = json_get_str(e, "content");
        if (!e->key || !*e->key || *end || id < 0 || !content)
            return err_set("%s/tokenizer_config.json: added_tokens_decoder[\"%s\"]: needs a "
                           "non-negative integer key and a \"content\" string",
                           dir, e->key ? e->key : ""),
                   -1;
        if (id >= v->n) {
            char *path = path_join(dir, "tokenizer_config.json added_tokens_decoder");
            warn_range(path, id, content, v->n);
            free(path);
            continue;
        }
        const struct json *sp = json_get(e, "special");
        if ((sp && truthy(sp)) || looks_special(content))
            spm_set(v, id, xstrdup(content), -1000.0f, TOK_CONTROL);
        else
            spm_set(v, id, spaces_for_u2581(content), -1000.0f, TOK_USER_DEFINED);
    }
    return 0;
}

/* llama.cpp's converter keeps unknown, control, unused and byte pieces' types and makes
 * every other piece (user-defined ones too) NORMAL. */
static int32_t gguf_type_of(int32_t spm_type) {
    switch (spm_type) {
    case SPM_UNKNOWN:
        return TOK_UNKNOWN;
    case SPM_CONTROL:
        return TOK_CONTROL;
    case SPM_UNUSED:
        return TOK_UNUSED;
    case SPM_BYTE:
        return TOK_BYTE;
    default:
        return TOK_NORMAL;
    }
}

static int vocab_spm(struct gguf_writer *w, const char *dir, const char *model_path,
                     const struct json *tok, const struct json *tc, const struct json *cfg,
                     int64_t n_vocab) {
    struct spm_model m;
    if (spm_load(&m, model_path)) return -1;
    /* every id starts as padding; the pieces, then the added tokens, overwrite it */
    int64_t n = n_vocab > 0 ? n_vocab : m.n;
    struct spm_vocab v = {n, xcalloc((size_t)n, sizeof(char *)), xcalloc((size_t)n, sizeof(float)),
                          xcalloc((size_t)n, sizeof(int32_t))};
    for (int64_t i = 0; i < n; i++) {
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
        spm_set(&v, i, xstrdup(pad), -10000.0f, TOK_UNUSED);
    }
    if (m.n > n)
        fprintf(stderr,
                "moerun convert: warning: %s has %lld pieces, more than vocab_size %lld; pieces "
                "from id %lld on are ignored\n",
                model_path, (long long)m.n, (long long)n, (long long)n);
    for (int64_t i = 0; i < m.n && i < n; i++) {
        spm_set(&v, i, m.pieces[i].text, m.pieces[i].score, gguf_type_of(m.pieces[i].type));
        m.pieces[i].text = NULL; /* moved */
    }
    spm_free(&m);
    int rc = spm_added_json(&v, dir) || spm_added_decoder(&v, dir, tc) ? -1 : 0;
    if (rc == 0) {
        gguf_set_str(w, "tokenizer.ggml.model", "llama");
        gguf_set_str(w, "tokenizer.ggml.pre", "default");
        gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, (uint64_t)n);
        gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v.scores, (uint64_t)n);
        gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v.types, (uint64_t)n);
        write_specials(w, tok, tc, cfg, n);
        write_template(w, dir, tc);
    }
    for (int64_t i = 0; i < n; i++) free(v.tokens[i]);
    free(v.tokens), free(v.scores), free(v.types);
    return rc;
}

/* ---- which tokenizer, per architecture ---- */

/* What llama.cpp's LlamaModel.set_vocab adds after the vocabulary, whichever kind it was:
 * CodeLlama's <EOT> (its prefix/suffix/middle ids have no key in today's gguf-py),
 * tokenizer_config.json's add_prefix_space, and no BOS for vocab_size 49152 ("granite small
 * models" there). */
static void llama_extras(struct gguf_writer *w, const struct json *tc, int64_t n_vocab) {
    if (n_vocab == 32016) gguf_set_u32(w, "tokenizer.ggml.eot_token_id", 32010);
    const struct json *p = json_get(tc, "add_prefix_space");
    if (p) gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", truthy(p));
    if (n_vocab == 49152) gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
}

int convert_vocab(struct gguf_writer *w, const char *dir, const struct json *config,
                  int64_t vocab_size, const char *arch) {
    /* llama.cpp tries tokenizer.model first for these, tokenizer.json for the others */
    int llama = !strcmp(arch, "LlamaForCausalLM") || !strcmp(arch, "MixtralForCausalLM");
    int spm_first = llama || !strcmp(arch, "Qwen2ForCausalLM");
    char *model_path = path_join(dir, "tokenizer.model");
    int spm = spm_first && is_file(model_path);
    struct json_doc tok, tc;
    char *json_path = path_join(dir, "tokenizer.json");
    int rc = spm_first && !spm && !is_file(json_path)
                 ? (err_set("%s: neither tokenizer.model nor tokenizer.json", dir), -1)
                 : load_json(&tok, dir, "tokenizer.json", !spm);
    free(json_path);
    if (rc == 0 && load_json(&tc, dir, "tokenizer_config.json", 0)) json_free(&tok), rc = -1;
    if (rc == 0) {
        int fallback = 0;
        json_get_bool(json_get(tok.root, "model"), "byte_fallback", &fallback);
        if (spm)
            rc = vocab_spm(w, dir, model_path, tok.root, tc.root, config, vocab_size);
        else if (llama && fallback)
            rc = (err_set("%s/tokenizer.json is a SentencePiece-style BPE (byte_fallback): "
                          "convert needs its tokenizer.model beside it",
                          dir),
                  -1);
        else
            rc = vocab_from(w, dir, tok.root, tc.root, config, vocab_size);
        if (rc == 0 && llama) llama_extras(w, tc.root, vocab_size);
        json_free(&tok);
        json_free(&tc);
    }
    free(model_path);
    return rc;
}
