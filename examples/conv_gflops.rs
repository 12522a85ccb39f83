//! GFLOP/s of the CPU backend's 3x3 convolutions against a raw `gemm` crate GEMM of the same
//! shape, at `ref-cifar` sizes. Rounds alternate the ops and the best time of each is kept,
//! which is robust to other load on the machine.
//!
//! `cargo run --release --example conv_gflops [rounds]`

use std::time::Instant;

use pdenet::backend::cpu::Cpu;
use pdenet::backend::{Activation, Backend, Norm};
use pdenet::Dims;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const BATCH: usize = 32;

/// `out_n = K [m, kk] x cols [kk, n]` per sample (one cache-resident `cols`), batch-parallel:
/// the GEMM rate the convolutions can at best reach.
fn raw_gemm(k: &[f32], cols: &[f32], out: &mut [f32], m: usize, kk: usize, n: usize) {
    out.par_chunks_mut(m * n).for_each(|o| unsafe {
        // SAFETY: `o` holds [m, n], `k` [m, kk] and `cols` [kk, n] row-major values.
        gemm::gemm(
            m,
            n,
            kk,
            o.as_mut_ptr(),
            1,
            n as isize,
            false,
            k.as_ptr(),
            1,
            kk as isize,
            cols.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    });
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let b = Cpu::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut data =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    println!("threads: {}", rayon::current_num_threads());
    for (c, hw) in [(32, 32), (64, 16), (112, 8)] {
        let d = Dims::new(BATCH, c, hw, hw);
        let (x, g, k) = (data(d.len()), data(d.len()), data(c * c * 9));
        let (s, sh) = (data(c), data(c));
        let cols = data(9 * c * d.hw());
        let mut out = vec![0.0f32; d.len()];
        let flops = (2 * BATCH * c * c * 9 * d.hw()) as f64;
        let names = [
            "raw_gemm",
            "conv3x3",
            "conv3x3_t",
            "conv3x3_wgrad",
            "step_full3x3",
            "sym_full3x3_vjp",
        ];
        let per_op = [1.0, 1.0, 1.0, 1.0, 2.0, 6.0];
        let mut best = [f64::INFINITY; 6];
        for _ in 0..rounds {
            for (i, t) in best.iter_mut().enumerate() {
                let t0 = Instant::now();
                match i {
                    0 => raw_gemm(&k, &cols, &mut out, c, 9 * c, d.hw()),
                    1 => drop(b.conv3x3(&x, d, &k, c).unwrap()),
                    2 => drop(b.conv3x3_t(&g, d, &k, c).unwrap()),
                    3 => drop(b.conv3x3_wgrad(&x, d, &g, c).unwrap()),
                    4 => {
                        let norm = Norm::Tv { s: &s, b: &sh };
                        drop(
                            b.step_full3x3(
                                &[(2.0, &x), (-1.0, &g)],
                                0.25,
                                &x,
                                d,
                                &k,
                                norm,
                                Activation::Relu,
                            )
                            .unwrap(),
                        )
                    }
                    _ => {
                        let norm = Norm::Tv { s: &s, b: &sh };
                        drop(
                            b.sym_full3x3_vjp(&x, d, &k, norm, Activation::Relu, &g)
                                .unwrap(),
                        )
                    }
                }
                *t = t.min(t0.elapsed().as_secs_f64());
            }
        }
        println!(
            "{c} channels at {hw}x{hw}, batch {BATCH} ({:.0} MFLOP per conv):",
            flops / 1e6
        );
        for i in 0..6 {
            let gf = per_op[i] * flops / best[i] / 1e9;
            let gemm_gf = flops / best[0] / 1e9;
            println!(
                "  {:<16} {:>8.2} ms {:>7.1} GFLOP/s {:>5.0}% of raw gemm",
                names[i],
                best[i] * 1e3,
                gf,
                100.0 * gf / gemm_gf
            );
        }
    }
}
