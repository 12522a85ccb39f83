//! `pdenet denoise`: TV (ROF), Perona-Malik or TNRD (`--device cpu|cuda|auto`) restoration of a PNG with noise of level sigma
//! (SPEC section 13); with `--clean` the last line is `psnr INPUT OUTPUT`.

use clap::{Args, ValueEnum};
use pdenet::restore::image::{read_png, write_png};
use pdenet::restore::noise::{add_noise, psnr};
use pdenet::restore::pm::{perona_malik, Diffusivity, PmOptions};
use pdenet::restore::rule::{pm_params, tv_lambda};
use pdenet::restore::tv::{rof, TvOptions};
use pdenet::{Error, Result};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Method {
    Tv,
    Pm,
    Tnrd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DiffusivityArg {
    Exp,
    Rational,
}

#[derive(Args, Debug)]
pub struct DenoiseArgs {
    #[arg(long, value_enum)]
    pub method: Method,
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Noise level of the input (standard deviation in 0..255 units).
    #[arg(long, allow_negative_numbers = true)]
    pub sigma: f64,
    /// Clean image: prints the PSNR of the input and of the output against it.
    #[arg(long)]
    pub clean: Option<PathBuf>,
    /// First adds SPEC-13 noise of level sigma to the input.
    #[arg(long)]
    pub add_noise: bool,
    #[arg(long, default_value_t = 0, value_parser = super::args::parse_seed)]
    pub seed: u64,
    /// ROF weight (default: the fitted rule in sigma).
    #[arg(long, allow_negative_numbers = true)]
    pub lambda: Option<f64>,
    /// Perona-Malik contrast K (default: the fitted rule).
    #[arg(long, allow_negative_numbers = true)]
    pub contrast: Option<f64>,
    /// Perona-Malik diffusion time T (default: the fitted rule).
    #[arg(long, allow_negative_numbers = true)]
    pub time: Option<f64>,
    /// Perona-Malik step (at most 1/4, the stability bound).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub dt: f64,
    #[arg(long, value_enum, default_value = "rational")]
    pub diffusivity: DiffusivityArg,
    /// TNRD model file (default: the shipped model for the nearest of sigma 15, 25, 50).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Backend of the TNRD stages: cpu, cuda or auto (CUDA when usable, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: pdenet::backend::DeviceChoice,
}

/// The shipped TNRD models, embedded so that the binary works from any folder.
const SHIPPED: [(f64, &str, &[u8]); 3] = [
    (
        15.0,
        "models/tnrd-s15.safetensors",
        include_bytes!("../../models/tnrd-s15.safetensors"),
    ),
    (
        25.0,
        "models/tnrd-s25.safetensors",
        include_bytes!("../../models/tnrd-s25.safetensors"),
    ),
    (
        50.0,
        "models/tnrd-s50.safetensors",
        include_bytes!("../../models/tnrd-s50.safetensors"),
    ),
];

fn tnrd_model(a: &DenoiseArgs) -> Result<pdenet::restore::tnrd::Model> {
    use pdenet::restore::tnrd::io;
    match &a.weights {
        Some(p) => io::load(p),
        None => {
            let (_, name, bytes) = SHIPPED
                .iter()
                .min_by(|x, y| (x.0 - a.sigma).abs().total_cmp(&(y.0 - a.sigma).abs()))
                .expect("three shipped models");
            io::from_bytes(bytes, name)
        }
    }
}

pub fn run_denoise(a: DenoiseArgs) -> Result<()> {
    if !(a.sigma > 0.0 && a.sigma.is_finite()) {
        return Err(Error::Input(format!(
            "--sigma must be > 0, got {}",
            a.sigma
        )));
    }
    let mut img = read_png(&a.input)?;
    // A single pixel has no neighbours: there is nothing to diffuse, so it is refused.
    if img.width * img.height < 2 {
        return Err(Error::Input(format!(
            "{}: a 1x1 image cannot be denoised (it needs at least 2 pixels)",
            a.input.display()
        )));
    }
    let clean = match &a.clean {
        Some(p) => {
            let c = read_png(p)?;
            if (c.width, c.height, c.planes.len()) != (img.width, img.height, img.planes.len()) {
                return Err(Error::Shape(format!(
                    "{}: {}x{} with {} planes, the input is {}x{} with {}",
                    p.display(),
                    c.width,
                    c.height,
                    c.planes.len(),
                    img.width,
                    img.height,
                    img.planes.len()
                )));
            }
            Some(c)
        }
        None => None,
    };
    let colour = img.colour_planes();
    if a.add_noise {
        for (k, p) in img.planes.iter_mut().take(colour).enumerate() {
            add_noise(p, a.sigma, a.seed.wrapping_add(k as u64));
        }
    }
    let (w, h) = (img.width, img.height);
    // Loaded (and the device opened) before any work so that a bad model file or a missing
    // GPU writes nothing.
    let (model, device) = match a.method {
        Method::Tnrd => (
            Some(tnrd_model(&a)?),
            Some(pdenet::device::Device::select(a.device)?),
        ),
        _ => (None, None),
    };
    let mut out = img.clone();
    let start = std::time::Instant::now();
    match a.method {
        Method::Tv => {
            let lambda = a.lambda.unwrap_or_else(|| tv_lambda(a.sigma));
            if !(lambda > 0.0 && lambda.is_finite()) {
                return Err(Error::Input(format!("--lambda must be > 0, got {lambda}")));
            }
            for k in 0..colour {
                let r = rof(&img.planes[k], w, h, &TvOptions::new(lambda));
                println!(
                    "tv plane {k}: lambda {lambda:.4} iterations {} gap {:.2e}",
                    r.iterations, r.gap
                );
                out.planes[k] = r.u;
            }
        }
        Method::Pm => {
            let g = match a.diffusivity {
                DiffusivityArg::Exp => Diffusivity::Exponential,
                DiffusivityArg::Rational => Diffusivity::Rational,
            };
            let (k0, t0) = pm_params(a.sigma, g);
            let mut opt = PmOptions::new(a.contrast.unwrap_or(k0), a.time.unwrap_or(t0), g);
            opt.dt = a.dt;
            for k in 0..colour {
                let r = perona_malik(&img.planes[k], w, h, &opt)?;
                println!(
                    "pm plane {k}: contrast {:.4} time {:.3} steps {}",
                    opt.contrast, opt.time, r.steps
                );
                out.planes[k] = r.u;
            }
        }
        Method::Tnrd => {
            let model = model.as_ref().expect("loaded above");
            let device = device.as_ref().expect("opened above");
            for k in 0..colour {
                out.planes[k] = pdenet::with_device!(device, |b| {
                    pdenet::restore::tnrd::denoise(b, model, &img.planes[k], w, h)
                })?;
                println!(
                    "tnrd plane {k}: model sigma {} stages {} filters {} size {} device {}",
                    model.sigma,
                    model.stages.len(),
                    model.filters,
                    model.size,
                    pdenet::with_device!(device, |b| pdenet::backend::Backend::name(b))
                );
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "seconds {secs:.4} per_megapixel {:.4}",
        secs / (w * h) as f64 * 1e6
    );
    write_png(&a.out, &out)?;
    if let Some(c) = clean {
        let flat =
            |im: &pdenet::restore::image::Image| -> Vec<f32> { im.planes[..colour].concat() };
        let cf = flat(&c);
        println!(
            "psnr {:.4} {:.4}",
            psnr(&flat(&img), &cf),
            psnr(&flat(&out), &cf)
        );
    }
    Ok(())
}
