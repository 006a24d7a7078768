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

#define TEST_EXIT() return test_failures ? 1 : 0

#endif
