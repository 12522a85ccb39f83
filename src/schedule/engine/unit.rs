//! One unit forward and backward under a memory policy: dispatch on the step type, the drift
//! guard of rebuilt inputs.

use super::*;

impl<B: Backend> Engine<B> {
    /// Runs unit `k` forward from `input` (and an explicit `Y_{-1}` in a Haar chain), keeping
    /// what `sched` allows.
    pub(super) fn unit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        pre: Option<Pre<B>>,
        d: Dims,
        sched: Schedule,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let kind = self.kind();
        let nt = u.steps.len();
        if nt == 0 {
            return Ok((be.copy(input)?, Kept::Nothing));
        }
        if self.layout.config.layer == LayerType::Ode {
            return self.ode_forward(k, input, d, sched);
        }
        let fixed = self.unit_shift(k, sched);
        if pre.is_some() && kind.layer != LayerType::Hyperbolic {
            return Err(Error::Other(
                "only leapfrog units take an explicit Y_-1".into(),
            ));
        }
        match (kind.layer, fixed) {
            (LayerType::Hyperbolic, None) => {
                let mut pre = match pre {
                    None => None,
                    Some(Pre::Float(p)) => Some(p),
                    Some(Pre::Fixed(..)) => {
                        return Err(Error::Other("fixed-point Y_-1 in a float unit".into()))
                    }
                };
                // The window (Y_{j-1}, Y_j) the step reads; under `store` the states leaving it
                // are kept in the schedule's storage.
                let mut hist = vec![be.copy(input)?];
                let mut left = Vec::new();
                for s in &u.steps {
                    let y = &hist[hist.len() - 1];
                    let prev = if hist.len() > 1 {
                        Some(&hist[hist.len() - 2])
                    } else {
                        pre.as_ref()
                    };
                    let next =
                        layers::forward_single(be, kind, self.layer(&s.layers[0]), y, prev, d)?;
                    pre = None;
                    hist.push(next);
                    if hist.len() > 2 {
                        let old = hist.remove(0);
                        if sched.keep_all {
                            left.push(vec![Slot::keep(be, old, sched.storage)?]);
                        }
                    }
                }
                let out = be.copy(&hist[hist.len() - 1])?;
                Ok((
                    out,
                    self.kept_float(left, hist.into_iter().map(|y| vec![y]), sched),
                ))
            }
            (LayerType::Hyperbolic, Some(shift)) => {
                let coef = (1u64 << shift) as f64 * kind.h * kind.h;
                let (q0, mut qpre) = match pre {
                    None => (be.quantize(input, shift)?, None),
                    Some(Pre::Fixed(q0, qm1)) => (q0, Some(qm1)),
                    Some(Pre::Float(p)) => {
                        (be.quantize(input, shift)?, Some(be.quantize(&p, shift)?))
                    }
                };
                let mut hist = vec![q0];
                for s in &u.steps {
                    let q = &hist[hist.len() - 1];
                    let qp = if hist.len() > 1 {
                        &hist[hist.len() - 2]
                    } else {
                        qpre.as_ref().unwrap_or(q)
                    };
                    let y = be.dequantize(q, shift)?;
                    let f = layers::f_only(be, self.layer(&s.layers[0]), &y, d, kind.act)?;
                    drop(y);
                    let next = be.fixed_update(&[(2, q), (-1, qp)], coef, &f)?;
                    qpre = None;
                    hist.push(next);
                    if !sched.keep_all && hist.len() > 2 {
                        hist.remove(0);
                    }
                }
                let out = be.dequantize(&hist[hist.len() - 1], shift)?;
                let states = hist.into_iter().map(|q| vec![q]).collect();
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::AllFixed(states)
                    } else {
                        Kept::LastFixed(states)
                    },
                ))
            }
            (LayerType::Hamiltonian, None) => {
                let hd = d.with_c(d.c / 2);
                let (a, b) = be.split_channels(input, d, d.c / 2)?;
                let mut cur = vec![a, b];
                let mut left = Vec::new();
                for s in &u.steps {
                    let (l1, l2) = (self.layer(&s.layers[0]), self.layer(&s.layers[1]));
                    let (a1, b1) = layers::verlet_forward(be, kind, l1, l2, &cur[0], &cur[1], hd)?;
                    let old = std::mem::replace(&mut cur, vec![a1, b1]);
                    if sched.keep_all {
                        let kept = old.into_iter().map(|x| Slot::keep(be, x, sched.storage));
                        left.push(kept.collect::<Result<_>>()?);
                    }
                }
                let out = be.concat_channels(&cur[0], &cur[1], d, d.c / 2)?;
                Ok((out, self.kept_float(left, [cur], sched)))
            }
            (LayerType::Hamiltonian, Some(shift)) => {
                let hd = d.with_c(d.c / 2);
                let coef = (1u64 << shift) as f64 * kind.h;
                let (a, b) = be.split_channels(input, d, d.c / 2)?;
                let mut hist = vec![vec![be.quantize(&a, shift)?, be.quantize(&b, shift)?]];
                drop((a, b));
                for s in &u.steps {
                    let cur = &hist[hist.len() - 1];
                    let (l1, l2) = (self.layer(&s.layers[0]), self.layer(&s.layers[1]));
                    let b_f = be.dequantize(&cur[1], shift)?;
                    let f1 = layers::f_only(be, l1, &b_f, hd, kind.act)?;
                    drop(b_f);
                    let qa = be.fixed_update(&[(1, &cur[0])], coef, &f1)?;
                    drop(f1);
                    let a_f = be.dequantize(&qa, shift)?;
                    let f2 = layers::f_only(be, l2, &a_f, hd, kind.act)?;
                    drop(a_f);
                    let qb = be.fixed_update(&[(1, &cur[1])], -coef, &f2)?;
                    hist.push(vec![qa, qb]);
                    if !sched.keep_all {
                        hist.remove(0);
                    }
                }
                let last = &hist[hist.len() - 1];
                let (a, b) = (
                    be.dequantize(&last[0], shift)?,
                    be.dequantize(&last[1], shift)?,
                );
                let out = be.concat_channels(&a, &b, d, d.c / 2)?;
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::AllFixed(hist)
                    } else {
                        Kept::LastFixed(hist)
                    },
                ))
            }
            _ => {
                let keep = sched.keep_all.then_some(sched.storage);
                let (out, states) = self.explicit_forward(k, input, d, keep)?;
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::All(states)
                    } else {
                        Kept::Nothing
                    },
                ))
            }
        }
    }

    /// The states of a float unit's forward: under `store` those that left the window (already
    /// in the schedule's storage) followed by the window in full precision; otherwise the window.
    pub(super) fn kept_float(
        &self,
        left: Vec<State<Slot<B>>>,
        window: impl IntoIterator<Item = State<B::Buf>>,
        sched: Schedule,
    ) -> Kept<B> {
        if sched.keep_all {
            let mut all = left;
            all.extend(
                window
                    .into_iter()
                    .map(|st| st.into_iter().map(Slot::Full).collect()),
            );
            Kept::All(all)
        } else {
            Kept::Last(window.into_iter().collect())
        }
    }

    /// Backward through unit `k`: returns the input's gradient and the rebuild drift.
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
        sched: Schedule,
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
            LayerType::Hyperbolic | LayerType::Hamiltonian => {
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
            LayerType::Ode => match tape.kept {
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
        if self.layout.config.layer == LayerType::Hyperbolic {
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
        sched: Schedule,
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
        let store = Schedule {
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
