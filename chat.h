/* Chat templates: the family of a model's tokenizer.chat_template, and the prompt text that
 * the model's own Jinja template renders for a conversation.
 *
 * The template text is data: chat_detect looks for markers in it and never executes it; each
 * family's rendering is written once in chat.c and tested byte for byte against the real
 * templates rendered by a Jinja engine (tests/ref/render_templates.mjs). */
#ifndef MOERUN_CHAT_H
#define MOERUN_CHAT_H

#include <stddef.h>
#include <stdint.h>

enum chat_family {
    CHAT_PLAIN,                /* "plain": no template; BOS, then the texts joined by "\n" */
    CHAT_DEEPSEEK3,            /* "deepseek3": DeepSeek-V3 */
    CHAT_DEEPSEEK31,           /* "deepseek3.1": DeepSeek-V3.1 (<think></think> switch) */
    CHAT_DEEPSEEK_R1,          /* "deepseek-r1": R1 and R1-Distill (Qwen, Llama) */
    CHAT_DEEPSEEK_R1_LLAMACPP, /* "deepseek-r1-llamacpp": llama.cpp's R1 template */
    CHAT_DEEPSEEK2,            /* "deepseek2": DeepSeek-V2/V2.5, "User: ... Assistant:" */
    CHAT_CHATML,               /* "chatml": <|im_start|>role ... <|im_end|> */
    CHAT_QWEN25,               /* "qwen2.5": ChatML with Qwen's default system prompt */
    CHAT_QWEN3,                /* "qwen3": ChatML with reasoning kept after the last query */
    CHAT_LLAMA3,               /* "llama3": Llama-3 */
    CHAT_LLAMA31,              /* "llama3.1": Llama-3.1 (system header with dates, always) */
    CHAT_LLAMA2,               /* "llama2": [INST] <<SYS>> ... */
    CHAT_MISTRAL,              /* "mistral": Mistral-7B-Instruct v0.1/v0.2, [INST] x [/INST] */
    CHAT_MISTRAL_NEMO,         /* "mistral-nemo": Mistral-Nemo, [INST]x[/INST] (v3-tekken) */
    CHAT_N_FAMILY
};

struct chat_msg {
    const char *role;    /* "system", "user" or "assistant"; anything else is an error */
    const char *content; /* UTF-8; NULL reads as "" */
};

struct chat_opts {
    int add_generation_prompt; /* end with the text that opens the assistant's reply */
    /* 1 as llama.cpp renders by default (enable_thinking = true). 0 switches reasoning off
     * where the template has a switch (deepseek3.1, qwen3, the newer R1-Distill template);
     * for the other R1 templates, which have none, moerun closes the <think> it opens. */
    int thinking;
    const char *bos_text; /* the BOS token's text, emitted where the template emits it */
    const char *eos_text; /* the EOS token's text, for templates that use eos_token */
};

/* Family of a chat template by its markers; NULL or an unknown template gives CHAT_PLAIN. */
enum chat_family chat_detect(const char *tmpl, size_t len);

const char *chat_family_name(enum chat_family f);

/* For --template NAME: 0 and *out set, or -1 with err_set naming the known families. */
int chat_family_from_name(const char *name, enum chat_family *out);

/* The names of all families, comma separated, for help texts. */
const char *chat_family_names(void);

/* Render n >= 1 messages into *out (malloc'd, NUL-terminated; *out_len its length if
 * out_len is not NULL). The text includes the BOS text when the template emits it, so the
 * tokenizer must not add another BOS; special-token texts in it are meant to be parsed as
 * special tokens. Earlier assistant turns lose their reasoning where the template drops it,
 * so the rendering of a longer conversation need not extend that of a shorter one.
 * Returns 0, or -1 with err_set for an unknown role or a conversation the real template
 * rejects (llama2, mistral, mistral-nemo: roles must alternate user/assistant after an
 * optional leading system message; mistral takes no system message). */
int chat_render(enum chat_family f, const struct chat_msg *msgs, int n,
                const struct chat_opts *opts, char **out, size_t *out_len);

/* ---- with a model file ---- */
struct gguf_file;
struct tokenizer;

/* The family to render a model's conversations with: `name` (a --template override) when
 * given, else the file's tokenizer.chat_template. Returns 1 with *out set, 0 when the file
 * has no template (send text as is), -1 for an unknown name (err set). */
int chat_family_for_file(const struct gguf_file *f, const char *name, enum chat_family *out);

/* A control token's text as templates write it (BOS, EOS), "" when id < 0; malloc'd. */
char *chat_special_text(const struct tokenizer *tok, int32_t id);

/* chat_render with the BOS and EOS texts taken from the model's tokenizer. Tokenize the
 * result with special-token parsing and no added BOS (the rendering has it where due). */
int chat_render_for_model(enum chat_family f, const struct chat_msg *msgs, int n,
                          int add_generation_prompt, int thinking, const struct tokenizer *tok,
                          char **out, size_t *out_len);

#endif
