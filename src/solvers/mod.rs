//! Solvers built on the engine: networks that solve PDEs (DL -> PDE, SPEC sections 11-12) and
//! PDE image restoration (SPEC section 13). Each lives in its own submodule; none is used by the
//! engine itself.
