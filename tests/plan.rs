//! The memory plan: `reversible` keeps activation memory flat in depth for invertible units,
//! `store` grows by one state per step.

use pdenet::backend::Storage;
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::plan::plan_step;
use pdenet::schedule::Policy;

fn cifar(steps: usize, layer: StepType) -> Layout {
    let mut c = Config::reference("ref-cifar").unwrap();
    c.steps = vec![steps; 3];
    c.layer = layer;
    Layout::new(&c).unwrap()
}

#[test]
fn reversible_is_flat_in_depth_and_store_grows_by_one_state_per_step() {
    let shape = [8, 3, 32, 32];
    for layer in [StepType::Hyperbolic, StepType::Hamiltonian] {
        let plan = |steps, p: Policy| plan_step(&cifar(steps, layer), &shape, p.memory()).unwrap();
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
    let layout = |s| cifar(s, StepType::Parabolic);
    let rev = |s| {
        plan_step(&layout(s), &shape, Policy::Reversible.memory())
            .unwrap()
            .activation_bytes()
    };
    let store = |s| {
        plan_step(&layout(s), &shape, Policy::Store.memory())
            .unwrap()
            .activation_bytes()
    };
    // Checkpointing holds one unit's states at a time: it grows, but less than store.
    assert!(rev(6) - rev(2) < store(6) - store(2));
}

/// The fully hyperbolic network: with Haar connections every state has the same size, and under
/// `reversible`/`exact` a unit keeps neither its input nor its last states (the next unit's first
/// two give them back), so activation memory is flat in the number of units as well as in depth.
/// With the lean operator the peak is exactly the same; the full and mgic operators' own working
/// sets grow with the width (full: weight-gradient transients the size of its parameters; mgic:
/// one coarse tensor per level, at most about one state more), where `store` adds `steps`
/// states per unit.
#[test]
fn haar_chain_is_flat_in_units_and_steps() {
    let layout = |widths: &[usize], steps: usize, op: &str| {
        let json = format!(
            r#"{{"kind":"image","in_channels":3,"classes":10,"widths":{widths:?},
            "steps":{:?},"layer":"hyperbolic","h":0.5,"connect":"haar","operator":"{op}"}}"#,
            vec![steps; widths.len()]
        );
        Layout::new(&Config::parse(&json, false).unwrap()).unwrap()
    };
    let shape = [8, 3, 64, 64];
    let state = 8 * 4 * 64 * 64 * 4; // one f32 state: width 4 at 64x64, batch 8
    let (three, four) = (&[4, 16, 64][..], &[4, 16, 64, 256][..]);
    for op in ["lean", "mgic", "full"] {
        for p in [Policy::Reversible, Policy::Exact] {
            let act = |widths: &[usize], steps| {
                plan_step(&layout(widths, steps, op), &shape, p.memory())
                    .unwrap()
                    .activation_bytes()
            };
            let what = format!("{op}/{}", p.name());
            assert_eq!(act(three, 2), act(three, 6), "{what}: steps");
            assert_eq!(act(four, 2), act(four, 5), "{what}: steps");
            let (a3, a4) = (act(three, 2), act(four, 2));
            if op == "lean" {
                assert_eq!(act(&[4, 16], 2), a3, "{what}: units");
                assert_eq!(a3, a4, "{what}: units");
            } else if op == "mgic" {
                assert!(a4 <= a3 + state, "{what}: units {a3} -> {a4}");
            }
            // Full: at width 256 its weight-gradient transients (3 x 2.4 MB) set the peak.
        }
        let store = |widths: &[usize]| {
            plan_step(&layout(widths, 4, op), &shape, Policy::Store.memory())
                .unwrap()
                .activation_bytes()
        };
        assert!(store(four) >= store(three) + 4 * state, "{op}: store");
    }
}

/// With 16-bit states `store` adds at most half the bytes per step. Less than half, as measured
/// (0.35-0.40 at batch 8): the f32 working buffers, which do not grow, now set the peak inside
/// the first unit's backward pass, where the later units' states are already freed; the first
/// unit alone holds 0.29 of every step's states.
#[test]
fn sixteen_bit_states_halve_what_store_adds_per_step() {
    let shape = [8, 3, 32, 32];
    for layer in StepType::BASIC {
        let growth = |storage: Storage| {
            let sched = Policy::Store.memory().with_storage(storage);
            let plan = |steps| plan_step(&cifar(steps, layer), &shape, sched).unwrap();
            plan(6).activation_bytes() as f64 - plan(2).activation_bytes() as f64
        };
        let f32_growth = growth(Storage::F32);
        for storage in [Storage::Bf16, Storage::F16] {
            let ratio = growth(storage) / f32_growth;
            assert!(
                (0.25..=0.55).contains(&ratio),
                "{} {}: store grows {ratio} times as fast as with f32 states",
                layer.name(),
                storage.name()
            );
        }
    }
}
