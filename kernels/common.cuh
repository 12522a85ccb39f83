// Shared definitions for every kernel family. No system headers: the same text must also
// compile under NVRTC, which has no standard library.
#pragma once

// TV_EPS, BN_EPS, the activation codes (ACT_*), tile sizes and the other values that the host
// code also uses: generated from src/backend/kernel_constants.rs (build.rs writes it).
#include "pdenet_constants.cuh"

__device__ __forceinline__ float act_fwd(int act, float x) {
    // x < 0 ? 0 : x, not x > 0 ? x : 0: relu(NaN) is NaN, as in PyTorch.
    if (act == ACT_RELU) return x < 0.0f ? 0.0f : x;
    if (act == ACT_TANH) return tanhf(x);
    // log(e^x + e^-x) = |x| + log1p(e^{-2|x|}), without overflow.
    float ax = fabsf(x);
    return ax + log1pf(expf(-2.0f * ax));
}

// sigma'(x); relu'(0) = 0 as in PyTorch.
__device__ __forceinline__ float act_grad(int act, float x) {
    if (act == ACT_RELU) return x > 0.0f ? 1.0f : 0.0f;
    float t = tanhf(x);
    if (act == ACT_TANH) return 1.0f - t * t;
    return t;
}

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n) \
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)
