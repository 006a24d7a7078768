#version 450
#include "common.glsl"
#include "rmsnorm.glsl"
// A MoE layer's residual step, a workgroup per token (striding over tokens past the grid):
// x += (the chosen experts' outputs, weighted and summed in the router's order) + (the shared
// experts' output, sigmoid-gated for qwen2moe), then y = rmsnorm(x) * w, the next block's
// input (skipped when y is 0).
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t x, y, w, parts, weights, shared_out, gate;
    uint n_tok, k, E, gate_stride;
    float eps;
    uint pad_;
} p;

void step(uint t) {
    uint tid = gl_LocalInvocationID.x;
    Floats x = Floats(p.x + 4ul * uint64_t(t) * p.E), parts = Floats(p.parts);
    Floats wts = Floats(p.weights), sh = Floats(p.shared_out);
    float g = 1.0;
    if (p.gate != 0ul) g = 1.0 / (1.0 + exp(-Floats(p.gate).v[t * p.gate_stride]));
    for (uint d = tid; d < p.E; d += 256) {
        float acc = 0.0;
        for (uint c = 0; c < p.k; c++) {
            uint s = t * p.k + c;
            acc += parts.v[s * p.E + d] * (p.weights != 0ul ? wts.v[s] : 1.0);
        }
        if (p.shared_out != 0ul) acc += sh.v[t * p.E + d] * g;
        x.v[d] += acc;
    }
    if (p.y != 0ul) rms_norm_row(x, Floats(p.y + 4ul * uint64_t(t) * p.E), Floats(p.w), p.E, p.eps);
}

void main() {
    for (uint t = gl_WorkGroupID.x; t < p.n_tok; t += gl_NumWorkGroups.x) step(t);
}
