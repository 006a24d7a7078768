/* The forward pass on the Vulkan backend: weights uploaded once into device arenas, the KV
 * cache and scratch on the device, and each batch recorded into one command buffer that is
 * submitted once; only logits come back. Layers past gpu_layers, and with cpu_moe the routed
 * experts, run on the CPU path (model.c) with one synchronization per such step. */
#ifndef MOERUN_VK_MODEL_H
#define MOERUN_VK_MODEL_H

#include <stdint.h>
#include <stdio.h>

struct model;
struct vk_model;

struct gpu_params {
    int enabled;    /* 0: CPU only */
    int device;     /* -1: the best GPU; an index also allows CPU devices (lavapipe) */
    int gpu_layers; /* layers on the GPU from the first; < 0: all */
    int cpu_moe;    /* routed experts on the CPU */
    int fit;        /* choose gpu_layers / cpu_moe from the device's memory */
    int profile;    /* per-kernel GPU time, printed by vk_model_free */
    int verbose;
    struct vk_ctx *shared; /* tests: an open device to use (and leave open) */
};

/* GPU on (the best GPU, every layer) unless the options say otherwise. */
void gpu_params_default(struct gpu_params *p);
/* The GPU options of run, chat, eval and bench: returns 0 when `flag` is not one, 1 when it
 * is a switch, 2 when it took `value`, -1 (err set) on a bad value. */
int gpu_option(struct gpu_params *p, const char *flag, const char *value);
/* Their lines in --help. */
extern const char *const gpu_usage;

/* Opens the device and uploads the model. Returns 0 with m->gpu set; or, when no usable
 * device exists and the GPU was only preferred (device < 0), 0 with m->gpu NULL after one
 * line on stderr; or -1 with err set. */
int vk_model_init(struct model *m, const struct gpu_params *p);
/* Why the model runs on the CPU ("" when it does not), for the load summary line. */
const char *vk_model_cpu_reason(void);
void vk_model_free(struct model *m);

/* One batch (n_tok <= max_batch) as model.c's forward_batch; logits rows [first, n_tok)
 * (first = all_logits ? 0 : n_tok - 1), or none when logits is NULL. */
int vk_model_forward(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                     int all_logits);

/* Number of layers the GPU holds (m->gpu set). */
int vk_model_gpu_layers(const struct model *m);

#endif
