//! The README's denoising figure: crops of the held-out photos (camera, gravel) at sigma 25,
//! noisy / TV / Perona-Malik / TNRD side by side (SPEC-13 noise, seed 1, the rules' parameters
//! and the shipped model, as `pdenet denoise` runs them):
//! `cargo run --release --example denoise_figure -- ../shared/data/images docs/denoise-sigma25.png`.

use pdenet::backend::cpu::Cpu;
use pdenet::restore::image::{read_png, write_png, Image};
use pdenet::restore::noise::{add_noise, psnr};
use pdenet::restore::pm::{perona_malik, Diffusivity, PmOptions};
use pdenet::restore::rule::{pm_params, tv_lambda};
use pdenet::restore::tnrd::{denoise, io};
use pdenet::restore::tv::{rof, TvOptions};
use std::path::Path;

const SIGMA: f64 = 25.0;
const CROP: usize = 192;
const GAP: usize = 4;

fn main() -> pdenet::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let data = Path::new(args.get(1).map_or("../shared/data/images", |s| s.as_str()));
    let out = Path::new(
        args.get(2)
            .map_or("docs/denoise-sigma25.png", |s| s.as_str()),
    );
    let model = io::load(Path::new("models/tnrd-s25.safetensors"))?;
    // Crop corners: the face and camera, and the middle of the gravel.
    let photos = [("camera", 150, 60), ("gravel", 160, 160)];
    let cols = 4;
    let (fw, fh) = (
        cols * CROP + (cols - 1) * GAP,
        photos.len() * CROP + (photos.len() - 1) * GAP,
    );
    let mut fig = vec![1.0f32; fw * fh];
    for (row, (name, x0, y0)) in photos.iter().enumerate() {
        let img = read_png(&data.join(format!("{name}.png")))?;
        let (w, h) = (img.width, img.height);
        let clean = img.luminance();
        let mut noisy = clean.clone();
        add_noise(&mut noisy, SIGMA, 1);
        let tv = rof(&noisy, w, h, &TvOptions::new(tv_lambda(SIGMA))).u;
        let (k, t) = pm_params(SIGMA, Diffusivity::Rational);
        let pm = perona_malik(&noisy, w, h, &PmOptions::new(k, t, Diffusivity::Rational))?.u;
        let tn = denoise(&Cpu::new(), &model, &noisy, w, h)?;
        for (col, (label, u)) in [("noisy", &noisy), ("tv", &tv), ("pm", &pm), ("tnrd", &tn)]
            .iter()
            .enumerate()
        {
            println!("{name} {label} psnr {:.2}", psnr(u, &clean));
            let (ox, oy) = (col * (CROP + GAP), row * (CROP + GAP));
            for y in 0..CROP {
                for x in 0..CROP {
                    fig[(oy + y) * fw + ox + x] = u[(y0 + y) * w + x0 + x].clamp(0.0, 1.0);
                }
            }
        }
    }
    write_png(out, &Image::grey(fw, fh, fig, false))?;
    println!("wrote {}", out.display());
    Ok(())
}
