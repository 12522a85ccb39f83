// Minimal CPU emulation of the CUDA constructs the kernels use, to check their indexing
// without a GPU: every block runs as blockDim.x host threads with a barrier for
// __syncthreads; __shared__ becomes static (blocks run one at a time).
#pragma once
#include <barrier>
#include <cstring>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>
#include <algorithm>
// CUDA device code calls isfinite unqualified.
using std::isfinite;
using std::min;
using std::max;
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* g_bar = nullptr;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
inline void __syncthreads() { g_bar->arrive_and_wait(); }
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
// Explicitly rounded arithmetic (no contraction: the emulator builds in ISO C++ mode).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline int __float2int_rz(float v) {
    if (std::isnan(v)) return 0;
    if (v >= 2147483647.0f) return INT32_MAX;
    if (v <= -2147483648.0f) return INT32_MIN;
    return (int)v;
}
inline long long __double2ll_rz(double v) {
    if (std::isnan(v)) return 0;
    if (v >= 9.2233720368547758e18) return INT64_MAX;
    if (v <= -9.2233720368547758e18) return INT64_MIN;
    return (long long)v;
}
inline float __int2float_rn(int v) { return (float)v; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// Tensor-core emulation: conv_gemm.cuh's six pack / mma helpers, with the fragment layouts of the PTX
// ISA. Every thread of the block reaches each mma together (uniform control flow), so the warp's
// exchange of fragments goes through a block barrier.
#define PDENET_EMU 1
#include <cstring>
inline float emu_bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t emu_float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
// Round to bf16, nearest even (NaN kept quiet), as cvt.rn.bf16.f32.
inline uint32_t emu_bf16(float f) {
    uint32_t u = emu_float_bits(f);
    if (std::isnan(f)) return 0x7fc0u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline unsigned pack_bf16x2(float lo, float hi) { return emu_bf16(lo) | (emu_bf16(hi) << 16); }
// Round to tf32 (10 mantissa bits), nearest with ties away from zero, as cvt.rna.tf32.f32.
inline unsigned to_tf32(float x) {
    if (std::isnan(x)) return emu_float_bits(x);
    return (emu_float_bits(x) + 0x1000u) & 0xffffe000u;
}
inline float emu_bf16_lo(uint32_t r) { return emu_bits_float(r << 16); }
inline float emu_bf16_hi(uint32_t r) { return emu_bits_float(r & 0xffff0000u); }
// Round to IEEE half, nearest even, as cvt.rn.f16.f32: overflow to inf, subnormals below 2^-14,
// NaN kept (quiet).
inline uint32_t emu_f16(float f) {
    const uint32_t u = emu_float_bits(f), sign = (u >> 16) & 0x8000u;
    if (std::isnan(f)) return sign | 0x7e00u;
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (midway past 65504): inf
    if (a < 0x38800000u) {                        // below 2^-14: subnormal half (or zero)
        if (a < 0x33000000u) return sign;         // below 2^-25 (half the least subnormal): 0
        const uint32_t m = (a & 0x7fffffu) | 0x800000u;
        const int shift = 126 - (int)(a >> 23);    // 14..24: units of 2^-24 = m >> shift
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return sign | r;  // a carry into bit 10 is the least normal, as it should be
    }
    // Normal: rebias the exponent (127 -> 15), round the 13 dropped bits to nearest even; a
    // mantissa carry moves into the exponent, and up to inf only past the check above.
    const uint32_t v = a - 0x38000000u;
    return sign | ((v + 0xfffu + ((v >> 13) & 1u)) >> 13);
}
inline unsigned pack_f16x2(float lo, float hi) { return emu_f16(lo) | (emu_f16(hi) << 16); }
// IEEE half bits (low 16) to float, exactly.
inline float emu_f16_float(uint32_t h) {
    const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 31) return emu_bits_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) return (sign ? -1.0f : 1.0f) * std::ldexp((float)m, -24);
    return emu_bits_float(sign | ((e + 112) << 23) | (m << 13));
}
inline float emu_f16_lo(uint32_t r) { return emu_f16_float(r & 0xffffu); }
inline float emu_f16_hi(uint32_t r) { return emu_f16_float(r >> 16); }
inline uint32_t g_mma_a[32][32][4], g_mma_b[32][32][2];
// KDIM 16: m16n8k16 with bf16 (F16 false) or f16 (F16 true) halves; KDIM 8: tf32 m16n8k8.
template <int KDIM, bool F16 = false>
void emu_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int i = 0; i < 4; i++) g_mma_a[warp][lane][i] = a[i];
    for (int i = 0; i < 2; i++) g_mma_b[warp][lane][i] = b[i];
    __syncthreads();
    float A[16][16] = {}, B[16][8] = {};
    for (int l = 0; l < 32; l++) {
        const int g = l / 4, t = l % 4;
        const uint32_t* fa = g_mma_a[warp][l];
        const uint32_t* fb = g_mma_b[warp][l];
        if (KDIM == 16) {  // bf16 / f16 m16n8k16
            auto lo = [](uint32_t r) { return F16 ? emu_f16_lo(r) : emu_bf16_lo(r); };
            auto hi = [](uint32_t r) { return F16 ? emu_f16_hi(r) : emu_bf16_hi(r); };
            const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int r = 0; r < 4; r++) {
                A[rows[r]][cols[r]] = lo(fa[r]);
                A[rows[r]][cols[r] + 1] = hi(fa[r]);
            }
            B[2 * t][g] = lo(fb[0]);
            B[2 * t + 1][g] = hi(fb[0]);
            B[2 * t + 8][g] = lo(fb[1]);
            B[2 * t + 9][g] = hi(fb[1]);
        } else {  // tf32 m16n8k8
            A[g][t] = emu_bits_float(fa[0]);
            A[g + 8][t] = emu_bits_float(fa[1]);
            A[g][t + 4] = emu_bits_float(fa[2]);
            A[g + 8][t + 4] = emu_bits_float(fa[3]);
            B[t][g] = emu_bits_float(fb[0]);
            B[t + 4][g] = emu_bits_float(fb[1]);
        }
    }
    __syncthreads();
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; i++) {
        const int r = g + (i / 2) * 8, c = 2 * t + (i % 2);
        float s = d[i];
        for (int k = 0; k < KDIM; k++) s += A[r][k] * B[k][c];
        d[i] = s;
    }
}
inline void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) { emu_mma<16>(d, a, b); }
inline void mma_f16_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) { emu_mma<16, true>(d, a, b); }
inline void mma_tf32_1688(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) { emu_mma<8>(d, a, b); }

template <class F>
void launch(dim3 grid, dim3 block, F f) {
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                std::barrier<> bar(block.x);
                g_bar = &bar;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < block.x; t++)
                    ts.emplace_back([&, t] {
                        threadIdx.x = t;
                        blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz;
                        f();
                    });
                for (auto& t : ts) t.join();
            }
}
// CUDA's pi-scaled trigonometry (device accuracy is a few ulp; the host's double is closer).
inline void sincospif(float x, float* s, float* c) {
    double a = 3.14159265358979323846 * (double)x;
    *s = (float)std::sin(a);
    *c = (float)std::cos(a);
}
inline float sinpif(float x) { return (float)std::sin(3.14159265358979323846 * (double)x); }
