//! The ROF model `min_u TV(u) + lambda/2 ||u - f||^2` (isotropic TV, forward differences with
//! Neumann boundary) by the accelerated primal-dual algorithm of Chambolle & Pock (2011,
//! ALG2), stopped on the primal-dual gap. f32 arrays, rayon over rows, one pass per update.

use rayon::prelude::*;

/// Options of the ROF solver.
#[derive(Debug, Clone, Copy)]
pub struct TvOptions {
    pub lambda: f64,
    /// Stop when the primal-dual gap per pixel falls below this.
    pub gap_tol: f64,
    pub max_iter: usize,
    /// Iterations between evaluations of the gap (each costs about one iteration).
    pub check_every: usize,
}

impl TvOptions {
    pub fn new(lambda: f64) -> Self {
        TvOptions {
            lambda,
            gap_tol: 1e-5,
            max_iter: 2000,
            check_every: 10,
        }
    }
}

/// The minimiser, the dual field and how the solve ended.
#[derive(Debug, Clone)]
pub struct TvResult {
    pub u: Vec<f32>,
    pub px: Vec<f32>,
    pub py: Vec<f32>,
    pub iterations: usize,
    /// Primal-dual gap per pixel at (u, p).
    pub gap: f64,
}

/// Isotropic total variation `sum |grad u|` (forward differences, Neumann boundary).
pub fn total_variation(u: &[f32], w: usize, h: usize) -> f64 {
    (0..h)
        .into_par_iter()
        .map(|i| {
            let row = &u[i * w..(i + 1) * w];
            let below = (i + 1 < h).then(|| &u[(i + 1) * w..(i + 2) * w]);
            let mut s = 0.0f64;
            for j in 0..w {
                let gx = if j + 1 < w { row[j + 1] - row[j] } else { 0.0 };
                let gy = below.map_or(0.0, |b| b[j] - row[j]);
                s += ((gx * gx + gy * gy) as f64).sqrt();
            }
            s
        })
        .sum()
}

/// `div p` at row `i` (the negative adjoint of the forward-difference gradient).
#[inline]
fn div_row(px: &[f32], py: &[f32], w: usize, h: usize, i: usize, out: &mut [f32]) {
    let pxr = &px[i * w..(i + 1) * w];
    let pyr = &py[i * w..(i + 1) * w];
    let pyu = (i > 0).then(|| &py[(i - 1) * w..i * w]);
    for j in 0..w {
        let mut d = if j + 1 < w { pxr[j] } else { 0.0 };
        if j > 0 {
            d -= pxr[j - 1];
        }
        if i + 1 < h {
            d += pyr[j];
        }
        if let Some(up) = pyu {
            d -= up[j];
        }
        out[j] = d;
    }
}

/// Primal-dual gap per pixel of (u, p) for the ROF problem with data `f`.
pub fn rof_gap(
    u: &[f32],
    px: &[f32],
    py: &[f32],
    f: &[f32],
    w: usize,
    h: usize,
    lambda: f64,
) -> f64 {
    let tv = total_variation(u, w, h);
    let (fid, dual) = (0..h)
        .into_par_iter()
        .map(|i| {
            let mut d = vec![0.0f32; w];
            div_row(px, py, w, h, i, &mut d);
            let mut fid = 0.0f64;
            let mut dual = 0.0f64;
            for (j, &dj) in d.iter().enumerate() {
                let k = i * w + j;
                let r = (u[k] - f[k]) as f64;
                fid += r * r;
                let dv = dj as f64;
                // D(p) = -<f, div p> - ||div p||^2 / (2 lambda), |p| <= 1.
                dual += -(f[k] as f64) * dv - dv * dv / (2.0 * lambda);
            }
            (fid, dual)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let primal = tv + 0.5 * lambda * fid;
    // Clamp the f32 round-off: the exact gap is non-negative.
    (primal - dual).max(0.0) / (w * h) as f64
}

/// Solves ROF for `f` (`w * h`, row major).
pub fn rof(f: &[f32], w: usize, h: usize, opt: &TvOptions) -> TvResult {
    let n = w * h;
    assert_eq!(f.len(), n);
    let lambda = opt.lambda as f32;
    let mut u = f.to_vec();
    let mut ubar = f.to_vec();
    let mut px = vec![0.0f32; n];
    let mut py = vec![0.0f32; n];
    // ALG2 of Chambolle & Pock with L^2 = 8; strong convexity 0.7 lambda for robustness.
    let l2 = 8.0f32;
    let mut tau = 0.02f32;
    let mut sigma = 1.0 / (tau * l2);
    let gamma = 0.7 * lambda;
    let mut gap = f64::INFINITY;
    let mut it = 0;
    while it < opt.max_iter {
        // Dual ascent and projection onto |p| <= 1, row by row.
        {
            let ub = &ubar;
            px.par_chunks_mut(w)
                .zip(py.par_chunks_mut(w))
                .enumerate()
                .for_each(|(i, (pxr, pyr))| {
                    let row = &ub[i * w..(i + 1) * w];
                    let below = (i + 1 < h).then(|| &ub[(i + 1) * w..(i + 2) * w]);
                    for j in 0..w {
                        let gx = if j + 1 < w { row[j + 1] - row[j] } else { 0.0 };
                        let gy = below.map_or(0.0, |b| b[j] - row[j]);
                        let qx = pxr[j] + sigma * gx;
                        let qy = pyr[j] + sigma * gy;
                        let s = (qx * qx + qy * qy).sqrt().max(1.0);
                        pxr[j] = qx / s;
                        pyr[j] = qy / s;
                    }
                });
        }
        // Primal proximal step, extrapolation with the new theta.
        let theta = 1.0 / (1.0 + 2.0 * gamma * tau).sqrt();
        {
            let (pxs, pys) = (&px, &py);
            let t = tau;
            u.par_chunks_mut(w)
                .zip(ubar.par_chunks_mut(w))
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; w],
                    |d, (i, (ur, br))| {
                        div_row(pxs, pys, w, h, i, d);
                        let fr = &f[i * w..(i + 1) * w];
                        let inv = 1.0 / (1.0 + t * lambda);
                        for j in 0..w {
                            let old = ur[j];
                            let new = (old + t * d[j] + t * lambda * fr[j]) * inv;
                            ur[j] = new;
                            br[j] = new + theta * (new - old);
                        }
                    },
                );
        }
        tau *= theta;
        sigma /= theta;
        it += 1;
        if it % opt.check_every == 0 || it == opt.max_iter {
            gap = rof_gap(&u, &px, &py, f, w, h, opt.lambda);
            if gap <= opt.gap_tol {
                break;
            }
        }
    }
    TvResult {
        u,
        px,
        py,
        iterations: it,
        gap,
    }
}
