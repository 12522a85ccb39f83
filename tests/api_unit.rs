//! The library API's `Unit`: every memory policy gives the gradients of `store` (the Python
//! package's `test_unit_policies_agree_with_store` runs the same case through the binding).

use pdenet::api::{Unit, UnitOptions};
use pdenet::config::StepType;
use pdenet::schedule::Policy;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            let mut u = [0f64; 2];
            for v in &mut u {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *v = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            }
            ((-2.0 * u[0].ln()).sqrt() * (std::f64::consts::TAU * u[1]).cos()) as f32
        })
        .collect()
}

#[test]
fn unit_policies_agree_with_store_for_every_step_type() {
    for layer in StepType::BASIC {
        let mut opts = UnitOptions::new(layer, 8, 6, 0.5);
        opts.seed = 3;
        let u = Unit::new(&opts).unwrap();
        let shape = [2, 8, 5, 5];
        let x = normal(2 * 8 * 25, 2);
        let g = vec![1f32; x.len()];
        let (ref_x, ref_p) = u.backward(&x, shape, &g, Policy::Store).unwrap();
        for policy in [Policy::Reversible, Policy::Exact] {
            let (got_x, got_p) = u.backward(&x, shape, &g, policy).unwrap();
            let tol = if policy == Policy::Exact { 1e-4 } else { 1e-5 };
            let e = rel_err(&got_x, &ref_x);
            assert!(
                e < tol,
                "{layer:?} {policy:?}: input gradient rel err {e:.3e}"
            );
            for ((n, a), (_, b)) in got_p.iter().zip(&ref_p) {
                let e = rel_err(a, b);
                assert!(e < tol, "{layer:?} {policy:?}: {n} rel err {e:.3e}");
            }
        }
    }
}
