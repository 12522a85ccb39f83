//! Op throughput of the fast CPU backend at `ref-cifar` sizes (batch 32; 32 channels at 32x32,
//! 64 at 16x16, 112 at 8x8), with a raw `gemm` crate GEMM of the same flops for reference.
//! Convolutions report FLOP/s as criterion's elements/s; the rest report values/s.
//!
//! `cargo bench --bench ops` (filter with e.g. `-- conv3x3/32`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pdenet::backend::cpu::Cpu;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm};
use pdenet::Dims;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const BATCH: usize = 32;
const SIZES: [(usize, usize); 3] = [(32, 32), (64, 16), (112, 8)];

fn data(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Flops of a 3x3 convolution c -> c on `d` (one multiply-add = 2 flops).
fn conv_flops(d: Dims) -> u64 {
    (2 * d.n * d.c * d.c * 9 * d.hw()) as u64
}

fn convolutions(cr: &mut Criterion) {
    let b = Cpu::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for (c, hw) in SIZES {
        let d = Dims::new(BATCH, c, hw, hw);
        let x = data(&mut rng, d.len());
        let g = data(&mut rng, d.len());
        let k = data(&mut rng, c * c * 9);
        let k1 = data(&mut rng, c * c);
        let (s, sh) = (data(&mut rng, c), data(&mut rng, c));
        let mut grp = cr.benchmark_group(format!("conv/{c}x{hw}"));
        grp.throughput(Throughput::Elements(conv_flops(d)));
        grp.bench_function("conv3x3", |bn| {
            bn.iter(|| {
                b.conv(ConvSpec::full3x3(), black_box(&x), d, &k, c)
                    .unwrap()
            })
        });
        grp.bench_function("conv3x3_t", |bn| {
            bn.iter(|| {
                b.conv_t(ConvSpec::full3x3(), black_box(&g), d, &k, c)
                    .unwrap()
            })
        });
        grp.bench_function("conv3x3_wgrad", |bn| {
            bn.iter(|| {
                b.conv_wgrad(ConvSpec::full3x3(), black_box(&x), d, &g, c)
                    .unwrap()
            })
        });
        // Same flops as one conv: a GEMM [c, 9c] x [9c, hw] per sample, batch-parallel.
        let cols = data(&mut rng, BATCH * 9 * c * d.hw());
        grp.bench_function("raw_gemm", |bn| {
            bn.iter(|| raw_gemm(&k, black_box(&cols), c, 9 * c, d.hw()))
        });
        // Two convs, two transposed, two weight gradients (the symmetric layer's VJP).
        grp.throughput(Throughput::Elements(6 * conv_flops(d)));
        grp.bench_function("sym_full3x3_vjp", |bn| {
            bn.iter(|| {
                let norm = Norm::Tv { s: &s, b: &sh };
                b.sym_full3x3_vjp(black_box(&x), d, &k, norm, Activation::Relu, &g)
                    .unwrap()
            })
        });
        grp.throughput(Throughput::Elements(2 * conv_flops(d)));
        grp.bench_function("step_full3x3", |bn| {
            bn.iter(|| {
                let norm = Norm::Tv { s: &s, b: &sh };
                let terms = [(2.0, &x), (-1.0, &g)];
                b.step_full3x3(&terms, 0.25, black_box(&x), d, &k, norm, Activation::Relu)
                    .unwrap()
            })
        });
        grp.throughput(Throughput::Elements((2 * d.len() * c) as u64));
        grp.bench_function("conv1x1", |bn| {
            bn.iter(|| {
                b.conv(ConvSpec::full1x1(), black_box(&x), d, &k1, c)
                    .unwrap()
            })
        });
        grp.bench_function("conv1x1_t", |bn| {
            bn.iter(|| {
                b.conv_t(ConvSpec::full1x1(), black_box(&g), d, &k1, c)
                    .unwrap()
            })
        });
        grp.bench_function("conv1x1_wgrad", |bn| {
            bn.iter(|| {
                b.conv_wgrad(ConvSpec::full1x1(), black_box(&x), d, &g, c)
                    .unwrap()
            })
        });
        grp.finish();
    }
}

/// `out_n = K [m, k] x cols_n [k, n]` for each sample with the `gemm` crate, as the backend
/// parallelises it.
fn raw_gemm(k: &[f32], cols: &[f32], m: usize, kk: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; BATCH * m * n];
    out.par_chunks_mut(m * n)
        .zip(cols.par_chunks(kk * n))
        .for_each(|(o, c)| unsafe {
            // SAFETY: the slices hold exactly [m, n], [m, kk] and [kk, n] row-major values.
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
                c.as_ptr(),
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
    out
}

fn pointwise(cr: &mut Criterion) {
    let b = Cpu::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (c, hw) in SIZES {
        let d = Dims::new(BATCH, c, hw, hw);
        let x = data(&mut rng, d.len());
        let g = data(&mut rng, d.len());
        let (s, sh) = (data(&mut rng, c), data(&mut rng, c));
        let mut grp = cr.benchmark_group(format!("pointwise/{c}x{hw}"));
        grp.throughput(Throughput::Elements(d.len() as u64));
        grp.bench_function("lincomb3", |bn| {
            bn.iter(|| b.lincomb(&[(2.0, &x), (-1.0, &g), (0.25, &x)]).unwrap())
        });
        grp.bench_function("axpy", |bn| {
            let mut y = g.clone();
            bn.iter(|| b.axpy(0.5, black_box(&x), &mut y).unwrap())
        });
        grp.bench_function("add_channel_bias", |bn| {
            bn.iter(|| b.add_channel_bias(black_box(&x), d, &sh).unwrap())
        });
        grp.bench_function("channel_sum", |bn| {
            bn.iter(|| b.channel_sum(black_box(&x), d).unwrap())
        });
        grp.bench_function("tvnorm", |bn| {
            bn.iter(|| b.tvnorm(black_box(&x), d, &s, &sh).unwrap())
        });
        grp.bench_function("tvnorm_vjp", |bn| {
            bn.iter(|| b.tvnorm_vjp(black_box(&x), d, &s, &g).unwrap())
        });
        let (_, stats) = b.batchnorm_train(&x, d, &s, &sh).unwrap();
        grp.bench_function("batchnorm_train", |bn| {
            bn.iter(|| b.batchnorm_train(black_box(&x), d, &s, &sh).unwrap())
        });
        grp.bench_function("batchnorm_vjp", |bn| {
            bn.iter(|| b.batchnorm_vjp(black_box(&x), d, &s, &stats, &g).unwrap())
        });
        grp.bench_function("relu", |bn| {
            bn.iter(|| b.activation(Activation::Relu, black_box(&x)).unwrap())
        });
        grp.bench_function("relu_vjp", |bn| {
            bn.iter(|| {
                b.activation_vjp(Activation::Relu, black_box(&x), &g)
                    .unwrap()
            })
        });
        grp.bench_function("avgpool2", |bn| {
            bn.iter(|| b.avgpool2(black_box(&x), d).unwrap())
        });
        let pooled = data(&mut rng, d.pooled().len());
        grp.bench_function("avgpool2_vjp", |bn| {
            bn.iter(|| b.avgpool2_vjp(black_box(&pooled), d).unwrap())
        });
        grp.bench_function("global_mean", |bn| {
            bn.iter(|| b.global_mean(black_box(&x), d).unwrap())
        });
        let gm = data(&mut rng, d.n * d.c);
        grp.bench_function("global_mean_vjp", |bn| {
            bn.iter(|| b.global_mean_vjp(black_box(&gm), d).unwrap())
        });
        grp.bench_function("split_concat", |bn| {
            bn.iter(|| {
                let (a, z) = b.split_channels(black_box(&x), d, c / 2).unwrap();
                b.concat_channels(&a, &z, d, c / 2).unwrap()
            })
        });
        grp.bench_function("quantize_fixed_update", |bn| {
            let q = b.quantize(&x, 16).unwrap();
            bn.iter(|| {
                let q2 = b.quantize(black_box(&g), 16).unwrap();
                b.fixed_update(&[(2, &q), (-1, &q2)], 16384.0, &x).unwrap()
            })
        });
        grp.finish();
    }
    let logits = data(&mut rng, BATCH * 10);
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    cr.bench_function("softmax_xent/32x10", |bn| {
        bn.iter(|| {
            b.softmax_xent(black_box(&logits), BATCH, 10, &labels)
                .unwrap()
        })
    });
}

/// The operators of SPEC section 7: lean's stencil, mgic's grouped convolutions (groups of 16
/// channels), the IMEX diffusion solve and the Haar transform. Values per second.
fn structured(cr: &mut Criterion) {
    let b = Cpu::new();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (c, hw) in SIZES {
        let d = Dims::new(BATCH, c, hw, hw);
        let x = data(&mut rng, d.len());
        let g = data(&mut rng, d.len());
        let dw = data(&mut rng, c * 5);
        let groups = c / 16;
        let kg = data(&mut rng, c * 16 * 9);
        let diff = data(&mut rng, c);
        let mut grp = cr.benchmark_group(format!("structured/{c}x{hw}"));
        grp.throughput(Throughput::Elements(d.len() as u64));
        grp.bench_function("stencil5", |bn| {
            bn.iter(|| b.stencil5(black_box(&x), d, &dw).unwrap())
        });
        grp.bench_function("stencil5_wgrad", |bn| {
            bn.iter(|| b.stencil5_wgrad(black_box(&x), d, &g).unwrap())
        });
        grp.bench_function("grouped_conv3x3", |bn| {
            bn.iter(|| {
                b.conv(ConvSpec::grouped3x3(groups), black_box(&x), d, &kg, c)
                    .unwrap()
            })
        });
        grp.bench_function("grouped_conv3x3_wgrad", |bn| {
            bn.iter(|| {
                b.conv_wgrad(ConvSpec::grouped3x3(groups), black_box(&x), d, &g, c)
                    .unwrap()
            })
        });
        grp.bench_function("diffusion_solve", |bn| {
            bn.iter(|| b.diffusion_solve(black_box(&x), d, &diff, 0.5).unwrap())
        });
        // The host fallback it replaced (f64 rustfft, one plane at a time), for the ratio.
        let (x64, diff64): (Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| f64::from(v)).collect(),
            diff.iter().map(|&v| f64::from(v)).collect(),
        );
        grp.bench_function("diffusion_solve_host_f64", |bn| {
            bn.iter(|| {
                pdenet::backend::reference::structured::diffusion_solve_fft(
                    black_box(&x64),
                    d,
                    &diff64,
                    0.5,
                )
                .unwrap()
            })
        });
        grp.bench_function("haar", |bn| bn.iter(|| b.haar(black_box(&x), d).unwrap()));
        grp.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = convolutions, pointwise, structured
}
criterion_main!(benches);
