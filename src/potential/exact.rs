//! Value, exact gradient and exact Laplacian of one sample by the forward recursions of
//! OT-Flow (Onken et al. 2021), and their vector-Jacobian product with respect to the weights.
//!
//! With `a_i` the pre-activations, `z_i = dPhi/du_i` (from the backward recursion
//! `z_{i-1} = z_i + h K_i^T (tanh(a_i) * z_i)`, `z_M = w`) and `J_i = du_i/ds E` (E the first
//! `trace_dims` unit vectors), the Hessian trace is
//! `sum_i c_i sum_j sigma''(a_ij) z_ij |(K_i J_{i-1})_j|^2 + |A E|_F^2` (`c_0 = 1`, `c_i = h`,
//! `J_{-1} = E`): O(m^2 M k) per sample, no tape and no estimator.

use super::config::PotentialShape;
use super::net::PotentialNet;
use super::real::Real;

/// What a pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Value,
    Gradient,
    Laplacian,
}

/// One sample's outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleOut<T> {
    pub value: T,
    /// `grad_s Phi` (empty for `Order::Value`).
    pub grad: Vec<T>,
    /// The Laplacian over the first `trace_dims` inputs (zero below `Order::Laplacian`).
    pub laplacian: T,
}

/// The cotangents of one sample's outputs: `dL/dvalue`, `dL/dgrad` (length n or empty for
/// zero), `dL/dlaplacian`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cotangent<T> {
    pub value: T,
    pub grad: Vec<T>,
    pub laplacian: T,
}

/// Per-sample scratch memory, reused between samples.
#[derive(Clone, Debug)]
pub struct Workspace<T> {
    /// Pre-activations a_0..a_M, `[(M+1) m]`.
    a: Vec<T>,
    /// States u_0..u_M.
    u: Vec<T>,
    /// z_0..z_M.
    z: Vec<T>,
    /// tanh(a_i) and sech^2(a_i).
    th: Vec<T>,
    s2: Vec<T>,
    /// J_0..J_{M-1}, each `[m, k]`.
    jac: Vec<T>,
    /// P_i = K_i J_{i-1} for i = 1..M, each `[m, k]`.
    p: Vec<T>,
    as_: Vec<T>,
    // Adjoints.
    abar: Vec<T>,
    zbar: Vec<T>,
    ubar: Vec<T>,
    jbar: Vec<T>,
    jbar_next: Vec<T>,
    pbar: Vec<T>,
    tmp: Vec<T>,
}

impl<T: Real> Workspace<T> {
    pub fn new(s: &PotentialShape) -> Self {
        let (m, k, l) = (s.m, s.trace_dims, s.layers);
        let z = || vec![T::default(); (l + 1) * m];
        Workspace {
            a: z(),
            u: z(),
            z: z(),
            th: z(),
            s2: z(),
            jac: vec![T::default(); l.max(1) * m * k],
            p: vec![T::default(); l.max(1) * m * k],
            as_: vec![T::default(); s.rank],
            abar: z(),
            zbar: z(),
            ubar: vec![T::default(); m],
            jbar: vec![T::default(); m * k],
            jbar_next: vec![T::default(); m * k],
            pbar: vec![T::default(); m * k],
            tmp: vec![T::default(); m.max(s.n)],
        }
    }
}

#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::default();
    for (&x, &y) in a.iter().zip(b) {
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

/// Views of the flat parameters.
struct View<'a, T> {
    s: PotentialShape,
    t: &'a [T],
}

impl<'a, T: Real> View<'a, T> {
    fn k0(&self) -> &'a [T] {
        let o = self.s.offsets();
        &self.t[o.open_weight..o.open_bias]
    }
    fn b0(&self) -> &'a [T] {
        let o = self.s.offsets();
        &self.t[o.open_bias..o.steps]
    }
    /// K_i, b_i of residual layer i = 1..M.
    fn layer(&self, i: usize) -> (&'a [T], &'a [T]) {
        let m = self.s.m;
        let at = self.s.offsets().steps + (i - 1) * (m * m + m);
        (&self.t[at..at + m * m], &self.t[at + m * m..at + m * m + m])
    }
    fn w(&self) -> &'a [T] {
        let o = self.s.offsets();
        &self.t[o.w..o.a]
    }
    fn a(&self) -> &'a [T] {
        let o = self.s.offsets();
        &self.t[o.a..o.c_weight]
    }
    fn cw(&self) -> &'a [T] {
        let o = self.s.offsets();
        &self.t[o.c_weight..o.c_bias]
    }
    fn cb(&self) -> T {
        self.t[self.s.offsets().c_bias]
    }
}

/// Index ranges of the flat parameters, for the adjoints.
fn layer_at(s: &PotentialShape, i: usize) -> usize {
    s.offsets().steps + (i - 1) * (s.m * s.m + s.m)
}

/// The forward pass (and the gradient and Laplacian recursions as `order` asks) of sample `x`.
/// Leaves everything the VJP needs in `ws`.
pub fn eval_sample<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    order: Order,
    ws: &mut Workspace<T>,
) -> SampleOut<T> {
    let s = net.shape;
    let v = View { s, t: &net.theta };
    let (n, m, layers, k) = (s.n, s.m, s.layers, s.trace_dims);
    let h = T::from_f64(s.h);
    let one = T::from_f64(1.0);
    // Forward: a_0 = K_0 x + b_0, u_0 = sigma(a_0); u_i = u_{i-1} + h sigma(K_i u_{i-1} + b_i).
    let k0 = v.k0();
    for j in 0..m {
        let a = v.b0()[j] + dot(&k0[j * n..(j + 1) * n], x);
        ws.a[j] = a;
        ws.u[j] = a.logcosh();
    }
    for i in 1..=layers {
        let (ki, bi) = v.layer(i);
        let (prev, cur) = ws.u.split_at_mut(i * m);
        let uprev = &prev[(i - 1) * m..];
        for j in 0..m {
            let a = bi[j] + dot(&ki[j * m..(j + 1) * m], uprev);
            ws.a[i * m + j] = a;
            cur[j] = uprev[j] + h * a.logcosh();
        }
    }
    let amat = v.a();
    for q in 0..s.rank {
        ws.as_[q] = dot(&amat[q * n..(q + 1) * n], x);
    }
    let value = dot(v.w(), &ws.u[layers * m..])
        + T::from_f64(0.5) * dot(&ws.as_, &ws.as_)
        + dot(v.cw(), x)
        + v.cb();
    // tanh and sech^2 of every pre-activation (the VJP of the value needs tanh as well).
    for (idx, &a) in ws.a.iter().enumerate() {
        let t = a.tanh();
        ws.th[idx] = t;
        ws.s2[idx] = one - t * t;
    }
    if order == Order::Value {
        return SampleOut {
            value,
            grad: Vec::new(),
            laplacian: T::default(),
        };
    }
    // Backward for the gradient: z_M = w, z_{i-1} = z_i + h K_i^T (tanh(a_i) z_i).
    ws.z[layers * m..].copy_from_slice(v.w());
    for i in (1..=layers).rev() {
        let (ki, _) = v.layer(i);
        let (lo, hi) = ws.z.split_at_mut(i * m);
        let zi = &hi[..m];
        let zprev = &mut lo[(i - 1) * m..];
        zprev.copy_from_slice(zi);
        for j in 0..m {
            let d = h * ws.th[i * m + j] * zi[j];
            axpy(d, &ki[j * m..(j + 1) * m], zprev);
        }
    }
    let mut grad = v.cw().to_vec();
    for j in 0..m {
        let d0 = ws.th[j] * ws.z[j];
        axpy(d0, &k0[j * n..(j + 1) * n], &mut grad);
    }
    for q in 0..s.rank {
        axpy(ws.as_[q], &amat[q * n..(q + 1) * n], &mut grad);
    }
    if order == Order::Gradient {
        return SampleOut {
            value,
            grad,
            laplacian: T::default(),
        };
    }
    // Laplacian: layer 0 with P_0 = K_0 E and J_0 = diag(tanh a_0) K_0 E.
    let mut lap = T::default();
    for q in 0..s.rank {
        let row = &amat[q * n..q * n + k];
        lap += dot(row, row);
    }
    for j in 0..m {
        let row = &k0[j * n..j * n + k];
        lap += ws.s2[j] * ws.z[j] * dot(row, row);
        if layers > 0 {
            let th = ws.th[j];
            for (jc, &kc) in ws.jac[j * k..(j + 1) * k].iter_mut().zip(row) {
                *jc = th * kc;
            }
        }
    }
    for i in 1..=layers {
        let (ki, _) = v.layer(i);
        let jprev = &ws.jac[(i - 1) * m * k..i * m * k];
        let p = &mut ws.p[(i - 1) * m * k..i * m * k];
        p.fill(T::default());
        for j in 0..m {
            let prow = &mut p[j * k..(j + 1) * k];
            for l in 0..m {
                axpy(ki[j * m + l], &jprev[l * k..(l + 1) * k], prow);
            }
            lap += h * ws.s2[i * m + j] * ws.z[i * m + j] * dot(prow, prow);
        }
        if i < layers {
            let (lo, hi) = ws.jac.split_at_mut(i * m * k);
            let jprev = &lo[(i - 1) * m * k..];
            let jnext = &mut hi[..m * k];
            jnext.copy_from_slice(jprev);
            for j in 0..m {
                axpy(
                    h * ws.th[i * m + j],
                    &p[j * k..(j + 1) * k],
                    &mut jnext[j * k..(j + 1) * k],
                );
            }
        }
    }
    SampleOut {
        value,
        grad,
        laplacian: lap,
    }
}

/// Adds `d/dtheta [cv Phi + cg . grad Phi + cl Lap Phi]` at sample `x` to `gtheta`, after
/// [`eval_sample`] of the same sample and network left its states in `ws` (with `order` at
/// least `Gradient` when `cg` is non-empty, `Laplacian` when `cl` is non-zero).
pub fn vjp_sample<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    cot: &Cotangent<T>,
    ws: &mut Workspace<T>,
    gtheta: &mut [T],
) {
    vjp_sample_with_input(net, x, cot, ws, gtheta, None);
}

/// [`vjp_sample`] that also adds the cotangent of the input, `d/ds [cv Phi + cg . grad Phi +
/// cl Lap Phi]` (length n), to `gx` when given: the Hessian-vector product `cv grad Phi + H cg`
/// plus `cl grad_s Lap Phi`, which back-propagation through an ODE in `s` needs (OT-Flow).
pub fn vjp_sample_with_input<T: Real>(
    net: &PotentialNet<T>,
    x: &[T],
    cot: &Cotangent<T>,
    ws: &mut Workspace<T>,
    gtheta: &mut [T],
    gx: Option<&mut [T]>,
) {
    let s = net.shape;
    let v = View { s, t: &net.theta };
    let o = s.offsets();
    let (n, m, layers, k) = (s.n, s.m, s.layers, s.trace_dims);
    let h = T::from_f64(s.h);
    let two = T::from_f64(2.0);
    let cl = cot.laplacian;
    let has_lap = cl != T::default();
    let has_grad = !cot.grad.is_empty();
    ws.abar.fill(T::default());
    ws.zbar.fill(T::default());
    let k0 = v.k0();
    let amat = v.a();
    if has_lap {
        // |A E|_F^2.
        for q in 0..s.rank {
            for c in 0..k {
                gtheta[o.a + q * n + c] += two * cl * amat[q * n + c];
            }
        }
        // Residual layers, last to first; `jbar` holds dL/dJ_i on entry of step i.
        ws.jbar.fill(T::default());
        for i in (1..=layers).rev() {
            let at = layer_at(&s, i);
            let (ki, _) = v.layer(i);
            let p = &ws.p[(i - 1) * m * k..i * m * k];
            let jprev = &ws.jac[(i - 1) * m * k..i * m * k];
            for j in 0..m {
                let idx = i * m + j;
                let (t, s2, zi) = (ws.th[idx], ws.s2[idx], ws.z[idx]);
                let s3 = -two * t * s2;
                let prow = &p[j * k..(j + 1) * k];
                let rn = dot(prow, prow);
                ws.abar[idx] += cl * h * s3 * zi * rn;
                ws.zbar[idx] += cl * h * s2 * rn;
                let pb = &mut ws.pbar[j * k..(j + 1) * k];
                let coef = two * cl * h * s2 * zi;
                for (b, &pv) in pb.iter_mut().zip(prow) {
                    *b = coef * pv;
                }
                if i < layers {
                    // J_i = J_{i-1} + h diag(tanh a_i) P_i.
                    let jb = &ws.jbar[j * k..(j + 1) * k];
                    axpy(h * t, jb, pb);
                    ws.abar[idx] += h * s2 * dot(prow, jb);
                }
            }
            // P_i = K_i J_{i-1}: dK_i += Pbar J_{i-1}^T, dJ_{i-1} = Jbar_i + K_i^T Pbar.
            if i < layers {
                ws.jbar_next.copy_from_slice(&ws.jbar);
            } else {
                ws.jbar_next.fill(T::default());
            }
            for j in 0..m {
                let pb = &ws.pbar[j * k..(j + 1) * k];
                for l in 0..m {
                    gtheta[at + j * m + l] += dot(pb, &jprev[l * k..(l + 1) * k]);
                    axpy(ki[j * m + l], pb, &mut ws.jbar_next[l * k..(l + 1) * k]);
                }
            }
            std::mem::swap(&mut ws.jbar, &mut ws.jbar_next);
        }
        // Opening layer: the trace term with P_0 = K_0 E, and J_0 = diag(tanh a_0) K_0 E.
        for j in 0..m {
            let (t, s2, z0) = (ws.th[j], ws.s2[j], ws.z[j]);
            let s3 = -two * t * s2;
            let row = &k0[j * n..j * n + k];
            let rn = dot(row, row);
            ws.abar[j] += cl * s3 * z0 * rn;
            ws.zbar[j] += cl * s2 * rn;
            let g = &mut gtheta[o.open_weight + j * n..o.open_weight + j * n + k];
            axpy(two * cl * s2 * z0, row, g);
            if layers > 0 {
                let jb = &ws.jbar[j * k..(j + 1) * k];
                axpy(t, jb, g);
                ws.abar[j] += s2 * dot(row, jb);
            }
        }
    }
    if has_grad || has_lap {
        let zero_grad;
        let cg: &[T] = if has_grad {
            &cot.grad
        } else {
            zero_grad = vec![T::default(); n];
            &zero_grad
        };
        // grad = K_0^T d_0 + A^T A x + c.
        axpy(T::from_f64(1.0), cg, &mut gtheta[o.c_weight..o.c_bias]);
        for q in 0..s.rank {
            let acg = dot(&amat[q * n..(q + 1) * n], cg);
            let g = &mut gtheta[o.a + q * n..o.a + (q + 1) * n];
            axpy(ws.as_[q], cg, g);
            axpy(acg, x, g);
        }
        for j in 0..m {
            let d0 = ws.th[j] * ws.z[j];
            let row = o.open_weight + j * n;
            axpy(d0, cg, &mut gtheta[row..row + n]);
            let db = dot(&k0[j * n..(j + 1) * n], cg);
            ws.abar[j] += ws.s2[j] * ws.z[j] * db;
            ws.zbar[j] += ws.th[j] * db;
        }
        // z_{i-1} = z_i + h K_i^T (tanh(a_i) z_i), i = 1..M: zbar flows from z_{i-1} to z_i.
        for i in 1..=layers {
            let at = layer_at(&s, i);
            let (ki, _) = v.layer(i);
            let (lo, hi) = ws.zbar.split_at_mut(i * m);
            let zbp = &lo[(i - 1) * m..];
            let zbi = &mut hi[..m];
            axpy(T::from_f64(1.0), zbp, zbi);
            for j in 0..m {
                let idx = i * m + j;
                let di = ws.th[idx] * ws.z[idx];
                axpy(h * di, zbp, &mut gtheta[at + j * m..at + (j + 1) * m]);
                let db = h * dot(&ki[j * m..(j + 1) * m], zbp);
                ws.abar[idx] += ws.s2[idx] * ws.z[idx] * db;
                zbi[j] += ws.th[idx] * db;
            }
        }
        axpy(
            T::from_f64(1.0),
            &ws.zbar[layers * m..],
            &mut gtheta[o.w..o.a],
        );
    }
    // Value: Phi = w . u_M + |A x|^2 / 2 + c . x + c_0, and the forward pass backwards.
    let cv = cot.value;
    axpy(cv, &ws.u[layers * m..], &mut gtheta[o.w..o.a]);
    for q in 0..s.rank {
        axpy(
            cv * ws.as_[q],
            x,
            &mut gtheta[o.a + q * n..o.a + (q + 1) * n],
        );
    }
    axpy(cv, x, &mut gtheta[o.c_weight..o.c_bias]);
    gtheta[o.c_bias] += cv;
    for (ub, &wj) in ws.ubar.iter_mut().zip(v.w()) {
        *ub = cv * wj;
    }
    for i in (1..=layers).rev() {
        let at = layer_at(&s, i);
        let (ki, _) = v.layer(i);
        for j in 0..m {
            let idx = i * m + j;
            ws.abar[idx] += h * ws.th[idx] * ws.ubar[j];
        }
        let uprev = &ws.u[(i - 1) * m..i * m];
        ws.tmp[..m].copy_from_slice(&ws.ubar);
        for j in 0..m {
            let ab = ws.abar[i * m + j];
            gtheta[at + m * m + j] += ab;
            axpy(ab, uprev, &mut gtheta[at + j * m..at + (j + 1) * m]);
            axpy(ab, &ki[j * m..(j + 1) * m], &mut ws.tmp[..m]);
        }
        ws.ubar.copy_from_slice(&ws.tmp[..m]);
    }
    for j in 0..m {
        ws.abar[j] += ws.th[j] * ws.ubar[j];
        let ab = ws.abar[j];
        gtheta[o.open_bias + j] += ab;
        axpy(
            ab,
            x,
            &mut gtheta[o.open_weight + j * n..o.open_weight + (j + 1) * n],
        );
    }
    if let Some(gx) = gx {
        // s enters through a_0 = K_0 s + b_0, A s (value and A^T A s) and c . s; the
        // Laplacian's |A E|^2 does not depend on s.
        axpy(cv, v.cw(), gx);
        for q in 0..s.rank {
            let row = &amat[q * n..(q + 1) * n];
            let acg = if has_grad {
                dot(row, &cot.grad)
            } else {
                T::default()
            };
            axpy(cv * ws.as_[q] + acg, row, gx);
        }
        for j in 0..m {
            axpy(ws.abar[j], &k0[j * n..(j + 1) * n], gx);
        }
    }
}
