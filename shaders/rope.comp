#version 450
#include "common.glsl"
// One workgroup per (head, token); each invocation rotates pairs as cpu_rope does, from x into
// y (the same rows in place, or another buffer such as the KV cache).
layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Push {
    uint64_t x, y, pos, freq_factors;
    uint n_tok, n_head, head_stride, row_stride, y_head_stride, y_row_stride, n_rot, mode;
    float theta_scale, freq_scale, ext_factor, attn_factor, corr0, corr1;
} p;

float yarn_ramp(uint i0) {
    float span = max(p.corr1 - p.corr0, 0.001);
    return 1.0 - min(1.0, max(0.0, (float(i0 / 2) - p.corr0) / span));
}

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y;
    Floats x = Floats(p.x + 4ul * (uint64_t(t) * p.row_stride + uint64_t(h) * p.head_stride));
    Floats y = Floats(p.y + 4ul * (uint64_t(t) * p.y_row_stride + uint64_t(h) * p.y_head_stride));
    float position = float(Ints(p.pos).v[t]);
    for (uint i0 = 2 * gl_LocalInvocationID.x; i0 < p.n_rot; i0 += 128) {
        // ggml advances the angle by repeated multiplication; the same rounding here
        float theta_extrap = position;
        for (uint j = 0; j < i0 / 2; j++) theta_extrap *= p.theta_scale;
        if (p.freq_factors != 0ul) theta_extrap /= Floats(p.freq_factors).v[i0 / 2];
        float theta_interp = p.freq_scale * theta_extrap;
        float theta = theta_interp, mscale = p.attn_factor;
        if (p.ext_factor != 0.0) {
            float mix = yarn_ramp(i0) * p.ext_factor;
            theta = theta_interp * (1.0 - mix) + theta_extrap * mix;
            mscale *= 1.0 + 0.1 * log(1.0 / p.freq_scale);
        }
        float c = cos(theta) * mscale, s = sin(theta) * mscale;
        uint a = p.mode == 2 ? i0 / 2 : i0;
        uint b = p.mode == 2 ? i0 / 2 + p.n_rot / 2 : i0 + 1;
        float x0 = x.v[a], x1 = x.v[b];
        y.v[a] = x0 * c - x1 * s;
        y.v[b] = x0 * s + x1 * c;
    }
}
