//! Whole networks, every step type: finite-difference gradients on the f64 reference, and the
//! memory policies against each other (`reversible` = `store`; `exact` = fixed-point `store`).

use pdenet::backend::reference::Reference;
use pdenet::backend::{Backend, Storage};
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::{Engine, MemoryPolicy, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

fn image_config(layer: StepType, steps: usize) -> Config {
    let json = format!(
        r#"{{"kind":"image","in_channels":2,"classes":3,"widths":[4,4],"steps":[{steps},{steps}],
        "layer":"{}","h":0.3,"activation":"tanh"}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

fn dense_config(layer: StepType) -> Config {
    let json = format!(
        r#"{{"kind":"dense","dense_input":2,"classes":2,"widths":[4,6],"steps":[2,2],
        "layer":"{}","h":0.2,"activation":"tanh","norm":"tv"}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

fn batch(cfg: &Config, n: usize, seed: u64) -> (HostTensor, Vec<usize>) {
    batch_hw(cfg, n, seed, image_size(cfg))
}

/// 6x5 images, or 8x8 under `connect: haar` (which halves even sizes at every connection).
fn image_size(cfg: &Config) -> (usize, usize) {
    if cfg.connect == pdenet::config::Connect::Haar {
        (8, 8)
    } else {
        (6, 5)
    }
}

fn batch_hw(cfg: &Config, n: usize, seed: u64, hw: (usize, usize)) -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let shape = match cfg.kind {
        pdenet::config::NetworkKind::Image => vec![n, cfg.input_width(), hw.0, hw.1],
        pdenet::config::NetworkKind::Dense => vec![n, cfg.input_width()],
    };
    let len = shape.iter().product();
    let x = HostTensor::new(
        shape,
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect(),
    )
    .unwrap();
    let labels = (0..n).map(|i| i % cfg.classes).collect();
    (x, labels)
}

/// Perturbs the shifts and scales away from their 0/1 initial values so that their gradients
/// are exercised in general position.
fn random_params(layout: &Layout, seed: u64) -> pdenet::params::ParamSet {
    let mut p = layout.init(seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    for (name, role, t) in p.iter_mut() {
        if role == pdenet::params::ParamRole::Affine || name.ends_with("bn.weight") {
            t.data
                .iter_mut()
                .for_each(|v| *v += rng.random_range(-0.3..0.3));
        }
    }
    p
}

fn fd_check(cfg: Config) {
    let layout = Layout::new(&cfg).unwrap();
    let params = random_params(&layout, 7);
    let (x, labels) = batch(&cfg, 3, 11);
    let mut eng = Engine::new(Reference, layout.clone(), &params).unwrap();
    let out = eng
        .grad(&x, &labels, Policy::Store.memory(), false)
        .unwrap();
    let eps = 1e-6;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut checked = 0;
    for (name, _, g) in out.grads.iter() {
        for _ in 0..3 {
            let i = rng.random_range(0..g.len());
            eng.nudge_param(name, i, eps).unwrap();
            let lp = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, -2.0 * eps).unwrap();
            let lm = eng.loss(&x, &labels).unwrap();
            eng.nudge_param(name, i, eps).unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let an = g.data[i] as f64;
            // The gradient is delivered in f32: compare with an f32-sized floor.
            let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(1e-3));
            assert!(
                err < 2e-4,
                "{} {name}[{i}]: analytic {an} vs finite difference {fd}",
                cfg.layer.name()
            );
            checked += 1;
        }
    }
    assert!(checked > 10);
}

#[test]
fn finite_differences_image_networks() {
    for layer in StepType::BASIC {
        fd_check(image_config(layer, 2));
    }
}

#[test]
fn finite_differences_dense_networks() {
    for layer in StepType::BASIC {
        fd_check(dense_config(layer));
    }
}

fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

/// Relative difference of all gradients (parameters and input) taken as one vector.
fn global_rel_diff(a: &pdenet::schedule::GradOutput, b: &pdenet::schedule::GradOutput) -> f64 {
    let flat = |g: &pdenet::schedule::GradOutput| -> Vec<f32> {
        let mut v = g.grad_x.clone();
        for (_, _, t) in g.grads.iter() {
            v.extend_from_slice(&t.data);
        }
        v
    };
    rel_diff(&flat(a), &flat(b))
}

/// `reversible` equals `store` within 1e-5, and `exact` equals fixed-point `store` bit for bit.
pub fn policies_agree<B: Backend>(make: impl Fn() -> B) {
    for layer in StepType::BASIC {
        policies_agree_on(&make, &[image_config(layer, 3), dense_config(layer)]);
    }
}

/// [`policies_agree`] on the configurations given.
pub fn policies_agree_on<B: Backend>(make: impl Fn() -> B, configs: &[Config]) {
    {
        for cfg in configs.iter().cloned() {
            let layer = cfg.layer;
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 2, 9);
            let mut eng = Engine::new(make(), layout, &params).unwrap();
            eng.measure_drift = true;
            let dev = eng.backend.name();
            let store = eng
                .grad(&x, &labels, Policy::Store.memory(), false)
                .unwrap();
            let rev = eng
                .grad(&x, &labels, Policy::Reversible.memory(), false)
                .unwrap();
            for ((name, _, a), (_, _, b)) in rev.grads.iter().zip(store.grads.iter()) {
                let e = rel_diff(&a.data, &b.data);
                assert!(
                    e <= 1e-5,
                    "{} {} ({:?}, {:?}, {:?}): reversible vs store {name}: {e}",
                    dev,
                    layer.name(),
                    cfg.operator,
                    cfg.connect,
                    cfg.widths
                );
            }
            assert!(rel_diff(&rev.grad_x, &store.grad_x) <= 1e-5);
            let exact = eng
                .grad(&x, &labels, Policy::Exact.memory(), false)
                .unwrap();
            let store_fixed = MemoryPolicy {
                keep_all: true,
                ..Policy::Exact.memory()
            };
            let sf = eng.grad(&x, &labels, store_fixed, false).unwrap();
            assert_eq!(exact.loss.to_bits(), sf.loss.to_bits());
            for ((name, _, a), (_, _, b)) in exact.grads.iter().zip(sf.grads.iter()) {
                let same = a
                    .data
                    .iter()
                    .zip(&b.data)
                    .all(|(p, q)| p.to_bits() == q.to_bits());
                assert!(
                    same,
                    "{} {}: exact vs fixed-point store differ in {name}",
                    dev,
                    layer.name()
                );
            }
            assert!(exact
                .grad_x
                .iter()
                .zip(&sf.grad_x)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
            if layer.invertible() {
                assert_eq!(
                    exact.drift,
                    0.0,
                    "{}: fixed-point rebuild must be exact",
                    layer.name()
                );
            }
        }
    }
}

#[test]
fn policies_agree_reference() {
    policies_agree(|| Reference);
}

#[test]
fn policies_agree_cpu() {
    policies_agree(pdenet::backend::cpu::Cpu::new);
}

/// States kept in 16 bits (`MemoryPolicy::storage`): the forward pass is unchanged (the loss bit for
/// bit), the gradients move by the rounding of the kept states and no more, `reversible` rounds
/// the trajectories it recomputes the same way, and every backend matches the f64 reference
/// under the same storage.
pub fn kept_storage_tracks_f32<B: Backend>(make: impl Fn() -> B) {
    for layer in StepType::BASIC {
        for cfg in [image_config(layer, 3), dense_config(layer)] {
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 2, 9);
            let mut eng = Engine::new(make(), layout.clone(), &params).unwrap();
            let mut oracle = Engine::new(Reference, layout, &params).unwrap();
            let dev = eng.backend.name();
            let store = Policy::Store.memory();
            let full = eng.grad(&x, &labels, store, false).unwrap();
            // Rounding a state costs 2^-9 (bf16) or 2^-12 (f16) relative (more for f16's
            // subnormals, below 6.1e-5); measured at most 8.3e-3 (bf16) and 3.0e-3 (f16, the
            // hamiltonian image network), 1e-4 to 3e-3 elsewhere.
            for (storage, tol) in [(Storage::Bf16, 2e-2), (Storage::F16, 1e-2)] {
                let what = format!("{dev} {} {}", layer.name(), storage.name());
                let sched = store.with_storage(storage);
                let kept = eng.grad(&x, &labels, sched, false).unwrap();
                assert_eq!(kept.loss.to_bits(), full.loss.to_bits(), "{what}: loss");
                let e = global_rel_diff(&kept, &full);
                assert!(e > 0.0 && e <= tol, "{what}: gradients moved by {e}");
                let want = oracle.grad(&x, &labels, sched, false).unwrap();
                let e = global_rel_diff(&kept, &want);
                assert!(e <= 2e-3, "{what}: against the reference {e}");
                if !layer.invertible() {
                    let rev = Policy::Reversible.memory().with_storage(storage);
                    let rev = eng.grad(&x, &labels, rev, false).unwrap();
                    let e = global_rel_diff(&rev, &kept);
                    assert!(e <= 1e-5, "{what}: reversible vs store {e}");
                }
            }
        }
    }
}

#[test]
fn kept_storage_tracks_f32_reference() {
    kept_storage_tracks_f32(|| Reference);
}

#[test]
fn kept_storage_tracks_f32_cpu() {
    kept_storage_tracks_f32(pdenet::backend::cpu::Cpu::new);
}

#[test]
fn kept_storage_tracks_f32_cuda() {
    if cuda().is_some() {
        kept_storage_tracks_f32(|| cuda().expect("checked above"));
    }
}

fn cuda() -> Option<pdenet::backend::cuda::Cuda> {
    match pdenet::backend::cuda::Cuda::try_new() {
        Ok(c) => Some(c),
        Err(e) => {
            pdenet::backend::cuda::report_skip(e);
            None
        }
    }
}

#[test]
fn policies_agree_cuda() {
    if cuda().is_some() {
        policies_agree(|| cuda().expect("checked above"));
    }
}

/// The same network, weights and batch on the GPU and on the CPU: every gradient agrees, for all
/// five layer types and all three policies.
#[test]
fn cuda_matches_cpu_on_whole_networks() {
    let Some(gpu) = cuda() else { return };
    let mut gpu = Some(gpu);
    for layer in StepType::BASIC {
        for cfg in [image_config(layer, 3), dense_config(layer)] {
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 3, 9);
            let mut cpu =
                Engine::new(pdenet::backend::cpu::Cpu::new(), layout.clone(), &params).unwrap();
            let mut dev = Engine::new(gpu.take().expect("one device"), layout, &params).unwrap();
            for policy in Policy::ALL {
                let a = dev.grad(&x, &labels, policy.memory(), false).unwrap();
                let b = cpu.grad(&x, &labels, policy.memory(), false).unwrap();
                assert!(
                    (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs().max(1.0),
                    "{} {}: loss",
                    layer.name(),
                    policy.name()
                );
                if policy == Policy::Exact {
                    // In fixed point a last-bit difference of f between devices can move one
                    // rounding by 2^-16, and that flip lands wholly in whichever small tensor
                    // it touches (a bias gradient moved 1.2e-3 on the H100, 2026-11-28).
                    // Per device `exact` is bit-exact (policies_agree_cuda); across devices
                    // the gradient as a whole must agree.
                    let e = global_rel_diff(&a, &b);
                    assert!(e <= 1e-3, "{} exact: gradients differ by {e}", layer.name());
                    continue;
                }
                for ((name, _, ga), (_, _, gb)) in a.grads.iter().zip(b.grads.iter()) {
                    let e = rel_diff(&ga.data, &gb.data);
                    assert!(
                        e <= 1e-4,
                        "{} {}: {name} differs by {e}",
                        layer.name(),
                        policy.name()
                    );
                }
                assert!(rel_diff(&a.grad_x, &b.grad_x) <= 1e-4);
            }
            gpu = Some(dev.backend);
        }
    }
}

/// Training gradients with tensor-core convolutions (tf32, bf16, f16 operands; f32 storage) stay
/// close to the f32 CPU engine's as a whole: within the operands' rounding, every layer type.
#[test]
fn tensor_core_gradients_track_f32() {
    if cuda().is_none() {
        return;
    }
    use pdenet::backend::Precision;
    // Operand rounding u = 2^-11 (tf32) and 2^-9 (bf16) compounds over ~10 convolutions; on the
    // H100 (2026-11-28) tf32 moved the worst single tensor (resnet) by 1.0e-2. bf16's bound is
    // tf32's scaled by the ratio of the two u, with a factor 2 to spare. f16 has tf32's u, but
    // without loss scaling the small gradients (below 2^-14) are subnormal and lose bits: tf32's
    // bound with a factor 2 for that (not yet measured on a GPU).
    for (p, tol) in [
        (Precision::Tf32, 1e-2),
        (Precision::Bf16, 8e-2),
        (Precision::F16, 2e-2),
    ] {
        let mut gpu = Some(pdenet::backend::cuda::Cuda::try_new_with(p).unwrap());
        for layer in StepType::BASIC {
            let cfg = image_config(layer, 3);
            let layout = Layout::new(&cfg).unwrap();
            let params = random_params(&layout, 5);
            let (x, labels) = batch(&cfg, 3, 9);
            let mut cpu =
                Engine::new(pdenet::backend::cpu::Cpu::new(), layout.clone(), &params).unwrap();
            let mut dev = Engine::new(gpu.take().expect("one device"), layout, &params).unwrap();
            let a = dev
                .grad(&x, &labels, Policy::Store.memory(), false)
                .unwrap();
            let b = cpu
                .grad(&x, &labels, Policy::Store.memory(), false)
                .unwrap();
            let mut worst = rel_diff(&a.grad_x, &b.grad_x);
            for ((_, _, ga), (_, _, gb)) in a.grads.iter().zip(b.grads.iter()) {
                worst = worst.max(rel_diff(&ga.data, &gb.data));
            }
            let whole = global_rel_diff(&a, &b);
            println!(
                "{} {}: gradient difference {whole:.2e} as a whole, {worst:.2e} worst tensor",
                p.name(),
                layer.name()
            );
            assert!(
                whole <= tol,
                "{} {}: {whole:.3e} > {tol:.0e}",
                p.name(),
                layer.name()
            );
            assert!((a.loss - b.loss).abs() <= tol * b.loss.abs().max(1.0));
            gpu = Some(dev.backend);
        }
    }
}

// ---- operators and layers of SPEC section 7 ------------------------------------------------

/// An image network with extra keys (`operator`, `connect`), `widths` and `steps` per unit.
fn config_with(layer: StepType, widths: &[usize], steps: usize, extra: &str) -> Config {
    let steps: Vec<usize> = vec![steps; widths.len()];
    let json = format!(
        r#"{{"kind":"image","in_channels":2,"classes":3,"widths":{widths:?},"steps":{steps:?},
        "layer":"{}","h":0.3,"activation":"tanh"{extra}}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

/// The new configurations, each step type where it applies: lean at width 4, mgic at 32 (one
/// coarse level; hamiltonian halves reach 16, the full coarsest operator) and 16, IMEX with
/// each operator, and Haar connections (a three-unit fully hyperbolic chain among them).
pub fn structured_configs(steps: usize) -> Vec<Config> {
    let mut out = Vec::new();
    for layer in StepType::BASIC {
        out.push(config_with(layer, &[4, 4], steps, r#","operator":"lean""#));
        out.push(config_with(
            layer,
            &[32, 16],
            steps,
            r#","operator":"mgic""#,
        ));
        // Width 4, not 2: tvNorm over two channels is ill-conditioned enough that f32 rebuilds
        // through two units drift past 1e-5.
        out.push(config_with(layer, &[4, 16], steps, r#","connect":"haar""#));
    }
    out.push(config_with(
        StepType::Hamiltonian,
        &[64],
        1,
        r#","operator":"mgic""#,
    ));
    for op in ["full", "lean", "mgic"] {
        let w = if op == "mgic" { 32 } else { 4 };
        out.push(config_with(
            StepType::Imex,
            &[w, w],
            steps,
            &format!(r#","operator":"{op}""#),
        ));
    }
    out.push(config_with(
        StepType::Hyperbolic,
        &[4, 16, 64],
        steps,
        r#","connect":"haar","operator":"lean""#,
    ));
    out
}

#[test]
fn finite_differences_structured_networks() {
    for cfg in structured_configs(2) {
        fd_check(cfg);
    }
}

#[test]
fn policies_agree_structured_reference() {
    policies_agree_on(|| Reference, &structured_configs(3));
}

#[test]
fn policies_agree_structured_cpu() {
    policies_agree_on(pdenet::backend::cpu::Cpu::new, &structured_configs(3));
}

#[test]
fn policies_agree_structured_cuda() {
    if cuda().is_some() {
        policies_agree_on(|| cuda().expect("checked above"), &structured_configs(3));
    }
}

#[test]
fn mgic_has_far_fewer_parameters_than_full() {
    // Operator weights of one step at width w.
    let count = |op: &str, w: usize| -> usize {
        let cfg = config_with(
            StepType::Parabolic,
            &[w],
            1,
            &format!(r#","operator":"{op}""#),
        );
        let layout = Layout::new(&cfg).unwrap();
        layout
            .template
            .iter()
            .filter(|(n, r, _)| n.contains(".steps.") && *r == pdenet::params::ParamRole::Weight)
            .map(|(_, _, t)| t.numel())
            .sum()
    };
    // Full: 9 w^2. Mgic: 9 g w + g w / 2 per level, a geometric sum (about 19 g w): the ratio
    // grows linearly with w.
    for (w, ratio) in [(32, 1), (64, 2), (128, 3), (256, 7)] {
        let (full, mgic, lean) = (count("full", w), count("mgic", w), count("lean", w));
        println!("w {w}: operator weights full {full}, mgic {mgic}, lean {lean}");
        assert!(mgic * ratio < full, "w {w}: mgic {mgic} vs full {full}");
        assert!(lean * 7 < full, "w {w}: lean {lean} vs full {full}");
    }
}

#[test]
fn structured_parameter_names() {
    let names = |cfg: &Config| -> Vec<String> {
        Layout::new(cfg)
            .unwrap()
            .template
            .names()
            .map(str::to_string)
            .collect()
    };
    let lean = names(&config_with(
        StepType::Hamiltonian,
        &[4],
        1,
        r#","operator":"lean""#,
    ));
    for n in [
        "units.0.steps.0.K1.P",
        "units.0.steps.0.K1.D",
        "units.0.steps.0.K2.D",
    ] {
        assert!(lean.iter().any(|x| x == n), "{n} missing from {lean:?}");
    }
    let mgic = names(&config_with(
        StepType::Parabolic,
        &[64],
        1,
        r#","operator":"mgic""#,
    ));
    for n in [
        "units.0.steps.0.G",
        "units.0.steps.0.R",
        "units.0.steps.0.coarse.G",
        "units.0.steps.0.coarse.R",
        "units.0.steps.0.coarse.coarse.K",
    ] {
        assert!(mgic.iter().any(|x| x == n), "{n} missing from {mgic:?}");
    }
    let imex = names(&config_with(StepType::Imex, &[4], 1, ""));
    assert!(imex.iter().any(|x| x == "units.0.steps.0.diffusion"));
    let haar = names(&config_with(
        StepType::Hyperbolic,
        &[2, 8],
        1,
        r#","connect":"haar""#,
    ));
    assert!(!haar.iter().any(|x| x.contains("connect")));
    // Widths that are not g times a power of two are a config error.
    let bad = config_with(StepType::Parabolic, &[48], 1, r#","operator":"mgic""#);
    assert!(Layout::new(&bad).is_err());
}

#[test]
fn haar_needs_even_image_sizes() {
    let cfg = config_with(StepType::Hyperbolic, &[2, 8], 1, r#","connect":"haar""#);
    let layout = Layout::new(&cfg).unwrap();
    let mut eng = Engine::new(Reference, layout.clone(), &layout.init(1)).unwrap();
    let (x, labels) = batch_hw(&cfg, 2, 1, (6, 5));
    let e = eng
        .grad(&x, &labels, Policy::Store.memory(), false)
        .err()
        .unwrap();
    assert!(matches!(e, pdenet::Error::Shape(_)), "{e}");
}

/// A NaN in one step's weights: the error names that step. (A dense network: relu, as `max(x, 0)`,
/// would turn the NaN into zeros after an image network's connective layer.)
#[test]
fn non_finite_loss_names_the_layer() {
    let cfg = dense_config(StepType::Hyperbolic);
    let layout = Layout::new(&cfg).unwrap();
    let mut params = layout.init(1);
    params.get_mut("units.1.steps.1.K").unwrap().data[0] = f32::NAN;
    let (x, labels) = batch(&cfg, 2, 1);
    let mut eng = Engine::new(pdenet::backend::cpu::Cpu::new(), layout, &params).unwrap();
    let e = eng
        .grad(&x, &labels, Policy::Store.memory(), true)
        .err()
        .expect("NaN loss is an error");
    let msg = e.to_string();
    assert!(msg.contains("`units.1.steps.1`"), "{msg}");
}
