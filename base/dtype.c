/* dtype.c - row encodings (f32, bf16, f16, fp8 e4m3 + ue8m0) and the
 * counter-based row initializer (see eg_dtype.h for the exact rules). */
#include <math.h>
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
    case EG_FP8_E4M3:
        for (uint32_t g = 0; g < dim / EG_FP8_GROUP; g++) {
            const float *v = src + (size_t)g * EG_FP8_GROUP;
            float amax = 0;
            for (int i = 0; i < EG_FP8_GROUP; i++)
                amax = fabsf(v[i]) > amax || v[i] != v[i] ? fabsf(v[i]) : amax;
            const uint8_t sc = eg_ue8m0_scale(amax);
            d[dim + g] = sc;
            for (int i = 0; i < EG_FP8_GROUP; i++)
                d[(size_t)g * EG_FP8_GROUP + i] = eg_f32_to_e4m3(ldexpf(v[i], 127 - (int)sc));
        }
        return;
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

void eg_init_row(uint64_t seed, uint32_t layer_id, uint64_t row, uint32_t dim, double std,
                 float *out)
{
    if (std == 0) {
        memset(out, 0, (size_t)dim * sizeof *out);
        return;
    }
    const float a = (float)(std * sqrt(3.0));
    float tmp[4 * PH_LANES];
    for (uint32_t v0 = 0; v0 < dim; v0 += 4 * PH_LANES) {
        const uint32_t n = dim - v0 < 4 * PH_LANES ? dim - v0 : 4 * PH_LANES;
        float *o = n == 4 * PH_LANES ? out + v0 : tmp;
        init_lanes((uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)row, (uint32_t)(row >> 32),
                   layer_id, v0 / 4, a, o);
        if (o == tmp)
            memcpy(out + v0, tmp, n * sizeof *tmp);
    }
}
