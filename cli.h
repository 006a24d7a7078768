/* What the subcommands share: the parsed options and the helpers main.c provides. */
#ifndef MOERUN_CLI_H
#define MOERUN_CLI_H

#include "model.h"
#include "sampler.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum verbosity { V_QUIET = 0, V_NORMAL = 1, V_VERBOSE = 2 };

/* Everything any subcommand accepts; each subcommand reads the fields it documents. */
struct options {
    const char *cmd;
    const char *model;
    const char *prompt;
    const char *prompt_file;
    const char *tokens;
    const char *logits_path;
    const char *text;
    const char *system;
    const char *template_name;
    int raw;
    int each_line;
    int json;
    int no_history;
    int think_mode; /* enum repl_think */
    int n_predict;
    int n_ctx;
    int n_threads;
    int blas_min_batch;
    int prefill;
    int verbosity;
    int print_ids;
    int decode;
    int show_tensors;
    int check_tensors;
    int detok;
    int show;
    int add_bos;
    int special;
    int seed_given;
    int hold; /* enum gguf_hold: --mlock, --no-mmap */
    struct sampler_params sp;
    struct gpu_params gpu;
};

/* Subcommands outside main.c. */
int cmd_run(struct options *o);

/* One line "moerun CMD: <err_get()>" on stderr; returns 1, the exit status for it. */
int error_exit(const char *cmd);
/* A usage error: "moerun CMD: <fmt with arg> (see moerun CMD --help)"; returns -1. */
int fail(const char *cmd, const char *fmt, const char *arg);
int read_stream(FILE *f, char **out, size_t *len);
int read_file_text(const char *path, char **out, size_t *len);
int parse_token_list(const char *s, int32_t **out, int *n_out);
const char *human_bytes(double b, char *buf, size_t cap);
const char *human_count(double n, char *buf, size_t cap);
int find_builtin_model(char *path, size_t cap);
int open_model(struct model *m, const struct options *o, double *load_secs);
void load_summary(const struct model *m, const struct options *o, double secs);

#endif
