//! The field of view of one step: one explicit step reaches 3x3 pixels, one symmetric layer 5x5,
//! one IMEX step the whole image. Prints the counts and writes `docs/imex/fov.png`.
//!
//!     cargo run --release --example imex_fov [-- OUT.png]

use pdenet::studies::fov::{single_pixel_fov, FovSetup};
use pdenet::train::plot::{heatmaps_png, Heatmap};
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("imex_fov: {e}");
        std::process::exit(1);
    }
}

fn run() -> pdenet::Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/imex/fov.png"));
    let s = FovSetup::default();
    let res = single_pixel_fov(&s)?;
    println!(
        "{0}x{0} image, {1} channels, h {2}, diffusion d {3} (a = d^2), impulse of 1 at the centre",
        s.size, s.channels, s.h, s.diffusion
    );
    println!("pixels with max_c |response| > {:e}:", s.threshold);
    for r in &res {
        let min = r.map.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "  {:<16} {:>5} of {}  (smallest response {min:.2e})",
            r.name,
            r.count,
            s.size * s.size
        );
    }
    // log10 of the response; pixels below the threshold stay white.
    let top = res
        .iter()
        .flat_map(|r| r.map.iter().copied())
        .fold(0.0f64, f64::max);
    let lo = s.threshold.max(1e-300).log10();
    let hi = top.log10().ceil().max(lo + 1.0);
    let logs: Vec<Vec<f64>> = res
        .iter()
        .map(|r| {
            r.map
                .iter()
                .map(|&v| if v > s.threshold { v.log10() } else { f64::NAN })
                .collect()
        })
        .collect();
    let titles: Vec<String> = res
        .iter()
        .map(|r| format!("{}: {} px", r.name, r.count))
        .collect();
    let panels: Vec<Heatmap<'_>> = titles
        .iter()
        .zip(&logs)
        .map(|(t, v)| Heatmap {
            title: t,
            rows: s.size,
            cols: s.size,
            values: v,
        })
        .collect();
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| pdenet::Error::io(dir, e))?;
    }
    heatmaps_png(
        &out,
        &format!(
            "response to a single-pixel input ({0}x{0}; white: |response| <= {1:e})",
            s.size, s.threshold
        ),
        &panels,
        (lo, hi),
        "log10 max_c |response|",
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
