//! The f64 specification of a TNRD stage and its VJP on a [`Stage`]'s trained parameters: the
//! zero-mean projection and `lambda = exp(log_lambda)` around the stage formula of
//! [`crate::backend::reference::tnrd`] (plain loops, full RBF sums), which the reference
//! backend's `tnrd_stage` ops run too.

pub use crate::backend::reference::tnrd::{conv, conv_t, gaussian, phi};
use crate::backend::reference::tnrd::{stage, stage_vjp};

use super::{zero_mean, zero_mean_grad, Stage, StageGrad};

/// One stage: `u - sum_i K_i^T phi_i(K_i u) - lambda (u - f)`.
pub fn forward(st: &Stage, u: &[f64], f: &[f64], w: usize, h: usize, s: usize) -> Vec<f64> {
    stage(
        &zero_mean(&st.w, s),
        &st.rbf,
        st.log_lambda.exp(),
        u,
        f,
        w,
        h,
        s,
    )
}

/// The VJP of [`forward`] for the output gradient `g`.
pub fn vjp(st: &Stage, u: &[f64], f: &[f64], g: &[f64], w: usize, h: usize, s: usize) -> StageGrad {
    let lam = st.log_lambda.exp();
    let gr = stage_vjp(&zero_mean(&st.w, s), &st.rbf, lam, u, f, g, w, h, s);
    let mut dw = gr.dk;
    zero_mean_grad(&mut dw, s);
    StageGrad {
        du: gr.du,
        df: gr.df,
        dw,
        drbf: gr.drbf,
        dlog_lambda: lam * gr.dlambda,
    }
}
