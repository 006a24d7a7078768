#version 450
#include "common.glsl"
// Each token's chosen experts' outputs, weighted and summed in the router's order.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push { uint64_t parts, w, out_; uint n_tok, k, E; } p;
void main() {
    uint d = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (d >= p.E) return;
    Floats parts = Floats(p.parts), w = Floats(p.w);
    float acc = 0.0;
    for (uint c = 0; c < p.k; c++) {
        uint s = t * p.k + c;
        acc += parts.v[s * p.E + d] * w.v[s];
    }
    Floats(p.out_).v[t * p.E + d] = acc;
}
