//! The kernel entry points as types: a launch names a variant, so a kernel missing from the table
//! or misspelt is a compile error, and [`super::Cuda`] loads every variant at start-up (a table
//! entry missing from the PTX is a load error, never a failure mid-run).

use crate::backend::Precision;

/// Declares `$ty`, one variant per entry point of each `kernels/<module>.cu`.
macro_rules! kernel_table {
    ($(#[$doc:meta])* $ty:ident {
        $($module:literal => { $($variant:ident = $name:literal),* $(,)? }),* $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $ty {
            $($($variant),*),*
        }

        impl $ty {
            /// Every entry point in declaration order, so `k as usize` is its index here.
            pub(crate) const ALL: &'static [$ty] = &[$($($ty::$variant),*),*];

            /// The entry point's name (without precision or pipeline suffixes).
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $($($ty::$variant => $name),*),*
                }
            }

            /// The `kernels/<module>.cu` that defines it.
            pub(crate) fn module(self) -> &'static str {
                match self {
                    $($($ty::$variant => $module),*),*
                }
            }
        }
    };
}

kernel_table! {
    /// Entry points that exist once (f32 arithmetic, no tile variants).
    Kernel {
        "conv3x3" => { ReduceSplits = "reduce_splits" },
        "fused_step" => { SymVjpMid = "sym_vjp_mid" },
        "norm" => {
            ChannelPartial = "channel_partial",
            ChannelFinish = "channel_finish",
            AddChannelBias = "add_channel_bias",
            TvnormFwd = "tvnorm_fwd",
            TvnormVjpDx = "tvnorm_vjp_dx",
            BnApply = "bn_apply",
            BnVjpDx = "bn_vjp_dx",
            BnUpdateRunning = "bn_update_running",
            ScaledSqPartial = "scaled_sq_partial",
        },
        "pointwise" => {
            Lincomb4 = "lincomb4",
            Axpy = "axpy",
            ActFwd = "act_fwd_kernel",
            ActVjp = "act_vjp_kernel",
            Quantize = "quantize",
            Dequantize = "dequantize",
            FixedUpdate = "fixed_update",
            FixedAxpy = "fixed_axpy",
            Pack16 = "pack16",
            Unpack16 = "unpack16",
        },
        "optim" => { SgdStep = "sgd_step", AdamStep = "adam_step" },
        "pool" => {
            Avgpool2 = "avgpool2",
            Avgpool2Vjp = "avgpool2_vjp",
            GlobalMean = "global_mean",
            GlobalMeanVjp = "global_mean_vjp",
            CopyChannels = "copy_channels",
        },
        "loss" => { SoftmaxXent = "softmax_xent" },
        "structured" => {
            Stencil5Apply = "stencil5_apply",
            Stencil5WgradPartial = "stencil5_wgrad_partial",
            HaarApply = "haar_apply",
            HaarFixedApply = "haar_fixed_apply",
            DiffusionSolvePlanes = "diffusion_solve_planes",
            DiffusionDdiffPartial = "diffusion_ddiff_partial",
        },
        "tnrd" => {
            TnrdResponse = "tnrd_response",
            TnrdPhi = "tnrd_phi",
            TnrdAdjoint = "tnrd_adjoint",
            TnrdWgradPartial = "tnrd_wgrad_partial",
            TnrdRbfPartial = "tnrd_rbf_partial",
            TnrdDotPartial = "tnrd_dot_partial",
        },
    }
}

kernel_table! {
    /// The implicit-GEMM tiles (kernels/conv_gemm.cuh): each exists for every [`Precision`]
    /// (suffix `_tf32`, `_bf16`, `_f16`; none for f32), each also unpipelined (`_np`).
    TensorCoreKernel {
        "conv3x3" => {
            Conv3x3FwdM32 = "conv3x3_fwd_m32",
            Conv3x3FwdM64 = "conv3x3_fwd_m64",
            Conv3x3TM32 = "conv3x3_t_m32",
            Conv3x3TM64 = "conv3x3_t_m64",
            Conv3x3WgradM64 = "conv3x3_wgrad",
            Conv3x3WgradM32 = "conv3x3_wgrad_m32",
        },
        "conv1x1" => {
            Conv1x1FwdM32 = "conv1x1_fwd_m32",
            Conv1x1FwdM64 = "conv1x1_fwd_m64",
            Conv1x1TM32 = "conv1x1_t_m32",
            Conv1x1TM64 = "conv1x1_t_m64",
            Conv1x1WgradM64 = "conv1x1_wgrad",
            Conv1x1WgradM32 = "conv1x1_wgrad_m32",
        },
        "fused_step" => {
            StepConvSsM32 = "step_conv_ss_m32",
            StepConvSsM64 = "step_conv_ss_m64",
            StepConvtM32 = "step_convt_m32",
            StepConvtM64 = "step_convt_m64",
        },
    }
}

/// Kernel-name suffixes of the tensor-core variants (kernels/conv_gemm.cuh), by precision.
fn math_suffix(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "",
        Precision::Tf32 => "_tf32",
        Precision::Bf16 => "_bf16",
        Precision::F16 => "_f16",
    }
}

impl TensorCoreKernel {
    /// The PTX name of the variant in precision `p`, pipelined or not (`_np`).
    pub(crate) fn variant_name(self, p: Precision, pipelined: bool) -> String {
        let pipe = if pipelined { "" } else { "_np" };
        format!("{}{}{pipe}", self.name(), math_suffix(p))
    }

    /// The variant's index among the loaded functions: kernel, then precision, then pipeline,
    /// the order in which [`super::Cuda`] loads them.
    pub(crate) fn variant_index(self, p: Precision, pipelined: bool) -> usize {
        let precision = Precision::ALL.iter().position(|&q| q == p).unwrap_or(0);
        (self as usize * Precision::ALL.len() + precision) * 2 + usize::from(!pipelined)
    }

    /// The forward (`trans` false) or transposed GEMM of a convolution with `taps` = 9 (3x3) or
    /// 1 (1x1) on the 32- or 64-row output-channel tile.
    pub(crate) fn conv(taps: usize, trans: bool, m32: bool) -> TensorCoreKernel {
        use TensorCoreKernel::*;
        match (taps == 9, trans, m32) {
            (true, false, true) => Conv3x3FwdM32,
            (true, false, false) => Conv3x3FwdM64,
            (true, true, true) => Conv3x3TM32,
            (true, true, false) => Conv3x3TM64,
            (false, false, true) => Conv1x1FwdM32,
            (false, false, false) => Conv1x1FwdM64,
            (false, true, true) => Conv1x1TM32,
            (false, true, false) => Conv1x1TM64,
        }
    }

    /// The weight-gradient GEMM of a convolution with `taps` = 9 or 1.
    pub(crate) fn wgrad(taps: usize, m32: bool) -> TensorCoreKernel {
        use TensorCoreKernel::*;
        match (taps == 9, m32) {
            (true, true) => Conv3x3WgradM32,
            (true, false) => Conv3x3WgradM64,
            (false, true) => Conv1x1WgradM32,
            (false, false) => Conv1x1WgradM64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Kernel, TensorCoreKernel};
    use crate::backend::Precision;

    #[test]
    fn table_indices_follow_declaration_order() {
        for (i, k) in Kernel::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
        let mut seen = Vec::new();
        for &k in TensorCoreKernel::ALL {
            for p in Precision::ALL {
                for pipelined in [true, false] {
                    seen.push(k.variant_index(p, pipelined));
                }
            }
        }
        assert_eq!(seen, (0..seen.len()).collect::<Vec<_>>());
        let k = TensorCoreKernel::Conv3x3WgradM64;
        assert_eq!(
            k.variant_name(Precision::Bf16, false),
            "conv3x3_wgrad_bf16_np"
        );
    }

    /// Every plain entry is a kernel of its module's text (the tile macros of the tensor-core
    /// ones are checked when the PTX loads).
    #[test]
    fn every_table_entry_is_defined_by_its_module() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let read = |m: &str| std::fs::read_to_string(root.join(format!("{m}.cu"))).unwrap();
        for k in Kernel::ALL {
            let src = read(k.module());
            assert!(
                src.contains(&format!(" {}(", k.name())),
                "kernels/{}.cu has no entry point `{}`",
                k.module(),
                k.name()
            );
        }
    }
}
