//! Deep Ritz (E & Yu 2018) and PINN (Raissi et al. 2019) for the Poisson problems of SPEC
//! section 12, with a potential network as u: fresh uniform samples each step, Adam, and the
//! relative L2 error on 10,000 seeded points.

use super::batch::{eval_batch, loss_and_grad};
use super::config::PotentialConfig;
use super::exact::{Cotangent, Order, SampleOut};
use super::net::PotentialNet;
use super::problems::{rel_l2, Problem};
use super::real::Real;
use crate::backend::optim::FlatAdam;
use crate::error::{Error, Result};
use rand::SeedableRng;
use std::time::Instant;

/// Which loss trains u.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `mean(1/2 |grad u|^2 - g u)` + boundary penalty (first derivatives only).
    Ritz,
    /// `mean((Laplace u + g)^2)` + boundary penalty (the exact Laplacian).
    Pinn,
}

/// Points of the error estimate (SPEC section 12).
pub const ERROR_POINTS: usize = 10_000;

/// Everything a solve run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOptions {
    pub problem: Problem,
    pub dim: usize,
    pub method: Method,
    pub seed: u64,
    pub steps: usize,
    /// Interior points per step.
    pub batch: usize,
    /// Boundary points per step.
    pub boundary_batch: usize,
    /// Weight beta of the boundary integral: the loss is `(1/|domain|) (int_domain e +
    /// beta int_boundary (u - u*)^2)`, i.e. the boundary mean weighted by
    /// `beta |boundary| / |domain|` ([`Problem::boundary_to_volume`]). Its bias, the Robin
    /// condition `u - u* = -d_n u / (2 beta)`, is then the same in every dimension.
    pub penalty: f64,
    /// Adam's first learning rate; it decays by cosine to `lr * lr_floor` at the last step.
    pub lr: f64,
    pub lr_floor: f64,
    pub width: usize,
    pub layers: usize,
    pub h: f64,
    /// Steps between progress lines (0: none).
    pub log_every: usize,
}

/// PyTorch's Adam default, as the comparisons use.
pub(crate) const ADAM_EPS: f64 = 1e-8;

/// The outcome of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveReport {
    pub rel_l2: f64,
    pub final_loss: f64,
    pub seconds: f64,
    /// The trained weights in f64 (whatever precision trained them).
    pub net: PotentialNet<f64>,
}

impl SolveOptions {
    fn validate(&self) -> Result<()> {
        self.problem.check_dim(self.dim)?;
        let bad = |m: String| Err(Error::Input(m));
        if self.steps == 0 || self.batch == 0 || self.boundary_batch == 0 {
            return bad("--steps, --batch and --boundary-batch must be positive".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(self.penalty.is_finite() && self.penalty >= 0.0) {
            return bad(format!("--penalty must be >= 0, got {}", self.penalty));
        }
        if !(0.0..=1.0).contains(&self.lr_floor) {
            return bad(format!(
                "--lr-floor must lie in [0, 1], got {}",
                self.lr_floor
            ));
        }
        Ok(())
    }

    /// The network u: a potential net of width `width`, `layers` residual layers.
    pub fn config(&self) -> PotentialConfig {
        PotentialConfig::new(self.dim, self.width, self.layers, self.h)
    }

    fn lr_at(&self, step: usize) -> f64 {
        cosine_lr(self.lr, self.lr_floor, step, self.steps)
    }
}

/// The default width of u for dimension d. The logcosh features' quadratic regime gives
/// quadratic forms of rank <= m, and both reference problems need rank d (`poisson-ball`'s
/// indefinite `sum x_(2k-1) x_(2k)`; `poisson-cube`'s concave curvature in every coordinate):
/// at d = 100 width 32 stalls at rel_l2 0.76 on the ball (benches/results/ritz-2026-12-07.md).
pub fn default_width(d: usize) -> usize {
    d.max(32)
}

/// Cosine decay from `lr` at step 0 to `lr * floor` at step `steps - 1`.
pub(crate) fn cosine_lr(lr: f64, floor: f64, step: usize, steps: usize) -> f64 {
    let p = step as f64 / steps.max(2).saturating_sub(1) as f64;
    let c = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
    lr * (floor + (1.0 - floor) * c)
}

/// The relative L2 error of `net` on the 10,000 points of SPEC section 12 for `seed`.
pub fn error_of<T: Real>(net: &PotentialNet<T>, problem: Problem, seed: u64) -> f64 {
    let d = net.shape.n;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_e77a_11ce_0001);
    let x = problem.sample_interior(d, ERROR_POINTS, &mut rng);
    let xt: Vec<T> = x.iter().map(|&v| T::from_f64(v)).collect();
    let u: Vec<f64> = eval_batch(net, &xt, Order::Value)
        .value
        .iter()
        .map(|v| v.to_f64())
        .collect();
    rel_l2(problem, d, &x, &u)
}

/// Trains u in precision `T`; `progress` receives each progress line.
pub fn solve<T: Real>(opt: &SolveOptions, progress: &mut dyn FnMut(&str)) -> Result<SolveReport> {
    opt.validate()?;
    let shape = opt.config().shape()?;
    let (d, problem) = (opt.dim, opt.problem);
    let mut net = PotentialNet::<T>::init(shape, opt.seed);
    let mut adam = FlatAdam::new(net.theta.len(), ADAM_EPS);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed.wrapping_add(1));
    let start = Instant::now();
    let mut last_loss = f64::NAN;
    let inv_n = 1.0 / opt.batch as f64;
    let inv_b = opt.penalty * problem.boundary_to_volume(d) / opt.boundary_batch as f64;
    for step in 0..opt.steps {
        let xi = problem.sample_interior(d, opt.batch, &mut rng);
        let xb = problem.sample_boundary(d, opt.boundary_batch, &mut rng);
        let g_at: Vec<f64> = xi.chunks_exact(d).map(|p| problem.source(p)).collect();
        let ub: Vec<f64> = xb.chunks_exact(d).map(|p| problem.exact(p)).collect();
        let (xi_t, xb_t) = (to_t::<T>(&xi), to_t::<T>(&xb));
        let mut grad = vec![T::default(); net.theta.len()];
        let interior = |r: usize, _x: &[T], o: &SampleOut<T>| -> (f64, Cotangent<T>) {
            let g = g_at[r];
            match opt.method {
                Method::Ritz => {
                    let gu: f64 = o.grad.iter().map(|v| v.to_f64() * v.to_f64()).sum();
                    let term = inv_n * (0.5 * gu - g * o.value.to_f64());
                    let cot = Cotangent {
                        value: T::from_f64(-g * inv_n),
                        grad: o.grad.iter().map(|&v| v * T::from_f64(inv_n)).collect(),
                        laplacian: T::default(),
                    };
                    (term, cot)
                }
                Method::Pinn => {
                    let r = o.laplacian.to_f64() + g;
                    let cot = Cotangent {
                        value: T::default(),
                        grad: Vec::new(),
                        laplacian: T::from_f64(2.0 * r * inv_n),
                    };
                    (inv_n * r * r, cot)
                }
            }
        };
        let order = match opt.method {
            Method::Ritz => Order::Gradient,
            Method::Pinn => Order::Laplacian,
        };
        let li = loss_and_grad(&net, &xi_t, order, &interior, &mut grad);
        let boundary = |r: usize, _x: &[T], o: &SampleOut<T>| -> (f64, Cotangent<T>) {
            let e = o.value.to_f64() - ub[r];
            let cot = Cotangent {
                value: T::from_f64(2.0 * inv_b * e),
                grad: Vec::new(),
                laplacian: T::default(),
            };
            (inv_b * e * e, cot)
        };
        let lb = loss_and_grad(&net, &xb_t, Order::Value, &boundary, &mut grad);
        last_loss = li + lb;
        if !last_loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
            return Err(Error::NonFinite(format!(
                "step {step}: the loss or its gradient is {last_loss} (training diverged; try a smaller --lr)"
            )));
        }
        adam.step(
            &mut net.theta,
            &grad,
            opt.lr_at(step),
            (T::to_f64, T::from_f64),
        );
        let last = step + 1 == opt.steps;
        if opt.log_every > 0 && ((step + 1) % opt.log_every == 0 || last) {
            progress(&format!(
                "step {:>6} loss {:+.6e} interior {:+.6e} boundary {:.3e} rel_l2 {:.3e} lr {:.2e} time {:.1}s",
                step + 1,
                last_loss,
                li,
                lb,
                error_of(&net, problem, opt.seed),
                opt.lr_at(step),
                start.elapsed().as_secs_f64()
            ));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(SolveReport {
        rel_l2: error_of(&net, problem, opt.seed),
        final_loss: last_loss,
        seconds,
        net: net.cast(),
    })
}

fn to_t<T: Real>(x: &[f64]) -> Vec<T> {
    x.iter().map(|&v| T::from_f64(v)).collect()
}
