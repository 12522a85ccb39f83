//! The step types of SPEC section 3: one forward step, its inverse (for invertible types) and its
//! VJP, each on resolved parameter references. Units and memory policies live in `schedule`.

use crate::backend::{Activation, Backend, Norm, SymGrads};
use crate::config::StepType;
use crate::error::Result;
use crate::operators::{explicit_vjp, sym_step, sym_vjp, LayerGrads, OpRef};
use crate::tensor::Dims;

pub mod rule;

use rule::{rule_of, step, step_back, HAMILTONIAN, HYPERBOLIC, IMEX};

/// One `f(.; K, N)` with its parameters resolved to buffers.
pub struct Layer<'a, B: Backend> {
    pub op: OpRef<'a, B>,
    pub norm: Norm<'a, B::Buf>,
}

impl<B: Backend> Clone for Layer<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Layer<'_, B> {}

/// Everything a step needs besides its state.
#[derive(Clone, Copy, Debug)]
pub struct StepSettings {
    pub layer: StepType,
    pub h: f64,
    pub act: Activation,
    pub gamma: f64,
}

/// `sum_i a_i x_i + coef * f(y)`, through the backend's fused kernel for the full 3x3 operator.
pub fn sym<B: Backend>(
    be: &B,
    l: Layer<'_, B>,
    terms: &[(f64, &B::Buf)],
    coef: f64,
    y: &B::Buf,
    d: Dims,
    act: Activation,
) -> Result<B::Buf> {
    match l.op {
        OpRef::Full3x3(k) => be.step_full3x3(terms, coef, y, d, k, l.norm, act),
        op => sym_step(be, op, terms, coef, y, d, l.norm, act),
    }
}

/// VJP of `f` at `y`, through the backend's fused kernel for the full 3x3 operator.
pub fn sym_grad<B: Backend>(
    be: &B,
    l: Layer<'_, B>,
    y: &B::Buf,
    d: Dims,
    act: Activation,
    g: &B::Buf,
) -> Result<LayerGrads<B::Buf>> {
    match l.op {
        OpRef::Full3x3(k) => Ok(full3x3_grads(be.sym_full3x3_vjp(y, d, k, l.norm, act, g)?)),
        op => sym_vjp(be, op, y, d, l.norm, act, g),
    }
}

/// The full 3x3 operator's VJP as a layer's gradients (its one operator tensor is `K`).
fn full3x3_grads<T>(s: SymGrads<T>) -> LayerGrads<T> {
    LayerGrads {
        dy: s.dy,
        dop: vec![s.dk],
        dscale: s.dscale,
        dshift: s.dshift,
    }
}

/// [`sym`] and [`sym_grad`] at the same `y`, `(step, vjp)`: one pass of `K y`, its norms and
/// `sigma` where the backend fuses them (the full 3x3 operator), the two calls otherwise.
#[allow(clippy::too_many_arguments)]
pub fn sym_with_grad<B: Backend>(
    be: &B,
    l: Layer<'_, B>,
    terms: &[(f64, &B::Buf)],
    coef: f64,
    y: &B::Buf,
    d: Dims,
    act: Activation,
    g: &B::Buf,
) -> Result<(B::Buf, LayerGrads<B::Buf>)> {
    match l.op {
        OpRef::Full3x3(k) => {
            let (out, s) = be.step_full3x3_vjp(terms, coef, y, d, k, l.norm, act, g)?;
            Ok((out, full3x3_grads(s)))
        }
        _ => {
            let v = sym_grad(be, l, y, d, act, g)?;
            Ok((sym(be, l, terms, coef, y, d, act)?, v))
        }
    }
}

/// One step of a single-state type (resnet, antisymmetric, parabolic), or the leapfrog step
/// `2 y - y_prev + h^2 f(y)` when `prev` is given (hyperbolic).
pub fn forward_single<B: Backend>(
    be: &B,
    kind: StepSettings,
    l: Layer<'_, B>,
    y: &B::Buf,
    prev: Option<&B::Buf>,
    d: Dims,
) -> Result<B::Buf> {
    match kind.layer {
        StepType::Hamiltonian | StepType::Imex | StepType::Ode => Err(crate::Error::Config(
            format!("{} steps are not single-state steps", kind.layer.name()),
        )),
        t => {
            let prev = prev.map(|p| [p]);
            let prev = prev.as_ref().map(|p| &p[..]);
            let mut out = step(be, rule_of(t)?, kind, &[l], None, &[y], prev, d)?;
            Ok(out.remove(0))
        }
    }
}

/// The VJP of one single-state step `y_{j+1} = y_j + h F(y_j)` at `y_j`: returns the gradient
/// of `F`'s parameters and `J_F^T g` (each still to be scaled by `h`).
pub fn grad_single<B: Backend>(
    be: &B,
    kind: StepSettings,
    l: Layer<'_, B>,
    y: &B::Buf,
    d: Dims,
    g: &B::Buf,
) -> Result<LayerGrads<B::Buf>> {
    match kind.layer {
        StepType::Resnet => explicit_vjp(be, l.op, None, y, d, l.norm, kind.act, g),
        StepType::Antisymmetric => {
            explicit_vjp(be, l.op, Some(kind.gamma), y, d, l.norm, kind.act, g)
        }
        _ => sym_grad(be, l, y, d, kind.act, g),
    }
}

/// Inverse leapfrog: `y_{j-1} = 2 y_j - y_{j+1} + h^2 f(y_j)`.
pub fn leapfrog_inverse<B: Backend>(
    be: &B,
    kind: StepSettings,
    l: Layer<'_, B>,
    y: &B::Buf,
    next: &B::Buf,
    d: Dims,
) -> Result<B::Buf> {
    let mut out = step_back(be, &HYPERBOLIC, kind, &[l], &[y], &[next], d)?;
    Ok(out.remove(0))
}

/// [`leapfrog_inverse`] together with the VJP of `f` at `y` for `g` (as [`sym_grad`]): the
/// leapfrog backward's two uses of `Y_j`, `(Y_{j-1}, vjp)`, each bit for bit as alone.
#[allow(clippy::too_many_arguments)]
pub fn leapfrog_inverse_with_grad<B: Backend>(
    be: &B,
    kind: StepSettings,
    l: Layer<'_, B>,
    y: &B::Buf,
    next: &B::Buf,
    d: Dims,
    g: &B::Buf,
) -> Result<(B::Buf, LayerGrads<B::Buf>)> {
    // The rule's update read backwards, as `rule::step_back` does: `Prev` is the later state.
    let u = &HYPERBOLIC.updates[0];
    let terms = u
        .terms
        .iter()
        .map(|&(a, at)| match at {
            rule::At::Cur(0) => Ok((a, y)),
            rule::At::Prev(0) => Ok((a, next)),
            _ => Err(crate::Error::Other(
                "leapfrog rule reads another part".into(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    sym_with_grad(be, l, &terms, u.coef(kind.h), y, d, kind.act, g)
}

/// [`f_only`] together with the VJP of `f` at `y` for `g` (the fixed-point rebuild).
pub fn f_with_grad<B: Backend>(
    be: &B,
    l: Layer<'_, B>,
    y: &B::Buf,
    d: Dims,
    act: Activation,
    g: &B::Buf,
) -> Result<(B::Buf, LayerGrads<B::Buf>)> {
    sym_with_grad(be, l, &[], 1.0, y, d, act, g)
}

/// Verlet step on halves `(a, b)`: `a += h f(b; K1)`, then `b -= h f(a; K2)`.
pub fn verlet_forward<B: Backend>(
    be: &B,
    kind: StepSettings,
    l1: Layer<'_, B>,
    l2: Layer<'_, B>,
    a: &B::Buf,
    b: &B::Buf,
    d: Dims,
) -> Result<(B::Buf, B::Buf)> {
    let mut out = step(be, &HAMILTONIAN, kind, &[l1, l2], None, &[a, b], None, d)?;
    let b1 = out.remove(1);
    Ok((out.remove(0), b1))
}

/// Inverse Verlet step: `b -= -h f(a; K2)` (i.e. `b += h f(a)`), then `a -= h f(b; K1)`.
pub fn verlet_inverse<B: Backend>(
    be: &B,
    kind: StepSettings,
    l1: Layer<'_, B>,
    l2: Layer<'_, B>,
    a1: &B::Buf,
    b1: &B::Buf,
    d: Dims,
) -> Result<(B::Buf, B::Buf)> {
    let mut out = step_back(be, &HAMILTONIAN, kind, &[l1, l2], &[], &[a1, b1], d)?;
    let b = out.remove(1);
    Ok((out.remove(0), b))
}

/// `f(y)` alone (for the fixed-point updates, which add `round(2^S coef f)` in integers).
pub fn f_only<B: Backend>(
    be: &B,
    l: Layer<'_, B>,
    y: &B::Buf,
    d: Dims,
    act: Activation,
) -> Result<B::Buf> {
    sym(be, l, &[], 1.0, y, d, act)
}

/// One IMEX step: the explicit parabolic step, then the exact implicit diffusion solve,
/// `(I + h L)^{-1} (y + h f(y))`, with `diff` the per-channel `d` of `a_c = d_c^2`.
pub fn imex_forward<B: Backend>(
    be: &B,
    kind: StepSettings,
    l: Layer<'_, B>,
    diff: &B::Buf,
    y: &B::Buf,
    d: Dims,
) -> Result<B::Buf> {
    let mut out = step(be, &IMEX, kind, &[l], Some(diff), &[y], None, d)?;
    Ok(out.remove(0))
}
