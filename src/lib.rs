//! pdenet: deep networks as time discretisations of PDEs, on the CPU and on CUDA GPUs.
//!
//! A network is a chain of *units*, each `nt` steps of one PDE-inspired layer (resnet,
//! antisymmetric, parabolic, hyperbolic leapfrog, hamiltonian Verlet, IMEX, or a
//! continuous-time `ode` unit) at constant width, joined by connective layers (SPEC sections
//! 3-4). The engine ([`schedule::Engine`]) runs a forward and backward pass under a memory
//! policy ([`schedule::Policy`]): `store` keeps every state, `reversible` rebuilds the states
//! of invertible units backwards, `exact` does so bit-exactly in fixed point, so that memory
//! stays flat in depth.
//!
//! Where to start:
//! - [`api`]: a unit or a whole network on plain slices, parameters and gradients by SPEC
//!   names, the policy per call: what other frameworks (the Python package, `pdenet.torch`)
//!   call.
//! - [`config::Config`] and [`network::Layout`]: the config of SPEC section 4 and the
//!   parameters it names (section 8).
//! - [`train`]: the training loop behind `pdenet train`.
//!
//! ```
//! use pdenet::api::{Unit, UnitOptions};
//! use pdenet::config::StepType;
//! use pdenet::schedule::Policy;
//!
//! let unit = Unit::new(&UnitOptions::new(StepType::Hamiltonian, 4, 8, 0.1))?;
//! let x = vec![0.1f32; 4 * 3 * 3];
//! let y = unit.forward(&x, [1, 4, 3, 3], Policy::Reversible)?;
//! assert_eq!(y.len(), x.len());
//! # Ok::<(), pdenet::Error>(())
//! ```

pub mod alloc;
pub mod api;
pub mod backend;
pub mod bench;
pub mod config;
pub mod device;
pub mod error;
pub mod limits;
pub mod network;
pub mod operators;
pub mod params;
pub mod potential;
pub mod restore;
pub mod schedule;
pub mod solvers;
pub mod stability;
pub mod steps;
pub mod studies;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{Dims, HostTensor};

/// The crate's version (the Python package carries the same).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
