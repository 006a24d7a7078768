/* moerun convert: a Hugging Face checkpoint directory (config.json, tokenizer files,
 * safetensors, single or sharded) to one GGUF file in llama.cpp's layout, tensor by tensor. */
#ifndef MOERUN_CONVERT_H
#define MOERUN_CONVERT_H

#include <stdint.h>

struct gguf_writer;
struct json;

extern const char *const convert_usage;

/* argv holds the arguments after "convert". Returns the process exit status: 0, or 1 after
 * one "moerun convert: ..." line on stderr (no OUT file exists then). */
int cmd_convert(int argc, char **argv);

/* tokenizer.json / tokenizer_config.json (in dir) to tokenizer.* keys; vocab_size from
 * config.json pads the token list as llama.cpp does. Returns 0 or -1 with err set.
 * (tools/convert_vocab.c) */
int convert_vocab(struct gguf_writer *w, const char *dir, const struct json *config,
                  int64_t vocab_size);

#endif
