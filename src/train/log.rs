//! `log.csv`: one row per epoch.
//!
//! The rows also live in the checkpoint, and the whole file is rewritten atomically after each
//! epoch from them; so after `--resume` it holds exactly the epochs of the checkpoint plus the
//! new ones, even if a killed run had written a row past its last checkpoint.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const LOG_HEADER: &str = "epoch,loss,train_acc,test_acc,images_per_s,seconds";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    /// Training throughput (evaluation excluded).
    pub images_per_s: f64,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
}

impl LogRow {
    pub fn to_csv(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.1},{:.3}",
            self.epoch, self.loss, self.train_acc, self.test_acc, self.images_per_s, self.seconds
        )
    }
}

/// Writes the header and `rows` to `path` atomically.
pub fn write_log(path: &Path, rows: &[LogRow]) -> Result<()> {
    let mut s = String::from(LOG_HEADER);
    s.push('\n');
    for r in rows {
        s.push_str(&r.to_csv());
        s.push('\n');
    }
    crate::params::write_atomic(path, s.as_bytes())
}

/// Reads a log written by [`write_log`].
pub fn read_log(path: &Path) -> Result<Vec<LogRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    if lines.next() != Some(LOG_HEADER) {
        return Err(Error::Data(format!(
            "{}: not a pdenet log (header differs)",
            path.display()
        )));
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = || Error::Data(format!("{}: bad row {}: `{line}`", path.display(), i + 2));
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != 6 {
                return Err(bad());
            }
            let num = |k: usize| f[k].trim().parse::<f64>().map_err(|_| bad());
            Ok(LogRow {
                epoch: f[0].trim().parse().map_err(|_| bad())?,
                loss: num(1)?,
                train_acc: num(2)?,
                test_acc: num(3)?,
                images_per_s: num(4)?,
                seconds: num(5)?,
            })
        })
        .collect()
}
