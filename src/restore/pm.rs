//! Perona-Malik diffusion `u_t = div(g(|grad u|) grad u)` by explicit steps on the 4-neighbour
//! stencil (Perona & Malik 1990): stable for `dt <= 1/4` because `0 < g <= 1`.

use crate::{Error, Result};
use rayon::prelude::*;

/// The diffusivity `g(s)` with contrast `K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diffusivity {
    /// `exp(-(s/K)^2)`.
    Exponential,
    /// `1 / (1 + (s/K)^2)`.
    Rational,
}

/// The stability bound of the explicit 4-neighbour scheme with `g <= 1`.
pub const DT_MAX: f64 = 0.25;

#[derive(Debug, Clone, Copy)]
pub struct PmOptions {
    pub contrast: f64,
    /// Diffusion time `T = steps * dt`.
    pub time: f64,
    pub diffusivity: Diffusivity,
    /// Step size; the steps are `ceil(T / dt)` with the last dt shrunk to end at T.
    pub dt: f64,
}

impl PmOptions {
    pub fn new(contrast: f64, time: f64, diffusivity: Diffusivity) -> Self {
        PmOptions {
            contrast,
            time,
            diffusivity,
            dt: 0.2,
        }
    }
}

/// The diffused image and the number of explicit steps taken.
#[derive(Debug, Clone)]
pub struct PmResult {
    pub u: Vec<f32>,
    pub steps: usize,
}

/// Checks the options: `0 < dt <= 1/4`, `K > 0`, `T >= 0`.
pub fn check(opt: &PmOptions) -> Result<()> {
    if !(opt.dt > 0.0 && opt.dt <= DT_MAX) {
        return Err(Error::Input(format!(
            "Perona-Malik step dt = {} breaks the stability bound 0 < dt <= 1/4",
            opt.dt
        )));
    }
    if !(opt.contrast > 0.0 && opt.contrast.is_finite()) {
        return Err(Error::Input(format!(
            "Perona-Malik contrast must be positive, got {}",
            opt.contrast
        )));
    }
    if !(opt.time >= 0.0 && opt.time.is_finite()) {
        return Err(Error::Input(format!(
            "Perona-Malik time must be >= 0, got {}",
            opt.time
        )));
    }
    Ok(())
}

/// Step sizes that reach `time` with steps of at most `dt`.
pub fn schedule(time: f64, dt: f64) -> Vec<f64> {
    let steps = (time / dt - 1e-9).ceil().max(0.0) as usize;
    (0..steps)
        .map(|k| {
            if k + 1 < steps {
                dt
            } else {
                time - dt * (steps - 1) as f64
            }
        })
        .collect()
}

/// One explicit step `u += dt * sum_d g(|D_d u|) D_d u` over the 4 neighbours into `out`.
pub fn step(u: &[f32], out: &mut [f32], w: usize, h: usize, dt: f32, k: f32, g: Diffusivity) {
    let inv_k2 = 1.0 / (k * k);
    let flux = move |d: f32| -> f32 {
        let s = d * d * inv_k2;
        match g {
            Diffusivity::Exponential => (-s).exp() * d,
            Diffusivity::Rational => d / (1.0 + s),
        }
    };
    out.par_chunks_mut(w).enumerate().for_each(|(i, o)| {
        let row = &u[i * w..(i + 1) * w];
        let up = (i > 0).then(|| &u[(i - 1) * w..i * w]);
        let down = (i + 1 < h).then(|| &u[(i + 1) * w..(i + 2) * w]);
        for j in 0..w {
            let c = row[j];
            let mut s = 0.0f32;
            if j > 0 {
                s += flux(row[j - 1] - c);
            }
            if j + 1 < w {
                s += flux(row[j + 1] - c);
            }
            if let Some(r) = up {
                s += flux(r[j] - c);
            }
            if let Some(r) = down {
                s += flux(r[j] - c);
            }
            o[j] = c + dt * s;
        }
    });
}

/// Diffuses `f` to time `opt.time`; `on_step(t, u)` sees every intermediate image (for fits).
pub fn perona_malik_with(
    f: &[f32],
    w: usize,
    h: usize,
    opt: &PmOptions,
    mut on_step: impl FnMut(f64, &[f32]),
) -> Result<PmResult> {
    check(opt)?;
    let mut u = f.to_vec();
    let mut next = vec![0.0f32; u.len()];
    let sched = schedule(opt.time, opt.dt);
    let mut t = 0.0;
    for &dt in &sched {
        step(
            &u,
            &mut next,
            w,
            h,
            dt as f32,
            opt.contrast as f32,
            opt.diffusivity,
        );
        std::mem::swap(&mut u, &mut next);
        t += dt;
        on_step(t, &u);
    }
    Ok(PmResult {
        u,
        steps: sched.len(),
    })
}

/// Diffuses `f` to time `opt.time`.
pub fn perona_malik(f: &[f32], w: usize, h: usize, opt: &PmOptions) -> Result<PmResult> {
    perona_malik_with(f, w, h, opt, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_reaches_the_time() {
        let s = schedule(1.0, 0.25);
        assert_eq!(s.len(), 4);
        let s = schedule(1.1, 0.25);
        assert_eq!(s.len(), 5);
        assert!((s.iter().sum::<f64>() - 1.1).abs() < 1e-12);
        assert!(schedule(0.0, 0.25).is_empty());
    }

    #[test]
    fn unstable_step_is_refused() {
        let mut o = PmOptions::new(0.1, 1.0, Diffusivity::Rational);
        o.dt = 0.3;
        assert!(perona_malik(&[0.0; 4], 2, 2, &o).is_err());
    }
}
