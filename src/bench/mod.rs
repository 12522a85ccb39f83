//! `pdenet bench`: training-step throughput and memory (planned, measured, per added step) over a
//! sweep of depth, layer type, operator, policy, precision and device, beside the machine's
//! roofline measured in the same run.

mod conv_kernels;
mod report;
mod roofline;

pub use conv_kernels::{conv_kernel_points, kernel_table, KernelPoint, REF_CIFAR_SHAPES};
pub use report::{plots, table};
pub use roofline::{cpu_roofline, cuda_roofline, Roofline};

use crate::backend::cpu::kernels::{self, Isa};
use crate::backend::Backend;
use crate::config::{Config, OperatorKind, StepType};
use crate::device::Device;
use crate::error::Result;
use crate::network::Layout;
use crate::schedule::plan::{count_flops, plan_step, plan_step_on, Planner};
use crate::schedule::{Engine, MemoryPolicy, Policy};
use crate::tensor::HostTensor;
use crate::train::engine_model::EngineModel;
use crate::train::optim::{OptimConfig, Optimizer};
use crate::train::Model;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// The sweep.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub config: Config,
    pub steps: Vec<usize>,
    pub batch: usize,
    pub layers: Vec<StepType>,
    pub operators: Vec<OperatorKind>,
    pub policies: Vec<Policy>,
    /// Formats of the kept states (`MemoryPolicy::storage`), crossed with the policies.
    pub storages: Vec<crate::backend::Storage>,
    pub precisions: Vec<crate::backend::Precision>,
    pub devices: Vec<crate::backend::DeviceChoice>,
    /// Timed training steps per point (after one warm-up step).
    pub repeats: usize,
    /// CPU 3x3 convolution kernels, each point measured under each in turn (side by side);
    /// empty: the current choice ([`crate::backend::cpu::kernels::selected`]).
    pub cpu_kernels: Vec<Isa>,
}

/// One measured point.
#[derive(Clone, Debug, Serialize)]
pub struct BenchPoint {
    pub device: String,
    pub layer: String,
    pub operator: String,
    pub policy: String,
    /// Format of the kept states.
    pub storage: String,
    pub precision: String,
    /// The CPU's 3x3 convolution kernels (`-` on other devices).
    pub kernels: String,
    pub steps: usize,
    pub batch: usize,
    pub seconds_per_step: f64,
    pub images_per_s: f64,
    pub gflops: f64,
    /// Fraction of the measured GEMM rate.
    pub gemm_fraction: f64,
    /// Fraction of the measured f32 FMA ceiling (CPU), `None` where it was not measured.
    pub fma_fraction: Option<f64>,
    pub planned_peak_bytes: usize,
    pub planned_activation_bytes: usize,
    /// Device high-water mark (GPU: the driver's memory-pool high-water mark, or the backend's
    /// allocation count where the device has no pool) or peak heap (CPU) during one training
    /// step, parameters and gradients included; `None` where it could not be measured.
    pub measured_peak_bytes: Option<usize>,
    /// Planned activation bytes added per added step per unit (vs the previous depth).
    pub planned_bytes_per_step: Option<f64>,
    /// Measured bytes added per added step per unit (vs the previous depth).
    pub measured_bytes_per_step: Option<f64>,
    /// Relative error of unit inputs rebuilt by inverse steps (reversible policies).
    pub drift: f64,
}

/// `n` values uniform in [-1, 1), reproducible from `seed` (the kernel benchmarks' operands).
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// A random batch of the config's input shape (32x32 images, or 28x28 for one channel).
pub fn random_batch(cfg: &Config, n: usize, seed: u64) -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let shape = cfg.sample_shape();
    let mut full = vec![n];
    full.extend_from_slice(&shape);
    let len: usize = full.iter().product();
    let x = HostTensor {
        shape: full,
        data: (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
    };
    let labels = (0..n).map(|_| rng.random_range(0..cfg.classes)).collect();
    (x, labels)
}

struct Measured {
    seconds: f64,
    peak: Option<usize>,
    drift: f64,
}

/// How to read a backend's memory high-water mark: `reset` before the step, then `peak` gives
/// the bytes allocated at most since then (`None` where it cannot be measured).
struct PeakProbe<'a, B> {
    reset: &'a dyn Fn(&B),
    peak: &'a dyn Fn(&B) -> Option<usize>,
}

/// Times `repeats` training steps of the training loop's own kind (forward + backward + an SGD
/// update on the backend, weights and momentum staying there) on one backend.
fn time_steps<B: Backend>(
    be: B,
    layout: &Layout,
    memory: MemoryPolicy,
    batch: usize,
    repeats: usize,
    probe: PeakProbe<'_, B>,
) -> Result<Measured> {
    let cfg = &layout.config;
    let params = layout.init(1);
    let (x, labels) = random_batch(cfg, batch, 2);
    (probe.reset)(&be);
    let mut eng = Engine::new(be, layout.clone(), &params)?;
    eng.measure_drift = true;
    // The peak of one pass, as the Planner plans it (the momentum buffers come on top: one
    // more copy of the parameters).
    let out = eng.grad(&x, &labels, memory, true)?;
    eng.measure_drift = false;
    let measured = (probe.peak)(&eng.backend);
    let drift = out.drift;
    let mut model = EngineModel::new(eng, memory);
    let mut opt = Optimizer::new(OptimConfig::sgd(1e-3))?;
    // Untimed: the first update allocates the momentum buffers.
    model.train_step(&x, &labels, &mut opt, 1e-3)?;
    let t = Instant::now();
    for _ in 0..repeats {
        // Each step ends by reading a finiteness check of the last parameter from the
        // backend, so asynchronous work is inside the timing.
        model.train_step(&x, &labels, &mut opt, 1e-3)?;
    }
    Ok(Measured {
        seconds: t.elapsed().as_secs_f64() / repeats.max(1) as f64,
        peak: measured,
        drift,
    })
}

/// Runs the sweep; `progress` is called after each point.
pub fn run(
    opts: &BenchOptions,
    mut progress: impl FnMut(&BenchPoint),
) -> Result<(Vec<Roofline>, Vec<BenchPoint>)> {
    // The kernel choice is process-wide: the sweep puts back the one it found.
    let kernels_before = kernels::selected();
    let mut rooflines = Vec::new();
    let mut points: Vec<BenchPoint> = Vec::new();
    for &dev_choice in &opts.devices {
        for &precision in &opts.precisions {
            let device = Device::select_with(dev_choice, precision)?;
            let roof = match &device {
                Device::Cpu(_) => {
                    let r = cpu_roofline();
                    crate::backend::cpu::warm_threads();
                    r
                }
                Device::Cuda(c) => cuda_roofline(c)?,
            };
            for &layer in &opts.layers {
                for &operator in &opts.operators {
                    let memorys = opts.policies.iter().flat_map(|&p| {
                        let kept = opts.storages.iter();
                        kept.map(move |&s| (p, p.memory().with_storage(s)))
                    });
                    let choices: Vec<Option<Isa>> = match &device {
                        // bf16 has one kernel set.
                        Device::Cpu(b) if b.kernels() == Isa::Avx512Bf16 => {
                            vec![Some(Isa::Avx512Bf16)]
                        }
                        Device::Cpu(_) if !opts.cpu_kernels.is_empty() => {
                            opts.cpu_kernels.iter().map(|&i| Some(i)).collect()
                        }
                        Device::Cpu(_) => vec![Some(kernels::selected())],
                        Device::Cuda(_) => vec![None],
                    };
                    for (policy, memory) in memorys {
                        // Per kernel choice: the previous depth's (steps, planned, measured).
                        type Prev = Option<(usize, usize, Option<usize>)>;
                        let mut prevs: Vec<Prev> = vec![None; choices.len()];
                        for (&steps, (ci, &choice)) in opts
                            .steps
                            .iter()
                            .flat_map(|s| std::iter::repeat(s).zip(choices.iter().enumerate()))
                        {
                            if let Some(isa) = choice.filter(|&i| i != Isa::Avx512Bf16) {
                                kernels::select(isa)?;
                            }
                            let prev = prevs[ci];
                            let mut cfg = opts.config.clone();
                            cfg.layer = layer;
                            cfg.operator = operator;
                            cfg.steps = vec![steps; cfg.widths.len()];
                            let layout = Layout::new(&cfg)?;
                            let mut shape = vec![opts.batch];
                            shape.extend(cfg.sample_shape());
                            let dev = Device::select_with(dev_choice, precision)?;
                            let plan = match &dev {
                                Device::Cpu(b) => {
                                    plan_step_on(Planner::for_device(b), &layout, &shape, memory)?
                                }
                                Device::Cuda(_) => plan_step(&layout, &shape, memory)?,
                            };
                            let flops = count_flops(&layout, &shape[1..])?;
                            let m = match dev {
                                Device::Cpu(b) => {
                                    let counting = crate::alloc::counting();
                                    let base = std::cell::Cell::new(0usize);
                                    let reset = |_: &_| {
                                        // The plan counts the workspaces' growth: start empty.
                                        crate::backend::cpu::release_workspaces();
                                        crate::alloc::reset_heap_peak();
                                        base.set(crate::alloc::heap_live());
                                    };
                                    let peak = |_: &_| {
                                        counting.then(|| {
                                            crate::alloc::heap_peak().saturating_sub(base.get())
                                        })
                                    };
                                    time_steps(
                                        b,
                                        &layout,
                                        memory,
                                        opts.batch,
                                        opts.repeats,
                                        PeakProbe {
                                            reset: &reset,
                                            peak: &peak,
                                        },
                                    )?
                                }
                                Device::Cuda(b) => {
                                    b.reserve(plan.peak_bytes)?;
                                    // The driver's pool high-water mark where the device
                                    // has a pool, else the backend's own count.
                                    let base = std::cell::Cell::new((0usize, None));
                                    let reset = |c: &crate::backend::cuda::Cuda| {
                                        c.reset_peak();
                                        c.reset_driver_peak();
                                        base.set((c.current_bytes(), c.driver_peak_bytes()));
                                    };
                                    let peak = |c: &crate::backend::cuda::Cuda| {
                                        let (count, driver) = base.get();
                                        Some(match (driver, c.driver_peak_bytes()) {
                                            (Some(b), Some(p)) => p.saturating_sub(b),
                                            _ => c.peak_bytes().saturating_sub(count),
                                        })
                                    };
                                    time_steps(
                                        b,
                                        &layout,
                                        memory,
                                        opts.batch,
                                        opts.repeats,
                                        PeakProbe {
                                            reset: &reset,
                                            peak: &peak,
                                        },
                                    )?
                                }
                            };
                            let gflops =
                                flops.train_step as f64 * opts.batch as f64 / m.seconds / 1e9;
                            let per_step = |now: f64, before: f64, s0: usize| {
                                (now - before) / (steps - s0) as f64
                            };
                            let point = BenchPoint {
                                device: device.name().into(),
                                layer: layer.name().into(),
                                operator: format!("{operator:?}").to_lowercase(),
                                policy: policy.name().into(),
                                storage: memory.storage.name().into(),
                                precision: precision.name().into(),
                                kernels: choice.map_or("-", Isa::name).into(),
                                steps,
                                batch: opts.batch,
                                seconds_per_step: m.seconds,
                                images_per_s: opts.batch as f64 / m.seconds,
                                gflops,
                                gemm_fraction: gflops / roof.gemm_gflops,
                                fma_fraction: roof
                                    .fma_peak
                                    .and_then(|p| p.f32_best())
                                    .map(|peak| gflops / peak),
                                planned_peak_bytes: plan.peak_bytes,
                                planned_activation_bytes: plan.activation_bytes(),
                                measured_peak_bytes: m.peak,
                                planned_bytes_per_step: prev.map(|(s0, a0, _)| {
                                    per_step(plan.activation_bytes() as f64, a0 as f64, s0)
                                }),
                                measured_bytes_per_step: match (prev, m.peak) {
                                    (Some((s0, _, Some(p0))), Some(p)) => {
                                        Some(per_step(p as f64, p0 as f64, s0))
                                    }
                                    _ => None,
                                },
                                drift: m.drift,
                            };
                            prevs[ci] = Some((steps, plan.activation_bytes(), m.peak));
                            progress(&point);
                            points.push(point);
                        }
                    }
                }
            }
            rooflines.push(roof);
        }
    }
    kernels::select(kernels_before)?;
    Ok((rooflines, points))
}
