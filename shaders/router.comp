#version 450
#include "common.glsl"
// The Mixture-of-Experts router, moe_route (moe.c) for each token: probabilities by softmax or
// sigmoid, an optional bias for choosing only, expert groups (a group scores the sum of its
// best two biased scores with a bias, else its best), the k best remaining experts (best
// first, equal scores in ascending id order) and their weights (normalized and scaled).
//
// One workgroup routes one token at a time, a thread per expert (two for more than 256):
// the rank of each expert is the count of experts ahead of it, so the choice needs no sort.
// Workgroups take tokens gl_WorkGroupID.x, + gl_NumWorkGroups.x, ... so any grid works; a
// grid of (n_tok, 1, 1) routes every token at once.
//
// The choice must equal moe_route's exactly, also where scores tie, so the probabilities are
// computed to the bit as moe.c computes them on the CPU: ggml's softmax (exp_poly on whole
// 16-value chunks, each chunk summed in a lane tree, the rest through expf, the sum in double,
// one reciprocal) and 1 / (1 + expf(-x)). expf is glibc's algorithm (a 32-entry table of
// 2^(i/32) and a cubic) evaluated in float-float arithmetic, which agrees with glibc's double
// evaluation for all but about 1 in 10^8 arguments; divisions are corrected to round
// correctly; every step is `precise` so that no compiler fuses or reorders it.
// Limits: n_expert <= 512.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t logits, bias, ids, weights;
    uint n_tok, n_expert, k, gating;
    uint n_group, n_group_used, norm_weights, pad_;
    float weights_scale;
    uint pad2_;
} pc;

#define NT 256u
#define EPT 2u // experts per thread
#define MAX_E (NT * EPT)
#define GATING_SIGMOID 2u

shared float sh_p[MAX_E];   // exponentials, then probabilities
shared float sh_sel[MAX_E]; // biased scores
shared uint sh_key[MAX_E];  // ordered keys of the selectable experts' scores, 0 otherwise
shared float sh_cs[MAX_E / 16u];
shared float sh_gs[MAX_E];
shared uint sh_gok[MAX_E];
shared uint sh_top[MAX_E];
shared uint sh_max;
shared float sh_inv;

#define INF uintBitsToFloat(0x7f800000u)

// ---- float arithmetic that rounds as the CPU does ----
// Only `precise` (NoContraction) adds and multiplies, which Vulkan rounds correctly; no fma():
// glslang cannot mark it precise, and drivers may then split it (Mesa's llvmpipe always does)
// or fuse it at will. Fused multiply-adds are emulated from exact products instead.

// a + b == s + e exactly (Knuth's two-sum).
void two_sum(float a, float b, out float s, out float e) {
    precise float S = a + b;
    precise float bb = S - a;
    precise float E = (a - (S - bb)) + (b - bb);
    s = S;
    e = E;
}

// a * b == p + e exactly (Dekker's product with Veltkamp's 12-bit split), |a|, |b| < 2^100.
void two_prod(float a, float b, out float p, out float e) {
    precise float ca = 4097.0 * a, cb = 4097.0 * b;
    precise float ah = ca - (ca - a), bh = cb - (cb - b);
    precise float al = a - ah, bl = b - bh;
    precise float P = a * b;
    precise float E = (((ah * bh - P) + ah * bl) + al * bh) + al * bl;
    p = P;
    e = E;
}

// The rounding error of p = a * b: a * b - p exactly (what fma(a, b, -p) gives).
float prod_err(float a, float b) {
    float p, e;
    two_prod(a, b, p, e);
    return e;
}

// fmaf(a, b, c): a * b + c rounded once. a * b + c == s + t + e exactly; t + e rounded to
// odd keeps the final rounding from landing on a false tie (Boldo and Melquiond's emulation).
float fma_rn(float a, float b, float c) {
    float p, e, s, t, u, v;
    two_prod(a, b, p, e);
    two_sum(p, c, s, t);
    two_sum(t, e, u, v);
    uint ub = floatBitsToUint(u);
    if (v != 0.0 && (ub & 1u) == 0u) u = uintBitsToFloat((u > 0.0) == (v > 0.0) ? ub + 1u : ub - 1u);
    precise float r = s + u;
    return r;
}

// x * 2^n for n in [-252, 254], exact while the result is a normal float.
float scale2(float x, int n) {
    int n1 = n / 2, n2 = n - n / 2;
    precise float y = x * uintBitsToFloat(uint(n1 + 127) << 23);
    precise float z = y * uintBitsToFloat(uint(n2 + 127) << 23);
    return z;
}

// 1 / (bh + bl) rounded correctly (barring ties within 2^-40 of an ulp): the device's
// reciprocal corrected by two Newton steps.
float recip_rn(float bh, float bl) {
    float r = 1.0 / bh;
    for (int it = 0; it < 2; it++) {
        precise float res = fma_rn(-r, bh, 1.0) - r * bl; // 1 - r * b
        r = fma_rn(r, res, r);
    }
    return r;
}

// a / b rounded correctly: Markstein's correction of a * (1 / b) by the remainder.
float div_rn(float a, float b) {
    float r = recip_rn(b, 0.0);
    precise float q0 = a * r;
    return fma_rn(fma_rn(-q0, b, a), r, q0);
}

// 2^(i/32) as float-float (hi + lo), i.e. glibc's __exp2f_data.tab.
const uint EXP2_HI[32] = uint[32](
    0x3f800000u, 0x3f82cd87u, 0x3f85aac3u, 0x3f88980fu, 0x3f8b95c2u, 0x3f8ea43au, 0x3f91c3d3u,
    0x3f94f4f0u, 0x3f9837f0u, 0x3f9b8d3au, 0x3f9ef532u, 0x3fa27043u, 0x3fa5fed7u, 0x3fa9a15bu,
    0x3fad583fu, 0x3fb123f6u, 0x3fb504f3u, 0x3fb8fbafu, 0x3fbd08a4u, 0x3fc12c4du, 0x3fc5672au,
    0x3fc9b9beu, 0x3fce248cu, 0x3fd2a81eu, 0x3fd744fdu, 0x3fdbfbb8u, 0x3fe0ccdfu, 0x3fe5b907u,
    0x3feac0c7u, 0x3fefe4bau, 0x3ff5257du, 0x3ffa83b3u);
const uint EXP2_LO[32] = uint[32](
    0x00000000u, 0xb34ea7a9u, 0x334f9891u, 0xb37eda4bu, 0xb260aba1u, 0xb3697465u, 0x33675624u,
    0xb32e0212u, 0x33231b71u, 0xb30c5563u, 0x33412342u, 0x30c3125au, 0xb32c9d5eu, 0xb3162b08u,
    0xb22deaf6u, 0xb37c5aa8u, 0x32cfe77au, 0x330ec5f7u, 0xb3414fe8u, 0xb2d6663eu, 0x320aa837u,
    0xb37323a2u, 0x3228fc24u, 0xb35c1daau, 0xb2d4a58au, 0xb3504a1cu, 0xb21eab59u, 0xb2441be6u,
    0xb24116deu, 0xb348464au, 0x32292436u, 0xb2923758u);

// glibc's expf: x * 32/ln2 = k + r, exp(x) = 2^(k/32) * (1 + C2 r + C1 r^2 + C0 r^3), here in
// float-float (about 44 bits) and rounded once.
float expf_glibc(float x) {
    if (x > uintBitsToFloat(0x42b17217u)) return INF; // log(2^128)
    if (!(x >= uintBitsToFloat(0xc2cff1b4u))) return x != x ? x : 0.0; // log(2^-150)
    const float IH = uintBitsToFloat(0x4238aa3bu), IL = uintBitsToFloat(0x35257060u);
    const float C2H = uintBitsToFloat(0x3cb17218u), C2L = uintBitsToFloat(0xae73ad2au);
    const float C1H = uintBitsToFloat(0x3975fe73u), C1L = uintBitsToFloat(0xacf053b1u);
    const float C0 = uintBitsToFloat(0x35e357c2u);
    precise float zh = x * IH;
    precise float ze = prod_err(x, IH);
    precise float kd = roundEven(zh);
    precise float rh = zh - kd;
    float a, b, r_h, r_e;
    two_sum(rh, ze, a, b);
    precise float ch = x * IL;
    precise float cl = prod_err(x, IL);
    two_sum(a, ch, r_h, r_e);
    precise float r_l = r_e + (b + cl);
    precise float ph = C2H * r_h;
    precise float pl = prod_err(C2H, r_h) + (C2H * r_l + C2L * r_h);
    precise float qh = r_h * r_h;
    precise float ql = prod_err(r_h, r_h) + 2.0 * r_h * r_l;
    precise float mh = C1H * qh;
    precise float ml = prod_err(C1H, qh) + (C1H * ql + C1L * qh);
    precise float c = C0 * qh * r_h;
    float th, te, yh, ye;
    two_sum(ph, mh, th, te);
    precise float tl = te + (pl + (ml + c));
    two_sum(1.0, th, yh, ye);
    precise float yl = ye + tl;
    int kk = int(kd);
    float sh = uintBitsToFloat(EXP2_HI[kk & 31]), sl = uintBitsToFloat(EXP2_LO[kk & 31]);
    precise float rr = yh * sh;
    precise float rl = prod_err(yh, sh) + (yh * sl + yl * sh);
    precise float res = rr + rl;
    return scale2(res, kk >> 5);
}

// exp_poly (cpu.c): ggml's SIMD exp, the Arm optimized-routines polynomial.
float exp_poly(float x) {
    const float SHIFT = uintBitsToFloat(0x4b400000u); // 0x1.8p23
    float z = fma_rn(x, uintBitsToFloat(0x3fb8aa3bu), SHIFT);
    precise float n = z - SHIFT;
    if (abs(n) > 126.0) return x > 0.0 ? INF : (x < -104.0 ? 0.0 : expf_glibc(x));
    float b = fma_rn(-n, uintBitsToFloat(0x35bfbe8eu), fma_rn(-n, uintBitsToFloat(0x3f317200u), x));
    precise float u = b * b;
    float p = fma_rn(fma_rn(fma_rn(uintBitsToFloat(0x3c072010u), b, uintBitsToFloat(0x3d2b9f17u)), u,
                            fma_rn(uintBitsToFloat(0x3e2aaf33u), b, uintBitsToFloat(0x3efffedbu))),
                     u, fma_rn(uintBitsToFloat(0x3f7ffff6u), b, 1.0));
    return scale2(p, int(n));
}

// Order-preserving map of non-NaN floats to nonzero unsigned integers.
uint fkey(float f) {
    uint u = floatBitsToUint(f == 0.0 ? 0.0 : f); // -0 ties +0, as the CPU compares
    return (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;
}
float funkey(uint u) {
    return uintBitsToFloat((u & 0x80000000u) != 0u ? u & 0x7fffffffu : ~u);
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint n = pc.n_expert, k = pc.k;
    const bool sigmoid = pc.gating == GATING_SIGMOID;
    const bool has_bias = pc.bias != 0ul;
    const bool groups = pc.n_group > 1u && pc.n_group_used < pc.n_group;
    const uint per_group = pc.n_group > 1u ? n / pc.n_group : n;
    const uint chunked = n - n % 16u;
    Floats bias = Floats(pc.bias);

    if (tid == 0u) sh_max = 0u;
    barrier();
    for (uint t = gl_WorkGroupID.x; t < pc.n_tok; t += gl_NumWorkGroups.x) {
        Floats logits = Floats(pc.logits + 4ul * uint64_t(t) * n);
        float x[EPT], p[EPT];
        for (uint i = 0u; i < EPT; i++) {
            uint e = tid + i * NT;
            x[i] = e < n ? logits.v[e] : 0.0;
            p[i] = 0.0;
        }
        if (sigmoid) {
            for (uint i = 0u; i < EPT; i++) {
                precise float d = 1.0 + expf_glibc(-x[i]);
                p[i] = isinf(d) ? 0.0 : div_rn(1.0, d);
            }
        } else {
            // softmax_row (cpu.c) with padded = 0
            uint mk = 0u;
            for (uint i = 0u; i < EPT; i++)
                if (tid + i * NT < n) mk = max(mk, fkey(x[i]));
            atomicMax(sh_max, mk);
            barrier();
            const float mx = funkey(sh_max);
            for (uint i = 0u; i < EPT; i++) {
                uint e = tid + i * NT;
                if (e >= n) continue;
                precise float d = x[i] - mx;
                sh_p[e] = e < chunked ? exp_poly(d) : expf_glibc(d);
            }
            barrier();
            if (tid < chunked / 16u) {
                float lane[16];
                for (uint i = 0u; i < 16u; i++) lane[i] = sh_p[tid * 16u + i];
                for (uint w = 8u; w >= 1u; w /= 2u)
                    for (uint i = 0u; i < w; i++) {
                        precise float s = lane[i] + lane[i + w];
                        lane[i] = s;
                    }
                sh_cs[tid] = lane[0];
            }
            barrier();
            if (tid == 0u) {
                // The double sum as float-float, then 1 / sum rounded once.
                float sh = 0.0, sl = 0.0, s, e;
                for (uint c = 0u; c < chunked / 16u; c++) {
                    two_sum(sh, sh_cs[c], s, e);
                    precise float l2 = sl + e;
                    sh = s, sl = l2;
                }
                for (uint i = chunked; i < n; i++) {
                    two_sum(sh, sh_p[i], s, e);
                    precise float l2 = sl + e;
                    sh = s, sl = l2;
                }
                sh_inv = recip_rn(sh, sl);
            }
            barrier();
            for (uint i = 0u; i < EPT; i++) {
                uint e = tid + i * NT;
                if (e >= n) continue;
                precise float q = sh_p[e] * sh_inv;
                p[i] = q;
            }
            barrier(); // everyone has read sh_p, sh_max and sh_inv
        }

        for (uint i = 0u; i < EPT; i++) {
            uint e = tid + i * NT;
            if (e >= n) continue;
            precise float s = has_bias ? p[i] + bias.v[e] : p[i];
            sh_p[e] = p[i];
            sh_sel[e] = s;
            sh_key[e] = fkey(s);
        }
        barrier();

        if (groups) {
            for (uint g = tid; g < pc.n_group; g += NT) {
                float a = -INF, b = -INF;
                for (uint i = g * per_group; i < (g + 1u) * per_group; i++) {
                    float s = sh_sel[i];
                    if (s > a) {
                        b = a;
                        a = s;
                    } else if (s > b) {
                        b = s;
                    }
                }
                precise float two = a + b; // (float)((double)a + (double)b): the same rounding
                sh_gs[g] = has_bias ? two : a;
            }
            barrier();
            for (uint g = tid; g < pc.n_group; g += NT) {
                const float s = sh_gs[g];
                uint rank = 0u;
                for (uint o = 0u; o < pc.n_group; o++) {
                    const float so = sh_gs[o];
                    rank += uint(so > s || (so == s && o < g));
                }
                sh_gok[g] = uint(rank < pc.n_group_used);
            }
            barrier();
            for (uint i = 0u; i < EPT; i++) {
                uint e = tid + i * NT;
                if (e < n && sh_gok[e / per_group] == 0u) sh_key[e] = 0u;
            }
            barrier();
        }

        // Rank among the selectable experts: higher score first, then lower id.
        Ints ids = Ints(pc.ids + 4ul * uint64_t(t) * k);
        for (uint i = 0u; i < EPT; i++) {
            uint e = tid + i * NT;
            if (e >= n) continue;
            const uint key = sh_key[e];
            if (key == 0u) continue;
            uint rank = 0u;
            for (uint f = 0u; f < n; f++) {
                const uint kf = sh_key[f];
                rank += uint(kf > key || (kf == key && f < e));
            }
            if (rank < k) {
                sh_top[rank] = e;
                ids.v[rank] = int(e);
            }
        }
        barrier();

        if (tid == 0u) {
            // finish_weights (moe.c)
            Floats w = Floats(pc.weights + 4ul * uint64_t(t) * k);
            float denom = 1.0;
            if (pc.norm_weights != 0u) {
                float sh = 0.0, sl = 0.0, s, e;
                for (uint j = 0u; j < k; j++) {
                    two_sum(sh, sh_p[sh_top[j]], s, e);
                    precise float l2 = sl + e;
                    sh = s, sl = l2;
                }
                precise float sum = sh + sl;
                denom = max(sum, 6.103515625e-5);
            }
            const bool scale = pc.weights_scale != 0.0 && pc.weights_scale != 1.0;
            for (uint j = 0u; j < k; j++) {
                float v = sh_p[sh_top[j]];
                if (pc.norm_weights != 0u) v = div_rn(v, denom);
                precise float sv = scale ? v * pc.weights_scale : v;
                w.v[j] = sv;
            }
            sh_max = 0u;
        }
        barrier(); // the next token reuses the shared arrays
    }
}
