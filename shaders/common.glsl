// Shared by every kernel: buffers are reached through 64-bit device addresses passed in push
// constants (see vk_ops.h), so kernels need no descriptor sets.
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int16 : require
#extension GL_EXT_shader_explicit_arithmetic_types_int8 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_8bit_storage : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Floats { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer Ints { int v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer Words { uint v[]; };
layout(buffer_reference, std430, buffer_reference_align = 2) buffer Halves { uint16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 1) buffer Bytes { uint8_t v[]; };

// silu(gate) * up as cpu_swiglu forms it (floats or vectors)
#define SWIGLU(g, u) ((g) / (1.0 + exp(-(g))) * (u))

// A routed expert tensor larger than one buffer is split into parts of whole experts, one
// dispatch each: experts = lo | hi << 16 says the dispatch takes experts [lo, hi), 0 all.
bool in_part(uint experts, uint m) {
    return experts == 0u || (m >= (experts & 0xffffu) && m < (experts >> 16));
}
