//! The scheduler: memory policies for the backward pass (SPEC section 5), the executor that
//! runs forward + backward under them, and the memory plan.

pub mod engine;
pub mod plan;

pub use engine::{Engine, GradOutput, ResidentGrads};

use crate::backend::Storage;
use crate::error::{Error, Result};

/// What the backward pass keeps of the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Keep every state.
    Store,
    /// Keep unit inputs and the last two states of invertible units; rebuild the rest
    /// backwards (invertible units) or recompute from the unit input (the others).
    Reversible,
    /// `Reversible` with invertible units run in fixed point, so that rebuilding is bit-exact.
    Exact,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Store, Policy::Reversible, Policy::Exact];
    pub fn name(self) -> &'static str {
        match self {
            Policy::Store => "store",
            Policy::Reversible => "reversible",
            Policy::Exact => "exact",
        }
    }
    /// The schedule this policy runs with the default fixed-point shift (S = 16).
    pub fn memory(self) -> MemoryPolicy {
        match self {
            Policy::Store => MemoryPolicy {
                keep_all: true,
                fixed_point: None,
                storage: Storage::F32,
                drift_guard: None,
            },
            Policy::Reversible => MemoryPolicy {
                keep_all: false,
                fixed_point: None,
                storage: Storage::F32,
                drift_guard: None,
            },
            Policy::Exact => MemoryPolicy {
                keep_all: false,
                fixed_point: Some(DEFAULT_FIXED_SHIFT),
                storage: Storage::F32,
                drift_guard: None,
            },
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::Input(format!("unknown policy `{s}` (store, reversible, exact)")))
    }
}

/// The fixed-point shift S of the `exact` policy: states are `round(Y * 2^S)` as i32.
pub const DEFAULT_FIXED_SHIFT: u32 = 16;

/// How a forward + backward pass runs: a policy, made of two independent choices so that
/// `store` can also run the fixed-point forward (its gradients must equal `exact`'s bit for bit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPolicy {
    /// Keep every state (`store`), or only what SPEC section 5 allows (`reversible`, `exact`).
    pub keep_all: bool,
    /// Run invertible units in fixed point with this shift.
    pub fixed_point: Option<u32>,
    /// The format of kept float trajectories (every state under `store`, recomputed units under
    /// `reversible`): 16-bit formats halve their memory; the backward pass reads them rounded.
    pub storage: Storage,
    /// Under `reversible`: check each rebuilt unit input against the kept one (see
    /// [`DriftGuard`]); `None` trusts the rebuild.
    pub drift_guard: Option<DriftGuard>,
}

/// The drift guard of `reversible`: a unit whose rebuilt input is further than `tol`
/// (relative max-norm) from the kept input is recomputed from that input and its backward pass
/// run again on stored states (the rebuild's parameter gradients zeroed first), or, when
/// `strict`, the pass fails. It keeps a copy of each checked unit's input and output gradient;
/// a recomputed unit needs `store`'s memory for that unit, which the plan does not include.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DriftGuard {
    pub tol: f64,
    pub strict: bool,
}

/// The guard `grad` and `train` run by default.
impl Default for DriftGuard {
    fn default() -> Self {
        DriftGuard {
            tol: DEFAULT_DRIFT_TOL,
            strict: false,
        }
    }
}

impl DriftGuard {
    /// The guard asked for by a tolerance (`None`: [`default_drift_tol`] of `precision`) and
    /// `strict`; `None` when an infinite tolerance trusts every rebuild.
    pub fn requested(
        tol: Option<f64>,
        strict: bool,
        precision: crate::backend::Precision,
    ) -> Result<Option<DriftGuard>> {
        let tol = tol.unwrap_or_else(|| default_drift_tol(precision));
        if tol.is_nan() || tol < 0.0 {
            return Err(Error::Input(format!(
                "--drift-tol must be 0 or more (or inf), got {tol}"
            )));
        }
        Ok((tol.is_finite() || strict).then_some(DriftGuard { tol, strict }))
    }
}

/// The CLI's default `--drift-tol`: well above f32 rebuilds of well-posed units (~1e-7 to 1e-4
/// at 1000 steps), well below the rebuilds that change a gradient visibly.
pub const DEFAULT_DRIFT_TOL: f64 = 1e-5;

/// The drift guard's default tolerance under `precision`: [`DEFAULT_DRIFT_TOL`], and 1e-2 for
/// bf16 convolutions, whose rebuilds drift at the bf16 level (a rebuilt state a few f32 bits off
/// the kept one can round to another bf16 operand): measured 5.9e-4 (ref-cifar, 8 steps a unit)
/// and 4.1e-3 (32 steps) on the CPU, with gradients no further from the reference than under
/// `store`.
pub fn default_drift_tol(precision: crate::backend::Precision) -> f64 {
    match precision {
        crate::backend::Precision::Bf16 => 1e-2,
        _ => DEFAULT_DRIFT_TOL,
    }
}

impl MemoryPolicy {
    /// This schedule with the drift guard `guard` (it acts only where a float unit is rebuilt).
    pub fn with_drift_guard(self, guard: Option<DriftGuard>) -> Self {
        MemoryPolicy {
            drift_guard: guard,
            ..self
        }
    }
    /// This schedule with its kept trajectories in `storage`.
    pub fn with_storage(self, storage: Storage) -> Self {
        MemoryPolicy { storage, ..self }
    }
}
