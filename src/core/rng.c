/* xoshiro256** (Blackman & Vigna), seeded through splitmix64. Small, fast, and the same
 * stream on every platform, which is what reproducible runs and resumes need. */
#include <math.h>
#include "fdpo/core.h"

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fdpo_rng_seed(fdpo_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fdpo_rng_u64(fdpo_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double fdpo_rng_uniform(fdpo_rng *r) { return (double)(fdpo_rng_u64(r) >> 11) * 0x1.0p-53; }

double fdpo_rng_normal(fdpo_rng *r) {
    double u1 = fdpo_rng_uniform(r), u2 = fdpo_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t fdpo_rng_below(fdpo_rng *r, uint64_t n) {
    if (n == 0) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* reject the biased tail */
    uint64_t x;
    do { x = fdpo_rng_u64(r); } while (x >= limit);
    return x % n;
}

void fdpo_rng_shuffle(fdpo_rng *r, size_t *idx, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)fdpo_rng_below(r, i);
        size_t t = idx[i - 1]; idx[i - 1] = idx[j]; idx[j] = t;
    }
}
