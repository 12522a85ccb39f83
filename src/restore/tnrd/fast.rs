//! The f32 working path of a TNRD stage: a [`Stage`] with its zero-mean filters and lambda in
//! f32, run by the CPU backend's kernels ([`crate::backend::cpu::tnrd`]: images padded once,
//! row-slice loops that autovectorise, RBF sums over the 13 centres within 6 gamma, rayon over
//! filters for one image).

use crate::backend::cpu::tnrd as kernel;
pub use crate::backend::cpu::tnrd::{pad, phi, FastGrad, Filters};

use super::{zero_mean, Stage};

/// A stage in f32 with its zero-mean filters and lambda precomputed.
#[derive(Debug, Clone)]
pub struct FastStage {
    pub k: Vec<f32>,
    pub rbf: Vec<f32>,
    pub lambda: f32,
    pub size: usize,
    pub filters: usize,
}

impl FastStage {
    pub fn new(st: &Stage, size: usize) -> FastStage {
        let k: Vec<f32> = zero_mean(&st.w, size).iter().map(|&v| v as f32).collect();
        FastStage {
            filters: k.len() / (size * size),
            k,
            rbf: st.rbf.iter().map(|&v| v as f32).collect(),
            lambda: st.log_lambda.exp() as f32,
            size,
        }
    }
    /// The parameters as the kernels take them.
    pub fn view(&self) -> Filters<'_> {
        Filters {
            k: &self.k,
            rbf: &self.rbf,
            lambda: self.lambda,
            size: self.size,
            filters: self.filters,
        }
    }
}

/// One stage on one thread (for callers that parallelise over images).
pub fn forward_seq(st: &FastStage, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32> {
    kernel::forward_seq(&st.view(), u, f, w, h)
}

/// One stage with rayon over the filters (one large image).
pub fn forward(st: &FastStage, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32> {
    kernel::forward(&st.view(), u, f, w, h)
}

/// The VJP of one stage on one thread for the output gradient `g` (`dk` against the
/// zero-mean filters, `dlambda` against lambda).
pub fn vjp_seq(st: &FastStage, u: &[f32], f: &[f32], g: &[f32], w: usize, h: usize) -> FastGrad {
    kernel::vjp_seq(&st.view(), u, f, g, w, h)
}
