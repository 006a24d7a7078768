/* Shared helpers: the error buffer, fatal errors, checked allocation, time. */
#ifndef MOERUN_UTIL_H
#define MOERUN_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Errors from untrusted input: a function records one line with err_set and returns
 * a negative status; the caller (finally main) prints err_get() on stderr. */
void err_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *err_get(void);

/* Internal invariants and out-of-memory: print file:line and exit(1), also in release. */
_Noreturn void die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define die(...) die_at(__FILE__, __LINE__, __VA_ARGS__)

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* 64-byte aligned allocation for SIMD rows; free with free(). */
void *xaligned_alloc(size_t n);

/* Overflow-safe size arithmetic: return 0 on success, -1 on overflow. */
int size_mul(uint64_t a, uint64_t b, uint64_t *out);
int size_add(uint64_t a, uint64_t b, uint64_t *out);

double time_now(void); /* monotonic seconds */

/* True when path exists and is not a regular file or directory (/dev/null, a FIFO): output
 * goes straight to it, since renaming a temporary file over it would replace the device. */
int path_is_special(const char *path);

#endif
