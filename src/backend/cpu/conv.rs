//! Convolutions as GEMMs (the `gemm` crate, single-threaded per call; the batch is the
//! parallel dimension).

use std::ops::Range;

use rayon::prelude::*;

use super::par::{map_chunks, sum_partials_f32, with_ws32};
use crate::tensor::Dims;

/// A strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `[rows, cols]`.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of row-major `[rows, cols]` data, as a `[cols, rows]` view.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// Offset of the last element of an `r x c` view, plus one (0 when empty).
fn span(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

/// `dst[m, n] (+)= lhs[m, k] * rhs[k, n]`; `dst` is row-major with row stride `dst_rs`.
/// With `accumulate` the product is added to `dst`, otherwise it overwrites it.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) {
    matmul_scaled(m, n, k, dst, dst_rs, accumulate, 1.0, lhs, rhs)
}

/// As [`matmul`] with the product scaled: `dst (+)= beta * lhs * rhs` (the scale folds a
/// sign or a step size into the GEMM instead of a separate pass).
#[allow(clippy::too_many_arguments)]
pub fn matmul_scaled(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    beta: f32,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The views are checked here so that the unsafe call below stays in bounds.
    assert!(span(m, n, dst_rs, 1) <= dst.len(), "gemm dst out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        span(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "gemm lhs out of bounds"
    );
    assert!(
        span(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "gemm rhs out of bounds"
    );
    // SAFETY: every view was checked against its slice above; `dst` is exclusively borrowed
    // and cannot alias the shared `lhs`/`rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// im2col of image rows `rows` of one sample `x [c, h, w]` into `cols [c * 9, rows.len() * w]`:
/// row `c * 9 + a * 3 + b` holds the input shifted by tap `(a - 1, b - 1)`, zero in the padding.
pub fn im2col(x: &[f32], c: usize, h: usize, w: usize, rows: Range<usize>, cols: &mut [f32]) {
    // The image widths of the reference networks get fixed-size row copies (inlined vector
    // moves, not a `memmove` call per short row).
    match w {
        32 => im2col_w::<32>(x, c, h, rows, cols),
        16 => im2col_w::<16>(x, c, h, rows, cols),
        8 => im2col_w::<8>(x, c, h, rows, cols),
        28 => im2col_w::<28>(x, c, h, rows, cols),
        14 => im2col_w::<14>(x, c, h, rows, cols),
        _ => im2col_any(x, c, h, w, rows, cols),
    }
}

/// One source row into its three horizontal taps (`b = 0, 1, 2`), width `W`.
#[inline(always)]
fn taps_row<const W: usize>(src: &[f32], d0: &mut [f32], d1: &mut [f32], d2: &mut [f32]) {
    let src: &[f32; W] = src[..W].try_into().expect("row of W values");
    let d0: &mut [f32; W] = (&mut d0[..W]).try_into().expect("row of W values");
    let d1: &mut [f32; W] = (&mut d1[..W]).try_into().expect("row of W values");
    let d2: &mut [f32; W] = (&mut d2[..W]).try_into().expect("row of W values");
    *d1 = *src;
    d0[0] = 0.0;
    d0[1..].copy_from_slice(&src[..W - 1]);
    d2[..W - 1].copy_from_slice(&src[1..]);
    d2[W - 1] = 0.0;
}

fn im2col_w<const W: usize>(x: &[f32], c: usize, h: usize, rows: Range<usize>, cols: &mut [f32]) {
    let (hw, tw) = (h * W, rows.len() * W);
    if tw == 0 {
        return;
    }
    for ci in 0..c {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for a in 0..3 {
            let block = &mut cols[(ci * 9 + a * 3) * tw..(ci * 9 + a * 3 + 3) * tw];
            let (r0, rest) = block.split_at_mut(tw);
            let (r1, r2) = rest.split_at_mut(tw);
            for (t, i) in rows.clone().enumerate() {
                let span = t * W..(t + 1) * W;
                let si = i + a;
                if si == 0 || si > h {
                    r0[span.clone()].fill(0.0);
                    r1[span.clone()].fill(0.0);
                    r2[span].fill(0.0);
                    continue;
                }
                let src = &plane[(si - 1) * W..si * W];
                taps_row::<W>(
                    src,
                    &mut r0[span.clone()],
                    &mut r1[span.clone()],
                    &mut r2[span],
                );
            }
        }
    }
}

fn im2col_any(x: &[f32], c: usize, h: usize, w: usize, rows: Range<usize>, cols: &mut [f32]) {
    let (hw, tw) = (h * w, rows.len() * w);
    if tw == 0 {
        return;
    }
    for ci in 0..c {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for a in 0..3 {
            for b in 0..3 {
                let row = &mut cols[(ci * 9 + a * 3 + b) * tw..][..tw];
                for (t, i) in rows.clone().enumerate() {
                    let dst = &mut row[t * w..(t + 1) * w];
                    let si = i + a;
                    if si == 0 || si > h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(si - 1) * w..si * w];
                    match b {
                        0 => {
                            dst[0] = 0.0;
                            dst[1..].copy_from_slice(&src[..w - 1]);
                        }
                        1 => dst.copy_from_slice(src),
                        _ => {
                            dst[..w - 1].copy_from_slice(&src[1..]);
                            dst[w - 1] = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// Values of an im2col tile kept per thread: 1 MiB, so that the tile stays in L2 next to the
/// GEMM's packing buffers even when two threads share a core's cache.
pub(super) const TILE_VALUES: usize = 1 << 18;

/// Splits the `h` image rows into even tiles whose im2col (`kk` rows of `w` values a pixel
/// row) fits [`TILE_VALUES`].
pub(super) fn row_tiles(
    h: usize,
    w: usize,
    kk: usize,
    budget: usize,
) -> impl Iterator<Item = Range<usize>> {
    let max_rows = (budget / (kk * w).max(1)).clamp(1, h.max(1));
    let rows = h.div_ceil(h.div_ceil(max_rows).max(1)).max(1);
    (0..h).step_by(rows).map(move |i| i..(i + rows).min(h))
}

/// Workspace values per thread of an im2col of `d`'s samples (the largest row tile).
pub fn im2col_ws(d: Dims) -> usize {
    let kk = d.c * 9;
    row_tiles(d.h, d.w, kk, TILE_VALUES)
        .map(|r| kk * r.len() * d.w)
        .max()
        .unwrap_or(0)
}

/// `conv(x, K)`: one im2col and one GEMM `K [cout, cin*9] x cols [cin*9, hw]` per sample.
/// Lengths are checked by the caller.
pub fn conv3x3(x: &[f32], d: Dims, k: &[f32], cout: usize) -> Vec<f32> {
    conv3x3_tiled(x, d, k, cout, TILE_VALUES)
}

fn conv3x3_tiled(x: &[f32], d: Dims, k: &[f32], cout: usize, budget: usize) -> Vec<f32> {
    let (hw, kk) = (d.hw(), d.c * 9);
    let mut y = vec![0.0f32; d.n * cout * hw];
    if hw == 0 || cout == 0 || d.c == 0 {
        return y;
    }
    y.par_chunks_mut(cout * hw)
        .zip(x.par_chunks(d.c * hw))
        .for_each(|(ys, xs)| {
            for rows in row_tiles(d.h, d.w, kk, budget) {
                let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                with_ws32(kk * tw, |cols| {
                    im2col(xs, d.c, d.h, d.w, rows, cols);
                    matmul(
                        cout,
                        tw,
                        kk,
                        &mut ys[p0..],
                        hw,
                        false,
                        Mat::rows(k, kk),
                        Mat::rows(cols, tw),
                    );
                })
            }
        });
    y
}

/// `convT(z, K)` is the convolution of `z` with the flipped, channel-transposed kernel
/// `K'[c, o, a, b] = K[o, c, 2 - a, 2 - b]` (padding 1 is its own mirror), so it reuses the
/// im2col path instead of a scattering col2im.
pub fn conv3x3_t(z: &[f32], d: Dims, k: &[f32], cin: usize) -> Vec<f32> {
    conv3x3(z, d, &flip_kernel(k, d.c, cin), cin)
}

/// `K'[c, o, a, b] = K[o, c, 2 - a, 2 - b]` for `K [cout, cin, 3, 3]`: the kernel whose
/// convolution is the adjoint of `K`'s.
pub fn flip_kernel(k: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut kf = vec![0.0f32; k.len()];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..9 {
                kf[(c * cout + o) * 9 + t] = k[(o * cin + c) * 9 + (8 - t)];
            }
        }
    }
    kf
}

/// `dK [cout, cin*9] = sum_n dz_n [cout, hw] x cols_n^T [hw, cin*9]`, one partial per fixed
/// batch range, added in range order.
pub fn conv3x3_wgrad(x: &[f32], d: Dims, dz: &[f32], cout: usize) -> Vec<f32> {
    conv3x3_wgrad_tiled(x, d, dz, cout, TILE_VALUES)
}

fn conv3x3_wgrad_tiled(x: &[f32], d: Dims, dz: &[f32], cout: usize, budget: usize) -> Vec<f32> {
    let (hw, kk) = (d.hw(), d.c * 9);
    let len = cout * kk;
    if hw == 0 || len == 0 {
        return vec![0.0; len];
    }
    let parts = map_chunks(d.n, |r| {
        let mut part = vec![0.0f32; len];
        for (i, s) in r.enumerate() {
            let xs = &x[s * d.c * hw..(s + 1) * d.c * hw];
            let dzs = &dz[s * cout * hw..(s + 1) * cout * hw];
            for (t, rows) in row_tiles(d.h, d.w, kk, budget).enumerate() {
                let (p0, tw) = (rows.start * d.w, rows.len() * d.w);
                with_ws32(kk * tw, |cols| {
                    im2col(xs, d.c, d.h, d.w, rows, cols);
                    matmul(
                        cout,
                        kk,
                        tw,
                        &mut part,
                        kk,
                        i + t > 0,
                        Mat::rows(&dzs[p0..], hw),
                        Mat::rows_t(cols, tw),
                    );
                });
            }
        }
        part
    });
    sum_partials_f32(&parts, len)
}

/// 1x1 convolution `K [cout, cin]`. Dense features (`hw == 1`) are one GEMM over the batch,
/// `y [n, cout] = x [n, cin] K^T`; images one GEMM per sample.
pub fn conv1x1(x: &[f32], d: Dims, k: &[f32], cout: usize) -> Vec<f32> {
    let (hw, cin) = (d.hw(), d.c);
    let mut y = vec![0.0f32; d.n * cout * hw];
    if hw == 1 {
        matmul(
            d.n,
            cout,
            cin,
            &mut y,
            cout,
            false,
            Mat::rows(x, cin),
            Mat::rows_t(k, cin),
        );
    } else if hw > 0 && cout > 0 && cin > 0 {
        y.par_chunks_mut(cout * hw)
            .zip(x.par_chunks(cin * hw))
            .for_each(|(ys, xs)| {
                matmul(
                    cout,
                    hw,
                    cin,
                    ys,
                    hw,
                    false,
                    Mat::rows(k, cin),
                    Mat::rows(xs, hw),
                )
            });
    }
    y
}

/// Adjoint of [`conv1x1`]: `x [n, cin] = z [n, cout] K`, or `K^T z_n` per sample.
pub fn conv1x1_t(z: &[f32], d: Dims, k: &[f32], cin: usize) -> Vec<f32> {
    let (hw, cout) = (d.hw(), d.c);
    let mut x = vec![0.0f32; d.n * cin * hw];
    if hw == 1 {
        matmul(
            d.n,
            cin,
            cout,
            &mut x,
            cin,
            false,
            Mat::rows(z, cout),
            Mat::rows(k, cin),
        );
    } else if hw > 0 && cout > 0 && cin > 0 {
        x.par_chunks_mut(cin * hw)
            .zip(z.par_chunks(cout * hw))
            .for_each(|(xs, zs)| {
                matmul(
                    cin,
                    hw,
                    cout,
                    xs,
                    hw,
                    false,
                    Mat::rows_t(k, cin),
                    Mat::rows(zs, hw),
                )
            });
    }
    x
}

/// `dK [cout, cin] = sum_n dz_n x_n^T`; for dense features one GEMM `dz^T x` over the batch.
pub fn conv1x1_wgrad(x: &[f32], d: Dims, dz: &[f32], cout: usize) -> Vec<f32> {
    let (hw, cin) = (d.hw(), d.c);
    let len = cout * cin;
    if hw == 1 {
        let mut dk = vec![0.0f32; len];
        matmul(
            cout,
            cin,
            d.n,
            &mut dk,
            cin,
            false,
            Mat::rows_t(dz, cout),
            Mat::rows(x, cin),
        );
        return dk;
    }
    if hw == 0 || len == 0 {
        return vec![0.0; len];
    }
    let parts = map_chunks(d.n, |r| {
        let mut part = vec![0.0f32; len];
        for (i, s) in r.enumerate() {
            matmul(
                cout,
                cin,
                hw,
                &mut part,
                cin,
                i > 0,
                Mat::rows(&dz[s * cout * hw..(s + 1) * cout * hw], hw),
                Mat::rows_t(&x[s * cin * hw..(s + 1) * cin * hw], hw),
            );
        }
        part
    });
    sum_partials_f32(&parts, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8.4e6 - 1.0
            })
            .collect()
    }

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n).sqrt()
    }

    /// The fixed-width im2cols equal the generic one.
    #[test]
    fn im2col_widths_match_generic() {
        for (c, h, w) in [(2, 5, 32), (3, 4, 16), (1, 9, 8), (2, 3, 28), (2, 6, 14)] {
            let x = data(c * h * w, 4);
            for rows in [0..h, 1..h.min(3), h - 1..h] {
                let len = c * 9 * rows.len() * w;
                let (mut a, mut b) = (vec![1.0f32; len], vec![2.0f32; len]);
                im2col(&x, c, h, w, rows.clone(), &mut a);
                im2col_any(&x, c, h, w, rows, &mut b);
                assert_eq!(a, b, "c {c} h {h} w {w}");
            }
        }
    }

    /// Row tiles (one, two, or several rows each) give the untiled result.
    #[test]
    fn tiling_matches_whole_image() {
        let (d, cout) = (Dims::new(3, 2, 9, 5), 3);
        let kk = d.c * 9;
        let (x, k, dz) = (
            data(d.len(), 1),
            data(cout * kk, 2),
            data(d.with_c(cout).len(), 3),
        );
        let y = conv3x3_tiled(&x, d, &k, cout, usize::MAX);
        let dk = conv3x3_wgrad_tiled(&x, d, &dz, cout, usize::MAX);
        for rows in [1, 2, 4] {
            let budget = rows * kk * d.w;
            assert!(rel(&conv3x3_tiled(&x, d, &k, cout, budget), &y) < 1e-6);
            assert!(rel(&conv3x3_wgrad_tiled(&x, d, &dz, cout, budget), &dk) < 1e-6);
        }
    }
}
