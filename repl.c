/* The chat REPL. Each turn renders the whole conversation with the model's chat template,
 * tokenizes it, and prefills only what differs from the tokens already in the KV cache (the
 * longest common prefix), so a turn costs the new text, not the history. Replies stream
 * through the UTF-8 safe detokenizer; a SIGINT flag checked per token stops them. */
#include "repl.h"

#include "chat.h"
#include "cpu.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

#ifdef MOERUN_LIBEDIT
#include <histedit.h>
#endif

const char *const repl_usage =
    "usage: moerun chat [[-m] MODEL] [options]\n"
    "\n"
    "An interactive chat in the model's own chat template. With no MODEL (and no\n"
    "$MOERUN_MODEL) it talks to the built-in tinyseek-kjv model, which has no template: its\n"
    "replies then continue the text, one line per reply.\n"
    "\n"
    "  -c, --ctx-size N       context length (default: the model's, at most 4096); when\n"
    "                         it fills, the oldest turns are dropped (the system prompt kept)\n"
    "  -t, --threads N        CPU threads (default: all online CPUs)\n"
    "      --temp T           temperature (default 0.8; 0 = greedy)\n"
    "      --top-k K / --top-p P / --min-p P / --repeat-penalty R / --repeat-last-n N\n"
    "      --seed S           random seed; the same seed repeats a conversation\n"
    "      --system TEXT      system prompt\n"
    "      --template NAME    chat template family instead of the file's (plain, chatml,\n"
    "                         deepseek3, deepseek-r1, qwen3, llama3, ... see moerun info)\n"
    "      --think on|off|hide  reasoning (<think>...</think>): shown dimmed (on), switched\n"
    "                         off where the template allows (off), or not shown (hide)\n"
    "      --no-history       do not read or write the history file\n"
    "  -v, --verbose / -q, --quiet   more / fewer lines on stderr\n"
    "\n"
    "Type a message and press Enter. A block between lines of \"\"\" is one message; pasted\n"
    "text keeps its newlines. Ctrl-C stops a reply; Ctrl-C twice on an empty line, Ctrl-D or\n"
    "/exit leaves. /help lists the commands (/set, /show, /save, /load, /regen, ...).\n"
    "History: $XDG_STATE_HOME/moerun/history (default ~/.local/state/moerun/history).\n"
    "NO_COLOR=1 turns colours off.\n"
#ifdef MOERUN_LIBEDIT
    "Line editing and history: libedit (emacs keys; ~/.editrc is read).\n";
#else
    "This build has no libedit: lines are read as typed, without editing or history.\n";
#endif

static const char *const help_text =
    "  /help                 this list\n"
    "  /clear                start a new conversation (the system prompt stays)\n"
    "  /system [TEXT]        set the system prompt (no TEXT: show it)\n"
    "  /set NAME VALUE       temp, top_k, top_p, min_p, repeat_penalty, seed, max_tokens\n"
    "  /show                 model, parameters, template, context use\n"
    "  /stats                prompt and generation speed of the last reply\n"
    "  /save FILE            write the conversation as JSON\n"
    "  /load FILE            read a conversation written by /save\n"
    "  /regen                replace the last reply with a new one\n"
    "  /think on|off|hide    reasoning shown dimmed, switched off, or hidden\n"
    "  /exit                 leave (also Ctrl-D, or Ctrl-C twice on an empty line)\n"
    "  \"\"\"                   start or end a multi-line message\n";

/* Set by the signal handlers, read by the generation loop and the line reader. */
static volatile sig_atomic_t g_sigint;
static volatile sig_atomic_t g_winch;

static void on_sigint(int sig) {
    (void)sig;
    g_sigint = 1;
}

static void on_winch(int sig) {
    (void)sig;
    g_winch = 1;
}

/* restart: 1 while generating (writes to stdout must not fail with EINTR), 0 while reading a
 * line (the read must return so that Ctrl-C and resizes are seen at once). */
static void install_signals(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = restart ? SA_RESTART : 0;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
}

struct msg {
    const char *role; /* "user" or "assistant" (static strings) */
    char *content;
};

struct stats {
    int n_prompt, n_reused, n_gen;
    double t_prompt, t_gen;
};

struct repl {
    const struct repl_config *cfg;
    struct model m;
    struct sampler *smp;
    struct sampler_params sp;
    int max_tokens; /* -1: until end of text */
    enum chat_family fam;
    int think_mode;
    int in_fd;
    int tty_in, tty_out, tty_err, color, color_err;

    char *system;     /* NULL: none */
    struct msg *msgs; /* (cap_msgs) the conversation, system prompt apart */
    int n_msgs, cap_msgs;
    int first; /* msgs[first..] are in the context; older ones were dropped when it filled */

    int32_t *cache_ids; /* (n_ctx) the tokens whose keys and values the cache holds */
    int n_cache;
    float *logits; /* (n_vocab) */
    char *bos_text, *eos_text;

    /* per-reply output, sized at start */
    struct detok_stream ds;
    int max_piece;
    char *piece; /* (max_piece) */
    char *out;   /* (DETOK_OUT_CAP(max_piece)) */
    char *reply; /* (reply_cap) the reply's text so far */
    size_t reply_len, reply_cap;
    int in_think;  /* inside <think>...</think> */
    char hold[16]; /* bytes that may start a think tag, held until decided */
    int n_hold;
    int thinking_shown; /* hide mode: the "thinking..." placeholder is on screen */

    struct stats last;
    int n_notices;

    /* line reader */
    int int_on_empty; /* the last Ctrl-C came on an empty line */
    char *history_path;
#ifdef MOERUN_LIBEDIT
    EditLine *el;
    History *hist;
    const char *prompt;
#endif
};

/* ---- terminal output ---- */

#define SGR_DIM "\033[2m"
#define SGR_BOLD "\033[1m"
#define SGR_RESET "\033[0m"

/* A dim line on stderr for notices (context dropped, reply stopped): not part of the reply. */
static void notice(const struct repl *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void notice(const struct repl *r, const char *fmt, ...) {
    if (r->cfg->verbosity < 1) return;
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    if (r->color_err) fputs(SGR_DIM, stderr);
    vfprintf(stderr, fmt, ap);
    if (r->color_err) fputs(SGR_RESET, stderr);
    fputc('\n', stderr);
    va_end(ap);
}

static int want_color(int fd) {
    const char *nc = getenv("NO_COLOR"), *term = getenv("TERM");
    if (nc && nc[0]) return 0;
    if (term && !strcmp(term, "dumb")) return 0;
    return isatty(fd);
}

/* ---- conversation ---- */

static void conv_push(struct repl *r, const char *role, const char *content) {
    if (r->n_msgs == r->cap_msgs) {
        r->cap_msgs = r->cap_msgs ? 2 * r->cap_msgs : 16;
        r->msgs = xrealloc(r->msgs, (size_t)r->cap_msgs * sizeof *r->msgs);
    }
    r->msgs[r->n_msgs++] = (struct msg){role, xstrdup(content ? content : "")};
}

static void conv_pop(struct repl *r) {
    free(r->msgs[--r->n_msgs].content);
    if (r->first > r->n_msgs) r->first = r->n_msgs;
}

static void conv_clear(struct repl *r) {
    while (r->n_msgs) conv_pop(r);
    r->first = 0;
}

static void set_system(struct repl *r, const char *text) {
    free(r->system);
    r->system = text && text[0] ? xstrdup(text) : NULL;
}

/* ---- JSON: the conversation as [{"role": ..., "content": ...}] ---- */

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        case '\b':
            fputs("\\b", f);
            break;
        case '\f':
            fputs("\\f", f);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f); /* UTF-8 passes through: JSON text is UTF-8 */
        }
    }
    fputc('"', f);
}

static void json_msg(FILE *f, const char *role, const char *content, int first) {
    fputs(first ? "[\n  {\"role\": " : ",\n  {\"role\": ", f);
    json_string(f, role);
    fputs(", \"content\": ", f);
    json_string(f, content);
    fputc('}', f);
}

/* Written to a temporary name, then renamed, so a failed save leaves the old file whole. */
static int conv_save(const struct repl *r, const char *path) {
    size_t n = strlen(path) + 32;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    int k = 0;
    if (f && r->system) json_msg(f, "system", r->system, k++ == 0);
    for (int i = 0; f && i < r->n_msgs; i++)
        json_msg(f, r->msgs[i].role, r->msgs[i].content, k++ == 0);
    if (f) fputs(k ? "\n]\n" : "[]\n", f);
    int ok = f && !ferror(f);
    if (f && fclose(f) != 0) ok = 0;
    if (ok && rename(tmp, path) != 0) ok = 0;
    if (!ok) {
        err_set("/save %s: %s", path, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

struct jparse {
    const char *s;
    size_t n, i;
    const char *path;
};

static int jp_fail(const struct jparse *p, const char *what) {
    int line = 1, col = 1;
    for (size_t k = 0; k < p->i && k < p->n; k++) {
        if (p->s[k] == '\n')
            line++, col = 1;
        else
            col++;
    }
    err_set("/load %s: line %d, column %d: %s", p->path, line, col, what);
    return -1;
}

static void jp_ws(struct jparse *p) {
    while (p->i < p->n && strchr(" \t\r\n", p->s[p->i]) && p->s[p->i]) p->i++;
}

/* Skips whitespace; consumes c if it is next. */
static int jp_eat(struct jparse *p, char c) {
    jp_ws(p);
    if (p->i < p->n && p->s[p->i] == c) return p->i++, 1;
    return 0;
}

static int jp_hex4(struct jparse *p, unsigned *out) {
    if (p->i + 4 > p->n) return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i++];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

static size_t utf8_put(char *o, unsigned c) {
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xc0 | c >> 6), o[1] = (char)(0x80 | (c & 0x3f)), 2;
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | c >> 12), o[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        return o[2] = (char)(0x80 | (c & 0x3f)), 3;
    }
    o[0] = (char)(0xf0 | c >> 18), o[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3f)), o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* \uXXXX, with a following \uXXXX when it is a surrogate pair; written as UTF-8 to o. */
static int jp_unicode(struct jparse *p, char *o, size_t *len) {
    unsigned c, lo;
    if (jp_hex4(p, &c) < 0) return jp_fail(p, "\\u needs four hex digits");
    if (c >= 0xdc00 && c <= 0xdfff) return jp_fail(p, "lone low surrogate in \\u escape");
    if (c >= 0xd800 && c <= 0xdbff) {
        if (p->i + 2 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
            return jp_fail(p, "high surrogate without a low one in \\u escape");
        p->i += 2;
        if (jp_hex4(p, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
            return jp_fail(p, "high surrogate without a low one in \\u escape");
        c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
    }
    *len += utf8_put(o + *len, c);
    return 0;
}

/* A string literal into *out (malloc'd). The decoded text is never longer than the source. */
static int jp_string(struct jparse *p, char **out) {
    if (!jp_eat(p, '"')) return jp_fail(p, "expected a string");
    char *o = xmalloc(p->n - p->i + 1);
    size_t len = 0;
    for (;;) {
        if (p->i >= p->n) return free(o), jp_fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->i++];
        if (c == '"') break;
        if (c < 0x20) return free(o), jp_fail(p, "control character inside a string");
        if (c != '\\') {
            o[len++] = (char)c;
            continue;
        }
        char e = p->i < p->n ? p->s[p->i++] : 0;
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *at = e ? strchr(from, e) : NULL;
        if (at)
            o[len++] = to[at - from];
        else if (e == 'u') {
            if (jp_unicode(p, o, &len) < 0) return free(o), -1;
        } else
            return free(o), jp_fail(p, "unknown escape in a string");
    }
    o[len] = 0;
    *out = o;
    return 0;
}

/* One {"role": ..., "content": ...}; other keys with string values are ignored. */
static int jp_message(struct jparse *p, char **role, char **content) {
    *role = *content = NULL;
    if (!jp_eat(p, '{')) return jp_fail(p, "expected '{' to open a message");
    if (!jp_eat(p, '}')) {
        do {
            char *key, *val;
            if (jp_string(p, &key) < 0) return -1;
            if (!jp_eat(p, ':')) return free(key), jp_fail(p, "expected ':' after a key");
            if (jp_string(p, &val) < 0) return free(key), -1;
            char **slot = !strcmp(key, "role") ? role : !strcmp(key, "content") ? content : NULL;
            free(key);
            if (slot)
                free(*slot), *slot = val;
            else
                free(val);
        } while (jp_eat(p, ','));
        if (!jp_eat(p, '}')) return jp_fail(p, "expected ',' or '}' in a message");
    }
    if (*role && *content) return 0;
    return jp_fail(p, "a message needs both \"role\" and \"content\"");
}

static int check_role(struct jparse *p, const char *role, int index) {
    if (!strcmp(role, "user") || !strcmp(role, "assistant")) return 0;
    if (!strcmp(role, "system") && index == 0) return 0;
    return jp_fail(p, !strcmp(role, "system") ? "a system message may only come first"
                                              : "role must be system, user or assistant");
}

/* Parses the whole file into r's conversation; on error r is left unchanged. */
static int conv_parse(struct repl *r, struct jparse *p) {
    struct repl tmp = {0};
    int rc = jp_eat(p, '[') ? 0 : jp_fail(p, "expected '[' (a list of messages)");
    if (rc == 0 && !jp_eat(p, ']')) {
        for (int idx = 0; rc == 0; idx++) {
            char *role, *content;
            jp_ws(p);
            size_t at = p->i;
            rc = jp_message(p, &role, &content);
            if (rc == 0) { /* a bad role is reported where its message starts */
                size_t end = p->i;
                p->i = at;
                rc = check_role(p, role, idx);
                p->i = end;
            }
            if (rc == 0 && !strcmp(role, "system"))
                set_system(&tmp, content);
            else if (rc == 0)
                conv_push(&tmp, !strcmp(role, "user") ? "user" : "assistant", content);
            free(role);
            free(content);
            if (rc == 0 && !jp_eat(p, ',')) break;
        }
        if (rc == 0 && !jp_eat(p, ']')) rc = jp_fail(p, "expected ',' or ']' after a message");
    }
    jp_ws(p);
    if (rc == 0 && p->i != p->n) rc = jp_fail(p, "text after the closing ']'");
    if (rc < 0) {
        conv_clear(&tmp);
        free(tmp.msgs);
        free(tmp.system);
        return -1;
    }
    conv_clear(r);
    free(r->msgs);
    r->msgs = tmp.msgs, r->n_msgs = tmp.n_msgs, r->cap_msgs = tmp.cap_msgs;
    set_system(r, tmp.system);
    free(tmp.system);
    return 0;
}

static int conv_load(struct repl *r, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        err_set("/load %s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, n = 0, got;
    char *buf = xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += got) == cap) buf = xrealloc(buf, cap *= 2);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        err_set("/load %s: read error", path);
        return -1;
    }
    struct jparse p = {buf, n, 0, path};
    int rc = memchr(buf, 0, n) ? jp_fail(&p, "the file holds a NUL byte") : conv_parse(r, &p);
    free(buf);
    return rc;
}

/* ---- rendering and the KV cache ---- */

/* The prompt text for msgs[first..] after the system prompt, ending where the reply begins;
 * tail (the reply so far, or NULL) is appended. The plain family has no generation prompt,
 * so a newline starts the reply on a line of its own, as the rendering separates messages. */
static char *render_text(struct repl *r, int first, const char *tail, size_t *len) {
    struct chat_msg *cm = xmalloc((size_t)(r->n_msgs - first + 1) * sizeof *cm);
    int n = 0;
    if (r->system) cm[n++] = (struct chat_msg){"system", r->system};
    for (int i = first; i < r->n_msgs; i++)
        cm[n++] = (struct chat_msg){r->msgs[i].role, r->msgs[i].content};
    struct chat_opts o = {.add_generation_prompt = 1,
                          .thinking = r->think_mode != REPL_THINK_OFF,
                          .bos_text = r->bos_text,
                          .eos_text = r->eos_text};
    char *text = NULL;
    size_t n_text = 0;
    int rc = chat_render(r->fam, cm, n, &o, &text, &n_text);
    free(cm);
    if (rc < 0) return NULL;
    const char *extra = r->fam == CHAT_PLAIN ? "\n" : "";
    size_t n_tail = tail ? strlen(tail) : 0, n_extra = strlen(extra);
    text = xrealloc(text, n_text + n_extra + n_tail + 1);
    memcpy(text + n_text, extra, n_extra);
    if (n_tail) memcpy(text + n_text + n_extra, tail, n_tail);
    *len = n_text + n_extra + n_tail;
    text[*len] = '\0';
    return text;
}

/* Whether the reply starts inside a reasoning block: R1-style generation prompts end with an
 * opened <think>, so the model's first tokens are reasoning without a tag of their own. */
static int opens_think(const char *text, size_t len) {
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ')) len--;
    return len >= 7 && !memcmp(text + len - 7, "<think>", 7);
}

/* Tokenizes a rendering; the BOS id is added only when the text does not carry its text. */
static int tokenize_text(struct repl *r, const char *text, size_t len, int32_t **ids) {
    size_t nb = strlen(r->bos_text);
    int has_bos = nb && len >= nb && !memcmp(text, r->bos_text, nb);
    int add_bos = tokenizer_add_bos(r->m.tok) && !has_bos;
    int64_t n = tokenizer_encode(r->m.tok, text, len, add_bos, 1, ids);
    if (n > INT_MAX) n = INT_MAX;
    return (int)n;
}

/* The ids of the conversation from msgs[first..] plus tail; -1 with err set. */
static int render_ids(struct repl *r, int first, const char *tail, int32_t **ids, int *think) {
    size_t len;
    char *text = render_text(r, first, tail, &len);
    if (!text) return -1;
    if (think) *think = opens_think(text, len);
    int n = tokenize_text(r, text, len, ids);
    free(text);
    return n;
}

/* The index of the next user message after msgs[first] that still leaves the last one in the
 * context, or -1 when nothing more can be dropped. Turns are dropped whole (from a user
 * message to the next), so templates that need user/assistant alternation stay valid. */
static int next_droppable(const struct repl *r, int first) {
    int last_user = -1;
    for (int i = r->n_msgs - 1; i >= 0 && last_user < 0; i--)
        if (!strcmp(r->msgs[i].role, "user")) last_user = i;
    for (int i = first + 1; i <= last_user; i++)
        if (!strcmp(r->msgs[i].role, "user")) return i;
    return -1;
}

/* Renders the conversation so that it fits the context with room for a reply, dropping the
 * oldest turns (never the system prompt) as needed. Returns the token count, or -1: an error
 * (err set) or a last message that does not fit even alone (err set, says how long). */
static int fit_context(struct repl *r, const char *tail, int32_t **ids, int *think, int dropped) {
    int room = r->m.n_ctx / 8 > 0 ? r->m.n_ctx / 8 : 1;
    for (;;) {
        int n = render_ids(r, r->first, tail, ids, think);
        if (n < 0) return -1;
        if (n + room <= r->m.n_ctx) {
            if (dropped)
                notice(r,
                       "[context full: dropped the %d oldest message%s%s; %d of %d tokens in "
                       "use]",
                       dropped, dropped == 1 ? "" : "s",
                       r->system ? ", kept the system prompt" : "", n, r->m.n_ctx);
            return n;
        }
        free(*ids);
        *ids = NULL;
        int next = next_droppable(r, r->first);
        if (next < 0) {
            err_set("the prompt would be %d tokens, but the context holds %d with room for a "
                    "reply (raise -c, or /clear)",
                    n, r->m.n_ctx);
            return -1;
        }
        dropped += next - r->first;
        r->first = next;
    }
}

/* Feeds ids[0..n) into the cache: keeps the common prefix with what the cache holds and
 * computes only the rest; the last position is always computed for its logits. */
static int prefill(struct repl *r, const int32_t *ids, int n) {
    int p = 0;
    while (p < n && p < r->n_cache && r->cache_ids[p] == ids[p]) p++;
    if (p == n) p = n - 1;
    double t0 = time_now();
    r->n_cache = p; /* if the forward fails, only the prefix stays valid */
    if (model_forward(&r->m, ids + p, n - p, p, r->logits, 0) < 0) return -1;
    memcpy(r->cache_ids + p, ids + p, (size_t)(n - p) * sizeof *ids);
    r->n_cache = n;
    for (int i = p; i < n; i++) sampler_accept(r->smp, ids[i]);
    r->last.n_prompt += n - p;
    r->last.n_reused = p;
    r->last.t_prompt += time_now() - t0;
    if (r->cfg->verbosity >= 2)
        notice(r, "[prefill: %d tokens reused from the cache, %d computed]", p, n - p);
    return 0;
}

/* ---- streaming a reply ---- */

/* Writes reply text to the terminal as the think mode wants it: reasoning dimmed, or left
 * out with a placeholder that the answer overwrites. */
static void show(struct repl *r, const char *s, size_t n) {
    if (r->in_think && r->think_mode == REPL_THINK_HIDE) return;
    fwrite(s, 1, n, stdout);
}

static void think_enter(struct repl *r) {
    r->in_think = 1;
    if (r->think_mode == REPL_THINK_HIDE) {
        if (r->tty_out) fputs(r->color ? SGR_DIM "thinking..." SGR_RESET : "thinking...", stdout);
        r->thinking_shown = r->tty_out;
        return;
    }
    if (r->color) fputs(SGR_DIM, stdout);
    fputs("<think>", stdout);
}

static void think_leave(struct repl *r) {
    if (r->think_mode == REPL_THINK_HIDE) {
        if (r->thinking_shown) fputs("\r\033[K", stdout);
        r->thinking_shown = 0;
    } else {
        fputs("</think>", stdout);
        if (r->color) fputs(SGR_RESET, stdout);
    }
    r->in_think = 0;
}

/* Finds <think> and </think> in the stream, whichever split over tokens: bytes that may begin
 * the awaited tag are held back until the tag completes or cannot. The tags have one '<',
 * at their start, so on a mismatch only a '<' just read can begin the tag again. */
static void filter_push(struct repl *r, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *tag = r->in_think ? "</think>" : "<think>";
        size_t tl = strlen(tag);
        r->hold[r->n_hold++] = s[i];
        if (!memcmp(r->hold, tag, (size_t)r->n_hold)) {
            if ((size_t)r->n_hold == tl) {
                r->n_hold = 0;
                if (r->in_think)
                    think_leave(r);
                else
                    think_enter(r);
            }
            continue;
        }
        int again = s[i] == '<';
        show(r, r->hold, (size_t)(r->n_hold - again));
        r->n_hold = again;
        if (again) r->hold[0] = '<';
    }
}

/* Ends the reply's display: held bytes out, colours reset, the cursor on a fresh line. */
static void filter_finish(struct repl *r) {
    show(r, r->hold, (size_t)r->n_hold);
    r->n_hold = 0;
    if (r->thinking_shown) fputs("\r\033[K", stdout);
    r->thinking_shown = 0;
    if (r->in_think && r->color) fputs(SGR_RESET, stdout);
    r->in_think = 0;
    if (r->reply_len && r->reply[r->reply_len - 1] != '\n') fputc('\n', stdout);
    fflush(stdout);
}

enum stop { STOP_EOG, STOP_INTERRUPT, STOP_MAX, STOP_FULL, STOP_LINE, STOP_ERROR };

/* Appends text to the reply and shows it. Returns 0, or the reason the reply ends here: a
 * plain-family reply ends at its first newline (the rendering puts one between messages),
 * and a full reply buffer ends it too (it holds more than the context can). */
static int put_text(struct repl *r, const char *s, size_t k) {
    int end = 0;
    if (r->fam == CHAT_PLAIN) {
        while (k && r->reply_len == 0 && *s == '\n') s++, k--;
        const char *nl = memchr(s, '\n', k);
        if (nl) k = (size_t)(nl - s), end = STOP_LINE;
    }
    if (r->reply_len + k + 1 > r->reply_cap) k = 0, end = STOP_FULL;
    memcpy(r->reply + r->reply_len, s, k);
    r->reply_len += k;
    r->reply[r->reply_len] = '\0';
    filter_push(r, s, k);
    fflush(stdout);
    return end;
}

static int emit(struct repl *r, int32_t id) {
    int n = tokenizer_piece(r->m.tok, id, 0, r->piece, (size_t)r->max_piece);
    if (n <= 0) return 0;
    size_t k = detok_push(&r->ds, r->piece, (size_t)n, r->out, DETOK_OUT_CAP(r->max_piece));
    return put_text(r, r->out, k);
}

/* The context filled during a reply: drop the oldest turns and re-prefill the rest with the
 * reply so far, so the reply goes on. -1 when only the current turn is left. */
static int shift_context(struct repl *r) {
    int next = next_droppable(r, r->first);
    if (next < 0) return -1;
    int dropped = next - r->first;
    r->first = next;
    int32_t *ids = NULL;
    int n = fit_context(r, r->reply, &ids, NULL, dropped);
    int rc = n < 0 ? -1 : prefill(r, ids, n);
    free(ids);
    return rc;
}

static int next_token(struct repl *r, int n_gen) {
    if (g_sigint) return STOP_INTERRUPT;
    if (r->max_tokens >= 0 && n_gen >= r->max_tokens) return STOP_MAX;
    int32_t id = sampler_sample(r->smp, r->logits);
    if (tokenizer_is_eog(r->m.tok, id)) return STOP_EOG;
    sampler_accept(r->smp, id);
    r->last.n_gen++;
    int end = emit(r, id);
    if (end) return end;
    if (r->n_cache >= r->m.n_ctx) return shift_context(r) < 0 ? STOP_FULL : -1;
    r->cache_ids[r->n_cache] = id;
    if (model_forward(&r->m, &id, 1, r->n_cache, r->logits, 0) < 0) return STOP_ERROR;
    r->n_cache++;
    return -1;
}

/* Samples and streams the reply into r->reply. No allocation in here: every buffer was sized
 * at start. */
static enum stop generate(struct repl *r, int think0) {
    detok_init(&r->ds, 0);
    r->reply_len = 0;
    r->reply[0] = '\0';
    r->n_hold = 0;
    r->in_think = 0;
    if (think0) { /* the prompt opened the block: show its tag as the model's own would be */
        think_enter(r);
        if (r->think_mode != REPL_THINK_HIDE) fputc('\n', stdout);
    }
    double t0 = time_now(), t_prompt0 = r->last.t_prompt;
    int stop = -1;
    for (int i = 0; stop < 0; i++) stop = next_token(r, i);
    size_t k = detok_flush(&r->ds, r->out, DETOK_OUT_CAP(r->max_piece));
    if (k) put_text(r, r->out, k);
    filter_finish(r);
    r->last.t_gen = time_now() - t0 - (r->last.t_prompt - t_prompt0);
    return (enum stop)stop;
}

/* One exchange: the conversation ends with the user's message; the reply is appended, whole
 * or as far as it got. */
static void turn(struct repl *r) {
    memset(&r->last, 0, sizeof r->last);
    int32_t *ids = NULL;
    int think = 0;
    int n = fit_context(r, NULL, &ids, &think, 0);
    if (n < 0 || prefill(r, ids, n) < 0) {
        free(ids);
        fprintf(stderr, "moerun chat: %s\n", err_get());
        conv_pop(r); /* the message that could not be answered */
        return;
    }
    free(ids);
    install_signals(1);
    enum stop why = generate(r, think);
    conv_push(r, "assistant", r->reply);
    if (why == STOP_INTERRUPT) notice(r, "[stopped]");
    if (why == STOP_FULL)
        notice(r, "[reply stopped: the context of %d tokens is full]", r->m.n_ctx);
    if (why == STOP_ERROR) fprintf(stderr, "moerun chat: %s\n", err_get());
    if (why == STOP_MAX) notice(r, "[reply stopped at max_tokens = %d]", r->max_tokens);
    g_sigint = 0;
}

/* ---- reading lines ---- */

enum { LINE_EOF = 0, LINE_OK = 1, LINE_INTERRUPT = 2 };

#ifdef MOERUN_LIBEDIT
static const char *el_prompt(EditLine *el) {
    struct repl *r;
    el_get(el, EL_CLIENTDATA, &r);
    return r->prompt;
}

/* libedit's character reader, replaced so that Ctrl-C ends the line at once (libedit's own
 * retries an interrupted read) and a resized terminal is redrawn. */
static int el_read_char(EditLine *el, wchar_t *wc) {
    struct repl *r;
    el_get(el, EL_CLIENTDATA, &r);
    char buf[MB_LEN_MAX];
    size_t n = 0;
    for (;;) {
        unsigned char c;
        ssize_t k = read(r->in_fd, &c, 1);
        if (k < 0 && errno == EINTR) {
            if (g_sigint) {
                const LineInfo *li = el_line(el);
                r->int_on_empty = li->lastchar == li->buffer;
                return -1;
            }
            if (g_winch) g_winch = 0, el_resize(el), el_set(el, EL_REFRESH);
            continue;
        }
        if (k <= 0) return k == 0 ? 0 : -1;
        buf[n++] = (char)c;
        mbstate_t st;
        memset(&st, 0, sizeof st);
        size_t rc = mbrtowc(wc, buf, n, &st);
        if (rc == (size_t)-2 && n < sizeof buf) continue; /* more bytes of one character */
        if (rc == (size_t)-1 || rc == (size_t)-2) *wc = (unsigned char)buf[0];
        return 1;
    }
}

/* Bracketed paste: the terminal wraps pasted text in ESC[200~ ... ESC[201~. Inserting it as
 * it comes keeps its newlines in the line (libedit draws them as line breaks) instead of
 * each one sending a message. */
static unsigned char el_paste(EditLine *el, int ch) {
    (void)ch;
    static const wchar_t end[] = L"\033[201~";
    size_t n = 0, cap = 256, ne = wcslen(end);
    wchar_t *buf = xmalloc(cap * sizeof *buf), c;
    while (el_wgetc(el, &c) == 1) {
        if (n + 2 >= cap) buf = xrealloc(buf, (cap *= 2) * sizeof *buf);
        buf[n++] = c == L'\r' ? L'\n' : c;
        if (n >= ne && !wmemcmp(buf + n - ne, end, ne)) {
            n -= ne;
            break;
        }
    }
    buf[n] = 0;
    el_winsertstr(el, buf);
    free(buf);
    return CC_REFRESH;
}

static void lr_open_edit(struct repl *r) {
    r->el = el_init("moerun", stdin, stdout, stderr);
    r->hist = history_init();
    HistEvent ev;
    history(r->hist, &ev, H_SETSIZE, 1000);
    history(r->hist, &ev, H_SETUNIQUE, 1);
    if (r->history_path) history(r->hist, &ev, H_LOAD, r->history_path);
    el_set(r->el, EL_CLIENTDATA, r);
    el_set(r->el, EL_EDITOR, "emacs");
    el_set(r->el, EL_PROMPT_ESC, el_prompt, '\1');
    el_set(r->el, EL_HIST, history, r->hist);
    el_set(r->el, EL_GETCFN, el_read_char);
    /* the wide form keeps these static strings; the narrow one copies them and never frees */
    el_wset(r->el, EL_ADDFN, L"moerun-paste", L"bracketed paste", el_paste);
    el_set(r->el, EL_BIND, "\033[200~", "moerun-paste", NULL);
    el_source(r->el, NULL); /* the user's ~/.editrc, as other libedit programs read it */
}

/* The line buffer still holds an interrupted line; empty it for the next prompt. */
static void el_discard(EditLine *el) {
    const LineInfo *li = el_line(el);
    el_cursor(el, (int)(li->lastchar - li->cursor));
    li = el_line(el);
    el_deletestr(el, (int)(li->lastchar - li->buffer));
}

static int lr_read_edit(struct repl *r, const char *prompt, char **line) {
    r->prompt = prompt;
    r->int_on_empty = 0;
    fputs("\033[?2004h", stdout); /* ask for bracketed paste while editing */
    fflush(stdout);
    int count = 0;
    const char *s = el_gets(r->el, &count);
    fputs("\033[?2004l", stdout);
    fflush(stdout);
    if (g_sigint) {
        el_discard(r->el);
        fputc('\n', stdout);
        return LINE_INTERRUPT;
    }
    if (!s || count <= 0) return LINE_EOF;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    *line = xmalloc(n + 1);
    memcpy(*line, s, n);
    (*line)[n] = '\0';
    return LINE_OK;
}
#endif

/* Without libedit, or when stdin is not a terminal: plain lines. */
static int lr_read_plain(struct repl *r, const char *prompt, char **line) {
    for (const char *p = prompt; r->tty_in && *p; p++)
        if (*p != '\1') fputc(*p, stdout); /* \1 marks escapes for libedit only */
    fflush(stdout);
    char *buf = NULL;
    size_t cap = 0;
    r->int_on_empty = 0;
    ssize_t n = getline(&buf, &cap, stdin);
    if (n < 0) {
        free(buf);
        if (!g_sigint) return LINE_EOF;
        clearerr(stdin);
        r->int_on_empty = 1; /* what was typed is gone with the terminal's line buffer */
        fputc('\n', stdout);
        return LINE_INTERRUPT;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
    *line = buf;
    return LINE_OK;
}

static int lr_read(struct repl *r, const char *prompt, char **line) {
    install_signals(0);
    g_sigint = 0;
#ifdef MOERUN_LIBEDIT
    if (r->el) return lr_read_edit(r, prompt, line);
#endif
    return lr_read_plain(r, prompt, line);
}

static void lr_remember(struct repl *r, const char *line) {
#ifdef MOERUN_LIBEDIT
    if (!r->hist) return;
    HistEvent ev;
    history(r->hist, &ev, H_ENTER, line);
    if (r->history_path) history(r->hist, &ev, H_SAVE, r->history_path);
#else
    (void)r, (void)line;
#endif
}

#ifdef MOERUN_LIBEDIT
/* mkdir -p, for the history directory. */
static int make_dirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int rc = mkdir(path, 0700);
        *p = '/';
        if (rc < 0 && errno != EEXIST) return -1;
    }
    return mkdir(path, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

/* $XDG_STATE_HOME/moerun/history, default ~/.local/state/moerun/history; NULL when there is
 * no home or the directory cannot be made (said once). */
static char *history_file(const struct repl *r) {
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char dir[4096];
    if (xdg && xdg[0] == '/')
        snprintf(dir, sizeof dir, "%s/moerun", xdg);
    else if (home && home[0])
        snprintf(dir, sizeof dir, "%s/.local/state/moerun", home);
    else
        return NULL;
    if (make_dirs(dir) < 0) {
        notice(r, "[no history file: cannot create %s: %s]", dir, strerror(errno));
        return NULL;
    }
    size_t n = strlen(dir) + 16;
    char *path = xmalloc(n);
    snprintf(path, n, "%s/history", dir);
    return path;
}
#endif

static void lr_open(struct repl *r) {
    r->in_fd = STDIN_FILENO;
#ifdef MOERUN_LIBEDIT
    if (r->tty_in) {
        if (!r->cfg->no_history) r->history_path = history_file(r);
        lr_open_edit(r);
    }
#endif
}

static void lr_close(struct repl *r) {
#ifdef MOERUN_LIBEDIT
    if (r->el) el_end(r->el);
    if (r->hist) history_end(r->hist);
#endif
    free(r->history_path);
}

/* A message: one line, or the lines between a line starting with """ and one ending with
 * it (text beside the quotes belongs to the message). */
static int read_message(struct repl *r, char **msg) {
    char *line;
    int rc = lr_read(r, r->color ? "\1" SGR_BOLD "\1>>> \1" SGR_RESET "\1" : ">>> ", &line);
    if (rc != LINE_OK || strncmp(line, "\"\"\"", 3)) return *msg = rc == LINE_OK ? line : NULL, rc;
    size_t n = strlen(line + 3);
    char *text = xmalloc(n + 2);
    memcpy(text, line + 3, n + 1);
    free(line);
    for (int first = 1;; first = 0) {
        size_t len = strlen(text);
        if ((!first || len >= 3) && len >= 3 && !strcmp(text + len - 3, "\"\"\"")) {
            len -= 3;
            while (len && text[len - 1] == '\n') len--;
            text[len] = '\0';
            *msg = text;
            return LINE_OK;
        }
        rc = lr_read(r, r->color ? "\1" SGR_DIM "\1... \1" SGR_RESET "\1" : "... ", &line);
        if (rc != LINE_OK) {
            free(text);
            r->int_on_empty = 0; /* a cancelled block is not a step towards leaving */
            return rc;
        }
        size_t m = strlen(line);
        text = xrealloc(text, len + m + 2);
        if (!first || len) text[len++] = '\n';
        memcpy(text + len, line, m + 1);
        free(line);
    }
}

/* ---- slash commands ---- */

static const char *think_name(int mode) {
    return mode == REPL_THINK_OFF ? "off" : mode == REPL_THINK_HIDE ? "hide" : "on";
}

static int think_from_name(const char *s) {
    if (!strcmp(s, "on")) return REPL_THINK_ON;
    if (!strcmp(s, "off")) return REPL_THINK_OFF;
    if (!strcmp(s, "hide")) return REPL_THINK_HIDE;
    return -1;
}

static int parse_number(const char *s, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && !*end && !errno ? 0 : -1;
}

/* /set NAME VALUE: a new sampler from the changed parameters (it checks the ranges), so a
 * bad value leaves everything as it was. The RNG restarts from the seed. */
static void cmd_set(struct repl *r, const char *name, const char *val) {
    struct sampler_params sp = r->sp;
    double v;
    int is_int = parse_number(val, &v) == 0 && v == (double)(long long)v;
    if (!val[0] || parse_number(val, &v) < 0) {
        printf("/set %s: expected a number, got '%s'\n", name[0] ? name : "NAME", val);
        return;
    }
    if (!strcmp(name, "max_tokens")) {
        if (!is_int || v < -1 || v > INT_MAX) {
            printf("/set max_tokens: expected -1 (no limit) or a count, got '%s'\n", val);
            return;
        }
        r->max_tokens = (int)v;
        printf("max_tokens = %d\n", r->max_tokens);
        return;
    }
    if (!strcmp(name, "temp"))
        sp.temp = (float)v;
    else if (!strcmp(name, "top_p"))
        sp.top_p = (float)v;
    else if (!strcmp(name, "min_p"))
        sp.min_p = (float)v;
    else if (!strcmp(name, "repeat_penalty"))
        sp.repeat_penalty = (float)v;
    else if ((!strcmp(name, "top_k") || !strcmp(name, "repeat_last_n") || !strcmp(name, "seed")) &&
             (!is_int || v < 0 || v > (double)INT32_MAX * (name[0] == 's' ? 4e9 : 1))) {
        printf("/set %s: expected a non-negative integer, got '%s'\n", name, val);
        return;
    } else if (!strcmp(name, "top_k"))
        sp.top_k = (int32_t)v;
    else if (!strcmp(name, "repeat_last_n"))
        sp.repeat_last_n = (int32_t)v;
    else if (!strcmp(name, "seed"))
        sp.seed = strtoull(val, NULL, 10);
    else {
        printf("/set: unknown parameter '%s' (temp, top_k, top_p, min_p, repeat_penalty, "
               "repeat_last_n, seed, max_tokens)\n",
               name);
        return;
    }
    struct sampler *s = sampler_new(&sp, (int32_t)r->m.hp.n_vocab);
    if (!s) {
        printf("/set %s: %s\n", name, err_get());
        return;
    }
    sampler_free(r->smp);
    r->smp = s;
    r->sp = sp;
    printf("%s = %s\n", name, val);
}

static void cmd_show(const struct repl *r) {
    const struct sampler_params *sp = &r->sp;
    printf("model: %s (%s, %.2fM params, %u layers)\n", r->m.file.path, r->m.arch_name,
           (double)r->m.n_params / 1e6, r->m.hp.n_layer);
    printf("template: %s%s\n", chat_family_name(r->fam),
           r->cfg->template_name  ? " (--template)"
           : r->fam == CHAT_PLAIN ? " (none in the file)"
                                  : "");
    printf("parameters: temp %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g over %d, seed "
           "%llu, max_tokens %d\n",
           (double)sp->temp, sp->top_k, (double)sp->top_p, (double)sp->min_p,
           (double)sp->repeat_penalty, sp->repeat_last_n, (unsigned long long)sp->seed,
           r->max_tokens);
    printf("think: %s\n", think_name(r->think_mode));
    printf("system: %s\n", r->system ? r->system : "(none)");
    printf("conversation: %d messages, %d in the context\n", r->n_msgs, r->n_msgs - r->first);
    printf("context: %d of %d tokens in use\n", r->n_cache, r->m.n_ctx);
}

static void cmd_stats(const struct repl *r) {
    const struct stats *s = &r->last;
    if (!s->n_prompt && !s->n_gen) {
        printf("no reply yet\n");
        return;
    }
    printf("prompt: %d tokens in %.3f s (%.1f tokens/s), %d reused from the cache\n", s->n_prompt,
           s->t_prompt, s->t_prompt > 0 ? s->n_prompt / s->t_prompt : 0.0, s->n_reused);
    printf("reply: %d tokens in %.3f s (%.1f tokens/s)\n", s->n_gen, s->t_gen,
           s->t_gen > 0 ? s->n_gen / s->t_gen : 0.0);
}

static void cmd_regen(struct repl *r) {
    if (r->n_msgs && !strcmp(r->msgs[r->n_msgs - 1].role, "assistant")) conv_pop(r);
    if (!r->n_msgs || strcmp(r->msgs[r->n_msgs - 1].role, "user")) {
        printf("nothing to regenerate\n");
        return;
    }
    turn(r);
}

static void cmd_file(struct repl *r, const char *cmd, const char *arg) {
    int n = r->n_msgs + (r->system != NULL);
    if (!arg[0]) {
        printf("%s needs a file name\n", cmd);
        return;
    }
    if (!strcmp(cmd, "/save")) {
        if (conv_save(r, arg) < 0)
            printf("%s\n", err_get());
        else
            printf("saved %d message%s to %s\n", n, n == 1 ? "" : "s", arg);
        return;
    }
    if (conv_load(r, arg) < 0) {
        printf("%s\n", err_get());
        return;
    }
    r->first = 0;
    n = r->n_msgs + (r->system != NULL);
    printf("loaded %d message%s from %s\n", n, n == 1 ? "" : "s", arg);
}

/* Runs a slash command; returns 1 to leave the REPL. */
static int command(struct repl *r, char *line) {
    char *arg = line + strcspn(line, " \t");
    if (*arg) *arg++ = '\0';
    arg += strspn(arg, " \t");
    for (size_t n = strlen(arg); n && (arg[n - 1] == ' ' || arg[n - 1] == '\t');) arg[--n] = '\0';
    const char *c = line;
    if (!strcmp(c, "/exit") || !strcmp(c, "/quit") || !strcmp(c, "/bye")) return 1;
    if (!strcmp(c, "/help") || !strcmp(c, "/?"))
        fputs(help_text, stdout);
    else if (!strcmp(c, "/clear"))
        conv_clear(r), printf("new conversation\n");
    else if (!strcmp(c, "/system") && !arg[0])
        printf("system: %s\n", r->system ? r->system : "(none)");
    else if (!strcmp(c, "/system"))
        set_system(r, arg), printf("system prompt set\n");
    else if (!strcmp(c, "/set")) {
        char *val = arg + strcspn(arg, " \t");
        if (*val) *val++ = '\0';
        cmd_set(r, arg, val + strspn(val, " \t"));
    } else if (!strcmp(c, "/show"))
        cmd_show(r);
    else if (!strcmp(c, "/stats"))
        cmd_stats(r);
    else if (!strcmp(c, "/save") || !strcmp(c, "/load"))
        cmd_file(r, c, arg);
    else if (!strcmp(c, "/regen"))
        cmd_regen(r);
    else if (!strcmp(c, "/think") && think_from_name(arg) >= 0)
        r->think_mode = think_from_name(arg), printf("think: %s\n", think_name(r->think_mode));
    else if (!strcmp(c, "/think"))
        printf("/think expects on, off or hide (now %s)\n", think_name(r->think_mode));
    else
        printf("unknown command %s (try /help)\n", c);
    return 0;
}

/* ---- setup and the loop ---- */

static int pick_family(struct repl *r) {
    if (r->cfg->template_name) return chat_family_from_name(r->cfg->template_name, &r->fam);
    struct gguf_str tmpl = {0, NULL};
    r->fam = CHAT_PLAIN;
    if (gguf_get_str(&r->m.file, "tokenizer.chat_template", &tmpl) == 0 && tmpl.len)
        r->fam = chat_detect(tmpl.data, tmpl.len);
    return 0;
}

static void load_summary(const struct repl *r, double secs) {
    if (r->cfg->verbosity < 1) return;
    double mib = (double)r->m.file.size / (1024.0 * 1024.0);
    fprintf(stderr,
            "moerun chat: %s: %s, %.2fM params (%.2fM active), %.2f %s%s, cpu %d threads%s, ctx "
            "%d, template %s, loaded in %.2f s\n",
            r->m.file.path, r->m.arch_name, (double)r->m.n_params / 1e6,
            (double)r->m.n_params_active / 1e6, mib >= 1024 ? mib / 1024 : mib,
            mib >= 1024 ? "GiB" : "MiB", hold_text(&r->m), cpu_n_threads(r->m.cpu),
            cpu_has_blas() ? " + OpenBLAS" : "", r->m.n_ctx, chat_family_name(r->fam), secs);
}

/* Buffers every reply needs, sized once: the generation loop allocates nothing. */
static void alloc_buffers(struct repl *r) {
    r->max_piece = tokenizer_max_piece(r->m.tok);
    r->piece = xmalloc((size_t)r->max_piece);
    r->out = xmalloc(DETOK_OUT_CAP(r->max_piece));
    r->reply_cap = (size_t)r->m.n_ctx * 16 + DETOK_OUT_CAP(r->max_piece) + 1;
    r->reply = xmalloc(r->reply_cap);
    r->cache_ids = xmalloc((size_t)r->m.n_ctx * sizeof *r->cache_ids);
    r->logits = xmalloc((size_t)r->m.hp.n_vocab * sizeof *r->logits);
    r->bos_text = chat_special_text(r->m.tok, tokenizer_bos(r->m.tok));
    r->eos_text = chat_special_text(r->m.tok, tokenizer_eos(r->m.tok));
}

static int repl_open(struct repl *r, const struct repl_config *cfg) {
    int loading_line = r->tty_err && cfg->verbosity >= 1;
    if (loading_line) fprintf(stderr, "loading %s ...", cfg->model_path), fflush(stderr);
    double t0 = time_now();
    int rc = model_load_hold(&r->m, cfg->model_path, cfg->hold);
    struct model_params mp = {.n_ctx = cfg->n_ctx, .n_threads = cfg->n_threads, .gpu = cfg->gpu};
    if (rc == 0 && model_init(&r->m, &mp) < 0) model_free(&r->m), rc = -1;
    if (loading_line) fputs("\r\033[K", stderr);
    if (rc < 0) return -1;
    if (cfg->verbosity >= 1) hold_warn(&r->m, "chat");
    r->sp = cfg->sp;
    if (!cfg->seed_given) r->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    r->smp = pick_family(r) < 0 ? NULL : sampler_new(&r->sp, (int32_t)r->m.hp.n_vocab);
    if (!r->smp) {
        model_free(&r->m);
        return -1;
    }
    alloc_buffers(r);
    load_summary(r, time_now() - t0);
    return 0;
}

static void repl_close(struct repl *r) {
    conv_clear(r);
    free(r->msgs);
    free(r->system);
    free(r->piece);
    free(r->out);
    free(r->reply);
    free(r->cache_ids);
    free(r->logits);
    free(r->bos_text);
    free(r->eos_text);
    sampler_free(r->smp);
    model_free(&r->m);
}

/* Ctrl-C on an empty line once warns, twice leaves; on a typed line it only clears it. */
static int on_interrupt(struct repl *r, int *armed) {
    if (!r->int_on_empty) return *armed = 0, 0;
    if (*armed) return 1;
    *armed = 1;
    notice(r, "(Ctrl-C again, Ctrl-D or /exit to leave)");
    return 0;
}

static void loop(struct repl *r) {
    int armed = 0;
    for (;;) {
        char *line = NULL;
        int rc = read_message(r, &line);
        if (rc == LINE_EOF) {
            if (r->tty_in) fputc('\n', stdout);
            return;
        }
        if (rc == LINE_INTERRUPT) {
            if (on_interrupt(r, &armed)) return;
            continue;
        }
        armed = 0;
        if (line[strspn(line, " \t")] == '\0') {
            free(line);
            continue;
        }
        lr_remember(r, line);
        int quit = line[0] == '/' ? command(r, line) : (conv_push(r, "user", line), turn(r), 0);
        free(line);
        if (quit) return;
    }
}

int repl_run(const struct repl_config *cfg) {
    struct repl r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.max_tokens = -1;
    r.think_mode = cfg->think_mode;
    r.tty_in = isatty(STDIN_FILENO);
    r.tty_out = isatty(STDOUT_FILENO);
    r.tty_err = isatty(STDERR_FILENO);
    r.color = want_color(STDOUT_FILENO);
    r.color_err = want_color(STDERR_FILENO);
    /* libedit and the pasted-text reader need the terminal's multibyte encoding; without a
     * UTF-8 locale, use C.UTF-8: the model's text is UTF-8 either way. */
    const char *loc = setlocale(LC_CTYPE, "");
    if (!loc || (!strstr(loc, "UTF-8") && !strstr(loc, "utf8"))) setlocale(LC_CTYPE, "C.UTF-8");
    if (repl_open(&r, cfg) < 0) {
        fprintf(stderr, "moerun chat: %s\n", err_get());
        return 1;
    }
    set_system(&r, cfg->system);
    lr_open(&r);
    if (r.tty_in && cfg->verbosity >= 1)
        notice(&r, "Type a message; /help for commands, Ctrl-D or /exit to leave.");
    loop(&r);
    lr_close(&r);
    repl_close(&r);
    signal(SIGINT, SIG_DFL);
    signal(SIGWINCH, SIG_DFL);
    return 0;
}
