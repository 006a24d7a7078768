/* A tiny test harness: each test binary prints one line per case, "ok NAME",
 * "FAIL NAME: why" or "SKIP NAME: why"; tests/run.sh counts them. */
#ifndef MOERUN_TEST_H
#define MOERUN_TEST_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures;

__attribute__((format(printf, 3, 4), unused)) static int test_report(const char *name, int ok,
                                                                     const char *fmt, ...) {
    va_list ap;
    printf("%s %s", ok ? "ok" : "FAIL", name);
    if (fmt && fmt[0]) {
        printf(": ");
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
    printf("\n");
    fflush(stdout);
    if (!ok) test_failures++;
    return ok;
}

__attribute__((format(printf, 2, 3), unused)) static void test_skip(const char *name,
                                                                    const char *fmt, ...) {
    va_list ap;
    printf("SKIP %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* Root of ../shared/fixtures, overridable with MOERUN_FIXTURES. */
__attribute__((unused)) static const char *test_fixtures(void) {
    const char *e = getenv("MOERUN_FIXTURES");
    return e && e[0] ? e : "../shared/fixtures";
}

/* The whole file as a NUL-terminated buffer (caller frees); NULL if unreadable. */
__attribute__((unused)) static char *test_read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, fp)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(fp);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

__attribute__((unused)) static int test_file_exists(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    fclose(fp);
    return 1;
}

#define TEST_EXIT() return test_failures ? 1 : 0

#endif
