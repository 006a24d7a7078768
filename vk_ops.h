/* Push constants of every Vulkan kernel, byte for byte as shaders/NAME.comp declare them (std430
 * push_constant blocks: 64-bit addresses first, then 32-bit fields), and each kernel's grid.
 * Addresses are vk_buf.addr plus a byte offset; "floats" strides count 4-byte floats. */
#ifndef MOERUN_VK_OPS_H
#define MOERUN_VK_OPS_H

#include <stdint.h>

/* mul_mat_<type>: for each z in [0, gz): matrix m = ids ? ids[z] : z at w + m * w_zstride
 * (n_out rows of row_bytes bytes, n_in values each, in the block format), and for each token t
 * in [0, n_tok):  y[z*y_zstride + t*y_stride + o] = sum_i W_m[o][i] * x[(z / x_zdiv)*x_zstride
 * + t*x_stride + i]  for o in [0, n_out). With experts = lo | hi << 16 (a part of a split
 * expert tensor, w then the part's address less lo matrices) only the z whose m lies in
 * [lo, hi) are computed; the others are left to the other parts' dispatches.
 * Grid: (ceil(n_out / VK_MM_ROWS), ceil(n_tok / VK_MM_TOKS), number of z); mul_mat_gate_up
 * (a gate and an up row per workgroup): (n_out, ...). */
enum { VK_MM_ROWS = 2, VK_MM_TOKS = 8 };
/* mul_mm_<type>: the same product, tiled for batches: grid (ceil(n_out / VK_MM_TILE_ROWS),
 * ceil(n_tok / VK_MM_TILE_TOKS), number of z); mul_mm_swiglu as mul_mat_swiglu (x_up). With
 * groups (moe_group's offsets; ids its order): z is an expert and its tokens are its slots
 * order[groups[z] .. groups[z + 1]); slot s reads x row s / x_zdiv (x_zstride floats apart)
 * and writes y row s (y_zstride apart); n_tok bounds any expert's slots (the grid). */
enum { VK_MM_TILE_ROWS = 32, VK_MM_TILE_TOKS = 64 };
struct vk_mul_mat_push {
    uint64_t w, x, y, ids; /* ids: int32 per z, or 0 */
    uint64_t x_up;   /* mul_mat_swiglu: SwiGLU's up rows (x's layout); the input is silu(x) * up */
    uint64_t w_up;   /* mul_mat_gate_up: the up matrices (W's layout); y = silu(W x) * (W_up x) */
    uint64_t groups; /* mul_mm only, after moe_group: z = expert z over its slots (below) */
    uint64_t w_zstride; /* bytes */
    uint32_t n_in, n_out, n_tok, row_bytes;
    uint32_t x_stride, y_stride, x_zstride, y_zstride;
    uint32_t x_zdiv;  /* >= 1 */
    uint32_t experts; /* 0, or lo | hi << 16: only experts [lo, hi) (a split tensor's part) */
};

/* get_rows_<type>: y[r*n_in + i] = row ids[r] of W (row_bytes apart), dequantized.
 * Grid: (n_rows, 1, 1). */
struct vk_get_rows_push {
    uint64_t w, ids, y;
    uint32_t n_in, row_bytes, n_rows, pad_;
};

/* rmsnorm: y[r*y_stride + i] = x[r*x_stride + i] / sqrt(mean(x_r^2) + eps) * w[i], i < n.
 * With add (a residual step fused in): x_r += add_r first (add rows x_stride apart), and the
 * sum is what x keeps. In place allowed without add. Grid: (n_rows, 1, 1). */
struct vk_rmsnorm_push {
    uint64_t x, y, w, add;
    uint32_t n, n_rows, x_stride, y_stride;
    float eps;
    uint32_t pad_;
};

/* rope: rotates the first n_rot values of head h of token t at x + t*row_stride + h*head_stride,
 * at position pos[t], into y + t*y_row_stride + h*y_head_stride (y = x: in place; otherwise
 * only those n_rot values of y are written); mode 0 adjacent pairs, 2 NeoX halves; YaRN as
 * cpu_rope. freq_factors: n_rot/2 floats or 0. Grid: (n_head, n_tok, 1). */
struct vk_rope_push {
    uint64_t x, y, pos, freq_factors;
    uint32_t n_tok, n_head, head_stride, row_stride, y_head_stride, y_row_stride, n_rot, mode;
    float theta_scale; /* powf(freq_base, -2 / n_rot), rounded as the CPU rounds it */
    float freq_scale, ext_factor, attn_factor, corr0, corr1;
};

/* attention: causal GQA as struct attn_args in cpu.h (token t sees cache positions
 * 0..pos0+t). Grid: (n_head, n_tok, 1). Split (chunk != 0): grid (n_head, n_tok, n_split),
 * split s over keys [s*chunk, (s+1)*chunk), each writing head_dim_v + 2 floats (running
 * maximum, sum of weights, unnormalized weighted sums) at part + ((t*n_head + h)*n_split + s)
 * records, which attn_combine turns into out. n_split <= VK_ATTN_MAX_SPLIT. */
enum { VK_ATTN_MAX_SPLIT = 64 };
struct vk_attention_push {
    uint64_t q, k, v, out, part;
    uint32_t q_stride, k_stride, v_stride, out_stride;
    uint32_t n_tok, pos0, n_head, n_head_kv, head_dim, head_dim_v;
    float scale;
    uint32_t chunk;
};
struct vk_attn_combine_push {
    uint64_t part, out;
    uint32_t n_head, n_split, head_dim_v, out_stride;
};

/* add: y[i] += x[x_period ? i % x_period : i] (a bias row added to every token when x_period
 * is its length). Grid: (ceil(n / 256), 1, 1) (gx capped at 65535: the kernel loops). */
enum { VK_EW_GROUP = 256 };
struct vk_add_push {
    uint64_t y, x;
    uint32_t n, x_period;
};

/* copy2d: dst[r*dst_stride + i] = src[r*src_stride + i], i < n_cols, 32-bit words copied as
 * bits (ints too). Grid: (n_rows, 1, 1). */
struct vk_copy2d_push {
    uint64_t src, dst;
    uint32_t n_rows, n_cols, src_stride, dst_stride;
};

/* router: moe_route (moe.c) for each token t: logits + t*n_expert -> ids + t*k, weights +
 * t*k. bias: n_expert floats or 0. Grid: (n_tok, 1, 1): a workgroup per token (a smaller
 * grid works too: workgroups stride over the tokens). n_expert <= 512. */
struct vk_router_push {
    uint64_t logits, bias, ids, weights;
    uint32_t n_tok, n_expert, k, gating;
    uint32_t n_group, n_group_used, norm_weights, pad_;
    float weights_scale;
    uint32_t pad2_;
};

/* moe_group: the n_slots expert ids grouped by expert for mul_mm: offsets (n_expert + 1
 * ints) and order (n_slots ints: expert e's slots at order[offsets[e] .. offsets[e + 1]), in
 * no particular order). n_expert <= 512. Grid: (1, 1, 1). */
struct vk_moe_group_push {
    uint64_t ids, offsets, order;
    uint32_t n_slots, n_expert;
};

/* moe_residual: per token t (x, y rows E floats apart): x_t += (sum over c < k, in order, of
 * parts[(t*k + c)*E + d] * weights[t*k + c]) + shared[t*E + d] * g, where weights = 0 means
 * weights of 1, shared = 0 no shared term, g = sigmoid(gate[t*gate_stride]) (qwen2moe's gated
 * shared expert) or 1 when gate = 0; then y_t = rmsnorm(x_t) * w as vk_rmsnorm_push (y = 0:
 * no norm). Grid: (n_tok, 1, 1), or fewer: workgroups stride over the tokens. */
struct vk_moe_residual_push {
    uint64_t x, y, w, parts, weights, shared, gate;
    uint32_t n_tok, k, E, gate_stride;
    float eps;
    uint32_t pad_;
};

#endif
