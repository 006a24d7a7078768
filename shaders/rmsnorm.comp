#version 450
#include "common.glsl"
// One workgroup per row; the sum of squares in a shared-memory tree.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t x, y, w, add;
    uint n, n_rows, x_stride, y_stride;
    float eps;
} p;
shared float partial[256];

void main() {
    uint row = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    Floats x = Floats(p.x + 4ul * uint64_t(row) * p.x_stride);
    Floats y = Floats(p.y + 4ul * uint64_t(row) * p.y_stride);
    Floats w = Floats(p.w);
    float sum = 0.0;
    if (p.add != 0ul) { // each invocation reads back only the values it wrote
        Floats a = Floats(p.add + 4ul * uint64_t(row) * p.x_stride);
        for (uint i = tid; i < p.n; i += 256) x.v[i] += a.v[i];
    }
    for (uint i = tid; i < p.n; i += 256) sum += x.v[i] * x.v[i];
    partial[tid] = sum;
    barrier();
    for (uint s = 128; s > 0; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        barrier();
    }
    float scale = 1.0 / sqrt(partial[0] / float(p.n) + p.eps);
    for (uint i = tid; i < p.n; i += 256) y.v[i] = x.v[i] * scale * w.v[i];
}
