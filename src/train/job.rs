//! Training and evaluation runs as data ([`TrainJob`], [`EvalJob`]) and their bodies; the
//! command line and the Python binding build the jobs.
//!
//! The network is built by a caller-supplied [`BuildModel`] (the engine), so that this file
//! depends only on the [`Model`] trait.

use crate::backend::{DeviceChoice, Storage};
use crate::config::{Config, NetworkKind};
use crate::error::{Error, Result};
use crate::params::{read_safetensors, ParamSet};
use crate::schedule::Policy;
use crate::train::checkpoint;
use crate::train::data::{self, Split};
use crate::train::optim::{LrSchedule, OptimConfig, OptimizerKind};
use crate::train::{evaluate, train, Model, TrainOptions, TrainReport};
use std::path::{Path, PathBuf};

/// The data of the default run: 5,000 training and 1,000 test MNIST digits in the repository.
pub const DEFAULT_DATA: &str = "data/mnist-small";

/// What the engine needs to build a network besides its config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSpec {
    /// Seeds the initial weights (as `pdenet init --seed`).
    pub seed: u64,
    pub policy: Policy,
    /// The drift guard of `reversible` (`--drift-tol`, `--strict`).
    pub drift_guard: Option<crate::schedule::DriftGuard>,
    /// Format of the states the backward pass keeps.
    pub storage: Storage,
    pub device: DeviceChoice,
    /// Arithmetic of the convolutions (`f32`; `bf16` on CUDA or an `avx512_bf16` CPU; `tf32`,
    /// `f16` on CUDA).
    pub precision: crate::backend::Precision,
    /// The training batch size (for memory planning).
    pub batch: usize,
}

/// Builds an initialised network for a config: [`crate::train::engine_model::build_engine_model`]
/// for the real thing, a mock in tests.
pub type BuildModel<'a> = &'a dyn Fn(&Config, &ModelSpec) -> Result<Box<dyn Model>>;

/// A training run: what `pdenet train` does, as data. `Default` is the command line's defaults
/// (it trains `ref-mnist` for 3 epochs on the MNIST subset in `data/mnist-small`, seed 0, into
/// `runs/default`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainJob {
    /// Config file (JSON/TOML) or reference name (ref-mnist, ref-cifar, ref-2d).
    pub config: String,
    /// Folder with the four MNIST IDX files (.gz or raw), or twoclass, peaks, swissroll.
    pub data: String,
    pub epochs: usize,
    /// Seeds the weights, the shuffling and the built-in data sets.
    pub seed: u64,
    /// Output folder: model.safetensors, log.csv, checkpoint/, *.png.
    pub out: PathBuf,
    /// Minibatch size; `None` is 64.
    pub batch: Option<usize>,
    /// Base learning rate, cosine-decayed over the epochs; `None` is 0.1 for SGD, 0.001 for Adam.
    pub lr: Option<f64>,
    pub optimizer: OptimizerKind,
    /// Memory policy of the backward pass.
    pub policy: Policy,
    /// The drift guard's tolerance under `reversible`; `None` is the default for the precision
    /// ([`crate::schedule::default_drift_tol`]), infinity trusts every rebuild.
    pub drift_tol: Option<f64>,
    /// Fail instead of recomputing a unit whose rebuild drifted past `drift_tol`.
    pub strict: bool,
    /// Format of the kept states.
    pub storage: Storage,
    pub device: DeviceChoice,
    /// Arithmetic of the convolutions.
    pub precision: crate::backend::Precision,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Overwrite a run already in `out` (without it, a run refuses to).
    pub force: bool,
    /// Multilevel training in depth: after the epochs, double the steps, halve h, interpolate
    /// the weights in time and train again, this many times (each level in `out/level{l}/`, the
    /// finest network's weights and config in `out`).
    pub multilevel: usize,
    /// Stop training after this many seconds (evaluation excluded), at the end of the minibatch
    /// that crosses it: that epoch is evaluated, logged and checkpointed as done. The learning
    /// rate schedule still spans `epochs`.
    pub time_limit: Option<f64>,
}

impl Default for TrainJob {
    fn default() -> Self {
        TrainJob {
            config: "ref-mnist".into(),
            data: DEFAULT_DATA.into(),
            epochs: 3,
            seed: 0,
            out: PathBuf::from("runs/default"),
            batch: None,
            lr: None,
            optimizer: OptimizerKind::Sgd,
            policy: Policy::Store,
            drift_tol: None,
            strict: false,
            storage: Storage::F32,
            device: DeviceChoice::Auto,
            precision: Default::default(),
            resume: false,
            force: false,
            multilevel: 0,
            time_limit: None,
        }
    }
}

/// An evaluation of trained weights on the test split of `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalJob {
    pub config: String,
    pub weights: PathBuf,
    /// Folder with MNIST IDX files, or twoclass, peaks, swissroll.
    pub data: String,
    /// Seed of a built-in data set (its test split depends on it): the training seed.
    pub seed: u64,
}

/// Whether `out` holds (part of) a training run.
fn holds_run(out: &Path) -> bool {
    ["model.safetensors", "log.csv", checkpoint::CHECKPOINT_DIR]
        .iter()
        .any(|n| out.join(n).exists())
}

/// The default data folder relative to the working directory, else the one in the source tree.
fn resolve_data(spec: &str) -> String {
    if spec == DEFAULT_DATA && !Path::new(spec).is_dir() {
        return format!("{}/{DEFAULT_DATA}", env!("CARGO_MANIFEST_DIR"));
    }
    spec.to_string()
}

/// Checks that the data fit the network: sample shape and labels within the classes.
pub fn check_data(cfg: &Config, split: &Split) -> Result<()> {
    let dims = &split.train.sample_dims;
    let ok = match cfg.kind {
        NetworkKind::Image => dims.len() == 3 && Some(dims[0]) == cfg.in_channels,
        NetworkKind::Dense => dims.len() == 1 && Some(dims[0]) == cfg.dense_input,
    };
    if !ok {
        let want = match cfg.kind {
            NetworkKind::Image => format!("images with {} channels", cfg.input_width()),
            NetworkKind::Dense => format!("vectors of dimension {}", cfg.input_width()),
        };
        return Err(Error::Data(format!(
            "{}: samples of shape {dims:?} do not fit the network, which takes {want}",
            split.name
        )));
    }
    for (part, ds) in [("train", &split.train), ("test", &split.test)] {
        if let Some((i, l)) = ds
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= cfg.classes)
        {
            return Err(Error::Data(format!(
                "{}: {part} label {l} of sample {i} is outside the {} classes of the config",
                split.name, cfg.classes
            )));
        }
    }
    Ok(())
}

/// Runs a training job (`pdenet train`); returns the report after printing a summary line.
pub fn run_train(job: &TrainJob, build: BuildModel<'_>) -> Result<TrainReport> {
    // The command line refuses these combinations before a job exists; other callers get the
    // same refusal here.
    if job.resume && (job.force || job.multilevel > 0) {
        return Err(Error::Input(
            "--resume cannot be used with --force or --multilevel".into(),
        ));
    }
    let cfg = Config::load(&job.config)?;
    if job.multilevel == 0 {
        return train_level(job, build, &cfg, None).map(|(r, _)| r);
    }
    if !job.force && holds_run(&job.out.join("level0")) {
        return Err(Error::Input(format!(
            "{} already holds a multilevel run; pass --force to overwrite it",
            job.out.display()
        )));
    }
    let (mut cfg, mut init) = (cfg, None);
    let mut report = None;
    for level in 0..=job.multilevel {
        let level_job = TrainJob {
            out: job.out.join(format!("level{level}")),
            multilevel: 0,
            ..job.clone()
        };
        eprintln!("level {level}: steps {:?}, h {}", cfg.steps, cfg.h);
        let (r, trained) = train_level(&level_job, build, &cfg, init.as_ref())?;
        report = Some(r);
        if level < job.multilevel {
            let (fine_cfg, fine) = crate::train::multilevel::prolongate(&cfg, &trained)?;
            cfg = fine_cfg;
            init = Some(fine);
        }
    }
    let last = job.out.join(format!("level{}", job.multilevel));
    let model = std::fs::read(last.join("model.safetensors")).map_err(|e| Error::io(&last, e))?;
    crate::params::write_atomic(&job.out.join("model.safetensors"), &model)?;
    let json = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::Other(format!("serialising the config: {e}")))?;
    crate::params::write_atomic(&job.out.join("config.json"), json.as_bytes())?;
    println!(
        "finest network: steps {:?}, h {} -> {} (config {})",
        cfg.steps,
        cfg.h,
        job.out.join("model.safetensors").display(),
        job.out.join("config.json").display()
    );
    Ok(report.expect("at least one level"))
}

/// Trains one network: `cfg` from scratch, or from the weights `init` (a prolongated network).
/// Returns the report and the trained parameters.
fn train_level(
    job: &TrainJob,
    build: BuildModel<'_>,
    cfg: &Config,
    init: Option<&ParamSet>,
) -> Result<(TrainReport, ParamSet)> {
    let cfg = cfg.clone();
    if job.epochs == 0 {
        return Err(Error::Input("--epochs must be at least 1".into()));
    }
    if !job.resume && holds_run(&job.out) {
        if !job.force {
            return Err(Error::Input(format!(
                "{} already holds a run; pass --resume to continue it or --force to overwrite it",
                job.out.display()
            )));
        }
        // A fresh run: the old checkpoints must not be resumed from or mixed with the new.
        let ck = job.out.join(checkpoint::CHECKPOINT_DIR);
        if ck.exists() {
            std::fs::remove_dir_all(&ck).map_err(|e| Error::io(&ck, e))?;
        }
    }
    let data_spec = resolve_data(&job.data);
    let split = data::load(&data_spec, job.seed)?;
    check_data(&cfg, &split)?;
    let batch = job.batch.unwrap_or(64);
    if batch < 2 {
        return Err(Error::Input(format!(
            "--batch {batch}: a training minibatch needs at least 2 samples (batch norm statistics); use --batch 2 or more"
        )));
    }
    if let Some(t) = job.time_limit {
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::Input(format!(
                "--time-limit must be positive and finite seconds, got {t}"
            )));
        }
    }
    if let Some(lr) = job.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Input(format!(
                "--lr must be positive and finite, got {lr}"
            )));
        }
    }
    let spec = ModelSpec {
        seed: job.seed,
        policy: job.policy,
        drift_guard: crate::schedule::DriftGuard::requested(
            job.drift_tol,
            job.strict,
            job.precision,
        )?,
        storage: job.storage,
        device: job.device,
        precision: job.precision,
        batch,
    };
    let mut model = build(&cfg, &spec)?;
    if let Some(p) = init {
        model.set_params(p)?;
    }
    let mut opts = TrainOptions::new(&job.out, job.epochs, job.seed);
    opts.batch = batch;
    opts.optim = OptimConfig::default_for(job.optimizer, job.lr);
    opts.lr_schedule = LrSchedule::Cosine {
        total: job.epochs,
        min_factor: 0.0,
    };
    opts.resume = job.resume;
    opts.time_limit = job.time_limit;
    opts.progress = true;
    opts.config = serde_json::to_value(&cfg)
        .map_err(|e| Error::Other(format!("serialising the config: {e}")))?;
    // The user's spelling of the data, so that a resumed run may use another working directory
    // only when it names the data the same way.
    opts.data_name = job.data.clone();
    opts.region_bounds = data::synthetic_kind(&job.data).map(|k| k.bounds());
    let report = train(&mut model, &split, &opts)?;
    println!(
        "trained {} epochs: accuracy {:.4} loss {:.4} -> {}",
        report.epochs,
        report.test_accuracy,
        report.test_loss,
        job.out.join("model.safetensors").display()
    );
    Ok((report, model.params()?))
}

/// Runs an evaluation (`pdenet eval`): prints `accuracy A loss L` and returns `(accuracy, loss)`.
pub fn run_eval(job: &EvalJob, build: BuildModel<'_>) -> Result<(f64, f64)> {
    let cfg = Config::load(&job.config)?;
    let split = data::load(&resolve_data(&job.data), job.seed)?;
    check_data(&cfg, &split)?;
    let weights = read_safetensors(&job.weights)?;
    let spec = ModelSpec {
        seed: 0,
        policy: Policy::Store,
        drift_guard: None,
        storage: Storage::F32,
        device: DeviceChoice::Auto,
        precision: Default::default(),
        batch: 500,
    };
    let mut model = build(&cfg, &spec)?;
    let mut p = model.params()?;
    p.load_from_file(weights, &job.weights)?;
    model.set_params(&p)?;
    let (acc, loss) = evaluate(&mut model, &split.test, 500)?;
    println!("accuracy {acc:.4} loss {loss:.4}");
    Ok((acc, loss))
}
