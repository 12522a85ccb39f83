//! Flags shared by several commands.

use pdenet::backend::Precision;
use pdenet::schedule::DriftGuard;
use pdenet::Result;

/// The drift guard of `reversible` on the command line (`grad`, `train`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct DriftArgs {
    /// Under reversible: a unit whose rebuilt input is further than this (relative max-norm)
    /// from the kept input is recomputed from that input; `inf` trusts every rebuild. Default
    /// 1e-5, and 1e-2 under `--precision bf16` (whose rebuilds drift at the bf16 level).
    #[arg(long, allow_negative_numbers = true)]
    pub drift_tol: Option<f64>,
    /// Fail instead of recomputing a unit whose rebuild drifted past --drift-tol.
    #[arg(long)]
    pub strict: bool,
}

impl DriftArgs {
    /// The guard these flags ask for under `precision` (`None` for `--drift-tol inf`).
    pub fn guard(&self, precision: Precision) -> Result<Option<DriftGuard>> {
        DriftGuard::requested(self.drift_tol, self.strict, precision)
    }
}

/// `--seed`: an integer in [0, 2^64), with a range error for negative numbers (which clap would
/// otherwise read as an unknown flag).
pub fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (0..=u64::MAX as i128).contains(&v) => Ok(v as u64),
        Ok(v) => Err(format!("the seed must lie in [0, 2^64), got {v}")),
        Err(_) => Err(format!("the seed must be an integer, got `{s}`")),
    }
}
