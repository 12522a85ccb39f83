// 3x3 convolution (zero padding 1, stride 1): forward, transpose (its adjoint) and weight
// gradient as implicit GEMMs. _m32 / _m64: output-channel tile of 32 or 64.
#include "conv_gemm.cuh"

IGEMM_FWD_KERNEL(conv3x3_fwd_m32, 2, 9, false)
IGEMM_FWD_KERNEL(conv3x3_fwd_m64, 4, 9, false)
IGEMM_FWD_KERNEL(conv3x3_t_m32, 2, 9, true)
IGEMM_FWD_KERNEL(conv3x3_t_m64, 4, 9, true)
WGRAD_KERNEL(conv3x3_wgrad, 9)

extern "C" __global__ void reduce_splits(const float* __restrict__ partial, float* __restrict__ out,
                                         int nsplit, int len) {
    reduce_splits_body(partial, out, nsplit, len);
}
