//! The memory of candle's backward through a pdenet unit, measured by a counting allocator:
//! flat in depth under `reversible` and `exact` (8 vs 32 steps), growing with depth under
//! `store` (which shows that the measurement sees the states).

use candle_core::{Device, Tensor, Var};
use pdenet::alloc::{heap_live, heap_peak, reset_heap_peak, CountingAlloc};
use pdenet::api::UnitOptions;
use pdenet::config::StepType;
use pdenet::schedule::Policy;
use pdenet_candle::Unit;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const SHAPE: [usize; 4] = [4, 8, 24, 24];
const STATE_BYTES: usize = 4 * 8 * 24 * 24 * 4;

/// Peak heap bytes above those live before, during candle's forward and during its backward,
/// and the bytes of the packed parameters.
fn peaks(layer: StepType, steps: usize, policy: Policy) -> (usize, usize, usize) {
    let unit = Unit::new(&UnitOptions::new(layer, SHAPE[1], steps, 0.2), policy).unwrap();
    let dev = Device::Cpu;
    let theta = Var::from_tensor(&unit.init_params(&dev).unwrap()).unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, &SHAPE, &dev).unwrap()).unwrap();
    // Once to warm up the thread pool and the engine's first-call allocations.
    let warm = unit.forward(&x, &theta).unwrap().sum_all().unwrap();
    drop(warm.backward().unwrap());

    let base = heap_live();
    reset_heap_peak();
    let loss = unit
        .forward(&x, &theta)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let fwd = heap_peak() - base;
    let base = heap_live();
    reset_heap_peak();
    let grads = loss.backward().unwrap();
    let bwd = heap_peak() - base;
    assert!(grads.get(&theta).is_some() && grads.get(&x).is_some());
    println!(
        "{} {} steps={steps}: forward peak {:.2} states, backward peak {:.2} states",
        layer.name(),
        policy.name(),
        fwd as f64 / STATE_BYTES as f64,
        bwd as f64 / STATE_BYTES as f64
    );
    (fwd, bwd, 4 * unit.packed_len())
}

// One test, so that no other test allocates while this one measures.
#[test]
fn backward_memory_is_flat_in_depth() {
    for layer in [StepType::Hyperbolic, StepType::Hamiltonian] {
        for policy in [Policy::Reversible, Policy::Exact] {
            let (f8, b8, p8) = peaks(layer, 8, policy);
            let (f32_, b32, p32) = peaks(layer, 32, policy);
            // 24 more steps may cost their parameters' gradients (pdenet's per-name vectors,
            // the packed vector, candle's tensor and its accumulation: four copies) and at most
            // 2 states of allocator slack, not 24 states.
            let slack = 2 * STATE_BYTES;
            let grads = 4 * (p32 - p8);
            assert!(
                b32 <= b8 + grads + slack,
                "{layer:?} {policy:?} backward: {b8} -> {b32} bytes"
            );
            assert!(
                f32_ <= f8 + slack,
                "{layer:?} {policy:?} forward: {f8} -> {f32_} bytes"
            );
        }
        let (_, b8, p8) = peaks(layer, 8, Policy::Store);
        let (_, b32, p32) = peaks(layer, 32, Policy::Store);
        // Store keeps every state: at least 20 of the 24 more (the parts of a hamiltonian
        // state count twice).
        assert!(
            b32 >= b8 + 4 * (p32 - p8) + 20 * STATE_BYTES,
            "{layer:?} store: {b8} -> {b32} bytes, the measurement misses the states"
        );
    }
}
