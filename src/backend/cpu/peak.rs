//! The machine's arithmetic ceiling, measured: independent FMA chains in registers on every
//! thread of the pool (no memory traffic), f32 through AVX-512 and AVX2 and bf16 pairs through
//! `vdpbf16ps`, so that kernels are reported as a fraction of the physical limit and not only of
//! a library's GEMM.

use std::time::Instant;

/// FLOP/s ceilings in GFLOP/s (`None` where the CPU lacks the instructions).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct FmaPeak {
    /// `vfmadd231ps zmm`: 16 f32 lanes, 2 FLOP a lane.
    pub avx512_f32: Option<f64>,
    /// `vfmadd231ps ymm`: 8 f32 lanes.
    pub avx2_f32: Option<f64>,
    /// `vdpbf16ps zmm`: 16 f32 lanes, each two bf16 products added (4 FLOP a lane).
    pub avx512_bf16: Option<f64>,
}

impl FmaPeak {
    /// The best f32 ceiling available.
    pub fn f32_best(&self) -> Option<f64> {
        self.avx512_f32.or(self.avx2_f32)
    }
}

/// Independent accumulators per thread: twice the FMA latency (4) times the ports (2), so the
/// loop is bound by throughput, not by a dependency chain.
const CHAINS: usize = 16;
/// Loop trips per thread and measurement: about 20-40 ms at 3-4 GHz.
const TRIPS: usize = 1 << 22;

/// Measures the ceilings on all threads of the current pool (best of three each).
pub fn measure() -> FmaPeak {
    #[cfg(target_arch = "x86_64")]
    {
        let best = |lanes_flops: f64, run: fn(usize) -> f32| {
            let once = || {
                let t = Instant::now();
                let sums = rayon::broadcast(|_| run(TRIPS));
                std::hint::black_box(sums.iter().sum::<f32>());
                let threads = sums.len() as f64;
                threads * (TRIPS * CHAINS) as f64 * lanes_flops / t.elapsed().as_secs_f64() / 1e9
            };
            once();
            (0..3).map(|_| once()).fold(0.0f64, f64::max)
        };
        let avx512 = is_x86_feature_detected!("avx512f");
        let bf16 = avx512 && is_x86_feature_detected!("avx512bf16");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        FmaPeak {
            avx512_f32: avx512.then(|| best(32.0, |n| unsafe { x86::fma512(n) })),
            avx2_f32: avx2.then(|| best(16.0, |n| unsafe { x86::fma256(n) })),
            avx512_bf16: bf16.then(|| best(64.0, |n| unsafe { x86::dpbf16(n) })),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        FmaPeak::default()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// `acc = acc * a + b` on [`CHAINS`] zmm registers, `trips` times.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(trips: usize) -> f32 {
        let a = _mm512_set1_ps(black_box(0.999_999));
        let b = _mm512_set1_ps(black_box(1e-7));
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS];
        for _ in 0..trips {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r));
        _mm512_reduce_add_ps(s)
    }

    /// As [`fma512`] on ymm registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(trips: usize) -> f32 {
        let a = _mm256_set1_ps(black_box(0.999_999));
        let b = _mm256_set1_ps(black_box(1e-7));
        let mut acc = [_mm256_set1_ps(black_box(1.0)); CHAINS];
        for _ in 0..trips {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r));
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    /// `acc += a . b` over bf16 pairs (`vdpbf16ps`) on [`CHAINS`] zmm registers.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(trips: usize) -> f32 {
        let a = _mm512_set1_ps(black_box(1e-3));
        let a = _mm512_cvtne2ps_pbh(a, a);
        let mut acc = [_mm512_set1_ps(black_box(1.0)); CHAINS];
        for _ in 0..trips {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, a, a);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r));
        _mm512_reduce_add_ps(s)
    }
}
