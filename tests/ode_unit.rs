//! An `ode` unit's right-hand side on the real step ops (SPEC section 10): euler with one
//! substep is the step type named by `rhs` bit for bit on every backend; the discretize and
//! adjoint gradients of a dopri5 interval against finite differences on the f64 reference.

mod common;

use common::rand_vec;
use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, Norm};
use pdenet::config::StepType;
use pdenet::operators::OpRef;
use pdenet::solvers::ode::{
    adjoint, backprop, replay, solve, BackendSpace, OdeOptions, Solver, UnitRhs,
};
use pdenet::steps::{forward_single, Layer, StepSettings};
use pdenet::Dims;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const RHS: [StepType; 3] = [
    StepType::Parabolic,
    StepType::Resnet,
    StepType::Antisymmetric,
];

/// The interval's parameters `[K, norm.weight, norm.bias]` and a state, as f64 host values.
fn problem(seed: u64, d: Dims) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.3);
    let s = rand_vec(&mut rng, d.c, 1.0)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    let b = rand_vec(&mut rng, d.c, 0.2);
    let y = rand_vec(&mut rng, d.len(), 1.0);
    (vec![k, s, b], y)
}

fn kind(layer: StepType, h: f64, act: Activation) -> StepSettings {
    StepSettings {
        layer,
        h,
        act,
        gamma: 1e-4,
    }
}

fn euler_is_the_step<B: Backend>(be: &B) {
    let d = Dims::new(2, 4, 5, 6);
    for layer in RHS {
        let (p, y) = problem(layer as u64 + 3, d);
        let bufs: Vec<B::Buf> = p.iter().map(|v| be.upload(v).unwrap()).collect();
        let y = be.upload(&y).unwrap();
        let l = Layer {
            op: OpRef::Full3x3(&bufs[0]),
            norm: Norm::Tv {
                s: &bufs[1],
                b: &bufs[2],
            },
        };
        let k = kind(layer, 0.3, Activation::Relu);
        let step = be
            .download(&forward_single(be, k, l, &y, None, d).unwrap())
            .unwrap();
        let s = BackendSpace(be);
        let mut rhs = UnitRhs::new(k, l, d).unwrap();
        let o = OdeOptions {
            solver: Solver::Euler,
            substeps: 1,
            ..OdeOptions::default()
        };
        let sol = solve(&s, &mut rhs, &y, 0.0, 0.3, &o, false).unwrap();
        let got = be.download(&sol.y).unwrap();
        assert!(
            got.iter()
                .zip(&step)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: {} euler differs from the step",
            be.name(),
            layer.name()
        );
    }
}

#[test]
fn euler_with_one_substep_is_the_step_type_bit_for_bit() {
    euler_is_the_step(&Reference);
    euler_is_the_step(&Cpu::new());
}

#[test]
fn rhs_of_another_step_type_is_refused() {
    let d = Dims::new(1, 2, 3, 3);
    let (p, _) = problem(1, d);
    let l = Layer::<Reference> {
        op: OpRef::Full3x3(&p[0]),
        norm: Norm::Tv { s: &p[1], b: &p[2] },
    };
    for layer in [StepType::Hyperbolic, StepType::Hamiltonian] {
        let err = UnitRhs::new(kind(layer, 0.1, Activation::Tanh), l, d)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("`rhs`"), "{err}");
    }
}

/// `<c, y(T)>` of one interval with parameters `p`: solved afresh, or replaying the accepted
/// steps `grid` of another solve (the map whose exact gradient the discretize mode computes).
fn loss(
    layer: StepType,
    p: &[Vec<f64>],
    y0: &[f64],
    c: &[f64],
    d: Dims,
    o: &OdeOptions,
    grid: Option<&[(f64, f64)]>,
) -> f64 {
    let l = Layer::<Reference> {
        op: OpRef::Full3x3(&p[0]),
        norm: Norm::Tv { s: &p[1], b: &p[2] },
    };
    let mut rhs = UnitRhs::new(kind(layer, 0.5, Activation::Tanh), l, d).unwrap();
    let (s, y0) = (BackendSpace(&Reference), y0.to_vec());
    let sol = match grid {
        Some(g) => replay(&s, &mut rhs, o.solver.tableau(), &y0, g, false).unwrap(),
        None => solve(&s, &mut rhs, &y0, 0.0, 0.5, o, false).unwrap(),
    };
    sol.y.iter().zip(c).map(|(a, b)| a * b).sum()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().map(|v| v.abs()).fold(1e-30, f64::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Central differences of `loss` in a few entries of each tensor (the input and every parameter).
fn check_against_fd(layer: StepType, o: &OdeOptions, adjoint_mode: bool, bound: f64) {
    let d = Dims::new(2, 3, 4, 4);
    let (p, y0) = problem(11 + layer as u64, d);
    let c = rand_vec(&mut ChaCha8Rng::seed_from_u64(5), d.len(), 1.0);
    let l = Layer::<Reference> {
        op: OpRef::Full3x3(&p[0]),
        norm: Norm::Tv { s: &p[1], b: &p[2] },
    };
    let k = kind(layer, 0.5, Activation::Tanh);
    let s = BackendSpace(&Reference);
    let mut rhs = UnitRhs::new(k, l, d).unwrap();
    let sol = solve(&s, &mut rhs, &y0, 0.0, 0.5, o, !adjoint_mode).unwrap();
    let (dy0, dp) = if adjoint_mode {
        let zeros = p.iter().map(|v| vec![0.0; v.len()]).collect();
        let (g, _) = adjoint(&s, &mut rhs, &sol.y, &c, zeros, 0.0, 0.5, o).unwrap();
        (g.dy0, g.dparams)
    } else {
        let g = backprop(&s, &mut rhs, o.solver.tableau(), &sol.steps, c.clone()).unwrap();
        (g.dy0, g.dparams)
    };
    assert_eq!(dp.len(), 3);
    let grid = (!adjoint_mode).then_some(sol.grid.as_slice());
    let eps = 1e-6;
    let mut tensors: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![("y0", y0.clone(), dy0)];
    for (name, (v, g)) in ["K", "norm.weight", "norm.bias"]
        .into_iter()
        .zip(p.iter().zip(dp))
    {
        tensors.push((name, v.clone(), g));
    }
    for (ti, (name, v, g)) in tensors.iter().enumerate() {
        let picks: Vec<usize> = (0..v.len()).step_by((v.len() / 6).max(1)).collect();
        let fd: Vec<f64> = picks
            .iter()
            .map(|&i| {
                let at = |e: f64| {
                    let (mut pp, mut yy) = (p.clone(), y0.clone());
                    if ti == 0 {
                        yy[i] += e;
                    } else {
                        pp[ti - 1][i] += e;
                    }
                    loss(layer, &pp, &yy, &c, d, o, grid)
                };
                (at(eps) - at(-eps)) / (2.0 * eps)
            })
            .collect();
        let got: Vec<f64> = picks.iter().map(|&i| g[i]).collect();
        let e = max_rel(&got, &fd);
        assert!(
            e < bound,
            "{} {:?} {name} (adjoint {adjoint_mode}): relative error {e:e}",
            layer.name(),
            o.solver
        );
    }
}

#[test]
fn discretize_gradients_of_every_rhs_match_finite_differences() {
    for layer in RHS {
        check_against_fd(
            layer,
            &OdeOptions {
                solver: Solver::Rk4,
                substeps: 2,
                ..OdeOptions::default()
            },
            false,
            1e-6,
        );
        check_against_fd(layer, &OdeOptions::default(), false, 1e-6);
    }
}

#[test]
fn adjoint_gradients_of_every_rhs_match_finite_differences_at_tight_tolerance() {
    for layer in RHS {
        let o = OdeOptions {
            rtol: 1e-8,
            atol: 1e-10,
            ..OdeOptions::default()
        };
        check_against_fd(layer, &o, true, 1e-5);
    }
}

/// Replaying a dopri5 solve's accepted steps gives its end state bit for bit, at six
/// evaluations per step instead of six per attempt plus two.
#[test]
fn replay_reproduces_the_adaptive_solve() {
    let d = Dims::new(2, 3, 4, 4);
    let (p, y0) = problem(7, d);
    for (name, (a, b, nfe, steps)) in [
        ("reference", replay_case(&Reference, &p, &y0, d)),
        ("cpu", replay_case(&Cpu::new(), &p, &y0, d)),
    ] {
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
        assert_eq!(nfe, 6 * steps, "{name}");
    }
}

fn replay_case<B: Backend>(
    be: &B,
    p: &[Vec<f64>],
    y0: &[f64],
    d: Dims,
) -> (Vec<f64>, Vec<f64>, usize, usize) {
    let bufs: Vec<B::Buf> = p.iter().map(|v| be.upload(v).unwrap()).collect();
    let l = Layer {
        op: OpRef::Full3x3(&bufs[0]),
        norm: Norm::Tv {
            s: &bufs[1],
            b: &bufs[2],
        },
    };
    let mut rhs = UnitRhs::new(kind(StepType::Parabolic, 0.5, Activation::Relu), l, d).unwrap();
    let s = BackendSpace(be);
    let y0 = be.upload(y0).unwrap();
    let o = OdeOptions {
        rtol: 1e-5,
        atol: 1e-7,
        ..OdeOptions::default()
    };
    let sol = solve(&s, &mut rhs, &y0, 0.0, 2.0, &o, false).unwrap();
    assert!(sol.accepted > 2);
    let again = replay(&s, &mut rhs, o.solver.tableau(), &y0, &sol.grid, true).unwrap();
    assert_eq!(again.steps.len(), sol.accepted);
    (
        be.download(&sol.y).unwrap(),
        be.download(&again.y).unwrap(),
        again.nfe,
        sol.accepted,
    )
}
