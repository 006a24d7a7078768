#version 450
#include "common.glsl"
#include "rmsnorm.glsl"
// One workgroup per row; with add, the residual step x += add first.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t x, y, w, add;
    uint n, n_rows, x_stride, y_stride;
    float eps;
} p;

void main() {
    uint row = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    Floats x = Floats(p.x + 4ul * uint64_t(row) * p.x_stride);
    Floats y = Floats(p.y + 4ul * uint64_t(row) * p.y_stride);
    if (p.add != 0ul) {
        Floats a = Floats(p.add + 4ul * uint64_t(row) * p.x_stride);
        for (uint i = tid; i < p.n; i += 256) x.v[i] += a.v[i];
    }
    rms_norm_row(x, y, Floats(p.w), p.n, p.eps);
}
