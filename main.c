/* moerun: argument parsing and the subcommands. No math here. */
#include "bench.h"
#include "chat.h"
#include "check.h"
#include "cli.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "repl.h"
#include "sampler.h"
#include "tokenizer.h"
#include "tools/convert.h"
#include "tools/quantize.h"
#include "util.h"
#include "vk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MOERUN_VERSION "0.1.0"

/* ---- help ---- */

static const char *usage_main =
    "moerun " MOERUN_VERSION " - run Mixture-of-Experts and dense language models from GGUF "
    "files\n"
    "\n"
    "usage: moerun COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  run       generate a continuation of a prompt; only the text goes to stdout\n"
    "  chat      talk with a model in the terminal (line editing, history, /commands)\n"
    "  info      describe a model file: architecture, hyper-parameters, tensors\n"
    "  tokenize  print the token ids of a text\n"
    "  eval      write the logits of every position of a token sequence to a file\n"
    "  convert   turn a Hugging Face checkpoint (safetensors) into a GGUF file\n"
    "  quantize  write a GGUF file with its weights in another block format\n"
    "  bench     prefill and decode speed, llama-bench style, with the decode roofline\n"
    "  devices   list the Vulkan devices and what moerun can use of them\n"
    "\n"
    "  moerun COMMAND --help   options of one command\n"
    "  moerun --version\n";

static const char *usage_run =
    "usage: moerun run [[-m] MODEL] [-p PROMPT | -f FILE | --tokens 1,2,3] [options]\n"
    "\n"
    "With no MODEL (and no $MOERUN_MODEL), runs the built-in tinyseek-kjv model, a small\n"
    "DeepSeek-V2-architecture model trained on the King James Bible.\n"
    "Streams the continuation of the prompt to stdout, flushed per token. With no -p, -f or\n"
    "--tokens and stdin not a terminal, stdin is the prompt. Logs and timing go to stderr.\n"
    "\n"
    "  -p, --prompt TEXT      the prompt\n"
    "  -f, --file FILE        read the prompt from FILE\n"
    "      --tokens IDS       the prompt as comma-separated token ids (no BOS is added)\n"
    "  -n, --n-predict N      tokens to generate (default -1: until end of text or context)\n"
    "  -c, --ctx-size N       context length (default: the model's, at most 4096)\n"
    "  -t, --threads N        CPU threads (default: all online CPUs)\n"
    "      --temp T           temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K          keep the K most likely tokens (default 40; 0 = off)\n"
    "      --top-p P          nucleus sampling (default 0.95; 1 = off)\n"
    "      --min-p P          drop tokens below P x the top probability (default 0.05)\n"
    "      --repeat-penalty R penalty for recent tokens (default 1.0 = off)\n"
    "      --repeat-last-n N  window of the repeat penalty (default 64)\n"
    "      --seed S           random seed; the same seed repeats a sampled run\n"
    "      --ids              print generated token ids (space-separated) instead of text\n"
    "      --each-line        every line of stdin (or -f FILE) is a prompt of its own; one\n"
    "                         output line per input line, newlines and backslashes in a\n"
    "                         reply written as \\n and \\\\\n"
    "      --json             like --each-line, one JSON object per prompt: prompt, text,\n"
    "                         prompt_tokens, tokens, tokens_per_s\n"
    "      --special          match special-token texts in the prompt\n"
    "      --check-tensors    refuse to run a file with a NaN or Inf weight (reads it all)\n"
    "      --raw              send the prompt as is; by default a model with a chat template\n"
    "                         gets it as one user turn, followed by the assistant's opening\n"
    "      --system TEXT      add a system turn before the prompt\n"
    "      --template NAME    use this chat template family instead of the file's (see\n"
    "                         moerun info; names: deepseek3 deepseek3.1 deepseek-r1 chatml\n"
    "                         qwen2.5 qwen3 llama3 llama3.1 llama2 mistral plain ...)\n"
    "  -v, --verbose          more detail on stderr\n"
    "  -q, --quiet            nothing on stderr but errors\n"
    "\n"
    "Exit status: 0 done, 1 model or usage error, 2 unreadable input, 130 interrupted\n"
    "(Ctrl-C); a closed output pipe ends the run quietly with 0. The KV cache is f32.\n";

static const char *usage_info =
    "usage: moerun info [-m] MODEL [--tensors]\n"
    "\n"
    "Prints architecture, hyper-parameters, tokenizer, file size, parameter count and a\n"
    "histogram of tensor types to stdout.\n"
    "\n"
    "      --tensors        also list every tensor: name, type, shape, bytes\n"
    "      --check-tensors  dequantize every tensor and fail (exit 1) at the first NaN or\n"
    "                       Inf, naming the tensor and the index\n";

static const char *usage_tokenize =
    "usage: moerun tokenize [-m] MODEL [TEXT] [--bos] [--special] [--show | --detok]\n"
    "\n"
    "Prints the token ids of TEXT (or of stdin) on one line, separated by spaces. Only the\n"
    "tokenizer is read, so vocabulary-only GGUF files work too.\n"
    "\n"
    "      --bos       prepend the beginning-of-sequence token\n"
    "      --special   match special-token texts (e.g. <s>) in the text; with --detok,\n"
    "                  print special tokens' text\n"
    "      --show      one line per token: id, a tab, its piece in quotes\n"
    "      --detok     the input is token ids (commas or spaces); print their text\n";

static const char *usage_eval =
    "usage: moerun eval [-m] MODEL --tokens 1,2,3 --logits FILE [--decode] [options]\n"
    "\n"
    "Feeds the ids (nothing added) and writes the logits after every position to FILE as\n"
    "little-endian float32, row-major (n_tokens x n_vocab). The KV cache is f32.\n"
    "\n"
    "      --tokens IDS      comma-separated token ids\n"
    "      --logits FILE     output file (written to a temporary name, then renamed)\n"
    "      --decode          feed one token at a time instead of one batch\n"
    "      --prefill N       feed the first N tokens in one batch, the rest one at a time\n"
    "                        (what generation after an N-token prompt computes)\n"
    "      --blas-batch N    batches of at least N tokens use OpenBLAS on dequantized\n"
    "                        weights (float activations: faster, drifts from llama.cpp by\n"
    "                        its activation rounding); default 0 = never: activations are\n"
    "                        quantized as llama.cpp does, for results equal to its own\n"
    "  -c, --ctx-size N      context length (default: the model's, at most 4096)\n"
    "  -t, --threads N       CPU threads\n"
    "  -v, --verbose / -q, --quiet   more / no log lines on stderr\n";

static const char *usage_for(const char *cmd) {
    if (!strcmp(cmd, "run")) return usage_run;
    if (!strcmp(cmd, "chat")) return repl_usage;
    if (!strcmp(cmd, "info")) return usage_info;
    if (!strcmp(cmd, "tokenize")) return usage_tokenize;
    if (!strcmp(cmd, "eval")) return usage_eval;
    return usage_main;
}

/* ---- argument parsing ---- */

int fail(const char *cmd, const char *fmt, const char *arg) {
    fprintf(stderr, "moerun %s: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see moerun %s --help)\n", cmd);
    return -1;
}

static int parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi,
                      long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "moerun %s: %s expects an integer in %ld..%ld, got '%s'\n", cmd, flag, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_int(const char *cmd, const char *flag, const char *s, long lo, long hi, int *out) {
    long v;
    if (parse_long(cmd, flag, s, lo, hi, &v) < 0) return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *cmd, const char *flag, const char *s, float lo, float hi,
                       float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "moerun %s: %s expects a number in %g..%g, got '%s'\n", cmd, flag,
                (double)lo, (double)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_seed(const char *cmd, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "moerun %s: --seed expects a non-negative integer, got '%s'\n", cmd, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* --think on|off|hide: R1-style reasoning shown, switched off, or generated but hidden. */
static int parse_think(const char *cmd, const char *s, int *out) {
    static const char *const names[] = {"on", "off", "hide"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, names[i])) return *out = i, 0;
    fprintf(stderr, "moerun %s: --think expects on, off or hide, got '%s'\n", cmd, s);
    return -1;
}

static int is_flag(const char *a, const char *short_name, const char *long_name) {
    return (short_name && !strcmp(a, short_name)) || (long_name && !strcmp(a, long_name));
}

/* Flags that take a value. Returns 1 if handled, 0 if not this kind of flag, -1 on error. */
static int parse_valued(struct options *o, const char *a, const char *v) {
    const char *c = o->cmd;
    struct sampler_params *sp = &o->sp;
    if (is_flag(a, "-m", "--model")) return o->model = v, 1;
    if (is_flag(a, NULL, "--system")) return o->system = v, 1;
    if (is_flag(a, NULL, "--template")) return o->template_name = v, 1;
    if (is_flag(a, NULL, "--think")) return parse_think(c, v, &o->think_mode) ? -1 : 1;
    if (is_flag(a, "-p", "--prompt")) return o->prompt = v, 1;
    if (is_flag(a, "-f", "--file")) return o->prompt_file = v, 1;
    if (is_flag(a, NULL, "--tokens")) return o->tokens = v, 1;
    if (is_flag(a, NULL, "--logits")) return o->logits_path = v, 1;
    if (is_flag(a, "-n", "--n-predict"))
        return parse_int(c, a, v, -1, 1L << 30, &o->n_predict) ? -1 : 1;
    if (is_flag(a, "-c", "--ctx-size")) return parse_int(c, a, v, 1, 1L << 24, &o->n_ctx) ? -1 : 1;
    if (is_flag(a, "-t", "--threads")) return parse_int(c, a, v, 1, 1024, &o->n_threads) ? -1 : 1;
    if (is_flag(a, NULL, "--prefill")) return parse_int(c, a, v, 1, 1L << 24, &o->prefill) ? -1 : 1;
    if (is_flag(a, NULL, "--blas-batch")) {
        if (parse_int(c, a, v, 0, 1L << 20, &o->blas_min_batch) < 0) return -1;
        if (o->blas_min_batch == 0) o->blas_min_batch = -1; /* model_params: never */
        return 1;
    }
    if (is_flag(a, NULL, "--temp")) return parse_float(c, a, v, 0.0f, 100.0f, &sp->temp) ? -1 : 1;
    if (is_flag(a, NULL, "--top-k")) return parse_int(c, a, v, 0, 1L << 30, &sp->top_k) ? -1 : 1;
    if (is_flag(a, NULL, "--top-p")) return parse_float(c, a, v, 0.0f, 1.0f, &sp->top_p) ? -1 : 1;
    if (is_flag(a, NULL, "--min-p")) return parse_float(c, a, v, 0.0f, 1.0f, &sp->min_p) ? -1 : 1;
    if (is_flag(a, NULL, "--repeat-penalty"))
        return parse_float(c, a, v, 0.0f, 100.0f, &sp->repeat_penalty) ? -1 : 1;
    if (is_flag(a, NULL, "--repeat-last-n"))
        return parse_int(c, a, v, 0, 1L << 20, &sp->repeat_last_n) ? -1 : 1;
    if (is_flag(a, NULL, "--seed")) {
        o->seed_given = 1;
        return parse_seed(c, v, &sp->seed) ? -1 : 1;
    }
    return 0;
}

static int parse_switch(struct options *o, const char *a) {
    if (is_flag(a, "-v", "--verbose")) return o->verbosity = V_VERBOSE, 1;
    if (is_flag(a, "-q", "--quiet")) return o->verbosity = V_QUIET, 1;
    if (is_flag(a, NULL, "--ids")) return o->print_ids = 1, 1;
    if (is_flag(a, NULL, "--decode")) return o->decode = 1, 1;
    if (is_flag(a, NULL, "--tensors")) return o->show_tensors = 1, 1;
    if (is_flag(a, NULL, "--check-tensors")) return o->check_tensors = 1, 1;
    if (is_flag(a, NULL, "--detok")) return o->detok = 1, 1;
    if (is_flag(a, NULL, "--raw")) return o->raw = 1, 1;
    if (is_flag(a, NULL, "--each-line")) return o->each_line = 1, 1;
    if (is_flag(a, NULL, "--no-history")) return o->no_history = 1, 1;
    if (is_flag(a, NULL, "--json")) return o->json = 1, 1;
    if (is_flag(a, NULL, "--show")) return o->show = 1, 1;
    if (is_flag(a, NULL, "--bos")) return o->add_bos = 1, 1;
    if (is_flag(a, NULL, "--special")) return o->special = 1, 1;
    return 0;
}

static int parse_positional(struct options *o, const char *a) {
    if (!o->model) return o->model = a, 0;
    if (!strcmp(o->cmd, "tokenize") && !o->text) return o->text = a, 0;
    return fail(o->cmd, "unexpected argument '%s'", a);
}

/* The options each command accepts (space-separated, with spaces around every name). */
static const char *accepted_flags(const char *cmd) {
    if (!strcmp(cmd, "run"))
        return " -m --model -t --threads -v --verbose -q --quiet -p --prompt -f --file --tokens"
               " -n --n-predict -c --ctx-size --temp --top-k --top-p --min-p --repeat-penalty"
               " --repeat-last-n --seed --ids --special --raw --system --template --each-line "
               "--json ";
    if (!strcmp(cmd, "chat"))
        return " -m --model -t --threads -v --verbose -q --quiet -c --ctx-size --temp --top-k"
               " --top-p --min-p --repeat-penalty --repeat-last-n --seed --system --template"
               " --no-history --think ";
    if (!strcmp(cmd, "eval"))
        return " -m --model -t --threads -v --verbose -q --quiet --tokens --logits --decode"
               " --prefill --blas-batch -c --ctx-size ";
    if (!strcmp(cmd, "info")) return " -m --model --tensors --check-tensors ";
    if (!strcmp(cmd, "tokenize")) return " -m --model --bos --special --detok --show ";
    return " ";
}

static const char *const valued_flags =
    " -m --model -p --prompt -f --file --tokens --logits -n --n-predict -c --ctx-size -t"
    " --threads --blas-batch --prefill --temp --top-k --top-p --min-p --repeat-penalty "
    "--repeat-last-n"
    " --seed --system --template --think ";

static int in_list(const char *list, const char *flag) {
    size_t n = strlen(flag);
    for (const char *p = strstr(list, flag); p; p = strstr(p + 1, flag))
        if (p[-1] == ' ' && p[n] == ' ') return 1;
    return 0;
}

static int takes_gpu_options(const char *cmd) {
    return !strcmp(cmd, "run") || !strcmp(cmd, "chat") || !strcmp(cmd, "eval");
}

/* Returns 0 to go on, 1 when help was printed, -1 on a usage error. */
static int parse_args(struct options *o, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (is_flag(a, "-h", "--help")) {
            fputs(usage_for(o->cmd), stdout);
            if (takes_gpu_options(o->cmd))
                printf("\nMemory:\n%s\nGPU (Vulkan):\n%s", hold_usage, gpu_usage);
            return 1;
        }
        if (takes_gpu_options(o->cmd) && hold_option(&o->hold, a)) continue;
        int g = takes_gpu_options(o->cmd)
                    ? gpu_option(&o->gpu, a, i + 1 < argc ? argv[i + 1] : NULL)
                    : 0;
        if (g < 0) return fail(o->cmd, "%s", err_get());
        if (g) {
            i += g - 1;
            continue;
        }
        if (a[0] != '-' || a[1] == '\0') {
            if (parse_positional(o, a) < 0) return -1;
            continue;
        }
        if (!in_list(accepted_flags(o->cmd), a)) return fail(o->cmd, "unknown option '%s'", a);
        if (!in_list(valued_flags, a)) {
            parse_switch(o, a);
            continue;
        }
        if (i + 1 >= argc) return fail(o->cmd, "option '%s' needs a value", a);
        if (parse_valued(o, a, argv[++i]) < 0) return -1;
    }
    if (!o->model && (!strcmp(o->cmd, "run") || !strcmp(o->cmd, "chat")))
        return 0; /* the built-in model */
    if (!o->model) return fail(o->cmd, "%s", "no model file given");
    return 0;
}

/* The model `run` uses when none is given: $MOERUN_MODEL, else the one shipped beside the
 * binary (models/ next to it, as in the source tree, or ../share/moerun/ once installed). */
int find_builtin_model(char *path, size_t cap) {
    static const char *const candidates[] = {"%s/models/tinyseek-kjv-q8_0.gguf",
                                             "%s/../models/tinyseek-kjv-q8_0.gguf",
                                             "%s/../share/moerun/tinyseek-kjv-q8_0.gguf"};
    const char *env = getenv("MOERUN_MODEL");
    if (env && env[0]) {
        snprintf(path, cap, "%s", env);
        return 0;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
            snprintf(path, cap, candidates[i], exe);
            if (access(path, R_OK) == 0) return 0;
        }
    }
    err_set("no model given and the built-in model is not installed (looked for "
            "models/tinyseek-kjv-q8_0.gguf beside %s; set MOERUN_MODEL or pass a model file)",
            n > 0 ? exe : "the binary");
    return -1;
}

/* ---- shared helpers ---- */

int read_stream(FILE *f, char **out, size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) buf = xrealloc(buf, cap *= 2);
    }
    if (ferror(f)) {
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int read_file_text(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set("cannot open prompt file %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = read_stream(f, out, len);
    fclose(f);
    if (rc < 0) err_set("cannot read prompt file %s: %s", path, strerror(errno));
    return rc;
}

/* "1,2,3" or "1 2 3" -> ids; rejects anything but ids and separators. */
int parse_token_list(const char *s, int32_t **out, int *n_out) {
    int cap = 16, n = 0;
    int32_t *ids = xmalloc((size_t)cap * sizeof *ids);
    const char *p = s;
    for (;;) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && !strchr(", \t\n\r", *end))) {
            err_set("token ids: '%.40s' is not a list of token ids (numbers separated by commas "
                    "or spaces)",
                    s);
            free(ids);
            return -1;
        }
        if (n == cap) ids = xrealloc(ids, (size_t)(cap *= 2) * sizeof *ids);
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0) {
        err_set("token ids: the list is empty");
        free(ids);
        return -1;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

int error_exit(const char *cmd) {
    fprintf(stderr, "moerun %s: %s\n", cmd, err_get());
    return 1;
}

const char *human_bytes(double b, char *buf, size_t cap) {
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024.0 && u < 4) b /= 1024.0, u++;
    snprintf(buf, cap, u ? "%.2f %s" : "%.0f %s", b, units[u]);
    return buf;
}

/* 6.58M, 1.23B: parameter counts as people say them. */
const char *human_count(double n, char *buf, size_t cap) {
    if (n >= 1e9)
        snprintf(buf, cap, "%.2fB", n / 1e9);
    else if (n >= 1e6)
        snprintf(buf, cap, "%.2fM", n / 1e6);
    else
        snprintf(buf, cap, "%.0fK", n / 1e3);
    return buf;
}

/* Writes n bytes to a temporary name beside path, then renames: no partial output files. */
static int write_file_atomic(const char *path, const void *data, size_t n) {
    size_t plen = strlen(path) + 32;
    char *tmp = xmalloc(plen);
    int direct = path_is_special(path); /* /dev/null, a pipe: no temporary, no rename */
    snprintf(tmp, plen, direct ? "%s" : "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0) ok = 0;
    if (ok && !direct && rename(tmp, path) != 0) ok = 0;
    if (!ok) {
        err_set("cannot write %s: %s", path, strerror(errno));
        if (!direct) remove(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

void load_summary(const struct model *m, const struct options *o, double secs) {
    if (o->verbosity < V_NORMAL) return;
    char size[32], params[32], active[48] = "";
    human_count((double)m->n_params, params, sizeof params);
    if (m->n_params_active != m->n_params) {
        char a[32];
        snprintf(active, sizeof active, " (%s active)",
                 human_count((double)m->n_params_active, a, sizeof a));
    }
    char backend[400];
    model_backend_text(m, backend, sizeof backend);
    fprintf(stderr, "moerun: %s: %s, %s params%s, %s%s, %u layers, ctx %d, %s, loaded in %.2f s\n",
            m->file.path, m->arch_name, params, active,
            human_bytes((double)m->file.size, size, sizeof size), hold_text(m), m->hp.n_layer,
            m->n_ctx, backend, secs);
}

/* Loads and prepares the model; the caller prints the summary once the input is known good,
 * so that bad input still gives exactly one line on stderr. */
int open_model(struct model *m, const struct options *o, double *load_secs) {
    double t0 = time_now();
    if (model_load_hold(m, o->model, o->hold) < 0) return -1;
    if (o->verbosity >= V_NORMAL) hold_warn(m, o->cmd);
    struct model_params mp = {.n_ctx = o->n_ctx,
                              .n_threads = o->n_threads,
                              .blas_min_batch = o->blas_min_batch,
                              .gpu = o->gpu};
    mp.gpu.verbose = o->verbosity >= V_VERBOSE;
    if (model_init(m, &mp) < 0) {
        model_free(m);
        return -1;
    }
    *load_secs = time_now() - t0;
    if (o->n_ctx > 0 && (uint32_t)o->n_ctx > m->hp.n_ctx_train && o->verbosity >= V_NORMAL)
        fprintf(stderr,
                "moerun: warning: -c %d is longer than the %u positions the model was trained "
                "on; quality past them is not what the model was made for\n",
                o->n_ctx, m->hp.n_ctx_train);
    return 0;
}

/* ---- run ---- */

/* ---- eval ---- */

/* All n ids in one batch, or the first `batch` in one and the rest one at a time (as
 * generation feeds them: --prefill N), or all one at a time (--decode). */
static int eval_logits(struct model *m, const struct options *o, const int32_t *ids, int n,
                       float *logits) {
    size_t nv = m->hp.n_vocab;
    int batch = o->decode ? 0 : o->prefill > 0 && o->prefill < n ? o->prefill : n;
    if (batch && model_forward(m, ids, batch, 0, logits, 1) < 0) return -1;
    for (int i = batch; i < n; i++)
        if (model_forward(m, ids + i, 1, i, logits + (size_t)i * nv, 1) < 0) return -1;
    return 0;
}

static int cmd_eval(struct options *o) {
    if (!o->tokens || !o->logits_path) {
        fail(o->cmd, "%s", "needs --tokens IDS and --logits FILE");
        return 1;
    }
    int32_t *ids = NULL;
    int n = 0;
    if (parse_token_list(o->tokens, &ids, &n) < 0) return error_exit(o->cmd);
    if (o->blas_min_batch == 0) o->blas_min_batch = -1; /* eval reproduces llama.cpp */
    struct model m;
    double load_secs;
    if (open_model(&m, o, &load_secs) < 0) {
        free(ids);
        return error_exit(o->cmd);
    }
    if (n > m.n_ctx) {
        err_set("%d tokens do not fit the context of %d (-c)", n, m.n_ctx);
        free(ids);
        model_free(&m);
        return error_exit(o->cmd);
    }
    float *logits = xmalloc((size_t)n * m.hp.n_vocab * sizeof(float));
    int rc = eval_logits(&m, o, ids, n, logits);
    if (rc == 0) load_summary(&m, o, load_secs);
    if (rc == 0)
        rc = write_file_atomic(o->logits_path, logits, (size_t)n * m.hp.n_vocab * sizeof(float));
    free(logits);
    free(ids);
    model_free(&m);
    return rc < 0 ? error_exit(o->cmd) : 0;
}

/* ---- info ---- */

static void print_tensor_histogram(const struct gguf_file *f) {
    uint64_t count[QT_COUNT + 1] = {0}, bytes[QT_COUNT + 1] = {0};
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint32_t t = f->tensors[i].type < QT_COUNT ? f->tensors[i].type : QT_COUNT;
        count[t]++;
        bytes[t] += f->tensors[i].nbytes;
    }
    printf("tensor types:\n");
    for (uint32_t t = 0; t <= QT_COUNT; t++) {
        if (!count[t]) continue;
        char size[32];
        printf("  %-8s %5llu tensors  %s\n", qtype_name(t), (unsigned long long)count[t],
               human_bytes((double)bytes[t], size, sizeof size));
    }
}

/* A string from a file, with control bytes shown as '?': a hostile name must not drive the
 * terminal. */
static void print_file_str(const char *s, size_t n, int width) {
    for (size_t i = 0; i < n; i++) putchar((unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i]);
    for (int pad = width - (int)n; pad > 0; pad--) putchar(' ');
}

static void print_tensors(const struct gguf_file *f) {
    printf("tensors:\n");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const struct gguf_tensor *t = &f->tensors[i];
        printf("  ");
        print_file_str(t->name.data, t->name.len, 40);
        printf(" %-6s [", qtype_name(t->type));
        for (uint32_t d = 0; d < t->n_dims; d++) printf(d ? ", %lld" : "%lld", (long long)t->ne[d]);
        printf("] %llu bytes\n", (unsigned long long)t->nbytes);
    }
}

static void print_experts(const struct model *m) {
    const struct hparams *hp = &m->hp;
    if (!hp->n_expert) return;
    printf("experts: %u, %u used per token, %u shared, width %u", hp->n_expert, hp->n_expert_used,
           hp->n_expert_shared ? hp->n_expert_shared
                               : (m->layers[hp->n_layer - 1].w[W_FFN_DOWN_SHEXP].t ? 1 : 0),
           hp->n_ff_exp);
    if (hp->n_dense_lead) printf(", after %u dense layers", hp->n_dense_lead);
    printf("\n");
    printf("routing: %s%s, weights %s, scale %g",
           hp->gating == MOE_GATING_SIGMOID ? "sigmoid" : "softmax",
           m->layers[hp->n_layer - 1].w[W_FFN_EXP_PROBS_B].t ? " + selection bias" : "",
           m->router.norm_weights ? "renormalized" : "as scored",
           (double)(m->router.weights_scale ? m->router.weights_scale : 1.0f));
    if (hp->n_group > 1) printf(", %u groups of which %u used", hp->n_group, hp->n_group_used);
    printf("\n");
}

static void print_attention(const struct model *m) {
    const struct hparams *hp = &m->hp;
    if (m->ag.mla) {
        printf("attention: MLA, %u heads, q_lora %u, kv_lora %u, qk %u (rope %u), v %u%s\n",
               hp->n_head, hp->q_lora, hp->kv_lora, hp->head_dim_k_mla, hp->n_rot,
               hp->head_dim_v_mla, m->layers[0].k_b_derived ? ", attn_kv_b split at load" : "");
    } else {
        printf("attention: %u heads (kv %u), head width k %u v %u\n", hp->n_head, hp->n_head_kv,
               hp->head_dim, hp->head_dim_v);
    }
    printf("rope: %u dims, base %g, scale %g%s\n", hp->n_rot, (double)hp->rope_freq_base,
           (double)hp->rope_freq_scale, hp->rope_yarn ? " (YaRN)" : "");
    char f16[32], f32[32];
    printf("kv cache per token: %s at f16, %s at f32\n",
           human_bytes((double)model_kv_bytes_per_token(m, 2), f16, sizeof f16),
           human_bytes((double)model_kv_bytes_per_token(m, 4), f32, sizeof f32));
}

static void print_hparams(const struct model *m) {
    const struct hparams *hp = &m->hp;
    printf("architecture: %s\n", m->arch_name);
    char total[32], active[32];
    printf("parameters: %s (%llu), active per token: %s\n",
           human_count((double)m->n_params, total, sizeof total), (unsigned long long)m->n_params,
           human_count((double)m->n_params_active, active, sizeof active));
    printf("context length: %u\n", hp->n_ctx_train);
    printf("embedding: %u\nlayers: %u\n", hp->n_embd, hp->n_layer);
    if (hp->n_ff) printf("feed-forward: %u\n", hp->n_ff);
    print_attention(m);
    print_experts(m);
    printf("rms epsilon: %g\n", (double)hp->norm_eps);
    printf("output: %s\n",
           m->w[W_OUTPUT].t == m->w[W_TOKEN_EMBD].t ? "tied to token_embd" : "output.weight");
}

static void print_tokenizer(const struct model *m) {
    struct gguf_str kind = {0, ""};
    gguf_get_str(&m->file, "tokenizer.ggml.model", &kind);
    const char *pre = tokenizer_pre(m->tok);
    printf("tokenizer: %.*s%s%s, %d tokens, bos %d, eos %d, add bos %s\n", (int)kind.len, kind.data,
           pre ? " / " : "", pre ? pre : "", tokenizer_n_vocab(m->tok), tokenizer_bos(m->tok),
           tokenizer_eos(m->tok), tokenizer_add_bos(m->tok) ? "yes" : "no");
    struct gguf_str tmpl = {0, NULL};
    gguf_get_str(&m->file, "tokenizer.chat_template", &tmpl);
    printf("chat template: %s\n",
           tmpl.data ? chat_family_name(chat_detect(tmpl.data, tmpl.len)) : "none in the file");
}

static int cmd_info(struct options *o) {
    struct model m;
    if (model_load(&m, o->model) < 0) return error_exit(o->cmd);
    char size[32];
    struct gguf_str name = {0, ""};
    gguf_get_str(&m.file, "general.name", &name);
    printf("file: %s\n", m.file.path);
    printf("size: %s (%llu bytes), GGUF v%u, %llu keys, %llu tensors\n",
           human_bytes((double)m.file.size, size, sizeof size), (unsigned long long)m.file.size,
           m.file.version, (unsigned long long)m.file.n_kv, (unsigned long long)m.file.n_tensors);
    if (name.len) {
        printf("name: ");
        print_file_str(name.data, name.len, 0);
        printf("\n");
    }
    print_hparams(&m);
    print_tokenizer(&m);
    print_tensor_histogram(&m.file);
    if (o->show_tensors) print_tensors(&m.file);
    if (o->check_tensors) {
        struct check_stats st;
        int rc = check_tensors(&m.file, &st);
        printf("check: %llu of %llu tensors scanned (%llu values), %llu of types moerun cannot "
               "read skipped: %s\n",
               (unsigned long long)st.n_checked, (unsigned long long)st.n_tensors,
               (unsigned long long)st.n_values, (unsigned long long)st.n_skipped,
               rc < 0 ? "a value is not finite" : "all finite");
        if (rc < 0) {
            model_free(&m);
            return error_exit(o->cmd);
        }
    }
    model_free(&m);
    return 0;
}

/* ---- tokenize ---- */

/* The text argument, or all of stdin. */
static int input_text(const struct options *o, char **text, size_t *len) {
    if (o->text) {
        *text = xstrdup(o->text);
        *len = strlen(*text);
        return 0;
    }
    if (read_stream(stdin, text, len) == 0) return 0;
    err_set("cannot read stdin: %s", strerror(errno));
    return -1;
}

/* One line per token: id, a tab, the piece with control bytes escaped. */
static int show_tokens(const struct tokenizer *tok, const int32_t *ids, int64_t n) {
    int cap = tokenizer_max_piece(tok);
    char *piece = xmalloc((size_t)cap);
    for (int64_t i = 0; i < n; i++) {
        int len = tokenizer_piece(tok, ids[i], 1, piece, (size_t)cap);
        if (len < 0) {
            free(piece);
            return -1;
        }
        printf("%d\t'", ids[i]);
        for (int k = 0; k < len; k++) {
            unsigned char c = (unsigned char)piece[k];
            if (c == '\n')
                fputs("\\n", stdout);
            else if (c == '\t')
                fputs("\\t", stdout);
            else if (c < 0x20 || c == 0x7f)
                printf("\\x%02x", c);
            else
                putchar(c);
        }
        printf("'\n");
    }
    free(piece);
    return 0;
}

/* ids -> text, as generation would print it. */
static int detokenize(const struct tokenizer *tok, const char *list, int show_special) {
    int32_t *ids;
    int n;
    if (parse_token_list(list, &ids, &n) < 0) return -1;
    int64_t len = tokenizer_decode(tok, ids, (size_t)n, show_special, NULL, 0);
    char *out = len >= 0 ? xmalloc((size_t)len + 1) : NULL;
    if (out) tokenizer_decode(tok, ids, (size_t)n, show_special, out, (size_t)len);
    if (out) fwrite(out, 1, (size_t)len, stdout);
    free(out);
    free(ids);
    return len < 0 ? -1 : 0;
}

static int tokenize_text(const struct tokenizer *tok, const struct options *o, const char *text,
                         size_t len) {
    int32_t *ids = NULL;
    int64_t n = tokenizer_encode(tok, text, len, o->add_bos, o->special, &ids);
    int rc = n < 0 ? -1 : 0;
    if (rc == 0 && o->show)
        rc = show_tokens(tok, ids, n);
    else if (rc == 0) {
        for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free(ids);
    return rc;
}

static int cmd_tokenize(struct options *o) {
    struct gguf_file f;
    if (gguf_open(&f, o->model) < 0) return error_exit(o->cmd);
    struct tokenizer *tok = tokenizer_load(&f);
    char *text = NULL;
    size_t len = 0;
    int rc = tok ? input_text(o, &text, &len) : -1;
    if (rc == 0)
        rc = o->detok ? detokenize(tok, text, o->special) : tokenize_text(tok, o, text, len);
    free(text);
    tokenizer_free(tok);
    gguf_close(&f);
    return rc < 0 ? error_exit(o->cmd) : 0;
}

/* ---- chat ---- */

static int cmd_chat(struct options *o) {
    char builtin[4200];
    if (!o->model) {
        if (find_builtin_model(builtin, sizeof builtin) < 0) return error_exit(o->cmd);
        o->model = builtin;
    }
    struct repl_config cfg = {
        .model_path = o->model,
        .n_ctx = o->n_ctx,
        .n_threads = o->n_threads,
        .sp = o->sp,
        .seed_given = o->seed_given,
        .system = o->system,
        .template_name = o->template_name,
        .no_history = o->no_history,
        .verbosity = o->verbosity,
        .think_mode = o->think_mode,
        .hold = o->hold,
        .gpu = o->gpu,
    };
    return repl_run(&cfg);
}

/* ---- devices ---- */

static int cmd_devices(int argc, char **argv) {
    if (argc > 0 && (!strcmp(argv[0], "-h") || !strcmp(argv[0], "--help"))) {
        printf("usage: moerun devices\n\nLists every Vulkan device: memory, subgroup size, the "
               "features moerun\nuses, and whether it can run models (CPU devices such as "
               "lavapipe only\nwith --device N).\n");
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr, "moerun devices: unexpected argument '%s'\n", argv[0]);
        return 1;
    }
    int n = vk_list_devices(stdout);
    if (n < 0) return error_exit("devices");
    if (n == 0) printf("no Vulkan devices\n");
    return 0;
}

/* ---- dispatch ---- */

int main(int argc, char **argv) {
    if (argc < 2 || is_flag(argv[1], "-h", "--help") || !strcmp(argv[1], "help")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 1 : 0;
    }
    /* the model-file tools parse their own arguments */
    if (!strcmp(argv[1], "quantize")) return cmd_quantize(argc - 2, argv + 2);
    if (!strcmp(argv[1], "convert")) return cmd_convert(argc - 2, argv + 2);
    if (!strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(argv[1], "devices")) return cmd_devices(argc - 2, argv + 2);
    if (!strcmp(argv[1], "--version")) {
        printf("moerun %s (cpu%s%s)\n", MOERUN_VERSION, cpu_has_blas() ? ", openblas" : "",
               vk_built() ? ", vulkan" : "");
        return 0;
    }
    struct {
        const char *name;
        int (*fn)(struct options *);
    } cmds[] = {{"run", cmd_run},
                {"chat", cmd_chat},
                {"info", cmd_info},
                {"tokenize", cmd_tokenize},
                {"eval", cmd_eval}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(argv[1], cmds[i].name)) continue;
        struct options o = {.cmd = cmds[i].name, .n_predict = -1, .verbosity = V_NORMAL};
        sampler_params_default(&o.sp);
        gpu_params_default(&o.gpu);
        int rc = parse_args(&o, argc - 2, argv + 2);
        if (rc) return rc > 0 ? 0 : 1;
        return cmds[i].fn(&o);
    }
    fprintf(stderr, "moerun: unknown command '%s' (see moerun --help)\n", argv[1]);
    return 1;
}
