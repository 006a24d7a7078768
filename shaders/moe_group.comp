#version 450
#include "common.glsl"
// The (token, choice) slots of a batch grouped by chosen expert, for the tiled expert products
// (mul_mm with groups): offsets[e] .. offsets[e + 1] index order[], which lists expert e's
// slots (in no particular order: each slot's product is computed alone). One workgroup.
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Push {
    uint64_t ids, offsets, order;
    uint n_slots, n_expert;
} p;

shared uint count[512], next[512]; // n_expert <= 512 (the router's limit)

void main() {
    const uint tid = gl_LocalInvocationID.x;
    Ints ids = Ints(p.ids);
    for (uint e = tid; e < p.n_expert; e += 256) count[e] = 0;
    barrier();
    for (uint s = tid; s < p.n_slots; s += 256) {
        const uint e = uint(ids.v[s]);
        if (e < p.n_expert) atomicAdd(count[e], 1u);
    }
    barrier();
    if (tid == 0u) {
        Ints off = Ints(p.offsets);
        uint run = 0;
        for (uint e = 0; e < p.n_expert; e++) {
            next[e] = run;
            off.v[e] = int(run);
            run += count[e];
        }
        off.v[p.n_expert] = int(run);
    }
    barrier();
    for (uint s = tid; s < p.n_slots; s += 256) {
        const uint e = uint(ids.v[s]);
        if (e < p.n_expert) Ints(p.order).v[atomicAdd(next[e], 1u)] = int(s);
    }
}
