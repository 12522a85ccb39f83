//! The CPU's 3x3 convolution kernels, every instruction set this CPU has (AVX-512, AVX2 and
//! the portable im2col + GEMM path), against the f64 reference: the small shapes of the op
//! tests (batch 1, one channel, odd sizes), shapes whose channels are not a multiple of the
//! register blocks, row widths of 1 to 40 and ref-cifar-like widths; and bit-identical
//! results whatever the thread count.

mod common;

use common::{close, rand_vec, wide_case, Case};
use pdenet::backend::cpu::kernels::{self, Isa};
use pdenet::backend::reference::Reference;
use pdenet::backend::{Backend, ConvSpec};
use pdenet::Dims;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};

const ISAS: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Gemm];

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The instruction sets this CPU runs (the portable one always); the others are reported.
fn isas() -> Vec<Isa> {
    ISAS.into_iter()
        .filter(|i| {
            let ok = i.available();
            if !ok {
                eprintln!("SKIP {}: not on this CPU", i.name());
            }
            ok
        })
        .collect()
}

/// Forward, adjoint and weight gradient of `isa` on one case against the reference.
fn check(isa: Isa, c: &Case) -> Result<(), TestCaseError> {
    let (d, cout) = (c.d, c.cout);
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, d.len(), 1.0);
    let k = rand_vec(&mut rng, cout * d.c * 9, 1.0);
    let dz = rand_vec(&mut rng, d.with_c(cout).len(), 1.0);
    let kt = rand_vec(&mut rng, d.c * cout * 9, 1.0);
    let name = |op: &str| format!("{} {op} {d:?} cout {cout}", isa.name());
    let fast = kernels::conv3x3(isa, &f32s(&x), d, &f32s(&k), cout).unwrap();
    let reff = Reference
        .conv(ConvSpec::full3x3(), &x, d, &k, cout)
        .unwrap();
    close(&name("conv3x3"), &f64s(&fast), &reff)?;
    // The adjoint reads x as the cotangent of a conv cout -> d.c.
    let fast = kernels::conv3x3_t(isa, &f32s(&x), d, &f32s(&kt), cout).unwrap();
    let reff = Reference
        .conv_t(ConvSpec::full3x3(), &x, d, &kt, cout)
        .unwrap();
    close(&name("conv3x3_t"), &f64s(&fast), &reff)?;
    let fast = kernels::conv3x3_wgrad(isa, &f32s(&x), d, &f32s(&dz), cout).unwrap();
    let reff = Reference
        .conv_wgrad(ConvSpec::full3x3(), &x, d, &dz, cout)
        .unwrap();
    close(&name("conv3x3_wgrad"), &f64s(&fast), &reff)
}

proptest! {
    #![proptest_config(Config { cases: 24, failure_persistence: None, ..Config::default() })]

    /// The op tests' small shapes (batch 1, one channel, odd sizes).
    #[test]
    fn kernels_match_the_reference_on_small_shapes(c in common::case()) {
        for isa in isas() {
            check(isa, &c)?;
        }
    }

    #[test]
    fn kernels_match_the_reference_on_wide_shapes(c in wide_case()) {
        for isa in isas() {
            check(isa, &c)?;
        }
    }
}

/// ref-cifar's widths and images (32 channels at 32x32, 64 at 16x16, 112 at 8x8), batch 2.
#[test]
fn kernels_match_the_reference_at_ref_cifar_shapes() {
    for (c, hw) in [(32, 32), (64, 16), (112, 8)] {
        let case = Case {
            d: Dims::new(2, c, hw, hw),
            cout: c,
            seed: c as u64,
        };
        for isa in isas() {
            check(isa, &case).unwrap();
        }
    }
}

/// A CPU lacking an instruction set gets an error naming it, never a fault; wrong lengths are
/// refused too.
#[test]
fn missing_features_and_bad_lengths_are_errors() {
    let d = Dims::new(1, 2, 3, 3);
    let (x, k) = (vec![0.5f32; d.len()], vec![0.1f32; 2 * 2 * 9]);
    for isa in ISAS {
        let r = kernels::conv3x3(isa, &x, d, &k, 2);
        match isa.available() {
            true => assert!(r.is_ok()),
            false => assert!(r.unwrap_err().to_string().contains(isa.name())),
        }
        if isa.available() {
            assert!(kernels::conv3x3(isa, &x[1..], d, &k, 2).is_err());
            assert!(kernels::conv3x3_wgrad(isa, &x, d, &k, 2).is_err());
        }
    }
}

/// Bit-identical under one, two and three threads (batch 5: uneven reduction ranges).
#[test]
fn kernels_do_not_depend_on_the_thread_count() {
    let d = Dims::new(5, 11, 9, 13);
    let cout = 10;
    let mut rng = Case { d, cout, seed: 3 }.rng();
    let x = f32s(&rand_vec(&mut rng, d.len(), 1.0));
    let k = f32s(&rand_vec(&mut rng, cout * d.c * 9, 1.0));
    let dz = f32s(&rand_vec(&mut rng, d.with_c(cout).len(), 1.0));
    for isa in isas() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut all = kernels::conv3x3(isa, &x, d, &k, cout).unwrap();
                all.extend(kernels::conv3x3_t(isa, &dz, d.with_c(cout), &k, d.c).unwrap());
                all.extend(kernels::conv3x3_wgrad(isa, &x, d, &dz, cout).unwrap());
                all.into_iter().map(f32::to_bits).collect::<Vec<_>>()
            })
        };
        let one = run(1);
        assert_eq!(one, run(2), "{}", isa.name());
        assert_eq!(one, run(3), "{}", isa.name());
    }
}
