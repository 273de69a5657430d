/*
 * eg_dtype.h - row element types of the table store and the deterministic
 * row initializer.
 *
 * Encodings (little-endian, one row = `eg_dtype_row_bytes(dtype, dim)` bytes):
 *   EG_F32       IEEE binary32.
 *   EG_BF16      the top 16 bits of binary32, rounded to nearest even; NaN
 *                stays NaN (quiet).
 *   EG_F16       IEEE binary16, round to nearest even, subnormals kept,
 *                overflow to infinity.
 *   EG_FP8_E4M3  OCP FP8 E4M3 "fn" (bias 7, no infinities, 0x7F/0xFF NaN,
 *                largest finite 448) with one UE8M0 scale byte per 32
 *                values: the row is `dim` fp8 bytes followed by dim/32
 *                scale bytes; value = fp8 * 2^(scale - 127). A group's scale
 *                is DeepSeek's ue8m0 recipe: s = max(amax, 1e-4) / 448 in
 *                binary32, exponent = ceil(log2(s)) read from s's bits
 *                (biased exponent, plus one when the mantissa is non-zero),
 *                then each value is divided by 2^exponent and rounded to
 *                nearest even, saturating at +-448. dim must be a multiple
 *                of 32.
 *
 * Initial values (EG_INIT_* below): row `row` of the layer with id
 * `layer_id` is a pure function of (seed, layer_id, row), so any row can be
 * recomputed without the store: value i comes from Philox4x32-10 (Random123)
 * with key {seed & 0xffffffff, seed >> 32} and counter {row & 0xffffffff,
 * row >> 32, layer_id, i / 4}, output word i % 4 = w, as
 *   u = ((int32)(w >> 8) - 2^23) * 2^-23      (exact, in [-1, 1))
 *   value = u * a, a = (float)(std * sqrt(3))  (one binary32 rounding)
 * i.e. uniform on [-a, a) with standard deviation `std`.
 */
#ifndef ENGRAM_EG_DTYPE_H
#define ENGRAM_EG_DTYPE_H
#include <stddef.h>
#include <stdint.h>
#include "eg_base.h"
#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EG_F32 = 0, EG_BF16 = 1, EG_F16 = 2, EG_FP8_E4M3 = 3 } eg_dtype;
#define EG_N_DTYPES 4
#define EG_FP8_GROUP 32

/* "f32", "bf16", "f16", "fp8_e4m3"; NULL for an unknown value. */
const char *eg_dtype_name(eg_dtype t);
/* The dtype named `s` (the names above); EG_EINVAL when unknown. */
eg_status eg_dtype_parse(const char *s, eg_dtype *out, eg_err *err);
/* Bytes of one encoded row of `dim` values; 0 when the pair is invalid
 * (dim 0, or fp8 with dim not a multiple of 32). */
size_t eg_dtype_row_bytes(eg_dtype t, uint32_t dim);

uint16_t eg_f32_to_bf16(float f);
float eg_bf16_to_f32(uint16_t h);
uint16_t eg_f32_to_f16(float f);
float eg_f16_to_f32(uint16_t h);
/* E4M3 without a scale: nearest even, saturating at +-448; NaN -> 0x7F. */
uint8_t eg_f32_to_e4m3(float f);
float eg_e4m3_to_f32(uint8_t b);
/* The UE8M0 scale byte of a group whose largest magnitude is amax. */
uint8_t eg_ue8m0_scale(float amax);

/* Encode `dim` binary32 values into one row of dtype t at dst (row_bytes
 * bytes), and back. The pair (t, dim) must be valid. */
void eg_row_encode(eg_dtype t, uint32_t dim, const float *src, void *dst);
void eg_row_decode(eg_dtype t, uint32_t dim, const void *src, float *dst);

/* Philox4x32-10 of Random123: one block of four words. */
void eg_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* The initial values of one row (see the top of this header); std 0 gives
 * zeros. */
void eg_init_row(uint64_t seed, uint32_t layer_id, uint64_t row, uint32_t dim, double std,
                 float *out);
/* n consecutive rows row0 .. row0+n-1 into out[n][dim] (faster than n calls). */
void eg_init_rows(uint64_t seed, uint32_t layer_id, uint64_t row0, uint64_t n, uint32_t dim,
                  double std, float *out);

#ifdef __cplusplus
}
#endif
#endif
