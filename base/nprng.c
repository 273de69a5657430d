/* nprng.c - numpy-exact SeedSequence / PCG64 / bounded integers. */
#include "nprng.h"

#define INIT_A 0x43b0d7e5u
#define MULT_A 0x931e8875u
#define INIT_B 0x8b51f9ddu
#define MULT_B 0x58f38dedu
#define MIX_MULT_L 0xca01f9ddu
#define MIX_MULT_R 0x4973f715u
#define XSHIFT 16
#define POOL 4

size_t eg_np_seed_words(uint64_t seed, uint32_t words[2])
{
    words[0] = (uint32_t)seed;
    words[1] = (uint32_t)(seed >> 32);
    return words[1] ? 2 : 1;
}

static uint32_t hashmix(uint32_t v, uint32_t *hc)
{
    v ^= *hc;
    *hc *= MULT_A;
    v *= *hc;
    v ^= v >> XSHIFT;
    return v;
}

static uint32_t mix(uint32_t x, uint32_t y)
{
    uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
    r ^= r >> XSHIFT;
    return r;
}

void eg_np_seedseq_pool(const uint32_t *words, size_t n, uint32_t pool[4])
{
    uint32_t hc = INIT_A;
    for (size_t i = 0; i < POOL; i++)
        pool[i] = hashmix(i < n ? words[i] : 0u, &hc);
    for (size_t src = 0; src < POOL; src++)
        for (size_t dst = 0; dst < POOL; dst++)
            if (src != dst)
                pool[dst] = mix(pool[dst], hashmix(pool[src], &hc));
    for (size_t src = POOL; src < n; src++)
        for (size_t dst = 0; dst < POOL; dst++)
            pool[dst] = mix(pool[dst], hashmix(words[src], &hc));
}

void eg_np_seedseq_state(const uint32_t pool[4], uint64_t state[4])
{
    uint32_t hc = INIT_B, w[8];
    for (size_t i = 0; i < 8; i++) {
        uint32_t v = pool[i % POOL] ^ hc;
        hc *= MULT_B;
        v *= hc;
        v ^= v >> XSHIFT;
        w[i] = v;
    }
    for (size_t k = 0; k < 4; k++)
        state[k] = (uint64_t)w[2 * k] | (uint64_t)w[2 * k + 1] << 32;
}

#define PCG_MUL ((eg_np_u128)0x2360ED051FC65DA4ull << 64 | 0x4385DF649FCCF645ull)

static void pcg_step(eg_pcg64 *g) { g->state = g->state * PCG_MUL + g->inc; }

void eg_pcg64_seed(eg_pcg64 *g, const uint64_t s[4])
{
    eg_np_u128 initstate = (eg_np_u128)s[0] << 64 | s[1];
    eg_np_u128 initseq = (eg_np_u128)s[2] << 64 | s[3];
    g->state = 0;
    g->inc = initseq << 1 | 1u;
    pcg_step(g);
    g->state += initstate;
    pcg_step(g);
    g->has_uint32 = 0;
    g->uinteger = 0;
}

void eg_pcg64_from_seed(eg_pcg64 *g, uint64_t seed)
{
    uint32_t words[2], pool[4];
    uint64_t st[4];
    size_t n = eg_np_seed_words(seed, words);
    eg_np_seedseq_pool(words, n, pool);
    eg_np_seedseq_state(pool, st);
    eg_pcg64_seed(g, st);
}

uint64_t eg_pcg64_next64(eg_pcg64 *g)
{
    pcg_step(g);
    uint64_t hi = (uint64_t)(g->state >> 64), lo = (uint64_t)g->state;
    unsigned rot = (unsigned)(g->state >> 122);
    uint64_t v = hi ^ lo;
    return (v >> rot) | (v << ((64 - rot) & 63));
}

uint32_t eg_pcg64_next32(eg_pcg64 *g)
{
    if (g->has_uint32) {
        g->has_uint32 = 0;
        return g->uinteger;
    }
    uint64_t next = eg_pcg64_next64(g);
    g->has_uint32 = 1;
    g->uinteger = (uint32_t)(next >> 32);
    return (uint32_t)next;
}

static uint64_t bounded_lemire64(eg_pcg64 *g, uint64_t rng)
{
    const uint64_t excl = rng + 1;
    eg_np_u128 m = (eg_np_u128)eg_pcg64_next64(g) * excl;
    uint64_t left = (uint64_t)m;
    if (left < excl) {
        const uint64_t thr = (UINT64_MAX - rng) % excl;
        while (left < thr) {
            m = (eg_np_u128)eg_pcg64_next64(g) * excl;
            left = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

static uint32_t bounded_lemire32(eg_pcg64 *g, uint32_t rng)
{
    const uint32_t excl = rng + 1;
    uint64_t m = (uint64_t)eg_pcg64_next32(g) * excl;
    uint32_t left = (uint32_t)m;
    if (left < excl) {
        const uint32_t thr = (UINT32_MAX - rng) % excl;
        while (left < thr) {
            m = (uint64_t)eg_pcg64_next32(g) * excl;
            left = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

void eg_np_integers_i64(eg_pcg64 *g, int64_t low, int64_t high, size_t n, int64_t *out)
{
    const uint64_t off = (uint64_t)low;
    const uint64_t rng = (uint64_t)high - (uint64_t)low - 1u;
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        if (rng == 0)
            v = 0;
        else if (rng < 0xFFFFFFFFull)
            v = bounded_lemire32(g, (uint32_t)rng);
        else if (rng == 0xFFFFFFFFull)
            v = eg_pcg64_next32(g);
        else if (rng == UINT64_MAX)
            v = eg_pcg64_next64(g);
        else
            v = bounded_lemire64(g, rng);
        out[i] = (int64_t)(off + v);
    }
}
