//! Shared test helpers: random cases, comparisons, and the backend-generic op checks.
//!
//! `backend_op_tests!(name, make)` expands to a module of `#[test]`s that run every check of
//! [`checks`] on the backend `make` (an `Option`), against the f64 [`Reference`]; `None`
//! prints `SKIP <reason>` and passes, so optional backends (CUDA) can use the same suite.
#![allow(dead_code)]

pub mod checks;

use pdenet::backend::Backend;
use pdenet::Dims;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Property cases per op.
pub const CASES: u32 = 32;
/// Norm-wise relative tolerance of f32 backends against the reference.
pub const TOL: f64 = 1e-5;

/// One random problem: an input shape, a second channel count and a data seed.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub d: Dims,
    pub cout: usize,
    pub seed: u64,
}

impl Case {
    pub fn rng(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed)
    }
}

/// Small shapes, batch 1 and one channel included, odd sizes.
pub fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=6,
        1usize..=7,
        1usize..=7,
        1usize..=6,
        any::<u64>(),
    )
        .prop_map(|(n, c, h, w, cout, seed)| Case {
            d: Dims::new(n, c, h, w),
            cout,
            seed,
        })
}

/// The direct convolution kernels' shapes: batch 1-2, 1-19 channels each way (remainders of
/// the register blocks of 8 and 4, odd counts for the bf16 pairs), rows 1-40 wide (one vector's
/// lanes split over rows, and a row over several vectors with a remainder).
pub fn wide_case() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=19,
        1usize..=9,
        1usize..=40,
        1usize..=19,
        any::<u64>(),
    )
        .prop_map(|(n, c, h, w, cout, seed)| Case {
            d: Dims::new(n, c, h, w),
            cout,
            seed,
        })
}

/// Uniform values in `[-scale, scale]`, rounded to f32 so that f32 backends see the same data.
pub fn rand_vec(rng: &mut impl Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len)
        .map(|_| (rng.random_range(-scale..=scale) as f32) as f64)
        .collect()
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `||fast - reference|| / max(||reference||, tiny)`.
pub fn rel_err(fast: &[f64], reference: &[f64]) -> f64 {
    let diff: Vec<f64> = fast.iter().zip(reference).map(|(a, b)| a - b).collect();
    norm(&diff) / norm(reference).max(1e-12)
}

/// Fails the case unless `fast` matches `reference` in length and to [`TOL`].
pub fn close(what: &str, fast: &[f64], reference: &[f64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.len(), reference.len(), "{}: lengths differ", what);
    let e = rel_err(fast, reference);
    prop_assert!(e <= TOL, "{}: relative error {:e} > {:e}", what, e, TOL);
    Ok(())
}

/// As [`close`], relative to `max(||reference||, scale)`: for outputs that cancel (sums of
/// terms of both signs, projections), whose rounding error scales with the terms, not the sum.
pub fn close_scaled(
    what: &str,
    fast: &[f64],
    reference: &[f64],
    scale: f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(fast.len(), reference.len(), "{}: lengths differ", what);
    let diff: Vec<f64> = fast.iter().zip(reference).map(|(a, b)| a - b).collect();
    let e = norm(&diff) / norm(reference).max(scale).max(1e-12);
    prop_assert!(e <= TOL, "{}: relative error {:e} > {:e}", what, e, TOL);
    Ok(())
}

/// Runs `check` on [`CASES`] random cases (deterministic seed, so failures reproduce).
pub fn run<B: Backend>(b: &B, check: fn(&B, &Case) -> Result<(), TestCaseError>) {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    if let Err(e) = runner.run(&case(), |c| check(b, &c)) {
        panic!("{e}");
    }
}

/// Expands to `mod $name { #[test] fn <op>() ... }` running every check of [`checks`] on the
/// backend built by `$make: Option<B>`; `None` prints `SKIP` and returns.
#[allow(unused_macros)] // not every test file instantiates it
macro_rules! backend_op_tests {
    ($name:ident, $make:expr) => {
        $crate::common::backend_op_tests!(@module $name, $make;
            lincomb, axpy, scaled_sq, sgd_step, adam_step,
            conv3x3, conv3x3_t, conv3x3_wgrad,
            conv1x1, conv1x1_t, conv1x1_wgrad,
            add_channel_bias, channel_sum,
            tvnorm, tvnorm_vjp,
            batchnorm_train, batchnorm_eval, batchnorm_vjp, batchnorm_update_running,
            activation, activation_vjp,
            avgpool2, avgpool2_vjp, global_mean, global_mean_vjp,
            split_channels, concat_channels,
            softmax_xent,
            quantize, quantize_roundtrip, fixed_update,
            step_full3x3, sym_full3x3_vjp, step_full3x3_vjp,
            shape_errors, deterministic_threads);
    };
    (@module $name:ident, $make:expr; $($op:ident),* $(,)?) => {
        mod $name {
            $(
                #[test]
                fn $op() {
                    match $make {
                        Some(b) => $crate::common::run(&b, $crate::common::checks::$op),
                        // `$make` reports why (`report_skip`: visible, and a failure under
                        // PDENET_REQUIRE_CUDA=1).
                        None => {}
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use backend_op_tests;
