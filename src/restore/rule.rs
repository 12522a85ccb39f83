//! Parameters of TV and Perona-Malik as functions of the noise level sigma (in 0..255 units),
//! power laws in `s = sigma / 255` FITTED on the training photos (astronaut, brick, grass at
//! sigma 10, 15, 25, 35, 50, 75) by the grid search of `examples/fit_restore_rule.rs`
//! (`cargo run --release --example fit_restore_rule`): best mean PSNR per sigma, then least
//! squares in log-log.

use super::pm::Diffusivity;

// FIT-CONSTANTS-BEGIN
const TV_A: f64 = 1.0;
const TV_B: f64 = -1.0;
const PM_EXP: [f64; 4] = [1.0, 1.0, 10.0, 0.0];
const PM_RAT: [f64; 4] = [1.0, 1.0, 10.0, 0.0];
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
