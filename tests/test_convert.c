/* The converter's parts without the binary: the strict JSON parser (what it accepts, what it
 * refuses and where it says the error is), the tokenizer conversion of DeepSeek-V3's real
 * tokenizer.json against the vocabulary file llama.cpp's converter wrote from it, and the
 * SentencePiece tokenizer.model reader (malformed protobuf, each error's field and offset). */
#include "gguf.h"
#include "json.h"
#include "tests/test.h"
#include "tools/convert.h"
#include "util.h"

#include <string.h>
#include <unistd.h>

static int parses(const char *text) {
    struct json_doc d;
    int rc = json_parse(&d, "t", text, strlen(text));
    if (rc == 0) json_free(&d);
    return rc == 0;
}

static void test_json_accepts(void) {
    struct json_doc d;
    const char *t =
        "{\"a\": [1, -2.5e3, true, null], \"s\": \"x\\u00e9\\ud83d\\ude00\\n\", \"n\": 0}";
    int ok = json_parse(&d, "t", t, strlen(t)) == 0;
    int64_t n = -1;
    ok = ok && json_at(json_get(d.root, "a"), 1)->num == -2500.0 &&
         !strcmp(json_get_str(d.root, "s"), "x\xc3\xa9\xf0\x9f\x98\x80\n") &&
         json_get_int(d.root, "n", 0, 10, &n) == 0 && n == 0 && json_get(d.root, "a")->len == 4;
    test_report("json: values, escapes, surrogate pairs", ok, "%s", ok ? "" : err_get());
    if (ok) json_free(&d);
}

static void test_json_refuses(void) {
    static const char *const bad[] = {
        "{\"a\": 1,}", "[1 2]", "01",  "1.",       "+1",   "\"\\x\"", "\"\\ud800\"", "\"a\tb\"",
        "{'a': 1}",    "[1] x", "nul", "\"\xff\"", "0x10", "",        "[",           "{\"a\" 1}"};
    int ok = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parses(bad[i])) ok = 0, printf("  accepted: %s\n", bad[i]);
    char deep[600];
    memset(deep, '[', sizeof deep - 1), deep[sizeof deep - 1] = 0;
    ok = ok && !parses(deep);
    test_report("json: refuses what RFC 8259 does not allow, and deep nesting", ok, NULL);
    ok = !parses("{\n  \"a\": 1,\n  \"b\" 2\n}") && strstr(err_get(), "t:3:7: ':' expected");
    test_report("json: errors give line and column", ok, "%s", err_get());
}

/* Compares one key's value bytes in two files. */
static int same_kv(const struct gguf_file *a, const struct gguf_file *b, const char *key) {
    const struct gguf_kv *x = gguf_find_kv(a, key), *y = gguf_find_kv(b, key);
    int ok = x && y && x->type == y->type && x->value_size == y->value_size &&
             !memcmp(x->value, y->value, x->value_size);
    if (!ok) printf("  %s differs\n", key);
    return ok;
}

static void test_vocab_deepseek3(void) {
    char dir[512], ref[600];
    snprintf(dir, sizeof dir, "%s/deepseek-v3-tokenizer", test_fixtures());
    snprintf(ref, sizeof ref, "%s/ggml-vocab-deepseek-v3.gguf", dir);
    if (access(ref, R_OK)) return test_skip("vocab deepseek-v3", "%s not found", ref);
    struct json_doc cfg;
    json_parse(&cfg, "config", "{\"bos_token_id\": 0, \"eos_token_id\": 1}", 38);
    struct gguf_writer *w = gguf_writer_new();
    char out[] = "/tmp/moerun-test-vocab-XXXXXX";
    int fd = mkstemp(out);
    if (fd >= 0) close(fd);
    int ok = convert_vocab(w, dir, cfg.root, 129280, "DeepseekV3ForCausalLM") == 0 &&
             gguf_writer_write(w, out) == 0;
    struct gguf_file a, b;
    if (ok && gguf_open(&a, out) == 0) {
        if (gguf_open(&b, ref) == 0) {
            static const char *const keys[] = {
                "tokenizer.ggml.model",         "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens",        "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",        "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",  "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                "tokenizer.chat_template"};
            for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
                ok &= same_kv(&a, &b, keys[i]);
            gguf_close(&b);
        } else {
            ok = 0;
        }
        gguf_close(&a);
    } else {
        ok = 0;
    }
    test_report("vocab: DeepSeek-V3 tokenizer.json gives llama.cpp's tokenizer keys", ok, "%s",
                ok ? "" : err_get());
    unlink(out);
    gguf_writer_free(w);
    json_free(&cfg);
}

/* ---- SentencePiece tokenizer.model (tools/convert_spm.c) ---- */

static void test_spm_accepts(void) {
    /* field 9 varint, field 10 fixed64, field 11 fixed32, trainer_spec (2) with a nested
     * field; piece 0 text only (score 0, type NORMAL by default); piece 1 with its text twice
     * (the last counts), score 1.5, type BYTE and an unknown field 7 */
    static const uint8_t buf[] = {
        0x48, 0x96, 0x01, 0x51, 1,    2,    3,    4,    5,    6,    7,    8,    0x5d, 1,    2,
        3,    4,    0x12, 0x02, 0x18, 0x02, 0x0a, 0x03, 0x0a, 0x01, 'a',  0x0a, 0x11, 0x0a, 0x01,
        'x',  0x0a, 0x02, 'b',  'c',  0x15, 0x00, 0x00, 0xc0, 0x3f, 0x18, 0x06, 0x38, 0xff, 0x01};
    struct spm_model m;
    int rc = spm_parse(&m, "t", buf, sizeof buf);
    int ok = rc == 0 && m.n == 2 && !strcmp(m.pieces[0].text, "a") && m.pieces[0].score == 0 &&
             m.pieces[0].type == SPM_NORMAL && !strcmp(m.pieces[1].text, "bc") &&
             m.pieces[1].score == 1.5f && m.pieces[1].type == SPM_BYTE;
    test_report("spm: pieces read, defaults kept, unknown fields of every wire type skipped", ok,
                "%s", rc ? err_get() : "");
    if (rc == 0) spm_free(&m);
}

static void test_spm_refuses(void) {
    static const struct {
        uint8_t b[16];
        size_t n;
        const char *msg;
    } bad[] = {
        {{0x80}, 1, "ModelProto field key at offset 0: truncated varint"},
        {{0x00}, 1, "ModelProto field key at offset 0: field number 0 out of range"},
        {{0x0f}, 1, "ModelProto field 1 at offset 0: unsupported wire type 7"},
        {{0x0a}, 1, "ModelProto field 1 (pieces[0]) at offset 1: truncated varint"},
        {{0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02},
         11,
         "ModelProto field 1 (pieces[0]) at offset 1: varint longer than 64 bits"},
        {{0x49, 1, 2, 3},
         4,
         "ModelProto field 9 at offset 1: truncated fixed64: 8 bytes needed, 3 left"},
        {{0x0a, 0x06, 0x0a, 0x01, 'a', 0x15, 0x00},
         7,
         "ModelProto field 1 (pieces[0]) at offset 1: length 6 runs past the end (5 bytes left)"},
        {{0x0a, 0x05, 0x0a, 0x01, 'a', 0x15, 0x00},
         7,
         "pieces[0] field 2 at offset 6: truncated fixed32: 4 bytes needed, 1 left"},
        {{0x0a, 0x04, 0x0a, 0x01, 'a', 0x15, 0x00, 0x00, 0x00},
         9,
         "pieces[0] field 2 at offset 6: truncated fixed32: 4 bytes needed, 0 left"},
        /* a length inside a piece is held to the piece's end, not the file's */
        {{0x0a, 0x03, 0x0a, 0x05, 'a', 'b', 'c', 'd', 'e'},
         9,
         "pieces[0] field 1 at offset 3: length 5 runs past the end (1 bytes left)"},
        {{0x0a, 0x02, 0x18, 0x01}, 4, "pieces[0] at offset 4: no piece text (field 1)"},
        {{0x0a, 0x02, 0x0a, 0x00}, 4, "pieces[0] field 1 at offset 4: empty piece"},
        {{0x0a, 0x04, 0x0a, 0x02, 'a', 0x00},
         6,
         "pieces[0] field 1 at offset 5: piece holds a NUL byte"},
        {{0x0a, 0x05, 0x0a, 0x01, 'a', 0x18, 0x00},
         7,
         "pieces[0] field 3 at offset 6: type 0 is not a SentencePiece piece type (1..6)"},
        {{0x0a, 0x03, 0x0a, 0x01, 'a', 0x12, 0x00}, 7, ""}, /* valid: the control case */
        {{0x12, 0x00}, 2, "ModelProto at offset 2: no pieces (field 1): not a SentencePiece model"},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct spm_model m;
        char want[200];
        snprintf(want, sizeof want, "t: %s", bad[i].msg);
        int rc = spm_parse(&m, "t", bad[i].b, bad[i].n);
        int good = bad[i].msg[0] ? rc == -1 && m.n == 0 && !strcmp(err_get(), want) : rc == 0;
        if (!good) printf("  case %zu: rc %d, got \"%s\", want \"%s\"\n", i, rc, err_get(), want);
        if (rc == 0) spm_free(&m);
        ok &= good;
    }
    test_report("spm: malformed protobuf refused, naming field and offset", ok, NULL);
}

int main(void) {
    test_json_accepts();
    test_json_refuses();
    test_vocab_deepseek3();
    test_spm_accepts();
    test_spm_refuses();
    return test_failures ? 1 : 0;
}
