//! Units of single-state steps that are not inverted (resnet, antisymmetric, parabolic, imex,
//! rk2): forward keeping every state, backward over kept or recomputed states.

use super::*;

impl<B: Backend> Engine<B> {
    /// Forward of a single-state, non-invertible unit; returns the output and, when `keep` names
    /// a storage, every state `0..=nt` (the last in full precision).
    #[allow(clippy::type_complexity)]
    pub(super) fn explicit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        d: Dims,
        keep: Option<Storage>,
    ) -> Result<(B::Buf, Vec<State<Slot<B>>>)> {
        let be = &self.backend;
        let kind = self.kind();
        let mut states: Vec<State<Slot<B>>> = Vec::new();
        let mut cur = be.copy(input)?;
        for s in &self.layout.units[k].steps {
            let l = self.layer(&s.layers[0]);
            let next = match s.diffusion {
                Some(di) => steps::imex_forward(be, kind, l, &self.params[di], &cur, d)?,
                None => steps::forward_single(be, kind, l, &cur, None, d)?,
            };
            let old = std::mem::replace(&mut cur, next);
            if let Some(storage) = keep {
                states.push(vec![Slot::keep(be, old, storage)?]);
            }
        }
        if keep.is_some() {
            states.push(vec![Slot::Full(be.copy(&cur)?)]);
        }
        Ok((cur, states))
    }

    pub(super) fn explicit_backward(
        &self,
        u: &UnitIdx,
        mut states: Vec<State<Slot<B>>>,
        d: Dims,
        mut g: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let kind = self.kind();
        let rule = crate::steps::rule::rule_of(kind.layer)?;
        if rule.updates.len() > 1 {
            return self.multi_update_backward(rule, u, states, d, g, grads);
        }
        for j in (0..u.steps.len()).rev() {
            let next = states.pop(); // y_{j+1}: needed only by the IMEX solve's VJP
            let y = &*states[j][0].get(be)?;
            let li = &u.steps[j].layers[0];
            if let Some(di) = u.steps[j].diffusion {
                // y_{j+1} = S(z): back through the solve first.
                let y1 = next
                    .and_then(|mut v| v.pop())
                    .ok_or_else(|| Error::Other("missing IMEX state".into()))?
                    .into_buf(be)?;
                let (gz, gd) = be.diffusion_solve_vjp(&y1, d, &self.params[di], kind.h, &g)?;
                grads.add(be, di, 1.0, gd)?;
                g = gz;
            }
            let v = steps::grad_single(be, kind, self.layer(li), y, d, &g)?;
            g = be.lincomb(&[(1.0, &g), (kind.h, &v.dy)])?;
            grads.add_layer(be, li, kind.h, v)?;
        }
        Ok(g)
    }

    /// Backward through steps whose rule has several updates (rk2): per step the update values
    /// are recomputed from the kept state and each update's VJP runs last to first, `x_t <- sum
    /// a_i x_i + c F(x_s)` sending `a_i g_t` to `x_i` and `c (dF/dx_s)^T g_t` to `x_s`.
    fn multi_update_backward(
        &self,
        rule: &crate::steps::rule::StepRule,
        u: &UnitIdx,
        states: Vec<State<Slot<B>>>,
        d: Dims,
        mut g: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<B::Buf> {
        use crate::steps::rule::At;
        let be = &self.backend;
        let kind = self.kind();
        for j in (0..u.steps.len()).rev() {
            let y = &*states[j][0].get(be)?;
            let layers: Vec<_> = u.steps[j].layers.iter().map(|l| self.layer(l)).collect();
            let mut values = crate::steps::rule::update_values(be, rule, kind, &layers, y, d)?;
            values.pop(); // the step's result: no update reads it
                          // Cotangents of y (index 0) and of each update's value (index i + 1).
            let mut gv: Vec<Option<B::Buf>> = (0..=rule.updates.len()).map(|_| None).collect();
            gv[rule.updates.len()] = Some(g);
            for (i, upd) in rule.updates.iter().enumerate().rev() {
                let Some(gi) = gv[i + 1].take() else {
                    continue;
                };
                // `New(0)` in update i is the value update i - 1 wrote; `Cur(0)` is y.
                let index = |at: At| match at {
                    At::Cur(0) => Ok(0),
                    At::New(0) if i > 0 => Ok(i),
                    _ => Err(Error::Other(format!("an explicit rule reads {at:?}"))),
                };
                for &(a, at) in upd.terms {
                    accumulate(be, &mut gv[index(at)?], a, &gi)?;
                }
                let r = index(upd.reads)?;
                let x = if r == 0 { y } else { &values[r - 1] };
                let li = &u.steps[j].layers[upd.layer];
                let v = steps::grad_single(be, kind, self.layer(li), x, d, &gi)?;
                accumulate(be, &mut gv[r], upd.coef(kind.h), &v.dy)?;
                grads.add_layer(be, li, upd.coef(kind.h), v)?;
            }
            g = gv[0]
                .take()
                .ok_or_else(|| Error::Other("an explicit rule does not read its state".into()))?;
        }
        Ok(g)
    }

    /// A unit of non-invertible steps forward, keeping every state under `store`.
    pub(super) fn explicit_unit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        d: Dims,
        sched: MemoryPolicy,
    ) -> Result<(B::Buf, Kept<B>)> {
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

/// `acc += a x`, starting from nothing.
fn accumulate<B: Backend>(be: &B, acc: &mut Option<B::Buf>, a: f64, x: &B::Buf) -> Result<()> {
    let sum = match acc.take() {
        Some(old) => be.lincomb(&[(1.0, &old), (a, x)])?,
        None => be.lincomb(&[(a, x)])?,
    };
    *acc = Some(sum);
    Ok(())
}
