//! Stability of forward propagation (Haber & Ruthotto 2017): per unit, the growth
//! `M = max ||F(y + e) - F(y)|| / ||e||` of its forward map over random perturbations and over
//! adversarial ones (nonlinear power iteration), and per step the spectral radius of the step's
//! Jacobian, estimated by power iteration on central differences (the geometric mean growth of
//! `J^n v`, which complex eigenvalue pairs do not disturb).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::schedule::Engine;
use crate::tensor::{Dims, HostTensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// How hard the analysis looks.
#[derive(Clone, Copy, Debug)]
pub struct StabilityOptions {
    /// Random perturbations per unit.
    pub trials: usize,
    /// Power iterations (adversarial perturbation; each step's Jacobian).
    pub iterations: usize,
    /// Perturbation size relative to the state's norm.
    pub rel_size: f64,
    pub seed: u64,
}

impl Default for StabilityOptions {
    fn default() -> Self {
        StabilityOptions {
            trials: 8,
            iterations: 20,
            rel_size: 1e-2,
            seed: 0,
        }
    }
}

/// What [`analyse`] finds for one unit.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitStability {
    pub unit: usize,
    pub steps: usize,
    pub width: usize,
    /// Largest growth over the random perturbations.
    pub growth_random: f64,
    /// Growth along the perturbation found by power iteration.
    pub growth_adversarial: f64,
    /// Largest and median spectral radius of the unit's step Jacobians (NaN without steps).
    pub radius_max: f64,
    pub radius_median: f64,
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `a + c b`.
fn axpy(a: &[f64], c: f64, b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + c * y).collect()
}

fn random(rng: &mut rand_chacha::ChaCha8Rng, n: usize, size: f64) -> Vec<f64> {
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let s = size / norm(&v).max(1e-300);
    v.into_iter().map(|x| x * s).collect()
}

/// A unit's or a step's map on a backend's buffers.
type BufMap<'a, B> = Box<dyn Fn(&<B as Backend>::Buf) -> Result<<B as Backend>::Buf> + 'a>;

/// A map of host vectors through a backend.
struct HostMap<'a, B: Backend> {
    be: &'a B,
    f: BufMap<'a, B>,
}

impl<B: Backend> HostMap<'_, B> {
    fn at(&self, y: &[f64]) -> Result<Vec<f64>> {
        let out = (self.f)(&self.be.upload(y)?)?;
        self.be.download(&out)
    }
}

/// `(max random growth, adversarial growth)` of `map` at `y`.
fn growth<B: Backend>(
    map: &HostMap<'_, B>,
    y: &[f64],
    opts: &StabilityOptions,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<(f64, f64)> {
    let fy = map.at(y)?;
    let size = opts.rel_size * norm(y).max(1e-12);
    let ratio = |e: &[f64]| -> Result<(f64, Vec<f64>)> {
        let w: Vec<f64> = map
            .at(&axpy(y, 1.0, e))?
            .iter()
            .zip(&fy)
            .map(|(a, b)| a - b)
            .collect();
        Ok((norm(&w) / norm(e), w))
    };
    let mut best_random = 0.0f64;
    for _ in 0..opts.trials {
        best_random = best_random.max(ratio(&random(rng, y.len(), size))?.0);
    }
    let mut e = random(rng, y.len(), size);
    let mut adversarial = 0.0f64;
    for _ in 0..opts.iterations {
        let (g, w) = ratio(&e)?;
        adversarial = adversarial.max(g);
        let nw = norm(&w);
        if nw == 0.0 || !nw.is_finite() {
            break;
        }
        e = w.iter().map(|v| v * size / nw).collect();
    }
    Ok((best_random, adversarial))
}

/// Spectral radius of the Jacobian of `map` at `s` by power iteration on central differences.
fn radius<B: Backend>(
    map: &HostMap<'_, B>,
    s: &[f64],
    opts: &StabilityOptions,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<f64> {
    let eps = 1e-3 * (norm(s) / (s.len() as f64).sqrt()).max(1e-3);
    let mut v = random(rng, s.len(), 1.0);
    let burn_in = opts.iterations / 4;
    let (mut log_sum, mut counted) = (0.0f64, 0usize);
    for it in 0..opts.iterations {
        let up = map.at(&axpy(s, eps, &v))?;
        let down = map.at(&axpy(s, -eps, &v))?;
        let w: Vec<f64> = up
            .iter()
            .zip(&down)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect();
        let nw = norm(&w);
        if nw == 0.0 || !nw.is_finite() {
            return Ok(nw);
        }
        if it >= burn_in {
            log_sum += nw.ln();
            counted += 1;
        }
        v = w.into_iter().map(|x| x / nw).collect();
    }
    Ok((log_sum / counted.max(1) as f64).exp())
}

/// Analyses every unit of `eng` on the batch `x`.
pub fn analyse<B: Backend>(
    eng: &Engine<B>,
    x: &HostTensor,
    opts: &StabilityOptions,
) -> Result<Vec<UnitStability>> {
    if opts.iterations < 2 || opts.trials == 0 || opts.rel_size.is_nan() || opts.rel_size <= 0.0 {
        return Err(Error::Input(
            "stability: at least 2 iterations, 1 trial and a positive perturbation size".into(),
        ));
    }
    let be = &eng.backend;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut out = Vec::new();
    for (k, (input, d)) in eng.unit_inputs(x)?.into_iter().enumerate() {
        let y = be.download(&input)?;
        let unit = HostMap {
            be,
            f: Box::new(move |v: &B::Buf| eng.unit_map(k, v, d)),
        };
        let (growth_random, growth_adversarial) = growth(&unit, &y, opts, &mut rng)?;
        let steps = eng.layout.units[k].steps.len();
        let sd = d.with_c(eng.step_state_channels(d.c));
        // The trajectory's states, each step linearised where the forward pass runs.
        let mut s = if sd.c == d.c {
            y.clone()
        } else {
            stack_channels(&y, &y, d)
        };
        let mut radii = Vec::with_capacity(steps);
        for j in 0..steps {
            let step = HostMap {
                be,
                f: Box::new(move |v: &B::Buf| eng.step_map(k, j, v, d)),
            };
            radii.push(radius(&step, &s, opts, &mut rng)?);
            s = step.at(&s)?;
        }
        let mut sorted = radii.clone();
        sorted.sort_by(f64::total_cmp);
        out.push(UnitStability {
            unit: k,
            steps,
            width: d.c,
            growth_random,
            growth_adversarial,
            radius_max: sorted.last().copied().unwrap_or(f64::NAN),
            radius_median: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        });
    }
    Ok(out)
}

/// `[a; b]` stacked along channels per sample (a leapfrog step's `[Y_{j-1}; Y_j]`).
fn stack_channels(a: &[f64], b: &[f64], d: Dims) -> Vec<f64> {
    let per = d.c * d.hw();
    let mut out = Vec::with_capacity(2 * d.len());
    for n in 0..d.n {
        out.extend_from_slice(&a[n * per..(n + 1) * per]);
        out.extend_from_slice(&b[n * per..(n + 1) * per]);
    }
    out
}
