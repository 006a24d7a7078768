/* Bad input through the binary: each case must exit with status 1 and print one line on
 * stderr that names the file and the problem. Broken model files are made from
 * stories260K.gguf with the GGUF writer (one change each). */
#include "gguf.h"
#include "quant.h"
#include "test.h"
#include "util.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/moerun-errors-XXXXXX";

static const char *bin(void) {
    const char *b = getenv("BIN");
    return b && b[0] ? b : "./moerun";
}

/* Runs a shell command, captures stderr+stdout; returns the exit status (or -1). */
static int run_capture(const char *cmd, char *out, size_t cap) {
    char full[2048];
    snprintf(full, sizeof full, "%s 2>&1 </dev/null", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Expects exit status 1, exactly one output line, containing every needle. */
static void expect_error(const char *name, const char *args, const char *needle1,
                         const char *needle2) {
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s %s", bin(), args);
    int rc = run_capture(cmd, out, sizeof out);
    int ok = rc == 1 && count_lines(out) == 1 && strstr(out, needle1) &&
             (!needle2 || strstr(out, needle2));
    test_report(name, ok, "exit %d, output: %.300s", rc, out);
}

struct edit {
    const char *drop_tensor;   /* leave this tensor out */
    const char *retype_tensor; /* give this tensor type new_type (bytes resized) */
    uint32_t new_type;
    const char *key;       /* set this key ... */
    const char *str_value; /* ... to a string */
    uint32_t u32_value;    /* ... or to a u32 when str_value is NULL */
};

static void copy_name(char *dst, size_t cap, struct gguf_str s) {
    snprintf(dst, cap, "%.*s", (int)s.len, s.data);
}

/* Copies src with one edit into path. */
static int write_edited(const struct gguf_file *src, const struct edit *e, const char *path) {
    struct gguf_writer *w = gguf_writer_new();
    uint8_t *junk = NULL;
    for (uint64_t i = 0; i < src->n_kv; i++) gguf_set_kv(w, &src->kv[i]);
    if (e->key && e->str_value) gguf_set_str(w, e->key, e->str_value);
    if (e->key && !e->str_value) gguf_set_u32(w, e->key, e->u32_value);
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const struct gguf_tensor *t = &src->tensors[i];
        char name[128];
        copy_name(name, sizeof name, t->name);
        if (e->drop_tensor && !strcmp(name, e->drop_tensor)) continue;
        if (e->retype_tensor && !strcmp(name, e->retype_tensor)) {
            size_t nb =
                qtype_row_size(e->new_type, t->ne[0]) * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
            junk = xcalloc(nb, 1);
            gguf_add_tensor(w, name, e->new_type, t->n_dims, t->ne, junk, nb);
            continue;
        }
        gguf_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
    }
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    free(junk);
    return rc;
}

static void make_edited(const struct gguf_file *src, const char *file, const struct edit *e,
                        char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", tmpdir, file);
    if (write_edited(src, e, path) < 0) test_report(file, 0, "cannot write: %s", err_get());
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

static void test_file_errors(const struct gguf_file *src) {
    char path[600], args[1200];
    expect_error("missing file", "info /nonexistent/model.gguf", "/nonexistent/model.gguf",
                 "No such file");

    snprintf(path, sizeof path, "%s/not-gguf.gguf", tmpdir);
    write_bytes(path, "hello, this is a text file\n", 27);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("not a GGUF file", args, path, "not a GGUF file");

    snprintf(path, sizeof path, "%s/truncated.gguf", tmpdir);
    write_bytes(path, src->map, (size_t)src->size / 2);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("truncated file", args, path, "past the end of the file");

    uint8_t *copy = xmalloc(src->size);
    memcpy(copy, src->map, src->size);
    copy[4] = 4; /* version field, little-endian u32 after the magic */
    snprintf(path, sizeof path, "%s/version4.gguf", tmpdir);
    write_bytes(path, copy, src->size);
    free(copy);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("unsupported version", args, path, "unsupported GGUF version 4");
}

static void test_model_errors(const struct gguf_file *src) {
    char path[600], args[1200];
    struct edit arch = {.key = "general.architecture", .str_value = "mamba9"};
    make_edited(src, "arch.gguf", &arch, path, sizeof path);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("unknown architecture", args, path, "unknown architecture 'mamba9' (supported:");

    struct edit missing = {.drop_tensor = "blk.1.ffn_up.weight"};
    make_edited(src, "missing.gguf", &missing, path, sizeof path);
    snprintf(args, sizeof args, "run %s -p hi -n 1", path);
    expect_error("missing tensor", args, path, "missing tensor 'blk.1.ffn_up.weight'");

    struct edit shape = {.key = "llama.feed_forward_length", .u32_value = 100};
    make_edited(src, "shape.gguf", &shape, path, sizeof path);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("shape contradicts hyper-parameters", args, path,
                 "the hyper-parameters say [64, 100");

    struct edit type = {.retype_tensor = "blk.0.attn_q.weight", .new_type = QT_Q8_1};
    make_edited(src, "type.gguf", &type, path, sizeof path);
    snprintf(args, sizeof args, "eval %s --tokens 1,2 --logits %s/out.bin", path, tmpdir);
    expect_error("unsupported tensor type", args, path, "has type q8_1, which is not supported");
    snprintf(path, sizeof path, "%s/out.bin", tmpdir);
    struct stat st;
    test_report("no output file after a failed eval", stat(path, &st) != 0, "checked %s", path);
}

/* The MoE checks at load, on a DeepSeek-V3-style file (16 experts in 4 groups, 2 used). */
static void test_moe_errors(void) {
    char v3[512], path[600], args[1200];
    snprintf(v3, sizeof v3, "%s/compat/deepseek2-v3/deepseek2-v3-F32.gguf", test_fixtures());
    struct gguf_file src;
    if (gguf_open(&src, v3) < 0) {
        test_skip("moe load checks", "%s", err_get());
        return;
    }
    static const struct {
        const char *name, *key;
        uint32_t value;
        const char *needle;
    } cases[] = {
        {"more experts used than exist", "deepseek2.expert_used_count", 20,
         "deepseek2.expert_used_count = 20 is outside 1..16"},
        {"experts not divisible into groups", "deepseek2.expert_group_count", 5,
         "deepseek2.expert_group_count = 5 must divide deepseek2.expert_count = 16"},
        {"more groups used than exist", "deepseek2.expert_group_used_count", 6,
         "deepseek2.expert_group_used_count = 6 is outside 1..4"},
        {"expert shape contradicts expert_count", "deepseek2.expert_count", 8,
         "ffn_gate_inp.weight' has shape [256, 16, 1, 1], the hyper-parameters say [256, 8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char file[32];
        snprintf(file, sizeof file, "moe%zu.gguf", i);
        struct edit e = {.key = cases[i].key, .u32_value = cases[i].value};
        make_edited(&src, file, &e, path, sizeof path);
        snprintf(args, sizeof args, "info %s", path);
        expect_error(cases[i].name, args, path, cases[i].needle);
    }
    struct edit missing = {.drop_tensor = "blk.1.ffn_down_shexp.weight"};
    make_edited(&src, "moe-missing.gguf", &missing, path, sizeof path);
    snprintf(args, sizeof args, "info %s", path);
    expect_error("missing shared expert", args, path,
                 "missing tensor 'blk.1.ffn_down_shexp.weight'");
    gguf_close(&src);
}

static void test_input_errors(const char *stories) {
    char args[1200];
    snprintf(args, sizeof args,
             "run %s -c 8 -p 'Once upon a time there was a little girl named Lily'", stories);
    expect_error("prompt longer than the context", args, "the prompt has", "the context holds 8");
    snprintf(args, sizeof args, "eval %s --tokens 1,99999 --logits /dev/null", stories);
    expect_error("token id outside the vocabulary", args, "token id 99999",
                 "outside the vocabulary");
    snprintf(args, sizeof args, "run %s -n abc -p hi", stories);
    expect_error("bad number", args, "-n expects an integer", "'abc'");
    snprintf(args, sizeof args, "run %s --frobnicate", stories);
    expect_error("unknown option", args, "unknown option '--frobnicate'", NULL);
    expect_error("unknown command", "frobnicate", "unknown command 'frobnicate'", NULL);
}

int main(void) {
    char stories[512];
    snprintf(stories, sizeof stories, "%s/llama2c-stories/stories260K.gguf", test_fixtures());
    struct gguf_file src;
    if (gguf_open(&src, stories) < 0) {
        test_skip("bad input", "%s", err_get());
        return 0;
    }
    if (!mkdtemp(tmpdir)) {
        test_report("mkdtemp", 0, "cannot create %s", tmpdir);
        TEST_EXIT();
    }
    test_file_errors(&src);
    test_model_errors(&src);
    test_moe_errors();
    test_input_errors(stories);
    gguf_close(&src);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
    TEST_EXIT();
}
