#version 450
#include "common.glsl"
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push { uint64_t gate, up, out_; uint n; } p;
void main() {
    Floats g = Floats(p.gate), u = Floats(p.up), o = Floats(p.out_);
    for (uint i = gl_GlobalInvocationID.x; i < p.n; i += gl_NumWorkGroups.x * 256) {
        float v = g.v[i];
        o.v[i] = v / (1.0 + exp(-v)) * u.v[i];
    }
}
