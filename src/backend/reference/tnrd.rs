//! The f64 specification of a TNRD reaction-diffusion stage (Chen & Pock 2017) and its VJP,
//! on the filters `K` as given and `lambda` (the model's zero-mean projection and
//! `lambda = exp(log_lambda)` live in `restore::tnrd`): plain loops, full RBF sums.
//!
//! `stage(u) = u - sum_i K_i^T phi_i(K_i u) - lambda (u - f)` with `K_i u` the correlation of a
//! `size x size` filter under symmetric (edge-repeating) padding, `K_i^T` its exact adjoint and
//! `phi_i(z) = sum_j w_ij exp(-(z - mu_j)^2 / (2 gamma^2))` over [`CENTRES`] centres.

use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::Dims;

/// RBF centres per influence function (shared with kernels/tnrd.cu).
pub const CENTRES: usize = crate::backend::kernel_constants::TN_CENTRES;
/// Centres span `[-MU_MAX, MU_MAX]` (the paper's 310 on [0, 255], scaled to [0, 1]).
pub const MU_MAX: f64 = crate::backend::kernel_constants::TN_MU_MAX;
/// RBF width (the paper's 10 on [0, 255]); equal to the centre spacing, which the fast paths use.
pub const GAMMA: f64 = crate::backend::kernel_constants::TN_GAMMA;

/// Centre `j` of the RBF basis.
pub fn centre(j: usize) -> f64 {
    -MU_MAX + 2.0 * MU_MAX * j as f64 / (CENTRES - 1) as f64
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

/// `K u` for one `s x s` filter `k` (correlation, symmetric padding) on a `w x h` image.
pub fn conv(u: &[f64], w: usize, h: usize, k: &[f64], s: usize) -> Vec<f64> {
    let r = (s / 2) as isize;
    let mut v = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for a in 0..s {
                for b in 0..s {
                    let yy = reflect(y as isize + a as isize - r, h);
                    let xx = reflect(x as isize + b as isize - r, w);
                    acc += k[a * s + b] * u[yy * w + xx];
                }
            }
            v[y * w + x] = acc;
        }
    }
    v
}

/// `K^T y`, the exact adjoint of [`conv`] (scatter of the same sums).
pub fn conv_t(y: &[f64], w: usize, h: usize, k: &[f64], s: usize) -> Vec<f64> {
    let r = (s / 2) as isize;
    let mut out = vec![0.0; w * h];
    for py in 0..h {
        for px in 0..w {
            for a in 0..s {
                for b in 0..s {
                    let yy = reflect(py as isize + a as isize - r, h);
                    let xx = reflect(px as isize + b as isize - r, w);
                    out[yy * w + xx] += k[a * s + b] * y[py * w + px];
                }
            }
        }
    }
    out
}

/// `sum_{p} y[p] * u[p shifted by (a, b)]`: the gradient of `<y, K u>` against `k[a][b]`.
pub fn filter_grad(u: &[f64], y: &[f64], w: usize, h: usize, s: usize) -> Vec<f64> {
    let r = (s / 2) as isize;
    let mut g = vec![0.0; s * s];
    for py in 0..h {
        for px in 0..w {
            for a in 0..s {
                for b in 0..s {
                    let yy = reflect(py as isize + a as isize - r, h);
                    let xx = reflect(px as isize + b as isize - r, w);
                    g[a * s + b] += y[py * w + px] * u[yy * w + xx];
                }
            }
        }
    }
    g
}

/// `G_j(z) = exp(-(z - mu_j)^2 / (2 gamma^2))`.
pub fn gaussian(z: f64, j: usize) -> f64 {
    let d = (z - centre(j)) / GAMMA;
    (-0.5 * d * d).exp()
}

/// `phi(z)` and `phi'(z)` for RBF weights `wts` (length CENTRES).
pub fn phi(z: f64, wts: &[f64]) -> (f64, f64) {
    let (mut v, mut dv) = (0.0, 0.0);
    for (j, &wj) in wts.iter().enumerate().take(CENTRES) {
        let g = gaussian(z, j);
        v += wj * g;
        dv -= wj * g * (z - centre(j)) / (GAMMA * GAMMA);
    }
    (v, dv)
}

/// One stage on one `w x h` image with filters `k` (`filters * s * s`, used as given).
#[allow(clippy::too_many_arguments)]
pub fn stage(
    k: &[f64],
    rbf: &[f64],
    lam: f64,
    u: &[f64],
    f: &[f64],
    w: usize,
    h: usize,
    s: usize,
) -> Vec<f64> {
    let n = s * s;
    let nf = k.len() / n;
    let mut out: Vec<f64> = u.iter().zip(f).map(|(&a, &b)| a - lam * (a - b)).collect();
    for i in 0..nf {
        let ki = &k[i * n..(i + 1) * n];
        let z: Vec<f64> = conv(u, w, h, ki, s)
            .iter()
            .map(|&v| phi(v, &rbf[i * CENTRES..(i + 1) * CENTRES]).0)
            .collect();
        for (o, d) in out.iter_mut().zip(conv_t(&z, w, h, ki, s)) {
            *o -= d;
        }
    }
    out
}

/// Gradients of [`stage`] for one image: against `u`, `f`, the filters `K` as given, the RBF
/// weights and `lambda`.
#[derive(Debug, Clone)]
pub struct Grads {
    pub du: Vec<f64>,
    pub df: Vec<f64>,
    pub dk: Vec<f64>,
    pub drbf: Vec<f64>,
    pub dlambda: f64,
}

/// The VJP of [`stage`] for the output gradient `g`.
#[allow(clippy::too_many_arguments)]
pub fn stage_vjp(
    k: &[f64],
    rbf: &[f64],
    lam: f64,
    u: &[f64],
    f: &[f64],
    g: &[f64],
    w: usize,
    h: usize,
    s: usize,
) -> Grads {
    let n = s * s;
    let nf = k.len() / n;
    let mut du: Vec<f64> = g.iter().map(|&v| (1.0 - lam) * v).collect();
    let df: Vec<f64> = g.iter().map(|&v| lam * v).collect();
    let dlambda: f64 = -g
        .iter()
        .zip(u.iter().zip(f))
        .map(|(&gv, (&a, &b))| gv * (a - b))
        .sum::<f64>();
    let mut dk = vec![0.0; nf * n];
    let mut drbf = vec![0.0; nf * CENTRES];
    for i in 0..nf {
        let ki = &k[i * n..(i + 1) * n];
        let wts = &rbf[i * CENTRES..(i + 1) * CENTRES];
        let v = conv(u, w, h, ki, s);
        let e = conv(g, w, h, ki, s);
        let (z, dz): (Vec<f64>, Vec<f64>) = v.iter().map(|&x| phi(x, wts)).unzip();
        let de: Vec<f64> = dz.iter().zip(&e).map(|(a, b)| a * b).collect();
        for (p, &x) in v.iter().enumerate() {
            for j in 0..CENTRES {
                drbf[i * CENTRES + j] -= e[p] * gaussian(x, j);
            }
        }
        let g1 = filter_grad(g, &z, w, h, s);
        let g2 = filter_grad(u, &de, w, h, s);
        for t in 0..n {
            dk[i * n + t] = -(g1[t] + g2[t]);
        }
        for (d, c) in du.iter_mut().zip(conv_t(&de, w, h, ki, s)) {
            *d -= c;
        }
    }
    Grads {
        du,
        df,
        dk,
        drbf,
        dlambda,
    }
}

/// The number of filters of a stage op on images `d` (grey: `d.c == 1`) with `klen` filter
/// values of `size x size` and `rlen` RBF weights, or a shape error.
pub fn check_stage(
    d: Dims,
    lens: [usize; 2],
    klen: usize,
    rlen: usize,
    size: usize,
) -> Result<usize> {
    ensure_shape!(size % 2 == 1, "tnrd stage: filter size {size} must be odd");
    ensure_shape!(
        d.c == 1,
        "tnrd stage: grey images [n, 1, h, w], got {} channels",
        d.c
    );
    for l in lens {
        ensure_shape!(
            l == d.len(),
            "tnrd stage: image of {} values, expected {}",
            l,
            d.len()
        );
    }
    let taps = size * size;
    ensure_shape!(
        klen.is_multiple_of(taps) && klen > 0,
        "tnrd stage: {klen} filter values are not a whole number of {size}x{size} filters"
    );
    let nf = klen / taps;
    ensure_shape!(
        rlen == nf * CENTRES,
        "tnrd stage: {rlen} RBF weights for {nf} filters (expected {})",
        nf * CENTRES
    );
    Ok(nf)
}

/// [`stage`] over the `d.n` images of `u`, `f` (`[n, 1, h, w]`).
#[allow(clippy::too_many_arguments)]
pub fn stage_batch(
    u: &[f64],
    f: &[f64],
    d: Dims,
    k: &[f64],
    rbf: &[f64],
    lam: f64,
    size: usize,
) -> Result<Vec<f64>> {
    check_stage(d, [u.len(), f.len()], k.len(), rbf.len(), size)?;
    let hw = d.hw();
    let mut out = Vec::with_capacity(d.len());
    for b in 0..d.n {
        let r = b * hw..(b + 1) * hw;
        out.extend(stage(k, rbf, lam, &u[r.clone()], &f[r], d.w, d.h, size));
    }
    Ok(out)
}

/// [`stage_vjp`] over the `d.n` images; parameter gradients summed over the images in order.
#[allow(clippy::too_many_arguments)]
pub fn stage_vjp_batch(
    u: &[f64],
    f: &[f64],
    d: Dims,
    k: &[f64],
    rbf: &[f64],
    lam: f64,
    size: usize,
    g: &[f64],
) -> Result<Grads> {
    check_stage(d, [u.len(), f.len()], k.len(), rbf.len(), size)?;
    check_stage(d, [g.len(), g.len()], k.len(), rbf.len(), size)?;
    let hw = d.hw();
    let mut all = Grads {
        du: Vec::with_capacity(d.len()),
        df: Vec::with_capacity(d.len()),
        dk: vec![0.0; k.len()],
        drbf: vec![0.0; rbf.len()],
        dlambda: 0.0,
    };
    for b in 0..d.n {
        let r = b * hw..(b + 1) * hw;
        let one = stage_vjp(
            k,
            rbf,
            lam,
            &u[r.clone()],
            &f[r.clone()],
            &g[r],
            d.w,
            d.h,
            size,
        );
        all.du.extend(one.du);
        all.df.extend(one.df);
        all.dk.iter_mut().zip(&one.dk).for_each(|(a, b)| *a += b);
        all.drbf
            .iter_mut()
            .zip(&one.drbf)
            .for_each(|(a, b)| *a += b);
        all.dlambda += one.dlambda;
    }
    Ok(all)
}
