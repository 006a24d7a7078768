/* moerun quantize: rewrites a GGUF model with its weights in another block format, with
 * llama-quantize's choice of type per tensor and its bytes. */
#ifndef MOERUN_QUANTIZE_H
#define MOERUN_QUANTIZE_H

/* The subcommand. argv holds the arguments after "quantize" (argv[0] is the first of them,
 * argc counts them). Prints the per-tensor lines and the summary on stderr; returns the exit
 * status: 0 done (or --help), 1 error (usage or file; nothing written), 130 interrupted. */
int cmd_quantize(int argc, char **argv);

/* The --help text, starting "usage: moerun quantize". */
extern const char *const quantize_usage;

#endif
