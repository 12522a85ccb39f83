//! `pdenet info`: parameters, FLOPs per input and the planned memory of a training step.

use clap::Args;
use pdenet::backend::Storage;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::schedule::plan::{check_sizes, count_flops, plan_step};
use pdenet::schedule::{DriftGuard, Policy};
use pdenet::Result;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Config file or reference name.
    #[arg(long)]
    pub config: String,
    /// Batch size of the planned training step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
}

pub fn run_info(a: InfoArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let layout = Layout::new(&cfg)?;
    let sample = cfg.sample_shape();
    let flops = count_flops(&layout, &sample)?;
    let mut shape = vec![a.batch.max(1)];
    shape.extend_from_slice(&sample);
    // Before anything is printed: a batch too large to describe is an error, not half a table.
    check_sizes(&layout, &shape)?;
    println!("config      {}", a.config);
    println!(
        "network     {:?} {} x {:?} steps {:?} widths, operator {:?}, h {}",
        cfg.kind,
        cfg.layer.name(),
        cfg.steps,
        cfg.widths,
        cfg.operator,
        cfg.h
    );
    if let Some(o) = cfg.ode() {
        let steps = if o.solver.adaptive() {
            format!(
                "planned at {} accepted steps per interval (the run's count depends on the values)",
                pdenet::schedule::plan::PLAN_ODE_STEPS
            )
        } else {
            format!("{} substeps per interval", o.substeps)
        };
        println!(
            "ode         rhs {}, {:?} rtol {:e} atol {:e}, {:?} gradient; {steps}",
            o.rhs.name(),
            o.solver,
            o.rtol,
            o.atol,
            o.gradient
        );
    }
    println!("parameters  {}", layout.parameter_count());
    println!("input       {sample:?}");
    println!(
        "FLOPs/input {:.3} M forward, {:.3} M training step",
        flops.forward as f64 / 1e6,
        flops.train_step as f64 / 1e6
    );
    println!(
        "planned memory of a training step at batch {} (MB):",
        shape[0]
    );
    println!(
        "  {:<11} {:>10} {:>10} {:>10} {:>12}",
        "policy", "peak", "params", "grads", "activations"
    );
    // Each policy, and `store` with its states kept in 16 bits (`--storage bf16`; f16 plans the same).
    let rows = Policy::ALL
        .map(|p| {
            (
                p.name().to_string(),
                // `reversible` is planned with the guard `grad` and `train` run by default.
                p.memory()
                    .with_drift_guard((p == Policy::Reversible).then(DriftGuard::default)),
            )
        })
        .into_iter()
        .chain([(
            "store bf16".to_string(),
            Policy::Store.memory().with_storage(Storage::Bf16),
        )]);
    for (name, schedule) in rows {
        let m = plan_step(&layout, &shape, schedule)?;
        let mb = |b: usize| b as f64 / 1e6;
        println!(
            "  {:<11} {:>10.2} {:>10.2} {:>10.2} {:>12.2}",
            name,
            mb(m.peak_bytes),
            mb(m.param_bytes),
            mb(m.grad_bytes),
            mb(m.activation_bytes())
        );
    }
    Ok(())
}
