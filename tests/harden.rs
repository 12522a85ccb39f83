//! Hardening (issue 13): every mishandled case of the bad-input battery as a regression test.
//! CLI cases run the real binary: a non-zero exit with a one-line reason, never a panic.

use pdenet::params::{read_safetensors, write_safetensors, OutTensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[global_allocator]
static ALLOC: pdenet::alloc::CountingAlloc = pdenet::alloc::CountingAlloc;

fn bin() -> String {
    std::env::var("PDENET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pdenet").to_string())
}

fn pdenet_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

fn pdenet(args: &[&str]) -> Output {
    pdenet_env(&[], args)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-harden-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The error lines of stderr (`--device auto`'s note is not one).
fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| !l.contains("note: --device auto") && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A failed run with a single-line reason containing every needle, and no panic or abort.
#[track_caller]
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    // Not killed by a signal (an abort), not a panic's 101.
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "{:?}: {err}",
        o.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {err}");
    }
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

fn image_cfg(fields: &str) -> String {
    format!(r#"{{"kind":"image","classes":10,"layer":"resnet","h":0.5,{fields}}}"#)
}

// ---- 1. sizes ----------------------------------------------------------------------------

#[test]
fn huge_configs_are_refused_before_anything_is_allocated() {
    let d = tmpdir("sizes");
    let big = 1usize << 62;
    let cases = [
        (
            image_cfg(r#""in_channels":3,"widths":[100000,8],"steps":[1,1]"#),
            "widths[0] = 100000",
        ),
        (
            image_cfg(&format!(r#""in_channels":3,"widths":[{big}],"steps":[1]"#)),
            "exceeds the limit",
        ),
        (
            format!(
                r#"{{"kind":"dense","dense_input":{big},"classes":2,"widths":[8],"steps":[1],"layer":"resnet","h":0.1}}"#
            ),
            "dense_input",
        ),
        (
            image_cfg(&format!(
                r#""in_channels":{},"widths":[8],"steps":[1]"#,
                1usize << 61
            )),
            "in_channels",
        ),
        (
            image_cfg(r#""in_channels":3,"widths":[8],"steps":[1000000000]"#),
            "steps[0] = 1000000000",
        ),
        (
            image_cfg(r#""in_channels":3,"widths":[8,8],"steps":[60000,60000]"#),
            "steps in all",
        ),
    ];
    let mut tried = 0;
    for (i, (text, needle)) in cases.iter().enumerate() {
        let c = d.join(format!("c{i}.json"));
        std::fs::write(&c, text).unwrap();
        let w = d.join("w.safetensors");
        assert_clean_error(&pdenet(&["info", "--config", s(&c)]), &[needle]);
        assert_clean_error(
            &pdenet(&["init", "--config", s(&c), "--out", s(&w)]),
            &[needle],
        );
        assert!(!w.exists());
        tried += 2;
    }
    eprintln!("{tried} huge configs refused");
}

#[test]
fn a_batch_beyond_any_machine_is_refused_before_printing() {
    let o = pdenet(&[
        "info",
        "--config",
        "ref-cifar",
        "--batch",
        &(1u64 << 62).to_string(),
    ]);
    assert_clean_error(&o, &["--batch"]);
    assert!(o.stdout.is_empty(), "half a table printed");
}

/// `info` plans with shapes only: batch 100000 of ref-cifar plans tens of GB without holding
/// the 1.2 GB input (or any other host buffer) while planning.
#[test]
fn planning_a_huge_batch_allocates_no_host_buffers() {
    use pdenet::schedule::plan::plan_step;
    let cfg = pdenet::config::Config::reference("ref-cifar").unwrap();
    let layout = pdenet::network::Layout::new(&cfg).unwrap();
    pdenet::alloc::reset_heap_peak();
    let base = pdenet::alloc::heap_live();
    let plan = plan_step(
        &layout,
        &[100_000, 3, 32, 32],
        pdenet::schedule::Policy::Store.memory(),
    )
    .unwrap();
    let host = pdenet::alloc::heap_peak() - base;
    assert!(plan.peak_bytes > 100_000_000_000, "{}", plan.peak_bytes);
    // The labels (800 kB) and the layout's names; no tensor data.
    assert!(host < 16_000_000, "planning allocated {host} bytes");
    // The binary too.
    assert_ok(&pdenet(&[
        "info",
        "--config",
        "ref-cifar",
        "--batch",
        "100000",
    ]));
}

/// Parameter counts come from shapes with checked arithmetic: the layout holds no data.
#[test]
fn the_layout_holds_shapes_only() {
    let mut cfg = pdenet::config::Config::reference("ref-cifar").unwrap();
    cfg.widths = vec![60_000, 60_000, 60_000];
    pdenet::alloc::reset_heap_peak();
    let base = pdenet::alloc::heap_live();
    let layout = pdenet::network::Layout::new(&cfg).unwrap();
    assert!(pdenet::alloc::heap_peak() - base < 4_000_000);
    // 24 steps of 9 w^2, the connections and the opening layer.
    assert!(layout.parameter_count() > 24 * 9 * 60_000 * 60_000);
}

#[test]
fn the_planned_peak_is_checked_against_the_machine_memory() {
    let d = tmpdir("mem");
    let small = [("PDENET_HOST_MEMORY", "20000000")];
    let w = d.join("w.safetensors");
    // init: the parameters alone (ref-cifar: 5.2 MB, twice) fit; the sized-up net does not.
    assert_ok(&pdenet_env(
        &small,
        &["init", "--config", "ref-cifar", "--out", s(&w)],
    ));
    let c = d.join("big.json");
    std::fs::write(
        &c,
        image_cfg(r#""in_channels":3,"widths":[60000,60000],"steps":[8,8]"#),
    )
    .unwrap();
    let o = pdenet(&[
        "init",
        "--config",
        s(&c),
        "--out",
        s(&d.join("big.safetensors")),
    ]);
    assert_clean_error(&o, &["init", "bytes", "available"]);
    // grad on the CPU: the planned peak of batch 64 exceeds 20 MB.
    let b = d.join("b.safetensors");
    let x = vec![0.5f32; 64 * 3 * 32 * 32];
    let labels = vec![1i64; 64];
    write_safetensors(
        &b,
        &[
            ("x".into(), OutTensor::F32(&[64, 3, 32, 32], &x)),
            ("labels".into(), OutTensor::I64(&[64], &labels)),
        ],
    )
    .unwrap();
    let g = d.join("g.safetensors");
    let o = pdenet_env(
        &small,
        &[
            "grad",
            "--config",
            "ref-cifar",
            "--weights",
            s(&w),
            "--input",
            s(&b),
            "--out",
            s(&g),
            "--device",
            "cpu",
        ],
    );
    assert_clean_error(
        &o,
        &["bytes", "--batch", "--policy reversible", "--storage bf16"],
    );
    assert!(!g.exists());
    // train: refused before anything is written, and no --out is left behind.
    let out = d.join("run");
    let o = pdenet_env(
        &[("PDENET_HOST_MEMORY", "1000")],
        &[
            "train",
            "--config",
            "ref-2d",
            "--data",
            "twoclass",
            "--out",
            s(&out),
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
    );
    assert_clean_error(&o, &["bytes", "available"]);
    assert!(!out.exists());
}

// ---- 2. non-finite values ---------------------------------------------------------------

fn net_files(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    net_files_of(
        d,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4,8],"steps":[2,1],"layer":"hyperbolic","h":0.5}"#,
        "3",
    )
}

/// The config `json`, weights from `init --seed seed` and a batch ([`write_batch`]) in `d`.
fn net_files_of(d: &Path, json: &str, seed: &str) -> (PathBuf, PathBuf, PathBuf) {
    let cfg = d.join("net.json");
    std::fs::write(&cfg, json).unwrap();
    let w = d.join("w.safetensors");
    assert_ok(&pdenet(&[
        "init",
        "--config",
        s(&cfg),
        "--seed",
        seed,
        "--out",
        s(&w),
    ]));
    let b = d.join("b.safetensors");
    write_batch(&b, None);
    (cfg, w, b)
}

/// A 2x1x6x6 batch, with `bad = (index, value)` written into `x`.
fn write_batch(path: &Path, bad: Option<(usize, f32)>) {
    let mut x: Vec<f32> = (0..72).map(|i| (i % 7) as f32 / 7.0 - 0.4).collect();
    if let Some((at, v)) = bad {
        x[at] = v;
    }
    write_safetensors(
        path,
        &[
            ("x".into(), OutTensor::F32(&[2, 1, 6, 6], &x)),
            ("labels".into(), OutTensor::I64(&[2], &[0, 2])),
        ],
    )
    .unwrap();
}

fn grad_args<'a>(
    cfg: &'a Path,
    w: &'a Path,
    b: &'a Path,
    g: &'a Path,
    policy: &'a str,
) -> Vec<&'a str> {
    vec![
        "grad",
        "--config",
        s(cfg),
        "--weights",
        s(w),
        "--input",
        s(b),
        "--out",
        s(g),
        "--policy",
        policy,
        "--device",
        "cpu",
    ]
}

/// Rewrites tensor `name` of a safetensors file with `f`.
fn edit_weights(src: &Path, dst: &Path, name: &str, f: impl Fn(&mut Vec<f32>)) {
    let mut t = read_safetensors(src).unwrap();
    f(&mut t.get_mut(name).unwrap().data);
    let list: Vec<(String, OutTensor<'_>)> = t
        .iter()
        .map(|(n, t)| (n.clone(), OutTensor::F32(&t.shape, &t.data)))
        .collect();
    write_safetensors(dst, &list).unwrap();
}

#[test]
fn non_finite_weights_and_inputs_are_refused_by_name_and_index() {
    let d = tmpdir("nonfinite");
    let (cfg, w, b) = net_files(&d);
    let g = d.join("g.safetensors");
    assert_ok(&pdenet(&grad_args(&cfg, &w, &b, &g, "store")));
    let mut tried = 0;
    for (v, word) in [
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
        (f32::NEG_INFINITY, "-inf"),
    ] {
        let bad = d.join("bad.safetensors");
        edit_weights(&w, &bad, "units.1.steps.0.K", |x| x[5] = v);
        for policy in ["store", "reversible", "exact"] {
            let o = pdenet(&grad_args(&cfg, &bad, &b, &g, policy));
            assert_clean_error(
                &o,
                &["bad.safetensors", "units.1.steps.0.K", "index 5", word],
            );
            tried += 1;
        }
        let bx = d.join("bx.safetensors");
        write_batch(&bx, Some((9, v)));
        let o = pdenet(&grad_args(&cfg, &w, &bx, &g, "exact"));
        assert_clean_error(&o, &["bx.safetensors", "`x`", "index 9", word]);
        tried += 1;
    }
    eprintln!("{tried} non-finite weights and inputs refused");
}

/// Weights so large that the logits overflow: `grad` writes nothing and `eval` does not print
/// `loss NaN` with exit 0.
#[test]
fn overflowing_outputs_are_errors_not_results() {
    let d = tmpdir("overflow");
    let w = d.join("w.safetensors");
    assert_ok(&pdenet(&["init", "--config", "ref-2d", "--out", s(&w)]));
    let huge = d.join("huge.safetensors");
    edit_weights(&w, &huge, "classifier.weight", |x| {
        x.iter_mut().for_each(|v| *v = 3e38)
    });
    let o = pdenet(&[
        "eval",
        "--config",
        "ref-2d",
        "--weights",
        s(&huge),
        "--data",
        "twoclass",
    ]);
    assert_clean_error(&o, &["non-finite value", "logits"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));
    let b = d.join("b.safetensors");
    write_safetensors(
        &b,
        &[
            ("x".into(), OutTensor::F32(&[2, 2], &[0.5, -0.5, 0.25, 1.0])),
            ("labels".into(), OutTensor::I64(&[2], &[0, 1])),
        ],
    )
    .unwrap();
    let g = d.join("g.safetensors");
    let o = pdenet(&[
        "grad",
        "--config",
        "ref-2d",
        "--weights",
        s(&huge),
        "--input",
        s(&b),
        "--out",
        s(&g),
        "--device",
        "cpu",
    ]);
    assert_clean_error(&o, &["non-finite value", "loss"]);
    assert!(!g.exists());
}

#[test]
fn relu_propagates_nan_on_every_backend() {
    use pdenet::backend::cpu::Cpu;
    use pdenet::backend::reference::Reference;
    use pdenet::backend::{Activation, Backend};
    assert!(Activation::Relu.apply(f64::NAN).is_nan());
    assert_eq!(Activation::Relu.apply(-2.0), 0.0);
    let r = Reference;
    let y = r
        .activation(Activation::Relu, &r.upload(&[f64::NAN, -1.0, 2.0]).unwrap())
        .unwrap();
    let y = r.download(&y).unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
    let c = Cpu::new();
    let y = c
        .activation(
            Activation::Relu,
            &c.upload_f32(&[f32::NAN, -1.0, 2.0]).unwrap(),
        )
        .unwrap();
    assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
    // The fused CPU step: a NaN in the state reaches the output instead of vanishing.
    let d = pdenet::Dims::new(1, 2, 4, 4);
    let mut x: Vec<f32> = (0..d.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    x[3] = f32::NAN;
    let k: Vec<f32> = (0..2 * 2 * 9)
        .map(|i| (i as f32 * 0.11).cos() * 0.3)
        .collect();
    let (xb, kb) = (c.upload_f32(&x).unwrap(), c.upload_f32(&k).unwrap());
    let shift = c.upload_f32(&[0.0, 0.0]).unwrap();
    let norm = pdenet::backend::Norm::Shift { b: &shift };
    let y = c
        .step_full3x3(&[(1.0, &xb)], -0.5, &xb, d, &kb, norm, Activation::Relu)
        .unwrap();
    let nan = y.iter().filter(|v| v.is_nan()).count();
    assert!(nan > 1, "the fused step dropped the NaN: {nan} NaN outputs");
}

#[test]
fn exact_refuses_to_quantise_non_finite_values() {
    use pdenet::backend::cpu::Cpu;
    use pdenet::backend::reference::Reference;
    use pdenet::backend::Backend;
    for v in [f32::NAN, f32::INFINITY] {
        let c = Cpu::new();
        let e = c
            .quantize(&c.upload_f32(&[1.0, v]).unwrap(), 16)
            .unwrap_err();
        assert!(
            e.to_string().contains("non-finite") && e.to_string().contains("value 1"),
            "{e}"
        );
        let r = Reference;
        let e = r.quantize(&r.upload(&[v as f64]).unwrap(), 16).unwrap_err();
        assert!(e.to_string().contains("cannot quantise"), "{e}");
    }
}

/// A model whose gradient (not loss) is non-finite: the message says so.
#[test]
fn a_non_finite_gradient_is_not_reported_as_a_non_finite_loss() {
    use pdenet::params::{ParamRole, ParamSet};
    use pdenet::train::{train, Model, TrainOptions};
    use pdenet::HostTensor;
    struct Bad(ParamSet);
    impl Model for Bad {
        fn params(&self) -> pdenet::Result<ParamSet> {
            Ok(self.0.clone())
        }
        fn set_params(&mut self, p: &ParamSet) -> pdenet::Result<()> {
            self.0 = p.clone();
            Ok(())
        }
        fn grad(
            &mut self,
            x: &HostTensor,
            _l: &[usize],
        ) -> pdenet::Result<(f64, Vec<f32>, ParamSet)> {
            let mut g = self.0.clone();
            g.get_mut("w").unwrap().data[1] = f32::NAN;
            Ok((0.5, vec![0.0; x.shape[0] * 2], g))
        }
        fn logits(&mut self, x: &HostTensor) -> pdenet::Result<Vec<f32>> {
            Ok(vec![0.0; x.shape[0] * 2])
        }
    }
    let mut p = ParamSet::new();
    p.push(
        "w",
        ParamRole::Weight,
        HostTensor::new(vec![2], vec![0.1, 0.2]).unwrap(),
    );
    let split = pdenet::train::data::load("twoclass", 1).unwrap();
    let d = tmpdir("gradnan");
    let mut opts = TrainOptions::new(d.join("run"), 1, 0);
    opts.plots = false;
    let e = train(&mut Bad(p), &split, &opts).unwrap_err().to_string();
    assert!(e.contains("gradient of `w`") && !e.contains("loss"), "{e}");
    // A refused run leaves no empty --out.
    assert!(!d.join("run").exists());
}

// ---- 3-5. training runs and checkpoints ---------------------------------------------------

fn train_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--config",
        "ref-2d",
        "--data",
        "twoclass",
        "--out",
        s(out),
        "--device",
        "cpu",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn batch_one_is_refused_and_a_batch_beyond_the_data_trains() {
    let d = tmpdir("batch");
    let out = d.join("run");
    let o = pdenet(&train_args(&out, &["--batch", "1", "--epochs", "1"]));
    assert_clean_error(&o, &["--batch 1", "at least 2"]);
    assert!(!out.exists(), "a refused run left {}", out.display());
    let o = pdenet(&train_args(&out, &["--batch", "100000", "--epochs", "1"]));
    assert_ok(&o);
    assert!(stderr(&o).contains("exceeds the"), "{}", stderr(&o));
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

#[test]
fn train_refuses_to_overwrite_a_run_without_resume_or_force() {
    let d = tmpdir("overwrite");
    let out = d.join("run");
    assert_ok(&pdenet(&train_args(
        &out,
        &["--epochs", "1", "--batch", "64"],
    )));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = pdenet(&train_args(
        &out,
        &["--epochs", "1", "--batch", "64", "--seed", "5"],
    ));
    assert_clean_error(&o, &["already holds a run", "--resume", "--force"]);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    assert!(out.join("checkpoint/LATEST").exists());
    let o = pdenet(&train_args(
        &out,
        &["--epochs", "1", "--batch", "64", "--seed", "5", "--force"],
    ));
    assert_ok(&o);
    assert_ne!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

#[test]
fn checkpoints_are_strict_and_temporaries_of_killed_runs_are_removed() {
    let d = tmpdir("strict");
    let out = d.join("run");
    assert_ok(&pdenet(&train_args(
        &out,
        &["--epochs", "2", "--batch", "64"],
    )));
    let ck = out.join("checkpoint");
    assert_eq!(
        std::fs::read_to_string(ck.join("LATEST")).unwrap(),
        "epoch-0002"
    );
    // Only the latest checkpoint is kept once it is durable.
    let dirs: Vec<_> = std::fs::read_dir(&ck)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    // A checkpoint epoch beyond --epochs.
    let o = pdenet(&train_args(
        &out,
        &["--epochs", "1", "--batch", "64", "--resume"],
    ));
    assert_clean_error(&o, &["2 epochs", "--epochs 1"]);
    // Leftovers of a killed run go at the next start.
    let stale = out.join(".loss.png.999999.tmp.png");
    std::fs::write(&stale, b"partial").unwrap();
    let stale2 = out.join(".model.safetensors.999999.tmp");
    std::fs::write(&stale2, b"partial").unwrap();
    assert_ok(&pdenet(&train_args(
        &out,
        &["--epochs", "2", "--batch", "64", "--resume"],
    )));
    assert!(!stale.exists() && !stale2.exists());
    // A checkpoint missing one optimizer tensor is an error, not a silent restart at zero.
    let opt = ck.join("epoch-0002/optimizer.safetensors");
    let mut t = read_safetensors(&opt).unwrap();
    let name = t.keys().min().unwrap().clone();
    t.remove(&name);
    let list: Vec<(String, OutTensor<'_>)> = t
        .iter()
        .map(|(n, t)| (n.clone(), OutTensor::F32(&t.shape, &t.data)))
        .collect();
    write_safetensors(&opt, &list).unwrap();
    let o = pdenet(&train_args(
        &out,
        &["--epochs", "2", "--batch", "64", "--resume"],
    ));
    assert_clean_error(
        &o,
        &["optimizer.safetensors", "missing optimizer tensor", &name],
    );
}

// ---- 6. messages --------------------------------------------------------------------------

fn write_typed(path: &Path, name: &str, dtype: safetensors::Dtype, shape: &[usize]) {
    let n: usize = shape.iter().product();
    let bytes = vec![0u8; n * dtype.bitsize() / 8];
    let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), &bytes).unwrap();
    safetensors::tensor::serialize_to_file([(name, view)], None, path).unwrap();
}

#[test]
fn messages_name_the_dtype_the_file_and_the_choices() {
    let d = tmpdir("messages");
    let (cfg, w, b) = net_files(&d);
    let g = d.join("g.safetensors");
    let mut tried = 0;
    for (dt, word) in [
        (safetensors::Dtype::F64, "F64"),
        (safetensors::Dtype::BF16, "BF16"),
        (safetensors::Dtype::I64, "I64"),
    ] {
        let typed = d.join("typed.safetensors");
        write_typed(&typed, "classifier.bias", dt, &[3]);
        let o = pdenet(&grad_args(&cfg, &typed, &b, &g, "store"));
        assert_clean_error(&o, &["typed.safetensors", "classifier.bias", word]);
        tried += 1;
    }
    // grad names the weights file of a missing tensor.
    let partial = d.join("partial.safetensors");
    write_typed(&partial, "classifier.bias", safetensors::Dtype::F32, &[3]);
    let o = pdenet(&grad_args(&cfg, &partial, &b, &g, "store"));
    assert_clean_error(&o, &["partial.safetensors", "missing tensor"]);
    // eval: one prefix, the file named.
    let o = pdenet(&[
        "eval",
        "--config",
        "ref-2d",
        "--weights",
        s(&w),
        "--data",
        "twoclass",
    ]);
    assert_clean_error(&o, &["w.safetensors"]);
    assert_eq!(
        stderr(&o).matches("weights error").count(),
        1,
        "{}",
        stderr(&o)
    );
    // Unknown reference names list the names.
    let o = pdenet(&["info", "--config", "ref-cifra"]);
    assert_clean_error(&o, &["ref-cifra", "ref-cifar, ref-mnist, ref-2d"]);
    // Negative numbers parse as values, with a range error.
    let out = d.join("neg");
    assert_clean_error(&pdenet(&train_args(&out, &["--lr", "-1"])), &["--lr", "-1"]);
    assert_clean_error(
        &pdenet(&train_args(&out, &["--seed", "-1"])),
        &["seed", "-1"],
    );
    assert_clean_error(
        &pdenet(&["init", "--config", "ref-2d", "--seed", "-3", "--out", s(&g)]),
        &["seed", "-3"],
    );
    assert!(!out.exists());
    assert_clean_error(&pdenet(&["bench", "--repeats", "0"]), &["--repeats"]);
    tried += 8;
    eprintln!("{tried} message cases");
}

#[test]
fn device_auto_says_when_it_runs_on_the_cpu() {
    let d = tmpdir("auto");
    let (cfg, w, b) = net_files(&d);
    let g = d.join("g.safetensors");
    let mut a = grad_args(&cfg, &w, &b, &g, "store");
    a.truncate(a.len() - 2);
    let o = pdenet_env(&[("CUDA_VISIBLE_DEVICES", "")], &a);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("note: --device auto runs on the CPU ("),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(bin())
        .args(["info", "--config", "ref-cifar"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the pipe before the child writes (as `| head -0` would).
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    assert!(
        o.status.success() || o.status.signal() == Some(libc::SIGPIPE),
        "{:?} {err}",
        o.status
    );
}

// ---- 7. GPU test skips -----------------------------------------------------------------------

#[test]
fn require_cuda_turns_a_skip_into_a_failure() {
    // The variable is read only by `report_skip`, which no other test of this binary calls.
    let was = std::env::var("PDENET_REQUIRE_CUDA").ok();
    std::env::set_var("PDENET_REQUIRE_CUDA", "1");
    let r = std::panic::catch_unwind(|| pdenet::backend::cuda::report_skip("no device"));
    match was {
        Some(v) => std::env::set_var("PDENET_REQUIRE_CUDA", v),
        None => std::env::remove_var("PDENET_REQUIRE_CUDA"),
    }
    assert!(r.is_err(), "a skip under PDENET_REQUIRE_CUDA=1 must fail");
}

// ---- 3. the drift guard of reversible ---------------------------------------------------

/// A leapfrog unit at h = 2 over 30 steps: its rebuild drifts past the default --drift-tol, so
/// `grad --policy reversible` recomputes it (and says so) and writes `store`'s gradients;
/// `--strict` refuses and writes nothing; a negative tolerance is refused.
#[test]
fn reversible_drift_is_recomputed_or_refused() {
    let d = tmpdir("drift-guard");
    let (cfg, w, b) = net_files_of(
        &d,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[30],"layer":"hyperbolic","h":2.0,"activation":"relu","norm":"tv"}"#,
        "7",
    );
    let (gs, gr) = (d.join("store.safetensors"), d.join("rev.safetensors"));
    assert_ok(&pdenet(&grad_args(&cfg, &w, &b, &gs, "store")));
    let o = pdenet(&grad_args(&cfg, &w, &b, &gr, "reversible"));
    assert_ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("recomputed") && err.contains("drift"), "{err}");
    let (a, c) = (
        read_safetensors(&gs).unwrap(),
        read_safetensors(&gr).unwrap(),
    );
    for (name, t) in a.iter() {
        assert_eq!(t.data, c.get(name).unwrap().data, "{name}");
    }
    let gx = d.join("strict.safetensors");
    let mut args = grad_args(&cfg, &w, &b, &gx, "reversible");
    args.push("--strict");
    assert_clean_error(&pdenet(&args), &["--drift-tol", "unit 0"]);
    assert!(!gx.exists());
    let mut args = grad_args(&cfg, &w, &b, &gx, "reversible");
    args.extend(["--drift-tol", "-1"]);
    assert_clean_error(&pdenet(&args), &["--drift-tol"]);
}
