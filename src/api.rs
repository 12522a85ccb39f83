//! pdenet on plain data: a unit or a whole network, forward and backward on the caller's
//! buffers, parameters and gradients by SPEC names, the memory policy per call.
//!
//! This is what other frameworks call (the Python package `pdenet` and its `pdenet.torch`
//! modules are built on it). It runs the same engine as `pdenet grad` and `pdenet train`, on
//! the CPU: [`Precision::F32`] is the multi-threaded CPU backend, [`Precision::F64`] the f64
//! reference backend (slow; for gradient checks in double precision).
//!
//! A unit on its own:
//!
//! ```
//! use pdenet::api::{Unit, UnitOptions};
//! use pdenet::config::StepType;
//! use pdenet::schedule::Policy;
//!
//! let unit = Unit::new(&UnitOptions::new(StepType::Hyperbolic, 4, 3, 0.5))?;
//! let shape = [2, 4, 5, 5]; // NCHW, C = the unit's width
//! let x: Vec<f32> = (0..2 * 4 * 5 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
//! let y = unit.forward(&x, shape, Policy::Reversible)?;
//! assert_eq!(y.len(), x.len());
//! // The gradient of sum(y): the input's and every parameter's, by unit-relative names.
//! let (grad_x, grads) = unit.backward(&x, shape, &vec![1.0; y.len()], Policy::Reversible)?;
//! assert_eq!(grad_x.len(), x.len());
//! assert_eq!(grads[0].0, "steps.0.K");
//! # Ok::<(), pdenet::Error>(())
//! ```
//!
//! A whole network, from a config file, a JSON string or a reference name:
//!
//! ```
//! use pdenet::api::Network;
//! use pdenet::schedule::Policy;
//!
//! let mut net = Network::from_json(
//!     r#"{"kind":"image","in_channels":1,"classes":3,"widths":[4],"steps":[2],
//!         "layer":"hamiltonian","h":0.2}"#,
//!     0,
//! )?;
//! let shape = [2, 1, 6, 6];
//! let x = vec![0.5f32; 2 * 36];
//! let g = net.grad(&x, &shape, &[0, 2], Policy::Store)?;
//! assert_eq!(g.logits.len(), 2 * 3);
//! assert!(g.grads.iter().any(|(name, _)| name == "units.0.steps.1.K2"));
//! # Ok::<(), pdenet::Error>(())
//! ```

use crate::backend::cpu::Cpu;
use crate::backend::reference::Reference;
use crate::backend::{Activation, Backend};
use crate::config::{
    Config, Connect, Gradient, NetworkKind, NormKind, OperatorKind, Solver, StepType,
};
use crate::error::{Error, Result};
use crate::network::Layout;
use crate::params::{read_safetensors, save_params, ParamRole, ParamSet};
use crate::schedule::engine::{KeptUnit, UnitGrads};
use crate::schedule::{DriftGuard, Engine, MemoryPolicy, Policy};
use crate::tensor::HostTensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The arithmetic a [`Unit`] or [`Network`] runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The multi-threaded f32 CPU backend.
    #[default]
    F32,
    /// The f64 reference backend: plain loops, for checks in double precision.
    F64,
}

/// The engine of either precision.
enum Runner {
    F32(Engine<Cpu>),
    F64(Engine<Reference>),
}

/// Runs `$body` with `$e` bound to the engine, whatever its backend.
macro_rules! with_engine {
    ($runner:expr, |$e:ident| $body:expr) => {
        match $runner {
            Runner::F32($e) => $body,
            Runner::F64($e) => $body,
        }
    };
}

impl Runner {
    fn new(layout: Layout, params: &ParamSet, precision: Precision) -> Result<Runner> {
        Ok(match precision {
            Precision::F32 => Runner::F32(Engine::new(Cpu::new(), layout, params)?),
            Precision::F64 => Runner::F64(Engine::new(Reference, layout, params)?),
        })
    }
    fn layout(&self) -> &Layout {
        with_engine!(self, |e| &e.layout)
    }
}

/// The memory policy `policy` runs with the drift guard `pdenet grad` runs by default.
fn memory_of(policy: Policy) -> MemoryPolicy {
    policy
        .memory()
        .with_drift_guard((policy == Policy::Reversible).then(DriftGuard::default))
}

/// Values the caller passes: f32 or f64, uploaded as they are.
trait Values: Copy + Send + Sync + 'static {
    fn upload<B: Backend>(be: &B, data: &[Self]) -> Result<B::Buf>;
    fn download<B: Backend>(be: &B, buf: &B::Buf) -> Result<Vec<Self>>;
}

impl Values for f32 {
    fn upload<B: Backend>(be: &B, data: &[f32]) -> Result<B::Buf> {
        be.upload_f32(data)
    }
    fn download<B: Backend>(be: &B, buf: &B::Buf) -> Result<Vec<f32>> {
        be.download_f32(buf)
    }
}

impl Values for f64 {
    fn upload<B: Backend>(be: &B, data: &[f64]) -> Result<B::Buf> {
        be.upload(data)
    }
    fn download<B: Backend>(be: &B, buf: &B::Buf) -> Result<Vec<f64>> {
        be.download(buf)
    }
}

/// What a unit's forward pass kept for its backward pass ([`Unit::forward_kept`]).
pub struct UnitTape {
    unit: u64,
    kept: Kept,
}

enum Kept {
    F32(KeptUnit<Cpu>),
    F64(KeptUnit<Reference>),
}

/// One parameter: its name, shape and values.
pub type NamedTensor<T> = (String, Vec<usize>, Vec<T>);

/// The keys of one unit: a step type, width, number of steps and step size, and the keys of
/// SPEC section 4 that shape a unit (the others have their config defaults when `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitOptions {
    pub layer: StepType,
    pub width: usize,
    pub steps: usize,
    pub h: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<NormKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// The keys of `layer: ode` (SPEC section 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rhs: Option<StepType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<Solver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substeps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<Gradient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
    /// Seeds the initial parameters (as `pdenet init --seed`).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub precision: Precision,
}

impl UnitOptions {
    /// A unit of `steps` steps of `layer` at `width` channels and step size `h`.
    pub fn new(layer: StepType, width: usize, steps: usize, h: f64) -> Self {
        UnitOptions {
            layer,
            width,
            steps,
            h,
            operator: None,
            norm: None,
            activation: None,
            gamma: None,
            rhs: None,
            solver: None,
            substeps: None,
            rtol: None,
            atol: None,
            gradient: None,
            max_steps: None,
            seed: 0,
            precision: Precision::F32,
        }
    }

    /// Parses the options from a JSON object (`{"layer": "hyperbolic", "width": 64, ...}`).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("unit options: {}", one_line(&e.to_string()))))
    }

    /// The one-unit image network whose unit 0 is this unit (its opening layer and classifier
    /// are never run).
    pub fn to_config(&self) -> Result<Config> {
        let d =
            Config::reference("ref-mnist").ok_or_else(|| Error::Other("no ref-mnist".into()))?;
        let cfg = Config {
            kind: NetworkKind::Image,
            in_channels: Some(self.width),
            dense_input: None,
            classes: 2,
            widths: vec![self.width],
            steps: vec![self.steps],
            layer: self.layer,
            h: self.h,
            operator: self.operator.unwrap_or(d.operator),
            norm: self.norm,
            activation: self.activation.unwrap_or(d.activation),
            gamma: self.gamma.unwrap_or(d.gamma),
            connect: Connect::Conv,
            rhs: self.rhs,
            solver: self.solver,
            substeps: self.substeps,
            rtol: self.rtol,
            atol: self.atol,
            gradient: self.gradient,
            max_steps: self.max_steps,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// One unit of `steps` steps at constant width, run alone on NCHW batches of its width.
///
/// Parameters are named relative to the unit: `steps.{j}.K`, `steps.{j}.norm.weight`, ...
/// (SPEC section 8 without the `units.{k}.` prefix).
pub struct Unit {
    runner: Runner,
    /// Tells this unit's tapes from other units'.
    id: u64,
    /// Unit-relative name and the index in the engine's layout, in SPEC order.
    names: Vec<(String, usize)>,
}

const UNIT_PREFIX: &str = "units.0.";

impl Unit {
    /// A unit with parameters initialised from `opts.seed` as `pdenet init` does.
    pub fn new(opts: &UnitOptions) -> Result<Unit> {
        let cfg = opts.to_config()?;
        let layout = Layout::new(&cfg)?;
        let params = layout.init(opts.seed);
        let names = layout
            .template
            .iter()
            .enumerate()
            .filter_map(|(i, (name, _, _))| {
                name.strip_prefix(UNIT_PREFIX)
                    .filter(|rest| rest.starts_with("steps."))
                    .map(|rest| (rest.to_string(), i))
            })
            .collect();
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Unit {
            runner: Runner::new(layout, &params, opts.precision)?,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            names,
        })
    }

    /// The unit's width (channels of its input and output).
    pub fn width(&self) -> usize {
        self.runner.layout().units[0].width
    }

    /// Unit-relative parameter names with their shapes, in SPEC order.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let t = &self.runner.layout().template;
        self.names
            .iter()
            .filter_map(|(n, i)| t.iter().nth(*i).map(|e| (n.clone(), e.2.shape.clone())))
            .collect()
    }

    /// The unit's last state for the input `x` of shape `[n, width, h, w]` (NCHW).
    pub fn forward(&self, x: &[f32], shape: [usize; 4], policy: Policy) -> Result<Vec<f32>> {
        self.forward_as(x, shape, policy)
    }

    /// [`Unit::forward`] on f64 values (computed in f64 with [`Precision::F64`]).
    pub fn forward_f64(&self, x: &[f64], shape: [usize; 4], policy: Policy) -> Result<Vec<f64>> {
        self.forward_as(x, shape, policy)
    }

    fn forward_as<T: Values>(&self, x: &[T], shape: [usize; 4], policy: Policy) -> Result<Vec<T>> {
        with_engine!(&self.runner, |e| {
            let d = e.unit_input_dims(0, shape)?;
            let xb = T::upload(&e.backend, x)?;
            let y = e.unit_output(0, &xb, d, memory_of(policy))?;
            T::download(&e.backend, &y)
        })
    }

    /// The backward pass from `grad_out`, the gradient of the caller's loss with respect to the
    /// unit's last state: the input's gradient and each parameter's (unit-relative names, SPEC
    /// order). The forward pass runs again inside, keeping what `policy` allows.
    #[allow(clippy::type_complexity)]
    pub fn backward(
        &self,
        x: &[f32],
        shape: [usize; 4],
        grad_out: &[f32],
        policy: Policy,
    ) -> Result<(Vec<f32>, Vec<(String, Vec<f32>)>)> {
        self.backward_as(x, shape, grad_out, policy)
    }

    /// [`Unit::backward`] on f64 values.
    #[allow(clippy::type_complexity)]
    pub fn backward_f64(
        &self,
        x: &[f64],
        shape: [usize; 4],
        grad_out: &[f64],
        policy: Policy,
    ) -> Result<(Vec<f64>, Vec<(String, Vec<f64>)>)> {
        self.backward_as(x, shape, grad_out, policy)
    }

    #[allow(clippy::type_complexity)]
    fn backward_as<T: Values>(
        &self,
        x: &[T],
        shape: [usize; 4],
        grad_out: &[T],
        policy: Policy,
    ) -> Result<(Vec<T>, Vec<(String, Vec<T>)>)> {
        with_engine!(&self.runner, |e| {
            let be = &e.backend;
            let d = e.unit_input_dims(0, shape)?;
            let (xb, gb) = (T::upload(be, x)?, T::upload(be, grad_out)?);
            let r = e.unit_grad(0, xb, d, gb, memory_of(policy))?;
            self.collect(be, r)
        })
    }

    /// [`Unit::forward`] that also returns what `policy` keeps for [`Unit::backward_kept`], so
    /// that the backward pass need not run the forward pass again. Under `reversible` that is
    /// the input and, for hyperbolic and hamiltonian units, the last states: flat in depth.
    pub fn forward_kept(
        &self,
        x: &[f32],
        shape: [usize; 4],
        policy: Policy,
    ) -> Result<(Vec<f32>, UnitTape)> {
        self.forward_kept_as(x, shape, policy)
    }

    /// [`Unit::forward_kept`] on f64 values.
    pub fn forward_kept_f64(
        &self,
        x: &[f64],
        shape: [usize; 4],
        policy: Policy,
    ) -> Result<(Vec<f64>, UnitTape)> {
        self.forward_kept_as(x, shape, policy)
    }

    fn forward_kept_as<T: Values>(
        &self,
        x: &[T],
        shape: [usize; 4],
        policy: Policy,
    ) -> Result<(Vec<T>, UnitTape)> {
        let sched = memory_of(policy);
        let (y, kept) = match &self.runner {
            Runner::F32(e) => {
                let d = e.unit_input_dims(0, shape)?;
                let (y, kept) = e.unit_forward_kept(0, T::upload(&e.backend, x)?, d, sched)?;
                (T::download(&e.backend, &y)?, Kept::F32(kept))
            }
            Runner::F64(e) => {
                let d = e.unit_input_dims(0, shape)?;
                let (y, kept) = e.unit_forward_kept(0, T::upload(&e.backend, x)?, d, sched)?;
                (T::download(&e.backend, &y)?, Kept::F64(kept))
            }
        };
        Ok((
            y,
            UnitTape {
                unit: self.id,
                kept,
            },
        ))
    }

    /// The backward pass from a [`Unit::forward_kept`] tape of this unit (consumed) and
    /// `grad_out`, as [`Unit::backward`]. The parameters must not change in between.
    #[allow(clippy::type_complexity)]
    pub fn backward_kept(
        &self,
        tape: UnitTape,
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<(String, Vec<f32>)>)> {
        self.backward_kept_as(tape, grad_out)
    }

    /// [`Unit::backward_kept`] on f64 values.
    #[allow(clippy::type_complexity)]
    pub fn backward_kept_f64(
        &self,
        tape: UnitTape,
        grad_out: &[f64],
    ) -> Result<(Vec<f64>, Vec<(String, Vec<f64>)>)> {
        self.backward_kept_as(tape, grad_out)
    }

    #[allow(clippy::type_complexity)]
    fn backward_kept_as<T: Values>(
        &self,
        tape: UnitTape,
        grad_out: &[T],
    ) -> Result<(Vec<T>, Vec<(String, Vec<T>)>)> {
        if tape.unit != self.id {
            return Err(Error::Input("the tape is another unit's".into()));
        }
        match (&self.runner, tape.kept) {
            (Runner::F32(e), Kept::F32(k)) => {
                let g = T::upload(&e.backend, grad_out)?;
                self.collect(&e.backend, e.unit_backward_kept(k, g)?)
            }
            (Runner::F64(e), Kept::F64(k)) => {
                let g = T::upload(&e.backend, grad_out)?;
                self.collect(&e.backend, e.unit_backward_kept(k, g)?)
            }
            _ => Err(Error::Input("the tape is of another precision".into())),
        }
    }

    /// The input's and the named parameters' gradients on the host.
    #[allow(clippy::type_complexity)]
    fn collect<B: Backend, T: Values>(
        &self,
        be: &B,
        r: UnitGrads<B::Buf>,
    ) -> Result<(Vec<T>, Vec<(String, Vec<T>)>)> {
        let mut grads = Vec::with_capacity(self.names.len());
        for (name, i) in &self.names {
            let g = r
                .params
                .iter()
                .find(|(j, _)| j == i)
                .ok_or_else(|| Error::Other(format!("no gradient of `{name}`")))?;
            grads.push((name.clone(), T::download(be, &g.1)?));
        }
        Ok((T::download(be, &r.grad_x)?, grads))
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// The parameters (unit-relative names, SPEC order) with their shapes and values.
    pub fn params(&self) -> Result<Vec<NamedTensor<f32>>> {
        let shapes = self.param_shapes();
        with_engine!(&self.runner, |e| {
            let mut out = Vec::with_capacity(self.names.len());
            for ((name, i), (_, shape)) in self.names.iter().zip(shapes) {
                let v = e.param_values(*i)?;
                out.push((
                    name.clone(),
                    shape,
                    v.into_iter().map(|x| x as f32).collect(),
                ));
            }
            Ok(out)
        })
    }

    /// Replaces parameter `name` (unit-relative) with `data`, as many values as its shape holds.
    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let full = format!("{UNIT_PREFIX}{name}");
        self.index(name)?;
        with_engine!(&mut self.runner, |e| e.set_param_f32(&full, data))
    }

    /// [`Unit::set_param`] from f64 values (kept in f64 with [`Precision::F64`]).
    pub fn set_param_f64(&mut self, name: &str, data: &[f64]) -> Result<()> {
        let full = format!("{UNIT_PREFIX}{name}");
        self.index(name)?;
        with_engine!(&mut self.runner, |e| e.set_param_values(&full, data))
    }
}

/// What [`Network::grad`] returns (as `pdenet grad` writes it).
pub struct NetworkGrad {
    pub loss: f64,
    /// `[n, classes]`, training mode (batch statistics).
    pub logits: Vec<f32>,
    pub grad_x: Vec<f32>,
    /// Every trainable parameter's gradient, SPEC section 8 names and order.
    pub grads: Vec<(String, Vec<f32>)>,
}

/// A whole network of SPEC section 4, parameters by SPEC section 8 names.
pub struct Network {
    runner: Runner,
}

impl Network {
    /// The network of `cfg`, initialised from `seed` as `pdenet init --seed` does.
    pub fn new(cfg: &Config, seed: u64, precision: Precision) -> Result<Network> {
        let layout = Layout::new(cfg)?;
        let params = layout.init(seed);
        Ok(Network {
            runner: Runner::new(layout, &params, precision)?,
        })
    }

    /// From a config file (JSON or TOML) or a reference name (`ref-cifar`, ...).
    pub fn from_config(path_or_name: &str, seed: u64) -> Result<Network> {
        Network::new(&Config::load(path_or_name)?, seed, Precision::F32)
    }

    /// From the JSON text of a config.
    pub fn from_json(text: &str, seed: u64) -> Result<Network> {
        Network::new(&Config::parse(text, false)?, seed, Precision::F32)
    }

    pub fn config(&self) -> &Config {
        &self.runner.layout().config
    }

    /// Every parameter and buffer: name, shape and role (SPEC order).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>, ParamRole)> {
        let t = &self.runner.layout().template;
        t.iter()
            .map(|(n, r, t)| (n.to_string(), t.shape.clone(), r))
            .collect()
    }

    /// The parameters and buffers as a [`ParamSet`] (SPEC names), in f32.
    pub fn param_set(&self) -> Result<ParamSet> {
        with_engine!(&self.runner, |e| e.params())
    }

    /// Parameters and buffers: name, shape and values.
    pub fn params(&self) -> Result<Vec<NamedTensor<f32>>> {
        Ok(self
            .param_set()?
            .to_map()
            .into_iter()
            .map(|(n, t)| (n, t.shape, t.data))
            .collect())
    }

    /// Replaces parameter or buffer `name` with `data`.
    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        with_engine!(&mut self.runner, |e| e.set_param_f32(name, data))
    }

    /// Replaces every parameter and buffer with those of a safetensors file (SPEC names).
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let mut p = self.runner.layout().template.clone();
        p.load_from_file(read_safetensors(path)?, path)?;
        with_engine!(&mut self.runner, |e| e.set_params(&p))
    }

    /// Writes the parameters and buffers to a safetensors file (atomically).
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        save_params(path, &self.param_set()?)
    }

    fn host(x: &[f32], shape: &[usize]) -> Result<HostTensor> {
        let t = HostTensor {
            shape: shape.to_vec(),
            data: x.to_vec(),
        };
        if shape.is_empty() || t.numel() != x.len() {
            return Err(Error::Shape(format!(
                "input `x` holds {} values, its shape {shape:?} needs {}",
                x.len(),
                t.numel()
            )));
        }
        Ok(t)
    }

    /// Training-mode logits `[n, classes]` (batch statistics: what [`Network::backward`]
    /// differentiates) of `x` shaped NCHW (image) or `[n, d]` (dense).
    pub fn forward(&self, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        let t = Network::host(x, shape)?;
        with_engine!(&self.runner, |e| e.train_logits(&t))
    }

    /// Evaluation-mode logits (running batch-norm statistics), as `pdenet eval` computes them.
    pub fn eval(&self, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        let t = Network::host(x, shape)?;
        with_engine!(&self.runner, |e| e.logits(&t))
    }

    /// The backward pass from `grad_logits`, the gradient of the caller's loss with respect to
    /// the training-mode logits: the input's gradient and every trainable parameter's (SPEC
    /// names). With `update_running`, the batch-norm running statistics move as in PyTorch.
    #[allow(clippy::type_complexity)]
    pub fn backward(
        &mut self,
        x: &[f32],
        shape: &[usize],
        grad_logits: &[f32],
        policy: Policy,
        update_running: bool,
    ) -> Result<(Vec<f32>, Vec<(String, Vec<f32>)>)> {
        let t = Network::host(x, shape)?;
        let out = with_engine!(&mut self.runner, |e| e.grad_from_logits(
            &t,
            grad_logits,
            memory_of(policy),
            update_running
        ))?;
        let grads = out.grads.to_map().into_iter().map(|(n, t)| (n, t.data));
        Ok((out.grad_x, grads.collect()))
    }

    /// Loss, logits and gradients for `labels`, as `pdenet grad` computes them.
    pub fn grad(
        &mut self,
        x: &[f32],
        shape: &[usize],
        labels: &[usize],
        policy: Policy,
    ) -> Result<NetworkGrad> {
        let t = Network::host(x, shape)?;
        let out = with_engine!(&mut self.runner, |e| e.grad(
            &t,
            labels,
            memory_of(policy),
            false
        ))?;
        Ok(NetworkGrad {
            loss: out.loss,
            logits: out.logits,
            grad_x: out.grad_x,
            grads: out
                .grads
                .to_map()
                .into_iter()
                .map(|(n, t)| (n, t.data))
                .collect(),
        })
    }
}

/// `pdenet init`: the network of `config` (file or reference name) initialised from `seed`,
/// written to `out` when given; returns every parameter and buffer.
pub fn init(config: &str, seed: u64, out: Option<&Path>) -> Result<Vec<NamedTensor<f32>>> {
    let layout = Layout::new(&Config::load(config)?)?;
    let params = layout.init(seed);
    if let Some(path) = out {
        save_params(path, &params)?;
    }
    Ok(params
        .to_map()
        .into_iter()
        .map(|(n, t)| (n, t.shape, t.data))
        .collect())
}

/// One row of [`Info::memory`]: the planned memory of a training step under a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedMemory {
    /// `store`, `reversible`, `exact` or `store bf16`.
    pub policy: String,
    pub peak_bytes: usize,
    pub param_bytes: usize,
    pub grad_bytes: usize,
}

/// What `pdenet info` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub parameters: usize,
    /// The sample shape the FLOPs are counted for (without the batch).
    pub input: Vec<usize>,
    pub flops_forward: usize,
    pub flops_train_step: usize,
    pub batch: usize,
    pub memory: Vec<PlannedMemory>,
}

/// `pdenet info --config C --batch N`.
pub fn info(config: &str, batch: usize) -> Result<Info> {
    use crate::schedule::plan::{check_sizes, count_flops, plan_step};
    let cfg = Config::load(config)?;
    let layout = Layout::new(&cfg)?;
    let sample = cfg.sample_shape();
    let flops = count_flops(&layout, &sample)?;
    let batch = batch.max(1);
    let mut shape = vec![batch];
    shape.extend_from_slice(&sample);
    check_sizes(&layout, &shape)?;
    let rows = Policy::ALL
        .map(|p| (p.name().to_string(), memory_of(p)))
        .into_iter()
        .chain([(
            "store bf16".to_string(),
            Policy::Store
                .memory()
                .with_storage(crate::backend::Storage::Bf16),
        )]);
    let mut memory = Vec::new();
    for (policy, sched) in rows {
        let m = plan_step(&layout, &shape, sched)?;
        memory.push(PlannedMemory {
            policy,
            peak_bytes: m.peak_bytes,
            param_bytes: m.param_bytes,
            grad_bytes: m.grad_bytes,
        });
    }
    Ok(Info {
        parameters: layout.parameter_count(),
        input: sample,
        flops_forward: flops.forward,
        flops_train_step: flops.train_step,
        batch,
        memory,
    })
}

/// Where a training run is, passed to [`train`]'s progress callback after every step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainProgress {
    /// The epoch of this call, from 1 (a resumed run counts from its first new epoch).
    pub epoch: usize,
    /// The step within the epoch, from 1.
    pub step: usize,
    /// The minibatch's mean loss.
    pub loss: f64,
}

/// A progress callback: an error stops the run with that error.
pub type ProgressFn = Box<dyn FnMut(&TrainProgress) -> Result<()> + Send>;

/// The engine's model, reporting each step to the callback.
struct ProgressModel {
    inner: Box<dyn crate::train::Model>,
    progress: std::rc::Rc<std::cell::RefCell<ProgressFn>>,
    epoch: usize,
    step: usize,
    evaluated: bool,
}

impl ProgressModel {
    /// Reports one step's loss; the loop evaluates after every epoch, so the step after an
    /// evaluation starts a new one.
    fn report(&mut self, loss: f64) -> Result<()> {
        if self.evaluated {
            self.epoch += 1;
            self.step = 0;
            self.evaluated = false;
        }
        self.step += 1;
        let p = TrainProgress {
            epoch: self.epoch,
            step: self.step,
            loss,
        };
        (self.progress.borrow_mut())(&p)
    }
}

impl crate::train::Model for ProgressModel {
    fn params(&self) -> Result<ParamSet> {
        self.inner.params()
    }
    fn set_params(&mut self, p: &ParamSet) -> Result<()> {
        self.inner.set_params(p)
    }
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)> {
        let out = self.inner.grad(x, labels)?;
        self.report(out.0)?;
        Ok(out)
    }
    fn train_step(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        opt: &mut crate::train::optim::Optimizer,
        lr: f64,
    ) -> Result<(f64, Vec<f32>)> {
        let out = self.inner.train_step(x, labels, opt, lr)?;
        self.report(out.0)?;
        Ok(out)
    }
    fn sync_optimizer(&mut self, opt: &mut crate::train::optim::Optimizer) -> Result<()> {
        self.inner.sync_optimizer(opt)
    }
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>> {
        self.evaluated = true;
        self.inner.logits(x)
    }
    fn last_nfe(&self) -> [usize; 2] {
        self.inner.last_nfe()
    }
}

/// Runs a training job (`pdenet train`'s body, with its checks), calling `progress` after
/// every step.
pub fn train(
    job: &crate::train::TrainJob,
    progress: Option<ProgressFn>,
) -> Result<crate::train::TrainReport> {
    use crate::train::engine_model::build_engine_model;
    use crate::train::run_train;
    let Some(progress) = progress else {
        return run_train(job, &build_engine_model);
    };
    let progress = std::rc::Rc::new(std::cell::RefCell::new(progress));
    let build = move |cfg: &Config, spec: &crate::train::ModelSpec| {
        Ok(Box::new(ProgressModel {
            inner: build_engine_model(cfg, spec)?,
            progress: progress.clone(),
            epoch: 1,
            step: 0,
            evaluated: false,
        }) as Box<dyn crate::train::Model>)
    };
    run_train(job, &build)
}
