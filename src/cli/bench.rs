//! `pdenet bench`: the memory and throughput sweep.

use clap::Args;
use pdenet::backend::{DeviceChoice, Precision, Storage};
use pdenet::bench::{self, BenchOptions};
use pdenet::config::{Config, OperatorKind, StepType};
use pdenet::params::write_atomic;
use pdenet::schedule::Policy;
use pdenet::{Error, Result};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Config file or reference name.
    #[arg(long, default_value = "ref-cifar")]
    pub config: String,
    /// Steps per unit, comma-separated.
    #[arg(long, default_value = "2,8,32")]
    pub steps: String,
    /// Batch size (default 8, so that the default sweep runs in under 2 minutes on 2 cores).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Layer types, comma-separated (default: the config's).
    #[arg(long)]
    pub layers: Option<String>,
    /// Operators, comma-separated (default: the config's).
    #[arg(long)]
    pub operators: Option<String>,
    #[arg(long, default_value = "store,reversible,exact")]
    pub policies: String,
    /// Formats of the kept states, comma-separated (f32, bf16, f16), crossed with the policies.
    #[arg(long, default_value = "f32")]
    pub storage: String,
    #[arg(long, default_value = "f32")]
    pub precision: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed training steps per point.
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CPU 3x3 convolution kernels, comma-separated (avx512, avx2, gemm): every point is
    /// measured under each in turn, side by side (default: the best this CPU has).
    #[arg(long)]
    pub cpu_kernels: Option<String>,
    /// Only the roofline and the 3x3 convolution kernels at ref-cifar's shapes (batch
    /// `--batch`, best of `--repeats` rounds), every kernel set this CPU has; no training step.
    #[arg(long)]
    pub kernels: bool,
    /// Also write PNG plots into this folder.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

fn list<T: FromStr<Err = Error>>(s: &str) -> Result<Vec<T>> {
    s.split(',').map(|v| v.trim().parse()).collect()
}

fn operator(s: &str) -> Result<OperatorKind> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| Error::Input(format!("unknown operator `{s}` (full, lean, mgic)")))
}

pub fn run_bench(a: BenchArgs) -> Result<()> {
    let config = Config::load(&a.config)?;
    let steps: Vec<usize> = a
        .steps
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| Error::Input(format!("bad --steps entry `{v}`")))
        })
        .collect::<Result<_>>()?;
    if steps.is_empty() || a.batch == 0 {
        return Err(Error::Input("--steps and --batch must be positive".into()));
    }
    if a.repeats == 0 {
        return Err(Error::Input(
            "--repeats must be at least 1 (no timed step, no throughput)".into(),
        ));
    }
    if a.kernels {
        let roof = bench::cpu_roofline();
        let peak = roof.fma_peak.unwrap_or_default();
        let points = bench::conv_kernel_points(a.batch, a.repeats, &peak)?;
        print!("{}", bench::table(std::slice::from_ref(&roof), &[]));
        print!("{}", bench::kernel_table(&points));
        if let Some(path) = &a.json {
            let v = serde_json::json!({ "rooflines": [roof], "kernels": points });
            let text = serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?;
            write_atomic(path, text.as_bytes())?;
        }
        return Ok(());
    }
    let cpu_kernels = match &a.cpu_kernels {
        Some(s) => list::<pdenet::backend::cpu::kernels::Isa>(s)?,
        None => Vec::new(),
    };
    for isa in &cpu_kernels {
        if !isa.available() {
            return Err(Error::Input(format!(
                "--cpu-kernels {}: this CPU lacks the instructions",
                isa.name()
            )));
        }
    }
    let opts = BenchOptions {
        cpu_kernels,
        layers: match &a.layers {
            Some(s) => list::<StepType>(s)?,
            None => vec![config.layer],
        },
        operators: match &a.operators {
            Some(s) => s
                .split(',')
                .map(|v| operator(v.trim()))
                .collect::<Result<_>>()?,
            None => vec![config.operator],
        },
        policies: list::<Policy>(&a.policies)?,
        storages: list::<Storage>(&a.storage)?,
        precisions: list::<Precision>(&a.precision)?,
        devices: list::<DeviceChoice>(&a.device)?,
        config,
        steps,
        batch: a.batch,
        repeats: a.repeats,
    };
    let total = opts.layers.len()
        * opts.operators.len()
        * opts.policies.len()
        * opts.storages.len()
        * opts.precisions.len()
        * opts.devices.len()
        * opts.steps.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (roofs, points) = bench::run(&opts, |p| {
        bar.set_message(format!(
            "{} {} steps {}: {:.1} img/s",
            p.layer, p.policy, p.steps, p.images_per_s
        ));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    print!("{}", bench::table(&roofs, &points));
    if let Some(path) = &a.json {
        let v = serde_json::json!({ "rooflines": roofs, "points": points });
        let text = serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(path, text.as_bytes())?;
    }
    if let Some(dir) = &a.plot {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        pdenet::bench::plots(dir, &points)?;
    }
    Ok(())
}
