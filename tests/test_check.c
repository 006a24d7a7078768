/* check_tensors (--check-tensors): a clean model passes; NaN and Inf planted in f32, f16 and
 * q8_0 tensors (a value, a block scale) are found at the right tensor and index. */
#include "check.h"
#include "gguf.h"
#include "quant.h"
#include "test.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/moerun-check-XXXXXX";

/* Writes one file with a clean tensor "ok" and the tensor "bad" of the given type whose
 * bytes come from values (n floats, quantized), then corrupts them with poke. */
static int check_one(const char *name, uint32_t type, int64_t n, int64_t bad_at, float bad,
                     int poke_scale, const char *expect) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.gguf", tmpdir, name);
    float *v = xmalloc((size_t)n * sizeof *v), okv[32];
    for (int64_t i = 0; i < n; i++) v[i] = (float)((i % 7) - 3) * 0.25f;
    for (int i = 0; i < 32; i++) okv[i] = (float)i;
    const struct qtype_traits *tr = qtype_traits(type);
    size_t nbytes = qtype_row_size(type, n);
    uint8_t *q = xmalloc(nbytes);
    if (type == QT_F32) {
        v[bad_at] = bad;
        memcpy(q, v, nbytes);
    } else if (poke_scale) {
        tr->from_float(v, q, n);
        uint16_t h = f32_to_f16(bad); /* q8_0 block: f16 scale first */
        memcpy(q + (size_t)(bad_at / 32) * tr->type_size, &h, 2);
    } else {
        v[bad_at] = bad;
        tr->from_float(v, q, n);
    }
    struct gguf_writer *w = gguf_writer_new();
    gguf_set_str(w, "general.architecture", "llama");
    int64_t ne_ok[1] = {32}, ne[2] = {32, n / 32};
    gguf_add_tensor(w, "ok", QT_F32, 1, ne_ok, okv, sizeof okv);
    gguf_add_tensor(w, "bad", type, 2, ne, q, nbytes);
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    free(q);
    free(v);
    struct gguf_file f;
    if (rc || gguf_open(&f, path)) return test_report(name, 0, "%s", err_get());
    struct check_stats st;
    rc = check_tensors(&f, &st);
    int ok = rc == -1 && strstr(err_get(), expect) && strstr(err_get(), path) &&
             st.n_checked == 2;
    test_report(name, ok, "rc %d: %s", rc, err_get());
    gguf_close(&f);
    unlink(path);
    return ok;
}

static const char *bin(void) {
    const char *b = getenv("BIN");
    return b && b[0] ? b : "./moerun";
}

/* `moerun info --check-tensors` on the tiny model, clean and with its first f32 tensor's
 * value 3 set to +Inf: exit 0, then exit 1 with one stderr line naming tensor and index. */
static void test_binary(const char *clean) {
    struct gguf_file f;
    if (access(bin(), X_OK) != 0 || gguf_open(&f, clean) != 0)
        return test_skip("check_binary", "%s or %s missing", bin(), clean);
    char path[256], cmd[1024], out[4096];
    snprintf(path, sizeof path, "%s/inf-model.gguf", tmpdir);
    struct gguf_writer *w = gguf_writer_new();
    for (uint64_t i = 0; i < f.n_kv; i++) gguf_set_kv(w, &f.kv[i]);
    float *copy = NULL;
    char bad[256] = "";
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        const struct gguf_tensor *t = &f.tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.data);
        const void *data = t->data;
        if (!copy && t->type == QT_F32 && t->nbytes >= 16) {
            copy = xmalloc(t->nbytes);
            memcpy(copy, t->data, t->nbytes);
            copy[3] = INFINITY;
            data = copy;
            snprintf(bad, sizeof bad, "tensor '%s' (f32) has +Inf at index 3", name);
        }
        gguf_add_tensor(w, name, t->type, t->n_dims, t->ne, data, t->nbytes);
    }
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    free(copy);
    gguf_close(&f);
    if (rc || !bad[0]) return (void)test_report("check_binary", 0, "cannot write: %s", err_get());
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "%s info --check-tensors '%s' 2>&1 >/dev/null",
                 bin(), k ? path : clean);
        FILE *p = popen(cmd, "r");
        size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
        out[n] = 0;
        int st = p ? pclose(p) : -1;
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : -1, lines = 0;
        for (char *c = out; *c; c++) lines += *c == '\n';
        if (k == 0)
            test_report("check_binary_clean", code == 0 && n == 0, "exit %d: %.300s", code, out);
        else
            test_report("check_binary_inf", code == 1 && lines == 1 && strstr(out, bad),
                        "exit %d, %d lines, expected '%s': %.300s", code, lines, bad, out);
    }
    unlink(path);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        test_report("check_tmpdir", 0, "mkdtemp");
        TEST_EXIT();
    }
    struct gguf_file f;
    const char *clean = "tests/fuzz/corpus/gguf/qwen2moe-tiny.gguf";
    if (gguf_open(&f, clean) == 0) {
        struct check_stats st;
        int rc = check_tensors(&f, &st);
        test_report("check_clean_model", rc == 0 && st.n_checked == f.n_tensors && st.n_values > 0,
                    "rc %d, %llu of %llu tensors, %llu values: %s", rc,
                    (unsigned long long)st.n_checked, (unsigned long long)st.n_tensors,
                    (unsigned long long)st.n_values, rc ? err_get() : "");
        gguf_close(&f);
    } else {
        test_skip("check_clean_model", "%s", err_get());
    }
    check_one("check_f32_nan", QT_F32, 32 * 3, 70, NAN,
              0, "tensor 'bad' (f32) has NaN at index 70 [6, 2, 0, 0]");
    check_one("check_f32_neg_inf", QT_F32, 32 * 3, 0, -INFINITY, 0,
              "tensor 'bad' (f32) has -Inf at index 0 [0, 0, 0, 0]");
    check_one("check_f16_inf", QT_F16, 32 * 4, 127, 1e6f, 0, /* 1e6 overflows f16 */
              "tensor 'bad' (f16) has +Inf at index 127 [31, 3, 0, 0]");
    check_one("check_q8_0_scale_nan", QT_Q8_0, 32 * 4, 64, NAN, 1,
              "tensor 'bad' (q8_0) has NaN at index 64 [0, 2, 0, 0]");
    /* a chunk boundary: 2^16 + 32 values, the bad one in the second chunk */
    check_one("check_f32_second_chunk", QT_F32, 65536 + 32, 65536 + 5, NAN, 0,
              "has NaN at index 65541 [5, 2048, 0, 0]");
    test_binary(clean);
    rmdir(tmpdir);
    TEST_EXIT();
}
