#version 450
// mul_mm_<type>: the product of vk_mul_mat_push (vk_ops.h) for batches of tokens (prefill),
// tiled: a workgroup computes MM_BM rows x MM_BN tokens. Each step of 64 values (4 chunks of
// dequant.glsl, which for every block format cover 64 values of the row, not always
// contiguous ones) dequantizes the tile's rows into shared memory once for all its tokens and
// stages the same 64 values of each token's x beside them; every thread then accumulates 2
// rows x 4 tokens. Weights are read and decoded once per 64 tokens (mul_mat: once per 8).
// The mul_mm_swiglu pipelines (MODE 1) stage silu(x) * up instead of x.
// Expert products of a batch (groups != 0, after moe_group): workgroup z takes expert z's
// slots, order[groups[z] .. groups[z + 1]) at ids, as its tokens: slot s reads x row
// s / x_zdiv (x_zstride apart) and writes y row s (y_zstride apart).
#include "common.glsl"
#include "dequant.glsl"

// Must match VK_MM_TILE_ROWS / VK_MM_TILE_TOKS in vk_ops.h (they size the grid).
#define MM_BM 32
#define MM_BN 64
#define KS 64
#define NT 256

layout(local_size_x = NT, local_size_y = 1, local_size_z = 1) in;

layout(push_constant, std430) uniform Push {
    uint64_t w, x, y, ids, x_up, w_up, groups;
    uint64_t w_zstride;
    uint n_in, n_out, n_tok, row_bytes;
    uint x_stride, y_stride, x_zstride, y_zstride;
    uint x_zdiv;
    uint experts;
}
pc;

layout(constant_id = 0) const uint MODE = 0;

shared float ws[MM_BM][KS + 1]; // +1: rows in different banks
shared float xs[MM_BN][KS + 1];

// the row position of value e (0..63) of step j
uint kpos(uint j, uint e) {
#if DQ_FLOAT
    return j * KS + e;
#else
    const uvec2 p = dq_pos(j * 4u + (e >> 4));
    const uint f = e & 15u;
    return f < 8u ? p.x + f : p.y + f - 8u;
#endif
}

uint slot(uint i) { return uint(Ints(pc.ids).v[i]); }
uint64_t x_of_slot(uint s) { return pc.x + 4ul * uint64_t(s / pc.x_zdiv) * pc.x_zstride; }

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint o0 = gl_WorkGroupID.x * MM_BM, t0 = gl_WorkGroupID.y * MM_BN, z = gl_WorkGroupID.z;
    const bool grouped = pc.groups != 0ul;
    uint first = 0u, n_tok = pc.n_tok; // grouped: this expert's slots order[first, first + n_tok)
    if (grouped) {
        first = uint(Ints(pc.groups).v[z]);
        n_tok = uint(Ints(pc.groups).v[z + 1u]) - first;
        if (t0 >= n_tok) return; // the whole workgroup: uniform
    }
    const uint m = grouped ? z : pc.ids != 0ul ? uint(Ints(pc.ids).v[z]) : z;
    if (!in_part(pc.experts, m)) return; // the whole workgroup: uniform
    const uint64_t wm = pc.w + uint64_t(m) * pc.w_zstride;
    const uint64_t xb = pc.x + 4ul * uint64_t(z / pc.x_zdiv) * pc.x_zstride;
#if DQ_FLOAT
    const uint n_steps = (pc.n_in + KS - 1u) / KS;
#else
    const uint nc = (pc.n_in / DQ_QK) * DQ_CPB;
    const uint n_steps = (nc + 3u) / 4u;
#endif
    // this thread's outputs: rows tr, tr + 16; tokens tt, tt + 16, tt + 32, tt + 48
    const uint tr = tid % 16u, tt = tid / 16u;
    float acc[2][4];
    for (uint r = 0; r < 2u; ++r)
        for (uint t = 0; t < 4u; ++t) acc[r][t] = 0.0;

    for (uint j = 0; j < n_steps; ++j) {
        // the rows' 64 values (rows past n_out repeat the last; their sums are not written)
#if DQ_FLOAT
        for (uint i = tid; i < MM_BM * KS; i += NT) {
            const uint r = i / KS, e = i % KS, k = j * KS + e;
            const uint64_t row = wm + uint64_t(min(o0 + r, pc.n_out - 1u)) * pc.row_bytes;
            ws[r][e] = k < pc.n_in ? dq_one(row, k) : 0.0;
        }
#else
        if (tid < MM_BM * 4u) {
            const uint r = tid / 4u, cc = tid % 4u, c = j * 4u + cc;
            const uint64_t row = wm + uint64_t(min(o0 + r, pc.n_out - 1u)) * pc.row_bytes;
            float v[16];
            if (c < nc) {
                dq_chunk(row, c, v);
            } else {
                for (uint f = 0; f < 16u; ++f) v[f] = 0.0;
            }
            for (uint f = 0; f < 16u; ++f) ws[r][cc * 16u + f] = v[f];
        }
#endif
        // the same 64 values of each token's input
        for (uint i = tid; i < MM_BN * KS; i += NT) {
            const uint t = i / KS, e = i % KS, k = kpos(j, e);
            float xv = 0.0;
            if (t0 + t < n_tok && k < pc.n_in) {
                const uint64_t a = (grouped ? x_of_slot(slot(first + t0 + t)) : xb +
                                   4ul * uint64_t(t0 + t) * pc.x_stride) + 4ul * k;
                xv = Floats(a).v[0];
                if (MODE == 1u) xv = SWIGLU(xv, Floats(a - pc.x + pc.x_up).v[0]);
            }
            xs[t][e] = xv;
        }
        barrier();
        // a step's 64 products summed apart, then added: fewer roundings in a row than one
        // chain over the whole row (as accurate as mul_mat's sums)
        float part[2][4];
        for (uint t = 0; t < 4u; ++t) part[0][t] = part[1][t] = 0.0;
        for (uint e = 0; e < KS; ++e) {
            const float w0 = ws[tr][e], w1 = ws[tr + 16u][e];
            for (uint t = 0; t < 4u; ++t) {
                const float xv = xs[tt + 16u * t][e];
                part[0][t] = fma(w0, xv, part[0][t]);
                part[1][t] = fma(w1, xv, part[1][t]);
            }
        }
        for (uint t = 0; t < 4u; ++t) acc[0][t] += part[0][t], acc[1][t] += part[1][t];
        barrier();
    }

    for (uint r = 0; r < 2u; ++r) {
        const uint o = o0 + tr + 16u * r;
        for (uint t = 0; t < 4u; ++t) {
            const uint tok = t0 + tt + 16u * t;
            if (o < pc.n_out && tok < n_tok) {
                const uint64_t yi =
                    grouped ? uint64_t(slot(first + tok)) * pc.y_zstride + o
                            : uint64_t(z) * pc.y_zstride + uint64_t(tok) * pc.y_stride + o;
                Floats(pc.y + 4ul * yi).v[0] = acc[r][t];
            }
        }
    }
}
