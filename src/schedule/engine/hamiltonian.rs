//! Verlet (hamiltonian) units: backward by rebuilding `(A_j, B_j)` in floats or fixed point.

use super::*;

impl<B: Backend> Engine<B> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hamiltonian_backward(
        &self,
        u: &UnitIdx,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        fixed: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<(B::Buf, f64)> {
        let be = &self.backend;
        let kind = self.kind();
        let h = kind.h;
        let half = d.c / 2;
        let hd = d.with_c(half);
        let nt = u.steps.len();
        let shift = fixed.unwrap_or(0);
        let coef = (1u64 << shift) as f64 * h;
        drop(tape.output);
        let (mut ga, mut gb) = be.split_channels(&g_out, d, half)?;
        drop(g_out);
        let mut kept = tape.kept;
        let mut drift = 0.0;
        for j in (0..nt).rev() {
            let (li1, li2) = (&u.steps[j].layers[0], &u.steps[j].layers[1]);
            let (l1, l2) = (self.layer(li1), self.layer(li2));
            // A_{j+1} and B_j, as floats.
            let (a1, bj): (B::Buf, B::Buf) = match &mut kept {
                Kept::All(s) => {
                    let a1 = s.pop().map(|mut v| v.swap_remove(0));
                    let a1 = a1.ok_or_else(|| Error::Other("missing state".into()))?;
                    (a1.into_buf(be)?, s[j][1].to_buf(be)?)
                }
                Kept::AllFixed(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    (
                        be.dequantize(&st[0], shift)?,
                        be.dequantize(&s[j][1], shift)?,
                    )
                }
                Kept::Last(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    match &tape.input {
                        // The first step reads the kept input (as the leapfrog's does) and
                        // A_1 = A_0 + h f(B_0) recomputed from it, not their rebuilds; the
                        // rebuilt input serves only the drift.
                        Some(input) if j == 0 => {
                            if measure {
                                let (a, b) =
                                    steps::verlet_inverse(be, kind, l1, l2, &st[0], &st[1], hd)?;
                                s.push(vec![a, b]);
                            }
                            let (a0, b0) = be.split_channels(input, d, half)?;
                            let f1 = steps::f_only(be, l1, &b0, hd, kind.act)?;
                            (be.lincomb(&[(1.0, &a0), (h, &f1)])?, b0)
                        }
                        _ => {
                            let (a, b) =
                                steps::verlet_inverse(be, kind, l1, l2, &st[0], &st[1], hd)?;
                            let pair = (be.copy(&st[0])?, be.copy(&b)?);
                            s.push(vec![a, b]);
                            pair
                        }
                    }
                }
                Kept::LastFixed(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    let a1 = be.dequantize(&st[0], shift)?;
                    let f2 = steps::f_only(be, l2, &a1, hd, kind.act)?;
                    let qb = be.fixed_update(&[(1, &st[1])], coef, &f2)?;
                    drop(f2);
                    let bj = be.dequantize(&qb, shift)?;
                    let f1 = steps::f_only(be, l1, &bj, hd, kind.act)?;
                    let qa = be.fixed_update(&[(1, &st[0])], -coef, &f1)?;
                    s.push(vec![qa, qb]);
                    (a1, bj)
                }
                Kept::Nothing | Kept::Ode(_) => {
                    return Err(Error::Other("hamiltonian unit kept no states".into()))
                }
            };
            let v2 = steps::sym_grad(be, l2, &a1, hd, kind.act, &gb)?;
            ga = be.lincomb(&[(1.0, &ga), (-h, &v2.dy)])?;
            grads.add_layer(be, li2, -h, v2)?;
            let v1 = steps::sym_grad(be, l1, &bj, hd, kind.act, &ga)?;
            gb = be.lincomb(&[(1.0, &gb), (h, &v1.dy)])?;
            grads.add_layer(be, li1, h, v1)?;
        }
        // The state left is the rebuilt input (when rebuilt).
        let rebuilt = match &kept {
            _ if !measure => None,
            Kept::Last(s) => Some(be.concat_channels(&s[0][0], &s[0][1], d, half)?),
            Kept::LastFixed(s) => {
                let (a, b) = (
                    be.dequantize(&s[0][0], shift)?,
                    be.dequantize(&s[0][1], shift)?,
                );
                Some(be.concat_channels(&a, &b, d, half)?)
            }
            _ => None,
        };
        if let (Some(r), Some(input)) = (rebuilt, &tape.input) {
            drift = self.relative_drift(&r, input, fixed)?;
        }
        Ok((be.concat_channels(&ga, &gb, d, half)?, drift))
    }
}
