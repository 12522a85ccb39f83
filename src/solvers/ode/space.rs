//! The vector spaces the solvers run in, and the right-hand sides they integrate.

use crate::backend::Backend;
use crate::error::Result;

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

/// A backend's buffers as a solver space: the stage combinations run as the backend's
/// `lincomb` and the controller's norm as its `scaled_sq`, so the state stays on the device.
pub struct BackendSpace<'a, B: Backend>(pub &'a B);

impl<B: Backend> Space for BackendSpace<'_, B> {
    type V = B::Buf;
    fn lincomb(&self, terms: &[(f64, &B::Buf)]) -> Result<B::Buf> {
        self.0.lincomb(terms)
    }
    fn scaled_sq(&self, x: &B::Buf, a: &B::Buf, b: &B::Buf, tol: Tol) -> Result<(f64, usize)> {
        let sum = self.0.scaled_sq(x, a, b, tol.atol, tol.rtol)?;
        Ok((sum, self.0.buf_len(x)))
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
