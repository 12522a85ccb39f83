//! Entry points for callers that bring their own loss or their own model around a unit
//! ([`crate::api`]): one unit's forward and backward on its own, a network's backward from the
//! gradient of its logits, and single parameters in the backend's precision.

use super::{pack_window, Engine, GradOutput, Grads, UnitTape};
use crate::backend::{Backend, Storage};
use crate::error::{Error, Result};
use crate::params::ParamRole;
use crate::schedule::MemoryPolicy;
use crate::tensor::{Dims, HostTensor};

/// Where the backward pass of a whole network starts.
#[derive(Clone, Copy, Debug)]
pub enum Head<'a> {
    /// The mean softmax cross-entropy against these labels (what `pdenet grad` runs).
    Labels(&'a [usize]),
    /// The caller's gradient of its own loss with respect to the logits `[n, classes]`.
    LogitsGrad(&'a [f32]),
}

pub(super) fn upload_logits_grad<B: Backend>(
    be: &B,
    g: &[f32],
    n: usize,
    classes: usize,
) -> Result<B::Buf> {
    if g.len() != n * classes {
        return Err(Error::Shape(format!(
            "the gradient of the logits holds {} values, expected [{n}, {classes}]",
            g.len()
        )));
    }
    be.upload_f32(g)
}

/// The gradients of one unit's backward pass: of its input, and of each of its parameters
/// (by index into the layout's template).
pub struct UnitGrads<T> {
    pub grad_x: T,
    pub params: Vec<(usize, T)>,
}

/// What a unit's forward pass kept for its backward pass ([`Engine::unit_forward_kept`]).
pub struct KeptUnit<B: Backend> {
    k: usize,
    d: Dims,
    sched: MemoryPolicy,
    tape: UnitTape<B>,
}

impl<B: Backend> KeptUnit<B> {
    /// The shape of the unit's input and output.
    pub fn dims(&self) -> Dims {
        self.d
    }
}

impl<B: Backend> Engine<B> {
    /// The dimensions of unit `k`'s input for a batch of shape `[n, c, h, w]`, checked against
    /// the unit's width.
    pub fn unit_input_dims(&self, k: usize, shape: [usize; 4]) -> Result<Dims> {
        let u = self.layout.units.get(k).ok_or_else(|| {
            Error::Input(format!(
                "the network has {} units, no unit {k}",
                self.layout.units.len()
            ))
        })?;
        let [n, c, h, w] = shape;
        if c != u.width {
            return Err(Error::Shape(format!(
                "input of shape {shape:?} has {c} channels, unit {k} has width {}",
                u.width
            )));
        }
        let d = Dims::new(n, c, h, w);
        if d.is_empty() {
            return Err(Error::Shape(format!("input is empty: {shape:?}")));
        }
        Ok(d)
    }

    fn check_len(&self, buf: &B::Buf, d: Dims, what: &str) -> Result<()> {
        let got = self.backend.buf_len(buf);
        if got != d.len() {
            return Err(Error::Shape(format!(
                "{what} holds {got} values, its shape [{}, {}, {}, {}] needs {}",
                d.n,
                d.c,
                d.h,
                d.w,
                d.len()
            )));
        }
        Ok(())
    }

    /// Unit `k` alone, forward from `x`: its last state.
    pub fn unit_output(
        &self,
        k: usize,
        x: &B::Buf,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<B::Buf> {
        self.check_len(x, d, "the input")?;
        Ok(self.unit_forward(k, x, None, d, sched)?.0)
    }

    /// Unit `k` alone: the forward pass from `x` under `sched`, then the backward pass from
    /// `g_out`, the gradient of the caller's loss with respect to the unit's last state.
    pub fn unit_grad(
        &self,
        k: usize,
        x: B::Buf,
        d: Dims,
        g_out: B::Buf,
        sched: MemoryPolicy,
    ) -> Result<UnitGrads<B::Buf>> {
        let (_, kept) = self.unit_forward_kept(k, x, d, sched)?;
        self.unit_backward_kept(kept, g_out)
    }

    /// Unit `k` alone, forward from `x`: its last state, and what `sched` keeps for
    /// [`Engine::unit_backward_kept`] (under `reversible` the input and an invertible unit's last
    /// states: flat in depth).
    pub fn unit_forward_kept(
        &self,
        k: usize,
        x: B::Buf,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<(B::Buf, KeptUnit<B>)> {
        self.check_len(&x, d, "the input")?;
        let (out, mut kept) = self.unit_forward(k, &x, None, d, sched)?;
        pack_window(&self.backend, &mut kept, sched.storage)?;
        let tape = UnitTape {
            input: Some(x),
            output: None,
            kept,
        };
        Ok((out, KeptUnit { k, d, sched, tape }))
    }

    /// The backward pass of a unit from what its forward pass kept and `g_out`, the gradient of
    /// the caller's loss with respect to the unit's last state.
    pub fn unit_backward_kept(
        &self,
        kept: KeptUnit<B>,
        g_out: B::Buf,
    ) -> Result<UnitGrads<B::Buf>> {
        let be = &self.backend;
        let KeptUnit { k, d, sched, tape } = kept;
        self.check_len(&g_out, d, "the output gradient")?;
        let prefix = format!("units.{k}.steps.");
        let mut grads = Grads::<B> {
            g: Vec::with_capacity(self.params.len()),
        };
        let mut own = Vec::new();
        for (i, (name, role, t)) in self.layout.template.iter().enumerate() {
            let mine = role != ParamRole::Buffer && name.starts_with(&prefix);
            grads.g.push(if mine {
                own.push(i);
                Some(be.zeros(t.numel())?)
            } else {
                None
            });
        }
        let r = self.unit_backward(k, tape, d, g_out, None, false, sched, &mut grads)?;
        let params = own
            .into_iter()
            .filter_map(|i| grads.g[i].take().map(|g| (i, g)))
            .collect();
        Ok(UnitGrads {
            grad_x: r.g,
            params,
        })
    }

    /// Forward, then the backward pass from `g_logits`, the gradient of the caller's loss with
    /// respect to the training-mode logits (batch statistics). `loss` of the result is 0.
    pub fn grad_from_logits(
        &mut self,
        x: &HostTensor,
        g_logits: &[f32],
        sched: MemoryPolicy,
        update_running: bool,
    ) -> Result<GradOutput> {
        if x.shape.is_empty() {
            return Err(Error::Shape("input `x` has no dimensions".into()));
        }
        let (pass, stats) = self.resident_pass(x, Head::LogitsGrad(g_logits), sched)?;
        if update_running {
            self.update_running(&stats)?;
        }
        self.download_pass(pass)
    }

    /// Training-mode logits `[n, classes]` (batch statistics, as [`Engine::grad`] computes
    /// them), without the backward pass.
    pub fn train_logits(&self, x: &HostTensor) -> Result<Vec<f32>> {
        let sched = MemoryPolicy {
            keep_all: false,
            fixed_point: None,
            storage: Storage::F32,
            drift_guard: None,
        };
        let (tape, geo) = self.forward(x, sched, true)?;
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        self.backend.download_f32(&logits)
    }

    /// The index of parameter or buffer `name` in the layout.
    pub fn param_index(&self, name: &str) -> Result<usize> {
        self.layout
            .template
            .position(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// Parameter `i`'s values in the backend's precision.
    pub fn param_values(&self, i: usize) -> Result<Vec<f64>> {
        let buf = self
            .params
            .get(i)
            .ok_or_else(|| Error::Other(format!("no parameter {i}")))?;
        self.backend.download(buf)
    }

    /// Replaces parameter `name` with `data` (as many values as its shape has).
    pub fn set_param_values(&mut self, name: &str, data: &[f64]) -> Result<()> {
        let i = self.param_index(name)?;
        let want = self
            .layout
            .template
            .iter()
            .nth(i)
            .map_or(0, |t| t.2.numel());
        if data.len() != want {
            return Err(Error::Weights(format!(
                "`{name}` needs {want} values, got {}",
                data.len()
            )));
        }
        self.params[i] = self.backend.upload(data)?;
        Ok(())
    }

    /// [`Engine::set_param_values`] from f32 values, without a conversion on f32 backends.
    pub fn set_param_f32(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let i = self.param_index(name)?;
        let want = self
            .layout
            .template
            .iter()
            .nth(i)
            .map_or(0, |t| t.2.numel());
        if data.len() != want {
            return Err(Error::Weights(format!(
                "`{name}` needs {want} values, got {}",
                data.len()
            )));
        }
        self.params[i] = self.backend.upload_f32(data)?;
        Ok(())
    }
}
