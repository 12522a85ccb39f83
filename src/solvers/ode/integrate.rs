//! The forward solve of one weight interval: fixed steps (euler, rk4) or dopri5 with
//! torchdiffeq's controller and Hairer-Norsett-Wanner's first step (SPEC section 10).

use super::space::{Rhs, Space, Tol};
use super::tableau::Tableau;
use super::{OdeError, OdeOptions, Solver};
use crate::error::Result;

/// One accepted step, as the discretize gradient needs it.
pub struct Step<V> {
    pub t: f64,
    pub dt: f64,
    /// The stage inputs `Y_i` of the stages that the solution uses (`Y_0 = y0`).
    pub stages: Vec<V>,
}

/// The end state of an interval, its accepted steps (when recorded) and its cost.
pub struct Solution<V> {
    pub y: V,
    pub steps: Vec<Step<V>>,
    /// `(t, dt)` of every accepted step, recorded or not: enough to [`replay`] the solve.
    pub grid: Vec<(f64, f64)>,
    /// Right-hand-side evaluations.
    pub nfe: usize,
    pub accepted: usize,
    pub rejected: usize,
}

/// Solves `dy/dt = F(t, y)` from `t0` to `t1 > t0`; `record` keeps every accepted step's stage
/// inputs for [`super::backprop`].
pub fn solve<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    y0: &S::V,
    t0: f64,
    t1: f64,
    opts: &OdeOptions,
    record: bool,
) -> Result<Solution<S::V>> {
    opts.validate()?;
    if let Some(n) = opts.plan_steps.filter(|_| opts.solver.adaptive()) {
        let dt = (t1 - t0) / n as f64;
        let grid: Vec<(f64, f64)> = (0..n).map(|i| (t0 + i as f64 * dt, dt)).collect();
        return replay(s, rhs, opts.solver.tableau(), y0, &grid, record);
    }
    match opts.solver {
        Solver::Euler | Solver::Rk4 => fixed(s, rhs, y0, t0, t1, opts, record),
        Solver::Dopri5 => adaptive(s, rhs, y0, t0, t1, opts, record),
    }
}

fn fixed<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    y0: &S::V,
    t0: f64,
    t1: f64,
    opts: &OdeOptions,
    record: bool,
) -> Result<Solution<S::V>> {
    let tab = opts.solver.tableau();
    let n = opts.substeps;
    let dt = (t1 - t0) / n as f64;
    let mut y = s.copy(y0)?;
    let mut steps = Vec::new();
    let mut nfe = 0;
    for m in 0..n {
        let t = t0 + m as f64 * dt;
        let (y1, stages) = fixed_step(s, rhs, tab, &y, t, dt)?;
        nfe += tab.stages();
        if record {
            steps.push(Step { t, dt, stages });
        }
        y = y1;
    }
    // One reduction per interval: a fixed-step solve has no error norm that would see a NaN.
    let tol = opts.tol();
    if !s.norm(&y, &y, &y, tol)?.is_finite() {
        return Err(OdeError::NonFinite { t: t1 }.into());
    }
    Ok(Solution {
        y,
        steps,
        grid: (0..n).map(|m| (t0 + m as f64 * dt, dt)).collect(),
        nfe,
        accepted: n,
        rejected: 0,
    })
}

/// One step of a fixed-step method; the last stage runs fused with the solution's combination.
/// Returns `y1` and the stage inputs (the first is a copy of `y`).
fn fixed_step<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    tab: &Tableau,
    y: &S::V,
    t: f64,
    dt: f64,
) -> Result<(S::V, Vec<S::V>)> {
    let last = tab.stages() - 1;
    let mut stages = vec![s.copy(y)?];
    let mut ks: Vec<S::V> = Vec::with_capacity(last);
    for i in 0..last {
        ks.push(rhs.eval(s, t + tab.c[i] * dt, &stages[i])?);
        let mut terms = vec![(1.0, y)];
        terms.extend(
            tab.a[i + 1]
                .iter()
                .zip(&ks)
                .filter(|(a, _)| **a != 0.0)
                .map(|(a, k)| (dt * a, k)),
        );
        stages.push(s.lincomb(&terms)?);
    }
    let mut terms = vec![(1.0, y)];
    terms.extend(
        tab.b
            .iter()
            .zip(&ks)
            .filter(|(b, _)| **b != 0.0)
            .map(|(b, k)| (dt * b, k)),
    );
    // With one stage (euler) pass `y` itself, so that the right-hand side sees `y + c F(y)`.
    let y_last = if last == 0 { y } else { &stages[last] };
    let y1 = rhs.step(s, &terms, dt * tab.b[last], t + tab.c[last] * dt, y_last)?;
    Ok((y1, stages))
}

/// Hairer, Norsett & Wanner's first step (I, II.4) for a method of error order 4, with
/// `scale = atol + rtol |y0|`; one evaluation of `F`.
fn initial_step<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    t0: f64,
    y0: &S::V,
    f0: &S::V,
    tol: Tol,
) -> Result<f64> {
    let d0 = s.norm(y0, y0, y0, tol)?;
    let d1 = s.norm(f0, y0, y0, tol)?;
    if !(d0.is_finite() && d1.is_finite()) {
        return Err(OdeError::NonFinite { t: t0 }.into());
    }
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let y1 = s.lincomb(&[(1.0, y0), (h0, f0)])?;
    let f1 = rhs.eval(s, t0 + h0, &y1)?;
    let df = s.lincomb(&[(1.0, &f1), (-1.0, f0)])?;
    let d2 = s.norm(&df, y0, y0, tol)? / h0;
    let m = d1.max(d2);
    let h1 = if m <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / m).powf(1.0 / 5.0)
    };
    Ok((100.0 * h0).min(h1))
}

/// The controller of SPEC section 10: `dt * min(10, max(dfac, 0.9 r^(-1/5)))`.
pub(crate) fn next_step(dt: f64, r: f64, accepted: bool) -> f64 {
    let dfac = if accepted { 1.0 } else { 0.2 };
    let factor = if r == 0.0 {
        10.0
    } else {
        (0.9 * r.powf(-1.0 / 5.0)).max(dfac).min(10.0)
    };
    dt * factor
}

fn adaptive<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    y0: &S::V,
    t0: f64,
    t1: f64,
    opts: &OdeOptions,
    record: bool,
) -> Result<Solution<S::V>> {
    let tab = opts.solver.tableau();
    let err_w = tab.error.expect("adaptive tableau has error weights");
    let tol = opts.tol();
    let mut y = s.copy(y0)?;
    let mut f = rhs.eval(s, t0, &y)?;
    let mut dt = initial_step(s, rhs, t0, &y, &f, tol)?;
    let mut nfe = 2;
    let (mut t, mut accepted, mut rejected) = (t0, 0usize, 0usize);
    let mut steps = Vec::new();
    let mut grid = Vec::new();
    let n = tab.stages();
    while t < t1 {
        if accepted + rejected >= opts.max_steps {
            return Err(OdeError::StepBudget {
                steps: opts.max_steps,
                t,
            }
            .into());
        }
        let last = dt >= t1 - t;
        let h = if last { t1 - t } else { dt };
        if h.is_nan() || h <= 0.0 || t + h == t {
            return Err(OdeError::StepUnderflow { dt: h, t }.into());
        }
        // Stage inputs Y_1.. and derivatives k_1..; k_0 = f (FSAL).
        let mut stages: Vec<S::V> = Vec::with_capacity(n);
        let mut ks: Vec<S::V> = Vec::with_capacity(n - 1);
        for i in 1..n {
            let yi = stage_input(s, tab.a[i], h, &y, &f, &ks)?;
            ks.push(rhs.eval(s, t + tab.c[i] * h, &yi)?);
            stages.push(yi);
        }
        nfe += n - 1;
        // FSAL: the last stage input is y1 and its derivative the next step's first.
        let y1 = stages.pop().expect("dopri5 has stages");
        let f1 = ks.pop().expect("dopri5 has stages");
        let mut terms = Vec::new();
        for (j, e) in err_w.iter().enumerate() {
            if *e != 0.0 {
                let k = if j == 0 {
                    &f
                } else if j == n - 1 {
                    &f1
                } else {
                    &ks[j - 1]
                };
                terms.push((h * e, k));
            }
        }
        let err = s.lincomb(&terms)?;
        let r = s.norm(&err, &y, &y1, tol)?;
        if !r.is_finite() {
            return Err(OdeError::NonFinite { t }.into());
        }
        let ok = r <= 1.0;
        if ok {
            if record {
                stages.insert(0, s.copy(&y)?);
                steps.push(Step { t, dt: h, stages });
            }
            grid.push((t, h));
            t = if last { t1 } else { t + h };
            y = y1;
            f = f1;
            accepted += 1;
        } else {
            rejected += 1;
        }
        dt = next_step(h, r, ok);
    }
    Ok(Solution {
        y,
        steps,
        grid,
        nfe,
        accepted,
        rejected,
    })
}

/// `y + h sum_j a_j k_j` over the nonzero `a_j`, with `k_0 = f` and `k_j = ks[j - 1]`: one
/// function, so that a replayed step adds the same terms in the same order as the solve did.
fn stage_input<S: Space>(
    s: &S,
    a: &[f64],
    h: f64,
    y: &S::V,
    f: &S::V,
    ks: &[S::V],
) -> Result<S::V> {
    let mut terms = vec![(1.0, y)];
    for (j, a) in a.iter().enumerate() {
        if *a != 0.0 {
            terms.push((h * a, if j == 0 { f } else { &ks[j - 1] }));
        }
    }
    s.lincomb(&terms)
}

/// Re-runs an adaptive solve's accepted steps `grid` (from [`Solution::grid`]) without error
/// control: the same end state bit for bit, at one evaluation per stage that the solution reads
/// (the reversible policy's recomputation, and the map whose exact gradient `backprop` is).
pub fn replay<S: Space, R: Rhs<S>>(
    s: &S,
    rhs: &mut R,
    tab: &Tableau,
    y0: &S::V,
    grid: &[(f64, f64)],
    record: bool,
) -> Result<Solution<S::V>> {
    // With FSAL the solution's weights are the last row of `a`: that stage is not evaluated.
    let n = tab.stages() - usize::from(tab.fsal);
    let mut y = s.copy(y0)?;
    let mut steps = Vec::new();
    let mut nfe = 0;
    for &(t, h) in grid {
        if !tab.fsal {
            let (y1, stages) = fixed_step(s, rhs, tab, &y, t, h)?;
            nfe += tab.stages();
            if record {
                steps.push(Step { t, dt: h, stages });
            }
            y = y1;
            continue;
        }
        let f = rhs.eval(s, t, &y)?;
        let mut stages: Vec<S::V> = Vec::with_capacity(n);
        let mut ks: Vec<S::V> = Vec::with_capacity(n);
        for i in 1..n {
            let yi = stage_input(s, tab.a[i], h, &y, &f, &ks)?;
            ks.push(rhs.eval(s, t + tab.c[i] * h, &yi)?);
            stages.push(yi);
        }
        nfe += n;
        let y1 = stage_input(s, tab.a[n], h, &y, &f, &ks)?;
        if record {
            stages.insert(0, std::mem::replace(&mut y, y1));
            steps.push(Step { t, dt: h, stages });
        } else {
            y = y1;
        }
    }
    Ok(Solution {
        y,
        steps,
        grid: grid.to_vec(),
        nfe,
        accepted: grid.len(),
        rejected: 0,
    })
}
