//! Fits the TV and Perona-Malik parameter rules of `pdenet::restore::rule` on the training
//! photos (astronaut, brick, grass; camera and gravel are held out) by a grid search:
//! `cargo run --release --example fit_restore_rule`. Prints the best parameters per sigma and
//! the power laws through them, which are copied into src/restore/rule.rs.

use pdenet::restore::fit_power_law;
use pdenet::restore::image::read_png;
use pdenet::restore::noise::{add_noise, psnr};
use pdenet::restore::pm::{perona_malik_with, Diffusivity, PmOptions};
use pdenet::restore::tv::{rof, TvOptions};
use std::path::Path;

const TRAIN: [&str; 3] = ["astronaut", "brick", "grass"];
const SIGMAS: [f64; 6] = [10.0, 15.0, 25.0, 35.0, 50.0, 75.0];

fn main() {
    let imgs: Vec<(usize, usize, Vec<f32>)> = TRAIN
        .iter()
        .map(|n| {
            let im = read_png(&Path::new("data/images").join(format!("{n}.png"))).unwrap();
            (im.width, im.height, im.luminance())
        })
        .collect();
    let mut best_lambda = Vec::new();
    let mut best_k = [Vec::new(), Vec::new()];
    let mut best_t = [Vec::new(), Vec::new()];
    for (si, &sigma) in SIGMAS.iter().enumerate() {
        let noisy: Vec<Vec<f32>> = imgs
            .iter()
            .enumerate()
            .map(|(k, (_, _, c))| {
                let mut x = c.clone();
                add_noise(&mut x, sigma, 1000 + (si * 10 + k) as u64);
                x
            })
            .collect();
        let s = sigma / 255.0;
        // TV: lambda = m / s over a log grid of m.
        let mut best = (f64::NEG_INFINITY, 0.0);
        for step in 0..16 {
            let m = 0.3 * 1.15f64.powi(step);
            let lambda = m / s;
            let mut total = 0.0;
            for (k, (w, h, clean)) in imgs.iter().enumerate() {
                let r = rof(&noisy[k], *w, *h, &TvOptions::new(lambda));
                total += psnr(&r.u, clean);
            }
            let mean = total / imgs.len() as f64;
            if mean > best.0 {
                best = (mean, lambda);
            }
        }
        println!("sigma {sigma}: tv lambda {:.4} psnr {:.3}", best.1, best.0);
        best_lambda.push(best.1);
        // PM: contrast K = c * s over a grid of c; every time point of one run is scored.
        for (di, g) in [Diffusivity::Exponential, Diffusivity::Rational]
            .into_iter()
            .enumerate()
        {
            let mut best = (f64::NEG_INFINITY, 0.0, 0.0);
            for step in 0..12 {
                let c = 0.25 * 1.25f64.powi(step);
                let t_max = 40.0;
                let opt = PmOptions::new(c * s, t_max, g);
                let steps = (t_max / opt.dt).round() as usize;
                let mut score = vec![0.0f64; steps];
                for (k, (w, h, clean)) in imgs.iter().enumerate() {
                    let mut idx = 0;
                    perona_malik_with(&noisy[k], *w, *h, &opt, |_, u| {
                        score[idx] += psnr(u, clean);
                        idx += 1;
                    })
                    .unwrap();
                }
                for (i, sc) in score.iter().enumerate() {
                    let mean = sc / imgs.len() as f64;
                    if mean > best.0 {
                        best = (mean, c * s, (i + 1) as f64 * opt.dt);
                    }
                }
            }
            println!(
                "sigma {sigma}: pm {g:?} contrast {:.4} time {:.2} psnr {:.3}",
                best.1, best.2, best.0
            );
            best_k[di].push(best.1);
            best_t[di].push(best.2);
        }
    }
    let s: Vec<f64> = SIGMAS.iter().map(|x| x / 255.0).collect();
    let (a, b) = fit_power_law(&s, &best_lambda);
    println!("rule: tv lambda = {a:.5} * s^{b:.4}  (s = sigma/255)");
    for (di, name) in ["exponential", "rational"].iter().enumerate() {
        let (ka, kb) = fit_power_law(&s, &best_k[di]);
        let (ta, tb) = fit_power_law(&s, &best_t[di]);
        println!("rule: pm {name} contrast = {ka:.5} * s^{kb:.4}, time = {ta:.5} * s^{tb:.4}");
    }
}
