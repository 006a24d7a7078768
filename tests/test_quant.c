/* quant.c against llama.cpp: dequantization bit for bit (gguf-py dumps), reference
 * quantization byte for byte (llama-quantize outputs), f16/bf16 rounding, dot products
 * against double precision, AVX2 kernels against the portable ones, traits sanity. */
#include "gguf.h"
#include "quant.h"
#include "test.h"
#include "util.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static int64_t tensor_n_elements(const struct gguf_tensor *t) {
    int64_t n = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; ++d) n *= t->ne[d];
    return n;
}

static char *tensor_name(const struct gguf_tensor *t) {
    char *s = xmalloc(t->name.len + 1);
    memcpy(s, t->name.data, t->name.len);
    s[t->name.len] = 0;
    return s;
}

/* xorshift: reproducible data without libc rand's unspecified sequence */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rng_uniform(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float rng_normal(void) {
    double u = rng_uniform(), v = rng_uniform();
    if (u < 1e-300) u = 1e-300;
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* ---------------------------------------------------------------- .deq.json (minimal) */

/* The dumps are machine-written JSON with flat tensor objects; we only need the string
 * and integer values of a few keys inside each object, so a scan for "key": suffices. */
static const char *json_find_key(const char *obj, const char *end, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    size_t pl = strlen(pat);
    for (const char *p = obj; p + pl <= end; ++p) {
        if (memcmp(p, pat, pl) != 0) continue;
        p += pl;
        while (p < end && (*p == ' ' || *p == ':' || *p == '\n')) ++p;
        return p;
    }
    return NULL;
}

static int json_string(const char *obj, const char *end, const char *key, char *out, size_t n) {
    const char *p = json_find_key(obj, end, key);
    if (!p || *p != '"') return -1;
    const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (!q || (size_t)(q - p - 1) >= n) return -1;
    memcpy(out, p + 1, (size_t)(q - p - 1));
    out[q - p - 1] = 0;
    return 0;
}

static int json_int(const char *obj, const char *end, const char *key, int64_t *out) {
    const char *p = json_find_key(obj, end, key);
    if (!p) return -1;
    char *e;
    *out = strtoll(p, &e, 10);
    return e == p ? -1 : 0;
}

/* ---------------------------------------------------------------- test 1: dequantization */

struct deq_result {
    int n_tensors, n_exact;
    char why[2048];
};

static void deq_check_tensor(const struct gguf_file *f, const char *name, const float *expect,
                             int64_t count, struct deq_result *r) {
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    r->n_tensors++;
    if (!t) {
        snprintf(r->why, sizeof r->why, "%s: no such tensor", name);
        return;
    }
    const struct qtype_traits *tr = qtype_traits(t->type);
    if (!tr || tensor_n_elements(t) != count) {
        snprintf(r->why, sizeof r->why, "%s: type %s or count %lld unexpected", name,
                 qtype_name(t->type), (long long)count);
        return;
    }
    float *got = xmalloc((size_t)count * sizeof(float));
    tr->to_float(t->data, got, count);
    int64_t first_bad = -1;
    for (int64_t i = 0; i < count && first_bad < 0; ++i)
        if (memcmp(&got[i], &expect[i], sizeof(float)) != 0) first_bad = i;
    if (first_bad < 0)
        r->n_exact++;
    else
        snprintf(r->why, sizeof r->why, "%s (%s): value %lld is %.9g, llama.cpp %.9g", name,
                 tr->name, (long long)first_bad, got[first_bad], expect[first_bad]);
    free(got);
}

static void test_deq_file(const char *dir, const char *stem) {
    char path[1024], name[128], bin[256], test_name[160];
    snprintf(test_name, sizeof test_name, "quant_deq_%s", stem);
    snprintf(path, sizeof path, "%s/%s.deq.json", dir, stem);
    size_t jlen;
    char *json = test_read_file(path, &jlen);
    if (!json) {
        test_skip(test_name, "no %s", path);
        return;
    }
    snprintf(path, sizeof path, "%s/%s.gguf", dir, stem);
    struct gguf_file f;
    if (gguf_open(&f, path) != 0) {
        test_report(test_name, 0, "%s", err_get());
        free(json);
        return;
    }
    char file_bin[256] = "";
    const char *tensors = strstr(json, "\"tensors\"");
    json_string(json, tensors ? tensors : json + jlen, "bin", file_bin, sizeof file_bin);
    struct deq_result r = {0};
    const char *end = json + jlen;
    for (const char *p = tensors ? strchr(tensors, '{') : NULL; p; p = strchr(p + 1, '{')) {
        const char *obj_end = strchr(p, '}');
        int64_t off, count;
        if (!obj_end || json_string(p, obj_end, "name", name, sizeof name) ||
            json_int(p, obj_end, "offset_bytes", &off) ||
            json_int(p, obj_end, "n_floats", &count)) {
            snprintf(r.why, sizeof r.why, "cannot parse a tensor entry of %s.deq.json", stem);
            r.n_tensors++;
            break;
        }
        if (json_string(p, obj_end, "bin", bin, sizeof bin))
            snprintf(bin, sizeof bin, "%s", file_bin);
        snprintf(path, sizeof path, "%s/%s", dir, bin);
        size_t blen;
        char *data = test_read_file(path, &blen);
        if (!data || off < 0 || (size_t)off + (size_t)count * 4 > blen) {
            snprintf(r.why, sizeof r.why, "%s: cannot read %lld floats at %lld of %s", name,
                     (long long)count, (long long)off, path);
            r.n_tensors++;
        } else {
            float *expect = xmalloc((size_t)count * sizeof(float));
            memcpy(expect, data + off, (size_t)count * sizeof(float));
            deq_check_tensor(&f, name, expect, count, &r);
            free(expect);
        }
        free(data);
        p = obj_end;
        if (p >= end) break;
    }
    test_report(test_name, r.n_tensors > 0 && r.n_exact == r.n_tensors,
                "%d/%d tensors bit-identical to llama.cpp%s%s", r.n_exact, r.n_tensors,
                r.why[0] ? "; " : "", r.why);
    gguf_close(&f);
    free(json);
}

static void test_dequantization(const char *root) {
    static const char *stems[] = {"Q8_0",   "Q4_0",   "Q4_1",   "Q5_0", "Q5_1",  "Q2_K",
                                  "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_K_M"};
    static const char *models[] = {"llama", "deepseek2-lite"};
    char dir[512], stem[128];
    for (size_t m = 0; m < 2; ++m) {
        for (size_t s = 0; s < sizeof stems / sizeof *stems; ++s) {
            snprintf(dir, sizeof dir, "%s/compat/%s", root, models[m]);
            snprintf(stem, sizeof stem, "%s-%s", models[m], stems[s]);
            test_deq_file(dir, stem);
        }
    }
}

/* ---------------------------------------------------------------- test 2/3: quantization */

struct type_count {
    int total[QT_COUNT], match[QT_COUNT];
};

/* Quantizes the F32 tensor with from_float and compares with the file's bytes. */
static int requantize_matches(const struct gguf_tensor *q, const struct gguf_tensor *ref, char *why,
                              size_t why_n) {
    const struct qtype_traits *tr = qtype_traits(q->type);
    const int64_t n = tensor_n_elements(q);
    if (!tr || ref->type != QT_F32 || tensor_n_elements(ref) != n || n % tr->blck_size) {
        snprintf(why, why_n, "shape/type mismatch");
        return 0;
    }
    uint8_t *buf = xmalloc(q->nbytes);
    tr->from_float(ref->data, buf, n);
    const uint8_t *want = q->data;
    uint64_t bad = 0, first = 0;
    for (uint64_t i = 0; i < q->nbytes; ++i)
        if (buf[i] != want[i] && bad++ == 0) first = i;
    if (bad)
        snprintf(why, why_n, "%llu of %llu bytes differ, first at byte %llu (block %llu)",
                 (unsigned long long)bad, (unsigned long long)q->nbytes, (unsigned long long)first,
                 (unsigned long long)(first / tr->type_size));
    free(buf);
    return bad == 0;
}

static void test_quantize_file(const char *dir, const char *model, const char *stem) {
    char path[1024], ref_path[1024], test_name[160], why[256] = "", first_fail[512] = "";
    snprintf(test_name, sizeof test_name, "quant_requant_%s-%s", model, stem);
    snprintf(path, sizeof path, "%s/%s-%s.gguf", dir, model, stem);
    snprintf(ref_path, sizeof ref_path, "%s/%s-F32.gguf", dir, model);
    if (!test_file_exists(path) || !test_file_exists(ref_path)) {
        test_skip(test_name, "no %s or %s", path, ref_path);
        return;
    }
    struct gguf_file f, ref;
    if (gguf_open(&f, path) != 0 || gguf_open(&ref, ref_path) != 0) {
        test_report(test_name, 0, "%s", err_get());
        return;
    }
    struct type_count c = {{0}, {0}};
    int n_checked = 0, n_matched = 0;
    for (uint64_t i = 0; i < f.n_tensors; ++i) {
        const struct gguf_tensor *t = &f.tensors[i];
        if (t->type == QT_F32) continue;
        char *name = tensor_name(t);
        const struct gguf_tensor *r = gguf_find_tensor(&ref, name);
        int ok = r && requantize_matches(t, r, why, sizeof why);
        if (t->type < QT_COUNT) {
            c.total[t->type]++;
            c.match[t->type] += ok;
        }
        n_checked++;
        n_matched += ok;
        if (!ok && !first_fail[0])
            snprintf(first_fail, sizeof first_fail, "; first mismatch %s (%s): %s", name,
                     qtype_name(t->type), r ? why : "not in F32 file");
        free(name);
    }
    char per_type[512] = "";
    for (int t = 0; t < QT_COUNT; ++t) {
        if (!c.total[t]) continue;
        size_t len = strlen(per_type);
        snprintf(per_type + len, sizeof per_type - len, " %s %d/%d", qtype_name((uint32_t)t),
                 c.match[t], c.total[t]);
    }
    test_report(test_name, n_checked > 0 && n_matched == n_checked,
                "%d/%d tensors byte-identical (%s)%s", n_matched, n_checked, per_type + 1,
                first_fail);
    gguf_close(&f);
    gguf_close(&ref);
}

static void test_quantization(const char *root) {
    static const char *pure[] = {"Q8_0",   "Q4_0",   "Q4_1", "Q5_0",   "Q5_1", "Q2_K", "Q3_K_S",
                                 "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_K_M", "F16",  "BF16"};
    static const char *models[] = {
        "llama",    "deepseek2-lite", "llama-moe",        "qwen2",
        "qwen2moe", "qwen3moe",       "deepseek2-legacy", "deepseek2-v3"};
    char dir[512];
    for (size_t m = 0; m < sizeof models / sizeof *models; ++m) {
        snprintf(dir, sizeof dir, "%s/compat/%s", root, models[m]);
        for (size_t s = 0; s < sizeof pure / sizeof *pure; ++s) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s-%s.gguf", dir, models[m], pure[s]);
            /* only (a) and (f) carry every type; the others have Q8_0 and Q4_K_M */
            if (m >= 2 && !test_file_exists(path)) continue;
            test_quantize_file(dir, models[m], pure[s]);
        }
    }
}

/* F16/BF16 files: to_float of the stored halves equals the F32 value rounded through
 * f32_to_f16 / f32_to_bf16 (the byte check above already covers from_float). */
static void test_half_files(const char *root) {
    static const char *models[] = {"llama", "deepseek2-lite"};
    static const char *kinds[] = {"F16", "BF16"};
    for (size_t m = 0; m < 2; ++m) {
        for (size_t k = 0; k < 2; ++k) {
            char path[1024], ref_path[1024], name_buf[160];
            snprintf(name_buf, sizeof name_buf, "quant_half_values_%s-%s", models[m], kinds[k]);
            snprintf(path, sizeof path, "%s/compat/%s/%s-%s.gguf", root, models[m], models[m],
                     kinds[k]);
            snprintf(ref_path, sizeof ref_path, "%s/compat/%s/%s-F32.gguf", root, models[m],
                     models[m]);
            struct gguf_file f, ref;
            if (!test_file_exists(path) || !test_file_exists(ref_path)) {
                test_skip(name_buf, "no %s", path);
                continue;
            }
            if (gguf_open(&f, path) || gguf_open(&ref, ref_path)) {
                test_report(name_buf, 0, "%s", err_get());
                continue;
            }
            int64_t n_values = 0, n_bad = 0, n_tensors = 0;
            for (uint64_t i = 0; i < f.n_tensors; ++i) {
                const struct gguf_tensor *t = &f.tensors[i];
                if (t->type != QT_F16 && t->type != QT_BF16) continue;
                char *name = tensor_name(t);
                const struct gguf_tensor *r = gguf_find_tensor(&ref, name);
                free(name);
                const int64_t n = tensor_n_elements(t);
                if (!r || r->type != QT_F32 || tensor_n_elements(r) != n) {
                    n_bad++;
                    continue;
                }
                float *got = xmalloc((size_t)n * sizeof(float));
                qtype_traits(t->type)->to_float(t->data, got, n);
                const float *src = r->data;
                for (int64_t j = 0; j < n; ++j) {
                    float want = t->type == QT_F16 ? f16_to_f32(f32_to_f16(src[j]))
                                                   : bf16_to_f32(f32_to_bf16(src[j]));
                    n_bad += memcmp(&want, &got[j], sizeof want) != 0;
                }
                n_values += n;
                n_tensors++;
                free(got);
            }
            test_report(name_buf, n_tensors > 0 && n_bad == 0,
                        "%lld tensors, %lld values, %lld differ", (long long)n_tensors,
                        (long long)n_values, (long long)n_bad);
            gguf_close(&f);
            gguf_close(&ref);
        }
    }
}

/* ---------------------------------------------------------------- f16 / bf16 rounding */

static void test_half_conversions(void) {
    int bad_rt = 0, bad_tie = 0, bad_bf = 0;
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = f16_to_f32((uint16_t)h);
        const int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (!is_nan && f32_to_f16(f) != h) bad_rt++;
        if (is_nan && !isnan(f)) bad_rt++;
        /* the midpoint to the next half (same sign) must round to the even neighbour */
        if ((h & 0x7fff) < 0x7bff) {
            const double mid = ((double)f + (double)f16_to_f32((uint16_t)(h + 1))) / 2;
            const uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            if (f32_to_f16((float)mid) != even) bad_tie++;
        }
    }
    test_report("quant_f16_roundtrip_and_ties", bad_rt == 0 && bad_tie == 0,
                "%d round-trip, %d tie errors over 65536 halves", bad_rt, bad_tie);
    test_report("quant_f16_overflow",
                f32_to_f16(65519.99f) == 0x7bff && f32_to_f16(65520.f) == 0x7c00 &&
                    f32_to_f16(-1e9f) == 0xfc00 && f32_to_f16(5.9604645e-8f) == 0x0001 &&
                    f32_to_f16(2.9802322e-8f) == 0x0000 && f32_to_f16(NAN) == 0x7e00,
                "max, overflow, smallest subnormal, underflow tie, NaN");
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (f32_to_bf16(f) != h) bad_bf++;
        if ((h & 0x7fff) < 0x7f7f) {
            uint32_t bits = (h << 16) | 0x8000; /* exactly halfway to the next bf16 */
            float mid;
            memcpy(&mid, &bits, sizeof mid);
            const uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            if (f32_to_bf16(mid) != even) bad_bf++;
        }
    }
    const uint32_t snan_bits = 0x7f800001;
    float snan;
    memcpy(&snan, &snan_bits, sizeof snan);
    test_report("quant_bf16_rounding", bad_bf == 0 && f32_to_bf16(snan) == 0x7fc0,
                "%d errors; signalling NaN -> %#x (want 0x7fc0)", bad_bf, f32_to_bf16(snan));
}

/* ---------------------------------------------------------------- activation rounding */

/* x86 ggml-cpu quantizes Q8_0/Q8_1 activations with 127/amax and round-half-even; the
 * reference quantizer (weights) with 1/d and roundf (half away from zero). */
static void test_activation_rounding(void) {
    float x[32] = {0};
    x[0] = 127.f; /* amax 127: both scales are exactly 1 */
    x[1] = 2.5f;
    x[2] = -3.5f;
    uint8_t act[36], ref[36];
    const struct qtype_traits *q8 = qtype_traits(QT_Q8_0);
    q8->from_float_act(x, act, 32);
    q8->from_float(x, ref, 32);
    const int8_t *qa = (const int8_t *)(act + 2), *qr = (const int8_t *)(ref + 2);
    test_report("quant_q8_0_activation_rounding",
                qa[1] == 2 && qa[2] == -4 && qr[1] == 3 && qr[2] == -4,
                "act %d %d (want 2 -4), ref %d %d (want 3 -4)", qa[1], qa[2], qr[1], qr[2]);
    const struct qtype_traits *q81 = qtype_traits(QT_Q8_1);
    q81->from_float_act(x, act, 32);
    uint16_t s;
    memcpy(&s, act + 2, 2);
    const int8_t *q1 = (const int8_t *)(act + 4);
    test_report("quant_q8_1_activation_sum", q1[1] == 2 && f16_to_f32(s) == 125.f,
                "q %d (want 2), s %g (want 127+2-4 = 125)", q1[1], f16_to_f32(s));
}

/* ---------------------------------------------------------------- test 4: dot products */

struct dot_case {
    double got, exact, bound;
};

/* vec_dot(x, y) against the double dot of the dequantized operands. The float kernel's
 * error is that of summing about nb+8 rounded terms (per-block scale products and the
 * 8-lane or block accumulation), i.e. at most gamma(nb+8) = (nb+8)*eps times the sum of
 * the terms' magnitudes. Those terms are bounded by sum|x_i*y_i| for the symmetric types
 * and, with the separate min term of Q4_1/Q5_1/Q*_K, by a few times that (scale part and
 * min part each at most ~|max-min| of a group): we allow 8x. A misplaced nibble or scale
 * moves the result by O(sqrt(block)) * |x||y|, orders of magnitude above this bound. */
/* Q8_1 carries s = fp16(d * sum q) for the min term m * s of Q4_1/Q5_1 (layouts: x block
 * starts d, m; y block starts d, s). s is not part of to_float, and its fp16 rounding
 * (relative 2^-11, or 2^-25 absolute when subnormal) enters the dot as m * (s - d*sum q). */
static double q8_1_sum_rounding(const uint8_t *qx, size_t x_size, const uint8_t *qy, double nb) {
    double bound = 0;
    for (int64_t b = 0; b < (int64_t)nb; ++b) {
        uint16_t m, s;
        memcpy(&m, qx + (size_t)b * x_size + 2, 2);
        memcpy(&s, qy + (size_t)b * 36 + 2, 2);
        bound += fabs(f16_to_f32(m)) * (fabs(f16_to_f32(s)) * 0x1p-11 + 0x1p-25);
    }
    return bound;
}

static struct dot_case dot_case_run(enum qtype type, qt_vec_dot_fn dot, int64_t n, const float *xf,
                                    const float *yf) {
    /* (sizes are multiples of 256, so every type's block size divides n) */
    const struct qtype_traits *tx = qtype_traits(type);
    const struct qtype_traits *ty = qtype_traits(tx->vec_dot_type);
    void *qx = xmalloc(qtype_row_size(type, n));
    void *qy = xmalloc(qtype_row_size(tx->vec_dot_type, n));
    float *dx = xmalloc((size_t)n * sizeof(float)), *dy = xmalloc((size_t)n * sizeof(float));
    tx->from_float(xf, qx, n);
    ty->from_float_act(yf, qy, n);
    tx->to_float(qx, dx, n);
    ty->to_float(qy, dy, n);
    double exact = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
        exact += (double)dx[i] * dy[i];
        mag += fabs((double)dx[i] * dy[i]);
    }
    float got;
    dot(n, &got, qx, qy);
    const double nb = (double)n / (double)tx->blck_size;
    struct dot_case r = {got, exact, 8 * (nb + 8) * FLT_EPSILON * mag + 1e-30};
    if (tx->vec_dot_type == QT_Q8_1) r.bound += q8_1_sum_rounding(qx, tx->type_size, qy, nb);
    free(qx);
    free(qy);
    free(dx);
    free(dy);
    return r;
}

static const enum qtype all_weight_types[] = {QT_F32,  QT_F16,  QT_BF16, QT_Q4_0, QT_Q4_1,
                                              QT_Q5_0, QT_Q5_1, QT_Q8_0, QT_Q2_K, QT_Q3_K,
                                              QT_Q4_K, QT_Q5_K, QT_Q6_K};

static void test_vec_dot(void) {
    static const int64_t sizes[] = {256, 768, 4096};
    for (size_t t = 0; t < sizeof all_weight_types / sizeof *all_weight_types; ++t) {
        const enum qtype type = all_weight_types[t];
        const struct qtype_traits *tr = qtype_traits(type);
        double worst = 0;
        int ok = 1;
        char why[200] = "";
        for (size_t s = 0; s < 3; ++s) {
            const int64_t n = sizes[s];
            float *x = xmalloc((size_t)n * sizeof(float)), *y = xmalloc((size_t)n * sizeof(float));
            for (int64_t i = 0; i < n; ++i) {
                x[i] = rng_normal();
                y[i] = rng_normal() * (1 + (float)(i % 7)); /* uneven block maxima */
            }
            struct dot_case c = dot_case_run(type, tr->vec_dot, n, x, y);
            const double err = fabs(c.got - c.exact);
            if (err / c.bound > worst) worst = err / c.bound;
            if (!(err <= c.bound) && ok) {
                ok = 0;
                snprintf(why, sizeof why, "; n=%lld got %.9g exact %.9g bound %.3g", (long long)n,
                         c.got, c.exact, c.bound);
            }
            free(x);
            free(y);
        }
        char name[64];
        snprintf(name, sizeof name, "quant_vec_dot_%s", tr->name);
        test_report(name, ok, "x %s, y %s: worst error %.3f of bound%s", tr->name,
                    qtype_name(tr->vec_dot_type), worst, why);
    }
}

/* AVX2 kernels against the portable ones: same integer block sums, so the only
 * difference is float accumulation order, bounded like the above. The Q5_0 and K-quant
 * kernels emulate llama.cpp's x86 lanes and float ops in portable C and must agree bit for
 * bit: a last-bit difference flips int8 roundings of later activations and moved logits by
 * 0.07-0.13 from llama.cpp's (llama-Q4_K_S, deepseek2-lite-Q4_K_M). */
static int simd_must_be_exact(enum qtype type) {
    return qtype_traits(type)->blck_size == 256 || type == QT_Q5_0;
}

static void test_simd_vs_scalar(void) {
    static const enum qtype simd_types[] = {QT_Q8_0, QT_Q4_0, QT_Q4_1, QT_Q5_0, QT_Q5_1,
                                            QT_Q2_K, QT_Q3_K, QT_Q4_K, QT_Q5_K, QT_Q6_K};
    if (!qtype_simd_level()) {
        test_skip("quant_simd_vs_scalar", "no AVX2+FMA on this CPU (or not an x86 build)");
        return;
    }
    for (size_t t = 0; t < sizeof simd_types / sizeof *simd_types; ++t) {
        const enum qtype type = simd_types[t];
        const struct qtype_traits *tr = qtype_traits(type);
        double worst = 0;
        int ok = tr->vec_dot != qtype_vec_dot_scalar(type);
        for (int trial = 0; trial < 20; ++trial) {
            const int64_t n = 256 * (1 + trial % 8);
            float *x = xmalloc((size_t)n * sizeof(float)), *y = xmalloc((size_t)n * sizeof(float));
            for (int64_t i = 0; i < n; ++i) {
                x[i] = rng_normal() * (trial % 3 ? 1.f : 1e-3f);
                y[i] = rng_normal() * (1 + (float)(i % 5));
            }
            struct dot_case simd = dot_case_run(type, tr->vec_dot, n, x, y);
            struct dot_case scal = dot_case_run(type, qtype_vec_dot_scalar(type), n, x, y);
            const double err = fabs(simd.got - scal.got);
            if (err / simd.bound > worst) worst = err / simd.bound;
            if (!(err <= simd.bound)) ok = 0;
            if (simd_must_be_exact(type) && simd.got != scal.got) ok = 0;
            free(x);
            free(y);
        }
        char name[64];
        snprintf(name, sizeof name, "quant_simd_vs_scalar_%s", tr->name);
        test_report(name, ok, "20 rows, worst |simd-scalar| %.4f of bound", worst);
    }
}

/* AVX2 dequantization against the portable loops on raw random blocks (every level and
 * scale pattern, finite or not): the same bits, or NaN for both. The dequantized weights feed
 * the sgemm path and the GPU upload, which must not depend on the CPU they ran on. */
static void test_to_float_simd(void) {
    if (!qtype_simd_level()) {
        test_skip("quant_to_float_simd", "no AVX2+FMA on this CPU (or not an x86 build)");
        return;
    }
    for (enum qtype type = 0; type < QT_COUNT; ++type) {
        const struct qtype_traits *tr = qtype_traits(type);
        if (!tr || !tr->to_float || tr->to_float == qtype_to_float_scalar(type)) continue;
        const int64_t n = tr->blck_size * 24;
        const size_t bytes = qtype_row_size(type, n);
        uint8_t *blocks = xmalloc(bytes);
        float *simd = xmalloc((size_t)n * sizeof(float)),
              *scal = xmalloc((size_t)n * sizeof(float));
        int bad = -1;
        for (int trial = 0; trial < 50 && bad < 0; ++trial) {
            for (size_t i = 0; i < bytes; ++i) blocks[i] = (uint8_t)(rng_uniform() * 256);
            if (trial % 2) /* finite f16 scales: an exponent with its lowest bit clear is not 31 */
                for (size_t b = 0; b < bytes; b += tr->type_size) {
                    blocks[b + (type == QT_Q6_K ? tr->type_size - 1 : 1)] &= 0x7b; /* d */
                    if (type == QT_Q4_K) blocks[b + 3] &= 0x7b;                    /* dmin */
                }
            tr->to_float(blocks, simd, n);
            qtype_to_float_scalar(type)(blocks, scal, n);
            for (int64_t i = 0; i < n && bad < 0; ++i)
                if (memcmp(&simd[i], &scal[i], sizeof(float)) &&
                    !(isnan(simd[i]) && isnan(scal[i])))
                    bad = (int)i;
        }
        char name[64];
        snprintf(name, sizeof name, "quant_to_float_simd_%s", tr->name);
        test_report(name, bad < 0, "50 rows of %lld raw random values: %s", (long long)n,
                    bad < 0 ? "same bits" : "differ");
        free(blocks);
        free(simd);
        free(scal);
    }
}

/* rows weight rows of type (values scaled down 1000x on every third trial) and toks
 * activation rows in its vec_dot type, n values each, quantized from random floats; the
 * caller frees *x and *y. */
static void random_operands(enum qtype type, int64_t n, int trial, int rows, int toks, uint8_t **x,
                            uint8_t **y) {
    const struct qtype_traits *tr = qtype_traits(type), *at = qtype_traits(tr->vec_dot_type);
    const size_t xb = qtype_row_size(type, n), yb = qtype_row_size(tr->vec_dot_type, n);
    float *row = xmalloc((size_t)n * sizeof(float));
    *x = xmalloc(xb * (size_t)rows);
    *y = xmalloc(yb * (size_t)toks);
    for (int r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < n; ++i) row[i] = rng_normal() * (trial % 3 ? 1.f : 1e-3f);
        tr->from_float(row, *x + (size_t)r * xb, n);
    }
    for (int t = 0; t < toks; ++t) {
        for (int64_t i = 0; i < n; ++i) row[i] = rng_normal() * (1 + (float)(i % 7));
        at->from_float_act(row, *y + (size_t)t * yb, n);
    }
    free(row);
}

/* Tile kernels (several rows times several activation rows at once) against vec_dot pair by
 * pair: every output must be the same bits, since the products feed the activations that
 * later layers quantize. */
static void test_tiles(void) {
    for (enum qtype type = 0; type < QT_COUNT; ++type) {
        const struct qtype_traits *tr = qtype_traits(type);
        if (!tr || !tr->vec_dot_tile) continue;
        int ok = 1, cases = 0;
        for (int trial = 0; trial < 12; ++trial) {
            const int64_t n = tr->blck_size * (1 + trial % 6) * (trial % 4 ? 8 : 1);
            const size_t xb = qtype_row_size(type, n), yb = qtype_row_size(tr->vec_dot_type, n);
            uint8_t *x, *y;
            random_operands(type, n, trial, tr->tile_rows, tr->tile_toks, &x, &y);
            const int64_t stride = tr->tile_rows + 3; /* out rows wider than the tile */
            float out[64], want;
            tr->vec_dot_tile(n, x, xb, y, yb, out, stride);
            for (int r = 0; r < tr->tile_rows; ++r)
                for (int t = 0; t < tr->tile_toks; ++t, ++cases) {
                    tr->vec_dot(n, &want, x + (size_t)r * xb, y + (size_t)t * yb);
                    if (memcmp(&want, &out[t * stride + r], sizeof want)) ok = 0;
                }
            free(x);
            free(y);
        }
        char name[64];
        snprintf(name, sizeof name, "quant_tile_%s", tr->name);
        test_report(name, ok, "%d x %d tiles, %d pairs bit-equal to vec_dot", tr->tile_rows,
                    tr->tile_toks, cases);
    }
}

/* Rows kernels (several weight rows times one activation row) against vec_dot row by row:
 * the same bits for every row, and nothing written past the last. */
static void test_rows(void) {
    enum { ROWS = 7 };
    for (enum qtype type = 0; type < QT_COUNT; ++type) {
        const struct qtype_traits *tr = qtype_traits(type);
        if (!tr || !tr->vec_dot_rows) continue;
        int ok = 1, cases = 0;
        for (int trial = 0; trial < 8; ++trial) {
            const int64_t n = tr->blck_size * (1 + trial % 5) * (trial % 3 ? 11 : 1);
            const size_t xb = qtype_row_size(type, n);
            uint8_t *x, *y;
            random_operands(type, n, trial, ROWS, 1, &x, &y);
            float out[ROWS + 1], want;
            out[ROWS] = -1.0f; /* must stay */
            tr->vec_dot_rows(n, x, xb, y, out, ROWS);
            for (int r = 0; r < ROWS; ++r, ++cases) {
                tr->vec_dot(n, &want, x + (size_t)r * xb, y);
                if (memcmp(&want, &out[r], sizeof want)) ok = 0;
            }
            if (out[ROWS] != -1.0f) ok = 0;
            free(x);
            free(y);
        }
        char name[64];
        snprintf(name, sizeof name, "quant_rows_%s", tr->name);
        test_report(name, ok, "%d rows bit-equal to vec_dot, none written past the block", cases);
    }
}

/* ggml's vec_dot_f32 order written out: four 16-lane accumulators of fused multiply-adds over
 * 64-value steps, acc 0 += 2, 1 += 3, 0 += 1, the 16 lanes halved pairwise (i += i + 8, + 4,
 * + 2, + 1), then the rest added one product at a time. */
static float ggml_vec_order(const float *x, const float *y, int64_t n) {
    float acc[4][16] = {{0}};
    const int64_t body = n / 64 * 64;
    for (int64_t i = 0; i < body; i += 64)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 16; k++)
                acc[j][k] = fmaf(x[i + 16 * j + k], y[i + 16 * j + k], acc[j][k]);
    for (int k = 0; k < 16; k++) acc[0][k] = (acc[0][k] + acc[2][k]) + (acc[1][k] + acc[3][k]);
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) acc[0][k] += acc[0][k + w];
    float sum = acc[0][0];
    for (int64_t i = body; i < n; i++) {
        const float p = x[i] * y[i];
        sum += p;
    }
    return sum;
}

/* The attention scores' multi-row F32 dot: every row bit-equal to qt_dot_f32_vec and to the
 * order above, for widths with and without a tail past the 64-value steps and row counts
 * around DOT_ROWS (8). */
static void test_dot_f32_rows(void) {
    static const int64_t widths[] = {288, 576, 100, 17, 64};
    static const int64_t counts[] = {1, 7, 8, 13};
    enum { STRIDE = 600, MAX_ROWS = 13 };
    float *x = malloc(STRIDE * sizeof *x), *rows = malloc(MAX_ROWS * STRIDE * sizeof *rows);
    for (int i = 0; i < STRIDE; i++) x[i] = sinf(0.37f * (float)i) * 3.0f;
    for (int i = 0; i < MAX_ROWS * STRIDE; i++) rows[i] = cosf(0.11f * (float)i) - 0.25f;
    int ok = 1, cases = 0;
    for (size_t w = 0; w < sizeof widths / sizeof *widths; w++)
        for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
            float out[MAX_ROWS + 1];
            out[counts[c]] = -1.0f; /* must stay */
            qt_dot_f32_vec_rows(x, rows, STRIDE, widths[w], counts[c], out);
            for (int64_t r = 0; r < counts[c]; r++, cases++) {
                const float want = qt_dot_f32_vec(x, rows + r * STRIDE, widths[w]);
                const float ggml = ggml_vec_order(x, rows + r * STRIDE, widths[w]);
                if (memcmp(&want, &out[r], sizeof want) || memcmp(&ggml, &want, sizeof want))
                    ok = 0;
            }
            if (out[counts[c]] != -1.0f) ok = 0;
        }
    free(x);
    free(rows);
    test_report("quant_dot_f32_vec_rows", ok, "%d rows bit-equal to qt_dot_f32_vec and ggml's order",
                cases);
}

/* P * V's lanes: qt_fma_lanes16 bit-equal to the row-by-row form (lane j % 16 += p[j] * row j,
 * fused, from zero) for row counts below, at and past 16 and widths with a remainder of 8. */
static void test_fma_lanes16(void) {
    static const int64_t counts[] = {1, 5, 16, 17, 40, 300};
    static const int64_t widths[] = {256, 64, 12, 3};
    enum { STRIDE = 260, MAX_N = 300 };
    float *p = malloc(MAX_N * sizeof *p), *rows = malloc(MAX_N * STRIDE * sizeof *rows);
    float *got = malloc(16 * STRIDE * sizeof *got), *want = malloc(16 * STRIDE * sizeof *want);
    for (int j = 0; j < MAX_N; j++) p[j] = 1.0f / (float)(j + 3);
    for (int i = 0; i < MAX_N * STRIDE; i++) rows[i] = sinf(0.013f * (float)i) * 2.0f - 0.5f;
    int ok = 1, cases = 0;
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++)
        for (size_t w = 0; w < sizeof widths / sizeof *widths; w++, cases++) {
            const int64_t n = counts[c], width = widths[w];
            memset(want, 0, 16 * (size_t)width * sizeof *want);
            for (int64_t j = 0; j < n; j++)
                for (int64_t d = 0; d < width; d++)
                    want[j % 16 * width + d] =
                        fmaf(p[j], rows[j * STRIDE + d], want[j % 16 * width + d]);
            memset(got, 0xff, 16 * (size_t)width * sizeof *got); /* NaNs where nothing wrote */
            qt_fma_lanes16(p, n, rows, STRIDE, width, got);
            if (memcmp(got, want, 16 * (size_t)width * sizeof *got)) ok = 0;
        }
    free(p), free(rows), free(got), free(want);
    test_report("quant_fma_lanes16", ok, "%d cases bit-equal to the row-by-row lanes", cases);
}

/* ---------------------------------------------------------------- test 5: traits */

static void test_traits(void) {
    static const struct {
        enum qtype type;
        const char *name;
        int64_t blck;
        size_t size;
    } want[] = {
        {QT_F32, "f32", 1, 4},       {QT_F16, "f16", 1, 2},       {QT_BF16, "bf16", 1, 2},
        {QT_Q4_0, "q4_0", 32, 18},   {QT_Q4_1, "q4_1", 32, 20},   {QT_Q5_0, "q5_0", 32, 22},
        {QT_Q5_1, "q5_1", 32, 24},   {QT_Q8_0, "q8_0", 32, 34},   {QT_Q8_1, "q8_1", 32, 36},
        {QT_Q2_K, "q2_K", 256, 84},  {QT_Q3_K, "q3_K", 256, 110}, {QT_Q4_K, "q4_K", 256, 144},
        {QT_Q5_K, "q5_K", 256, 176}, {QT_Q6_K, "q6_K", 256, 210}, {QT_Q8_K, "q8_K", 256, 292}};
    int bad = 0;
    char why[200] = "";
    for (size_t i = 0; i < sizeof want / sizeof *want; ++i) {
        const struct qtype_traits *t = qtype_traits(want[i].type);
        const int ok = t && !strcmp(t->name, want[i].name) && t->blck_size == want[i].blck &&
                       t->type_size == want[i].size && t->to_float && t->from_float &&
                       t->from_float_act &&
                       qtype_row_size(want[i].type, 4096) == 4096 / want[i].blck * want[i].size &&
                       !strcmp(qtype_name(want[i].type), want[i].name);
        if (!ok && !bad++) snprintf(why, sizeof why, "; %s wrong", want[i].name);
    }
    test_report("quant_traits_sizes", bad == 0, "%d of 15 rows wrong%s", bad, why);
    static const enum qtype dot_type[][2] = {
        {QT_F32, QT_F32},   {QT_F16, QT_F16},   {QT_BF16, QT_BF16}, {QT_Q4_0, QT_Q8_0},
        {QT_Q4_1, QT_Q8_1}, {QT_Q5_0, QT_Q8_0}, {QT_Q5_1, QT_Q8_1}, {QT_Q8_0, QT_Q8_0},
        {QT_Q2_K, QT_Q8_K}, {QT_Q3_K, QT_Q8_K}, {QT_Q4_K, QT_Q8_K}, {QT_Q5_K, QT_Q8_K},
        {QT_Q6_K, QT_Q8_K}};
    bad = 0;
    for (size_t i = 0; i < sizeof dot_type / sizeof *dot_type; ++i) {
        const struct qtype_traits *t = qtype_traits(dot_type[i][0]);
        bad += !t || t->vec_dot_type != dot_type[i][1] || !t->vec_dot;
    }
    test_report("quant_traits_vec_dot_type", bad == 0, "%d wrong", bad);
    const int unknown_null = !qtype_traits(4) && !qtype_traits(5) && !qtype_traits(16) &&
                             !qtype_traits(23) && !qtype_traits(QT_COUNT) &&
                             !qtype_traits(0xFFFFFFFFu);
    test_report("quant_traits_unknown", unknown_null, "ids 4, 5, 16, 23, 40, 2^32-1 give NULL");
    char name23[32], name_big[32];
    snprintf(name23, sizeof name23, "%s", qtype_name(23));
    snprintf(name_big, sizeof name_big, "%s", qtype_name(4000000000u));
    test_report("quant_name_unknown",
                !strcmp(name23, "iq4_xs") && !strcmp(name_big, "type 4000000000"),
                "got \"%s\", \"%s\"", name23, name_big);
    /* ggml types without traits still have a layout, so their files parse */
    int64_t blck = 0;
    size_t tsize = 0;
    int iq = qtype_layout(23, &blck, &tsize) == 0 && blck == 256 && tsize == 136;
    test_report("quant_layout_foreign", iq && qtype_layout(40, &blck, &tsize) < 0,
                "iq4_xs %lld/%zu, id 40 unknown", (long long)blck, tsize);
    test_report("quant_row_size_invalid",
                qtype_row_size(QT_Q4_K, 100) == 0 && qtype_row_size((enum qtype)23, 256) == 0 &&
                    qtype_row_size(QT_Q8_0, 0) == 0 && qtype_row_size(QT_F16, 3) == 6,
                "non-multiple and unknown give 0");
}

/* All-zero input comes back exactly; a constant input comes back within the fp16 rounding
 * of the block scale (relative 2^-11, doubled for the offset formats), never NaN. */
static void test_degenerate_blocks(void) {
    int bad = 0;
    char why[128] = "";
    for (size_t t = 0; t < sizeof all_weight_types / sizeof *all_weight_types; ++t) {
        const struct qtype_traits *tr = qtype_traits(all_weight_types[t]);
        float x[256], y[256];
        uint8_t q[1024];
        for (int fill = 0; fill < 2; ++fill) {
            for (int i = 0; i < 256; ++i) x[i] = fill ? 0.5f : 0.f;
            tr->from_float(x, q, 256);
            tr->to_float(q, y, 256);
            for (int i = 0; i < 256; ++i) {
                if (!(fabsf(y[i] - x[i]) <= x[i] * 0x1p-10f) && !bad++)
                    snprintf(why, sizeof why, "; %s fill %g: [%d] = %g", tr->name, x[0], i, y[i]);
            }
        }
    }
    test_report("quant_degenerate_blocks", bad == 0, "%d values wrong%s", bad, why);
}

int main(void) {
    const char *root = test_fixtures();
    test_traits();
    test_half_conversions();
    test_activation_rounding();
    test_degenerate_blocks();
    test_vec_dot();
    test_simd_vs_scalar();
    test_to_float_simd();
    test_tiles();
    test_rows();
    test_dot_f32_rows();
    test_fma_lanes16();
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/compat/llama/llama-F32.gguf", root);
    if (!test_file_exists(probe)) {
        test_skip("quant_fixtures", "no %s (set MOERUN_FIXTURES)", probe);
        TEST_EXIT();
    }
    test_dequantization(root);
    test_quantization(root);
    test_half_files(root);
    TEST_EXIT();
}
