// One explicit step out = sum_i a_i X_i - coef * K^T sigma(N(K y)) in two launches:
//   step_conv_ss:  Z = K y, and per tile of output channels the per-pixel partial sums of
//                  squares that tvNorm needs (fixed layout [tile][pixel], no atomics);
//   step_convt:    K^T applied to sigma(N(Z)) computed while gathering Z, with the integrator
//                  update in the epilogue.
#include "conv_gemm.cuh"

// Occupancy hints: without one ptxas picks 48 registers and spills on sm_90; the unpipelined
// tiles fit 64 registers (four blocks per SM), the pipelined ones need up to 128 (two).

template <int TM, int MATH, bool PIPE>
__device__ __forceinline__ void conv_ss_body(const float* __restrict__ y, const float* __restrict__ k,
                                             float* __restrict__ z, float* __restrict__ ss_part,
                                             int nb, int c, int h, int w) {
    __shared__ float red[16][BN];
    float acc[TM][4];
    NormAct na = {0, 0, 0, 0, 0, 0};
    const int m0 = blockIdx.y * 16 * TM, q0 = blockIdx.x * BN;
    igemm_tile<TM, 9, false, false, MATH, PIPE>(y, k, nb, c, c, h, w, 1, na, m0, q0, acc);
    store_tile<TM>(z, acc, nb, c, h * w, 1, m0, q0);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < TM; i++) s = fmaf(acc[i][j], acc[i][j], s);  // rows >= c are zero
        red[ty][tx * 4 + j] = s;
    }
    __syncthreads();
    const int nq = nb * h * w;
    if (threadIdx.x < BN) {
        int q = q0 + threadIdx.x;
        float s = 0.0f;
        for (int r = 0; r < 16; r++) s += red[r][threadIdx.x];
        if (q < nq) ss_part[(size_t)blockIdx.y * nq + q] = s;
    }
}

// Up to three integrator terms (the first nterms are used).
template <int TM, int MATH, bool PIPE>
__device__ __forceinline__ void convt_body(const float* __restrict__ z, const float* __restrict__ k,
                                           float* __restrict__ out, int nb, int c, int h, int w,
                                           const float* ss_part, int n_parts, const float* s,
                                           const float* b, int tv, int act, float neg_coef, int nterms,
                                           float a0, const float* x0, float a1, const float* x1,
                                           float a2, const float* x2) {
    float acc[TM][4];
    NormAct na = {ss_part, n_parts, s, b, tv, act};
    const int m0 = blockIdx.y * 16 * TM, q0 = blockIdx.x * BN;
    igemm_tile<TM, 9, true, true, MATH, PIPE>(z, k, nb, c, c, h, w, 1, na, m0, q0, acc);
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int hw = h * w, nq = nb * hw;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int q = q0 + tx * 4 + j;
        if (q >= nq) continue;
        int n = q / hw, p = q - n * hw;
#pragma unroll
        for (int i = 0; i < TM; i++) {
            int m = m0 + ty * TM + i;
            if (m >= c) continue;
            size_t idx = ((size_t)n * c + m) * hw + p;
            // Same order as the default composition: terms first, then -coef * K^T(...).
            float v = 0.0f;
            if (nterms > 0) v += a0 * x0[idx];
            if (nterms > 1) v += a1 * x1[idx];
            if (nterms > 2) v += a2 * x2[idx];
            out[idx] = v + neg_coef * acc[i][j];
        }
    }
}

#define STEP_KERNELS_P(TM, MATH, suffix, PIPE, MINB)                                               \
    extern "C" __global__ void __launch_bounds__(NT, MINB)                                         \
        step_conv_ss_##suffix(const float* __restrict__ y, const float* __restrict__ k,            \
                              float* __restrict__ z, float* __restrict__ ss_part, int nb, int c,   \
                              int h, int w) {                                                      \
        conv_ss_body<TM, MATH, PIPE>(y, k, z, ss_part, nb, c, h, w);                               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(NT, MINB) step_convt_##suffix(                    \
        const float* __restrict__ z, const float* __restrict__ k, float* __restrict__ out, int nb, \
        int c, int h, int w, const float* ss_part, int n_parts, const float* s, const float* b,    \
        int tv, int act, float neg_coef, int nterms, float a0, const float* x0, float a1,          \
        const float* x1, float a2, const float* x2) {                                              \
        convt_body<TM, MATH, PIPE>(z, k, out, nb, c, h, w, ss_part, n_parts, s, b, tv, act, neg_coef,\
                             nterms, a0, x0, a1, x1, a2, x2);                                      \
    }

// Pipelined (two blocks per SM) and unpipelined (`_np`, four blocks per SM) entry points.
#define STEP_KERNELS(TM, MATH, suffix)                \
    STEP_KERNELS_P(TM, MATH, suffix, true, 2)         \
    STEP_KERNELS_P(TM, MATH, suffix##_np, false, 4)

STEP_KERNELS(2, MATH_F32, m32)
STEP_KERNELS(4, MATH_F32, m64)
STEP_KERNELS(2, MATH_TF32, m32_tf32)
STEP_KERNELS(4, MATH_TF32, m64_tf32)
STEP_KERNELS(2, MATH_BF16, m32_bf16)
STEP_KERNELS(4, MATH_BF16, m64_bf16)
STEP_KERNELS(2, MATH_F16, m32_f16)
STEP_KERNELS(4, MATH_F16, m64_f16)

// ---- the step's VJP ---------------------------------------------------------------------------
// For f(y) = -K^T sigma(N(K y)) and a cotangent g, the pointwise middle of the VJP between its
// convolutions, one thread per pixel. From Z = K y (step_conv_ss: Z and the per-tile sums of
// squares of tvNorm) and G = K g it writes
//   sneg = -sigma(A), A = N(Z):  wgrad(g -> sneg) is K's first gradient term;
//   dz   = N's VJP of da = -sigma'(A) G, the cotangent of A:  K^T dz is the layer's dy and
//          wgrad(y -> dz) K's second term;
//   part_scale / part_shift [block][c]: the block's sums of da Z / r and da (tvNorm's scale and
//          shift gradients once channel_finish adds the blocks in order: deterministic).
// This replaces the composition's norm, activation, activation VJP, norm VJP, two channel
// reductions and four negations: one pass over Z and G instead of eleven.
// SYM_THREADS: pdenet_constants.cuh (the host launches that many).

extern "C" __global__ void __launch_bounds__(SYM_THREADS)
    sym_vjp_mid(const float* __restrict__ z, const float* __restrict__ ss_part, int n_parts,
                const float* __restrict__ gk, const float* __restrict__ s,
                const float* __restrict__ b, int tv, int act, int nb, int nc, int hw,
                float* __restrict__ sneg, float* __restrict__ dz, double* __restrict__ part_scale,
                double* __restrict__ part_shift) {
    __shared__ double red_s[SYM_THREADS], red_b[SYM_THREADS];
    const int nq = nb * hw, t = threadIdx.x;
    const int q = blockIdx.x * SYM_THREADS + t;
    const bool live = q < nq;
    const int n = live ? q / hw : 0, p = live ? q - n * hw : 0;
    const size_t base = (size_t)n * nc * hw + p;
    float r = 1.0f;
    if (tv && live) {
        NormAct na = {ss_part, n_parts, s, b, tv, act};
        r = tv_norm_at(na, q, nq);
    }
    const double ird = 1.0 / (double)r;
    double dot = 0.0, ssd = 0.0;  // sum_c s_c da_c Z_c, sum_c Z_c^2
    for (int c = 0; c < nc; c++) {
        double da = 0.0, zc = 0.0;
        if (live) {
            const size_t i = base + (size_t)c * hw;
            zc = z[i];
            const float a = tv ? s[c] * z[i] / r + b[c] : z[i] + b[c];
            sneg[i] = -act_fwd(act, a);
            // Rounded to f32 once, here: the second pass reads it back, and with few channels
            // its two terms cancel, so both must see the same da.
            dz[i] = -act_grad(act, a) * gk[i];  // shift: N's VJP is the identity; tv: below
            da = dz[i];
            dot = fma((double)(tv ? s[c] : 1.0f) * da, zc, dot);
            ssd = fma(zc, zc, ssd);
        }
        red_s[t] = da * zc * ird;
        red_b[t] = da;
        __syncthreads();
        for (int off = SYM_THREADS / 2; off > 0; off >>= 1) {
            if (t < off) {
                red_s[t] += red_s[t + off];
                red_b[t] += red_b[t + off];
            }
            __syncthreads();
        }
        if (t == 0) {
            part_scale[(size_t)blockIdx.x * nc + c] = red_s[0];
            part_shift[(size_t)blockIdx.x * nc + c] = red_b[0];
        }
        __syncthreads();
    }
    if (!tv || !live) return;
    // dz_c = s_c da_c / r - Z_c (sum_c' s_c' da_c' Z_c') / r^3 with r from the sums of squares
    // in double, as tvnorm_vjp_dx: with few channels the two terms cancel to s_c da_c eps / r^3.
    const double irs = 1.0 / sqrt(ssd + TV_EPS_D), k3 = dot * irs * irs * irs;
    for (int c = 0; c < nc; c++) {
        const size_t i = base + (size_t)c * hw;
        dz[i] = (float)((double)s[c] * (double)dz[i] * irs - (double)z[i] * k3);
    }
}
