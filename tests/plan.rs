//! The memory plan: `reversible` keeps activation memory flat in depth for invertible units,
//! `store` grows by one state per step.

use pdenet::config::{Config, LayerType};
use pdenet::network::Layout;
use pdenet::schedule::plan::plan_step;
use pdenet::schedule::Policy;

fn cifar(steps: usize, layer: LayerType) -> Layout {
    let mut c = Config::reference("ref-cifar").unwrap();
    c.steps = vec![steps; 3];
    c.layer = layer;
    Layout::new(&c).unwrap()
}

#[test]
fn reversible_is_flat_in_depth_and_store_grows_by_one_state_per_step() {
    let shape = [8, 3, 32, 32];
    for layer in [LayerType::Hyperbolic, LayerType::Hamiltonian] {
        let plan =
            |steps, p: Policy| plan_step(&cifar(steps, layer), &shape, p.schedule()).unwrap();
        for p in [Policy::Reversible, Policy::Exact] {
            let (a, b) = (plan(2, p).activation_bytes(), plan(6, p).activation_bytes());
            assert_eq!(a, b, "{}/{}: {a} -> {b}", layer.name(), p.name());
        }
        let (s2, s6) = (
            plan(2, Policy::Store).activation_bytes(),
            plan(6, Policy::Store).activation_bytes(),
        );
        // Four more steps in each unit: at least one f32 state per step per unit is kept.
        let one_step_each_unit: usize = [32 * 32 * 32, 64 * 16 * 16, 112 * 8 * 8]
            .iter()
            .map(|v| v * 8 * 4)
            .sum();
        assert!(
            s6 - s2 >= 4 * one_step_each_unit / 2,
            "{}: store {s2} -> {s6}",
            layer.name()
        );
    }
}

#[test]
fn non_invertible_units_are_checkpointed() {
    let shape = [8, 3, 32, 32];
    let layout = |s| cifar(s, LayerType::Parabolic);
    let rev = |s| {
        plan_step(&layout(s), &shape, Policy::Reversible.schedule())
            .unwrap()
            .activation_bytes()
    };
    let store = |s| {
        plan_step(&layout(s), &shape, Policy::Store.schedule())
            .unwrap()
            .activation_bytes()
    };
    // Checkpointing holds one unit's states at a time: it grows, but less than store.
    assert!(rev(6) - rev(2) < store(6) - store(2));
}
