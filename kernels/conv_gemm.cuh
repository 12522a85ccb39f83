// Implicit-GEMM convolution tiles shared by conv3x3.cu, conv1x1.cu and fused_step.cu.
//
// Forward / transpose: out[n, m, p] = sum_{c, t} A[m, (c, t)] * in[n, c, p + shift(t)], a GEMM
// with M = output channels, N = pixels of the whole batch (q = n*HW + p), K = Cg * TAPS.
// Tiles are BM x 64 outputs, BK = 16 deep, 256 threads each owning TM x 4 outputs, operands
// staged in shared memory (the input patches are gathered on the fly, never materialised).
//
// MATH selects the tile's arithmetic: MATH_F32 (CUDA-core FMA, exact f32), or the tensor cores
// with operands rounded to tf32 (mma m16n8k8), bf16 or f16 (mma m16n8k16), accumulating in f32.
// f16 has tf32's 10 mantissa bits but a narrow range: an operand above 65504 in magnitude becomes
// inf and one below 2^-14 loses bits as a subnormal; nothing here scales the operands.
// Storage stays f32 in every case; the tensor-core tiles round while reading shared memory.
#pragma once
#include "common.cuh"

// BN (pixel columns per tile), BK (depth per stage), NT (threads): pdenet_constants.cuh.

#define MATH_F32 0
#define MATH_TF32 1
#define MATH_BF16 2
#define MATH_F16 3

// The two 16-bit maths share the m16n8k16 fragment layout and differ only in pack and mma.
template <int MATH>
struct IsHalf16 {
    static constexpr bool v = MATH == MATH_BF16 || MATH == MATH_F16;
};

// Shared-memory row padding (floats) that makes each mode's fragment reads conflict-free:
// bf16 / f16 read rows 2t, 2t+1 (stride = 4 mod 32 banks), tf32 rows t, t+4 (stride = 8 mod 32).
template <int MATH>
struct SmemPad {
    static constexpr int v = IsHalf16<MATH>::v ? 4 : (MATH == MATH_TF32 ? 8 : 0);
};

#ifndef PDENET_EMU
// Two floats to a bf16x2 register, round to nearest even; lo goes to the low half.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// Two floats to an f16x2 register, round to nearest even (overflow to inf); lo in the low half.
__device__ __forceinline__ unsigned pack_f16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
// d += A (16x16, row) * B (16x8, col), bf16 operands, f32 accumulators.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// The same with f16 operands.
__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const unsigned (&a)[4],
                                              const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// d += A (16x8, row) * B (8x8, col), tf32 operands, f32 accumulators.
__device__ __forceinline__ void mma_tf32_1688(float (&d)[4], const unsigned (&a)[4],
                                              const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif  // the CPU emulator (.ci/emu/cuda_shim.h) defines the same six functions

// The 16-bit maths' pack and m16n8k16 mma, picked by MATH (MATH_BF16 or MATH_F16).
template <int MATH>
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    if constexpr (MATH == MATH_F16)
        return pack_f16x2(lo, hi);
    else
        return pack_bf16x2(lo, hi);
}
template <int MATH>
__device__ __forceinline__ void mma_half_16816(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
    if constexpr (MATH == MATH_F16)
        mma_f16_16816(d, a, b);
    else
        mma_bf16_16816(d, a, b);
}

// Tensor-core accumulation of one BK-deep stage: As[k][m] (lda), Bs[k][n] (ldb) -> the warp's
// fragments. 8 warps as 2 (m) x 4 (n); a warp owns (8 * TM) x 16 outputs: TM / 2 m16 tiles
// by two n8 tiles. Fragment layouts are those of the PTX ISA for mma.m16n8k16 / m16n8k8:
// g = lane / 4 picks rows (A, C) or the column (B), t = lane % 4 the k pairs / columns.
template <int TM, int MATH>
__device__ __forceinline__ void tc_stage(const float* As, int lda, const float* Bs, int ldb,
                                         float (&c)[TM / 2][2][4]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int mb = (warp / 4) * 8 * TM, nb = (warp % 4) * 16;
    if constexpr (IsHalf16<MATH>::v) {
        unsigned bf[2][2];
#pragma unroll
        for (int ni = 0; ni < 2; ni++) {
            const float* b = Bs + nb + ni * 8 + g;
            bf[ni][0] = pack_half2<MATH>(b[(2 * t) * ldb], b[(2 * t + 1) * ldb]);
            bf[ni][1] = pack_half2<MATH>(b[(2 * t + 8) * ldb], b[(2 * t + 9) * ldb]);
        }
#pragma unroll
        for (int mi = 0; mi < TM / 2; mi++) {
            const float* a = As + mb + mi * 16 + g;
            unsigned af[4];
            af[0] = pack_half2<MATH>(a[(2 * t) * lda], a[(2 * t + 1) * lda]);
            af[1] = pack_half2<MATH>(a[(2 * t) * lda + 8], a[(2 * t + 1) * lda + 8]);
            af[2] = pack_half2<MATH>(a[(2 * t + 8) * lda], a[(2 * t + 9) * lda]);
            af[3] = pack_half2<MATH>(a[(2 * t + 8) * lda + 8], a[(2 * t + 9) * lda + 8]);
#pragma unroll
            for (int ni = 0; ni < 2; ni++) mma_half_16816<MATH>(c[mi][ni], af, bf[ni]);
        }
    } else {
#pragma unroll
        for (int k8 = 0; k8 < BK; k8 += 8) {
            unsigned bf[2][2];
#pragma unroll
            for (int ni = 0; ni < 2; ni++) {
                const float* b = Bs + (k8 + t) * ldb + nb + ni * 8 + g;
                bf[ni][0] = to_tf32(b[0]);
                bf[ni][1] = to_tf32(b[4 * ldb]);
            }
#pragma unroll
            for (int mi = 0; mi < TM / 2; mi++) {
                const float* a = As + (k8 + t) * lda + mb + mi * 16 + g;
                unsigned af[4] = {to_tf32(a[0]), to_tf32(a[8]), to_tf32(a[4 * lda]),
                                  to_tf32(a[4 * lda + 8])};
#pragma unroll
                for (int ni = 0; ni < 2; ni++) mma_tf32_1688(c[mi][ni], af, bf[ni]);
            }
        }
    }
}

// CUDA-core accumulation of one stage: thread (tx, ty) owns rows ty * TM + i, columns tx * 4 + j.
template <int TM>
__device__ __forceinline__ void fma_stage(const float* As, int lda, const float* Bs, int ldb,
                                          float (&acc)[TM][4]) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
        float a[TM], b[4];
        if constexpr (TM == 4) {
            float4 a4 = *reinterpret_cast<const float4*>(&As[kk * lda + ty * 4]);
            a[0] = a4.x; a[1] = a4.y; a[2] = a4.z; a[3] = a4.w;
        } else {
            float2 a2 = *reinterpret_cast<const float2*>(&As[kk * lda + ty * 2]);
            a[0] = a2.x; a[1] = a2.y;
        }
        float4 b4 = *reinterpret_cast<const float4*>(&Bs[kk * ldb + tx * 4]);
        b[0] = b4.x; b[1] = b4.y; b[2] = b4.z; b[3] = b4.w;
#pragma unroll
        for (int i = 0; i < TM; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

template <int TM, int MATH>
__device__ __forceinline__ void mul_stage(const float* As, int lda, const float* Bs, int ldb,
                                          float (&acc)[TM][4], float (&cf)[TM / 2][2][4]) {
    if constexpr (MATH == MATH_F32)
        fma_stage<TM>(As, lda, Bs, ldb, acc);
    else
        tc_stage<TM, MATH>(As, lda, Bs, ldb, cf);
}

// Moves the warps' fragments into the FMA tiles' ownership (thread (tx, ty) holds rows
// ty * TM + i, columns tx * 4 + j) through shared memory, so every epilogue serves both paths.
template <int TM>
__device__ __forceinline__ void tc_to_acc(const float (&c)[TM / 2][2][4], float (&acc)[TM][4]) {
    __shared__ __align__(16) float Cs[16 * TM][BN + 4];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4;
    const int mb = (warp / 4) * 8 * TM, nb = (warp % 4) * 16;
#pragma unroll
    for (int mi = 0; mi < TM / 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++) {
            int r = mb + mi * 16 + g, col = nb + ni * 8 + 2 * t;
            Cs[r][col] = c[mi][ni][0];
            Cs[r][col + 1] = c[mi][ni][1];
            Cs[r + 8][col] = c[mi][ni][2];
            Cs[r + 8][col + 1] = c[mi][ni][3];
        }
    __syncthreads();
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < TM; i++) {
        float4 v = *reinterpret_cast<const float4*>(&Cs[ty * TM + i][tx * 4]);
        acc[i][0] = v.x; acc[i][1] = v.y; acc[i][2] = v.z; acc[i][3] = v.w;
    }
}

// The fused step's prologue: each gathered value z becomes sigma(N(z)) before the GEMM.
struct NormAct {
    const float* ss_part;  // [n_parts][NQ] partial per-pixel sums of squares (tv only)
    int n_parts;
    const float* s;  // tvNorm scale [Cg] (tv only)
    const float* b;  // shift [Cg]
    int tv;
    int act;
};

// Widest image whose tile-plus-halo norms fit the prologue's shared buffer.
#define MAX_HALO_W 128

// sqrt(sum_c z^2 + eps) at pixel q, from the per-tile partial sums.
__device__ __forceinline__ float tv_norm_at(const NormAct& na, int q, int nq) {
    float ss = 0.0f;
    for (int part = 0; part < na.n_parts; part++) ss += na.ss_part[(size_t)part * nq + q];
    return sqrtf(ss + TV_EPS);
}

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

// acc[TM][4] += the (m0, q0) tile of the GEMM of group blockIdx.z (of `groups`; PyTorch's
// grouped convolution, cg and mo channels per group). TRANS: the weight is read as the adjoint
// (conv_transpose2d): A[m, (o, t)] = K[o, m, TAPS-1-t]. PRO: apply NormAct to gathered values.
// PIPE: software pipeline: the next stage's operands are loaded into registers while the tensor
// cores (or FMAs) work on the current one, into a second shared-memory buffer, so one barrier
// per stage and the global-load latency hides behind the arithmetic. !PIPE: load, barrier,
// multiply, barrier (the first kernels; kept for A/B measurements, `_np` entry points).
template <int TM, int TAPS, bool TRANS, bool PRO, int MATH, bool PIPE = true>
__device__ __forceinline__ void igemm_tile(const float* __restrict__ x, const float* __restrict__ wt,
                                           int nb, int cg, int mo, int h, int w, int groups,
                                           NormAct na, int m0, int q0, float (&acc)[TM][4]) {
    constexpr int BM = 16 * TM;
    constexpr int PAD = SmemPad<MATH>::v;
    constexpr int NBUF = PIPE ? 2 : 1;
    constexpr int NA = BM * BK / NT;  // A values per thread and stage
    constexpr int NB = BK * BN / NT;  // B values per thread and stage
    __shared__ __align__(16) float As[NBUF][BK][16 * TM + PAD];
    __shared__ __align__(16) float Bs[NBUF][BK][BN + PAD];
    float cf[TM / 2][2][4];
    const int tid = threadIdx.x;
    const int hw = h * w, nq = nb * hw;
    const int ktot = cg * TAPS;

    // Each thread gathers a fixed pixel column of the B tile.
    const int qcol = tid % BN;
    const Pix px = pixel_of(q0 + qcol, nq, h, w);
    // Group blockIdx.z: input channels [g cg, (g+1) cg) of groups * cg, weights
    // K[g mo + m, c, t] (or, transposed, K[g cg + c, m, t]): the same block of K either way.
    x += (size_t)blockIdx.z * cg * hw;
    wt += (size_t)blockIdx.z * cg * mo * TAPS;
    const float* xn = x + (size_t)px.n * groups * cg * hw;

#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
#pragma unroll
    for (int i = 0; i < TM / 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) cf[i][j / 4][j % 4] = 0.0f;

    // tvNorm prologue: every gathered value needs its pixel's norm; compute each once per block
    // for the tile's pixels and their one-pixel halo (one row each side) instead of 9 x Cg times.
    __shared__ float norm_s[PRO ? BN + 2 * MAX_HALO_W + 2 : 1];
    const bool rs_ok = PRO && na.tv && w <= MAX_HALO_W;
    const int rs_base = q0 - w - 1;
    if (rs_ok) {
        for (int e = tid; e < BN + 2 * w + 2; e += NT) {
            int q = rs_base + e;
            norm_s[e] = q >= 0 && q < nq ? tv_norm_at(na, q, nq) : 1.0f;
        }
        __syncthreads();
    }

    // Stage k0's operands into registers: weights (m fastest: conflict-free shared stores,
    // L2-resident reads) and the shifted input pixels (zero padding; pixels fastest, coalesced).
    // `inside` marks gathered values that are not padding (the prologue transforms only those).
    float ra[NA], rb[NB];
    int inside = 0;
    auto load = [&](int k0) {
#pragma unroll
        for (int r = 0; r < NA; r++) {
            int e = tid + r * NT;
            int m = e % BM, kk = e / BM;
            int gm = m0 + m, k = k0 + kk;
            float v = 0.0f;
            if (gm < mo && k < ktot) {
                int c = k / TAPS, t = k - c * TAPS;
                v = TRANS ? wt[((size_t)c * mo + gm) * TAPS + (TAPS - 1 - t)]
                          : wt[((size_t)gm * cg + c) * TAPS + t];
            }
            ra[r] = v;
        }
        inside = 0;
#pragma unroll
        for (int r = 0; r < NB; r++) {
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
                    inside |= 1 << r;
                }
            }
            rb[r] = v;
        }
    };
    // Registers -> shared buffer `buf`, with sigma(N(.)) applied to the gathered values (PRO).
    auto stash = [&](int buf, int k0) {
#pragma unroll
        for (int r = 0; r < NA; r++) {
            int e = tid + r * NT;
            As[buf][e / BM][e % BM] = ra[r];
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            int kk = tid / BN + r * (NT / BN);
            float v = rb[r];
            if (PRO && (inside >> r & 1)) {
                int k = k0 + kk;
                int c = k / TAPS, t = k - c * TAPS;
                int si = px.i, sj = px.j;
                if constexpr (TAPS == 9) {
                    si += t / 3 - 1;
                    sj += t % 3 - 1;
                }
                float u;
                if (na.tv) {
                    int qs = px.n * hw + si * w + sj;
                    float rn = rs_ok ? norm_s[qs - rs_base] : tv_norm_at(na, qs, nq);
                    u = na.s[c] * v / rn + na.b[c];
                } else {
                    u = v + na.b[c];
                }
                v = act_fwd(na.act, u);
            }
            Bs[buf][kk][qcol] = v;
        }
    };

    if constexpr (PIPE) {
        load(0);
        stash(0, 0);
        __syncthreads();
        int buf = 0;
        for (int k0 = 0; k0 < ktot; k0 += BK) {
            const bool more = k0 + BK < ktot;
            if (more) load(k0 + BK);  // in flight during the multiply
            mul_stage<TM, MATH>(&As[buf][0][0], BM + PAD, &Bs[buf][0][0], BN + PAD, acc, cf);
            // The other buffer was last read before the previous barrier: free to overwrite.
            if (more) stash(buf ^ 1, k0 + BK);
            __syncthreads();
            buf ^= 1;
        }
    } else {
        for (int k0 = 0; k0 < ktot; k0 += BK) {
            load(k0);
            stash(0, k0);
            __syncthreads();
            mul_stage<TM, MATH>(&As[0][0][0], BM + PAD, &Bs[0][0][0], BN + PAD, acc, cf);
            __syncthreads();
        }
    }
    if constexpr (MATH != MATH_F32) tc_to_acc<TM>(cf, acc);
}

// Stores a finished tile to out [nb, groups * mo, h, w], group blockIdx.z (thread owns channels
// ty*TM+i, pixels tx*4+j).
template <int TM>
__device__ __forceinline__ void store_tile(float* __restrict__ out, const float (&acc)[TM][4],
                                           int nb, int mo, int hw, int groups, int m0, int q0) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int nq = nb * hw;
    out += (size_t)blockIdx.z * mo * hw;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        int q = q0 + tx * 4 + j;
        if (q >= nq) continue;
        int n = q / hw, p = q - n * hw;
#pragma unroll
        for (int i = 0; i < TM; i++) {
            int m = m0 + ty * TM + i;
            if (m < mo) out[((size_t)n * groups * mo + m) * hw + p] = acc[i][j];
        }
    }
}

// Weight gradient: dK[m, (c, t)] = sum_q dz[n, m, p] * x[n, c, p + shift(t)] over the pixel
// range of one split, written to partial[split][m * cg * TAPS + col] (dK's own layout), so
// that a fixed-order reduction over splits finishes it: deterministic, no atomics. blockIdx.z
// = group * nsplit + split; group g's rows of dK start at g mo. Tiles of BM = 16 TM output
// channels (TM = 2 for layers of at most 32 channels, so no half-empty tiles) by BN columns;
// the K dimension is pixels. Every thread's elements share one pixel of each stage
// (kk = tid % BK), which it decodes itself. PIPE as in igemm_tile.
template <int TM, int TAPS, int MATH, bool PIPE>
__device__ __forceinline__ void wgrad_tile(const float* __restrict__ x, const float* __restrict__ dz,
                                           int nb, int cg, int mo, int h, int w, int groups,
                                           int chunk, float* __restrict__ partial) {
    constexpr int BM = 16 * TM;
    constexpr int PAD = SmemPad<MATH>::v;
    constexpr int NBUF = PIPE ? 2 : 1;
    constexpr int NA = BM * BK / NT;
    constexpr int NB = BN * BK / NT;
    __shared__ __align__(16) float As[NBUF][BK][BM + PAD];
    __shared__ __align__(16) float Bs[NBUF][BK][BN + PAD];
    float cf[TM / 2][2][4];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int kk = tid % BK;
    const int hw = h * w, nq = nb * hw;
    const int ncol = cg * TAPS;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    const int nsplit = (nq + chunk - 1) / chunk;
    const int split = blockIdx.z % nsplit, grp = blockIdx.z / nsplit;
    x += (size_t)grp * cg * hw;
    dz += (size_t)grp * mo * hw;
    const int qbeg = split * chunk;
    const int qend = min(nq, qbeg + chunk);

    float acc[TM][4];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
#pragma unroll
    for (int i = 0; i < TM / 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) cf[i][j / 4][j % 4] = 0.0f;

    float ra[NA], rb[NB];
    auto load = [&](int k0) {
        const int q = k0 + kk;
        const Pix px = pixel_of(q < qend ? q : nq, nq, h, w);
#pragma unroll
        for (int r = 0; r < NA; r++) {
            int gm = m0 + (tid + r * NT) / BK;
            ra[r] = px.ok && gm < mo
                        ? dz[((size_t)px.n * groups * mo + gm) * hw + px.i * w + px.j]
                        : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < NB; r++) {
            int gc = c0 + (tid + r * NT) / BK;
            float v = 0.0f;
            if (px.ok && gc < ncol) {
                int c = gc / TAPS, t = gc - c * TAPS;
                int si = px.i, sj = px.j;
                if constexpr (TAPS == 9) {
                    si += t / 3 - 1;
                    sj += t % 3 - 1;
                }
                if (si >= 0 && si < h && sj >= 0 && sj < w)
                    v = x[((size_t)px.n * groups * cg + c) * hw + si * w + sj];
            }
            rb[r] = v;
        }
    };
    auto stash = [&](int buf) {
#pragma unroll
        for (int r = 0; r < NA; r++) As[buf][kk][(tid + r * NT) / BK] = ra[r];
#pragma unroll
        for (int r = 0; r < NB; r++) Bs[buf][kk][(tid + r * NT) / BK] = rb[r];
    };

    if constexpr (PIPE) {
        if (qbeg < qend) {
            load(qbeg);
            stash(0);
        }
        __syncthreads();
        int buf = 0;
        for (int k0 = qbeg; k0 < qend; k0 += BK) {
            const bool more = k0 + BK < qend;
            if (more) load(k0 + BK);
            mul_stage<TM, MATH>(&As[buf][0][0], BM + PAD, &Bs[buf][0][0], BN + PAD, acc, cf);
            if (more) stash(buf ^ 1);
            __syncthreads();
            buf ^= 1;
        }
    } else {
        for (int k0 = qbeg; k0 < qend; k0 += BK) {
            load(k0);
            stash(0);
            __syncthreads();
            mul_stage<TM, MATH>(&As[0][0][0], BM + PAD, &Bs[0][0][0], BN + PAD, acc, cf);
            __syncthreads();
        }
    }
    if constexpr (MATH != MATH_F32) tc_to_acc<TM>(cf, acc);
    float* dst = partial + ((size_t)split * groups + grp) * mo * ncol;
#pragma unroll
    for (int i = 0; i < TM; i++) {
        int m = m0 + ty * TM + i;
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

#define IGEMM_FWD_KERNEL_P(name, TM, TAPS, TRANS, MATH, PIPE, MINB)                             \
    extern "C" __global__ void __launch_bounds__(NT, MINB)                                       \
        name(const float* __restrict__ x, const float* __restrict__ wt, float* __restrict__ out, \
             int nb, int cg, int mo, int h, int w, int groups) {                                 \
        float acc[TM][4];                                                                        \
        NormAct na = {0, 0, 0, 0, 0, 0};                                                         \
        int m0 = blockIdx.y * 16 * TM, q0 = blockIdx.x * BN;                                     \
        igemm_tile<TM, TAPS, TRANS, false, MATH, PIPE>(x, wt, nb, cg, mo, h, w, groups, na, m0,  \
                                                       q0, acc);                                 \
        store_tile<TM>(out, acc, nb, mo, h * w, groups, m0, q0);                                 \
    }
// Pipelined entry point `name` (two blocks per SM: up to 128 registers, which the register
// stage needs to stay spill-free) and the unpipelined `name##_np` (A/B measurements).
#define IGEMM_FWD_KERNEL(name, TM, TAPS, TRANS, MATH)             \
    IGEMM_FWD_KERNEL_P(name, TM, TAPS, TRANS, MATH, true, 2)      \
    IGEMM_FWD_KERNEL_P(name##_np, TM, TAPS, TRANS, MATH, false, 1)

#define WGRAD_KERNEL_P(name, TM, TAPS, MATH, PIPE, MINB)                                          \
    extern "C" __global__ void __launch_bounds__(NT, MINB)                                        \
        name(const float* __restrict__ x, const float* __restrict__ dz, float* __restrict__ part, \
             int nb, int cg, int mo, int h, int w, int groups, int chunk) {                       \
        wgrad_tile<TM, TAPS, MATH, PIPE>(x, dz, nb, cg, mo, h, w, groups, chunk, part);           \
    }
// 64-row (`fam_wgrad`) and 32-row (`fam_wgrad_m32`) tiles with the math suffix `msuf`,
// pipelined and unpipelined (`_np`).
#define WGRAD_KERNEL(fam, TAPS, MATH, msuf)                                   \
    WGRAD_KERNEL_P(fam##_wgrad##msuf, 4, TAPS, MATH, true, 2)                 \
    WGRAD_KERNEL_P(fam##_wgrad##msuf##_np, 4, TAPS, MATH, false, 1)           \
    WGRAD_KERNEL_P(fam##_wgrad_m32##msuf, 2, TAPS, MATH, true, 2)             \
    WGRAD_KERNEL_P(fam##_wgrad_m32##msuf##_np, 2, TAPS, MATH, false, 1)

// Every forward / transpose / weight-gradient entry point of one family, in the four maths
// (suffixes "", _tf32, _bf16, _f16).
#define CONV_FAMILY(fam, TAPS)                                        \
    IGEMM_FWD_KERNEL(fam##_fwd_m32, 2, TAPS, false, MATH_F32)         \
    IGEMM_FWD_KERNEL(fam##_fwd_m64, 4, TAPS, false, MATH_F32)         \
    IGEMM_FWD_KERNEL(fam##_t_m32, 2, TAPS, true, MATH_F32)            \
    IGEMM_FWD_KERNEL(fam##_t_m64, 4, TAPS, true, MATH_F32)            \
    WGRAD_KERNEL(fam, TAPS, MATH_F32, )                               \
    IGEMM_FWD_KERNEL(fam##_fwd_m32_tf32, 2, TAPS, false, MATH_TF32)   \
    IGEMM_FWD_KERNEL(fam##_fwd_m64_tf32, 4, TAPS, false, MATH_TF32)   \
    IGEMM_FWD_KERNEL(fam##_t_m32_tf32, 2, TAPS, true, MATH_TF32)      \
    IGEMM_FWD_KERNEL(fam##_t_m64_tf32, 4, TAPS, true, MATH_TF32)      \
    WGRAD_KERNEL(fam, TAPS, MATH_TF32, _tf32)                         \
    IGEMM_FWD_KERNEL(fam##_fwd_m32_bf16, 2, TAPS, false, MATH_BF16)   \
    IGEMM_FWD_KERNEL(fam##_fwd_m64_bf16, 4, TAPS, false, MATH_BF16)   \
    IGEMM_FWD_KERNEL(fam##_t_m32_bf16, 2, TAPS, true, MATH_BF16)      \
    IGEMM_FWD_KERNEL(fam##_t_m64_bf16, 4, TAPS, true, MATH_BF16)      \
    WGRAD_KERNEL(fam, TAPS, MATH_BF16, _bf16)                         \
    IGEMM_FWD_KERNEL(fam##_fwd_m32_f16, 2, TAPS, false, MATH_F16)     \
    IGEMM_FWD_KERNEL(fam##_fwd_m64_f16, 4, TAPS, false, MATH_F16)     \
    IGEMM_FWD_KERNEL(fam##_t_m32_f16, 2, TAPS, true, MATH_F16)        \
    IGEMM_FWD_KERNEL(fam##_t_m64_f16, 4, TAPS, true, MATH_F16)        \
    WGRAD_KERNEL(fam, TAPS, MATH_F16, _f16)
