//! The f64 reference backend: plain loops written to be read. Every other implementation is
//! tested against it, and the finite-difference checks run on it.

pub mod structured;
pub mod tnrd;

use super::half16::{self, Packed16};
use super::optim;
use super::{Activation, Backend, BnStats, ConvSpec, Storage, Taps, BN_EPS, BN_MOMENTUM, TV_EPS};
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::Dims;

/// The oracle backend (f64 on the host).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn check_len(buf: &[f64], len: usize, what: &str) -> Result<()> {
    ensure_shape!(
        buf.len() == len,
        "{what}: expected {len} values, got {}",
        buf.len()
    );
    Ok(())
}

/// Index of `[n, c, i, j]` in an NCHW tensor of shape `d`.
#[inline]
fn at(d: Dims, n: usize, c: usize, i: usize, j: usize) -> usize {
    ((n * d.c + c) * d.h + i) * d.w + j
}

/// The input pixel a 3x3 tap `(a, b)` reads for output pixel `(i, j)`, or `None` in the padding.
#[inline]
fn tap(d: Dims, i: usize, j: usize, a: usize, b: usize) -> Option<(usize, usize)> {
    let si = i as isize + a as isize - 1;
    let sj = j as isize + b as isize - 1;
    if si < 0 || sj < 0 || si >= d.h as isize || sj >= d.w as isize {
        None
    } else {
        Some((si as usize, sj as usize))
    }
}

impl Backend for Reference {
    type Buf = Vec<f64>;
    type IBuf = Vec<i32>;
    type HBuf = Packed16;

    fn name(&self) -> &'static str {
        "reference"
    }

    fn zeros(&self, len: usize) -> Result<Vec<f64>> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, data: &[f64]) -> Result<Vec<f64>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(buf.clone())
    }
    fn buf_len(&self, buf: &Vec<f64>) -> usize {
        buf.len()
    }
    fn copy(&self, buf: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(buf.clone())
    }
    fn iupload(&self, data: &[i32]) -> Result<Vec<i32>> {
        Ok(data.to_vec())
    }
    fn idownload(&self, buf: &Vec<i32>) -> Result<Vec<i32>> {
        Ok(buf.clone())
    }
    fn pack16(&self, x: &Vec<f64>, format: Storage) -> Result<Packed16> {
        half16::pack_f64(x, format)
    }
    fn unpack16(&self, h: &Packed16) -> Result<Vec<f64>> {
        Ok(h.to_f64())
    }

    fn lincomb(&self, terms: &[(f64, &Vec<f64>)]) -> Result<Vec<f64>> {
        ensure_shape!(!terms.is_empty(), "lincomb needs at least one term");
        let len = terms[0].1.len();
        let mut out = vec![0.0; len];
        for (a, x) in terms {
            check_len(x, len, "lincomb term")?;
            for (o, v) in out.iter_mut().zip(x.iter()) {
                *o += a * v;
            }
        }
        Ok(out)
    }
    fn scaled_sq(
        &self,
        x: &Vec<f64>,
        a: &Vec<f64>,
        b: &Vec<f64>,
        atol: f64,
        rtol: f64,
    ) -> Result<f64> {
        crate::backend::scaled_sq_host(x, a, b, atol, rtol)
    }
    fn sgd_step(
        &self,
        w: &mut Vec<f64>,
        m: &mut Vec<f64>,
        g: &Vec<f64>,
        s: &optim::SgdStep,
    ) -> Result<()> {
        optim::check_lens("sgd_step", &[w.len(), m.len(), g.len()])?;
        optim::sgd_host(s, w, m, g);
        Ok(())
    }
    fn adam_step(
        &self,
        w: &mut Vec<f64>,
        m: &mut Vec<f64>,
        v: &mut Vec<f64>,
        g: &Vec<f64>,
        s: &optim::AdamStep,
    ) -> Result<()> {
        optim::check_lens("adam_step", &[w.len(), m.len(), v.len(), g.len()])?;
        optim::adam_host(s, w, m, v, g);
        Ok(())
    }
    fn axpy(&self, a: f64, x: &Vec<f64>, y: &mut Vec<f64>) -> Result<()> {
        check_len(x, y.len(), "axpy")?;
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv += a * xv;
        }
        Ok(())
    }

    fn conv(
        &self,
        spec: ConvSpec,
        x: &Vec<f64>,
        d: Dims,
        k: &Vec<f64>,
        cout: usize,
    ) -> Result<Vec<f64>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => full3x3(x, d, k, cout),
            (Taps::K1, 1) => full1x1(x, d, k, cout),
            _ => structured::grouped_conv(spec, x, d, k, cout),
        }
    }
    fn conv_t(
        &self,
        spec: ConvSpec,
        z: &Vec<f64>,
        d: Dims,
        k: &Vec<f64>,
        cin: usize,
    ) -> Result<Vec<f64>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => full3x3_t(z, d, k, cin),
            (Taps::K1, 1) => full1x1_t(z, d, k, cin),
            _ => structured::grouped_conv_t(spec, z, d, k, cin),
        }
    }
    fn conv_wgrad(
        &self,
        spec: ConvSpec,
        x: &Vec<f64>,
        d: Dims,
        dz: &Vec<f64>,
        cout: usize,
    ) -> Result<Vec<f64>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => full3x3_wgrad(x, d, dz, cout),
            (Taps::K1, 1) => full1x1_wgrad(x, d, dz, cout),
            _ => structured::grouped_conv_wgrad(spec, x, d, dz, cout),
        }
    }

    fn add_channel_bias(&self, x: &Vec<f64>, d: Dims, b: &Vec<f64>) -> Result<Vec<f64>> {
        check_len(x, d.len(), "bias input")?;
        check_len(b, d.c, "bias")?;
        let mut y = x.clone();
        for n in 0..d.n {
            for c in 0..d.c {
                for p in 0..d.hw() {
                    y[(n * d.c + c) * d.hw() + p] += b[c];
                }
            }
        }
        Ok(y)
    }

    fn channel_sum(&self, dy: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        check_len(dy, d.len(), "channel_sum input")?;
        let mut s = vec![0.0; d.c];
        for n in 0..d.n {
            for c in 0..d.c {
                for p in 0..d.hw() {
                    s[c] += dy[(n * d.c + c) * d.hw() + p];
                }
            }
        }
        Ok(s)
    }

    fn tvnorm(&self, x: &Vec<f64>, d: Dims, s: &Vec<f64>, b: &Vec<f64>) -> Result<Vec<f64>> {
        check_len(x, d.len(), "tvnorm input")?;
        check_len(s, d.c, "tvnorm scale")?;
        check_len(b, d.c, "tvnorm shift")?;
        let hw = d.hw();
        let mut y = vec![0.0; d.len()];
        for n in 0..d.n {
            for p in 0..hw {
                let ss: f64 = (0..d.c).map(|c| x[(n * d.c + c) * hw + p].powi(2)).sum();
                let r = (ss + TV_EPS).sqrt();
                for c in 0..d.c {
                    let idx = (n * d.c + c) * hw + p;
                    y[idx] = s[c] * x[idx] / r + b[c];
                }
            }
        }
        Ok(y)
    }

    fn tvnorm_vjp(
        &self,
        x: &Vec<f64>,
        d: Dims,
        s: &Vec<f64>,
        dy: &Vec<f64>,
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        check_len(x, d.len(), "tvnorm_vjp input")?;
        check_len(dy, d.len(), "tvnorm_vjp cotangent")?;
        check_len(s, d.c, "tvnorm_vjp scale")?;
        let hw = d.hw();
        let mut dx = vec![0.0; d.len()];
        let mut ds = vec![0.0; d.c];
        let mut db = vec![0.0; d.c];
        for n in 0..d.n {
            for p in 0..hw {
                let idx = |c: usize| (n * d.c + c) * hw + p;
                let ss: f64 = (0..d.c).map(|c| x[idx(c)].powi(2)).sum();
                let r = (ss + TV_EPS).sqrt();
                // y_c = s_c x_c / r: dx_c = s_c dy_c / r - x_c (sum_c' s_c' dy_c' x_c') / r^3.
                let dot: f64 = (0..d.c).map(|c| s[c] * dy[idx(c)] * x[idx(c)]).sum();
                for c in 0..d.c {
                    let i = idx(c);
                    dx[i] = s[c] * dy[i] / r - x[i] * dot / (r * r * r);
                    ds[c] += dy[i] * x[i] / r;
                    db[c] += dy[i];
                }
            }
        }
        Ok((dx, ds, db))
    }

    fn batchnorm_train(
        &self,
        x: &Vec<f64>,
        d: Dims,
        gamma: &Vec<f64>,
        beta: &Vec<f64>,
    ) -> Result<(Vec<f64>, BnStats<Vec<f64>>)> {
        check_len(x, d.len(), "batchnorm input")?;
        let m = (d.n * d.hw()) as f64;
        let mut mean = vec![0.0; d.c];
        let mut var = vec![0.0; d.c];
        for c in 0..d.c {
            let vals = (0..d.n).flat_map(|n| (0..d.hw()).map(move |p| (n * d.c + c) * d.hw() + p));
            mean[c] = vals.clone().map(|i| x[i]).sum::<f64>() / m;
            var[c] = vals.map(|i| (x[i] - mean[c]).powi(2)).sum::<f64>() / m;
        }
        let stats = BnStats { mean, var };
        let y = self.batchnorm_eval(x, d, gamma, beta, &stats.mean, &stats.var)?;
        Ok((y, stats))
    }

    fn batchnorm_eval(
        &self,
        x: &Vec<f64>,
        d: Dims,
        gamma: &Vec<f64>,
        beta: &Vec<f64>,
        running_mean: &Vec<f64>,
        running_var: &Vec<f64>,
    ) -> Result<Vec<f64>> {
        check_len(x, d.len(), "batchnorm input")?;
        for (v, what) in [
            (gamma, "weight"),
            (beta, "bias"),
            (running_mean, "mean"),
            (running_var, "var"),
        ] {
            check_len(v, d.c, what)?;
        }
        let mut y = vec![0.0; d.len()];
        for n in 0..d.n {
            for c in 0..d.c {
                let inv = 1.0 / (running_var[c] + BN_EPS).sqrt();
                for p in 0..d.hw() {
                    let i = (n * d.c + c) * d.hw() + p;
                    y[i] = gamma[c] * (x[i] - running_mean[c]) * inv + beta[c];
                }
            }
        }
        Ok(y)
    }

    fn batchnorm_vjp(
        &self,
        x: &Vec<f64>,
        d: Dims,
        gamma: &Vec<f64>,
        stats: &BnStats<Vec<f64>>,
        dy: &Vec<f64>,
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        check_len(x, d.len(), "batchnorm_vjp input")?;
        check_len(dy, d.len(), "batchnorm_vjp cotangent")?;
        let m = (d.n * d.hw()) as f64;
        let mut dx = vec![0.0; d.len()];
        let mut dgamma = vec![0.0; d.c];
        let mut dbeta = vec![0.0; d.c];
        for c in 0..d.c {
            let inv = 1.0 / (stats.var[c] + BN_EPS).sqrt();
            let idx: Vec<usize> = (0..d.n)
                .flat_map(|n| (0..d.hw()).map(move |p| (n * d.c + c) * d.hw() + p))
                .collect();
            let xhat = |i: usize| (x[i] - stats.mean[c]) * inv;
            let sum_dy: f64 = idx.iter().map(|&i| dy[i]).sum();
            let sum_dy_xhat: f64 = idx.iter().map(|&i| dy[i] * xhat(i)).sum();
            dgamma[c] = sum_dy_xhat;
            dbeta[c] = sum_dy;
            for &i in &idx {
                dx[i] = gamma[c] * inv * (dy[i] - sum_dy / m - xhat(i) * sum_dy_xhat / m);
            }
        }
        Ok((dx, dgamma, dbeta))
    }

    fn batchnorm_update_running(
        &self,
        running_mean: &mut Vec<f64>,
        running_var: &mut Vec<f64>,
        stats: &BnStats<Vec<f64>>,
        count: usize,
    ) -> Result<()> {
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        for c in 0..running_mean.len() {
            running_mean[c] = (1.0 - BN_MOMENTUM) * running_mean[c] + BN_MOMENTUM * stats.mean[c];
            running_var[c] =
                (1.0 - BN_MOMENTUM) * running_var[c] + BN_MOMENTUM * stats.var[c] * unbias;
        }
        Ok(())
    }

    fn activation(&self, act: Activation, x: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(x.iter().map(|&v| act.apply(v)).collect())
    }
    fn activation_vjp(&self, act: Activation, x: &Vec<f64>, dy: &Vec<f64>) -> Result<Vec<f64>> {
        check_len(dy, x.len(), "activation_vjp")?;
        Ok(x.iter()
            .zip(dy)
            .map(|(&v, &g)| act.derivative(v) * g)
            .collect())
    }

    fn avgpool2(&self, x: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        check_len(x, d.len(), "avgpool2 input")?;
        let pd = d.pooled();
        let mut y = vec![0.0; pd.len()];
        for n in 0..d.n {
            for c in 0..d.c {
                for i in 0..pd.h {
                    for j in 0..pd.w {
                        let mut s = 0.0;
                        for a in 0..2 {
                            for b in 0..2 {
                                s += x[at(d, n, c, 2 * i + a, 2 * j + b)];
                            }
                        }
                        y[at(pd, n, c, i, j)] = s / 4.0;
                    }
                }
            }
        }
        Ok(y)
    }

    fn avgpool2_vjp(&self, dy: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        let pd = d.pooled();
        check_len(dy, pd.len(), "avgpool2_vjp cotangent")?;
        let mut dx = vec![0.0; d.len()];
        for n in 0..d.n {
            for c in 0..d.c {
                for i in 0..pd.h {
                    for j in 0..pd.w {
                        for a in 0..2 {
                            for b in 0..2 {
                                dx[at(d, n, c, 2 * i + a, 2 * j + b)] =
                                    dy[at(pd, n, c, i, j)] / 4.0;
                            }
                        }
                    }
                }
            }
        }
        Ok(dx)
    }

    fn global_mean(&self, x: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        check_len(x, d.len(), "global_mean input")?;
        let hw = d.hw();
        Ok((0..d.n * d.c)
            .map(|nc| x[nc * hw..(nc + 1) * hw].iter().sum::<f64>() / hw as f64)
            .collect())
    }

    fn global_mean_vjp(&self, dy: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        check_len(dy, d.n * d.c, "global_mean_vjp cotangent")?;
        let hw = d.hw();
        Ok((0..d.len()).map(|i| dy[i / hw] / hw as f64).collect())
    }

    fn split_channels(&self, x: &Vec<f64>, d: Dims, c1: usize) -> Result<(Vec<f64>, Vec<f64>)> {
        check_len(x, d.len(), "split_channels input")?;
        ensure_shape!(c1 <= d.c, "split at {c1} of {} channels", d.c);
        let hw = d.hw();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for n in 0..d.n {
            let s = &x[n * d.c * hw..(n + 1) * d.c * hw];
            a.extend_from_slice(&s[..c1 * hw]);
            b.extend_from_slice(&s[c1 * hw..]);
        }
        Ok((a, b))
    }

    fn concat_channels(&self, a: &Vec<f64>, b: &Vec<f64>, d: Dims, c1: usize) -> Result<Vec<f64>> {
        ensure_shape!(c1 <= d.c, "concat at {c1} of {} channels", d.c);
        let hw = d.hw();
        check_len(a, d.n * c1 * hw, "concat_channels first")?;
        check_len(b, d.n * (d.c - c1) * hw, "concat_channels second")?;
        let mut x = Vec::with_capacity(d.len());
        for n in 0..d.n {
            x.extend_from_slice(&a[n * c1 * hw..(n + 1) * c1 * hw]);
            let c2 = d.c - c1;
            x.extend_from_slice(&b[n * c2 * hw..(n + 1) * c2 * hw]);
        }
        Ok(x)
    }

    fn softmax_xent(
        &self,
        logits: &Vec<f64>,
        n: usize,
        classes: usize,
        labels: &[usize],
    ) -> Result<(f64, Vec<f64>)> {
        check_len(logits, n * classes, "logits")?;
        ensure_shape!(labels.len() == n, "{} labels for {n} rows", labels.len());
        let mut loss = 0.0;
        let mut g = vec![0.0; n * classes];
        for r in 0..n {
            let row = &logits[r * classes..(r + 1) * classes];
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            loss += z.ln() + mx - row[labels[r]];
            for c in 0..classes {
                let p = (row[c] - mx).exp() / z;
                g[r * classes + c] = (p - if c == labels[r] { 1.0 } else { 0.0 }) / n as f64;
            }
        }
        Ok((loss / n as f64, g))
    }

    fn quantize(&self, x: &Vec<f64>, shift: u32) -> Result<Vec<i32>> {
        // A cast would quantise NaN to 0 and infinities to the i32 limits, silently.
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(crate::error::Error::NonFinite(format!(
                "the fixed-point policy cannot quantise {} (state value {i})",
                x[i]
            )));
        }
        let scale = (1u64 << shift) as f64;
        Ok(x.iter().map(|&v| (v * scale).round() as i32).collect())
    }
    fn dequantize(&self, q: &Vec<i32>, shift: u32) -> Result<Vec<f64>> {
        let scale = (1u64 << shift) as f64;
        Ok(q.iter().map(|&v| v as f64 / scale).collect())
    }
    fn fixed_update(
        &self,
        terms: &[(i32, &Vec<i32>)],
        coef: f64,
        f: &Vec<f64>,
    ) -> Result<Vec<i32>> {
        for (_, q) in terms {
            ensure_shape!(
                q.len() == f.len(),
                "fixed_update: term of {} values, f {}",
                q.len(),
                f.len()
            );
        }
        Ok((0..f.len())
            .map(|i| {
                let base = terms
                    .iter()
                    .fold(0i32, |acc, (c, q)| acc.wrapping_add(c.wrapping_mul(q[i])));
                base.wrapping_add(round_to_i32(coef * f[i]))
            })
            .collect())
    }

    fn stencil5(&self, x: &Vec<f64>, d: Dims, dw: &Vec<f64>) -> Result<Vec<f64>> {
        structured::stencil5(x, d, dw)
    }
    fn stencil5_t(&self, z: &Vec<f64>, d: Dims, dw: &Vec<f64>) -> Result<Vec<f64>> {
        structured::stencil5_t(z, d, dw)
    }
    fn stencil5_wgrad(&self, x: &Vec<f64>, d: Dims, dz: &Vec<f64>) -> Result<Vec<f64>> {
        structured::stencil5_wgrad(x, d, dz)
    }
    /// The oracle solves with DFTs by their definition (independent of `rustfft`).
    fn diffusion_solve(&self, x: &Vec<f64>, d: Dims, diff: &Vec<f64>, h: f64) -> Result<Vec<f64>> {
        structured::diffusion_solve_dft(x, d, diff, h)
    }
    fn diffusion_solve_vjp(
        &self,
        y: &Vec<f64>,
        d: Dims,
        diff: &Vec<f64>,
        h: f64,
        g: &Vec<f64>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        structured::diffusion_vjp_with(y, d, diff, h, g, structured::diffusion_solve_dft)
    }
    fn tnrd_stage(
        &self,
        u: &Vec<f64>,
        f: &Vec<f64>,
        d: Dims,
        k: &Vec<f64>,
        rbf: &Vec<f64>,
        lambda: f64,
        size: usize,
    ) -> Result<Vec<f64>> {
        tnrd::stage_batch(u, f, d, k, rbf, lambda, size)
    }
    fn tnrd_stage_vjp(
        &self,
        u: &Vec<f64>,
        f: &Vec<f64>,
        d: Dims,
        k: &Vec<f64>,
        rbf: &Vec<f64>,
        lambda: f64,
        size: usize,
        g: &Vec<f64>,
    ) -> Result<super::TnrdGrads<Vec<f64>>> {
        let gr = tnrd::stage_vjp_batch(u, f, d, k, rbf, lambda, size, g)?;
        Ok(super::TnrdGrads {
            du: gr.du,
            df: gr.df,
            dk: gr.dk,
            drbf: gr.drbf,
            dlambda: gr.dlambda,
        })
    }
    fn haar(&self, x: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        structured::haar(x, d)
    }
    fn haar_inv(&self, y: &Vec<f64>, d: Dims) -> Result<Vec<f64>> {
        structured::haar_inv(y, d)
    }
    fn haar_fixed(&self, q: &Vec<i32>, d: Dims) -> Result<Vec<i32>> {
        structured::haar_fixed(q, d)
    }
    fn haar_fixed_inv(&self, q: &Vec<i32>, d: Dims) -> Result<Vec<i32>> {
        structured::haar_fixed_inv(q, d)
    }
}

/// `round(v)` (half away from zero) reduced to i32 by wrapping, the same on every backend.
pub fn round_to_i32(v: f64) -> i32 {
    (v.round() as i64) as i32
}

/// [`Backend::conv`] of [`ConvSpec::full3x3`].
fn full3x3(x: &[f64], d: Dims, k: &[f64], cout: usize) -> Result<Vec<f64>> {
    check_len(x, d.len(), "conv3x3 input")?;
    check_len(k, cout * d.c * 9, "conv3x3 weight")?;
    let od = d.with_c(cout);
    let mut y = vec![0.0; od.len()];
    for n in 0..d.n {
        for o in 0..cout {
            for i in 0..d.h {
                for j in 0..d.w {
                    let mut acc = 0.0;
                    for c in 0..d.c {
                        for a in 0..3 {
                            for b in 0..3 {
                                if let Some((si, sj)) = tap(d, i, j, a, b) {
                                    acc +=
                                        k[((o * d.c + c) * 3 + a) * 3 + b] * x[at(d, n, c, si, sj)];
                                }
                            }
                        }
                    }
                    y[at(od, n, o, i, j)] = acc;
                }
            }
        }
    }
    Ok(y)
}

/// [`Backend::conv_t`] of [`ConvSpec::full3x3`].
fn full3x3_t(z: &[f64], d: Dims, k: &[f64], cin: usize) -> Result<Vec<f64>> {
    // Scatter form of the adjoint: each output pixel of conv sends its weight back.
    check_len(z, d.len(), "conv3x3_t input")?;
    check_len(k, d.c * cin * 9, "conv3x3_t weight")?;
    let xd = d.with_c(cin);
    let mut x = vec![0.0; xd.len()];
    for n in 0..d.n {
        for o in 0..d.c {
            for i in 0..d.h {
                for j in 0..d.w {
                    let zv = z[at(d, n, o, i, j)];
                    for c in 0..cin {
                        for a in 0..3 {
                            for b in 0..3 {
                                if let Some((si, sj)) = tap(d, i, j, a, b) {
                                    x[at(xd, n, c, si, sj)] +=
                                        k[((o * cin + c) * 3 + a) * 3 + b] * zv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(x)
}

/// [`Backend::conv_wgrad`] of [`ConvSpec::full3x3`].
fn full3x3_wgrad(x: &[f64], d: Dims, dz: &[f64], cout: usize) -> Result<Vec<f64>> {
    check_len(x, d.len(), "conv3x3_wgrad input")?;
    let od = d.with_c(cout);
    check_len(dz, od.len(), "conv3x3_wgrad cotangent")?;
    let mut dk = vec![0.0; cout * d.c * 9];
    for n in 0..d.n {
        for o in 0..cout {
            for i in 0..d.h {
                for j in 0..d.w {
                    let g = dz[at(od, n, o, i, j)];
                    for c in 0..d.c {
                        for a in 0..3 {
                            for b in 0..3 {
                                if let Some((si, sj)) = tap(d, i, j, a, b) {
                                    dk[((o * d.c + c) * 3 + a) * 3 + b] +=
                                        g * x[at(d, n, c, si, sj)];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(dk)
}

/// [`Backend::conv`] of [`ConvSpec::full1x1`].
fn full1x1(x: &[f64], d: Dims, k: &[f64], cout: usize) -> Result<Vec<f64>> {
    check_len(x, d.len(), "conv1x1 input")?;
    check_len(k, cout * d.c, "conv1x1 weight")?;
    let od = d.with_c(cout);
    let mut y = vec![0.0; od.len()];
    for n in 0..d.n {
        for o in 0..cout {
            for c in 0..d.c {
                let kv = k[o * d.c + c];
                for p in 0..d.hw() {
                    y[(n * cout + o) * d.hw() + p] += kv * x[(n * d.c + c) * d.hw() + p];
                }
            }
        }
    }
    Ok(y)
}

/// [`Backend::conv_t`] of [`ConvSpec::full1x1`].
fn full1x1_t(z: &[f64], d: Dims, k: &[f64], cin: usize) -> Result<Vec<f64>> {
    check_len(z, d.len(), "conv1x1_t input")?;
    check_len(k, d.c * cin, "conv1x1_t weight")?;
    let mut x = vec![0.0; d.n * cin * d.hw()];
    for n in 0..d.n {
        for o in 0..d.c {
            for c in 0..cin {
                let kv = k[o * cin + c];
                for p in 0..d.hw() {
                    x[(n * cin + c) * d.hw() + p] += kv * z[(n * d.c + o) * d.hw() + p];
                }
            }
        }
    }
    Ok(x)
}

/// [`Backend::conv_wgrad`] of [`ConvSpec::full1x1`].
fn full1x1_wgrad(x: &[f64], d: Dims, dz: &[f64], cout: usize) -> Result<Vec<f64>> {
    check_len(x, d.len(), "conv1x1_wgrad input")?;
    check_len(dz, d.n * cout * d.hw(), "conv1x1_wgrad cotangent")?;
    let mut dk = vec![0.0; cout * d.c];
    for n in 0..d.n {
        for o in 0..cout {
            for c in 0..d.c {
                for p in 0..d.hw() {
                    dk[o * d.c + c] +=
                        dz[(n * cout + o) * d.hw() + p] * x[(n * d.c + c) * d.hw() + p];
                }
            }
        }
    }
    Ok(dk)
}
