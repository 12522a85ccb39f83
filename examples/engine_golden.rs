//! Digest of the engine's results over step type x operator x policy x storage x backend, one
//! line per case: loss, logits, input and parameter gradients, drift and NFE as bits, and the
//! planned peak. Run before and after an engine change and `diff` the outputs: a refactor that
//! keeps the arithmetic must change no line.
//!
//! `cargo run --release --example engine_golden > golden.txt`

use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Backend, Precision, Storage};
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::schedule::plan::plan_step;
use pdenet::schedule::{DriftGuard, Engine, GradOutput, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

/// FNV-1a over the results' bit patterns.
fn digest(g: &GradOutput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bits: u64| {
        for b in bits.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(g.loss.to_bits());
    eat(g.drift.to_bits());
    g.logits.iter().for_each(|v| eat(v.to_bits() as u64));
    g.grad_x.iter().for_each(|v| eat(v.to_bits() as u64));
    for (_, _, t) in g.grads.iter() {
        t.data.iter().for_each(|v| eat(v.to_bits() as u64));
    }
    g.nfe_forward.iter().for_each(|&n| eat(n as u64));
    g.nfe_backward.iter().for_each(|&n| eat(n as u64));
    h
}

/// `(name, config JSON)` of every network shape the engine distinguishes.
fn networks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let image = |layer: &str, op: &str, widths: &str, extra: &str| {
        format!(
            r#"{{"kind":"image","in_channels":1,"classes":3,"widths":{widths},"steps":[3,2],
            "layer":"{layer}","h":0.5,"activation":"relu","norm":"tv","operator":"{op}"{extra}}}"#
        )
    };
    for layer in [
        "resnet",
        "antisymmetric",
        "parabolic",
        "hyperbolic",
        "hamiltonian",
        "imex",
    ] {
        for (op, widths) in [("full", "[8,16]"), ("lean", "[8,16]"), ("mgic", "[32,16]")] {
            if layer == "imex" && op != "full" {
                continue;
            }
            out.push((format!("{layer}/{op}"), image(layer, op, widths, "")));
        }
    }
    out.push((
        "hyperbolic/haar".into(),
        image("hyperbolic", "full", "[8,32]", r#","connect":"haar""#),
    ));
    for (solver, grad) in [
        ("rk4", "discretize"),
        ("dopri5", "discretize"),
        ("dopri5", "adjoint"),
    ] {
        let extra = format!(r#","rhs":"parabolic","solver":"{solver}","gradient":"{grad}""#);
        out.push((
            format!("ode/{solver}/{grad}"),
            image("ode", "full", "[8,16]", &extra),
        ));
    }
    for layer in ["resnet", "antisymmetric", "hamiltonian", "hyperbolic"] {
        out.push((
            format!("dense/{layer}"),
            format!(
                r#"{{"kind":"dense","dense_input":2,"classes":2,"widths":[8],"steps":[6],
                "h":0.1,"layer":"{layer}","activation":"tanh"}}"#
            ),
        ));
    }
    out
}

fn batch(cfg: &Config) -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let shape = match cfg.kind {
        pdenet::config::NetworkKind::Image => vec![4, 1, 8, 8],
        pdenet::config::NetworkKind::Dense => vec![4, 2],
    };
    let n: usize = shape.iter().product();
    let x = HostTensor::new(shape, (0..n).map(|_| rng.random_range(0.0..1.0)).collect()).unwrap();
    let labels = (0..4).map(|i| i % cfg.classes).collect();
    (x, labels)
}

fn run<B: Backend>(dev: &str, make: impl Fn() -> B) {
    for (name, json) in networks() {
        let cfg = Config::parse(&json, false).unwrap();
        let layout = Layout::new(&cfg).unwrap();
        let params = layout.init(7);
        let (x, labels) = batch(&cfg);
        for policy in Policy::ALL {
            for storage in [Storage::F32, Storage::Bf16, Storage::F16] {
                for guard in [None, Some(DriftGuard::default())] {
                    if guard.is_some() && policy != Policy::Reversible {
                        continue;
                    }
                    let sched = policy
                        .memory()
                        .with_storage(storage)
                        .with_drift_guard(guard);
                    let mut eng = Engine::new(make(), layout.clone(), &params).unwrap();
                    eng.measure_drift = true;
                    let case = format!(
                        "{dev} {name} {} {storage:?} guard={}",
                        policy.name(),
                        guard.is_some()
                    );
                    let plan = plan_step(&layout, &x.shape, sched)
                        .map(|p| p.peak_bytes.to_string())
                        .unwrap_or_else(|e| format!("err({e})"));
                    match eng.grad(&x, &labels, sched, true) {
                        Ok(g) => {
                            let (loss, d) = (g.loss, digest(&g));
                            // The batch-norm running statistics, updated by the step.
                            let running = digest(&GradOutput {
                                grads: eng.params().unwrap(),
                                ..g
                            });
                            println!(
                                "{case}: loss {loss:.9e} digest {d:016x} running {running:016x} plan {plan}"
                            );
                        }
                        Err(e) => println!("{case}: error {e} plan {plan}"),
                    }
                }
            }
        }
    }
}

fn main() {
    run("reference", || Reference);
    run("cpu", Cpu::new);
    if let Ok(cpu) = Cpu::with_precision(Precision::Bf16) {
        run("cpu-bf16", move || cpu);
    }
}
