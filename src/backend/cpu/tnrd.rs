//! The CPU backend's TNRD stage (`Backend::tnrd_stage`, the f32 path of `restore::tnrd`): images padded once, row-slice loops that
//! autovectorise, RBF sums over the 13 centres within 6 gamma by a product recurrence (the
//! spacing equals gamma, so `G_{j+1} = G_j exp(d_j - 1/2)`), rayon over filters for one image.
//! The window's start and its two exps come from one branch-free pass over the plane (a
//! polynomial exp, weights padded with zeros so every window is 13 long), the 13-step sums from
//! a second; sums over pixels run in 8 fixed lanes. Everything is plain IEEE f32 in a fixed
//! order, so the AVX2 build of the loops ([`with_isa`]) gives the same bits as the SSE2 one.

use crate::backend::reference::tnrd::check_stage;
use crate::backend::reference::tnrd::{reflect, CENTRES, GAMMA, MU_MAX};
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
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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

/// Adds `sum_p y[p] p_pad[p + (a, b)]` onto `g[a * s + b]` (8 lanes so that it vectorises).
#[inline(always)]
fn filter_grad(p: &[f32], y: &[f32], w: usize, h: usize, s: usize, g: &mut [f32]) {
    const L: usize = 8;
    let pw = w + s - 1;
    let body = w - w % L;
    for a in 0..s {
        for b in 0..s {
            let mut lanes = [0.0f32; L];
            for row in 0..h {
                let pr = &p[(row + a) * pw + b..(row + a) * pw + b + w];
                let yr = &y[row * w..(row + 1) * w];
                for (pc, yc) in pr[..body].chunks_exact(L).zip(yr[..body].chunks_exact(L)) {
                    for l in 0..L {
                        lanes[l] += pc[l] * yc[l];
                    }
                }
                for (l, (x, y)) in pr[body..].iter().zip(&yr[body..]).enumerate() {
                    lanes[l] += x * y;
                }
            }
            g[a * s + b] += lanes.iter().sum::<f32>();
        }
    }
}

// The window arithmetic takes the centres to be `gamma (j - MID)`.
const _: () =
    assert!(CENTRES % 2 == 1 && (MU_MAX - GAMMA * ((CENTRES - 1) / 2) as f64).abs() < 1e-12);

/// Zero weights on each side of the centres: every window is [`WIN`] long, none branches.
const PADW: usize = WIN;
/// The middle centre (at 0): centre `j` is `gamma (j - MID)`.
const MID: usize = (CENTRES - 1) / 2;
/// `gamma` to 12 bits (so `k G_HI` is exact for the window's `|k| <= 38`) and the rest.
const G_HI: f32 = f32::from_bits((GAMMA as f32).to_bits() & 0xFFFF_F000);
const G_LO: f32 = (GAMMA - G_HI as f64) as f32;
/// Centres per window (those within `TN_WINDOW` gamma of the nearest one).
const WIN: usize = 2 * crate::backend::kernel_constants::TN_WINDOW + 1;
/// Padded weights per filter.
const PADN: usize = CENTRES + 2 * PADW;
/// `1.5 * 2^23`: adding it rounds an f32 below `2^22` to an integer, held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;

/// `exp(x)` to ~1 ulp on `[-87, 88]` (clamped there): the Cephes polynomial, branch-free so that
/// loops over pixels vectorise (libm's `expf` is a call per pixel).
#[inline(always)]
fn expf(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let nb = x * std::f32::consts::LOG2_E + MAGIC;
    let n = nb - MAGIC;
    let r = x - n * 0.693_359_4;
    let r = r - n * -2.121_944_4e-4;
    let mut q = 1.987_569_1e-4f32;
    q = q * r + 1.398_199_9e-3;
    q = q * r + 8.333_452e-3;
    q = q * r + 4.166_579_6e-2;
    q = q * r + 1.666_666_5e-1;
    q = q * r + 0.5;
    let y = q * r * r + r + 1.0;
    let k = (nb.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    y * f32::from_bits((k.wrapping_add(127) << 23) as u32)
}

/// The RBF weights of one filter with [`PADW`] zeros on each side.
fn padded_weights(wts: &[f32]) -> [f32; PADN] {
    let mut p = [0.0f32; PADN];
    p[PADW..PADW + CENTRES].copy_from_slice(wts);
    p
}

/// Per-pixel window of a plane of filter responses: the first padded weight index, the offset
/// `d` (in gamma, within 1/2) of the response from the nearest centre, that centre's Gaussian
/// and the ratios to the next one up and down. Starting from the nearest centre keeps the exps'
/// arguments small (their rounding grows with them) and the product chains 6 long.
struct Windows {
    start: Vec<u32>,
    d: Vec<f32>,
    g: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

impl Windows {
    fn new(n: usize) -> Windows {
        Windows {
            start: vec![0; n],
            d: vec![0.0; n],
            g: vec![0.0; n],
            up: vec![0.0; n],
            down: vec![0.0; n],
        }
    }
    /// Fills the windows of `z` (one branch-free loop that vectorises). The offset from the
    /// nearest centre `k gamma` is reduced Cody-Waite style (`gamma = G_HI + G_LO`, `k G_HI`
    /// exact) so that it keeps f32 precision; `(z - mu_0) / gamma` would lose ~1e-5 of it.
    #[inline(always)]
    fn fill(&mut self, z: &[f32]) {
        let inv_g = (1.0 / GAMMA) as f32;
        // The centres are `gamma (j - MID)`; past 6.5 gamma outside them a window holds only
        // zero pads (the clamps keep its start inside them and its Gaussians finite).
        let kmax = (MID + 7) as f32;
        let last = (PADN - WIN) as i32;
        let it = z
            .iter()
            .zip(self.start.iter_mut().zip(self.d.iter_mut()))
            .zip(
                self.g
                    .iter_mut()
                    .zip(self.up.iter_mut().zip(self.down.iter_mut())),
            );
        for ((&zv, (s, d)), (g, (up, down))) in it {
            let nb = (zv * inv_g).clamp(-kmax, kmax) + MAGIC;
            let k = nb - MAGIC;
            let j = (nb.to_bits() as i32).wrapping_sub(MAGIC_BITS);
            // Window k - 6 ..= k + 6 of centres MID + k +- 6, shifted by the pads (a NaN
            // response lands anywhere valid).
            *s = (j + (MID + PADW) as i32 - 6).clamp(0, last) as u32;
            let dd = (((zv - k * G_HI) - k * G_LO) * inv_g).clamp(-1.0, 1.0);
            *d = dd;
            *g = expf(-0.5 * dd * dd);
            *up = expf(dd - 0.5);
            *down = expf(-dd - 0.5);
        }
    }
    /// `(phi, -gamma phi')` at pixel `p`, calling `each(m, G)` for the window's 13 Gaussians.
    #[inline(always)]
    fn sums(&self, wp: &[f32; PADN], p: usize, mut each: impl FnMut(usize, f32)) -> (f32, f32) {
        let s = self.start[p] as usize;
        let w = &wp[s..s + WIN];
        let (g0, d0) = (self.g[p], self.d[p]);
        let (mut v, mut dv) = (w[6] * g0, -(w[6] * g0 * d0));
        each(6, g0);
        let (mut g, mut r, mut d) = (g0, self.up[p], d0);
        for (m, &wm) in w.iter().enumerate().skip(7) {
            g *= r;
            r *= INV_E;
            d -= 1.0;
            v += wm * g;
            dv -= wm * g * d;
            each(m, g);
        }
        let (mut g, mut r, mut d) = (g0, self.down[p], d0);
        for m in (0..6).rev() {
            g *= r;
            r *= INV_E;
            d += 1.0;
            v += w[m] * g;
            dv -= w[m] * g * d;
            each(m, g);
        }
        (v, dv)
    }
}

const INV_E: f32 = 0.367_879_44;

/// `phi(z)` and `phi'(z)` for one response (the kernels use [`Windows`] on whole planes).
pub fn phi(z: f32, wts: &[f32]) -> (f32, f32) {
    let wp = padded_weights(wts);
    let mut win = Windows::new(1);
    win.fill(&[z]);
    let (v, dv) = win.sums(&wp, 0, |_, _| {});
    (v, dv * (1.0 / GAMMA) as f32)
}

/// `v <- phi(v)` over a plane.
#[inline(always)]
fn phi_plane(v: &mut [f32], wts: &[f32], win: &mut Windows) {
    let wp = padded_weights(wts);
    win.fill(v);
    for (p, x) in v.iter_mut().enumerate() {
        *x = win.sums(&wp, p, |_, _| {}).0;
    }
}

/// `z = phi(v)`, `de = phi'(v) e` and `dr[j] -= sum_p e_p G_j(v_p)` over a plane (the RBF
/// gradient in four interleaved copies so that neighbouring pixels do not wait on each
/// other's adds).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn phi_vjp_plane(
    v: &[f32],
    e: &[f32],
    wts: &[f32],
    win: &mut Windows,
    z: &mut [f32],
    de: &mut [f32],
    dr: &mut [f32],
) {
    let wp = padded_weights(wts);
    win.fill(v);
    let mut acc = [0.0f32; 4 * PADN];
    let inv_g = (1.0 / GAMMA) as f32;
    for p in 0..v.len() {
        let ep = -e[p];
        let base = (p & 3) * PADN + win.start[p] as usize;
        let a = &mut acc[base..base + WIN];
        let (val, dv) = win.sums(&wp, p, |m, g| a[m] += ep * g);
        z[p] = val;
        de[p] = dv * inv_g * e[p];
    }
    for (j, o) in dr.iter_mut().enumerate() {
        let q = PADW + j;
        *o += (acc[q] + acc[PADN + q]) + (acc[2 * PADN + q] + acc[3 * PADN + q]);
    }
}

/// Defines `$name` as `$body` with its loops compiled for AVX2 where the CPU has it (8 lanes
/// instead of SSE2's 4; the same operations in the same order, so the same results). `$body`
/// and what it calls are `#[inline(always)]`, so each copy gets its own codegen.
macro_rules! with_isa {
    ($(#[$m:meta])* $vis:vis fn $name:ident = $body:ident ($($a:ident: $t:ty),*) $(-> $r:ty)?) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($a: $t),*) $(-> $r)? {
                    $body($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU was just checked to have AVX2.
                    return unsafe { avx2($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

with_isa!(fn diffuse_isa = diffuse(st: &Filters<'_>, pu: &[f32], w: usize, h: usize, range: std::ops::Range<usize>, acc: &mut [f32]));

/// The diffusion of filters `range` scattered onto the padded accumulator `acc`.
#[inline(always)]
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
    let mut win = Windows::new(w * h);
    for i in range {
        let k = &st.k[i * n..(i + 1) * n];
        conv(pu, w, h, k, s, &mut v);
        phi_plane(&mut v, &st.rbf[i * CENTRES..(i + 1) * CENTRES], &mut win);
        scatter(&v, w, h, k, s, acc);
    }
}

#[inline(always)]
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
    forward_isa(st, u, f, w, h)
}

with_isa!(fn forward_isa = forward_body(st: &Filters<'_>, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32>);

#[inline(always)]
fn forward_body(st: &Filters<'_>, u: &[f32], f: &[f32], w: usize, h: usize) -> Vec<f32> {
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
                diffuse_isa(st, &pu, w, h, i..i + 1, &mut acc);
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
    vjp_isa(st, u, f, g, w, h)
}

with_isa!(fn vjp_isa = vjp_body(st: &Filters<'_>, u: &[f32], f: &[f32], g: &[f32], w: usize, h: usize) -> FastGrad);

#[inline(always)]
fn vjp_body(st: &Filters<'_>, u: &[f32], f: &[f32], g: &[f32], w: usize, h: usize) -> FastGrad {
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
    let mut win = Windows::new(w * h);
    for i in 0..st.filters {
        let k = &st.k[i * n..(i + 1) * n];
        let wts = &st.rbf[i * CENTRES..(i + 1) * CENTRES];
        conv(&pu, w, h, k, s, &mut v);
        conv(&pg, w, h, k, s, &mut e);
        let dr = &mut drbf[i * CENTRES..(i + 1) * CENTRES];
        phi_vjp_plane(&v, &e, wts, &mut win, &mut z, &mut de, dr);
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
