//! `pdenet ot`: OT-Flow between `N(0, I_d)` and `N(m, diag(s^2))` (SPEC section 12), the
//! learned transport cost against the exact `W2^2`; last line `cost C exact W gap G`.

use super::potential::Precision;
use clap::Args;
use pdenet::params::save_params;
use pdenet::potential::ot::{eval_samples, trajectories, GaussianTarget};
use pdenet::potential::{train_ot, OtOptions, OtReport, PotentialConfig, PotentialNet};
use pdenet::train::plot::{heatmaps_png, paths_png, Heatmap};
use pdenet::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct OtArgs {
    /// Dimension d.
    #[arg(long)]
    pub dim: usize,
    /// |m| of the target mean m = (|m| / sqrt(d)) (1, .., 1).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub mean: f64,
    /// Standard deviation s_i of every coordinate of the target.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub scale: f64,
    #[arg(long, default_value_t = 0, value_parser = super::args::parse_seed)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Adam steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Samples of N(0, I) per step.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// RK4 steps on [0, 1] in training.
    #[arg(long, default_value_t = 4)]
    pub nt: usize,
    /// RK4 steps of the final evaluation.
    #[arg(long, default_value_t = 16)]
    pub nt_eval: usize,
    /// Samples of the final evaluation.
    #[arg(long, default_value_t = 4096)]
    pub eval_batch: usize,
    /// Weight of the transport cost L (the KL terminal cost has weight 1).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub alpha_l: f64,
    /// Weight of the HJB penalty R.
    #[arg(long, default_value_t = 0.15, allow_negative_numbers = true)]
    pub alpha_r: f64,
    /// First learning rate (cosine decay to lr * lr-floor).
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true)]
    pub lr_floor: f64,
    /// Width m of Phi.
    #[arg(long, default_value_t = 32)]
    pub width: usize,
    /// Residual layers M of Phi.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Step h of the residual layers.
    #[arg(long, default_value_t = 0.5)]
    pub h: f64,
    /// A potential network config for Phi (`dense_input` = d + 1, `trace_dims` = d) instead of
    /// --width, --layers, --h.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Steps between progress lines (0: none).
    #[arg(long, default_value_t = 100)]
    pub log_every: usize,
    /// Writes the trained weights (safetensors, SPEC section 11 names) and `<out>.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Writes `ot-paths.png` (characteristics) and `ot-densities.png` into this directory
    /// (the first two coordinates).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run_ot(a: OtArgs) -> Result<()> {
    let network = a.config.as_deref().map(PotentialConfig::load).transpose()?;
    let opt = OtOptions {
        dim: a.dim,
        mean: a.mean,
        scale: a.scale,
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        nt: a.nt,
        nt_eval: a.nt_eval,
        eval_batch: a.eval_batch,
        alpha_l: a.alpha_l,
        alpha_r: a.alpha_r,
        lr: a.lr,
        lr_floor: a.lr_floor,
        width: a.width,
        layers: a.layers,
        h: a.h,
        log_every: a.log_every,
        network,
    };
    if a.dim < 2 && a.plot.is_some() {
        return Err(Error::Input("--plot needs --dim >= 2".into()));
    }
    let mut print = |line: &str| println!("{line}");
    let report = match a.precision {
        Precision::F32 => train_ot::<f32>(&opt, &mut print)?,
        Precision::F64 => train_ot::<f64>(&opt, &mut print)?,
    };
    if let Some(out) = &a.out {
        save_params(out, &report.net.to_params())?;
        let cfg = serde_json::to_string_pretty(&opt.config())
            .map_err(|e| Error::Other(format!("config: {e}")))?;
        let cfg_path = out.with_extension("json");
        pdenet::params::write_atomic(&cfg_path, cfg.as_bytes())?;
        eprintln!("wrote {} and {}", out.display(), cfg_path.display());
    }
    if let Some(dir) = &a.plot {
        plot(dir, &opt, &report)?;
    }
    let t = report.terms;
    println!(
        "time {:.1}s d {} precision {:?} kl {:.4e} hjb {:.4e} map_cost {:.5e} (E|z(1) - x|^2)",
        report.seconds, a.dim, a.precision, t.kl, t.hjb, t.map_cost
    );
    println!(
        "cost {:.5e} exact {:.5e} gap {:+.4e}",
        t.cost(),
        report.exact,
        report.gap()
    );
    Ok(())
}

/// The characteristics of 300 evaluation samples over 1500 target samples, and the densities of
/// the source, the pushed-forward samples (a histogram) and the target in the first two
/// coordinates.
fn plot(dir: &Path, opt: &OtOptions, report: &OtReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let d = opt.dim;
    let target = opt.target()?;
    let net: &PotentialNet<f64> = &report.net;
    let x = eval_samples::<f64>(d, 300, opt.seed);
    let nt = opt.nt_eval;
    let flows = trajectories(net, &x, nt);
    let paths: Vec<Vec<(f64, f64)>> = flows
        .chunks_exact((nt + 1) * d)
        .map(|p| p.chunks_exact(d).map(|z| (z[0], z[1])).collect())
        .collect();
    let ys = eval_samples::<f64>(d, 1500, opt.seed.wrapping_add(7));
    let extra: Vec<(f64, f64)> = ys
        .chunks_exact(d)
        .map(|y| {
            (
                target.mean[0] + target.std[0] * y[0],
                target.mean[1] + target.std[1] * y[1],
            )
        })
        .collect();
    let title = format!(
        "OT-Flow d = {d}, x1-x2: cost {:.3}, W2^2 {:.3}",
        report.terms.cost(),
        report.exact
    );
    paths_png(&dir.join("ot-paths.png"), &title, &paths, &extra)?;
    // Densities on a grid over [-3.5, 3.5] + the target's range.
    let xs = eval_samples::<f64>(d, 20_000, opt.seed.wrapping_add(11));
    let ends = trajectories(net, &xs, nt);
    let pushed: Vec<(f64, f64)> = ends
        .chunks_exact((nt + 1) * d)
        .map(|p| (p[nt * d], p[nt * d + 1]))
        .collect();
    let lo = (-3.5f64).min(target.mean[0].min(target.mean[1]) - 3.5 * target.std[0]);
    let hi = 3.5f64.max(target.mean[0].max(target.mean[1]) + 3.5 * target.std[0]);
    const G: usize = 80;
    let cell = (hi - lo) / G as f64;
    let centre = |k: usize| lo + (k as f64 + 0.5) * cell;
    let gauss = |g: &GaussianTarget, px: f64, py: f64| {
        let q = |v: f64, m: f64, s: f64| {
            (-0.5 * ((v - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt())
        };
        q(px, g.mean[0], g.std[0]) * q(py, g.mean[1], g.std[1])
    };
    let source = GaussianTarget {
        mean: vec![0.0; d],
        std: vec![1.0; d],
    };
    let grid = |g: &GaussianTarget| -> Vec<f64> {
        (0..G)
            .flat_map(|i| (0..G).map(move |j| (i, j)))
            .map(|(i, j)| gauss(g, centre(j), centre(G - 1 - i)))
            .collect()
    };
    let mut hist = vec![0.0; G * G];
    let w = 1.0 / (pushed.len() as f64 * cell * cell);
    for &(px, py) in &pushed {
        let j = ((px - lo) / cell).floor();
        let i = ((hi - py) / cell).floor();
        if (0.0..G as f64).contains(&j) && (0.0..G as f64).contains(&i) {
            hist[i as usize * G + j as usize] += w;
        }
    }
    let (src, tgt) = (grid(&source), grid(&target));
    let vmax = tgt
        .iter()
        .chain(&src)
        .chain(&hist)
        .fold(0.0f64, |a, &b| a.max(b));
    heatmaps_png(
        &dir.join("ot-densities.png"),
        &format!("densities in x1-x2 on [{lo:.1}, {hi:.1}]^2 (d = {d})"),
        &[
            Heatmap {
                title: "source N(0, I)",
                rows: G,
                cols: G,
                values: &src,
            },
            Heatmap {
                title: "pushed forward (20k samples)",
                rows: G,
                cols: G,
                values: &hist,
            },
            Heatmap {
                title: "target",
                rows: G,
                cols: G,
                values: &tgt,
            },
        ],
        (0.0, vmax.max(1e-12)),
        "density",
    )?;
    eprintln!(
        "wrote {} and {}",
        dir.join("ot-paths.png").display(),
        dir.join("ot-densities.png").display()
    );
    Ok(())
}
