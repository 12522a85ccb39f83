//! Continuous-time units (SPEC section 10): explicit Runge-Kutta solvers (euler, rk4, dopri5 with
//! torchdiffeq's step-size controller), the discretize-optimize gradient through the accepted
//! steps and the continuous adjoint. Generic over the space the state lives in ([`Space`]: a
//! backend's buffers, or the adjoint's augmented state) and the right-hand side ([`Rhs`]), so the
//! same solver runs a unit's fused step ops on any backend and the analytic test problems.

mod adjoint;
mod backprop;
mod integrate;
mod reverse;
mod space;
pub mod tableau;
mod unit;

pub use adjoint::{adjoint, Aug, AugSpace};
pub use backprop::{backprop, IntervalGrad};
pub use integrate::{replay, solve, Solution, Step};
pub use reverse::{reverse_steps, StepReversal, REVERSE_CHECKPOINTS};
pub use space::{BackendSpace, EvalVjp, Rhs, RhsVjp, Space, Tol};
pub use unit::UnitRhs;

use crate::error::{Error, Result};
use tableau::{Tableau, DOPRI5, EULER, RK4};

pub use crate::config::{Gradient, Solver};

impl Solver {
    pub fn tableau(self) -> &'static Tableau {
        match self {
            Solver::Euler => &EULER,
            Solver::Rk4 => &RK4,
            Solver::Dopri5 => &DOPRI5,
        }
    }
    pub fn adaptive(self) -> bool {
        self.tableau().error.is_some()
    }
}

/// How one interval is solved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OdeOptions {
    pub solver: Solver,
    /// Equal steps per interval of the fixed-step solvers.
    pub substeps: usize,
    pub rtol: f64,
    pub atol: f64,
    /// Steps (accepted and rejected) an adaptive solve may take per interval before it stops
    /// with an error instead of running on.
    pub max_steps: usize,
    /// Planning only (a backend without values, no error to control a step by): an adaptive
    /// solve takes this many equal steps instead, allocating what as many accepted steps would.
    pub plan_steps: Option<usize>,
}

impl Default for OdeOptions {
    fn default() -> Self {
        OdeOptions {
            solver: Solver::Dopri5,
            substeps: 1,
            rtol: 1e-3,
            atol: 1e-4,
            max_steps: crate::limits::MAX_ODE_STEPS,
            plan_steps: None,
        }
    }
}

impl OdeOptions {
    /// The options of a config's `ode` keys.
    pub fn of(keys: &crate::config::OdeKeys) -> Self {
        OdeOptions {
            solver: keys.solver,
            substeps: keys.substeps,
            rtol: keys.rtol,
            atol: keys.atol,
            max_steps: keys.max_steps,
            plan_steps: None,
        }
    }
    pub fn tol(&self) -> Tol {
        Tol {
            atol: self.atol,
            rtol: self.rtol,
        }
    }
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.substeps == 0 {
            return bad("`substeps` must be at least 1".into());
        }
        if !(self.rtol > 0.0 && self.rtol.is_finite()) {
            return bad(format!(
                "`rtol` must be a positive number, got {}",
                self.rtol
            ));
        }
        if !(self.atol > 0.0 && self.atol.is_finite()) {
            return bad(format!(
                "`atol` must be a positive number, got {}",
                self.atol
            ));
        }
        if self.max_steps == 0 {
            return bad("`max_steps` must be at least 1".into());
        }
        if self.plan_steps == Some(0) {
            return bad("`plan_steps` must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a solve stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum OdeError {
    StepBudget { steps: usize, t: f64 },
    StepUnderflow { dt: f64, t: f64 },
    NonFinite { t: f64 },
}

impl std::fmt::Display for OdeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OdeError::StepBudget { steps, t } => {
                write!(f, "the solver used its budget of {steps} steps and reached only t = {t} (loosen rtol/atol or raise max_steps)")
            }
            OdeError::StepUnderflow { dt, t } => write!(f, "the step size fell to {dt} at t = {t}"),
            OdeError::NonFinite { t } => write!(f, "the state became non-finite at t = {t}"),
        }
    }
}

impl From<OdeError> for Error {
    fn from(e: OdeError) -> Self {
        Error::Input(format!("ode solve: {e}"))
    }
}
