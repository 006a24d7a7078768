/* What the Vulkan tests share: the device (lavapipe or a GPU; a SKIP where there is none, a
 * FAIL when MOERUN_REQUIRE_VULKAN=1), host-visible buffers, one kernel run, and the error
 * measure the op tests bound. */
#ifndef MOERUN_VK_TEST_H
#define MOERUN_VK_TEST_H

#include "test.h"
#include "util.h"
#include "vk.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* NULL (after a SKIP or FAIL line named `suite`) when no Vulkan device can be opened. */
__attribute__((unused)) static struct vk_ctx *vk_test_open(const char *suite) {
    struct vk_ctx *c = vk_open(-1, 1);
    if (c) return c;
    const char *req = getenv("MOERUN_REQUIRE_VULKAN");
    if (req && req[0] == '1')
        test_report(suite, 0, "MOERUN_REQUIRE_VULKAN=1 but no device: %s", err_get());
    else
        test_skip(suite, "no Vulkan device: %s", err_get());
    return NULL;
}

/* A mapped buffer holding n floats (or ints) copied from src when given. */
__attribute__((unused)) static struct vk_buf vk_test_buf(struct vk_ctx *c, const void *src,
                                                         size_t bytes) {
    struct vk_buf b;
    if (vk_alloc(c, bytes ? bytes : 4, VK_MEM_HOST, &b)) die("vk_alloc: %s", err_get());
    if (src)
        memcpy(b.map, src, bytes);
    else
        memset(b.map, 0, bytes ? bytes : 4);
    return b;
}

/* Records one kernel, submits and waits; dies on a driver error. */
__attribute__((unused)) static void vk_test_run(struct vk_ctx *c, enum vk_kernel k,
                                                const void *push, uint32_t bytes, uint32_t gx,
                                                uint32_t gy, uint32_t gz) {
    if (vk_begin(c)) die("vk_begin: %s", err_get());
    vk_dispatch(c, k, push, bytes, gx, gy, gz);
    if (vk_submit(c)) die("vk_submit: %s", err_get());
}

/* Normalized mean squared error of got against ref: sum (g - r)^2 / sum r^2. */
__attribute__((unused)) static double vk_test_nmse(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? num / den : num;
}

__attribute__((unused)) static float vk_test_max_diff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

#endif
