//! Trainable nonlinear reaction diffusion (Chen & Pock 2017). One stage is
//! `u_t = u_{t-1} - ( sum_i K_i^T phi_i(K_i u_{t-1}) + lambda_t (u_{t-1} - f) )`
//! with zero-mean filters `K_i = W_i - mean(W_i)` (symmetric padding, `K^T` its exact adjoint),
//! Gaussian RBF influence functions and `lambda_t = exp(log_lambda_t)`.
//! `reference` is the f64 specification (plain loops), `fast` the f32 path used for work.

pub mod fast;
pub mod io;
pub mod reference;
pub mod train;

/// RBF centres per influence function.
pub const CENTRES: usize = 63;
/// Centres span `[-MU_MAX, MU_MAX]` (the paper's 310 on [0, 255], scaled to [0, 1]).
pub const MU_MAX: f64 = 310.0 / 255.0;
/// RBF width (the paper's 10 on [0, 255]); equal to the centre spacing, which the fast path uses.
pub const GAMMA: f64 = 10.0 / 255.0;

/// Centre `j` of the RBF basis.
pub fn centre(j: usize) -> f64 {
    -MU_MAX + 2.0 * MU_MAX * j as f64 / (CENTRES - 1) as f64
}

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

/// Symmetric (edge-repeating) reflection of index `i` into `0..n`.
pub fn reflect(i: isize, n: usize) -> usize {
    let m = 2 * n as isize;
    let r = i.rem_euclid(m);
    if r >= n as isize {
        (m - 1 - r) as usize
    } else {
        r as usize
    }
}
