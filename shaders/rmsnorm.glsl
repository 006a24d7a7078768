// The RMSNorm of one row by one workgroup of 256 invocations: y[i] = x[i] / sqrt(mean(x^2) +
// eps) * w[i], the sum of squares in a shared-memory tree. Invocation tid touches only
// i = tid, tid + 256, ..., so x may hold values it has just written itself.
shared float rms_partial[256];

void rms_norm_row(Floats x, Floats y, Floats w, uint n, float eps) {
    uint tid = gl_LocalInvocationID.x;
    float sum = 0.0;
    for (uint i = tid; i < n; i += 256) sum += x.v[i] * x.v[i];
    rms_partial[tid] = sum;
    barrier();
    for (uint s = 128; s > 0; s >>= 1) {
        if (tid < s) rms_partial[tid] += rms_partial[tid + s];
        barrier();
    }
    float scale = 1.0 / sqrt(rms_partial[0] / float(n) + eps);
    barrier(); // every invocation has read the sum before a next row's call overwrites it
    for (uint i = tid; i < n; i += 256) y.v[i] = x.v[i] * scale * w.v[i];
}
