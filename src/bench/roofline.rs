//! The machine's ceilings (GEMM throughput, copy bandwidth, FMA peaks), measured in the run.

use super::*;
use crate::backend::ConvSpec;

/// The machine's ceilings, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Roofline {
    pub device: String,
    /// One large GEMM (CPU: the `gemm` crate on all cores).
    pub gemm_gflops: f64,
    /// A large copy, bytes read plus bytes written.
    pub bandwidth_gbs: f64,
    /// The FMA ceilings measured in registers (CPU only; `None` elsewhere).
    pub fma_peak: Option<crate::backend::cpu::FmaPeak>,
}

/// Measures the CPU roofline: a 2048^3 GEMM through the `gemm` crate on all cores (the best of
/// three, 17 GFLOP each: the machine's clock and neighbours vary) and a 256 MiB copy.
pub fn cpu_roofline() -> Roofline {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let run = |c: &mut [f32]| unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    };
    run(&mut c);
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            run(&mut c);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let gemm_gflops = 2.0 * (n * n * n) as f64 / best / 1e9;
    let len = 64 << 20; // f32 values: 256 MiB
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let bandwidth_gbs = (2 * 4 * len * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    Roofline {
        device: "cpu".into(),
        gemm_gflops,
        bandwidth_gbs,
        fma_peak: Some(crate::backend::cpu::peak::measure()),
    }
}

/// The GPU roofline: one 4096^3 GEMM through pdenet's own 1x1-convolution kernel in the
/// backend's precision, and a 1 GiB device-to-device copy.
pub fn cuda_roofline(be: &crate::backend::cuda::Cuda) -> Result<Roofline> {
    let n = 4096;
    let d = crate::tensor::Dims::new(1, n, 64, 64);
    let x = be.upload_f32(&vec![0.5f32; d.len()])?;
    let k = be.upload_f32(&vec![0.25f32; n * n])?;
    be.conv(ConvSpec::full1x1(), &x, d, &k, n)?;
    be.synchronize()?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        be.conv(ConvSpec::full1x1(), &x, d, &k, n)?;
    }
    be.synchronize()?;
    let gemm_gflops = 2.0 * (n * n * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    let big = be.zeros(1 << 28)?;
    be.copy(&big)?;
    be.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        be.copy(&big)?;
    }
    be.synchronize()?;
    let bandwidth_gbs = (2 * 4 * (1usize << 28) * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
    Ok(Roofline {
        device: format!("cuda ({}, {})", be.device_name(), be.precision().name()),
        gemm_gflops,
        bandwidth_gbs,
        fma_peak: None,
    })
}
