//! The sweep's terminal table and PNG plots.

use super::*;

/// The terminal table.
pub fn table(roofs: &[Roofline], points: &[BenchPoint]) -> String {
    let mut s = String::new();
    for r in roofs {
        s += &format!(
            "roofline {}: GEMM {:.1} GFLOP/s, copy {:.1} GB/s",
            r.device, r.gemm_gflops, r.bandwidth_gbs
        );
        if let Some(p) = &r.fma_peak {
            let show = |v: Option<f64>| v.map_or_else(|| "-".into(), |g| format!("{g:.1}"));
            s += &format!(
                "; FMA peak f32 AVX-512 {} / AVX2 {}, bf16 {} GFLOP/s (GEMM at {:.0}% of f32)",
                show(p.avx512_f32),
                show(p.avx2_f32),
                show(p.avx512_bf16),
                p.f32_best().map_or(0.0, |g| 100.0 * r.gemm_gflops / g)
            );
        }
        s += "\n";
    }
    if points.is_empty() {
        return s;
    }
    s += &format!(
        "{:<5} {:<4} {:<6} {:<13} {:<9} {:<10} {:<4} {:>5} {:>5} {:>9} {:>8} {:>6} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
        "dev", "prec", "kern", "layer", "operator", "policy", "kept", "steps", "batch", "img/s", "GFLOP/s", "%GEMM", "%FMA", "plan MB", "meas MB", "act MB", "MB/step", "drift"
    );
    let mb = |b: f64| b / 1e6;
    for p in points {
        s += &format!(
            "{:<5} {:<4} {:<6} {:<13} {:<9} {:<10} {:<4} {:>5} {:>5} {:>9.1} {:>8.2} {:>5.0}% {:>5} {:>10.1} {:>10} {:>10.1} {:>10} {:>9.1e}\n",
            p.device,
            p.precision,
            p.kernels,
            p.layer,
            p.operator,
            p.policy,
            p.storage,
            p.steps,
            p.batch,
            p.images_per_s,
            p.gflops,
            100.0 * p.gemm_fraction,
            p.fma_fraction.map_or_else(|| "-".into(), |f| format!("{:.0}%", 100.0 * f)),
            mb(p.planned_peak_bytes as f64),
            p.measured_peak_bytes.map(|b| format!("{:.1}", mb(b as f64))).unwrap_or_else(|| "-".into()),
            mb(p.planned_activation_bytes as f64),
            p.planned_bytes_per_step.map(|b| format!("{:.2}", mb(b))).unwrap_or_else(|| "-".into()),
            p.drift
        );
    }
    s
}

/// PNG plots: planned activation memory vs depth per policy, and throughput vs depth.
pub fn plots(dir: &std::path::Path, points: &[BenchPoint]) -> Result<()> {
    crate::train::plot::series_png(
        &dir.join("memory.png"),
        "activation memory vs depth",
        "steps per unit",
        "planned activation MB",
        &series(points, |p| p.planned_activation_bytes as f64 / 1e6),
    )?;
    crate::train::plot::series_png(
        &dir.join("throughput.png"),
        "training throughput vs depth",
        "steps per unit",
        "images/s",
        &series(points, |p| p.images_per_s),
    )
}

fn series(points: &[BenchPoint], y: impl Fn(&BenchPoint) -> f64) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points {
        let key = format!(
            "{} {} {} {} {} {} {}",
            p.device, p.precision, p.kernels, p.layer, p.operator, p.policy, p.storage
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((p.steps as f64, y(p))),
            None => out.push((key, vec![(p.steps as f64, y(p))])),
        }
    }
    out
}
