//! `pdenet init` and `pdenet grad` (SPEC section 9).

use clap::Args;
use pdenet::backend::{DeviceChoice, Storage};
use pdenet::config::Config;
use pdenet::device::Device;
use pdenet::network::Layout;
use pdenet::params::{read_batch, read_safetensors, save_params, write_safetensors, OutTensor};
use pdenet::schedule::{Engine, Policy};
use pdenet::{with_device, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Config file (JSON or TOML) or a reference name (ref-cifar, ref-mnist, ref-2d).
    #[arg(long)]
    pub config: String,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::args::parse_seed)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct GradArgs {
    #[arg(long)]
    pub config: String,
    /// Weights (safetensors, SPEC names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Batch (safetensors): `x` f32 and `labels` i64.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "store")]
    pub policy: Policy,
    #[command(flatten)]
    pub drift: super::args::DriftArgs,
    /// Format of the kept states: f32, bf16 or f16 (16 bits halve the memory `store` grows by).
    #[arg(long, default_value = "f32")]
    pub storage: Storage,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Arithmetic of the convolutions: f32; bf16 (operands rounded to bf16, f32 accumulation)
    /// on CUDA or on a CPU with avx512_bf16; tf32, f16 on CUDA.
    #[arg(long, default_value = "f32")]
    pub precision: pdenet::backend::Precision,
    /// Time this many passes on the loaded engine and print `seconds per grad: median ...`
    /// (the written gradients are the first pass's; passes are deterministic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

pub fn run_init(a: InitArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let layout = Layout::new(&cfg)?;
    // The parameters and their serialised copy.
    layout.check_host_memory(2, "init")?;
    save_params(&a.out, &layout.init(a.seed))?;
    eprintln!(
        "wrote {} ({} parameters)",
        a.out.display(),
        layout.parameter_count()
    );
    Ok(())
}

pub fn run_grad(a: GradArgs) -> Result<()> {
    let guard = a.drift.guard(a.precision)?;
    let cfg = Config::load(&a.config)?;
    let layout = Layout::new(&cfg)?;
    layout.check_host_memory(1, "the weights")?;
    let mut params = layout.template.clone();
    params.load_from_file(read_safetensors(&a.weights)?, &a.weights)?;
    let batch = read_batch(&a.input)?;
    let device = Device::select_with(a.device, a.precision)?;
    let schedule = a
        .policy
        .memory()
        .with_storage(a.storage)
        .with_drift_guard(guard);
    device.reserve_for(&layout, &batch.x.shape, schedule)?;
    let out = with_device!(device, |b| {
        let mut eng = Engine::new(b, layout.clone(), &params)?;
        // The engine holds its own copy: free the host one before the pass (peak memory).
        drop(params);
        let t0 = std::time::Instant::now();
        let out = eng.grad(&batch.x, &batch.labels, schedule, false)?;
        let mut times = vec![t0.elapsed().as_secs_f64()];
        for _ in 1..a.repeats {
            let t0 = std::time::Instant::now();
            eng.grad(&batch.x, &batch.labels, schedule, false)?;
            times.push(t0.elapsed().as_secs_f64());
        }
        if a.repeats > 1 {
            times.sort_by(f64::total_cmp);
            eprintln!(
                "seconds per grad: median {:.4} min {:.4} ({} runs)",
                times[times.len() / 2],
                times[0],
                times.len()
            );
        }
        out
    });
    let n = batch.labels.len();
    let loss = [out.loss as f32];
    let logits_shape = [n, cfg.classes];
    let mut tensors = vec![
        ("loss".to_string(), OutTensor::F32(&[1], &loss)),
        (
            "logits".to_string(),
            OutTensor::F32(&logits_shape, &out.logits),
        ),
    ];
    let xshape = batch.x.shape.clone();
    tensors.push(("grad.x".to_string(), OutTensor::F32(&xshape, &out.grad_x)));
    let named: Vec<(String, Vec<usize>, &[f32])> = out
        .grads
        .iter()
        .map(|(name, _, t)| (format!("grad.{name}"), t.shape.clone(), t.data.as_slice()))
        .collect();
    for (name, shape, data) in &named {
        tensors.push((name.clone(), OutTensor::F32(shape, data)));
    }
    // SPEC section 9: with `ode` units, the right-hand-side evaluations per unit.
    let units_shape = [out.nfe_forward.len()];
    let as_i64 = |v: &[usize]| v.iter().map(|&n| n as i64).collect::<Vec<i64>>();
    let (nfe_f, nfe_b) = (as_i64(&out.nfe_forward), as_i64(&out.nfe_backward));
    if cfg.ode().is_some() {
        tensors.push(("nfe.forward".into(), OutTensor::I64(&units_shape, &nfe_f)));
        tensors.push(("nfe.backward".into(), OutTensor::I64(&units_shape, &nfe_b)));
    }
    // Nothing non-finite is written: a NaN gradient is an error, not a result.
    for (name, t) in &tensors {
        if let OutTensor::F32(_, data) = t {
            pdenet::params::check_finite(data, &format!("the output `{name}`")).map_err(|m| {
                pdenet::Error::NonFinite(format!("{m}; {} not written", a.out.display()))
            })?;
        }
    }
    write_safetensors(&a.out, &tensors)?;
    if a.policy == Policy::Reversible {
        // The largest relative drift of a rebuilt unit input (0 when nothing was rebuilt).
        eprintln!("drift {:.3e}", out.drift);
    }
    if cfg.ode().is_some() {
        let total = |v: &[usize]| v.iter().sum::<usize>();
        eprintln!(
            "nfe forward {} backward {}",
            total(&out.nfe_forward),
            total(&out.nfe_backward)
        );
    }
    eprintln!("loss {:.6}; wrote {}", out.loss, a.out.display());
    Ok(())
}
