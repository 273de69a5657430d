/* eg_adam_rule.h - the Adam update of one value, compiled as C and as CUDA
 * (like eg_contract.h), so that every backend performs the same IEEE
 * operations in the same order: binary64 arithmetic, powers by squaring
 * (two libms' pow() may differ in the last bit), no contraction into FMA
 * (the CUDA backend is built with --fmad=false). */
#ifndef ENGRAM_EG_ADAM_RULE_H
#define ENGRAM_EG_ADAM_RULE_H
#include "engram/eg_contract.h" /* EG_HD */

EG_HD double eg_powi(double b, uint32_t t)
{
    double r = 1.0;
    while (t) {
        if (t & 1)
            r *= b;
        b *= b;
        t >>= 1;
    }
    return r;
}

/* One coordinate: m, v and the value updated in place; c1 = 1 - beta1^t,
 * c2 = 1 - beta2^t for the row's step t; lr includes the multiplier. */
EG_HD void eg_adam_value(float *val, float *m, float *v, float g, double b1, double b2, double c1,
                         double c2, double lr, float eps)
{
    const double gk = (double)g;
    const double mk = b1 * (double)*m + (1.0 - b1) * gk;
    const double gg = gk * gk;
    const double vk = b2 * (double)*v + (1.0 - b2) * gg;
    *m = (float)mk;
    *v = (float)vk;
    const double mh = (double)*m / c1, vh = (double)*v / c2;
    const double den = sqrt(vh) + (double)eps;
    const double upd = lr * mh / den;
    *val = (float)((double)*val - upd);
}
#endif
