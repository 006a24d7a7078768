/* Chat template families: detection by markers, rendering from one table row per family.
 *
 * Each row mirrors its reference template (named in the comment above it); where a template
 * has logic beyond "prefix + content + suffix" a flag or a place/think mode names it, so the
 * renderer below reads as the union of what real templates do. */
#include "chat.h"

#include "gguf.h"
#include "tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define DS_USER "<｜User｜>"
#define DS_ASST "<｜Assistant｜>"
#define DS_EOS "<｜end▁of▁sentence｜>"
#define L3_HEAD(role) "<|start_header_id|>" role "<|end_header_id|>\n\n"
#define IM_START(role) "<|im_start|>" role "\n"

/* Where system messages go. */
enum sys_place {
    SYS_TURN,       /* each is a turn; messages[0] may use head_sys_pre or sys_default */
    SYS_HEAD_ALL,   /* all contents joined by "\n\n" right after BOS (DeepSeek-V3) */
    SYS_HEAD_LAST,  /* the last one's content right after BOS (R1) */
    SYS_FIRST_USER, /* messages[0] only, merged into the first user turn (Llama-2) */
    SYS_LAST_USER,  /* messages[0] only, merged into the last user turn if it ends (Nemo) */
    SYS_NONE,       /* none allowed (Mistral v0.2) */
};

/* What an assistant turn keeps of "<think>...</think>answer". */
enum think_mode {
    THINK_KEEP,        /* everything */
    THINK_AFTER_LAST,  /* the text after the last </think> (R1: split('</think>')[-1]) */
    THINK_AFTER_FIRST, /* the text after the first </think> (V3.1: split('</think>', 1)[1]) */
    THINK_QWEN3,       /* reasoning dropped before the last user query, re-wrapped after it */
};

enum {
    F_BOS = 1 << 0,             /* BOS text opens the prompt */
    F_BOS_PER_USER = 1 << 1,    /* BOS text opens every user turn (Llama-2) */
    F_TRIM = 1 << 2,            /* contents stripped of surrounding whitespace (|trim, .strip()) */
    F_ALTERNATE = 1 << 3,       /* roles must alternate user/assistant, as the template checks */
    F_ASST_EOS = 1 << 4,        /* eos_text closes assistant turns, after asst_suf */
    F_ASST_AFTER_USER = 1 << 5, /* asst_pre and the generation prompt only follow a user turn */
    F_SEP_NL = 1 << 6,          /* a newline between messages (plain) */
};

struct family {
    const char *name;
    enum sys_place sys;
    enum think_mode think;
    unsigned flags;
    const char *head_sys_pre; /* for a system messages[0] under SYS_TURN; NULL: sys_pre */
    const char *sys_default;  /* SYS_TURN head when messages[0] is not system; NULL: none */
    const char *sys_pre, *sys_suf;
    const char *user_pre, *user_suf;
    const char *asst_pre, *asst_suf;
    const char *gen, *gen_nothink;     /* generation prompt with thinking on / off */
    const char *merge_pre, *merge_mid; /* SYS_*_USER: merge_pre + system + merge_mid + user */
};

static const struct family families[CHAT_N_FAMILY] = {
    /* no template: BOS, then the message texts one per line, for base models */
    [CHAT_PLAIN] = {.name = "plain", .flags = F_BOS | F_SEP_NL},
    /* deepseek-ai/DeepSeek-V3 */
    [CHAT_DEEPSEEK3] = {.name = "deepseek3",
                        .sys = SYS_HEAD_ALL,
                        .flags = F_BOS,
                        .user_pre = DS_USER,
                        .asst_pre = DS_ASST,
                        .asst_suf = DS_EOS,
                        .gen = DS_ASST,
                        .gen_nothink = DS_ASST},
    /* deepseek-ai/DeepSeek-V3.1 */
    [CHAT_DEEPSEEK31] = {.name = "deepseek3.1",
                         .sys = SYS_HEAD_ALL,
                         .think = THINK_AFTER_FIRST,
                         .flags = F_BOS | F_ASST_AFTER_USER,
                         .user_pre = DS_USER,
                         .asst_pre = DS_ASST "<think></think>",
                         .asst_suf = DS_EOS,
                         .gen = DS_ASST "<think>",
                         .gen_nothink = DS_ASST "<think></think>"},
    /* deepseek-ai/DeepSeek-R1-Distill-Qwen-32B, -Llama-8B */
    [CHAT_DEEPSEEK_R1] = {.name = "deepseek-r1",
                          .sys = SYS_HEAD_LAST,
                          .think = THINK_AFTER_LAST,
                          .flags = F_BOS,
                          .user_pre = DS_USER,
                          .asst_pre = DS_ASST,
                          .asst_suf = DS_EOS,
                          .gen = DS_ASST "<think>\n",
                          .gen_nothink = DS_ASST "<think>\n</think>"},
    /* llama.cpp models/templates/llama-cpp-deepseek-r1.jinja: user turns end with EOS */
    [CHAT_DEEPSEEK_R1_LLAMACPP] = {.name = "deepseek-r1-llamacpp",
                                   .sys = SYS_HEAD_LAST,
                                   .think = THINK_AFTER_LAST,
                                   .flags = F_BOS,
                                   .user_pre = DS_USER,
                                   .user_suf = DS_EOS,
                                   .asst_pre = DS_ASST,
                                   .asst_suf = DS_EOS,
                                   .gen = DS_ASST "<think>\n",
                                   .gen_nothink = DS_ASST "<think>\n</think>"},
    /* deepseek-ai/DeepSeek-V2-Lite-Chat */
    [CHAT_DEEPSEEK2] = {.name = "deepseek2",
                        .flags = F_BOS | F_ASST_EOS,
                        .sys_suf = "\n\n",
                        .user_pre = "User: ",
                        .user_suf = "\n\n",
                        .asst_pre = "Assistant: ",
                        .gen = "Assistant:",
                        .gen_nothink = "Assistant:"},
    /* teknium/OpenHermes-2.5-Mistral-7B */
    [CHAT_CHATML] = {.name = "chatml",
                     .sys_pre = IM_START("system"),
                     .sys_suf = "<|im_end|>\n",
                     .user_pre = IM_START("user"),
                     .user_suf = "<|im_end|>\n",
                     .asst_pre = IM_START("assistant"),
                     .asst_suf = "<|im_end|>\n",
                     .gen = IM_START("assistant"),
                     .gen_nothink = IM_START("assistant")},
    /* Qwen/Qwen2.5-7B-Instruct */
    [CHAT_QWEN25] = {.name = "qwen2.5",
                     .sys_default = "You are Qwen, created by Alibaba Cloud. You are a helpful "
                                    "assistant.",
                     .sys_pre = IM_START("system"),
                     .sys_suf = "<|im_end|>\n",
                     .user_pre = IM_START("user"),
                     .user_suf = "<|im_end|>\n",
                     .asst_pre = IM_START("assistant"),
                     .asst_suf = "<|im_end|>\n",
                     .gen = IM_START("assistant"),
                     .gen_nothink = IM_START("assistant")},
    /* Qwen/Qwen3-0.6B */
    [CHAT_QWEN3] = {.name = "qwen3",
                    .think = THINK_QWEN3,
                    .sys_pre = IM_START("system"),
                    .sys_suf = "<|im_end|>\n",
                    .user_pre = IM_START("user"),
                    .user_suf = "<|im_end|>\n",
                    .asst_pre = IM_START("assistant"),
                    .asst_suf = "<|im_end|>\n",
                    .gen = IM_START("assistant"),
                    .gen_nothink = IM_START("assistant") "<think>\n\n</think>\n\n"},
    /* meta-llama/Meta-Llama-3-8B-Instruct */
    [CHAT_LLAMA3] = {.name = "llama3",
                     .flags = F_BOS | F_TRIM,
                     .sys_pre = L3_HEAD("system"),
                     .sys_suf = "<|eot_id|>",
                     .user_pre = L3_HEAD("user"),
                     .user_suf = "<|eot_id|>",
                     .asst_pre = L3_HEAD("assistant"),
                     .asst_suf = "<|eot_id|>",
                     .gen = L3_HEAD("assistant"),
                     .gen_nothink = L3_HEAD("assistant")},
    /* meta-llama/Llama-3.1-8B-Instruct, without tools (date_string's default) */
    [CHAT_LLAMA31] = {.name = "llama3.1",
                      .flags = F_BOS | F_TRIM,
                      .head_sys_pre = L3_HEAD("system") "Cutting Knowledge Date: December 2023\n"
                                                        "Today Date: 26 Jul 2024\n\n",
                      .sys_default = "",
                      .sys_pre = L3_HEAD("system"),
                      .sys_suf = "<|eot_id|>",
                      .user_pre = L3_HEAD("user"),
                      .user_suf = "<|eot_id|>",
                      .asst_pre = L3_HEAD("assistant"),
                      .asst_suf = "<|eot_id|>",
                      .gen = L3_HEAD("assistant"),
                      .gen_nothink = L3_HEAD("assistant")},
    /* meta-llama/Llama-2-7b-chat-hf: no generation prompt, the prompt ends with [/INST] */
    [CHAT_LLAMA2] = {.name = "llama2",
                     .sys = SYS_FIRST_USER,
                     .flags = F_BOS_PER_USER | F_TRIM | F_ALTERNATE | F_ASST_EOS,
                     .user_pre = "[INST] ",
                     .user_suf = " [/INST]",
                     .asst_pre = " ",
                     .asst_suf = " ",
                     .merge_pre = "<<SYS>>\n",
                     .merge_mid = "\n<</SYS>>\n\n"},
    /* mistralai/Mistral-7B-Instruct-v0.2 */
    [CHAT_MISTRAL] = {.name = "mistral",
                      .sys = SYS_NONE,
                      .flags = F_BOS | F_ALTERNATE | F_ASST_EOS,
                      .user_pre = "[INST] ",
                      .user_suf = " [/INST]"},
    /* mistralai/Mistral-Nemo-Instruct-2407 */
    [CHAT_MISTRAL_NEMO] = {.name = "mistral-nemo",
                           .sys = SYS_LAST_USER,
                           .flags = F_BOS | F_ALTERNATE | F_ASST_EOS,
                           .user_pre = "[INST]",
                           .user_suf = "[/INST]",
                           .merge_pre = "",
                           .merge_mid = "\n\n"},
};

/* ---- detection ---- */

/* First match wins, so a variant's rule precedes its family's. Markers are as the templates
 * spell them (DeepSeek's bars are U+FF5C, its word separators U+2581). */
static const struct {
    enum chat_family family;
    const char *all[2]; /* every non-NULL marker must occur */
} rules[] = {
    {CHAT_DEEPSEEK31, {DS_ASST, "<think></think>"}},
    {CHAT_DEEPSEEK_R1_LLAMACPP, {DS_USER "' + message['content'] + '" DS_EOS, NULL}},
    {CHAT_DEEPSEEK_R1, {DS_ASST, "</think>"}},
    {CHAT_DEEPSEEK3, {DS_ASST, NULL}},
    {CHAT_QWEN3, {"<|im_start|>", "</think>"}},
    {CHAT_QWEN25, {"<|im_start|>", "You are Qwen, created by Alibaba Cloud."}},
    {CHAT_CHATML, {"<|im_start|>", NULL}},
    {CHAT_LLAMA31, {"<|start_header_id|>", "Cutting Knowledge Date"}},
    {CHAT_LLAMA3, {"<|start_header_id|>", NULL}},
    {CHAT_LLAMA2, {"[INST]", "<<SYS>>"}},
    {CHAT_MISTRAL, {"[INST] ", NULL}},
    {CHAT_MISTRAL_NEMO, {"[INST]", NULL}},
    {CHAT_DEEPSEEK2, {"User: ", "Assistant:"}},
};

static int contains(const char *hay, size_t len, const char *needle) {
    size_t m = strlen(needle);
    if (m > len) return 0;
    for (size_t i = 0; i + m <= len; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0) return 1;
    return 0;
}

enum chat_family chat_detect(const char *tmpl, size_t len) {
    if (!tmpl) return CHAT_PLAIN;
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        int ok = 1;
        for (int k = 0; k < 2 && ok; k++)
            if (rules[r].all[k]) ok = contains(tmpl, len, rules[r].all[k]);
        if (ok) return rules[r].family;
    }
    return CHAT_PLAIN;
}

const char *chat_family_name(enum chat_family f) {
    return (unsigned)f < CHAT_N_FAMILY ? families[f].name : "unknown";
}

const char *chat_family_names(void) {
    return "plain, deepseek3, deepseek3.1, deepseek-r1, deepseek-r1-llamacpp, deepseek2, "
           "chatml, qwen2.5, qwen3, llama3, llama3.1, llama2, mistral, mistral-nemo";
}

int chat_family_from_name(const char *name, enum chat_family *out) {
    for (int f = 0; name && f < CHAT_N_FAMILY; f++) {
        if (strcmp(name, families[f].name) == 0) {
            *out = (enum chat_family)f;
            return 0;
        }
    }
    err_set("chat template \"%s\" is unknown (expected one of: %s)", name ? name : "(null)",
            chat_family_names());
    return -1;
}

/* ---- text helpers ---- */

struct sbuf {
    char *p;
    size_t n, cap;
};

static void sb_put(struct sbuf *b, const char *s, size_t len) {
    if (b->n + len + 1 > b->cap) {
        b->cap = (b->n + len + 1) * 2;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void sb_puts(struct sbuf *b, const char *s) {
    if (s) sb_put(b, s, strlen(s));
}

/* A borrowed span of a message. */
struct span {
    const char *p;
    size_t n;
};

static struct span span_of(const char *s) { return (struct span){s ? s : "", s ? strlen(s) : 0}; }

/* Length of the whitespace character ending at s[n-1] / starting at s[0], 0 if none. Python's
 * str.strip() set (what Jinja's trim and .strip() use in transformers): ASCII whitespace,
 * \x1c-\x1f, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000. */
static size_t ws_len_at(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n < 3) return 0;
    uint32_t c = ((uint32_t)(s[0] & 0x0f) << 12) | ((uint32_t)(s[1] & 0x3f) << 6) | (s[2] & 0x3f);
    if ((s[0] & 0xf0) != 0xe0 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
    int ws = c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
             c == 0x202f || c == 0x205f || c == 0x3000;
    return ws ? 3 : 0;
}

static struct span trim(struct span s) {
    const unsigned char *p = (const unsigned char *)s.p;
    size_t k;
    while (s.n && (k = ws_len_at(p, s.n)) > 0) p += k, s.n -= k;
    for (int again = 1; again && s.n;) {
        again = 0;
        for (k = 1; k <= 3 && k <= s.n; k++) {
            if (ws_len_at(p + s.n - k, k) == k) {
                s.n -= k;
                again = 1;
                break;
            }
        }
    }
    s.p = (const char *)p;
    return s;
}

/* Python's s.lstrip('\n') / s.rstrip('\n'). */
static struct span lstrip_nl(struct span s) {
    while (s.n && s.p[0] == '\n') s.p++, s.n--;
    return s;
}

static struct span rstrip_nl(struct span s) {
    while (s.n && s.p[s.n - 1] == '\n') s.n--;
    return s;
}

/* Position of the first / last occurrence of needle in s, or NULL. */
static const char *find_first(struct span s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= s.n; i++)
        if (memcmp(s.p + i, needle, m) == 0) return s.p + i;
    return NULL;
}

static const char *find_last(struct span s, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = s.n >= m ? s.n - m + 1 : 0; i-- > 0;)
        if (memcmp(s.p + i, needle, m) == 0) return s.p + i;
    return NULL;
}

static struct span after(struct span s, const char *at, size_t skip) {
    size_t off = (size_t)(at - s.p) + skip;
    return (struct span){s.p + off, s.n - off};
}

/* ---- rendering ---- */

enum role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

struct render {
    const struct family *fam;
    const struct chat_opts *opts;
    const struct chat_msg *msgs;
    const enum role *roles;
    int n;
    int first;       /* first message of the turn loop (after a consumed system) */
    struct span sys; /* the system text merged into a user turn, if any */
    int sys_into;    /* index of the user turn that receives it, -1 if none */
    int last_query;  /* Qwen3: index of the last user message */
    struct sbuf out;
};

static int parse_roles(const struct chat_msg *msgs, int n, enum role *roles) {
    static const char *const names[] = {"system", "user", "assistant"};
    for (int i = 0; i < n; i++) {
        int r = 0;
        while (r < 3 && !(msgs[i].role && strcmp(msgs[i].role, names[r]) == 0)) r++;
        if (r == 3) {
            err_set("chat_render: message %d has role \"%s\", expected system, user or "
                    "assistant",
                    i, msgs[i].role ? msgs[i].role : "(null)");
            return -1;
        }
        roles[i] = (enum role)r;
    }
    return 0;
}

/* The templates' own check, (role == 'user') != (index % 2 == 0) over the turn loop. */
static int check_alternation(const struct render *r) {
    for (int i = r->first; i < r->n; i++) {
        if ((r->roles[i] == ROLE_USER) != ((i - r->first) % 2 == 0)) {
            err_set("chat_render: %s template: after an optional system message, roles must "
                    "alternate user/assistant (message %d is %s)",
                    r->fam->name, i, r->msgs[i].role);
            return -1;
        }
    }
    return 0;
}

static struct span content(const struct render *r, int i) {
    struct span s = span_of(r->msgs[i].content);
    return r->fam->flags & F_TRIM ? trim(s) : s;
}

static void put_turn(struct render *r, const char *pre, struct span body, const char *suf) {
    sb_puts(&r->out, pre);
    sb_put(&r->out, body.p, body.n);
    sb_puts(&r->out, suf);
}

/* DeepSeek: system text right after BOS, every system message's (joined by a blank line)
 * or only the last one's. */
static void render_head_deepseek(struct render *r) {
    int last = -1;
    for (int i = 0; i < r->n; i++) {
        if (r->roles[i] != ROLE_SYSTEM) continue;
        if (r->fam->sys == SYS_HEAD_ALL) {
            if (last >= 0) sb_puts(&r->out, "\n\n");
            sb_puts(&r->out, r->msgs[i].content);
        }
        last = i;
    }
    if (r->fam->sys == SYS_HEAD_LAST && last >= 0) sb_puts(&r->out, r->msgs[last].content);
}

/* System text that opens the prompt; sets r->first past a consumed messages[0]. */
static void render_head(struct render *r) {
    const struct family *f = r->fam;
    int has_sys0 = r->roles[0] == ROLE_SYSTEM;
    r->sys_into = -1;
    if (f->sys == SYS_HEAD_ALL || f->sys == SYS_HEAD_LAST) {
        render_head_deepseek(r);
    } else if (f->sys == SYS_TURN && (has_sys0 || f->sys_default)) {
        struct span s = has_sys0 ? content(r, 0) : span_of(f->sys_default);
        put_turn(r, f->head_sys_pre ? f->head_sys_pre : f->sys_pre, s, f->sys_suf);
        r->first = has_sys0;
    } else if ((f->sys == SYS_FIRST_USER || f->sys == SYS_LAST_USER) && has_sys0) {
        r->sys = span_of(r->msgs[0].content);
        r->first = 1;
        /* Llama-2 merges into the first turn; Nemo into the last, only if it is a user turn
         * that ends the conversation (otherwise the system text is dropped). */
        r->sys_into = f->sys == SYS_FIRST_USER ? 1 : r->n - 1;
    }
}

static void render_user(struct render *r, int i) {
    const struct family *f = r->fam;
    struct span s = span_of(r->msgs[i].content);
    char *merged = NULL;
    if (i == r->sys_into && r->roles[i] == ROLE_USER) {
        struct sbuf m = {0};
        sb_puts(&m, f->merge_pre);
        sb_put(&m, r->sys.p, r->sys.n);
        sb_puts(&m, f->merge_mid);
        sb_put(&m, s.p, s.n);
        merged = m.p;
        s = (struct span){m.p ? m.p : "", m.n};
    }
    if (f->flags & F_TRIM) s = trim(s);
    if (f->flags & F_BOS_PER_USER) sb_puts(&r->out, r->opts->bos_text);
    put_turn(r, f->user_pre, s, f->user_suf);
    free(merged);
}

/* Qwen3: turns after the last user query keep their reasoning, re-wrapped in <think>; the
 * final turn always gets a <think> block; earlier turns keep only the answer. */
static void render_qwen3_assistant(struct render *r, int i) {
    const struct family *f = r->fam;
    struct span c = span_of(r->msgs[i].content), reason = {"", 0};
    const char *close = find_first(c, "</think>");
    if (close) {
        struct span before = rstrip_nl((struct span){c.p, (size_t)(close - c.p)});
        const char *open = find_last(before, "<think>");
        reason = lstrip_nl(open ? after(before, open, 7) : before);
        c = lstrip_nl(after(c, find_last(c, "</think>"), 8));
    }
    sb_puts(&r->out, f->asst_pre);
    if (i > r->last_query && (i == r->n - 1 || reason.n)) {
        sb_puts(&r->out, "<think>\n");
        reason = rstrip_nl(lstrip_nl(reason));
        sb_put(&r->out, reason.p, reason.n);
        sb_puts(&r->out, "\n</think>\n\n");
        c = lstrip_nl(c);
    }
    sb_put(&r->out, c.p, c.n);
    sb_puts(&r->out, f->asst_suf);
}

static void render_assistant(struct render *r, int i, int after_user) {
    const struct family *f = r->fam;
    if (f->think == THINK_QWEN3) {
        render_qwen3_assistant(r, i);
        return;
    }
    struct span c = content(r, i);
    if (f->think != THINK_KEEP) {
        const char *at =
            f->think == THINK_AFTER_LAST ? find_last(c, "</think>") : find_first(c, "</think>");
        if (at) c = after(c, at, 8);
    }
    if (after_user || !(f->flags & F_ASST_AFTER_USER)) sb_puts(&r->out, f->asst_pre);
    put_turn(r, NULL, c, f->asst_suf);
    if (f->flags & F_ASST_EOS) sb_puts(&r->out, r->opts->eos_text);
}

static int last_query_index(const struct render *r) {
    for (int i = r->n - 1; i >= 0; i--) {
        struct span c = span_of(r->msgs[i].content);
        int tool = c.n >= 31 && memcmp(c.p, "<tool_response>", 15) == 0 &&
                   memcmp(c.p + c.n - 16, "</tool_response>", 16) == 0;
        if (r->roles[i] == ROLE_USER && !tool) return i;
    }
    return r->n - 1;
}

static int render_turns(struct render *r) {
    const struct family *f = r->fam;
    int after_user = 0;
    for (int i = r->first; i < r->n; i++) {
        if (i > 0 && (f->flags & F_SEP_NL)) sb_puts(&r->out, "\n");
        switch (r->roles[i]) {
        case ROLE_SYSTEM:
            if (f->sys == SYS_TURN) put_turn(r, f->sys_pre, content(r, i), f->sys_suf);
            if (f->sys == SYS_LAST_USER || f->sys == SYS_NONE) {
                err_set("chat_render: %s template: a system message is allowed only first "
                        "(message %d)",
                        f->name, i);
                return -1;
            }
            break;
        case ROLE_USER:
            render_user(r, i);
            after_user = 1;
            break;
        case ROLE_ASSISTANT:
            render_assistant(r, i, after_user);
            after_user = 0;
            break;
        }
    }
    if (r->opts->add_generation_prompt && (after_user || !(f->flags & F_ASST_AFTER_USER)))
        sb_puts(&r->out, r->opts->thinking ? f->gen : f->gen_nothink);
    return 0;
}

int chat_render(enum chat_family f, const struct chat_msg *msgs, int n,
                const struct chat_opts *opts, char **out, size_t *out_len) {
    if ((unsigned)f >= CHAT_N_FAMILY || n < 1 || !msgs || !opts || !out) {
        err_set("chat_render: expected a known family and at least one message (family %d, "
                "%d messages)",
                (int)f, n);
        return -1;
    }
    enum role *roles = xmalloc((size_t)n * sizeof *roles);
    struct render r = {.fam = &families[f], .opts = opts, .msgs = msgs, .roles = roles, .n = n};
    int rc = parse_roles(msgs, n, roles);
    if (rc == 0 && (r.fam->flags & F_BOS)) sb_puts(&r.out, opts->bos_text);
    if (rc == 0) render_head(&r);
    if (rc == 0 && (r.fam->flags & F_ALTERNATE)) rc = check_alternation(&r);
    r.last_query = last_query_index(&r);
    if (rc == 0) rc = render_turns(&r);
    free(roles);
    if (rc != 0) {
        free(r.out.p);
        *out = NULL;
        return -1;
    }
    if (!r.out.p) sb_put(&r.out, "", 0);
    *out = r.out.p;
    if (out_len) *out_len = r.out.n;
    return 0;
}

/* ---- with a model file ---- */

int chat_family_for_file(const struct gguf_file *f, const char *name, enum chat_family *out) {
    if (name) return chat_family_from_name(name, out) < 0 ? -1 : 1;
    struct gguf_str tmpl = {0, NULL};
    if (gguf_get_str(f, "tokenizer.chat_template", &tmpl) != 0 || !tmpl.len) return 0;
    *out = chat_detect(tmpl.data, tmpl.len);
    return 1;
}

char *chat_special_text(const struct tokenizer *tok, int32_t id) {
    int cap = tokenizer_max_piece(tok);
    char *buf = xcalloc((size_t)cap + 1, 1);
    int n = id >= 0 ? tokenizer_piece(tok, id, 1, buf, (size_t)cap) : 0;
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

int chat_render_for_model(enum chat_family f, const struct chat_msg *msgs, int n,
                          int add_generation_prompt, int thinking, const struct tokenizer *tok,
                          char **out, size_t *out_len) {
    char *bos = chat_special_text(tok, tokenizer_bos(tok));
    char *eos = chat_special_text(tok, tokenizer_eos(tok));
    struct chat_opts opts = {.add_generation_prompt = add_generation_prompt,
                             .thinking = thinking,
                             .bos_text = bos,
                             .eos_text = eos};
    int rc = chat_render(f, msgs, n, &opts, out, out_len);
    free(bos);
    free(eos);
    return rc;
}
