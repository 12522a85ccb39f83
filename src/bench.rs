//! `pdenet bench`: training-step throughput and memory (planned, measured, per added step) over a
//! sweep of depth, layer type, operator, policy, precision and device, beside the machine's
//! roofline measured in the same run.

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

/// The machine's ceilings, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Roofline {
    pub device: String,
    /// One large GEMM (CPU: the `gemm` crate on all cores).
    pub gemm_gflops: f64,
    /// A large copy, bytes read plus bytes written.
    pub bandwidth_gbs: f64,
    /// The FMA ceilings measured in registers (CPU only; `None` elsewhere).
    pub fma_peak: Option<crate::backend::cpu::FmaPeak>,
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

/// Measures the CPU roofline: a 2048^3 GEMM through the `gemm` crate on all cores (the best of
/// three, 17 GFLOP each: the machine's clock and neighbours vary) and a 256 MiB copy.
pub fn cpu_roofline() -> Roofline {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let run = |c: &mut [f32]| unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    };
    run(&mut c);
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            run(&mut c);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let gemm_gflops = 2.0 * (n * n * n) as f64 / best / 1e9;
    let len = 64 << 20; // f32 values: 256 MiB
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let bandwidth_gbs = (2 * 4 * len * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    Roofline {
        device: "cpu".into(),
        gemm_gflops,
        bandwidth_gbs,
        fma_peak: Some(crate::backend::cpu::peak::measure()),
    }
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

/// The GPU roofline: one 4096^3 GEMM through pdenet's own 1x1-convolution kernel in the
/// backend's precision, and a 1 GiB device-to-device copy.
pub fn cuda_roofline(be: &crate::backend::cuda::Cuda) -> Result<Roofline> {
    let n = 4096;
    let d = crate::tensor::Dims::new(1, n, 64, 64);
    let x = be.upload_f32(&vec![0.5f32; d.len()])?;
    let k = be.upload_f32(&vec![0.25f32; n * n])?;
    be.conv1x1(&x, d, &k, n)?;
    be.synchronize()?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        be.conv1x1(&x, d, &k, n)?;
    }
    be.synchronize()?;
    let gemm_gflops = 2.0 * (n * n * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    let big = be.zeros(1 << 28)?;
    be.copy(&big)?;
    be.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        be.copy(&big)?;
    }
    be.synchronize()?;
    let bandwidth_gbs = (2 * 4 * (1usize << 28) * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    Ok(Roofline {
        device: format!("cuda ({}, {})", be.device_name(), be.precision().name()),
        gemm_gflops,
        bandwidth_gbs,
        fma_peak: None,
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

/// The terminal table.
pub fn table(roofs: &[Roofline], points: &[BenchPoint]) -> String {
    let mut s = String::new();
    for r in roofs {
        s += &format!(
            "roofline {}: GEMM {:.1} GFLOP/s, copy {:.1} GB/s",
            r.device, r.gemm_gflops, r.bandwidth_gbs
        );
        if let Some(p) = &r.fma_peak {
            let show = |v: Option<f64>| v.map_or_else(|| "-".into(), |g| format!("{g:.1}"));
            s += &format!(
                "; FMA peak f32 AVX-512 {} / AVX2 {}, bf16 {} GFLOP/s (GEMM at {:.0}% of f32)",
                show(p.avx512_f32),
                show(p.avx2_f32),
                show(p.avx512_bf16),
                p.f32_best().map_or(0.0, |g| 100.0 * r.gemm_gflops / g)
            );
        }
        s += "\n";
    }
    if points.is_empty() {
        return s;
    }
    s += &format!(
        "{:<5} {:<4} {:<6} {:<13} {:<9} {:<10} {:<4} {:>5} {:>5} {:>9} {:>8} {:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
        "dev", "prec", "kern", "layer", "operator", "policy", "kept", "steps", "batch", "img/s", "GFLOP/s", "%GEMM", "%FMA", "plan MB", "meas MB", "act MB", "MB/step", "drift"
    );
    let mb = |b: f64| b / 1e6;
    for p in points {
        s += &format!(
            "{:<5} {:<4} {:<6} {:<13} {:<9} {:<10} {:<4} {:>5} {:>5} {:>9.1} {:>8.2} {:>5.0}% {:>5} {:>10.1} {:>10} {:>10.1} {:>10} {:>9.1e}\n",
            p.device,
            p.precision,
            p.kernels,
            p.layer,
            p.operator,
            p.policy,
            p.storage,
            p.steps,
            p.batch,
            p.images_per_s,
            p.gflops,
            100.0 * p.gemm_fraction,
            p.fma_fraction.map_or_else(|| "-".into(), |f| format!("{:.0}%", 100.0 * f)),
            mb(p.planned_peak_bytes as f64),
            p.measured_peak_bytes.map(|b| format!("{:.1}", mb(b as f64))).unwrap_or_else(|| "-".into()),
            mb(p.planned_activation_bytes as f64),
            p.planned_bytes_per_step.map(|b| format!("{:.2}", mb(b))).unwrap_or_else(|| "-".into()),
            p.drift
        );
    }
    s
}

/// PNG plots: planned activation memory vs depth per policy, and throughput vs depth.
pub fn plots(dir: &std::path::Path, points: &[BenchPoint]) -> Result<()> {
    crate::train::plot::series_png(
        &dir.join("memory.png"),
        "activation memory vs depth",
        "steps per unit",
        "planned activation MB",
        &series(points, |p| p.planned_activation_bytes as f64 / 1e6),
    )?;
    crate::train::plot::series_png(
        &dir.join("throughput.png"),
        "training throughput vs depth",
        "steps per unit",
        "images/s",
        &series(points, |p| p.images_per_s),
    )
}

fn series(points: &[BenchPoint], y: impl Fn(&BenchPoint) -> f64) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points {
        let key = format!(
            "{} {} {} {} {} {} {}",
            p.device, p.precision, p.kernels, p.layer, p.operator, p.policy, p.storage
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((p.steps as f64, y(p))),
            None => out.push((key, vec![(p.steps as f64, y(p))])),
        }
    }
    out
}

/// One 3x3 convolution kernel timed at one of ref-cifar's shapes.
#[derive(Clone, Debug, Serialize)]
pub struct KernelPoint {
    pub op: String,
    pub kernels: String,
    pub channels: usize,
    pub size: usize,
    pub batch: usize,
    pub seconds: f64,
    pub gflops: f64,
    /// Of the FMA ceiling of the kernels' own instructions (GEMM: the best f32 ceiling).
    pub fma_fraction: Option<f64>,
    /// Speed-up over the im2col + GEMM path measured in the same round.
    pub vs_gemm: f64,
}

/// ref-cifar's unit shapes: (channels, image size).
pub const REF_CIFAR_SHAPES: [(usize, usize); 3] = [(32, 32), (64, 16), (112, 8)];

/// Times the 3x3 convolution, its adjoint and its weight gradient (`c -> c`, batch `batch`)
/// under every kernel set this CPU has, at ref-cifar's shapes: the sets alternate within each
/// of `repeats` rounds (so that a neighbour's load hits them alike) and the best round counts.
pub fn conv_kernel_points(
    batch: usize,
    repeats: usize,
    peak: &crate::backend::cpu::FmaPeak,
) -> Result<Vec<KernelPoint>> {
    // The GEMM path last: the baseline of the `x gemm` column.
    let isas: Vec<Isa> = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Gemm]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    let mut out = Vec::new();
    for (c, size) in REF_CIFAR_SHAPES {
        let d = crate::tensor::Dims::new(batch, c, size, size);
        let (x, k) = (random_values(d.len(), 1), random_values(c * c * 9, 2));
        let g = random_values(d.len(), 3);
        let flops = 2.0 * (batch * c * c * 9 * size * size) as f64;
        type Op<'a> = Box<dyn Fn(Isa) -> Result<Vec<f32>> + 'a>;
        let ops: [(&str, Op); 3] = [
            ("conv3x3", Box::new(|i| kernels::conv3x3(i, &x, d, &k, c))),
            (
                "conv3x3_t",
                Box::new(|i| kernels::conv3x3_t(i, &g, d, &k, c)),
            ),
            (
                "conv3x3_wgrad",
                Box::new(|i| kernels::conv3x3_wgrad(i, &x, d, &g, c)),
            ),
        ];
        for (name, op) in &ops {
            let mut best = vec![f64::INFINITY; isas.len()];
            for &i in &isas {
                std::hint::black_box(op(i)?);
            }
            for _ in 0..repeats.max(1) {
                for (b, &i) in best.iter_mut().zip(&isas) {
                    let t = Instant::now();
                    std::hint::black_box(op(i)?);
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
            let gemm = best[isas.len() - 1];
            for (&secs, &i) in best.iter().zip(&isas) {
                let ceiling = match i {
                    Isa::Avx512 => peak.avx512_f32,
                    Isa::Avx512Bf16 => peak.avx512_bf16,
                    Isa::Avx2 => peak.avx2_f32,
                    Isa::Gemm => peak.f32_best(),
                };
                let gflops = flops / secs / 1e9;
                out.push(KernelPoint {
                    op: (*name).into(),
                    kernels: i.name().into(),
                    channels: c,
                    size,
                    batch,
                    seconds: secs,
                    gflops,
                    fma_fraction: ceiling.map(|p| gflops / p),
                    vs_gemm: gemm / secs,
                });
            }
        }
    }
    Ok(out)
}

/// The kernel table.
pub fn kernel_table(points: &[KernelPoint]) -> String {
    let mut s = format!(
        "{:<14} {:>4} {:>5} {:>5} {:<7} {:>9} {:>8} {:>5} {:>7}\n",
        "op", "c", "size", "batch", "kern", "ms", "GFLOP/s", "%FMA", "x gemm"
    );
    for p in points {
        s += &format!(
            "{:<14} {:>4} {:>5} {:>5} {:<7} {:>9.2} {:>8.1} {:>5} {:>7.2}\n",
            p.op,
            p.channels,
            format!("{}x{}", p.size, p.size),
            p.batch,
            p.kernels,
            1e3 * p.seconds,
            p.gflops,
            p.fma_fraction
                .map_or_else(|| "-".into(), |f| format!("{:.0}%", 100.0 * f)),
            p.vs_gemm
        );
    }
    s
}
