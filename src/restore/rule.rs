//! Parameters of TV and Perona-Malik as functions of the noise level sigma (in 0..255 units),
//! power laws in `s = sigma / 255` FITTED on the training photos (astronaut, brick, grass at
//! sigma 10, 15, 25, 35, 50; the fit of 2026-12-07 was cut before
//! sigma 75) by the grid search of `examples/fit_restore_rule.rs`
//! (`cargo run --release --example fit_restore_rule`): best mean PSNR per sigma, then least
//! squares in log-log.

use super::pm::Diffusivity;

// FIT-CONSTANTS-BEGIN
// Best lambda per sigma: 40.93, 23.73, 12.38, 8.84, 6.19 (PSNR 32.57, 30.22, 27.53, 25.93, 24.33).
const TV_A: f64 = 0.86286;
const TV_B: f64 = -1.17694;
// [contrast a, contrast b, time a, time b]: K = a s^b, T = c s^d.
const PM_EXP: [f64; 4] = [1.69201, 0.82994, 3.23610, 0.54599];
// Rational, sigma 10..35 only: K 0.058, 0.070, 0.094, 0.131; T 0.8, 1.2, 1.8, 1.8.
const PM_RAT: [f64; 4] = [0.43049, 0.62909, 7.65397, 0.67495];
// FIT-CONSTANTS-END

/// ROF weight lambda for noise level `sigma` (0..255 units; images in [0, 1]).
pub fn tv_lambda(sigma: f64) -> f64 {
    TV_A * (sigma / 255.0).powf(TV_B)
}

/// Perona-Malik `(contrast K, time T)` for noise level `sigma`.
pub fn pm_params(sigma: f64, g: Diffusivity) -> (f64, f64) {
    let c = match g {
        Diffusivity::Exponential => PM_EXP,
        Diffusivity::Rational => PM_RAT,
    };
    let s = sigma / 255.0;
    (c[0] * s.powf(c[1]), c[2] * s.powf(c[3]))
}
