//! `pdenet train` and `pdenet eval`: argument structs and their bodies.
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

/// Train a network. With no flags it trains `ref-mnist` for 3 epochs on the MNIST subset shipped
/// in `data/mnist-small` (seed 0) and writes to `runs/default`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct TrainArgs {
    /// Config file (JSON/TOML) or reference name (ref-mnist, ref-cifar, ref-2d).
    #[arg(long, default_value = "ref-mnist")]
    pub config: String,
    /// Folder with the four MNIST IDX files (.gz or raw), or twoclass, peaks, swissroll.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: String,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Seeds the weights, the shuffling and the built-in data sets.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: u64,
    /// Output folder: model.safetensors, log.csv, checkpoint/, *.png.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Minibatch size [default: 64].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Base learning rate, cosine-decayed over the epochs [default: 0.1 sgd, 0.001 adam].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub optimizer: OptimizerKind,
    /// Memory policy of the backward pass.
    #[arg(long, default_value = "store")]
    pub policy: Policy,
    #[command(flatten)]
    pub drift: DriftArgs,
    /// Format of the kept states: f32, bf16 or f16 (16 bits halve the memory `store` grows by).
    #[arg(long, default_value = "f32")]
    pub storage: Storage,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Arithmetic of the convolutions: f32; bf16 (operands rounded to bf16, f32 accumulation)
    /// on CUDA or on a CPU with avx512_bf16; tf32, f16 on CUDA.
    #[arg(long, default_value = "f32")]
    pub precision: crate::backend::Precision,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Overwrite a run already in --out (without it, `train` refuses to).
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Multilevel training in depth: after the epochs, double the steps, halve h, interpolate
    /// the weights in time and train again, this many times (each level in --out/level{l}/,
    /// the finest network's weights and config in --out).
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    pub multilevel: usize,
    /// Stop training after this many seconds (evaluation excluded), at the end of the minibatch
    /// that crosses it: that epoch is evaluated, logged and checkpointed as done. The learning
    /// rate schedule still spans --epochs.
    #[arg(long, conflicts_with = "resume", allow_negative_numbers = true)]
    pub time_limit: Option<f64>,
}

/// The drift guard of `reversible` on the command line (`grad`, `train`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct DriftArgs {
    /// Under reversible: a unit whose rebuilt input is further than this (relative max-norm)
    /// from the kept input is recomputed from that input; `inf` trusts every rebuild. Default
    /// 1e-5, and 1e-2 under `--precision bf16` (whose rebuilds drift at the bf16 level).
    #[arg(long, allow_negative_numbers = true)]
    pub drift_tol: Option<f64>,
    /// Fail instead of recomputing a unit whose rebuild drifted past --drift-tol.
    #[arg(long)]
    pub strict: bool,
}

impl Default for DriftArgs {
    fn default() -> Self {
        let guard = crate::schedule::DriftGuard::default();
        DriftArgs {
            drift_tol: Some(guard.tol),
            strict: guard.strict,
        }
    }
}

impl DriftArgs {
    /// The guard these flags ask for under `precision` (`None` for `--drift-tol inf`).
    pub fn guard(
        &self,
        precision: crate::backend::Precision,
    ) -> Result<Option<crate::schedule::DriftGuard>> {
        let tol = self
            .drift_tol
            .unwrap_or_else(|| crate::schedule::default_drift_tol(precision));
        if tol.is_nan() || tol < 0.0 {
            return Err(Error::Input(format!(
                "--drift-tol must be 0 or more (or inf), got {tol}"
            )));
        }
        Ok(
            (tol.is_finite() || self.strict).then_some(crate::schedule::DriftGuard {
                tol,
                strict: self.strict,
            }),
        )
    }
}

/// `--seed`: an integer in [0, 2^64), with a range error for negative numbers (which clap would
/// otherwise read as an unknown flag).
pub fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (0..=u64::MAX as i128).contains(&v) => Ok(v as u64),
        Ok(v) => Err(format!("the seed must lie in [0, 2^64), got {v}")),
        Err(_) => Err(format!("the seed must be an integer, got `{s}`")),
    }
}

/// Whether `out` holds (part of) a training run.
fn holds_run(out: &Path) -> bool {
    ["model.safetensors", "log.csv", checkpoint::CHECKPOINT_DIR]
        .iter()
        .any(|n| out.join(n).exists())
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            config: "ref-mnist".into(),
            data: DEFAULT_DATA.into(),
            epochs: 3,
            seed: 0,
            out: PathBuf::from("runs/default"),
            batch: None,
            lr: None,
            optimizer: OptimizerKind::Sgd,
            policy: Policy::Store,
            drift: DriftArgs::default(),
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

/// Evaluate weights on the test split; prints `accuracy A loss L` as its last line.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct EvalArgs {
    #[arg(long)]
    pub config: String,
    #[arg(long)]
    pub weights: PathBuf,
    /// Folder with MNIST IDX files, or twoclass, peaks, swissroll.
    #[arg(long, default_value = DEFAULT_DATA)]
    pub data: String,
    /// Seed of a built-in data set (its test split depends on it): use the training seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: u64,
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

/// Runs `pdenet train`; returns the report after printing a summary line.
pub fn run_train(args: &TrainArgs, build: BuildModel<'_>) -> Result<TrainReport> {
    let cfg = Config::load(&args.config)?;
    if args.multilevel == 0 {
        return train_level(args, build, &cfg, None).map(|(r, _)| r);
    }
    if !args.force && holds_run(&args.out.join("level0")) {
        return Err(Error::Input(format!(
            "{} already holds a multilevel run; pass --force to overwrite it",
            args.out.display()
        )));
    }
    let (mut cfg, mut init) = (cfg, None);
    let mut report = None;
    for level in 0..=args.multilevel {
        let level_args = TrainArgs {
            out: args.out.join(format!("level{level}")),
            multilevel: 0,
            ..args.clone()
        };
        eprintln!("level {level}: steps {:?}, h {}", cfg.steps, cfg.h);
        let (r, trained) = train_level(&level_args, build, &cfg, init.as_ref())?;
        report = Some(r);
        if level < args.multilevel {
            let (fine_cfg, fine) = crate::train::multilevel::prolongate(&cfg, &trained)?;
            cfg = fine_cfg;
            init = Some(fine);
        }
    }
    let last = args.out.join(format!("level{}", args.multilevel));
    let model = std::fs::read(last.join("model.safetensors")).map_err(|e| Error::io(&last, e))?;
    crate::params::write_atomic(&args.out.join("model.safetensors"), &model)?;
    let json = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::Other(format!("serialising the config: {e}")))?;
    crate::params::write_atomic(&args.out.join("config.json"), json.as_bytes())?;
    println!(
        "finest network: steps {:?}, h {} -> {} (config {})",
        cfg.steps,
        cfg.h,
        args.out.join("model.safetensors").display(),
        args.out.join("config.json").display()
    );
    Ok(report.expect("at least one level"))
}

/// Trains one network: `cfg` from scratch, or from the weights `init` (a prolongated network).
/// Returns the report and the trained parameters.
fn train_level(
    args: &TrainArgs,
    build: BuildModel<'_>,
    cfg: &Config,
    init: Option<&ParamSet>,
) -> Result<(TrainReport, ParamSet)> {
    let cfg = cfg.clone();
    if args.epochs == 0 {
        return Err(Error::Input("--epochs must be at least 1".into()));
    }
    if !args.resume && holds_run(&args.out) {
        if !args.force {
            return Err(Error::Input(format!(
                "{} already holds a run; pass --resume to continue it or --force to overwrite it",
                args.out.display()
            )));
        }
        // A fresh run: the old checkpoints must not be resumed from or mixed with the new.
        let ck = args.out.join(checkpoint::CHECKPOINT_DIR);
        if ck.exists() {
            std::fs::remove_dir_all(&ck).map_err(|e| Error::io(&ck, e))?;
        }
    }
    let data_spec = resolve_data(&args.data);
    let split = data::load(&data_spec, args.seed)?;
    check_data(&cfg, &split)?;
    let batch = args.batch.unwrap_or(64);
    if batch < 2 {
        return Err(Error::Input(format!(
            "--batch {batch}: a training minibatch needs at least 2 samples (batch norm statistics); use --batch 2 or more"
        )));
    }
    if let Some(t) = args.time_limit {
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::Input(format!(
                "--time-limit must be positive and finite seconds, got {t}"
            )));
        }
    }
    if let Some(lr) = args.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::Input(format!(
                "--lr must be positive and finite, got {lr}"
            )));
        }
    }
    let spec = ModelSpec {
        seed: args.seed,
        policy: args.policy,
        drift_guard: args.drift.guard(args.precision)?,
        storage: args.storage,
        device: args.device,
        precision: args.precision,
        batch,
    };
    let mut model = build(&cfg, &spec)?;
    if let Some(p) = init {
        model.set_params(p)?;
    }
    let mut opts = TrainOptions::new(&args.out, args.epochs, args.seed);
    opts.batch = batch;
    opts.optim = OptimConfig::default_for(args.optimizer, args.lr);
    opts.lr_schedule = LrSchedule::Cosine {
        total: args.epochs,
        min_factor: 0.0,
    };
    opts.resume = args.resume;
    opts.time_limit = args.time_limit;
    opts.progress = true;
    opts.config = serde_json::to_value(&cfg)
        .map_err(|e| Error::Other(format!("serialising the config: {e}")))?;
    // The user's spelling of the data, so that a resumed run may use another working directory
    // only when it names the data the same way.
    opts.data_name = args.data.clone();
    opts.region_bounds = data::synthetic_kind(&args.data).map(|k| k.bounds());
    let report = train(&mut model, &split, &opts)?;
    println!(
        "trained {} epochs: accuracy {:.4} loss {:.4} -> {}",
        report.epochs,
        report.test_accuracy,
        report.test_loss,
        args.out.join("model.safetensors").display()
    );
    Ok((report, model.params()?))
}

/// Runs `pdenet eval`: prints `accuracy A loss L` and returns `(accuracy, loss)`.
pub fn run_eval(args: &EvalArgs, build: BuildModel<'_>) -> Result<(f64, f64)> {
    let cfg = Config::load(&args.config)?;
    let split = data::load(&resolve_data(&args.data), args.seed)?;
    check_data(&cfg, &split)?;
    let weights = read_safetensors(&args.weights)?;
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
    p.load_from_file(weights, &args.weights)?;
    model.set_params(&p)?;
    let (acc, loss) = evaluate(&mut model, &split.test, 500)?;
    println!("accuracy {acc:.4} loss {loss:.4}");
    Ok((acc, loss))
}
