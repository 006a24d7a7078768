/* Tokenizer: exact equality with llama.cpp's tokenizer test vocabulary, the stories260K
 * prompt, round trips, streaming UTF-8, and loader errors on hand-made GGUF files. */
#include "gguf.h"
#include "test.h"
#include "tokenizer.h"
#include "util.h"

#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

struct opened {
    struct gguf_file f;
    struct tokenizer *t;
};

/* 1 loaded, 0 file absent (skip), -1 failed to load. */
static int open_vocab(const char *path, struct opened *o) {
    if (access(path, R_OK) != 0) return 0;
    if (gguf_open(&o->f, path) < 0) return -1;
    o->t = tokenizer_load(&o->f);
    if (!o->t) {
        gguf_close(&o->f);
        return -1;
    }
    return 1;
}

static void close_vocab(struct opened *o) {
    tokenizer_free(o->t);
    gguf_close(&o->f);
}

/* Decodes ids the way a streaming printer would: pieces through detok. */
static char *decode(const struct tokenizer *t, const int32_t *ids, int64_t n, int show_special,
                    size_t *len) {
    size_t cap_piece = (size_t)tokenizer_max_piece(t);
    char *piece = xmalloc(cap_piece);
    size_t cap = 16, w = 0;
    char *out = xmalloc(cap);
    struct detok_stream d;
    detok_init(&d, tokenizer_add_space_prefix(t));
    for (int64_t i = 0; i <= n; i++) {
        int pn = 0;
        if (i < n) pn = tokenizer_piece(t, ids[i], show_special, piece, cap_piece);
        if (pn < 0) pn = 0;
        size_t need = w + DETOK_OUT_CAP(pn);
        if (need > cap) cap = 2 * need, out = xrealloc(out, cap);
        w += i < n ? detok_push(&d, piece, (size_t)pn, out + w, cap - w)
                   : detok_flush(&d, out + w, cap - w);
    }
    free(piece);
    *len = w;
    return out;
}

static int ids_equal(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

/* ---- llama.cpp's test vocabulary ---- */

/* Texts are separated by "\n__ggml_vocab_test__\n" (each text is followed by one). */
static size_t split_inp(char *buf, size_t len, char **texts, size_t *lens, size_t max) {
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t n = 0, pos = 0;
    while (pos <= len && n < max) {
        char *hit = memmem(buf + pos, len - pos, sep, sizeof sep - 1);
        if (!hit) break;
        texts[n] = buf + pos;
        lens[n++] = (size_t)(hit - (buf + pos));
        pos = (size_t)(hit - buf) + sizeof sep - 1;
    }
    return n;
}

/* One line of space-separated ids; returns the count. */
static int parse_ids(const char *line, int32_t *ids, int max) {
    int n = 0;
    while (*line && *line != '\n' && n < max) {
        char *end;
        long v = strtol(line, &end, 10);
        if (end == line) break;
        ids[n++] = (int32_t)v;
        line = end;
    }
    return n;
}

static void print_ids(const char *what, const int32_t *ids, int64_t n) {
    printf("    %s:", what);
    for (int64_t i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf("%s\n", n > 40 ? " ..." : "");
}

/* A vocabulary file and its reference texts and ids, as paths under the fixtures. */
struct conformance {
    const char *label, *gguf, *inp, *out;
    int parse_special;
    const char *reference; /* whose ids the .out file holds */
};

static void test_conformance(const struct conformance *c) {
    char path[1024], inp_path[1024], out_path[1024], tname[128];
    snprintf(path, sizeof path, "%s/%s", test_fixtures(), c->gguf);
    snprintf(inp_path, sizeof inp_path, "%s/%s", test_fixtures(), c->inp);
    snprintf(out_path, sizeof out_path, "%s/%s", test_fixtures(), c->out);
    snprintf(tname, sizeof tname, "tokenizer_conformance_%s", c->label);
    struct opened o;
    int rc = open_vocab(path, &o);
    if (rc == 0) return test_skip(tname, "%s not found", path);
    if (rc < 0) {
        test_report(tname, 0, "load: %s", err_get());
        return;
    }
    size_t inp_len, out_len;
    char *inp = test_read_file(inp_path, &inp_len), *outs = test_read_file(out_path, &out_len);
    if (!inp || !outs) {
        test_skip(tname, "%s or %s not found", inp_path, out_path);
        goto done;
    }
    enum { MAX_TEXTS = 256, MAX_IDS = 4096 };
    char *texts[MAX_TEXTS];
    size_t lens[MAX_TEXTS];
    size_t n_texts = split_inp(inp, inp_len, texts, lens, MAX_TEXTS);
    static int32_t want[MAX_IDS];
    size_t n_match = 0, n_round = 0, n_lines = 0;
    char *line = outs;
    for (size_t i = 0; i < n_texts && line && *line; i++, n_lines++) {
        int n_want = parse_ids(line, want, MAX_IDS);
        char *nl = strchr(line, '\n');
        line = nl ? nl + 1 : NULL;
        int32_t *got;
        int64_t n_got = tokenizer_encode(o.t, texts[i], lens[i], 0, c->parse_special, &got);
        int same = n_got == n_want && memcmp(got, want, (size_t)n_want * sizeof *want) == 0;
        n_match += same;
        if (!same) {
            printf("    case %zu '%.*s' differs\n", i, (int)lens[i], texts[i]);
            print_ids("want", want, n_want);
            if (n_got >= 0) print_ids("got ", got, n_got);
        }
        size_t dlen;
        char *dec = decode(o.t, got, n_got < 0 ? 0 : n_got, c->parse_special, &dlen);
        /* tokenizer_decode must give what the streaming printer gives. */
        char *whole = xmalloc(dlen + 1);
        int64_t wlen = tokenizer_decode(o.t, got, n_got < 0 ? 0 : (size_t)n_got, c->parse_special,
                                        whole, dlen + 1);
        int round = dlen == lens[i] && memcmp(dec, texts[i], dlen) == 0 && wlen == (int64_t)dlen &&
                    memcmp(whole, dec, dlen) == 0;
        free(whole);
        n_round += round;
        if (!round) printf("    case %zu round trip gave '%.*s'\n", i, (int)dlen, dec);
        free(dec);
        free(got);
    }
    test_report(tname, n_texts > 0 && n_match == n_texts && n_lines == n_texts,
                "%zu/%zu texts match %s exactly (%zu id lines)", n_match, n_texts, c->reference,
                n_lines);
    snprintf(tname, sizeof tname, "tokenizer_round_trip_%s", c->label);
    test_report(tname, n_texts > 0 && n_round == n_texts, "%zu/%zu texts decode back exactly",
                n_round, n_texts);
done:
    free(inp);
    free(outs);
    close_vocab(&o);
}

#define LLAMA_VOCAB(name)                                                                          \
    {                                                                                              \
        name, "vocab/ggml-vocab-" name ".gguf", "vocab/ggml-vocab-" name ".gguf.inp",              \
            "vocab/ggml-vocab-" name ".gguf.out", 0, "llama.cpp"                                   \
    }

/* llama.cpp's own test: no BOS, no special-token parsing. Hugging Face's DeepSeek-V3
 * tokenizer matches special-token texts even when it adds no special tokens, so that
 * comparison parses them. */
static const struct conformance conformance_cases[] = {
    LLAMA_VOCAB("llama-spm"),
    LLAMA_VOCAB("llama-bpe"),
    LLAMA_VOCAB("deepseek-llm"),
    LLAMA_VOCAB("deepseek-coder"),
    LLAMA_VOCAB("qwen2"),
    LLAMA_VOCAB("gpt-2"),
    {"deepseek-v3-hf", "deepseek-v3-tokenizer/ggml-vocab-deepseek-v3.gguf",
     "deepseek-v3-tokenizer/texts.inp", "deepseek-v3-tokenizer/texts.out", 1, "Hugging Face"},
};

/* Control tokens are matched only with parse_special; the text after one is prefixed with a
 * space again (llama.cpp: "▁Hello" = 15043, "▁" = 29871 in this vocabulary). */
static void test_spm_special(void) {
    const char *name = "tokenizer_spm_parse_special";
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", test_fixtures());
    struct opened o;
    int rc = open_vocab(path, &o);
    if (rc == 0) return test_skip(name, "%s not found", path);
    if (rc < 0) {
        test_report(name, 0, "load: %s", err_get());
        return;
    }
    const char *text = "<s>Hello</s>";
    int32_t *a, *b;
    int64_t na = tokenizer_encode(o.t, text, strlen(text), 1, 1, &a);
    int64_t nb = tokenizer_encode(o.t, text, strlen(text), 0, 0, &b);
    int ok = ids_equal(a, na, (int32_t[]){1, 1, 15043, 2}, 4);
    if (!ok && na >= 0) print_ids("got ", a, na);
    int has_control = 0;
    for (int64_t i = 0; i < nb; i++) has_control |= b[i] == 1 || b[i] == 2;
    test_report(name, ok && nb > 4 && !has_control,
                "BOS + <s> Hello </s> parsed; %" PRId64 " plain-text ids without control ids", nb);
    ok = tokenizer_is_eog(o.t, 2) && !tokenizer_is_eog(o.t, 1) && tokenizer_add_bos(o.t);
    test_report("tokenizer_spm_eog", ok, "</s> ends generation, <s> does not, add_bos");
    free(a);
    free(b);
    close_vocab(&o);
}

/* ---- stories260K: a vocabulary llama.cpp's llama2.c converter wrote ---- */

static int json_prompt_ids(const char *json, int32_t *ids, int max, int *n_prompt) {
    const char *p = strstr(json, "\"tokens\"");
    const char *q = strstr(json, "\"n_prompt\"");
    if (!p || !q || !(p = strchr(p, '[')) || !(q = strchr(q, ':'))) return -1;
    *n_prompt = atoi(q + 1);
    int n = 0;
    for (p++; n < max && *p && *p != ']';) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    return n;
}

static void test_stories(void) {
    const char *name = "tokenizer_stories260k_once_upon";
    char path[1024], jpath[1024];
    snprintf(path, sizeof path, "%s/llama2c-stories/stories260K.gguf", test_fixtures());
    snprintf(jpath, sizeof jpath, "%s/llama2c-stories/once_upon.json", test_fixtures());
    struct opened o;
    int rc = open_vocab(path, &o);
    if (rc == 0) return test_skip(name, "%s not found", path);
    if (rc < 0) {
        test_report(name, 0, "load: %s", err_get());
        return;
    }
    size_t jlen;
    char *json = test_read_file(jpath, &jlen);
    int32_t want[256];
    int n_prompt = 0, n = json ? json_prompt_ids(json, want, 256, &n_prompt) : -1;
    if (n < n_prompt || n_prompt <= 0) {
        test_skip(name, "%s missing or unreadable", jpath);
    } else {
        const char *text = "Once upon a time";
        int32_t *got;
        int64_t n_got = tokenizer_encode(o.t, text, strlen(text), tokenizer_add_bos(o.t), 0, &got);
        int same = n_got == n_prompt && memcmp(got, want, (size_t)n_prompt * 4) == 0;
        if (!same) {
            print_ids("want", want, n_prompt);
            if (n_got >= 0) print_ids("got ", got, n_got);
        }
        test_report(name, same, "%d prompt ids, BOS %d", n_prompt, tokenizer_bos(o.t));
        free(got);

        /* With 512 tokens most non-ASCII text is byte tokens: a streamed character split
         * over them must come out once and whole. */
        const char *multi = "\xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80 \xe4\xb8\xad";
        n_got = tokenizer_encode(o.t, multi, strlen(multi), 0, 0, &got);
        int n_bytes = 0, ok = n_got > 0;
        for (int64_t i = 0; i < n_got; i++)
            n_bytes += tokenizer_token_type(o.t, got[i]) == TOKEN_BYTE;
        struct detok_stream d;
        detok_init(&d, 1);
        char acc[256], piece[64], out[256];
        size_t w = 0;
        for (int64_t i = 0; i < n_got && ok; i++) {
            int pn = tokenizer_piece(o.t, got[i], 0, piece, sizeof piece);
            size_t k = detok_push(&d, piece, (size_t)pn, out, sizeof out);
            /* Everything emitted so far is a prefix of the text ending on a char boundary. */
            memcpy(acc + w, out, k);
            w += k;
            ok = w <= strlen(multi) && memcmp(acc, multi, w) == 0 &&
                 (w == strlen(multi) || (multi[w] & 0xc0) != 0x80);
        }
        w += detok_flush(&d, acc + w, sizeof acc - w);
        ok = ok && w == strlen(multi) && memcmp(acc, multi, w) == 0;
        test_report("tokenizer_stream_split_chars", ok && n_bytes >= 6,
                    "%" PRId64 " tokens, %d byte tokens, %zu bytes out", n_got, n_bytes, w);
        free(got);
    }
    free(json);
    close_vocab(&o);
}

/* ---- a hand-made vocabulary: merge order, byte fallback, special tokens ---- */

#define SP "\xe2\x96\x81"

struct vocab_spec {
    const char *model;
    int n; /* tokens */
    const char *const *tokens;
    const float *scores;
    int n_scores;
    const int32_t *types;
    int n_types;
    int types_as_f32;
    int64_t bos; /* -1: leave the key out */
};

static const char *const tiny_tokens[] = {"<unk>", "<s>", "</s>", SP,     "a",      "b",
                                          "c",     "ab",  "bc",   SP "a", "<0x64>", "<x>"};
static const float tiny_scores[] = {0, 0, 0, -5, -3, -3, -3, -2, -1, -1.5f, 0, 0};
static const int32_t tiny_types[] = {
    TOKEN_UNKNOWN, TOKEN_CONTROL,     TOKEN_CONTROL, 1, 1, 1, 1, 1, 1, 1,
    TOKEN_BYTE,    TOKEN_USER_DEFINED};

static struct vocab_spec tiny_spec(void) {
    return (struct vocab_spec){"llama", 12, tiny_tokens, tiny_scores, 12, tiny_types, 12, 0, 1};
}

static int write_vocab(const char *path, const struct vocab_spec *s) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_str(w, "tokenizer.ggml.model", s->model);
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", s->tokens, (uint64_t)s->n);
    gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, s->scores, (uint64_t)s->n_scores);
    gguf_set_arr(w, "tokenizer.ggml.token_type",
                 s->types_as_f32 ? GGUF_TYPE_FLOAT32 : GGUF_TYPE_INT32, s->types,
                 (uint64_t)s->n_types);
    if (s->bos >= 0) gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)s->bos);
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    return rc;
}

static void check_encode(const struct tokenizer *t, const char *name, const char *text,
                         int parse_special, const int32_t *want, int n_want) {
    int32_t *got;
    int64_t n = tokenizer_encode(t, text, strlen(text), 0, parse_special, &got);
    int ok = n >= 0 && ids_equal(got, n, want, n_want);
    if (!ok && n >= 0) print_ids("got ", got, n);
    test_report(name, ok, "'%s' -> %d ids expected", text, n_want);
    free(got);
}

static void test_tiny(const char *path) {
    struct vocab_spec s = tiny_spec();
    if (write_vocab(path, &s) < 0) {
        test_report("tokenizer_tiny_write", 0, "%s", err_get());
        return;
    }
    struct opened o;
    if (open_vocab(path, &o) != 1) {
        test_report("tokenizer_tiny_load", 0, "%s", err_get());
        return;
    }
    const struct tokenizer *t = o.t;
    /* bc (-1) beats ▁a (-1.5) beats ab (-2): best pair first, not leftmost first. */
    check_encode(t, "tokenizer_tiny_merge_by_score", "abc", 0, (int32_t[]){9, 8}, 2);
    check_encode(t, "tokenizer_tiny_byte_fallback", "ad", 0, (int32_t[]){9, 10}, 2);
    check_encode(t, "tokenizer_tiny_unknown_byte", "e", 0, (int32_t[]){3, 0}, 2);
    /* A user-defined token splits the text even without parse_special, and the text after
     * it gets the space prefix again, as in llama.cpp. */
    check_encode(t, "tokenizer_tiny_user_defined", "a<x>b", 0, (int32_t[]){9, 11, 3, 5}, 4);
    check_encode(t, "tokenizer_tiny_control_parsed", "<s>a", 1, (int32_t[]){1, 9}, 2);
    check_encode(t, "tokenizer_tiny_control_as_text", "<s>", 0, (int32_t[]){3, 0, 0, 0},
                 4); /* "<", "s", ">" have no tokens: unk each */
    check_encode(t, "tokenizer_tiny_empty", "", 0, NULL, 0);

    int32_t *got;
    int64_t n = tokenizer_encode(t, "", 0, 1, 0, &got);
    test_report("tokenizer_tiny_empty_with_bos", n == 1 && got[0] == 1, "%" PRId64 " ids", n);
    free(got);

    char buf[16];
    int ok = tokenizer_piece(t, 1, 0, buf, sizeof buf) == 0 &&
             tokenizer_piece(t, 1, 1, buf, sizeof buf) == 3 && memcmp(buf, "<s>", 3) == 0 &&
             tokenizer_piece(t, 9, 0, buf, sizeof buf) == 2 && memcmp(buf, " a", 2) == 0 &&
             tokenizer_piece(t, 10, 0, buf, sizeof buf) == 1 && buf[0] == 'd' &&
             tokenizer_piece(t, 11, 0, buf, sizeof buf) == 3 &&
             tokenizer_piece(t, 12, 0, buf, sizeof buf) == -1 &&
             tokenizer_piece(t, 9, 0, buf, 1) == -1;
    test_report("tokenizer_tiny_pieces", ok, "control, normal, byte, user-defined, range, cap");
    ok = tokenizer_is_eog(t, 2) && !tokenizer_is_eog(t, 1) && tokenizer_eos(t) == 2 &&
         tokenizer_bos(t) == 1 && tokenizer_find(t, "<x>", 3) == 11;
    test_report("tokenizer_tiny_special_ids", ok, "eos 2 ends generation, bos 1 does not");

    /* Invalid UTF-8 input is tokenized bytewise, never a crash. */
    const char bad[] = "\xff\xfe\xc3";
    n = tokenizer_encode(t, bad, 3, 0, 0, &got);
    test_report("tokenizer_tiny_invalid_utf8", ids_equal(got, n, (int32_t[]){3, 0, 0, 0}, 4),
                "%" PRId64 " ids", n);
    free(got);
    close_vocab(&o);
}

/* ---- loader errors ---- */

static void expect_load_error(const char *path, const char *name, const struct vocab_spec *s,
                              const char *must_contain) {
    if (write_vocab(path, s) < 0) {
        test_report(name, 0, "could not write: %s", err_get());
        return;
    }
    struct opened o;
    int rc = open_vocab(path, &o);
    if (rc == 1) {
        close_vocab(&o);
        test_report(name, 0, "loaded, expected an error with '%s'", must_contain);
        return;
    }
    const char *e = err_get();
    test_report(name, rc < 0 && strstr(e, must_contain) && strstr(e, path), "%s", e);
}

static void test_errors(const char *path) {
    struct vocab_spec s = tiny_spec();
    s.n_scores = 11;
    expect_load_error(path, "tokenizer_err_short_scores", &s, "tokenizer.ggml.scores");
    s = tiny_spec();
    s.types_as_f32 = 1;
    expect_load_error(path, "tokenizer_err_types_not_i32", &s, "tokenizer.ggml.token_type");
    s = tiny_spec();
    s.n_types = 13;
    int32_t more_types[13];
    memcpy(more_types, tiny_types, sizeof tiny_types);
    more_types[12] = 1;
    s.types = more_types;
    expect_load_error(path, "tokenizer_err_long_types", &s, "tokenizer.ggml.token_type");
    s = tiny_spec();
    int32_t bad_types[12];
    memcpy(bad_types, tiny_types, sizeof tiny_types);
    bad_types[7] = TOKEN_BYTE; /* "ab" is no <0xXX> */
    s.types = bad_types;
    expect_load_error(path, "tokenizer_err_bad_byte_token", &s, "<0xXX>");
    s = tiny_spec();
    bad_types[7] = 9;
    expect_load_error(
        path, "tokenizer_err_type_range",
        &(struct vocab_spec){"llama", 12, tiny_tokens, tiny_scores, 12, bad_types, 12, 0, 1},
        "type 9");
    s = tiny_spec();
    s.bos = 12;
    expect_load_error(path, "tokenizer_err_bos_range", &s, "bos_token_id");
    s = tiny_spec();
    s.model = "bert";
    expect_load_error(path, "tokenizer_err_unsupported_model", &s,
                      "unsupported tokenizer model 'bert'");
    const char *const dup[] = {"<unk>", "<s>", "</s>", "a", "a"};
    s = (struct vocab_spec){"llama", 5, dup, tiny_scores, 5, tiny_types, 5, 0, 1};
    expect_load_error(path, "tokenizer_err_duplicate_token", &s, "both 'a'");
}

/* ---- a hand-made byte-level BPE vocabulary: merges, pre-tokenizer fallback, specials ---- */

#define G_SPACE "\xc4\xa0" /* GPT-2's character for the byte ' ' */

static const char *const bpe_tokens[] = {"a", "b", "c",       G_SPACE,    "ab", G_SPACE "ab",
                                         "1", "2", "<|end|>", "<|user|>", "<x>"};
static const int32_t bpe_types[] = {
    1, 1, 1, 1, 1, 1, 1, 1, TOKEN_CONTROL, TOKEN_CONTROL, TOKEN_USER_DEFINED};
static const char *const bpe_merges[] = {"a b", G_SPACE " ab"};

struct bpe_spec {
    const char *pre; /* NULL: leave the key out */
    const char *const *merges;
    int n_merges;
};

static int write_bpe_vocab(const char *path, const struct bpe_spec *s) {
    struct gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "qwen2");
    gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (s->pre) gguf_set_str(w, "tokenizer.ggml.pre", s->pre);
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", bpe_tokens, 11);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, bpe_types, 11);
    if (s->merges) gguf_set_arr_str(w, "tokenizer.ggml.merges", s->merges, (uint64_t)s->n_merges);
    gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 8);
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    return rc;
}

/* Loads with stderr sent to a file; returns the number of lines it got (-1: load failed). */
static int load_counting_warnings(const char *path, const char *grep, struct opened *o) {
    char log[128];
    snprintf(log, sizeof log, "%s.stderr", path);
    fflush(stderr);
    int saved = dup(2);
    FILE *fp = fopen(log, "w+");
    if (saved < 0 || !fp) return -1;
    dup2(fileno(fp), 2);
    int rc = open_vocab(path, o);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    fclose(fp);
    size_t len;
    char *text = test_read_file(log, &len);
    unlink(log);
    int n = 0;
    for (char *p = text; p && (p = strstr(p, grep)); p++) n++;
    free(text);
    return rc == 1 ? n : -1;
}

static int64_t encode_str(const struct tokenizer *t, const char *text, int special, int32_t **ids) {
    return tokenizer_encode(t, text, strlen(text), 0, special, ids);
}

static void test_bpe_tiny(const char *path) {
    struct bpe_spec s = {"qwen2", bpe_merges, 2};
    struct opened o;
    if (write_bpe_vocab(path, &s) < 0 || open_vocab(path, &o) != 1) {
        test_report("tokenizer_bpe_tiny_load", 0, "%s", err_get());
        return;
    }
    const struct tokenizer *t = o.t;
    /* "ab ab" -> ab, Ġab; 'c' then digits split one by one (qwen2); a user-defined token is
     * cut out even without parse_special, control tokens only with it. */
    check_encode(t, "tokenizer_bpe_tiny_merges", "ab abc12", 0, (int32_t[]){4, 5, 2, 6, 7}, 5);
    check_encode(t, "tokenizer_bpe_tiny_user_defined", "a<x>b", 0, (int32_t[]){0, 10, 1}, 3);
    check_encode(t, "tokenizer_bpe_tiny_control_parsed", "<|user|>ab<|end|>", 1,
                 (int32_t[]){9, 4, 8}, 3);
    int32_t *ids;
    int64_t n = encode_str(t, "<|end|>", 0, &ids);
    int has_control = 0;
    for (int64_t i = 0; i < n; i++) has_control |= ids[i] == 8;
    /* '<', '|', ... have no tokens in this vocabulary, and llama.cpp drops such bytes. */
    test_report("tokenizer_bpe_tiny_control_as_text", n == 0 && !has_control,
                "%" PRId64 " ids, none the control token", n);
    free(ids);
    int ok = tokenizer_kind(t) == TOKENIZER_BPE && !strcmp(tokenizer_pre(t), "qwen2") &&
             tokenizer_is_eog(t, 8) && !tokenizer_is_eog(t, 9) && !tokenizer_add_bos(t) &&
             !tokenizer_add_space_prefix(t);
    test_report("tokenizer_bpe_tiny_flags", ok, "kind, pre, eog, no BOS, no space prefix");

    char buf[32];
    ok = tokenizer_piece(t, 5, 0, buf, sizeof buf) == 3 && !memcmp(buf, " ab", 3) &&
         tokenizer_piece(t, 8, 0, buf, sizeof buf) == 0 &&
         tokenizer_piece(t, 8, 1, buf, sizeof buf) == 7;
    test_report("tokenizer_bpe_tiny_pieces", ok, "GPT-2 characters back to bytes, control hidden");
    int32_t seq[] = {9, 4, 5, 8};
    int64_t need = tokenizer_decode(t, seq, 4, 1, NULL, 0);
    char out[32] = {0};
    int64_t got = tokenizer_decode(t, seq, 4, 1, out, 5);
    ok = need == 20 && got == 20 && !memcmp(out, "<|use", 5) &&
         tokenizer_decode(t, seq, 4, 0, out, sizeof out) == 5 && !memcmp(out, "ab ab", 5) &&
         tokenizer_decode(t, (int32_t[]){11}, 1, 0, out, sizeof out) < 0;
    test_report("tokenizer_bpe_tiny_decode", ok, "full length %" PRId64 ", clipped copy, bad id",
                need);
    close_vocab(&o);
}

static void test_bpe_pre_fallback(const char *path) {
    const char *name = "tokenizer_bpe_unknown_pre_warns_once";
    struct bpe_spec s = {"no-such-pre", bpe_merges, 2};
    struct opened o;
    int n_warn = write_bpe_vocab(path, &s) < 0 ? -1 : load_counting_warnings(path, "warning", &o);
    if (n_warn < 0) {
        test_report(name, 0, "load: %s", err_get());
        return;
    }
    /* The default rules cut punctuation runs first and keep digit runs whole. */
    int32_t *a, *b;
    int64_t na = encode_str(o.t, "ab ab", 0, &a), nb = encode_str(o.t, "ab ab", 0, &b);
    int ok = n_warn == 1 && !strcmp(tokenizer_pre(o.t), "default") &&
             ids_equal(a, na, (int32_t[]){4, 5}, 2) && ids_equal(a, na, b, nb);
    test_report(name, ok, "%d warning line(s), rules '%s'", n_warn, tokenizer_pre(o.t));
    free(a);
    free(b);
    close_vocab(&o);

    s.pre = NULL;
    n_warn = write_bpe_vocab(path, &s) < 0 ? -1 : load_counting_warnings(path, "missing", &o);
    ok = n_warn == 1 && !strcmp(tokenizer_pre(o.t), "default");
    test_report("tokenizer_bpe_missing_pre_warns_once", ok, "%d warning line(s)", n_warn);
    if (n_warn >= 0) close_vocab(&o);
}

static void expect_bpe_error(const char *path, const char *name, const struct bpe_spec *s,
                             const char *must_contain) {
    struct opened o;
    if (write_bpe_vocab(path, s) < 0) {
        test_report(name, 0, "could not write: %s", err_get());
        return;
    }
    int rc = open_vocab(path, &o);
    if (rc == 1) {
        close_vocab(&o);
        test_report(name, 0, "loaded, expected an error with '%s'", must_contain);
        return;
    }
    const char *e = err_get();
    test_report(name,
                rc < 0 && strstr(e, must_contain) && strstr(e, path) &&
                    strstr(e, "tokenizer.ggml.merges"),
                "%s", e);
}

static void test_bpe_errors(const char *path) {
    static const char *const no_space[] = {"a b", "ab"};
    static const char *const empty_right[] = {"a "};
    static const char *const missing_result[] = {"a b", "b c"};
    static const char *const missing_left[] = {"x b"};
    expect_bpe_error(path, "tokenizer_bpe_err_merge_no_space",
                     &(struct bpe_spec){"qwen2", no_space, 2}, "merge 1 is 'ab'");
    expect_bpe_error(path, "tokenizer_bpe_err_merge_empty_part",
                     &(struct bpe_spec){"qwen2", empty_right, 1}, "merge 0 is 'a '");
    expect_bpe_error(path, "tokenizer_bpe_err_merge_result_missing",
                     &(struct bpe_spec){"qwen2", missing_result, 2},
                     "merge 1 'b c': the merged token");
    expect_bpe_error(path, "tokenizer_bpe_err_merge_part_missing",
                     &(struct bpe_spec){"qwen2", missing_left, 1}, "merge 0 'x b': its left part");
    expect_bpe_error(path, "tokenizer_bpe_err_no_merges", &(struct bpe_spec){"qwen2", NULL, 0},
                     "is missing");
}

/* End-of-generation ids of real vocabularies: from metadata and from token texts. */
static void test_real_eog(const char *gguf, const char *const *texts, int n_texts) {
    char path[1024], name[128];
    snprintf(path, sizeof path, "%s/%s", test_fixtures(), gguf);
    snprintf(name, sizeof name, "tokenizer_eog_%s", strrchr(gguf, '/') + 1);
    struct opened o;
    int rc = open_vocab(path, &o);
    if (rc == 0) return test_skip(name, "%s not found", path);
    int ok = rc == 1 && tokenizer_is_eog(o.t, tokenizer_eos(o.t));
    for (int i = 0; ok && i < n_texts; i++) {
        int32_t id = tokenizer_find(o.t, texts[i], strlen(texts[i]));
        ok = id >= 0 && tokenizer_is_eog(o.t, id) && tokenizer_token_type(o.t, id) == TOKEN_CONTROL;
    }
    ok = ok && !tokenizer_is_eog(o.t, tokenizer_find(o.t, "a", 1));
    test_report(name, ok, "eos %d and %d end-of-turn text(s) end generation",
                rc == 1 ? tokenizer_eos(o.t) : -1, n_texts);
    if (rc == 1) close_vocab(&o);
}

static void test_real_eogs(void) {
    test_real_eog("vocab/ggml-vocab-qwen2.gguf",
                  (const char *const[]){"<|im_end|>", "<|endoftext|>"}, 2);
    test_real_eog("vocab/ggml-vocab-llama-bpe.gguf", (const char *const[]){"<|eot_id|>"}, 1);
    test_real_eog("deepseek-v3-tokenizer/ggml-vocab-deepseek-v3.gguf",
                  (const char *const[]){"<\xef\xbd\x9c"
                                        "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"},
                  1);
}

/* ---- streaming detokenizer on raw bytes ---- */

static int push_str(struct detok_stream *d, const char *piece, const char *want) {
    char out[64];
    size_t n = detok_push(d, piece, strlen(piece), out, sizeof out);
    return n == strlen(want) && memcmp(out, want, n) == 0;
}

#define FFFD "\xef\xbf\xbd"

static void test_detok(void) {
    struct detok_stream d;
    detok_init(&d, 1);
    int ok = push_str(&d, "", "") && push_str(&d, " Hi", "Hi") && push_str(&d, " \xe2", " ") &&
             push_str(&d, "\x82", "") && push_str(&d, "\xac!", "\xe2\x82\xac!");
    test_report("detok_split_char_once", ok, "euro sign split over three pushes");

    detok_init(&d, 0);
    ok = push_str(&d, " x\xe2\x82", " x") && push_str(&d, "A", FFFD "A") &&
         push_str(&d, "\xff", FFFD) && push_str(&d, "\xc0\xaf", FFFD FFFD) &&
         push_str(&d, "\xed\xa0\x80", FFFD FFFD FFFD);
    test_report("detok_invalid_becomes_fffd", ok, "broken, stray, overlong, surrogate");

    char out[8];
    ok = push_str(&d, "\xf0\x9f\x98", "");
    size_t n = detok_flush(&d, out, sizeof out);
    ok = ok && n == 3 && memcmp(out, FFFD, 3) == 0 && detok_flush(&d, out, sizeof out) == 0;
    test_report("detok_flush_incomplete", ok, "incomplete emoji at the end");
}

int main(void) {
    char tmp[64];
    snprintf(tmp, sizeof tmp, "/tmp/moerun_test_tokenizer_%d.gguf", (int)getpid());
    test_detok();
    test_tiny(tmp);
    test_errors(tmp);
    test_bpe_tiny(tmp);
    test_bpe_pre_fallback(tmp);
    test_bpe_errors(tmp);
    unlink(tmp);
    for (size_t i = 0; i < sizeof conformance_cases / sizeof conformance_cases[0]; i++)
        test_conformance(&conformance_cases[i]);
    test_spm_special();
    test_real_eogs();
    test_stories();
    TEST_EXIT();
}
