//! One unit forward and backward under a memory policy: dispatch on the step type, the drift
//! guard of rebuilt inputs.

use super::*;
use crate::steps::rule::Inverse;

impl<B: Backend> Engine<B> {
    /// Runs unit `k` forward from `input` (and an explicit `Y_{-1}` in a Haar chain), keeping
    /// what `sched` allows.
    pub(super) fn unit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        pre: Option<Pre<B>>,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let kind = self.kind();
        let nt = u.steps.len();
        if nt == 0 {
            return Ok((be.copy(input)?, Kept::Nothing));
        }
        if self.layout.config.layer == StepType::Ode {
            return self.ode_forward(k, input, d, sched);
        }
        let fixed = self.unit_shift(k, sched);
        if pre.is_some() && kind.layer != StepType::Hyperbolic {
            return Err(Error::Other(
                "only leapfrog units take an explicit Y_-1".into(),
            ));
        }
        let rule = crate::steps::rule::rule_of(kind.layer)?;
        match (rule.inverse, fixed) {
            (Inverse::None, _) => self.explicit_unit_forward(k, input, d, sched),
            (_, None) => self.invertible_forward(k, rule, input, pre, d, sched),
            (_, Some(shift)) => self.invertible_forward_fixed(k, rule, input, pre, d, sched, shift),
        }
    }

    /// Backward through unit `k` from the gradient of its output (and, in a Haar chain, of its
    /// second-last state `g_pre`); `want_pair` asks for its first two states rebuilt.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unit_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        sched: MemoryPolicy,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let u = &self.layout.units[k];
        let plain = |g| UnitGrad {
            g,
            g_pre: None,
            pair: None,
            drift: 0.0,
        };
        if u.steps.is_empty() {
            return Ok(plain(g_out));
        }
        let shift = self.unit_shift(k, sched);
        match self.layout.config.layer {
            StepType::Hyperbolic | StepType::Hamiltonian => {
                let guard = match (sched.drift_guard, &tape.kept, &tape.input) {
                    (Some(guard), Kept::Last(_), Some(_)) if g_pre.is_none() && !want_pair => guard,
                    _ => {
                        let measure = self.measure_drift;
                        return self.invertible_backward(
                            k, tape, d, g_out, g_pre, want_pair, shift, measure, grads,
                        );
                    }
                };
                self.guarded_backward(k, tape, d, g_out, sched, guard, grads)
            }
            StepType::Ode => match tape.kept {
                Kept::Ode(kept) => Ok(plain(self.ode_backward(k, kept, d, g_out, grads)?)),
                _ => Err(Error::Other(format!("ode unit {k} kept no intervals"))),
            },
            _ => {
                let states = match (tape.kept, &tape.input) {
                    (Kept::All(s), _) => s,
                    (_, Some(input)) => self.explicit_forward(k, input, d, Some(sched.storage))?.1,
                    _ => return Err(Error::Other(format!("unit {k} kept no input"))),
                };
                drop(tape.output);
                Ok(plain(self.explicit_backward(u, states, d, g_out, grads)?))
            }
        }
    }

    /// Backward through an invertible unit, its drift measured when `measure`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn invertible_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        shift: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let u = &self.layout.units[k];
        if self.layout.config.layer == StepType::Hyperbolic {
            return self
                .hyperbolic_backward(u, tape, d, g_out, g_pre, want_pair, shift, measure, grads);
        }
        let (g, drift) = self.hamiltonian_backward(u, tape, d, g_out, shift, measure, grads)?;
        Ok(UnitGrad {
            g,
            g_pre: None,
            pair: None,
            drift,
        })
    }

    /// [`DriftGuard`]: above the tolerance, the rebuild's parameter gradients are zeroed and the
    /// unit is recomputed from its kept input and run on stored states.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn guarded_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        sched: MemoryPolicy,
        guard: DriftGuard,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let be = &self.backend;
        let input = match &tape.input {
            Some(x) => be.copy(x)?,
            None => return Err(Error::Other(format!("unit {k} kept no input"))),
        };
        let g_again = be.copy(&g_out)?;
        let shift = self.unit_shift(k, sched);
        let r = self.invertible_backward(k, tape, d, g_out, None, false, shift, true, grads)?;
        if r.drift <= guard.tol {
            return Ok(r);
        }
        let drift = r.drift;
        if guard.strict {
            return Err(Error::Other(format!(
                "unit {k}: the reversible rebuild of its input drifted {drift:.2e} (relative), above --drift-tol {:.1e}; without --strict the unit is recomputed from its input",
                guard.tol
            )));
        }
        drop(r);
        self.zero_unit_grads(k, grads)?;
        if !self
            .recompute_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!(
                "note: unit {k}: the reversible rebuild drifted {drift:.2e} from the kept input (above --drift-tol {:.1e}); such units are recomputed from their input",
                guard.tol
            );
        }
        let store = MemoryPolicy {
            keep_all: true,
            ..sched
        };
        let (_, kept) = self.unit_forward(k, &input, None, d, store)?;
        let tape = UnitTape {
            input: Some(input),
            output: None,
            kept,
        };
        let r = self.invertible_backward(k, tape, d, g_again, None, false, shift, false, grads)?;
        Ok(UnitGrad { drift, ..r })
    }

    /// Zeroes the gradients of unit `k`'s parameters, discarding what a rejected rebuild added:
    /// each parameter belongs to one unit, so nothing else had added to them yet.
    pub(super) fn zero_unit_grads(&self, k: usize, grads: &mut Grads<B>) -> Result<()> {
        for l in self.layout.units[k]
            .steps
            .iter()
            .flat_map(|s| s.layers.iter())
        {
            let norm = match l.norm {
                NormIdx::Tv { scale, shift } => vec![scale, shift],
                NormIdx::Shift { shift } => vec![shift],
            };
            for i in l.op.weights.iter().copied().chain(norm) {
                if let Some(g) = grads.g[i].as_mut() {
                    *g = self.backend.zeros(self.backend.buf_len(g))?;
                }
            }
        }
        Ok(())
    }

    /// Relative max-norm error of a rebuilt unit input; in fixed point the stored input is
    /// compared after the same quantisation, so an exact rebuild reads 0.
    pub(super) fn relative_drift(
        &self,
        rebuilt: &B::Buf,
        stored: &B::Buf,
        fixed: Option<u32>,
    ) -> Result<f64> {
        let be = &self.backend;
        let quantised;
        let stored = match fixed {
            Some(s) => {
                quantised = be.dequantize(&be.quantize(stored, s)?, s)?;
                &quantised
            }
            None => stored,
        };
        let diff = be.lincomb(&[(1.0, rebuilt), (-1.0, stored)])?;
        let (dv, sv) = (be.download(&diff)?, be.download(stored)?);
        let dmax = dv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let smax = sv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        Ok(if smax > 0.0 { dmax / smax } else { dmax })
    }
}
