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
// A non-finite x sets *bad (every writer writes 1: no atomic needed), which the host turns into
// an error instead of a silent 0 or i32 limit.
extern "C" __global__ void quantize(const float* __restrict__ x, int* __restrict__ q, float scale,
                                   int len, int* __restrict__ bad) {
    FOR_EACH(i, len) {
        float v = x[i];
        if (!isfinite(v)) *bad = 1;
        q[i] = __float2int_rz(roundf(v * scale));
    }
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

// ---- kept states in 16 bits (Storage::Bf16 / Storage::F16) -----------------------------------
// Integer conversions, round to nearest even, identical to the `half` crate on the host (and
// testable in the CPU emulator, which has no PTX). STORAGE_BF16 / STORAGE_F16, the `format`
// argument: pdenet_constants.cuh.

__device__ __forceinline__ unsigned short f32_to_bf16_bits(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ unsigned short f32_to_f16_bits(float v) {
    const unsigned u = __float_as_uint(v);
    const unsigned sign = (u >> 16) & 0x8000u, exp = (u >> 23) & 0xffu, man = u & 0x7fffffu;
    if (exp == 0xffu) return (unsigned short)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
    const int e = (int)exp - 127 + 15;
    if (e >= 31) return (unsigned short)(sign | 0x7c00u);  // overflow to infinity
    if (e <= 0) {                                           // subnormal or zero
        if (14 - e > 24) return (unsigned short)sign;
        const unsigned m = man | 0x800000u, shift = (unsigned)(14 - e);
        unsigned hm = m >> shift;
        const unsigned round = 1u << (shift - 1);
        if ((m & round) && (m & (3u * round - 1u))) hm++;
        return (unsigned short)(sign | hm);
    }
    unsigned h = sign | ((unsigned)e << 10) | (man >> 13);
    if ((man & 0x1000u) && (man & 0x2fffu)) h++;  // a carry into the exponent is correct
    return (unsigned short)h;
}

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short b) {
    return __uint_as_float((unsigned)b << 16);
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
    const unsigned sign = ((unsigned)h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  // m 2^-24, exact in f32
        const float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

extern "C" __global__ void pack16(const float* __restrict__ x, unsigned short* __restrict__ h,
                                  int len, int format) {
    FOR_EACH(i, len) h[i] = format == STORAGE_F16 ? f32_to_f16_bits(x[i]) : f32_to_bf16_bits(x[i]);
}

extern "C" __global__ void unpack16(const unsigned short* __restrict__ h, float* __restrict__ x,
                                    int len, int format) {
    FOR_EACH(i, len) x[i] = format == STORAGE_F16 ? f16_bits_to_f32(h[i]) : bf16_bits_to_f32(h[i]);
}
