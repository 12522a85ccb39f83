//! The optimize-discretize gradient: the continuous adjoint of one interval, solved backwards
//! with the forward solver and tolerances while `y(t)` is rebuilt alongside (torchdiffeq's
//! `odeint_adjoint`). In reversed time `tau = t1 - t` the augmented state `z = (y, a, g)` obeys
//! `dy/dtau = -F`, `da/dtau = a^T dF/dy`, `dg/dtau = a^T dF/dtheta`, from `(y1, dy1, 0)`.

use super::backprop::IntervalGrad;
use super::integrate::solve;
use super::space::{rms, Rhs, RhsVjp, Space, Tol};
use super::OdeOptions;
use crate::error::{Error, Result};

/// The augmented state of the adjoint solve.
pub struct Aug<V> {
    pub y: V,
    pub a: V,
    pub g: Vec<V>,
}

/// Augmented states over an inner space. The controller's norm is torchdiffeq's default for the
/// adjoint (`_mixed_norm`): the largest of the RMS norms of `y`, of `a` and of each parameter
/// tensor's gradient on its own.
pub struct AugSpace<'a, S: Space>(pub &'a S);

impl<S: Space> Space for AugSpace<'_, S> {
    type V = Aug<S::V>;
    fn lincomb(&self, terms: &[(f64, &Aug<S::V>)]) -> Result<Aug<S::V>> {
        let pick = |f: &dyn Fn(&Aug<S::V>) -> &S::V| -> Result<S::V> {
            let t: Vec<(f64, &S::V)> = terms.iter().map(|(c, z)| (*c, f(z))).collect();
            self.0.lincomb(&t)
        };
        let ng = terms.first().map_or(0, |(_, z)| z.g.len());
        if terms.iter().any(|(_, z)| z.g.len() != ng) {
            return Err(Error::Shape("adjoint: parameter counts differ".into()));
        }
        Ok(Aug {
            y: pick(&|z| &z.y)?,
            a: pick(&|z| &z.a)?,
            g: (0..ng).map(|p| pick(&|z| &z.g[p])).collect::<Result<_>>()?,
        })
    }
    fn scaled_sq(
        &self,
        x: &Aug<S::V>,
        a: &Aug<S::V>,
        b: &Aug<S::V>,
        tol: Tol,
    ) -> Result<(f64, usize)> {
        let parts = [
            self.0.scaled_sq(&x.y, &a.y, &b.y, tol)?,
            self.0.scaled_sq(&x.a, &a.a, &b.a, tol)?,
        ];
        Ok(parts
            .into_iter()
            .chain(self.params_sq(x, a, b, tol)?)
            .fold((0.0, 0), |(s, n), (u, v)| (s + u, n + v)))
    }
    fn norm(&self, x: &Aug<S::V>, a: &Aug<S::V>, b: &Aug<S::V>, tol: Tol) -> Result<f64> {
        let (sy, ny) = self.0.scaled_sq(&x.y, &a.y, &b.y, tol)?;
        let (sa, na) = self.0.scaled_sq(&x.a, &a.a, &b.a, tol)?;
        let params = self.params_sq(x, a, b, tol)?;
        Ok(params
            .into_iter()
            .fold(rms(sy, ny).max(rms(sa, na)), |m, (sg, ng)| {
                m.max(rms(sg, ng))
            }))
    }
}

impl<S: Space> AugSpace<'_, S> {
    fn params_sq(
        &self,
        x: &Aug<S::V>,
        a: &Aug<S::V>,
        b: &Aug<S::V>,
        tol: Tol,
    ) -> Result<Vec<(f64, usize)>> {
        x.g.iter()
            .zip(&a.g)
            .zip(&b.g)
            .map(|((x, a), b)| self.0.scaled_sq(x, a, b, tol))
            .collect()
    }
}

/// The augmented dynamics in reversed time over an inner right-hand side.
struct AugRhs<'r, R> {
    inner: &'r mut R,
    t1: f64,
}

impl<S: Space, R: RhsVjp<S>> Rhs<AugSpace<'_, S>> for AugRhs<'_, R> {
    fn eval(&mut self, s: &AugSpace<'_, S>, tau: f64, z: &Aug<S::V>) -> Result<Aug<S::V>> {
        let (f, dy, dp) = self.inner.eval_vjp(s.0, self.t1 - tau, &z.y, &z.a)?;
        Ok(Aug {
            y: s.0.lincomb(&[(-1.0, &f)])?,
            a: dy,
            g: dp,
        })
    }
}

/// Solves the adjoint of the interval `[t0, t1]` backwards from its end state `y1` and the
/// cotangent `dy1`; `zeros` are the parameters' zero gradients (the shapes of `g`).
#[allow(clippy::too_many_arguments)]
pub fn adjoint<S: Space, R: RhsVjp<S>>(
    s: &S,
    rhs: &mut R,
    y1: &S::V,
    dy1: &S::V,
    zeros: Vec<S::V>,
    t0: f64,
    t1: f64,
    opts: &OdeOptions,
) -> Result<(IntervalGrad<S::V>, S::V)> {
    let aug = AugSpace(s);
    let z1 = Aug {
        y: s.copy(y1)?,
        a: s.copy(dy1)?,
        g: zeros,
    };
    let mut f = AugRhs { inner: rhs, t1 };
    let sol = solve(&aug, &mut f, &z1, 0.0, t1 - t0, opts, false)?;
    let Aug { y, a, g } = sol.y;
    Ok((
        IntervalGrad {
            dy0: a,
            dparams: g,
            nfe: sol.nfe,
        },
        y,
    ))
}
