//! The CPU backend's fused symmetric step and VJP, and its 3x3 convolutions, under each
//! convolution kernel set this CPU has (AVX-512, AVX2, im2col + GEMM), against the f64
//! reference. The choice is process-wide, so this file holds one test that selects the sets
//! one after another (no other test of this binary runs beside it).

mod common;

use common::{close, close_scaled, norm, rand_vec};
use pdenet::backend::cpu::kernels::{self, Isa};
use pdenet::backend::cpu::Cpu;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm};
use pdenet::Dims;
use proptest::test_runner::TestCaseError;
use rand::SeedableRng;

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn check(d: Dims, seed: u64, act: Activation, tv: bool) -> Result<(), TestCaseError> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (y, yp, g) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.1);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fyp, fg, fk, fs, fsh) = (f32s(&y), f32s(&yp), f32s(&g), f32s(&k), f32s(&s), f32s(&sh));
    let (fnorm, rnorm) = if tv {
        (Norm::Tv { s: &fs, b: &fsh }, Norm::Tv { s: &s, b: &sh })
    } else {
        (Norm::Shift { b: &fsh }, Norm::Shift { b: &sh })
    };
    let cpu = Cpu::new();
    let fast = cpu
        .step_full3x3(&[(2.0, &fy), (-1.0, &fyp)], 0.25, &fy, d, &fk, fnorm, act)
        .unwrap();
    let reff = Reference
        .step_full3x3(&[(2.0, &y), (-1.0, &yp)], 0.25, &y, d, &k, rnorm, act)
        .unwrap();
    close("step", &f64s(&fast), &reff)?;
    let alone = cpu
        .step_full3x3(&[(2.0, &fy), (-1.0, &fyp)], 0.25, &fy, d, &fk, fnorm, act)
        .unwrap();
    let fast = cpu.sym_full3x3_vjp(&fy, d, &fk, fnorm, act, &fg).unwrap();
    // The step and the VJP in one call: bit for bit the two ops under every kernel set.
    let (st, v) = cpu
        .step_full3x3_vjp(
            &[(2.0, &fy), (-1.0, &fyp)],
            0.25,
            &fy,
            d,
            &fk,
            fnorm,
            act,
            &fg,
        )
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    proptest::prop_assert_eq!(bits(&st), bits(&alone));
    proptest::prop_assert_eq!(bits(&v.dy), bits(&fast.dy));
    proptest::prop_assert_eq!(bits(&v.dk), bits(&fast.dk));
    proptest::prop_assert_eq!(bits(&v.dshift), bits(&fast.dshift));
    let reff = Reference
        .sym_full3x3_vjp(&y, d, &k, rnorm, act, &g)
        .unwrap();
    close("vjp dy", &f64s(&fast.dy), &reff.dy)?;
    close("vjp dk", &f64s(&fast.dk), &reff.dk)?;
    let scale = 0.1 * norm(&g);
    close_scaled("vjp dshift", &f64s(&fast.dshift), &reff.dshift, scale)?;
    if let (Some(a), Some(b)) = (fast.dscale, reff.dscale) {
        close_scaled("vjp dscale", &f64s(&a), &b, scale)?;
    }
    // The backend's plain convolutions follow the same choice.
    let z = cpu.conv(ConvSpec::full3x3(), &fy, d, &fk, d.c).unwrap();
    close(
        "conv3x3",
        &f64s(&z),
        &Reference.conv(ConvSpec::full3x3(), &y, d, &k, d.c).unwrap(),
    )?;
    let dk = cpu
        .conv_wgrad(ConvSpec::full3x3(), &fy, d, &fg, d.c)
        .unwrap();
    let reff = Reference
        .conv_wgrad(ConvSpec::full3x3(), &y, d, &g, d.c)
        .unwrap();
    close("conv3x3_wgrad", &f64s(&dk), &reff)
}

#[test]
fn fused_ops_match_the_reference_under_every_kernel_set() {
    let shapes = [
        // One channel, batch 1, odd sizes; block remainders; several row tiles (GEMM path).
        (Dims::new(1, 1, 5, 3), Activation::Tanh, true),
        (Dims::new(3, 5, 7, 9), Activation::Relu, false),
        (Dims::new(2, 11, 6, 17), Activation::Logcosh, true),
        (Dims::new(2, 24, 30, 28), Activation::Relu, true),
        (Dims::new(2, 64, 8, 8), Activation::Tanh, true),
    ];
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Gemm] {
        if kernels::select(isa).is_err() {
            eprintln!("SKIP {}: not on this CPU", isa.name());
            continue;
        }
        assert_eq!(kernels::selected(), isa);
        for (i, &(d, act, tv)) in shapes.iter().enumerate() {
            if let Err(e) = check(d, i as u64, act, tv) {
                panic!("{} {d:?}: {e}", isa.name());
            }
        }
    }
}
