// Optimizer updates in place (src/backend/optim.rs is their specification): PyTorch's SGD with
// momentum and Adam. Every operation is an explicitly rounded intrinsic so that nvcc does not
// contract them into FMAs: the results equal the CPU backend's bit for bit.
#include "common.cuh"

// d = g + wd w; m = mu m + d; w -= lr m.
extern "C" __global__ void sgd_step(float* __restrict__ w, float* __restrict__ m,
                                    const float* __restrict__ g, int len, float lr, float mu,
                                    float wd) {
    FOR_EACH(i, len) {
        float d = __fadd_rn(g[i], __fmul_rn(wd, w[i]));
        float b = __fadd_rn(__fmul_rn(mu, m[i]), d);
        m[i] = b;
        w[i] = __fsub_rn(w[i], __fmul_rn(lr, b));
    }
}

// The moments and the step in double, stored in float:
// d = g + wd w; m = b1 m + (1-b1) d; v = b2 v + (1-b2) d^2; w -= lr (m/bias1) / (sqrt(v/bias2) + eps).
extern "C" __global__ void adam_step(float* __restrict__ w, float* __restrict__ m,
                                     float* __restrict__ v, const float* __restrict__ g, int len,
                                     double lr, double b1, double b2, double eps, float wd,
                                     double bias1, double bias2) {
    FOR_EACH(i, len) {
        double d = (double)__fadd_rn(g[i], __fmul_rn(wd, w[i]));
        double mn = __dadd_rn(__dmul_rn(b1, (double)m[i]), __dmul_rn(__dsub_rn(1.0, b1), d));
        double vn = __dadd_rn(__dmul_rn(b2, (double)v[i]),
                              __dmul_rn(__dmul_rn(__dsub_rn(1.0, b2), d), d));
        m[i] = (float)mn;
        v[i] = (float)vn;
        double step = __ddiv_rn(__dmul_rn(lr, __ddiv_rn(mn, bias1)),
                                __dadd_rn(__dsqrt_rn(__ddiv_rn(vn, bias2)), eps));
        w[i] = (float)__dsub_rn((double)w[i], step);
    }
}
