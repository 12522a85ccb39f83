//! The ODE solvers of SPEC section 10 on problems with known solutions, their orders of
//! convergence, the controller's bookkeeping, and both gradients against finite differences.

use pdenet::backend::reference::Reference;
use pdenet::solvers::ode::{
    adjoint, backprop, solve, BackendSpace, OdeOptions, Rhs, RhsVjp, Solver, Space,
};
use pdenet::Result;

type S<'a> = BackendSpace<'a, Reference>;

fn opts(solver: Solver, substeps: usize) -> OdeOptions {
    OdeOptions {
        solver,
        substeps,
        ..OdeOptions::default()
    }
}

/// `y' = A y` with a dense `A` (row-major `n x n`).
struct Linear {
    a: Vec<f64>,
    n: usize,
}

impl Rhs<S<'_>> for Linear {
    fn eval(&mut self, _: &S<'_>, _t: f64, y: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(matvec(&self.a, self.n, y))
    }
}

fn matvec(a: &[f64], n: usize, y: &[f64]) -> Vec<f64> {
    let batch = y.len() / n;
    let mut out = vec![0.0; y.len()];
    for s in 0..batch {
        for i in 0..n {
            out[s * n + i] = (0..n).map(|j| a[i * n + j] * y[s * n + j]).sum();
        }
    }
    out
}

/// `exp(A t) y` by scaling and squaring of a Taylor series (exact to rounding for small A).
fn expm_apply(a: &[f64], n: usize, t: f64, y: &[f64]) -> Vec<f64> {
    let squarings = 10;
    let scale = t / f64::from(1u32 << squarings);
    // E = sum_k (A scale)^k / k!
    let mut e = vec![0.0; n * n];
    let mut term = vec![0.0; n * n];
    for i in 0..n {
        e[i * n + i] = 1.0;
        term[i * n + i] = 1.0;
    }
    for k in 1..30 {
        let mut next = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                next[i * n + j] =
                    (0..n).map(|l| term[i * n + l] * a[l * n + j]).sum::<f64>() * scale / k as f64;
            }
        }
        term = next;
        for (e, t) in e.iter_mut().zip(&term) {
            *e += t;
        }
    }
    for _ in 0..squarings {
        let mut sq = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                sq[i * n + j] = (0..n).map(|l| e[i * n + l] * e[l * n + j]).sum();
            }
        }
        e = sq;
    }
    matvec(&e, n, y)
}

fn antisymmetric(n: usize) -> Vec<f64> {
    let mut a = vec![0.0; n * n];
    let mut v = 0.37;
    for i in 0..n {
        for j in (i + 1)..n {
            v = (v * 7.13 + 0.29) % 2.0 - 1.0;
            a[i * n + j] = v;
            a[j * n + i] = -v;
        }
    }
    a
}

fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn antisymmetric_linear_system_matches_the_matrix_exponential() {
    let n = 4;
    let a = antisymmetric(n);
    let y0 = vec![1.0, -0.5, 0.25, 2.0, 0.3, 0.1, -1.0, 0.7];
    let exact = expm_apply(&a, n, 2.0, &y0);
    let s = BackendSpace(&Reference);
    // (solver, substeps, bound): bounds a few times above what each method reaches here.
    for (solver, sub, bound) in [
        (Solver::Euler, 2000, 3e-2),
        (Solver::Rk4, 200, 5e-7),
        (Solver::Dopri5, 1, 10.0 * (1e-4 + 1e-3 * 2.5)),
    ] {
        let sol = solve(
            &s,
            &mut Linear { a: a.clone(), n },
            &y0,
            0.0,
            2.0,
            &opts(solver, sub),
            false,
        )
        .unwrap();
        let e = max_err(&sol.y, &exact);
        assert!(e < bound, "{solver:?}: error {e:e} above {bound:e}");
        // The flow of an antisymmetric system keeps the norm; rk4 keeps it to its accuracy.
        if solver == Solver::Rk4 {
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
            assert!((norm(&sol.y) - norm(&y0)).abs() < 1e-6);
        }
    }
}

/// The log-log slope of the error against the step size: 1 for euler, 4 for rk4 (+-0.2).
#[test]
fn fixed_step_solvers_converge_at_their_order() {
    let n = 4;
    let a = antisymmetric(n);
    let y0 = vec![1.0, -0.5, 0.25, 2.0];
    let exact = expm_apply(&a, n, 1.0, &y0);
    let s = BackendSpace(&Reference);
    for (solver, order, subs) in [
        (Solver::Euler, 1.0, [64, 128, 256, 512]),
        (Solver::Rk4, 4.0, [4, 8, 16, 32]),
    ] {
        let errs: Vec<f64> = subs
            .iter()
            .map(|&m| {
                let sol = solve(
                    &s,
                    &mut Linear { a: a.clone(), n },
                    &y0,
                    0.0,
                    1.0,
                    &opts(solver, m),
                    false,
                )
                .unwrap();
                max_err(&sol.y, &exact)
            })
            .collect();
        let slope = (errs[0].ln() - errs[3].ln()) / (8f64).ln();
        assert!(
            (slope - order).abs() < 0.2,
            "{solver:?}: slope {slope} (errors {errs:?})"
        );
    }
}

/// `y' = cos(t) y`, `y = y0 exp(sin t)`: a time-dependent right-hand side.
struct CosGrowth;
impl Rhs<S<'_>> for CosGrowth {
    fn eval(&mut self, _: &S<'_>, t: f64, y: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(y.iter().map(|v| t.cos() * v).collect())
    }
}

/// `y' = -y`.
struct Decay;
impl Rhs<S<'_>> for Decay {
    fn eval(&mut self, _: &S<'_>, _t: f64, y: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(y.iter().map(|v| -v).collect())
    }
}

#[test]
fn dopri5_error_is_below_the_tolerance_scale_and_counts_its_evaluations() {
    let s = BackendSpace(&Reference);
    let y0 = vec![1.0, 0.5, -2.0];
    for (rtol, atol) in [(1e-3, 1e-4), (1e-6, 1e-8), (1e-9, 1e-11)] {
        let o = OdeOptions {
            rtol,
            atol,
            ..OdeOptions::default()
        };
        let sol = solve(&s, &mut CosGrowth, &y0, 0.0, 3.0, &o, false).unwrap();
        let exact: Vec<f64> = y0.iter().map(|v| v * 3f64.sin().exp()).collect();
        let scale = exact
            .iter()
            .map(|v| atol + rtol * v.abs())
            .fold(0.0, f64::max);
        let e = max_err(&sol.y, &exact);
        assert!(
            e < 10.0 * scale,
            "rtol {rtol}: error {e:e}, scale {scale:e}"
        );
        // f0 and the first-step probe, then six evaluations per attempt (FSAL).
        assert_eq!(sol.nfe, 2 + 6 * (sol.accepted + sol.rejected));
        let sol = solve(&s, &mut Decay, &y0, 0.0, 2.0, &o, false).unwrap();
        let exact: Vec<f64> = y0.iter().map(|v| v * (-2f64).exp()).collect();
        assert!(max_err(&sol.y, &exact) < 10.0 * (atol + rtol * 2.0));
    }
    // Tighter tolerances take more steps.
    let steps = |rtol: f64| {
        let o = OdeOptions {
            rtol,
            atol: rtol * 1e-2,
            ..OdeOptions::default()
        };
        solve(&s, &mut CosGrowth, &y0, 0.0, 3.0, &o, false)
            .unwrap()
            .accepted
    };
    assert!(steps(1e-3) < steps(1e-6) && steps(1e-6) < steps(1e-9));
}

/// `F(y) = tanh(W y + b)` on a batch of states of width n: parameters `[W, b]`.
struct Tanh {
    w: Vec<f64>,
    b: Vec<f64>,
    n: usize,
}

impl Tanh {
    fn pre(&self, y: &[f64]) -> Vec<f64> {
        let mut z = matvec(&self.w, self.n, y);
        for (i, z) in z.iter_mut().enumerate() {
            *z += self.b[i % self.n];
        }
        z
    }
}

impl Rhs<S<'_>> for Tanh {
    fn eval(&mut self, _: &S<'_>, _t: f64, y: &Vec<f64>) -> Result<Vec<f64>> {
        Ok(self.pre(y).iter().map(|z| z.tanh()).collect())
    }
}

impl RhsVjp<S<'_>> for Tanh {
    fn vjp(
        &mut self,
        _: &S<'_>,
        _t: f64,
        y: &Vec<f64>,
        a: &Vec<f64>,
    ) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let n = self.n;
        let g: Vec<f64> = self
            .pre(y)
            .iter()
            .zip(a)
            .map(|(z, a)| a * (1.0 - z.tanh().powi(2)))
            .collect();
        let mut dy = vec![0.0; y.len()];
        let mut dw = vec![0.0; n * n];
        let mut db = vec![0.0; n];
        for s in 0..y.len() / n {
            for i in 0..n {
                let gi = g[s * n + i];
                db[i] += gi;
                for j in 0..n {
                    dy[s * n + j] += self.w[i * n + j] * gi;
                    dw[i * n + j] += gi * y[s * n + j];
                }
            }
        }
        Ok((dy, vec![dw, db]))
    }
}

fn tanh_problem() -> (Tanh, Vec<f64>, Vec<f64>) {
    let n = 3;
    let w = vec![0.5, -1.2, 0.3, 0.8, 0.1, -0.7, -0.4, 0.9, 0.2];
    let b = vec![0.1, -0.2, 0.05];
    let y0 = vec![0.3, -0.6, 0.9, -0.1, 0.4, 0.2];
    let c = vec![1.0, -0.5, 0.25, 0.7, 0.3, -0.9]; // loss = c . y(T)
    (Tanh { w, b, n }, y0, c)
}

fn loss(rhs: &mut Tanh, y0: &[f64], c: &[f64], o: &OdeOptions) -> f64 {
    let s = BackendSpace(&Reference);
    let sol = solve(&s, rhs, &y0.to_vec(), 0.0, 1.5, o, false).unwrap();
    sol.y.iter().zip(c).map(|(y, c)| y * c).sum()
}

/// Central differences of the loss in every input and parameter entry.
fn finite_differences(o: &OdeOptions) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (rhs, y0, c) = tanh_problem();
    let eps = 1e-6;
    let fd = |f: &dyn Fn(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
    let dy0 = (0..y0.len())
        .map(|i| {
            fd(&|e| {
                let mut y = y0.clone();
                y[i] += e;
                loss(
                    &mut Tanh {
                        w: rhs.w.clone(),
                        b: rhs.b.clone(),
                        n: rhs.n,
                    },
                    &y,
                    &c,
                    o,
                )
            })
        })
        .collect();
    let dw = (0..rhs.w.len())
        .map(|i| {
            fd(&|e| {
                let mut w = rhs.w.clone();
                w[i] += e;
                loss(
                    &mut Tanh {
                        w,
                        b: rhs.b.clone(),
                        n: rhs.n,
                    },
                    &y0,
                    &c,
                    o,
                )
            })
        })
        .collect();
    let db = (0..rhs.b.len())
        .map(|i| {
            fd(&|e| {
                let mut b = rhs.b.clone();
                b[i] += e;
                loss(
                    &mut Tanh {
                        w: rhs.w.clone(),
                        b,
                        n: rhs.n,
                    },
                    &y0,
                    &c,
                    o,
                )
            })
        })
        .collect();
    (dy0, dw, db)
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max);
    max_err(a, b) / scale
}

#[test]
fn discretize_gradients_match_finite_differences() {
    let s = BackendSpace(&Reference);
    for o in [
        opts(Solver::Euler, 7),
        opts(Solver::Rk4, 3),
        OdeOptions {
            rtol: 1e-6,
            atol: 1e-8,
            ..OdeOptions::default()
        },
    ] {
        let (mut rhs, y0, c) = tanh_problem();
        let sol = solve(&s, &mut rhs, &y0, 0.0, 1.5, &o, true).unwrap();
        let g = backprop(&s, &mut rhs, o.solver.tableau(), &sol.steps, c.clone()).unwrap();
        let (fy, fw, fb) = finite_differences(&o);
        // Fixed steps: the computed map exactly. dopri5: its step sizes move with the weights,
        // which the discretize gradient holds fixed; that moves the output by about the local
        // error per step, a few times rtol (1.2e-4 measured at rtol 1e-4).
        let bound = if o.solver.adaptive() {
            10.0 * o.rtol
        } else {
            1e-7
        };
        for (name, got, want) in [
            ("y0", &g.dy0, &fy),
            ("W", &g.dparams[0], &fw),
            ("b", &g.dparams[1], &fb),
        ] {
            let e = rel_err(got, want);
            assert!(e < bound, "{:?} d{name}: relative error {e:e}", o.solver);
        }
        // One VJP per stage that the solution reads (dopri5: six of its seven).
        let per_step = if o.solver == Solver::Dopri5 {
            6
        } else {
            o.solver.tableau().stages()
        };
        assert_eq!(g.nfe, per_step * sol.steps.len());
    }
}

#[test]
fn adjoint_gradients_converge_to_the_discretize_gradient_as_rtol_falls() {
    let s = BackendSpace(&Reference);
    // The judge: finite differences of an rk4 solve fine enough to be the exact flow.
    let (fy, fw, fb) = finite_differences(&opts(Solver::Rk4, 400));
    let mut errs = Vec::new();
    for rtol in [1e-2, 1e-4, 1e-6, 1e-8] {
        let o = OdeOptions {
            rtol,
            atol: rtol * 1e-2,
            ..OdeOptions::default()
        };
        let (mut rhs, y0, c) = tanh_problem();
        let sol = solve(&s, &mut rhs, &y0, 0.0, 1.5, &o, false).unwrap();
        let zeros = vec![vec![0.0; rhs.w.len()], vec![0.0; rhs.b.len()]];
        let (g, y0_rebuilt) = adjoint(&s, &mut rhs, &sol.y, &c, zeros, 0.0, 1.5, &o).unwrap();
        let e = rel_err(&g.dy0, &fy)
            .max(rel_err(&g.dparams[0], &fw))
            .max(rel_err(&g.dparams[1], &fb));
        // The backward solve rebuilds the input to its tolerance.
        assert!(
            max_err(&y0_rebuilt, &y0) < 100.0 * rtol,
            "rtol {rtol}: rebuilt input off"
        );
        assert!(g.nfe > 0);
        errs.push(e);
    }
    assert!(errs[3] < 1e-6, "adjoint error at rtol 1e-8: {errs:?}");
    assert!(
        errs.windows(2).all(|w| w[1] < w[0]),
        "not falling with rtol: {errs:?}"
    );
}

#[test]
fn a_solve_that_needs_more_steps_than_its_budget_stops_with_the_time_reached() {
    let s = BackendSpace(&Reference);
    let o = OdeOptions {
        max_steps: 5,
        rtol: 1e-9,
        atol: 1e-12,
        ..OdeOptions::default()
    };
    let err = solve(&s, &mut CosGrowth, &vec![1.0], 0.0, 50.0, &o, false)
        .err()
        .expect("budget exceeded");
    let msg = err.to_string();
    assert!(
        msg.contains("budget of 5 steps") && msg.contains("t = "),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn nan_in_the_state_and_bad_tolerances_are_errors() {
    let s = BackendSpace(&Reference);
    let err = solve(
        &s,
        &mut Decay,
        &vec![1.0, f64::NAN],
        0.0,
        1.0,
        &OdeOptions::default(),
        false,
    )
    .err()
    .expect("nan");
    assert!(err.to_string().contains("non-finite"), "{err}");
    for (rtol, atol) in [(0.0, 1e-4), (-1e-3, 1e-4), (1e-3, 0.0), (f64::NAN, 1e-4)] {
        let o = OdeOptions {
            rtol,
            atol,
            ..OdeOptions::default()
        };
        let err = solve(&s, &mut Decay, &vec![1.0], 0.0, 1.0, &o, false)
            .err()
            .expect("bad tolerance");
        assert!(err.to_string().contains("tol"), "{err}");
    }
    let o = OdeOptions {
        substeps: 0,
        solver: Solver::Rk4,
        ..OdeOptions::default()
    };
    assert!(solve(&s, &mut Decay, &vec![1.0], 0.0, 1.0, &o, false).is_err());
}

/// Euler with one substep is `y + h F(y)` computed by the right-hand side's own step (the
/// fused kernel of the step type named by `rhs`), so the unit equals that step bit for bit.
#[test]
fn euler_with_one_substep_is_the_right_hand_sides_own_step() {
    struct Marked;
    impl Rhs<S<'_>> for Marked {
        fn eval(&mut self, _: &S<'_>, _t: f64, y: &Vec<f64>) -> Result<Vec<f64>> {
            Ok(y.clone())
        }
        fn step(
            &mut self,
            _: &S<'_>,
            terms: &[(f64, &Vec<f64>)],
            c: f64,
            _t: f64,
            y: &Vec<f64>,
        ) -> Result<Vec<f64>> {
            assert_eq!(terms.len(), 1);
            assert_eq!(terms[0].0, 1.0);
            Ok(y.iter().map(|v| v + c * v + 1e-300).collect())
        }
    }
    let s = BackendSpace(&Reference);
    let sol = solve(
        &s,
        &mut Marked,
        &vec![2.0],
        0.0,
        0.5,
        &opts(Solver::Euler, 1),
        false,
    )
    .unwrap();
    assert_eq!(sol.y, vec![2.0 + 0.5 * 2.0 + 1e-300]);
    assert_eq!(sol.nfe, 1);
    let _ = s.copy(&sol.y).unwrap();
}
