#version 450
#include "common.glsl"
// Each token's chosen experts' outputs, weighted and summed in the router's order, then the
// shared experts' output added (sigmoid-gated for qwen2moe): the MoE layer's output in one pass.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t parts, w, out_, shared_out, gate;
    uint n_tok, k, E, gate_stride;
} p;
void main() {
    uint d = gl_GlobalInvocationID.x, t = gl_WorkGroupID.y;
    if (d >= p.E) return;
    Floats parts = Floats(p.parts), w = Floats(p.w);
    float acc = 0.0;
    for (uint c = 0; c < p.k; c++) {
        uint s = t * p.k + c;
        acc += parts.v[s * p.E + d] * (p.w != 0ul ? w.v[s] : 1.0);
    }
    if (p.shared_out != 0ul) {
        float g = 1.0;
        if (p.gate != 0ul) g = 1.0 / (1.0 + exp(-Floats(p.gate).v[t * p.gate_stride]));
        acc += Floats(p.shared_out).v[t * p.E + d] * g;
    }
    Floats(p.out_).v[t * p.E + d] = acc;
}
