/* tilebench: one weight type's integer tile kernel against OpenBLAS sgemm on dequantized rows,
 * for the batch sizes an expert's share of a prefill takes: the measurement behind
 * qtype_tile_sgemm_crossover (quant.c). Both run through cpu_matmul_strided on one thread,
 * activation quantization and dequantization included.
 *
 *   build/tilebench [-w TYPE] [-k N_IN] [-o N_OUT] [-r REPS]
 *
 * TYPE is ggml's name (q4_K, q8_0, ...; default q4_K), N_IN the row width (default 2048),
 * N_OUT the rows (default 1408). For each batch size it prints the best GFLOPS of REPS runs
 * (default 5) per path, their ratio, and the path moerun picks by default. */
#include "cpu.h"
#include "quant.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tile_opts {
    const char *type;
    long n_in, n_out, reps;
};

static int parse(struct tile_opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts("usage: tilebench [-w TYPE] [-k N_IN] [-o N_OUT] [-r REPS]");
            exit(0);
        }
        char *end = NULL;
        long x = v ? strtol(v, &end, 10) : 0;
        if (!v) {
            fprintf(stderr, "tilebench: %s needs a value\n", a);
            return -1;
        } else if (!strcmp(a, "-w")) {
            o->type = v;
        } else if (strcmp(a, "-k") && strcmp(a, "-o") && strcmp(a, "-r")) {
            fprintf(stderr, "tilebench: unknown argument '%s' (see --help)\n", a);
            return -1;
        } else if (*end || x < 1 || x > 1 << 16) {
            fprintf(stderr, "tilebench: bad value for %s: '%s'\n", a, v);
            return -1;
        } else {
            *(a[1] == 'k' ? &o->n_in : a[1] == 'o' ? &o->n_out : &o->reps) = x;
        }
    }
    return 0;
}

static int type_by_name(const char *name) {
    for (int t = 0; t < QT_COUNT; t++)
        if (qtype_traits(t) && qtype_traits(t)->vec_dot && !strcmp(qtype_name(t), name)) return t;
    return -1;
}

/* Rows of uniform random values in [-0.5, 0.5) quantized to the type. */
static void *random_weights(int type, long n_in, long n_out) {
    const size_t row = qtype_row_size(type, n_in);
    uint8_t *w = xmalloc(row * (size_t)n_out);
    float *tmp = xmalloc((size_t)n_in * sizeof *tmp);
    for (long r = 0; r < n_out; r++) {
        for (long i = 0; i < n_in; i++) tmp[i] = (float)rand() / RAND_MAX - 0.5f;
        qtype_traits(type)->from_float(tmp, w + (size_t)r * row, n_in);
    }
    free(tmp);
    return w;
}

/* Best GFLOPS of `reps` products of m tokens, sgemm from blas_min_batch on (-1: never). */
static double gflops(const struct cpu_matrix *w, const float *x, float *y, int m, int blas,
                     long reps) {
    struct cpu_config cfg = {.n_threads = 1,
                             .max_batch = m,
                             .max_fanout = 1,
                             .max_in = w->n_in,
                             .max_act_per_token = w->n_in,
                             .max_ctx = 1,
                             .max_head_dim = 1,
                             .blas_min_batch = blas};
    struct cpu_ctx *c = cpu_init(&cfg);
    double best = 0;
    for (long r = 0; r < reps; r++) {
        double t0 = time_now();
        cpu_matmul_strided(c, w, x, w->n_in, m, y, w->n_out);
        double g = 2.0 * m * (double)w->n_in * (double)w->n_out / (time_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    cpu_free(c);
    return best;
}

int main(int argc, char **argv) {
    struct tile_opts o = {.type = "q4_K", .n_in = 2048, .n_out = 1408, .reps = 5};
    if (parse(&o, argc, argv)) return 1;
    const int type = type_by_name(o.type);
    if (type < 0 || !qtype_row_size(type, o.n_in)) {
        fprintf(stderr, "tilebench: no product for type '%s' with rows of %ld\n", o.type, o.n_in);
        return 1;
    }
    if (!cpu_has_blas()) {
        fprintf(stderr, "tilebench: this build has no OpenBLAS to compare with\n");
        return 1;
    }
    static const int batches[] = {4, 8, 16, 24, 32, 48, 64, 96, 128};
    const int max_m = batches[sizeof batches / sizeof *batches - 1];
    struct cpu_matrix w = {random_weights(type, o.n_in, o.n_out),
                           (uint32_t)type,
                           o.n_in,
                           o.n_out,
                           qtype_row_size(type, o.n_in),
                           0};
    float *x = xmalloc((size_t)max_m * (size_t)o.n_in * sizeof *x);
    float *y = xmalloc((size_t)max_m * (size_t)o.n_out * sizeof *y);
    for (size_t i = 0; i < (size_t)max_m * (size_t)o.n_in; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    const int cross = qtype_tile_sgemm_crossover(type, o.n_in);
    printf("%s, %ld x %ld, 1 thread, best of %ld; default: sgemm from %d tokens\n", o.type, o.n_out,
           o.n_in, o.reps, cross > CPU_SGEMM_MIN_BATCH ? cross : CPU_SGEMM_MIN_BATCH);
    printf("tokens  tile GFLOPS  sgemm GFLOPS  tile/sgemm\n");
    for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
        double tile = gflops(&w, x, y, batches[b], -1, o.reps);
        double blas = gflops(&w, x, y, batches[b], 1, o.reps);
        printf("%6d  %11.1f  %12.1f  %10.2f\n", batches[b], tile, blas, tile / blas);
        fflush(stdout);
    }
    free((void *)w.data);
    free(x);
    free(y);
    return 0;
}
