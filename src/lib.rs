//! pdenet: deep networks as time discretisations of PDEs, on the CPU and on CUDA GPUs.

pub mod alloc;
pub mod backend;
pub mod bench;
pub mod config;
pub mod device;
pub mod error;
pub mod layers;
pub mod limits;
pub mod network;
pub mod operators;
pub mod params;
pub mod potential;
pub mod restore;
pub mod schedule;
pub mod solvers;
pub mod stability;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use tensor::{Dims, HostTensor};
