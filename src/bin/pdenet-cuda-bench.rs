//! Micro-benchmark of the CUDA kernels at the ref-cifar sizes (batch 256): conv3x3 forward,
//! transpose, weight gradient and the fused step in f32, tf32, bf16 and f16, with the pipelined
//! and the unpipelined convolution tiles, timed with CUDA events
//! (median of repeats after warm-up). Usage: `pdenet-cuda-bench [--batch N] [--reps N]`. Exits 0 with a SKIP
//! line when no GPU is usable.

use cudarc::driver::sys::CUevent_flags;
use pdenet::backend::cuda::Cuda;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm, Precision};
use pdenet::bench::random_values;
use pdenet::{Dims, Result};

fn main() {
    let mut batch = 256usize;
    let mut reps = 20usize;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().and_then(|v| v.parse().ok());
        match (a.as_str(), v) {
            ("--batch", Some(v)) => batch = v,
            ("--reps", Some(v)) => reps = v,
            _ => {
                eprintln!("usage: pdenet-cuda-bench [--batch N] [--reps N]");
                std::process::exit(2);
            }
        }
    }
    // Each precision with the pipelined tiles, then the unpipelined ones (an A/B in one run).
    for p in Precision::ALL {
        for pipelined in [true, false] {
            let cuda = match Cuda::try_new_with(p) {
                Ok(c) => c.with_pipelined(pipelined),
                Err(e) => {
                    println!("SKIP: {e}");
                    return;
                }
            };
            if let Err(e) = run(&cuda, batch, reps.max(1)) {
                eprintln!("pdenet-cuda-bench: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Median milliseconds of `f` over `reps` timed runs after 3 warm-up runs.
fn time_ms(cuda: &Cuda, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let cu = |r: std::result::Result<(), cudarc::driver::DriverError>| {
        r.map_err(|e| pdenet::Error::Cuda(format!("{e:?}")))
    };
    for _ in 0..3 {
        f()?;
    }
    cuda.synchronize()?;
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = cuda
            .context()
            .new_event(flags)
            .map_err(|e| pdenet::Error::Cuda(format!("{e:?}")))?;
        let end = cuda
            .context()
            .new_event(flags)
            .map_err(|e| pdenet::Error::Cuda(format!("{e:?}")))?;
        cu(start.record(cuda.stream()))?;
        f()?;
        cu(end.record(cuda.stream()))?;
        cu(end.synchronize())?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| pdenet::Error::Cuda(format!("{e:?}")))?;
        times.push(ms as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn run(cuda: &Cuda, batch: usize, reps: usize) -> Result<()> {
    println!(
        "device: {}, convolutions in {}, {} tiles",
        cuda.device_name(),
        cuda.precision().name(),
        if cuda.pipelined() {
            "pipelined"
        } else {
            "unpipelined"
        }
    );
    println!(
        "{:<14} {:>22} {:>10} {:>10} {:>9}",
        "op", "shape", "ms", "GFLOP/s", "GB/s"
    );
    for (c, hw) in [(32usize, 32usize), (64, 16), (112, 8)] {
        let d = Dims::new(batch, c, hw, hw);
        let n = d.len();
        let y = cuda.upload_f32(&random_values(n, 1))?;
        let yp = cuda.upload_f32(&random_values(n, 2))?;
        let k = cuda.upload_f32(
            &random_values(c * c * 9, 3)
                .iter()
                .map(|v| v / (9.0 * c as f32).sqrt())
                .collect::<Vec<_>>(),
        )?;
        let s = cuda.upload_f32(&vec![1.0; c])?;
        let b = cuda.upload_f32(&vec![0.1; c])?;
        let conv_flop = 2.0 * (n * c * 9) as f64;
        let act_bytes = 4.0 * n as f64;
        let w_bytes = 4.0 * (c * c * 9) as f64;
        let shape = format!("{d}");
        let report = |op: &str, ms: f64, flop: f64, bytes: f64| {
            println!(
                "{op:<14} {shape:>22} {ms:>10.3} {:>10.1} {:>9.1}",
                flop / ms / 1e6,
                bytes / ms / 1e6
            );
        };
        let ms = time_ms(cuda, reps, || {
            cuda.conv(ConvSpec::full3x3(), &y, d, &k, c).map(|_| ())
        })?;
        report("conv3x3", ms, conv_flop, 2.0 * act_bytes + w_bytes);
        let ms = time_ms(cuda, reps, || {
            cuda.conv_t(ConvSpec::full3x3(), &y, d, &k, c).map(|_| ())
        })?;
        report("conv3x3_t", ms, conv_flop, 2.0 * act_bytes + w_bytes);
        let ms = time_ms(cuda, reps, || {
            cuda.conv_wgrad(ConvSpec::full3x3(), &y, d, &yp, c)
                .map(|_| ())
        })?;
        report("conv3x3_wgrad", ms, conv_flop, 2.0 * act_bytes + w_bytes);
        // Leapfrog step: 2 Y - Y_prev - h^2 K^T relu(tvNorm(K Y)).
        let step = || {
            cuda.step_full3x3(
                &[(2.0, &y), (-1.0, &yp)],
                0.25,
                &y,
                d,
                &k,
                Norm::Tv { s: &s, b: &b },
                Activation::Relu,
            )
            .map(|_| ())
        };
        cuda.reset_peak();
        let ms = time_ms(cuda, reps, step)?;
        // Reads y, y_prev, z (twice: own write then gather), writes z and the output.
        report(
            "step (fused)",
            ms,
            2.0 * conv_flop,
            5.0 * act_bytes + w_bytes,
        );
        let unfused = || {
            let z = cuda.conv(ConvSpec::full3x3(), &y, d, &k, c)?;
            let a = cuda.tvnorm(&z, d, &s, &b)?;
            let sa = cuda.activation(Activation::Relu, &a)?;
            let kt = cuda.conv_t(ConvSpec::full3x3(), &sa, d, &k, c)?;
            cuda.lincomb(&[(2.0, &y), (-1.0, &yp), (-0.25, &kt)])
                .map(|_| ())
        };
        let ms = time_ms(cuda, reps, unfused)?;
        report(
            "step (unfused)",
            ms,
            2.0 * conv_flop,
            11.0 * act_bytes + w_bytes,
        );
    }
    println!(
        "peak device bytes held by the backend: {}",
        cuda.peak_bytes()
    );
    Ok(())
}
