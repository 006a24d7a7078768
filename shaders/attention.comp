#version 450
#include "common.glsl"
// Causal grouped-query attention, one workgroup per (head, token), as cpu_attention computes
// it (struct attn_args in cpu.h): token t at position pos0 + t sees cache positions
// 0..pos0 + t; head h reads kv head h / (n_head / n_head_kv); out = softmax(scale * q.k) . v.
// MLA is the case n_head_kv = 1 with v == k and v_stride == k_stride.
//
// The context is walked in tiles of keys with an online softmax (a running maximum; the sum
// of the weights and the weighted values rescaled whenever the maximum grows), so nothing
// grows with the context. Per tile:
//   1. scores: TPK threads per key, each a strided share of the dot product (its loads all
//      issued before the first use), the shares summed in shared memory; the tile's maximum
//      by a shared atomic on order-preserving integer keys;
//   2. weights p = exp(score - running maximum), in shared memory;
//   3. values: threads own output dimensions (VW threads across the row, NT / VW slices of
//      the tile's keys), each accumulating p * v.
// At the end the slices' sums are added and divided by the sum of the weights.
// Split (chunk != 0, flash-decoding: few (head, token) workgroups and a long context): the
// grid's z-th workgroup takes keys [z * chunk, (z + 1) * chunk) and writes its running maximum,
// its sum of weights and its unnormalized weighted sums to part, for attn_combine.
// Rows are read as vec4 when every address, stride and width allows (multiples of 4 floats,
// 16-byte aligned bases), else as floats.
// Limits: head_dim <= 1024, head_dim_v <= 1024 (MLA's 576 / 512 fit).
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t q, k, v, dst, part;
    uint q_stride, k_stride, v_stride, out_stride;
    uint n_tok, pos0, n_head, n_head_kv, head_dim, head_dim_v;
    float scale;
    uint chunk;
} pc;

layout(buffer_reference, std430, buffer_reference_align = 16) buffer AttnVec4 { vec4 v[]; };

#define NT 256u
#define MAX_HEAD_DIM 1024u
#define MAX_ND 4 // float path: value dimensions per thread, head_dim_v <= MAX_ND * NT
#define BATCH 24 // vec4 loads of a key row a thread issues at once (MLA: 18)

shared vec4 sh_q[MAX_HEAD_DIM / 4u];
shared float sh_part[NT]; // partial dot products, then each slice's sum of weights
shared float sh_p[NT];    // the tile's scores, then its weights
shared uint sh_max[2];    // the tile's maximum score as an ordered key, by tile parity
shared float sh_acc[MAX_ND * NT]; // each slice's weighted sums, [slice][dimension]

// Order-preserving map of floats to unsigned integers (larger float, larger key; -inf > 0).
uint fkey(float f) {
    uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;
}
float funkey(uint u) {
    return uintBitsToFloat((u & 0x80000000u) != 0u ? u & 0x7fffffffu : ~u);
}

float q_at(uint i) { return sh_q[i >> 2][i & 3u]; }

void main() {
    const uint tid = gl_LocalInvocationID.x;
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    const uint hd = pc.head_dim, hdv = pc.head_dim_v;
    const uint kvh = h / (pc.n_head / pc.n_head_kv);
    const uint n_all = pc.pos0 + t + 1u;
    const uint j_begin = pc.chunk == 0u ? 0u : min(gl_WorkGroupID.z * pc.chunk, n_all);
    const uint n_kv = pc.chunk == 0u ? n_all : min(j_begin + pc.chunk, n_all); // keys end
    const float NEG_INF = uintBitsToFloat(0xff800000u);
    const uint64_t kbase = pc.k + 4ul * uint64_t(kvh) * hd;
    const uint64_t vbase = pc.v + 4ul * uint64_t(kvh) * hdv;
    const bool v4 = ((kbase | vbase) & 15ul) == 0ul &&
                    ((hd | hdv | pc.k_stride | pc.v_stride) & 3u) == 0u;

    Floats qp = Floats(pc.q + 4ul * (uint64_t(t) * pc.q_stride + uint64_t(h) * hd));
    for (uint i = tid; i < (hd + 3u) / 4u * 4u; i += NT) sh_q[i >> 2][i & 3u] = i < hd ? qp.v[i] : 0.0;

    // Threads per key: each thread's share of a dot product at most 128 values.
    uint tpk = 1u;
    while (hd > 128u * tpk && tpk < NT) tpk *= 2u;
    const uint tile = NT / tpk;
    const uint key_l = tid / tpk, part = tid % tpk;
    // Threads across the value row (a power of two >= 32 floats or >= 8 vec4), and slices.
    const uint width = v4 ? hdv / 4u : hdv;
    uint vw = v4 ? 8u : 32u;
    while (vw < width && vw < NT) vw *= 2u;
    const uint n_slice = NT / vw, slice = tid / vw, d0 = tid % vw;
    const uint nd = (width + vw - 1u) / vw; // 1 on the vec4 path

    float acc[MAX_ND];
    for (int c = 0; c < MAX_ND; c++) acc[c] = 0.0;
    vec4 acc4 = vec4(0.0);
    float l = 0.0, m = NEG_INF;
    if (tid == 0u) {
        sh_max[0] = 0u;
        sh_max[1] = 0u;
    }
    barrier();

    uint par = 0u;
    for (uint j0 = j_begin; j0 < n_kv; j0 += tile, par ^= 1u) {
        // 1. scores
        const uint j = j0 + key_l;
        float s = 0.0;
        if (j < n_kv) {
            if (v4) {
                AttnVec4 kp = AttnVec4(kbase + 4ul * uint64_t(j) * pc.k_stride);
                const uint hd4 = hd / 4u;
                for (uint i0 = part; i0 < hd4; i0 += uint(BATCH) * tpk) {
                    vec4 kv[BATCH];
                    for (int c = 0; c < BATCH; c++) {
                        const uint i = i0 + uint(c) * tpk;
                        kv[c] = i < hd4 ? kp.v[i] : vec4(0.0);
                    }
                    for (int c = 0; c < BATCH; c++) {
                        const uint i = i0 + uint(c) * tpk;
                        if (i < hd4) s += dot(sh_q[i], kv[c]);
                    }
                }
            } else {
                Floats kp = Floats(kbase + 4ul * uint64_t(j) * pc.k_stride);
                float a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
                uint i = part;
                for (; i + 3u * tpk < hd; i += 4u * tpk) {
                    a0 = fma(q_at(i), kp.v[i], a0);
                    a1 = fma(q_at(i + tpk), kp.v[i + tpk], a1);
                    a2 = fma(q_at(i + 2u * tpk), kp.v[i + 2u * tpk], a2);
                    a3 = fma(q_at(i + 3u * tpk), kp.v[i + 3u * tpk], a3);
                }
                for (; i < hd; i += tpk) a0 = fma(q_at(i), kp.v[i], a0);
                s = (a0 + a1) + (a2 + a3);
            }
        }
        sh_part[tid] = s;
        barrier();
        if (tid < tile) {
            float sc = NEG_INF;
            if (j0 + tid < n_kv) {
                float sum = 0.0;
                for (uint c = 0u; c < tpk; c++) sum += sh_part[tid * tpk + c];
                sc = sum * pc.scale;
            }
            sh_p[tid] = sc;
            atomicMax(sh_max[par], fkey(sc));
        }
        // The other parity's maximum was last read before this tile's first barrier.
        if (tid == 0u) sh_max[par ^ 1u] = 0u;
        barrier();

        // 2. weights against the new running maximum
        const float m_new = max(m, funkey(sh_max[par]));
        const float rescale = m_new == m ? 1.0 : exp(m - m_new);
        m = m_new;
        if (tid < tile) sh_p[tid] = exp(sh_p[tid] - m_new);
        barrier();

        // 3. values
        l *= rescale;
        const uint n_here = min(tile, n_kv - j0);
        if (v4) {
            acc4 *= rescale;
            if (d0 < width) {
                uint jj = slice;
                for (; jj + 3u * n_slice < n_here; jj += 4u * n_slice) {
                    vec4 vv[4];
                    for (uint c = 0u; c < 4u; c++)
                        vv[c] = AttnVec4(vbase + 4ul * uint64_t(j0 + jj + c * n_slice) * pc.v_stride).v[d0];
                    for (uint c = 0u; c < 4u; c++) {
                        const float p = sh_p[jj + c * n_slice];
                        l += p;
                        acc4 += p * vv[c];
                    }
                }
                for (; jj < n_here; jj += n_slice) {
                    const float p = sh_p[jj];
                    l += p;
                    acc4 += p * AttnVec4(vbase + 4ul * uint64_t(j0 + jj) * pc.v_stride).v[d0];
                }
            }
        } else {
            for (int c = 0; c < MAX_ND; c++) acc[c] *= rescale;
            for (uint jj = slice; jj < n_here; jj += n_slice) {
                const float p = sh_p[jj];
                Floats vp = Floats(vbase + 4ul * uint64_t(j0 + jj) * pc.v_stride);
                l += p;
                for (int c = 0; c < MAX_ND; c++) {
                    const uint d = d0 + uint(c) * vw;
                    if (uint(c) < nd && d < hdv) acc[c] = fma(p, vp.v[d], acc[c]);
                }
            }
        }
        // sh_part and sh_p are next written after the next tile's first barrier.
    }

    // The slices' sums (all slices share the running maximum), then the output row.
    barrier();
    if (d0 == 0u) sh_part[slice] = l;
    if (v4) {
        if (d0 < width)
            for (uint c = 0u; c < 4u; c++) sh_acc[slice * hdv + 4u * d0 + c] = acc4[c];
    } else {
        for (int c = 0; c < MAX_ND; c++) {
            const uint d = d0 + uint(c) * vw;
            if (uint(c) < nd && d < hdv) sh_acc[slice * hdv + d] = acc[c];
        }
    }
    barrier();
    float lsum = 0.0;
    for (uint sl = 0u; sl < n_slice; sl++) lsum += sh_part[sl];
    if (pc.chunk != 0u) { // [m, l, sums[hdv]] per (token, head, split)
        const uint64_t rec = (uint64_t(t) * pc.n_head + h) * gl_NumWorkGroups.z + gl_WorkGroupID.z;
        Floats pp = Floats(pc.part + 4ul * rec * (hdv + 2u));
        if (tid == 0u) {
            pp.v[0] = m;
            pp.v[1] = lsum;
        }
        for (uint d = tid; d < hdv; d += NT) {
            float sum = 0.0;
            for (uint sl = 0u; sl < n_slice; sl++) sum += sh_acc[sl * hdv + d];
            pp.v[2u + d] = sum;
        }
        return;
    }
    const float inv = 1.0 / lsum;
    Floats op = Floats(pc.dst + 4ul * (uint64_t(t) * pc.out_stride + uint64_t(h) * hdv));
    for (uint d = tid; d < hdv; d += NT) {
        float sum = 0.0;
        for (uint sl = 0u; sl < n_slice; sl++) sum += sh_acc[sl * hdv + d];
        op.v[d] = sum * inv;
    }
}
