/* --check-tensors: every tensor of a GGUF file dequantized and scanned for NaN and Inf. */
#ifndef MOERUN_CHECK_H
#define MOERUN_CHECK_H

#include <stdint.h>

struct gguf_file;

struct check_stats {
    uint64_t n_tensors; /* tensors in the file */
    uint64_t n_checked; /* tensors scanned (all values finite, or the bad one) */
    uint64_t n_skipped; /* tensors of a type moerun cannot dequantize (IQ, integer types) */
    uint64_t n_values;  /* values scanned */
};

/* Scans the tensors in file order, in blocks (memory use is bounded whatever the tensor
 * size). Returns 0 when every value is finite; -1 at the first NaN or Inf, with err_set
 * naming the file, the tensor, its type, the value and the index of the first bad value
 * (flat, and as ggml coordinates [i0, i1, i2, i3]). st (may be NULL) is filled either way. */
int check_tensors(const struct gguf_file *f, struct check_stats *st);

#endif
