//! The operators of SPEC section 7 on the CPU: grouped convolutions run the dense GEMM kernels
//! group by group (channels gathered into contiguous blocks), the depthwise 5-point stencil is a
//! direct f32 loop, and the diffusion solve runs f32 FFTs (`rustfft`) plane by plane in
//! parallel. The Haar transform uses the trait's host fallback.

use super::conv;
use crate::backend::reference::structured::{laplace_eigen, STENCIL};
use crate::backend::{ConvSpec, Taps};
use crate::tensor::Dims;
use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

/// A dense convolution kernel: `(input, input dims, weight, output channels)`.
pub type Dense = fn(&[f32], Dims, &[f32], usize) -> Vec<f32>;

/// Channels `[c0, c0 + cc)` of every image of `x` (shape `d`), as one contiguous tensor.
fn gather(x: &[f32], d: Dims, c0: usize, cc: usize) -> Vec<f32> {
    let hw = d.hw();
    let mut out = Vec::with_capacity(d.n * cc * hw);
    for n in 0..d.n {
        let base = (n * d.c + c0) * hw;
        out.extend_from_slice(&x[base..base + cc * hw]);
    }
    out
}

/// Writes `part` (`[n, cc, h, w]`) into channels `[c0, c0 + cc)` of `out` (shape `d`).
fn scatter(out: &mut [f32], d: Dims, c0: usize, part: &[f32]) {
    let hw = d.hw();
    let cc = part.len() / (d.n * hw).max(1);
    for n in 0..d.n {
        let base = (n * d.c + c0) * hw;
        out[base..base + cc * hw].copy_from_slice(&part[n * cc * hw..(n + 1) * cc * hw]);
    }
}

/// Grouped forward: `x` `[n, cin, h, w]` (`d`), `k` `[cout, cin / groups, ks, ks]` (`ks * ks` =
/// `taps`). The weights of one group's outputs are contiguous in `k`.
pub fn forward(spec: ConvSpec, x: &[f32], d: Dims, k: &[f32], cout: usize) -> Vec<f32> {
    let (groups, taps, (dense, _, _)) = (spec.groups, spec.tap_count(), dense(spec.taps));
    let (gi, go) = (d.c / groups, cout / groups);
    let od = d.with_c(cout);
    let mut out = vec![0.0; od.len()];
    for g in 0..groups {
        let xg = gather(x, d, g * gi, gi);
        let kg = &k[g * go * gi * taps..(g + 1) * go * gi * taps];
        scatter(&mut out, od, g * go, &dense(&xg, d.with_c(gi), kg, go));
    }
    out
}

/// Grouped adjoint: `z` `[n, cout, h, w]` (`d`) -> `[n, cin, h, w]`.
pub fn adjoint(spec: ConvSpec, z: &[f32], d: Dims, k: &[f32], cin: usize) -> Vec<f32> {
    let (groups, taps, (_, dense_t, _)) = (spec.groups, spec.tap_count(), dense(spec.taps));
    let (gi, go) = (cin / groups, d.c / groups);
    let xd = d.with_c(cin);
    let mut out = vec![0.0; xd.len()];
    for g in 0..groups {
        let zg = gather(z, d, g * go, go);
        let kg = &k[g * go * gi * taps..(g + 1) * go * gi * taps];
        scatter(&mut out, xd, g * gi, &dense_t(&zg, d.with_c(go), kg, gi));
    }
    out
}

/// Grouped weight gradient; `d` is the shape of `x`.
pub fn wgrad(spec: ConvSpec, x: &[f32], d: Dims, dz: &[f32], cout: usize) -> Vec<f32> {
    let (groups, taps, (_, _, dense_w)) = (spec.groups, spec.tap_count(), dense(spec.taps));
    let (gi, go) = (d.c / groups, cout / groups);
    let od = d.with_c(cout);
    let mut out = Vec::with_capacity(cout * gi * taps);
    for g in 0..groups {
        let xg = gather(x, d, g * gi, gi);
        let zg = gather(dz, od, g * go, go);
        out.extend(dense_w(&xg, d.with_c(gi), &zg, go));
    }
    out
}

/// The dense GEMM kernels `(conv, conv_t, conv_wgrad)` that a group of a `taps` convolution runs.
fn dense(taps: Taps) -> (Dense, Dense, Dense) {
    match taps {
        Taps::K3 => (conv::conv3x3, conv::conv3x3_t, conv::conv3x3_wgrad),
        Taps::K1 => (conv::conv1x1, conv::conv1x1_t, conv::conv1x1_wgrad),
    }
}

/// Source pixel of tap `off` for `(i, j)` on an `h x w` plane, or `None` in the padding.
#[inline]
fn tap(h: usize, w: usize, i: usize, j: usize, off: (isize, isize)) -> Option<usize> {
    let (si, sj) = (i as isize + off.0, j as isize + off.1);
    (si >= 0 && sj >= 0 && si < h as isize && sj < w as isize)
        .then(|| si as usize * w + sj as usize)
}

/// Depthwise 5-point stencil (`adjoint` false) or its adjoint, one plane per task.
pub fn stencil(x: &[f32], d: Dims, dw: &[f32], adjoint: bool) -> Vec<f32> {
    let hw = d.hw();
    let mut y = vec![0.0f32; d.len()];
    y.par_chunks_mut(hw.max(1))
        .zip(x.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(nc, (yp, xp))| {
            let wc = &dw[(nc % d.c) * 5..(nc % d.c) * 5 + 5];
            for i in 0..d.h {
                for j in 0..d.w {
                    let p = i * d.w + j;
                    for (t, &off) in STENCIL.iter().enumerate() {
                        if let Some(s) = tap(d.h, d.w, i, j, off) {
                            if adjoint {
                                yp[s] += wc[t] * xp[p];
                            } else {
                                yp[p] += wc[t] * xp[s];
                            }
                        }
                    }
                }
            }
        });
    y
}

/// `dD[c, t] = sum_{n,p} dz[n, c, p] x[n, c, p + off_t]`, summed in f64 in a fixed order.
pub fn stencil_wgrad(x: &[f32], d: Dims, dz: &[f32]) -> Vec<f32> {
    let hw = d.hw();
    let per_channel: Vec<[f64; 5]> = (0..d.c)
        .into_par_iter()
        .map(|c| {
            let mut acc = [0.0f64; 5];
            for n in 0..d.n {
                let base = (n * d.c + c) * hw;
                let (xp, zp) = (&x[base..base + hw], &dz[base..base + hw]);
                for i in 0..d.h {
                    for j in 0..d.w {
                        let g = zp[i * d.w + j] as f64;
                        for (t, &off) in STENCIL.iter().enumerate() {
                            if let Some(s) = tap(d.h, d.w, i, j, off) {
                                acc[t] += g * xp[s] as f64;
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    per_channel.iter().flatten().map(|&v| v as f32).collect()
}

/// `(I + h a_c L)^{-1} x` per plane `(n, c)`, `a_c = diff_c^2`, `L` the periodic 5-point negative
/// Laplacian: a division by its eigenvalues in Fourier space. Each plane: row FFTs (all rows in
/// one call), a transpose, column FFTs, the division, and back; planes run in parallel, each
/// thread with its own buffers. f32 transforms: relative error ~1e-7 log2(hw).
pub fn diffusion_solve(x: &[f32], d: Dims, diff: &[f32], h: f64) -> Vec<f32> {
    let (hh, ww, hw) = (d.h, d.w, d.hw());
    let mut y = vec![0.0f32; x.len()];
    if hw == 0 || d.c == 0 {
        return y;
    }
    let mut planner = FftPlanner::<f32>::new();
    let (rows_f, cols_f) = (planner.plan_fft_forward(ww), planner.plan_fft_forward(hh));
    let (rows_i, cols_i) = (planner.plan_fft_inverse(ww), planner.plan_fft_inverse(hh));
    let scratch_len = [&rows_f, &cols_f, &rows_i, &cols_i]
        .iter()
        .map(|f| f.get_inplace_scratch_len())
        .max()
        .unwrap_or(0);
    // The eigenvalues in the transposed (column-major) layout of the middle of the solve.
    let eig: Vec<f64> = (0..hw)
        .map(|t| laplace_eigen(t % hh, t / hh, hh, ww))
        .collect();
    let zero = Complex::new(0.0f32, 0.0);
    let buffers = || (vec![zero; hw], vec![zero; hw], vec![zero; scratch_len]);
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each_init(buffers, |(plane, t, scratch), (nc, (out, src))| {
            let a = f64::from(diff[nc % d.c]).powi(2);
            for (p, &v) in plane.iter_mut().zip(src) {
                *p = Complex::new(v, 0.0);
            }
            rows_f.process_with_scratch(plane, scratch);
            transpose(plane, t, hh, ww);
            cols_f.process_with_scratch(t, scratch);
            for (v, e) in t.iter_mut().zip(&eig) {
                *v /= (1.0 + h * a * e) as f32;
            }
            cols_i.process_with_scratch(t, scratch);
            transpose(t, plane, ww, hh);
            rows_i.process_with_scratch(plane, scratch);
            let scale = 1.0 / hw as f32;
            for (o, p) in out.iter_mut().zip(plane.iter()) {
                *o = p.re * scale;
            }
        });
    y
}

/// `dst` (`cols x rows`) = the transpose of `src` (`rows x cols`).
fn transpose(src: &[Complex<f32>], dst: &mut [Complex<f32>], rows: usize, cols: usize) {
    for (i, row) in src.chunks(cols).enumerate().take(rows) {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}

/// `d<g, y>/d diff_c = -2 h diff_c sum_{n, p} (S g)[n, c, p] (L y)[n, c, p]` given `dx = S g`:
/// per-plane sums in f64 in parallel, added per channel in plane order (deterministic).
pub fn diffusion_diff_grad(y: &[f32], dx: &[f32], d: Dims, diff: &[f32], h: f64) -> Vec<f32> {
    let (hh, ww, hw) = (d.h, d.w, d.hw());
    if hw == 0 {
        return vec![0.0; d.c];
    }
    let sums: Vec<f64> = y
        .par_chunks(hw)
        .zip(dx.par_chunks(hw))
        .map(|(u, g)| {
            let mut s = 0.0f64;
            for i in 0..hh {
                let (up, down) = ((i + hh - 1) % hh, (i + 1) % hh);
                for j in 0..ww {
                    let (left, right) = ((j + ww - 1) % ww, (j + 1) % ww);
                    let lap = 4.0 * u[i * ww + j]
                        - u[up * ww + j]
                        - u[down * ww + j]
                        - u[i * ww + left]
                        - u[i * ww + right];
                    s += f64::from(g[i * ww + j]) * f64::from(lap);
                }
            }
            s
        })
        .collect();
    let mut dd = vec![0.0f64; d.c];
    for (nc, s) in sums.iter().enumerate() {
        dd[nc % d.c] += s;
    }
    dd.iter()
        .zip(diff)
        .map(|(s, &k)| (-2.0 * h * f64::from(k) * s) as f32)
        .collect()
}
