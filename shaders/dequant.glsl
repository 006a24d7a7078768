// Dequantization of one row of a weight matrix at a device address, for the block format
// selected by one of -DQTYPE_F32, -DQTYPE_F16, ... -DQTYPE_Q6_K (ggml's block layouts, as
// quant.c implements them). Include after common.glsl.
//
// Every type defines:
//   DQ_QK     values per block, DQ_BYTES bytes per block
//   DQ_FLOAT  1 for F32 / F16 / BF16 (block of one value), 0 for the block formats
//   float dq_one(uint64_t row, uint i)   value i of the row (any type; slow for block formats)
// The block formats also define a "chunk" API used by the kernels: a row of n values is
// n / DQ_QK * DQ_CPB chunks of 16 values each, in two runs of 8 consecutive values:
//   uvec2 dq_pos(uint c)
//       the runs start at values pos.x and pos.y of the row
//   void dq_chunk(uint64_t row, uint c, out float v[16])
//       v[0..7] are values pos.x + 0..7, v[8..15] values pos.y + 0..7
//   void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab)
//       the same values as v = a * q + b: q small integers (exact floats), a = ab.x, b = ab.y
//       for the first run, ab.z, ab.w for the second; b == 0 unless DQ_HAS_MIN (Q4_1, Q5_1,
//       Q2_K, Q4_K, Q5_K), so kernels can apply scales to partial sums
// Consecutive chunks read consecutive bytes of a block (chunk c of the row reads 8 bytes of
// quants, 16 for Q8_0, of block c / DQ_CPB plus the block's scales), so threads walking
// consecutive chunks coalesce.
//
// Values are bit-identical to quant.c's to_float functions when DQ_EXACT is defined (get_rows):
// the same operations in the same order, with `precise` forbidding the fusion of a product and a
// sum into an fma the C code does not have. Without it the compiler may fuse them (values then
// differ from quant.c by at most an ulp).
//
// Small integers become floats without int-to-float conversion instructions (a quarter-rate
// pipe on NVIDIA): u | 0x4B000000 is the float 2^23 + u for u < 2^23, and subtracting 2^23
// (+ an integer bias) gives u (- bias) exactly.

layout(buffer_reference, std430, buffer_reference_align = 8) buffer DqU2 { uvec2 v[]; };

float dq_f16(uint h) { return unpackHalf2x16(h).x; }
float dq_half(uint64_t a) { return unpackHalf2x16(uint(Halves(a).v[0])).x; }
uint dq_u8(uint64_t a) { return uint(Bytes(a).v[0]); }

#ifdef DQ_EXACT
#define DQ_PRECISE precise
#else
#define DQ_PRECISE
#endif

// exactly float(u) and float(int(u) - bias), u < 2^22, bias a small integer
float dq_uf(uint u) { return uintBitsToFloat(u | 0x4B000000u) - 8388608.0; }
float dq_uf_off(uint u, float bias) { return uintBitsToFloat(u | 0x4B000000u) - (8388608.0 + bias); }

// 8 bytes as two little-endian words, from addresses aligned to 2, 4 or 8.
uvec2 dq_ld8_2(uint64_t a) {
    Halves h = Halves(a);
    return uvec2(uint(h.v[0]) | (uint(h.v[1]) << 16), uint(h.v[2]) | (uint(h.v[3]) << 16));
}
uvec2 dq_ld8_4(uint64_t a) {
    Words w = Words(a);
    return uvec2(w.v[0], w.v[1]);
}
uvec2 dq_ld8_8(uint64_t a) { return DqU2(a).v[0]; }

// byte k (0..7) of an 8-byte pair
uint dq_byte(uvec2 q, uint k) { return ((k < 4 ? q.x : q.y) >> (8 * (k & 3))) & 0xFFu; }

// ---------------------------------------------------------------------------- float types
#if defined(QTYPE_F32) || defined(QTYPE_F16) || defined(QTYPE_BF16)
#define DQ_FLOAT 1
#define DQ_QK 1
#if defined(QTYPE_F32)
#define DQ_BYTES 4
float dq_one(uint64_t row, uint i) { return Floats(row).v[i]; }
#elif defined(QTYPE_F16)
#define DQ_BYTES 2
float dq_one(uint64_t row, uint i) { return dq_f16(uint(Halves(row).v[i])); }
#else
#define DQ_BYTES 2
float dq_one(uint64_t row, uint i) { return uintBitsToFloat(uint(Halves(row).v[i]) << 16); }
#endif

// ---------------------------------------------------------------------------- 32-value blocks
#elif defined(QTYPE_Q4_0) || defined(QTYPE_Q4_1) || defined(QTYPE_Q5_0) ||                  \
    defined(QTYPE_Q5_1) || defined(QTYPE_Q8_0)
#define DQ_FLOAT 0
#define DQ_QK 32
#define DQ_CPB 2 // chunk p of a block: quant bytes 8p..8p+7 (Q8_0: 16p..16p+15)

#if defined(QTYPE_Q8_0)
uvec2 dq_pos(uint c) {
    uint b = (c >> 1) * 32u + (c & 1u) * 16u;
    return uvec2(b, b + 8u);
}
#else
uvec2 dq_pos(uint c) {
    uint b = (c >> 1) * 32u + (c & 1u) * 8u;
    return uvec2(b, b + 16u);
}
#endif

#if defined(QTYPE_Q4_0)
#define DQ_BYTES 18
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 1) * DQ_BYTES;
    uint p = c & 1u;
    float d = dq_half(blk);
    uvec2 w = dq_ld8_2(blk + 2u + 8u * p);
    ab = vec4(d, 0.0, d, 0.0);
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k);
        q[k] = dq_uf_off(b & 15u, 8.0);
        q[k + 8] = dq_uf_off(b >> 4, 8.0);
    }
}
#elif defined(QTYPE_Q4_1)
#define DQ_BYTES 20
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 1) * DQ_BYTES;
    uint p = c & 1u;
    vec2 dm = unpackHalf2x16(Words(blk).v[0]);
    uvec2 w = dq_ld8_4(blk + 4u + 8u * p);
    ab = vec4(dm, dm);
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k);
        q[k] = dq_uf(b & 15u);
        q[k + 8] = dq_uf(b >> 4);
    }
}
#elif defined(QTYPE_Q5_0)
#define DQ_BYTES 22
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 1) * DQ_BYTES;
    uint p = c & 1u;
    Halves h = Halves(blk);
    float d = dq_f16(uint(h.v[0]));
    uint qh = uint(h.v[1]) | (uint(h.v[2]) << 16);
    uvec2 w = dq_ld8_2(blk + 6u + 8u * p);
    ab = vec4(d, 0.0, d, 0.0);
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k), j = 8u * p + k;
        uint lo = (b & 15u) | (((qh >> j) & 1u) << 4);
        uint hi = (b >> 4) | (((qh >> (j + 16u)) & 1u) << 4);
        q[k] = dq_uf_off(lo, 16.0);
        q[k + 8] = dq_uf_off(hi, 16.0);
    }
}
#elif defined(QTYPE_Q5_1)
#define DQ_BYTES 24
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 1) * DQ_BYTES;
    uint p = c & 1u;
    Words hw = Words(blk);
    vec2 dm = unpackHalf2x16(hw.v[0]);
    uint qh = hw.v[1];
    uvec2 w = dq_ld8_4(blk + 8u + 8u * p);
    ab = vec4(dm, dm);
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k), j = 8u * p + k;
        q[k] = dq_uf((b & 15u) | (((qh >> j) & 1u) << 4));
        q[k + 8] = dq_uf((b >> 4) | (((qh >> (j + 16u)) & 1u) << 4));
    }
}
#else // Q8_0
#define DQ_BYTES 34
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 1) * DQ_BYTES;
    uint p = c & 1u;
    float d = dq_half(blk);
    // bytes as offset-binary (b ^ 0x80 = q + 128)
    uvec2 q0 = dq_ld8_2(blk + 2u + 16u * p) ^ uvec2(0x80808080u);
    uvec2 q1 = dq_ld8_2(blk + 10u + 16u * p) ^ uvec2(0x80808080u);
    ab = vec4(d, 0.0, d, 0.0);
    for (uint k = 0; k < 8; ++k) {
        q[k] = dq_uf_off(dq_byte(q0, k), 128.0);
        q[k + 8] = dq_uf_off(dq_byte(q1, k), 128.0);
    }
}
#endif

// ---------------------------------------------------------------------------- 256-value blocks
#elif defined(QTYPE_Q2_K) || defined(QTYPE_Q3_K) || defined(QTYPE_Q4_K) ||                  \
    defined(QTYPE_Q5_K) || defined(QTYPE_Q6_K)
#define DQ_FLOAT 0
#define DQ_QK 256
#define DQ_CPB 16

#if defined(QTYPE_Q2_K) || defined(QTYPE_Q3_K)
// chunk c of a block: half h = c>>3 (quant bytes 32h..32h+31), pair of 2-bit planes kk =
// (c>>2)&1 (planes 2kk, 2kk+1: values +64kk and +64kk+32), bytes 8s..8s+7 of the half, s = c&3
uvec2 dq_pos(uint c) {
    uint b = (c >> 4) * 256u + ((c >> 3) & 1u) * 128u + ((c >> 2) & 1u) * 64u + (c & 3u) * 8u;
    return uvec2(b, b + 32u);
}
#elif defined(QTYPE_Q6_K)
// chunk c: half h = c>>3 (128 values), u = (c>>2)&1 (ql bytes 32u..32u+31 of the half),
// s = c&3: low nibbles are values 128h+32u+8s.., high nibbles 64 further
uvec2 dq_pos(uint c) {
    uint b = (c >> 4) * 256u + ((c >> 3) & 1u) * 128u + ((c >> 2) & 1u) * 32u + (c & 3u) * 8u;
    return uvec2(b, b + 64u);
}
#else
// Q4_K / Q5_K chunk c: group g = (c>>2)&3 of 64 values (quant bytes 32g..32g+31), bytes
// 8s..8s+7, s = c&3: low nibbles values 64g+8s.., high nibbles 32 further
uvec2 dq_pos(uint c) {
    uint b = (c >> 4) * 256u + ((c >> 2) & 3u) * 64u + (c & 3u) * 8u;
    return uvec2(b, b + 32u);
}
#endif

#if defined(QTYPE_Q2_K)
#define DQ_BYTES 84
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 4) * DQ_BYTES;
    uint h = (c >> 3) & 1u, kk = (c >> 2) & 1u, s = c & 3u;
    vec2 dm = unpackHalf2x16(Words(blk + 80u).v[0]);
    uvec2 w = dq_ld8_4(blk + 16u + 32u * h + 8u * s);
    uint is = 8u * h + 4u * kk + (s >> 1); // scale of plane 2kk; plane 2kk+1 is 2 further
    uint sc0 = dq_u8(blk + is), sc1 = dq_u8(blk + is + 2u);
    // x = dl*q - ml: the sum adds -ml, which is exact
    ab = vec4(dm.x * dq_uf(sc0 & 15u), -(dm.y * dq_uf(sc0 >> 4)), dm.x * dq_uf(sc1 & 15u),
              -(dm.y * dq_uf(sc1 >> 4)));
    uint sh = 4u * kk;
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k);
        q[k] = dq_uf((b >> sh) & 3u);
        q[k + 8] = dq_uf((b >> (sh + 2u)) & 3u);
    }
}
#elif defined(QTYPE_Q3_K)
#define DQ_BYTES 110
float dq_q3k_scale(uint64_t sc, uint j) {
    uint lo = j < 8u ? (dq_u8(sc + j) & 15u) : (dq_u8(sc + j - 8u) >> 4);
    uint hi = (dq_u8(sc + 8u + (j & 3u)) >> (2u * (j >> 2))) & 3u;
    return dq_uf_off(lo | (hi << 4), 32.0);
}
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 4) * DQ_BYTES;
    uint h = (c >> 3) & 1u, kk = (c >> 2) & 1u, s = c & 3u;
    float d = dq_half(blk + 108u);
    uvec2 w = dq_ld8_2(blk + 32u + 32u * h + 8u * s);
    uvec2 hm = dq_ld8_2(blk + 8u * s);
    uint j0 = 8u * h + 4u * kk + (s >> 1);
    ab = vec4(d * dq_q3k_scale(blk + 96u, j0), 0.0, d * dq_q3k_scale(blk + 96u, j0 + 2u), 0.0);
    uint sh = 4u * kk, hb = 4u * h + 2u * kk;
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k), m = dq_byte(hm, k);
        // level = q - (hmask bit ? 0 : 4) = (q | bit << 2) - 4
        q[k] = dq_uf_off(((b >> sh) & 3u) | (((m >> hb) & 1u) << 2), 4.0);
        q[k + 8] = dq_uf_off(((b >> (sh + 2u)) & 3u) | (((m >> (hb + 1u)) & 1u) << 2), 4.0);
    }
}
#elif defined(QTYPE_Q4_K) || defined(QTYPE_Q5_K)
#if defined(QTYPE_Q4_K)
#define DQ_BYTES 144
#else
#define DQ_BYTES 176
#endif
// scale and min j (0..7) of the 12 packed bytes s0 (bytes 0..3), s1 (4..7), s2 (8..11)
uvec2 dq_k4_scale_min(uvec3 s, uint j) {
    uint sh = 8u * (j & 3u);
    if (j < 4u) return uvec2((s.x >> sh) & 63u, (s.y >> sh) & 63u);
    uint q4 = (s.z >> sh) & 0xFFu; // byte j + 4
    uint qa = (s.x >> sh) & 0xFFu; // byte j - 4
    uint qb = (s.y >> sh) & 0xFFu; // byte j
    return uvec2((q4 & 15u) | ((qa >> 6) << 4), (q4 >> 4) | ((qb >> 6) << 4));
}
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 4) * DQ_BYTES;
    uint g = (c >> 2) & 3u, s = c & 3u;
    Words hw = Words(blk);
    vec2 dm = unpackHalf2x16(hw.v[0]);
    uvec3 sc = uvec3(hw.v[1], hw.v[2], hw.v[3]);
    uvec2 sm0 = dq_k4_scale_min(sc, 2u * g), sm1 = dq_k4_scale_min(sc, 2u * g + 1u);
    // x = d*sc*q - dmin*m: the sum adds -(dmin*m), which is exact
    ab = vec4(dm.x * dq_uf(sm0.x), -(dm.y * dq_uf(sm0.y)), dm.x * dq_uf(sm1.x),
              -(dm.y * dq_uf(sm1.y)));
#if defined(QTYPE_Q4_K)
    uvec2 w = dq_ld8_8(blk + 16u + 32u * g + 8u * s);
#else
    uvec2 w = dq_ld8_8(blk + 48u + 32u * g + 8u * s);
    uvec2 qh = dq_ld8_8(blk + 16u + 8u * s);
#endif
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(w, k);
        uint lo = b & 15u, hi = b >> 4;
#if defined(QTYPE_Q5_K)
        uint m = dq_byte(qh, k);
        lo |= ((m >> (2u * g)) & 1u) << 4;
        hi |= ((m >> (2u * g + 1u)) & 1u) << 4;
#endif
        q[k] = dq_uf(lo);
        q[k + 8] = dq_uf(hi);
    }
}
#else // Q6_K
#define DQ_BYTES 210
void dq_chunk_q(uint64_t row, uint c, out float q[16], out vec4 ab) {
    uint64_t blk = row + uint64_t(c >> 4) * DQ_BYTES;
    uint h = (c >> 3) & 1u, u = (c >> 2) & 1u, s = c & 3u;
    float d = dq_half(blk + 208u);
    uvec2 ql = dq_ld8_2(blk + 64u * h + 32u * u + 8u * s);
    uvec2 qh = dq_ld8_2(blk + 128u + 32u * h + 8u * s);
    uint j0 = 8u * h + 2u * u + (s >> 1); // scale of the low nibbles; high ones 4 further
    ab = vec4(d * dq_uf_off(dq_u8(blk + 192u + j0) ^ 0x80u, 128.0), 0.0, // int8 scales
              d * dq_uf_off(dq_u8(blk + 196u + j0) ^ 0x80u, 128.0), 0.0);
    uint sh = 2u * u;
    for (uint k = 0; k < 8; ++k) {
        uint b = dq_byte(ql, k), m = dq_byte(qh, k);
        q[k] = dq_uf_off((b & 15u) | (((m >> sh) & 3u) << 4), 32.0);
        q[k + 8] = dq_uf_off((b >> 4) | (((m >> (sh + 4u)) & 3u) << 4), 32.0);
    }
}
#endif

#else
#error "dequant.glsl: define one QTYPE_<type> (QTYPE_F32, QTYPE_Q4_K, ...)"
#endif

#if !DQ_FLOAT
#if defined(QTYPE_Q4_1) || defined(QTYPE_Q5_1) || defined(QTYPE_Q2_K) || defined(QTYPE_Q4_K) ||  \
    defined(QTYPE_Q5_K)
#define DQ_HAS_MIN 1 // ab.y, ab.w nonzero
#else
#define DQ_HAS_MIN 0
#endif

// The chunk's 16 values, as quant.c computes them: a * q (+ b for the types with mins).
void dq_chunk(uint64_t row, uint c, out float v[16]) {
    float q[16];
    vec4 ab;
    dq_chunk_q(row, c, q, ab);
    for (uint k = 0; k < 8; ++k) {
#if DQ_HAS_MIN
        DQ_PRECISE float t0 = ab.x * q[k];
        DQ_PRECISE float t1 = ab.z * q[k + 8];
        DQ_PRECISE float r0 = t0 + ab.y;
        DQ_PRECISE float r1 = t1 + ab.w;
        v[k] = r0;
        v[k + 8] = r1;
#else
        v[k] = ab.x * q[k]; // no "+ 0.0": it would turn -0.0 into +0.0
        v[k + 8] = ab.z * q[k + 8];
#endif
    }
}

// Value i of the row (slow: dequantizes its whole chunk); for kernels that need single values.
float dq_one(uint64_t row, uint i) {
    float v[16];
    for (uint c = (i / DQ_QK) * DQ_CPB, e = c + DQ_CPB; c < e; ++c) {
        uvec2 pos = dq_pos(c);
        if (i - pos.x < 8u || i - pos.y < 8u) {
            dq_chunk(row, c, v);
            return i - pos.x < 8u ? v[i - pos.x] : v[8u + i - pos.y];
        }
    }
    return 0.0;
}
#endif
