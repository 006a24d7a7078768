#version 450
#include "common.glsl"
// The split attention's partial results (attention.comp with chunk != 0) combined: per
// (head, token) workgroup, the splits' weighted sums rescaled to the largest running maximum
// and divided by the rescaled sum of weights. A split that saw no key (maximum -inf) counts 0:
// exp(-inf - M) is 0.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t part, dst;
    uint n_head, n_split, head_dim_v, out_stride;
} pc;

shared float sh_w[64]; // each split's factor exp(m_s - M) / L (VK_ATTN_MAX_SPLIT of vk_ops.h)

void main() {
    const uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    const uint hdv = pc.head_dim_v, rec = hdv + 2u;
    Floats pp = Floats(pc.part + 4ul * (uint64_t(t) * pc.n_head + h) * pc.n_split * rec);
    if (tid == 0u) {
        float mx = uintBitsToFloat(0xff800000u);
        for (uint s = 0u; s < pc.n_split; s++) mx = max(mx, pp.v[s * rec]);
        float l = 0.0;
        for (uint s = 0u; s < pc.n_split; s++) {
            const float ms = pp.v[s * rec];
            sh_w[s] = exp(ms - mx);
            l += sh_w[s] * pp.v[s * rec + 1u];
        }
        for (uint s = 0u; s < pc.n_split; s++) sh_w[s] /= l;
    }
    barrier();
    Floats op = Floats(pc.dst + 4ul * (uint64_t(t) * pc.out_stride + uint64_t(h) * hdv));
    for (uint d = tid; d < hdv; d += 256u) {
        float sum = 0.0;
        for (uint s = 0u; s < pc.n_split; s++) sum += sh_w[s] * pp.v[s * rec + 2u + d];
        op.v[d] = sum;
    }
}
