#version 450
#include "common.glsl"
// y += x * sigmoid(gate) per token: qwen2moe's gated shared expert.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push { uint64_t y, x, gate; uint n_tok, E, gate_stride; } p;
void main() {
    uint d = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (d >= p.E) return;
    float g = 1.0 / (1.0 + exp(-Floats(p.gate).v[t * p.gate_stride]));
    uint i = t * p.E + d;
    Floats(p.y).v[i] += Floats(p.x).v[i] * g;
}
