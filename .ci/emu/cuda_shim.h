// Minimal CPU emulation of the CUDA constructs the kernels use, to check their indexing
// without a GPU: every block runs as blockDim.x host threads with a barrier for
// __syncthreads; __shared__ becomes static (blocks run one at a time).
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>
#include <algorithm>
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
