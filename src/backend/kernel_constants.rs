// The constants that the Rust backends and the CUDA kernels share, defined here only.
//
// build.rs `include!`s this file and writes every entry of `KERNEL_CONSTANTS` as a `#define` of
// `pdenet_constants.cuh` (included by kernels/common.cuh); .ci/kernel-constants.rs does the same
// for the scripts that compile the kernels without cargo. So that the text compiles in all three
// places it holds plain items only: no `use`, no `crate::` paths, no inner doc comments.

/// tvNorm epsilon (SPEC section 2).
pub const TV_EPS: f64 = 1e-4;
/// Batch-norm epsilon (SPEC section 2, PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Batch-norm momentum of the running statistics (PyTorch's default; the kernel takes it as an
/// argument).
pub const BN_MOMENTUM: f64 = 0.1;

/// The kernels' `act` argument for each `Activation`.
pub const ACT_RELU: i32 = 0;
pub const ACT_TANH: i32 = 1;
pub const ACT_LOGCOSH: i32 = 2;

/// The `format` argument of kernels/pointwise.cu `pack16` / `unpack16` for each 16-bit `Storage`.
pub const STORAGE_BF16: i32 = 1;
pub const STORAGE_F16: i32 = 2;

/// What kernels/norm.cu `channel_partial` sums per channel (its `mode`): `a`, `a b pv`,
/// `(a - cv)^2` and `a (b - cv) / sqrt(cv2 + eps)`.
pub const RED_A: i32 = 0;
pub const RED_A_B_P: i32 = 1;
pub const RED_SQDEV: i32 = 2;
pub const RED_A_XHAT: i32 = 3;

/// Implicit-GEMM tiles (kernels/conv_gemm.cuh): pixel columns per tile, depth per stage and
/// threads per block.
pub const BN: usize = 64;
pub const BK: usize = 16;
pub const NT: usize = 256;

/// Threads per block of the fixed-order block reductions: kernels/norm.cu, the step VJP's middle
/// (kernels/fused_step.cu), kernels/structured.cu and kernels/tnrd.cu. The host launches exactly
/// this many, since each block sums a shared array of this length.
pub const RED_THREADS: usize = 256;
pub const SYM_THREADS: usize = 256;
pub const S7_THREADS: usize = 256;
pub const TN_THREADS: usize = 256;

/// Largest image side of the diffusion kernels (their cas tables live in shared memory).
pub const DIFF_MAX: usize = 32;

/// TNRD's Gaussian RBFs: the number of centres, which span `[-TN_MU_MAX, TN_MU_MAX]` (the paper's
/// 310 on [0, 255], scaled to [0, 1]) with a spacing equal to the width `TN_GAMMA`, and the
/// window in widths beyond which the kernels leave a Gaussian out (< 1.6e-8).
pub const TN_CENTRES: usize = 63;
pub const TN_MU_MAX: f64 = 310.0 / 255.0;
pub const TN_GAMMA: f64 = 10.0 / 255.0;
pub const TN_WINDOW: usize = 6;

/// A value as the kernels see it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelValue {
    Int(i64),
    /// A `float` literal (the f32 nearest the Rust value).
    Float(f32),
    /// A `double` literal.
    Double(f64),
}

/// Every constant of `pdenet_constants.cuh`: its CUDA name and value.
pub const KERNEL_CONSTANTS: &[(&str, KernelValue)] = &[
    ("TV_EPS", KernelValue::Float(TV_EPS as f32)),
    ("TV_EPS_D", KernelValue::Double(TV_EPS)),
    ("BN_EPS", KernelValue::Double(BN_EPS)),
    ("ACT_RELU", KernelValue::Int(ACT_RELU as i64)),
    ("ACT_TANH", KernelValue::Int(ACT_TANH as i64)),
    ("ACT_LOGCOSH", KernelValue::Int(ACT_LOGCOSH as i64)),
    ("STORAGE_BF16", KernelValue::Int(STORAGE_BF16 as i64)),
    ("STORAGE_F16", KernelValue::Int(STORAGE_F16 as i64)),
    ("RED_A", KernelValue::Int(RED_A as i64)),
    ("RED_A_B_P", KernelValue::Int(RED_A_B_P as i64)),
    ("RED_SQDEV", KernelValue::Int(RED_SQDEV as i64)),
    ("RED_A_XHAT", KernelValue::Int(RED_A_XHAT as i64)),
    ("BN", KernelValue::Int(BN as i64)),
    ("BK", KernelValue::Int(BK as i64)),
    ("NT", KernelValue::Int(NT as i64)),
    ("RED_THREADS", KernelValue::Int(RED_THREADS as i64)),
    ("SYM_THREADS", KernelValue::Int(SYM_THREADS as i64)),
    ("S7_THREADS", KernelValue::Int(S7_THREADS as i64)),
    ("TN_THREADS", KernelValue::Int(TN_THREADS as i64)),
    ("DIFF_MAX", KernelValue::Int(DIFF_MAX as i64)),
    ("TN_CENTRES", KernelValue::Int(TN_CENTRES as i64)),
    ("TN_MU_MAX", KernelValue::Float(TN_MU_MAX as f32)),
    ("TN_GAMMA", KernelValue::Float(TN_GAMMA as f32)),
    ("TN_WINDOW", KernelValue::Int(TN_WINDOW as i64)),
];

/// The text of `pdenet_constants.cuh`. Floats are written in Rust's shortest round-trip form,
/// so each literal parses back to exactly the value above.
pub fn cuda_header() -> String {
    let mut text = String::from(
        "// Generated from src/backend/kernel_constants.rs by build.rs (and\n\
         // .ci/kernel-constants.rs); edit that file, not this one.\n#pragma once\n",
    );
    for (name, value) in KERNEL_CONSTANTS {
        let literal = match *value {
            KernelValue::Int(v) if v < 0 => format!("({v})"),
            KernelValue::Int(v) => format!("{v}"),
            KernelValue::Float(v) if v < 0.0 => format!("({v:?}f)"),
            KernelValue::Float(v) => format!("{v:?}f"),
            KernelValue::Double(v) if v < 0.0 => format!("({v:?})"),
            KernelValue::Double(v) => format!("{v:?}"),
        };
        text.push_str(&format!("#define {name} {literal}\n"));
    }
    text
}
