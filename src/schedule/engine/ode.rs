//! `ode` units in the executor (SPEC section 10): each weight interval solved by
//! [`crate::solvers::ode`] on the step ops of `rhs`, and its backward pass under the memory
//! policies (`discretize`) or by the continuous adjoint (`adjoint`).

use super::{Engine, Grads, Kept};
use crate::backend::Backend;
use crate::config::{Gradient, OdeKeys};
use crate::error::{Error, Result};
use crate::network::{LayerIdx, NormIdx};
use crate::schedule::MemoryPolicy;
use crate::solvers::ode::{
    adjoint, backprop, replay, reverse_steps, solve, tableau::Tableau, BackendSpace, OdeOptions,
    Solution, Step, StepReversal, UnitRhs, REVERSE_CHECKPOINTS,
};
use crate::tensor::Dims;

/// The accepted steps `(t, dt)` of one interval's solve.
type Grid = Vec<(f64, f64)>;

/// What the backward pass has of an `ode` unit.
pub(super) enum OdeKept<B: Backend> {
    /// `store` + `discretize`: every interval's accepted steps with their stage inputs.
    Steps(Vec<Vec<Step<B::Buf>>>),
    /// `reversible` / `exact` + `discretize`: each interval's input and its accepted step grid;
    /// the backward pass replays the interval's steps from a few checkpoints
    /// ([`reverse_steps`]), holding one step's stages at a time.
    Inputs(Vec<(B::Buf, Grid)>),
    /// `adjoint`: each interval's end state, from which that interval's adjoint solve rebuilds
    /// `Y(t)` backwards. As torchdiffeq's `odeint_adjoint` on each interval (its own initial
    /// value problem): a backwards rebuild of a dissipative flow is unstable, so carrying the
    /// rebuilt start of one interval into the next would compound that error across intervals.
    Outputs(Vec<B::Buf>),
}

impl<B: Backend> Engine<B> {
    pub(super) fn ode_keys(&self) -> Result<OdeKeys> {
        self.layout
            .config
            .ode()
            .ok_or_else(|| Error::Other("an ode unit in a network that is not `ode`".into()))
    }

    /// The unit's solver options (on a planning backend with [`Engine::plan_ode_steps`]).
    pub(super) fn ode_options(&self, keys: &OdeKeys) -> OdeOptions {
        OdeOptions {
            plan_steps: self.plan_ode_steps,
            ..OdeOptions::of(keys)
        }
    }

    /// Solves interval `j` of unit `k` from `y0`.
    pub(super) fn ode_interval(
        &self,
        (k, j): (usize, usize),
        rhs: &mut UnitRhs<'_, B>,
        y0: &B::Buf,
        opts: &OdeOptions,
        record: bool,
    ) -> Result<Solution<B::Buf>> {
        let s = BackendSpace(&self.backend);
        let h = self.layout.config.h;
        let (t0, t1) = (j as f64 * h, (j + 1) as f64 * h);
        solve(&s, rhs, y0, t0, t1, opts, record).map_err(|e| at_interval(k, j, e))
    }

    /// Runs `ode` unit `k` forward from `input`, keeping what `sched` and the unit's gradient
    /// mode need.
    pub(super) fn ode_forward(
        &self,
        k: usize,
        input: &B::Buf,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let keys = self.ode_keys()?;
        let opts = self.ode_options(&keys);
        let kind = self.kind();
        let record = sched.keep_all && keys.gradient == Gradient::Discretize;
        let mut y = be.copy(input)?;
        let (mut steps, mut inputs, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
        let mut nfe = 0;
        for (j, st) in self.layout.units[k].steps.iter().enumerate() {
            let mut rhs = UnitRhs::new(kind, self.layer(&st.layers[0]), d)?;
            let sol = self.ode_interval((k, j), &mut rhs, &y, &opts, record)?;
            nfe += sol.nfe;
            let y0 = std::mem::replace(&mut y, sol.y);
            match (keys.gradient, record) {
                (Gradient::Discretize, true) => steps.push(sol.steps),
                (Gradient::Discretize, false) => inputs.push((y0, sol.grid)),
                (Gradient::Adjoint, _) => outputs.push(be.copy(&y)?),
            }
        }
        self.count_nfe(k, nfe, 0);
        let kept = match (keys.gradient, record) {
            (Gradient::Discretize, true) => OdeKept::Steps(steps),
            (Gradient::Discretize, false) => OdeKept::Inputs(inputs),
            (Gradient::Adjoint, _) => OdeKept::Outputs(outputs),
        };
        Ok((y, Kept::Ode(kept)))
    }

    /// Backward through `ode` unit `k` from the gradient of its output; the parameter
    /// gradients go into `grads`, the input's gradient is returned.
    pub(super) fn ode_backward(
        &self,
        k: usize,
        kept: OdeKept<B>,
        d: Dims,
        g_out: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let s = BackendSpace(be);
        let keys = self.ode_keys()?;
        let opts = self.ode_options(&keys);
        let tab = opts.solver.tableau();
        let kind = self.kind();
        let h = self.layout.config.h;
        let unit = &self.layout.units[k];
        let mut g = g_out;
        let mut nfe = 0;
        match kept {
            OdeKept::Steps(mut all) => {
                for (j, st) in unit.steps.iter().enumerate().rev() {
                    let steps = all.pop().ok_or_else(|| missing(k, j))?;
                    let mut rhs = UnitRhs::new(kind, self.layer(&st.layers[0]), d)?;
                    let r =
                        backprop(&s, &mut rhs, tab, &steps, g).map_err(|e| at_interval(k, j, e))?;
                    nfe += r.nfe;
                    grads.add_flat(be, &st.layers[0], r.dparams)?;
                    g = r.dy0;
                }
            }
            OdeKept::Inputs(mut all) => {
                for (j, st) in unit.steps.iter().enumerate().rev() {
                    let (y0, grid) = all.pop().ok_or_else(|| missing(k, j))?;
                    let mut r = IntervalReversal {
                        s: &s,
                        rhs: UnitRhs::new(kind, self.layer(&st.layers[0]), d)?,
                        tab,
                        grid: &grid,
                        layer: &st.layers[0],
                        grads: &mut *grads,
                        g: Some(g),
                        nfe: 0,
                    };
                    reverse_steps(&mut r, &y0, 0..grid.len(), REVERSE_CHECKPOINTS)
                        .map_err(|e| at_interval(k, j, e))?;
                    nfe += r.nfe;
                    g = r.g.take().ok_or_else(|| missing(k, j))?;
                }
            }
            OdeKept::Outputs(mut all) => {
                for (j, st) in unit.steps.iter().enumerate().rev() {
                    let y1 = all.pop().ok_or_else(|| missing(k, j))?;
                    let l = &st.layers[0];
                    let mut rhs = UnitRhs::new(kind, self.layer(l), d)?;
                    let zeros = self.zero_grads_of(l)?;
                    let (t0, t1) = (j as f64 * h, (j + 1) as f64 * h);
                    let (r, _) = adjoint(&s, &mut rhs, &y1, &g, zeros, t0, t1, &opts)
                        .map_err(|e| at_interval(k, j, e))?;
                    nfe += r.nfe;
                    grads.add_flat(be, l, r.dparams)?;
                    g = r.dy0;
                }
            }
        }
        self.count_nfe(k, 0, nfe);
        Ok(g)
    }

    /// Zero buffers shaped as one layer's parameters, in [`UnitRhs`]'s order.
    fn zero_grads_of(&self, l: &LayerIdx) -> Result<Vec<B::Buf>> {
        let be = &self.backend;
        flat_indices(l)
            .into_iter()
            .map(|i| be.zeros(be.buf_len(&self.params[i])))
            .collect()
    }

    fn count_nfe(&self, k: usize, forward: usize, backward: usize) {
        let mut nfe = self.nfe.lock().unwrap_or_else(|e| e.into_inner());
        if nfe.len() <= k {
            nfe.resize(k + 1, [0, 0]);
        }
        nfe[k][0] += forward;
        nfe[k][1] += backward;
    }
}

impl<B: Backend> Grads<B> {
    /// Adds one layer's gradients in [`UnitRhs`]'s order: operator weights, then the norm's
    /// scale (tvNorm) and shift.
    pub(super) fn add_flat(&mut self, be: &B, l: &LayerIdx, g: Vec<B::Buf>) -> Result<()> {
        let idx = flat_indices(l);
        if g.len() != idx.len() {
            return Err(Error::Other(format!(
                "{} parameter gradients for a layer of {} tensors",
                g.len(),
                idx.len()
            )));
        }
        for (i, v) in idx.into_iter().zip(g) {
            self.add(be, i, 1.0, v)?;
        }
        Ok(())
    }
}

/// A layer's parameter indices in [`UnitRhs`]'s gradient order.
fn flat_indices(l: &LayerIdx) -> Vec<usize> {
    let mut idx = l.op.weights.clone();
    match l.norm {
        NormIdx::Tv { scale, shift } => idx.extend([scale, shift]),
        NormIdx::Shift { shift } => idx.push(shift),
    }
    idx
}

/// Names the unit and interval of a failed solve (SPEC names: `units.{k}.steps.{j}`).
/// One interval's backward from its input alone: each step's stages replayed, then backpropagated.
struct IntervalReversal<'a, 'b, B: Backend> {
    s: &'a BackendSpace<'a, B>,
    rhs: UnitRhs<'b, B>,
    tab: &'a Tableau,
    grid: &'a [(f64, f64)],
    layer: &'a LayerIdx,
    grads: &'a mut Grads<B>,
    /// The gradient of the state after the steps still to be reversed.
    g: Option<B::Buf>,
    nfe: usize,
}

impl<B: Backend> StepReversal<B::Buf> for IntervalReversal<'_, '_, B> {
    fn advance(&mut self, y: &B::Buf, steps: std::ops::Range<usize>) -> Result<B::Buf> {
        let sol = replay(self.s, &mut self.rhs, self.tab, y, &self.grid[steps], false)?;
        self.nfe += sol.nfe;
        Ok(sol.y)
    }
    fn reverse(&mut self, y: &B::Buf, i: usize) -> Result<()> {
        let one = replay(self.s, &mut self.rhs, self.tab, y, &self.grid[i..=i], true)?;
        let g = self
            .g
            .take()
            .ok_or_else(|| Error::Other("ode reversal without a gradient".into()))?;
        let r = backprop(self.s, &mut self.rhs, self.tab, &one.steps, g)?;
        self.nfe += one.nfe + r.nfe;
        self.grads.add_flat(self.s.0, self.layer, r.dparams)?;
        self.g = Some(r.dy0);
        Ok(())
    }
}

fn at_interval(k: usize, j: usize, e: Error) -> Error {
    match e {
        Error::Input(m) => Error::Input(format!("units.{k}.steps.{j}: {m}")),
        Error::NonFinite(m) => Error::NonFinite(format!("units.{k}.steps.{j}: {m}")),
        other => other,
    }
}

fn missing(k: usize, j: usize) -> Error {
    Error::Other(format!("ode unit {k} kept nothing for interval {j}"))
}
