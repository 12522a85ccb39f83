//! Networks of `ode` units (SPEC section 10) through the engine: euler with one substep is the
//! network of `rhs` bit for bit; `discretize` gradients against finite differences on the f64
//! reference; the memory policies agree; `adjoint` converges to `discretize` as `rtol` falls;
//! function-evaluation counts; memory flat in solver steps under `reversible` and `adjoint`;
//! bad configs and exhausted step budgets are one-line errors.

use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::Backend;
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::plan::plan_step;
use pdenet::schedule::{Engine, GradOutput, Policy};
use pdenet::solvers::ode::REVERSE_CHECKPOINTS;
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

fn config(extra: &str) -> Config {
    let json = format!(
        r#"{{"kind":"image","in_channels":1,"classes":3,"widths":[4,6],"steps":[2,1],
        "h":0.5,"activation":"tanh",{extra}}}"#
    );
    Config::parse(&json, false).unwrap()
}

fn batch() -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let x = HostTensor::new(
        vec![3, 1, 6, 6],
        (0..108).map(|_| rng.random_range(-1.0..1.0)).collect(),
    )
    .unwrap();
    (x, vec![0, 2, 1])
}

fn grad_of<B: Backend>(be: B, cfg: &Config, policy: Policy) -> GradOutput {
    let layout = Layout::new(cfg).unwrap();
    let params = layout.init(11);
    let mut eng = Engine::new(be, layout, &params).unwrap();
    let (x, labels) = batch();
    eng.grad(&x, &labels, policy.memory(), false).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    num.sqrt() / den.sqrt().max(1e-30)
}

fn worst(a: &GradOutput, b: &GradOutput) -> f64 {
    let mut w = rel(&a.grad_x, &b.grad_x);
    for ((_, _, x), (_, _, y)) in a.grads.iter().zip(b.grads.iter()) {
        w = w.max(rel(&x.data, &y.data));
    }
    w
}

const RHS: [StepType; 3] = [
    StepType::Parabolic,
    StepType::Resnet,
    StepType::Antisymmetric,
];

#[test]
fn euler_with_one_substep_is_the_rhs_network() {
    for rhs in RHS {
        let ode = config(&format!(
            r#""layer":"ode","rhs":"{}","solver":"euler""#,
            rhs.name()
        ));
        let plain = config(&format!(r#""layer":"{}""#, rhs.name()));
        for policy in [Policy::Store, Policy::Reversible] {
            let a = grad_of(Cpu::new(), &ode, policy);
            let b = grad_of(Cpu::new(), &plain, policy);
            assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{}: loss", rhs.name());
            assert_eq!(a.logits, b.logits, "{}: logits", rhs.name());
            // The step's VJP is the same op; the weight gradient of an interval goes through
            // the solver's scaling by dt (1 * h), so allow rounding there.
            let w = worst(&a, &b);
            assert!(
                w <= 1e-6,
                "{} {policy:?}: ode euler vs step {w:.2e}",
                rhs.name()
            );
            assert_eq!(a.nfe_forward, vec![2, 1], "one evaluation per interval");
            assert_eq!(b.nfe_forward, vec![0, 0], "not an ode network");
        }
    }
}

/// Central differences of the loss in f64 against the engine's gradient.
fn fd_check(cfg: &Config, policy: Policy, tol: f64) {
    let layout = Layout::new(cfg).unwrap();
    let params = layout.init(11);
    let mut eng = Engine::new(Reference, layout, &params).unwrap();
    let (x, labels) = batch();
    let g = eng.grad(&x, &labels, policy.memory(), false).unwrap();
    let eps = 1e-5;
    let names = [
        "units.0.steps.0.K",
        "units.0.steps.1.norm.weight",
        "units.0.steps.1.norm.bias",
        "units.1.steps.0.K",
    ];
    let present: Vec<&str> = names
        .into_iter()
        .filter(|n| g.grads.get(n).is_some())
        .collect();
    assert!(present.len() >= 2, "{present:?}");
    for name in present {
        let t = g.grads.get(name).unwrap();
        for i in [0, t.data.len() / 2, t.data.len() - 1] {
            eng.nudge_param(name, i, eps).unwrap();
            let up = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, -2.0 * eps).unwrap();
            let down = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, eps).unwrap();
            let fd = (up - down) / (2.0 * eps);
            let an = t.data[i] as f64;
            let err = (fd - an).abs() / fd.abs().max(1e-3);
            assert!(
                err <= tol,
                "{name}[{i}] {policy:?}: fd {fd:.6e} vs {an:.6e} ({err:.1e})"
            );
        }
    }
}

#[test]
fn discretize_gradients_match_finite_differences() {
    for rhs in RHS {
        let fixed = config(&format!(
            r#""layer":"ode","rhs":"{}","solver":"rk4","substeps":2"#,
            rhs.name()
        ));
        fd_check(&fixed, Policy::Store, 1e-5);
        fd_check(&fixed, Policy::Reversible, 1e-5);
    }
    // dopri5's grid moves with the weights; at a tight tolerance that is far below the check.
    let adaptive = config(r#""layer":"ode","rtol":1e-8,"atol":1e-9"#);
    fd_check(&adaptive, Policy::Store, 1e-4);
    fd_check(&adaptive, Policy::Reversible, 1e-4);
    // Without tvNorm the right-hand side is not stiff, and a loose tolerance passes too.
    let loose = config(r#""layer":"ode","norm":"none","rtol":1e-5,"atol":1e-6"#);
    fd_check(&loose, Policy::Store, 1e-3);
}

#[test]
fn policies_agree_and_count_evaluations() {
    let cfg = config(r#""layer":"ode","rtol":1e-4,"atol":1e-5"#);
    let store = grad_of(Cpu::new(), &cfg, Policy::Store);
    let rev = grad_of(Cpu::new(), &cfg, Policy::Reversible);
    let exact = grad_of(Cpu::new(), &cfg, Policy::Exact);
    assert_eq!(store.loss.to_bits(), rev.loss.to_bits());
    assert!(worst(&rev, &store) <= 1e-5, "{:.2e}", worst(&rev, &store));
    assert!(worst(&exact, &rev) <= 1e-5);
    assert_eq!(store.nfe_forward, rev.nfe_forward);
    assert!(
        store.nfe_forward.iter().all(|&n| n >= 6),
        "{:?}",
        store.nfe_forward
    );
    // store back-propagates the recorded stages; reversible replays each step's prefix.
    assert!(rev.nfe_backward.iter().sum::<usize>() > store.nfe_backward.iter().sum::<usize>());
    let rk4 = grad_of(
        Cpu::new(),
        &config(r#""layer":"ode","solver":"rk4","substeps":3"#),
        Policy::Store,
    );
    assert_eq!(rk4.nfe_forward, vec![2 * 3 * 4, 3 * 4]);
    assert_eq!(rk4.nfe_backward, vec![2 * 3 * 4, 3 * 4]);
}

#[test]
fn adjoint_converges_to_discretize() {
    let mut errs = Vec::new();
    for rtol in [1e-2, 1e-4, 1e-7] {
        // tvNorm at init weights makes the right-hand side stiff (hundreds of evaluations per
        // interval), where a loose adjoint is far off: the comparison runs without it.
        let tols = format!(r#""norm":"none","rtol":{rtol},"atol":{}"#, rtol * 0.1);
        let dis = config(&format!(r#""layer":"ode",{tols}"#));
        let adj = config(&format!(r#""layer":"ode","gradient":"adjoint",{tols}"#));
        let a = grad_of(Reference, &adj, Policy::Reversible);
        let d = grad_of(Reference, &dis, Policy::Store);
        assert_eq!(a.loss.to_bits(), d.loss.to_bits(), "same forward solve");
        assert!(a.nfe_backward.iter().all(|&n| n > 0));
        errs.push(worst(&a, &d));
    }
    println!("adjoint vs discretize at rtol 1e-2, 1e-4, 1e-7: {errs:?}");
    assert!(errs[0] > errs[1] && errs[1] > errs[2], "{errs:?}");
    assert!(errs[2] <= 1e-4, "{errs:?}");
}

/// Planned peaks as the number of solver steps grows (euler substeps: the same code paths as
/// an adaptive solve's accepted steps): `store` grows, `reversible` and `adjoint` stay flat.
#[test]
fn memory_is_flat_in_solver_steps_under_reversible_and_adjoint() {
    let peak = |extra: &str, policy: Policy| {
        let cfg = config(&format!(r#""layer":"ode","solver":"euler",{extra}"#));
        let layout = Layout::new(&cfg).unwrap();
        plan_step(&layout, &[8, 1, 16, 16], policy.memory())
            .unwrap()
            .peak_bytes
    };
    for (mode, policy) in [
        (r#""gradient":"adjoint""#, Policy::Store),
        (r#""gradient":"adjoint""#, Policy::Reversible),
    ] {
        let one = peak(&format!(r#"{mode},"substeps":1"#), policy);
        let many = peak(&format!(r#"{mode},"substeps":16"#), policy);
        assert_eq!(one, many, "{mode} {policy:?}: {one} -> {many}");
    }
    // discretize + reversible replays each interval from at most REVERSE_CHECKPOINTS + 1
    // checkpoints: a few states more than one step needs, and flat once the checkpoints are
    // all in use (more than 2^REVERSE_CHECKPOINTS steps).
    let mode = r#""gradient":"discretize""#;
    let rev = |n: usize| peak(&format!(r#"{mode},"substeps":{n}"#), Policy::Reversible);
    let state = 8 * 6 * 16 * 16 * 4; // batch x widest unit x 16 x 16, f32
    let (one, many) = (rev(1), rev(128));
    assert!(
        many <= one + (REVERSE_CHECKPOINTS + 1) * state,
        "reversible discretize: {one} -> {many}"
    );
    assert_eq!(many, rev(512), "flat beyond the checkpoints");
    let one = peak(r#""substeps":1"#, Policy::Store);
    let many = peak(r#""substeps":16"#, Policy::Store);
    assert!(many > 4 * one / 3, "store should grow: {one} -> {many}");
    // dopri5 plans with a fixed number of accepted steps.
    let cfg = config(r#""layer":"ode""#);
    let layout = Layout::new(&cfg).unwrap();
    let s = plan_step(&layout, &[8, 1, 16, 16], Policy::Store.memory()).unwrap();
    let r = plan_step(&layout, &[8, 1, 16, 16], Policy::Reversible.memory()).unwrap();
    assert!(s.peak_bytes > r.peak_bytes);
}

#[test]
fn bad_configs_are_one_line_errors() {
    let base = r#""kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[2],"h":0.5"#;
    let cases = [
        (r#""layer":"ode","solver":"rk45""#, "unknown variant"),
        (
            r#""layer":"ode","rtol":0"#,
            "`rtol` must be a positive number",
        ),
        (
            r#""layer":"ode","atol":-1"#,
            "`atol` must be a positive number",
        ),
        (r#""layer":"ode","substeps":0"#, "`substeps`"),
        (r#""layer":"ode","rhs":"hyperbolic""#, "`rhs` must be"),
        (
            r#""layer":"hyperbolic","solver":"rk4""#,
            "`solver` is a key of `layer: ode`",
        ),
        (
            r#""layer":"resnet","rtol":1e-3"#,
            "`rtol` is a key of `layer: ode`",
        ),
    ];
    for (extra, needle) in cases {
        let e = Config::parse(&format!("{{{base},{extra}}}"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{extra}: `{e}` should say {needle}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn an_exhausted_step_budget_names_the_unit_and_the_time() {
    let cfg = config(r#""layer":"ode","rtol":1e-9,"atol":1e-10,"max_steps":3"#);
    let layout = Layout::new(&cfg).unwrap();
    let params = layout.init(11);
    let mut eng = Engine::new(Cpu::new(), layout, &params).unwrap();
    let (x, labels) = batch();
    let e = match eng.grad(&x, &labels, Policy::Store.memory(), false) {
        Ok(_) => panic!("a solve past its budget succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("units.0.steps.0"), "{e}");
    assert!(e.contains("budget of 3 steps"), "{e}");
}
