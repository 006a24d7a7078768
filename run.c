/* moerun run: one prompt, or one per input line (--each-line, --json), generated text
 * streamed to stdout and nothing else there. Exit status: 0 done, 1 model or usage error,
 * 2 unreadable input, 130 interrupted; a closed downstream pipe ends quietly with 0. */
#include "chat.h"
#include "check.h"
#include "cli.h"
#include "tokenizer.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_INPUT = 2, EXIT_INTERRUPTED = 130 };

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* ---- where the generated text goes ---- */

/* Straight to stdout; escaped onto one line (--each-line: "\n" and "\\" written as two
 * characters, so each reply is one output line); or kept for a JSON object (--json). */
enum sink_mode { SINK_STREAM, SINK_LINE, SINK_JSON };

struct sink {
    enum sink_mode mode;
    int broken; /* stdout is gone (EPIPE): stop quietly */
    char *text; /* SINK_JSON: the reply so far */
    size_t len, cap;
};

static void out_bytes(struct sink *s, const char *p, size_t n) {
    if (s->broken || !n) return;
    if (fwrite(p, 1, n, stdout) != n) s->broken = 1;
}

static void out_flush(struct sink *s) {
    if (!s->broken && fflush(stdout) != 0) s->broken = 1;
}

static void sink_keep(struct sink *s, const char *p, size_t n) {
    if (s->len + n > s->cap) s->text = xrealloc(s->text, s->cap = 2 * (s->len + n) + 256);
    memcpy(s->text + s->len, p, n);
    s->len += n;
}

static void sink_write(struct sink *s, const char *p, size_t n) {
    if (s->mode == SINK_JSON) {
        sink_keep(s, p, n);
        return;
    }
    if (s->mode == SINK_STREAM) {
        out_bytes(s, p, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n')
            out_bytes(s, "\\n", 2);
        else if (p[i] == '\\')
            out_bytes(s, "\\\\", 2);
        else
            out_bytes(s, p + i, 1);
    }
}

/* ---- prompts ---- */

/* Wraps the prompt as one user turn (after --system) in the model's chat template, unless
 * --raw or the file has none. */
static int apply_chat_template(const struct model *m, const struct options *o, char **text,
                               size_t *len, int *templated) {
    enum chat_family f;
    int rc = o->raw ? 0 : chat_family_for_file(&m->file, o->template_name, &f);
    if (rc <= 0) return rc;
    struct chat_msg msgs[2];
    int n = 0;
    if (o->system) msgs[n++] = (struct chat_msg){"system", o->system};
    msgs[n++] = (struct chat_msg){"user", *text};
    char *out = NULL;
    size_t out_len = 0;
    if (chat_render_for_model(f, msgs, n, 1, 1, m->tok, &out, &out_len) < 0) return -1;
    free(*text);
    *text = out;
    *len = out_len;
    *templated = 1;
    return 0;
}

/* Text -> ids through the chat template; takes ownership of text. */
static int encode_prompt(const struct model *m, const struct options *o, char *text, size_t len,
                         int32_t **ids, int *n) {
    int templated = 0;
    if (apply_chat_template(m, o, &text, &len, &templated) < 0) {
        free(text);
        return -1;
    }
    /* a rendered template carries its own BOS text where the model wants one */
    int add_bos = tokenizer_add_bos(m->tok) && !templated;
    int64_t count = tokenizer_encode(m->tok, text, len, add_bos, o->special || templated, ids);
    free(text);
    if (count < 0) return -1;
    if (count == 0) {
        err_set("the prompt is empty");
        free(*ids);
        return -1;
    }
    if (count > m->n_ctx) {
        err_set("the prompt has %lld tokens but the context holds %d (raise -c, the model "
                "allows %u)",
                (long long)count, m->n_ctx, m->hp.n_ctx_train);
        free(*ids);
        return -1;
    }
    *n = (int)count;
    return 0;
}

/* The whole input of a single-prompt run: -p, -f or stdin. Returns 0, or the exit status. */
static int read_prompt_text(const struct options *o, char **text, size_t *len) {
    if (o->prompt) {
        *text = xstrdup(o->prompt);
        *len = strlen(*text);
        return 0;
    }
    if (o->prompt_file) return read_file_text(o->prompt_file, text, len) < 0 ? EXIT_INPUT : 0;
    if (isatty(STDIN_FILENO)) {
        err_set("no prompt: give -p TEXT, -f FILE or --tokens, or pipe text on stdin");
        return 1;
    }
    if (read_stream(stdin, text, len) < 0) {
        err_set("cannot read the prompt from stdin: %s", strerror(errno));
        return EXIT_INPUT;
    }
    return 0;
}

/* ---- generation ---- */

struct gen_stats {
    int n_prompt, n_gen;
    double t_prompt, t_gen;
};

/* Token -> text through the streaming detokenizer (a character split over tokens comes out
 * once whole), or ids with --ids. Buffers sized once per run. */
struct emitter {
    const struct tokenizer *tok;
    struct sink *sink;
    int print_ids;
    int n_emitted;
    struct detok_stream ds;
    char *piece; /* (max_piece) */
    char *out;   /* (DETOK_OUT_CAP(max_piece)) */
    int max_piece;
};

static void emitter_init(struct emitter *e, const struct tokenizer *tok, struct sink *sink,
                         int print_ids) {
    memset(e, 0, sizeof *e);
    e->tok = tok;
    e->sink = sink;
    e->print_ids = print_ids;
    e->max_piece = tokenizer_max_piece(tok);
    e->piece = xmalloc((size_t)e->max_piece);
    e->out = xmalloc(DETOK_OUT_CAP(e->max_piece));
}

static void emitter_begin(struct emitter *e) {
    e->n_emitted = 0;
    detok_init(&e->ds, 0);
}

static void emit_token(struct emitter *e, int32_t id) {
    if (e->print_ids) {
        char num[16];
        int k = snprintf(num, sizeof num, e->n_emitted ? " %d" : "%d", id);
        sink_write(e->sink, num, (size_t)k);
    } else {
        int n = tokenizer_piece(e->tok, id, 0, e->piece, (size_t)e->max_piece);
        if (n > 0) {
            size_t k = detok_push(&e->ds, e->piece, (size_t)n, e->out, DETOK_OUT_CAP(e->max_piece));
            sink_write(e->sink, e->out, k);
        }
    }
    e->n_emitted++;
    if (e->sink->mode != SINK_JSON) out_flush(e->sink);
}

/* Writes what the detokenizer still holds (a partial character, as U+FFFD). */
static void emitter_end(struct emitter *e) {
    if (e->print_ids) return;
    size_t k = detok_flush(&e->ds, e->out, DETOK_OUT_CAP(e->max_piece));
    sink_write(e->sink, e->out, k);
}

static void emitter_free(struct emitter *e) {
    free(e->piece);
    free(e->out);
}

/* Prefill then sample until end of text, -n, a full context, an interrupt or a closed
 * stdout. Returns -1 on a model error. */
static int generate(struct model *m, const struct options *o, const int32_t *prompt, int n_prompt,
                    struct emitter *em, float *logits, struct gen_stats *st) {
    struct sampler *s = sampler_new(&o->sp, (int32_t)m->hp.n_vocab);
    if (!s) return -1;
    int rc = 0, pos = n_prompt;
    for (int i = 0; i < n_prompt; i++) sampler_accept(s, prompt[i]);
    emitter_begin(em);
    *st = (struct gen_stats){.n_prompt = n_prompt};
    double t0 = time_now();
    if (model_forward(m, prompt, n_prompt, 0, logits, 0) < 0) rc = -1;
    st->t_prompt = time_now() - t0;
    t0 = time_now();
    for (int i = 0; rc == 0 && (o->n_predict < 0 || i < o->n_predict); i++) {
        if (interrupted || em->sink->broken) break;
        int32_t id = sampler_sample(s, logits);
        if (tokenizer_is_eog(m->tok, id)) break;
        sampler_accept(s, id);
        emit_token(em, id);
        st->n_gen++;
        if (pos >= m->n_ctx) {
            if (o->verbosity >= V_NORMAL)
                fprintf(stderr, "\nmoerun: stopped: the context of %d tokens is full (-c)\n",
                        m->n_ctx);
            break;
        }
        if (model_forward(m, &id, 1, pos++, logits, 0) < 0) rc = -1;
    }
    emitter_end(em);
    st->t_gen = time_now() - t0;
    sampler_free(s);
    return rc;
}

static void print_stats(const struct options *o, const struct gen_stats *st) {
    if (o->verbosity < V_NORMAL) return;
    fprintf(stderr,
            "moerun: prompt %d tokens in %.3f s (%.1f t/s), generated %d tokens in %.3f s "
            "(%.1f t/s)\n",
            st->n_prompt, st->t_prompt, st->t_prompt > 0 ? st->n_prompt / st->t_prompt : 0.0,
            st->n_gen, st->t_gen, st->t_gen > 0 ? st->n_gen / st->t_gen : 0.0);
}

static void print_settings(const struct options *o, const int32_t *ids, int n) {
    if (o->verbosity < V_VERBOSE) return;
    fprintf(stderr, "moerun: prompt tokens:");
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr,
            "\nmoerun: seed %llu, temp %.2f, top-k %d, top-p %.2f, min-p %.2f, repeat-penalty "
            "%.2f over %d\n",
            (unsigned long long)o->sp.seed, (double)o->sp.temp, o->sp.top_k, (double)o->sp.top_p,
            (double)o->sp.min_p, (double)o->sp.repeat_penalty, o->sp.repeat_last_n);
}

/* ---- JSON output (--json) ---- */

static void json_string(struct sink *s, const char *p, size_t n) {
    out_bytes(s, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            out_bytes(s, esc, 2);
        } else if (c < 0x20) {
            int k = c == '\n'   ? snprintf(esc, sizeof esc, "\\n")
                    : c == '\t' ? snprintf(esc, sizeof esc, "\\t")
                    : c == '\r' ? snprintf(esc, sizeof esc, "\\r")
                                : snprintf(esc, sizeof esc, "\\u%04x", c);
            out_bytes(s, esc, (size_t)k);
        } else {
            out_bytes(s, p + i, 1);
        }
    }
    out_bytes(s, "\"", 1);
}

/* {"prompt": ..., "text": ..., "prompt_tokens": N, "tokens": N, "tokens_per_s": X} */
static void json_record(struct sink *s, const char *prompt, size_t prompt_len,
                        const struct gen_stats *st) {
    char tail[160];
    out_bytes(s, "{\"prompt\": ", 11);
    json_string(s, prompt, prompt_len);
    out_bytes(s, ", \"text\": ", 10);
    json_string(s, s->text ? s->text : "", s->len);
    int k = snprintf(tail, sizeof tail,
                     ", \"prompt_tokens\": %d, \"tokens\": %d, \"tokens_per_s\": %.2f}\n",
                     st->n_prompt, st->n_gen, st->t_gen > 0 ? st->n_gen / st->t_gen : 0.0);
    out_bytes(s, tail, (size_t)k);
    out_flush(s);
}

/* ---- the two ways to run ---- */

struct run_state {
    struct model *m;
    const struct options *o;
    struct sink sink;
    struct emitter em;
    float *logits; /* (n_vocab) */
    double load_secs;
};

/* One prompt from -p, -f, stdin or --tokens. */
static int run_single(struct run_state *r) {
    int32_t *ids = NULL;
    int n = 0, status = 0;
    if (r->o->tokens) {
        if (parse_token_list(r->o->tokens, &ids, &n) < 0) return error_exit(r->o->cmd);
    } else {
        char *text = NULL;
        size_t len = 0;
        status = read_prompt_text(r->o, &text, &len);
        if (status) {
            error_exit(r->o->cmd);
            return status;
        }
        if (encode_prompt(r->m, r->o, text, len, &ids, &n) < 0) return error_exit(r->o->cmd);
    }
    /* after the input is known good, so bad input gives exactly one line on stderr */
    load_summary(r->m, r->o, r->load_secs);
    print_settings(r->o, ids, n);
    struct gen_stats st;
    int rc = generate(r->m, r->o, ids, n, &r->em, r->logits, &st);
    free(ids);
    if (rc < 0) return error_exit(r->o->cmd);
    if (r->em.n_emitted) out_bytes(&r->sink, "\n", 1);
    out_flush(&r->sink);
    print_stats(r->o, &st);
    return 0;
}

/* One line of --each-line input: its reply on one line, or its JSON record. A line that
 * cannot be a prompt gets an empty reply and a message on stderr; returns 1 then. */
static int run_line(struct run_state *r, const char *line, size_t len) {
    int32_t *ids = NULL;
    int n = 0, failed = 0;
    struct gen_stats st = {0};
    r->sink.len = 0;
    if (len && encode_prompt(r->m, r->o, xstrdup(line), len, &ids, &n) == 0) {
        if (generate(r->m, r->o, ids, n, &r->em, r->logits, &st) < 0) failed = 1;
        free(ids);
    } else if (len) {
        failed = 1;
    }
    if (failed) fprintf(stderr, "moerun run: %s\n", err_get());
    if (r->sink.mode == SINK_JSON)
        json_record(&r->sink, line, len, &st);
    else {
        out_bytes(&r->sink, "\n", 1);
        out_flush(&r->sink);
    }
    return failed;
}

static int run_each_line(struct run_state *r) {
    FILE *in = stdin;
    if (r->o->prompt_file && !(in = fopen(r->o->prompt_file, "rb"))) {
        err_set("cannot open prompt file %s: %s", r->o->prompt_file, strerror(errno));
        error_exit(r->o->cmd);
        return EXIT_INPUT;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int status = 0;
    load_summary(r->m, r->o, r->load_secs);
    while (!interrupted && !r->sink.broken && (got = getline(&line, &cap, in)) >= 0) {
        size_t len = (size_t)got;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (run_line(r, line, len)) status = 1;
    }
    if (ferror(in) && !interrupted) {
        err_set("cannot read the prompts: %s", strerror(errno));
        error_exit(r->o->cmd);
        status = EXIT_INPUT;
    }
    free(line);
    if (in != stdin) fclose(in);
    return status;
}

int cmd_run(struct options *o) {
    char builtin[4200];
    if (!o->model) {
        if (find_builtin_model(builtin, sizeof builtin) < 0) return error_exit(o->cmd);
        o->model = builtin;
    }
    if ((o->each_line || o->json) && (o->tokens || o->prompt)) {
        fail(o->cmd, "%s", "--each-line and --json read prompts from stdin or -f");
        return 1;
    }
    struct model m;
    double load_secs;
    if (open_model(&m, o, &load_secs) < 0) return error_exit(o->cmd);
    if (o->check_tensors && check_tensors(&m.file, NULL) < 0) {
        model_free(&m);
        return error_exit(o->cmd);
    }
    if (!o->seed_given) o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    /* a closed pipe shows as EPIPE on write; Ctrl-C stops generation between tokens */
    signal(SIGPIPE, SIG_IGN);
    /* no SA_RESTART: an interrupted read of the next prompt returns instead of waiting on */
    struct sigaction sa = {.sa_handler = on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    struct run_state r = {.m = &m, .o = o, .load_secs = load_secs};
    r.sink.mode = o->json ? SINK_JSON : o->each_line ? SINK_LINE : SINK_STREAM;
    emitter_init(&r.em, m.tok, &r.sink, o->print_ids);
    r.logits = xmalloc((size_t)m.hp.n_vocab * sizeof(float));
    int status = o->each_line || o->json ? run_each_line(&r) : run_single(&r);
    emitter_free(&r.em);
    free(r.logits);
    free(r.sink.text);
    model_free(&m);
    if (interrupted) {
        if (o->verbosity >= V_NORMAL) fprintf(stderr, "\nmoerun: interrupted\n");
        return EXIT_INTERRUPTED;
    }
    return r.sink.broken ? 0 : status;
}
