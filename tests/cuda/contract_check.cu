// contract_check.cu - compiles eg_contract.h as CUDA (device code), so the
// header the CUDA backend will use cannot stop compiling unnoticed. Built by
// `make` when CUDA=1 (nvcc found); nothing here runs without a GPU.
#include "engram/eg_contract.h"

__global__ void eg_contract_check_kernel(const int64_t *hist, const int64_t *mult, uint32_t N,
                                         uint32_t K, const uint64_t *primes, uint64_t *ref,
                                         uint32_t *fast)
{
    eg_hash_position_ref(hist, mult, N, K, primes, ref);
    int64_t mix[16];
    eg_mix_position(hist, mult, N, mix);
    for (uint32_t c = 0; c < (N - 1) * K; c++) {
        eg_fastmod_t f = eg_fastmod_make(primes[c]);
        fast[c] = (uint32_t)eg_mod_fast(mix[c / K], &f);
        if (eg_fastmod_narrow_ok(primes[c]))
            fast[c] ^= eg_mod_fast_narrow(mix[c / K], f.inv, (uint32_t)primes[c]) ^ fast[c];
    }
}
