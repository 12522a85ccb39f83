//! `pdenet init`, `pdenet potential` and `pdenet solve` end to end, and the solvers' accuracy
//! in a short run.

use pdenet::params::{read_safetensors, write_safetensors, OutTensor};
use pdenet::potential::{
    eval_batch, solve, Method, Order, PotentialConfig, PotentialNet, Problem, SolveOptions,
};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-potential-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pdenet(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pdenet"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn write_x(path: &Path, shape: &[usize], data: &[f32]) {
    write_safetensors(path, &[("x".to_string(), OutTensor::F32(shape, data))]).unwrap();
}

const CONFIG: &str = r#"{"kind":"potential","dense_input":3,"widths":[6],"steps":[2],"h":0.5,"rank":2,"trace_dims":2}"#;

#[test]
fn init_then_potential_gives_the_library_values() {
    let d = dir("roundtrip");
    let (cfg, w, x, out) = (
        d.join("c.json"),
        d.join("w.safetensors"),
        d.join("x.safetensors"),
        d.join("o.safetensors"),
    );
    std::fs::write(&cfg, CONFIG).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, _, err) = pdenet(&["init", "--config", &s(&cfg), "--seed", "3", "--out", &s(&w)]);
    assert!(ok, "{err}");
    let xs: Vec<f32> = (0..15).map(|i| (i as f32 * 0.37).sin()).collect();
    write_x(&x, &[5, 3], &xs);
    let (ok, _, err) = pdenet(&[
        "potential",
        "--config",
        &s(&cfg),
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--out",
        &s(&out),
    ]);
    assert!(ok, "{err}");
    let got = read_safetensors(&out).unwrap();
    assert_eq!(got["value"].shape, [5]);
    assert_eq!(got["grad"].shape, [5, 3]);
    assert_eq!(got["laplacian"].shape, [5]);
    let shape = PotentialConfig::load(&cfg).unwrap().shape().unwrap();
    let net = PotentialNet::<f32>::from_tensors(shape, read_safetensors(&w).unwrap(), "w").unwrap();
    assert_eq!(net, PotentialNet::<f32>::init(shape, 3));
    let want = eval_batch(&net, &xs, Order::Laplacian);
    assert_eq!(got["value"].data, want.value);
    assert_eq!(got["grad"].data, want.grad);
    assert_eq!(got["laplacian"].data, want.laplacian);
}

#[test]
fn bad_potential_input_is_one_line_and_nonzero() {
    let d = dir("bad");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (cfg, w, x, out) = (
        d.join("c.json"),
        d.join("w.safetensors"),
        d.join("x.safetensors"),
        d.join("o.safetensors"),
    );
    std::fs::write(&cfg, CONFIG).unwrap();
    assert!(pdenet(&["init", "--config", &s(&cfg), "--out", &s(&w)]).0);
    let dense = d.join("dense.json");
    std::fs::write(&dense, r#"{"kind":"dense","dense_input":3,"classes":2,"widths":[8],"steps":[2],"h":0.1,"layer":"resnet"}"#).unwrap();
    write_x(&x, &[2, 3], &[0.0; 6]);
    let (ok, _, err) = pdenet(&[
        "potential",
        "--config",
        &s(&dense),
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--out",
        &s(&out),
    ]);
    assert!(
        !ok && err.contains("not a potential network") && err.trim().lines().count() == 1,
        "{err}"
    );
    write_x(&x, &[3, 2], &[0.0; 6]);
    let (ok, _, err) = pdenet(&[
        "potential",
        "--config",
        &s(&cfg),
        "--weights",
        &s(&w),
        "--input",
        &s(&x),
        "--out",
        &s(&out),
    ]);
    assert!(
        !ok && err.contains("`x` has shape [3, 2]") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn solve_refuses_bad_dimensions_and_stops_on_divergence() {
    for (args, want) in [
        (
            vec!["--problem", "poisson-ball", "--dim", "3"],
            "even dimension",
        ),
        (
            vec!["--problem", "poisson-cube", "--dim", "0"],
            "at least 1",
        ),
        (
            vec![
                "--problem",
                "poisson-ball",
                "--dim",
                "2",
                "--lr",
                "1e30",
                "--steps",
                "5",
            ],
            "diverged",
        ),
    ] {
        let mut a = vec!["solve"];
        a.extend(args);
        let (ok, _, err) = pdenet(&a);
        assert!(
            !ok && err.contains(want) && err.trim().lines().count() == 1,
            "{err}"
        );
    }
}

fn short_run(method: Method) -> SolveOptions {
    SolveOptions {
        problem: Problem::PoissonBall,
        dim: 2,
        method,
        seed: 0,
        steps: 600,
        batch: 256,
        boundary_batch: 128,
        penalty: 250.0, // times |boundary| / |domain| = 2: the boundary mean's weight 500
        lr: 3e-2,
        lr_floor: 1e-2,
        width: 32,
        layers: 2,
        h: 0.5,
        log_every: 0,
    }
}

#[test]
fn deep_ritz_and_pinn_solve_poisson_ball_in_2d() {
    // Measured (seed 0, f32, 600 steps): Ritz 0.124, PINN 5.8e-3; the bounds leave ~1.3x.
    for (method, bound) in [(Method::Ritz, 0.16), (Method::Pinn, 8e-3)] {
        let r = solve::<f32>(&short_run(method), &mut |_| {}).unwrap();
        assert!(r.rel_l2 < bound, "{method:?}: rel_l2 {}", r.rel_l2);
    }
}
