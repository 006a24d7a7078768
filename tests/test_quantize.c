/* tools/quantize.c against llama-quantize: for every compat fixture family, quantizing the
 * F32 file to each type llama.cpp wrote there gives the same tensor types, the same tensor
 * bytes, the same keys and in the end the same file; the mix options (--expert-type,
 * --tensor-type, --output-type, --embd-type) land where they say; quantization error per type
 * stays within llama.cpp's test-quantize-fns ceilings (see test_errors below for the bound). */
#include "gguf.h"
#include "quant.h"
#include "test.h"
#include "tools/quantize.h"
#include "util.h"

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[256];

/* cmd_quantize with its per-tensor lines sent to /dev/null (they would drown the report). */
static int quantize(int argc, char **argv) {
    fflush(stderr);
    int saved = dup(2), null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2), close(null);
    int rc = cmd_quantize(argc, argv);
    fflush(stderr);
    if (saved >= 0) dup2(saved, 2), close(saved);
    return rc;
}

static char *tensor_name(const struct gguf_tensor *t) {
    char *s = xmalloc(t->name.len + 1);
    memcpy(s, t->name.data, t->name.len);
    s[t->name.len] = 0;
    return s;
}

/* ---------------------------------------------------------------- byte identity */

/* Same keys, in the same order, with the same types and value bytes. */
static int same_keys(const struct gguf_file *a, const struct gguf_file *b, char *why, size_t n) {
    if (a->n_kv != b->n_kv)
        return snprintf(why, n, "%llu keys, llama.cpp %llu", (unsigned long long)a->n_kv,
                        (unsigned long long)b->n_kv),
               0;
    for (uint64_t i = 0; i < a->n_kv; i++) {
        const struct gguf_kv *x = &a->kv[i], *y = &b->kv[i];
        if (x->key.len != y->key.len || memcmp(x->key.data, y->key.data, x->key.len) ||
            x->type != y->type || x->value_size != y->value_size ||
            memcmp(x->value, y->value, x->value_size))
            return snprintf(why, n, "key %llu '%.*s' differs", (unsigned long long)i,
                            (int)x->key.len, x->key.data),
                   0;
    }
    return 1;
}

/* Per tensor, in order: name, shape, type and bytes. */
static int same_tensors(const struct gguf_file *a, const struct gguf_file *b, char *why, size_t n) {
    if (a->n_tensors != b->n_tensors)
        return snprintf(why, n, "%llu tensors, llama.cpp %llu", (unsigned long long)a->n_tensors,
                        (unsigned long long)b->n_tensors),
               0;
    for (uint64_t i = 0; i < a->n_tensors; i++) {
        const struct gguf_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        char *name = tensor_name(x);
        int ok = gguf_str_eq(y->name, name) && !memcmp(x->ne, y->ne, sizeof x->ne);
        if (!ok)
            snprintf(why, n, "tensor %llu: '%s' where llama.cpp has '%.*s' (or another shape)",
                     (unsigned long long)i, name, (int)y->name.len, y->name.data);
        else if (x->type != y->type)
            ok = 0, snprintf(why, n, "'%s': type %s, llama.cpp %s", name, qtype_name(x->type),
                             qtype_name(y->type));
        else if (x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes))
            ok = 0, snprintf(why, n, "'%s' (%s): bytes differ", name, qtype_name(x->type));
        free(name);
        if (!ok) return 0;
    }
    return 1;
}

static int same_file(const char *p, const char *q) {
    size_t a, b;
    char *x = test_read_file(p, &a), *y = test_read_file(q, &b);
    int same = x && y && a == b && !memcmp(x, y, a);
    free(x), free(y);
    return same;
}

/* Quantizes <fam>-F32.gguf to TYPE (with --pure where llama.cpp's file was made so) and
 * compares with llama.cpp's <fam>-TYPE.gguf. */
static void check_fixture(const char *dir, const char *fam, const char *type, int pure,
                          const char *threads) {
    char in[512], ref[512], out[512], name[128], why[256] = "";
    snprintf(in, sizeof in, "%s/%s-F32.gguf", dir, fam);
    snprintf(ref, sizeof ref, "%s/%s-%s.gguf", dir, fam, type);
    snprintf(out, sizeof out, "%s/%s-%s.gguf", tmpdir, fam, type);
    snprintf(name, sizeof name, "quantize %s %s%s%s%s", fam, type, pure ? " --pure" : "",
             threads ? " -t " : "", threads ? threads : "");
    if (!test_file_exists(ref)) return test_skip(name, "no %s", ref);
    char *argv[6] = {in, out, (char *)type, "-t", threads ? (char *)threads : "2"};
    int argc = 5;
    if (pure) argv[argc++] = "--pure";
    if (quantize(argc, argv) != 0) return (void)test_report(name, 0, "exit status != 0");
    struct gguf_file a, b;
    if (gguf_open(&a, out)) return (void)test_report(name, 0, "%s", err_get());
    if (gguf_open(&b, ref)) return gguf_close(&a), (void)test_report(name, 0, "%s", err_get());
    int ok = same_tensors(&a, &b, why, sizeof why) && same_keys(&a, &b, why, sizeof why);
    if (ok && !same_file(out, ref)) ok = 0, snprintf(why, sizeof why, "files differ elsewhere");
    if (ok)
        test_report(name, 1, "%llu tensors: same types and bytes, %llu keys, same file",
                    (unsigned long long)a.n_tensors, (unsigned long long)a.n_kv);
    else
        test_report(name, 0, "%s", why);
    gguf_close(&a), gguf_close(&b);
    unlink(out);
}

static void test_compat(void) {
    static const char *fams[] = {
        "llama",          "llama-moe",        "qwen2",       "qwen2moe", "qwen3moe",
        "deepseek2-lite", "deepseek2-legacy", "deepseek2-v3"};
    static const char *types[] = {"F16",  "BF16",   "Q8_0",   "Q4_0",   "Q4_1", "Q5_0",  "Q5_1",
                                  "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_K_M"};
    char dir[512], in[600];
    for (size_t f = 0; f < sizeof fams / sizeof fams[0]; f++) {
        snprintf(dir, sizeof dir, "%s/compat/%s", test_fixtures(), fams[f]);
        snprintf(in, sizeof in, "%s/%s-F32.gguf", dir, fams[f]);
        if (!test_file_exists(in)) {
            test_skip(fams[f], "no %s (set MOERUN_FIXTURES)", in);
            continue;
        }
        /* the README: Q4_K_M is llama.cpp's default mix, every other file was made --pure */
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            char ref[700];
            snprintf(ref, sizeof ref, "%s/%s-%s.gguf", dir, fams[f], types[t]);
            if (test_file_exists(ref)) check_fixture(dir, fams[f], types[t], t + 1 < 13, NULL);
        }
    }
    /* without --pure a Q8_0 file is the same (llama.cpp keeps output in Q8_0); one thread
     * and many threads write the same bytes */
    snprintf(dir, sizeof dir, "%s/compat/qwen3moe", test_fixtures());
    check_fixture(dir, "qwen3moe", "Q8_0", 0, NULL);
    snprintf(dir, sizeof dir, "%s/compat/deepseek2-lite", test_fixtures());
    check_fixture(dir, "deepseek2-lite", "Q4_K_M", 0, "1");
    check_fixture(dir, "deepseek2-lite", "Q4_K_M", 0, "7");
}

/* ---------------------------------------------------------------- options */

static uint32_t type_of(const struct gguf_file *f, const char *name) {
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    return t ? t->type : 9999;
}

/* Runs quantize with argv and checks the listed tensors' types in the output. */
static void check_types(const char *name, int argc, char **argv, const char *out,
                        const char *const *names, const enum qtype *want, int n) {
    struct gguf_file f;
    if (quantize(argc, argv) != 0 || gguf_open(&f, out))
        return (void)test_report(name, 0, "quantize failed");
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        uint32_t got = type_of(&f, names[i]);
        if (got != (uint32_t)want[i])
            ok = test_report(name, 0, "%s is %s, expected %s", names[i], qtype_name(got),
                             qtype_name(want[i]));
    }
    if (ok) test_report(name, 1, "%d tensors as asked", n);
    gguf_close(&f);
    unlink(out);
}

static void test_options(void) {
    char in[512], out[512];
    snprintf(in, sizeof in, "%s/compat/deepseek2-lite/deepseek2-lite-F32.gguf", test_fixtures());
    snprintf(out, sizeof out, "%s/opt.gguf", tmpdir);
    if (!test_file_exists(in)) return test_skip("quantize options", "no %s", in);
    /* routed experts Q2_K (ffn_down_exps has rows of 32: Q2_K falls back to Q4_0), the rest
     * of the model as TYPE's mix (Q6_K pure), routers F32 */
    static const char *const n1[] = {"blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight",
                                     "blk.1.ffn_down_exps.weight", "blk.1.ffn_gate_shexp.weight",
                                     "blk.0.attn_q.weight",        "blk.1.ffn_gate_inp.weight",
                                     "token_embd.weight"};
    static const enum qtype w1[] = {QT_Q2_K, QT_Q2_K, QT_Q4_0, QT_Q6_K, QT_Q6_K, QT_F32, QT_Q6_K};
    char *a1[] = {in, out, "Q6_K", "--expert-type", "q2_k"};
    check_types("quantize --expert-type", 5, a1, out, n1, w1, 7);
    static const char *const n2[] = {"blk.0.attn_q.weight", "blk.1.attn_q.weight",
                                     "blk.0.ffn_up.weight", "token_embd.weight",
                                     "blk.0.attn_output.weight"};
    static const enum qtype w2[] = {QT_Q8_0, QT_Q8_0, QT_Q4_K, QT_F16, QT_Q5_K};
    char *a2[] = {in, out, "Q4_K_M", "--tensor-type", "attn_q\\.=Q8_0", "--embd-type=f16"};
    check_types("quantize --tensor-type --embd-type", 6, a2, out, n2, w2, 5);
    snprintf(in, sizeof in, "%s/compat/llama/llama-F32.gguf", test_fixtures());
    static const char *const n3[] = {"output.weight", "token_embd.weight", "blk.0.attn_v.weight"};
    static const enum qtype w3[] = {QT_Q8_0, QT_Q4_0, QT_Q4_0};
    char *a3[] = {in, out, "Q4_0", "--output-type", "Q8_0"};
    if (test_file_exists(in)) check_types("quantize --output-type", 5, a3, out, n3, w3, 3);
}

/* ---------------------------------------------------------------- errors per type */

/* llama.cpp's test-quantize-fns: data 0.1 + 2 cos(i), n = 4096, error sqrt(sum d^2) / n,
 * ceilings 0.002 (all types), 0.004 (Q3_K), 0.0075 (Q2_K). */
static void cos_data(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = 0.1f + 2.0f * cosf((float)i);
}

static double ceiling_of(uint32_t type) {
    return type == QT_Q2_K ? 0.0075 : type == QT_Q3_K ? 0.0040 : 0.002;
}

/* How far a block's largest value stands above the data's RMS, averaged over blocks of 32:
 * block quantizers scale their step to the block's maximum, so their error relative to the
 * data's RMS grows with it. */
static double crest(const float *x, int64_t n) {
    double s2 = 0, peaks = 0;
    for (int64_t i = 0; i < n; i++) s2 += (double)x[i] * x[i];
    for (int64_t b = 0; b + 32 <= n; b += 32) {
        float m = 0;
        for (int j = 0; j < 32; j++) m = fmaxf(m, fabsf(x[b + j]));
        peaks += m;
    }
    return peaks / (double)(n / 32) / sqrt(s2 / (double)n);
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float normal(void) {
    double u[2];
    for (int k = 0; k < 2; k++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        u[k] = ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

/* An F32 model of llama.cpp's test vector (as 16 rows of 256), N(0,1) weights and, when
 * given, trained weights laid out in rows of 256 so that the K types apply to them. */
static int write_synthetic(const char *path, float *cosv, float *gauss, const float *real,
                           int64_t n_real) {
    struct gguf_writer *w = gguf_writer_new();
    int64_t ne_c[2] = {256, 16}, ne_g[2] = {256, 256}, ne_r[2] = {256, n_real / 256};
    gguf_set_str(w, "general.architecture", "llama");
    gguf_set_u32(w, "llama.block_count", 1);
    gguf_add_tensor(w, "blk.0.ffn_gate.weight", QT_F32, 2, ne_c, cosv, 4096 * 4);
    gguf_add_tensor(w, "blk.0.ffn_up.weight", QT_F32, 2, ne_g, gauss, 65536 * 4);
    if (real)
        gguf_add_tensor(w, "blk.0.ffn_down.weight", QT_F32, 2, ne_r, real, n_real / 256 * 1024);
    int rc = gguf_writer_write(w, path);
    gguf_writer_free(w);
    return rc;
}

/* Sum of squared differences and of squares between a quantized tensor and its F32 origin. */
static void tensor_error(const struct gguf_tensor *q, const float *x, double *e2, double *r2) {
    int64_t n =
        (int64_t)(q->nbytes / qtype_traits(q->type)->type_size) * qtype_traits(q->type)->blck_size;
    float *y = xmalloc((size_t)n * sizeof *y);
    qtype_traits(q->type)->to_float(q->data, y, n);
    *e2 = *r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - y[i];
        *e2 += d * d, *r2 += (double)x[i] * x[i];
    }
    free(y);
}

/* The bound for other data: llama.cpp's ceiling as an error relative to its data's RMS
 * (ceiling * sqrt(n) / rms), scaled by how much higher the data's block peaks stand than
 * those of llama.cpp's cosine (Gaussian and trained weights: about 1.4x). */
static double rel_bound(uint32_t type, double crest_x, double crest_cos, double rms_cos) {
    return ceiling_of(type) * 64.0 / rms_cos * (crest_x / crest_cos);
}

struct err_data {
    const char *what;
    const float *x;
    int64_t n;
};

/* Quantizes IN to TYPE --pure and checks each listed tensor's error. */
static void check_type_error(const char *in, const char *type, const char *const *names,
                             const struct err_data *d, int n_data, int llama_metric) {
    char out[512], name[128];
    snprintf(out, sizeof out, "%s/err.gguf", tmpdir);
    char *argv[] = {(char *)in, out, (char *)type, "--pure"};
    struct gguf_file f;
    float cosv[4096];
    cos_data(cosv, 4096);
    double c_cos = crest(cosv, 4096), rms_cos = sqrt(0.01 + 2.0);
    if (quantize(4, argv) != 0 || gguf_open(&f, out))
        return (void)test_report(type, 0, "quantize failed");
    for (int i = 0; i < n_data; i++) {
        const struct gguf_tensor *t = gguf_find_tensor(&f, names[i]);
        double e2, r2, bound, got;
        tensor_error(t, d[i].x, &e2, &r2);
        snprintf(name, sizeof name, "error %s %s (written as %s)", type, d[i].what,
                 qtype_name(t->type));
        if (llama_metric && i == 0) {
            got = sqrt(e2) / 4096, bound = ceiling_of(t->type);
            test_report(name, got < bound, "llama.cpp metric %.6f, its ceiling %.4f", got, bound);
        } else {
            got = sqrt(e2 / r2), bound = rel_bound(t->type, crest(d[i].x, d[i].n), c_cos, rms_cos);
            test_report(name, got < bound, "relative RMSE %.4f, bound %.4f", got, bound);
        }
    }
    gguf_close(&f);
    unlink(out);
}

/* stories260K (a trained model) as error data: its first three 2-D weights; their rows of
 * 64 make the K types fall back, so the first one also goes into the synthetic file. */
static int stories_data(struct gguf_file *sf, const char **names, struct err_data *d) {
    char st[512];
    int n = 0;
    snprintf(st, sizeof st, "%s/llama2c-stories/stories260K.gguf", test_fixtures());
    if (!test_file_exists(st) || gguf_open(sf, st) != 0) {
        test_skip("error on trained weights", "no %s", st);
        return 0;
    }
    for (uint64_t i = 0; i < sf->n_tensors && n < 3; i++) {
        const struct gguf_tensor *t = &sf->tensors[i];
        if (t->ne[1] <= 1 || t->type != QT_F32 || (t->nbytes / 4) % 256) continue;
        names[n] = tensor_name(t);
        d[n] = (struct err_data){names[n], t->data, (int64_t)(t->nbytes / 4)};
        n++;
    }
    return n;
}

static void test_errors(void) {
    static const char *types[] = {"F16",  "BF16", "Q8_0",   "Q4_0",   "Q4_1",   "Q5_0",
                                  "Q5_1", "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K"};
    static const char *const syn_names[] = {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
                                            "blk.0.ffn_down.weight"};
    float *cosv = xmalloc(4096 * sizeof *cosv), *gauss = xmalloc(65536 * sizeof *gauss);
    struct gguf_file sf;
    const char *st_names[3];
    struct err_data st[3];
    int n_st = stories_data(&sf, st_names, st);
    struct err_data sd[] = {
        {"llama.cpp's cos data", cosv, 4096},
        {"N(0,1)", gauss, 65536},
        {"stories260K weights in rows of 256", n_st ? st[0].x : NULL, n_st ? st[0].n : 0}};
    char syn[512];
    cos_data(cosv, 4096);
    for (int i = 0; i < 65536; i++) gauss[i] = normal();
    snprintf(syn, sizeof syn, "%s/synthetic.gguf", tmpdir);
    if (write_synthetic(syn, cosv, gauss, sd[2].x, sd[2].n))
        return (void)test_report("synthetic", 0, "%s", err_get());
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        check_type_error(syn, types[t], syn_names, sd, n_st ? 3 : 2, 1);
        if (n_st) check_type_error(sf.path, types[t], st_names, st, n_st, 0);
    }
    for (int i = 0; i < n_st; i++) free((char *)st_names[i]);
    if (n_st) gguf_close(&sf);
    unlink(syn);
    free(cosv), free(gauss);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moerun-test-quantize.XXXXXX");
    if (!mkdtemp(tmpdir)) return test_report("mkdtemp", 0, "cannot make a temporary folder"), 1;
    test_compat();
    test_options();
    test_errors();
    rmdir(tmpdir);
    TEST_EXIT();
}
