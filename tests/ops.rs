//! Every op and VJP of the fast backends against the f64 reference on random small shapes.

mod common;

common::backend_op_tests!(cpu, Some(pdenet::backend::cpu::Cpu::new()));
common::backend_op_tests!(
    cuda,
    pdenet::backend::cuda::Cuda::try_new()
        .map_err(pdenet::backend::cuda::report_skip)
        .ok()
);
