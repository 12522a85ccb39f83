//! The network engine as a [`Model`]: what `pdenet train` and `pdenet eval` build.

use super::Model;
use crate::backend::Backend;
use crate::config::Config;
use crate::device::Device;
use crate::error::Result;
use crate::network::Layout;
use crate::params::ParamSet;
use crate::schedule::{Engine, MemoryPolicy};
use crate::tensor::HostTensor;
use crate::train::optim::{Optimizer, ResidentState};
use crate::train::ModelSpec;

/// An [`Engine`] running its backward pass under one memory policy. Training steps keep the
/// weights and the optimizer state on the engine's backend: parameters go to the host only
/// when asked for (checkpoints, outputs).
pub struct EngineModel<B: Backend> {
    pub engine: Engine<B>,
    pub memory: MemoryPolicy,
    /// Right-hand-side evaluations of the last `grad`.
    nfe: [usize; 2],
    /// The optimizer state beside the engine's parameters, once a step has run.
    resident: Option<ResidentState<B>>,
}

impl<B: Backend> EngineModel<B> {
    pub fn new(engine: Engine<B>, memory: MemoryPolicy) -> Self {
        EngineModel {
            engine,
            memory,
            nfe: [0, 0],
            resident: None,
        }
    }
}

impl<B: Backend> Model for EngineModel<B> {
    fn params(&self) -> Result<ParamSet> {
        self.engine.params()
    }
    fn set_params(&mut self, p: &ParamSet) -> Result<()> {
        self.engine.set_params(p)
    }
    fn grad(&mut self, x: &HostTensor, labels: &[usize]) -> Result<(f64, Vec<f32>, ParamSet)> {
        let out = self.engine.grad(x, labels, self.memory, true)?;
        self.nfe = self.engine.last_nfe_totals();
        Ok((out.loss, out.logits, out.grads))
    }
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<f32>> {
        self.engine.logits(x)
    }
    fn last_nfe(&self) -> [usize; 2] {
        self.nfe
    }
    fn train_step(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        opt: &mut Optimizer,
        lr: f64,
    ) -> Result<(f64, Vec<f32>)> {
        let out = self.engine.grad_resident(x, labels, self.memory)?;
        self.nfe = self.engine.last_nfe_totals();
        let (be, template, params) = self.engine.params_resident();
        // A state uploaded for another optimizer (or another point of this one: a restored
        // checkpoint) is replaced by `opt`'s.
        let state = match self.resident.take() {
            Some(s) if s.steps() == opt.steps() => s,
            _ => opt.upload_state(be, template)?,
        };
        let state = self.resident.insert(state);
        opt.step_resident(be, template, params, &out.grads, state, lr)?;
        Ok((out.loss, out.logits))
    }
    fn sync_optimizer(&mut self, opt: &mut Optimizer) -> Result<()> {
        if let Some(state) = &self.resident {
            let (be, template, _) = self.engine.params_resident();
            opt.download_state(be, template, state)?;
        }
        Ok(())
    }
}

/// Builds the network of `cfg` with weights initialised from `spec.seed` (as `pdenet init`).
pub fn build_engine_model(cfg: &Config, spec: &ModelSpec) -> Result<Box<dyn Model>> {
    let layout = Layout::new(cfg)?;
    let device = Device::select_with(spec.device, spec.precision)?;
    let memory = spec
        .policy
        .memory()
        .with_storage(spec.storage)
        .with_drift_guard(spec.drift_guard);
    let mut shape = vec![spec.batch];
    shape.extend(cfg.sample_shape());
    // Checked before anything is allocated: the training loop keeps about three host copies of
    // the parameters (weights, gradients, optimizer state) beside the engine's.
    layout.check_host_memory(3, "the host copies of the parameters")?;
    device.reserve_with_host(&layout, &shape, memory, 3)?;
    let params = layout.init(spec.seed);
    crate::with_device!(device, |b| {
        let engine = Engine::new(b, layout, &params)?;
        Ok(Box::new(EngineModel::new(engine, memory)) as Box<dyn Model>)
    })
}
