/*
 * eg_contract.h - the Engram hash contract (../shared/CONTRACT.md section 4),
 * in one header that compiles as C (C99 or later, GCC/Clang) and as CUDA.
 *
 * The builder (tables/), the CPU runtime and the CUDA kernels all include this
 * file, so they cannot drift apart. Everything here is a pure function of its
 * arguments: no allocation, no globals.
 *
 * Semantics (numpy int64, as in the reference engram_demo_v1.py):
 *   x = compressed ids of one sequence, left-padded with pad (the projected
 *       pad_id) so that x[t-k] = pad for t-k < 0;
 *   mix_2 = x[t]*m[0] ^ x[t-1]*m[1];  mix_n = mix_{n-1} ^ x[t-n+1]*m[n-1];
 *   index(n, j) = mix_n mod prime[n][j], a floor modulo (never negative);
 *   products wrap modulo 2^64 like numpy's int64.
 *
 * Two modulo implementations are provided and must agree bit for bit:
 *   eg_mod_ref   - the oracle: C's % with a sign fix-up;
 *   eg_mod_fast  - no hardware divide: a double-precision reciprocal estimate
 *                  of the quotient corrected by integer arithmetic; exact for
 *                  every int64 dividend when the divisor is >= EG_FASTMOD_MIN
 *                  (see eg_fastmod_t below for the argument).
 *                  Smaller divisors use an exact Barrett step (eg_mod_barrett).
 */
#ifndef ENGRAM_EG_CONTRACT_H
#define ENGRAM_EG_CONTRACT_H

#include <stdint.h>

#if defined(__CUDACC__)
#define EG_HD __host__ __device__ __forceinline__
#else
#define EG_HD static inline
#endif

/* Divisors below this use the Barrett path. The double estimate q' of a/p has
 * |q' - a/p| <= 3 * 2^-53 * |a| / p + tiny <= 3 * 2^10 / p < 1 for p > 3072,
 * so floor(q') is within one of the true quotient and one correction each way
 * is enough. 4096 leaves margin. */
#define EG_FASTMOD_MIN 4096u

/* Precomputed per-divisor constants, filled by eg_fastmod_make. */
typedef struct eg_fastmod_t {
    uint64_t p;       /* the divisor (a prime in practice), 2 <= p < 2^63 */
    double inv;       /* 1.0 / p rounded to nearest */
    uint64_t barrett; /* floor((2^64 - 1) / p), for the Barrett path */
} eg_fastmod_t;

#if !defined(__CUDA_ARCH__)
__extension__ typedef unsigned __int128 eg_u128;
#endif

/* High 64 bits of a 64x64-bit product. */
EG_HD uint64_t eg_mulhi64(uint64_t a, uint64_t b)
{
#if defined(__CUDA_ARCH__)
    return __umul64hi(a, b);
#else
    return (uint64_t)(((eg_u128)a * b) >> 64);
#endif
}

/* Host-side: constants for divisor p (2 <= p < 2^63). The one place that
 * divides. */
EG_HD eg_fastmod_t eg_fastmod_make(uint64_t p)
{
    eg_fastmod_t f;
    f.p = p;
    f.inv = 1.0 / (double)p;
    f.barrett = UINT64_MAX / p;
    return f;
}

/* The oracle: floor modulo of a signed 64-bit value by p (p < 2^63). */
EG_HD uint64_t eg_mod_ref(int64_t a, uint64_t p)
{
    int64_t r = a % (int64_t)p;
    if (r < 0)
        r += (int64_t)p;
    return (uint64_t)r;
}

/* Exact unsigned remainder u mod p by Barrett reduction: the estimate
 * q = mulhi(u, floor((2^64-1)/p)) is the true quotient or one less. */
EG_HD uint64_t eg_umod_barrett(uint64_t u, const eg_fastmod_t *f)
{
    uint64_t q = eg_mulhi64(u, f->barrett);
    uint64_t r = u - q * f->p;
    return r >= f->p ? r - f->p : r;
}

/* Floor modulo through the Barrett path (any divisor). For a < 0, with
 * u = ~a = -a-1 >= 0: a mod p = p-1 - (u mod p). */
EG_HD uint64_t eg_mod_barrett(int64_t a, const eg_fastmod_t *f)
{
    uint64_t s = (uint64_t)(a >> 63); /* all ones when negative */
    uint64_t r = eg_umod_barrett((uint64_t)a ^ s, f);
    return s ? f->p - 1 - r : r;
}

/* Floor modulo through the double-reciprocal path; requires
 * eg_fastmod_dbl_ok(f->p): EG_FASTMOD_MIN <= p < 2^32 (the upper bound keeps
 * the intermediate remainder, in [-p, 2p), inside int64). Branch-free. */
EG_HD uint64_t eg_mod_fast_dbl(int64_t a, const eg_fastmod_t *f)
{
    int64_t s = a >> 63;
    int64_t u = a ^ s;                       /* 0 <= u < 2^63 */
    int64_t q = (int64_t)((double)u * f->inv); /* trunc == floor, u >= 0 */
    int64_t r = (int64_t)((uint64_t)u - (uint64_t)q * f->p); /* in [-p, 2p) */
    r += (int64_t)f->p & (r >> 63);
    r -= (r >= (int64_t)f->p) ? (int64_t)f->p : 0;
    return (uint64_t)(s ? (int64_t)f->p - 1 - r : r);
}

/* The narrow variant used by the hot loop: u in [0, 2^63), divisor p in
 * [EG_FASTMOD_NARROW_MIN, 2^31). With p >= 2^16 the estimate
 * e = fl(fl(fl(u) * inv) - 0.5) lies within [u/p - 0.5625, u/p - 0.4375]
 * (|fl(u)*inv - u/p| <= 3*2^-53*2^63/p < 0.047, and rounding the subtraction
 * near 2^47 costs < 2^-6), so trunc(e) is the true quotient or one less and
 * r = u - q*p lies in [0, 2p), which uint32 arithmetic holds exactly: one
 * correction, 32-bit lanes. */
#define EG_FASTMOD_NARROW_MIN 65536u
EG_HD int eg_fastmod_narrow_ok(uint64_t p)
{
    return p >= EG_FASTMOD_NARROW_MIN && p < 0x80000000u;
}

EG_HD uint32_t eg_mod_fast_narrow(int64_t u, double inv, uint32_t p)
{
    int64_t q = (int64_t)((double)u * inv - 0.5);
    uint32_t r = (uint32_t)u - (uint32_t)q * p;
    return r >= p ? r - p : r;
}

/* Whether the double-reciprocal path is exact for this divisor. */
EG_HD int eg_fastmod_dbl_ok(uint64_t p)
{
    return p >= EG_FASTMOD_MIN && p <= 0xFFFFFFFFu;
}

/* Fast floor modulo: picks the exact path for the divisor. */
EG_HD uint64_t eg_mod_fast(int64_t a, const eg_fastmod_t *f)
{
    return eg_fastmod_dbl_ok(f->p) ? eg_mod_fast_dbl(a, f) : eg_mod_barrett(a, f);
}

/* mix_n for n = 2..N of one position. `hist[k]` is x[t-k] (already padded),
 * k = 0..N-1; `mult[k]` the layer's multipliers. Writes mix[n-2]. */
EG_HD void eg_mix_position(const int64_t *hist, const int64_t *mult, uint32_t N,
                           int64_t *mix)
{
    uint64_t acc = (uint64_t)hist[0] * (uint64_t)mult[0];
    for (uint32_t k = 1; k < N; k++) {
        acc ^= (uint64_t)hist[k] * (uint64_t)mult[k];
        mix[k - 1] = (int64_t)acc;
    }
}

/* The oracle for one position: head indices (before row offsets) in the
 * contract's order (orders ascending, heads ascending), (N-1)*K values.
 * primes[c] is the prime of head c = (n-2)*K + j. */
EG_HD void eg_hash_position_ref(const int64_t *hist, const int64_t *mult, uint32_t N,
                                uint32_t K, const uint64_t *primes, uint64_t *out)
{
    int64_t mix[16];
    eg_mix_position(hist, mult, N, mix);
    for (uint32_t n = 2; n <= N; n++)
        for (uint32_t j = 0; j < K; j++) {
            uint32_t c = (n - 2) * K + j;
            out[c] = eg_mod_ref(mix[n - 2], primes[c]);
        }
}

#endif
