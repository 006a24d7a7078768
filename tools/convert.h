/* moerun convert: a Hugging Face checkpoint directory (config.json, tokenizer files,
 * safetensors, single or sharded) to one GGUF file in llama.cpp's layout, tensor by tensor. */
#ifndef MOERUN_CONVERT_H
#define MOERUN_CONVERT_H

#include <stddef.h>
#include <stdint.h>

struct gguf_writer;
struct json;

extern const char *const convert_usage;

/* argv holds the arguments after "convert". Returns the process exit status: 0, or 1 after
 * one "moerun convert: ..." line on stderr (no OUT file exists then). */
int cmd_convert(int argc, char **argv);

/* The tokenizer files in dir (tokenizer.model or tokenizer.json, tokenizer_config.json,
 * added_tokens.json) to tokenizer.* keys, chosen and filled as llama.cpp's converter does for
 * the config.json architecture arch; vocab_size from config.json pads the token list.
 * Returns 0 or -1 with err set. (tools/convert_vocab.c) */
int convert_vocab(struct gguf_writer *w, const char *dir, const struct json *config,
                  int64_t vocab_size, const char *arch);

/* A SentencePiece tokenizer.model (a serialized sentencepiece.ModelProto): its pieces with
 * their scores and types. (tools/convert_spm.c) */
enum spm_type {
    SPM_NORMAL = 1,
    SPM_UNKNOWN = 2,
    SPM_CONTROL = 3,
    SPM_USER_DEFINED = 4,
    SPM_UNUSED = 5,
    SPM_BYTE = 6
};
struct spm_piece {
    char *text; /* UTF-8, not empty, no NUL */
    float score;
    int32_t type; /* enum spm_type */
};
struct spm_model {
    struct spm_piece *pieces;
    int64_t n;
};
/* Parses buf[0..len); file names it in messages. Returns 0, or -1 with err set to
 * "FILE: FIELD at offset N: problem" (nothing to free then). */
int spm_parse(struct spm_model *m, const char *file, const uint8_t *buf, size_t len);
/* Reads and parses the file at path. */
int spm_load(struct spm_model *m, const char *path);
void spm_free(struct spm_model *m);

#endif
