//! The f64 specification of a TNRD stage and its VJP: plain loops, full RBF sums.

use super::{centre, reflect, zero_mean, zero_mean_grad, Stage, StageGrad, CENTRES, GAMMA};

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
fn filter_grad(u: &[f64], y: &[f64], w: usize, h: usize, s: usize) -> Vec<f64> {
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

/// One stage: `u - sum_i K_i^T phi_i(K_i u) - lambda (u - f)`.
pub fn forward(st: &Stage, u: &[f64], f: &[f64], w: usize, h: usize, s: usize) -> Vec<f64> {
    let n = s * s;
    let k = zero_mean(&st.w, s);
    let nf = k.len() / n;
    let lam = st.log_lambda.exp();
    let mut out: Vec<f64> = u.iter().zip(f).map(|(&a, &b)| a - lam * (a - b)).collect();
    for i in 0..nf {
        let ki = &k[i * n..(i + 1) * n];
        let z: Vec<f64> = conv(u, w, h, ki, s)
            .iter()
            .map(|&v| phi(v, &st.rbf[i * CENTRES..(i + 1) * CENTRES]).0)
            .collect();
        for (o, d) in out.iter_mut().zip(conv_t(&z, w, h, ki, s)) {
            *o -= d;
        }
    }
    out
}

/// The VJP of [`forward`] for the output gradient `g`.
pub fn vjp(st: &Stage, u: &[f64], f: &[f64], g: &[f64], w: usize, h: usize, s: usize) -> StageGrad {
    let n = s * s;
    let k = zero_mean(&st.w, s);
    let nf = k.len() / n;
    let lam = st.log_lambda.exp();
    let mut du: Vec<f64> = g.iter().map(|&v| (1.0 - lam) * v).collect();
    let df: Vec<f64> = g.iter().map(|&v| lam * v).collect();
    let dlam: f64 = -g
        .iter()
        .zip(u.iter().zip(f))
        .map(|(&gv, (&a, &b))| gv * (a - b))
        .sum::<f64>();
    let mut dk = vec![0.0; nf * n];
    let mut drbf = vec![0.0; nf * CENTRES];
    for i in 0..nf {
        let ki = &k[i * n..(i + 1) * n];
        let wts = &st.rbf[i * CENTRES..(i + 1) * CENTRES];
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
    zero_mean_grad(&mut dk, s);
    StageGrad {
        du,
        df,
        dw: dk,
        drbf,
        dlog_lambda: lam * dlam,
    }
}
