//! bf16 compute on the CPU (`--precision bf16`): the 3x3 convolutions take operands rounded to
//! bf16 (nearest even) and accumulate in f32 (`vdpbf16ps`). The kernels are checked against the
//! f64 reference *on the rounded operands* (so to f32 accuracy: every bf16 product is exact in
//! f32), whole networks against the f64 reference with the measured bf16 tolerance, and the
//! errors of a CPU without `avx512_bf16`. Without the instructions each test says SKIP.

mod common;

use common::{close, rand_vec, wide_case, Case};
use pdenet::backend::cpu::kernels::{self, Isa};
use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Backend, ConvSpec, Precision};
use pdenet::config::{Config, StepType};
use pdenet::network::Layout;
use pdenet::schedule::{Engine, GradOutput, Policy};
use pdenet::tensor::HostTensor;
use pdenet::Dims;
use proptest::test_runner::{Config as PropConfig, TestCaseError};
use rand::{Rng, SeedableRng};

fn has_bf16(test: &str) -> bool {
    let ok = Isa::Avx512Bf16.available();
    if !ok {
        eprintln!("SKIP {test}: this CPU lacks avx512_bf16");
    }
    ok
}

/// `v` rounded to bf16 (nearest even) and back, in f64.
fn bf16(v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x as f32).to_f64())
        .collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Forward, adjoint and weight gradient of the bf16 kernels against the reference on the
/// rounded operands.
fn check(c: &Case) -> Result<(), TestCaseError> {
    let (d, cout) = (c.d, c.cout);
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, d.len(), 1.0);
    let k = rand_vec(&mut rng, cout * d.c * 9, 1.0);
    let dz = rand_vec(&mut rng, d.with_c(cout).len(), 1.0);
    let kt = rand_vec(&mut rng, d.c * cout * 9, 1.0);
    let isa = Isa::Avx512Bf16;
    let name = |op: &str| format!("bf16 {op} {d:?} cout {cout}");
    let fast = kernels::conv3x3(isa, &f32s(&x), d, &f32s(&k), cout).unwrap();
    let want = Reference
        .conv(ConvSpec::full3x3(), &bf16(&x), d, &bf16(&k), cout)
        .unwrap();
    close(&name("conv3x3"), &f64s(&fast), &want)?;
    let fast = kernels::conv3x3_t(isa, &f32s(&x), d, &f32s(&kt), cout).unwrap();
    let want = Reference
        .conv_t(ConvSpec::full3x3(), &bf16(&x), d, &bf16(&kt), cout)
        .unwrap();
    close(&name("conv3x3_t"), &f64s(&fast), &want)?;
    let fast = kernels::conv3x3_wgrad(isa, &f32s(&x), d, &f32s(&dz), cout).unwrap();
    let want = Reference
        .conv_wgrad(ConvSpec::full3x3(), &bf16(&x), d, &bf16(&dz), cout)
        .unwrap();
    close(&name("conv3x3_wgrad"), &f64s(&fast), &want)
}

#[test]
fn bf16_kernels_are_f32_exact_on_rounded_operands() {
    if !has_bf16("bf16_kernels_are_f32_exact_on_rounded_operands") {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(PropConfig {
        cases: 48,
        failure_persistence: None,
        ..PropConfig::default()
    });
    runner.run(&wide_case(), |c| check(&c)).unwrap();
    // ref-cifar's widths.
    for (c, size) in [(32, 32), (64, 16), (112, 8)] {
        let case = Case {
            d: Dims::new(2, c, size, size),
            cout: c,
            seed: 7,
        };
        check(&case).unwrap();
    }
}

/// Rounding changes the result: the bf16 kernels are not the f32 ones, and their error against
/// the unrounded reference is the operand rounding's (2^-9 relative per operand).
#[test]
fn bf16_kernels_round_their_operands() {
    if !has_bf16("bf16_kernels_round_their_operands") {
        return;
    }
    let d = Dims::new(2, 16, 12, 12);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let x = rand_vec(&mut rng, d.len(), 1.0);
    let k = rand_vec(&mut rng, 16 * 16 * 9, 1.0);
    let exact = Reference.conv(ConvSpec::full3x3(), &x, d, &k, 16).unwrap();
    let e = |isa| {
        let y = kernels::conv3x3(isa, &f32s(&x), d, &f32s(&k), 16).unwrap();
        common::rel_err(&f64s(&y), &exact)
    };
    let (e16, e32) = (e(Isa::Avx512Bf16), e(Isa::Avx512));
    assert!(e32 < 1e-6, "f32 kernels: {e32}");
    // Measured 2.6e-3 (random operands of both signs).
    assert!((1e-4..1e-2).contains(&e16), "bf16 kernels: {e16}");
}

fn config(layer: StepType) -> Config {
    let json = format!(
        r#"{{"kind":"image","in_channels":3,"classes":4,"widths":[16,24],"steps":[3,3],
        "layer":"{}","h":0.3,"activation":"tanh"}}"#,
        layer.name()
    );
    serde_json::from_str(&json).unwrap()
}

fn batch(n: usize) -> (HostTensor, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..n * 3 * 10 * 10)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels = (0..n).map(|i| i % 4).collect();
    (HostTensor::new(vec![n, 3, 10, 10], x).unwrap(), labels)
}

fn flat(g: &GradOutput) -> Vec<f64> {
    let mut v: Vec<f64> = g.grad_x.iter().map(|&x| x as f64).collect();
    for (_, _, t) in g.grads.iter() {
        v.extend(t.data.iter().map(|&x| x as f64));
    }
    v
}

/// Loss and every gradient of bf16 networks (each step type, each policy) against the f64
/// reference, within the bound of the CUDA bf16 test (`tests/network.rs`, 8e-2 as a whole).
/// Measured (2026-12-07, Zen 4): loss 6e-6 to 7e-5; gradients 3.5e-2 (resnet) to 5.6e-2
/// (hamiltonian) as a whole: 3e-4 to 9e-3 per tensor in the last unit, 3e-2 to 1.2e-1 in the
/// first unit and the opening layer, behind the batch norm of `connect` whose backward pass
/// subtracts means of the cotangent (cancellation) at batch 4. The f32 CPU: below 6e-7.
#[test]
fn bf16_networks_track_the_reference() {
    if !has_bf16("bf16_networks_track_the_reference") {
        return;
    }
    let (x, labels) = batch(4);
    let mut worst = 0.0f64;
    for layer in StepType::BASIC {
        let cfg = config(layer);
        let layout = Layout::new(&cfg).unwrap();
        let params = layout.init(5);
        let cpu = Cpu::with_precision(Precision::Bf16).unwrap();
        let mut eng = Engine::new(cpu, layout.clone(), &params).unwrap();
        let mut f32e = Engine::new(Cpu::new(), layout.clone(), &params).unwrap();
        let mut oracle = Engine::new(Reference, layout, &params).unwrap();
        for policy in [Policy::Store, Policy::Reversible] {
            let what = format!("{} {}", layer.name(), policy.name());
            let want = oracle.grad(&x, &labels, policy.memory(), false).unwrap();
            let got = eng.grad(&x, &labels, policy.memory(), false).unwrap();
            let f32g = f32e.grad(&x, &labels, policy.memory(), false).unwrap();
            let e = common::rel_err(&flat(&got), &flat(&want));
            let e32 = common::rel_err(&flat(&f32g), &flat(&want));
            let el = (got.loss - want.loss).abs() / want.loss.abs();
            eprintln!("{what}: bf16 gradients {e:.2e} loss {el:.2e}; f32 {e32:.2e}");
            if std::env::var("BF16_DETAIL").is_ok() {
                for ((n, _, a), (_, _, b)) in got.grads.iter().zip(want.grads.iter()) {
                    let r = common::rel_err(&f64s(&a.data), &f64s(&b.data));
                    eprintln!("  {n}: {r:.2e}");
                }
            }
            assert!(e32 < 1e-5, "{what}: f32 {e32}");
            assert!(e < 8e-2 && el < 1e-3, "{what}: bf16 {e} loss {el}");
            worst = worst.max(e);
        }
    }
    // The bf16 path rounds: it is not the f32 one.
    assert!(worst > 1e-5, "bf16 gradients equal f32 ones ({worst})");
}

#[test]
fn precisions_the_cpu_lacks_are_one_line_errors() {
    for p in [Precision::Tf32, Precision::F16] {
        let e = Cpu::with_precision(p).unwrap_err().to_string();
        assert!(
            e.contains(p.name()) && e.contains("CUDA") && !e.contains('\n'),
            "{e}"
        );
    }
    match Cpu::with_precision(Precision::Bf16) {
        Ok(c) => assert_eq!(c.kernels(), Isa::Avx512Bf16),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("avx512_bf16") && !e.contains('\n'), "{e}");
        }
    }
    // The bf16 kernel set is not an f32 choice.
    let e = kernels::select(Isa::Avx512Bf16).unwrap_err().to_string();
    assert!(e.contains("--precision bf16"), "{e}");
}

/// `pdenet bench --precision bf16 --device cpu` runs (or names the missing instructions).
#[test]
fn grad_command_takes_bf16_on_the_cpu() {
    let bin = env!("CARGO_BIN_EXE_pdenet");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&[
        "bench",
        "--config",
        "ref-cifar",
        "--steps",
        "2",
        "--batch",
        "2",
        "--policies",
        "store",
        "--precision",
        "bf16",
        "--device",
        "cpu",
        "--repeats",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if Isa::Avx512Bf16.available() {
        assert!(out.status.success(), "{stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bf16") && text.contains("avx512bf16"),
            "{text}"
        );
    } else {
        eprintln!("SKIP bf16 bench: this CPU lacks avx512_bf16");
        assert!(
            !out.status.success() && stderr.contains("avx512_bf16"),
            "{stderr}"
        );
    }
    let out = run(&[
        "bench",
        "--precision",
        "tf32",
        "--device",
        "cpu",
        "--steps",
        "2",
    ]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Never below the rounding of one operand: a sanity check that [`bf16`] rounds.
#[test]
fn rounding_helper_rounds() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let v: Vec<f64> = (0..100).map(|_| rng.random_range(-1.0..1.0)).collect();
    let e = common::rel_err(&bf16(&v), &v);
    assert!(e > 1e-4 && e < 4e-3, "{e}");
}
