//! Whole networks, every step type: finite-difference gradients on the f64 reference, and the
//! memory policies against each other (`reversible` = `store`; `exact` = fixed-point `store`).

use pdenet::backend::reference::Reference;
use pdenet::backend::Backend;
use pdenet::config::{Config, LayerType};
use pdenet::network::Layout;
use pdenet::schedule::{Engine, Policy, Schedule};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

fn image_config(layer: LayerType, steps: usize) -> Config {
    let json = format!(
        r#"{{"kind":"image","in_channels":2,"classes":3,"widths":[4,4],"steps":[{steps},{steps}],
        "layer":"{}","h":0.3,"activation":"tanh"}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

fn dense_config(layer: LayerType) -> Config {
    let json = format!(
        r#"{{"kind":"dense","dense_input":2,"classes":2,"widths":[4,6],"steps":[2,2],
        "layer":"{}","h":0.2,"activation":"tanh","norm":"tv"}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

fn batch(cfg: &Config, n: usize, seed: u64) -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let shape = match cfg.kind {
        pdenet::config::Kind::Image => vec![n, cfg.input_width(), 6, 5],
        pdenet::config::Kind::Dense => vec![n, cfg.input_width()],
    };
    let len = shape.iter().product();
    let x = HostTensor::new(
        shape,
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
    )
    .unwrap();
    let labels = (0..n).map(|i| i % cfg.classes).collect();
    (x, labels)
}

/// Perturbs the shifts and scales away from their 0/1 initial values so that their gradients
/// are exercised in general position.
fn random_params(layout: &Layout, seed: u64) -> pdenet::params::ParamSet {
    let mut p = layout.init(seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    for (name, role, t) in p.iter_mut() {
        if role == pdenet::params::ParamRole::Affine || name.ends_with("bn.weight") {
            t.data
                .iter_mut()
                .for_each(|v| *v += rng.random_range(-0.3..0.3));
        }
    }
    p
}

fn fd_check(cfg: Config) {
    let layout = Layout::new(&cfg).unwrap();
    let params = random_params(&layout, 7);
    let (x, labels) = batch(&cfg, 3, 11);
    let mut eng = Engine::new(Reference, layout.clone(), &params).unwrap();
    let out = eng
        .grad(&x, &labels, Policy::Store.schedule(), false)
        .unwrap();
    let eps = 1e-6;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut checked = 0;
    for (name, _, g) in out.grads.iter() {
        for _ in 0..3 {
            let i = rng.random_range(0..g.len());
            eng.nudge_param(name, i, eps).unwrap();
            let lp = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, -2.0 * eps).unwrap();
            let lm = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, eps).unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let an = g.data[i] as f64;
            // The gradient is delivered in f32: compare with an f32-sized floor.
            let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(1e-3));
            assert!(
                err < 2e-4,
                "{} {name}[{i}]: analytic {an} vs finite difference {fd}",
                cfg.layer.name()
            );
            checked += 1;
        }
    }
    assert!(checked > 10);
}

#[test]
fn finite_differences_image_networks() {
    for layer in LayerType::ALL {
        fd_check(image_config(layer, 2));
    }
}

#[test]
fn finite_differences_dense_networks() {
    for layer in LayerType::ALL {
        fd_check(dense_config(layer));
    }
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

/// `reversible` equals `store` within 1e-5, and `exact` equals fixed-point `store` bit for bit.
pub fn policies_agree<B: Backend>(make: impl Fn() -> B) {
    for layer in LayerType::ALL {
        for cfg in [image_config(layer, 3), dense_config(layer)] {
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 2, 9);
            let mut eng = Engine::new(make(), layout, &params).unwrap();
            eng.measure_drift = true;
            let dev = eng.backend.name();
            let store = eng
                .grad(&x, &labels, Policy::Store.schedule(), false)
                .unwrap();
            let rev = eng
                .grad(&x, &labels, Policy::Reversible.schedule(), false)
                .unwrap();
            for ((name, _, a), (_, _, b)) in rev.grads.iter().zip(store.grads.iter()) {
                let e = rel_diff(&a.data, &b.data);
                assert!(
                    e <= 1e-5,
                    "{} {}: reversible vs store {name}: {e}",
                    dev,
                    layer.name()
                );
            }
            assert!(rel_diff(&rev.grad_x, &store.grad_x) <= 1e-5);
            let exact = eng
                .grad(&x, &labels, Policy::Exact.schedule(), false)
                .unwrap();
            let store_fixed = Schedule {
                keep_all: true,
                fixed_point: Policy::Exact.schedule().fixed_point,
            };
            let sf = eng.grad(&x, &labels, store_fixed, false).unwrap();
            assert_eq!(exact.loss.to_bits(), sf.loss.to_bits());
            for ((name, _, a), (_, _, b)) in exact.grads.iter().zip(sf.grads.iter()) {
                let same = a
                    .data
                    .iter()
                    .zip(&b.data)
                    .all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same,
                    "{} {}: exact vs fixed-point store differ in {name}",
                    dev,
                    layer.name()
                );
            }
            assert!(exact
                .grad_x
                .iter()
                .zip(&sf.grad_x)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
            if layer.invertible() {
                assert_eq!(exact.drift, 0.0, "fixed-point rebuild must be exact");
            }
        }
    }
}

#[test]
fn policies_agree_reference() {
    policies_agree(|| Reference);
}

#[test]
fn policies_agree_cpu() {
    policies_agree(pdenet::backend::cpu::Cpu::new);
}

fn cuda() -> Option<pdenet::backend::cuda::Cuda> {
    match pdenet::backend::cuda::Cuda::try_new() {
        Ok(c) => Some(c),
        Err(e) => {
            println!("SKIP: {e}");
            None
        }
    }
}

#[test]
fn policies_agree_cuda() {
    if cuda().is_some() {
        policies_agree(|| cuda().expect("checked above"));
    }
}

/// The same network, weights and batch on the GPU and on the CPU: every gradient agrees, for all
/// five layer types and all three policies.
#[test]
fn cuda_matches_cpu_on_whole_networks() {
    let Some(gpu) = cuda() else { return };
    let mut gpu = Some(gpu);
    for layer in LayerType::ALL {
        for cfg in [image_config(layer, 3), dense_config(layer)] {
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 3, 9);
            let mut cpu =
                Engine::new(pdenet::backend::cpu::Cpu::new(), layout.clone(), &params).unwrap();
            let mut dev = Engine::new(gpu.take().expect("one device"), layout, &params).unwrap();
            for policy in Policy::ALL {
                let a = dev.grad(&x, &labels, policy.schedule(), false).unwrap();
                let b = cpu.grad(&x, &labels, policy.schedule(), false).unwrap();
                assert!(
                    (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs().max(1.0),
                    "{} {}: loss",
                    layer.name(),
                    policy.name()
                );
                // In fixed point a last-bit difference of f between devices can move a rounding
                // by one step of 2^-16, so `exact` agrees less tightly across devices.
                let tol = if policy == Policy::Exact { 1e-3 } else { 1e-4 };
                for ((name, _, ga), (_, _, gb)) in a.grads.iter().zip(b.grads.iter()) {
                    let e = rel_diff(&ga.data, &gb.data);
                    assert!(
                        e <= tol,
                        "{} {}: {name} differs by {e}",
                        layer.name(),
                        policy.name()
                    );
                }
                assert!(rel_diff(&a.grad_x, &b.grad_x) <= tol);
            }
            gpu = Some(dev.backend);
        }
    }
}
