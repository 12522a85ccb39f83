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
        let shift = fixed.unwrap_or(0);
        let coef = (1u64 << shift) as f64 * h2;
        drop(tape.output);
        let mut src = LeapfrogStates::<B>::from_kept(tape.kept)?;
        let mut g_next = g_out;
        // The gradient Y_j receives from step j + 1 (the `- Y_j` term of Y_{j+2}); at the end of a
        // Haar chain unit, that of Y_{nt-1} from the next unit.
        // Kept as `(coefficient, buffer)` so that the `-G_{j+1}` of each step costs no pass.
        let mut p_cur: Option<(f64, B::Buf)> = g_pre.map(|p| (1.0, p));
        let mut drift = 0.0;
        let mut pair = None;
        for j in (0..u.steps.len()).rev() {
            let li = &u.steps[j].layers[0];
            let l = self.layer(li);
            src.truncate(j);
            let y_owned = src.unpacked(be, j, shift)?;
            // Y_0 is kept: a float rebuild serves only the drift and Y_{-1} of a chain (a
            // fixed-point one is exact and read as `store` reads it).
            let skip = j == 1
                && tape.input.is_some()
                && matches!(src, LeapfrogStates::Window(..))
                && !measure
                && !want_pair;
            let rebuild = j > 0 && !skip;
            // Where the backend fuses them, the rebuild of Y_{j-1} and the VJP at Y_j share one
            // pass of `K Y_j`, its norms and sigma; each result is bit for bit the unfused one.
            let fuse = rebuild
                && src.is_window()
                && be.fuses_step_full3x3_vjp()
                && matches!(l.op, OpRef::Full3x3(_));
            let (v, y_owned) = if fuse {
                let back = Back {
                    kind,
                    l,
                    d,
                    y: None,
                    coef,
                };
                (src.grad_and_step_back(be, back, y_owned, &g_next)?, None)
            } else {
                let y = src.state(j, y_owned.as_ref())?;
                // The first step of a float window reads the kept input, not its rebuild:
                // where a pre-activation is exactly zero (relu's kink), the rebuild's rounding
                // could take the other branch. A fixed-point rebuild is exact and is what
                // `store` reads.
                let y = match (&src, &tape.input) {
                    (LeapfrogStates::Window(..), Some(input)) if j == 0 => input,
                    _ => y,
                };
                (steps::sym_grad(be, l, y, d, kind.act, &g_next)?, y_owned)
            };
            let g_j = match &p_cur {
                Some((c, p)) => be.lincomb(&[(2.0, &g_next), (h2, &v.dy), (*c, p)])?,
                None => be.lincomb(&[(2.0, &g_next), (h2, &v.dy)])?,
            };
            grads.add_layer(be, li, h2, v)?;
            p_cur = Some((-1.0, std::mem::replace(&mut g_next, g_j)));
            let back = Back {
                kind,
                l,
                d,
                y: y_owned.as_ref(),
                coef,
            };
            if j > 0 {
                if rebuild && !fuse {
                    src.step_back(be, back)?;
                }
                continue;
            }
            if measure {
                if let (Some(r), Some(input)) = (src.rebuilt_first(be, shift)?, &tape.input) {
                    drift = self.relative_drift(&r, input, fixed)?;
                }
            }
            if want_pair {
                // One more inverse step gives Y_{-1}, the previous unit's Y_{nt-1}.
                pair = src.into_pair(be, back)?;
                break;
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

/// Where the leapfrog backward reads `Y_j`: stored states, or a window `(Y_j, Y_{j+1})`
/// rebuilt backwards, in floats or in fixed point.
enum LeapfrogStates<B: Backend> {
    All(Vec<State<Slot<B>>>),
    AllFixed(Vec<State<B::IBuf>>),
    Window(B::Buf, B::Buf),
    WindowFixed(B::IBuf, B::IBuf),
}

/// What one inverse leapfrog step needs: the step's layer, and `Y_j` dequantised (fixed point).
#[derive(Clone, Copy)]
struct Back<'a, B: Backend> {
    kind: StepSettings,
    l: Layer<'a, B>,
    d: Dims,
    y: Option<&'a B::Buf>,
    coef: f64,
}

impl<B: Backend> Back<'_, B> {
    /// `Y_{j-1} = 2 Y_j - Y_{j+1} + round(2^S h^2 f(Y_j))` in integers.
    fn fixed_prev(&self, be: &B, c: &B::IBuf, n: &B::IBuf) -> Result<B::IBuf> {
        let y = self
            .y
            .ok_or_else(|| Error::Other("no dequantised state".into()))?;
        let f = steps::f_only(be, self.l, y, self.d, self.kind.act)?;
        be.fixed_update(&[(2, c), (-1, n)], self.coef, &f)
    }
}

impl<B: Backend> LeapfrogStates<B> {
    fn from_kept(kept: Kept<B>) -> Result<Self> {
        let few = || Error::Other("leapfrog unit kept fewer than two states".into());
        Ok(match kept {
            Kept::All(s) => LeapfrogStates::All(s),
            Kept::AllFixed(s) => LeapfrogStates::AllFixed(s),
            Kept::Last(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop()).ok_or_else(few)?;
                let cur = s.pop().and_then(|mut v| v.pop()).ok_or_else(few)?;
                LeapfrogStates::Window(cur, next)
            }
            Kept::LastFixed(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop()).ok_or_else(few)?;
                let cur = s.pop().and_then(|mut v| v.pop()).ok_or_else(few)?;
                LeapfrogStates::WindowFixed(cur, next)
            }
            Kept::Nothing | Kept::Ode(_) => {
                return Err(Error::Other("leapfrog unit kept no states".into()))
            }
        })
    }

    /// Releases the stored states after `Y_j`.
    fn truncate(&mut self, j: usize) {
        match self {
            LeapfrogStates::All(s) => s.truncate(j + 1),
            LeapfrogStates::AllFixed(s) => s.truncate(j + 1),
            _ => {}
        }
    }

    /// `Y_j` as a new buffer where it is not held as floats: dequantised or unpacked.
    fn unpacked(&self, be: &B, j: usize, shift: u32) -> Result<Option<B::Buf>> {
        Ok(match self {
            LeapfrogStates::AllFixed(s) => Some(be.dequantize(&s[j][0], shift)?),
            LeapfrogStates::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
            LeapfrogStates::All(s) => match &s[j][0] {
                Slot::Packed(h) => Some(be.unpack16(h)?),
                Slot::Full(_) => None,
            },
            LeapfrogStates::Window(..) => None,
        })
    }

    /// `Y_j`: `owned` (from [`Self::unpacked`]) or the float state held.
    fn state<'a>(&'a self, j: usize, owned: Option<&'a B::Buf>) -> Result<&'a B::Buf> {
        match (self, owned) {
            (_, Some(o)) => Ok(o),
            (LeapfrogStates::All(s), None) => match &s[j][0] {
                Slot::Full(b) => Ok(b),
                Slot::Packed(_) => Err(Error::Other("packed state not unpacked".into())),
            },
            (LeapfrogStates::Window(c, _), None) => Ok(c),
            _ => Err(Error::Other("leapfrog state source mismatch".into())),
        }
    }

    /// Whether `Y_j` is read from a rebuilt window.
    fn is_window(&self) -> bool {
        matches!(
            self,
            LeapfrogStates::Window(..) | LeapfrogStates::WindowFixed(..)
        )
    }

    /// The VJP of `f` at the window's `Y_j` for `g` and, from the same pass, the window moved one
    /// step back (as [`Self::step_back`]). `y` is `Y_j` dequantised (fixed point; released
    /// before the integer update).
    fn grad_and_step_back(
        &mut self,
        be: &B,
        b: Back<'_, B>,
        y: Option<B::Buf>,
        g: &B::Buf,
    ) -> Result<LayerGrads<B::Buf>> {
        match self {
            LeapfrogStates::Window(c, n) => {
                let (prev, v) = steps::leapfrog_inverse_with_grad(be, b.kind, b.l, c, n, b.d, g)?;
                *n = std::mem::replace(c, prev);
                Ok(v)
            }
            LeapfrogStates::WindowFixed(c, n) => {
                let y = y.ok_or_else(|| Error::Other("no dequantised state".into()))?;
                let (f, v) = steps::f_with_grad(be, b.l, &y, b.d, b.kind.act, g)?;
                drop(y);
                let prev = be.fixed_update(&[(2, c), (-1, n)], b.coef, &f)?;
                drop(f);
                *n = std::mem::replace(c, prev);
                Ok(v)
            }
            _ => Err(Error::Other("no rebuilt window to step back".into())),
        }
    }

    /// Moves a rebuilt window one step back: `(Y_j, Y_{j+1}) -> (Y_{j-1}, Y_j)`.
    fn step_back(&mut self, be: &B, b: Back<'_, B>) -> Result<()> {
        match self {
            LeapfrogStates::Window(c, n) => {
                let prev = steps::leapfrog_inverse(be, b.kind, b.l, c, n, b.d)?;
                *n = std::mem::replace(c, prev);
            }
            LeapfrogStates::WindowFixed(c, n) => {
                let prev = b.fixed_prev(be, c, n)?;
                *n = std::mem::replace(c, prev);
            }
            _ => {}
        }
        Ok(())
    }

    /// The rebuilt `Y_0` as floats (for the drift), or `None` for stored states.
    fn rebuilt_first(&self, be: &B, shift: u32) -> Result<Option<B::Buf>> {
        Ok(match self {
            LeapfrogStates::Window(c, _) => Some(be.copy(c)?),
            LeapfrogStates::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
            _ => None,
        })
    }

    /// `(Y_0, Y_{-1})` rebuilt for the previous unit of a Haar chain (`None` for stored states:
    /// the previous unit kept its own).
    fn into_pair(self, be: &B, b: Back<'_, B>) -> Result<Option<Pair<B>>> {
        Ok(match self {
            LeapfrogStates::Window(c, n) => {
                let prev = steps::leapfrog_inverse(be, b.kind, b.l, &c, &n, b.d)?;
                Some(Pair::Float(c, prev))
            }
            LeapfrogStates::WindowFixed(c, n) => {
                let prev = b.fixed_prev(be, &c, &n)?;
                Some(Pair::Fixed(c, prev))
            }
            _ => None,
        })
    }
}
