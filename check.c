/* --check-tensors: dequantize every tensor in bounded chunks and stop at the first NaN/Inf. */
#include "check.h"

#include "gguf.h"
#include "quant.h"
#include "util.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_VALUES (1 << 16) /* values dequantized at a time (a multiple of every block) */

static int report(const struct gguf_file *f, const struct gguf_tensor *t, float v, uint64_t idx) {
    uint64_t c[GGUF_MAX_DIMS], r = idx;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        c[d] = r % (uint64_t)t->ne[d];
        r /= (uint64_t)t->ne[d];
    }
    err_set("check: %s: tensor '%.*s' (%s) has %s at index %" PRIu64 " [%" PRIu64 ", %" PRIu64
            ", %" PRIu64 ", %" PRIu64 "]",
            f->path, (int)(t->name.len > 200 ? 200 : t->name.len), t->name.data,
            qtype_name(t->type), isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf", idx, c[0], c[1],
            c[2], c[3]);
    return -1;
}

int check_tensors(const struct gguf_file *f, struct check_stats *st) {
    struct check_stats s = {.n_tensors = f->n_tensors};
    float *buf = NULL;
    int rc = 0;
    for (uint64_t i = 0; i < f->n_tensors && rc == 0; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        const struct qtype_traits *tr = qtype_traits(t->type);
        if (!tr || !tr->to_float || tr->blck_size <= 0 || CHUNK_VALUES % tr->blck_size) {
            s.n_skipped++;
            continue;
        }
        /* gguf_open checked: ne[0] is a multiple of the block size, nbytes = blocks * size. */
        uint64_t n_blocks = t->nbytes / tr->type_size;
        uint64_t per_chunk = (uint64_t)(CHUNK_VALUES / tr->blck_size);
        if (!buf) buf = xmalloc(CHUNK_VALUES * sizeof *buf);
        s.n_checked++;
        for (uint64_t b = 0; b < n_blocks && rc == 0; b += per_chunk) {
            uint64_t nb = n_blocks - b < per_chunk ? n_blocks - b : per_chunk;
            int64_t n = (int64_t)nb * tr->blck_size;
            tr->to_float((const uint8_t *)t->data + b * tr->type_size, buf, n);
            for (int64_t k = 0; k < n; k++) {
                if (!isfinite(buf[k])) {
                    rc = report(f, t, buf[k], b * (uint64_t)tr->blck_size + (uint64_t)k);
                    break;
                }
            }
            s.n_values += (uint64_t)n;
        }
    }
    free(buf);
    if (st) *st = s;
    return rc;
}
