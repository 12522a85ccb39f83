//! The `rk2` step type (Heun's method with the parabolic right-hand side): its gradients against
//! finite differences on the f64 reference backend, its forward against Heun's formula written
//! with the parabolic step, its memory policies and its config.

use pdenet::api::{Precision, Unit, UnitOptions};
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::{Engine, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHAPE: [usize; 4] = [2, 4, 5, 3];

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(layer: StepType, steps: usize, operator: &str, precision: Precision) -> Unit {
    let json = format!(
        r#"{{"layer":"{}","width":4,"steps":{steps},"h":0.3,"activation":"tanh","operator":"{operator}","seed":3,"precision":"{}"}}"#,
        layer.name(),
        match precision {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        }
    );
    Unit::new(&UnitOptions::from_json(&json).unwrap()).unwrap()
}

/// `<v, J^T g>` against the central difference of `<g, Y(x)>` along random `v`, for the input
/// and every parameter.
#[test]
fn rk2_gradients_match_finite_differences() {
    const EPS: f64 = 1e-6;
    for operator in ["full", "lean"] {
        let mut u = unit(StepType::Rk2, 3, operator, Precision::F64);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n: usize = SHAPE.iter().product();
        let x = random(&mut rng, n);
        let g = random(&mut rng, n);
        let (gx, grads) = u.backward_f64(&x, SHAPE, &g, Policy::Store).unwrap();
        let phi = |u: &Unit, x: &[f64]| dot(&g, &u.forward_f64(x, SHAPE, Policy::Store).unwrap());
        let close = |what: &str, fd: f64, an: f64, scale: f64| {
            assert!(
                (fd - an).abs() <= 1e-6 * scale.max(1e-9),
                "{operator} {what}: finite difference {fd} vs gradient {an}"
            );
        };
        let v = random(&mut rng, n);
        let shifted = |s: f64| -> Vec<f64> { x.iter().zip(&v).map(|(a, b)| a + s * b).collect() };
        let fd = (phi(&u, &shifted(EPS)) - phi(&u, &shifted(-EPS))) / (2.0 * EPS);
        close(
            "x",
            fd,
            dot(&v, &gx),
            dot(&v, &v).sqrt() * dot(&gx, &gx).sqrt(),
        );
        let params = u.params().unwrap();
        assert_eq!(params.len(), grads.len());
        for ((name, _, p), (gname, gp)) in params.iter().zip(&grads) {
            assert_eq!(name, gname);
            let p: Vec<f64> = p.iter().map(|&a| a as f64).collect();
            let v = random(&mut rng, p.len());
            let mut at = |s: f64| {
                let q: Vec<f64> = p.iter().zip(&v).map(|(a, b)| a + s * b).collect();
                u.set_param_f64(name, &q).unwrap();
                phi(&u, &x)
            };
            let fd = (at(EPS) - at(-EPS)) / (2.0 * EPS);
            u.set_param_f64(name, &p).unwrap();
            close(
                name,
                fd,
                dot(&v, gp),
                dot(&v, &v).sqrt() * dot(gp, gp).sqrt(),
            );
        }
    }
}

/// One rk2 step is `(Y + P(P(Y))) / 2` with `P` the parabolic step of the same weights:
/// `Y + h/2 (f(Y) + f(Y + h f(Y)))`. Two rk2 steps are that map twice.
#[test]
fn rk2_forward_is_heun_from_the_parabolic_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let n: usize = SHAPE.iter().product();
    let x = random(&mut rng, n);
    let mut rk2 = unit(StepType::Rk2, 2, "full", Precision::F64);
    let mut parabolic = unit(StepType::Parabolic, 2, "full", Precision::F64);
    let mut y = x.clone();
    for j in 0..2 {
        // Step j's weights in both parabolic steps.
        for (name, _, data) in rk2.params().unwrap() {
            let Some(rest) = name.strip_prefix(&format!("steps.{j}.")) else {
                continue;
            };
            rk2.set_param(&name, &data).unwrap();
            for i in 0..2 {
                parabolic
                    .set_param(&format!("steps.{i}.{rest}"), &data)
                    .unwrap();
            }
        }
        let twice = parabolic.forward_f64(&y, SHAPE, Policy::Store).unwrap();
        y = y.iter().zip(&twice).map(|(a, b)| 0.5 * (a + b)).collect();
        if j == 0 {
            // rk2's first step alone: a unit of one step with the same weights.
            let mut one = unit(StepType::Rk2, 1, "full", Precision::F64);
            for (name, _, data) in rk2.params().unwrap() {
                if name.starts_with("steps.0.") {
                    one.set_param(&name, &data).unwrap();
                }
            }
            let got = one.forward_f64(&x, SHAPE, Policy::Store).unwrap();
            let err = got
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-12, "one rk2 step vs Heun: {err:e}");
        }
    }
    let got = rk2.forward_f64(&x, SHAPE, Policy::Store).unwrap();
    let err = got
        .iter()
        .zip(&y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err <= 1e-12, "two rk2 steps vs Heun: {err:e}");
}

/// rk2 has no inverse: `reversible` and `exact` recompute its units from their input, so the
/// gradients are those of `store`, bit for bit (f64 reference and f32 CPU).
#[test]
fn rk2_policies_agree() {
    let json = r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4,8],"steps":[2,3],
        "layer":"rk2","h":0.5,"activation":"relu","norm":"tv","operator":"full"}"#;
    let cfg = Config::parse(json, false).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = HostTensor::new(
        vec![3, 1, 8, 8],
        (0..3 * 64).map(|_| rng.random_range(0.0..1.0)).collect(),
    )
    .unwrap();
    let labels = vec![0, 1, 2];
    let layout = Layout::new(&cfg).unwrap();
    let params = layout.init(5);
    let mut eng = Engine::new(pdenet::backend::cpu::Cpu::new(), layout.clone(), &params).unwrap();
    let store = eng
        .grad(&x, &labels, Policy::Store.memory(), false)
        .unwrap();
    for p in [Policy::Reversible, Policy::Exact] {
        let other = eng.grad(&x, &labels, p.memory(), false).unwrap();
        assert_eq!(other.loss, store.loss, "{p:?} loss");
        assert_eq!(other.grad_x, store.grad_x, "{p:?} grad.x");
        for ((name, _, a), (_, _, b)) in other.grads.iter().zip(store.grads.iter()) {
            assert_eq!(a.data, b.data, "{p:?} {name}");
        }
    }
    for precision in [Precision::F32, Precision::F64] {
        let u = unit(StepType::Rk2, 4, "full", precision);
        let n: usize = SHAPE.iter().product();
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let store = u.backward(&x, SHAPE, &g, Policy::Store).unwrap();
        for p in [Policy::Reversible, Policy::Exact] {
            assert_eq!(
                u.backward(&x, SHAPE, &g, p).unwrap(),
                store,
                "{precision:?} {p:?}"
            );
        }
    }
}

/// `"layer": "rk2"` parses, with a parabolic step's parameter names (one `K` and norm per step).
#[test]
fn rk2_config_and_names() {
    let json = r#"{"kind":"image","in_channels":3,"classes":10,"widths":[8],"steps":[2],
        "layer":"rk2","h":0.5}"#;
    let cfg = Config::parse(json, false).unwrap();
    assert_eq!(cfg.layer, StepType::Rk2);
    assert_eq!("rk2".parse::<StepType>().unwrap(), StepType::Rk2);
    assert!(!StepType::Rk2.invertible());
    let names = |cfg: &Config| -> Vec<String> {
        let layout = Layout::new(cfg).unwrap();
        layout.template.names().map(str::to_string).collect()
    };
    let parabolic = Config::parse(&json.replace("rk2", "parabolic"), false).unwrap();
    assert_eq!(names(&cfg), names(&parabolic));
    assert!(names(&cfg).contains(&"units.0.steps.1.K".to_string()));
    let e = Config::parse(&json.replace("rk2", "rk3"), false).unwrap_err();
    assert!(e.to_string().contains("rk3"), "{e}");
    let e = "rk3".parse::<StepType>().unwrap_err();
    assert_eq!(
        e.to_string(),
        pdenet::Error::Config("unknown layer `rk3`".into()).to_string()
    );
}
