/* Tokenizers named by tokenizer.ggml.model: "llama" (SentencePiece BPE with byte fallback)
 * and "gpt2" (byte-level BPE split first by the pre-tokenizer tokenizer.ggml.pre names).
 * Both match llama.cpp's ids exactly. Detokenization streams UTF-8 safely. */
#ifndef MOERUN_TOKENIZER_H
#define MOERUN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct gguf_file;

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum token_type {
    TOKEN_UNDEFINED = 0,
    TOKEN_NORMAL = 1,
    TOKEN_UNKNOWN = 2,
    TOKEN_CONTROL = 3,
    TOKEN_USER_DEFINED = 4,
    TOKEN_UNUSED = 5,
    TOKEN_BYTE = 6,
};

enum tokenizer_kind { TOKENIZER_SPM = 1, TOKENIZER_BPE = 2 };

struct tokenizer; /* opaque */

/* Reads tokenizer.ggml.* from an open file (the strings stay views into its map, so the file
 * must outlive the tokenizer). Returns NULL with err set naming the file and key. */
struct tokenizer *tokenizer_load(const struct gguf_file *f);
void tokenizer_free(struct tokenizer *t);

enum tokenizer_kind tokenizer_kind(const struct tokenizer *t);
/* The pre-tokenizer rules in use ("llama3", "qwen2", "deepseek-v3", ... or "default" when
 * tokenizer.ggml.pre is missing or unknown, which also prints one warning on stderr at
 * load); NULL for SPM. */
const char *tokenizer_pre(const struct tokenizer *t);
int32_t tokenizer_n_vocab(const struct tokenizer *t);
int32_t tokenizer_bos(const struct tokenizer *t); /* -1 when the file has none */
int32_t tokenizer_eos(const struct tokenizer *t); /* -1 when the file has none */
/* tokenizer.ggml.add_bos_token; default 1 for SPM and llama3-style BPE, else 0. */
int tokenizer_add_bos(const struct tokenizer *t);
/* True for ids that end generation (EOS, EOT and the like). */
int tokenizer_is_eog(const struct tokenizer *t, int32_t id);
int tokenizer_add_eos(const struct tokenizer *t);          /* add_eos_token, default 0 */
int tokenizer_add_space_prefix(const struct tokenizer *t); /* default 1 for SPM, 0 for BPE */
/* Bytes the longest piece can take: a buffer this big never fails tokenizer_piece. */
int tokenizer_max_piece(const struct tokenizer *t);
/* The id whose text is exactly text[0..len) (e.g. "<|im_start|>"), or -1. */
int32_t tokenizer_find(const struct tokenizer *t, const char *text, size_t len);
/* TOKEN_UNDEFINED for ids out of range. */
enum token_type tokenizer_token_type(const struct tokenizer *t, int32_t id);

/* Tokenizes len bytes of text. add_bos prepends BOS; parse_special matches control and
 * user-defined token texts in the input. Returns the number of ids written to *out (a
 * malloc'd array the caller frees), or -1 with err set. */
int64_t tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, int add_bos,
                         int parse_special, int32_t **out);

/* The bytes a token stands for when printed: SPM byte tokens <0xXX> give their byte and
 * U+2581 becomes a space; BPE tokens map each character back to the byte it encodes (a
 * piece may be part of a UTF-8 character); control tokens give "" unless show_special;
 * user-defined tokens give their text. Returns length written (at most cap), or -1 for an
 * id out of range or cap < tokenizer_max_piece's need (err set). */
int tokenizer_piece(const struct tokenizer *t, int32_t id, int show_special, char *buf, size_t cap);

/* The text of n ids, as a streaming printer shows it: pieces joined, the leading space of
 * the first one dropped when add_space_prefix holds (SPM), broken UTF-8 as U+FFFD. No
 * clean-up of spaces before punctuation, so decoding the ids of valid UTF-8 text gives that
 * text back byte for byte. Writes at most cap bytes (no NUL) and returns the full length
 * (call with cap 0 to size the buffer), or -1 for an id out of range (err set). */
int64_t tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, int show_special,
                         char *out, size_t cap);

/* Streaming detokenizer: feed pieces, get back only complete UTF-8 characters; a character
 * split over several tokens is emitted once it is whole. Invalid sequences come out as
 * U+FFFD rather than being held forever. */
struct detok_stream {
    char pending[8];
    int n_pending;
    int at_start; /* SPM: drop the leading space of the first piece after BOS */
};
void detok_init(struct detok_stream *d, int strip_leading_space);
/* Output room detok_push needs for a piece of len bytes: every invalid byte can become a
 * 3-byte U+FFFD, so len + 8 is not enough. A smaller cap is a caller bug (die). */
#define DETOK_OUT_CAP(len) (3 * (size_t)(len) + 12)
/* Appends complete characters of (pending + piece) to out (cap >= DETOK_OUT_CAP(len));
 * returns bytes written. */
size_t detok_push(struct detok_stream *d, const char *piece, size_t len, char *out, size_t cap);
/* Emits whatever is left (as U+FFFD for an incomplete character); cap >= 3. */
size_t detok_flush(struct detok_stream *d, char *out, size_t cap);

#endif
