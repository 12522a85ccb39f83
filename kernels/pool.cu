// 2x2 average pooling, global mean, and channel-range copies (split / concat).
#include "common.cuh"

extern "C" __global__ void avgpool2(const float* __restrict__ x, float* __restrict__ y, int nc,
                                    int h, int w) {
    int ph = h / 2, pw = w / 2;
    FOR_EACH(o, nc * ph * pw) {
        int plane = o / (ph * pw), r = o - plane * ph * pw;
        int i = r / pw, j = r - i * pw;
        const float* xp = x + (size_t)plane * h * w + (2 * i) * w + 2 * j;
        y[o] = (xp[0] + xp[1] + xp[w] + xp[w + 1]) / 4.0f;
    }
}

// Odd trailing rows / columns were dropped by the pooling and get zero gradient.
extern "C" __global__ void avgpool2_vjp(const float* __restrict__ dy, float* __restrict__ dx,
                                        int nc, int h, int w) {
    int ph = h / 2, pw = w / 2;
    FOR_EACH(e, nc * h * w) {
        int plane = e / (h * w), r = e - plane * h * w;
        int i = r / w, j = r - i * w;
        float v = 0.0f;
        if (i / 2 < ph && j / 2 < pw) v = dy[((size_t)plane * ph + i / 2) * pw + j / 2] / 4.0f;
        dx[e] = v;
    }
}

// One warp per (n, c) plane: fixed strided order and a fixed shuffle tree (deterministic).
extern "C" __global__ void global_mean(const float* __restrict__ x, float* __restrict__ y, int nc,
                                       int hw) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= nc) return;
    const float* xp = x + (size_t)warp * hw;
    float s = 0.0f;
    for (int p = lane; p < hw; p += 32) s += xp[p];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) y[warp] = s / (float)hw;
}

extern "C" __global__ void global_mean_vjp(const float* __restrict__ dy, float* __restrict__ dx,
                                           int hw, int len) {
    FOR_EACH(i, len) dx[i] = dy[i / hw] / (float)hw;
}

// dst[n, dst_off + c, p] = src[n, src_off + c, p] for c < cc.
extern "C" __global__ void copy_channels(const float* __restrict__ src, float* __restrict__ dst,
                                         int nb, int hw, int cc, int c_src, int src_off, int c_dst,
                                         int dst_off) {
    FOR_EACH(e, nb * cc * hw) {
        int n = e / (cc * hw), r = e - n * cc * hw;
        int c = r / hw, p = r - c * hw;
        dst[((size_t)n * c_dst + dst_off + c) * hw + p] = src[((size_t)n * c_src + src_off + c) * hw + p];
    }
}
