// Elementwise ops: linear combinations, activations and their VJPs, fixed-point arithmetic.
#include "common.cuh"

// y = sum of the first nterms a_i x_i (in order); longer combinations chain through axpy.
extern "C" __global__ void lincomb4(float* __restrict__ y, int len, int nterms, float a0,
                                    const float* __restrict__ x0, float a1,
                                    const float* __restrict__ x1, float a2,
                                    const float* __restrict__ x2, float a3,
                                    const float* __restrict__ x3) {
    FOR_EACH(i, len) {
        float v = a0 * x0[i];
        if (nterms > 1) v += a1 * x1[i];
        if (nterms > 2) v += a2 * x2[i];
        if (nterms > 3) v += a3 * x3[i];
        y[i] = v;
    }
}

extern "C" __global__ void axpy(float* __restrict__ y, const float* __restrict__ x, float a,
                                int len) {
    FOR_EACH(i, len) y[i] += a * x[i];
}

extern "C" __global__ void act_fwd_kernel(const float* __restrict__ x, float* __restrict__ y,
                                          int len, int act) {
    FOR_EACH(i, len) y[i] = act_fwd(act, x[i]);
}

extern "C" __global__ void act_vjp_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                          float* __restrict__ dx, int len, int act) {
    FOR_EACH(i, len) dx[i] = act_grad(act, x[i]) * dy[i];
}

// round(x * 2^shift), half away from zero, saturating (the conversion saturates, NaN -> 0).
extern "C" __global__ void quantize(const float* __restrict__ x, int* __restrict__ q, float scale,
                                   int len) {
    FOR_EACH(i, len) q[i] = __float2int_rz(roundf(x[i] * scale));
}

extern "C" __global__ void dequantize(const int* __restrict__ q, float* __restrict__ x,
                                     float inv_scale, int len) {
    FOR_EACH(i, len) x[i] = __int2float_rn(q[i]) * inv_scale;
}

// out = sum c_i q_i + round(coef * f) in wrapping i32 (unsigned arithmetic: no signed overflow).
// coef * f is rounded in double, reduced to i64 saturating, then wrapped to i32, as on the CPU.
extern "C" __global__ void fixed_update(int* __restrict__ out, const float* __restrict__ f,
                                        double coef, int len, int nterms, int c0,
                                        const int* __restrict__ q0, int c1,
                                        const int* __restrict__ q1, int c2,
                                        const int* __restrict__ q2) {
    FOR_EACH(i, len) {
        unsigned int acc = 0u;
        if (nterms > 0) acc += (unsigned int)c0 * (unsigned int)q0[i];
        if (nterms > 1) acc += (unsigned int)c1 * (unsigned int)q1[i];
        if (nterms > 2) acc += (unsigned int)c2 * (unsigned int)q2[i];
        long long r = __double2ll_rz(round(coef * (double)f[i]));
        acc += (unsigned int)(unsigned long long)r;
        out[i] = (int)acc;
    }
}

// out += c q (wrapping), for fixed-point updates with more than three terms.
extern "C" __global__ void fixed_axpy(int* __restrict__ out, const int* __restrict__ q, int c,
                                      int len) {
    FOR_EACH(i, len) out[i] = (int)((unsigned int)out[i] + (unsigned int)c * (unsigned int)q[i]);
}
