//! The CPU's fused symmetric step and VJP against the composition of reference ops on shapes
//! large enough to be split into several row tiles (the small shapes of `tests/ops.rs` fit in
//! one), and bit-identical whatever the thread count.

mod common;

use common::{close, close_scaled, norm, rand_vec};
use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, Norm};
use pdenet::Dims;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use rand::SeedableRng;

const ACTS: [Activation; 3] = [Activation::Relu, Activation::Tanh, Activation::Logcosh];

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Batch 1-2, 24-32 channels, 26-34 x 20-32 pixels: two or more tiles in the step and the VJP.
fn big_case() -> impl Strategy<Value = (Dims, u64)> {
    (
        1usize..=2,
        24usize..=32,
        26usize..=34,
        20usize..=32,
        any::<u64>(),
    )
        .prop_map(|(n, c, h, w, seed)| (Dims::new(n, c, h, w), seed))
}

fn check(d: Dims, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (y, yp, g) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.1);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fyp, fg, fk, fs, fsh) = (f32s(&y), f32s(&yp), f32s(&g), f32s(&k), f32s(&s), f32s(&sh));
    let cpu = Cpu::new();
    for act in ACTS {
        for tv in [true, false] {
            let (fnorm, rnorm) = if tv {
                (Norm::Tv { s: &fs, b: &fsh }, Norm::Tv { s: &s, b: &sh })
            } else {
                (Norm::Shift { b: &fsh }, Norm::Shift { b: &sh })
            };
            // The leapfrog step, and f alone (no terms).
            let fast = cpu
                .step_full3x3(&[(2.0, &fy), (-1.0, &fyp)], 0.25, &fy, d, &fk, fnorm, act)
                .unwrap();
            let reff = Reference
                .step_full3x3(&[(2.0, &y), (-1.0, &yp)], 0.25, &y, d, &k, rnorm, act)
                .unwrap();
            close("step", &f64s(&fast), &reff)?;
            let fast = cpu.step_full3x3(&[], 1.0, &fy, d, &fk, fnorm, act).unwrap();
            let reff = Reference
                .step_full3x3(&[], 1.0, &y, d, &k, rnorm, act)
                .unwrap();
            close("f only", &f64s(&fast), &reff)?;
            let fast = cpu.sym_full3x3_vjp(&fy, d, &fk, fnorm, act, &fg).unwrap();
            let reff = Reference
                .sym_full3x3_vjp(&y, d, &k, rnorm, act, &g)
                .unwrap();
            close("vjp dy", &f64s(&fast.dy), &reff.dy)?;
            close("vjp dk", &f64s(&fast.dk), &reff.dk)?;
            let scale = 0.1 * norm(&g);
            close_scaled("vjp dshift", &f64s(&fast.dshift), &reff.dshift, scale)?;
            prop_assert_eq!(fast.dscale.is_some(), tv);
            if let (Some(a), Some(b)) = (&fast.dscale, reff.dscale) {
                close_scaled("vjp dscale", &f64s(a), &b, scale)?;
            }
            // Both at once (one pass of K y on the tiles): bit for bit the two ops.
            for (terms, coef) in [(vec![(2.0, &fy), (-1.0, &fyp)], 0.25), (vec![], 1.0)] {
                let alone = cpu
                    .step_full3x3(&terms, coef, &fy, d, &fk, fnorm, act)
                    .unwrap();
                let (st, v) = cpu
                    .step_full3x3_vjp(&terms, coef, &fy, d, &fk, fnorm, act, &fg)
                    .unwrap();
                prop_assert!(same_bits(&st, &alone), "step_full3x3_vjp step");
                prop_assert!(same_bits(&v.dy, &fast.dy), "step_full3x3_vjp dy");
                prop_assert!(same_bits(&v.dk, &fast.dk), "step_full3x3_vjp dk");
                prop_assert!(
                    same_bits(&v.dshift, &fast.dshift),
                    "step_full3x3_vjp dshift"
                );
                prop_assert_eq!(
                    v.dscale.as_deref().map(bits),
                    fast.dscale.as_deref().map(bits)
                );
            }
        }
    }
    Ok(())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    bits(a) == bits(b)
}

proptest! {
    #![proptest_config(Config { cases: 4, failure_persistence: None, ..Config::default() })]

    #[test]
    fn fused_ops_match_the_reference_on_tiled_shapes((d, seed) in big_case()) {
        check(d, seed)?;
    }
}

/// Bit-identical step and VJP under one, two and three threads (batch 5: uneven ranges).
#[test]
fn fused_ops_do_not_depend_on_the_thread_count() {
    let d = Dims::new(5, 24, 30, 28);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let y = f32s(&rand_vec(&mut rng, d.len(), 1.0));
    let g = f32s(&rand_vec(&mut rng, d.len(), 1.0));
    let k = f32s(&rand_vec(&mut rng, d.c * d.c * 9, 0.1));
    let s = f32s(&rand_vec(&mut rng, d.c, 1.0));
    let b = f32s(&rand_vec(&mut rng, d.c, 0.5));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let norm = Norm::Tv { s: &s, b: &b };
            let cpu = Cpu::new();
            let st = cpu
                .step_full3x3(
                    &[(2.0, &y), (-1.0, &g)],
                    0.25,
                    &y,
                    d,
                    &k,
                    norm,
                    Activation::Tanh,
                )
                .unwrap();
            let v = cpu
                .sym_full3x3_vjp(&y, d, &k, norm, Activation::Relu, &g)
                .unwrap();
            let (st2, v2) = cpu
                .step_full3x3_vjp(
                    &[(2.0, &y), (-1.0, &g)],
                    0.25,
                    &y,
                    d,
                    &k,
                    norm,
                    Activation::Relu,
                    &g,
                )
                .unwrap();
            let mut all = st;
            for t in [v.dy, v.dk, v.dscale.unwrap(), v.dshift] {
                all.extend(t);
            }
            for t in [st2, v2.dy, v2.dk, v2.dscale.unwrap(), v2.dshift] {
                all.extend(t);
            }
            all.into_iter().map(f32::to_bits).collect::<Vec<_>>()
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}
