//! Training infrastructure: data, optimizers, checkpoints/resume, logs and plots, driven by a
//! small softmax-regression model standing in for the engine.

use pdenet::config::Config;
use pdenet::params::{read_safetensors, ParamRole, ParamSet};
use pdenet::train::checkpoint;
use pdenet::train::data::{self, Augment, Dataset, RngState, Split, Synthetic};
use pdenet::train::log::{read_log, LOG_HEADER};
use pdenet::train::optim::{LrSchedule, OptimConfig, Optimizer};
use pdenet::train::{evaluate, train, Model, TrainOptions};
use pdenet::train::{run_eval, run_train, EvalJob, ModelSpec, TrainJob};
use pdenet::{Error, HostTensor, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

// ------------------------------------------------------------------------------------------
// The mock model: softmax regression on [x, x^2, x1 x2] for 2-D inputs, on x otherwise.

struct Mock {
    d: usize,
    k: usize,
    params: ParamSet,
    /// Make the n-th call of `grad` (1-based) return a NaN loss.
    nan_at: Option<usize>,
    calls: usize,
}

impl Mock {
    fn new(d: usize, k: usize, seed: u64) -> Self {
        let f = Self::nfeat(d);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..k * f).map(|_| rng.random_range(-0.1..0.1f32)).collect();
        let mut params = ParamSet::new();
        params.push(
            "classifier.weight",
            ParamRole::Weight,
            HostTensor::new(vec![k, f], w).unwrap(),
        );
        params.push(
            "classifier.bias",
            ParamRole::Affine,
            HostTensor::zeros(vec![k]),
        );
        // A buffer the model updates during `grad` (like batch-norm running statistics).
        params.push("seen", ParamRole::Buffer, HostTensor::zeros(vec![1]));
        Mock {
            d,
            k,
            params,
            nan_at: None,
            calls: 0,
        }
    }
    fn nfeat(d: usize) -> usize {
        if d == 2 {
            5
        } else {
            d
        }
    }
    fn features(&self, x: &[f32]) -> Vec<f32> {
        if self.d == 2 {
            vec![x[0], x[1], x[0] * x[0], x[1] * x[1], x[0] * x[1]]
        } else {
            x.to_vec()
        }
    }
    fn forward(&self, x: &HostTensor) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let n = x.shape[0];
        if x.len() != n * self.d {
            return Err(Error::Shape(format!(
                "mock wants {} values per sample",
                self.d
            )));
        }
        let w = &self.params.get("classifier.weight").unwrap().data;
        let b = &self.params.get("classifier.bias").unwrap().data;
        let f = Self::nfeat(self.d);
        let mut phis = Vec::with_capacity(n);
        let mut logits = Vec::with_capacity(n * self.k);
        for s in x.data.chunks_exact(self.d) {
            let phi = self.features(s);
            for c in 0..self.k {
                let mut z = b[c] as f64;
                for j in 0..f {
                    z += w[c * f + j] as f64 * phi[j] as f64;
                }
                logits.push(z as f32);
            }
            phis.push(phi);
        }
        Ok((phis, logits))
    }
}

impl Model for Mock {
    fn params(&self) -> Result<ParamSet> {
        Ok(self.params.clone())
    }
    fn set_params(&mut self, p: &ParamSet) -> Result<()> {
        self.params = p.clone();
        Ok(())
    }
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)> {
        self.calls += 1;
        let (phis, logits) = self.forward(x)?;
        let (n, k, f) = (labels.len(), self.k, Self::nfeat(self.d));
        let mut gw = vec![0f64; k * f];
        let mut gb = vec![0f64; k];
        let mut loss = 0.0;
        for (i, (phi, &l)) in phis.iter().zip(labels).enumerate() {
            let row = &logits[i * k..(i + 1) * k];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            loss += s.ln() + m - row[l] as f64;
            for c in 0..k {
                let d = (e[c] / s - if c == l { 1.0 } else { 0.0 }) / n as f64;
                gb[c] += d;
                for j in 0..f {
                    gw[c * f + j] += d * phi[j] as f64;
                }
            }
        }
        self.params.get_mut("seen").unwrap().data[0] += n as f32;
        let mut g = ParamSet::new();
        g.push(
            "classifier.weight",
            ParamRole::Weight,
            HostTensor::new(vec![k, f], gw.iter().map(|&v| v as f32).collect())?,
        );
        g.push(
            "classifier.bias",
            ParamRole::Affine,
            HostTensor::new(vec![k], gb.iter().map(|&v| v as f32).collect())?,
        );
        let mut loss = loss / n as f64;
        if self.nan_at == Some(self.calls) {
            loss = f64::NAN;
        }
        Ok((loss, logits, g))
    }
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>> {
        Ok(self.forward(x)?.1)
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const MNIST: &str = "../shared/data/mnist";

fn small_images(n_train: usize, n_test: usize) -> Split {
    let s = data::load_mnist_dir(Path::new("data/mnist-small")).unwrap();
    Split {
        name: s.name.clone(),
        train: s.train.head(n_train),
        test: s.test.head(n_test),
    }
}

// ------------------------------------------------------------------------------------------
// Data

#[test]
fn idx_reader_on_real_mnist() {
    if !Path::new(MNIST).is_dir() {
        eprintln!("skipped: {MNIST} not present");
        return;
    }
    let s = data::load_mnist_dir(Path::new(MNIST)).unwrap();
    assert_eq!(s.train.len(), 60000);
    assert_eq!(s.test.len(), 10000);
    assert_eq!(s.train.sample_dims, vec![1, 28, 28]);
    assert_eq!(
        s.train.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        s.test.class_counts(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // Scaled to [0, 1], then normalised.
    let lo = s.train.x.iter().fold(f32::INFINITY, |a, &v| a.min(v));
    let hi = s.train.x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    assert!((lo - (-0.1307 / 0.3081)).abs() < 1e-6);
    assert!((hi - (1.0 - 0.1307) / 0.3081).abs() < 1e-5);
    let mean = s.train.x.iter().map(|&v| v as f64).sum::<f64>() / s.train.x.len() as f64;
    assert!(mean.abs() < 0.01, "mean after normalisation {mean}");
    // The shipped subset is the head of the full set.
    let small = data::load_mnist_dir(Path::new("data/mnist-small")).unwrap();
    assert_eq!((small.train.len(), small.test.len()), (5000, 1000));
    assert_eq!(small.train, s.train.head(5000));
    assert_eq!(small.test, s.test.head(1000));
}

fn write_gz(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

/// A valid tiny MNIST folder (raw files), 4 train and 2 test images of 3x3.
fn tiny_mnist(dir: &Path) {
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx(2051, &[4, 3, 3], &[7; 36]),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx(2049, &[4], &[0, 1, 2, 9]),
    )
    .unwrap();
    write_gz(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &idx(2051, &[2, 3, 3], &[255; 18]),
    );
    write_gz(
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        &idx(2049, &[2], &[3, 4]),
    );
}

fn data_err(dir: &Path) -> String {
    match data::load_mnist_dir(dir) {
        Err(e @ Error::Data(_)) => e.to_string(),
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn idx_reader_rejects_bad_files_with_their_name() {
    let dir = tmpdir("idx");
    tiny_mnist(&dir);
    let ok = data::load_mnist_dir(&dir).unwrap();
    assert_eq!(ok.train.labels, vec![0, 1, 2, 9]);
    assert_eq!(ok.test.sample_dims, vec![1, 3, 3]);
    assert!((ok.test.x[0] - (1.0 - 0.1307) / 0.3081).abs() < 1e-6);

    let f = dir.join("train-images-idx3-ubyte");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (idx(2049, &[4, 3, 3], &[7; 36]), "magic"),
        (idx(2051, &[4, 3, 3], &[7; 30]), "truncated"),
        (vec![0, 0, 8, 3, 0], "truncated IDX header"),
        (idx(2051, &[4, 3, 3], &[7; 40]), "unexpected bytes"),
        (idx(2051, &[5, 3, 3], &[7; 45]), "holds 5 images"),
    ];
    for (bytes, needle) in cases {
        std::fs::write(&f, bytes).unwrap();
        let e = data_err(&dir);
        assert!(e.contains(needle), "`{e}` should mention `{needle}`");
        assert!(e.contains("train-"), "`{e}` should name the file");
    }
    tiny_mnist(&dir);
    // Corrupt gzip: valid header, garbage body.
    let g = dir.join("t10k-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&g).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    std::fs::write(&g, bytes).unwrap();
    let e = data_err(&dir);
    assert!(e.contains("t10k-images") && e.contains("gzip"), "{e}");
    tiny_mnist(&dir);
    // A label outside the ten classes.
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx(2049, &[4], &[0, 1, 10, 2]),
    )
    .unwrap();
    let e = data_err(&dir);
    assert!(e.contains("label 10") && e.contains("train-labels"), "{e}");
    tiny_mnist(&dir);
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let e = data_err(&dir);
    assert!(e.contains("missing") && e.contains("t10k-labels"), "{e}");
    // Neither a folder nor a built-in name.
    assert!(matches!(
        data::load("no/such/folder", 0),
        Err(Error::Data(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn synthetic_sets_are_deterministic_per_seed() {
    for kind in [Synthetic::TwoClass, Synthetic::Peaks, Synthetic::SwissRoll] {
        let a = data::synthetic(kind, 7).unwrap();
        let b = data::load(kind.name(), 7).unwrap();
        let c = data::synthetic(kind, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.train.x, c.train.x);
        assert_ne!(
            a.train.x[..200],
            a.test.x[..200],
            "train and test are separate draws"
        );
        assert_eq!(a.train.sample_dims, vec![2]);
        assert_eq!(
            (a.train.len(), a.test.len()),
            (data::SYNTHETIC_TRAIN, data::SYNTHETIC_TEST)
        );
        let counts = a.train.class_counts();
        assert_eq!(counts.len(), kind.classes());
        let even = a.train.len() / kind.classes();
        for c in counts {
            assert!(
                c > even * 3 / 4 && c < even * 5 / 4,
                "{kind:?}: unbalanced {c} vs {even}"
            );
        }
        let [x0, x1, y0, y1] = kind.bounds();
        for p in a.train.x.chunks(2) {
            assert!(p[0] > x0 && p[0] < x1 && p[1] > y0 && p[1] < y1);
        }
    }
}

#[test]
fn shuffling_batches_and_augmentation() {
    let mut r1 = ChaCha8Rng::seed_from_u64(1);
    let mut r2 = ChaCha8Rng::seed_from_u64(1);
    let p = data::shuffled(100, &mut r1);
    assert_eq!(p, data::shuffled(100, &mut r2));
    let mut sorted = p.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(p, sorted);
    let order: Vec<usize> = (0..65).collect();
    let b = data::batches(&order, 32);
    assert_eq!(
        b.iter().map(|c| c.len()).collect::<Vec<_>>(),
        vec![32, 32],
        "a lone sample is dropped"
    );
    assert_eq!(data::batches(&order[..64], 64).len(), 1);

    // RNG state round trip continues the same stream.
    for _ in 0..37 {
        r1.random::<u32>();
    }
    let mut r3 = RngState::of(&r1).restore().unwrap();
    assert_eq!(r1.random::<u64>(), r3.random::<u64>());
    assert!(RngState {
        seed: "zz".into(),
        stream: "0".into(),
        word_pos: "0".into()
    }
    .restore()
    .is_err());

    // Crop keeps values or fills the background; flip mirrors rows.
    let ds = Dataset::new(
        (0..2 * 16).map(|v| v as f32).collect(),
        vec![1, 4, 4],
        vec![0, 1],
        2,
    )
    .unwrap();
    let (x, _) = ds.batch(&[0, 1]).unwrap();
    let mut flipped = x.clone();
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let flip_all = Augment {
        crop_pad: 0,
        flip: true,
    };
    // Flip twice with a generator that must decide per sample: check against a mirror.
    flip_all.apply(&mut flipped, -1.0, &mut r);
    for s in 0..2 {
        let orig = &x.data[s * 16..(s + 1) * 16];
        let got = &flipped.data[s * 16..(s + 1) * 16];
        let mirror: Vec<f32> = (0..16).map(|k| orig[(k / 4) * 4 + 3 - k % 4]).collect();
        assert!(got == orig || got == &mirror[..]);
    }
    let mut cropped = x.clone();
    Augment {
        crop_pad: 2,
        flip: false,
    }
    .apply(&mut cropped, -1.0, &mut ChaCha8Rng::seed_from_u64(4));
    assert!(cropped
        .data
        .iter()
        .all(|v| *v == -1.0 || x.data.contains(v)));
    let mut same = x.clone();
    Augment::default().apply(&mut same, -1.0, &mut r);
    assert_eq!(same, x);
}

// ------------------------------------------------------------------------------------------
// Optimizers

fn one_param_set(w: f32, b: f32, buf: f32) -> ParamSet {
    let mut p = ParamSet::new();
    p.push(
        "K",
        ParamRole::Weight,
        HostTensor::new(vec![1], vec![w]).unwrap(),
    );
    p.push(
        "norm.bias",
        ParamRole::Affine,
        HostTensor::new(vec![1], vec![b]).unwrap(),
    );
    p.push(
        "bn.running_mean",
        ParamRole::Buffer,
        HostTensor::new(vec![1], vec![buf]).unwrap(),
    );
    p
}

fn grads(gw: f32, gb: f32) -> ParamSet {
    let mut g = ParamSet::new();
    g.push(
        "K",
        ParamRole::Weight,
        HostTensor::new(vec![1], vec![gw]).unwrap(),
    );
    g.push(
        "norm.bias",
        ParamRole::Affine,
        HostTensor::new(vec![1], vec![gb]).unwrap(),
    );
    g
}

#[test]
fn sgd_momentum_and_decay_match_hand_computation() {
    let mut cfg = OptimConfig::sgd(0.1);
    cfg.momentum = 0.9;
    cfg.weight_decay = 0.01;
    let mut opt = Optimizer::new(cfg).unwrap();
    let mut p = one_param_set(1.0, 1.0, 5.0);
    // Step 1: d = g + wd w = 0.5 + 0.01 = 0.51; buf = 0.51; w = 1 - 0.1 * 0.51 = 0.949.
    // Bias (no decay): buf = 0.5; b = 1 - 0.05 = 0.95.
    opt.step(&mut p, &grads(0.5, 0.5), 0.1).unwrap();
    assert!((p.get("K").unwrap().data[0] - 0.949).abs() < 1e-7);
    assert!((p.get("norm.bias").unwrap().data[0] - 0.95).abs() < 1e-7);
    // Step 2: d = 0.5 + 0.01 * 0.949 = 0.50949; buf = 0.9 * 0.51 + 0.50949 = 0.96849;
    // w = 0.949 - 0.1 * 0.96849 = 0.852151. Bias: buf = 0.45 + 0.5 = 0.95; b = 0.855.
    opt.step(&mut p, &grads(0.5, 0.5), 0.1).unwrap();
    assert!((p.get("K").unwrap().data[0] - 0.852151).abs() < 1e-6);
    assert!((p.get("norm.bias").unwrap().data[0] - 0.855).abs() < 1e-6);
    assert_eq!(
        p.get("bn.running_mean").unwrap().data[0],
        5.0,
        "buffers untouched"
    );

    // State round trip gives the same next step.
    let tensors: std::collections::HashMap<_, _> = opt.state_tensors(&p).into_iter().collect();
    assert!(tensors.contains_key("opt.m.K") && !tensors.contains_key("opt.m.bn.running_mean"));
    let mut restored = Optimizer::restore(&opt.scalars(), &tensors, &p).unwrap();
    let (mut p1, mut p2) = (p.clone(), p.clone());
    opt.step(&mut p1, &grads(0.3, -0.2), 0.05).unwrap();
    restored.step(&mut p2, &grads(0.3, -0.2), 0.05).unwrap();
    assert_eq!(p1, p2);

    // Missing or misshapen gradients are errors that leave the parameters alone.
    let mut g = ParamSet::new();
    g.push(
        "K",
        ParamRole::Weight,
        HostTensor::new(vec![1], vec![1.0]).unwrap(),
    );
    let before = p.clone();
    assert!(opt.step(&mut p, &g, 0.1).is_err());
    assert_eq!(p, before);
}

#[test]
fn adam_step_matches_hand_computation() {
    let mut opt = Optimizer::new(OptimConfig::adam(0.01)).unwrap();
    let mut p = one_param_set(1.0, -1.0, 0.0);
    // Step 1: m = 0.1 g, v = 0.001 g^2; m_hat = g, v_hat = g^2: update = lr * g / (|g| + eps).
    opt.step(&mut p, &grads(0.5, -2.0), 0.01).unwrap();
    let w1 = 1.0 - 0.01 * 0.5 / (0.5 + 1e-8);
    let b1 = -1.0 + 0.01 * 2.0 / (2.0 + 1e-8);
    assert!((p.get("K").unwrap().data[0] as f64 - w1).abs() < 1e-7);
    assert!((p.get("norm.bias").unwrap().data[0] as f64 - b1).abs() < 1e-7);
    // Step 2 with g = 0.25: m = 0.9*0.05 + 0.1*0.25 = 0.07, v = 0.999*0.00025 + 0.001*0.0625
    // = 0.00031225; m_hat = 0.07/0.19, v_hat = 0.00031225/0.001999.
    opt.step(&mut p, &grads(0.25, 0.0), 0.01).unwrap();
    let (m, v) = (0.07f64 / (1.0 - 0.81), 0.00031225f64 / (1.0 - 0.998001));
    let w2 = w1 - 0.01 * m / (v.sqrt() + 1e-8);
    assert!(
        (p.get("K").unwrap().data[0] as f64 - w2).abs() < 1e-6,
        "{} vs {w2}",
        p.get("K").unwrap().data[0]
    );
}

#[test]
fn schedules() {
    assert_eq!(LrSchedule::Constant.lr(0.1, 7), 0.1);
    let s = LrSchedule::Step {
        every: 3,
        gamma: 0.1,
    };
    assert_eq!(s.lr(1.0, 2), 1.0);
    assert!((s.lr(1.0, 3) - 0.1).abs() < 1e-12);
    assert!((s.lr(1.0, 6) - 0.01).abs() < 1e-12);
    let c = LrSchedule::Cosine {
        total: 10,
        min_factor: 0.0,
    };
    assert_eq!(c.lr(0.2, 0), 0.2);
    assert!((c.lr(0.2, 5) - 0.1).abs() < 1e-12);
    assert!(c.lr(0.2, 9) > 0.0 && c.lr(0.2, 9) < 0.01);
}

// ------------------------------------------------------------------------------------------
// The epoch loop, checkpoints, resume

fn opts(out: &Path, epochs: usize) -> TrainOptions {
    let mut o = TrainOptions::new(out, epochs, 11);
    o.batch = 32;
    o.optim = OptimConfig::sgd(0.5);
    o.plots = false;
    o.data_name = "twoclass".into();
    o.config = serde_json::json!({"mock": 1});
    o
}

/// Copies the PNGs of `out` to `$PDENET_TEST_KEEP/<tag>-*.png` for looking at them.
fn keep_pngs(out: &Path, tag: &str) {
    if let Ok(keep) = std::env::var("PDENET_TEST_KEEP") {
        std::fs::create_dir_all(&keep).unwrap();
        for png in ["loss.png", "accuracy.png", "regions.png"] {
            let _ = std::fs::copy(out.join(png), Path::new(&keep).join(format!("{tag}-{png}")));
        }
    }
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn training_learns_and_writes_its_files() {
    let out = tmpdir("learn");
    let split = data::synthetic(Synthetic::TwoClass, 3).unwrap();
    let mut model = Mock::new(2, 2, 3);
    let mut o = opts(&out, 5);
    o.plots = true;
    o.region_bounds = Some(Synthetic::TwoClass.bounds());
    let report = train(&mut model, &split, &o).unwrap();
    assert_eq!(report.epochs, 5);
    assert!(
        report.test_accuracy > 0.9,
        "accuracy {}",
        report.test_accuracy
    );
    let rows = read_log(&out.join("log.csv")).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(
        rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(rows[4].loss < rows[0].loss);
    assert!(std::fs::read_to_string(out.join("log.csv"))
        .unwrap()
        .starts_with(LOG_HEADER));
    for png in ["loss.png", "accuracy.png", "regions.png"] {
        let b = read_bytes(&out.join(png));
        assert!(
            b.starts_with(b"\x89PNG") && b.len() > 5000,
            "{png}: {} bytes",
            b.len()
        );
    }
    keep_pngs(&out, "twoclass");
    let weights = read_safetensors(&out.join("model.safetensors")).unwrap();
    assert_eq!(weights.len(), 3);
    let (acc, _) = evaluate(&mut model, &split.test, 100).unwrap();
    assert_eq!(acc, report.test_accuracy);
    // Only the latest checkpoint folder remains, and nothing temporary.
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["LATEST", "epoch-0005"]);
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("tmp")));
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `epochs` without interruption and as `stop` epochs + resume; returns both weight files.
fn resume_pair(
    split: &Split,
    mut o: TrainOptions,
    d: usize,
    k: usize,
    stop: usize,
    name: &str,
) -> (Vec<u8>, Vec<u8>, PathBuf) {
    let a = tmpdir(&format!("{name}-a"));
    let b = tmpdir(&format!("{name}-b"));
    o.out = a.clone();
    train(&mut Mock::new(d, k, 5), split, &o).unwrap();
    o.out = b.clone();
    o.stop_after = Some(stop);
    let r = train(&mut Mock::new(d, k, 5), split, &o).unwrap();
    assert_eq!(r.epochs, stop);
    // A fresh process: new model from the same seed, then --resume.
    o.stop_after = None;
    o.resume = true;
    let r = train(&mut Mock::new(d, k, 5), split, &o).unwrap();
    assert_eq!(r.epochs, o.epochs);
    let wa = read_bytes(&a.join("model.safetensors"));
    let wb = read_bytes(&b.join("model.safetensors"));
    let _ = std::fs::remove_dir_all(&a);
    (wa, wb, b)
}

#[test]
fn resume_is_bit_identical_sgd() {
    let split = data::synthetic(Synthetic::Peaks, 1).unwrap();
    let mut o = opts(Path::new("."), 4);
    o.optim = OptimConfig::sgd(0.05);
    o.data_name = "peaks".into();
    let (wa, wb, b) = resume_pair(&split, o, 2, 5, 2, "sgd");
    assert_eq!(wa, wb);
    // The buffer (updated in `grad`) went through the checkpoint too.
    let w = read_safetensors(&b.join("model.safetensors")).unwrap();
    assert_eq!(w["seen"].data[0], 4.0 * 2000.0);
    let rows = read_log(&b.join("log.csv")).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn resume_is_bit_identical_adam_with_augmentation() {
    let split = small_images(300, 100);
    let mut o = opts(Path::new("."), 3);
    o.optim = OptimConfig::adam(1e-3);
    o.augment = Augment {
        crop_pad: 2,
        flip: true,
    };
    o.data_name = "mnist-small".into();
    let (wa, wb, b) = resume_pair(&split, o, 784, 10, 1, "adam");
    assert_eq!(wa, wb);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn resume_refuses_other_settings_and_handles_finished_runs() {
    let out = tmpdir("mismatch");
    let split = data::synthetic(Synthetic::TwoClass, 2).unwrap();
    let o = opts(&out, 2);
    train(&mut Mock::new(2, 2, 1), &split, &o).unwrap();
    let before = read_bytes(&out.join("model.safetensors"));
    let mut o2 = o.clone();
    o2.resume = true;
    o2.batch = 16;
    let e = train(&mut Mock::new(2, 2, 1), &split, &o2).unwrap_err();
    assert!(
        matches!(e, Error::Input(_)) && e.to_string().contains("batch"),
        "{e}"
    );
    // Resuming a finished run changes nothing.
    let mut o3 = o.clone();
    o3.resume = true;
    let r = train(&mut Mock::new(2, 2, 1), &split, &o3).unwrap();
    assert_eq!(r.epochs, 2);
    assert_eq!(read_bytes(&out.join("model.safetensors")), before);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let out = tmpdir("nan");
    let split = data::synthetic(Synthetic::TwoClass, 4).unwrap();
    let o = opts(&out, 3);
    let mut model = Mock::new(2, 2, 9);
    // 2000 samples / 32 = 63 steps per epoch (the last one of 16): step 5 of epoch 2.
    model.nan_at = Some(63 + 5);
    let e = train(&mut model, &split, &o).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::NonFinite(_)), "{msg}");
    assert!(msg.contains("epoch 2, step 5"), "{msg}");
    assert!(!msg.contains('\n'));
    let ck = checkpoint::load(&out).unwrap().unwrap();
    assert_eq!(ck.state.epoch, 1);
    let w = read_safetensors(&out.join("model.safetensors")).unwrap();
    assert_eq!(w, ck.params);
    assert_eq!(read_log(&out.join("log.csv")).unwrap().len(), 1);
    // The run can go on from there.
    let mut o2 = o.clone();
    o2.resume = true;
    assert_eq!(
        train(&mut Mock::new(2, 2, 9), &split, &o2).unwrap().epochs,
        3
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_half_written_checkpoint_is_never_the_latest() {
    let out = tmpdir("atomic");
    let split = data::synthetic(Synthetic::SwissRoll, 4).unwrap();
    let mut o = opts(&out, 2);
    o.stop_after = Some(1);
    train(&mut Mock::new(2, 2, 1), &split, &o).unwrap();
    let root = out.join("checkpoint");
    // A crash while writing epoch 2: a temporary folder with a partial file, and even a renamed
    // folder that `LATEST` does not point at yet.
    std::fs::create_dir(root.join(".epoch-0002.tmp-1")).unwrap();
    std::fs::write(
        root.join(".epoch-0002.tmp-1/model.safetensors"),
        b"\x10\x00",
    )
    .unwrap();
    std::fs::create_dir(root.join("epoch-0002")).unwrap();
    let ck = checkpoint::load(&out).unwrap().unwrap();
    assert_eq!(ck.state.epoch, 1);
    // Resuming replaces the stale folder and cleans up.
    o.stop_after = None;
    o.resume = true;
    train(&mut Mock::new(2, 2, 1), &split, &o).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["LATEST", "epoch-0002"]);
    assert_eq!(checkpoint::load(&out).unwrap().unwrap().state.epoch, 2);
    // Corrupt pointer or state: clear errors, no panic.
    std::fs::write(root.join("LATEST"), "../x").unwrap();
    assert!(matches!(checkpoint::load(&out), Err(Error::Data(_))));
    std::fs::write(root.join("LATEST"), "epoch-0002").unwrap();
    std::fs::write(root.join("epoch-0002/state.json"), "{").unwrap();
    let e = checkpoint::load(&out).unwrap_err();
    assert!(e.to_string().contains("state.json"), "{e}");
    // No checkpoint at all.
    assert!(checkpoint::load(&tmpdir("empty")).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&out);
}

// ------------------------------------------------------------------------------------------
// The command-line bodies with the mock standing in for the engine

fn build(cfg: &Config, spec: &ModelSpec) -> Result<Box<dyn Model>> {
    Ok(Box::new(Mock::new(
        cfg.input_width(),
        cfg.classes,
        spec.seed,
    )))
}

#[test]
fn cli_train_and_eval() {
    let out = tmpdir("cli");
    let args = TrainJob {
        config: "ref-2d".into(),
        data: "swissroll".into(),
        epochs: 2,
        seed: 5,
        out: out.clone(),
        batch: Some(50),
        lr: Some(0.2),
        ..TrainJob::default()
    };
    let report = run_train(&args, &build).unwrap();
    let (acc, loss) = run_eval(
        &EvalJob {
            config: "ref-2d".into(),
            weights: out.join("model.safetensors"),
            data: "swissroll".into(),
            seed: 5,
        },
        &build,
    )
    .unwrap();
    assert_eq!(acc, report.test_accuracy);
    assert_eq!(loss, report.test_loss);
    assert!(out.join("regions.png").is_file());
    keep_pngs(&out, "swissroll");
    // Labels outside the config's classes, mismatched inputs and bad weights are data errors.
    let bad = TrainJob {
        data: "peaks".into(),
        out: out.join("bad"),
        ..args.clone()
    };
    let e = run_train(&bad, &build).unwrap_err();
    assert!(e.to_string().contains("outside the 2 classes"), "{e}");
    let bad = TrainJob {
        data: "data/mnist-small".into(),
        ..bad
    };
    assert!(matches!(run_train(&bad, &build), Err(Error::Data(_))));
    let e = run_eval(
        &EvalJob {
            config: "ref-2d".into(),
            weights: out.join("log.csv"),
            data: "twoclass".into(),
            seed: 0,
        },
        &build,
    )
    .unwrap_err();
    assert!(e.to_string().contains("log.csv"), "{e}");
    assert!(!out.join("bad/model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&out);
}

// ------------------------------------------------------------------------------------------
// The real engine behind the same loop

#[test]
fn engine_trains_and_resumes_bit_identically() {
    use pdenet::backend::DeviceChoice;
    use pdenet::schedule::Policy;
    use pdenet::train::engine_model::build_engine_model;
    let spec = ModelSpec {
        drift_guard: None,
        seed: 3,
        policy: Policy::Store,
        storage: pdenet::backend::Storage::F32,
        device: DeviceChoice::Cpu,
        precision: Default::default(),
        batch: 32,
    };
    let cfg = Config::reference("ref-2d").unwrap();
    let split = data::synthetic(Synthetic::TwoClass, 3).unwrap();
    let mut o = opts(Path::new("."), 3);
    o.optim = OptimConfig::sgd(0.1);
    o.config = serde_json::to_value(&cfg).unwrap();
    let (a, b) = (tmpdir("engine-a"), tmpdir("engine-b"));
    o.out = a.clone();
    let full = train(&mut build_engine_model(&cfg, &spec).unwrap(), &split, &o).unwrap();
    assert!(full.test_accuracy > 0.6, "accuracy {}", full.test_accuracy);
    o.out = b.clone();
    o.stop_after = Some(1);
    train(&mut build_engine_model(&cfg, &spec).unwrap(), &split, &o).unwrap();
    o.stop_after = None;
    o.resume = true;
    train(&mut build_engine_model(&cfg, &spec).unwrap(), &split, &o).unwrap();
    assert_eq!(
        read_bytes(&a.join("model.safetensors")),
        read_bytes(&b.join("model.safetensors"))
    );

    // A small image network with batch norm (running statistics in the checkpoint too).
    let img: Config = Config::parse(
        r#"{"kind":"image","in_channels":1,"classes":10,"widths":[4,8],"steps":[1,1],
            "layer":"hyperbolic","h":0.5}"#,
        false,
    )
    .unwrap();
    let split = small_images(64, 32);
    let mut o = opts(&a, 2);
    o.batch = 16;
    o.optim = OptimConfig::sgd(0.05);
    o.config = serde_json::to_value(&img).unwrap();
    o.data_name = "mnist-small".into();
    let spec = ModelSpec {
        drift_guard: None,
        policy: Policy::Reversible,
        ..spec
    };
    let full = train(&mut build_engine_model(&img, &spec).unwrap(), &split, &o).unwrap();
    assert_eq!(full.epochs, 2);
    o.out = b.clone();
    let _ = std::fs::remove_dir_all(&b);
    o.stop_after = Some(1);
    train(&mut build_engine_model(&img, &spec).unwrap(), &split, &o).unwrap();
    o.stop_after = None;
    o.resume = true;
    train(&mut build_engine_model(&img, &spec).unwrap(), &split, &o).unwrap();
    assert_eq!(
        read_bytes(&a.join("model.safetensors")),
        read_bytes(&b.join("model.safetensors"))
    );
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// The engine as a model that trains through the host (the trait's default `train_step`):
/// the path every step took before weights stayed on the backend.
struct HostPath(pdenet::train::engine_model::EngineModel<pdenet::backend::cpu::Cpu>);

impl Model for HostPath {
    fn params(&self) -> Result<ParamSet> {
        self.0.params()
    }
    fn set_params(&mut self, p: &ParamSet) -> Result<()> {
        self.0.set_params(p)
    }
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)> {
        self.0.grad(x, labels)
    }
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>> {
        self.0.logits(x)
    }
}

#[test]
fn backend_resident_steps_equal_host_steps_bit_for_bit() {
    use pdenet::backend::cpu::Cpu;
    use pdenet::network::Layout;
    use pdenet::schedule::{Engine, Policy};
    use pdenet::train::engine_model::EngineModel;
    let cfg = Config::reference("ref-mnist").unwrap();
    let layout = Layout::new(&cfg).unwrap();
    let params = layout.init(7);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 4;
    let mut shape = vec![n];
    shape.extend(cfg.sample_shape());
    let len: usize = shape.iter().product();
    let x = HostTensor {
        shape,
        data: (0..len).map(|_| rng.random_range(0.0..1.0)).collect(),
    };
    let labels: Vec<usize> = (0..n).map(|i| i % cfg.classes).collect();
    for config in [OptimConfig::sgd(0.05), OptimConfig::adam(1e-3)] {
        let model = |p: &ParamSet| {
            let eng = Engine::new(Cpu::new(), layout.clone(), p).unwrap();
            EngineModel::new(eng, Policy::Reversible.memory())
        };
        let mut resident = model(&params);
        let mut host = HostPath(model(&params));
        let (mut o_res, mut o_host) = (
            Optimizer::new(config).unwrap(),
            Optimizer::new(config).unwrap(),
        );
        for step in 0..3 {
            let a = resident.train_step(&x, &labels, &mut o_res, 0.05).unwrap();
            let b = host.train_step(&x, &labels, &mut o_host, 0.05).unwrap();
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "{config:?} step {step}: loss");
            assert_eq!(a.1, b.1, "{config:?} step {step}: logits");
        }
        let (pr, ph) = (resident.params().unwrap(), host.params().unwrap());
        for ((name, _, r), (_, _, h)) in pr.iter().zip(ph.iter()) {
            assert_eq!(r.data, h.data, "{config:?}: `{name}` after 3 steps");
        }
        // A checkpoint sees the state the backend holds.
        resident.sync_optimizer(&mut o_res).unwrap();
        assert_eq!(o_res.steps(), 3);
        let (sr, sh) = (o_res.state_tensors(&pr), o_host.state_tensors(&ph));
        assert_eq!(sr.len(), sh.len(), "{config:?}: state tensors");
        for ((nr, tr), (nh, th)) in sr.iter().zip(&sh) {
            assert_eq!(nr, nh);
            assert_eq!(tr.data, th.data, "{config:?}: `{nr}`");
        }
        // A restored optimizer (another step count) replaces the backend's state.
        let mut fresh = Optimizer::new(config).unwrap();
        resident.train_step(&x, &labels, &mut fresh, 0.05).unwrap();
        assert_eq!(fresh.steps(), 1);
    }
}

#[test]
fn backend_resident_step_refuses_a_non_finite_gradient() {
    use pdenet::backend::cpu::Cpu;
    use pdenet::backend::Backend;
    use pdenet::network::Layout;
    use pdenet::schedule::{Engine, Policy};
    let cfg = Config::reference("ref-mnist").unwrap();
    let layout = Layout::new(&cfg).unwrap();
    let params = layout.init(7);
    let mut eng = Engine::new(Cpu::new(), layout, &params).unwrap();
    let mut shape = vec![2];
    shape.extend(cfg.sample_shape());
    let len: usize = shape.iter().product();
    let x = HostTensor {
        shape,
        data: vec![0.5; len],
    };
    let mut out = eng
        .grad_resident(&x, &[0, 1], Policy::Store.memory())
        .unwrap();
    let (be, template, resident) = eng.params_resident();
    let (i, name) = template
        .iter()
        .enumerate()
        .filter(|(_, (_, role, _))| *role != ParamRole::Buffer)
        .map(|(i, (n, _, _))| (i, n.to_string()))
        .last()
        .unwrap();
    let mut bad = be.download_f32(out.grads[i].as_ref().unwrap()).unwrap();
    bad[0] = f32::NAN;
    out.grads[i] = Some(be.upload_f32(&bad).unwrap());
    let mut opt = Optimizer::new(OptimConfig::sgd(0.1)).unwrap();
    let mut state = opt.upload_state(be, template).unwrap();
    let err = opt
        .step_resident(be, template, resident, &out.grads, &mut state, 0.1)
        .unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite(m) if m.contains(&name)),
        "{err}"
    );
    // Checked before anything changed: no step taken, the trained tensors as they were (the
    // pass itself updated the running statistics).
    assert_eq!(opt.steps(), 0);
    let after = eng.params().unwrap();
    for ((name, role, a), (_, _, b)) in after.iter().zip(params.iter()) {
        if role != ParamRole::Buffer {
            assert_eq!(a.data, b.data, "`{name}` changed");
        }
    }
}
