/* layer_gemm.h - the projections' products at one vector width, included by
 * layer.c once per width (the template of the width-dependent parts).
 *
 * Before including, define (the file undefines them at its end):
 *   GEMM_SUFFIX  name suffix of the two kernels (gemm_sa_<s>, gemm_d_<s>)
 *   GEMM_ATTR    their function attributes (a target, or nothing)
 *   VF, VH, VD   vector types: LANES floats; LANES/2 floats; LANES/2 doubles
 *   LANES        floats per VF
 *   TR           rows of C per tile (2 * TR vectors of accumulators must fit
 *                the target's registers with room for B and a broadcast)
 *
 * A tile of TR rows by 2 * LANES columns of C stays in vector registers over
 * the whole k loop. Every element is still its own sum over k in index order,
 * one rounded multiply and one rounded add a step (ISO C: no contraction into
 * FMA), so every width gives the plain triple loop's results, bit for bit,
 * for any tiling and thread count. */

#define GEMM_CAT2(a, b) a##_##b
#define GEMM_CAT(a, b) GEMM_CAT2(a, b)

/* C[M][N] (=, or += when acc) A[M][K] * B[K][N], row-major; A's element
 * (m, k) is A[m * sam + k * sak]. */
GEMM_ATTR static void GEMM_CAT(gemm_sa, GEMM_SUFFIX)(size_t M, size_t N, size_t K,
                                                     const float *restrict A, size_t sam,
                                                     size_t sak, const float *restrict B,
                                                     float *restrict C, int acc, int nt)
{
    const long long MB = (long long)((M + TR - 1) / TR);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (M * N * K > 32768)
#endif
    for (long long mb = 0; mb < MB; mb++) {
        const size_t m0 = (size_t)mb * TR, mr = M - m0 < TR ? M - m0 : TR;
        size_t n0 = 0;
        for (; n0 + 2 * LANES <= N; n0 += 2 * LANES) {
            VF t[TR][2];
            for (size_t r = 0; r < TR; r++)
                for (int j = 0; j < 2; j++) {
                    if (acc && r < mr)
                        memcpy(&t[r][j], C + (m0 + r) * N + n0 + LANES * (size_t)j, sizeof t[r][j]);
                    else
                        t[r][j] = (VF){0};
                }
            for (size_t k = 0; k < K; k++) {
                VF b0, b1;
                memcpy(&b0, B + k * N + n0, sizeof b0);
                memcpy(&b1, B + k * N + n0 + LANES, sizeof b1);
                for (size_t r = 0; r < TR; r++) {
                    const float a = r < mr ? A[(m0 + r) * sam + k * sak] : 0.0f;
                    t[r][0] += a * b0;
                    t[r][1] += a * b1;
                }
            }
            for (size_t r = 0; r < mr; r++)
                memcpy(C + (m0 + r) * N + n0, t[r], sizeof t[r]);
        }
        for (size_t r = 0; r < mr && n0 < N; r++) { /* the last columns */
            float *c = C + (m0 + r) * N;
            if (!acc)
                memset(c + n0, 0, (N - n0) * sizeof *c);
            for (size_t k = 0; k < K; k++) {
                const float a = A[(m0 + r) * sam + k * sak];
                for (size_t n = n0; n < N; n++)
                    c[n] += a * B[k * N + n];
            }
        }
    }
}

/* The same with binary64 accumulation and output, A as stored. */
GEMM_ATTR static void GEMM_CAT(gemm_d, GEMM_SUFFIX)(size_t M, size_t N, size_t K,
                                                    const float *restrict A,
                                                    const float *restrict B, double *restrict C,
                                                    int nt)
{
    enum { HL = LANES / 2 }; /* doubles per VD */
    const long long MB = (long long)((M + TR - 1) / TR);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (M * N * K > 32768)
#endif
    for (long long mb = 0; mb < MB; mb++) {
        const size_t m0 = (size_t)mb * TR, mr = M - m0 < TR ? M - m0 : TR;
        size_t n0 = 0;
        for (; n0 + 2 * HL <= N; n0 += 2 * HL) {
            VD t[TR][2];
            for (size_t r = 0; r < TR; r++)
                t[r][0] = t[r][1] = (VD){0};
            for (size_t k = 0; k < K; k++) {
                VH f0, f1;
                memcpy(&f0, B + k * N + n0, sizeof f0);
                memcpy(&f1, B + k * N + n0 + HL, sizeof f1);
                const VD b0 = __builtin_convertvector(f0, VD), b1 = __builtin_convertvector(f1, VD);
                for (size_t r = 0; r < TR; r++) {
                    const double a = r < mr ? (double)A[(m0 + r) * K + k] : 0.0;
                    t[r][0] += a * b0;
                    t[r][1] += a * b1;
                }
            }
            for (size_t r = 0; r < mr; r++)
                memcpy(C + (m0 + r) * N + n0, t[r], sizeof t[r]);
        }
        for (size_t r = 0; r < mr && n0 < N; r++) {
            double *c = C + (m0 + r) * N;
            memset(c + n0, 0, (N - n0) * sizeof *c);
            for (size_t k = 0; k < K; k++) {
                const double a = (double)A[(m0 + r) * K + k];
                for (size_t n = n0; n < N; n++)
                    c[n] += a * (double)B[k * N + n];
            }
        }
    }
}

#undef GEMM_CAT
#undef GEMM_CAT2
#undef GEMM_SUFFIX
#undef GEMM_ATTR
#undef VF
#undef VH
#undef VD
#undef LANES
#undef TR
