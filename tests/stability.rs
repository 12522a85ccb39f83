//! `pdenet::stability` on cases with known answers: a unit whose weights are zero is a shift
//! (growth and radius 1); a parabolic step at small h is stable (radius <= 1, Haber & Ruthotto's
//! claim: `J = I - h K^T D K` with `D >= 0`); a leapfrog (Haar chain) network is refused.

use pdenet::backend::cpu::Cpu;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::schedule::Engine;
use pdenet::stability::{analyse, StabilityOptions};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

fn batch() -> HostTensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    HostTensor::new(
        vec![2, 1, 6, 6],
        (0..72).map(|_| rng.random_range(0.0..1.0)).collect(),
    )
    .unwrap()
}

fn net(layer: &str, extra: &str) -> (Config, Layout) {
    let json = format!(
        r#"{{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[3],
        "layer":"{layer}","h":0.1,"activation":"tanh"{extra}}}"#
    );
    let cfg = Config::parse(&json, false).unwrap();
    let layout = Layout::new(&cfg).unwrap();
    (cfg, layout)
}

#[test]
fn a_unit_with_zero_weights_is_a_shift() {
    let (_, layout) = net("resnet", "");
    let mut params = layout.init(1);
    for (name, _, t) in params.iter_mut() {
        if name.starts_with("units.") && name.ends_with(".K") {
            t.data.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let eng = Engine::new(Cpu::new(), layout, &params).unwrap();
    let r = analyse(&eng, &batch(), &StabilityOptions::default()).unwrap();
    assert_eq!(r.len(), 1);
    let u = &r[0];
    for v in [u.growth_random, u.growth_adversarial, u.radius_max] {
        assert!((v - 1.0).abs() < 1e-3, "{u:?}");
    }
}

#[test]
fn parabolic_steps_are_stable_and_every_step_type_is_analysed() {
    let (_, layout) = net("parabolic", "");
    let eng = Engine::new(Cpu::new(), layout.clone(), &layout.init(4)).unwrap();
    let r = analyse(&eng, &batch(), &StabilityOptions::default()).unwrap();
    assert!(r[0].radius_max <= 1.0 + 1e-3, "{:?}", r[0]);
    assert!(r[0].growth_adversarial <= 1.0 + 1e-3, "{:?}", r[0]);
    for layer in [
        "resnet",
        "antisymmetric",
        "hyperbolic",
        "hamiltonian",
        "imex",
        "ode",
    ] {
        let (_, layout) = net(layer, "");
        let eng = Engine::new(Cpu::new(), layout.clone(), &layout.init(4)).unwrap();
        let opts = StabilityOptions {
            iterations: 6,
            trials: 2,
            ..StabilityOptions::default()
        };
        let r = analyse(&eng, &batch(), &opts).unwrap();
        let u = &r[0];
        assert_eq!(u.steps, 3, "{layer}");
        for v in [u.growth_random, u.growth_adversarial, u.radius_max] {
            assert!(v.is_finite() && v > 0.0, "{layer}: {u:?}");
        }
        assert!(
            u.growth_adversarial >= u.growth_random * 0.5,
            "{layer}: {u:?}"
        );
    }
}

#[test]
fn a_haar_chain_is_refused_with_a_reason() {
    let json = r#"{"kind":"image","in_channels":1,"classes":3,"widths":[2,8],"steps":[2,2],
        "layer":"hyperbolic","h":0.1,"connect":"haar"}"#;
    let cfg = Config::parse(json, false).unwrap();
    let layout = Layout::new(&cfg).unwrap();
    let eng = Engine::new(Cpu::new(), layout.clone(), &layout.init(1)).unwrap();
    let e = analyse(&eng, &batch(), &StabilityOptions::default()).unwrap_err();
    assert!(e.to_string().contains("Haar"), "{e}");
}
