//! The fused symmetric step and its VJP for the full 3x3 operator.
//!
//! The composed versions (`operators::sym_step` / `sym_vjp`) make a full pass with a fresh
//! buffer for every op (conv, tvNorm, activation, their VJPs, the linear combination). Here
//! each sample is processed by row tiles whose im2col, GEMM outputs and pointwise work stay in
//! cache, in per-thread workspaces reused across calls: only the outputs are allocated.
//! Samples are independent and the weight-gradient partials are summed over the fixed batch
//! ranges of [`par::map_chunks`], so results do not depend on the thread count.

use rayon::prelude::*;

use super::conv::{flip_kernel, im2col, matmul_scaled, row_tiles, Mat, TILE_VALUES};
use super::direct::{self, Isa, Shifted};
use super::par::{self, with_ws32, with_ws64};

/// The update of [`step`] that [`step_vjp`] computes beside the VJP: `(terms, coef)`.
type StepTerms<'a> = (&'a [(f32, &'a [f32])], f32);
use crate::backend::{Activation, TV_EPS};
use crate::tensor::Dims;

/// A pointwise nonlinearity as a type, so that the inner loops are monomorphised (no match
/// per element).
trait Act {
    fn f(x: f32) -> f32;
    fn df(x: f32) -> f32;
}

struct Relu;
struct Tanh;
struct Logcosh;

impl Act for Relu {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        // NaN stays NaN (PyTorch's relu); `max` would map it to 0.
        if x < 0.0 {
            0.0
        } else {
            x
        }
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        if x > 0.0 {
            1.0
        } else {
            0.0
        }
    }
}
impl Act for Tanh {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x.tanh()
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        let t = x.tanh();
        1.0 - t * t
    }
}
impl Act for Logcosh {
    #[inline(always)]
    fn f(x: f32) -> f32 {
        x.abs() + (-2.0 * x.abs()).exp().ln_1p()
    }
    #[inline(always)]
    fn df(x: f32) -> f32 {
        x.tanh()
    }
}

/// The normalisation's parameters as slices (`s` absent for the shift alone).
#[derive(Clone, Copy)]
pub struct NormP<'a> {
    pub s: Option<&'a [f32]>,
    pub b: &'a [f32],
}

/// Values of one tile row (a pixel row) in the forward step: im2col rows and the GEMM output.
fn step_row_values(d: Dims) -> usize {
    d.c * 9 + d.c
}

/// Values of one tile row in the VJP: two im2cols (`y`, `g`) and three `[c, tw]` buffers.
fn vjp_row_values(d: Dims) -> usize {
    2 * d.c * 9 + 3 * d.c
}

/// Largest tile width (pixels) of `row_values` per pixel.
fn max_tile(d: Dims, row_values: usize) -> usize {
    row_tiles(d.h, d.w, row_values, TILE_VALUES)
        .map(|r| r.len() * d.w)
        .max()
        .unwrap_or(0)
}

/// f32 workspace values per thread of [`step`] for states of shape `d` (one sample's `s`, the
/// tiles, one f32 row of norms).
pub fn step_ws32(isa: Isa, d: Dims) -> usize {
    if isa != Isa::Gemm {
        let tw = max_tile(d, DIRECT_ROW_VALUES * d.c);
        return d.c * d.hw() + direct::shifted_ws(isa, d) + d.c * tw + tw;
    }
    let tw = max_tile(d, step_row_values(d));
    let tt = max_tile(d, d.c * 9);
    d.c * d.hw() + (step_row_values(d) * tw).max(d.c * 9 * tt) + tw
}

/// f64 workspace values per thread of [`step`] (squared norms of a tile).
pub fn step_ws64(isa: Isa, d: Dims) -> usize {
    if isa != Isa::Gemm {
        return max_tile(d, DIRECT_ROW_VALUES * d.c);
    }
    max_tile(d, step_row_values(d))
}

/// f32 workspace values per thread of [`sym_vjp`].
pub fn vjp_ws32(isa: Isa, d: Dims) -> usize {
    if isa != Isa::Gemm {
        let tw = max_tile(d, DIRECT_ROW_VALUES * d.c);
        let planes = 2 * direct::shifted_ws(isa, d) - direct::ALIGN_PAD;
        // bf16: the weight gradient's bf16 planes of y and g beside the paired ones, and the
        // tile's `s` and `dz` in bf16 (2 c tw values, c tw slots).
        let wgrad_planes = if isa == Isa::Avx512Bf16 {
            2 * Shifted::for_wgrad(isa, d.c, d.h, d.w).len() + direct::ALIGN_PAD + d.c * tw
        } else {
            0
        };
        return d.c * d.hw() + planes + wgrad_planes + 3 * d.c * tw + tw;
    }
    let tw = max_tile(d, vjp_row_values(d));
    let tt = max_tile(d, d.c * 9);
    d.c * d.hw() + (vjp_row_values(d) * tw).max(d.c * 9 * tt) + tw
}

/// f32 workspace values per thread of [`step_vjp`]: [`sym_vjp`]'s and one sample's
/// `s = sigma(N(K y))` for the update (the GEMM path runs the two ops one after the other).
pub fn step_vjp_ws32(isa: Isa, d: Dims) -> usize {
    match isa {
        Isa::Gemm => vjp_ws32(isa, d).max(step_ws32(isa, d)),
        _ => vjp_ws32(isa, d) + d.c * d.hw(),
    }
}

/// f64 workspace values per thread of [`step_vjp`].
pub fn step_vjp_ws64(isa: Isa, d: Dims) -> usize {
    match isa {
        Isa::Gemm => vjp_ws64(isa, d).max(step_ws64(isa, d)),
        _ => vjp_ws64(isa, d),
    }
}

/// f64 workspace values per thread of [`sym_vjp`] (1/r and the dot product of a tile).
pub fn vjp_ws64(isa: Isa, d: Dims) -> usize {
    if isa != Isa::Gemm {
        return 2 * max_tile(d, DIRECT_ROW_VALUES * d.c);
    }
    2 * max_tile(d, vjp_row_values(d))
}

/// Values per pixel and channel of the direct paths' tiles (`z`, `K g`, `s`): the shifted
/// planes are whole-sample, the tiles only hold the pointwise stage.
const DIRECT_ROW_VALUES: usize = 3;

/// Transient bytes of the weight copies of [`step`] and [`sym_vjp`]: the flipped kernel on the
/// GEMM path, the packed `K` and adjoint on the direct ones.
pub fn weight_bytes(isa: Isa, c: usize) -> usize {
    match isa {
        Isa::Gemm => 4 * c * c * 9,
        isa => 4 * 2 * direct::packed_len(isa, c, c),
    }
}

/// Per tile: `out[ch, p] = sigma(N(z)[ch, p])` with `z [c, tw]` contiguous and `out` of row
/// stride `out_rs`. `r32` (tw) and `r64` (tw) are scratch.
#[allow(clippy::too_many_arguments)]
fn norm_act_tile<A: Act>(
    z: &[f32],
    c: usize,
    tw: usize,
    norm: NormP<'_>,
    r64: &mut [f64],
    r32: &mut [f32],
    out: &mut [f32],
    out_rs: usize,
) {
    match norm.s {
        Some(s) => {
            r64.fill(0.0);
            for zc in z.chunks_exact(tw).take(c) {
                for (r, &v) in r64.iter_mut().zip(zc) {
                    *r += v as f64 * v as f64;
                }
            }
            for (o, &r) in r32.iter_mut().zip(r64.iter()) {
                *o = (1.0 / (r + TV_EPS).sqrt()) as f32;
            }
            for ch in 0..c {
                let (sc, bc) = (s[ch], norm.b[ch]);
                let zc = &z[ch * tw..(ch + 1) * tw];
                let oc = &mut out[ch * out_rs..ch * out_rs + tw];
                for ((o, &v), &r) in oc.iter_mut().zip(zc).zip(r32.iter()) {
                    *o = A::f(sc * (v * r) + bc);
                }
            }
        }
        None => {
            for ch in 0..c {
                let bc = norm.b[ch];
                let zc = &z[ch * tw..(ch + 1) * tw];
                let oc = &mut out[ch * out_rs..ch * out_rs + tw];
                for (o, &v) in oc.iter_mut().zip(zc) {
                    *o = A::f(v + bc);
                }
            }
        }
    }
}

/// `sum_i a_i x_i - coef K^T sigma(N(K y))` (the backend's `step_full3x3`); lengths checked
/// by the caller.
#[allow(clippy::too_many_arguments)]
pub fn step(
    isa: Isa,
    terms: &[(f32, &[f32])],
    coef: f32,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
    act: Activation,
) -> Vec<f32> {
    match act {
        Activation::Relu => step_a::<Relu>(isa, terms, coef, y, d, k, norm),
        Activation::Tanh => step_a::<Tanh>(isa, terms, coef, y, d, k, norm),
        Activation::Logcosh => step_a::<Logcosh>(isa, terms, coef, y, d, k, norm),
    }
}

fn step_a<A: Act>(
    isa: Isa,
    terms: &[(f32, &[f32])],
    coef: f32,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
) -> Vec<f32> {
    let (c, hw, kk) = (d.c, d.hw(), d.c * 9);
    let sl = c * hw;
    let mut out = vec![0.0f32; d.len()];
    if sl == 0 {
        return out;
    }
    if isa != Isa::Gemm {
        step_direct::<A>(isa, terms, coef, y, d, k, norm, &mut out);
        return out;
    }
    let kf = flip_kernel(k, c, c);
    let (ws32, ws64) = (step_ws32(isa, d), step_ws64(isa, d));
    out.par_chunks_mut(sl).enumerate().for_each(|(n, on)| {
        let yn = &y[n * sl..(n + 1) * sl];
        with_ws32(ws32, |ws| {
            with_ws64(ws64, |r64| {
                let (s_full, rest) = ws.split_at_mut(sl);
                // s = sigma(N(K y)), tile by tile.
                for rows in row_tiles(d.h, d.w, step_row_values(d), TILE_VALUES) {
                    let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                    let (cols, rest) = rest.split_at_mut(kk * tw);
                    let (z, rest) = rest.split_at_mut(c * tw);
                    im2col(yn, c, d.h, d.w, rows, cols);
                    matmul_scaled(
                        c,
                        tw,
                        kk,
                        z,
                        tw,
                        false,
                        1.0,
                        Mat::rows(k, kk),
                        Mat::rows(cols, tw),
                    );
                    let r32 = &mut rest[..tw];
                    norm_act_tile::<A>(z, c, tw, norm, &mut r64[..tw], r32, &mut s_full[p0..], hw);
                }
                // out = sum_i a_i x_i, then out -= coef K^T s in the GEMM.
                lincomb_sample(terms, n, sl, on);
                kt_tiles(&kf, s_full, c, d, rest, on, true, -coef);
            })
        })
    });
    out
}

/// `out = sum_i a_i x_i` over sample `n` (`sl` values a sample).
fn lincomb_sample(terms: &[(f32, &[f32])], n: usize, sl: usize, on: &mut [f32]) {
    match terms.split_first() {
        Some(((a0, x0), more)) => {
            let x0 = &x0[n * sl..(n + 1) * sl];
            on.iter_mut().zip(x0).for_each(|(o, &v)| *o = a0 * v);
            for (a, x) in more {
                let x = &x[n * sl..(n + 1) * sl];
                on.iter_mut().zip(x).for_each(|(o, &v)| *o += a * v);
            }
        }
        None => on.fill(0.0),
    }
}

/// [`step`] on the direct kernels: per sample, `y`'s shifted planes once, `K y` and the
/// pointwise stage by row tiles into `s`, then `out = sum_i a_i x_i - coef K^T s` with the
/// adjoint accumulated straight into `out` (no im2col, no GEMM output buffer).
#[allow(clippy::too_many_arguments)]
fn step_direct<A: Act>(
    isa: Isa,
    terms: &[(f32, &[f32])],
    coef: f32,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
    out: &mut [f32],
) {
    let (c, hw) = (d.c, d.hw());
    let sl = c * hw;
    let g = Shifted::for_forward(isa, c, d.h, d.w);
    let (wp, wpt) = (
        direct::pack_weights(isa, k, c, c),
        direct::pack_weights_t(isa, k, c, c),
    );
    let (ws32, ws64) = (step_ws32(isa, d), step_ws64(isa, d));
    out.par_chunks_mut(sl).enumerate().for_each(|(n, on)| {
        let yn = &y[n * sl..(n + 1) * sl];
        with_ws32(ws32, |ws| {
            with_ws64(ws64, |r64| {
                let (xs, rest) = g.carve(ws, 1);
                let (s_full, rest) = rest.split_at_mut(sl);
                g.fill(yn, xs);
                for rows in row_tiles(d.h, d.w, DIRECT_ROW_VALUES * c, TILE_VALUES) {
                    let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                    let (z, rest) = rest.split_at_mut(c * tw);
                    direct::forward(isa, &g, xs, &wp, c, p0..p0 + tw, z, tw, 1.0, false);
                    let r32 = &mut rest[..tw];
                    norm_act_tile::<A>(z, c, tw, norm, &mut r64[..tw], r32, &mut s_full[p0..], hw);
                }
                lincomb_sample(terms, n, sl, on);
                g.fill(s_full, xs);
                direct::forward(isa, &g, xs, &wpt, c, 0..hw, on, hw, -coef, true);
            })
        })
    });
}

/// [`sym_vjp`] on the direct kernels: per sample, the shifted planes of `y` and `g` once; per
/// row tile `K y`, `K g`, the pointwise VJP and both weight-gradient terms against the planes;
/// then `dy = -K^T dz`. With `step`, also [`step`]'s `sum_i a_i x_i - coef K^T s` from the
/// tiles' `s` (returned second; empty without `step`): bit for bit what [`step_direct`] gives,
/// without its second `K y` and pointwise pass.
fn vjp_direct<A: Act>(
    isa: Isa,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
    g: &[f32],
    step: Option<StepTerms<'_>>,
) -> (VjpOut, Vec<f32>) {
    let (c, hw, kk) = (d.c, d.hw(), d.c * 9);
    let sl = c * hw;
    let tv = norm.s.is_some();
    let mut dy = vec![0.0f32; d.len()];
    let mut out = vec![0.0f32; if step.is_some() { d.len() } else { 0 }];
    let s_len = if step.is_some() { sl } else { 0 };
    let geo = Shifted::for_forward(isa, c, d.h, d.w);
    // Under bf16 the weight gradient reads planes of plain bf16 rows beside the paired ones.
    let geo_w = Shifted::for_wgrad(isa, c, d.h, d.w);
    let bf16 = isa == Isa::Avx512Bf16;
    // Under bf16: a tile's `s` and `dz` as bf16 (2 c tw values in c tw f32 slots).
    let tiles16_len = if bf16 {
        c * max_tile(d, DIRECT_ROW_VALUES * c)
    } else {
        0
    };
    let (wp, wpt) = (
        direct::pack_weights(isa, k, c, c),
        direct::pack_weights_t(isa, k, c, c),
    );
    let ws32 = match step {
        Some(_) => step_vjp_ws32(isa, d),
        None => vjp_ws32(isa, d),
    };
    let ws64 = vjp_ws64(isa, d);
    let parts = par::map_chunks_mut2(d.n, &mut dy, &mut out, sl, |r, dys, outs| {
        let mut dk = vec![0.0f32; c * kk];
        let mut acc = vec![0.0f64; 2 * c];
        for (i, n) in r.enumerate() {
            let (yn, gn) = (&y[n * sl..(n + 1) * sl], &g[n * sl..(n + 1) * sl]);
            let dyn_ = &mut dys[i * sl..(i + 1) * sl];
            with_ws32(ws32, |ws| {
                with_ws64(ws64, |w64| {
                    // Both planes from one aligned start (each a multiple of 16 values).
                    let (planes, rest) = geo.carve(ws, 2);
                    let (xs_y, xs_g) = planes.split_at_mut(geo.len());
                    let (wplanes, rest) = if bf16 {
                        geo_w.carve(rest, 2)
                    } else {
                        (&mut [][..], rest)
                    };
                    let (tiles16, rest) = rest.split_at_mut(tiles16_len);
                    let (dz_full, rest) = rest.split_at_mut(sl);
                    let (s_full, rest) = rest.split_at_mut(s_len);
                    geo.fill(yn, xs_y);
                    geo.fill(gn, xs_g);
                    let (wg, wy): (&[f32], &[f32]) = if bf16 {
                        let (wy, wg) = wplanes.split_at_mut(geo_w.len());
                        geo_w.fill(yn, wy);
                        geo_w.fill(gn, wg);
                        (wg, wy)
                    } else {
                        (xs_g, xs_y)
                    };
                    for rows in row_tiles(d.h, d.w, DIRECT_ROW_VALUES * c, TILE_VALUES) {
                        let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                        let px = p0..p0 + tw;
                        let (z, rest) = rest.split_at_mut(c * tw);
                        let (kg, rest) = rest.split_at_mut(c * tw);
                        let (s_t, rest) = rest.split_at_mut(c * tw);
                        direct::forward(isa, &geo, xs_y, &wp, c, px.clone(), z, tw, 1.0, false);
                        direct::forward(isa, &geo, xs_g, &wp, c, px.clone(), kg, tw, 1.0, false);
                        vjp_tile::<A>(
                            z,
                            kg,
                            s_t,
                            &mut dz_full[p0..],
                            hw,
                            c,
                            tw,
                            norm,
                            &mut rest[..tw],
                            &mut w64[..2 * tw],
                            &mut acc,
                        );
                        if s_len > 0 {
                            for ch in 0..c {
                                let row = &mut s_full[ch * hw + p0..ch * hw + p0 + tw];
                                row.copy_from_slice(&s_t[ch * tw..(ch + 1) * tw]);
                            }
                        }
                        // dK = -(s g^T + dz y^T) against the planes still in cache.
                        if bf16 {
                            let t16: &mut [u16] = bytemuck::cast_slice_mut(tiles16);
                            let (s16, dz16) = t16[..2 * c * tw].split_at_mut(c * tw);
                            direct::to_bf16(s_t, s16);
                            for ch in 0..c {
                                let row = &dz_full[ch * hw + p0..ch * hw + p0 + tw];
                                direct::to_bf16(row, &mut dz16[ch * tw..(ch + 1) * tw]);
                            }
                            let (st, px2) = (c * tw, px.clone());
                            direct::wgrad_bf16(&geo_w, wg, 1, s16, tw, st, c, px2, &mut dk, -1.0);
                            direct::wgrad_bf16(&geo_w, wy, 1, dz16, tw, st, c, px, &mut dk, -1.0);
                        } else {
                            direct::wgrad(
                                isa,
                                &geo_w,
                                wg,
                                1,
                                s_t,
                                tw,
                                sl,
                                c,
                                px.clone(),
                                &mut dk,
                                -1.0,
                            );
                            direct::wgrad(
                                isa,
                                &geo_w,
                                wy,
                                1,
                                &dz_full[p0..],
                                hw,
                                sl,
                                c,
                                px,
                                &mut dk,
                                -1.0,
                            );
                        }
                    }
                    // dy = -K^T dz.
                    geo.fill(dz_full, xs_y);
                    direct::forward(isa, &geo, xs_y, &wpt, c, 0..hw, dyn_, hw, -1.0, false);
                    // The update, as `step_direct` ends: `g`'s plane is free now.
                    if let Some((terms, coef)) = step {
                        let on = &mut outs[i * sl..(i + 1) * sl];
                        lincomb_sample(terms, n, sl, on);
                        geo.fill(s_full, xs_g);
                        direct::forward(isa, &geo, xs_g, &wpt, c, 0..hw, on, hw, -coef, true);
                    }
                })
            });
        }
        (dk, acc)
    });
    let mut dk = vec![0.0f32; c * kk];
    let mut acc = vec![0.0f64; 2 * c];
    for (pk, pa) in &parts {
        dk.iter_mut().zip(pk).for_each(|(o, v)| *o += v);
        acc.iter_mut().zip(pa).for_each(|(o, v)| *o += v);
    }
    let neg = |v: &[f64]| v.iter().map(|&x| -x as f32).collect::<Vec<f32>>();
    ((dy, dk, tv.then(|| neg(&acc[..c])), neg(&acc[c..])), out)
}

/// `out (+)= beta K^T src` for one sample, row tile by row tile: `kf` is the flipped kernel laid
/// out as a forward 3x3 convolution (`[c, 9c]`), `cols` a workspace of at least `9c` times one
/// tile's pixels. `accumulate` adds to `out` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
fn kt_tiles(
    kf: &[f32],
    src: &[f32],
    c: usize,
    d: Dims,
    cols: &mut [f32],
    out: &mut [f32],
    accumulate: bool,
    beta: f32,
) {
    let kk = 9 * c;
    for rows in row_tiles(d.h, d.w, kk, TILE_VALUES) {
        let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
        let cols = &mut cols[..kk * tw];
        im2col(src, c, d.h, d.w, rows, cols);
        matmul_scaled(
            c,
            tw,
            kk,
            &mut out[p0..],
            d.hw(),
            accumulate,
            beta,
            Mat::rows(kf, kk),
            Mat::rows(cols, tw),
        );
    }
}

/// Gradients of the fused VJP: `(dy, dk, dscale, dshift)`.
pub type VjpOut = (Vec<f32>, Vec<f32>, Option<Vec<f32>>, Vec<f32>);

/// `J_f(y)^T g` and the parameter gradients of `f(y) = -K^T sigma(N(K y))` (the backend's
/// `sym_full3x3_vjp`); lengths checked by the caller.
pub fn sym_vjp(
    isa: Isa,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
    act: Activation,
    g: &[f32],
) -> VjpOut {
    match act {
        Activation::Relu => vjp_a::<Relu>(isa, y, d, k, norm, g),
        Activation::Tanh => vjp_a::<Tanh>(isa, y, d, k, norm, g),
        Activation::Logcosh => vjp_a::<Logcosh>(isa, y, d, k, norm, g),
    }
}

/// [`sym_vjp`] and [`step`] at the same `y` (the backend's `step_full3x3_vjp`): `(step, vjp)`.
/// The direct paths compute `K y`, its norms and `sigma` once for both, each result bit for bit
/// that of its op alone; the GEMM path runs the two ops. Lengths checked by the caller.
#[allow(clippy::too_many_arguments)]
pub fn step_vjp(
    isa: Isa,
    terms: &[(f32, &[f32])],
    coef: f32,
    y: &[f32],
    d: Dims,
    k: &[f32],
    norm: NormP<'_>,
    act: Activation,
    g: &[f32],
) -> (Vec<f32>, VjpOut) {
    if isa == Isa::Gemm || d.is_empty() {
        let v = sym_vjp(isa, y, d, k, norm, act, g);
        return (step(isa, terms, coef, y, d, k, norm, act), v);
    }
    let st = Some((terms, coef));
    let (v, out) = match act {
        Activation::Relu => vjp_direct::<Relu>(isa, y, d, k, norm, g, st),
        Activation::Tanh => vjp_direct::<Tanh>(isa, y, d, k, norm, g, st),
        Activation::Logcosh => vjp_direct::<Logcosh>(isa, y, d, k, norm, g, st),
    };
    (out, v)
}

/// Per tile of the VJP: from `z = K y` and `kg = K g` (`[c, tw]`), writes `s = sigma(N(z))`
/// into `s_t` and `dz = N'(z)^T (sigma'(a) * kg)` into `dz` (row stride `dz_rs`), and adds
/// the tile's `sum da z / r` and `sum da` per channel into `acc` (`[2c]`). `kg` is
/// overwritten. These are the negated gradients (`f = -K^T s`): the caller flips the sign.
#[allow(clippy::too_many_arguments)]
fn vjp_tile<A: Act>(
    z: &[f32],
    kg: &mut [f32],
    s_t: &mut [f32],
    dz: &mut [f32],
    dz_rs: usize,
    c: usize,
    tw: usize,
    norm: NormP<'_>,
    r32: &mut [f32],
    ws64: &mut [f64],
    acc: &mut [f64],
) {
    let Some(s) = norm.s else {
        for ch in 0..c {
            let bc = norm.b[ch];
            let range = ch * tw..(ch + 1) * tw;
            let (zc, gc) = (&z[range.clone()], &kg[range.clone()]);
            let dzc = &mut dz[ch * dz_rs..ch * dz_rs + tw];
            let mut db = 0.0f64;
            for (((o, st), &v), &gv) in dzc.iter_mut().zip(&mut s_t[range]).zip(zc).zip(gc) {
                let a = v + bc;
                *st = A::f(a);
                let da = A::df(a) * gv;
                *o = da;
                db += da as f64;
            }
            acc[c + ch] += db;
        }
        return;
    };
    let (rinv, dot) = ws64.split_at_mut(tw);
    rinv.fill(0.0);
    for zc in z.chunks_exact(tw).take(c) {
        for (r, &v) in rinv.iter_mut().zip(zc) {
            *r += v as f64 * v as f64;
        }
    }
    for (r, o) in rinv.iter_mut().zip(r32.iter_mut()) {
        *r = 1.0 / (*r + TV_EPS).sqrt();
        *o = *r as f32;
    }
    dot.fill(0.0);
    // a = s z / r + b, s = sigma(a), da = sigma'(a) kg (kept in kg), dot = sum_c s_c da z.
    for ch in 0..c {
        let (sc, bc) = (s[ch], norm.b[ch]);
        let range = ch * tw..(ch + 1) * tw;
        let zc = &z[range.clone()];
        let (mut ds, mut db) = (0.0f64, 0.0f64);
        for ((((st, gv), &v), &r), dt) in s_t[range.clone()]
            .iter_mut()
            .zip(&mut kg[range])
            .zip(zc)
            .zip(r32.iter())
            .zip(dot.iter_mut())
        {
            let zr = v * r;
            let a = sc * zr + bc;
            *st = A::f(a);
            let da = A::df(a) * *gv;
            *gv = da;
            // In f64 from the f32 factors: dz below cancels against this (one channel).
            *dt += sc as f64 * da as f64 * v as f64;
            ds += da as f64 * zr as f64;
            db += da as f64;
        }
        acc[ch] += ds;
        acc[c + ch] += db;
    }
    // dz = s_c da / r - z dot / r^3, per pixel in f64 (it cancels with one channel).
    for (dt, &r) in dot.iter_mut().zip(rinv.iter()) {
        *dt *= r * r * r;
    }
    for ch in 0..c {
        let sc = s[ch] as f64;
        let range = ch * tw..(ch + 1) * tw;
        let (zc, dac) = (&z[range.clone()], &kg[range]);
        let dzc = &mut dz[ch * dz_rs..ch * dz_rs + tw];
        for ((((o, &v), &da), &r), &q) in dzc
            .iter_mut()
            .zip(zc)
            .zip(dac)
            .zip(rinv.iter())
            .zip(dot.iter())
        {
            *o = (sc * da as f64 * r - v as f64 * q) as f32;
        }
    }
}

fn vjp_a<A: Act>(isa: Isa, y: &[f32], d: Dims, k: &[f32], norm: NormP<'_>, g: &[f32]) -> VjpOut {
    let (c, hw, kk) = (d.c, d.hw(), d.c * 9);
    let sl = c * hw;
    let mut dy = vec![0.0f32; d.len()];
    let tv = norm.s.is_some();
    if sl == 0 {
        let z = vec![0.0f32; c];
        return (dy, vec![0.0; c * kk], tv.then(|| z.clone()), z);
    }
    if isa != Isa::Gemm {
        return vjp_direct::<A>(isa, y, d, k, norm, g, None).0;
    }
    let kf = flip_kernel(k, c, c);
    let (ws32, ws64) = (vjp_ws32(isa, d), vjp_ws64(isa, d));
    // Per batch range: the partial of dK and of (dscale, dshift).
    let parts = par::map_chunks_mut(d.n, &mut dy, sl, |r, dys| {
        let mut dk = vec![0.0f32; c * kk];
        let mut acc = vec![0.0f64; 2 * c];
        let mut first = true;
        for (i, n) in r.enumerate() {
            let (yn, gn) = (&y[n * sl..(n + 1) * sl], &g[n * sl..(n + 1) * sl]);
            let dyn_ = &mut dys[i * sl..(i + 1) * sl];
            with_ws32(ws32, |ws| {
                with_ws64(ws64, |w64| {
                    let (dz_full, rest) = ws.split_at_mut(sl);
                    for rows in row_tiles(d.h, d.w, vjp_row_values(d), TILE_VALUES) {
                        let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                        let (cols_y, rest) = rest.split_at_mut(kk * tw);
                        let (cols_g, rest) = rest.split_at_mut(kk * tw);
                        let (z, rest) = rest.split_at_mut(c * tw);
                        let (kg, rest) = rest.split_at_mut(c * tw);
                        let (s_t, rest) = rest.split_at_mut(c * tw);
                        im2col(yn, c, d.h, d.w, rows.clone(), cols_y);
                        im2col(gn, c, d.h, d.w, rows, cols_g);
                        let kmat = Mat::rows(k, kk);
                        matmul_scaled(c, tw, kk, z, tw, false, 1.0, kmat, Mat::rows(cols_y, tw));
                        matmul_scaled(c, tw, kk, kg, tw, false, 1.0, kmat, Mat::rows(cols_g, tw));
                        vjp_tile::<A>(
                            z,
                            kg,
                            s_t,
                            &mut dz_full[p0..],
                            hw,
                            c,
                            tw,
                            norm,
                            &mut rest[..tw],
                            &mut w64[..2 * tw],
                            &mut acc,
                        );
                        // dK = -(s g^T + dz y^T), both against the im2cols still in cache.
                        matmul_scaled(
                            c,
                            kk,
                            tw,
                            &mut dk,
                            kk,
                            !first,
                            -1.0,
                            Mat::rows(s_t, tw),
                            Mat::rows_t(cols_g, tw),
                        );
                        matmul_scaled(
                            c,
                            kk,
                            tw,
                            &mut dk,
                            kk,
                            true,
                            -1.0,
                            Mat {
                                data: &dz_full[p0..],
                                rs: hw,
                                cs: 1,
                            },
                            Mat::rows_t(cols_y, tw),
                        );
                        first = false;
                    }
                    // dy = -K^T dz.
                    kt_tiles(&kf, dz_full, c, d, rest, dyn_, false, -1.0);
                })
            });
        }
        (dk, acc)
    });
    let mut dk = vec![0.0f32; c * kk];
    let mut acc = vec![0.0f64; 2 * c];
    for (pk, pa) in &parts {
        dk.iter_mut().zip(pk).for_each(|(o, v)| *o += v);
        acc.iter_mut().zip(pa).for_each(|(o, v)| *o += v);
    }
    let neg = |v: &[f64]| v.iter().map(|&x| -x as f32).collect::<Vec<f32>>();
    (dy, dk, tv.then(|| neg(&acc[..c])), neg(&acc[c..]))
}
