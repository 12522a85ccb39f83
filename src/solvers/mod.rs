//! Solvers built on the engine's ops: the ODE solvers of continuous-time units (SPEC section 10),
//! networks that solve PDEs (DL -> PDE, SPEC sections 11-12) and PDE image restoration (SPEC
//! section 13), each in its own submodule.

pub mod ode;
