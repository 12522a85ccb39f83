//! The discretize-optimize gradient: reverse-mode through the accepted steps of a solve, the
//! step sizes held fixed (they are outputs of the controller, not differentiated, as in ANODE).

use super::integrate::Step;
use super::space::{RhsVjp, Space};
use super::tableau::Tableau;
use crate::error::Result;

/// The cotangent of an interval's input and of its parameters.
pub struct IntervalGrad<V> {
    pub dy0: V,
    /// One per parameter of the right-hand side, or empty if it has none.
    pub dparams: Vec<V>,
    /// VJP evaluations.
    pub nfe: usize,
}

/// Adds `d` into the running sums `acc` (set on first use).
pub(crate) fn accumulate<S: Space>(s: &S, acc: &mut Vec<S::V>, d: Vec<S::V>) -> Result<()> {
    if acc.is_empty() {
        *acc = d;
        return Ok(());
    }
    for (a, d) in acc.iter_mut().zip(&d) {
        *a = s.lincomb(&[(1.0, &*a), (1.0, d)])?;
    }
    Ok(())
}

/// Back-propagates `dy1` through `steps` (as recorded by [`super::solve`] with `tab`).
pub fn backprop<S: Space, R: RhsVjp<S>>(
    s: &S,
    rhs: &mut R,
    tab: &Tableau,
    steps: &[Step<S::V>],
    dy1: S::V,
) -> Result<IntervalGrad<S::V>> {
    let mut dy = dy1;
    let mut dparams: Vec<S::V> = Vec::new();
    let mut nfe = 0;
    for step in steps.iter().rev() {
        let n = step.stages.len();
        // dys[i] = (dk_i)^T dF/dy at stage i, built from the last stage down: the cotangent of
        // k_i is dt b_i dy plus dt a_mi dys[m] of every later stage m that reads k_i.
        let mut dys: Vec<Option<S::V>> = (0..n).map(|_| None).collect();
        for i in (0..n).rev() {
            let mut terms: Vec<(f64, &S::V)> = Vec::new();
            if tab.b[i] != 0.0 {
                terms.push((step.dt * tab.b[i], &dy));
            }
            for (m, d) in dys.iter().enumerate().skip(i + 1) {
                if let Some(d) = d {
                    let a = tab.a[m][i];
                    if a != 0.0 {
                        terms.push((step.dt * a, d));
                    }
                }
            }
            if terms.is_empty() {
                continue;
            }
            let cot = s.lincomb(&terms)?;
            let (dyi, dp) = rhs.vjp(s, step.t + tab.c[i] * step.dt, &step.stages[i], &cot)?;
            nfe += 1;
            accumulate(s, &mut dparams, dp)?;
            dys[i] = Some(dyi);
        }
        let mut terms = vec![(1.0, &dy)];
        terms.extend(dys.iter().flatten().map(|d| (1.0, d)));
        dy = s.lincomb(&terms)?;
    }
    Ok(IntervalGrad {
        dy0: dy,
        dparams,
        nfe,
    })
}
