// Implicit-GEMM convolution tiles shared by conv3x3.cu, conv1x1.cu and fused_step.cu.
//
// Forward / transpose: out[n, m, p] = sum_{c, t} A[m, (c, t)] * in[n, c, p + shift(t)], a GEMM
// with M = output channels, N = pixels of the whole batch (q = n*HW + p), K = Cg * TAPS.
// Tiles are BM x 64 outputs, BK = 16 deep, 256 threads each owning TM x 4 outputs, operands
// staged in shared memory (the input patches are gathered on the fly, never materialised).
#pragma once
#include "common.cuh"

#define BN 64
#define BK 16
#define NT 256

// The fused step's prologue: each gathered value z becomes sigma(N(z)) before the GEMM.
struct NormAct {
    const float* ss_part;  // [n_parts][NQ] partial per-pixel sums of squares (tv only)
    int n_parts;
    const float* s;  // tvNorm scale [Cg] (tv only)
    const float* b;  // shift [Cg]
    int tv;
    int act;
};

// Decomposed pixel of a tile column.
struct Pix {
    int n, i, j;
    bool ok;
};

__device__ __forceinline__ Pix pixel_of(int q, int nq, int h, int w) {
    Pix px;
    px.ok = q < nq;
    int hw = h * w;
    int qq = px.ok ? q : 0;
    px.n = qq / hw;
    int p = qq - px.n * hw;
    px.i = p / w;
    px.j = p - px.i * w;
    return px;
}

// acc[TM][4] += the (m0, q0) tile of the GEMM. TRANS: the weight is read as the adjoint
// (conv_transpose2d): A[m, (o, t)] = K[o, m, TAPS-1-t]. PRO: apply NormAct to gathered values.
template <int TM, int TAPS, bool TRANS, bool PRO>
__device__ __forceinline__ void igemm_tile(const float* __restrict__ x, const float* __restrict__ wt,
                                           int nb, int cg, int mo, int h, int w, NormAct na,
                                           int m0, int q0, float (&acc)[TM][4]) {
    const int BM = 16 * TM;
    __shared__ __align__(16) float As[BK][16 * TM];
    __shared__ __align__(16) float Bs[BK][BN];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int hw = h * w, nq = nb * hw;
    const int ktot = cg * TAPS;

    // Each thread gathers a fixed pixel column of the B tile.
    const int qcol = tid % BN;
    const Pix px = pixel_of(q0 + qcol, nq, h, w);
    const float* xn = x + (size_t)px.n * cg * hw;

#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < ktot; k0 += BK) {
        // A tile: weights, m fastest (conflict-free shared stores; weights are L2-resident).
        for (int e = tid; e < BM * BK; e += NT) {
            int m = e % BM, kk = e / BM;
            int gm = m0 + m, k = k0 + kk;
            float v = 0.0f;
            if (gm < mo && k < ktot) {
                int c = k / TAPS, t = k - c * TAPS;
                v = TRANS ? wt[((size_t)c * mo + gm) * TAPS + (TAPS - 1 - t)]
                          : wt[((size_t)gm * cg + c) * TAPS + t];
            }
            As[kk][m] = v;
        }
        // B tile: shifted input pixels (zero padding), pixels fastest (coalesced).
#pragma unroll
        for (int r = 0; r < (BK * BN) / NT; r++) {
            int kk = tid / BN + r * (NT / BN);
            int k = k0 + kk;
            float v = 0.0f;
            if (px.ok && k < ktot) {
                int c = k / TAPS, t = k - c * TAPS;
                int si = px.i, sj = px.j;
                if constexpr (TAPS == 9) {
                    si += t / 3 - 1;
                    sj += t % 3 - 1;
                }
                if (si >= 0 && si < h && sj >= 0 && sj < w) {
                    v = xn[(size_t)c * hw + si * w + sj];
                    if (PRO) {
                        float u;
                        if (na.tv) {
                            int qs = px.n * hw + si * w + sj;
                            float ss = 0.0f;
                            for (int part = 0; part < na.n_parts; part++)
                                ss += na.ss_part[(size_t)part * nq + qs];
                            u = na.s[c] * v / sqrtf(ss + TV_EPS) + na.b[c];
                        } else {
                            u = v + na.b[c];
                        }
                        v = act_fwd(na.act, u);
                    }
                }
            }
            Bs[kk][qcol] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float a[TM], b[4];
            if constexpr (TM == 4) {
                float4 a4 = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
                a[0] = a4.x; a[1] = a4.y; a[2] = a4.z; a[3] = a4.w;
            } else {
                float2 a2 = *reinterpret_cast<const float2*>(&As[kk][ty * 2]);
                a[0] = a2.x; a[1] = a2.y;
            }
            float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            b[0] = b4.x; b[1] = b4.y; b[2] = b4.z; b[3] = b4.w;
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// Stores a finished tile to out [nb, mo, h, w] (thread owns channels ty*TM+i, pixels tx*4+j).
template <int TM>
__device__ __forceinline__ void store_tile(float* __restrict__ out, const float (&acc)[TM][4],
                                           int nb, int mo, int hw, int m0, int q0) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int nq = nb * hw;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int q = q0 + tx * 4 + j;
        if (q >= nq) continue;
        int n = q / hw, p = q - n * hw;
#pragma unroll
        for (int i = 0; i < TM; i++) {
            int m = m0 + ty * TM + i;
            if (m < mo) out[((size_t)n * mo + m) * hw + p] = acc[i][j];
        }
    }
}

// Weight gradient: dK[m, (c, t)] = sum_q dz[n, m, p] * x[n, c, p + shift(t)] over the pixel
// range of split blockIdx.z, written to partial[z][m * cg * TAPS + col] (dK's own layout), so
// that a fixed-order reduction over splits finishes it: deterministic, no atomics.
template <int TAPS>
__device__ __forceinline__ void wgrad_tile(const float* __restrict__ x, const float* __restrict__ dz,
                                           int nb, int cg, int mo, int h, int w, int chunk,
                                           float* __restrict__ partial) {
    const int BM = 64;
    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];
    __shared__ int sh_n[BK], sh_i[BK], sh_j[BK];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int hw = h * w, nq = nb * hw;
    const int ncol = cg * TAPS;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    const int qbeg = blockIdx.z * chunk;
    const int qend = min(nq, qbeg + chunk);

    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = qbeg; k0 < qend; k0 += BK) {
        if (tid < BK) {
            int q = k0 + tid;
            Pix px = pixel_of(q < qend ? q : nq, nq, h, w);
            sh_n[tid] = px.ok ? px.n : -1;
            sh_i[tid] = px.i;
            sh_j[tid] = px.j;
        }
        __syncthreads();
        for (int e = tid; e < BM * BK; e += NT) {
            int kk = e % BK, m = e / BK;
            int n = sh_n[kk], gm = m0 + m;
            float v = 0.0f;
            if (n >= 0 && gm < mo) v = dz[((size_t)n * mo + gm) * hw + sh_i[kk] * w + sh_j[kk]];
            As[kk][m] = v;
        }
        for (int e = tid; e < BN * BK; e += NT) {
            int kk = e % BK, col = e / BK;
            int n = sh_n[kk], gc = c0 + col;
            float v = 0.0f;
            if (n >= 0 && gc < ncol) {
                int c = gc / TAPS, t = gc - c * TAPS;
                int si = sh_i[kk], sj = sh_j[kk];
                if constexpr (TAPS == 9) {
                    si += t / 3 - 1;
                    sj += t % 3 - 1;
                }
                if (si >= 0 && si < h && sj >= 0 && sj < w)
                    v = x[((size_t)n * cg + c) * hw + si * w + sj];
            }
            Bs[kk][col] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float4 a4 = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            float a[4] = {a4.x, a4.y, a4.z, a4.w};
            float b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
    float* dst = partial + (size_t)blockIdx.z * mo * ncol;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int m = m0 + ty * 4 + i;
        if (m >= mo) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int col = c0 + tx * 4 + j;
            if (col < ncol) dst[(size_t)m * ncol + col] = acc[i][j];
        }
    }
}

// out[i] = sum_s partial[s][i], in split order.
__device__ __forceinline__ void reduce_splits_body(const float* __restrict__ partial,
                                                   float* __restrict__ out, int nsplit, int len) {
    FOR_EACH(i, len) {
        float s = 0.0f;
        for (int z = 0; z < nsplit; z++) s += partial[(size_t)z * len + i];
        out[i] = s;
    }
}

#define IGEMM_FWD_KERNEL(name, TM, TAPS, TRANS)                                                  \
    extern "C" __global__ void __launch_bounds__(NT)                                             \
        name(const float* __restrict__ x, const float* __restrict__ wt, float* __restrict__ out, \
             int nb, int cg, int mo, int h, int w) {                                             \
        float acc[TM][4];                                                                        \
        NormAct na = {0, 0, 0, 0, 0, 0};                                                         \
        int m0 = blockIdx.y * 16 * TM, q0 = blockIdx.x * BN;                                     \
        igemm_tile<TM, TAPS, TRANS, false>(x, wt, nb, cg, mo, h, w, na, m0, q0, acc);            \
        store_tile<TM>(out, acc, nb, mo, h * w, m0, q0);                                         \
    }

#define WGRAD_KERNEL(name, TAPS)                                                                  \
    extern "C" __global__ void __launch_bounds__(NT)                                              \
        name(const float* __restrict__ x, const float* __restrict__ dz, float* __restrict__ part, \
             int nb, int cg, int mo, int h, int w, int chunk) {                                   \
        wgrad_tile<TAPS>(x, dz, nb, cg, mo, h, w, chunk, part);                                   \
    }
