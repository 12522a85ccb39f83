//! The blocked fast path of [`super::exact`]: a block of samples at once, so that every matrix
//! product of the forward, gradient and Laplacian recursions and of the weight VJP is one GEMM
//! (the `gemm` crate, single-threaded inside rayon's tasks). `exact.rs` stays the per-sample
//! reference it is tested against.
//!
//! Per-layer arrays are `[m, nb]` (sample index fastest); the Jacobians `J_i` and `P_i` are
//! `[m, nb * k]` (row j holds every sample's k entries), so `P_i = K_i J_{i-1}` over the block
//! is one `[m, m] x [m, nb k]` product and each sample's row norm runs along contiguous memory.
//! Each sample's result depends only on its block, and block boundaries depend only on the
//! shape, so results do not depend on the thread count.

// The loops index several parallel [m, nb] arrays at once; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use super::config::PotentialShape;
use super::exact::{Cotangent, Order};
use super::net::PotentialNet;
use super::real::Real;

/// Samples per block: the whole Jacobian of a layer (`m * nb * k` scalars) stays near 64 Ki
/// entries so that the P/J passes stay in L2.
pub fn block_rows(s: &PotentialShape) -> usize {
    let per = s.m * s.trace_dims.max(1);
    (65536 / per).clamp(8, 64)
}

/// Scratch memory of one block (at most `rows` samples).
#[derive(Clone, Debug)]
pub struct BlockWorkspace<T> {
    rows: usize,
    nb: usize,
    a: Vec<T>,
    u: Vec<T>,
    z: Vec<T>,
    th: Vec<T>,
    s2: Vec<T>,
    as_: Vec<T>,
    jac: Vec<T>,
    p: Vec<T>,
    rn: Vec<T>,
    rn0: Vec<T>,
    abar: Vec<T>,
    zbar: Vec<T>,
    ubar: Vec<T>,
    tmp: Vec<T>,
    tmp_r: Vec<T>,
    jbar: Vec<T>,
    pbar: Vec<T>,
    cg: Vec<T>,
    /// X^T `[n, nb]` and grad^T / cg^T, contiguous GEMM operands.
    xt: Vec<T>,
    gt: Vec<T>,
    /// Outputs of the last [`eval_block`]: `[nb]`, `[nb, n]`, `[nb]`.
    pub value: Vec<T>,
    pub grad: Vec<T>,
    pub laplacian: Vec<T>,
}

impl<T: Real> BlockWorkspace<T> {
    pub fn new(s: &PotentialShape, rows: usize) -> Self {
        let (m, k, l) = (s.m, s.trace_dims, s.layers);
        let z = |len: usize| vec![T::default(); len];
        let lm = (l + 1) * m * rows;
        BlockWorkspace {
            rows,
            nb: 0,
            a: z(lm),
            u: z(lm),
            z: z(lm),
            th: z(lm),
            s2: z(lm),
            as_: z(s.rank * rows),
            jac: z(l * m * rows * k),
            p: z(l * m * rows * k),
            rn: z(l * m * rows),
            rn0: z(m),
            abar: z(lm),
            zbar: z(lm),
            ubar: z(m * rows),
            tmp: z(m * rows),
            tmp_r: z(s.rank * rows),
            jbar: z(m * rows * k),
            pbar: z(m * rows * k),
            cg: z(rows * s.n),
            xt: z(rows * s.n),
            gt: z(rows * s.n),
            value: z(rows),
            grad: z(rows * s.n),
            laplacian: z(rows),
        }
    }
}

impl<T: Real> BlockWorkspace<T> {
    /// Back to the state of [`BlockWorkspace::new`]: reusing one workspace per thread avoids
    /// fresh (mmap-sized, page-faulting) allocations per block, which cost up to 10x at
    /// d = 1000; zeroing keeps every block's arithmetic that of a fresh workspace.
    pub fn clear(&mut self) {
        let zero = T::default();
        self.nb = 0;
        for v in [
            &mut self.a,
            &mut self.u,
            &mut self.z,
            &mut self.th,
            &mut self.s2,
            &mut self.as_,
            &mut self.jac,
            &mut self.p,
            &mut self.rn,
            &mut self.rn0,
            &mut self.abar,
            &mut self.zbar,
            &mut self.ubar,
            &mut self.tmp,
            &mut self.tmp_r,
            &mut self.jbar,
            &mut self.pbar,
            &mut self.cg,
            &mut self.xt,
            &mut self.gt,
            &mut self.value,
            &mut self.grad,
            &mut self.laplacian,
        ] {
            v.fill(zero);
        }
    }
}

/// Largest offset + 1 that a `rows x cols` view with strides `rs`, `cs` touches.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (+)= beta * lhs rhs` with `dst [r, c]`, `lhs [r, kk]`, `rhs [kk, c]`, each given as
/// `(slice, row stride, column stride)`.
#[allow(clippy::too_many_arguments)]
fn mm<T: Real>(
    r: usize,
    c: usize,
    kk: usize,
    dst: (&mut [T], usize, usize),
    acc: bool,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
    beta: T,
) {
    let (d, drs, dcs) = dst;
    assert!(span(r, c, drs, dcs) <= d.len(), "gemm dst out of bounds");
    if r == 0 || c == 0 {
        return;
    }
    if kk == 0 {
        if !acc {
            for i in 0..r {
                for j in 0..c {
                    d[i * drs + j * dcs] = T::default();
                }
            }
        }
        return;
    }
    assert!(
        span(r, kk, lhs.1, lhs.2) <= lhs.0.len(),
        "gemm lhs out of bounds"
    );
    assert!(
        span(kk, c, rhs.1, rhs.2) <= rhs.0.len(),
        "gemm rhs out of bounds"
    );
    // SAFETY: every view was checked against its slice above; `dst` is exclusively borrowed
    // and cannot alias the shared `lhs`/`rhs`. `T` is f32 or f64, both of which gemm supports.
    unsafe {
        gemm::gemm(
            r,
            c,
            kk,
            d.as_mut_ptr(),
            dcs as isize,
            drs as isize,
            acc,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            T::from_f64(1.0),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `a . b` with eight independent accumulators, so that the compiler vectorises it.
#[inline]
fn dotv<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::default(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for q in 0..8 {
            acc[q] += x[q] * y[q];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// The forward pass (and the gradient and Laplacian recursions as `order` asks) of the rows of
/// `x` (`[nb, n]`, `nb <= ws.rows`); outputs in `ws.value`, `ws.grad`, `ws.laplacian` (first
/// `nb` / `nb * n` entries), and everything [`vjp_block`] needs in `ws`.
pub fn eval_block<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    order: Order,
    ws: &mut BlockWorkspace<T>,
) {
    let s = net.shape;
    let o = s.offsets();
    let t = &net.theta;
    let (n, m, layers, k, r) = (s.n, s.m, s.layers, s.trace_dims, s.rank);
    let nb = x.len() / n;
    assert!(nb <= ws.rows && x.len() == nb * n, "block of {nb} rows");
    ws.nb = nb;
    let h = T::from_f64(s.h);
    let one = T::from_f64(1.0);
    let half = T::from_f64(0.5);
    let k0 = &t[o.open_weight..o.open_bias];
    let b0 = &t[o.open_bias..o.steps];
    let amat = &t[o.a..o.c_weight];
    let cw = &t[o.c_weight..o.c_bias];
    let w = &t[o.w..o.a];
    let lay = |i: usize| o.steps + (i - 1) * (m * m + m);
    let mb = m * nb;
    for b in 0..nb {
        for c in 0..n {
            ws.xt[c * nb + b] = x[b * n + c];
        }
    }
    // a_0 = K_0 X^T + b_0.
    mm(
        m,
        nb,
        n,
        (&mut ws.a[..mb], nb, 1),
        false,
        (k0, n, 1),
        (&ws.xt[..n * nb], nb, 1),
        one,
    );
    for j in 0..m {
        for b in 0..nb {
            let a = ws.a[j * nb + b] + b0[j];
            ws.a[j * nb + b] = a;
            ws.u[j * nb + b] = a.logcosh();
        }
    }
    for i in 1..=layers {
        let at = lay(i);
        let (ki, bi) = (&t[at..at + m * m], &t[at + m * m..at + m * m + m]);
        let (ulo, uhi) = ws.u.split_at_mut(i * mb);
        let uprev = &ulo[(i - 1) * mb..];
        let ai = &mut ws.a[i * mb..(i + 1) * mb];
        mm(
            m,
            nb,
            m,
            (ai, nb, 1),
            false,
            (ki, m, 1),
            (uprev, nb, 1),
            one,
        );
        for j in 0..m {
            for b in 0..nb {
                let q = j * nb + b;
                let a = ai[q] + bi[j];
                ai[q] = a;
                uhi[q] = uprev[q] + h * a.logcosh();
            }
        }
    }
    mm(
        r,
        nb,
        n,
        (&mut ws.as_[..r * nb], nb, 1),
        false,
        (amat, n, 1),
        (&ws.xt[..n * nb], nb, 1),
        one,
    );
    let cb = t[o.c_bias];
    for b in 0..nb {
        let mut v = T::default();
        for j in 0..m {
            v += w[j] * ws.u[layers * mb + j * nb + b];
        }
        let mut q2 = T::default();
        for q in 0..r {
            let a = ws.as_[q * nb + b];
            q2 += a * a;
        }
        ws.value[b] = v + half * q2 + dotv(cw, &x[b * n..(b + 1) * n]) + cb;
        ws.laplacian[b] = T::default();
    }
    let la = (layers + 1) * mb;
    for (idx, &a) in ws.a[..la].iter().enumerate() {
        let th = a.tanh();
        ws.th[idx] = th;
        ws.s2[idx] = one - th * th;
    }
    if order == Order::Value {
        return;
    }
    // z_M = w, z_{i-1} = z_i + K_i^T (h tanh(a_i) z_i).
    for j in 0..m {
        ws.z[layers * mb + j * nb..layers * mb + (j + 1) * nb].fill(w[j]);
    }
    for i in (1..=layers).rev() {
        let at = lay(i);
        let ki = &t[at..at + m * m];
        for q in 0..mb {
            ws.tmp[q] = h * ws.th[i * mb + q] * ws.z[i * mb + q];
        }
        let (zlo, zhi) = ws.z.split_at_mut(i * mb);
        let zprev = &mut zlo[(i - 1) * mb..];
        zprev.copy_from_slice(&zhi[..mb]);
        mm(
            m,
            nb,
            m,
            (zprev, nb, 1),
            true,
            (ki, 1, m),
            (&ws.tmp[..mb], nb, 1),
            one,
        );
    }
    // grad^T [n, nb] = c + K_0^T (tanh(a_0) z_0) + A^T (A X^T), written as [nb, n].
    for q in 0..mb {
        ws.tmp[q] = ws.th[q] * ws.z[q];
    }
    let g = &mut ws.gt[..n * nb];
    mm(
        n,
        nb,
        m,
        (&mut *g, nb, 1),
        false,
        (k0, 1, n),
        (&ws.tmp[..mb], nb, 1),
        one,
    );
    mm(
        n,
        nb,
        r,
        (g, nb, 1),
        true,
        (amat, 1, n),
        (&ws.as_[..r * nb], nb, 1),
        one,
    );
    for b in 0..nb {
        for c in 0..n {
            ws.grad[b * n + c] = cw[c] + ws.gt[c * nb + b];
        }
    }
    if order == Order::Gradient {
        return;
    }
    // Laplacian: |A E|_F^2 + sum_j s2 z |K_0 row j (first k)|^2 + the residual layers.
    let mut ae = T::default();
    for q in 0..r {
        ae += dotv(&amat[q * n..q * n + k], &amat[q * n..q * n + k]);
    }
    for j in 0..m {
        let row = &k0[j * n..j * n + k];
        ws.rn0[j] = dotv(row, row);
    }
    let nk = nb * k;
    for b in 0..nb {
        let mut lap = ae;
        for j in 0..m {
            lap += ws.s2[j * nb + b] * ws.z[j * nb + b] * ws.rn0[j];
        }
        ws.laplacian[b] = lap;
    }
    if layers == 0 {
        return;
    }
    // J_0 = diag(tanh a_0) K_0 E.
    for j in 0..m {
        let row = &k0[j * n..j * n + k];
        for b in 0..nb {
            let th = ws.th[j * nb + b];
            let dst = &mut ws.jac[j * nk + b * k..j * nk + (b + 1) * k];
            for (d, &kc) in dst.iter_mut().zip(row) {
                *d = th * kc;
            }
        }
    }
    let mk = m * nk;
    for i in 1..=layers {
        let at = lay(i);
        let ki = &t[at..at + m * m];
        let jprev = &ws.jac[(i - 1) * mk..i * mk];
        let p = &mut ws.p[(i - 1) * mk..i * mk];
        mm(
            m,
            nk,
            m,
            (&mut *p, nk, 1),
            false,
            (ki, m, 1),
            (jprev, nk, 1),
            one,
        );
        for j in 0..m {
            for b in 0..nb {
                let q = i * mb + j * nb + b;
                let prow = &p[j * nk + b * k..j * nk + (b + 1) * k];
                let rn = dotv(prow, prow);
                ws.rn[(i - 1) * mb + j * nb + b] = rn;
                ws.laplacian[b] += h * ws.s2[q] * ws.z[q] * rn;
            }
        }
        if i < layers {
            let (lo, hi) = ws.jac.split_at_mut(i * mk);
            let jprev = &lo[(i - 1) * mk..];
            let jnext = &mut hi[..mk];
            for j in 0..m {
                for b in 0..nb {
                    let c = h * ws.th[i * mb + j * nb + b];
                    let sl = j * nk + b * k..j * nk + (b + 1) * k;
                    for ((d, &jp), &pv) in jnext[sl.clone()]
                        .iter_mut()
                        .zip(&jprev[sl.clone()])
                        .zip(&p[sl])
                    {
                        *d = jp + c * pv;
                    }
                }
            }
        }
    }
}

/// Adds `d/dtheta sum_b [cv_b Phi + cg_b . grad Phi + cl_b Lap Phi]` over the block to
/// `gtheta`, after [`eval_block`] of the same rows left its states in `ws` (with `order` at
/// least `Gradient` when some `cg` is non-empty, `Laplacian` when some `cl` is non-zero).
/// `cots` has one entry per row.
pub fn vjp_block<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    cots: &[Cotangent<T>],
    ws: &mut BlockWorkspace<T>,
    gtheta: &mut [T],
) {
    let s = net.shape;
    let o = s.offsets();
    let t = &net.theta;
    let (n, m, layers, k, r) = (s.n, s.m, s.layers, s.trace_dims, s.rank);
    let nb = ws.nb;
    assert!(
        cots.len() == nb && x.len() == nb * n,
        "vjp_block after eval_block of the rows"
    );
    let h = T::from_f64(s.h);
    let one = T::from_f64(1.0);
    let two = T::from_f64(2.0);
    let zero = T::default();
    let k0 = &t[o.open_weight..o.open_bias];
    let amat = &t[o.a..o.c_weight];
    let w = &t[o.w..o.a];
    let lay = |i: usize| o.steps + (i - 1) * (m * m + m);
    let mb = m * nb;
    let nk = nb * k;
    let mk = m * nk;
    let has_lap = cots.iter().any(|c| c.laplacian != zero);
    let has_grad = cots.iter().any(|c| !c.grad.is_empty());
    let la = (layers + 1) * mb;
    ws.abar[..la].fill(zero);
    ws.zbar[..la].fill(zero);
    if has_lap {
        let sumcl = cots.iter().fold(zero, |a, c| a + c.laplacian);
        for q in 0..r {
            for c in 0..k {
                gtheta[o.a + q * n + c] += two * sumcl * amat[q * n + c];
            }
        }
        // Residual layers, last to first; `jbar` holds dL/dJ_i on entry of step i.
        for i in (1..=layers).rev() {
            let at = lay(i);
            let ki = &t[at..at + m * m];
            let p = &ws.p[(i - 1) * mk..i * mk];
            for j in 0..m {
                for b in 0..nb {
                    let idx = i * mb + j * nb + b;
                    let (th, s2, zi) = (ws.th[idx], ws.s2[idx], ws.z[idx]);
                    let cl = cots[b].laplacian;
                    let s3 = -two * th * s2;
                    let rn = ws.rn[(i - 1) * mb + j * nb + b];
                    ws.abar[idx] += cl * h * s3 * zi * rn;
                    ws.zbar[idx] += cl * h * s2 * rn;
                    let sl = j * nk + b * k..j * nk + (b + 1) * k;
                    let coef = two * cl * h * s2 * zi;
                    let prow = &p[sl.clone()];
                    let pb = &mut ws.pbar[sl.clone()];
                    if i < layers {
                        // J_i = J_{i-1} + h diag(tanh a_i) P_i.
                        let jb = &ws.jbar[sl];
                        let ht = h * th;
                        for ((d, &pv), &jv) in pb.iter_mut().zip(prow).zip(jb) {
                            *d = coef * pv + ht * jv;
                        }
                        ws.abar[idx] += h * s2 * dotv(prow, jb);
                    } else {
                        for (d, &pv) in pb.iter_mut().zip(prow) {
                            *d = coef * pv;
                        }
                    }
                }
            }
            // P_i = K_i J_{i-1}: dK_i += Pbar J_{i-1}^T, Jbar_{i-1} = Jbar_i + K_i^T Pbar.
            let jprev = &ws.jac[(i - 1) * mk..i * mk];
            let gk = &mut gtheta[at..at + m * m];
            mm(
                m,
                m,
                nk,
                (gk, m, 1),
                true,
                (&ws.pbar[..mk], nk, 1),
                (jprev, 1, nk),
                one,
            );
            mm(
                m,
                nk,
                m,
                (&mut ws.jbar[..mk], nk, 1),
                i < layers,
                (ki, 1, m),
                (&ws.pbar[..mk], nk, 1),
                one,
            );
        }
        // Opening layer: P_0 = K_0 E, J_0 = diag(tanh a_0) K_0 E.
        for j in 0..m {
            let row = &k0[j * n..j * n + k];
            let rn0 = ws.rn0[j];
            let mut coefsum = zero;
            for b in 0..nb {
                let idx = j * nb + b;
                let (th, s2, z0) = (ws.th[idx], ws.s2[idx], ws.z[idx]);
                let cl = cots[b].laplacian;
                ws.abar[idx] += cl * (-two * th * s2) * z0 * rn0;
                ws.zbar[idx] += cl * s2 * rn0;
                coefsum += two * cl * s2 * z0;
            }
            let g = &mut gtheta[o.open_weight + j * n..o.open_weight + j * n + k];
            axpy(coefsum, row, g);
            if layers > 0 {
                for b in 0..nb {
                    let idx = j * nb + b;
                    let jb = &ws.jbar[j * nk + b * k..j * nk + (b + 1) * k];
                    axpy(ws.th[idx], jb, g);
                    ws.abar[idx] += ws.s2[idx] * dotv(row, jb);
                }
            }
        }
    }
    if has_grad || has_lap {
        let cg = &mut ws.cg[..nb * n];
        for (b, c) in cots.iter().enumerate() {
            let dst = &mut cg[b * n..(b + 1) * n];
            if c.grad.is_empty() {
                dst.fill(zero);
            } else {
                dst.copy_from_slice(&c.grad);
            }
        }
        for b in 0..nb {
            for c in 0..n {
                ws.gt[c * nb + b] = ws.cg[b * n + c];
            }
        }
        let cg = &ws.cg[..nb * n];
        for b in 0..nb {
            axpy(
                one,
                &cg[b * n..(b + 1) * n],
                &mut gtheta[o.c_weight..o.c_bias],
            );
        }
        // grad = K_0^T d_0 + A^T A x + c.
        let acg = &mut ws.tmp_r[..r * nb];
        mm(
            r,
            nb,
            n,
            (&mut *acg, nb, 1),
            false,
            (amat, n, 1),
            (&ws.gt[..n * nb], nb, 1),
            one,
        );
        let ga = &mut gtheta[o.a..o.c_weight];
        mm(
            r,
            n,
            nb,
            (&mut *ga, n, 1),
            true,
            (&ws.as_[..r * nb], nb, 1),
            (cg, n, 1),
            one,
        );
        mm(
            r,
            n,
            nb,
            (ga, n, 1),
            true,
            (&ws.tmp_r[..r * nb], nb, 1),
            (x, n, 1),
            one,
        );
        for q in 0..mb {
            ws.tmp[q] = ws.th[q] * ws.z[q];
        }
        let gk0 = &mut gtheta[o.open_weight..o.open_bias];
        mm(
            m,
            n,
            nb,
            (gk0, n, 1),
            true,
            (&ws.tmp[..mb], nb, 1),
            (cg, n, 1),
            one,
        );
        let db = &mut ws.ubar[..mb];
        mm(
            m,
            nb,
            n,
            (&mut *db, nb, 1),
            false,
            (k0, n, 1),
            (&ws.gt[..n * nb], nb, 1),
            one,
        );
        for q in 0..mb {
            ws.abar[q] += ws.s2[q] * ws.z[q] * db[q];
            ws.zbar[q] += ws.th[q] * db[q];
        }
        // z_{i-1} = z_i + h K_i^T (tanh(a_i) z_i): zbar flows from z_{i-1} to z_i.
        for i in 1..=layers {
            let at = lay(i);
            let ki = &t[at..at + m * m];
            let (lo, hi) = ws.zbar.split_at_mut(i * mb);
            let zbp = &lo[(i - 1) * mb..];
            let zbi = &mut hi[..mb];
            for q in 0..mb {
                zbi[q] += zbp[q];
                ws.tmp[q] = ws.th[i * mb + q] * ws.z[i * mb + q];
            }
            let gk = &mut gtheta[at..at + m * m];
            mm(
                m,
                m,
                nb,
                (gk, m, 1),
                true,
                (&ws.tmp[..mb], nb, 1),
                (zbp, 1, nb),
                h,
            );
            let db = &mut ws.ubar[..mb];
            mm(
                m,
                nb,
                m,
                (&mut *db, nb, 1),
                false,
                (ki, m, 1),
                (zbp, nb, 1),
                h,
            );
            for q in 0..mb {
                let idx = i * mb + q;
                ws.abar[idx] += ws.s2[idx] * ws.z[idx] * db[q];
                zbi[q] += ws.th[idx] * db[q];
            }
        }
        for j in 0..m {
            let row = &ws.zbar[layers * mb + j * nb..layers * mb + (j + 1) * nb];
            gtheta[o.w + j] += row.iter().fold(zero, |a, &v| a + v);
        }
    }
    // Value: Phi = w . u_M + |A x|^2 / 2 + c . x + c_0, and the forward pass backwards.
    for j in 0..m {
        let mut acc = zero;
        for b in 0..nb {
            acc += cots[b].value * ws.u[layers * mb + j * nb + b];
        }
        gtheta[o.w + j] += acc;
    }
    for q in 0..r {
        for b in 0..nb {
            ws.tmp_r[q * nb + b] = cots[b].value * ws.as_[q * nb + b];
        }
    }
    let ga = &mut gtheta[o.a..o.c_weight];
    mm(
        r,
        n,
        nb,
        (ga, n, 1),
        true,
        (&ws.tmp_r[..r * nb], nb, 1),
        (x, n, 1),
        one,
    );
    for b in 0..nb {
        let cv = cots[b].value;
        axpy(
            cv,
            &x[b * n..(b + 1) * n],
            &mut gtheta[o.c_weight..o.c_bias],
        );
        gtheta[o.c_bias] += cv;
    }
    for j in 0..m {
        for b in 0..nb {
            ws.ubar[j * nb + b] = cots[b].value * w[j];
        }
    }
    for i in (1..=layers).rev() {
        let at = lay(i);
        let ki = &t[at..at + m * m];
        for q in 0..mb {
            let idx = i * mb + q;
            ws.abar[idx] += h * ws.th[idx] * ws.ubar[q];
        }
        let abar = &ws.abar[i * mb..(i + 1) * mb];
        for j in 0..m {
            gtheta[at + m * m + j] += abar[j * nb..(j + 1) * nb].iter().fold(zero, |a, &v| a + v);
        }
        let uprev = &ws.u[(i - 1) * mb..i * mb];
        let gk = &mut gtheta[at..at + m * m];
        mm(
            m,
            m,
            nb,
            (gk, m, 1),
            true,
            (abar, nb, 1),
            (uprev, 1, nb),
            one,
        );
        mm(
            m,
            nb,
            m,
            (&mut ws.ubar[..mb], nb, 1),
            true,
            (ki, 1, m),
            (abar, nb, 1),
            one,
        );
    }
    for q in 0..mb {
        ws.abar[q] += ws.th[q] * ws.ubar[q];
    }
    let abar = &ws.abar[..mb];
    for j in 0..m {
        gtheta[o.open_bias + j] += abar[j * nb..(j + 1) * nb].iter().fold(zero, |a, &v| a + v);
    }
    let gk0 = &mut gtheta[o.open_weight..o.open_bias];
    mm(m, n, nb, (gk0, n, 1), true, (abar, nb, 1), (x, n, 1), one);
}
