//! Training: data, optimizers, checkpoints, logs, plots and the epoch loop.
//!
//! The loop is written against the [`Model`] trait, which the network engine implements; the
//! tests drive it with a small softmax-regression model.

pub mod checkpoint;
pub mod data;
pub mod engine_model;
mod job;
pub mod log;
pub mod multilevel;
pub mod optim;
pub mod plot;

pub use job::{
    check_data, run_eval, run_train, BuildModel, EvalJob, ModelSpec, TrainJob, DEFAULT_DATA,
};

use crate::error::{Error, Result};
use crate::params::{save_params, ParamSet};
use crate::tensor::HostTensor;
use data::{Augment, Dataset, RngState, Split};
use log::LogRow;
use optim::{LrSchedule, OptimConfig, Optimizer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A trainable classifier (the engine's network, or a mock in tests).
pub trait Model {
    /// Current parameters and buffers, SPEC names.
    fn params(&self) -> Result<ParamSet>;
    fn set_params(&mut self, p: &ParamSet) -> Result<()>;
    /// Forward + backward in training mode (batch-norm batch statistics; running stats updated).
    /// `x` is [n, ...sample dims]. Returns the mean loss, logits [n, classes] and gradients of every
    /// trainable parameter (same names as params(); Buffers absent).
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)>;
    /// Evaluation-mode logits [n, classes].
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>>;
    /// Right-hand-side evaluations `[forward, backward]` of the last `grad` (`ode` units; 0
    /// for other networks).
    fn last_nfe(&self) -> [usize; 2] {
        [0, 0]
    }
    /// One training step: [`Model::grad`] and an update by `opt` at rate `lr`. Returns the
    /// loss and the logits. This default goes through the host; a model that keeps its
    /// weights on a device updates them there (and then holds `opt`'s state until
    /// [`Model::sync_optimizer`]).
    fn train_step(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        opt: &mut Optimizer,
        lr: f64,
    ) -> Result<(f64, Vec<f32>)> {
        let (loss, logits, grads) = self.grad(x, labels)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite(format!("the loss is {loss}")));
        }
        if let Some(name) = first_non_finite(&grads) {
            return Err(Error::NonFinite(format!(
                "the gradient of `{name}` is not finite"
            )));
        }
        let mut p = self.params()?;
        opt.step(&mut p, &grads, lr)?;
        if let Some(name) = first_non_finite(&p) {
            return Err(Error::NonFinite(format!(
                "`{name}` is not finite after the update"
            )));
        }
        self.set_params(&p)?;
        Ok((loss, logits))
    }
    /// Brings `opt` up to date with the optimizer state the model holds (before a
    /// checkpoint); a no-op for models that train through the host.
    fn sync_optimizer(&mut self, _opt: &mut Optimizer) -> Result<()> {
        Ok(())
    }
}

impl<M: Model + ?Sized> Model for Box<M> {
    fn params(&self) -> Result<ParamSet> {
        (**self).params()
    }
    fn set_params(&mut self, p: &ParamSet) -> Result<()> {
        (**self).set_params(p)
    }
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)> {
        (**self).grad(x, labels)
    }
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>> {
        (**self).logits(x)
    }
    fn last_nfe(&self) -> [usize; 2] {
        (**self).last_nfe()
    }
    fn train_step(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        opt: &mut Optimizer,
        lr: f64,
    ) -> Result<(f64, Vec<f32>)> {
        (**self).train_step(x, labels, opt, lr)
    }
    fn sync_optimizer(&mut self, opt: &mut Optimizer) -> Result<()> {
        (**self).sync_optimizer(opt)
    }
}

/// Settings of a training run.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: usize,
    /// Seeds shuffling and augmentation (the caller seeds the weights).
    pub seed: u64,
    pub optim: OptimConfig,
    pub lr_schedule: LrSchedule,
    pub augment: Augment,
    /// Output folder: `model.safetensors`, `log.csv`, `checkpoint/`, `*.png`.
    pub out: PathBuf,
    /// Continue from `out/checkpoint/` if it holds one.
    pub resume: bool,
    /// Progress bar (when stderr is a terminal) and a summary line per epoch on stderr.
    pub progress: bool,
    /// Write `loss.png`, `accuracy.png` and, for 2-D data, `regions.png`.
    pub plots: bool,
    /// Batch size of evaluation.
    pub eval_batch: usize,
    /// Return after this many completed epochs, as if the run were killed (resume tests).
    pub stop_after: Option<usize>,
    /// Stop after this many seconds of training (evaluation excluded), at the end of the
    /// minibatch that crosses it; the cut epoch is evaluated, logged and checkpointed.
    pub time_limit: Option<f64>,
    /// The network configuration, stored in checkpoints and checked on resume.
    pub config: serde_json::Value,
    /// The data spec (folder or built-in name), checked on resume.
    pub data_name: String,
    /// Plot window of `regions.png` (`[x0, x1, y0, y1]`); from the data when `None`.
    pub region_bounds: Option<[f32; 4]>,
}

impl TrainOptions {
    /// Defaults: SGD (lr 0.1, momentum 0.9, decay 5e-4), cosine schedule over the epochs,
    /// no augmentation, batch 64.
    pub fn new(out: impl Into<PathBuf>, epochs: usize, seed: u64) -> Self {
        TrainOptions {
            epochs,
            batch: 64,
            seed,
            optim: OptimConfig::sgd(0.1),
            lr_schedule: LrSchedule::Cosine {
                total: epochs,
                min_factor: 0.0,
            },
            augment: Augment::default(),
            out: out.into(),
            resume: false,
            progress: false,
            plots: true,
            eval_batch: 500,
            stop_after: None,
            time_limit: None,
            config: serde_json::Value::Null,
            data_name: String::new(),
            region_bounds: None,
        }
    }

    /// What must match between a checkpoint and a resumed run for bit-identical results.
    fn run_json(&self) -> serde_json::Value {
        serde_json::json!({
            "seed": self.seed,
            "batch": self.batch,
            "data": self.data_name,
            "optimizer": self.optim,
            "schedule": self.lr_schedule,
            "augment": self.augment,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.eval_batch == 0 {
            return Err(Error::Input("batch size must be at least 1".into()));
        }
        // One-sample minibatches are dropped (batch norm needs two): a batch of 1 would train
        // nothing at all.
        if self.batch == 1 {
            return Err(Error::Input(
                "--batch 1: a training minibatch needs at least 2 samples (batch norm statistics); use --batch 2 or more".into(),
            ));
        }
        Ok(())
    }
}

/// The outcome of [`train`].
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// One row per completed epoch (including those of a resumed checkpoint).
    pub history: Vec<LogRow>,
    /// Completed epochs.
    pub epochs: usize,
    pub test_accuracy: f64,
    pub test_loss: f64,
}

/// Mean softmax cross-entropy and the number of correct argmax predictions of `logits [n, k]`.
pub fn loss_and_correct(logits: &[f32], labels: &[usize]) -> Result<(f64, usize)> {
    let n = labels.len();
    if n == 0 || !logits.len().is_multiple_of(n) || logits.len() / n == 0 {
        return Err(Error::Shape(format!(
            "{} logits for {n} samples",
            logits.len()
        )));
    }
    let k = logits.len() / n;
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &l) in logits.chunks_exact(k).zip(labels) {
        if l >= k {
            return Err(Error::Data(format!(
                "label {l} is outside the {k} classes of the network"
            )));
        }
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        loss += lse - row[l] as f64;
        if argmax(row) == l {
            correct += 1;
        }
    }
    Ok((loss / n as f64, correct))
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Accuracy and mean loss of `model` (evaluation mode) on `ds`.
pub fn evaluate<M: Model + ?Sized>(
    model: &mut M,
    ds: &Dataset,
    batch: usize,
) -> Result<(f64, f64)> {
    if ds.is_empty() {
        return Err(Error::Data("the evaluation set is empty".into()));
    }
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let order: Vec<usize> = (0..ds.len()).collect();
    for idx in order.chunks(batch.max(1)) {
        let (x, labels) = ds.batch(idx)?;
        let logits = model.logits(&x)?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            let k = logits.len() / idx.len().max(1);
            return Err(Error::NonFinite(format!(
                "the logits of evaluation sample {} are not finite ({})",
                idx[i / k.max(1)],
                logits[i]
            )));
        }
        let (l, c) = loss_and_correct(&logits, &labels)?;
        loss += l * idx.len() as f64;
        correct += c;
    }
    Ok((correct as f64 / ds.len() as f64, loss / ds.len() as f64))
}

/// Predicted classes of points `[m, d]` (for decision-region plots).
pub fn predict<M: Model + ?Sized>(model: &mut M, points: &[f32], d: usize) -> Result<Vec<usize>> {
    let m = points.len() / d.max(1);
    let x = HostTensor::new(vec![m, d], points.to_vec())?;
    let logits = model.logits(&x)?;
    if m == 0 || !logits.len().is_multiple_of(m) {
        return Err(Error::Shape(format!(
            "{} logits for {m} points",
            logits.len()
        )));
    }
    Ok(logits.chunks_exact(logits.len() / m).map(argmax).collect())
}

fn first_non_finite(p: &ParamSet) -> Option<String> {
    p.iter()
        .find(|(_, _, t)| t.data.iter().any(|v| !v.is_finite()))
        .map(|(n, _, _)| n.to_string())
}

fn progress_bar(opts: &TrainOptions, len: usize, epoch: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !opts.progress || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(format!("epoch {}/{}", epoch, opts.epochs));
    pb
}

/// Trains `model` on `split.train`, evaluating on `split.test` after every epoch.
///
/// After each epoch: a checkpoint in `out/checkpoint/`, `out/model.safetensors`, `out/log.csv`
/// and the curve plots, all written atomically. A non-finite loss or gradient stops the run with
/// [`Error::NonFinite`] naming the epoch, step and tensor; the last good checkpoint stays.
pub fn train<M: Model + ?Sized>(
    model: &mut M,
    split: &Split,
    opts: &TrainOptions,
) -> Result<TrainReport> {
    opts.validate()?;
    let train_set = &split.train;
    if train_set.is_empty() {
        return Err(Error::Data(format!(
            "{}: the training set is empty",
            split.name
        )));
    }
    if split.test.sample_dims != train_set.sample_dims {
        return Err(Error::Data(format!(
            "{}: train samples are {:?} but test samples {:?}",
            split.name, train_set.sample_dims, split.test.sample_dims
        )));
    }
    let out = opts.out.as_path();
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let result = train_in(model, split, opts);
    if result.is_err() && created {
        // A refused or failed run leaves no empty folder behind (`remove_dir` keeps a
        // non-empty one: its checkpoints stay).
        let _ = std::fs::remove_dir(out);
    }
    result
}

fn train_in<M: Model + ?Sized>(
    model: &mut M,
    split: &Split,
    opts: &TrainOptions,
) -> Result<TrainReport> {
    let train_set = &split.train;
    let out = opts.out.as_path();
    crate::params::remove_stale_temps(out);
    let run = opts.run_json();
    if opts.batch > train_set.len() && opts.progress {
        eprintln!(
            "note: --batch {} exceeds the {} training samples: one step of all of them per epoch",
            opts.batch,
            train_set.len()
        );
    }

    let resumed = if opts.resume {
        checkpoint::load(out)?
    } else {
        None
    };
    let (start, mut rng, mut opt, mut history) = match resumed {
        Some(ck) => {
            if ck.state.epoch > opts.epochs {
                return Err(Error::Input(format!(
                    "cannot resume: the checkpoint in {} has {} epochs, more than --epochs {}",
                    ck.dir.display(),
                    ck.state.epoch,
                    opts.epochs
                )));
            }
            check_same("network config", &ck.state.config, &opts.config)?;
            check_same("run settings", &ck.state.run, &run)?;
            let mut p = model.params()?;
            p.load_from(ck.params.clone())?;
            model.set_params(&p)?;
            let opt = ck.optimizer_for(&p)?;
            let rng = ck.state.rng.restore()?;
            if opts.progress {
                eprintln!(
                    "resuming {} after epoch {}",
                    out.join(checkpoint::CHECKPOINT_DIR).display(),
                    ck.state.epoch
                );
            }
            (ck.state.epoch, rng, opt, ck.state.history)
        }
        None => {
            if opts.resume && opts.progress {
                eprintln!("no checkpoint in {}: starting afresh", out.display());
            }
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            rng.set_stream(3);
            (0, rng, Optimizer::new(opts.optim)?, Vec::new())
        }
    };
    history.truncate(start);

    let end = opts.epochs.min(opts.stop_after.unwrap_or(usize::MAX));
    let mut last_eval = None;
    // Training seconds of this run so far (a resumed run's budget starts afresh).
    let mut trained_secs = 0.0f64;
    let mut out_of_time = false;
    for epoch in start..end {
        let e1 = epoch + 1;
        let t0 = Instant::now();
        let lr = opts.lr_schedule.lr(opts.optim.lr, epoch);
        let order = data::shuffled(train_set.len(), &mut rng);
        let batches = data::batches(&order, opts.batch);
        let pb = progress_bar(opts, batches.len(), e1);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut nfe_sum = [0usize; 2];
        for (step, idx) in batches.iter().enumerate() {
            let s1 = step + 1;
            let (mut x, labels) = train_set.batch(idx)?;
            opts.augment.apply(&mut x, train_set.background, &mut rng);
            let (loss, logits) =
                model
                    .train_step(&x, &labels, &mut opt, lr)
                    .map_err(|e| match e {
                        Error::NonFinite(m) => {
                            Error::NonFinite(format!("epoch {e1}, step {s1}: {m}"))
                        }
                        other => other,
                    })?;
            let (_, c) = loss_and_correct(&logits, &labels)?;
            let nfe = model.last_nfe();
            nfe_sum[0] += nfe[0];
            nfe_sum[1] += nfe[1];
            loss_sum += loss * idx.len() as f64;
            correct += c;
            seen += idx.len();
            pb.inc(1);
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "loss {:.4} acc {:.3} {:.0} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / secs
            ));
            if opts
                .time_limit
                .is_some_and(|limit| trained_secs + secs >= limit)
            {
                out_of_time = batches.len() > s1;
                break;
            }
        }
        if seen == 0 {
            return Err(Error::Data(format!(
                "epoch {e1}: no minibatch of at least 2 samples in {} training samples",
                train_set.len()
            )));
        }
        let train_secs = t0.elapsed().as_secs_f64().max(1e-9);
        trained_secs += train_secs;
        pb.finish_and_clear();
        let (test_acc, test_loss) = evaluate(model, &split.test, opts.eval_batch)?;
        last_eval = Some((test_acc, test_loss));
        let row = LogRow {
            epoch: e1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            images_per_s: seen as f64 / train_secs,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if opts.progress {
            let nfe = if nfe_sum == [0, 0] {
                String::new()
            } else {
                format!(" nfe {} + {}", nfe_sum[0], nfe_sum[1])
            };
            eprintln!(
                "epoch {e1}/{}: loss {:.4} train {:.4} test {:.4} (loss {:.4}) {:.0} img/s {:.1} s{nfe}",
                opts.epochs,
                row.loss,
                row.train_acc,
                row.test_acc,
                test_loss,
                row.images_per_s,
                row.seconds
            );
        }
        history.push(row);
        model.sync_optimizer(&mut opt)?;
        let params = model.params()?;
        let state = checkpoint::CheckpointState {
            version: checkpoint::state_version(),
            epoch: e1,
            rng: RngState::of(&rng),
            optimizer: opt.scalars(),
            config: opts.config.clone(),
            run: run.clone(),
            history: history.clone(),
        };
        checkpoint::save(out, &params, &opt, &state)?;
        write_outputs(out, &params, &history, opts)?;
        if opts.time_limit.is_some_and(|limit| trained_secs >= limit) {
            if opts.progress {
                let cut = if out_of_time {
                    format!(" (epoch {e1} cut after {seen} samples)")
                } else {
                    String::new()
                };
                eprintln!("time limit reached after {trained_secs:.1} s of training{cut}");
            }
            break;
        }
    }

    let (test_accuracy, test_loss) = match last_eval {
        Some(v) => v,
        // Nothing left to train (resumed a finished run): evaluate once and refresh the outputs.
        None => {
            let v = evaluate(model, &split.test, opts.eval_batch)?;
            write_outputs(out, &model.params()?, &history, opts)?;
            v
        }
    };
    let done = history.len();
    if done >= opts.epochs && opts.plots && train_set.is_2d() {
        let bounds = opts
            .region_bounds
            .unwrap_or_else(|| plot::bounds_of(&split.test.x));
        let title = format!("{}: test accuracy {:.4}", split.name, test_accuracy);
        let result = plot::plot_regions(
            &out.join("regions.png"),
            &mut |pts| predict(model, pts, 2),
            &split.test.x,
            &split.test.labels,
            bounds,
            &title,
        );
        warn_plot(result);
    }
    Ok(TrainReport {
        history,
        epochs: done,
        test_accuracy,
        test_loss,
    })
}

fn write_outputs(
    out: &Path,
    params: &ParamSet,
    history: &[LogRow],
    opts: &TrainOptions,
) -> Result<()> {
    save_params(&out.join("model.safetensors"), params)?;
    log::write_log(&out.join("log.csv"), history)?;
    if opts.plots {
        warn_plot(plot::plot_curves(out, history));
    }
    Ok(())
}

/// A failed plot is reported but does not stop training: the weights matter more.
fn warn_plot(r: Result<()>) {
    if let Err(e) = r {
        eprintln!("warning: {e}");
    }
}

fn check_same(what: &str, saved: &serde_json::Value, now: &serde_json::Value) -> Result<()> {
    if saved == now {
        return Ok(());
    }
    let diff = match (saved, now) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    format!(
                        "{k}: {} in the checkpoint, {} now",
                        a.get(k).map_or("none".into(), |v| v.to_string()),
                        b.get(k).map_or("none".into(), |v| v.to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => format!("{saved} in the checkpoint, {now} now"),
    };
    Err(Error::Input(format!(
        "cannot resume: the {what} differ ({diff}); use another --out or drop --resume"
    )))
}
