/* dtype.c - row encodings (f32, bf16, f16, fp8 e4m3 + ue8m0) and the
 * counter-based row initializer (see eg_dtype.h for the exact rules). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eg_internal.h"
#include "engram/eg_dtype.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the store's encodings are little-endian; this build assumes a little-endian host"
#endif

static const char *const dtype_names[EG_N_DTYPES] = {"f32", "bf16", "f16", "fp8_e4m3"};

const char *eg_dtype_name(eg_dtype t)
{
    return (unsigned)t < EG_N_DTYPES ? dtype_names[t] : NULL;
}

eg_status eg_dtype_parse(const char *s, eg_dtype *out, eg_err *err)
{
    for (int i = 0; s && i < EG_N_DTYPES; i++)
        if (!strcmp(s, dtype_names[i])) {
            *out = (eg_dtype)i;
            return EG_OK;
        }
    return eg_fail(err, EG_EINVAL, "unknown dtype '%s' (f32, bf16, f16 or fp8_e4m3)",
                   s ? s : "(null)");
}

size_t eg_dtype_row_bytes(eg_dtype t, uint32_t dim)
{
    if (!dim)
        return 0;
    switch (t) {
    case EG_F32: return 4 * (size_t)dim;
    case EG_BF16:
    case EG_F16: return 2 * (size_t)dim;
    case EG_FP8_E4M3: return dim % EG_FP8_GROUP ? 0 : (size_t)dim + dim / EG_FP8_GROUP;
    }
    return 0;
}

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t bf16_of(float f)
{
    uint32_t u = f2u(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
    uint32_t q = (u >> 16) | 0x40; /* NaN: quiet, sign kept */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
}

uint16_t eg_f32_to_bf16(float f) { return bf16_of(f); }

float eg_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t eg_f32_to_f16(float f)
{
    const uint32_t u = f2u(f), a = u & 0x7fffffffu;
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    if (a > 0x7f800000u)
        return sign | 0x7e00u;
    if (a >= 0x477ff000u) /* >= 65520: rounds to infinity */
        return sign | 0x7c00u;
    if (a < 0x38800000u) { /* below 2^-14: a multiple of 2^-24, exact scaling */
        float m = nearbyintf(u2f(a) * 0x1p24f);
        return sign | (uint16_t)m; /* 1024 is the smallest normal's encoding */
    }
    const uint32_t r = a - 0x38000000u + 0xfffu + ((a >> 13) & 1);
    return sign | (uint16_t)(r >> 13);
}

float eg_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        return u2f(sign | 0x7f800000u | m << 13);
    return u2f(sign | (e + 112) << 23 | m << 13);
}

uint8_t eg_f32_to_e4m3(float f)
{
    const uint32_t u = f2u(f), a = u & 0x7fffffffu;
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    if (a > 0x7f800000u)
        return sign | 0x7f;
    if (a >= 0x43e00000u) /* >= 448 (and infinity): saturate */
        return sign | 0x7e;
    if (a < 0x3c800000u) { /* below 2^-6: subnormal steps of 2^-9 */
        float m = nearbyintf(u2f(a) * 0x1p9f);
        return sign | (uint8_t)m; /* 8 is the smallest normal's encoding */
    }
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1);
    const uint32_t e = (r >> 23) - 120, m = (r >> 20) & 7; /* rebias 127 -> 7 */
    const uint32_t code = e << 3 | m;
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

float eg_e4m3_to_f32(uint8_t b)
{
    const uint32_t e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = (float)m * 0x1p-9f;
    else
        v = u2f((e + 120) << 23 | m << 20);
    return b & 0x80 ? -v : v;
}

uint8_t eg_ue8m0_scale(float amax)
{
    if (!(amax >= 1e-4f)) /* also NaN */
        amax = amax != amax ? 448.0f : 1e-4f;
    const uint32_t s = f2u(amax / 448.0f);
    int e = (int)((s >> 23) & 0xff) - 127 + ((s & 0x7fffff) != 0);
    int biased = e + 127;
    return (uint8_t)(biased < 0 ? 0 : biased > 254 ? 254 : biased);
}

EG_VEC static void encode_bf16(uint32_t dim, const float *restrict src, uint16_t *restrict h)
{
    for (uint32_t i = 0; i < dim; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1)) >> 16;
        const uint32_t q = (u >> 16) | 0x40;
        h[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
    }
}

/* e4m3 of f without branches, bit for bit eg_f32_to_e4m3 (every case computed,
 * one selected; the subnormal step rounds with 2^23 added, which is
 * nearbyintf's round-to-nearest-even for values below 2^23). */
static inline uint32_t e4m3_select(float f)
{
    uint32_t u, ab, sb;
    memcpy(&u, &f, 4);
    const uint32_t a = u & 0x7fffffffu, sign = (u >> 24) & 0x80;
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1);
    uint32_t code = ((r >> 23) - 120) << 3 | ((r >> 20) & 7);
    code = code > 0x7e ? 0x7e : code;
    float af;
    ab = a;
    memcpy(&af, &ab, 4);
    const float m = af * 0x1p9f + 0x1p23f;
    memcpy(&sb, &m, 4);
    const uint32_t sub = sb - 0x4b000000u;
    const uint32_t v = a > 0x7f800000u ? 0x7f : a >= 0x43e00000u ? 0x7e : a < 0x3c800000u ? sub : code;
    return sign | v;
}

/* One row of fp8 e4m3 with a ue8m0 scale per group of 32: each value times
 * 2^(127 - scale), a power of two that binary32 holds exactly (2^-127 as a
 * subnormal), which rounds exactly as ldexpf does (both are the correctly
 * rounded product), then e4m3_select; vectorized across the group. */
EG_VEC static void encode_fp8(uint32_t dim, const float *restrict src, unsigned char *restrict d)
{
    for (uint32_t g = 0; g < dim / EG_FP8_GROUP; g++) {
        const float *v = src + (size_t)g * EG_FP8_GROUP;
        /* the largest |v| as the largest of the magnitudes' bits (the order of
         * non-negative floats), above infinity's when a value is NaN: the
         * scale of a NaN amax, whatever its payload */
        uint32_t mb = 0;
        for (int i = 0; i < EG_FP8_GROUP; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            u &= 0x7fffffffu;
            mb = u > mb ? u : mb;
        }
        float amax;
        memcpy(&amax, &mb, 4);
        const uint8_t sc = eg_ue8m0_scale(amax);
        d[dim + g] = sc;
        const uint32_t pb = sc < 254 ? (uint32_t)(254 - sc) << 23 : 0x00400000u;
        float p;
        memcpy(&p, &pb, 4);
        unsigned char *o = d + (size_t)g * EG_FP8_GROUP;
        for (int i = 0; i < EG_FP8_GROUP; i++)
            o[i] = (unsigned char)e4m3_select(v[i] * p);
    }
}

void eg_row_encode(eg_dtype t, uint32_t dim, const float *src, void *dst)
{
    unsigned char *d = dst;
    switch (t) {
    case EG_F32: memcpy(d, src, 4 * (size_t)dim); return;
    case EG_BF16:
        if (((uintptr_t)d & 1) == 0) {
            encode_bf16(dim, src, (uint16_t *)(void *)d);
            return;
        }
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h = eg_f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    case EG_F16:
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h = eg_f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    case EG_FP8_E4M3: encode_fp8(dim, src, d); return;
    }
}

void eg_row_decode(eg_dtype t, uint32_t dim, const void *src, float *dst)
{
    const unsigned char *s = src;
    switch (t) {
    case EG_F32: memcpy(dst, s, 4 * (size_t)dim); return;
    case EG_BF16:
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = eg_bf16_to_f32(h);
        }
        return;
    case EG_F16:
        for (uint32_t i = 0; i < dim; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = eg_f16_to_f32(h);
        }
        return;
    case EG_FP8_E4M3:
        for (uint32_t i = 0; i < dim; i++)
            dst[i] = ldexpf(eg_e4m3_to_f32(s[i]), (int)s[dim + i / EG_FP8_GROUP] - 127);
        return;
    }
}

/* ---- Philox4x32-10 and the initializer --------------------------------------- */

void eg_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint32_t)p1;
        c2 = n2;
        c3 = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* 16 Philox blocks (64 values) of one row at once, lanes in arrays so the
 * rounds vectorize; the same function as eg_philox4x32_10 per lane. */
#define PH_LANES 16
EG_VEC static void init_lanes(uint32_t k0, uint32_t k1, uint32_t rlo, uint32_t rhi,
                              uint32_t layer_id, uint32_t j0, float a, float *out)
{
    uint32_t c0[PH_LANES], c1[PH_LANES], c2[PH_LANES], c3[PH_LANES];
    for (uint32_t i = 0; i < PH_LANES; i++) {
        c0[i] = rlo;
        c1[i] = rhi;
        c2[i] = layer_id;
        c3[i] = j0 + i;
    }
    for (int r = 0; r < 10; r++) {
        for (uint32_t i = 0; i < PH_LANES; i++) {
            const uint64_t p0 = (uint64_t)0xD2511F53u * c0[i], p1 = (uint64_t)0xCD9E8D57u * c2[i];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c0[i] = n0;
            c1[i] = (uint32_t)p1;
            c2[i] = n2;
            c3[i] = (uint32_t)p0;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (uint32_t i = 0; i < PH_LANES; i++) {
        out[4 * i + 0] = (float)((int32_t)(c0[i] >> 8) - (1 << 23)) * 0x1p-23f * a;
        out[4 * i + 1] = (float)((int32_t)(c1[i] >> 8) - (1 << 23)) * 0x1p-23f * a;
        out[4 * i + 2] = (float)((int32_t)(c2[i] >> 8) - (1 << 23)) * 0x1p-23f * a;
        out[4 * i + 3] = (float)((int32_t)(c3[i] >> 8) - (1 << 23)) * 0x1p-23f * a;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_PH512 1
/* init_lanes with AVX-512 intrinsics, for two rows at once (two independent
 * dependency chains through the ten rounds): the 16 lanes' counters in one
 * register per word; each round's 32 x 32 -> 64-bit products from two
 * vpmuludq (even and odd lanes). The same values as init_lanes, bit for bit
 * (the tests compare both with the scalar definition). */
#define PH_ROUND(c0, c1, c2, c3, K0, K1)                                                         \
    do {                                                                                       \
        const __m512i e0_ = _mm512_mul_epu32(c0, M0);                                          \
        const __m512i o0_ = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), M0);                   \
        const __m512i e1_ = _mm512_mul_epu32(c2, M1);                                          \
        const __m512i o1_ = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), M1);                   \
        const __m512i hi0_ = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e0_, 32), o0_); \
        const __m512i lo0_ = _mm512_mask_blend_epi32(0xAAAA, e0_, _mm512_slli_epi64(o0_, 32)); \
        const __m512i hi1_ = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e1_, 32), o1_); \
        const __m512i lo1_ = _mm512_mask_blend_epi32(0xAAAA, e1_, _mm512_slli_epi64(o1_, 32)); \
        c0 = _mm512_xor_si512(_mm512_xor_si512(hi1_, c1), K0);                                 \
        c2 = _mm512_xor_si512(_mm512_xor_si512(hi0_, c3), K1);                                 \
        c1 = lo1_;                                                                             \
        c3 = lo0_;                                                                             \
    } while (0)

__attribute__((target("avx512f"))) static void ph512_store(__m512i c0, __m512i c1, __m512i c2,
                                                           __m512i c3, float a, float *out)
{
    const __m512i half = _mm512_set1_epi32(1 << 23);
    const __m512 s23 = _mm512_set1_ps(0x1p-23f), va = _mm512_set1_ps(a);
#define PH_U(c) _mm512_castps_si512(_mm512_mul_ps(_mm512_mul_ps(                               \
        _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(c, 8), half)), s23), va))
    const __m512i f0 = PH_U(c0), f1 = PH_U(c1), f2 = PH_U(c2), f3 = PH_U(c3);
#undef PH_U
    /* transpose: lane i's four values to out[4i .. 4i+3] */
    const __m512i t0 = _mm512_unpacklo_epi32(f0, f1), t1 = _mm512_unpackhi_epi32(f0, f1);
    const __m512i t2 = _mm512_unpacklo_epi32(f2, f3), t3 = _mm512_unpackhi_epi32(f2, f3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    /* u_k's 128-bit block q holds lane 4q + k; out block q = u0.q u1.q u2.q u3.q */
    const __m512i i01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i i23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    const __m512i a01 = _mm512_permutex2var_epi64(u0, i01, u1);
    const __m512i a23 = _mm512_permutex2var_epi64(u0, i23, u1);
    const __m512i b01 = _mm512_permutex2var_epi64(u2, i01, u3);
    const __m512i b23 = _mm512_permutex2var_epi64(u2, i23, u3);
    const __m512i lo = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
    _mm512_storeu_si512(out, _mm512_permutex2var_epi64(a01, lo, b01));
    _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(a01, hi, b01));
    _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi64(a23, lo, b23));
    _mm512_storeu_si512(out + 48, _mm512_permutex2var_epi64(a23, hi, b23));
}

/* 64 values each of four (row, first counter) pairs, interleaved: four
 * independent dependency chains through the rounds keep the multipliers
 * busy (one chain is latency-bound) */
__attribute__((target("avx512f"))) static void init_lanes512x4(uint32_t k0, uint32_t k1,
                                                               const uint64_t row[4],
                                                               const uint32_t j0[4],
                                                               uint32_t layer_id, float a,
                                                               float *const out[4])
{
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i M0 = _mm512_set1_epi32((int)0xD2511F53u), M1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    __m512i c[4][4];
    for (int q = 0; q < 4; q++) {
        c[q][0] = _mm512_set1_epi32((int)(uint32_t)row[q]);
        c[q][1] = _mm512_set1_epi32((int)(uint32_t)(row[q] >> 32));
        c[q][2] = _mm512_set1_epi32((int)layer_id);
        c[q][3] = _mm512_add_epi32(_mm512_set1_epi32((int)j0[q]), iota);
    }
    for (int r = 0; r < 10; r++) {
        const __m512i K0 = _mm512_set1_epi32((int)k0), K1 = _mm512_set1_epi32((int)k1);
        PH_ROUND(c[0][0], c[0][1], c[0][2], c[0][3], K0, K1);
        PH_ROUND(c[1][0], c[1][1], c[1][2], c[1][3], K0, K1);
        PH_ROUND(c[2][0], c[2][1], c[2][2], c[2][3], K0, K1);
        PH_ROUND(c[3][0], c[3][1], c[3][2], c[3][3], K0, K1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (int q = 0; q < 4; q++)
        if (out[q])
            ph512_store(c[q][0], c[q][1], c[q][2], c[q][3], a, out[q]);
}
/* one chain: what is left after the groups of four */
__attribute__((target("avx512f"))) static void init_lanes512x1(uint32_t k0, uint32_t k1,
                                                               uint64_t row, uint32_t j0,
                                                               uint32_t layer_id, float a,
                                                               float *out)
{
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i M0 = _mm512_set1_epi32((int)0xD2511F53u), M1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    __m512i c0 = _mm512_set1_epi32((int)(uint32_t)row);
    __m512i c1 = _mm512_set1_epi32((int)(uint32_t)(row >> 32));
    __m512i c2 = _mm512_set1_epi32((int)layer_id);
    __m512i c3 = _mm512_add_epi32(_mm512_set1_epi32((int)j0), iota);
    for (int r = 0; r < 10; r++) {
        const __m512i K0 = _mm512_set1_epi32((int)k0), K1 = _mm512_set1_epi32((int)k1);
        PH_ROUND(c0, c1, c2, c3, K0, K1);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    ph512_store(c0, c1, c2, c3, a, out);
}
#undef PH_ROUND

static int use_ph512(void)
{
    static int v = -1; /* computed once; every thread computes the same value */
    int x = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (x < 0) {
        __builtin_cpu_init();
        x = __builtin_cpu_supports("avx512f") && !getenv("EG_NO_AVX512");
        __atomic_store_n(&v, x, __ATOMIC_RELAXED);
    }
    return x;
}
#endif

void eg_init_row(uint64_t seed, uint32_t layer_id, uint64_t row, uint32_t dim, double std,
                 float *out)
{
    eg_init_rows(seed, layer_id, row, 1, dim, std, out);
}

void eg_init_rows(uint64_t seed, uint32_t layer_id, uint64_t row0, uint64_t n, uint32_t dim,
                  double std, float *out)
{
    if (std == 0) {
        memset(out, 0, (size_t)n * dim * sizeof *out);
        return;
    }
    const float a = (float)(std * sqrt(3.0));
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const uint32_t G = 4 * PH_LANES, full = dim / G; /* whole groups of 64 values per row */
    float tmp[4 * PH_LANES];
    uint64_t done = 0; /* groups handled by the interleaved kernel, in (row, group) order */
#ifdef HAVE_PH512
    if (full && use_ph512()) {
        const uint64_t total = n * full;
        for (; done + 4 <= total; done += 4) {
            uint64_t rw[4];
            uint32_t j0[4];
            float *o[4];
            for (int q = 0; q < 4; q++) {
                const uint64_t g = done + (uint64_t)q, r = g / full;
                const uint32_t v0 = (uint32_t)(g % full) * G;
                rw[q] = row0 + r;
                j0[q] = v0 / 4;
                o[q] = out + r * dim + v0;
            }
            init_lanes512x4(k0, k1, rw, j0, layer_id, a, o);
        }
    }
#endif
    for (uint64_t i = 0; i < n; i++) {
        for (uint32_t v0 = 0; v0 < dim; v0 += G) {
            if (v0 + G <= dim && i * full + v0 / G < done)
                continue; /* done above */
            const uint32_t m = dim - v0 < G ? dim - v0 : G;
            float *o = m == G ? out + i * dim + v0 : tmp;
#ifdef HAVE_PH512
            if (use_ph512())
                init_lanes512x1(k0, k1, row0 + i, v0 / 4, layer_id, a, o);
            else
#endif
                init_lanes(k0, k1, (uint32_t)(row0 + i), (uint32_t)((row0 + i) >> 32),
                           layer_id, v0 / 4, a, o);
            if (o == tmp)
                memcpy(out + i * dim + v0, tmp, m * sizeof *tmp);
        }
    }
}
