//! `pdenet train-denoiser`: trains a TNRD model on random patches of the PNGs in a folder with
//! SPEC-13 noise; prints `stage t iter k loss L psnr P` lines.

use clap::Args;
use pdenet::restore::image::read_png;
use pdenet::restore::noise::add_noise;
use pdenet::restore::tnrd::train::{train, Patch, TrainOptions};
use pdenet::{Error, Result};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainDenoiserArgs {
    #[arg(long)]
    pub sigma: f64,
    #[arg(long, default_value_t = 5)]
    pub stages: usize,
    #[arg(long, default_value_t = 24)]
    pub filters: usize,
    #[arg(long, default_value_t = 5)]
    pub size: usize,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 200)]
    pub patches: usize,
    #[arg(long, default_value_t = 48)]
    pub patch_size: usize,
    /// Adam iterations per greedy stage.
    #[arg(long, default_value_t = 60)]
    pub iters: usize,
    /// Adam iterations of the joint phase (default: `--iters`).
    #[arg(long)]
    pub joint_iters: Option<usize>,
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Final learning rate as a fraction of `--lr` (half-cosine decay per phase; 1: constant).
    #[arg(long, default_value_t = 1.0)]
    pub lr_floor: f64,
    /// Model to start from (same filters and size, at most --stages stages): its stages are
    /// kept, later ones trained greedily, then all jointly.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// File stems to leave out (e.g. camera,gravel).
    #[arg(long, value_delimiter = ',')]
    pub hold_out: Vec<String>,
}

pub fn run_train_denoiser(a: TrainDenoiserArgs) -> Result<()> {
    if !(a.sigma > 0.0 && a.sigma.is_finite()) {
        return Err(Error::Input(format!(
            "--sigma must be > 0, got {}",
            a.sigma
        )));
    }
    if a.size.is_multiple_of(2) || a.size < 3 || a.filters == 0 || a.stages == 0 || a.patches == 0 {
        return Err(Error::Input(
            "--size must be odd and >= 3; --filters, --stages, --patches >= 1".into(),
        ));
    }
    if !(a.lr > 0.0 && a.lr.is_finite() && (0.0..=1.0).contains(&a.lr_floor)) {
        return Err(Error::Input(format!(
            "--lr must be > 0 and --lr-floor in [0, 1], got {} and {}",
            a.lr, a.lr_floor
        )));
    }
    let init = match &a.init {
        Some(path) => {
            let m = pdenet::restore::tnrd::io::load(path)?;
            if m.filters != a.filters || m.size != a.size || m.stages.len() > a.stages {
                return Err(Error::Input(format!(
                    "{}: {} stages of {} filters {}x{}, not at most {} of {} {}x{}",
                    path.display(),
                    m.stages.len(),
                    m.filters,
                    m.size,
                    m.size,
                    a.stages,
                    a.filters,
                    a.size,
                    a.size
                )));
            }
            Some(m)
        }
        None => None,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.data)
        .map_err(|e| Error::io(&a.data, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .filter(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            !a.hold_out.iter().any(|h| h == stem)
        })
        .collect();
    files.sort();
    let mut images = Vec::new();
    for f in &files {
        let img = read_png(f)?;
        if img.width >= a.patch_size && img.height >= a.patch_size {
            images.push((img.luminance(), img.width, img.height));
        }
    }
    if images.is_empty() {
        return Err(Error::Data(format!(
            "{}: no PNG of at least {}x{} pixels",
            a.data.display(),
            a.patch_size,
            a.patch_size
        )));
    }
    println!(
        "training on {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let p = a.patch_size;
    let patches: Vec<Patch> = (0..a.patches)
        .map(|i| {
            let (g, w, h) = &images[i % images.len()];
            let (y0, x0) = (rng.random_range(0..=h - p), rng.random_range(0..=w - p));
            let clean: Vec<f32> = (0..p * p)
                .map(|q| g[(y0 + q / p) * w + x0 + q % p])
                .collect();
            let mut noisy = clean.clone();
            add_noise(
                &mut noisy,
                a.sigma,
                a.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            );
            Patch { clean, noisy }
        })
        .collect();
    let opt = TrainOptions {
        stages: a.stages,
        filters: a.filters,
        size: a.size,
        sigma: a.sigma,
        patch: p,
        greedy_iters: a.iters,
        joint_iters: a.joint_iters.unwrap_or(a.iters),
        lr: a.lr,
        lr_floor: a.lr_floor,
    };
    let model = train(&opt, &patches, init, |l| println!("{l}"));
    pdenet::restore::tnrd::io::save(&a.out, &model)?;
    println!("wrote {}", a.out.display());
    Ok(())
}
