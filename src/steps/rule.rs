//! Steps as data. Every step of SPEC section 3 is a short list of updates
//! `x_target <- sum_i a_i x_(at_i) + c F_layer(x_reads)` with `c = sign h^power`; one interpreter
//! runs a rule forward in floats or in fixed point, and an invertible rule backwards. A step type
//! is its [`StepRule`] (see [`rule_of`]); the parameters each update's `F` uses are its layer's.

use super::{f_only, sym, Layer, StepSettings};
use crate::backend::Backend;
use crate::config::StepType;
use crate::error::{Error, Result};
use crate::operators::explicit_step;
use crate::tensor::Dims;

/// A state an update reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Part `p` of the state the step starts from, `Y_j`.
    Cur(usize),
    /// Part `p` of the state before it, `Y_{j-1}` (two-level rules; `Y_0` at the first step).
    Prev(usize),
    /// Part `p` of the state the step produces, written by an earlier update of the same step.
    New(usize),
}

/// The right-hand side `F` of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rhs {
    /// `-K^T sigma(N(K y))` (fused with the update for the full 3x3 operator).
    Symmetric,
    /// `sigma(N(K y))`, or with `K - K^T - gamma I` when `antisymmetric`; only in the update
    /// `y + h F(y)`.
    Explicit { antisymmetric: bool },
}

/// One update `x_target <- sum_i a_i x_(at_i) + sign h^power F_layer(x_reads)`.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    pub target: usize,
    /// `(a_i, x_(at_i))`; integers wherever the rule runs in fixed point (Heun's `1/2` is not).
    pub terms: &'static [(f64, At)],
    pub sign: f64,
    pub h_power: u32,
    pub layer: usize,
    pub reads: At,
}

impl Update {
    /// `c = sign h^power` (`h * h` for the square, as the kernels' callers always wrote it).
    pub fn coef(&self, h: f64) -> f64 {
        self.sign
            * match self.h_power {
                0 => 1.0,
                1 => h,
                _ => h * h,
            }
    }
}

/// How a rule is undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inverse {
    /// Not invertible: `reversible` recomputes such units from their input.
    None,
    /// Each update adds `c F` of a part it does not write to its own old value: undo them last
    /// to first with `-c` (Verlet).
    Shears,
    /// A two-level rule symmetric in time: the same update with `Prev` read from the later
    /// state rebuilds the earlier one (leapfrog).
    TimeReversed,
}

/// A step type as data.
#[derive(Clone, Copy, Debug)]
pub struct StepRule {
    /// Parts of the state (the halves `[A, B]` of a hamiltonian state), each `1 / parts` of the
    /// channels.
    pub parts: usize,
    /// Time levels an update reads: 2 for a two-step recurrence.
    pub levels: usize,
    pub rhs: Rhs,
    pub updates: &'static [Update],
    pub inverse: Inverse,
    /// After the updates, the implicit diffusion solve `(I + h L)^{-1}` (IMEX).
    pub solve: bool,
}

impl StepRule {
    /// Layers (`K`, norm) a step has: one per distinct `F` its updates evaluate.
    pub fn layer_count(&self) -> usize {
        self.updates.iter().map(|u| u.layer + 1).max().unwrap_or(0)
    }
}

const fn update(target: usize, terms: &'static [(f64, At)], sign: f64, h_power: u32) -> Update {
    Update {
        target,
        terms,
        sign,
        h_power,
        layer: 0,
        reads: At::Cur(target),
    }
}

/// `Y_{j+1} = Y_j + h F(Y_j)`.
const EULER: &[Update] = &[update(0, &[(1.0, At::Cur(0))], 1.0, 1)];

pub const RESNET: StepRule = StepRule {
    parts: 1,
    levels: 1,
    rhs: Rhs::Explicit {
        antisymmetric: false,
    },
    updates: EULER,
    inverse: Inverse::None,
    solve: false,
};

pub const ANTISYMMETRIC: StepRule = StepRule {
    rhs: Rhs::Explicit {
        antisymmetric: true,
    },
    ..RESNET
};

pub const PARABOLIC: StepRule = StepRule {
    rhs: Rhs::Symmetric,
    ..RESNET
};

/// `Y_{j+1} = 2 Y_j - Y_{j-1} + h^2 F(Y_j)`.
pub const HYPERBOLIC: StepRule = StepRule {
    parts: 1,
    levels: 2,
    rhs: Rhs::Symmetric,
    updates: &[update(0, &[(2.0, At::Cur(0)), (-1.0, At::Prev(0))], 1.0, 2)],
    inverse: Inverse::TimeReversed,
    solve: false,
};

/// Verlet: `A_{j+1} = A_j + h F_1(B_j)`, then `B_{j+1} = B_j - h F_2(A_{j+1})`.
pub const HAMILTONIAN: StepRule = StepRule {
    parts: 2,
    levels: 1,
    rhs: Rhs::Symmetric,
    updates: &[
        Update {
            target: 0,
            terms: &[(1.0, At::Cur(0))],
            sign: 1.0,
            h_power: 1,
            layer: 0,
            reads: At::Cur(1),
        },
        Update {
            target: 1,
            terms: &[(1.0, At::Cur(1))],
            sign: -1.0,
            h_power: 1,
            layer: 1,
            reads: At::New(0),
        },
    ],
    inverse: Inverse::Shears,
    solve: false,
};

/// The parabolic update, then the exact implicit diffusion solve.
pub const IMEX: StepRule = StepRule {
    solve: true,
    ..PARABOLIC
};

/// Heun's explicit second-order Runge-Kutta step with the parabolic `F` and one layer:
/// `Y~ = Y_j + h F(Y_j)`, then `Y_{j+1} = Y_j + h/2 (F(Y_j) + F(Y~)) = 1/2 Y_j + 1/2 Y~ + h/2 F(Y~)`.
pub const RK2: StepRule = StepRule {
    updates: &[
        update(0, &[(1.0, At::Cur(0))], 1.0, 1),
        Update {
            target: 0,
            terms: &[(0.5, At::Cur(0)), (0.5, At::New(0))],
            sign: 0.5,
            h_power: 1,
            layer: 0,
            reads: At::New(0),
        },
    ],
    ..PARABOLIC
};

/// The rule of a step type (`ode` units integrate their `rhs` type's `F` instead).
pub fn rule_of(t: StepType) -> Result<&'static StepRule> {
    Ok(match t {
        StepType::Resnet => &RESNET,
        StepType::Antisymmetric => &ANTISYMMETRIC,
        StepType::Parabolic => &PARABOLIC,
        StepType::Hyperbolic => &HYPERBOLIC,
        StepType::Hamiltonian => &HAMILTONIAN,
        StepType::Imex => &IMEX,
        StepType::Rk2 => &RK2,
        StepType::Ode => {
            return Err(Error::Config(
                "ode units have no step rule: they integrate their rhs".into(),
            ))
        }
    })
}

fn pick<'a, T>(
    at: At,
    cur: &[&'a T],
    prev: Option<&[&'a T]>,
    new: &'a [Option<T>],
) -> Result<&'a T> {
    let missing = || Error::Other(format!("step rule reads {at:?}, which is not there"));
    match at {
        At::Cur(p) => cur.get(p).copied().ok_or_else(missing),
        // The first step of a two-level recurrence reads Y_{-1} = Y_0.
        At::Prev(p) => prev.unwrap_or(cur).get(p).copied().ok_or_else(missing),
        At::New(p) => new.get(p).and_then(|v| v.as_ref()).ok_or_else(missing),
    }
}

/// A coefficient of a fixed-point update: an integer, so that the update stays exact.
fn integer(a: f64) -> Result<i32> {
    if a.fract() != 0.0 || a.abs() > i32::MAX as f64 {
        return Err(Error::Other(format!(
            "a fixed-point update has the non-integer coefficient {a}"
        )));
    }
    Ok(a as i32)
}

fn finish<T>(new: Vec<Option<T>>) -> Result<Vec<T>> {
    new.into_iter()
        .map(|v| v.ok_or_else(|| Error::Other("a step rule left a part unwritten".into())))
        .collect()
}

/// One step of `rule` in floats from `cur` (and `prev` for two-level rules): the new state's
/// parts. `layers` are the step's, `diffusion` the IMEX solve's coefficients.
#[allow(clippy::too_many_arguments)]
pub fn step<B: Backend>(
    be: &B,
    rule: &StepRule,
    s: StepSettings,
    layers: &[Layer<'_, B>],
    diffusion: Option<&B::Buf>,
    cur: &[&B::Buf],
    prev: Option<&[&B::Buf]>,
    d: Dims,
) -> Result<Vec<B::Buf>> {
    let mut new: Vec<Option<B::Buf>> = (0..rule.parts).map(|_| None).collect();
    for u in rule.updates {
        let next = apply(be, rule, u, s, layers, cur, prev, &new, d)?;
        new[u.target] = Some(next);
    }
    if rule.solve {
        let diff = diffusion.ok_or_else(|| Error::Other("IMEX step without diffusion".into()))?;
        if let Some(z) = new[0].take() {
            new[0] = Some(be.diffusion_solve(&z, d, diff, s.h)?);
        }
    }
    finish(new)
}

/// One update of `rule` in floats, `sum a_i x_i + c F(x_reads)`; `new` holds the parts earlier
/// updates of the step wrote.
#[allow(clippy::too_many_arguments)]
fn apply<B: Backend>(
    be: &B,
    rule: &StepRule,
    u: &Update,
    s: StepSettings,
    layers: &[Layer<'_, B>],
    cur: &[&B::Buf],
    prev: Option<&[&B::Buf]>,
    new: &[Option<B::Buf>],
    d: Dims,
) -> Result<B::Buf> {
    let l = layers[u.layer];
    let y = pick(u.reads, cur, prev, new)?;
    match rule.rhs {
        Rhs::Symmetric => {
            let terms = u
                .terms
                .iter()
                .map(|&(a, at)| Ok((a, pick(at, cur, prev, new)?)))
                .collect::<Result<Vec<_>>>()?;
            sym(be, l, &terms, u.coef(s.h), y, d, s.act)
        }
        // `y + h F(y)` only.
        Rhs::Explicit { antisymmetric } => {
            let gamma = antisymmetric.then_some(s.gamma);
            explicit_step(be, l.op, gamma, u.coef(s.h), y, d, l.norm, s.act)
        }
    }
}

/// The values a single-part, single-level `rule` writes from `y`, one per update (the last is
/// the step's result): the states the VJP of a rule of several updates reads.
pub fn update_values<B: Backend>(
    be: &B,
    rule: &StepRule,
    s: StepSettings,
    layers: &[Layer<'_, B>],
    y: &B::Buf,
    d: Dims,
) -> Result<Vec<B::Buf>> {
    if rule.parts != 1 || rule.levels != 1 || rule.solve {
        return Err(Error::Other(
            "update values of a rule with one part and one level only".into(),
        ));
    }
    let mut values: Vec<B::Buf> = Vec::with_capacity(rule.updates.len());
    for u in rule.updates {
        // `New(0)` is the latest value written.
        let latest = [values.pop()];
        let next = apply(be, rule, u, s, layers, &[y], None, &latest, d)?;
        values.extend(latest.into_iter().flatten());
        values.push(next);
    }
    Ok(values)
}

/// One step of `rule` in fixed point with `shift` fractional bits: each update adds
/// `round(2^shift c F)` in integers, so [`step_back_fixed`] undoes it bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn step_fixed<B: Backend>(
    be: &B,
    rule: &StepRule,
    s: StepSettings,
    layers: &[Layer<'_, B>],
    cur: &[&B::IBuf],
    prev: Option<&[&B::IBuf]>,
    shift: u32,
    d: Dims,
) -> Result<Vec<B::IBuf>> {
    if rule.inverse == Inverse::None || rule.solve {
        return Err(Error::Other(
            "only invertible step rules run in fixed point".into(),
        ));
    }
    let scale = (1u64 << shift) as f64;
    let mut new: Vec<Option<B::IBuf>> = (0..rule.parts).map(|_| None).collect();
    for u in rule.updates {
        let y = be.dequantize(pick(u.reads, cur, prev, &new)?, shift)?;
        let f = f_only(be, layers[u.layer], &y, d, s.act)?;
        drop(y);
        let terms = u
            .terms
            .iter()
            .map(|&(a, at)| Ok((integer(a)?, pick(at, cur, prev, &new)?)))
            .collect::<Result<Vec<_>>>()?;
        let next = be.fixed_update(&terms, scale * u.coef(s.h), &f)?;
        new[u.target] = Some(next);
    }
    finish(new)
}

/// Undoes one float step of an invertible `rule`: from `later` (the step's result) and, for a
/// two-level rule, `cur` (the state it started from), the state before — `Y_{j-1}` for the
/// leapfrog (from `Y_j`, `Y_{j+1}`), `Y_j` for Verlet (from `Y_{j+1}`; `cur` unused).
pub fn step_back<B: Backend>(
    be: &B,
    rule: &StepRule,
    s: StepSettings,
    layers: &[Layer<'_, B>],
    cur: &[&B::Buf],
    later: &[&B::Buf],
    d: Dims,
) -> Result<Vec<B::Buf>> {
    match rule.inverse {
        Inverse::TimeReversed => step(be, rule, s, layers, None, cur, Some(later), d),
        Inverse::Shears => {
            // Working values, starting from the later state; each update undone in reverse
            // (it read a part it does not write, whose value at that point is the working one).
            let mut work: Vec<Option<B::Buf>> = (0..rule.parts).map(|_| None).collect();
            for u in rule.updates.iter().rev() {
                if u.terms != [(1.0, At::Cur(u.target))] {
                    return Err(Error::Other(
                        "a shear update adds to its own part only".into(),
                    ));
                }
                let read = match u.reads {
                    At::Cur(p) | At::New(p) | At::Prev(p) => p,
                };
                let x = work[read].as_ref().unwrap_or(later[read]);
                let t = work[u.target].as_ref().unwrap_or(later[u.target]);
                let back = sym(be, layers[u.layer], &[(1.0, t)], -u.coef(s.h), x, d, s.act)?;
                work[u.target] = Some(back);
            }
            work.into_iter()
                .enumerate()
                .map(|(p, w)| w.map_or_else(|| be.copy(later[p]), Ok))
                .collect()
        }
        Inverse::None => Err(Error::Other("this step rule is not invertible".into())),
    }
}
