//! Units of single-state steps that are not inverted (resnet, antisymmetric, parabolic, imex):
//! forward keeping every state, backward over kept or recomputed states.

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
