/* The forward pass recorded as Vulkan dispatches (see vk_model.h): the same steps, in the same
 * order and with the same scratch roles as model.c's CPU forward, so the two read side by
 * side. Every dispatch is followed by a barrier unless the next one is independent of it. */
#include "vk_model.h"

#include "model.h"
#include "quant.h"
#include "util.h"
#include "vk.h"
#include "vk_ops.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { ARENA_BYTES = 1 << 30 };

/* Flash-decoding: when fewer than ATTN_GROUPS (head, token) workgroups would walk a context of
 * at least 2 * ATTN_MIN_CHUNK keys (decode: one per head, most of a GPU idle), the keys are
 * split so that about ATTN_GROUPS workgroups share them, in chunks of at least ATTN_MIN_CHUNK,
 * for one more dispatch and barrier (attn_combine). */
enum { ATTN_GROUPS = 256, ATTN_MIN_CHUNK = 256 };

/* A weight as the kernels see it: its device address and its cpu_matrix shape. A routed
 * expert tensor larger than the device's largest buffer is held in parts of part_experts
 * whole experts (n_parts > 1): part 0 at addr, part i at part_addr[i - 1]. */
struct gw {
    uint64_t addr; /* 0: absent, or left on the CPU */
    struct cpu_matrix m;
    uint64_t matrix_bytes; /* between the matrices of a 3-D tensor */
    uint64_t *part_addr;   /* (n_parts - 1) */
    uint32_t n_parts, part_experts;
};

struct vk_model {
    struct vk_ctx *vk;
    struct vk_buf *arenas;
    int n_arenas;
    struct gw w[W_SLOT_COUNT];
    struct gw (*lw)[W_SLOT_COUNT]; /* (n_gpu_layers) */
    struct gw *k_b_derived;        /* (n_gpu_layers) legacy deepseek2 files */
    uint64_t *part_addrs;          /* every split tensor's part_addr */
    uint64_t max_buffer;           /* the device's largest buffer, or MOERUN_VK_MAX_BUFFER */
    int n_gpu_layers, cpu_moe, profile, shared;
    struct vk_buf cache, scratch, io;
    /* scratch (device) */
    uint64_t x, xb, q, q_att, kv, att, att_v, gate, up, proj, moe_in, moe_out, router_logits,
        expert_w, expert_ids, shexp_gate;
    uint64_t sh_gate, sh_up; /* the shared experts' own, as they run beside the routed ones */
    uint64_t attn_part;      /* a split attention's partial results */
    uint64_t moe_offsets, moe_order; /* a batch's slots grouped by expert (moe_group) */
    uint32_t attn_min_chunk; /* ATTN_MIN_CHUNK, or MOERUN_VK_ATTN_CHUNK (tests: short contexts) */
    /* io (host-visible): the batch's tokens and positions in, logits out, and with cpu_moe or
     * CPU layers the rows the CPU reads and writes between submissions */
    int32_t *tokens_h, *pos_h;
    float *logits_h, *xfer_x_h, *xfer_xb_h, *xfer_w_h, *xfer_out_h;
    int32_t *xfer_ids_h;
    uint64_t tokens, pos, logits, xfer_x, xfer_xb, xfer_ids, xfer_w, xfer_out;
    uint64_t k_cache_layer, v_cache_layer; /* bytes per layer */
    uint64_t k_cache, v_cache;
};

static int is_routed_expert(int slot) {
    return slot == W_FFN_GATE_EXPS || slot == W_FFN_UP_EXPS || slot == W_FFN_DOWN_EXPS ||
           slot == W_FFN_GATE_UP_EXPS;
}

/* ---- upload ---- */

struct placement {
    const struct weight *src;
    uint64_t *addr;   /* where its device address goes */
    const void *data; /* host bytes (the map, or derived f32) */
    uint64_t bytes;
    int alias; /* >= 0: the same tensor as that placement (tied embeddings): not uploaded again */
};

static int check_kernel(const struct model *m, const struct weight *w) {
    if (vk_mul_mat_kernel(w->t->type) >= 0) return 0;
    err_set("%s: tensor '%.*s' has a block format (type %u) the GPU path lacks", m->file.path,
            (int)w->t->name.len, w->t->name.data, w->t->type);
    return -1;
}

/* Places tensors into 1 GiB arenas in order (a larger tensor gets its own) and uploads. */
static int upload_all(struct vk_model *g, struct placement *pl, int n) {
    uint64_t used = 0;
    int first = 0;
    g->arenas = xcalloc((size_t)n + 1, sizeof *g->arenas);
    for (int i = 0; i <= n; i++) {
        uint64_t sz = i < n ? (pl[i].bytes + 255) & ~(uint64_t)255 : 0;
        if (i < n && (used == 0 || used + sz <= ARENA_BYTES)) {
            used += sz;
            continue;
        }
        struct vk_buf *a = &g->arenas[g->n_arenas];
        if (vk_alloc(g->vk, used, VK_MEM_DEVICE, a)) return -1;
        g->n_arenas++;
        for (uint64_t off = 0; first < i; first++) {
            if (vk_upload(g->vk, a, off, pl[first].data, pl[first].bytes)) return -1;
            *pl[first].addr = a->addr + off;
            off += (pl[first].bytes + 255) & ~(uint64_t)255;
        }
        used = sz;
    }
    for (int i = 0; i < n; i++)
        if (pl[i].alias >= 0) *pl[i].addr = *pl[pl[i].alias].addr;
    return 0;
}

static uint64_t matrix_bytes(const struct weight *w) {
    return (uint64_t)w->t->ne[1] * w->m.row_bytes;
}

/* Experts per part where a routed expert tensor is larger than the largest buffer; 0 where
 * it fits whole (vk_model_init has checked that one expert's matrix fits). */
static uint32_t part_experts(const struct vk_model *g, int slot, const struct weight *w) {
    if (!is_routed_expert(slot) || w->t->nbytes <= g->max_buffer) return 0;
    return (uint32_t)(g->max_buffer / matrix_bytes(w));
}

static uint32_t n_parts(const struct weight *w, uint32_t per) {
    return per ? (uint32_t)(((uint64_t)w->t->ne[2] + per - 1) / per) : 1;
}

/* A weight's placements: the tensor whole (or as an alias of an earlier placement of the
 * same tensor), or per parts of `per` experts, their addresses taken from *pool. */
static void add_placement(struct placement *pl, int *n, const struct weight *w, struct gw *dst,
                          uint32_t per, uint64_t **pool) {
    *dst = (struct gw){0, w->m, matrix_bytes(w), NULL, n_parts(w, per), per};
    if (per) {
        dst->part_addr = *pool;
        *pool += dst->n_parts - 1;
        for (uint32_t i = 0; i < dst->n_parts; i++) {
            uint64_t lo = (uint64_t)i * per, count = (uint64_t)w->t->ne[2] - lo;
            if (count > per) count = per;
            pl[(*n)++] = (struct placement){w, i ? &dst->part_addr[i - 1] : &dst->addr,
                                            (const uint8_t *)w->t->data + lo * dst->matrix_bytes,
                                            count * dst->matrix_bytes, -1};
        }
        return;
    }
    int alias = -1;
    for (int i = 0; i < *n && alias < 0; i++)
        if (pl[i].src && pl[i].src->t == w->t) alias = i;
    pl[(*n)++] = (struct placement){w, &dst->addr, w->t->data, alias < 0 ? w->t->nbytes : 0, alias};
}

/* Placements past one per weight: the further parts of split tensors. */
static int extra_parts(const struct model *m, const struct vk_model *g) {
    int n = 0;
    if (g->cpu_moe) return 0;
    for (int il = 0; il < g->n_gpu_layers; il++)
        for (int s = 0; s < W_SLOT_COUNT; s++) {
            const struct weight *w = &m->layers[il].w[s];
            if (w->t) n += (int)n_parts(w, part_experts(g, s, w)) - 1;
        }
    return n;
}

static int upload_weights(struct model *m, struct vk_model *g) {
    const struct hparams *hp = &m->hp;
    int extra = extra_parts(m, g), cap = W_SLOT_COUNT * (g->n_gpu_layers + 2) + extra, n = 0;
    struct placement *pl = xcalloc((size_t)cap, sizeof *pl);
    uint64_t *pool = g->part_addrs = xcalloc((size_t)extra + 1, sizeof *g->part_addrs);
    for (int s = 0; s < W_SLOT_COUNT; s++)
        if (m->w[s].t) add_placement(pl, &n, &m->w[s], &g->w[s], 0, &pool);
    for (int il = 0; il < g->n_gpu_layers; il++) {
        struct model_layer *L = &m->layers[il];
        for (int s = 0; s < W_SLOT_COUNT; s++)
            if (L->w[s].t && !(g->cpu_moe && is_routed_expert(s)))
                add_placement(pl, &n, &L->w[s], &g->lw[il][s], part_experts(g, s, &L->w[s]), &pool);
        if (L->k_b_derived) {
            int64_t lora = hp->kv_lora, nope = m->ag.qk_nope;
            struct gw *d = &g->k_b_derived[il];
            *d = (struct gw){.m = {L->k_b_derived, QT_F32, nope, lora, (size_t)nope * 4, 0},
                             .matrix_bytes = (uint64_t)(lora * nope * 4),
                             .n_parts = 1};
            pl[n++] = (struct placement){NULL, &d->addr, L->k_b_derived,
                                         d->matrix_bytes * hp->n_head, -1};
        }
    }
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (pl[i].src) rc = check_kernel(m, pl[i].src);
    if (!rc) rc = upload_all(g, pl, n);
    free(pl);
    return rc;
}

/* ---- buffers ---- */

/* Hands out 256-byte aligned pieces of one buffer. */
struct carver {
    uint64_t base, used;
    uint8_t *map;
};

static uint64_t carve(struct carver *c, uint64_t bytes, void **host) {
    uint64_t off = c->used;
    c->used += (bytes + 255) & ~(uint64_t)255;
    if (host) *host = c->map ? c->map + off : NULL;
    return c->base + off;
}

/* Runs the layout twice: once to size the buffer, once to hand out addresses. */
static void layout_scratch(struct model *m, struct vk_model *g, struct carver *c) {
    const struct hparams *hp = &m->hp;
    struct model_widths w = model_scratch_widths(m);
    uint64_t B = (uint64_t)m->max_batch, used = hp->n_expert_used ? hp->n_expert_used : 1;
    g->x = carve(c, B * hp->n_embd * 4, NULL);
    g->xb = carve(c, B * hp->n_embd * 4, NULL);
    g->proj = carve(c, B * hp->n_embd * 4, NULL);
    g->q = carve(c, B * (uint64_t)w.q * 4, NULL);
    g->q_att = carve(c, B * hp->n_head * (uint64_t)m->ag.q_head * 4, NULL);
    g->kv = carve(c, B * (uint64_t)w.kv * 4, NULL);
    g->att = carve(c, B * (uint64_t)w.att * 4, NULL);
    g->att_v = carve(c, B * (uint64_t)w.att_v * 4, NULL);
    g->gate = carve(c, B * used * (uint64_t)w.ff * 4, NULL);
    g->up = carve(c, B * used * (uint64_t)w.ff * 4, NULL);
    g->moe_in = carve(c, B * used * hp->n_embd * 4, NULL);
    g->moe_out = carve(c, B * used * hp->n_embd * 4, NULL);
    g->router_logits = carve(c, B * (hp->n_expert ? hp->n_expert : 1) * 4, NULL);
    g->expert_w = carve(c, B * used * 4, NULL);
    g->expert_ids = carve(c, B * used * 4, NULL);
    g->shexp_gate = carve(c, B * 4, NULL);
    uint64_t sh_ff = hp->n_ff_shexp ? hp->n_ff_shexp : 1;
    g->sh_gate = carve(c, B * sh_ff * 4, NULL);
    g->sh_up = carve(c, B * sh_ff * 4, NULL);
    g->attn_part = carve(c, (uint64_t)ATTN_GROUPS * ((uint64_t)m->ag.v_head + 2) * 4, NULL);
    g->moe_offsets = carve(c, ((uint64_t)hp->n_expert + 1) * 4, NULL);
    g->moe_order = carve(c, B * used * 4, NULL);
}

static void layout_io(struct model *m, struct vk_model *g, struct carver *c) {
    const struct hparams *hp = &m->hp;
    uint64_t B = (uint64_t)m->max_batch, used = hp->n_expert_used ? hp->n_expert_used : 1;
    int xfer = g->cpu_moe || g->n_gpu_layers < (int)hp->n_layer;
    g->tokens = carve(c, B * 4, (void **)&g->tokens_h);
    g->pos = carve(c, B * 4, (void **)&g->pos_h);
    g->logits = carve(c, B * hp->n_vocab * 4, (void **)&g->logits_h);
    if (!xfer) return;
    g->xfer_x = carve(c, B * hp->n_embd * 4, (void **)&g->xfer_x_h);
    g->xfer_xb = carve(c, B * hp->n_embd * 4, (void **)&g->xfer_xb_h);
    g->xfer_out = carve(c, B * hp->n_embd * 4, (void **)&g->xfer_out_h);
    g->xfer_ids = carve(c, B * used * 4, (void **)&g->xfer_ids_h);
    g->xfer_w = carve(c, B * used * 4, (void **)&g->xfer_w_h);
}

static int alloc_buffers(struct model *m, struct vk_model *g) {
    struct carver c = {0};
    layout_scratch(m, g, &c);
    if (vk_alloc(g->vk, c.used, VK_MEM_DEVICE, &g->scratch)) return -1;
    c = (struct carver){g->scratch.addr, 0, NULL};
    layout_scratch(m, g, &c);

    c = (struct carver){0};
    layout_io(m, g, &c);
    if (vk_alloc(g->vk, c.used, VK_MEM_HOST, &g->io)) return -1;
    c = (struct carver){g->io.addr, 0, g->io.map};
    layout_io(m, g, &c);

    g->k_cache_layer = (uint64_t)m->n_ctx * (uint64_t)m->ag.kv_k * 4;
    g->v_cache_layer = (uint64_t)m->n_ctx * (uint64_t)m->ag.kv_v * 4;
    uint64_t nl = (uint64_t)g->n_gpu_layers;
    if (vk_alloc(g->vk, nl * (g->k_cache_layer + g->v_cache_layer), VK_MEM_DEVICE, &g->cache))
        return -1;
    g->k_cache = g->cache.addr;
    g->v_cache = g->cache.addr + nl * g->k_cache_layer;
    return 0;
}

/* ---- placement ---- */

static uint64_t layer_bytes(const struct model *m, int il, int experts) {
    uint64_t b = 0;
    for (int s = 0; s < W_SLOT_COUNT; s++)
        if (m->layers[il].w[s].t && is_routed_expert(s) == experts)
            b += m->layers[il].w[s].t->nbytes;
    return b;
}

/* --fit: everything when it fits in 90% of the device memory; else the routed experts on
 * the CPU; else as many leading layers as fit. */
static void fit_placement(const struct model *m, struct vk_ctx *vk, struct gpu_params *p) {
    uint64_t budget = vk_device_memory(vk) / 10 * 9, fixed = 0, dense = 0, experts = 0;
    uint64_t kv = model_kv_bytes_per_token(m, 4) * (uint64_t)m->n_ctx / m->hp.n_layer;
    for (int s = 0; s < W_SLOT_COUNT; s++)
        if (m->w[s].t) fixed += m->w[s].t->nbytes;
    fixed += (uint64_t)m->max_batch * m->hp.n_vocab * 4 + (256u << 20); /* logits, scratch */
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        dense += layer_bytes(m, (int)il, 0) + kv;
        experts += layer_bytes(m, (int)il, 1);
    }
    p->cpu_moe = 0;
    p->gpu_layers = (int)m->hp.n_layer;
    if (fixed + dense + experts <= budget) return;
    if (fixed + dense <= budget && experts) {
        p->cpu_moe = 1;
        return;
    }
    uint64_t used = fixed;
    int n = 0;
    while (n < (int)m->hp.n_layer) {
        uint64_t next = layer_bytes(m, n, 0) + layer_bytes(m, n, 1) + kv;
        if (used + next > budget) break;
        used += next;
        n++;
    }
    p->gpu_layers = n;
}

const char *const gpu_usage =
    "      --device N         Vulkan device N (moerun devices lists them; also CPU devices)\n"
    "  -ngl, --gpu-layers N   layers on the GPU, from the first (default: all)\n"
    "      --cpu-moe          routed experts on the CPU, the rest on the GPU\n"
    "      --fit              choose --gpu-layers / --cpu-moe from the GPU's memory\n"
    "      --cpu              no GPU\n"
    "      --profile          GPU time per kernel on stderr at exit\n";

void gpu_params_default(struct gpu_params *p) {
    *p = (struct gpu_params){.enabled = 1, .device = -1, .gpu_layers = -1};
}

static int gpu_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < lo || x > hi) {
        err_set("bad value '%s' for %s (%d..%d)", v ? v : "", flag, lo, hi);
        return -1;
    }
    *out = (int)x;
    return 2;
}

int gpu_option(struct gpu_params *p, const char *a, const char *v) {
    if (!strcmp(a, "--cpu")) return p->enabled = 0, 1;
    if (!strcmp(a, "--cpu-moe")) return p->cpu_moe = 1, 1;
    if (!strcmp(a, "--fit")) return p->fit = 1, 1;
    if (!strcmp(a, "--profile")) return p->profile = 1, 1;
    if (!strcmp(a, "--device")) return gpu_int(a, v, 0, 63, &p->device);
    if (!strcmp(a, "-ngl") || !strcmp(a, "--gpu-layers"))
        return gpu_int(a, v, 0, 1 << 20, &p->gpu_layers);
    return 0;
}

static char cpu_reason[256];

const char *vk_model_cpu_reason(void) { return cpu_reason; }

int vk_model_gpu_layers(const struct model *m) { return m->gpu ? m->gpu->n_gpu_layers : 0; }

/* True (err set) when one expert's matrix of a routed expert tensor exceeds the largest
 * buffer (a larger tensor is split into parts of whole experts). */
static int experts_too_large(const struct model *m, struct vk_ctx *vk, uint64_t max) {
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        for (int s = 0; s < W_SLOT_COUNT; s++) {
            const struct weight *w = &m->layers[il].w[s];
            if (w->t && is_routed_expert(s) && matrix_bytes(w) > max) {
                err_set("'%.*s' holds matrices of %llu bytes; %s's largest buffer is %llu bytes",
                        (int)w->t->name.len, w->t->name.data, (unsigned long long)matrix_bytes(w),
                        vk_device_name(vk), (unsigned long long)max);
                return 1;
            }
        }
    return 0;
}

/* What the kernels cannot take, as a reason to stay on the CPU; NULL when they can. */
static const char *kernel_limits(const struct model *m) {
    if (m->hp.n_expert > 512) return "the GPU router takes at most 512 experts";
    if (m->ag.q_head > 1024 || m->ag.v_head > 1024)
        return "the GPU attention takes heads of at most 1024 values";
    if (m->hp.n_head_kv && m->hp.n_head % m->hp.n_head_kv)
        return "the GPU attention needs n_head a multiple of n_head_kv";
    return NULL;
}

/* A test setting: the number in environment variable `name`, in [lo, hi]; *out keeps its
 * default when the variable is unset or empty. */
static int env_number(const char *name, uint64_t lo, uint64_t hi, const char *unit, uint64_t *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end || errno || v[0] == '-' || n < lo || n > hi) {
        char range[64];
        snprintf(range, sizeof range, hi == UINT64_MAX ? "at least %llu" : "%llu..%llu",
                 (unsigned long long)lo, (unsigned long long)hi);
        return err_set("%s: bad value '%s' (%s, %s)", name, v, unit, range), -1;
    }
    *out = n;
    return 0;
}

/* MOERUN_VK_ATTN_CHUNK: the fewest keys per split of a split attention (default
 * ATTN_MIN_CHUNK; tests split the short contexts of small models with it), and
 * MOERUN_VK_MAX_BUFFER: a largest buffer below the device's (tests split the routed experts of
 * small models into parts with it). */
static int test_settings(uint32_t *min_chunk, uint64_t *max_buf) {
    uint64_t chunk = ATTN_MIN_CHUNK;
    *max_buf = UINT64_MAX;
    if (env_number("MOERUN_VK_ATTN_CHUNK", 1, 1 << 20, "keys per split", &chunk) ||
        env_number("MOERUN_VK_MAX_BUFFER", 256, UINT64_MAX, "bytes", max_buf))
        return -1;
    *min_chunk = (uint32_t)chunk;
    return 0;
}

int vk_model_init(struct model *m, const struct gpu_params *params) {
    struct gpu_params p = *params;
    uint32_t min_chunk;
    uint64_t max_buf;
    if (test_settings(&min_chunk, &max_buf)) return -1;
    struct vk_ctx *vk = p.shared ? p.shared : vk_open(p.device, p.device >= 0);
    if (!vk) {
        if (p.device >= 0) return -1;
        snprintf(cpu_reason, sizeof cpu_reason, "%s", err_get());
        return 0;
    }
    const char *limit = kernel_limits(m);
    if (limit) {
        if (!p.shared) vk_close(vk);
        if (p.device >= 0) return err_set("%s: %s", m->file.path, limit), -1;
        snprintf(cpu_reason, sizeof cpu_reason, "%s", limit);
        return 0;
    }
    if (vk_max_buffer(vk) < max_buf) max_buf = vk_max_buffer(vk);
    if (p.fit) fit_placement(m, vk, &p);
    if (!p.cpu_moe && experts_too_large(m, vk, max_buf)) {
        p.cpu_moe = 1; /* one expert's matrix is larger than one buffer may be */
        if (p.verbose) fprintf(stderr, "moerun: routed experts on the CPU: %s\n", err_get());
    }
    if (p.gpu_layers < 0 || p.gpu_layers > (int)m->hp.n_layer) p.gpu_layers = (int)m->hp.n_layer;
    if (p.gpu_layers == 0) {
        if (!p.shared) vk_close(vk);
        snprintf(cpu_reason, sizeof cpu_reason, "no layers on the GPU (--gpu-layers 0)");
        return 0;
    }
    struct vk_model *g = xcalloc(1, sizeof *g);
    g->vk = vk;
    g->attn_min_chunk = min_chunk;
    g->max_buffer = max_buf;
    g->n_gpu_layers = p.gpu_layers;
    g->cpu_moe = p.cpu_moe && m->hp.n_expert > 0;
    g->shared = p.shared != NULL;
    g->lw = xcalloc((size_t)g->n_gpu_layers, sizeof *g->lw);
    g->k_b_derived = xcalloc((size_t)g->n_gpu_layers, sizeof *g->k_b_derived);
    m->gpu = g;
    double t0 = time_now();
    if (upload_weights(m, g) || alloc_buffers(m, g)) {
        vk_model_free(m);
        if (p.device >= 0) return -1;
        /* the GPU was only preferred: out of device memory, a block format it lacks, ... */
        snprintf(cpu_reason, sizeof cpu_reason, "%s", err_get());
        return 0;
    }
    g->profile = p.profile;
    vk_profile_enable(vk, p.profile);
    if (p.verbose)
        fprintf(stderr, "moerun: %s: %d of %u layers on the GPU%s, uploaded in %.1f s\n",
                vk_device_name(vk), g->n_gpu_layers, m->hp.n_layer,
                g->cpu_moe ? " (routed experts on the CPU)" : "", time_now() - t0);
    return 0;
}

void vk_model_free(struct model *m) {
    struct vk_model *g = m->gpu;
    if (!g) return;
    if (g->profile) vk_profile_report(g->vk, stderr);
    for (int i = 0; i < g->n_arenas; i++) vk_free(g->vk, &g->arenas[i]);
    vk_free(g->vk, &g->cache);
    vk_free(g->vk, &g->scratch);
    vk_free(g->vk, &g->io);
    if (!g->shared) vk_close(g->vk);
    free(g->arenas);
    free(g->lw);
    free(g->k_b_derived);
    free(g->part_addrs);
    free(g);
    m->gpu = NULL;
}

/* ---- kernels ---- */

/* Workgroups for n items, per each; the element-wise kernels loop past the cap. */
static uint32_t groups(uint64_t n, uint32_t per) {
    uint64_t g = (n + per - 1) / per;
    return g > 65535 ? 65535 : (uint32_t)g;
}

/* A product's operands beyond the weight: strides and batch (z) layout, in floats. */
struct mm_args {
    uint64_t x, y, ids;
    uint64_t x_up;       /* 0, or SwiGLU's up rows: the input is silu(x) * up */
    const struct gw *up; /* NULL, or the up matrices (gate's layout): y = silu(gate) * up */
    uint64_t up_offset;  /* bytes into up's matrices: its first row */
    uint64_t groups;     /* 0, or moe_group's offsets (ids: its order): tiled expert products */
    uint32_t n_tok, x_stride, y_stride;
    uint32_t nz, x_zstride, y_zstride, x_zdiv;
    uint64_t w_offset; /* bytes into the weight (a row range) */
    uint32_t n_out;    /* 0: the weight's */
};

enum { MAX_GROUPS = 65535 }; /* the smallest maxComputeWorkGroupCount Vulkan allows */

/* Batches of at least this many tokens use the tiled product (mul_mm: weights read once per
 * 64 tokens; mul_mat: once per 8, but no idle threads on a few tokens), and their routed
 * experts go by expert. */
enum { MM_TILED_MIN_TOKS = 32 };
static int tiled_batch(uint32_t n_tok) { return n_tok >= MM_TILED_MIN_TOKS; }

/* Part i of w as the kernels address it: matrix m (m in the part's experts) at the result +
 * m * matrix_bytes, as the whole tensor would be (uint64 arithmetic wraps alike on both sides). */
static uint64_t part_base(const struct gw *w, uint32_t i) {
    if (i == 0) return w->addr;
    return w->part_addr[i - 1] - (uint64_t)i * w->part_experts * w->matrix_bytes;
}

/* Outputs past MAX_GROUPS workgroups of rows (large vocabularies) go in further dispatches, and
 * each part of a split expert tensor in its own (its workgroups of other experts return). */
static void mul_mat(struct vk_model *g, const struct gw *w, const struct mm_args *a) {
    uint32_t n_out = a->n_out ? a->n_out : (uint32_t)w->m.n_out;
    struct vk_mul_mat_push p = {
        .x = a->x,
        .ids = a->ids,
        .x_up = a->x_up,
        .groups = a->groups,
        .w_zstride = w->matrix_bytes,
        .n_in = (uint32_t)w->m.n_in,
        .n_tok = a->n_tok,
        .row_bytes = (uint32_t)w->m.row_bytes,
        .x_stride = a->x_stride ? a->x_stride : (uint32_t)w->m.n_in,
        .y_stride = a->y_stride ? a->y_stride : n_out,
        .x_zstride = a->x_zstride,
        .y_zstride = a->y_zstride,
        .x_zdiv = a->x_zdiv ? a->x_zdiv : 1,
    };
    enum vk_mm_fuse fuse = a->up ? VK_MM_GATE_UP : a->x_up ? VK_MM_SWIGLU_IN : VK_MM_PLAIN;
    int tiled = tiled_batch(a->n_tok) && fuse != VK_MM_GATE_UP;
    uint32_t rows = tiled ? VK_MM_TILE_ROWS : fuse == VK_MM_GATE_UP ? 1 : VK_MM_ROWS;
    uint32_t toks = tiled ? VK_MM_TILE_TOKS : VK_MM_TOKS, chunk = MAX_GROUPS * rows;
    int kernel =
        tiled ? vk_mul_mm_kernel(w->m.type, fuse) : vk_mul_mat_fused_kernel(w->m.type, fuse);
    uint32_t n_parts = w->n_parts > 1 ? w->n_parts : 1;
    for (uint32_t i = 0; i < n_parts; i++) {
        uint32_t lo = i * w->part_experts;
        p.experts = n_parts > 1 ? lo | (lo + w->part_experts) << 16 : 0;
        for (uint32_t r0 = 0; r0 < n_out; r0 += chunk) {
            uint64_t row0 = (uint64_t)r0 * w->m.row_bytes;
            p.w = part_base(w, i) + a->w_offset + row0;
            p.w_up = a->up ? part_base(a->up, i) + a->up_offset + row0 : 0;
            p.y = a->y + 4 * (uint64_t)r0;
            p.n_out = n_out - r0 < chunk ? n_out - r0 : chunk;
            vk_dispatch(g->vk, (enum vk_kernel)kernel, &p, sizeof p, (p.n_out + rows - 1) / rows,
                        (a->n_tok + toks - 1) / toks, a->nz ? a->nz : 1);
        }
    }
}

/* y (n_tok, n_out) = x (n_tok, n_in) W^T, rows packed. */
static void matmul(struct vk_model *g, const struct gw *w, uint64_t x, int n_tok, uint64_t y) {
    mul_mat(g, w, &(struct mm_args){.x = x, .y = y, .n_tok = (uint32_t)n_tok});
}

/* y = rmsnorm(x) * w per row; with add != 0, x += add first (the residual step fused in). */
static void rmsnorm_add(struct vk_model *g, uint64_t x, uint64_t add, uint64_t y,
                        const struct gw *w, int64_t n, int n_rows, uint32_t stride, float eps) {
    for (int r0 = 0; r0 < n_rows; r0 += MAX_GROUPS) {
        uint32_t rows = n_rows - r0 < MAX_GROUPS ? (uint32_t)(n_rows - r0) : MAX_GROUPS;
        uint64_t off = 4 * (uint64_t)r0 * stride;
        struct vk_rmsnorm_push p = {x + off,     y + off, w->addr, add ? add + off : 0,
                                    (uint32_t)n, rows,    stride,  stride,
                                    eps,         0};
        vk_dispatch(g->vk, VK_RMSNORM, &p, sizeof p, rows, 1, 1);
    }
}

static void rmsnorm(struct vk_model *g, uint64_t x, uint64_t y, const struct gw *w, int64_t n,
                    int n_rows, uint32_t stride, float eps) {
    rmsnorm_add(g, x, 0, y, w, n, n_rows, stride, eps);
}

static void add(struct vk_model *g, uint64_t y, uint64_t x, uint64_t n, uint32_t period) {
    struct vk_add_push p = {y, x, (uint32_t)n, period};
    vk_dispatch(g->vk, VK_ADD, &p, sizeof p, groups(n, VK_EW_GROUP), 1, 1);
}

static void copy2d(struct vk_model *g, uint64_t src, uint32_t src_stride, uint64_t dst,
                   uint32_t dst_stride, uint32_t n_rows, uint32_t n_cols) {
    for (uint32_t r0 = 0; r0 < n_rows; r0 += MAX_GROUPS) {
        uint32_t rows = n_rows - r0 < MAX_GROUPS ? n_rows - r0 : MAX_GROUPS;
        struct vk_copy2d_push p = {src + 4 * (uint64_t)r0 * src_stride,
                                   dst + 4 * (uint64_t)r0 * dst_stride,
                                   rows,
                                   n_cols,
                                   src_stride,
                                   dst_stride};
        vk_dispatch(g->vk, VK_COPY2D, &p, sizeof p, rows, 1, 1);
    }
}

/* Heads at addr + t * row + h * head (floats). */
struct heads {
    uint64_t addr;
    int64_t head, row;
};

/* Rotates the heads of src into dst (src itself: in place). */
static void rope(struct model *m, struct heads src, struct heads dst, int n_tok, int n_head,
                 uint64_t freq_factors) {
    const struct rope_params *r = &m->rope;
    struct vk_rope_push p = {
        src.addr,
        dst.addr,
        m->gpu->pos,
        freq_factors,
        (uint32_t)n_tok,
        (uint32_t)n_head,
        (uint32_t)src.head,
        (uint32_t)src.row,
        (uint32_t)dst.head,
        (uint32_t)dst.row,
        (uint32_t)r->n_rot,
        (uint32_t)r->mode,
        powf(r->freq_base, -2.0f / (float)r->n_rot),
        r->freq_scale,
        r->ext_factor,
        r->attn_factor,
        r->corr_dims[0],
        r->corr_dims[1],
    };
    vk_dispatch(m->gpu->vk, VK_ROPE, &p, sizeof p, (uint32_t)n_head, (uint32_t)n_tok, 1);
}

static uint32_t attention_splits(const struct vk_model *g, const struct attn_args *a) {
    uint32_t groups = (uint32_t)a->n_head * (uint32_t)a->n_tok;
    uint32_t n = groups >= ATTN_GROUPS ? 1 : ATTN_GROUPS / groups;
    uint32_t by_keys = (uint32_t)(a->pos0 + a->n_tok) / g->attn_min_chunk;
    if (n > by_keys) n = by_keys;
    if (n > VK_ATTN_MAX_SPLIT) n = VK_ATTN_MAX_SPLIT;
    return n < 2 ? 1 : n;
}

static void attention(struct vk_model *g, const struct attn_args *a, uint64_t q, uint64_t k,
                      uint64_t v, uint64_t out) {
    uint32_t n_split = attention_splits(g, a), n_kv = (uint32_t)(a->pos0 + a->n_tok);
    struct vk_attention_push p = {
        .q = q,
        .k = k,
        .v = v,
        .out = out,
        .part = g->attn_part,
        .q_stride = (uint32_t)a->q_stride,
        .k_stride = (uint32_t)a->k_stride,
        .v_stride = (uint32_t)a->v_stride,
        .out_stride = (uint32_t)a->out_stride,
        .n_tok = (uint32_t)a->n_tok,
        .pos0 = (uint32_t)a->pos0,
        .n_head = (uint32_t)a->n_head,
        .n_head_kv = (uint32_t)a->n_head_kv,
        .head_dim = (uint32_t)a->head_dim,
        .head_dim_v = (uint32_t)a->head_dim_v,
        .scale = a->scale,
        .chunk = n_split > 1 ? (n_kv + n_split - 1) / n_split : 0,
    };
    vk_dispatch(g->vk, VK_ATTENTION, &p, sizeof p, (uint32_t)a->n_head, (uint32_t)a->n_tok,
                n_split);
    if (n_split < 2) return;
    vk_barrier(g->vk);
    struct vk_attn_combine_push c = {g->attn_part, out,          p.n_head,
                                     n_split,      p.head_dim_v, p.out_stride};
    vk_dispatch(g->vk, VK_ATTN_COMBINE, &c, sizeof c, p.n_head, p.n_tok, 1);
}

#define BARRIER() vk_barrier(g->vk)

/* ---- the forward pass ---- */

static uint64_t f32_at(uint64_t base, uint64_t index) { return base + 4 * index; }

static void add_bias(struct vk_model *g, uint64_t y, const struct gw *b, int n_tok, int64_t n) {
    if (!b->addr) return;
    add(g, y, b->addr, (uint64_t)n_tok * (uint64_t)n, (uint32_t)n);
}

static void gqa_attention(struct model *m, int il, int n_tok, int pos0) {
    struct vk_model *g = m->gpu;
    const struct hparams *hp = &m->hp;
    const struct attn_geometry *ag = &m->ag;
    struct gw *L = g->lw[il];
    int64_t q_row = (int64_t)hp->n_head * hp->head_dim;
    uint64_t kc = g->k_cache + (uint64_t)il * g->k_cache_layer;
    uint64_t vc = g->v_cache + (uint64_t)il * g->v_cache_layer;

    /* k and v straight into the cache rows of these positions; bias, norm and rope in place */
    uint64_t k_rows = f32_at(kc, (uint64_t)pos0 * ag->kv_k);
    uint64_t v_rows = f32_at(vc, (uint64_t)pos0 * ag->kv_v);
    matmul(g, &L[W_ATTN_Q], g->xb, n_tok, g->q);
    matmul(g, &L[W_ATTN_K], g->xb, n_tok, k_rows);
    matmul(g, &L[W_ATTN_V], g->xb, n_tok, v_rows);
    BARRIER();
    add_bias(g, g->q, &L[W_ATTN_Q_BIAS], n_tok, q_row);
    add_bias(g, k_rows, &L[W_ATTN_K_BIAS], n_tok, ag->kv_k);
    add_bias(g, v_rows, &L[W_ATTN_V_BIAS], n_tok, ag->kv_v);
    BARRIER();
    if (L[W_ATTN_Q_NORM].addr) {
        rmsnorm(g, g->q, g->q, &L[W_ATTN_Q_NORM], hp->head_dim, n_tok * (int)hp->n_head,
                hp->head_dim, hp->norm_eps);
        rmsnorm(g, k_rows, k_rows, &L[W_ATTN_K_NORM], hp->head_dim, n_tok * (int)hp->n_head_kv,
                hp->head_dim, hp->norm_eps);
        BARRIER();
    }
    uint64_t freqs = g->w[W_ROPE_FREQS].addr;
    struct heads q = {g->q, hp->head_dim, q_row}, k = {k_rows, hp->head_dim, ag->kv_k};
    rope(m, q, q, n_tok, (int)hp->n_head, freqs);
    rope(m, k, k, n_tok, (int)hp->n_head_kv, freqs);
    BARRIER();
    struct attn_args a = model_attn_args(m, n_tok, pos0);
    attention(g, &a, g->q, kc, vc, g->att);
    BARRIER();
    matmul(g, &L[W_ATTN_OUT], g->att, n_tok, g->proj);
}

static void mla_query(struct model *m, const struct gw *L, int n_tok) {
    struct vk_model *g = m->gpu;
    if (!L[W_ATTN_Q_A].addr) {
        matmul(g, &L[W_ATTN_Q], g->xb, n_tok, g->q);
        return;
    }
    matmul(g, &L[W_ATTN_Q_A], g->xb, n_tok, g->att);
    BARRIER();
    rmsnorm(g, g->att, g->att, &L[W_ATTN_Q_A_NORM], m->hp.q_lora, n_tok, m->hp.q_lora,
            m->hp.norm_eps);
    BARRIER();
    matmul(g, &L[W_ATTN_Q_B], g->att, n_tok, g->q);
}

/* Multi-head latent attention, as model.c's mla_attention. */
static void mla_attention(struct model *m, int il, int n_tok, int pos0) {
    struct vk_model *g = m->gpu;
    const struct hparams *hp = &m->hp;
    const struct attn_geometry *ag = &m->ag;
    struct gw *L = g->lw[il];
    uint32_t lora = hp->kv_lora, nope = (uint32_t)ag->qk_nope;
    uint32_t q_head = hp->head_dim_k_mla, q_row = hp->n_head * q_head;
    uint32_t latent = (uint32_t)ag->kv_k, qa_row = hp->n_head * latent;
    uint32_t n_head = hp->n_head, v_dim = hp->head_dim_v_mla;
    uint64_t cache = g->k_cache + (uint64_t)il * g->k_cache_layer;

    mla_query(m, L, n_tok);
    matmul(g, &L[W_ATTN_KV_A_MQA], g->xb, n_tok, g->kv);
    BARRIER();
    /* straight into their places: the roped query part behind each head's latent query, the
     * normed latent and the roped key part into the cache rows of these positions */
    uint64_t rows = f32_at(cache, (uint64_t)pos0 * latent);
    rope(m, (struct heads){f32_at(g->q, nope), q_head, q_row},
         (struct heads){f32_at(g->q_att, lora), latent, qa_row}, n_tok, (int)n_head, 0);
    rope(m, (struct heads){f32_at(g->kv, lora), latent, latent},
         (struct heads){f32_at(rows, lora), latent, latent}, n_tok, 1, 0);
    rmsnorm(g, g->kv, rows, &L[W_ATTN_KV_A_NORM], lora, n_tok, latent, hp->norm_eps);
    /* every head's query absorbs attn_k_b: q_att[t][h][0..lora) = K_b[h] q[t][h][0..nope) */
    const struct gw *kb = g->k_b_derived[il].addr ? &g->k_b_derived[il] : &L[W_ATTN_K_B];
    mul_mat(g, kb,
            &(struct mm_args){.x = g->q,
                              .y = g->q_att,
                              .n_tok = (uint32_t)n_tok,
                              .x_stride = q_row,
                              .y_stride = qa_row,
                              .nz = n_head,
                              .x_zstride = q_head,
                              .y_zstride = latent,
                              .n_out = lora});
    BARRIER();
    struct attn_args a = model_attn_args(m, n_tok, pos0);
    attention(g, &a, g->q_att, cache, cache, g->att);
    BARRIER();
    /* per-head values: att_v[t][h] = V_b[h] att[t][h] */
    struct mm_args va = {.x = g->att,
                         .y = g->att_v,
                         .n_tok = (uint32_t)n_tok,
                         .x_stride = n_head * lora,
                         .y_stride = n_head * v_dim,
                         .nz = n_head,
                         .x_zstride = lora,
                         .y_zstride = v_dim,
                         .n_out = v_dim};
    if (g->k_b_derived[il].addr) { /* legacy attn_kv_b: head h's value rows follow its k rows */
        struct gw kv_b = L[W_ATTN_KV_B];
        kv_b.matrix_bytes = (uint64_t)(nope + v_dim) * kv_b.m.row_bytes;
        va.w_offset = (uint64_t)nope * kv_b.m.row_bytes;
        mul_mat(g, &kv_b, &va);
    } else {
        mul_mat(g, &L[W_ATTN_V_B], &va);
    }
    BARRIER();
    matmul(g, &L[W_ATTN_OUT], g->att_v, n_tok, g->proj);
}

/* The SwiGLU's gate and up products over a's input: silu(gate x) * (up x) into a.y by one
 * fused product when the two matrices share a format and layout (the usual case in decode);
 * otherwise (batches take the tiled product) the two products into a.y and up_y, returned for
 * the down product to combine as it loads them (its x_up; 0 when fused). up_row0: the up
 * rows' first row in up (a fused gate_up tensor). */
static uint64_t gate_up(struct vk_model *g, const struct gw *gate, const struct gw *up,
                        uint64_t up_row0, struct mm_args a, uint64_t up_y) {
    if (!tiled_batch(a.n_tok) && gate->m.type == up->m.type &&
        gate->m.row_bytes == up->m.row_bytes && gate->matrix_bytes == up->matrix_bytes &&
        gate->n_parts == up->n_parts && gate->part_experts == up->part_experts) {
        a.up = up;
        a.up_offset = up_row0 * up->m.row_bytes;
        mul_mat(g, gate, &a);
        return 0;
    }
    mul_mat(g, gate, &a);
    a.y = up_y;
    a.w_offset = up_row0 * up->m.row_bytes;
    mul_mat(g, up, &a);
    return up_y;
}

/* out = down(silu(gate x) * up x) */
static void swiglu_ffn(struct vk_model *g, const struct gw *gate, const struct gw *up,
                       const struct gw *down, uint64_t x, int n, uint64_t out) {
    uint64_t x_up = gate_up(g, gate, up, 0,
                            (struct mm_args){.x = x, .y = g->gate, .n_tok = (uint32_t)n}, g->up);
    BARRIER();
    mul_mat(g, down, &(struct mm_args){.x = g->gate, .x_up = x_up, .y = out, .n_tok = (uint32_t)n});
}

static void route(struct model *m, const struct gw *L, int n_tok) {
    struct vk_model *g = m->gpu;
    const struct moe_router_cfg *r = &m->router;
    struct vk_router_push p = {
        .logits = g->router_logits,
        .bias = L[W_FFN_EXP_PROBS_B].addr,
        .ids = g->expert_ids,
        .weights = g->expert_w,
        .n_tok = (uint32_t)n_tok,
        .n_expert = (uint32_t)r->n_expert,
        .k = (uint32_t)r->n_expert_used,
        .gating = (uint32_t)r->gating,
        .n_group = (uint32_t)r->n_group,
        .n_group_used = (uint32_t)r->n_group_used,
        .norm_weights = (uint32_t)r->norm_weights,
        .weights_scale = r->weights_scale,
    };
    vk_dispatch(g->vk, VK_ROUTER, &p, sizeof p, groups((uint64_t)n_tok, 1), 1, 1);
}

/* One product per (token, choice) slot on the matrix of its chosen expert: slot s reads x row
 * s / x_zdiv (x_zstride floats apart) and writes n_out floats at y + s * n_out. A batch of
 * MM_TILED_MIN_TOKS tokens or more goes by expert (moe_group's lists), tiled over each
 * expert's slots; fewer tokens, one product per slot. */
static struct mm_args expert_args(const struct model *m, uint64_t x, uint32_t x_zstride,
                                  uint32_t x_zdiv, uint64_t y, uint32_t n_out, int n_tok) {
    const struct vk_model *g = m->gpu;
    struct mm_args a = {.x = x,
                        .y = y,
                        .ids = g->expert_ids,
                        .n_tok = 1,
                        .nz = (uint32_t)n_tok * m->hp.n_expert_used,
                        .x_zstride = x_zstride,
                        .y_zstride = n_out,
                        .x_zdiv = x_zdiv,
                        .n_out = n_out};
    if (tiled_batch((uint32_t)n_tok)) {
        a.ids = g->moe_order, a.groups = g->moe_offsets;
        a.n_tok = (uint32_t)n_tok, a.nz = m->hp.n_expert;
    }
    return a;
}

/* The chosen experts' outputs into moe_out, one row per (token, choice) slot. */
static void routed_experts(struct model *m, const struct gw *L, int n_tok) {
    struct vk_model *g = m->gpu;
    const struct hparams *hp = &m->hp;
    uint32_t k = hp->n_expert_used, E = hp->n_embd, F = hp->n_ff_exp;
    if (tiled_batch((uint32_t)n_tok)) {
        struct vk_moe_group_push p = {g->expert_ids, g->moe_offsets, g->moe_order,
                                      (uint32_t)n_tok * k, hp->n_expert};
        vk_dispatch(g->vk, VK_MOE_GROUP, &p, sizeof p, 1, 1, 1);
        BARRIER();
    }
    int fused = L[W_FFN_GATE_UP_EXPS].addr != 0;
    const struct gw *gate = fused ? &L[W_FFN_GATE_UP_EXPS] : &L[W_FFN_GATE_EXPS];
    const struct gw *up = fused ? &L[W_FFN_GATE_UP_EXPS] : &L[W_FFN_UP_EXPS];
    uint64_t x_up =
        gate_up(g, gate, up, fused ? F : 0, expert_args(m, g->xb, E, k, g->gate, F, n_tok), g->up);
    BARRIER();
    struct mm_args down = expert_args(m, g->gate, F, 1, g->moe_out, E, n_tok);
    down.x_up = x_up;
    mul_mat(g, &L[W_FFN_DOWN_EXPS], &down);
}

/* --cpu-moe: the GPU hands xb and the router's choices over and the CPU threads compute the
 * chosen experts' weighted sum into xfer_out, which the GPU's next submission reads. */
static int cpu_routed_experts(struct model *m, int il, int n_tok) {
    struct vk_model *g = m->gpu;
    uint32_t E = m->hp.n_embd, k = m->hp.n_expert_used;
    copy2d(g, g->xb, E, g->xfer_xb, E, (uint32_t)n_tok, E);
    copy2d(g, g->expert_ids, k, g->xfer_ids, k, (uint32_t)n_tok, k);
    copy2d(g, g->expert_w, k, g->xfer_w, k, (uint32_t)n_tok, k);
    if (vk_submit(g->vk)) return -1;
    memcpy(m->xb, g->xfer_xb_h, (size_t)n_tok * E * 4);
    memcpy(m->expert_ids, g->xfer_ids_h, (size_t)n_tok * k * 4);
    memcpy(m->expert_w, g->xfer_w_h, (size_t)n_tok * k * 4);
    model_routed_experts_cpu(m, il, n_tok, 1, g->xfer_out_h);
    return vk_begin(g->vk);
}

/* A MoE feed-forward over xb and the residual step after it (x += its output, then
 * next_norm into xb; NULL: none). The shared experts' products run beside the router's and
 * the routed experts' (they need only xb), and one pass sums the chosen experts' outputs with
 * their weights and the shared output into x and norms it: five barriers from xb to xb. */
static int moe_ffn(struct model *m, int il, int n_tok, const struct gw *next_norm) {
    struct vk_model *g = m->gpu;
    const struct gw *L = g->lw[il];
    uint32_t E = m->hp.n_embd, k = m->hp.n_expert_used;
    int shared = L[W_FFN_DOWN_SHEXP].addr != 0, gated = L[W_FFN_GATE_INP_SHEXP].addr != 0;
    matmul(g, &L[W_FFN_GATE_INP], g->xb, n_tok, g->router_logits);
    uint64_t sh_x_up = 0;
    if (shared)
        sh_x_up = gate_up(g, &L[W_FFN_GATE_SHEXP], &L[W_FFN_UP_SHEXP], 0,
                          (struct mm_args){.x = g->xb, .y = g->sh_gate, .n_tok = (uint32_t)n_tok},
                          g->sh_up);
    if (gated)
        mul_mat(g, &L[W_FFN_GATE_INP_SHEXP],
                &(struct mm_args){
                    .x = g->xb, .y = g->shexp_gate, .n_tok = (uint32_t)n_tok, .n_out = 1});
    BARRIER();
    route(m, L, n_tok);
    if (shared)
        mul_mat(g, &L[W_FFN_DOWN_SHEXP],
                &(struct mm_args){
                    .x = g->sh_gate, .x_up = sh_x_up, .y = g->moe_in, .n_tok = (uint32_t)n_tok});
    BARRIER();
    struct vk_moe_residual_push p = {.x = g->x,
                                     .y = next_norm ? g->xb : 0,
                                     .w = next_norm ? next_norm->addr : 0,
                                     .parts = g->moe_out,
                                     .weights = g->expert_w,
                                     .shared = shared ? g->moe_in : 0,
                                     .gate = gated ? g->shexp_gate : 0,
                                     .k = k,
                                     .E = E,
                                     .gate_stride = 1,
                                     .eps = m->hp.norm_eps};
    if (g->cpu_moe) {
        if (cpu_routed_experts(m, il, n_tok)) return -1;
        p.parts = g->xfer_out, p.weights = 0, p.k = 1; /* the CPU's sum, as it is */
    } else {
        routed_experts(m, L, n_tok);
    }
    BARRIER();
    p.n_tok = (uint32_t)n_tok;
    vk_dispatch(g->vk, VK_MOE_RESIDUAL, &p, sizeof p, groups((uint64_t)n_tok, 1), 1, 1);
    BARRIER();
    return 0;
}

/* The residual step x += proj, fused with the norm that follows it when there is one on the
 * GPU (next_norm: NULL for a plain add). */
static void residual(struct model *m, int n_tok, const struct gw *next_norm) {
    struct vk_model *g = m->gpu;
    const struct hparams *hp = &m->hp;
    if (next_norm)
        rmsnorm_add(g, g->x, g->proj, g->xb, next_norm, hp->n_embd, n_tok, hp->n_embd,
                    hp->norm_eps);
    else
        add(g, g->x, g->proj, (uint64_t)n_tok * hp->n_embd, 0);
    BARRIER();
}

/* The feed-forward half over xb (already normed); ends with x += its output and next_norm. */
static int ffn_block(struct model *m, int il, int n_tok, const struct gw *next_norm) {
    struct vk_model *g = m->gpu;
    const struct gw *L = g->lw[il];
    if (m->layers[il].is_moe) return moe_ffn(m, il, n_tok, next_norm);
    swiglu_ffn(g, &L[W_FFN_GATE], &L[W_FFN_UP], &L[W_FFN_DOWN], g->xb, n_tok, g->proj);
    BARRIER();
    residual(m, n_tok, next_norm);
    return 0;
}

/* The attention half over xb (already normed); ends with x += proj and the FFN norm. */
static void attention_block(struct model *m, int il, int n_tok, int pos0) {
    struct vk_model *g = m->gpu;
    if (m->ag.mla)
        mla_attention(m, il, n_tok, pos0);
    else
        gqa_attention(m, il, n_tok, pos0);
    BARRIER();
    residual(m, n_tok, &g->lw[il][W_FFN_NORM]);
}

static void embed(struct model *m, int n_tok) {
    struct vk_model *g = m->gpu;
    const struct gw *e = &g->w[W_TOKEN_EMBD];
    struct vk_get_rows_push p = {
        e->addr,         g->tokens, g->x, (uint32_t)e->m.n_in, (uint32_t)e->m.row_bytes,
        (uint32_t)n_tok, 0};
    vk_dispatch(g->vk, (enum vk_kernel)vk_get_rows_kernel(e->m.type), &p, sizeof p, (uint32_t)n_tok,
                1, 1);
    BARRIER();
}

/* The head over rows [first, n_tok) of xb, which the last layer normed with output_norm. */
static void output_head(struct model *m, int first, int n_tok) {
    struct vk_model *g = m->gpu;
    matmul(g, &g->w[W_OUTPUT], f32_at(g->xb, (uint64_t)first * m->hp.n_embd), n_tok - first,
           g->logits);
}

int vk_model_forward(struct model *m, const int32_t *tokens, int n_tok, int pos0, float *logits,
                     int all_logits) {
    struct vk_model *g = m->gpu;
    const struct hparams *hp = &m->hp;
    int first = all_logits ? 0 : n_tok - 1;
    int on_gpu = g->n_gpu_layers == (int)hp->n_layer;
    memcpy(g->tokens_h, tokens, (size_t)n_tok * 4);
    for (int t = 0; t < n_tok; t++) g->pos_h[t] = m->pos[t] = pos0 + t;
    if (vk_begin(g->vk)) return -1;
    embed(m, n_tok);
    rmsnorm(g, g->x, g->xb, &g->lw[0][W_ATTN_NORM], hp->n_embd, n_tok, hp->n_embd, hp->norm_eps);
    BARRIER();
    for (int il = 0; il < g->n_gpu_layers; il++) {
        const struct gw *next = il + 1 < g->n_gpu_layers ? &g->lw[il + 1][W_ATTN_NORM]
                                : on_gpu && logits       ? &g->w[W_OUTPUT_NORM]
                                                         : NULL;
        attention_block(m, il, n_tok, pos0);
        if (ffn_block(m, il, n_tok, next)) return -1;
    }
    if (on_gpu && logits) output_head(m, first, n_tok);
    if (!on_gpu) copy2d(g, g->x, hp->n_embd, g->xfer_x, hp->n_embd, (uint32_t)n_tok, hp->n_embd);
    if (vk_submit(g->vk)) return -1;
    if (on_gpu) {
        if (logits)
            memcpy(logits, g->logits_h, (size_t)(n_tok - first) * hp->n_vocab * sizeof(float));
        return 0;
    }
    memcpy(m->x, g->xfer_x_h, (size_t)n_tok * hp->n_embd * 4);
    for (int il = g->n_gpu_layers; il < (int)hp->n_layer; il++) model_layer_cpu(m, il, n_tok, pos0);
    if (logits) model_output_cpu(m, first, n_tok, logits);
    return 0;
}

void model_backend_text(const struct model *m, char *buf, size_t cap) {
    char cpu[64];
    snprintf(cpu, sizeof cpu, "cpu %d threads%s", cpu_n_threads(m->cpu),
             cpu_has_blas() ? " + OpenBLAS" : "");
    const struct vk_model *g = m->gpu;
    if (!g) {
        snprintf(buf, cap, cpu_reason[0] ? "%s (%s)" : "%s%s", cpu, cpu_reason);
        return;
    }
    if (g->n_gpu_layers == (int)m->hp.n_layer && !g->cpu_moe)
        snprintf(buf, cap, "GPU %s", vk_device_name(g->vk));
    else
        snprintf(buf, cap, "GPU %s: %d of %u layers%s, %s", vk_device_name(g->vk), g->n_gpu_layers,
                 m->hp.n_layer, g->cpu_moe ? ", routed experts on the CPU" : "", cpu);
}
