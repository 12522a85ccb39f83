// The TNRD reaction-diffusion stage (restore::tnrd, Chen & Pock 2017) on grey images
// [nb, 1, h, w] with nf filters of s x s (s odd) under symmetric (edge-repeating) padding:
//   out = u - sum_i K_i^T phi_i(K_i u) - lambda (u - f),
// phi_i(z) = sum_j w_ij exp(-(z - mu_j)^2 / (2 gamma^2)) over TN_CENTRES centres.
// The stage is four passes, each one of the op's pieces:
//   tnrd_response   v[b, i, p] = (K_i u_b)[p]           the convolution (also e = K_i g)
//   tnrd_phi        z = phi_i(v), de = phi_i'(v) e      the pointwise RBF influence function
//   tnrd_adjoint    x - c (x - y) - sum_i K_i^T z_i     the adjoint convolution and the reaction
//   *_partial       dK, dw and dlambda sums per split, in double; channel_finish (norm.cu)
//                   adds the splits in order, so every gradient is bit-for-bit repeatable.
// The references are src/backend/reference/tnrd.rs (f64) and .ci/emu/emu.cpp.
#include "common.cuh"

// From pdenet_constants.cuh: TN_THREADS; TN_CENTRES centres spanning [-TN_MU_MAX, TN_MU_MAX],
// their spacing equal to the width TN_GAMMA; Gaussians beyond TN_WINDOW widths (< 1.6e-8) are
// left out of phi, as on the CPU.

// Symmetric reflection of i into [0, n) (period 2n), as `reflect` in reference/tnrd.rs.
__device__ __forceinline__ int tn_reflect(int i, int n) {
    int m = 2 * n;
    int r = i % m;
    if (r < 0) r += m;
    return r >= n ? m - 1 - r : r;
}

__device__ __forceinline__ float tn_centre(int j) {
    return -TN_MU_MAX + 2.0f * TN_MU_MAX * (float)j / (float)(TN_CENTRES - 1);
}

// The sources p in [0, n) with reflect(p + off, n) == q: p + off is q + 2 n m or -1 - q + 2 n m.
// An interval of n integers holds at most two of these (s0, s1; returns how many, maybe 0).
// Two scalars, not an array, so that nothing lives in local memory.
__device__ __forceinline__ int tn_sources(int q, int off, int n, int& s0, int& s1) {
    int cnt = 0;
    s0 = 0;
    s1 = 0;
    int mmax = 1 + (off < 0 ? -off : off) / n;
    for (int m = -mmax; m <= mmax; m++) {
        int a = q + 2 * n * m - off, b = -1 - q + 2 * n * m - off;
        if (a >= 0 && a < n) {
            if (cnt == 0) s0 = a; else s1 = a;
            cnt++;
        }
        if (b >= 0 && b < n) {
            if (cnt == 0) s0 = b; else s1 = b;
            cnt++;
        }
    }
    return min(cnt, 2);
}

// v[b, i, p] = sum_{a, c} k[i, a, c] u[b, reflect(y + a - r), reflect(x + c - r)]: the
// correlation of every filter with every image, taps in the reference's order.
extern "C" __global__ void tnrd_response(const float* __restrict__ u, const float* __restrict__ k,
                                         float* __restrict__ v, int nb, int nf, int h, int w,
                                         int s) {
    const int hw = h * w, r = s / 2;
    FOR_EACH(e, nb * nf * hw) {
        int plane = e / hw, p = e - plane * hw;
        int b = plane / nf, i = plane - b * nf;
        int y = p / w, x = p - y * w;
        const float* ub = u + (size_t)b * hw;
        const float* ki = k + (size_t)i * s * s;
        float acc = 0.0f;
        for (int a = 0; a < s; a++) {
            const float* row = ub + (size_t)tn_reflect(y + a - r, h) * w;
            for (int c = 0; c < s; c++) acc += ki[a * s + c] * row[tn_reflect(x + c - r, w)];
        }
        v[e] = acc;
    }
}

// phi_i(z) and phi_i'(z) over the centres within TN_WINDOW widths of z.
__device__ __forceinline__ void tn_phi(float z, const float* wts, float& val, float& der) {
    const float inv_g = 1.0f / TN_GAMMA;
    // Clamped before the conversion (a huge or NaN z would not fit an int; NaN stays in d).
    float t = fminf(fmaxf((z + TN_MU_MAX) * inv_g, -1000.0f), 1000.0f);
    int j0 = (int)rintf(t);
    int lo = max(j0 - TN_WINDOW, 0), hi = min(j0 + TN_WINDOW, TN_CENTRES - 1);
    float v = 0.0f, dv = 0.0f;
    for (int j = lo; j <= hi; j++) {
        float d = (z - tn_centre(j)) * inv_g;
        float g = wts[j] * expf(-0.5f * d * d);
        v += g;
        dv -= g * d;
    }
    val = v;
    der = dv * inv_g;
}

// In place over nb * nf planes of hw values: v <- phi_i(v); with `with_e`, also
// e <- phi_i'(v) e (the cotangent through phi). No __restrict__: the outputs alias the inputs.
extern "C" __global__ void tnrd_phi(float* v, float* e, const float* __restrict__ rbf, int nb,
                                    int nf, int hw, int with_e) {
    FOR_EACH(t, nb * nf * hw) {
        int i = (t / hw) % nf;
        float val, der;
        tn_phi(v[t], rbf + (size_t)i * TN_CENTRES, val, der);
        v[t] = val;
        if (with_e) e[t] = der * e[t];
    }
}

// out[b, q] = x[b, q] - c (x[b, q] - (has_y ? y[b, q] : 0)) - sum_i (K_i^T z_{b,i})[q], the
// adjoint gathered: tap (a, cc) of K_i^T at q reads z at every p with reflect(p + tap - r) = q.
extern "C" __global__ void tnrd_adjoint(const float* __restrict__ z, const float* __restrict__ k,
                                        const float* __restrict__ x, const float* __restrict__ y,
                                        float* __restrict__ out, int nb, int nf, int h, int w,
                                        int s, float c, int has_y) {
    const int hw = h * w, r = s / 2;
    FOR_EACH(e, nb * hw) {
        int b = e / hw, q = e - b * hw;
        int qy = q / w, qx = q - qy * w;
        float acc = 0.0f;
        for (int a = 0; a < s; a++) {
            int y0, y1;
            int ny = tn_sources(qy, a - r, h, y0, y1);
            if (ny == 0) continue;
            for (int cc = 0; cc < s; cc++) {
                int x0, x1;
                int nx = tn_sources(qx, cc - r, w, x0, x1);
                if (nx == 0) continue;
                for (int i = 0; i < nf; i++) {
                    const float* zi = z + ((size_t)b * nf + i) * hw;
                    float sum = zi[y0 * w + x0];
                    if (nx > 1) sum += zi[y0 * w + x1];
                    if (ny > 1) {
                        sum += zi[y1 * w + x0];
                        if (nx > 1) sum += zi[y1 * w + x1];
                    }
                    acc += k[((size_t)i * s + a) * s + cc] * sum;
                }
            }
        }
        float xv = x[e];
        out[e] = xv - c * (xv - (has_y ? y[e] : 0.0f)) - acc;
    }
}

// The sum of a block's values in thread 0's red[0] (red: TN_THREADS doubles).
__device__ __forceinline__ double tn_block_sum(double v, double* red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int off = TN_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
        __syncthreads();
    }
    return red[0];
}

// Filter gradient partials, grid (nf * s * s, splits): for filter i and tap t = (a, cc),
// partial[split][i * s * s + t] = sum over the split's (b, p) of
//   z[b, i, p] g[b, p + t] + de[b, i, p] u[b, p + t]   (p + t reflected into the image);
// dK is minus their sum (channel_finish with scale -1).
extern "C" __global__ void __launch_bounds__(TN_THREADS)
    tnrd_wgrad_partial(const float* __restrict__ z, const float* __restrict__ g,
                       const float* __restrict__ de, const float* __restrict__ u, int nb, int nf,
                       int h, int w, int s, int chunk, double* __restrict__ partial) {
    __shared__ double red[TN_THREADS];
    const int ss = s * s, r = s / 2, hw = h * w, total = nb * hw;
    const int i = blockIdx.x / ss, t = blockIdx.x - i * ss;
    const int a = t / s, cc = t - a * s;
    const int beg = blockIdx.y * chunk, end = min(total, beg + chunk);
    double acc = 0.0;
    for (int e = beg + threadIdx.x; e < end; e += TN_THREADS) {
        int b = e / hw, p = e - b * hw;
        int y = p / w, x = p - y * w;
        size_t img = (size_t)b * hw, pl = ((size_t)b * nf + i) * hw;
        int src = tn_reflect(y + a - r, h) * w + tn_reflect(x + cc - r, w);
        acc += (double)z[pl + p] * g[img + src] + (double)de[pl + p] * u[img + src];
    }
    double sum = tn_block_sum(acc, red);
    if (threadIdx.x == 0) partial[(size_t)blockIdx.y * nf * ss + blockIdx.x] = sum;
}

// RBF weight gradient partials, grid (nf * TN_CENTRES, splits): for filter i and centre j,
// partial[split][i * TN_CENTRES + j] = sum over the split's (b, p) of e[b, i, p] G_j(v[b, i, p])
// (every centre, as the reference); dw is minus their sum.
extern "C" __global__ void __launch_bounds__(TN_THREADS)
    tnrd_rbf_partial(const float* __restrict__ v, const float* __restrict__ e, int nb, int nf,
                     int hw, int chunk, double* __restrict__ partial) {
    __shared__ double red[TN_THREADS];
    const int i = blockIdx.x / TN_CENTRES, j = blockIdx.x - i * TN_CENTRES;
    const int total = nb * hw;
    const int beg = blockIdx.y * chunk, end = min(total, beg + chunk);
    const float mu = tn_centre(j), inv_g = 1.0f / TN_GAMMA;
    double acc = 0.0;
    for (int t = beg + threadIdx.x; t < end; t += TN_THREADS) {
        int b = t / hw, p = t - b * hw;
        size_t at = ((size_t)b * nf + i) * hw + p;
        float d = (v[at] - mu) * inv_g;
        acc += (double)e[at] * (double)expf(-0.5f * d * d);
    }
    double sum = tn_block_sum(acc, red);
    if (threadIdx.x == 0) partial[(size_t)blockIdx.y * nf * TN_CENTRES + blockIdx.x] = sum;
}

// lambda gradient partials, grid (1, splits): partial[split] = sum g (u - f) over the split;
// dlambda is minus their sum.
extern "C" __global__ void __launch_bounds__(TN_THREADS)
    tnrd_dot_partial(const float* __restrict__ g, const float* __restrict__ u,
                     const float* __restrict__ f, int len, int chunk,
                     double* __restrict__ partial) {
    __shared__ double red[TN_THREADS];
    const int beg = blockIdx.y * chunk, end = min(len, beg + chunk);
    double acc = 0.0;
    for (int t = beg + threadIdx.x; t < end; t += TN_THREADS)
        acc += (double)g[t] * ((double)u[t] - (double)f[t]);
    double sum = tn_block_sum(acc, red);
    if (threadIdx.x == 0) partial[blockIdx.y] = sum;
}
