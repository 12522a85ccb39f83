//! A 1000-step leapfrog unit rebuilt backwards by its inverse steps.
//!
//! Documented bound (README, "Reversibility"): in f32 on the CPU, rebuilding the input of a
//! 1000-step hyperbolic unit (h = 0.1, tvNorm, relu, Kaiming-normal K) drifts by at most 1e-3
//! relative to its max-norm; under `exact` the rebuilt input equals the original bit for bit.

use pdenet::backend::Backend;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::schedule::{Engine, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

pub const FLOAT_DRIFT_BOUND: f64 = 1e-3;

fn long_unit() -> (Layout, HostTensor, Vec<usize>) {
    let cfg = Config::parse(
        r#"{"kind":"image","in_channels":2,"classes":2,"widths":[4],"steps":[1000],
            "layer":"hyperbolic","h":0.1}"#,
        false,
    )
    .unwrap();
    let layout = Layout::new(&cfg).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let x = HostTensor::new(
        vec![2, 2, 5, 5],
        (0..100).map(|_| rng.random_range(-1.0..1.0)).collect(),
    )
    .unwrap();
    (layout, x, vec![0, 1])
}

pub fn leapfrog_rebuild<B: Backend>(be: B) -> f64 {
    let (layout, x, labels) = long_unit();
    let params = layout.init(3);
    let mut eng = Engine::new(be, layout, &params).unwrap();
    eng.measure_drift = true;
    let rev = eng
        .grad(&x, &labels, Policy::Reversible.memory(), false)
        .unwrap();
    assert!(
        rev.drift <= FLOAT_DRIFT_BOUND,
        "float drift {} over the bound",
        rev.drift
    );
    let exact = eng
        .grad(&x, &labels, Policy::Exact.memory(), false)
        .unwrap();
    assert_eq!(exact.drift, 0.0, "fixed-point rebuild must be bit-exact");
    rev.drift
}

#[test]
fn leapfrog_1000_steps_cpu() {
    let drift = leapfrog_rebuild(pdenet::backend::cpu::Cpu::new());
    println!("1000-step f32 leapfrog rebuild drift: {drift:.3e}");
}

#[test]
fn leapfrog_1000_steps_cuda() {
    match pdenet::backend::cuda::Cuda::try_new() {
        Ok(c) => println!(
            "1000-step f32 leapfrog rebuild drift on CUDA: {:.3e}",
            leapfrog_rebuild(c)
        ),
        Err(e) => pdenet::backend::cuda::report_skip(e),
    }
}
