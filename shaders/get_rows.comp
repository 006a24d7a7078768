#version 450
// get_rows_<type>: y[r*n_in + i] = row ids[r] of W, dequantized (vk_get_rows_push in
// vk_ops.h); one workgroup per row. Bit-identical to quant.c's to_float (see dequant.glsl).
#include "common.glsl"
#define DQ_EXACT // bit-identical to quant.c
#include "dequant.glsl"

#define GR_WG 64

layout(local_size_x = GR_WG, local_size_y = 1, local_size_z = 1) in;

layout(push_constant, std430) uniform Push {
    uint64_t w, ids, y;
    uint n_in, row_bytes, n_rows, pad_;
}
pc;

void main() {
    const uint r = gl_WorkGroupID.x;
    if (r >= pc.n_rows) return;
    const uint64_t row = pc.w + uint64_t(uint(Ints(pc.ids).v[r])) * pc.row_bytes;
    Floats y = Floats(pc.y + 4ul * uint64_t(r) * pc.n_in);
#if DQ_FLOAT
    for (uint i = gl_LocalInvocationID.x; i < pc.n_in; i += GR_WG) y.v[i] = dq_one(row, i);
#else
    const uint nc = (pc.n_in / DQ_QK) * DQ_CPB;
    for (uint c = gl_LocalInvocationID.x; c < nc; c += GR_WG) {
        float v[16];
        dq_chunk(row, c, v);
        const uvec2 pos = dq_pos(c);
        for (uint k = 0; k < 8; ++k) {
            y.v[pos.x + k] = v[k];
            y.v[pos.y + k] = v[k + 8];
        }
    }
#endif
}
