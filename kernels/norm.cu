// Per-channel affine maps and normalisations: channel bias / sum, tvNorm, batch norm.
// Channel reductions are deterministic: channel_partial writes one double per (split, channel)
// in a fixed layout, channel_finish adds the splits in order.
#include "common.cuh"

// RED_THREADS and the modes below: pdenet_constants.cuh.
// What channel_partial sums over (n, p) for channel c:
//   RED_A       a
//   RED_A_B_P   a * b * pv[n, p]                       (tvNorm scale grad: dy * x / r)
//   RED_SQDEV   (a - cv[c])^2                          (batch-norm variance)
//   RED_A_XHAT  a * (b - cv[c]) / sqrt(cv2[c] + eps)   (batch-norm dgamma)

extern "C" __global__ void __launch_bounds__(RED_THREADS)
    channel_partial(int mode, const float* __restrict__ a, const float* __restrict__ b,
                    const float* __restrict__ pv, const float* __restrict__ cv,
                    const float* __restrict__ cv2, int nb, int nc, int hw, int chunk,
                    double* __restrict__ partial) {
    __shared__ double red[RED_THREADS];
    const int c = blockIdx.x, split = blockIdx.y;
    const int total = nb * hw;
    const int beg = split * chunk, end = min(total, beg + chunk);
    double mean = 0.0, inv = 0.0;
    if (mode == RED_SQDEV || mode == RED_A_XHAT) mean = cv[c];
    if (mode == RED_A_XHAT) inv = 1.0 / sqrt((double)cv2[c] + BN_EPS);
    double s = 0.0;
    for (int e = beg + threadIdx.x; e < end; e += RED_THREADS) {
        int n = e / hw, p = e - n * hw;
        size_t idx = ((size_t)n * nc + c) * hw + p;
        double v = a[idx];
        if (mode == RED_A_B_P) v = v * (double)b[idx] * (double)pv[e];
        else if (mode == RED_SQDEV) v = (v - mean) * (v - mean);
        else if (mode == RED_A_XHAT) v = v * (((double)b[idx] - mean) * inv);
        s += v;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int off = RED_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[(size_t)split * nc + c] = red[0];
}

// out[c] = scale * sum_split partial[split][c].
extern "C" __global__ void channel_finish(const double* __restrict__ partial, int nsplit, int nc,
                                          double scale, float* __restrict__ out) {
    FOR_EACH(c, nc) {
        double s = 0.0;
        for (int z = 0; z < nsplit; z++) s += partial[(size_t)z * nc + c];
        out[c] = (float)(s * scale);
    }
}

extern "C" __global__ void add_channel_bias(const float* __restrict__ x, const float* __restrict__ b,
                                            float* __restrict__ y, int nc, int hw, int len) {
    FOR_EACH(i, len) y[i] = x[i] + b[(i / hw) % nc];
}

// One thread per pixel (n, p); the channel loop reads coalesced rows of consecutive pixels.
extern "C" __global__ void tvnorm_fwd(const float* __restrict__ x, const float* __restrict__ s,
                                      const float* __restrict__ b, float* __restrict__ y, int nb,
                                      int nc, int hw) {
    FOR_EACH(e, nb * hw) {
        int n = e / hw, p = e - n * hw;
        const float* xp = x + (size_t)n * nc * hw + p;
        float ss = 0.0f;
        for (int c = 0; c < nc; c++) ss = fmaf(xp[(size_t)c * hw], xp[(size_t)c * hw], ss);
        float r = sqrtf(ss + TV_EPS);
        float* yp = y + (size_t)n * nc * hw + p;
        for (int c = 0; c < nc; c++) yp[(size_t)c * hw] = s[c] * xp[(size_t)c * hw] / r + b[c];
    }
}

// dx_c = s_c dy_c / r - x_c (sum_c' s_c' dy_c' x_c') / r^3; also writes rinv[n, p] = 1 / r
// for the scale gradient.
extern "C" __global__ void tvnorm_vjp_dx(const float* __restrict__ x, const float* __restrict__ s,
                                         const float* __restrict__ dy, float* __restrict__ dx,
                                         float* __restrict__ rinv, int nb, int nc, int hw) {
    FOR_EACH(e, nb * hw) {
        int n = e / hw, p = e - n * hw;
        size_t base = (size_t)n * nc * hw + p;
        // Double precision: with few channels, s dy / r - x dot / r^3 cancels to s dy eps / r^3.
        double ss = 0.0, dot = 0.0;
        for (int c = 0; c < nc; c++) {
            double xv = x[base + (size_t)c * hw];
            ss = fma(xv, xv, ss);
            dot = fma((double)s[c] * dy[base + (size_t)c * hw], xv, dot);
        }
        double ird = 1.0 / sqrt(ss + TV_EPS_D);
        double k3 = dot * ird * ird * ird;
        for (int c = 0; c < nc; c++) {
            size_t i = base + (size_t)c * hw;
            dx[i] = (float)((double)s[c] * dy[i] * ird - (double)x[i] * k3);
        }
        float ir = (float)ird;
        rinv[e] = ir;
    }
}

extern "C" __global__ void bn_apply(const float* __restrict__ x, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, const float* __restrict__ mean,
                                    const float* __restrict__ var, float* __restrict__ y, int nc,
                                    int hw, int len) {
    FOR_EACH(i, len) {
        int c = (i / hw) % nc;
        float inv = (float)(1.0 / sqrt((double)var[c] + BN_EPS));
        y[i] = gamma[c] * (x[i] - mean[c]) * inv + beta[c];
    }
}

// dx = gamma inv (dy - sum_dy / m - xhat sum_dy_xhat / m).
extern "C" __global__ void bn_vjp_dx(const float* __restrict__ x, const float* __restrict__ dy,
                                     const float* __restrict__ gamma, const float* __restrict__ mean,
                                     const float* __restrict__ var, const float* __restrict__ sum_dy,
                                     const float* __restrict__ sum_dy_xhat, float* __restrict__ dx,
                                     int nc, int hw, int len, float inv_m) {
    FOR_EACH(i, len) {
        int c = (i / hw) % nc;
        float inv = (float)(1.0 / sqrt((double)var[c] + BN_EPS));
        float xhat = (x[i] - mean[c]) * inv;
        dx[i] = gamma[c] * inv * (dy[i] - sum_dy[c] * inv_m - xhat * sum_dy_xhat[c] * inv_m);
    }
}

extern "C" __global__ void bn_update_running(float* __restrict__ rm, float* __restrict__ rv,
                                             const float* __restrict__ mean,
                                             const float* __restrict__ var, int nc, double momentum,
                                             double unbias) {
    FOR_EACH(c, nc) {
        rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * mean[c]);
        rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * var[c] * unbias);
    }
}

// The ODE controller's scaled squares (SPEC section 10): block z sums
// (x / (atol + rtol max(|a|, |b|)))^2 over [z chunk, (z + 1) chunk) in double into partial[z];
// the host adds the blocks in order, so the total does not depend on the launch.
extern "C" __global__ void __launch_bounds__(RED_THREADS)
    scaled_sq_partial(const float* __restrict__ x, const float* __restrict__ a,
                      const float* __restrict__ b, int len, int chunk, double atol, double rtol,
                      double* __restrict__ partial) {
    __shared__ double red[RED_THREADS];
    const int beg = blockIdx.x * chunk, end = min(len, beg + chunk);
    double s = 0.0;
    for (int e = beg + threadIdx.x; e < end; e += RED_THREADS) {
        double q = (double)x[e] / (atol + rtol * fmax(fabs((double)a[e]), fabs((double)b[e])));
        s += q * q;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int off = RED_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}
