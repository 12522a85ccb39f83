//! The reference problems of SPEC section 12: domains, uniform sampling, exact solutions,
//! right-hand sides and the relative L2 error.

use crate::error::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::f64::consts::PI;

/// `-Laplace u = g` in a domain, `u = u*` on its boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Unit ball of R^d (d even), `u* = sum_k x_{2k-1} x_{2k}`, g = 0.
    PoissonBall,
    /// `(0, 1)^d`, `u* = (1/d) sum_i sin(pi x_i)`.
    PoissonCube,
}

impl Problem {
    pub fn name(self) -> &'static str {
        match self {
            Problem::PoissonBall => "poisson-ball",
            Problem::PoissonCube => "poisson-cube",
        }
    }

    /// Refuses dimensions the problem is not defined for.
    pub fn check_dim(self, d: usize) -> Result<()> {
        if d == 0 {
            return Err(Error::Input(format!(
                "--dim must be at least 1 for {}",
                self.name()
            )));
        }
        if self == Problem::PoissonBall && d % 2 == 1 {
            return Err(Error::Input(format!(
                "--dim {d}: poisson-ball needs an even dimension (u* pairs x_(2k-1) with x_(2k))"
            )));
        }
        Ok(())
    }

    /// `|boundary| / |domain|`: 2d for the unit cube, d for the unit ball. The loss's interior
    /// term is a mean over the domain, so the boundary mean is weighted by this ratio to keep the
    /// penalty a weight on the boundary *integral*, whose bias does not grow with d.
    pub fn boundary_to_volume(self, d: usize) -> f64 {
        match self {
            Problem::PoissonBall => d as f64,
            Problem::PoissonCube => 2.0 * d as f64,
        }
    }

    /// The exact solution.
    pub fn exact(self, x: &[f64]) -> f64 {
        match self {
            Problem::PoissonBall => x.chunks_exact(2).map(|p| p[0] * p[1]).sum(),
            Problem::PoissonCube => x.iter().map(|&v| (PI * v).sin()).sum::<f64>() / x.len() as f64,
        }
    }

    /// The right-hand side g = -Laplace u*.
    pub fn source(self, x: &[f64]) -> f64 {
        match self {
            Problem::PoissonBall => 0.0,
            Problem::PoissonCube => {
                PI * PI * x.iter().map(|&v| (PI * v).sin()).sum::<f64>() / x.len() as f64
            }
        }
    }

    /// `rows` points uniform in the domain, row-major `[rows, d]`.
    pub fn sample_interior(self, d: usize, rows: usize, rng: &mut impl Rng) -> Vec<f64> {
        let mut x = Vec::with_capacity(rows * d);
        for _ in 0..rows {
            match self {
                Problem::PoissonCube => x.extend((0..d).map(|_| rng.random::<f64>())),
                Problem::PoissonBall => {
                    // A uniform direction and radius U^(1/d).
                    let dir = gaussian_direction(d, rng);
                    let r = rng.random::<f64>().powf(1.0 / d as f64);
                    x.extend(dir.iter().map(|v| r * v));
                }
            }
        }
        x
    }

    /// `rows` points uniform on the boundary (by surface measure).
    pub fn sample_boundary(self, d: usize, rows: usize, rng: &mut impl Rng) -> Vec<f64> {
        let mut x = Vec::with_capacity(rows * d);
        for _ in 0..rows {
            match self {
                Problem::PoissonBall => x.extend(gaussian_direction(d, rng)),
                Problem::PoissonCube => {
                    // The 2d faces have equal area: pick one, then a uniform point on it.
                    let face = rng.random_range(0..2 * d);
                    let start = x.len();
                    x.extend((0..d).map(|_| rng.random::<f64>()));
                    x[start + face / 2] = (face % 2) as f64;
                }
            }
        }
        x
    }
}

fn gaussian_direction(d: usize, rng: &mut impl Rng) -> Vec<f64> {
    loop {
        let v: Vec<f64> = (0..d).map(|_| StandardNormal.sample(rng)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-12 {
            return v.into_iter().map(|a| a / norm).collect();
        }
    }
}

/// `||u - u*|| / ||u*||` over the points `x` (`[rows, d]`) with `u` the values there.
pub fn rel_l2(problem: Problem, d: usize, x: &[f64], u: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (xi, &ui) in x.chunks_exact(d).zip(u) {
        let e = problem.exact(xi);
        num += (ui - e) * (ui - e);
        den += e * e;
    }
    (num / den).sqrt()
}
