/* A seeded splitmix64 generator for tests: reproducible data without libc rand's unspecified
 * sequence. Define RNG_SEED before including to get another sequence. */
#ifndef MOERUN_RNG_TEST_H
#define MOERUN_RNG_TEST_H

#include <math.h>
#include <stdint.h>

#ifndef RNG_SEED
#define RNG_SEED 0x9e3779b97f4a7c15ull
#endif

static uint64_t rng_state = RNG_SEED;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
__attribute__((unused)) static double rng_uniform(void) {
    return (double)(rng_next() >> 11) * 0x1p-53;
}
__attribute__((unused)) static float rng_normal(void) {
    double u = rng_uniform() + 0x1p-60, v = rng_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}
__attribute__((unused)) static int rng_int(int n) { return (int)(rng_next() % (uint64_t)n); }

#endif
