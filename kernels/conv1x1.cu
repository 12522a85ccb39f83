// 1x1 convolution (also the dense operator): forward, transpose and weight gradient, the same
// implicit GEMMs as the 3x3 family with a single tap.
#include "conv_gemm.cuh"

IGEMM_FWD_KERNEL(conv1x1_fwd_m32, 2, 1, false)
IGEMM_FWD_KERNEL(conv1x1_fwd_m64, 4, 1, false)
IGEMM_FWD_KERNEL(conv1x1_t_m32, 2, 1, true)
IGEMM_FWD_KERNEL(conv1x1_t_m64, 4, 1, true)
WGRAD_KERNEL(conv1x1_wgrad, 1)
