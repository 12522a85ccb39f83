// 1x1 convolution (also the dense operator): forward, transpose and weight gradient, the same
// implicit GEMMs as the 3x3 family with a single tap.
#include "conv_gemm.cuh"

CONV_FAMILY(conv1x1, 1)
