//! The custom op inside a small candle graph against pdenet's own backward on the same
//! weights; bad input gives candle errors; the crate's version is pdenet's.

use candle_core::{DType, Device, Tensor, Var};
use pdenet::api::{self, UnitOptions};
use pdenet::config::StepType;
use pdenet::schedule::Policy;
use pdenet_candle::Unit;

const SHAPE: [usize; 4] = [2, 4, 6, 5];

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    diff / scale
}

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The graph `loss = sum(unit(2 x, theta) * w)`: candle's gradients of `x` and `theta`
/// against pdenet's `Unit::backward` on the same weights from the gradient `w`.
fn check(layer: StepType, steps: usize, policy: Policy) {
    let opts = UnitOptions::new(layer, SHAPE[1], steps, 0.3);
    let unit = Unit::new(&opts, policy).unwrap();
    let dev = Device::Cpu;
    let n: usize = SHAPE.iter().product();
    // Perturbed weights, so that the check is not only on the initial values.
    let init = unit.init_params(&dev).unwrap();
    let noise = Tensor::from_vec(values(unit.packed_len(), 0.71), unit.packed_len(), &dev).unwrap();
    let theta = Var::from_tensor(&(init + (noise * 0.05).unwrap()).unwrap()).unwrap();
    let x = Var::from_tensor(&Tensor::from_vec(values(n, 0.37), &SHAPE, &dev).unwrap()).unwrap();
    let w = Tensor::from_vec(values(n, 1.3), &SHAPE, &dev).unwrap();

    let z = (x.as_tensor() * 2.0).unwrap();
    let y = unit.forward(&z, &theta).unwrap();
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gx = vec_of(grads.get(&x).unwrap());
    let gtheta = grads.get(&theta).unwrap();

    // pdenet alone, the same weights written by name.
    let mut reference = api::Unit::new(&opts).unwrap();
    for (name, t) in unit.unpack(&theta).unwrap() {
        reference.set_param(&name, &vec_of(&t)).unwrap();
    }
    let zv: Vec<f32> = values(n, 0.37).iter().map(|v| 2.0 * v).collect();
    let y_ref = reference.forward(&zv, SHAPE, policy).unwrap();
    let (gz_ref, g_ref) = reference
        .backward(&zv, SHAPE, &values(n, 1.3), policy)
        .unwrap();
    let gx_ref: Vec<f32> = gz_ref.iter().map(|v| 2.0 * v).collect();

    let ey = rel_err(&vec_of(&y), &y_ref);
    let ex = rel_err(&gx, &gx_ref);
    let mut ep = 0f64;
    let unpacked = unit.unpack(gtheta).unwrap();
    assert_eq!(unpacked.len(), g_ref.len());
    for ((name, t), (rname, g)) in unpacked.iter().zip(&g_ref) {
        assert_eq!(name, rname);
        assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        ep = ep.max(rel_err(&vec_of(t), g));
    }
    println!(
        "{} steps={steps} {}: rel err y {ey:.1e}, grad x {ex:.1e}, grad params {ep:.1e}",
        layer.name(),
        policy.name()
    );
    for (what, e) in [("y", ey), ("grad x", ex), ("grad params", ep)] {
        assert!(e <= 1e-5, "{what}: relative error {e:e}");
    }
}

#[test]
fn hyperbolic_matches_pdenet_grad() {
    for policy in Policy::ALL {
        check(StepType::Hyperbolic, 3, policy);
    }
}

#[test]
fn hamiltonian_matches_pdenet_grad() {
    for policy in Policy::ALL {
        check(StepType::Hamiltonian, 3, policy);
    }
}

#[test]
fn pack_unpack_round_trip_by_spec_names() {
    let unit = Unit::from_json(
        r#"{"layer": "hamiltonian", "width": 4, "steps": 2, "h": 0.2}"#,
        "reversible",
    )
    .unwrap();
    let names: Vec<_> = unit.slots().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[0], "steps.0.K1");
    assert!(names.contains(&"steps.1.K2"));
    let p = unit.init_params(&Device::Cpu).unwrap();
    let parts = unit.unpack(&p).unwrap();
    let mut reversed = parts.clone();
    reversed.reverse();
    let q = unit.pack(&reversed).unwrap();
    assert_eq!(vec_of(&p), vec_of(&q));
    // Against pdenet's own parameters.
    let reference = api::Unit::new(&UnitOptions::new(StepType::Hamiltonian, 4, 2, 0.2)).unwrap();
    for ((name, t), (rname, shape, data)) in parts.iter().zip(reference.params().unwrap()) {
        assert_eq!(name, &rname);
        assert_eq!(t.dims(), shape.as_slice());
        assert_eq!(vec_of(t), data);
    }
}

#[test]
fn bad_input_gives_candle_errors() {
    let unit = Unit::from_json(
        r#"{"layer": "hyperbolic", "width": 4, "steps": 2, "h": 0.5}"#,
        "reversible",
    )
    .unwrap();
    let dev = Device::Cpu;
    let p = unit.init_params(&dev).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.expect_err("an error").to_string();

    let e = err(unit.forward(&Tensor::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap(), &p));
    assert!(e.contains("[n, 4, h, w]"), "{e}");
    let e = err(unit.forward(&Tensor::zeros((4, 5, 5), DType::F32, &dev).unwrap(), &p));
    assert!(e.contains("NCHW"), "{e}");
    let x = Tensor::zeros((2, 4, 5, 5), DType::F32, &dev).unwrap();
    let short = p.narrow(0, 0, unit.packed_len() - 1).unwrap();
    let e = err(unit.forward(&x, &short));
    assert!(e.contains(&format!("[{}]", unit.packed_len())), "{e}");
    let e = err(unit.forward(&x.to_dtype(DType::F64).unwrap(), &p));
    assert!(e.contains("f32"), "{e}");
    // pdenet's own checks come back as one-line candle errors.
    let tiny = Tensor::zeros((2, 4, 0, 5), DType::F32, &dev).unwrap();
    let e = err(unit.forward(&tiny, &p));
    assert!(e.starts_with("pdenet"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = Unit::from_json(
        r#"{"layer": "hyperbolic", "width": 4, "steps": 2, "h": 0.5}"#,
        "fast",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("unknown policy"), "{e}");
    let e = Unit::from_json(r#"{"layer": "hyperbolic", "width": 4}"#, "store")
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("pdenet: "), "{e}");
    let e = Unit::from_json(
        r#"{"layer": "hyperbolic", "width": 4, "steps": 2, "h": 0.5, "precision": "f64"}"#,
        "store",
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("f32"), "{e}");
}

#[test]
fn version_is_pdenet_s() {
    assert_eq!(pdenet_candle::VERSION, pdenet::VERSION);
    let py = include_str!("../../python/Cargo.toml");
    assert!(
        py.contains(&format!("version = \"{}\"", pdenet::VERSION)),
        "python/Cargo.toml has another version"
    );
}
