//! Op throughput of the CUDA backend at `ref-cifar` sizes (batch 256; 32 channels at 32x32,
//! 64 at 16x16, 112 at 8x8), timed with CUDA events (criterion's `iter_custom`), for every
//! convolution precision (f32, tf32, bf16, f16 tensor cores). Convolutions report FLOP/s as
//! criterion's elements/s; the rest report values/s.
//!
//! `cargo bench --bench cuda_ops` (filter with e.g. `-- bf16/conv/32x32`). Without a usable GPU
//! it prints `SKIP` and the reason and exits 0. `scripts/gpu-check.sh` packs it for the GPU
//! machine.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use cudarc::driver::sys::CUevent_flags;
use pdenet::backend::cuda::Cuda;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm, Precision};
use pdenet::bench::random_values;
use pdenet::Dims;

const BATCH: usize = 256;
const SIZES: [(usize, usize); 3] = [(32, 32), (64, 16), (112, 8)];
/// mgic's grouped convolutions at these widths (SPEC section 7: groups of 16 channels).
const GROUP_WIDTH: usize = 16;

fn main() {
    if !pdenet::backend::cuda_is_usable() {
        println!("SKIP cuda_ops: no usable CUDA device (driver library or device absent)");
        return;
    }
    let mut cr = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    for p in Precision::ALL {
        let cuda = Cuda::try_new_with(p).unwrap_or_else(|e| fail(e));
        convolutions(&mut cr, &cuda);
        if p == Precision::F32 {
            pointwise(&mut cr, &cuda);
        }
    }
    cr.final_summary();
}

/// Reports a CUDA failure and stops (a bench has no caller to hand the error to).
fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("cuda_ops: {e}");
    std::process::exit(1)
}

/// Device time of `iters` calls of `f`, between two events on the backend's stream.
fn device_time(cuda: &Cuda, iters: u64, mut f: impl FnMut()) -> Duration {
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = cuda
        .context()
        .new_event(flags)
        .unwrap_or_else(|e| fail(format!("{e:?}")));
    let end = cuda
        .context()
        .new_event(flags)
        .unwrap_or_else(|e| fail(format!("{e:?}")));
    start
        .record(cuda.stream())
        .unwrap_or_else(|e| fail(format!("{e:?}")));
    for _ in 0..iters {
        f();
    }
    end.record(cuda.stream())
        .unwrap_or_else(|e| fail(format!("{e:?}")));
    end.synchronize().unwrap_or_else(|e| fail(format!("{e:?}")));
    let ms = start
        .elapsed_ms(&end)
        .unwrap_or_else(|e| fail(format!("{e:?}")));
    Duration::from_secs_f64(f64::from(ms) / 1e3)
}

/// Values uniform in [-1, 1) scaled by `scale`, on the device.
fn data(cuda: &Cuda, n: usize, seed: u64, scale: f32) -> <Cuda as Backend>::Buf {
    let v: Vec<f32> = random_values(n, seed).iter().map(|v| v * scale).collect();
    cuda.upload_f32(&v).unwrap_or_else(|e| fail(e))
}

/// Flops of a 3x3 convolution c -> c on `d` (one multiply-add = 2 flops).
fn conv_flops(d: Dims) -> u64 {
    (2 * d.n * d.c * d.c * 9 * d.hw()) as u64
}

/// Runs `op` under criterion with CUDA-event timing; a failing op stops the bench.
macro_rules! bench_op {
    ($grp:expr, $cuda:expr, $name:expr, $op:expr) => {
        $grp.bench_function($name, |bn| {
            bn.iter_custom(|iters| {
                device_time($cuda, iters, || {
                    $op.unwrap_or_else(|e| fail(e));
                })
            })
        });
    };
}

fn convolutions(cr: &mut Criterion, cuda: &Cuda) {
    let prec = cuda.precision().name();
    for (c, hw) in SIZES {
        let d = Dims::new(BATCH, c, hw, hw);
        let x = data(cuda, d.len(), 1, 1.0);
        let g = data(cuda, d.len(), 2, 1.0);
        let k = data(cuda, c * c * 9, 3, 1.0 / (9.0 * c as f32).sqrt());
        let k1 = data(cuda, c * c, 4, 1.0 / (c as f32).sqrt());
        let groups = c / GROUP_WIDTH;
        let kg = data(
            cuda,
            c * GROUP_WIDTH * 9,
            5,
            1.0 / (9.0 * GROUP_WIDTH as f32).sqrt(),
        );
        let s = cuda.upload_f32(&vec![1.0; c]).unwrap_or_else(|e| fail(e));
        let sh = cuda.upload_f32(&vec![0.1; c]).unwrap_or_else(|e| fail(e));
        let norm = || Norm::Tv { s: &s, b: &sh };
        let mut grp = cr.benchmark_group(format!("{prec}/conv/{c}x{hw}"));
        grp.throughput(Throughput::Elements(conv_flops(d)));
        bench_op!(
            grp,
            cuda,
            "conv3x3",
            cuda.conv(ConvSpec::full3x3(), &x, d, &k, c)
        );
        bench_op!(
            grp,
            cuda,
            "conv3x3_t",
            cuda.conv_t(ConvSpec::full3x3(), &g, d, &k, c)
        );
        bench_op!(
            grp,
            cuda,
            "conv3x3_wgrad",
            cuda.conv_wgrad(ConvSpec::full3x3(), &x, d, &g, c)
        );
        // Two convolutions: K Y, then K^T sigma(N(.)) with the integrator update (leapfrog).
        grp.throughput(Throughput::Elements(2 * conv_flops(d)));
        bench_op!(
            grp,
            cuda,
            "step_full3x3",
            cuda.step_full3x3(
                &[(2.0, &x), (-1.0, &g)],
                0.25,
                &x,
                d,
                &k,
                norm(),
                Activation::Relu
            )
        );
        // The symmetric layer's VJP: two convolutions, two transposed, two weight gradients.
        grp.throughput(Throughput::Elements(6 * conv_flops(d)));
        bench_op!(
            grp,
            cuda,
            "sym_full3x3_vjp",
            cuda.sym_full3x3_vjp(&x, d, &k, norm(), Activation::Relu, &g)
        );
        grp.throughput(Throughput::Elements((2 * d.len() * c) as u64));
        bench_op!(
            grp,
            cuda,
            "conv1x1",
            cuda.conv(ConvSpec::full1x1(), &x, d, &k1, c)
        );
        bench_op!(
            grp,
            cuda,
            "conv1x1_t",
            cuda.conv_t(ConvSpec::full1x1(), &g, d, &k1, c)
        );
        bench_op!(
            grp,
            cuda,
            "conv1x1_wgrad",
            cuda.conv_wgrad(ConvSpec::full1x1(), &x, d, &g, c)
        );
        grp.throughput(Throughput::Elements(conv_flops(d) / groups as u64));
        bench_op!(
            grp,
            cuda,
            "grouped_conv3x3",
            cuda.conv(ConvSpec::grouped3x3(groups), &x, d, &kg, c)
        );
        bench_op!(
            grp,
            cuda,
            "grouped_conv3x3_t",
            cuda.conv_t(ConvSpec::grouped3x3(groups), &g, d, &kg, c)
        );
        bench_op!(
            grp,
            cuda,
            "grouped_conv3x3_wgrad",
            cuda.conv_wgrad(ConvSpec::grouped3x3(groups), &x, d, &g, c)
        );
        grp.finish();
    }
}

/// Memory-bound ops (precision-independent): values per second.
fn pointwise(cr: &mut Criterion, cuda: &Cuda) {
    for (c, hw) in SIZES {
        let d = Dims::new(BATCH, c, hw, hw);
        let x = data(cuda, d.len(), 6, 1.0);
        let g = data(cuda, d.len(), 7, 1.0);
        let s = cuda.upload_f32(&vec![1.0; c]).unwrap_or_else(|e| fail(e));
        let sh = cuda.upload_f32(&vec![0.1; c]).unwrap_or_else(|e| fail(e));
        let dw = data(cuda, c * 5, 8, 0.5);
        let mut grp = cr.benchmark_group(format!("f32/pointwise/{c}x{hw}"));
        grp.throughput(Throughput::Elements(d.len() as u64));
        bench_op!(grp, cuda, "tvnorm", cuda.tvnorm(&x, d, &s, &sh));
        bench_op!(grp, cuda, "tvnorm_vjp", cuda.tvnorm_vjp(&x, d, &s, &g));
        bench_op!(grp, cuda, "relu", cuda.activation(Activation::Relu, &x));
        bench_op!(
            grp,
            cuda,
            "relu_vjp",
            cuda.activation_vjp(Activation::Relu, &x, &g)
        );
        bench_op!(
            grp,
            cuda,
            "lincomb3",
            cuda.lincomb(&[(2.0, &x), (-1.0, &g), (0.5, &x)])
        );
        bench_op!(grp, cuda, "stencil5", cuda.stencil5(&x, d, &dw));
        bench_op!(grp, cuda, "stencil5_t", cuda.stencil5_t(&g, d, &dw));
        bench_op!(grp, cuda, "stencil5_wgrad", cuda.stencil5_wgrad(&x, d, &g));
        bench_op!(grp, cuda, "haar", cuda.haar(&x, d));
        let diff = data(cuda, c, 9, 1.0);
        bench_op!(
            grp,
            cuda,
            "diffusion_solve",
            cuda.diffusion_solve(&x, d, &diff, 0.5)
        );
        bench_op!(
            grp,
            cuda,
            "diffusion_solve_vjp",
            cuda.diffusion_solve_vjp(&x, d, &diff, 0.5, &g)
        );
        let (_, stats) = cuda
            .batchnorm_train(&x, d, &s, &sh)
            .unwrap_or_else(|e| fail(e));
        bench_op!(
            grp,
            cuda,
            "batchnorm_train",
            cuda.batchnorm_train(&x, d, &s, &sh)
        );
        bench_op!(
            grp,
            cuda,
            "batchnorm_vjp",
            cuda.batchnorm_vjp(&x, d, &s, &stats, &g)
        );
        bench_op!(grp, cuda, "avgpool2", cuda.avgpool2(&x, d));
        bench_op!(grp, cuda, "global_mean", cuda.global_mean(&x, d));
        bench_op!(grp, cuda, "quantize", cuda.quantize(&x, 16));
        grp.finish();
    }
    let logits = data(cuda, BATCH * 10, 10, 1.0);
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let mut grp = cr.benchmark_group("f32/loss");
    grp.throughput(Throughput::Elements((BATCH * 10) as u64));
    bench_op!(
        grp,
        cuda,
        "softmax_xent",
        cuda.softmax_xent(&logits, BATCH, 10, &labels)
    );
    grp.finish();
}
