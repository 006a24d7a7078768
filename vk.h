/* Vulkan backend core: the loader opened at run time (no Vulkan: the CPU path), one device and
 * compute queue, buffers addressed by 64-bit device addresses (VK_KHR_buffer_device_address,
 * so no descriptor sets: every kernel takes its buffers as addresses in push constants), the
 * kernels compiled from shaders/NAME.comp and embedded, and one command buffer recorded per
 * forward pass and submitted once. Push-constant layouts are in vk_ops.h. */
#ifndef MOERUN_VK_H
#define MOERUN_VK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Every kernel; vk.c maps each to its embedded SPIR-V. The mul_mat and get_rows kernels come
 * one per block format, in the order of vk_qtypes below. */
#define VK_QTYPE_LIST(X)                                                                           \
    X(F32)                                                                                         \
    X(F16) X(BF16) X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K)

enum vk_kernel {
#define VK_MM_ENUM(t) VK_MUL_MAT_##t,
    VK_QTYPE_LIST(VK_MM_ENUM)
#undef VK_MM_ENUM
#define VK_GR_ENUM(t) VK_GET_ROWS_##t,
        VK_QTYPE_LIST(VK_GR_ENUM)
#undef VK_GR_ENUM
#define VK_MMS_ENUM(t) VK_MUL_MAT_SWIGLU_##t,
            VK_QTYPE_LIST(VK_MMS_ENUM)
#undef VK_MMS_ENUM
#define VK_MMG_ENUM(t) VK_MUL_MAT_GATE_UP_##t,
                VK_QTYPE_LIST(VK_MMG_ENUM)
#undef VK_MMG_ENUM
#define VK_MMT_ENUM(t) VK_MUL_MM_##t,
                    VK_QTYPE_LIST(VK_MMT_ENUM)
#undef VK_MMT_ENUM
#define VK_MMTS_ENUM(t) VK_MUL_MM_SWIGLU_##t,
                        VK_QTYPE_LIST(VK_MMTS_ENUM)
#undef VK_MMTS_ENUM
                            VK_RMSNORM,
    VK_ROPE,
    VK_ATTENTION,
    VK_ATTN_COMBINE,
    VK_ADD,
    VK_COPY2D,
    VK_ROUTER,
    VK_MOE_GROUP,
    VK_MOE_RESIDUAL,
    VK_KERNEL_COUNT
};

/* The mul_mat / get_rows kernel for a ggml type, or -1 when the GPU path lacks it.
 * vk_mul_mat_fused_kernel: mul_mat specialized for a SwiGLU (enum vk_mm_fuse; vk_ops.h). */
int vk_mul_mat_kernel(uint32_t qtype);
enum vk_mm_fuse { VK_MM_PLAIN, VK_MM_SWIGLU_IN, VK_MM_GATE_UP };
int vk_mul_mat_fused_kernel(uint32_t qtype, enum vk_mm_fuse fuse);
/* The tiled product for batches (mul_mm), plain or VK_MM_SWIGLU_IN; -1 when the type lacks it. */
int vk_mul_mm_kernel(uint32_t qtype, enum vk_mm_fuse fuse);
int vk_get_rows_kernel(uint32_t qtype);

struct vk_ctx;

/* True when this binary has the Vulkan backend (it still needs a loader at run time). */
int vk_built(void);

enum vk_mem { VK_MEM_DEVICE, VK_MEM_HOST }; /* HOST: host-visible, coherent, mapped */

struct vk_buf {
    uint64_t addr; /* device address of byte 0 */
    size_t size;
    void *map; /* VK_MEM_HOST only */
    void *priv;
};

/* Lists every device to out (index, name, type, memory, subgroup size, features moerun uses).
 * Returns the count, or -1 with err set when there is no loader or no instance. */
int vk_list_devices(FILE *out);

/* Opens device `index`, or with index < 0 the first discrete GPU, else the first integrated or
 * virtual one; CPU devices (lavapipe) only when chosen by index or allow_cpu. NULL with err
 * set (naming the missing loader, device or feature, or the failing call and VkResult). */
struct vk_ctx *vk_open(int index, int allow_cpu);
void vk_close(struct vk_ctx *c);
const char *vk_device_name(const struct vk_ctx *c);
uint64_t vk_device_memory(const struct vk_ctx *c); /* bytes of device-local heap */
uint64_t vk_max_buffer(const struct vk_ctx *c);    /* largest single buffer, bytes */
int vk_device_is_cpu(const struct vk_ctx *c);

int vk_alloc(struct vk_ctx *c, size_t size, enum vk_mem kind, struct vk_buf *out);
void vk_free(struct vk_ctx *c, struct vk_buf *b);
/* Copies through a staging buffer and waits. */
int vk_upload(struct vk_ctx *c, const struct vk_buf *dst, size_t off, const void *src, size_t n);
int vk_download(struct vk_ctx *c, const struct vk_buf *src, size_t off, void *dst, size_t n);

/* Recording: vk_begin, any number of vk_dispatch / vk_barrier, then vk_submit (waits). */
int vk_begin(struct vk_ctx *c);
void vk_dispatch(struct vk_ctx *c, enum vk_kernel k, const void *push, uint32_t push_bytes,
                 uint32_t gx, uint32_t gy, uint32_t gz);
/* Makes every earlier dispatch's writes visible to every later one (nothing is recorded when
 * no dispatch came since the last barrier). */
void vk_barrier(struct vk_ctx *c);
int vk_submit(struct vk_ctx *c);

/* --profile: per-kernel GPU time from timestamp queries around every dispatch. */
void vk_profile_enable(struct vk_ctx *c, int on);
void vk_profile_report(struct vk_ctx *c, FILE *out);

#endif
