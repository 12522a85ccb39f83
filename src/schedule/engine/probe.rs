//! Unit and step maps of a network as functions of one state, for the stability analysis
//! ([`crate::stability`]): the units' inputs on a batch, one unit's forward map, one step's map.

use super::{Engine, Kept};
use crate::backend::Backend;
use crate::config::StepType;
use crate::error::{Error, Result};
use crate::schedule::Policy;
use crate::solvers::ode::UnitRhs;
use crate::steps;
use crate::tensor::{Dims, HostTensor};

impl<B: Backend> Engine<B> {
    /// Each unit's input on the batch `x` (evaluation mode: running batch-norm statistics) and
    /// its shape.
    pub fn unit_inputs(&self, x: &HostTensor) -> Result<Vec<(B::Buf, Dims)>> {
        if self.haar_chain() {
            return Err(Error::Input(
                "the units of a Haar leapfrog chain share their states: analyse them without `connect: haar`".into(),
            ));
        }
        let (tape, geo) = self.forward(x, Policy::Reversible.memory(), false)?;
        tape.units
            .into_iter()
            .zip(geo.unit_dims)
            .map(|(u, d)| {
                u.input
                    .map(|y| (y, d))
                    .ok_or_else(|| Error::Other("a unit kept no input".into()))
            })
            .collect()
    }

    /// Unit `k`'s forward map `Y_0 -> Y_nt` (a leapfrog unit starts from `Y_-1 = Y_0`).
    pub fn unit_map(&self, k: usize, y: &B::Buf, d: Dims) -> Result<B::Buf> {
        let sched = Policy::Reversible.memory();
        Ok(self.unit_forward(k, y, None, d, sched)?.0)
    }

    /// The width of step `j`'s state in unit `k` of width `c`: two states for leapfrog steps.
    pub fn step_state_channels(&self, c: usize) -> usize {
        match self.layout.config.layer {
            StepType::Hyperbolic => 2 * c,
            _ => c,
        }
    }

    /// Step `j` of unit `k` as a map of one state of [`Engine::step_state_channels`] channels:
    /// `Y_j -> Y_{j+1}`; `[Y_{j-1}; Y_j] -> [Y_j; Y_{j+1}]` (leapfrog); `[A_j; B_j] ->
    /// [A_{j+1}; B_{j+1}]` (Verlet); one weight interval of an `ode` unit.
    pub fn step_map(&self, k: usize, j: usize, y: &B::Buf, d: Dims) -> Result<B::Buf> {
        let be = &self.backend;
        let unit = &self.layout.units[k];
        let step = unit
            .steps
            .get(j)
            .ok_or_else(|| Error::Input(format!("unit {k} has no step {j}")))?;
        let kind = self.kind();
        let l = self.layer(&step.layers[0]);
        match self.layout.config.layer {
            StepType::Hyperbolic => {
                let (prev, cur) = be.split_channels(y, d.with_c(2 * d.c), d.c)?;
                let next = steps::forward_single(be, kind, l, &cur, Some(&prev), d)?;
                be.concat_channels(&cur, &next, d.with_c(2 * d.c), d.c)
            }
            StepType::Hamiltonian => {
                let hd = d.with_c(d.c / 2);
                let (a, b) = be.split_channels(y, d, d.c / 2)?;
                let l2 = self.layer(&step.layers[1]);
                let (a1, b1) = steps::verlet_forward(be, kind, l, l2, &a, &b, hd)?;
                be.concat_channels(&a1, &b1, d, d.c / 2)
            }
            StepType::Imex => {
                let di = step
                    .diffusion
                    .ok_or_else(|| Error::Other("an imex step without diffusion".into()))?;
                steps::imex_forward(be, kind, l, &self.params[di], y, d)
            }
            StepType::Ode => {
                let opts = self.ode_options(&self.ode_keys()?);
                let mut rhs = UnitRhs::new(kind, l, d)?;
                Ok(self.ode_interval((k, j), &mut rhs, y, &opts, false)?.y)
            }
            _ => steps::forward_single(be, kind, l, y, None, d),
        }
    }

    /// The first layer whose output holds a NaN or an infinity in a training-mode forward pass
    /// (SPEC names: `open`, `units.1.steps.0`, `units.1.connect`, `classifier`), or `None`.
    /// Keeps every state, so it is for diagnosing a failed step, not for every step.
    pub fn first_non_finite(&self, x: &HostTensor) -> Result<Option<String>> {
        let be = &self.backend;
        let bad =
            |b: &B::Buf| -> Result<bool> { Ok(be.download(b)?.iter().any(|v| !v.is_finite())) };
        let sched = Policy::Store.memory();
        let (tape, geo) = self.forward(x, sched, true)?;
        if bad(&tape.x)? {
            return Ok(Some("the input".into()));
        }
        if bad(&tape.open.z)? {
            return Ok(Some("open".into()));
        }
        for (k, (u, c)) in tape.units.iter().zip(&tape.connects).enumerate() {
            if let Some(input) = &u.input {
                if bad(input)? {
                    return Ok(Some(if k == 0 {
                        "open".into()
                    } else {
                        format!("units.{}.connect", k - 1)
                    }));
                }
            }
            if let Kept::All(states) = &u.kept {
                for (j, st) in states.iter().enumerate().skip(1) {
                    for part in st {
                        if bad(&*part.get(be)?)? {
                            return Ok(Some(format!("units.{k}.steps.{}", j - 1)));
                        }
                    }
                }
            }
            if let Some(out) = &u.output {
                if bad(out)? {
                    return Ok(Some(format!("units.{k}")));
                }
            }
            if let Some(t) = c {
                if bad(&t.z)? {
                    return Ok(Some(format!("units.{k}.connect")));
                }
            }
        }
        if bad(&tape.features)? {
            return Ok(Some(format!(
                "units.{}.connect",
                self.layout.units.len() - 1
            )));
        }
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        Ok(bad(&logits)?.then(|| "classifier".into()))
    }
}
