//! `pdenet train` and `pdenet eval`: their flags, turned into the library's jobs.

use super::args::{parse_seed, DriftArgs};
use pdenet::backend::{DeviceChoice, Precision, Storage};
use pdenet::schedule::Policy;
use pdenet::train::optim::OptimizerKind;
use pdenet::train::{EvalJob, TrainJob, DEFAULT_DATA};
use std::path::PathBuf;

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
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
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
    pub precision: Precision,
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
    /// rate schedule still spans --epochs; with --resume the budget starts afresh.
    #[arg(long, allow_negative_numbers = true)]
    pub time_limit: Option<f64>,
}

/// The library's [`OptimizerKind`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(a: OptimizerArg) -> Self {
        match a {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
        }
    }
}

impl From<TrainArgs> for TrainJob {
    fn from(a: TrainArgs) -> Self {
        TrainJob {
            config: a.config,
            data: a.data,
            epochs: a.epochs,
            seed: a.seed,
            out: a.out,
            batch: a.batch,
            lr: a.lr,
            optimizer: a.optimizer.into(),
            policy: a.policy,
            drift_tol: a.drift.drift_tol,
            strict: a.drift.strict,
            storage: a.storage,
            device: a.device,
            precision: a.precision,
            resume: a.resume,
            force: a.force,
            multilevel: a.multilevel,
            time_limit: a.time_limit,
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

impl From<EvalArgs> for EvalJob {
    fn from(a: EvalArgs) -> Self {
        EvalJob {
            config: a.config,
            weights: a.weights,
            data: a.data,
            seed: a.seed,
        }
    }
}
