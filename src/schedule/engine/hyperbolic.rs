//! Leapfrog (hyperbolic) units: backward by rebuilding the window `(Y_j, Y_{j+1})` in floats
//! or bit-exactly in fixed point, and the Haar chain of the fully hyperbolic network.

use super::*;

impl<B: Backend> Engine<B> {
    /// The Haar connection of a leapfrog chain: the next unit starts from `H(Y_nt)` with
    /// `Y_{-1} = H(Y_{nt-1})` (in fixed point `2 H Q`, one more fractional bit). Last-two states
    /// kept only for rebuilding are released: the next unit's first two give them back.
    pub(super) fn haar_carry(
        &self,
        kept: &mut Kept<B>,
        d: Dims,
        shift: Option<u32>,
    ) -> Result<(B::Buf, Pre<B>)> {
        let be = &self.backend;
        let missing = || Error::Other("a leapfrog unit kept fewer than two states".into());
        let last_two = |n: usize| n.checked_sub(2).ok_or_else(missing);
        let carry = match kept {
            Kept::All(s) => {
                let i = last_two(s.len())?;
                let p = be.haar(&*s[i][0].get(be)?, d)?;
                (be.haar(&*s[i + 1][0].get(be)?, d)?, Pre::Float(p))
            }
            Kept::Last(s) => {
                let i = last_two(s.len())?;
                let p = be.haar(&s[i][0], d)?;
                (be.haar(&s[i + 1][0], d)?, Pre::Float(p))
            }
            Kept::AllFixed(s) | Kept::LastFixed(s) => {
                let i = last_two(s.len())?;
                let next_shift = shift.ok_or_else(missing)? + 1;
                let q0 = be.haar_fixed(&s[i + 1][0], d)?;
                let qm1 = be.haar_fixed(&s[i][0], d)?;
                (be.dequantize(&q0, next_shift)?, Pre::Fixed(q0, qm1))
            }
            Kept::Nothing | Kept::Ode(_) => return Err(missing()),
        };
        if matches!(kept, Kept::Last(_) | Kept::LastFixed(_)) {
            *kept = Kept::Nothing;
        }
        Ok(carry)
    }

    /// Inverse of [`Engine::haar_carry`] on a rebuilt pair: this unit's last two states.
    pub(super) fn haar_uncarry(&self, pair: Pair<B>, d: Dims) -> Result<Kept<B>> {
        let be = &self.backend;
        Ok(match pair {
            Pair::Float(y0, ym1) => Kept::Last(vec![
                vec![be.haar_inv(&ym1, d)?],
                vec![be.haar_inv(&y0, d)?],
            ]),
            Pair::Fixed(q0, qm1) => Kept::LastFixed(vec![
                vec![be.haar_fixed_inv(&qm1, d)?],
                vec![be.haar_fixed_inv(&q0, d)?],
            ]),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn hyperbolic_backward(
        &self,
        u: &UnitIdx,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        fixed: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let be = &self.backend;
        let kind = self.kind();
        let h2 = kind.h * kind.h;
        let nt = u.steps.len();
        let shift = fixed.unwrap_or(0);
        let coef = (1u64 << shift) as f64 * h2;
        drop(tape.output);
        // Where Y_j comes from: stored states, or a window (Y_j, Y_{j+1}) rebuilt backwards.
        enum Src<B: Backend> {
            All(Vec<State<Slot<B>>>),
            AllFixed(Vec<State<B::IBuf>>),
            Window(B::Buf, B::Buf),
            WindowFixed(B::IBuf, B::IBuf),
        }
        let mut src = match tape.kept {
            Kept::All(s) => Src::<B>::All(s),
            Kept::AllFixed(s) => Src::AllFixed(s),
            Kept::Last(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop());
                let cur = s.pop().and_then(|mut v| v.pop());
                match (cur, next) {
                    (Some(c), Some(n)) => Src::Window(c, n),
                    _ => {
                        return Err(Error::Other(
                            "leapfrog unit kept fewer than two states".into(),
                        ))
                    }
                }
            }
            Kept::LastFixed(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop());
                let cur = s.pop().and_then(|mut v| v.pop());
                match (cur, next) {
                    (Some(c), Some(n)) => Src::WindowFixed(c, n),
                    _ => {
                        return Err(Error::Other(
                            "leapfrog unit kept fewer than two states".into(),
                        ))
                    }
                }
            }
            Kept::Nothing | Kept::Ode(_) => {
                return Err(Error::Other("leapfrog unit kept no states".into()))
            }
        };
        let mut g_next = g_out;
        // The gradient Y_j receives from step j + 1 (the `- Y_j` term of Y_{j+2}); at the end of a
        // Haar chain unit, that of Y_{nt-1} from the next unit.
        // Kept as `(coefficient, buffer)` so that the `-G_{j+1}` of each step costs no pass.
        let mut p_cur: Option<(f64, B::Buf)> = g_pre.map(|p| (1.0, p));
        let mut drift = 0.0;
        let mut pair = None;
        for j in (0..nt).rev() {
            let li = &u.steps[j].layers[0];
            let l = self.layer(li);
            if let Src::All(s) = &mut src {
                s.truncate(j + 1);
            }
            if let Src::AllFixed(s) = &mut src {
                s.truncate(j + 1);
            }
            let y_owned = match &src {
                Src::AllFixed(s) => Some(be.dequantize(&s[j][0], shift)?),
                Src::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
                Src::All(s) => match &s[j][0] {
                    Slot::Packed(h) => Some(be.unpack16(h)?),
                    Slot::Full(_) => None,
                },
                Src::Window(..) => None,
            };
            let y: &B::Buf = match (&src, &y_owned) {
                (_, Some(o)) => o,
                (Src::All(s), None) => match &s[j][0] {
                    Slot::Full(b) => b,
                    Slot::Packed(_) => {
                        return Err(Error::Other("packed state not unpacked".into()))
                    }
                },
                (Src::Window(c, _), None) => c,
                _ => return Err(Error::Other("leapfrog state source mismatch".into())),
            };
            // The first step reads the kept input, not its rebuild: where a pre-activation is
            // exactly zero (relu's kink), the rebuild's rounding could take the other branch.
            let y = match (&src, &tape.input) {
                (Src::Window(..), Some(input)) if j == 0 => input,
                _ => y,
            };
            let v = steps::sym_grad(be, l, y, d, kind.act, &g_next)?;
            let g_j = match &p_cur {
                Some((c, p)) => be.lincomb(&[(2.0, &g_next), (h2, &v.dy), (*c, p)])?,
                None => be.lincomb(&[(2.0, &g_next), (h2, &v.dy)])?,
            };
            grads.add_layer(be, li, h2, v)?;
            p_cur = Some((-1.0, std::mem::replace(&mut g_next, g_j)));
            if j > 0 {
                // Rebuild Y_{j-1} = 2 Y_j - Y_{j+1} + h^2 f(Y_j), in floats or bit-exactly in integers.
                match &mut src {
                    // Y_0 is kept: its rebuild serves only the drift and Y_{-1} of a chain.
                    Src::Window(..) if j == 1 && tape.input.is_some() && !measure && !want_pair => {
                    }
                    Src::Window(c, n) => {
                        let prev = steps::leapfrog_inverse(be, kind, l, c, n, d)?;
                        *n = std::mem::replace(c, prev);
                    }
                    Src::WindowFixed(c, n) => {
                        let y = y_owned
                            .as_ref()
                            .ok_or_else(|| Error::Other("no dequantised state".into()))?;
                        let f = steps::f_only(be, l, y, d, kind.act)?;
                        let prev = be.fixed_update(&[(2, c), (-1, n)], coef, &f)?;
                        *n = std::mem::replace(c, prev);
                    }
                    _ => {}
                }
            } else {
                let rebuilt = match &src {
                    _ if !measure => None,
                    Src::Window(c, _) => Some(be.copy(c)?),
                    Src::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
                    _ => None,
                };
                if let (Some(r), Some(input)) = (rebuilt, &tape.input) {
                    drift = self.relative_drift(&r, input, fixed)?;
                }
                if want_pair {
                    // One more inverse step gives Y_{-1}, the previous unit's Y_{nt-1}.
                    pair = match src {
                        Src::Window(c, n) => {
                            let prev = steps::leapfrog_inverse(be, kind, l, &c, &n, d)?;
                            Some(Pair::Float(c, prev))
                        }
                        Src::WindowFixed(c, n) => {
                            let y = y_owned
                                .as_ref()
                                .ok_or_else(|| Error::Other("no dequantised state".into()))?;
                            let f = steps::f_only(be, l, y, d, kind.act)?;
                            let prev = be.fixed_update(&[(2, &c), (-1, &n)], coef, &f)?;
                            Some(Pair::Fixed(c, prev))
                        }
                        // Stored states: the previous unit kept its own.
                        _ => None,
                    };
                    break;
                }
            }
        }
        let (pc, p) = p_cur.ok_or_else(|| Error::Other("leapfrog unit without steps".into()))?;
        if want_pair {
            let p = if pc == 1.0 {
                p
            } else {
                be.lincomb(&[(pc, &p)])?
            };
            return Ok(UnitGrad {
                g: g_next,
                g_pre: Some(p),
                pair,
                drift,
            });
        }
        // Y_{-1} = Y_0: its gradient joins Y_0's.
        Ok(UnitGrad {
            g: be.lincomb(&[(1.0, &g_next), (pc, &p)])?,
            g_pre: None,
            pair: None,
            drift,
        })
    }
}
