//! The vector spaces the solvers run in, and the right-hand sides they integrate.

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The operations a solver needs of its state: linear combinations (the stages) and the scaled
/// norm that the step-size controller reads.
pub trait Space {
    type V;
    /// `sum_i c_i x_i` (at least one term).
    fn lincomb(&self, terms: &[(f64, &Self::V)]) -> Result<Self::V>;
    /// `(sum_i (x_i / (atol + rtol max(|a_i|, |b_i|)))^2, count)`: the pieces of a scaled RMS.
    fn scaled_sq(&self, x: &Self::V, a: &Self::V, b: &Self::V, tol: Tol) -> Result<(f64, usize)>;
    /// The norm the controller reads: the RMS over every element (SPEC section 10); the
    /// adjoint's augmented state overrides it with torchdiffeq's mixed norm.
    fn norm(&self, x: &Self::V, a: &Self::V, b: &Self::V, tol: Tol) -> Result<f64> {
        let (sq, n) = self.scaled_sq(x, a, b, tol)?;
        Ok(rms(sq, n))
    }
    fn copy(&self, x: &Self::V) -> Result<Self::V> {
        self.lincomb(&[(1.0, x)])
    }
}

pub(crate) fn rms(sq: f64, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        (sq / n as f64).sqrt()
    }
}

/// Absolute and relative tolerance of the scaled norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

/// `sum_i (x_i / (atol + rtol max(|a_i|, |b_i|)))^2` over host values, summed in index order
/// (deterministic whatever the thread count).
pub fn scaled_sq_host<T: Copy + Into<f64>>(x: &[T], a: &[T], b: &[T], tol: Tol) -> Result<f64> {
    if x.len() != a.len() || x.len() != b.len() {
        return Err(Error::Shape(format!(
            "scaled norm: lengths {} / {} / {} differ",
            x.len(),
            a.len(),
            b.len()
        )));
    }
    let mut s = 0.0f64;
    for ((&x, &a), &b) in x.iter().zip(a).zip(b) {
        let (x, a, b): (f64, f64, f64) = (x.into(), a.into(), b.into());
        let q = x / (tol.atol + tol.rtol * a.abs().max(b.abs()));
        s += q * q;
    }
    Ok(s)
}

/// A backend's buffers as a solver space: the stage combinations run as the backend's
/// `lincomb`; the norm reads the values on the host (one download of three buffers per step).
pub struct BackendSpace<'a, B: Backend>(pub &'a B);

impl<B: Backend> Space for BackendSpace<'_, B> {
    type V = B::Buf;
    fn lincomb(&self, terms: &[(f64, &B::Buf)]) -> Result<B::Buf> {
        self.0.lincomb(terms)
    }
    fn scaled_sq(&self, x: &B::Buf, a: &B::Buf, b: &B::Buf, tol: Tol) -> Result<(f64, usize)> {
        let (x, a, b) = (
            self.0.download(x)?,
            self.0.download(a)?,
            self.0.download(b)?,
        );
        Ok((scaled_sq_host(&x, &a, &b, tol)?, x.len()))
    }
}

/// A right-hand side `F(t, y)`.
pub trait Rhs<S: Space> {
    fn eval(&mut self, s: &S, t: f64, y: &S::V) -> Result<S::V>;
    /// `sum_i c_i x_i + c F(t, y)`: the last stage of a fixed-step method, so that a step
    /// type's fused kernel can serve it (euler with one substep is that step type, bit for bit).
    fn step(&mut self, s: &S, terms: &[(f64, &S::V)], c: f64, t: f64, y: &S::V) -> Result<S::V> {
        let k = self.eval(s, t, y)?;
        let mut all = terms.to_vec();
        all.push((c, &k));
        s.lincomb(&all)
    }
}

/// `(F(t, y), a^T dF/dy, a^T dF/dtheta)`.
pub type EvalVjp<V> = (V, V, Vec<V>);

/// A right-hand side with its vector-Jacobian products.
pub trait RhsVjp<S: Space>: Rhs<S> {
    /// `(a^T dF/dy, a^T dF/dtheta)` at `(t, y)`, the parameter part one vector per parameter in
    /// a fixed order.
    fn vjp(&mut self, s: &S, t: f64, y: &S::V, a: &S::V) -> Result<(S::V, Vec<S::V>)>;
    /// `F(t, y)` and the VJP at the same point (the adjoint's augmented dynamics).
    fn eval_vjp(&mut self, s: &S, t: f64, y: &S::V, a: &S::V) -> Result<EvalVjp<S::V>> {
        let f = self.eval(s, t, y)?;
        let (dy, dp) = self.vjp(s, t, y, a)?;
        Ok((f, dy, dp))
    }
}
