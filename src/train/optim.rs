//! Optimizers over a [`ParamSet`] and learning-rate schedules, with state for checkpoints.
//!
//! The update rules follow PyTorch's `SGD` (momentum, dampening 0, L2 weight decay added to the
//! gradient) and `Adam`, so that runs can be compared. Weight decay applies to
//! [`ParamRole::Weight`] only; [`ParamRole::Buffer`]s are never touched.

use crate::backend::optim::{AdamStep, SgdStep};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::params::{ParamRole, ParamSet};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 2] = [OptimizerKind::Sgd, OptimizerKind::Adam];
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        OptimizerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::Input(format!("unknown optimizer `{s}` (sgd, adam)")))
    }
}

/// Hyper-parameters of the optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    /// Base learning rate (the learning-rate schedule scales it).
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl OptimConfig {
    /// SGD with momentum 0.9 and weight decay 5e-4 (the usual CNN setting).
    pub fn sgd(lr: f64) -> Self {
        OptimConfig {
            kind: OptimizerKind::Sgd,
            lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
    /// Adam with PyTorch's defaults and no weight decay.
    pub fn adam(lr: f64) -> Self {
        OptimConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            ..OptimConfig::sgd(lr)
        }
    }
    /// The default for a kind: SGD at 0.1, Adam at 1e-3.
    pub fn default_for(kind: OptimizerKind, lr: Option<f64>) -> Self {
        match kind {
            OptimizerKind::Sgd => OptimConfig::sgd(lr.unwrap_or(0.1)),
            OptimizerKind::Adam => OptimConfig::adam(lr.unwrap_or(1e-3)),
        }
    }
    fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Input(format!(
                "learning rate must be positive, got {}",
                self.lr
            )));
        }
        if !ok(self.momentum) || !ok(self.weight_decay) || !ok(self.eps) {
            return Err(Error::Input(
                "momentum, weight decay and eps must be finite and >= 0".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err(Error::Input("Adam betas must lie in [0, 1)".into()));
        }
        Ok(())
    }
}

/// Learning-rate schedule, evaluated per epoch (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
    /// Cosine decay from the base rate to `min_factor` times it over `total` epochs.
    Cosine {
        total: usize,
        min_factor: f64,
    },
}

impl LrSchedule {
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { total, min_factor } => {
                let t = (epoch as f64 / total.max(1) as f64).min(1.0);
                let f = min_factor
                    + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                base * f
            }
        }
    }
}

/// Scalars of the optimizer state (the tensors go to safetensors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimScalars {
    pub config: OptimConfig,
    /// Number of steps taken (Adam's bias correction).
    pub steps: u64,
}

/// An optimizer's moment buffers on a backend, by template position (`None` for buffers, and
/// for `v` under SGD), and the step count they belong to.
pub struct ResidentState<B: Backend> {
    steps: u64,
    m: Vec<Option<B::Buf>>,
    v: Vec<Option<B::Buf>>,
}

impl<B: Backend> ResidentState<B> {
    /// The optimizer steps this state has taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// Whether every value of `b` is finite, read on the backend: a sum of squares in f64 (which
/// cannot overflow for f32 values) is finite exactly when they all are.
fn all_finite<B: Backend>(be: &B, b: &B::Buf) -> Result<bool> {
    Ok(be.scaled_sq(b, b, b, 1.0, 0.0)?.is_finite())
}

/// SGD or Adam with per-parameter state keyed by SPEC name.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub config: OptimConfig,
    steps: u64,
    /// SGD momentum buffer or Adam first moment.
    m: HashMap<String, Vec<f32>>,
    /// Adam second moment.
    v: HashMap<String, Vec<f32>>,
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Result<Self> {
        config.validate()?;
        Ok(Optimizer {
            config,
            steps: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update of every trainable tensor of `params` with the gradient of the same name.
    pub fn step(&mut self, params: &mut ParamSet, grads: &ParamSet, lr: f64) -> Result<()> {
        // Check everything first so that an error leaves the parameters untouched.
        for (name, role, p) in params.iter() {
            if role == ParamRole::Buffer {
                continue;
            }
            let g = grads
                .get(name)
                .ok_or_else(|| Error::MissingTensor(format!("gradient of {name}")))?;
            if g.shape != p.shape {
                return Err(Error::Shape(format!(
                    "gradient of `{name}` has shape {:?}, the parameter {:?}",
                    g.shape, p.shape
                )));
            }
        }
        for name in grads.names() {
            match params.position(name) {
                None => {
                    return Err(Error::Shape(format!(
                        "gradient for unknown parameter `{name}`"
                    )))
                }
                Some(_)
                    if params
                        .iter()
                        .any(|(n, r, _)| n == name && r == ParamRole::Buffer) =>
                {
                    return Err(Error::Shape(format!(
                        "gradient for buffer `{name}` (buffers are not trained)"
                    )))
                }
                Some(_) => {}
            }
        }
        self.steps += 1;
        for (name, role, p) in params.iter_mut() {
            if role == ParamRole::Buffer {
                continue;
            }
            let g = &grads.get(name).expect("checked above").data;
            let (sgd, adam) = (self.sgd_step(role, lr), self.adam_step(role, lr));
            let m = self
                .m
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; p.len()]);
            match self.config.kind {
                OptimizerKind::Sgd => crate::backend::optim::sgd_host(&sgd, &mut p.data, m, g),
                OptimizerKind::Adam => {
                    let v = self
                        .v
                        .entry(name.to_string())
                        .or_insert_with(|| vec![0.0; p.len()]);
                    crate::backend::optim::adam_host(&adam, &mut p.data, m, v, g)
                }
            }
        }
        Ok(())
    }

    fn weight_decay(&self, role: ParamRole) -> f64 {
        if role == ParamRole::Weight {
            self.config.weight_decay
        } else {
            0.0
        }
    }

    /// The scalars of an SGD update of a parameter of `role`.
    fn sgd_step(&self, role: ParamRole, lr: f64) -> SgdStep {
        SgdStep {
            lr,
            momentum: self.config.momentum,
            weight_decay: self.weight_decay(role),
        }
    }

    /// The scalars of the Adam update number `self.steps` of a parameter of `role`.
    fn adam_step(&self, role: ParamRole, lr: f64) -> AdamStep {
        let (c, t) = (self.config, self.steps as i32);
        AdamStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: self.weight_decay(role),
            bias1: 1.0 - c.beta1.powi(t),
            bias2: 1.0 - c.beta2.powi(t),
        }
    }

    /// Uploads the state to `be` beside parameters laid out as `template` (zeros where a
    /// parameter has no state yet, as [`Optimizer::step`] starts it).
    pub fn upload_state<B: Backend>(
        &self,
        be: &B,
        template: &ParamSet,
    ) -> Result<ResidentState<B>> {
        let adam = self.config.kind == OptimizerKind::Adam;
        let mut state = ResidentState {
            steps: self.steps,
            m: Vec::with_capacity(template.len()),
            v: Vec::with_capacity(template.len()),
        };
        for (name, role, t) in template.iter() {
            let trained = role != ParamRole::Buffer;
            let up = |map: &HashMap<String, Vec<f32>>| -> Result<B::Buf> {
                match map.get(name) {
                    Some(d) => be.upload_f32(d),
                    None => be.zeros(t.numel()),
                }
            };
            state
                .m
                .push(if trained { Some(up(&self.m)?) } else { None });
            state.v.push(if trained && adam {
                Some(up(&self.v)?)
            } else {
                None
            });
        }
        Ok(state)
    }

    /// Copies a resident state back (for a checkpoint); the backend's copy stays in use.
    pub fn download_state<B: Backend>(
        &mut self,
        be: &B,
        template: &ParamSet,
        state: &ResidentState<B>,
    ) -> Result<()> {
        self.steps = state.steps;
        if state.steps == 0 {
            return Ok(());
        }
        for (i, (name, _, _)) in template.iter().enumerate() {
            for (buf, map) in [(&state.m[i], &mut self.m), (&state.v[i], &mut self.v)] {
                if let Some(b) = buf {
                    map.insert(name.to_string(), be.download_f32(b)?);
                }
            }
        }
        Ok(())
    }

    /// One update on the backend: `params` (by template position) from `grads` with the
    /// state in `state`; nothing goes through the host. Every gradient is checked (present,
    /// of the parameter's length, finite) before anything changes; a parameter that is not
    /// finite after its update is an error naming it (the run stops there).
    pub fn step_resident<B: Backend>(
        &mut self,
        be: &B,
        template: &ParamSet,
        params: &mut [B::Buf],
        grads: &[Option<B::Buf>],
        state: &mut ResidentState<B>,
        lr: f64,
    ) -> Result<()> {
        for (i, (name, role, _)) in template.iter().enumerate() {
            if role == ParamRole::Buffer {
                continue;
            }
            let g = grads
                .get(i)
                .and_then(Option::as_ref)
                .ok_or_else(|| Error::MissingTensor(format!("gradient of {name}")))?;
            if be.buf_len(g) != be.buf_len(&params[i]) {
                return Err(Error::Shape(format!(
                    "gradient of `{name}` has {} values, the parameter {}",
                    be.buf_len(g),
                    be.buf_len(&params[i])
                )));
            }
            if !all_finite(be, g)? {
                return Err(Error::NonFinite(format!(
                    "the gradient of `{name}` is not finite"
                )));
            }
        }
        self.steps += 1;
        state.steps = self.steps;
        for (i, (name, role, _)) in template.iter().enumerate() {
            let (Some(g), Some(m)) = (&grads[i], state.m[i].as_mut()) else {
                continue;
            };
            match self.config.kind {
                OptimizerKind::Sgd => {
                    be.sgd_step(&mut params[i], m, g, &self.sgd_step(role, lr))?
                }
                OptimizerKind::Adam => {
                    let v = state.v[i]
                        .as_mut()
                        .ok_or_else(|| Error::Other(format!("Adam state of `{name}` lost")))?;
                    be.adam_step(&mut params[i], m, v, g, &self.adam_step(role, lr))?
                }
            }
            if !all_finite(be, &params[i])? {
                return Err(Error::NonFinite(format!(
                    "`{name}` is not finite after the update"
                )));
            }
        }
        Ok(())
    }

    /// State tensors `opt.m.<name>` and `opt.v.<name>` (shapes of the parameters), sorted.
    pub fn state_tensors(&self, params: &ParamSet) -> Vec<(String, HostTensor)> {
        let mut out = Vec::new();
        for (prefix, map) in [("opt.m.", &self.m), ("opt.v.", &self.v)] {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            for (name, data) in sorted {
                let shape = params
                    .get(name)
                    .map(|t| t.shape.clone())
                    .unwrap_or_else(|| vec![data.len()]);
                out.push((
                    format!("{prefix}{name}"),
                    HostTensor {
                        shape,
                        data: data.clone(),
                    },
                ));
            }
        }
        out
    }

    pub fn scalars(&self) -> OptimScalars {
        OptimScalars {
            config: self.config,
            steps: self.steps,
        }
    }

    /// Rebuilds an optimizer from checkpointed scalars and tensors, checking them against `params`.
    pub fn restore(
        scalars: &OptimScalars,
        tensors: &HashMap<String, HostTensor>,
        params: &ParamSet,
    ) -> Result<Self> {
        let mut opt = Optimizer::new(scalars.config)?;
        opt.steps = scalars.steps;
        for (name, t) in tensors {
            let (map, pname) = if let Some(n) = name.strip_prefix("opt.m.") {
                (&mut opt.m, n)
            } else if let Some(n) = name.strip_prefix("opt.v.") {
                (&mut opt.v, n)
            } else {
                return Err(Error::Weights(format!(
                    "unexpected optimizer tensor `{name}`"
                )));
            };
            let p = params.get(pname).ok_or_else(|| {
                Error::Weights(format!(
                    "optimizer state for unknown parameter `{pname}` (checkpoint of another network?)"
                ))
            })?;
            if p.len() != t.len() {
                return Err(Error::Weights(format!(
                    "optimizer state `{name}` has {} values, the parameter {}",
                    t.len(),
                    p.len()
                )));
            }
            map.insert(pname.to_string(), t.data.clone());
        }
        // Strict: after a step every trained parameter has its state (Adam: both moments); a
        // missing one would silently restart it at zero and change the result.
        if opt.steps > 0 {
            for (name, role, _) in params.iter() {
                if role == ParamRole::Buffer {
                    continue;
                }
                let adam = opt.config.kind == OptimizerKind::Adam;
                for (prefix, map) in [("opt.m.", &opt.m), ("opt.v.", &opt.v)] {
                    if (prefix == "opt.m." || adam) && !map.contains_key(name) {
                        return Err(Error::Weights(format!(
                            "missing optimizer tensor `{prefix}{name}` ({} steps taken)",
                            opt.steps
                        )));
                    }
                }
            }
        }
        Ok(opt)
    }
}
