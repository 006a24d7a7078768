/* The interactive chat REPL: `moerun chat MODEL`. Line editing and history (libedit when the
 * build has it), the model's chat template, the KV cache kept across turns, slash commands. */
#ifndef MOERUN_REPL_H
#define MOERUN_REPL_H

#include "sampler.h"
#include "vk_model.h"

enum repl_think { REPL_THINK_ON = 0, REPL_THINK_OFF = 1, REPL_THINK_HIDE = 2 };

struct repl_config {
    const char *model_path;    /* resolved by the caller (the built-in model when none given) */
    int n_ctx;                 /* 0: the model's, capped as model_init caps it */
    int n_threads;             /* 0: all online CPUs */
    struct sampler_params sp;  /* starting parameters; /set changes them */
    int seed_given;            /* 0: sp.seed is replaced by a time-based one */
    const char *system;        /* system prompt or NULL */
    const char *template_name; /* chat family name; NULL: from tokenizer.chat_template */
    int no_history;            /* 1: no history file is read or written */
    int verbosity;             /* 0 quiet, 1 normal, 2 verbose */
    int think_mode;            /* enum repl_think */
    int hold;                  /* enum gguf_hold: --mlock, --no-mmap */
    struct gpu_params gpu;
};

/* Runs the chat until /exit, Ctrl-D or two Ctrl-C on an empty line (returns 0); 1 when the
 * model cannot be loaded or the template name is unknown (one line on stderr). */
int repl_run(const struct repl_config *cfg);

/* The text of `moerun chat --help`. */
extern const char *const repl_usage;

#endif
