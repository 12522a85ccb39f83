//! `pdenet bench --kernels`: the CPU 3x3 convolution kernel sets timed side by side.

use super::*;

/// One 3x3 convolution kernel timed at one of ref-cifar's shapes.
#[derive(Clone, Debug, Serialize)]
pub struct KernelPoint {
    pub op: String,
    pub kernels: String,
    pub channels: usize,
    pub size: usize,
    pub batch: usize,
    pub seconds: f64,
    pub gflops: f64,
    /// Of the FMA ceiling of the kernels' own instructions (GEMM: the best f32 ceiling).
    pub fma_fraction: Option<f64>,
    /// Speed-up over the im2col + GEMM path measured in the same round.
    pub vs_gemm: f64,
}

/// ref-cifar's unit shapes: (channels, image size).
pub const REF_CIFAR_SHAPES: [(usize, usize); 3] = [(32, 32), (64, 16), (112, 8)];

/// Times the 3x3 convolution, its adjoint and its weight gradient (`c -> c`, batch `batch`)
/// under every kernel set this CPU has, at ref-cifar's shapes: the sets alternate within each
/// of `repeats` rounds (so that a neighbour's load hits them alike) and the best round counts.
pub fn conv_kernel_points(
    batch: usize,
    repeats: usize,
    peak: &crate::backend::cpu::FmaPeak,
) -> Result<Vec<KernelPoint>> {
    // The GEMM path last: the baseline of the `x gemm` column.
    let isas: Vec<Isa> = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Gemm]
        .into_iter()
        .filter(|i| i.available())
        .collect();
    let mut out = Vec::new();
    for (c, size) in REF_CIFAR_SHAPES {
        let d = crate::tensor::Dims::new(batch, c, size, size);
        let (x, k) = (random_values(d.len(), 1), random_values(c * c * 9, 2));
        let g = random_values(d.len(), 3);
        let flops = 2.0 * (batch * c * c * 9 * size * size) as f64;
        type Op<'a> = Box<dyn Fn(Isa) -> Result<Vec<f32>> + 'a>;
        let ops: [(&str, Op); 3] = [
            ("conv3x3", Box::new(|i| kernels::conv3x3(i, &x, d, &k, c))),
            (
                "conv3x3_t",
                Box::new(|i| kernels::conv3x3_t(i, &g, d, &k, c)),
            ),
            (
                "conv3x3_wgrad",
                Box::new(|i| kernels::conv3x3_wgrad(i, &x, d, &g, c)),
            ),
        ];
        for (name, op) in &ops {
            let mut best = vec![f64::INFINITY; isas.len()];
            for &i in &isas {
                std::hint::black_box(op(i)?);
            }
            for _ in 0..repeats.max(1) {
                for (b, &i) in best.iter_mut().zip(&isas) {
                    let t = Instant::now();
                    std::hint::black_box(op(i)?);
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
            let gemm = best[isas.len() - 1];
            for (&secs, &i) in best.iter().zip(&isas) {
                let ceiling = match i {
                    Isa::Avx512 => peak.avx512_f32,
                    Isa::Avx512Bf16 => peak.avx512_bf16,
                    Isa::Avx2 => peak.avx2_f32,
                    Isa::Gemm => peak.f32_best(),
                };
                let gflops = flops / secs / 1e9;
                out.push(KernelPoint {
                    op: (*name).into(),
                    kernels: i.name().into(),
                    channels: c,
                    size,
                    batch,
                    seconds: secs,
                    gflops,
                    fma_fraction: ceiling.map(|p| gflops / p),
                    vs_gemm: gemm / secs,
                });
            }
        }
    }
    Ok(out)
}

/// The kernel table.
pub fn kernel_table(points: &[KernelPoint]) -> String {
    let mut s = format!(
        "{:<14} {:>4} {:>5} {:>5} {:<7} {:>9} {:>8} {:>5} {:>7}\n",
        "op", "c", "size", "batch", "kern", "ms", "GFLOP/s", "%FMA", "x gemm"
    );
    for p in points {
        s += &format!(
            "{:<14} {:>4} {:>5} {:>5} {:<7} {:>9.2} {:>8.1} {:>5} {:>7.2}\n",
            p.op,
            p.channels,
            format!("{}x{}", p.size, p.size),
            p.batch,
            p.kernels,
            1e3 * p.seconds,
            p.gflops,
            p.fma_fraction
                .map_or_else(|| "-".into(), |f| format!("{:.0}%", 100.0 * f)),
            p.vs_gemm
        );
    }
    s
}
