#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t src, dst;
    uint n_rows, n_cols, src_stride, dst_stride;
} p;
void main() {
    uint r = gl_WorkGroupID.x;
    Words s = Words(p.src + 4ul * uint64_t(r) * p.src_stride);
    Words d = Words(p.dst + 4ul * uint64_t(r) * p.dst_stride);
    for (uint i = gl_LocalInvocationID.x; i < p.n_cols; i += 256) d.v[i] = s.v[i];
}
