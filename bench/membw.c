/* membw: memory read bandwidth for 1..N threads, the loop `moerun bench` uses for its decode
 * roofline (bench_read_bandwidth in bench.c).
 *
 *   build/membw [-t MAX_THREADS] [-m MIB] [-s SECS] [-r REPS]
 *
 * For each thread count from 1 to MAX_THREADS (default: online CPUs) it reads a MIB-MiB
 * buffer (default 512, split among the threads) for SECS seconds (default 0.5; each the best
 * of 5 windows, as bench measures), REPS times (default 3), and prints the best and mean GB/s
 * (1 GB = 1e9 bytes). */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct membw_opts {
    int max_threads, mib, reps;
    double secs;
};

static int arg_num(const char *flag, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "membw: bad value for %s\n", flag);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse(struct membw_opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts("usage: membw [-t MAX_THREADS] [-m MIB] [-s SECS] [-r REPS]");
            exit(0);
        }
        if (!strcmp(a, "-s")) {
            if (arg_num(a, v, 0.01, 60, &o->secs)) return -1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "-m") || !strcmp(a, "-r")) {
            if (arg_num(a, v, 1, 1 << 20, &x)) return -1;
            *(a[1] == 't' ? &o->max_threads : a[1] == 'm' ? &o->mib : &o->reps) = (int)x;
        } else {
            fprintf(stderr, "membw: unknown argument '%s' (see --help)\n", a);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct membw_opts o = {.max_threads = ncpu > 0 ? (int)ncpu : 1, .mib = 512, .reps = 3,
                           .secs = 0.5};
    if (parse(&o, argc, argv)) return 1;
    printf("read bandwidth, %d MiB buffer, %.2f s x %d per thread count\n", o.mib, o.secs,
           o.reps);
    printf("threads  best GB/s  mean GB/s\n");
    for (int t = 1; t <= o.max_threads; t++) {
        double best = 0, sum = 0;
        for (int r = 0; r < o.reps; r++) {
            double bw = bench_read_bandwidth(t, (size_t)o.mib << 20, o.secs) / 1e9;
            sum += bw;
            if (bw > best) best = bw;
        }
        printf("%7d  %9.2f  %9.2f\n", t, best, sum / o.reps);
        fflush(stdout);
    }
    return 0;
}
