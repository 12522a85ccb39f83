//! The `pdenet` binary: `init` and `grad` end to end, and one-line errors (never a panic) on
//! bad input.

use pdenet::params::{read_safetensors, write_safetensors, OutTensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pdenet(args: &[&str]) -> Output {
    // PDENET names the binary where the tests run away from their build tree (the GPU machine).
    let bin = std::env::var("PDENET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pdenet").to_string());
    Command::new(bin).args(args).output().expect("binary runs")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_batch(path: &Path, shape: &[usize], labels: &[i64]) {
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    write_safetensors(
        path,
        &[
            ("x".into(), OutTensor::F32(shape, &x)),
            ("labels".into(), OutTensor::I64(&[labels.len()], labels)),
        ],
    )
    .unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failed run with a single-line reason containing `needle`, and no panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let all = String::from_utf8_lossy(&o.stderr);
    // `--device auto` may say that it runs on the CPU: a note, not part of the error.
    let err: String = all
        .lines()
        .filter(|l| !l.contains("note: --device auto"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn init_then_grad_under_every_policy() {
    let d = tmpdir("grad");
    let cfg = d.join("net.json");
    std::fs::write(
        &cfg,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4,8],"steps":[2,1],"layer":"hyperbolic","h":0.5}"#,
    )
    .unwrap();
    let w = d.join("w.safetensors");
    let o = pdenet(&["init", "--config", s(&cfg), "--seed", "1", "--out", s(&w)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = d.join("b.safetensors");
    write_batch(&b, &[2, 1, 6, 6], &[0, 2]);
    let mut losses = Vec::new();
    let mut kx = Vec::new();
    for (policy, storage) in [
        ("store", "f32"),
        ("reversible", "f32"),
        ("exact", "f32"),
        ("store", "bf16"),
    ] {
        let g = d.join(format!("g-{policy}-{storage}.safetensors"));
        let o = pdenet(&[
            "grad",
            "--config",
            s(&cfg),
            "--weights",
            s(&w),
            "--input",
            s(&b),
            "--out",
            s(&g),
            "--policy",
            policy,
            "--storage",
            storage,
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t = read_safetensors(&g).unwrap();
        for name in [
            "loss",
            "logits",
            "grad.x",
            "grad.open.conv.weight",
            "grad.units.1.steps.0.K",
            "grad.classifier.bias",
        ] {
            assert!(t.contains_key(name), "{name} missing");
        }
        assert_eq!(t["logits"].shape, vec![2, 3]);
        assert_eq!(t["grad.x"].shape, vec![2, 1, 6, 6]);
        assert!(
            !t.contains_key("grad.open.bn.running_mean"),
            "buffers have no gradient"
        );
        losses.push(t["loss"].data[0]);
        kx.push(t["grad.units.1.steps.0.K"].data.clone());
    }
    assert!((losses[0] - losses[1]).abs() < 1e-6);
    // bf16 states: the same forward pass, a gradient within bf16's rounding of f32's.
    assert_eq!(losses[0], losses[3]);
    let diff = kx[0].iter().zip(&kx[3]).map(|(a, b)| (a - b).abs());
    let scale = kx[0].iter().fold(0f32, |m, a| m.max(a.abs()));
    let worst = diff.fold(0f32, f32::max);
    assert!(worst > 0.0 && worst <= 2e-2 * scale, "{worst} vs {scale}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let d = tmpdir("errors");
    let cfg = d.join("net.json");
    std::fs::write(
        &cfg,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[1],"layer":"parabolic","h":0.5}"#,
    )
    .unwrap();
    let w = d.join("w.safetensors");
    assert!(pdenet(&["init", "--config", s(&cfg), "--out", s(&w)])
        .status
        .success());
    let b = d.join("b.safetensors");
    let g = d.join("g.safetensors");
    let grad = |cfg: &Path, w: &Path, b: &Path, extra: &[&str]| {
        let mut a = vec![
            "grad",
            "--config",
            s(cfg),
            "--weights",
            s(w),
            "--input",
            s(b),
            "--out",
            s(&g),
        ];
        a.extend_from_slice(extra);
        pdenet(&a)
    };

    // Labels out of range.
    write_batch(&b, &[2, 1, 4, 4], &[0, 3]);
    assert_clean_error(&grad(&cfg, &w, &b, &[]), "out of range");
    // Wrong input shape.
    write_batch(&b, &[2, 2, 4, 4], &[0, 1]);
    assert_clean_error(&grad(&cfg, &w, &b, &[]), "shape");
    // Truncated weights.
    write_batch(&b, &[2, 1, 4, 4], &[0, 1]);
    let bytes = std::fs::read(&w).unwrap();
    let trunc = d.join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&grad(&cfg, &trunc, &b, &[]), "safetensors");
    // Weights of another config: a missing tensor.
    let cfg2 = d.join("net2.json");
    std::fs::write(
        &cfg2,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[2],"layer":"parabolic","h":0.5}"#,
    )
    .unwrap();
    assert_clean_error(&grad(&cfg2, &w, &b, &[]), "units.0.steps.1");
    // Bad configs.
    for (text, needle) in [
        (
            r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[1],"layer":"parabolic","h":-1}"#,
            "h must be positive",
        ),
        (
            r#"{"kind":"image","in_channels":1,"classes":3,"widths":[5],"steps":[1],"layer":"hamiltonian","h":1}"#,
            "even",
        ),
        (
            r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[1],"layer":"spiral","h":1}"#,
            "spiral",
        ),
        (
            r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[1],"layer":"resnet","h":1,"depth":3}"#,
            "depth",
        ),
        (
            r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4,8],"steps":[1],"layer":"resnet","h":1}"#,
            "steps",
        ),
        ("{not json", "config"),
    ] {
        let c = d.join("bad.json");
        std::fs::write(&c, text).unwrap();
        assert_clean_error(
            &pdenet(&[
                "init",
                "--config",
                s(&c),
                "--out",
                s(&d.join("x.safetensors")),
            ]),
            needle,
        );
    }
    // A missing file, an unknown policy.
    assert_clean_error(
        &grad(&cfg, &d.join("nope.safetensors"), &b, &[]),
        "nope.safetensors",
    );
    let o = grad(&cfg, &w, &b, &["--policy", "lazy"]);
    assert!(!o.status.success());
    let o = grad(&cfg, &w, &b, &["--storage", "f8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("f8"));
    // No file was written by any failed run.
    assert!(!g.exists());
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    // No skip on a GPU machine: the child sees no device (CUDA_VISIBLE_DEVICES empty).
    let d = tmpdir("cuda");
    let w = d.join("w.safetensors");
    assert!(pdenet(&["init", "--config", "ref-2d", "--out", s(&w)])
        .status
        .success());
    let b = d.join("b.safetensors");
    write_batch(&b, &[3, 2], &[0, 1, 1]);
    let bin = std::env::var("PDENET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pdenet").to_string());
    let o = Command::new(bin)
        .env("CUDA_VISIBLE_DEVICES", "")
        .args([
            "grad",
            "--config",
            "ref-2d",
            "--weights",
            s(&w),
            "--input",
            s(&b),
            "--out",
            s(&d.join("g.safetensors")),
            "--device",
            "cuda",
        ])
        .output()
        .expect("binary runs");
    assert_clean_error(&o, "CUDA");
}

/// `pdenet train` killed (SIGKILL) mid-run and resumed ends with the same weights, bit for bit,
/// as a run that was never interrupted.
#[test]
fn killed_training_resumes_bit_identically() {
    let d = tmpdir("kill");
    let args = |out: &Path| {
        vec![
            "train".to_string(),
            "--config".into(),
            "ref-2d".into(),
            "--data".into(),
            "swissroll".into(),
            "--epochs".into(),
            "60".into(),
            "--seed".into(),
            "4".into(),
            "--device".into(),
            "cpu".into(),
            "--out".into(),
            out.to_str().unwrap().to_string(),
        ]
    };
    let bin = std::env::var("PDENET").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pdenet").to_string());
    let whole = d.join("whole");
    assert!(Command::new(&bin)
        .args(args(&whole))
        .output()
        .unwrap()
        .status
        .success());

    let cut = d.join("cut");
    let mut child = Command::new(&bin)
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few epochs are checkpointed, before it ends.
    let latest = cut.join("checkpoint").join("LATEST");
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&latest).unwrap_or_default();
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        let epoch: usize = digits.parse().unwrap_or(0);
        if epoch >= 3 || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let finished_early = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!finished_early, "the run ended before it could be killed");
    assert!(
        !cut.join("log.csv").exists()
            || std::fs::read_to_string(cut.join("log.csv"))
                .unwrap()
                .lines()
                .count()
                < 61
    );

    let mut resume = args(&cut);
    resume.push("--resume".into());
    let o = Command::new(&bin).args(&resume).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = std::fs::read(whole.join("model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
}

/// `train --multilevel 2`: three levels of ref-2d (16, 32, 64 steps), each its own run, the
/// finest network's weights and config in --out, loadable by `eval`.
#[test]
fn multilevel_training_doubles_the_steps_each_level() {
    let d = tmpdir("multilevel");
    let out = d.join("run");
    let o = pdenet(&[
        "train",
        "--config",
        "ref-2d",
        "--data",
        "swissroll",
        "--epochs",
        "10",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--multilevel",
        "2",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for l in 0..3 {
        assert!(
            out.join(format!("level{l}/model.safetensors")).exists(),
            "level {l}"
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["steps"], serde_json::json!([64]));
    assert_eq!(cfg["h"], serde_json::json!(0.025));
    let w = read_safetensors(&out.join("model.safetensors")).unwrap();
    assert!(w.contains_key("units.0.steps.63.K"));
    let e = pdenet(&[
        "eval",
        "--config",
        s(&out.join("config.json")),
        "--weights",
        s(&out.join("model.safetensors")),
        "--data",
        "swissroll",
        "--seed",
        "1",
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let last = String::from_utf8_lossy(&e.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let acc: f64 = last.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(acc > 0.8, "{last}");
    // A second run into the same folder is refused without --force.
    let again = pdenet(&[
        "train",
        "--config",
        "ref-2d",
        "--data",
        "swissroll",
        "--multilevel",
        "1",
        "--out",
        s(&out),
    ]);
    assert_clean_error(&again, "already holds a multilevel run");
}

/// `train --time-limit`: the run stops at the minibatch that crosses the limit, with the cut
/// epoch evaluated, logged and saved; a non-positive limit is a one-line error.
#[test]
fn training_stops_at_the_time_limit() {
    let d = tmpdir("time-limit");
    let out = d.join("run");
    let o = pdenet(&[
        "train",
        "--config",
        "ref-2d",
        "--data",
        "swissroll",
        "--epochs",
        "100000",
        "--device",
        "cpu",
        "--time-limit",
        "0.5",
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("time limit reached after"), "{err}");
    let log = std::fs::read_to_string(out.join("log.csv")).unwrap();
    let rows = log.lines().count() - 1;
    assert!((1..100000).contains(&rows), "{rows} epochs logged");
    assert!(out.join("model.safetensors").exists());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("trained {rows} epochs")),
        "{stdout}"
    );
    for bad in ["0", "-1", "nan"] {
        let o = pdenet(&[
            "train",
            "--config",
            "ref-2d",
            "--data",
            "swissroll",
            "--time-limit",
            bad,
            "--out",
            s(&d.join("bad")),
        ]);
        assert_clean_error(&o, "--time-limit must be positive");
    }
}

/// SPEC section 9: with `ode` units `grad` writes `nfe.forward` and `nfe.backward` (i64, one
/// per unit); an unknown solver is a one-line error naming the key's value.
#[test]
fn grad_of_an_ode_network_writes_evaluation_counts() {
    let d = tmpdir("ode");
    let cfg = d.join("ode.json");
    std::fs::write(
        &cfg,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4,4],"steps":[2,1],
        "layer":"ode","h":0.5,"solver":"rk4","substeps":2}"#,
    )
    .unwrap();
    let w = d.join("w.safetensors");
    let o = pdenet(&["init", "--config", s(&cfg), "--seed", "3", "--out", s(&w)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = d.join("b.safetensors");
    write_batch(&b, &[2, 1, 6, 6], &[0, 2]);
    let g = d.join("g.safetensors");
    let args = [
        "grad",
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--input",
        s(&b),
        "--out",
        s(&g),
    ];
    let o = pdenet(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&g).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let counts = |name: &str| -> Vec<i64> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        assert_eq!(t.shape(), &[2], "{name}");
        t.data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    // rk4: 4 evaluations per substep, 2 substeps per interval; the backward pass the same.
    assert_eq!(counts("nfe.forward"), vec![16, 8]);
    assert_eq!(counts("nfe.backward"), vec![16, 8]);
    std::fs::write(
        &cfg,
        r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[1],
        "layer":"ode","h":0.5,"solver":"rk45"}"#,
    )
    .unwrap();
    let o = pdenet(&args);
    assert_clean_error(&o, "rk45");
}
