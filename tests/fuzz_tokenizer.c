/* libFuzzer target: any bytes as text through tokenizer_encode, tokenizer_decode, and the
 * streaming detokenizer, on several vocabularies: two hand-made ones written with the GGUF
 * writer at start-up (SentencePiece with byte fallback; byte-level BPE with merges and
 * special tokens) and, when present, the llama.cpp vocabularies under the fixtures
 * (MOERUN_FIXTURES, default ../shared/fixtures). The first input byte picks the vocabulary and
 * the flags. For a fixture vocabulary (which covers every byte), valid UTF-8 encoded without
 * special-token parsing must decode back byte for byte (tokenizer.h's promise; for
 * SentencePiece, text without U+2581, the character its pieces use for a space); a mismatch
 * aborts. Fuzzed vocabularies are covered by fuzz_gguf.
 *
 *   make fuzz && build-fuzz/fuzz_tokenizer tests/fuzz/corpus/tokenizer */
#include "gguf.h"
#include "tokenizer.h"
#include "unicode.h"
#include "util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_VOCABS 8

struct vocab {
    struct gguf_file f;
    struct tokenizer *t;
    int roundtrip; /* covers every byte: decode(encode(valid UTF-8)) == text */
};

static struct vocab vocabs[MAX_VOCABS];
static int n_vocabs;

#define SP "\xe2\x96\x81"
#define G_SPACE "\xc4\xa0"

static void add_vocab(const char *path, int roundtrip) {
    if (n_vocabs == MAX_VOCABS || access(path, R_OK) != 0) return;
    struct vocab *v = &vocabs[n_vocabs];
    if (gguf_open(&v->f, path) < 0) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err_get());
        return;
    }
    v->t = tokenizer_load(&v->f);
    if (!v->t) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err_get());
        gguf_close(&v->f);
        return;
    }
    v->roundtrip = roundtrip;
    n_vocabs++;
}

static void write_tiny_vocabs(const char *dir) {
    static const char *const spm_tokens[] = {"<unk>", "<s>", "</s>", SP,     "a",      "b",
                                             "c",     "ab",  "bc",   SP "a", "<0x64>", "<x>"};
    static const float spm_scores[] = {0, 0, 0, -5, -3, -3, -3, -2, -1, -1.5f, 0, 0};
    static const int32_t spm_types[] = {TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL, 1, 1, 1, 1,
                                        1,             1,             1,             TOKEN_BYTE,
                                        TOKEN_USER_DEFINED};
    static const char *const bpe_tokens[] = {"a", "b", "c",       G_SPACE,    "ab", G_SPACE "ab",
                                             "1", "2", "<|end|>", "<|user|>", "<x>"};
    static const int32_t bpe_types[] = {1, 1, 1, 1, 1, 1, 1, 1, TOKEN_CONTROL, TOKEN_CONTROL,
                                        TOKEN_USER_DEFINED};
    static const char *const bpe_merges[] = {"a b", G_SPACE " ab"};
    static const char *const pres[] = {"llama3", "qwen2", "deepseek-v3"};
    char path[256];

    struct gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(w, "tokenizer.ggml.tokens", spm_tokens, 12);
    gguf_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, spm_scores, 12);
    gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, spm_types, 12);
    gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    snprintf(path, sizeof path, "%s/spm.gguf", dir);
    if (gguf_writer_write(w, path) == 0) add_vocab(path, 0);
    gguf_writer_free(w);

    for (int i = 0; i < 3; i++) {
        w = gguf_writer_new();
        gguf_set_str(w, "general.architecture", "qwen2");
        gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_set_str(w, "tokenizer.ggml.pre", pres[i]);
        gguf_set_arr_str(w, "tokenizer.ggml.tokens", bpe_tokens, 11);
        gguf_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, bpe_types, 11);
        gguf_set_arr_str(w, "tokenizer.ggml.merges", bpe_merges, 2);
        gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 8);
        gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
        snprintf(path, sizeof path, "%s/bpe%d.gguf", dir, i);
        if (gguf_writer_write(w, path) == 0) add_vocab(path, 0);
        gguf_writer_free(w);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char dir[] = "/tmp/fuzz_tokenizer.XXXXXX";
    if (!mkdtemp(dir)) abort();
    write_tiny_vocabs(dir); /* the maps stay valid after the files are removed */
    char path[256];
    snprintf(path, sizeof path, "%s/spm.gguf", dir);
    unlink(path);
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/bpe%d.gguf", dir, i);
        unlink(path);
    }
    rmdir(dir);

    const char *fx = getenv("MOERUN_FIXTURES");
    if (!fx || !fx[0]) fx = "../shared/fixtures";
    static const char *const real[] = {"vocab/ggml-vocab-llama-spm.gguf",
                                       "vocab/ggml-vocab-llama-bpe.gguf",
                                       "vocab/ggml-vocab-qwen2.gguf",
                                       "deepseek-v3-tokenizer/ggml-vocab-deepseek-v3.gguf"};
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", fx, real[i]);
        add_vocab(path, 1);
    }
    if (n_vocabs == 0) abort();
    fprintf(stderr, "fuzz_tokenizer: %d vocabularies\n", n_vocabs);
    return 0;
}

static int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                  : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1fu) : len == 3 ? (c & 0x0fu) : (c & 0x07u);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3fu);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1 || size > 4096) return 0;
    uint8_t flags = data[0];
    const struct vocab *v = &vocabs[(flags & 7) % n_vocabs];
    int add_bos = (flags >> 3) & 1, special = (flags >> 4) & 1, show = (flags >> 5) & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    int32_t *ids = NULL;
    int64_t n = tokenizer_encode(v->t, text, len, add_bos, special, &ids);
    if (n < 0) {
        free(ids);
        return 0;
    }
    int64_t need = tokenizer_decode(v->t, ids, (size_t)n, show, NULL, 0);
    if (need < 0) abort(); /* ids the encoder gave are always in range */
    char *out = malloc((size_t)need + 1);
    if (tokenizer_decode(v->t, ids, (size_t)n, show, out, (size_t)need) != need) abort();
    int spm_space = tokenizer_kind(v->t) == TOKENIZER_SPM && memmem(text, len, SP, 3);
    if (v->roundtrip && !special && !add_bos && !spm_space && valid_utf8(data + 1, len) &&
        (need != (int64_t)len || memcmp(out, text, len) != 0)) {
        fprintf(stderr, "fuzz_tokenizer: round trip differs: %zu bytes in, %lld out\nin:  ", len,
                (long long)need);
        for (size_t i = 0; i < len; i++) fprintf(stderr, "%02x", (uint8_t)text[i]);
        fprintf(stderr, "\nout: ");
        for (int64_t i = 0; i < need; i++) fprintf(stderr, "%02x", (uint8_t)out[i]);
        fprintf(stderr, "\n");
        abort();
    }
    free(out);

    /* The streaming detokenizer on the same ids. */
    int cap = tokenizer_max_piece(v->t);
    char *piece = malloc((size_t)cap + 1);
    char *sbuf = malloc(DETOK_OUT_CAP(cap) + 16);
    struct detok_stream d;
    detok_init(&d, tokenizer_add_space_prefix(v->t));
    for (int64_t i = 0; i < n; i++) {
        int pl = tokenizer_piece(v->t, ids[i], show, piece, (size_t)cap);
        if (pl < 0) abort();
        detok_push(&d, piece, (size_t)pl, sbuf, DETOK_OUT_CAP(pl));
    }
    detok_flush(&d, sbuf, 3);
    free(sbuf);
    free(piece);
    free(ids);
    return 0;
}
