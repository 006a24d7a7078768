#version 450
// mul_mat_<type>: y = W x for MM_ROWS rows of W and up to MM_TOKS tokens per workgroup, W in a
// block format (dequant.glsl), x and y f32; semantics and grid in vk_ops.h (vk_mul_mat_push).
// Two pipelines of the same code fuse a SwiGLU into a product (no separate swiglu pass and
// barrier): mul_mat_gate_up (MODE 2) computes row o of W and row o of the up matrix at w_up
// together and writes silu(gate) * up; mul_mat_swiglu (MODE 1) takes x as the gate and x_up as
// the up rows and forms silu(x) * up as it loads its input (for gate and up matrices of
// different formats).
//
// The workgroup's threads walk the row together: thread i takes chunks i, i + MM_WG, ...
// (16 values each, consecutive chunks reading consecutive bytes, so the loads coalesce), and
// decodes the chunk of each of its rows once for all the workgroup's tokens; block scales are
// applied to partial sums, not to each value. Every thread keeps MM_ROWS x MM_TOKS f32
// partial sums, added up at the end by subgroupAdd and then across subgroups through shared
// memory. Each weight is read once per MM_TOKS tokens. F32/F16/BF16 rows: 4 values per
// thread step (vector loads) when n_in % 4 == 0 and the rows are aligned, else one.
#include "common.glsl"
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
#include "dequant.glsl"

// Must match VK_MM_ROWS / VK_MM_TOKS in vk_ops.h (they size the grid).
#define MM_ROWS 2
#define MM_TOKS 8
#ifndef MM_WG
#define MM_WG 64
#endif

layout(local_size_x = MM_WG, local_size_y = 1, local_size_z = 1) in;

layout(push_constant, std430) uniform Push {
    uint64_t w, x, y, ids, x_up, w_up, groups;
    uint64_t w_zstride;
    uint n_in, n_out, n_tok, row_bytes;
    uint x_stride, y_stride, x_zstride, y_zstride;
    uint x_zdiv;
    uint experts;
}
pc;

layout(buffer_reference, std430, buffer_reference_align = 16) buffer MmVec4 { vec4 v[]; };

// one partial sum per (row, token) per subgroup (sized for subgroups of a single thread)
shared float red[MM_ROWS * MM_TOKS][MM_WG];

// 4 floats of x at byte address a (16-aligned when v4)
vec4 ldx4_raw(uint64_t a, bool v4) {
    if (v4) return MmVec4(a).v[0];
    Floats f = Floats(a);
    return vec4(f.v[0], f.v[1], f.v[2], f.v[3]);
}

// 0: plain, 1: SwiGLU of the input (x_up), 2: SwiGLU of the gate and up products (w_up). A
// specialization constant, not a test of the addresses: lavapipe evaluated the SwiGLU of a
// run-time branch in every product (decode 40% slower there).
layout(constant_id = 0) const uint MODE = 0;
const bool SWIGLU_IN = MODE == 1u, GATE_UP = MODE == 2u;

// the product's input at x's byte address a: x itself, or silu(x) * up
vec4 ldx4(uint64_t a, bool v4) {
    vec4 v = ldx4_raw(a, v4);
    if (!SWIGLU_IN) return v;
    return SWIGLU(v, ldx4_raw(a - pc.x + pc.x_up, v4));
}

float ldx1(uint64_t a) {
    float v = Floats(a).v[0];
    if (!SWIGLU_IN) return v;
    return SWIGLU(v, Floats(a - pc.x + pc.x_up).v[0]);
}

void main() {
    const uint tid = gl_LocalInvocationID.x;
    // GATE_UP: one output row, the workgroup's two rows are its gate and up rows
    const uint o0 = GATE_UP ? gl_WorkGroupID.x : gl_WorkGroupID.x * MM_ROWS;
    const uint t0 = gl_WorkGroupID.y * MM_TOKS;
    const uint z = gl_WorkGroupID.z;
    if (o0 >= pc.n_out || t0 >= pc.n_tok) return; // whole workgroup: uniform
    const uint nt = min(uint(MM_TOKS), pc.n_tok - t0);

    const uint m = pc.ids != 0ul ? uint(Ints(pc.ids).v[z]) : z;
    if (!in_part(pc.experts, m)) return; // the whole workgroup: uniform
    const uint64_t wm = pc.w + uint64_t(m) * pc.w_zstride;
    uint64_t row[MM_ROWS];
    // rows past n_out recompute the last row (no divergence); their sums are not written
    [[unroll]] for (uint r = 0; r < MM_ROWS; ++r)
        row[r] = wm + uint64_t(min(o0 + r, pc.n_out - 1u)) * pc.row_bytes;
    if (GATE_UP) {
        row[0] = wm + uint64_t(o0) * pc.row_bytes;
        row[1] = pc.w_up + uint64_t(m) * pc.w_zstride + uint64_t(o0) * pc.row_bytes;
    }

    const uint64_t xs = 4ul * uint64_t(pc.x_stride);
    const uint64_t xb =
        pc.x + 4ul * (uint64_t(z / pc.x_zdiv) * pc.x_zstride + uint64_t(t0) * pc.x_stride);
    const bool xv4 = ((xb | xs | pc.x_up) & 15ul) == 0ul;

    float acc[MM_ROWS][MM_TOKS];
    [[unroll]] for (uint r = 0; r < MM_ROWS; ++r)
        [[unroll]] for (uint t = 0; t < MM_TOKS; ++t) acc[r][t] = 0.0;

#if DQ_FLOAT
    // 4 values at a time (vector loads) when rows allow, else one
#if defined(QTYPE_F32)
    const uint64_t walign = 15ul;
#else
    const uint64_t walign = 7ul;
#endif
    if ((pc.n_in & 3u) == 0u && ((wm | pc.w_up | uint64_t(pc.row_bytes)) & walign) == 0ul) {
        const uint nu = pc.n_in / 4u;
        for (uint u = tid; u < nu; u += MM_WG) {
            vec4 wv[MM_ROWS];
            [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) {
#if defined(QTYPE_F32)
                wv[r] = MmVec4(row[r]).v[u];
#elif defined(QTYPE_F16)
                uvec2 h = DqU2(row[r]).v[u];
                wv[r] = vec4(unpackHalf2x16(h.x), unpackHalf2x16(h.y));
#else
                uvec2 h = DqU2(row[r]).v[u];
                wv[r] = vec4(uintBitsToFloat(h.x << 16), uintBitsToFloat(h.x & 0xFFFF0000u),
                             uintBitsToFloat(h.y << 16), uintBitsToFloat(h.y & 0xFFFF0000u));
#endif
            }
            [[unroll]] for (uint t = 0; t < MM_TOKS; ++t) {
                if (t < nt) {
                    vec4 xv = ldx4(xb + uint64_t(t) * xs + 16ul * u, xv4);
                    [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) acc[r][t] += dot(wv[r], xv);
                }
            }
        }
    } else {
        for (uint i = tid; i < pc.n_in; i += MM_WG) {
            float wv[MM_ROWS];
            [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) wv[r] = dq_one(row[r], i);
            [[unroll]] for (uint t = 0; t < MM_TOKS; ++t) {
                if (t < nt) {
                    float xv = ldx1(xb + uint64_t(t) * xs + 4ul * uint64_t(i));
                    [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) acc[r][t] += wv[r] * xv;
                }
            }
        }
    }
#else
    // Per chunk and row: 16 small-integer levels q and per-run (a, b), value = a*q + b, so
    // sum(value * x) = a * sum(q * x) + b * sum(x), sum(x) shared by the rows.
    const uint nc = (pc.n_in / DQ_QK) * DQ_CPB;
    for (uint c = tid; c < nc; c += MM_WG) {
        float q[MM_ROWS][16];
        vec4 ab[MM_ROWS];
        [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) dq_chunk_q(row[r], c, q[r], ab[r]);
        const uvec2 pos = dq_pos(c);
        [[unroll]] for (uint t = 0; t < MM_TOKS; ++t) {
            if (t < nt) {
                const uint64_t xt = xb + uint64_t(t) * xs;
                const vec4 x0 = ldx4(xt + 4ul * pos.x, xv4);
                const vec4 x1 = ldx4(xt + 4ul * pos.x + 16ul, xv4);
                const vec4 x2 = ldx4(xt + 4ul * pos.y, xv4);
                const vec4 x3 = ldx4(xt + 4ul * pos.y + 16ul, xv4);
#if DQ_HAS_MIN
                const float sx0 = dot(x0 + x1, vec4(1.0)), sx1 = dot(x2 + x3, vec4(1.0));
#endif
                [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) {
                    float d0 = dot(vec4(q[r][0], q[r][1], q[r][2], q[r][3]), x0);
                    d0 += dot(vec4(q[r][4], q[r][5], q[r][6], q[r][7]), x1);
                    float d1 = dot(vec4(q[r][8], q[r][9], q[r][10], q[r][11]), x2);
                    d1 += dot(vec4(q[r][12], q[r][13], q[r][14], q[r][15]), x3);
                    float s = acc[r][t] + ab[r].x * d0 + ab[r].z * d1;
#if DQ_HAS_MIN
                    s += ab[r].y * sx0 + ab[r].w * sx1;
#endif
                    acc[r][t] = s;
                }
            }
        }
    }
#endif

    // reduce: within each subgroup, then across subgroups
    [[unroll]] for (uint t = 0; t < MM_TOKS; ++t) {
        if (t < nt) {
            [[unroll]] for (uint r = 0; r < MM_ROWS; ++r) {
                const float s = subgroupAdd(acc[r][t]);
                if (subgroupElect()) red[r * MM_TOKS + t][gl_SubgroupID] = s;
            }
        }
    }
    barrier();
    if (GATE_UP) {
        if (tid < nt) {
            float sg = 0.0, su = 0.0;
            for (uint g = 0; g < gl_NumSubgroups; ++g) sg += red[tid][g], su += red[MM_TOKS + tid][g];
            const uint64_t yi = uint64_t(z) * pc.y_zstride + uint64_t(t0 + tid) * pc.y_stride + o0;
            Floats(pc.y + 4ul * yi).v[0] = SWIGLU(sg, su);
        }
    } else if (tid < MM_ROWS * MM_TOKS) {
        const uint r = tid / MM_TOKS, t = tid % MM_TOKS;
        if (t < nt && o0 + r < pc.n_out) {
            float s = 0.0;
            for (uint g = 0; g < gl_NumSubgroups; ++g) s += red[tid][g];
            const uint64_t yi = uint64_t(z) * pc.y_zstride + uint64_t(t0 + t) * pc.y_stride + o0 + r;
            Floats(pc.y + 4ul * yi).v[0] = s;
        }
    }
}
