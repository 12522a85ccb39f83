//! `pdenet stability`: forward-propagation growth and step spectra of a trained network.

use clap::Args;
use pdenet::backend::cpu::Cpu;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::params::read_safetensors;
use pdenet::schedule::Engine;
use pdenet::stability::{analyse, StabilityOptions};
use pdenet::Result;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StabilityArgs {
    #[arg(long)]
    pub config: String,
    /// Weights (safetensors, SPEC names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Data whose test images are the states analysed (MNIST folder or a built-in 2-D set).
    #[arg(long, default_value = pdenet::train::DEFAULT_DATA)]
    pub data: String,
    /// Test samples in the analysed batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Random perturbations per unit.
    #[arg(long, default_value_t = 8)]
    pub trials: usize,
    /// Power iterations (adversarial perturbation; each step's Jacobian).
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::args::parse_seed)]
    pub seed: u64,
}

pub fn run_stability(a: StabilityArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let layout = Layout::new(&cfg)?;
    let mut params = layout.template.clone();
    params.load_from_file(read_safetensors(&a.weights)?, &a.weights)?;
    let split = pdenet::train::data::load(&a.data, a.seed)?;
    let n = a.batch.min(split.test.len());
    if n == 0 {
        return Err(pdenet::Error::Input(format!(
            "{}: no test samples to analyse (--batch {})",
            a.data, a.batch
        )));
    }
    let (x, _) = split.test.batch(&(0..n).collect::<Vec<_>>())?;
    let eng = Engine::new(Cpu::new(), layout, &params)?;
    let opts = StabilityOptions {
        trials: a.trials,
        iterations: a.iterations,
        seed: a.seed,
        ..StabilityOptions::default()
    };
    let rows = analyse(&eng, &x, &opts)?;
    println!(
        "{} network, h {}, {n} test samples; perturbations {:e} of the state's norm",
        cfg.layer.name(),
        cfg.h,
        opts.rel_size
    );
    println!(
        "{:>4} {:>5} {:>5} {:>10} {:>13} {:>12} {:>15}",
        "unit", "width", "steps", "M random", "M adversarial", "radius max", "radius median"
    );
    for r in rows {
        println!(
            "{:>4} {:>5} {:>5} {:>10.4} {:>13.4} {:>12.4} {:>15.4}",
            r.unit,
            r.width,
            r.steps,
            r.growth_random,
            r.growth_adversarial,
            r.radius_max,
            r.radius_median
        );
    }
    Ok(())
}
