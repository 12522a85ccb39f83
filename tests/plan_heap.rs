//! The CPU memory plan against the measured heap: a training step's planned peak
//! (`Planner::for_device(&cpu)`: buffers, declared workspaces, fused ops) equals the counting
//! allocator's high-water mark during the same step: within 10 % (the bound; typically
//! 0.1-0.2 %; the plan assumes that every pool thread grows its workspace, and on a busy machine
//! one thread may run no sample of the largest op).

use pdenet::alloc::{heap_live, heap_peak, reset_heap_peak, CountingAlloc};
use pdenet::backend::cpu::{release_workspaces, warm_threads, Cpu};
use pdenet::backend::{Precision, Storage};
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::plan::{plan_step_on, Planner};
use pdenet::schedule::{Engine, MemoryPolicy, Policy};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Planned and measured peak bytes of one training step.
fn planned_and_measured(
    layer: StepType,
    steps: usize,
    memory: MemoryPolicy,
    batch: usize,
    cpu: Cpu,
) -> (usize, usize) {
    let mut cfg = Config::reference("ref-cifar").unwrap();
    cfg.steps = vec![steps; cfg.widths.len()];
    cfg.layer = layer;
    let layout = Layout::new(&cfg).unwrap();
    let shape = [batch, 3, 32, 32];
    let plan = plan_step_on(Planner::for_device(&cpu), &layout, &shape, memory).unwrap();
    let params = layout.init(1);
    let (x, labels) = pdenet::bench::random_batch(&cfg, batch, 2);
    release_workspaces();
    reset_heap_peak();
    let base = heap_live();
    let mut eng = Engine::new(cpu, layout.clone(), &params).unwrap();
    let out = eng.grad(&x, &labels, memory, false).unwrap();
    let measured = heap_peak() - base;
    drop((out, eng));
    (plan.peak_bytes, measured)
}

/// One test function: the heap counter is global, so the points run one after another.
#[test]
fn planned_peak_matches_measured_heap() {
    warm_threads();
    let points = [
        (StepType::Hyperbolic, 2, Policy::Store, 8),
        (StepType::Hyperbolic, 2, Policy::Reversible, 8),
        // Past the first two steps: the rebuild shares the VJP's pass (`step_full3x3_vjp`).
        (StepType::Hyperbolic, 5, Policy::Reversible, 4),
        (StepType::Hyperbolic, 4, Policy::Exact, 4),
        (StepType::Hamiltonian, 2, Policy::Reversible, 4),
        (StepType::Parabolic, 2, Policy::Store, 4),
    ]
    .map(|(l, s, p, b)| (l, s, p, p.memory(), b));
    // States kept in bf16 (`--storage bf16`).
    let bf16 = Policy::Store.memory().with_storage(Storage::Bf16);
    let points = points.into_iter().chain([
        (StepType::Hyperbolic, 4, Policy::Store, bf16, 8),
        (StepType::Parabolic, 2, Policy::Store, bf16, 4),
    ]);
    let points = points.map(|(l, s, p, sc, b)| (l, s, p, sc, b, Cpu::new()));
    // bf16 compute (`--precision bf16`, where the CPU has it): paired planes, rounded copies.
    let bf16_cpu = Cpu::with_precision(Precision::Bf16).ok();
    if bf16_cpu.is_none() {
        println!("SKIP bf16 compute points: this CPU lacks avx512_bf16");
    }
    let points = points.chain(bf16_cpu.into_iter().flat_map(|c| {
        [
            (
                StepType::Hyperbolic,
                2,
                Policy::Store,
                Policy::Store.memory(),
                8,
                c,
            ),
            (
                StepType::Hyperbolic,
                2,
                Policy::Reversible,
                Policy::Reversible.memory(),
                8,
                c,
            ),
            (
                StepType::Hamiltonian,
                2,
                Policy::Store,
                Policy::Store.memory(),
                4,
                c,
            ),
        ]
    }));
    for (layer, steps, policy, memory, batch, cpu) in points {
        let (plan, meas) = planned_and_measured(layer, steps, memory, batch, cpu);
        let err = (plan as f64 - meas as f64).abs() / meas as f64;
        println!(
            "{} {} ({} states, {} compute) steps {steps} batch {batch}: planned {plan}, measured {meas} ({:.2} %)",
            layer.name(),
            policy.name(),
            memory.storage.name(),
            cpu.precision().name(),
            100.0 * err
        );
        assert!(
            err <= 0.10,
            "{} {} ({} states) steps {steps}: planned {plan} vs measured {meas}",
            layer.name(),
            policy.name(),
            memory.storage.name()
        );
    }
}
