/* The converter's parts without the binary: the strict JSON parser (what it accepts, what it
 * refuses and where it says the error is) and the tokenizer conversion of DeepSeek-V3's real
 * tokenizer.json against the vocabulary file llama.cpp's converter wrote from it. */
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
    int ok = convert_vocab(w, dir, cfg.root, 129280) == 0 && gguf_writer_write(w, out) == 0;
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

int main(void) {
    test_json_accepts();
    test_json_refuses();
    test_vocab_deepseek3();
    return test_failures ? 1 : 0;
}
