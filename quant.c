/* Block formats byte-identical to ggml (ggml-common.h layouts), with ggml's reference
 * quantizers (no importance matrix), its dequantizers and its generic CPU dot products.
 *
 * Exactness rules that shape this file:
 *  - Dequantization and quantization must round exactly like ggml-base, which is built
 *    without FMA: every product that ggml rounds separately is rounded separately here
 *    (clang is told not to contract; gcc does not contract in ISO C mode).
 *  - Activations are quantized as ggml-cpu does on x86 (AVX path for Q8_0/Q8_1: scale
 *    127/amax and round-half-even; reference path for Q8_K), see from_float_act. */
#include "quant.h"

#include "util.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#define QT_X86 1
#include <immintrin.h>
#else
#define QT_X86 0
#endif

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define QK32 32 /* block size of the legacy formats */
#define QK_K 256
#define K_SCALE_SIZE 12
#define GROUP_MAX_EPS 1e-15f /* ggml treats a group below this as all zero */

/* ============================================================================
 * Half precision and bfloat16
 * ========================================================================== */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000 | (man << 13));
    if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
    /* subnormal or zero: man * 2^-24 is exact in float */
    float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
}

/* Subnormal results: round the 24-bit significand shifted into units of 2^-24. */
static uint16_t f16_subnormal(uint32_t abs_bits) {
    if (abs_bits < 0x33000000) return 0; /* at most 2^-25: ties to the even zero */
    uint32_t exp = abs_bits >> 23;
    uint32_t man = (abs_bits & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - exp;
    uint32_t h = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)h;
}

uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return sign | 0x7e00;  /* NaN: ggml's scalar path drops the payload */
    if (ax >= 0x477ff000) return sign | 0x7c00; /* rounds to or beyond infinity */
    if (ax < 0x38800000) return sign | f16_subnormal(ax);
    uint32_t r = ax - 0x38000000; /* rebias the exponent from 127 to 15 */
    return sign | (uint16_t)((r + 0xfff + ((r >> 13) & 1)) >> 13);
}

float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ============================================================================
 * Block layouts (ggml-common.h). d/m/s/dmin are fp16 bit patterns except Q8_K's d.
 * ========================================================================== */

struct block_q4_0 {
    uint16_t d;
    uint8_t qs[QK32 / 2]; /* value j in the low nibble of byte j, value j+16 in the high */
};
struct block_q4_1 {
    uint16_t d, m;
    uint8_t qs[QK32 / 2];
};
struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4]; /* bit j = fifth bit of value j (little-endian u32) */
    uint8_t qs[QK32 / 2];
};
struct block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QK32 / 2];
};
struct block_q8_0 {
    uint16_t d;
    int8_t qs[QK32];
};
struct block_q8_1 {
    uint16_t d, s; /* s = d * sum(qs) */
    int8_t qs[QK32];
};
struct block_q2_K {
    uint8_t scales[QK_K / 16]; /* low nibble scale, high nibble min */
    uint8_t qs[QK_K / 4];
    uint16_t d, dmin;
};
struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12]; /* 16 six-bit scales biased by 32 */
    uint16_t d;
};
struct block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE]; /* 8 six-bit scales and 8 six-bit mins */
    uint8_t qs[QK_K / 2];
};
struct block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
};
struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* sums of each 16 quants, for the min terms */
};

_Static_assert(sizeof(struct block_q4_0) == 18, "block_q4_0 size");
_Static_assert(sizeof(struct block_q4_1) == 20, "block_q4_1 size");
_Static_assert(sizeof(struct block_q5_0) == 22, "block_q5_0 size");
_Static_assert(sizeof(struct block_q5_1) == 24, "block_q5_1 size");
_Static_assert(sizeof(struct block_q8_0) == 34, "block_q8_0 size");
_Static_assert(sizeof(struct block_q8_1) == 36, "block_q8_1 size");
_Static_assert(sizeof(struct block_q2_K) == 84, "block_q2_K size");
_Static_assert(sizeof(struct block_q3_K) == 110, "block_q3_K size");
_Static_assert(sizeof(struct block_q4_K) == 144, "block_q4_K size");
_Static_assert(sizeof(struct block_q5_K) == 176, "block_q5_K size");
_Static_assert(sizeof(struct block_q6_K) == 210, "block_q6_K size");
_Static_assert(sizeof(struct block_q8_K) == 292, "block_q8_K size");

/* ============================================================================
 * Shared helpers of the reference quantizers
 * ========================================================================== */

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }
static int iclamp(int v, int lo, int hi) { return imax(lo, imin(hi, v)); }

/* Round half to even via the 1.5*2^23 trick, as ggml does; valid for |f| < 2^22. */
static int nearest_int(float f) {
    float v = f + 12582912.f;
    uint32_t bits = f32_bits(v);
    return (int)(bits & 0x007fffff) - 0x00400000;
}

/* The value of largest magnitude (first one on ties) and that magnitude. */
static float signed_absmax(int n, const float *x, float *amax_out) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

/* Sum of w*x*l and w*l*l for levels l = clamp(round(iscale*x)), weights w = x^2. */
static void qx_sums(int n, int nmax, const float *x, float iscale, float *sumlx, float *suml2) {
    float slx = 0, sl2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = iclamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        float w = x[i] * x[i];
        slx += w * x[i] * l;
        sl2 += w * l * l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

static void qx_levels(int n, int nmax, const float *x, float iscale, int8_t *L) {
    for (int i = 0; i < n; ++i)
        L[i] = (int8_t)(nmax + iclamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
}

/* Symmetric levels in [0, 2*nmax) with the scale that minimises the x^2-weighted error over
 * 19 candidate inverse scales (ggml's make_qx_quants, rmse_type 1, no importance weights). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    float max = signed_absmax(n, x, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx, suml2;
    qx_sums(n, nmax, x, iscale, &sumlx, &suml2);
    qx_levels(n, nmax, x, iscale, L);
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        qx_sums(n, nmax, x, iscale, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            qx_levels(n, nmax, x, iscale, L);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* One pass of coordinate descent over the levels; returns how many changed. */
static int q3_refine_pass(int n, int nmax, const float *x, int8_t *L, float *sumlx, float *suml2) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
        float w = x[i] * x[i];
        float slx = *sumlx - w * x[i] * L[i];
        if (slx <= 0) continue;
        float sl2 = *suml2 - w * L[i] * L[i];
        int new_l = iclamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l == L[i]) continue;
        slx += w * x[i] * new_l;
        sl2 += w * new_l * new_l;
        if (sl2 > 0 && slx * slx * *suml2 > *sumlx * *sumlx * sl2) {
            L[i] = (int8_t)new_l;
            *sumlx = slx;
            *suml2 = sl2;
            ++n_changed;
        }
    }
    return n_changed;
}

/* ggml's make_q3_quants with do_rmse: start from the max-based levels, then up to 5 passes
 * of per-element improvement of the weighted least-squares fit. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float amax;
    float max = signed_absmax(n, x, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = iclamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry)
        if (!q3_refine_pass(n, nmax, x, L, &sumlx, &suml2)) break;
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

struct qkx_params {
    int nmax;
    float rmin, rdelta;
    int nstep;
    int use_mad; /* absolute instead of squared error */
};

static float qkx_error(int n, const float *x, const float *w, const uint8_t *L, float scale,
                       float min, int use_mad) {
    float err = 0;
    for (int i = 0; i < n; ++i) {
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        err += w[i] * diff;
    }
    return err;
}

/* Least-squares fit of scale and (non-positive) min to levels computed with one candidate
 * inverse scale; returns 0 when the system is singular. */
static int qkx_fit(int n, const float *x, const float *w, uint8_t *Laux, float iscale, float min,
                   int nmax, float sum_w, float sum_x, float *scale_out, float *min_out) {
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
        int l = iclamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
        Laux[i] = (uint8_t)l;
        sum_l += w[i] * l;
        sum_l2 += w[i] * l * l;
        sum_xl += w[i] * l * x[i];
    }
    float D = sum_w * sum_l2 - sum_l * sum_l;
    if (!(D > 0)) return 0;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
    }
    *scale_out = this_scale;
    *min_out = this_min;
    return 1;
}

/* ggml's make_qkx2_quants: asymmetric levels in [0, nmax], x ~ scale*L + min with min <= 0,
 * searching nstep+1 inverse scales around nmax/(max-min). Returns scale, *neg_min = -min. */
static float make_qkx2_quants(int n, const float *x, const float *w, uint8_t *L, float *neg_min,
                              uint8_t *Laux, const struct qkx_params *p) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = p->nmax / (max - min);
    float scale = 1 / iscale;
    for (int i = 0; i < n; ++i)
        L[i] = (uint8_t)iclamp(nearest_int(iscale * (x[i] - min)), 0, p->nmax);
    float best_error = qkx_error(n, x, w, L, scale, min, p->use_mad);
    for (int is = 0; is <= p->nstep; ++is) {
        iscale = (p->rmin + p->rdelta * is + p->nmax) / (max - min);
        float this_scale, this_min;
        if (!qkx_fit(n, x, w, Laux, iscale, min, p->nmax, sum_w, sum_x, &this_scale, &this_min))
            continue;
        float cur_error = qkx_error(n, x, w, Laux, this_scale, this_min, p->use_mad);
        if (cur_error < best_error) {
            memcpy(L, Laux, (size_t)n);
            best_error = cur_error;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

/* Q4_K/Q5_K: 8 six-bit scales and mins packed in 12 bytes. */
static void k4_get_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void k4_set_scale_min(int j, uint8_t *q, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* Q3_K: 16 six-bit scales, low nibbles in bytes 0..7, high bit pairs in bytes 8..11. */
static int q3k_scale(const uint8_t *s, int j) {
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

/* Sub-block of 32 levels (0..nmax) for Q4_K/Q5_K, weighted by rms + |x| as ggml does. */
static float k4_subblock(const float *x, uint8_t *L, float *neg_min, int nmax, float rmin,
                         int nstep) {
    float w[32];
    uint8_t Laux[32];
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[l] * x[l];
    float av_x = sqrtf(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) w[l] = av_x + fabsf(x[l]);
    struct qkx_params p = {nmax, rmin, 0.1f, nstep, 0};
    return make_qkx2_quants(32, x, w, L, neg_min, Laux, &p);
}

/* Shared Q4_K/Q5_K super-block header: quantize scales and mins to 6 bits, then recompute
 * the levels against the stored (rounded) scales. */
static void k4_quantize_superblock(const float *x, uint8_t *L, int nmax, float rmin, int nstep,
                                   uint16_t *d_out, uint16_t *dmin_out, uint8_t *scales) {
    float mins[8], sc[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        sc[j] = k4_subblock(x + 32 * j, L + 32 * j, &mins[j], nmax, rmin, nstep);
        if (sc[j] > max_scale) max_scale = sc[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * sc[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        k4_set_scale_min(j, scales, ls < 63 ? ls : 63, lm < 63 ? lm : 63);
    }
    *d_out = f32_to_f16(max_scale / 63.f);
    *dmin_out = f32_to_f16(max_min / 63.f);
    for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        k4_get_scale_min(j, scales, &s, &m);
        const float d = f16_to_f32(*d_out) * s;
        if (!d) continue;
        const float dm = f16_to_f32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii)
            L[32 * j + ii] = (uint8_t)iclamp(nearest_int((x[32 * j + ii] + dm) / d), 0, nmax);
    }
}

/* Q2_K/Q3_K 2-bit packing: byte l of each 32-byte group holds values l, l+32, l+64, l+96. */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* ============================================================================
 * F32
 * ========================================================================== */

static void f32_to_float(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f32_from_float(const float *src, void *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

/* llama.cpp multiplies F32 rows in two orders: its tinyBLAS sgemm when the row length is a
 * multiple of 16 (16 lanes of fused multiply-adds, tree-reduced) and ggml's vec_dot_f32
 * otherwise (four 16-lane accumulators over 64-value steps, folded, then the tail one by one,
 * unfused). Reproducing both keeps F32 models bit-identical to its results. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QT_FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QT_FMA_CLONES
#endif

/* Clones stay static: clang 14 leaves an exported target_clones function undefined for
 * callers in other files. */
QT_FMA_CLONES static float reduce_lanes16(float *lanes, int64_t n) {
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++)
            for (int64_t d = 0; d < n; d++) lanes[i * n + d] += lanes[(i + w) * n + d];
    return lanes[0];
}

float qt_reduce_lanes16(float *lanes, int64_t n) { return reduce_lanes16(lanes, n); }

QT_FMA_CLONES static float dot_f32_sgemm_order(const float *x, const float *y, int64_t n) {
    float l[16] = {0};
    for (int64_t i = 0; i < n; i += 16)
        for (int k = 0; k < 16; k++) l[k] = fmaf(x[i + k], y[i + k], l[k]);
    return qt_reduce_lanes16(l, 1);
}

/* ggml's vec_dot_f32 over the whole 64-value steps of n (folded and reduced); the rest is
 * the caller's, added one value at a time. */
static float dot_f32_vec_steps(const float *x, const float *y, int64_t body) {
    float acc[4][16] = {{0}};
    for (int64_t i = 0; i < body; i += 64)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 16; k++)
                acc[j][k] = fmaf(x[i + 16 * j + k], y[i + 16 * j + k], acc[j][k]);
    for (int k = 0; k < 16; k++) {
        acc[0][k] += acc[2][k];
        acc[1][k] += acc[3][k];
    }
    for (int k = 0; k < 16; k++) acc[0][k] += acc[1][k];
    return qt_reduce_lanes16(acc[0], 1);
}

static float dot_f32_vec_steps_best(const float *x, const float *y, int64_t body);

/* The tail's additions are one serial chain per row (32 values cost about 100 cycles where
 * the 256 before them cost less); DOT_ROWS rows' chains run side by side, each in its order. */
enum { DOT_ROWS = 8 };

QT_FMA_CLONES static void dot_f32_vec_rows(const float *x, const float *rows, int64_t row_stride,
                                           int64_t n, int64_t n_rows, float *out) {
    const int64_t body = n & ~(int64_t)63;
    for (int64_t r0 = 0; r0 < n_rows; r0 += DOT_ROWS) {
        const int m = n_rows - r0 < DOT_ROWS ? (int)(n_rows - r0) : DOT_ROWS;
        const float *y = rows + r0 * row_stride;
        float sum[DOT_ROWS];
        for (int r = 0; r < m; r++) sum[r] = dot_f32_vec_steps_best(x, y + r * row_stride, body);
        for (int64_t i = body; i < n; ++i)
            for (int r = 0; r < m; r++) sum[r] += x[i] * y[r * row_stride + i];
        memcpy(out + r0, sum, (size_t)m * sizeof *sum);
    }
}

void qt_dot_f32_vec_rows(const float *x, const float *rows, int64_t row_stride, int64_t n,
                         int64_t n_rows, float *out) {
    dot_f32_vec_rows(x, rows, row_stride, n, n_rows, out);
}

static float dot_f32_vec_order(const float *x, const float *y, int64_t n) {
    float sum;
    dot_f32_vec_rows(x, y, 0, n, 1, &sum);
    return sum;
}

/* lanes[l * width + d] for columns d from `from` on = sum over j = l (mod 16) of
 * p[j] * rows[j * row_stride + d], fused multiply-adds in increasing j from zero. */
static void fma_lanes16_cols(const float *p, int64_t n, const float *rows, int64_t row_stride,
                             int64_t width, int64_t from, float *lanes) {
    for (int l = 0; l < 16; l++)
        memset(lanes + l * width + from, 0, (size_t)(width - from) * sizeof *lanes);
    for (int64_t j = 0; j < n; j++) {
        float *l = lanes + (j % 16) * width;
        const float *v = rows + j * row_stride;
        for (int64_t d = from; d < width; d++) l[d] = fmaf(p[j], v[d], l[d]);
    }
}

static void fma_lanes16(const float *p, int64_t n, const float *rows, int64_t row_stride,
                        int64_t width, float *lanes) {
    fma_lanes16_cols(p, n, rows, row_stride, width, 0, lanes);
}

static void fma_lanes16_best(const float *p, int64_t n, const float *rows, int64_t row_stride,
                             int64_t width, float *lanes);

void qt_fma_lanes16(const float *p, int64_t n, const float *rows, int64_t row_stride, int64_t width,
                    float *lanes) {
    fma_lanes16_best(p, n, rows, row_stride, width, lanes);
}

float qt_dot_f32(const float *x, const float *y, int64_t n) {
    return n % 16 == 0 ? dot_f32_sgemm_order(x, y, n) : dot_f32_vec_order(x, y, n);
}

float qt_dot_f32_vec(const float *x, const float *y, int64_t n) {
    return dot_f32_vec_order(x, y, n);
}

static void vec_dot_f32(int64_t n, float *out, const void *vx, const void *vy) {
    *out = qt_dot_f32(vx, vy, n);
}

/* ============================================================================
 * F16
 * ========================================================================== */

static void f16_row_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
}

static void f16_row_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
}

/* Products of two halves are exact in float; ggml sums them in double. */
static void vec_dot_f16(int64_t n, float *out, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += (double)(f16_to_f32(x[i]) * f16_to_f32(y[i]));
    *out = (float)sum;
}

/* ============================================================================
 * BF16
 * ========================================================================== */

static void bf16_row_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *h = src;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
}

static void bf16_row_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
}

static void vec_dot_bf16(int64_t n, float *out, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += (double)(bf16_to_f32(x[i]) * bf16_to_f32(y[i]));
    *out = (float)sum;
}

/* ============================================================================
 * Q4_0: d * (q - 8), q in 0..15
 * ========================================================================== */

static void q4_0_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q4_0 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < QK32 / 2; ++j) {
            dst[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
            dst[j + QK32 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void q4_0_from_float(const float *x, void *dst, int64_t n) {
    struct block_q4_0 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float amax;
        const float max = signed_absmax(QK32, x, &amax);
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        for (int j = 0; j < QK32 / 2; ++j) {
            int q0 = imin(15, (int)(x[j] * id + 8.5f));
            int q1 = imin(15, (int)(x[j + QK32 / 2] * id + 8.5f));
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void vec_dot_q4_0_q8_0(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_0 *x = vx;
    const struct block_q8_0 *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK32 / 2; ++j) {
            sumi += ((x[i].qs[j] & 0x0F) - 8) * y[i].qs[j];
            sumi += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK32 / 2];
        }
        sumf += sumi * f16_to_f32(x[i].d) * f16_to_f32(y[i].d);
    }
    *out = sumf;
}

/* ============================================================================
 * Q4_1: d * q + m, q in 0..15
 * ========================================================================== */

static void q4_1_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q4_1 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d), m = f16_to_f32(b[i].m);
        for (int j = 0; j < QK32 / 2; ++j) {
            const float v0 = (b[i].qs[j] & 0x0F) * d;
            const float v1 = (b[i].qs[j] >> 4) * d;
            dst[j] = v0 + m;
            dst[j + QK32 / 2] = v1 + m;
        }
    }
}

static void min_max(int n, const float *x, float *min_out, float *max_out) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < n; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *min_out = min;
    *max_out = max;
}

static void q4_1_from_float(const float *x, void *dst, int64_t n) {
    struct block_q4_1 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float min, max;
        min_max(QK32, x, &min, &max);
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        b[i].m = f32_to_f16(min);
        for (int j = 0; j < QK32 / 2; ++j) {
            int q0 = imin(15, (int)((x[j] - min) * id + 0.5f));
            int q1 = imin(15, (int)((x[j + QK32 / 2] - min) * id + 0.5f));
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void vec_dot_q4_1_q8_1(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_1 *x = vx;
    const struct block_q8_1 *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK32 / 2; ++j) {
            sumi += (x[i].qs[j] & 0x0F) * y[i].qs[j];
            sumi += (x[i].qs[j] >> 4) * y[i].qs[j + QK32 / 2];
        }
        const float dd = f16_to_f32(x[i].d) * f16_to_f32(y[i].d);
        const float ms = f16_to_f32(x[i].m) * f16_to_f32(y[i].s);
        sumf += dd * sumi + ms;
    }
    *out = sumf;
}

/* ============================================================================
 * llama.cpp's x86 float stage for Q5_0 and the K-quants
 *
 * Its AVX2 kernels (the ones a GGML_NATIVE build on an AVX-512 machine runs for these types)
 * reduce the integer block products to 8 int32 lanes and only then go to float: per block,
 * lane = fma(block scale, (float)lane sum, lane), and one 8-lane horizontal sum at the end.
 * Within every run of 32 consecutive values (one int8 register) lane l holds the products of
 * values 4l..4l+3. The integer sums are exact, so only this partition and the float ops
 * matter; the portable kernels below reproduce both with fmaf, and the AVX2 ones agree with
 * them bit for bit.
 * ========================================================================== */

/* 8-lane horizontal sum: the upper four lanes onto the lower, then (0+2) + (1+3). */
static float qt_hsum8(const float *v) {
    float h[4];
    for (int i = 0; i < 4; ++i) h[i] = v[i] + v[i + 4];
    const float even = h[0] + h[2];
    const float odd = h[1] + h[3];
    return even + odd;
}

/* lanes[l] = sum over the 256 values p with (p % 32) / 4 == l of scale16[p / 16] * a[p] * q8[p]
 * (scale16: one scale per 16 values; a 32-value group repeats its scale twice). */
static void k_lanes(const int8_t *a, const int8_t *q8, const int *scale16, int32_t *lanes) {
    for (int l = 0; l < 8; ++l) lanes[l] = 0;
    for (int p = 0; p < QK_K; ++p) lanes[(p & 31) >> 2] += scale16[p >> 4] * (a[p] * q8[p]);
}

/* ============================================================================
 * Q5_0: d * (q - 16), q in 0..31 (fifth bit in qh)
 * ========================================================================== */

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static int q5_value(const uint8_t *qs, uint32_t qh, int j) {
    int nib = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
    return nib | (int)(((qh >> j) & 1) << 4);
}

static void q5_pack(const uint8_t *q, uint8_t *qs, uint8_t *qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < QK32 / 2; ++j) {
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    memcpy(qh_bytes, &qh, sizeof qh);
}

static void q5_0_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q5_0 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < QK32; ++j) dst[j] = (q5_value(b[i].qs, qh, j) - 16) * d;
    }
}

static void q5_0_from_float(const float *x, void *dst, int64_t n) {
    struct block_q5_0 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float amax;
        const float max = signed_absmax(QK32, x, &amax);
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        uint8_t q[QK32];
        for (int j = 0; j < QK32; ++j) q[j] = (uint8_t)imin(31, (int)(x[j] * id + 16.5f));
        b[i].d = f32_to_f16(d);
        q5_pack(q, b[i].qs, b[i].qh);
    }
}

/* Lane l of a block: values 4l..4l+3; each lane takes fma(dx * dy, sum, lane). */
QT_FMA_CLONES static void vec_dot_q5_0_q8_0(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_0 *x = vx;
    const struct block_q8_0 *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / QK32; ++i) {
        const uint32_t qh = load_u32(x[i].qh);
        const float d = f16_to_f32(x[i].d) * f16_to_f32(y[i].d);
        for (int l = 0; l < 8; ++l) {
            int sum = 0;
            for (int j = 4 * l; j < 4 * l + 4; ++j)
                sum += (q5_value(x[i].qs, qh, j) - 16) * y[i].qs[j];
            acc[l] = fmaf(d, (float)sum, acc[l]);
        }
    }
    *out = qt_hsum8(acc);
}

/* ============================================================================
 * Q5_1: d * q + m, q in 0..31
 * ========================================================================== */

static void q5_1_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q5_1 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d), m = f16_to_f32(b[i].m);
        const uint32_t qh = load_u32(b[i].qh);
        for (int j = 0; j < QK32; ++j) {
            const float v = q5_value(b[i].qs, qh, j) * d;
            dst[j] = v + m;
        }
    }
}

static void q5_1_from_float(const float *x, void *dst, int64_t n) {
    struct block_q5_1 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float min, max;
        min_max(QK32, x, &min, &max);
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        uint8_t q[QK32];
        for (int j = 0; j < QK32; ++j) q[j] = (uint8_t)(int)((x[j] - min) * id + 0.5f);
        b[i].d = f32_to_f16(d);
        b[i].m = f32_to_f16(min);
        q5_pack(q, b[i].qs, b[i].qh);
    }
}

static void vec_dot_q5_1_q8_1(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_1 *x = vx;
    const struct block_q8_1 *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK32; ++j) sumi += q5_value(x[i].qs, qh, j) * y[i].qs[j];
        const float dd = f16_to_f32(x[i].d) * f16_to_f32(y[i].d);
        const float ms = f16_to_f32(x[i].m) * f16_to_f32(y[i].s);
        sumf += dd * sumi + ms;
    }
    *out = sumf;
}

/* ============================================================================
 * Q8_0: d * q. Weights use ggml's reference quantizer (1/d, roundf); activations the x86
 * AVX one (127/amax, round half to even), which llama.cpp's CPU backend runs.
 * ========================================================================== */

static void q8_0_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < QK32; ++j) dst[j] = b[i].qs[j] * d;
    }
}

/* A comparison rather than fmaxf: the same result here (amax never becomes NaN either way),
 * and the compiler vectorizes it; fmaxf was a libm call per value (1% of decode). */
static float absmax(int n, const float *x) {
    float amax = 0;
    for (int j = 0; j < n; ++j) {
        const float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    return amax;
}

static void q8_0_from_float(const float *x, void *dst, int64_t n) {
    struct block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        const float d = absmax(QK32, x) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        for (int j = 0; j < QK32; ++j) b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* The x86 activation rounding: returns sum(q) for Q8_1's s. */
static int q8_act_block(const float *x, int8_t *qs, float *d_out) {
    const float amax = absmax(QK32, x);
    const float d = amax / 127.f;
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < QK32; ++j) {
        qs[j] = (int8_t)nearest_int(x[j] * id);
        sum += qs[j];
    }
    *d_out = d;
    return sum;
}

static void q8_0_from_float_act(const float *x, void *dst, int64_t n) {
    struct block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float d;
        q8_act_block(x, b[i].qs, &d);
        b[i].d = f32_to_f16(d);
    }
}

static void vec_dot_q8_0_q8_0(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q8_0 *x = vx, *y = vy;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        int sumi = 0;
        for (int j = 0; j < QK32; ++j) sumi += x[i].qs[j] * y[i].qs[j];
        sumf += sumi * (f16_to_f32(x[i].d) * f16_to_f32(y[i].d));
    }
    *out = sumf;
}

/* ============================================================================
 * Q8_1: activation partner of Q4_1/Q5_1; s = d * sum(q) carries the min term.
 * ========================================================================== */

static void q8_1_to_float(const void *src, float *dst, int64_t n) {
    const struct block_q8_1 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < QK32; ++j) dst[j] = b[i].qs[j] * d;
    }
}

static void q8_1_from_float(const float *x, void *dst, int64_t n) {
    struct block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        const float d = absmax(QK32, x) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK32; ++j) {
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += b[i].qs[j];
        }
        b[i].d = f32_to_f16(d);
        b[i].s = f32_to_f16(sum * d);
    }
}

static void q8_1_from_float_act(const float *x, void *dst, int64_t n) {
    struct block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK32; ++i, x += QK32) {
        float d;
        int sum = q8_act_block(x, b[i].qs, &d);
        b[i].d = f32_to_f16(d);
        b[i].s = f32_to_f16(d * sum);
    }
}

/* ============================================================================
 * Q2_K: 16 groups of 16, x = d*sc*q - dmin*m with 4-bit sc, m and 2-bit q
 * ========================================================================== */

static void q2_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q2_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = f16_to_f32(b[i].d), min = f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        int is = 0;
        for (int half = 0; half < 2; ++half, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int part = 0; part < 2; ++part) {
                    const uint8_t sc = b[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) {
                        const float v = dl * ((q[l + 16 * part] >> shift) & 3);
                        *y++ = v - ml;
                    }
                }
            }
        }
    }
}

static void q2_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q2_K *b = dst;
    const float q4scale = 15.f;
    const struct qkx_params p = {3, -0.5f, 0.1f, 15, 1};
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        uint8_t L[QK_K], Laux[16];
        float w[16], mins[16], scales[16];
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 16; ++j) {
            for (int l = 0; l < 16; ++l) w[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, x + 16 * j, w, L + 16 * j, &mins[j], Laux, &p);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        memset(b[i].scales, 0, sizeof b[i].scales);
        b[i].d = f32_to_f16(0.f);
        b[i].dmin = f32_to_f16(0.f);
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < 16; ++j) b[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            b[i].d = f32_to_f16(max_scale / q4scale);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < 16; ++j)
                b[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            b[i].dmin = f32_to_f16(max_min / q4scale);
        }
        for (int j = 0; j < 16; ++j) {
            const float d = f16_to_f32(b[i].d) * (b[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = f16_to_f32(b[i].dmin) * (b[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (uint8_t)iclamp(nearest_int((x[16 * j + ii] + dm) / d), 0, 3);
        }
        pack_2bit(L, b[i].qs);
    }
}

/* The 256 levels (0..3) of a Q2_K block in value order, and its 16 scales and mins. */
static void q2_K_levels(const struct block_q2_K *b, int8_t *a) {
    const uint8_t *q = b->qs;
    for (int half = 0; half < 2; ++half, q += 32)
        for (int shift = 0; shift < 8; shift += 2, a += 32)
            for (int l = 0; l < 32; ++l) a[l] = (int8_t)((q[l] >> shift) & 3);
}

/* Q2_K's min term, per block before the scale term, in the 8 lanes: lane l takes groups 2l
 * and 2l+1 (min * bsum, summed as integers), scaled by -y.d * dmin. */
static void q2_K_block_ints(const struct block_q2_K *x, const struct block_q8_K *y, int8_t *a,
                            int *scale16, int32_t *min_lanes) {
    q2_K_levels(x, a);
    for (int g = 0; g < 16; ++g) scale16[g] = x->scales[g] & 0xF;
    for (int l = 0; l < 8; ++l)
        min_lanes[l] = (x->scales[2 * l] >> 4) * y->bsums[2 * l] +
                       (x->scales[2 * l + 1] >> 4) * y->bsums[2 * l + 1];
}

QT_FMA_CLONES static void vec_dot_q2_K_q8_K(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q2_K *x = vx;
    const struct block_q8_K *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = y[i].d * f16_to_f32(x[i].d);
        const float dmin = -y[i].d * f16_to_f32(x[i].dmin);
        int8_t a[QK_K];
        int scale16[16];
        int32_t mins[8], lanes[8];
        q2_K_block_ints(&x[i], &y[i], a, scale16, mins);
        k_lanes(a, y[i].qs, scale16, lanes);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(dmin, (float)mins[l], acc[l]);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    *out = qt_hsum8(acc);
}

/* ============================================================================
 * Q3_K: 16 groups of 16, x = d*(sc-32)*(q-4), q = 2 low bits + high bit from hmask
 * ========================================================================== */

/* The 256 signed levels (-4..3) of a Q3_K block, in value order. */
static void q3_K_levels(const struct block_q3_K *b, int8_t *a) {
    const uint8_t *q = b->qs;
    uint8_t m = 1;
    for (int half = 0; half < 2; ++half, q += 32) {
        for (int shift = 0; shift < 8; shift += 2, m <<= 1, a += 32) {
            for (int l = 0; l < 32; ++l)
                a[l] = (int8_t)(((q[l] >> shift) & 3) - ((b->hmask[l] & m) ? 0 : 4));
        }
    }
}

static void q3_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q3_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d_all = f16_to_f32(b[i].d);
        int8_t a[QK_K];
        q3_K_levels(&b[i], a);
        /* ggml walks scales in the order of its 2-bit planes: 16 values per scale */
        for (int j = 0; j < 16; ++j) {
            const float dl = d_all * q3k_scale(b[i].scales, j);
            for (int l = 0; l < 16; ++l) y[16 * j + l] = dl * a[16 * j + l];
        }
        y += QK_K;
    }
}

static void q3_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q3_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        int8_t L[QK_K];
        float scales[16];
        float max_scale = 0, amax = 0;
        for (int j = 0; j < 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }
        memset(b[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < 16; ++j) {
                int8_t l8 = (int8_t)nearest_int(iscale * scales[j]);
                int l = iclamp(l8, -32, 31) + 32;
                if (j < 8)
                    b[i].scales[j] = (uint8_t)(l & 0xF);
                else
                    b[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                b[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            b[i].d = f32_to_f16(1 / iscale);
        } else {
            b[i].d = f32_to_f16(0.f);
        }
        for (int j = 0; j < 16; ++j) {
            const float d = f16_to_f32(b[i].d) * q3k_scale(b[i].scales, j);
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (int8_t)(iclamp(nearest_int(x[16 * j + ii] / d), -4, 3) + 4);
        }
        memset(b[i].hmask, 0, sizeof b[i].hmask);
        uint8_t Lu[QK_K];
        for (int j = 0; j < QK_K; ++j) {
            /* high bit of value j goes to byte j%32, bit j/32 */
            if (L[j] > 3) b[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            Lu[j] = (uint8_t)(L[j] > 3 ? L[j] - 4 : L[j]);
        }
        pack_2bit(Lu, b[i].qs);
    }
}

/* Block scale times the 8 lanes, no min term (Q3_K, Q6_K). */
QT_FMA_CLONES static void k_acc_lanes(float d, const int32_t *lanes, float *acc) {
    for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
}

static void q3_K_block_ints(const struct block_q3_K *x, int8_t *a, int *scale16) {
    q3_K_levels(x, a);
    for (int g = 0; g < 16; ++g) scale16[g] = q3k_scale(x->scales, g);
}

static void vec_dot_q3_K_q8_K(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q3_K *x = vx;
    const struct block_q8_K *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int8_t a[QK_K];
        int scale16[16];
        int32_t lanes[8];
        q3_K_block_ints(&x[i], a, scale16);
        k_lanes(a, y[i].qs, scale16, lanes);
        k_acc_lanes(y[i].d * f16_to_f32(x[i].d), lanes, acc);
    }
    *out = qt_hsum8(acc);
}

/* ============================================================================
 * Q4_K: 8 groups of 32, x = d*sc*q - dmin*m with 6-bit sc, m and 4-bit q
 * ========================================================================== */

static void q4_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q4_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = f16_to_f32(b[i].d), min = f16_to_f32(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int j = 0; j < 8; j += 2, q += 32) {
            uint8_t sc, m;
            k4_get_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            k4_get_scale_min(j + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) {
                const float v = d1 * (q[l] & 0xF);
                *y++ = v - m1;
            }
            for (int l = 0; l < 32; ++l) {
                const float v = d2 * (q[l] >> 4);
                *y++ = v - m2;
            }
        }
    }
}

static void q4_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q4_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        uint8_t L[QK_K];
        k4_quantize_superblock(x, L, 15, -1.f, 20, &b[i].d, &b[i].dmin, b[i].scales);
        uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* Levels and per-16 scales of a Q4_K/Q5_K block (levels filled by the caller's unpacker),
 * and the min terms: mins[g] * (bsums[2g] + bsums[2g+1]) for the 8 groups. */
static void k4_block_scales(const uint8_t *packed, const int16_t *bsums, int *scale16,
                            int32_t *min_terms) {
    for (int g = 0; g < 8; ++g) {
        uint8_t sc, m;
        k4_get_scale_min(g, packed, &sc, &m);
        scale16[2 * g] = scale16[2 * g + 1] = sc;
        min_terms[g] = m * (bsums[2 * g] + bsums[2 * g + 1]);
    }
}

static void q4_K_levels(const struct block_q4_K *b, int8_t *a) {
    const uint8_t *q4 = b->qs;
    for (int j = 0; j < QK_K; j += 64, q4 += 32) {
        for (int l = 0; l < 32; ++l) a[j + l] = (int8_t)(q4[l] & 0xF);
        for (int l = 0; l < 32; ++l) a[j + 32 + l] = (int8_t)(q4[l] >> 4);
    }
}

/* Q4_K's min term goes to a 4-lane accumulator of its own (lane l: groups 2l, 2l+1), folded
 * as (0+2) + (1+3) and added after the 8-lane sum. */
QT_FMA_CLONES static void vec_dot_q4_K_q8_K(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_K *x = vx;
    const struct block_q8_K *y = vy;
    float acc[8] = {0}, acc_m[4] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = y[i].d * f16_to_f32(x[i].d);
        const float dmin = -y[i].d * f16_to_f32(x[i].dmin);
        int8_t a[QK_K];
        int scale16[16];
        int32_t mins[8], lanes[8];
        q4_K_levels(&x[i], a);
        k4_block_scales(x[i].scales, y[i].bsums, scale16, mins);
        for (int l = 0; l < 4; ++l) {
            const int32_t m = mins[2 * l] + mins[2 * l + 1];
            acc_m[l] = fmaf(dmin, (float)m, acc_m[l]);
        }
        k_lanes(a, y[i].qs, scale16, lanes);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    const float m02 = acc_m[0] + acc_m[2];
    const float m13 = acc_m[1] + acc_m[3];
    const float msum = m02 + m13;
    *out = qt_hsum8(acc) + msum;
}

/* ============================================================================
 * Q5_K: Q4_K plus a fifth bit per value in qh
 * ========================================================================== */

static void q5_K_levels(const struct block_q5_K *b, int8_t *a) {
    const uint8_t *ql = b->qs;
    uint8_t m = 1;
    for (int j = 0; j < QK_K; j += 64, ql += 32) {
        for (int l = 0; l < 32; ++l) a[j + l] = (int8_t)((ql[l] & 0xF) + (b->qh[l] & m ? 16 : 0));
        m <<= 1;
        for (int l = 0; l < 32; ++l)
            a[j + 32 + l] = (int8_t)((ql[l] >> 4) + (b->qh[l] & m ? 16 : 0));
        m <<= 1;
    }
}

static void q5_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q5_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const float d = f16_to_f32(b[i].d), min = f16_to_f32(b[i].dmin);
        int8_t a[QK_K];
        q5_K_levels(&b[i], a);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            k4_get_scale_min(j, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            for (int l = 0; l < 32; ++l) {
                const float v = d1 * a[32 * j + l];
                y[32 * j + l] = v - m1;
            }
        }
    }
}

static void q5_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q5_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        uint8_t L[QK_K];
        k4_quantize_superblock(x, L, 31, -0.5f, 15, &b[i].d, &b[i].dmin, b[i].scales);
        uint8_t *ql = b[i].qs;
        memset(b[i].qh, 0, sizeof b[i].qh);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < QK_K; j += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int l = 0; l < 32; ++l) {
                int l1 = L[j + l], l2 = L[j + l + 32];
                if (l1 > 15) b[i].qh[l] |= m1;
                if (l2 > 15) b[i].qh[l] |= m2;
                ql[l] = (uint8_t)((l1 & 0xF) | ((l2 & 0xF) << 4));
            }
        }
    }
}

/* Q5_K's min term: one integer per block, fma'd into a scalar added after the 8-lane sum. */
QT_FMA_CLONES static void vec_dot_q5_K_q8_K(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_K *x = vx;
    const struct block_q8_K *y = vy;
    float acc[8] = {0}, summs = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = y[i].d * f16_to_f32(x[i].d);
        const float dmin = -y[i].d * f16_to_f32(x[i].dmin);
        int8_t a[QK_K];
        int scale16[16];
        int32_t mins[8], lanes[8];
        q5_K_levels(&x[i], a);
        k4_block_scales(x[i].scales, y[i].bsums, scale16, mins);
        int32_t m = 0;
        for (int g = 0; g < 8; ++g) m += mins[g];
        summs = fmaf(dmin, (float)m, summs);
        k_lanes(a, y[i].qs, scale16, lanes);
        for (int l = 0; l < 8; ++l) acc[l] = fmaf(d, (float)lanes[l], acc[l]);
    }
    *out = qt_hsum8(acc) + summs;
}

/* ============================================================================
 * Q6_K: 16 groups of 16, x = d*sc*(q-32) with int8 sc and 6-bit q (4 in ql, 2 in qh)
 * ========================================================================== */

static void q6_K_levels(const struct block_q6_K *b, int8_t *a) {
    const uint8_t *ql = b->ql, *qh = b->qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32, a += 128) {
        for (int l = 0; l < 32; ++l) {
            a[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            a[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            a[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            a[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
        }
    }
}

static void q6_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q6_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const float d = f16_to_f32(b[i].d);
        int8_t a[QK_K];
        q6_K_levels(&b[i], a);
        for (int l = 0; l < QK_K; ++l) {
            const float ds = d * b[i].scales[l / 16];
            y[l] = ds * a[l];
        }
    }
}

static void q6_K_pack(const int8_t *L, struct block_q6_K *b) {
    uint8_t *ql = b->ql, *qh = b->qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
            ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

static void q6_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q6_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        int8_t L[QK_K];
        float scales[16];
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < 16; ++ib) {
            scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            const float abs_scale = fabsf(scales[ib]);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&b[i], 0, sizeof b[i]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        b[i].d = f32_to_f16(1 / iscale);
        for (int ib = 0; ib < 16; ++ib)
            b[i].scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < 16; ++j) {
            const float d = f16_to_f32(b[i].d) * b[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (int8_t)(iclamp(nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
        }
        q6_K_pack(L, &b[i]);
    }
}

/* Q6_K: the lanes take the unsigned levels (0..63), and the -32 offset leaves them per pair of
 * groups: lane l loses 32 * (sc[2l] * bsums[2l] + sc[2l+1] * bsums[2l+1]). */
static void q6_K_block_ints(const struct block_q6_K *x, const struct block_q8_K *y, int8_t *a,
                            int *scale16, int32_t *offset_lanes) {
    q6_K_levels(x, a);
    for (int p = 0; p < QK_K; ++p) a[p] = (int8_t)(a[p] + 32);
    for (int g = 0; g < 16; ++g) scale16[g] = x->scales[g];
    for (int l = 0; l < 8; ++l)
        offset_lanes[l] =
            32 * (scale16[2 * l] * y->bsums[2 * l] + scale16[2 * l + 1] * y->bsums[2 * l + 1]);
}

static void vec_dot_q6_K_q8_K(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q6_K *x = vx;
    const struct block_q8_K *y = vy;
    float acc[8] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int8_t a[QK_K];
        int scale16[16];
        int32_t lanes[8], offs[8];
        q6_K_block_ints(&x[i], &y[i], a, scale16, offs);
        k_lanes(a, y[i].qs, scale16, lanes);
        for (int l = 0; l < 8; ++l) lanes[l] -= offs[l];
        k_acc_lanes(y[i].d * f16_to_f32(x[i].d), lanes, acc);
    }
    *out = qt_hsum8(acc);
}

/* ============================================================================
 * Q8_K: activation partner of the K-quants; float d, -127..127 levels, 16-value sums.
 * x86 ggml-cpu uses the reference quantizer for it.
 * ========================================================================== */

static void q8_K_to_float(const void *src, float *y, int64_t n) {
    const struct block_q8_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i)
        for (int j = 0; j < QK_K; ++j) *y++ = b[i].d * b[i].qs[j];
}

static void q8_K_from_float(const float *x, void *dst, int64_t n) {
    struct block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float amax;
        const float max = signed_absmax(QK_K, x, &amax);
        memset(b[i].bsums, 0, sizeof b[i].bsums);
        if (!amax) {
            b[i].d = 0;
            memset(b[i].qs, 0, QK_K);
            continue;
        }
        /* -127 rather than -128 so that no level is -128 (ggml's choice for its SIMD dots) */
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) b[i].qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += b[i].qs[j * 16 + ii];
            b[i].bsums[j] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}

/* ============================================================================
 * AVX2 dot products, chosen at run time. Same integer block products as the scalar
 * kernels. Q5_0 and the K-quants also share their float stage (bit-identical); for
 * Q4_0/Q4_1/Q5_1/Q8_0 the order differs (8 lanes, FMA, as llama.cpp), within ~1e-6 relative.
 * ========================================================================== */

#if QT_X86 && (defined(__GNUC__) || defined(__clang__))
#define QT_HAVE_AVX2_KERNELS 1
#define QT_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

/* Q8_0's tile: weights used for 4 tokens, activations for 2 rows, 8 accumulators. Q4_K's and
 * Q5_0's: one row's levels and scales unpacked once for 4 tokens. */
enum { Q8_0_TILE_ROWS = 2, Q8_0_TILE_TOKS = 4, Q4_K_TILE_TOKS = 4, Q5_0_TILE_TOKS = 4 };

#if QT_HAVE_AVX2_KERNELS

/* Calling non-VEX code (f16_to_f32) between AVX instructions costs state transitions on
 * many CPUs; F16C converts in place and exactly (subnormals included). */
QT_AVX2 static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

QT_AVX2 static float hsum_f32x4(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

QT_AVX2 static float hsum_f32x8(__m256 v) {
    return hsum_f32x4(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

/* Decode reads each weight once, row after row: asking for the bytes 2 KiB ahead keeps the
 * loads fed where the hardware prefetcher alone left a single thread at ~70% of the read
 * bandwidth. 2 KiB beat 1 KiB (Q8_0 decode +5-10%) and 3-4 KiB; for the Q4_K, Q5_0 and Q6_K
 * kernels it gave +3-6% on the V2-Lite-shaped Q4_K_M decode. Integer arithmetic: the address
 * may lie past the row, and a prefetch never faults. */
QT_AVX2 static inline void prefetch_ahead(const void *p) {
    _mm_prefetch((const char *)((uintptr_t)p + 2048), _MM_HINT_T0);
}

/* prefetch_ahead for every cache line a block of `bytes` may touch (K-quant blocks span 3-4). */
QT_AVX2 static inline void prefetch_block(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) prefetch_ahead((const uint8_t *)p + o);
}

/* Signed int8 x int8 products summed in pairs then quads into 8 int32 lanes, with |x| (ax)
 * given: a tile forms it once for several y. */
QT_AVX2 static __m256i dot_i8x32_abs(__m256i ax, __m256i x, __m256i y) {
    const __m256i p16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

QT_AVX2 static __m256i dot_i8x32(__m256i x, __m256i y) {
    return dot_i8x32_abs(_mm256_sign_epi8(x, x), x, y);
}

QT_AVX2 static __m256i unpack_nibbles_32(const uint8_t *p) {
    /* the 16 bytes in both halves by a load (no shuffle), the high half shifted by a nibble:
     * one vector op where shift and insert took two (Q5_0 vec_dot +6-13%) */
    const __m256i both =
        _mm256_srlv_epi64(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                          _mm256_set_epi64x(4, 4, 0, 0));
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

QT_AVX2 static void vec_dot_q8_0_q8_0_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q8_0 *x = vx, *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK32; ++i) {
        prefetch_ahead(&x[i]);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        const __m256i qx = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(qx, qy)), acc);
    }
    *out = hsum_f32x8(acc);
}

QT_AVX2 static void vec_dot_q8_0_tile_avx2(int64_t n, const void *vx, size_t x_stride,
                                           const void *vy, size_t y_stride, float *out,
                                           int64_t out_stride) {
    const struct block_q8_0 *x[Q8_0_TILE_ROWS], *y[Q8_0_TILE_TOKS];
    for (int r = 0; r < Q8_0_TILE_ROWS; r++)
        x[r] = (const struct block_q8_0 *)((const uint8_t *)vx + (size_t)r * x_stride);
    for (int t = 0; t < Q8_0_TILE_TOKS; t++)
        y[t] = (const struct block_q8_0 *)((const uint8_t *)vy + (size_t)t * y_stride);
    __m256 acc[Q8_0_TILE_ROWS][Q8_0_TILE_TOKS];
    for (int r = 0; r < Q8_0_TILE_ROWS; r++)
        for (int t = 0; t < Q8_0_TILE_TOKS; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK32; ++i) {
        __m256i qx[Q8_0_TILE_ROWS], ax[Q8_0_TILE_ROWS];
        float dx[Q8_0_TILE_ROWS];
        for (int r = 0; r < Q8_0_TILE_ROWS; r++) {
            qx[r] = _mm256_loadu_si256((const __m256i *)x[r][i].qs);
            ax[r] = _mm256_sign_epi8(qx[r], qx[r]);
            dx[r] = h2f(x[r][i].d);
        }
        for (int t = 0; t < Q8_0_TILE_TOKS; t++) {
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y[t][i].qs);
            const float dy = h2f(y[t][i].d);
            for (int r = 0; r < Q8_0_TILE_ROWS; r++) {
                const __m256i p32 = dot_i8x32_abs(ax[r], qx[r], qy);
                acc[r][t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(dx[r] * dy), _mm256_cvtepi32_ps(p32), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < Q8_0_TILE_ROWS; r++)
        for (int t = 0; t < Q8_0_TILE_TOKS; t++) out[t * out_stride + r] = hsum_f32x8(acc[r][t]);
}

QT_AVX2 static void vec_dot_q4_0_q8_0_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_0 *x = vx;
    const struct block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK32; ++i) {
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        const __m256i qx = _mm256_sub_epi8(unpack_nibbles_32(x[i].qs), _mm256_set1_epi8(8));
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(qx, qy)), acc);
    }
    *out = hsum_f32x8(acc);
}

/* 0xFF in byte j of the result where bit j of the 32-bit mask is set. */
QT_AVX2 static __m256i expand_bits_32(const uint8_t *bits) {
    uint32_t m;
    memcpy(&m, bits, sizeof m);
    /* byte j takes byte j/8 of m (shuffles stay within 128-bit halves; every 4 bytes hold m) */
    const __m256i which =
        _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), which);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/* Unsigned levels times signed activations, summed over 4 neighbours into 8 float lanes. */
QT_AVX2 static __m256 dot_u8i8_quads(__m256i u, __m256i s) {
    const __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* Q4_1/Q5_1 times Q8_1 with llama.cpp's x86 order: per-lane FMA of the block scale product,
 * the min terms summed apart and added last. Its rounding, not the portable one, is what the
 * reference logits carry. */
QT_AVX2 static void vec_dot_q4_1_q8_1_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_1 *x = vx;
    const struct block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        summs += h2f(x[i].m) * h2f(y[i].s);
        const __m256 dd = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(dd, dot_u8i8_quads(unpack_nibbles_32(x[i].qs), qy), acc);
    }
    *out = hsum_f32x8(acc) + summs;
}

QT_AVX2 static void vec_dot_q5_1_q8_1_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_1 *x = vx;
    const struct block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        summs += h2f(x[i].m) * h2f(y[i].s);
        const __m256i hi = _mm256_and_si256(expand_bits_32(x[i].qh), _mm256_set1_epi8(0x10));
        const __m256i qx = _mm256_or_si256(unpack_nibbles_32(x[i].qs), hi);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        const __m256 dd = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        acc = _mm256_fmadd_ps(dot_u8i8_quads(qx, qy), dd, acc);
    }
    *out = hsum_f32x8(acc) + summs;
}

/* Q5_0's 32 levels as unsigned bytes: nibble + 16 * high bit. */
QT_AVX2 static __m256i q5_0_levels_u(const struct block_q5_0 *b) {
    const __m256i hi = _mm256_and_si256(expand_bits_32(b->qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(unpack_nibbles_32(b->qs), hi);
}

/* Q5_0's 32 levels as int8: nibble + 16 * high bit - 16. */
QT_AVX2 static __m256i q5_0_levels(const struct block_q5_0 *b) {
    return _mm256_sub_epi8(q5_0_levels_u(b), _mm256_set1_epi8(16));
}

/* Q5_0 in the portable kernel's lanes: levels nibble + 16 * high bit - 16 as int8, quads of
 * products per lane, fma with dx * dy. */
QT_AVX2 static void vec_dot_q5_0_q8_0_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_0 *x = vx;
    const struct block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK32; ++i) {
        prefetch_ahead(&x[i]);
        const __m256 d = _mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d));
        const __m256i qx = q5_0_levels(&x[i]);
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(qx, qy)), acc);
    }
    *out = hsum_f32x8(acc);
}

/* Q5_0 rows times one Q8_0 activation row, two rows at a time: levels taken unsigned
 * (nibble + 16 * high bit), so no sign shuffles, and 16 times the activations' quad sums
 * taken off once per block for both rows; the integer lanes, hence the bits, are those of
 * vec_dot_q5_0_q8_0_avx2. From L2 one thread ran 8.9 -> 10.7 GB/s, from memory 8.2 -> 9.0. */
QT_AVX2 static void vec_dot_q5_0_rows_avx2(int64_t n, const void *vx, size_t x_stride,
                                           const void *vy, float *out, int64_t n_rows) {
    const struct block_q8_0 *y = vy;
    const __m256i ones = _mm256_set1_epi16(1), bit4 = _mm256_set1_epi8(0x10);
    int64_t r = 0;
    for (; r + 1 < n_rows; r += 2) {
        const struct block_q5_0 *x0 = (const void *)((const uint8_t *)vx + (size_t)r * x_stride);
        const struct block_q5_0 *x1 = (const void *)((const uint8_t *)x0 + x_stride);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
        for (int64_t i = 0; i < n / QK32; ++i) {
            prefetch_ahead(&x0[i]);
            prefetch_ahead(&x1[i]);
            const float dy = h2f(y[i].d);
            const __m256i qy = _mm256_loadu_si256((const __m256i *)y[i].qs);
            const __m256i offset = _mm256_madd_epi16(_mm256_maddubs_epi16(bit4, qy), ones);
            const __m256i p0 = _mm256_sub_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(q5_0_levels_u(&x0[i]), qy), ones), offset);
            const __m256i p1 = _mm256_sub_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(q5_0_levels_u(&x1[i]), qy), ones), offset);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x0[i].d) * dy), _mm256_cvtepi32_ps(p0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x1[i].d) * dy), _mm256_cvtepi32_ps(p1), acc1);
        }
        out[r] = hsum_f32x8(acc0);
        out[r + 1] = hsum_f32x8(acc1);
    }
    if (r < n_rows)
        vec_dot_q5_0_q8_0_avx2(n, &out[r], (const uint8_t *)vx + (size_t)r * x_stride, vy);
}

/* vec_dot_q5_0_q8_0_avx2 for one row and Q5_0_TILE_TOKS activation rows: the same steps and
 * order for every pair, with the row's unpacking (about half of a pair's instructions) shared. */
QT_AVX2 static void vec_dot_q5_0_tile_avx2(int64_t n, const void *vx, size_t x_stride,
                                           const void *vy, size_t y_stride, float *out,
                                           int64_t out_stride) {
    (void)x_stride; /* one row per tile */
    const struct block_q5_0 *x = vx;
    const struct block_q8_0 *y[Q5_0_TILE_TOKS];
    for (int t = 0; t < Q5_0_TILE_TOKS; t++)
        y[t] = (const struct block_q8_0 *)((const uint8_t *)vy + (size_t)t * y_stride);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t i = 0; i < n / QK32; ++i) {
        const float dx = h2f(x[i].d);
        const __m256i qx = q5_0_levels(&x[i]);
        const __m256i ax = _mm256_sign_epi8(qx, qx);
#define Q5_0_PAIR(t)                                                                               \
    {                                                                                              \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y[t][i].qs);                        \
        const __m256i p32 = dot_i8x32_abs(ax, qx, qy);                                             \
        acc##t =                                                                                   \
            _mm256_fmadd_ps(_mm256_set1_ps(dx * h2f(y[t][i].d)), _mm256_cvtepi32_ps(p32), acc##t); \
    }
        Q5_0_PAIR(0) Q5_0_PAIR(1) Q5_0_PAIR(2) Q5_0_PAIR(3)
#undef Q5_0_PAIR
    }
    out[0] = hsum_f32x8(acc0);
    out[out_stride] = hsum_f32x8(acc1);
    out[2 * out_stride] = hsum_f32x8(acc2);
    out[3 * out_stride] = hsum_f32x8(acc3);
}

/* k_lanes of the portable kernels: for each 32-value run, signed levels (never -128) times
 * q8 summed in pairs (|sum| <= 2 * 32 * 127, no int16 saturation), then pairs of pairs
 * weighted by the scale of their 16-value group, so int32 lane l gets values 4l..4l+3. */
QT_AVX2 static __m256i k_lanes_avx2_i32(const int8_t *a, const int8_t *q8, const int *scale16) {
    __m256i acc = _mm256_setzero_si256();
    for (int c = 0; c < QK_K / 32; ++c) {
        const __m256i va = _mm256_loadu_si256((const __m256i *)(a + 32 * c));
        const __m256i vq = _mm256_loadu_si256((const __m256i *)(q8 + 32 * c));
        const __m256i p16 =
            _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vq, va));
        const __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)scale16[2 * c + 1]),
                                            _mm_set1_epi16((short)scale16[2 * c]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc));
    }
    return acc;
}

QT_AVX2 static __m256 k_lanes_avx2(const int8_t *a, const int8_t *q8, const int *scale16) {
    return _mm256_cvtepi32_ps(k_lanes_avx2_i32(a, q8, scale16));
}

QT_AVX2 static __m256 load_lanes_ps(const int32_t *v) {
    return _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)v));
}

QT_AVX2 static void vec_dot_q2_K_q8_K_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q2_K *x = vx;
    const struct block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = y[i].d * h2f(x[i].d);
        const float dmin = -y[i].d * h2f(x[i].dmin);
        int8_t a[QK_K];
        int scale16[16];
        int32_t mins[8];
        q2_K_block_ints(&x[i], &y[i], a, scale16, mins);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), load_lanes_ps(mins), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), k_lanes_avx2(a, y[i].qs, scale16), acc);
    }
    *out = hsum_f32x8(acc);
}

QT_AVX2 static void vec_dot_q3_K_q8_K_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q3_K *x = vx;
    const struct block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int8_t a[QK_K];
        int scale16[16];
        q3_K_block_ints(&x[i], a, scale16);
        const __m256 d = _mm256_set1_ps(y[i].d * h2f(x[i].d));
        acc = _mm256_fmadd_ps(d, k_lanes_avx2(a, y[i].qs, scale16), acc);
    }
    *out = hsum_f32x8(acc);
}

/* Byte shuffles that put int16 element e of a 128-bit half in all its lanes: PICK(e, f) takes
 * e in the low half and f in the high one. They live in memory on purpose: built in registers
 * (4 instructions each), the K-quant kernels ran out of the 16 ymm registers and rebuilt them
 * for every block. */
#define PICK_2(e) 2 * (e), 2 * (e) + 1
#define PICK_8(e) PICK_2(e), PICK_2(e), PICK_2(e), PICK_2(e)
#define PICK(e, f)                                                                                 \
    { PICK_8(e), PICK_8(e), PICK_8(f), PICK_8(f) }
enum { PICK_PAIR = 8 }; /* masks PICK_PAIR + p: (2p, 2p + 1); masks e < 8: (e, e) */
static const uint8_t pick_masks[12][32] __attribute__((aligned(32))) = {
    PICK(0, 0), PICK(1, 1), PICK(2, 2), PICK(3, 3), PICK(4, 4), PICK(5, 5),
    PICK(6, 6), PICK(7, 7), PICK(0, 1), PICK(2, 3), PICK(4, 5), PICK(6, 7)};

QT_AVX2 static __m256i pick_i16(__m256i v, int mask) {
    return _mm256_shuffle_epi8(v, _mm256_load_si256((const __m256i *)pick_masks[mask]));
}

/* The 8 scales and 8 mins of a Q4_K/Q5_K block as bytes 0..7 and 8..15 (the values
 * k4_get_scale_min gives one at a time), by dword shuffles and shifts on the 12 packed bytes
 * w0 w1 w2: scales 0-3 are w0's low 6 bits per byte, 4-7 w2's low nibbles under w0's top 2
 * bits; mins alike from w1 and w2's high nibbles. 8 instructions where the word-by-word
 * form took about 25 (a fifth of the Q4_K kernel). Reads 16 bytes: the 4 past the scales
 * are the block's next field, unused. */
QT_AVX2 static __m128i k4_scales_mins(const uint8_t *q) {
    const __m128i w = _mm_loadu_si128((const __m128i *)q);
    const __m128i low = _mm_srlv_epi32(_mm_shuffle_epi32(w, _MM_SHUFFLE(2, 1, 2, 0)),
                                       _mm_set_epi32(4, 0, 0, 0)); /* w0, w2, w1, w2 >> 4 */
    const __m128i top = _mm_srli_epi32(_mm_shuffle_epi32(w, _MM_SHUFFLE(1, 1, 0, 0)), 2);
    return _mm_or_si128(
        _mm_and_si128(low, _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f)),
        _mm_and_si128(top, _mm_set_epi32(0x30303030, 0, 0x30303030, 0)));
}

/* The 8 unsigned group scales (k4_scales_mins' low half) as int16, in both 128-bit halves. */
QT_AVX2 static __m256i k4_scales16(__m128i scales_mins) {
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scales_mins));
}

/* Run 64j..64j+63 of a Q4_K/Q5_K block: the low and high nibble planes times their 32
 * activations (pairs by maddubs), times the runs' group scales 2j and 2j+1 (quads by madd). */
QT_AVX2 static __m256i k4_run_lanes(__m256i lo, __m256i hi, const int8_t *q8, __m256i scales,
                                    int j) {
    const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
    const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
    return _mm256_add_epi32(_mm256_madd_epi16(p_lo, pick_i16(scales, 2 * j)),
                            _mm256_madd_epi16(p_hi, pick_i16(scales, 2 * j + 1)));
}

/* Q4_K in llama.cpp's x86 arrangement, fully in registers: per 64 values, k4_run_lanes, so
 * int32 lane k holds values 4k..4k+3 of each 32-value run, as k_lanes defines. */
QT_AVX2 static __m256i k4_block_lanes(const uint8_t *qs, const uint8_t *qh, const int8_t *q8,
                                      __m256i scales) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const __m256i high = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < QK_K / 64; ++j) {
        const __m256i raw = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m256i lo = _mm256_and_si256(raw, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
        if (qh) { /* Q5_K: bit 2j of qh[l] is value 64j + l's fifth bit, bit 2j+1 the next 32 */
            lo = _mm256_or_si256(
                lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * j), one), 4));
            hi = _mm256_or_si256(
                hi,
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2 * j + 1), one), 4));
        }
        sumi = _mm256_add_epi32(sumi, k4_run_lanes(lo, hi, q8 + 64 * j, scales, j));
    }
    return sumi;
}

/* mins[2k] + mins[2k+1] in int32 lane k, where mins[g] = min g times the activations' sum
 * over its 32 values (pairs of 16-value bsums; each pair fits int16). */
QT_AVX2 static __m128i k4_min_pairs(__m128i scales_mins, const int16_t *bsums) {
    const __m128i mins = _mm_cvtepu8_epi16(_mm_srli_si128(scales_mins, 8));
    const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)bsums),
                                         _mm_loadu_si128((const __m128i *)(bsums + 8)));
    return _mm_madd_epi16(mins, pairs);
}

/* A Q4_K/Q5_K block's d and dmin (adjacent halves at d_pair) times the activations' d, as
 * lanes 0 and 1: one conversion for both, where two scalar ones cost 5-8% of the Q4_K kernel.
 * The products round as y.d * d and y.d * dmin do. */
QT_AVX2 static __m128 k4_d_dmin(const void *d_pair, float y_d) {
    int32_t halves;
    memcpy(&halves, d_pair, sizeof halves);
    return _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(halves)), _mm_set1_ps(y_d));
}

QT_AVX2 static void vec_dot_q4_K_q8_K_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q4_K *x = vx;
    const struct block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        prefetch_block(&x[i], sizeof x[i]);
        const __m128 d = k4_d_dmin(&x[i].d, y[i].d);
        const __m128i sm = k4_scales_mins(x[i].scales);
        const __m128i m = k4_min_pairs(sm, y[i].bsums);
        /* - dmin * m, fused: the same bits as fma(-dmin, m, acc) */
        acc_m = _mm_fnmadd_ps(_mm_permute_ps(d, 0x55), _mm_cvtepi32_ps(m), acc_m);
        acc = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(d),
            _mm256_cvtepi32_ps(k4_block_lanes(x[i].qs, NULL, y[i].qs, k4_scales16(sm))), acc);
    }
    *out = hsum_f32x8(acc) + hsum_f32x4(acc_m);
}

/* vec_dot_q4_K_q8_K_avx2 for one row and Q4_K_TILE_TOKS activation rows: the same steps and
 * order for every pair, with the row's unpacking shared. */
QT_AVX2 static void vec_dot_q4_K_tile_avx2(int64_t n, const void *vx, size_t x_stride,
                                           const void *vy, size_t y_stride, float *out,
                                           int64_t out_stride) {
    (void)x_stride; /* one row per tile */
    const struct block_q4_K *x = vx;
    const struct block_q8_K *y[Q4_K_TILE_TOKS];
    for (int t = 0; t < Q4_K_TILE_TOKS; t++)
        y[t] = (const struct block_q8_K *)((const uint8_t *)vy + (size_t)t * y_stride);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[Q4_K_TILE_TOKS];
    __m128 acc_m[Q4_K_TILE_TOKS];
    for (int t = 0; t < Q4_K_TILE_TOKS; t++) {
        acc[t] = _mm256_setzero_ps();
        acc_m[t] = _mm_setzero_ps();
    }
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float xd = h2f(x[i].d), xdmin = h2f(x[i].dmin);
        const __m128i sm = k4_scales_mins(x[i].scales);
        const __m256i scales = k4_scales16(sm);
        __m256i sumi[Q4_K_TILE_TOKS];
        for (int t = 0; t < Q4_K_TILE_TOKS; t++) sumi[t] = _mm256_setzero_si256();
        for (int j = 0; j < QK_K / 64; ++j) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i lo = _mm256_and_si256(raw, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            for (int t = 0; t < Q4_K_TILE_TOKS; t++)
                sumi[t] =
                    _mm256_add_epi32(sumi[t], k4_run_lanes(lo, hi, y[t][i].qs + 64 * j, scales, j));
        }
        for (int t = 0; t < Q4_K_TILE_TOKS; t++) {
            const float d = y[t][i].d * xd, dmin = -y[t][i].d * xdmin;
            const __m128i m = k4_min_pairs(sm, y[t][i].bsums);
            acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(m), acc_m[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    for (int t = 0; t < Q4_K_TILE_TOKS; t++)
        out[t * out_stride] = hsum_f32x8(acc[t]) + hsum_f32x4(acc_m[t]);
}

QT_AVX2 static void vec_dot_q5_K_q8_K_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q5_K *x = vx;
    const struct block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const __m128 d = k4_d_dmin(&x[i].d, y[i].d);
        const __m128i sm = k4_scales_mins(x[i].scales);
        __m128i m = k4_min_pairs(sm, y[i].bsums);
        m = _mm_add_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
        m = _mm_add_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
        summs = fmaf(-_mm_cvtss_f32(_mm_movehdup_ps(d)), (float)_mm_cvtsi128_si32(m), summs);
        acc = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(d),
            _mm256_cvtepi32_ps(k4_block_lanes(x[i].qs, x[i].qh, y[i].qs, k4_scales16(sm))), acc);
    }
    *out = hsum_f32x8(acc) + summs;
}

/* Values 32 * part .. 32 * part + 31 of a 128-value half of a Q6_K block as unsigned levels
 * (0..63): 4 low bits from ql (l0 = ql[0..31], l1 = ql[32..63]), 2 high bits from qh, bits
 * 2 * part and up, moved to bits 4-5 by one 16-bit shift; the mask drops what crosses bytes. */
QT_AVX2 static __m256i q6_K_part_levels(__m256i l0, __m256i l1, __m256i h, int part) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), bits45 = _mm256_set1_epi8(0x30);
    const __m256i lo = part & 1 ? l1 : l0;
    const __m256i nib =
        part < 2 ? _mm256_and_si256(lo, low4) : _mm256_and_si256(_mm256_srli_epi16(lo, 4), low4);
    const __m256i moved = part == 0   ? _mm256_slli_epi16(h, 4)
                          : part == 1 ? _mm256_slli_epi16(h, 2)
                          : part == 2 ? h
                                      : _mm256_srli_epi16(h, 2);
    return _mm256_or_si256(nib, _mm256_and_si256(moved, bits45));
}

/* Q6_K in registers: 4 low bits from ql, 2 high bits from qh, 128 values per step; each
 * 32-value run times the activations (pairs by maddubs), then quads times the two 16-value
 * group scales, so int32 lane k holds values 4k..4k+3, as k_lanes defines. */
QT_AVX2 static __m256i q6_K_block_lanes(const struct block_q6_K *x, const int8_t *q8) {
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < QK_K / 128; ++j) {
        const uint8_t *ql = x->ql + 64 * j, *qh = x->qh + 32 * j;
        const __m256i scales = _mm256_broadcastsi128_si256(
            _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(x->scales + 8 * j))));
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
        const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
        for (int part = 0; part < 4; ++part) {
            const __m256i lv = q6_K_part_levels(l0, l1, h, part);
            const __m256i p16 = _mm256_maddubs_epi16(
                lv, _mm256_loadu_si256((const __m256i *)(q8 + 128 * j + 32 * part)));
            sumi =
                _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, pick_i16(scales, PICK_PAIR + part)));
        }
    }
    return sumi;
}

QT_AVX2 static void vec_dot_q6_K_q8_K_avx2(int64_t n, float *out, const void *vx, const void *vy) {
    const struct block_q6_K *x = vx;
    const struct block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        prefetch_block(&x[i], sizeof x[i]);
        /* lane l: 32 (scale 2l bsum 2l + scale 2l+1 bsum 2l+1), the levels' offset of 32 */
        const __m256i offs = _mm256_slli_epi32(
            _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales)),
                              _mm256_loadu_si256((const __m256i *)y[i].bsums)),
            5);
        const __m256i lanes = _mm256_sub_epi32(q6_K_block_lanes(&x[i], y[i].qs), offs);
        const __m256 d = _mm256_set1_ps(y[i].d * h2f(x[i].d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc);
    }
    *out = hsum_f32x8(acc);
}

/* ---- dequantization: the portable loops' products, 8 lanes at a time (an int converts to
 * float exactly, and each output is the same one or two roundings, so the same bits) ---- */

/* 32 int8 levels as floats: level * s - m, s_lo for the first 16 and s_hi for the last 16.
 * m = 0 (the types without a min) leaves the product's bits as they are. */
QT_AVX2 static void store_levels_32(float *dst, __m256i levels, float s_lo, float s_hi, float m) {
    const __m128i half[2] = {_mm256_castsi256_si128(levels), _mm256_extracti128_si256(levels, 1)};
    const __m256 mv = _mm256_set1_ps(m);
    for (int h = 0; h < 2; ++h) {
        const __m256 s = _mm256_set1_ps(h ? s_hi : s_lo);
        for (int e = 0; e < 2; ++e) {
            const __m128i bytes = e ? _mm_srli_si128(half[h], 8) : half[h];
            const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)), s);
            _mm256_storeu_ps(dst + 16 * h + 8 * e, _mm256_sub_ps(v, mv));
        }
    }
}

QT_AVX2 static void q8_0_to_float_avx2(const void *src, float *dst, int64_t n) {
    const struct block_q8_0 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = h2f(b[i].d);
        store_levels_32(dst, _mm256_loadu_si256((const __m256i *)b[i].qs), d, d, 0);
    }
}

QT_AVX2 static void q5_0_to_float_avx2(const void *src, float *dst, int64_t n) {
    const struct block_q5_0 *b = src;
    for (int64_t i = 0; i < n / QK32; ++i, dst += QK32) {
        const float d = h2f(b[i].d);
        store_levels_32(dst, q5_0_levels(&b[i]), d, d, 0);
    }
}

QT_AVX2 static void q4_K_to_float_avx2(const void *src, float *y, int64_t n) {
    const struct block_q4_K *b = src;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const float d = h2f(b[i].d), min = h2f(b[i].dmin);
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, k4_scales_mins(b[i].scales));
        for (int j = 0; j < QK_K / 64; ++j) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * j));
            const float d1 = d * sm[2 * j], d2 = d * sm[2 * j + 1];
            store_levels_32(y + 64 * j, _mm256_and_si256(raw, low4), d1, d1, min * sm[8 + 2 * j]);
            store_levels_32(y + 64 * j + 32, _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), d2,
                            d2, min * sm[8 + 2 * j + 1]);
        }
    }
}

QT_AVX2 static void q6_K_to_float_avx2(const void *src, float *y, int64_t n) {
    const struct block_q6_K *b = src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK_K / 128; ++j, y += 128) {
            const uint8_t *ql = b[i].ql + 64 * j, *qh = b[i].qh + 32 * j;
            const int8_t *sc = b[i].scales + 8 * j;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            for (int part = 0; part < 4; ++part) {
                const __m256i lv =
                    _mm256_sub_epi8(q6_K_part_levels(l0, l1, h, part), _mm256_set1_epi8(32));
                store_levels_32(y + 32 * part, lv, d * sc[2 * part], d * sc[2 * part + 1], 0);
            }
        }
    }
}

/* dot_f32_vec_steps in registers: acc[j][0..7] and acc[j][8..15] are a[2j] and a[2j + 1]; the
 * folds and qt_reduce_lanes16's halvings are the same additions (hsum_f32x8 halves as it
 * does). Compiled from the portable form, the lanes went through the stack with
 * store-forwarding stalls: 6-8% of the small model's decode at 256 tokens. */
QT_AVX2 static float dot_f32_vec_steps_avx2(const float *x, const float *y, int64_t body) {
    /* named, not an array: GCC kept an array of 8 on the stack, zeroed by rep stos */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
#define DOT_F32_STEP(a, v)                                                                         \
    a = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * v), _mm256_loadu_ps(y + i + 8 * v), a)
    for (int64_t i = 0; i < body; i += 64) {
        DOT_F32_STEP(a0, 0);
        DOT_F32_STEP(a1, 1);
        DOT_F32_STEP(a2, 2);
        DOT_F32_STEP(a3, 3);
        DOT_F32_STEP(a4, 4);
        DOT_F32_STEP(a5, 5);
        DOT_F32_STEP(a6, 6);
        DOT_F32_STEP(a7, 7);
    }
#undef DOT_F32_STEP
    const __m256 lo = _mm256_add_ps(_mm256_add_ps(a0, a4), _mm256_add_ps(a2, a6)); /* acc[0] */
    const __m256 hi = _mm256_add_ps(_mm256_add_ps(a1, a5), _mm256_add_ps(a3, a7));
    return hsum_f32x8(_mm256_add_ps(lo, hi));
}

/* fma_lanes16 by 8 columns and 8 lanes at a time: 8 independent chains in registers (one
 * per lane), where the row-by-row form loaded and stored every lane value once per row. The
 * same fused steps in the same order per lane and column, so the same bits. */
QT_AVX2 static void fma_lanes16_avx2(const float *p, int64_t n, const float *rows,
                                     int64_t row_stride, int64_t width, float *lanes) {
    const int64_t wide = width & ~(int64_t)7;
    for (int64_t d0 = 0; d0 < wide; d0 += 8)
        for (int half = 0; half < 16; half += 8) {
            /* named, not an array, so that they stay in registers */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
                   a7 = a0;
            const float *v = rows + d0;
#define LANE_STEP(a, j)                                                                            \
    a = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + (j)*row_stride), a)
            int64_t j0 = half;
            for (; j0 + 8 <= n; j0 += 16) {
                LANE_STEP(a0, j0);
                LANE_STEP(a1, j0 + 1);
                LANE_STEP(a2, j0 + 2);
                LANE_STEP(a3, j0 + 3);
                LANE_STEP(a4, j0 + 4);
                LANE_STEP(a5, j0 + 5);
                LANE_STEP(a6, j0 + 6);
                LANE_STEP(a7, j0 + 7);
            }
            if (j0 < n) LANE_STEP(a0, j0); /* the last rows, fewer than 8 of this half */
            if (j0 + 1 < n) LANE_STEP(a1, j0 + 1);
            if (j0 + 2 < n) LANE_STEP(a2, j0 + 2);
            if (j0 + 3 < n) LANE_STEP(a3, j0 + 3);
            if (j0 + 4 < n) LANE_STEP(a4, j0 + 4);
            if (j0 + 5 < n) LANE_STEP(a5, j0 + 5);
            if (j0 + 6 < n) LANE_STEP(a6, j0 + 6);
#undef LANE_STEP
            float *out = lanes + half * width + d0;
            _mm256_storeu_ps(out, a0);
            _mm256_storeu_ps(out + width, a1);
            _mm256_storeu_ps(out + 2 * width, a2);
            _mm256_storeu_ps(out + 3 * width, a3);
            _mm256_storeu_ps(out + 4 * width, a4);
            _mm256_storeu_ps(out + 5 * width, a5);
            _mm256_storeu_ps(out + 6 * width, a6);
            _mm256_storeu_ps(out + 7 * width, a7);
        }
    fma_lanes16_cols(p, n, rows, row_stride, width, wide, lanes); /* the last width % 8 */
}

/* Every x86 CPU with AVX2 also has F16C (Intel since Ivy Bridge, AMD since Piledriver), and
 * clang's __builtin_cpu_supports cannot name f16c, so AVX2 and FMA are what we test. */
static int qt_cpu_has_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Dispatchers: one CPU feature test per row, cheap next to a row of blocks. */
static void fma_lanes16_best(const float *p, int64_t n, const float *rows, int64_t row_stride,
                             int64_t width, float *lanes) {
    (qt_cpu_has_avx2() ? fma_lanes16_avx2 : fma_lanes16)(p, n, rows, row_stride, width, lanes);
}
static float dot_f32_vec_steps_best(const float *x, const float *y, int64_t body) {
    return (qt_cpu_has_avx2() ? dot_f32_vec_steps_avx2 : dot_f32_vec_steps)(x, y, body);
}
static void vec_dot_q8_0_q8_0_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q8_0_q8_0_avx2 : vec_dot_q8_0_q8_0)(n, out, x, y);
}
/* A tile pair by pair with the portable vec_dot, for x86 CPUs without AVX2. */
static void tile_by_pairs(qt_vec_dot_fn dot, int rows, int toks, int64_t n, const void *x,
                          size_t x_stride, const void *y, size_t y_stride, float *out,
                          int64_t out_stride) {
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < toks; t++)
            dot(n, &out[t * out_stride + r], (const uint8_t *)x + (size_t)r * x_stride,
                (const uint8_t *)y + (size_t)t * y_stride);
}
/* A tile dispatcher: the AVX2 kernel, or the portable vec_dot pair by pair. */
#define TILE_BEST(name, avx2, dot, rows, toks)                                                     \
    static void name(int64_t n, const void *x, size_t x_stride, const void *y, size_t y_stride,    \
                     float *out, int64_t out_stride) {                                             \
        if (qt_cpu_has_avx2())                                                                     \
            avx2(n, x, x_stride, y, y_stride, out, out_stride);                                    \
        else                                                                                       \
            tile_by_pairs(dot, rows, toks, n, x, x_stride, y, y_stride, out, out_stride);          \
    }
TILE_BEST(vec_dot_q8_0_tile_best, vec_dot_q8_0_tile_avx2, vec_dot_q8_0_q8_0, Q8_0_TILE_ROWS,
          Q8_0_TILE_TOKS)
static void vec_dot_q4_0_q8_0_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q4_0_q8_0_avx2 : vec_dot_q4_0_q8_0)(n, out, x, y);
}
static void vec_dot_q4_1_q8_1_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q4_1_q8_1_avx2 : vec_dot_q4_1_q8_1)(n, out, x, y);
}
static void vec_dot_q5_1_q8_1_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q5_1_q8_1_avx2 : vec_dot_q5_1_q8_1)(n, out, x, y);
}
static void vec_dot_q5_0_q8_0_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q5_0_q8_0_avx2 : vec_dot_q5_0_q8_0)(n, out, x, y);
}
static void vec_dot_q2_K_q8_K_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q2_K_q8_K_avx2 : vec_dot_q2_K_q8_K)(n, out, x, y);
}
static void vec_dot_q3_K_q8_K_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q3_K_q8_K_avx2 : vec_dot_q3_K_q8_K)(n, out, x, y);
}
static void vec_dot_q4_K_q8_K_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q4_K_q8_K_avx2 : vec_dot_q4_K_q8_K)(n, out, x, y);
}
static void vec_dot_q5_K_q8_K_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q5_K_q8_K_avx2 : vec_dot_q5_K_q8_K)(n, out, x, y);
}
static void vec_dot_q6_K_q8_K_best(int64_t n, float *out, const void *x, const void *y) {
    (qt_cpu_has_avx2() ? vec_dot_q6_K_q8_K_avx2 : vec_dot_q6_K_q8_K)(n, out, x, y);
}
static void q8_0_to_float_best(const void *src, float *dst, int64_t n) {
    (qt_cpu_has_avx2() ? q8_0_to_float_avx2 : q8_0_to_float)(src, dst, n);
}
static void q5_0_to_float_best(const void *src, float *dst, int64_t n) {
    (qt_cpu_has_avx2() ? q5_0_to_float_avx2 : q5_0_to_float)(src, dst, n);
}
static void q4_K_to_float_best(const void *src, float *dst, int64_t n) {
    (qt_cpu_has_avx2() ? q4_K_to_float_avx2 : q4_K_to_float)(src, dst, n);
}
static void q6_K_to_float_best(const void *src, float *dst, int64_t n) {
    (qt_cpu_has_avx2() ? q6_K_to_float_avx2 : q6_K_to_float)(src, dst, n);
}
TILE_BEST(vec_dot_q4_K_tile_best, vec_dot_q4_K_tile_avx2, vec_dot_q4_K_q8_K, 1, Q4_K_TILE_TOKS)
TILE_BEST(vec_dot_q5_0_tile_best, vec_dot_q5_0_tile_avx2, vec_dot_q5_0_q8_0, 1, Q5_0_TILE_TOKS)
static void vec_dot_q5_0_rows_best(int64_t n, const void *x, size_t x_stride, const void *y,
                                   float *out, int64_t n_rows) {
    if (qt_cpu_has_avx2()) {
        vec_dot_q5_0_rows_avx2(n, x, x_stride, y, out, n_rows);
        return;
    }
    for (int64_t r = 0; r < n_rows; r++)
        vec_dot_q5_0_q8_0(n, out + r, (const uint8_t *)x + (size_t)r * x_stride, y);
}
#define Q8_0_TILE_FN vec_dot_q8_0_tile_best
#define Q4_K_TILE_FN vec_dot_q4_K_tile_best
#define Q5_0_TILE_FN vec_dot_q5_0_tile_best
#define Q5_0_ROWS_FN vec_dot_q5_0_rows_best
#else
#define QT_HAVE_AVX2_KERNELS 0
#define Q8_0_TILE_FN NULL /* portable builds: vec_dot pair by pair */
#define Q4_K_TILE_FN NULL
#define Q5_0_TILE_FN NULL
#define Q5_0_ROWS_FN NULL /* and row by row */
static float dot_f32_vec_steps_best(const float *x, const float *y, int64_t body) {
    return dot_f32_vec_steps(x, y, body);
}
static void fma_lanes16_best(const float *p, int64_t n, const float *rows, int64_t row_stride,
                             int64_t width, float *lanes) {
    fma_lanes16(p, n, rows, row_stride, width, lanes);
}
#define vec_dot_q8_0_q8_0_best vec_dot_q8_0_q8_0
#define vec_dot_q4_0_q8_0_best vec_dot_q4_0_q8_0
#define vec_dot_q4_1_q8_1_best vec_dot_q4_1_q8_1
#define vec_dot_q5_1_q8_1_best vec_dot_q5_1_q8_1
#define vec_dot_q5_0_q8_0_best vec_dot_q5_0_q8_0
#define vec_dot_q2_K_q8_K_best vec_dot_q2_K_q8_K
#define vec_dot_q3_K_q8_K_best vec_dot_q3_K_q8_K
#define vec_dot_q4_K_q8_K_best vec_dot_q4_K_q8_K
#define vec_dot_q5_K_q8_K_best vec_dot_q5_K_q8_K
#define vec_dot_q6_K_q8_K_best vec_dot_q6_K_q8_K
#define q8_0_to_float_best q8_0_to_float
#define q5_0_to_float_best q5_0_to_float
#define q4_K_to_float_best q4_K_to_float
#define q6_K_to_float_best q6_K_to_float
#endif

/* ============================================================================
 * Traits
 * ========================================================================== */

static const struct qtype_traits qt_table[QT_COUNT] = {
    [QT_F32] = {.name = "f32",
                .blck_size = 1,
                .type_size = 4,
                .to_float = f32_to_float,
                .from_float = f32_from_float,
                .from_float_act = f32_from_float,
                .vec_dot_type = QT_F32,
                .vec_dot = vec_dot_f32},
    [QT_F16] = {.name = "f16",
                .blck_size = 1,
                .type_size = 2,
                .to_float = f16_row_to_float,
                .from_float = f16_row_from_float,
                .from_float_act = f16_row_from_float,
                .vec_dot_type = QT_F16,
                .vec_dot = vec_dot_f16},
    [QT_BF16] = {.name = "bf16",
                 .blck_size = 1,
                 .type_size = 2,
                 .to_float = bf16_row_to_float,
                 .from_float = bf16_row_from_float,
                 .from_float_act = bf16_row_from_float,
                 .vec_dot_type = QT_BF16,
                 .vec_dot = vec_dot_bf16},
    [QT_Q4_0] = {.name = "q4_0",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q4_0),
                 .to_float = q4_0_to_float,
                 .from_float = q4_0_from_float,
                 .from_float_act = q4_0_from_float,
                 .vec_dot_type = QT_Q8_0,
                 .vec_dot = vec_dot_q4_0_q8_0_best},
    [QT_Q4_1] = {.name = "q4_1",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q4_1),
                 .to_float = q4_1_to_float,
                 .from_float = q4_1_from_float,
                 .from_float_act = q4_1_from_float,
                 .vec_dot_type = QT_Q8_1,
                 .vec_dot = vec_dot_q4_1_q8_1_best},
    [QT_Q5_0] = {.name = "q5_0",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q5_0),
                 .to_float = q5_0_to_float_best,
                 .from_float = q5_0_from_float,
                 .from_float_act = q5_0_from_float,
                 .vec_dot_type = QT_Q8_0,
                 .vec_dot = vec_dot_q5_0_q8_0_best,
                 .vec_dot_tile = Q5_0_TILE_FN,
                 .vec_dot_rows = Q5_0_ROWS_FN,
                 .tile_rows = 1,
                 .tile_toks = Q5_0_TILE_TOKS},
    [QT_Q5_1] = {.name = "q5_1",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q5_1),
                 .to_float = q5_1_to_float,
                 .from_float = q5_1_from_float,
                 .from_float_act = q5_1_from_float,
                 .vec_dot_type = QT_Q8_1,
                 .vec_dot = vec_dot_q5_1_q8_1_best},
    [QT_Q8_0] = {.name = "q8_0",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q8_0),
                 .to_float = q8_0_to_float_best,
                 .from_float = q8_0_from_float,
                 .from_float_act = q8_0_from_float_act,
                 .vec_dot_type = QT_Q8_0,
                 .vec_dot = vec_dot_q8_0_q8_0_best,
                 .vec_dot_tile = Q8_0_TILE_FN,
                 .tile_rows = Q8_0_TILE_ROWS,
                 .tile_toks = Q8_0_TILE_TOKS},
    [QT_Q8_1] = {.name = "q8_1",
                 .blck_size = QK32,
                 .type_size = sizeof(struct block_q8_1),
                 .to_float = q8_1_to_float,
                 .from_float = q8_1_from_float,
                 .from_float_act = q8_1_from_float_act,
                 .vec_dot_type = QT_Q8_1,
                 .vec_dot = NULL},
    [QT_Q2_K] = {.name = "q2_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q2_K),
                 .to_float = q2_K_to_float,
                 .from_float = q2_K_from_float,
                 .from_float_act = q2_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = vec_dot_q2_K_q8_K_best},
    [QT_Q3_K] = {.name = "q3_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q3_K),
                 .to_float = q3_K_to_float,
                 .from_float = q3_K_from_float,
                 .from_float_act = q3_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = vec_dot_q3_K_q8_K_best},
    [QT_Q4_K] = {.name = "q4_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q4_K),
                 .to_float = q4_K_to_float_best,
                 .from_float = q4_K_from_float,
                 .from_float_act = q4_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = vec_dot_q4_K_q8_K_best,
                 .vec_dot_tile = Q4_K_TILE_FN,
                 .tile_rows = 1,
                 .tile_toks = Q4_K_TILE_TOKS},
    [QT_Q5_K] = {.name = "q5_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q5_K),
                 .to_float = q5_K_to_float,
                 .from_float = q5_K_from_float,
                 .from_float_act = q5_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = vec_dot_q5_K_q8_K_best},
    [QT_Q6_K] = {.name = "q6_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q6_K),
                 .to_float = q6_K_to_float_best,
                 .from_float = q6_K_from_float,
                 .from_float_act = q6_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = vec_dot_q6_K_q8_K_best},
    [QT_Q8_K] = {.name = "q8_K",
                 .blck_size = QK_K,
                 .type_size = sizeof(struct block_q8_K),
                 .to_float = q8_K_to_float,
                 .from_float = q8_K_from_float,
                 .from_float_act = q8_K_from_float,
                 .vec_dot_type = QT_Q8_K,
                 .vec_dot = NULL},
};

const struct qtype_traits *qtype_traits(uint32_t type) {
    if (type >= QT_COUNT || !qt_table[type].name) return NULL;
    return &qt_table[type];
}

/* ggml types moerun cannot compute with yet: their block layout only, so that files holding
 * them still parse and can be described, and a model using them is refused by name. */
static const struct {
    uint32_t id;
    const char *name;
    int64_t blck_size;
    size_t type_size;
} foreign_types[] = {
    {16, "iq2_xxs", 256, 66}, {17, "iq2_xs", 256, 74},  {18, "iq3_xxs", 256, 98},
    {19, "iq1_s", 256, 50},   {20, "iq4_nl", 32, 18},   {21, "iq3_s", 256, 110},
    {22, "iq2_s", 256, 82},   {23, "iq4_xs", 256, 136}, {24, "i8", 1, 1},
    {25, "i16", 1, 2},        {26, "i32", 1, 4},        {27, "i64", 1, 8},
    {28, "f64", 1, 8},        {29, "iq1_m", 256, 56},   {34, "tq1_0", 256, 54},
    {35, "tq2_0", 256, 66},   {39, "mxfp4", 32, 17},
};

int qtype_layout(uint32_t type, int64_t *blck_size, size_t *type_size) {
    const struct qtype_traits *t = qtype_traits(type);
    if (t) {
        *blck_size = t->blck_size;
        *type_size = t->type_size;
        return 0;
    }
    for (size_t i = 0; i < sizeof foreign_types / sizeof foreign_types[0]; i++) {
        if (foreign_types[i].id != type) continue;
        *blck_size = foreign_types[i].blck_size;
        *type_size = foreign_types[i].type_size;
        return 0;
    }
    return -1;
}

const char *qtype_name(uint32_t type) {
    static _Thread_local char unknown[32];
    const struct qtype_traits *t = qtype_traits(type);
    if (t) return t->name;
    for (size_t i = 0; i < sizeof foreign_types / sizeof foreign_types[0]; i++)
        if (foreign_types[i].id == type) return foreign_types[i].name;
    snprintf(unknown, sizeof unknown, "type %u", type);
    return unknown;
}

size_t qtype_row_size(enum qtype type, int64_t n) {
    const struct qtype_traits *t = qtype_traits((uint32_t)type);
    if (!t || n < 0 || n % t->blck_size) return 0;
    return (size_t)(n / t->blck_size) * t->type_size;
}

qt_to_float_fn qtype_to_float_scalar(uint32_t type) {
    switch (type) {
    case QT_Q8_0:
        return q8_0_to_float;
    case QT_Q5_0:
        return q5_0_to_float;
    case QT_Q4_K:
        return q4_K_to_float;
    case QT_Q6_K:
        return q6_K_to_float;
    default: {
        const struct qtype_traits *t = qtype_traits(type);
        return t ? t->to_float : NULL;
    }
    }
}

qt_vec_dot_fn qtype_vec_dot_scalar(uint32_t type) {
    switch (type) {
    case QT_Q8_0:
        return vec_dot_q8_0_q8_0;
    case QT_Q4_0:
        return vec_dot_q4_0_q8_0;
    case QT_Q4_1:
        return vec_dot_q4_1_q8_1;
    case QT_Q5_1:
        return vec_dot_q5_1_q8_1;
    case QT_Q5_0:
        return vec_dot_q5_0_q8_0;
    case QT_Q2_K:
        return vec_dot_q2_K_q8_K;
    case QT_Q3_K:
        return vec_dot_q3_K_q8_K;
    case QT_Q4_K:
        return vec_dot_q4_K_q8_K;
    case QT_Q5_K:
        return vec_dot_q5_K_q8_K;
    case QT_Q6_K:
        return vec_dot_q6_K_q8_K;
    default: {
        const struct qtype_traits *t = qtype_traits(type);
        return t ? t->vec_dot : NULL;
    }
    }
}

int qtype_simd_level(void) {
#if QT_HAVE_AVX2_KERNELS
    return qt_cpu_has_avx2() ? 1 : 0;
#else
    return 0;
#endif
}

/* Measured on one Zen 3 core with activation quantization included and the tile loop blocked
 * as cpu.c runs it (build/tilebench): Q4_K's tile ran 1.2-1.8x OpenBLAS at 16-32 tokens on
 * 2048-wide rows and about 1.0x at 64, as its integer sums take one float step per 256
 * values; on 1024-wide rows it broke even near 32, on 512-wide rows it lost from 16 on (its
 * fixed cost per output weighs more on short rows). Q8_0's tile: 1.1-1.2x at 16, 1.0x at 24
 * at every width. Q5_0's: 0.96x at 16. */
int qtype_tile_sgemm_crossover(uint32_t type, int64_t n_in) {
    if (!qtype_simd_level()) return 0;
    switch (type) {
    case QT_Q4_K:
        return n_in >= 2048 ? 64 : n_in >= 1024 ? 32 : 16;
    case QT_Q8_0:
        return 24;
    default:
        return 0;
    }
}
