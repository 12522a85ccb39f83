//! OT-Flow (Onken et al. 2021): optimal transport from `N(0, I_d)` to a Gaussian target by a
//! potential `Phi(x, t)` (SPEC section 11 with `s = [x; t]`, `trace_dims = d`) whose flow
//! `dx/dt = -grad_x Phi` is integrated by RK4 along the characteristics together with
//!
//! - the log-determinant `dl/dt = -Lap_x Phi` (the exact Laplacian, no estimator),
//! - the transport cost `dL/dt = 1/2 |grad_x Phi|^2`,
//! - the HJB penalty `dR/dt = |d_t Phi - 1/2 |grad_x Phi|^2|`.
//!
//! The loss is `mean(alpha_L L + C + alpha_R R)` with `C` the KL terminal cost
//! `log rho_0(x) - l - log rho_1(z(1))`; its gradient with respect to the weights is the exact
//! gradient of the RK4 solution (discretize-optimize), back-propagated by hand through the
//! stages with the weight and input VJPs of [`vjp_sample_with_input`] (no tape). The learned
//! transport cost `E int_0^1 |v|^2 dt = 2 E L` is compared with the exact `W2^2` of SPEC
//! section 12.

use super::config::PotentialConfig;
use super::exact::{eval_sample, vjp_sample_with_input, Cotangent, Order, SampleOut, Workspace};
use super::net::PotentialNet;
use super::real::Real;
use super::solve::{cosine_lr, ADAM_EPS};
use crate::backend::optim::FlatAdam;
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use std::time::Instant;

/// Samples per rayon task.
const CHUNK: usize = 16;

/// The target `N(mean, diag(std^2))`.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianTarget {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl GaussianTarget {
    /// `m_i = mean / sqrt(d)` (so `|m| = mean`) and `s_i = scale` for every i.
    pub fn shifted_scaled(d: usize, mean: f64, scale: f64) -> Result<Self> {
        if d == 0 {
            return Err(Error::Input("--dim must be at least 1".into()));
        }
        if !mean.is_finite() {
            return Err(Error::Input(format!("--mean must be finite, got {mean}")));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::Input(format!(
                "--scale must be positive and finite, got {scale}"
            )));
        }
        Ok(GaussianTarget {
            mean: vec![mean / (d as f64).sqrt(); d],
            std: vec![scale; d],
        })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The optimal cost from `N(0, I)`: `W2^2 = |m|^2 + sum_i (s_i - 1)^2` (SPEC section 12).
    pub fn w2_squared(&self) -> f64 {
        let m2: f64 = self.mean.iter().map(|m| m * m).sum();
        m2 + self.std.iter().map(|s| (s - 1.0) * (s - 1.0)).sum::<f64>()
    }

    /// `-log rho_1(z) - d/2 log(2 pi)`.
    fn neg_log_density(&self, z: &[f64]) -> f64 {
        z.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(&zi, (&m, &s))| 0.5 * ((zi - m) / s).powi(2) + s.ln())
            .sum()
    }
}

/// The loss's weights and the time discretisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OtLoss {
    /// RK4 steps on `[0, 1]`.
    pub nt: usize,
    pub alpha_l: f64,
    pub alpha_r: f64,
}

/// Batch means of the flow's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OtTerms {
    /// `mean L = mean int 1/2 |v|^2 dt`.
    pub transport: f64,
    /// The KL estimate `mean(C)`.
    pub kl: f64,
    /// `mean R`.
    pub hjb: f64,
    /// `mean |z(1) - x|^2`, the cost of the computed map.
    pub map_cost: f64,
}

impl OtTerms {
    pub fn loss(&self, l: &OtLoss) -> f64 {
        l.alpha_l * self.transport + self.kl + l.alpha_r * self.hjb
    }

    /// The learned transport cost `E int |v|^2 dt`, the estimate of `W2^2`.
    pub fn cost(&self) -> f64 {
        2.0 * self.transport
    }
}

/// One sample's terminal state.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleFlow<T> {
    pub z: Vec<T>,
    /// `log det dz(1)/dx`.
    pub logdet: T,
    pub transport: T,
    pub hjb: T,
}

/// Per-thread scratch: per RK4 stage the network workspace and outputs (which the backward
/// pass reuses instead of evaluating again), `s = [z; t]` of each stage, and the input
/// cotangent.
struct Scratch<T> {
    ws: Vec<Workspace<T>>,
    outs: Vec<SampleOut<T>>,
    /// `[4 nt, n]`.
    s: Vec<T>,
    sbar: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new(net: &PotentialNet<T>, nt: usize) -> Self {
        let n = net.shape.n;
        Scratch {
            ws: (0..4 * nt).map(|_| Workspace::new(&net.shape)).collect(),
            outs: vec![SampleOut::default(); 4 * nt],
            s: vec![T::default(); 4 * nt * n],
            sbar: vec![T::default(); n],
        }
    }
}

/// The right-hand side at stage `at` with input `(z, t)`: `(dl, dL, dR)`, with `dz` written to
/// `dz`.
fn rhs<T: Real>(
    net: &PotentialNet<T>,
    at: usize,
    z: &[T],
    t: T,
    sc: &mut Scratch<T>,
    dz: &mut [T],
) -> [T; 3] {
    let d = z.len();
    let s = &mut sc.s[at * (d + 1)..(at + 1) * (d + 1)];
    s[..d].copy_from_slice(z);
    s[d] = t;
    let out = eval_sample(net, s, Order::Laplacian, &mut sc.ws[at]);
    let half = T::from_f64(0.5);
    let mut g2 = T::default();
    for (dzi, &g) in dz.iter_mut().zip(&out.grad[..d]) {
        *dzi = -g;
        g2 += g * g;
    }
    let r = out.grad[d] - half * g2;
    let r_abs = if r < T::default() { -r } else { r };
    let f = [-out.laplacian, half * g2, r_abs];
    sc.outs[at] = out;
    f
}

/// Adds the weight gradient of `fz . dz + fs . (dl, dL, dR)` at stage `at` (evaluated by
/// [`rhs`]) to `gtheta` and returns its gradient with respect to `z` in `sc.sbar[..d]`.
fn rhs_vjp<T: Real>(
    net: &PotentialNet<T>,
    at: usize,
    fz: &[T],
    fs: [T; 3],
    sc: &mut Scratch<T>,
    gtheta: &mut [T],
) {
    let d = fz.len();
    let out = &sc.outs[at];
    let half = T::from_f64(0.5);
    let zero = T::default();
    let gx = &out.grad[..d];
    let g2: T = gx.iter().fold(zero, |a, &g| a + g * g);
    let r = out.grad[d] - half * g2;
    let sign = if r > zero {
        T::from_f64(1.0)
    } else if r < zero {
        T::from_f64(-1.0)
    } else {
        zero
    };
    let [fl, f_l, f_r] = fs;
    let mut grad: Vec<T> = fz
        .iter()
        .zip(gx)
        .map(|(&f, &g)| -f + (f_l - f_r * sign) * g)
        .collect();
    grad.push(f_r * sign);
    let cot = Cotangent {
        value: zero,
        grad,
        laplacian: -fl,
    };
    sc.sbar.fill(zero);
    let s = &sc.s[at * (d + 1)..(at + 1) * (d + 1)];
    vjp_sample_with_input(net, s, &cot, &mut sc.ws[at], gtheta, Some(&mut sc.sbar));
}

/// RK4 weights of the four stages.
const RK4_W: [f64; 4] = [1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0];

/// Integrates one sample from `x` at t = 0 to t = 1 in `nt` RK4 steps, keeping every stage's
/// state in `sc`; `path`, when given, receives z at t = 0, 1/nt, .., 1.
fn integrate<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    nt: usize,
    sc: &mut Scratch<T>,
    mut path: Option<&mut Vec<T>>,
) -> SampleFlow<T> {
    let d = x.len();
    let h = 1.0 / nt as f64;
    let mut z = x.to_vec();
    let mut acc = [T::default(); 3];
    let mut k = vec![T::default(); 4 * d];
    let mut zs = vec![T::default(); d];
    if let Some(p) = path.as_deref_mut() {
        p.extend_from_slice(&z);
    }
    for step in 0..nt {
        let t0 = step as f64 * h;
        let mut ks = [[T::default(); 3]; 4];
        for st in 0..4 {
            // Stage inputs: z, z + h/2 k1, z + h/2 k2, z + h k3.
            let c = [0.0, 0.5, 0.5, 1.0][st] * h;
            for i in 0..d {
                zs[i] = if st == 0 {
                    z[i]
                } else {
                    z[i] + T::from_f64(c) * k[(st - 1) * d + i]
                };
            }
            let (_, kst) = k.split_at_mut(st * d);
            ks[st] = rhs(
                net,
                step * 4 + st,
                &zs,
                T::from_f64(t0 + c),
                sc,
                &mut kst[..d],
            );
        }
        for st in 0..4 {
            let w = T::from_f64(RK4_W[st] * h);
            for i in 0..d {
                z[i] += w * k[st * d + i];
            }
            for q in 0..3 {
                acc[q] += w * ks[st][q];
            }
        }
        if let Some(p) = path.as_deref_mut() {
            p.extend_from_slice(&z);
        }
    }
    SampleFlow {
        z,
        logdet: acc[0],
        transport: acc[1],
        hjb: acc[2],
    }
}

/// Back-propagates the cotangents of the terminal state (`zbar` of z(1), `sbar` of
/// `(l, L, R)`, constant in time because the right-hand side does not depend on them) through
/// the RK4 steps whose stages [`integrate`] left in `sc`, adding the weight gradient to `gtheta`.
fn backprop<T: Real>(
    net: &PotentialNet<T>,
    nt: usize,
    mut zbar: Vec<T>,
    sbar: [T; 3],
    sc: &mut Scratch<T>,
    gtheta: &mut [T],
) {
    let d = zbar.len();
    let h = 1.0 / nt as f64;
    let mut kbar = vec![T::default(); d];
    for step in (0..nt).rev() {
        // z_{k+1} = z_k + h sum_i w_i k_i; stage i's input is z_k + c_i h k_{i-1}.
        let mut zk_bar = zbar.clone();
        let mut carry = vec![T::default(); d];
        for st in (0..4).rev() {
            let w = T::from_f64(RK4_W[st] * h);
            for i in 0..d {
                kbar[i] = w * zbar[i] + carry[i];
            }
            let fs = [w * sbar[0], w * sbar[1], w * sbar[2]];
            let c = [0.0, 0.5, 0.5, 1.0][st] * h;
            rhs_vjp(net, step * 4 + st, &kbar, fs, sc, gtheta);
            for i in 0..d {
                let zb = sc.sbar[i];
                zk_bar[i] += zb;
                // The stage before feeds this one through `c_i h k_{i-1}`.
                carry[i] = T::from_f64(c) * zb;
            }
        }
        zbar = zk_bar;
    }
}

/// The batch means of the flow's terms from the samples `x` (`[B, d]` of `N(0, I)`), and with
/// `gtheta` the gradient of `mean(alpha_L L + C + alpha_R R)` with respect to the weights
/// (added to `gtheta`).
pub fn ot_loss<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    target: &GaussianTarget,
    loss: &OtLoss,
    gtheta: Option<&mut [T]>,
) -> OtTerms {
    let d = target.dim();
    let rows = x.len() / d;
    let inv_b = 1.0 / rows as f64;
    let want_grad = gtheta.is_some();
    let len = if want_grad { net.theta.len() } else { 0 };
    let per_chunk = |chunk: &[T]| -> (OtTerms, Vec<T>) {
        let mut sc = Scratch::new(net, loss.nt);
        let mut g = vec![T::default(); len];
        let mut terms = OtTerms::default();
        for xi in chunk.chunks_exact(d) {
            let f = integrate(net, xi, loss.nt, &mut sc, None);
            let z: Vec<f64> = f.z.iter().map(|v| v.to_f64()).collect();
            let x2: f64 = xi.iter().map(|v| v.to_f64() * v.to_f64()).sum();
            let kl = -0.5 * x2 - f.logdet.to_f64() + target.neg_log_density(&z);
            terms.transport += f.transport.to_f64();
            terms.kl += kl;
            terms.hjb += f.hjb.to_f64();
            terms.map_cost += z
                .iter()
                .zip(xi)
                .map(|(&a, b)| (a - b.to_f64()).powi(2))
                .sum::<f64>();
            if want_grad {
                let zbar = z
                    .iter()
                    .zip(target.mean.iter().zip(&target.std))
                    .map(|(&zi, (&m, &s))| T::from_f64(inv_b * (zi - m) / (s * s)))
                    .collect();
                let sbar = [
                    T::from_f64(-inv_b),
                    T::from_f64(inv_b * loss.alpha_l),
                    T::from_f64(inv_b * loss.alpha_r),
                ];
                backprop(net, loss.nt, zbar, sbar, &mut sc, &mut g);
            }
        }
        (terms, g)
    };
    let (terms, g) = x.par_chunks(CHUNK * d).map(per_chunk).reduce(
        || (OtTerms::default(), vec![T::default(); len]),
        |(a, mut ga), (b, gb)| {
            for (u, v) in ga.iter_mut().zip(&gb) {
                *u += *v;
            }
            let sum = OtTerms {
                transport: a.transport + b.transport,
                kl: a.kl + b.kl,
                hjb: a.hjb + b.hjb,
                map_cost: a.map_cost + b.map_cost,
            };
            (sum, ga)
        },
    );
    if let Some(gt) = gtheta {
        for (a, b) in gt.iter_mut().zip(&g) {
            *a += *b;
        }
    }
    OtTerms {
        transport: terms.transport * inv_b,
        kl: terms.kl * inv_b,
        hjb: terms.hjb * inv_b,
        map_cost: terms.map_cost * inv_b,
    }
}

/// The paths of the samples `x` (`[B, d]`): for each sample z at t = 0, 1/nt, .., 1, as
/// `[B, nt + 1, d]`.
pub fn trajectories<T: Real>(net: &PotentialNet<T>, x: &[T], nt: usize) -> Vec<T> {
    let d = net.shape.n - 1;
    x.par_chunks(CHUNK * d)
        .flat_map_iter(|chunk| {
            let mut sc = Scratch::new(net, nt);
            let mut out = Vec::with_capacity(chunk.len() / d * (nt + 1) * d);
            for xi in chunk.chunks_exact(d) {
                integrate(net, xi, nt, &mut sc, Some(&mut out));
            }
            out
        })
        .collect()
}

/// A `pdenet ot` run.
#[derive(Clone, Debug, PartialEq)]
pub struct OtOptions {
    pub dim: usize,
    /// `|m|` of the target (spread evenly over the coordinates).
    pub mean: f64,
    /// `s_i` of the target.
    pub scale: f64,
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    pub nt: usize,
    /// RK4 steps of the final evaluation.
    pub nt_eval: usize,
    /// Samples of the final evaluation.
    pub eval_batch: usize,
    pub alpha_l: f64,
    pub alpha_r: f64,
    pub lr: f64,
    pub lr_floor: f64,
    pub width: usize,
    pub layers: usize,
    pub h: f64,
    pub log_every: usize,
    /// A potential network config for `Phi` instead of `width`, `layers`, `h`; it must have
    /// `dense_input = dim + 1` and `trace_dims = dim`.
    pub network: Option<PotentialConfig>,
}

impl OtOptions {
    pub fn target(&self) -> Result<GaussianTarget> {
        GaussianTarget::shifted_scaled(self.dim, self.mean, self.scale)
    }

    /// `Phi(x, t)`: a potential network on `s = [x; t]` whose Laplacian sums over x.
    pub fn config(&self) -> PotentialConfig {
        if let Some(c) = &self.network {
            return c.clone();
        }
        let mut c = PotentialConfig::new(self.dim + 1, self.width, self.layers, self.h);
        c.trace_dims = Some(self.dim);
        c
    }

    pub fn loss(&self) -> OtLoss {
        OtLoss {
            nt: self.nt,
            alpha_l: self.alpha_l,
            alpha_r: self.alpha_r,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(m));
        if self.dim == 0 {
            return bad("--dim must be at least 1".into());
        }
        if let Some(c) = &self.network {
            let s = c.shape()?;
            if s.n != self.dim + 1 || s.trace_dims != self.dim {
                return Err(Error::Config(format!(
                    "the network of Phi(x, t) needs `dense_input` = dim + 1 = {} and `trace_dims` = dim = {}, got {} and {}",
                    self.dim + 1,
                    self.dim,
                    s.n,
                    s.trace_dims
                )));
            }
        }
        if self.steps == 0 || self.batch == 0 || self.eval_batch == 0 {
            return bad("--steps, --batch and --eval-batch must be positive".into());
        }
        if self.nt == 0 || self.nt_eval == 0 {
            return bad("--nt and --nt-eval must be positive".into());
        }
        for (name, v) in [("--alpha-l", self.alpha_l), ("--alpha-r", self.alpha_r)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be >= 0, got {v}"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.lr_floor) {
            return bad(format!(
                "--lr-floor must lie in [0, 1], got {}",
                self.lr_floor
            ));
        }
        Ok(())
    }
}

/// The outcome of a run, measured on `eval_batch` fresh samples with `nt_eval` RK4 steps.
#[derive(Clone, Debug, PartialEq)]
pub struct OtReport {
    pub terms: OtTerms,
    /// The exact `W2^2`.
    pub exact: f64,
    pub seconds: f64,
    pub net: PotentialNet<f64>,
}

impl OtReport {
    /// `(cost - W2^2) / W2^2`.
    pub fn gap(&self) -> f64 {
        (self.terms.cost() - self.exact) / self.exact
    }
}

/// `rows` samples of `N(0, I_d)`.
pub fn gaussian_samples<T: Real>(d: usize, rows: usize, rng: &mut impl rand::Rng) -> Vec<T> {
    (0..rows * d)
        .map(|_| T::from_f64(StandardNormal.sample(rng)))
        .collect()
}

/// The evaluation samples of a run with `seed`.
pub fn eval_samples<T: Real>(d: usize, rows: usize, seed: u64) -> Vec<T> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x07f1_0e7a_1000_0002);
    gaussian_samples(d, rows, &mut rng)
}

/// Trains `Phi` with Adam (fresh samples each step, cosine decay) in precision `T`.
pub fn train_ot<T: Real>(opt: &OtOptions, progress: &mut dyn FnMut(&str)) -> Result<OtReport> {
    opt.validate()?;
    let target = opt.target()?;
    let shape = opt.config().shape()?;
    let loss = opt.loss();
    let d = opt.dim;
    let mut net = PotentialNet::<T>::init(shape, opt.seed);
    let mut adam = FlatAdam::new(net.theta.len(), ADAM_EPS);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed.wrapping_add(1));
    let start = Instant::now();
    for step in 0..opt.steps {
        let x = gaussian_samples::<T>(d, opt.batch, &mut rng);
        let mut grad = vec![T::default(); net.theta.len()];
        let terms = ot_loss(&net, &x, &target, &loss, Some(&mut grad));
        let value = terms.loss(&loss);
        if !value.is_finite() || grad.iter().any(|g| !g.is_finite()) {
            return Err(Error::NonFinite(format!(
                "step {step}: the OT loss or its gradient is {value} (training diverged; try a smaller --lr or more --nt)"
            )));
        }
        let lr = cosine_lr(opt.lr, opt.lr_floor, step, opt.steps);
        adam.step(&mut net.theta, &grad, lr, (T::to_f64, T::from_f64));
        let last = step + 1 == opt.steps;
        if opt.log_every > 0 && ((step + 1) % opt.log_every == 0 || last) {
            progress(&format!(
                "step {:>6} loss {:+.6e} cost {:.5e} kl {:+.3e} hjb {:.3e} lr {:.2e} time {:.1}s",
                step + 1,
                value,
                terms.cost(),
                terms.kl,
                terms.hjb,
                lr,
                start.elapsed().as_secs_f64()
            ));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let xe = eval_samples::<T>(d, opt.eval_batch, opt.seed);
    let eval_loss = OtLoss {
        nt: opt.nt_eval,
        ..loss
    };
    let terms = ot_loss(&net, &xe, &target, &eval_loss, None);
    Ok(OtReport {
        terms,
        exact: target.w2_squared(),
        seconds,
        net: net.cast(),
    })
}
