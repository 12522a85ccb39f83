//! PDE image restoration (SPEC section 13): total variation (ROF), Perona-Malik diffusion and
//! trainable nonlinear reaction diffusion (TNRD, Chen & Pock 2017) on grey images in [0, 1].
//! The TNRD convolutions are host (CPU) code in this module, not on the CUDA backend.

pub mod image;
pub mod noise;
pub mod pm;
pub mod rule;
pub mod tnrd;
pub mod tv;

/// Least squares of
/// `log y = log a + b log x`, returning `(a, b)`.
pub fn fit_power_law(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let lx: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
    let ly: Vec<f64> = ys.iter().map(|y| y.ln()).collect();
    let mx = lx.iter().sum::<f64>() / n;
    let my = ly.iter().sum::<f64>() / n;
    let sxy: f64 = lx.iter().zip(&ly).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = lx.iter().map(|x| (x - mx) * (x - mx)).sum();
    let b = sxy / sxx;
    ((my - b * mx).exp(), b)
}
