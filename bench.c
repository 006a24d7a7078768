/* moerun bench [-m] MODEL [-p 128] [-n 32] [-t THREADS] [-r 3] [--json] [--membw GBPS]
 *
 * What llama-bench measures, on moerun: prefill (ppN: one batch of N random token ids at
 * positions 0..N-1, logits of the last one) and decode (tgN: N single-token forward passes at
 * positions 0..N-1, logits each time), each run -r times after one warm-up, as the mean and
 * sample standard deviation of the per-run tokens/s. The cache is not cleared between runs:
 * every run starts again at position 0 and overwrites it, which is what a fresh sequence does.
 *
 * Decode also gets its roofline fraction: the weight bytes one token reads (bench_decode_bytes)
 * times decode tokens/s, over the read bandwidth of as many threads as the model uses
 * (measured in-process for about half a second before the pool starts, the best of 5
 * windows, or --membw GBPS). */
#include "bench.h"

#include "model.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const bench_usage =
    "usage: moerun bench [-m] MODEL [options]\n"
    "\n"
    "Prefill and decode speed, as llama-bench measures them: a table on stdout.\n"
    "  -p N           prefill test: one batch of N random tokens (default 128; 0 skips it)\n"
    "  -n N           decode test: N tokens one at a time (default 32; 0 skips it)\n"
    "  -t N           threads (default: one per online CPU)\n"
    "  -r N           runs per test, after one warm-up (default 3)\n"
    "  --json         one JSON object per line and test (llama-bench's field names, plus\n"
    "                 roofline_fraction, decode_bytes_per_token and membw_gbps for decode)\n"
    "  --membw GBPS   memory read bandwidth for the roofline (default: measured, ~0.5 s)\n"
    "  --mlock        lock the weights in RAM\n"
    "  --no-mmap      read the weights into memory instead of mapping the file\n"
    "  -h, --help     this text\n"
    "  and the GPU options of moerun run (--device, -ngl, --cpu-moe, --fit, --cpu, --profile);\n"
    "  on a GPU the roofline column gives the weight bytes read per second instead\n"
    "\n"
    "roofline = weight bytes read per decoded token (attention, dense and shared FFN, the\n"
    "chosen share of the routed experts, output head, one embedding row) x decode t/s /\n"
    "read bandwidth with the same thread count.\n";

struct bench_opts {
    const char *model;
    int n_prompt, n_gen, n_threads, reps, json;
    double membw_gbps; /* 0: measure */
    struct gpu_params gpu;
    int hold; /* enum gguf_hold: --mlock, --no-mmap */
};

/* ---- arguments ---- */

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "moerun bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see moerun bench --help)\n");
    return -1;
}

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || end == s || *end || v < lo || v > hi)
        return usage_error("bad value for %s", flag);
    *out = (int)v;
    return 0;
}

static int parse_gbps(const char *s, double *out) {
    char *end;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || *end || !(v > 0 && v < 1e6))
        return usage_error("bad value for %s", "--membw");
    *out = v;
    return 0;
}

/* One option at argv[*i]: 0 taken, 1 --help, -1 error. */
static int parse_one(struct bench_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
    if (!strcmp(a, "--json")) return o->json = 1, 0;
    if (!strcmp(a, "-m") || a[0] != '-') {
        if (a[0] == '-' && !v) return usage_error("%s needs a value", a);
        if (o->model) return usage_error("more than one model: '%s'", a[0] == '-' ? v : a);
        o->model = a[0] == '-' ? argv[++*i] : a;
        return 0;
    }
    if (hold_option(&o->hold, a)) return 0;
    int rc = gpu_option(&o->gpu, a, v);
    if (rc < 0) return usage_error("%s", err_get());
    if (rc) return *i += rc - 1, 0;
    if (!strcmp(a, "-p"))
        rc = parse_int(a, v, 0, 1 << 20, &o->n_prompt);
    else if (!strcmp(a, "-n"))
        rc = parse_int(a, v, 0, 1 << 20, &o->n_gen);
    else if (!strcmp(a, "-t"))
        rc = parse_int(a, v, 1, 1024, &o->n_threads);
    else if (!strcmp(a, "-r"))
        rc = parse_int(a, v, 1, 1000, &o->reps);
    else if (!strcmp(a, "--membw"))
        rc = parse_gbps(v, &o->membw_gbps);
    else
        return usage_error("unknown option '%s'", a);
    ++*i;
    return rc;
}

/* 0 run, 1 --help printed, -1 usage error printed. */
static int parse_args(struct bench_opts *o, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        int rc = parse_one(o, argc, argv, &i);
        if (rc > 0) fputs(bench_usage, stdout);
        if (rc) return rc;
    }
    if (!o->model) return usage_error("%s", "no model given");
    if (!o->n_prompt && !o->n_gen) return usage_error("%s", "nothing to run (-p 0 -n 0)");
    return 0;
}

/* ---- read bandwidth ---- */

typedef uint64_t u64x2 __attribute__((vector_size(16)));

/* Sums n bytes (a multiple of 64) a cache line per step. */
static uint64_t read_sum(const uint8_t *p, size_t n) {
    u64x2 a = {0, 0}, b = a, c = a, d = a;
    for (size_t i = 0; i < n; i += 64) {
        const u64x2 *v = (const u64x2 *)(p + i);
        a += v[0], b += v[1], c += v[2], d += v[3];
    }
    u64x2 s = a + b + c + d;
    return s[0] + s[1];
}

struct bw_job {
    uint8_t *p;
    size_t n;
    double secs;
    pthread_barrier_t *start;
    int touch; /* first window: write the share first, so its pages live where this runs */
    uint64_t bytes, sink;
    double elapsed;
};

static void *bw_thread(void *arg) {
    struct bw_job *j = arg;
    if (j->touch) memset(j->p, 1, j->n);
    pthread_barrier_wait(j->start);
    double t0 = time_now(), t;
    do {
        j->sink += read_sum(j->p, j->n);
        j->bytes += j->n;
        t = time_now();
    } while (t - t0 < j->secs);
    j->elapsed = t - t0;
    return NULL;
}

/* One timed window of all threads reading their shares; bytes per second. */
static double read_window(uint8_t *buf, size_t share, int n_threads, double secs, int touch) {
    struct bw_job *jobs = xcalloc((size_t)n_threads, sizeof *jobs);
    pthread_t *th = xcalloc((size_t)n_threads, sizeof *th);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)n_threads);
    for (int i = 0; i < n_threads; i++) {
        jobs[i] = (struct bw_job){.p = buf + share * (size_t)i,
                                  .n = share,
                                  .secs = secs,
                                  .start = &start,
                                  .touch = touch};
        if (i && pthread_create(&th[i], NULL, bw_thread, &jobs[i])) die("pthread_create");
    }
    bw_thread(&jobs[0]);
    double bytes_read = 0, wall = 0;
    for (int i = 0; i < n_threads; i++) {
        if (i) pthread_join(th[i], NULL);
        bytes_read += (double)jobs[i].bytes;
        if (jobs[i].elapsed > wall) wall = jobs[i].elapsed;
    }
    pthread_barrier_destroy(&start);
    free(th), free(jobs);
    return wall > 0 ? bytes_read / wall : 0;
}

/* The best of BW_WINDOWS windows of secs / BW_WINDOWS each: on a shared VM a neighbour on the
 * memory bus lowers one window rather than the figure (single 0.5 s windows ranged from 17 to
 * 31 GB/s on this project's 2-core VMs, and the roofline fraction with them). */
enum { BW_WINDOWS = 5 };

double bench_read_bandwidth(int n_threads, size_t bytes, double secs) {
    if (n_threads < 1) n_threads = 1;
    size_t share = bytes / (size_t)n_threads / 4096 * 4096;
    if (share < 4096) share = 4096;
    uint8_t *buf = xaligned_alloc(share * (size_t)n_threads);
    double best = 0;
    for (int w = 0; w < BW_WINDOWS; w++) {
        double bw = read_window(buf, share, n_threads, secs / BW_WINDOWS, w == 0);
        if (bw > best) best = bw;
    }
    free(buf);
    return best;
}

/* ---- bytes per decoded token ---- */

static int is_routed(int slot) {
    return slot == W_FFN_GATE_EXPS || slot == W_FFN_UP_EXPS || slot == W_FFN_DOWN_EXPS ||
           slot == W_FFN_GATE_UP_EXPS;
}

static double layer_bytes(const struct model *m, const struct model_layer *l) {
    double share = m->hp.n_expert ? (double)m->hp.n_expert_used / m->hp.n_expert : 1.0, sum = 0;
    for (int s = 0; s < W_SLOT_COUNT; s++) {
        if (!l->w[s].t) continue;
        sum += (double)l->w[s].t->nbytes * (is_routed(s) ? share : 1.0);
    }
    return sum;
}

/* A legacy attn_kv_b file's derived f32 key half is read beside the tensor's value half:
 * counted as the whole tensor, which is close enough for a roofline. */
double bench_decode_bytes(const struct model *m) {
    double sum = 0;
    for (uint32_t i = 0; i < m->hp.n_layer; i++) sum += layer_bytes(m, &m->layers[i]);
    const struct gguf_tensor *out = m->w[W_OUTPUT].t, *emb = m->w[W_TOKEN_EMBD].t;
    const struct gguf_tensor *norm = m->w[W_OUTPUT_NORM].t;
    if (out) sum += (double)out->nbytes;
    if (norm) sum += (double)norm->nbytes;
    if (emb && m->hp.n_vocab) sum += (double)emb->nbytes / m->hp.n_vocab;
    return sum;
}

/* ---- runs ---- */

struct stats {
    int n;
    double ts[1000]; /* tokens/s per run (reps <= 1000) */
    double avg_ts, stddev_ts, avg_ns, stddev_ns;
};

static void stats_finish(struct stats *s, int n_tok) {
    double sum = 0, sq = 0, ns = 0, nsq = 0;
    for (int i = 0; i < s->n; i++) sum += s->ts[i], ns += 1e9 * n_tok / s->ts[i];
    s->avg_ts = sum / s->n, s->avg_ns = ns / s->n;
    for (int i = 0; i < s->n; i++) {
        double d = s->ts[i] - s->avg_ts, e = 1e9 * n_tok / s->ts[i] - s->avg_ns;
        sq += d * d, nsq += e * e;
    }
    s->stddev_ts = s->n > 1 ? sqrt(sq / (s->n - 1)) : 0;
    s->stddev_ns = s->n > 1 ? sqrt(nsq / (s->n - 1)) : 0;
}

static void random_tokens(int32_t *ids, int n, uint32_t n_vocab, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % n_vocab);
    }
}

/* Seconds for one prefill batch of n ids, or -1 with err set. */
static double time_prefill(struct model *m, const int32_t *ids, int n, float *logits) {
    double t0 = time_now();
    if (model_forward(m, ids, n, 0, logits, 0) < 0) return -1;
    return time_now() - t0;
}

/* Seconds for n single-token passes, or -1 with err set. */
static double time_decode(struct model *m, const int32_t *ids, int n, float *logits) {
    double t0 = time_now();
    for (int i = 0; i < n; i++)
        if (model_forward(m, ids + i, 1, i, logits, 0) < 0) return -1;
    return time_now() - t0;
}

/* One test: a warm-up, then reps timed runs. pp: n_prompt > 0, else tg. */
static int run_test(struct model *m, const struct bench_opts *o, int pp, struct stats *s) {
    int n = pp ? o->n_prompt : o->n_gen;
    int32_t *ids = xmalloc((size_t)n * sizeof *ids);
    float *logits = xmalloc((size_t)m->hp.n_vocab * sizeof *logits);
    int rc = 0;
    s->n = 0;
    for (int r = -1; r < o->reps && rc == 0; r++) {
        random_tokens(ids, n, m->hp.n_vocab, (uint64_t)(r + 2) * (pp ? 1 : 7919));
        int warm = r < 0 && !pp; /* decode warms up on a few tokens */
        int k = warm ? (n < 4 ? n : 4) : n;
        double t = pp ? time_prefill(m, ids, k, logits) : time_decode(m, ids, k, logits);
        if (t < 0)
            rc = -1;
        else if (r >= 0)
            s->ts[s->n++] = t > 0 ? k / t : 0;
    }
    if (rc == 0) stats_finish(s, n);
    free(ids), free(logits);
    return rc;
}

/* ---- output ---- */

static const char *ftype_name(const struct model *m) {
    static const struct {
        uint32_t ft;
        const char *name;
    } names[] = {{0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},
                 {8, "Q5_0"},    {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"},
                 {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},
                 {18, "Q6_K"},   {32, "BF16"}};
    uint32_t ft;
    if (gguf_get_u32(&m->file, "general.file_type", &ft) != 0) return "?";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].ft == ft) return names[i].name;
    return "?";
}

static uint64_t tensor_bytes(const struct model *m) {
    uint64_t sum = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) sum += m->file.tensors[i].nbytes;
    return sum;
}

struct report {
    char type[96];
    uint64_t size, n_params;
    int n_threads;
    int gpu;                    /* the layers run on a GPU: no CPU roofline */
    int hold;                   /* enum gguf_hold in effect */
    double decode_bytes, membw; /* bytes/token, bytes/s */
};

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_json(const struct bench_opts *o, const struct report *r, int pp,
                       const struct stats *s, int batch) {
    printf("{\"model_filename\": ");
    json_str(o->model);
    printf(", \"model_type\": ");
    json_str(r->type);
    printf(", \"model_size\": %llu, \"model_n_params\": %llu, \"backends\": \"%s\", "
           "\"n_batch\": %d, \"n_threads\": %d, \"n_prompt\": %d, \"n_gen\": %d, "
           "\"avg_ns\": %.0f, \"stddev_ns\": %.0f, \"avg_ts\": %.6f, \"stddev_ts\": %.6f, "
           "\"samples_ts\": [",
           (unsigned long long)r->size, (unsigned long long)r->n_params, r->gpu ? "Vulkan" : "CPU",
           batch, r->n_threads, pp ? o->n_prompt : 0, pp ? 0 : o->n_gen, s->avg_ns, s->stddev_ns,
           s->avg_ts, s->stddev_ts);
    for (int i = 0; i < s->n; i++) printf("%s%.6f", i ? ", " : "", s->ts[i]);
    printf("], \"use_mmap\": %s, \"use_mlock\": %s", r->hold & GGUF_READ ? "false" : "true",
           r->hold & GGUF_LOCK ? "true" : "false");
    if (!pp && r->gpu)
        printf(", \"decode_bytes_per_token\": %.0f, \"weights_gbps\": %.3f", r->decode_bytes,
               r->decode_bytes * s->avg_ts / 1e9);
    else if (!pp)
        printf(", \"decode_bytes_per_token\": %.0f, \"membw_gbps\": %.3f, "
               "\"roofline_fraction\": %.4f",
               r->decode_bytes, r->membw / 1e9, r->decode_bytes * s->avg_ts / r->membw);
    printf("}\n");
}

static void print_header(void) {
    printf("| %-30s | %10s | %10s | %-7s | %7s | %8s | %18s | %8s |\n", "model", "size", "params",
           "backend", "threads", "test", "t/s", "roofline");
    printf("| %.30s | %.10s | %.10s | %.7s | %.7s | %.8s | %.18s | %.8s |\n",
           "------------------------------", "---------:", "---------:", "-------",
           "------:", "-------:", "-----------------:", "-------:");
}

static void print_row(const struct bench_opts *o, const struct report *r, int pp,
                      const struct stats *s) {
    char size[32], params[32], test[32], ts[48], roof[16] = "";
    double gib = (double)r->size / (1024.0 * 1024 * 1024), n = (double)r->n_params;
    snprintf(size, sizeof size, gib >= 1 ? "%.2f GiB" : "%.2f MiB", gib >= 1 ? gib : gib * 1024);
    snprintf(params, sizeof params, "%.2f %s", n >= 1e9 ? n / 1e9 : n / 1e6, n >= 1e9 ? "B" : "M");
    snprintf(test, sizeof test, "%s%d", pp ? "pp" : "tg", pp ? o->n_prompt : o->n_gen);
    snprintf(ts, sizeof ts, "%.2f ± %.2f", s->avg_ts, s->stddev_ts);
    if (!pp && r->gpu)
        snprintf(roof, sizeof roof, "%.0fGB/s", r->decode_bytes * s->avg_ts / 1e9);
    else if (!pp)
        snprintf(roof, sizeof roof, "%.1f%%", 100 * r->decode_bytes * s->avg_ts / r->membw);
    /* "±" is two bytes and one column: pad by one more */
    printf("| %-30s | %10s | %10s | %-7s | %7d | %8s | %19s | %8s |\n", r->type, size, params,
           r->gpu ? "Vulkan" : "CPU", r->n_threads, test, ts, roof);
}

static void print_footer(const struct bench_opts *o, const struct report *r) {
    printf("\nweights: %s\n", r->hold & GGUF_LOCK   ? "locked in RAM (--mlock)"
                              : r->hold & GGUF_READ ? "read into RAM (--no-mmap)"
                                                    : "mapped from the file");
    if (r->gpu) {
        printf("decode reads %.1f MiB of weights per token\n", r->decode_bytes / (1024.0 * 1024));
        return;
    }
    printf("decode reads %.1f MiB of weights per token; read bandwidth with %d thread%s: "
           "%.2f GB/s (%s)\n",
           r->decode_bytes / (1024.0 * 1024), r->n_threads, r->n_threads == 1 ? "" : "s",
           r->membw / 1e9, o->membw_gbps > 0 ? "--membw" : "measured");
}

/* ---- the command ---- */

static void fill_report(struct report *r, const struct model *m) {
    double n = (double)m->n_params;
    snprintf(r->type, sizeof r->type, "%s %.2f%s %s", m->arch_name, n >= 1e9 ? n / 1e9 : n / 1e6,
             n >= 1e9 ? "B" : "M", ftype_name(m));
    r->size = tensor_bytes(m);
    r->n_params = m->n_params;
    r->decode_bytes = bench_decode_bytes(m);
    r->hold = m->file.hold;
}

static int open_bench_model(struct model *m, const struct bench_opts *o, struct report *r) {
    if (model_load_hold(m, o->model, o->hold) < 0) return -1;
    if (!o->json) hold_warn(m, "bench");
    fill_report(r, m);
    int threads = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    /* before the pool starts, so nothing else competes for the cores */
    r->membw = o->membw_gbps > 0 ? o->membw_gbps * 1e9
               : o->n_gen > 0    ? bench_read_bandwidth(threads, (size_t)256 << 20, 0.5)
                                 : 0;
    int n_ctx = o->n_prompt > o->n_gen ? o->n_prompt : o->n_gen;
    struct model_params mp = {
        .n_ctx = n_ctx < 16 ? 16 : n_ctx, .n_threads = threads, .gpu = o->gpu};
    if (model_init(m, &mp) < 0) {
        model_free(m);
        return -1;
    }
    r->n_threads = cpu_n_threads(m->cpu);
    r->gpu = m->gpu != NULL;
    if (!o->json) { /* JSON output stays alone on its streams */
        char backend[400];
        model_backend_text(m, backend, sizeof backend);
        fprintf(stderr, "moerun bench: %s\n", backend);
    }
    return 0;
}

static int run_all(struct model *m, const struct bench_opts *o, const struct report *r) {
    if (!o->json) print_header();
    for (int pp = 1; pp >= 0; pp--) {
        if (!(pp ? o->n_prompt : o->n_gen)) continue;
        struct stats *s = xmalloc(sizeof *s);
        int rc = run_test(m, o, pp, s);
        if (rc == 0 && o->json)
            print_json(o, r, pp, s, m->max_batch);
        else if (rc == 0)
            print_row(o, r, pp, s);
        free(s);
        if (rc) return -1;
        fflush(stdout);
    }
    if (!o->json && o->n_gen) print_footer(o, r);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    struct bench_opts o = {.n_prompt = 128, .n_gen = 32, .reps = 3};
    gpu_params_default(&o.gpu);
    int rc = parse_args(&o, argc, argv);
    if (rc) return rc > 0 ? 0 : 1;
    struct model m;
    struct report r = {0};
    if (open_bench_model(&m, &o, &r) < 0) {
        fprintf(stderr, "moerun bench: %s\n", err_get());
        return 1;
    }
    rc = run_all(&m, &o, &r);
    if (rc) fprintf(stderr, "moerun bench: %s\n", err_get());
    model_free(&m);
    return rc ? 1 : 0;
}
