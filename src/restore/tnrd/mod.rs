//! Trainable nonlinear reaction diffusion (Chen & Pock 2017). One stage is
//! `u_t = u_{t-1} - ( sum_i K_i^T phi_i(K_i u_{t-1}) + lambda_t (u_{t-1} - f) )`
//! with zero-mean filters `K_i = W_i - mean(W_i)` (symmetric padding, `K^T` its exact adjoint),
//! Gaussian RBF influence functions and `lambda_t = exp(log_lambda_t)`.
//! `reference` is the f64 specification (plain loops) on a [`Stage`]'s parameters, `fast` the
//! f32 path used for training; both call the stage formulas that the backends run
//! (`Backend::tnrd_stage`: [`crate::backend::reference::tnrd`], [`crate::backend::cpu::tnrd`] and
//! the CUDA kernels of `kernels/tnrd.cu`), and [`denoise`] runs a model on any backend.

pub mod fast;
pub mod io;
pub mod reference;
pub mod train;

pub use crate::backend::reference::tnrd::{centre, reflect, CENTRES, GAMMA, MU_MAX};

/// Parameters of one stage (f64, as trained).
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Unconstrained filters `W`, `filters * size * size`; the used filter is `W - mean(W)`.
    pub w: Vec<f64>,
    /// RBF weights, `filters * CENTRES`.
    pub rbf: Vec<f64>,
    /// `lambda = exp(log_lambda)`.
    pub log_lambda: f64,
}

/// A TNRD model: stages of `filters` filters of `size x size` for noise level `sigma`.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub sigma: f64,
    pub filters: usize,
    pub size: usize,
    pub stages: Vec<Stage>,
}

/// Gradients of a stage's output against its input image, the noisy image and its parameters.
#[derive(Debug, Clone)]
pub struct StageGrad {
    pub du: Vec<f64>,
    pub df: Vec<f64>,
    pub dw: Vec<f64>,
    pub drbf: Vec<f64>,
    pub dlog_lambda: f64,
}

/// The zero-mean filters `W_i - mean(W_i)`.
pub fn zero_mean(w: &[f64], size: usize) -> Vec<f64> {
    let n = size * size;
    let mut k = w.to_vec();
    for f in k.chunks_mut(n) {
        let m = f.iter().sum::<f64>() / n as f64;
        f.iter_mut().for_each(|v| *v -= m);
    }
    k
}

/// The gradient against `W` from the gradient against `K = W - mean(W)`.
pub fn zero_mean_grad(dk: &mut [f64], size: usize) {
    let n = size * size;
    for f in dk.chunks_mut(n) {
        let m = f.iter().sum::<f64>() / n as f64;
        f.iter_mut().for_each(|v| *v -= m);
    }
}

impl Stage {
    /// DCT-II basis filters without the constant one (cycled if more filters than `size^2 - 1`),
    /// scaled to norm `scale`; phi a small linear ramp `slope * z` in the RBF basis
    /// (`sum_j mu_j G_j(z) = sqrt(2 pi) z` inside the span since the spacing equals gamma);
    /// lambda `lambda`.
    pub fn init(filters: usize, size: usize, slope: f64, lambda: f64) -> Stage {
        let n = size * size;
        let mut w = Vec::with_capacity(filters * n);
        let dct = |k: usize, x: usize| {
            (std::f64::consts::PI * (x as f64 + 0.5) * k as f64 / size as f64).cos()
        };
        for i in 0..filters {
            let idx = 1 + i % (n - 1);
            let (p, q) = (idx / size, idx % size);
            let mut f: Vec<f64> = (0..n)
                .map(|t| dct(p, t / size) * dct(q, t % size))
                .collect();
            let m = f.iter().sum::<f64>() / n as f64;
            f.iter_mut().for_each(|v| *v -= m);
            let norm = f.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            w.extend(f.iter().map(|v| v / norm));
        }
        let ramp = slope / (2.0 * std::f64::consts::PI).sqrt();
        let rbf = (0..filters)
            .flat_map(|_| (0..CENTRES).map(move |j| ramp * centre(j)))
            .collect();
        Stage {
            w,
            rbf,
            log_lambda: lambda.ln(),
        }
    }
}

/// Runs every stage of `model` on the grey `w x h` image `f` on backend `be` (the zero-mean
/// filters and `lambda = exp(log_lambda)` formed in f64, then handed to the backend).
pub fn denoise<B: crate::backend::Backend>(
    be: &B,
    model: &Model,
    f: &[f32],
    w: usize,
    h: usize,
) -> crate::Result<Vec<f32>> {
    let d = crate::tensor::Dims::new(1, 1, h, w);
    let fb = be.upload_f32(f)?;
    let mut u = be.copy(&fb)?;
    for st in &model.stages {
        let k = be.upload(&zero_mean(&st.w, model.size))?;
        let rbf = be.upload(&st.rbf)?;
        u = be.tnrd_stage(&u, &fb, d, &k, &rbf, st.log_lambda.exp(), model.size)?;
    }
    be.download_f32(&u)
}
