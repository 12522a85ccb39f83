// 3x3 convolution (zero padding 1, stride 1): forward, transpose (its adjoint) and weight
// gradient as implicit GEMMs. _m32 / _m64: output-channel tile of 32 or 64; _tf32 / _bf16 /
// _f16: tensor-core arithmetic (see conv_gemm.cuh).
#include "conv_gemm.cuh"

CONV_FAMILY(conv3x3, 9)

extern "C" __global__ void reduce_splits(const float* __restrict__ partial, float* __restrict__ out,
                                         int nsplit, int len) {
    reduce_splits_body(partial, out, nsplit, len);
}
