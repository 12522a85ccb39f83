//! The CPU backend's TNRD stage (`Backend::tnrd_stage`, the f32 path of `restore::tnrd`): images padded once, row-slice loops that
//! autovectorise, RBF sums over the 13 centres within 6 gamma by a product recurrence (the
//! spacing equals gamma, so `G_{j+1} = G_j exp(d_j - 1/2)`), rayon over filters for one image.

use crate::backend::reference::tnrd::check_stage;
use crate::backend::reference::tnrd::{centre, reflect, CENTRES, GAMMA};
use crate::error::Result;
use crate::tensor::Dims;
use rayon::prelude::*;

/// A stage's parameters in f32: zero-mean filters `k` (`filters * size * size`), RBF weights
/// (`filters * CENTRES`) and lambda.
#[derive(Debug, Clone, Copy)]
pub struct Filters<'a> {
    pub k: &'a [f32],
    pub rbf: &'a [f32],
    pub lambda: f32,
    pub size: usize,
    pub filters: usize,
}

/// Gradients of one stage in f32 (`dk` against the filters K as given, `dlambda` against lambda).
#[derive(Debug, Clone)]
pub struct FastGrad {
    pub du: Vec<f32>,
    pub df: Vec<f32>,
    pub dk: Vec<f32>,
    pub drbf: Vec<f32>,
    pub dlambda: f32,
}

/// A `w x h` image padded symmetrically by `r` on every side.
pub fn pad(u: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let (pw, ph) = (w + 2 * r, h + 2 * r);
    let mut p = vec![0.0; pw * ph];
    for y in 0..ph {
        let sy = reflect(y as isize - r as isize, h);
        let row = &u[sy * w..(sy + 1) * w];
        let out = &mut p[y * pw..(y + 1) * pw];
        for x in 0..pw {
            out[x] = row[reflect(x as isize - r as isize, w)];
        }
    }
    p
}

/// The adjoint of [`pad`]: adds every padded value back onto its source pixel.
fn fold(p: &[f32], w: usize, h: usize, r: usize, out: &mut [f32]) {
    let pw = w + 2 * r;
    for y in 0..h + 2 * r {
        let sy = reflect(y as isize - r as isize, h);
        let row = &p[y * pw..(y + 1) * pw];
        let o = &mut out[sy * w..(sy + 1) * w];
        for (x, &v) in o.iter_mut().zip(&row[r..r + w]) {
            *x += v;
        }
        for x in 0..r {
            o[reflect(x as isize - r as isize, w)] += row[x];
            o[reflect((w + r + x) as isize - r as isize, w)] += row[w + r + x];
        }
    }
}

/// `v = K p` (valid correlation of the padded image).
fn conv(p: &[f32], w: usize, h: usize, k: &[f32], s: usize, v: &mut [f32]) {
    let pw = w + s - 1;
    v.fill(0.0);
    for y in 0..h {
        let vr = &mut v[y * w..(y + 1) * w];
        for a in 0..s {
            let pr = &p[(y + a) * pw..(y + a + 1) * pw];
            for b in 0..s {
                let c = k[a * s + b];
                for (o, &x) in vr.iter_mut().zip(&pr[b..b + w]) {
                    *o += c * x;
                }
            }
        }
    }
}

/// Adds the scatter `K^T z` onto the padded accumulator `acc` (to be folded).
fn scatter(z: &[f32], w: usize, h: usize, k: &[f32], s: usize, acc: &mut [f32]) {
    let pw = w + s - 1;
    for y in 0..h {
        let zr = &z[y * w..(y + 1) * w];
        for a in 0..s {
            let ar = &mut acc[(y + a) * pw..(y + a + 1) * pw];
            for b in 0..s {
                let c = k[a * s + b];
                for (o, &x) in ar[b..b + w].iter_mut().zip(zr) {
                    *o += c * x;
                }
            }
        }
    }
}

/// Adds `sum_p y[p] p_pad[p + (a, b)]` onto `g[a * s + b]`.
fn filter_grad(p: &[f32], y: &[f32], w: usize, h: usize, s: usize, g: &mut [f32]) {
    let pw = w + s - 1;
    for a in 0..s {
        for b in 0..s {
            let mut acc = 0.0f32;
            for row in 0..h {
                let pr = &p[(row + a) * pw + b..(row + a) * pw + b + w];
                let yr = &y[row * w..(row + 1) * w];
                acc += pr.iter().zip(yr).map(|(a, b)| a * b).sum::<f32>();
            }
            g[a * s + b] += acc;
        }
    }
}

/// The centres within 6 gamma of `z`, the first centre's Gaussian and its recurrence ratio.
#[inline]
fn window(z: f32) -> (usize, usize, f32, f32, f32) {
    let mu0 = centre(0) as f32;
    let inv_g = (1.0 / GAMMA) as f32;
    let t = (z - mu0) * inv_g;
    let j0 = t.round();
    let lo = (j0 - 6.0).max(0.0);
    let hi = (j0 + 6.0).min((CENTRES - 1) as f32);
    if lo > hi {
        return (1, 0, 0.0, 0.0, 0.0);
    }
    let d = t - lo;
    (
        lo as usize,
        hi as usize,
        d,
        (-0.5 * d * d).exp(),
        (d - 0.5).exp(),
    )
}

const INV_E: f32 = 0.367_879_44;

/// `phi(z)` and `phi'(z)`.
#[inline]
pub fn phi(z: f32, wts: &[f32]) -> (f32, f32) {
    let (lo, hi, mut d, mut g, mut r) = window(z);
    let (mut v, mut dv) = (0.0f32, 0.0f32);
    for &wj in wts.iter().take(hi + 1).skip(lo) {
        v += wj * g;
        dv -= wj * g * d;
        g *= r;
        r *= INV_E;
        d -= 1.0;
    }
    (v, dv * (1.0 / GAMMA) as f32)
}

/// Adds `e * G_j(z)` onto `acc[j]`.
#[inline]
fn rbf_grad(z: f32, e: f32, acc: &mut [f32]) {
    let (lo, hi, _, mut g, mut r) = window(z);
    for a in acc.iter_mut().take(hi + 1).skip(lo) {
        *a += e * g;
        g *= r;
        r *= INV_E;
    }
}

/// The diffusion of filters `range` scattered onto the padded accumulator `acc`.
fn diffuse(
    st: &Filters<'_>,
    pu: &[f32],
    w: usize,
    h: usize,
    range: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let (s, n) = (st.size, st.size * st.size);
    let mut v = vec![0.0f32; w * h];
    for i in range {
        let k = &st.k[i * n..(i + 1) * n];
        conv(pu, w, h, k, s, &mut v);
        let wts = &st.rbf[i * CENTRES..(i + 1) * CENTRES];
        v.iter_mut().for_each(|x| *x = phi(*x, wts).0);
        scatter(&v, w, h, k, s, acc);
    }
}

fn finish(st: &Filters<'_>, u: &[f32], f: &[f32], w: usize, h: usize, acc: &[f32]) -> Vec<f32> {
    let mut d = vec![0.0f32; w * h];
    fold(acc, w, h, st.size / 2, &mut d);
    let lam = st.lambda;
    u.iter()
        .zip(f)
        .zip(&d)
        .map(|((&a, &b), &c)| a - c - lam * (a - b))
        .collect()
}

/// One stage on one thread (for callers that parallelise over images).
pub fn forward_seq(st: &Filters<'_>, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32> {
    let r = st.size / 2;
    let pu = pad(u, w, h, r);
    let mut acc = vec![0.0f32; pu.len()];
    diffuse(st, &pu, w, h, 0..st.filters, &mut acc);
    finish(st, u, f, w, h, &acc)
}

/// One stage with rayon over the filters (one large image).
pub fn forward(st: &Filters<'_>, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32> {
    let r = st.size / 2;
    let pu = pad(u, w, h, r);
    let len = pu.len();
    let acc = (0..st.filters)
        .into_par_iter()
        .fold(
            || vec![0.0f32; len],
            |mut acc, i| {
                diffuse(st, &pu, w, h, i..i + 1, &mut acc);
                acc
            },
        )
        .reduce(
            || vec![0.0f32; len],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    finish(st, u, f, w, h, &acc)
}

/// The VJP of one stage on one thread for the output gradient `g`.
pub fn vjp_seq(st: &Filters<'_>, u: &[f32], f: &[f32], g: &[f32], w: usize, h: usize) -> FastGrad {
    let (s, n, r) = (st.size, st.size * st.size, st.size / 2);
    let pu = pad(u, w, h, r);
    let pg = pad(g, w, h, r);
    let mut acc = vec![0.0f32; pu.len()];
    let mut dk = vec![0.0f32; st.filters * n];
    let mut drbf = vec![0.0f32; st.filters * CENTRES];
    let (mut v, mut e, mut z, mut de) = (
        vec![0.0f32; w * h],
        vec![0.0f32; w * h],
        vec![0.0f32; w * h],
        vec![0.0f32; w * h],
    );
    for i in 0..st.filters {
        let k = &st.k[i * n..(i + 1) * n];
        let wts = &st.rbf[i * CENTRES..(i + 1) * CENTRES];
        conv(&pu, w, h, k, s, &mut v);
        conv(&pg, w, h, k, s, &mut e);
        let dr = &mut drbf[i * CENTRES..(i + 1) * CENTRES];
        for p in 0..w * h {
            let (val, der) = phi(v[p], wts);
            z[p] = val;
            de[p] = der * e[p];
            rbf_grad(v[p], -e[p], dr);
        }
        let dki = &mut dk[i * n..(i + 1) * n];
        filter_grad(&pg, &z, w, h, s, dki);
        filter_grad(&pu, &de, w, h, s, dki);
        dki.iter_mut().for_each(|x| *x = -*x);
        scatter(&de, w, h, k, s, &mut acc);
    }
    let mut back = vec![0.0f32; w * h];
    fold(&acc, w, h, r, &mut back);
    let lam = st.lambda;
    let du = g
        .iter()
        .zip(&back)
        .map(|(&a, &b)| (1.0 - lam) * a - b)
        .collect();
    let df = g.iter().map(|&a| lam * a).collect();
    let dlambda = -g
        .iter()
        .zip(u.iter().zip(f))
        .map(|(&gv, (&a, &b))| gv * (a - b))
        .sum::<f32>();
    FastGrad {
        du,
        df,
        dk,
        drbf,
        dlambda,
    }
}

/// [`forward`] on each of `n` images of `hw = w * h` pixels: rayon over the filters for one
/// image, over the images otherwise (each image's sums in the same order either way).
pub fn forward_batch(
    st: &Filters<'_>,
    u: &[f32],
    f: &[f32],
    n: usize,
    w: usize,
    h: usize,
) -> Vec<f32> {
    let hw = w * h;
    if n == 1 {
        return forward(st, u, f, w, h);
    }
    let parts: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|b| forward_seq(st, &u[b * hw..(b + 1) * hw], &f[b * hw..(b + 1) * hw], w, h))
        .collect();
    parts.concat()
}

/// [`vjp_seq`] on each of `n` images in parallel; the parameter gradients are added over the
/// images in index order (deterministic whatever the thread count).
#[allow(clippy::too_many_arguments)]
pub fn vjp_batch(
    st: &Filters<'_>,
    u: &[f32],
    f: &[f32],
    g: &[f32],
    n: usize,
    w: usize,
    h: usize,
) -> FastGrad {
    let hw = w * h;
    let parts: Vec<FastGrad> = (0..n)
        .into_par_iter()
        .map(|b| {
            let r = b * hw..(b + 1) * hw;
            vjp_seq(st, &u[r.clone()], &f[r.clone()], &g[r], w, h)
        })
        .collect();
    let mut all = FastGrad {
        du: Vec::with_capacity(n * hw),
        df: Vec::with_capacity(n * hw),
        dk: vec![0.0; st.k.len()],
        drbf: vec![0.0; st.rbf.len()],
        dlambda: 0.0,
    };
    for p in parts {
        all.du.extend(p.du);
        all.df.extend(p.df);
        all.dk.iter_mut().zip(&p.dk).for_each(|(a, b)| *a += b);
        all.drbf.iter_mut().zip(&p.drbf).for_each(|(a, b)| *a += b);
        all.dlambda += p.dlambda;
    }
    all
}

/// The op's parameters checked against images `d` (`lens`: the image buffers' lengths).
pub fn filters<'a>(
    d: Dims,
    lens: [usize; 2],
    k: &'a [f32],
    rbf: &'a [f32],
    lambda: f64,
    size: usize,
) -> Result<Filters<'a>> {
    let filters = check_stage(d, lens, k.len(), rbf.len(), size)?;
    Ok(Filters {
        k,
        rbf,
        lambda: lambda as f32,
        size,
        filters,
    })
}

/// Working bytes of [`forward_batch`] beside its inputs and output, `threads` tasks at once:
/// the padded input and one padded accumulator and response plane per task (one image), or per
/// image in flight plus the per-image results (several).
pub fn forward_bytes(d: Dims, _filters: usize, size: usize, threads: usize) -> usize {
    let padded = (d.w + size - 1) * (d.h + size - 1);
    let per = 4 * (padded + d.hw());
    if d.n == 1 {
        4 * padded + threads * per + 4 * padded
    } else {
        threads * (4 * padded + per) + 4 * d.len()
    }
}

/// Working bytes of [`vjp_batch`]: per image in flight two padded inputs, a padded accumulator
/// and four planes; the per-image gradients until they are added.
pub fn vjp_bytes(d: Dims, filters: usize, size: usize, threads: usize) -> usize {
    let padded = (d.w + size - 1) * (d.h + size - 1);
    let params = filters * (size * size + CENTRES);
    threads * 4 * (3 * padded + 5 * d.hw()) + 4 * d.n * (2 * d.hw() + params)
}
