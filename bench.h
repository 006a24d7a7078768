/* moerun bench: prefill and decode speed in tokens/s, llama-bench style, with the decode
 * roofline (weight bytes read per token times tokens/s over measured read bandwidth). */
#ifndef MOERUN_BENCH_H
#define MOERUN_BENCH_H

#include <stddef.h>

struct model;

/* The subcommand. argv holds the arguments after "bench" (argv[0] is the first of them, argc
 * counts them). Prints the table (or JSON lines) on stdout; returns the exit status: 0 done
 * (or --help), 1 error (usage or model; one line on stderr). */
int cmd_bench(int argc, char **argv);

/* The --help text, starting "usage: moerun bench". */
extern const char *const bench_usage;

/* Read bandwidth in bytes/s: n_threads threads each read their share of a `bytes`-long
 * buffer (touched first by the thread that reads it) over and over for about `secs`
 * seconds, in 5 windows; the best window's bytes read by all threads over its wall time.
 * bench/membw runs the same loop. */
double bench_read_bandwidth(int n_threads, size_t bytes, double secs);

/* Weight bytes one decoded token reads: every layer tensor, routed experts scaled by
 * n_expert_used / n_expert, the output norm and head, and one embedding row. */
double bench_decode_bytes(const struct model *m);

#endif
