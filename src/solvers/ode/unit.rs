//! The right-hand side of an `ode` unit on one weight interval (SPEC section 10): the `F` of the
//! step type named by `rhs`, through that step type's own (fused) ops, so that `euler` with one
//! substep is that step, bit for bit.

use super::space::{BackendSpace, Rhs, RhsVjp};
use crate::backend::Backend;
use crate::config::StepType;
use crate::error::{Error, Result};
use crate::operators::explicit_f;
use crate::steps::{f_only, forward_single, grad_single, Layer, StepSettings};
use crate::tensor::Dims;

/// `F_j` of one weight interval: the step type `kind.layer` (parabolic, resnet or
/// antisymmetric) with the interval's parameters.
pub struct UnitRhs<'a, B: Backend> {
    pub kind: StepSettings,
    pub layer: Layer<'a, B>,
    pub dims: Dims,
}

impl<'a, B: Backend> UnitRhs<'a, B> {
    pub fn new(kind: StepSettings, layer: Layer<'a, B>, dims: Dims) -> Result<Self> {
        match kind.layer {
            StepType::Parabolic | StepType::Resnet | StepType::Antisymmetric => {
                Ok(UnitRhs { kind, layer, dims })
            }
            other => Err(Error::Config(format!(
                "`rhs` must be parabolic, resnet or antisymmetric, not {}",
                other.name()
            ))),
        }
    }

    /// `y + c F(y)`: the step type's own step with step size `c`.
    fn own_step(&self, be: &B, c: f64, y: &B::Buf) -> Result<B::Buf> {
        let kind = StepSettings { h: c, ..self.kind };
        forward_single(be, kind, self.layer, y, None, self.dims)
    }
}

impl<B: Backend> Rhs<BackendSpace<'_, B>> for UnitRhs<'_, B> {
    fn eval(&mut self, s: &BackendSpace<'_, B>, _t: f64, y: &B::Buf) -> Result<B::Buf> {
        let (be, k) = (s.0, self.kind);
        if k.layer == StepType::Parabolic {
            return f_only(be, self.layer, y, self.dims, k.act);
        }
        let antisym = (k.layer == StepType::Antisymmetric).then_some(k.gamma);
        explicit_f(
            be,
            self.layer.op,
            antisym,
            y,
            self.dims,
            self.layer.norm,
            k.act,
        )
    }

    fn step(
        &mut self,
        s: &BackendSpace<'_, B>,
        terms: &[(f64, &B::Buf)],
        c: f64,
        t: f64,
        y: &B::Buf,
    ) -> Result<B::Buf> {
        // `y + c F(y)` is the step type itself: its fused kernel, bit for bit.
        if let [(a, x)] = terms {
            if *a == 1.0 && std::ptr::eq(*x, y) {
                return self.own_step(s.0, c, y);
            }
        }
        let k = self.eval(s, t, y)?;
        let mut all = terms.to_vec();
        all.push((c, &k));
        s.0.lincomb(&all)
    }
}

impl<B: Backend> RhsVjp<BackendSpace<'_, B>> for UnitRhs<'_, B> {
    fn vjp(
        &mut self,
        s: &BackendSpace<'_, B>,
        _t: f64,
        y: &B::Buf,
        a: &B::Buf,
    ) -> Result<(B::Buf, Vec<B::Buf>)> {
        let g = grad_single(s.0, self.kind, self.layer, y, self.dims, a)?;
        let mut params = g.dop;
        params.extend(g.dscale);
        params.push(g.dshift);
        Ok((g.dy, params))
    }
}
