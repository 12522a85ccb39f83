//! Host formulas (f64 slices) of the operators of SPEC section 7: the depthwise 5-point stencil,
//! grouped convolutions, the periodic diffusion solve and the Haar transform. The reference
//! backend is these loops; [`crate::backend::host_fallback`] downloads, calls them and uploads,
//! for a backend that has no kernel of its own.

use crate::backend::ConvSpec;
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::Dims;
use rustfft::num_complex::Complex;

fn check_len(len: usize, want: usize, what: &str) -> Result<()> {
    ensure_shape!(len == want, "{what}: expected {want} values, got {len}");
    Ok(())
}

/// The taps of the 5-point stencil, in the order of SPEC section 7: centre, up, down, left, right.
pub const STENCIL: [(isize, isize); 5] = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)];

/// Flat index of pixel `(i, j)` shifted by `off`, or `None` in the zero padding.
#[inline]
fn shifted(d: Dims, i: usize, j: usize, off: (isize, isize)) -> Option<usize> {
    let si = i as isize + off.0;
    let sj = j as isize + off.1;
    (si >= 0 && sj >= 0 && si < d.h as isize && sj < d.w as isize)
        .then(|| si as usize * d.w + sj as usize)
}

/// `(D x)[c, p] = sum_t D[c, t] x[c, p + off_t]`; `dw` is `[c, 5]`.
pub fn stencil5(x: &[f64], d: Dims, dw: &[f64]) -> Result<Vec<f64>> {
    check_len(x.len(), d.len(), "stencil5 input")?;
    check_len(dw.len(), d.c * 5, "stencil5 weight")?;
    let hw = d.hw();
    let mut y = vec![0.0; d.len()];
    for nc in 0..d.n * d.c {
        let c = nc % d.c;
        let (xp, yp) = (&x[nc * hw..(nc + 1) * hw], &mut y[nc * hw..(nc + 1) * hw]);
        for i in 0..d.h {
            for j in 0..d.w {
                for (t, &off) in STENCIL.iter().enumerate() {
                    if let Some(s) = shifted(d, i, j, off) {
                        yp[i * d.w + j] += dw[c * 5 + t] * xp[s];
                    }
                }
            }
        }
    }
    Ok(y)
}

/// The adjoint of [`stencil5`].
pub fn stencil5_t(z: &[f64], d: Dims, dw: &[f64]) -> Result<Vec<f64>> {
    check_len(z.len(), d.len(), "stencil5_t input")?;
    check_len(dw.len(), d.c * 5, "stencil5_t weight")?;
    let hw = d.hw();
    let mut x = vec![0.0; d.len()];
    for nc in 0..d.n * d.c {
        let c = nc % d.c;
        let (zp, xp) = (&z[nc * hw..(nc + 1) * hw], &mut x[nc * hw..(nc + 1) * hw]);
        for i in 0..d.h {
            for j in 0..d.w {
                for (t, &off) in STENCIL.iter().enumerate() {
                    if let Some(s) = shifted(d, i, j, off) {
                        xp[s] += dw[c * 5 + t] * zp[i * d.w + j];
                    }
                }
            }
        }
    }
    Ok(x)
}

/// `dD[c, t] = sum_{n,p} dz[n, c, p] x[n, c, p + off_t]`.
pub fn stencil5_wgrad(x: &[f64], d: Dims, dz: &[f64]) -> Result<Vec<f64>> {
    check_len(x.len(), d.len(), "stencil5_wgrad input")?;
    check_len(dz.len(), d.len(), "stencil5_wgrad cotangent")?;
    let hw = d.hw();
    let mut dw = vec![0.0; d.c * 5];
    for nc in 0..d.n * d.c {
        let c = nc % d.c;
        let (xp, zp) = (&x[nc * hw..(nc + 1) * hw], &dz[nc * hw..(nc + 1) * hw]);
        for i in 0..d.h {
            for j in 0..d.w {
                for (t, &off) in STENCIL.iter().enumerate() {
                    if let Some(s) = shifted(d, i, j, off) {
                        dw[c * 5 + t] += zp[i * d.w + j] * xp[s];
                    }
                }
            }
        }
    }
    Ok(dw)
}

/// Channel counts of a grouped convolution `cin -> cout` with `groups` groups.
fn group_sizes(cin: usize, cout: usize, groups: usize, what: &str) -> Result<(usize, usize)> {
    ensure_shape!(
        groups > 0 && cin.is_multiple_of(groups) && cout.is_multiple_of(groups),
        "{what}: {groups} groups do not divide {cin} -> {cout} channels"
    );
    Ok((cin / groups, cout / groups))
}

/// One grouped convolution with a `ks x ks` kernel (`ks` 1 or 3, padding `ks / 2`), in one of
/// three modes sharing the index arithmetic: forward, adjoint and weight gradient.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Adjoint,
    Wgrad,
}

/// `x` is the input side `[n, cin, h, w]`, `z` the output side `[n, cout, h, w]`, `k` the weight
/// `[cout, cin / groups, ks, ks]`. Forward fills `z`, adjoint fills `x`, wgrad fills `k`.
#[allow(clippy::too_many_arguments)]
fn grouped(
    mode: Mode,
    ks: usize,
    x: &mut [f64],
    d: Dims,
    z: &mut [f64],
    cout: usize,
    k: &mut [f64],
    groups: usize,
) {
    let (gi, go) = (d.c / groups, cout / groups);
    let hw = d.hw();
    let r = (ks / 2) as isize;
    for n in 0..d.n {
        for o in 0..cout {
            let g = o / go;
            for ci in 0..gi {
                let c = g * gi + ci;
                let xb = (n * d.c + c) * hw;
                let zb = (n * cout + o) * hw;
                for a in 0..ks {
                    for b in 0..ks {
                        let ki = ((o * gi + ci) * ks + a) * ks + b;
                        let off = (a as isize - r, b as isize - r);
                        for i in 0..d.h {
                            for j in 0..d.w {
                                let Some(s) = shifted(d, i, j, off) else {
                                    continue;
                                };
                                let p = i * d.w + j;
                                match mode {
                                    Mode::Forward => z[zb + p] += k[ki] * x[xb + s],
                                    Mode::Adjoint => x[xb + s] += k[ki] * z[zb + p],
                                    Mode::Wgrad => k[ki] += z[zb + p] * x[xb + s],
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`Backend::conv`](crate::backend::Backend::conv) by the grouped loops (any [`ConvSpec`],
/// one group included): x `[n, cin, h, w]` (`d`), k `[cout, cin / groups, ks, ks]`.
pub fn grouped_conv(
    spec: ConvSpec,
    x: &[f64],
    d: Dims,
    k: &[f64],
    cout: usize,
) -> Result<Vec<f64>> {
    let (ks, groups) = (spec.side(), spec.groups);
    let (gi, _) = group_sizes(d.c, cout, groups, "grouped conv")?;
    check_len(x.len(), d.len(), "grouped conv input")?;
    check_len(k.len(), cout * gi * ks * ks, "grouped conv weight")?;
    let mut z = vec![0.0; d.with_c(cout).len()];
    let (mut x, mut k) = (x.to_vec(), k.to_vec());
    grouped(Mode::Forward, ks, &mut x, d, &mut z, cout, &mut k, groups);
    Ok(z)
}

/// Adjoint of [`grouped_conv`]: z `[n, cout, h, w]` (`d`) -> `[n, cin, h, w]`.
pub fn grouped_conv_t(
    spec: ConvSpec,
    z: &[f64],
    d: Dims,
    k: &[f64],
    cin: usize,
) -> Result<Vec<f64>> {
    let (ks, groups) = (spec.side(), spec.groups);
    let (gi, _) = group_sizes(cin, d.c, groups, "grouped conv_t")?;
    check_len(z.len(), d.len(), "grouped conv_t input")?;
    check_len(k.len(), d.c * gi * ks * ks, "grouped conv_t weight")?;
    let xd = d.with_c(cin);
    let mut x = vec![0.0; xd.len()];
    let (mut z, mut k) = (z.to_vec(), k.to_vec());
    grouped(Mode::Adjoint, ks, &mut x, xd, &mut z, d.c, &mut k, groups);
    Ok(x)
}

/// Weight gradient of [`grouped_conv`] for the output cotangent `dz`; `d` is the shape of `x`.
pub fn grouped_conv_wgrad(
    spec: ConvSpec,
    x: &[f64],
    d: Dims,
    dz: &[f64],
    cout: usize,
) -> Result<Vec<f64>> {
    let (ks, groups) = (spec.side(), spec.groups);
    let (gi, _) = group_sizes(d.c, cout, groups, "grouped conv wgrad")?;
    check_len(x.len(), d.len(), "grouped conv wgrad input")?;
    check_len(
        dz.len(),
        d.with_c(cout).len(),
        "grouped conv wgrad cotangent",
    )?;
    let mut k = vec![0.0; cout * gi * ks * ks];
    let (mut x, mut z) = (x.to_vec(), dz.to_vec());
    grouped(Mode::Wgrad, ks, &mut x, d, &mut z, cout, &mut k, groups);
    Ok(k)
}

/// Eigenvalue of the periodic 5-point negative Laplacian at frequency `(p, q)` on `h x w`.
pub fn laplace_eigen(p: usize, q: usize, h: usize, w: usize) -> f64 {
    let s = |k: usize, n: usize| (std::f64::consts::PI * k as f64 / n as f64).sin().powi(2);
    4.0 * s(p, h) + 4.0 * s(q, w)
}

/// `(L u)[i, j] = 4 u - u[i-1, j] - u[i+1, j] - u[i, j-1] - u[i, j+1]`, periodic, per plane.
pub fn neg_laplacian(u: &[f64], d: Dims) -> Vec<f64> {
    let (h, w) = (d.h, d.w);
    let mut out = vec![0.0; u.len()];
    for (plane, o) in u.chunks(h * w).zip(out.chunks_mut(h * w)) {
        for i in 0..h {
            for j in 0..w {
                let at = |a: usize, b: usize| plane[a * w + b];
                o[i * w + j] = 4.0 * at(i, j)
                    - at((i + h - 1) % h, j)
                    - at((i + 1) % h, j)
                    - at(i, (j + w - 1) % w)
                    - at(i, (j + 1) % w);
            }
        }
    }
    out
}

/// The shape checks of the diffusion solve: input length `len`, `ndiff` coefficients, step `h`.
pub fn check_diffusion_shape(len: usize, d: Dims, ndiff: usize, h: f64) -> Result<()> {
    check_len(len, d.len(), "diffusion solve input")?;
    check_len(ndiff, d.c, "diffusion coefficients")?;
    ensure_shape!(h.is_finite() && h >= 0.0, "diffusion step {h} is not >= 0");
    Ok(())
}

fn check_diffusion(x: &[f64], d: Dims, diff: &[f64], h: f64) -> Result<()> {
    check_diffusion_shape(x.len(), d, diff.len(), h)
}

/// A 1-D DFT of `v` (length `n`) by the definition: `sign` -1 forward, +1 inverse (unscaled).
fn dft(v: &[Complex<f64>], sign: f64) -> Vec<Complex<f64>> {
    let n = v.len();
    (0..n)
        .map(|k| {
            v.iter()
                .enumerate()
                .map(|(t, x)| {
                    let ang = sign * 2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64;
                    x * Complex::new(ang.cos(), ang.sin())
                })
                .sum()
        })
        .collect()
}

/// Applies `transform` along the rows, then the columns, of an `h x w` plane.
fn separable(
    plane: &mut [Complex<f64>],
    h: usize,
    w: usize,
    mut transform: impl FnMut(&mut [Complex<f64>]),
) {
    for row in plane.chunks_mut(w) {
        transform(row);
    }
    let mut col = vec![Complex::new(0.0, 0.0); h];
    for j in 0..w {
        for i in 0..h {
            col[i] = plane[i * w + j];
        }
        transform(&mut col);
        for i in 0..h {
            plane[i * w + j] = col[i];
        }
    }
}

/// `(I + h a_c L)^{-1} x` per channel, `a_c = diff_c^2`, through `transform(plane, inverse)`:
/// the solve is a division in Fourier space.
fn diffusion_with(
    x: &[f64],
    d: Dims,
    diff: &[f64],
    h: f64,
    mut transform: impl FnMut(&mut [Complex<f64>], bool),
) -> Result<Vec<f64>> {
    check_diffusion(x, d, diff, h)?;
    let hw = d.hw();
    let mut y = vec![0.0; d.len()];
    let mut plane = vec![Complex::new(0.0, 0.0); hw];
    for nc in 0..d.n * d.c {
        let a = diff[nc % d.c].powi(2);
        for (p, v) in plane.iter_mut().zip(&x[nc * hw..(nc + 1) * hw]) {
            *p = Complex::new(*v, 0.0);
        }
        transform(&mut plane, false);
        for p in 0..d.h {
            for q in 0..d.w {
                plane[p * d.w + q] /= 1.0 + h * a * laplace_eigen(p, q, d.h, d.w);
            }
        }
        transform(&mut plane, true);
        for (o, p) in y[nc * hw..(nc + 1) * hw].iter_mut().zip(&plane) {
            *o = p.re / hw as f64;
        }
    }
    Ok(y)
}

/// The reference solve: DFTs by their definition, `O(hw (h + w))` per plane.
pub fn diffusion_solve_dft(x: &[f64], d: Dims, diff: &[f64], h: f64) -> Result<Vec<f64>> {
    let (hh, ww) = (d.h, d.w);
    diffusion_with(x, d, diff, h, |plane, inverse| {
        let sign = if inverse { 1.0 } else { -1.0 };
        separable(plane, hh, ww, |v| {
            let t = dft(v, sign);
            v.copy_from_slice(&t);
        })
    })
}

/// The same solve through `rustfft` (the host fallback of every backend).
pub fn diffusion_solve_fft(x: &[f64], d: Dims, diff: &[f64], h: f64) -> Result<Vec<f64>> {
    let mut planner = rustfft::FftPlanner::<f64>::new();
    let plans = [
        (planner.plan_fft_forward(d.w), planner.plan_fft_forward(d.h)),
        (planner.plan_fft_inverse(d.w), planner.plan_fft_inverse(d.h)),
    ];
    let (hh, ww) = (d.h, d.w);
    diffusion_with(x, d, diff, h, |plane, inverse| {
        let (rows, cols) = &plans[inverse as usize];
        for row in plane.chunks_mut(ww) {
            rows.process(row);
        }
        let mut col = vec![Complex::new(0.0, 0.0); hh];
        for j in 0..ww {
            for i in 0..hh {
                col[i] = plane[i * ww + j];
            }
            cols.process(&mut col);
            for i in 0..hh {
                plane[i * ww + j] = col[i];
            }
        }
    })
}

/// VJP of `y = S x`, `S = (I + h a L)^{-1}`, given the output `y` and its cotangent `g`.
/// S is symmetric, so `dx = S g`; `dS/da = -h S L S` gives `d<g, y>/da_c = -h <S g, L y>_c`,
/// and `a_c = diff_c^2` the factor `2 diff_c`. `solve` is the backend's forward solve.
pub fn diffusion_vjp_with(
    y: &[f64],
    d: Dims,
    diff: &[f64],
    h: f64,
    g: &[f64],
    solve: impl Fn(&[f64], Dims, &[f64], f64) -> Result<Vec<f64>>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    check_diffusion(y, d, diff, h)?;
    check_len(g.len(), d.len(), "diffusion solve cotangent")?;
    let dx = solve(g, d, diff, h)?;
    let ly = neg_laplacian(y, d);
    let hw = d.hw();
    let mut dd = vec![0.0; d.c];
    for nc in 0..d.n * d.c {
        let c = nc % d.c;
        let s: f64 = (nc * hw..(nc + 1) * hw).map(|i| dx[i] * ly[i]).sum();
        dd[c] += -2.0 * h * diff[c] * s;
    }
    Ok((dx, dd))
}

/// Signs of the four Haar filters (rows) on the 2x2 block `(a, b; c, d)` read row-major.
/// The matrix is symmetric and `H = S / 2` is orthogonal, so `H^{-1} = H^T = H`.
pub const HAAR: [[i32; 4]; 4] = [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]];

fn check_haar(len: usize, d: Dims, what: &str) -> Result<()> {
    ensure_shape!(
        d.h.is_multiple_of(2) && d.w.is_multiple_of(2),
        "{what}: the Haar transform needs even image sizes, got {}x{}",
        d.h,
        d.w
    );
    check_len(len, d.len(), what)
}

/// Index of the 2x2 block element `t` of block `(i, j)` in plane `(n, c)` of `d`, and of the
/// Haar output `(n, 4c + f, i, j)`.
#[inline]
fn haar_at(d: Dims, n: usize, c: usize, i: usize, j: usize, t: usize) -> usize {
    ((n * d.c + c) * d.h + 2 * i + t / 2) * d.w + 2 * j + t % 2
}
#[inline]
fn haar_out(d: Dims, n: usize, c: usize, f: usize, i: usize, j: usize) -> usize {
    ((n * 4 * d.c + 4 * c + f) * (d.h / 2) + i) * (d.w / 2) + j
}

/// Applies `op(block_in, block_out)` to every 2x2 block; `inverse` reads the coarse side.
fn haar_blocks<T: Copy + Default>(
    v: &[T],
    d: Dims,
    inverse: bool,
    op: impl Fn(&[T; 4]) -> [T; 4],
) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for n in 0..d.n {
        for c in 0..d.c {
            for i in 0..d.h / 2 {
                for j in 0..d.w / 2 {
                    let fine = |t| haar_at(d, n, c, i, j, t);
                    let coarse = |t| haar_out(d, n, c, t, i, j);
                    let (src, dst): (&dyn Fn(usize) -> usize, &dyn Fn(usize) -> usize) = if inverse
                    {
                        (&coarse, &fine)
                    } else {
                        (&fine, &coarse)
                    };
                    let r = op(&[v[src(0)], v[src(1)], v[src(2)], v[src(3)]]);
                    for (t, val) in r.into_iter().enumerate() {
                        out[dst(t)] = val;
                    }
                }
            }
        }
    }
    out
}

fn haar_mix(b: &[f64; 4]) -> [f64; 4] {
    HAAR.map(|s| (0..4).map(|t| s[t] as f64 * b[t]).sum::<f64>() / 2.0)
}

/// Orthonormal Haar transform: `[n, c, h, w]` (`d`) -> `[n, 4c, h/2, w/2]`.
pub fn haar(x: &[f64], d: Dims) -> Result<Vec<f64>> {
    check_haar(x.len(), d, "haar input")?;
    Ok(haar_blocks(x, d, false, haar_mix))
}

/// Its inverse (and adjoint): `[n, 4c, h/2, w/2]` -> `[n, c, h, w]` (`d`).
pub fn haar_inv(y: &[f64], d: Dims) -> Result<Vec<f64>> {
    check_haar(y.len(), d, "haar_inv input")?;
    Ok(haar_blocks(y, d, true, haar_mix))
}

/// Fixed point: `2 H q` (the unnormalised sums), exact in integers; the result is a fixed-point
/// state with one more fractional bit.
pub fn haar_fixed(q: &[i32], d: Dims) -> Result<Vec<i32>> {
    check_haar(q.len(), d, "haar_fixed input")?;
    Ok(haar_blocks(q, d, false, |b| {
        HAAR.map(|s| (0..4).fold(0i32, |acc, t| acc.wrapping_add(s[t].wrapping_mul(b[t]))))
    }))
}

/// Inverse of [`haar_fixed`]: `H (2 H q) / 2 = q`, i.e. the sums divided by 4 (exact).
pub fn haar_fixed_inv(q: &[i32], d: Dims) -> Result<Vec<i32>> {
    check_haar(q.len(), d, "haar_fixed_inv input")?;
    Ok(haar_blocks(q, d, true, |b| {
        HAAR.map(|s| (0..4).fold(0i32, |acc, t| acc.wrapping_add(s[t].wrapping_mul(b[t]))) >> 2)
    }))
}
