#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push { uint64_t y, x; uint n, x_period; } p;
void main() {
    Floats y = Floats(p.y), x = Floats(p.x);
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * 256)
        y.v[i] += x.v[p.x_period != 0 ? i % p.x_period : i];
}
