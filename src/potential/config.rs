//! The potential network's configuration (SPEC section 11): `"kind": "potential"`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A potential network exactly as SPEC section 11 writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PotentialConfig {
    /// Always `potential`.
    pub kind: String,
    /// n, the input dimension.
    pub dense_input: usize,
    /// `[m]`: the width.
    pub widths: Vec<usize>,
    /// `[M]`: the number of residual layers after the opening layer.
    pub steps: Vec<usize>,
    pub h: f64,
    /// r, the rows of A (default min(10, n)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// The Laplacian sums over the first `trace_dims` inputs (default n).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_dims: Option<usize>,
    /// Only `logcosh` (SPEC section 11); accepted so that configs may say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
}

/// The sizes every routine of the potential network needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PotentialShape {
    /// Input dimension.
    pub n: usize,
    /// Width.
    pub m: usize,
    /// Residual layers.
    pub layers: usize,
    /// Rows of A.
    pub rank: usize,
    /// Inputs the Laplacian sums over.
    pub trace_dims: usize,
    pub h: f64,
}

impl PotentialConfig {
    /// A config for the given sizes (rank and trace_dims at their defaults).
    pub fn new(n: usize, m: usize, layers: usize, h: f64) -> Self {
        PotentialConfig {
            kind: "potential".into(),
            dense_input: n,
            widths: vec![m],
            steps: vec![layers],
            h,
            rank: None,
            trace_dims: None,
            activation: None,
        }
    }

    /// Parses JSON (or TOML) text and validates it; `what` names the source in errors.
    pub fn parse(text: &str, toml_syntax: bool, what: &str) -> Result<Self> {
        let value: serde_json::Value = if toml_syntax {
            toml::from_str(text)
                .map_err(|e| Error::Config(format!("{what}: {}", one_line(&e.to_string()))))?
        } else {
            serde_json::from_str(text)
                .map_err(|e| Error::Config(format!("{what}: {}", one_line(&e.to_string()))))?
        };
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("potential") => {}
            Some(k) => {
                return Err(Error::Config(format!(
                    "{what}: `kind` is `{k}`, not a potential network (`\"kind\": \"potential\"`, SPEC section 11)"
                )))
            }
            None => {
                return Err(Error::Config(format!(
                    "{what}: no `kind`; a potential network needs `\"kind\": \"potential\"`"
                )))
            }
        }
        let cfg: PotentialConfig = serde_json::from_value(value)
            .map_err(|e| Error::Config(format!("{what}: {}", one_line(&e.to_string()))))?;
        cfg.shape().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{what}: {m}")),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Reads a JSON or TOML file (by extension).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let toml_syntax = path.extension().and_then(|e| e.to_str()) == Some("toml");
        Self::parse(&text, toml_syntax, &path.display().to_string())
    }

    /// The validated sizes (the checks of SPEC section 11).
    pub fn shape(&self) -> Result<PotentialShape> {
        let err = |m: String| Err(Error::Config(m));
        if self.kind != "potential" {
            return err(format!("`kind` is `{}`, not `potential`", self.kind));
        }
        let n = self.dense_input;
        if n == 0 {
            return err("`dense_input` must be at least 1".into());
        }
        if self.widths.len() != 1 || self.widths[0] == 0 {
            return err(format!(
                "`widths` must hold one positive width m, got {:?}",
                self.widths
            ));
        }
        if self.steps.len() != 1 {
            return err(format!(
                "`steps` must hold one layer count M, got {:?}",
                self.steps
            ));
        }
        if !(self.h.is_finite() && self.h > 0.0) {
            return err(format!("`h` must be positive and finite, got {}", self.h));
        }
        let rank = self.rank.unwrap_or(n.min(10));
        if rank == 0 {
            return err("`rank` must be at least 1".into());
        }
        let trace_dims = self.trace_dims.unwrap_or(n);
        if trace_dims > n {
            return err(format!(
                "`trace_dims` {trace_dims} exceeds `dense_input` {n}"
            ));
        }
        if let Some(a) = &self.activation {
            if a != "logcosh" {
                return err(format!(
                    "`activation` of a potential network is `logcosh`, got `{a}`"
                ));
            }
        }
        let m = self.widths[0];
        let layers = self.steps[0];
        let count = m
            .checked_mul(n + 1)
            .and_then(|v| v.checked_add(layers.checked_mul(m.checked_mul(m + 1)?)?))
            .and_then(|v| v.checked_add(rank.checked_mul(n)?))
            .filter(|&v| v < (1 << 31));
        if count.is_none() {
            return err("the network has too many parameters (at most 2^31)".into());
        }
        Ok(PotentialShape {
            n,
            m,
            layers,
            rank,
            trace_dims,
            h: self.h,
        })
    }
}

/// Whether a config file says `"kind": "potential"` (so that `init` can route it).
pub fn is_potential_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let value: Option<serde_json::Value> =
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            toml::from_str(&text).ok()
        } else {
            serde_json::from_str(&text).ok()
        };
    value
        .as_ref()
        .and_then(|v| v.get("kind"))
        .and_then(|k| k.as_str())
        == Some("potential")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
