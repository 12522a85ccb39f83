// Prints kernels' pdenet_constants.cuh (as build.rs writes it) for the scripts that compile the
// kernels without cargo: rustc --edition 2021 -o gen .ci/kernel-constants.rs && ./gen > DIR/...
#![allow(dead_code)]
include!("../src/backend/kernel_constants.rs");

fn main() {
    print!("{}", cuda_header());
}
