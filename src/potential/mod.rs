//! Potential networks (SPEC section 11; OT-Flow, Onken et al. 2021) with exact gradients and
//! Laplacians, their weight VJPs, and the Deep Ritz / PINN solvers of SPEC section 12.

pub mod batch;
pub mod block;
pub mod config;
pub mod exact;
pub mod net;
pub mod real;

pub use batch::{eval_batch, loss_and_grad, BatchOut};
pub use config::{PotentialConfig, PotentialShape};
pub use exact::{
    eval_sample, vjp_sample, vjp_sample_with_input, Cotangent, Order, SampleOut, Workspace,
};
pub use net::PotentialNet;
pub use real::Real;
pub mod problems;
pub mod solve;
pub use problems::Problem;
pub use solve::{default_width, solve, Method, SolveOptions, SolveReport};
pub mod ot;
pub use ot::{train_ot, GaussianTarget, OtLoss, OtOptions, OtReport, OtTerms};
