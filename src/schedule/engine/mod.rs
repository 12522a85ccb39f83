//! The executor: one forward + backward pass of a whole network on any backend, under a
//! [`MemoryPolicy`]. The same code runs on the planning backend to give the planned peak memory.

use super::{DriftGuard, MemoryPolicy, Policy};
use crate::backend::{Activation, Backend, BnStats, Norm, Storage};
use crate::config::{Connect, NetworkKind, OperatorKind, StepType};
use crate::error::{Error, Result};
use crate::network::{ConnectIdx, LayerIdx, Layout, NormIdx, OpenIdx, UnitIdx};
use crate::operators::{LayerGrads, OpRef, MGIC_GROUP};
use crate::params::{ParamRole, ParamSet};
use crate::steps::{self, Layer, StepSettings};
use crate::tensor::{Dims, HostTensor};

mod affine;
mod explicit;
mod external;
mod hamiltonian;
mod hyperbolic;
mod invertible;
mod ode;
mod pass;
mod probe;
mod tape;
mod unit;
pub use external::{Head, KeptUnit, UnitGrads};
use ode::OdeKept;
use tape::{
    pack_window, AffineTape, Grads, Kept, Pair, Pre, RunningUpdate, Slot, State, Tape, UnitGrad,
    UnitTape,
};

/// A network's parameters resident on a backend, ready to run.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub layout: Layout,
    params: Vec<B::Buf>,
    /// Measure the reconstruction drift of rebuilt unit inputs (costs a download per unit).
    pub measure_drift: bool,
    /// Whether a drift-guard recomputation has been reported (it is said once per engine).
    recompute_said: std::sync::atomic::AtomicBool,
    /// Set on a planning backend (no values to control a step size on): adaptive `ode` solves
    /// take this many equal steps per weight interval instead.
    pub plan_ode_steps: Option<usize>,
    /// Right-hand-side evaluations per unit, `[forward, backward]`, since the last `grad`.
    nfe: std::sync::Mutex<Vec<[usize; 2]>>,
}

/// The result of [`Engine::grad_resident`]: the loss and logits on the host, the gradients on
/// the backend.
pub struct ResidentGrads<B: Backend> {
    pub loss: f64,
    pub logits: Vec<f32>,
    /// By position in the layout's template; `None` for buffers.
    pub grads: Vec<Option<B::Buf>>,
    pub drift: f64,
}

/// The result of [`Engine::grad`].
pub struct GradOutput {
    pub loss: f64,
    /// `[n, classes]`.
    pub logits: Vec<f32>,
    /// Gradient of the loss with respect to the input, shaped like it.
    pub grad_x: Vec<f32>,
    /// Gradient of every trainable parameter (SPEC names; buffers absent).
    pub grads: ParamSet,
    /// Largest relative error `max|rebuilt - stored| / max|stored|` of a unit input rebuilt by
    /// inverse steps (0 when nothing was rebuilt, the rebuild was exact, or
    /// [`Engine::measure_drift`] is off).
    pub drift: f64,
    /// Right-hand-side evaluations per unit in the forward and the backward pass (0 for units
    /// that are not `ode`), as `pdenet grad` writes them (`nfe.forward`, `nfe.backward`).
    pub nfe_forward: Vec<usize>,
    pub nfe_backward: Vec<usize>,
}

impl<B: Backend> Engine<B> {
    /// Uploads `params` (checked against the layout) to the backend.
    pub fn new(backend: B, mut layout: Layout, params: &ParamSet) -> Result<Self> {
        let params = upload_params(&backend, &layout, params)?;
        // The engine needs only names, shapes and roles of the template: drop its zeros, which
        // would otherwise be one more parameter-sized copy in memory.
        for (_, _, t) in layout.template.iter_mut() {
            t.data = Vec::new();
        }
        Ok(Engine {
            backend,
            layout,
            params,
            measure_drift: false,
            recompute_said: Default::default(),
            plan_ode_steps: None,
            nfe: Default::default(),
        })
    }

    /// Downloads the current parameters and buffers.
    pub fn params(&self) -> Result<ParamSet> {
        let mut out = self.layout.template.clone();
        for (i, (_, _, t)) in out.iter_mut().enumerate() {
            t.data = self.backend.download_f32(&self.params[i])?;
        }
        Ok(out)
    }

    /// Replaces the parameters (same layout).
    pub fn set_params(&mut self, params: &ParamSet) -> Result<()> {
        self.params = upload_params(&self.backend, &self.layout, params)?;
        Ok(())
    }

    /// Adds `delta` to element `index` of parameter `name` in the backend's precision (for
    /// finite-difference checks, which need more than f32 steps on the reference backend).
    pub fn nudge_param(&mut self, name: &str, index: usize, delta: f64) -> Result<()> {
        let i = self
            .layout
            .template
            .position(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let mut v = self.backend.download(&self.params[i])?;
        let slot = v
            .get_mut(index)
            .ok_or_else(|| Error::Shape(format!("`{name}` has no element {index}")))?;
        *slot += delta;
        self.params[i] = self.backend.upload(&v)?;
        Ok(())
    }

    pub(super) fn kind(&self) -> StepSettings {
        let c = &self.layout.config;
        StepSettings {
            layer: c.step_layer(),
            h: c.h,
            act: c.activation,
            gamma: c.gamma,
        }
    }

    pub(super) fn layer(&self, l: &LayerIdx) -> Layer<'_, B> {
        let ws = &l.op.weights;
        let w = &self.params[ws[0]];
        let op = match (self.layout.config.kind, self.layout.config.operator) {
            (NetworkKind::Dense, _) => OpRef::Dense(w),
            (NetworkKind::Image, OperatorKind::Full) => OpRef::Full3x3(w),
            (NetworkKind::Image, OperatorKind::Lean) => OpRef::Lean {
                p: w,
                d: &self.params[ws[1]],
            },
            // The layout adds an operator's tensors consecutively.
            (NetworkKind::Image, OperatorKind::Mgic) => OpRef::Mgic {
                weights: &self.params[ws[0]..ws[0] + ws.len()],
                group: MGIC_GROUP,
            },
        };
        let norm = match l.norm {
            NormIdx::Tv { scale, shift } => Norm::Tv {
                s: &self.params[scale],
                b: &self.params[shift],
            },
            NormIdx::Shift { shift } => Norm::Shift {
                b: &self.params[shift],
            },
        };
        Layer { op, norm }
    }

    /// A fully hyperbolic network: Haar connections carry both leapfrog states between units.
    pub(super) fn haar_chain(&self) -> bool {
        let c = &self.layout.config;
        c.connect == Connect::Haar && c.layer == StepType::Hyperbolic
    }

    /// Fixed-point shift of unit `k` (invertible units only): each Haar level of a chain adds
    /// one fractional bit, as `2 H q` is exact in integers.
    pub(super) fn unit_shift(&self, k: usize, sched: MemoryPolicy) -> Option<u32> {
        if !self.layout.config.layer.invertible() {
            return None;
        }
        let levels = if self.haar_chain() { k as u32 } else { 0 };
        sched.fixed_point.map(|s| s + levels)
    }

    pub(super) fn update_running(&mut self, stats: &[RunningUpdate<B::Buf>]) -> Result<()> {
        for (rm, rv, s, count) in stats {
            let (lo, hi) = self.params.split_at_mut(*rv);
            self.backend
                .batchnorm_update_running(&mut lo[*rm], &mut hi[0], s, *count)?;
        }
        Ok(())
    }
}

fn upload_params<B: Backend>(be: &B, layout: &Layout, params: &ParamSet) -> Result<Vec<B::Buf>> {
    let mut out = Vec::with_capacity(layout.template.len());
    for (name, _, t) in layout.template.iter() {
        let p = params
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if p.shape != t.shape {
            return Err(Error::Weights(format!(
                "`{name}` has shape {:?}, the config needs {:?}",
                p.shape, t.shape
            )));
        }
        out.push(be.upload_host(p)?);
    }
    Ok(out)
}
