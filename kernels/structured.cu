// Operators of SPEC section 7 beside the grouped convolutions (which are the implicit GEMMs of
// conv_gemm.cuh with groups): the depthwise 5-point stencil of the lean operator, its adjoint and
// weight gradient, and the orthonormal 2x2 Haar transform (f32, and exact i32 fixed point).
#include "common.cuh"

// S7_THREADS and DIFF_MAX (below): pdenet_constants.cuh.

// Stencil taps in SPEC order: centre, up, down, left, right.
__device__ __forceinline__ int tap_di(int t) { return t == 1 ? -1 : (t == 2 ? 1 : 0); }
__device__ __forceinline__ int tap_dj(int t) { return t == 3 ? -1 : (t == 4 ? 1 : 0); }

// out[n, c, p] = sum_t D[c, t] x[n, c, p + off_t] (zero padding); `adjoint` reads p - off_t,
// the transpose of the same operator. Taps are added in SPEC order, as the reference does.
extern "C" __global__ void stencil5_apply(const float* __restrict__ x, const float* __restrict__ dw,
                                          float* __restrict__ out, int nb, int nc, int h, int w,
                                          int adjoint) {
    const int hw = h * w;
    const int sgn = adjoint ? -1 : 1;
    FOR_EACH(e, nb * nc * hw) {
        int plane = e / hw, p = e - plane * hw;
        int i = p / w, j = p - i * w, c = plane % nc;
        const float* xp = x + (size_t)plane * hw;
        float s = 0.0f;
#pragma unroll
        for (int t = 0; t < 5; t++) {
            int si = i + sgn * tap_di(t), sj = j + sgn * tap_dj(t);
            if (si >= 0 && si < h && sj >= 0 && sj < w) s += dw[c * 5 + t] * xp[si * w + sj];
        }
        out[e] = s;
    }
}

// Partial weight gradient of the stencil: partial[split][c * 5 + t] = sum over the split's
// (n, p) range of dz[n, c, p] x[n, c, p + off_t], in double; channel_finish (norm.cu) adds the
// splits in order. Grid (c, splits).
extern "C" __global__ void __launch_bounds__(S7_THREADS)
    stencil5_wgrad_partial(const float* __restrict__ x, const float* __restrict__ dz, int nb,
                           int nc, int h, int w, int chunk, double* __restrict__ partial) {
    __shared__ double red[5][S7_THREADS];
    const int c = blockIdx.x, split = blockIdx.y;
    const int hw = h * w, total = nb * hw;
    const int beg = split * chunk, end = min(total, beg + chunk);
    double s[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (int e = beg + threadIdx.x; e < end; e += S7_THREADS) {
        int n = e / hw, p = e - n * hw;
        int i = p / w, j = p - i * w;
        size_t base = ((size_t)n * nc + c) * hw;
        double g = dz[base + p];
#pragma unroll
        for (int t = 0; t < 5; t++) {
            int si = i + tap_di(t), sj = j + tap_dj(t);
            if (si >= 0 && si < h && sj >= 0 && sj < w) s[t] += g * (double)x[base + si * w + sj];
        }
    }
#pragma unroll
    for (int t = 0; t < 5; t++) red[t][threadIdx.x] = s[t];
    __syncthreads();
    for (int off = S7_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off)
#pragma unroll
            for (int t = 0; t < 5; t++) red[t][threadIdx.x] += red[t][threadIdx.x + off];
        __syncthreads();
    }
    if (threadIdx.x < 5) partial[(size_t)split * nc * 5 + c * 5 + threadIdx.x] = red[threadIdx.x][0];
}

// Haar: one thread per 2x2 block of one plane of the fine tensor [nb, nc, h, w] (h, w even).
// Block element t sits at (2i + t / 2, 2j + t % 2); filter f goes to channel 4c + f of the
// coarse tensor [nb, 4 nc, h / 2, w / 2]. Row f of HAAR is the sign pattern of filter f.
__device__ __forceinline__ int haar_sign(int f, int t) {
    // [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
    int neg = ((f & 1) && (t & 1)) ^ ((f >> 1) && (t >> 1));
    return neg ? -1 : 1;
}
__device__ __forceinline__ void haar_index(int e, int nc, int h, int w, size_t (&fine)[4],
                                           size_t (&coarse)[4]) {
    int h2 = h / 2, w2 = w / 2;
    int j = e % w2, i = (e / w2) % h2, plane = e / (h2 * w2);
    int n = plane / nc, c = plane - n * nc;
#pragma unroll
    for (int t = 0; t < 4; t++) {
        fine[t] = ((size_t)plane * h + 2 * i + t / 2) * w + 2 * j + t % 2;
        coarse[t] = (((size_t)n * 4 * nc + 4 * c + t) * h2 + i) * w2 + j;
    }
}

// y = H x (forward, fine -> coarse) or x = H y (inverse: H is symmetric and orthonormal).
extern "C" __global__ void haar_apply(const float* __restrict__ src, float* __restrict__ dst,
                                      int nb, int nc, int h, int w, int inverse) {
    FOR_EACH(e, nb * nc * (h / 2) * (w / 2)) {
        size_t fine[4], coarse[4];
        haar_index(e, nc, h, w, fine, coarse);
        float b[4];
#pragma unroll
        for (int t = 0; t < 4; t++) b[t] = src[inverse ? coarse[t] : fine[t]];
#pragma unroll
        for (int f = 0; f < 4; f++) {
            float v = 0.0f;
#pragma unroll
            for (int t = 0; t < 4; t++) v += haar_sign(f, t) * b[t];
            dst[inverse ? fine[f] : coarse[f]] = v / 2.0f;
        }
    }
}

// Fixed point: forward 2 H q (the integer sums, wrapping), inverse the sums divided by 4
// (arithmetic shift: exact, since the sums of a forward result are multiples of 4).
extern "C" __global__ void haar_fixed_apply(const int* __restrict__ src, int* __restrict__ dst,
                                            int nb, int nc, int h, int w, int inverse) {
    FOR_EACH(e, nb * nc * (h / 2) * (w / 2)) {
        size_t fine[4], coarse[4];
        haar_index(e, nc, h, w, fine, coarse);
        unsigned b[4];
#pragma unroll
        for (int t = 0; t < 4; t++) b[t] = (unsigned)src[inverse ? coarse[t] : fine[t]];
#pragma unroll
        for (int f = 0; f < 4; f++) {
            unsigned v = 0u;
#pragma unroll
            for (int t = 0; t < 4; t++) v += haar_sign(f, t) > 0 ? b[t] : 0u - b[t];
            dst[inverse ? fine[f] : coarse[f]] = inverse ? ((int)v) >> 2 : (int)v;
        }
    }
}

// The IMEX diffusion solve y = (I + h a_c L)^{-1} x, L the periodic 5-point negative Laplacian,
// a_c = diff_c^2, one block per plane (n, c). The products cas_k(i) cas_l(j) of the real
// Hartley vectors cas_k(i) = cos(2 pi k i / N) + sin(2 pi k i / N) are eigenvectors of L with
// eigenvalue 4 sin^2(pi k / H) + 4 sin^2(pi l / W) (cos and sin of one frequency share it), and
// the cas matrix C_N is symmetric with C_N^2 = N I. So y = C_H D C_H x C_W D' C_W / (H W) as four
// small real matrix products in shared memory: no complex arithmetic and no FFT library.
// DIFF_MAX is the largest side (the host solves larger planes itself).

__device__ __forceinline__ float cas_of(int k, int i, int n) {
    float s, c;
    sincospif(2.0f * (float)((k * i) % n) / (float)n, &s, &c);
    return c + s;
}

// out = in C_W (in, out: h x w row-major in shared memory; C_W symmetric w x w).
__device__ __forceinline__ void times_cas_w(const float* in, const float* cw, float* out, int h,
                                            int w) {
    for (int e = threadIdx.x; e < h * w; e += S7_THREADS) {
        int i = e / w, l = e - i * w;
        float s = 0.0f;
        for (int j = 0; j < w; j++) s += in[i * w + j] * cw[j * w + l];
        out[e] = s;
    }
}
// out = C_H in (out may be global memory).
__device__ __forceinline__ void cas_h_times(const float* ch, const float* in, float* out, int h,
                                            int w) {
    for (int e = threadIdx.x; e < h * w; e += S7_THREADS) {
        int k = e / w, l = e - k * w;
        float s = 0.0f;
        for (int i = 0; i < h; i++) s += ch[k * h + i] * in[i * w + l];
        out[e] = s;
    }
}

extern "C" __global__ void __launch_bounds__(S7_THREADS)
    diffusion_solve_planes(const float* __restrict__ x, const float* __restrict__ diff,
                           float* __restrict__ y, int nc, int h, int w, float hstep) {
    __shared__ float a[DIFF_MAX * DIFF_MAX], b[DIFF_MAX * DIFF_MAX];
    __shared__ float ch[DIFF_MAX * DIFF_MAX], cw[DIFF_MAX * DIFF_MAX];
    const int plane = blockIdx.x, c = plane % nc, hw = h * w;
    const float coef = hstep * diff[c] * diff[c];
    const float* xp = x + (size_t)plane * hw;
    for (int e = threadIdx.x; e < h * h; e += S7_THREADS) ch[e] = cas_of(e / h, e % h, h);
    for (int e = threadIdx.x; e < w * w; e += S7_THREADS) cw[e] = cas_of(e / w, e % w, w);
    for (int e = threadIdx.x; e < hw; e += S7_THREADS) a[e] = xp[e];
    __syncthreads();
    times_cas_w(a, cw, b, h, w);
    __syncthreads();
    cas_h_times(ch, b, a, h, w);
    __syncthreads();
    // Divide by the eigenvalues of (I + h a_c L) and by H W (C_H^2 C_W^2 = H W I).
    for (int e = threadIdx.x; e < hw; e += S7_THREADS) {
        int k = e / w, l = e - k * w;
        float sk = sinpif((float)k / (float)h), sl = sinpif((float)l / (float)w);
        a[e] /= (1.0f + coef * 4.0f * (sk * sk + sl * sl)) * (float)hw;
    }
    __syncthreads();
    times_cas_w(a, cw, b, h, w);
    __syncthreads();
    cas_h_times(ch, b, y + (size_t)plane * hw, h, w);
}

// Per plane (n, c): partial[n * nc + c] = diff_c sum_p dx[p] (L y)[p] in double, L periodic;
// channel_finish (norm.cu) with scale -2 h adds the samples in order: the coefficient gradient
// -2 h diff_c sum_n (...).
extern "C" __global__ void __launch_bounds__(S7_THREADS)
    diffusion_ddiff_partial(const float* __restrict__ dx, const float* __restrict__ y,
                            const float* __restrict__ diff, int nc, int h, int w,
                            double* __restrict__ partial) {
    __shared__ double red[S7_THREADS];
    const int plane = blockIdx.x, hw = h * w;
    const float* yp = y + (size_t)plane * hw;
    const float* gp = dx + (size_t)plane * hw;
    double s = 0.0;
    for (int e = threadIdx.x; e < hw; e += S7_THREADS) {
        int i = e / w, j = e - i * w;
        double ly = 4.0 * yp[e] - yp[((i + h - 1) % h) * w + j] - yp[((i + 1) % h) * w + j] -
                    yp[i * w + (j + w - 1) % w] - yp[i * w + (j + 1) % w];
        s += (double)gp[e] * ly;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int off = S7_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[plane] = (double)diff[plane % nc] * red[0];
}
