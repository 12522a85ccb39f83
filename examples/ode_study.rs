//! Issue 15's study, part one: on one trained `ode` network, the gradient error of `adjoint` and
//! `discretize` against the exact flow's gradient as `rtol` falls, with time, function
//! evaluations and memory of each. The judge is `discretize` on the f64 reference at
//! rtol 1e-10, itself checked by a central difference of the loss along a random direction.
//!
//!     cargo run --release --example ode_study -- CONFIG WEIGHTS DATA [BATCH]

use pdenet::alloc::{heap_live, heap_peak, reset_heap_peak, CountingAlloc};
use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::Backend;
use pdenet::config::{Config, Gradient};
use pdenet::network::Layout;
use pdenet::params::{read_safetensors, ParamRole, ParamSet};
use pdenet::schedule::plan::plan_step;
use pdenet::schedule::{Engine, GradOutput, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    if let Err(e) = run() {
        eprintln!("ode_study: {e}");
        std::process::exit(1);
    }
}

fn with_tol(cfg: &Config, rtol: f64, gradient: Gradient) -> Config {
    let mut c = cfg.clone();
    c.rtol = Some(rtol);
    c.atol = Some(rtol / 10.0);
    c.gradient = Some(gradient);
    c
}

/// All trainable gradients, concatenated in layout order.
fn flat(g: &GradOutput) -> Vec<f64> {
    g.grads
        .iter()
        .flat_map(|(_, _, t)| t.data.iter().map(|&v| v as f64))
        .collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn run() -> pdenet::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, weights, data, rest @ ..] = args.as_slice() else {
        return Err(pdenet::Error::Input(
            "usage: ode_study CONFIG WEIGHTS DATA [BATCH]".into(),
        ));
    };
    let batch: usize = rest
        .first()
        .map_or(Ok(8), |b| b.parse())
        .map_err(|_| pdenet::Error::Input("BATCH must be a positive integer".into()))?;
    let cfg = Config::load(config)?;
    if cfg.ode().is_none() {
        return Err(pdenet::Error::Config(format!(
            "{config}: not an `ode` network"
        )));
    }
    let layout = Layout::new(&cfg)?;
    let mut params = layout.template.clone();
    params.load_from_file(read_safetensors(Path::new(weights))?, Path::new(weights))?;
    let split = pdenet::train::data::load(data, 0)?;
    let idx: Vec<usize> = (0..batch).collect();
    let (x, labels) = split.test.batch(&idx)?;

    // The judge: the exact flow's gradient, to rounding.
    let judge_cfg = with_tol(&cfg, 1e-10, Gradient::Discretize);
    let mut judge = Engine::new(Reference, Layout::new(&judge_cfg)?, &params)?;
    let t = Instant::now();
    let truth = judge.grad(&x, &labels, Policy::Store.memory(), false)?;
    let g_true = flat(&truth);
    let fd = directional_fd(&mut judge, &params, &x, &labels, &truth)?;
    println!(
        "judge: f64 reference, dopri5 rtol 1e-10, nfe {:?} / {:?}, {:.1} s; along a random direction \
         the central difference {:.6e} vs the gradient {:.6e} (rel {:.1e})",
        truth.nfe_forward,
        truth.nfe_backward,
        t.elapsed().as_secs_f64(),
        fd.0,
        fd.1,
        ((fd.0 - fd.1) / fd.0).abs()
    );
    println!();
    println!("| rtol | gradient | policy | grad error | nfe fwd | nfe bwd | time (s) | heap peak (MB) | planned peak (MB) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for rtol in [1e-2, 1e-3, 1e-4, 1e-5, 1e-6] {
        for (gradient, policy) in [
            (Gradient::Discretize, Policy::Store),
            (Gradient::Discretize, Policy::Reversible),
            (Gradient::Adjoint, Policy::Reversible),
        ] {
            let c = with_tol(&cfg, rtol, gradient);
            let layout = Layout::new(&c)?;
            let shape = x.shape.clone();
            let planned = plan_step(&layout, &shape, policy.memory())?.peak_bytes;
            // Measured as planned: the engine's parameters and gradients, and the pass.
            let base = heap_live();
            reset_heap_peak();
            let mut eng = Engine::new(Cpu::new(), layout, &params)?;
            let t = Instant::now();
            let g = eng.grad(&x, &labels, policy.memory(), false)?;
            let secs = t.elapsed().as_secs_f64();
            let peak = heap_peak() - base;
            println!(
                "| {rtol:.0e} | {} | {} | {:.2e} | {} | {} | {secs:.2} | {:.1} | {:.1} |",
                match gradient {
                    Gradient::Discretize => "discretize",
                    Gradient::Adjoint => "adjoint",
                },
                policy.name(),
                rel(&flat(&g), &g_true),
                g.nfe_forward.iter().sum::<usize>(),
                g.nfe_backward.iter().sum::<usize>(),
                peak as f64 / 1e6,
                planned as f64 / 1e6,
            );
        }
    }
    Ok(())
}

/// `(central difference of the loss along a random unit direction v, g . v)`.
fn directional_fd<B: Backend>(
    eng: &mut Engine<B>,
    params: &ParamSet,
    x: &HostTensor,
    labels: &[usize],
    g: &GradOutput,
) -> pdenet::Result<(f64, f64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut v = params.clone();
    let mut norm = 0.0f64;
    for (_, role, t) in v.iter_mut() {
        for e in t.data.iter_mut() {
            *e = if role == ParamRole::Buffer {
                0.0
            } else {
                rng.random_range(-1.0f32..1.0)
            };
            norm += (*e as f64).powi(2);
        }
    }
    let norm = norm.sqrt();
    let dot: f64 = v
        .iter()
        .filter_map(|(name, _, t)| g.grads.get(name).map(|gt| (t, gt)))
        .flat_map(|(t, gt)| {
            t.data
                .iter()
                .zip(&gt.data)
                .map(|(a, b)| *a as f64 * *b as f64)
        })
        .sum::<f64>()
        / norm;
    let eps = 1e-3;
    let mut at = |s: f64| -> pdenet::Result<f64> {
        let mut p = params.clone();
        for ((_, _, t), (_, _, d)) in p.iter_mut().zip(v.iter()) {
            for (e, dv) in t.data.iter_mut().zip(&d.data) {
                *e += (s * eps / norm) as f32 * dv;
            }
        }
        eng.set_params(&p)?;
        eng.loss(x, labels)
    };
    let fd = (at(1.0)? - at(-1.0)?) / (2.0 * eps);
    eng.set_params(params)?;
    Ok((fd, dot))
}
