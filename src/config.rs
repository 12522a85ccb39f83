//! The network configuration of SPEC section 4 (JSON or TOML), parsed strictly and validated.

use crate::backend::Activation;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `kind` key: a convolutional network on images, or a dense one on feature vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Image,
    Dense,
}

/// The step type of every unit (SPEC section 3, and `imex` of section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepType {
    Resnet,
    Antisymmetric,
    Parabolic,
    Hyperbolic,
    Hamiltonian,
    Imex,
    /// Heun's explicit second-order Runge-Kutta step with the parabolic right-hand side `f` of
    /// SPEC section 3: `Y_{j+1} = Y_j + h/2 (f(Y_j) + f(Y_j + h f(Y_j)))`, both evaluations with
    /// the step's one `K` and norm. SPEC does not list it; as an explicit scheme for the
    /// parabolic equation it takes a `parabolic` step's weights and names (section 8: `K`,
    /// `norm.weight`, `norm.bias`, or the operator's names of section 7), not invertible.
    Rk2,
    /// A continuous-time unit (SPEC section 10): `dY/dt = F_j(Y)`, `F` named by `rhs`.
    Ode,
}

impl StepType {
    /// The five step types of SPEC section 3 (not `imex` and `ode`, which take keys of their own).
    pub const BASIC: [StepType; 5] = [
        StepType::Resnet,
        StepType::Antisymmetric,
        StepType::Parabolic,
        StepType::Hyperbolic,
        StepType::Hamiltonian,
    ];
    /// Whether a step can be undone exactly (so `reversible` need not store its states).
    pub fn invertible(self) -> bool {
        matches!(self, StepType::Hyperbolic | StepType::Hamiltonian)
    }
    pub fn name(self) -> &'static str {
        match self {
            StepType::Resnet => "resnet",
            StepType::Antisymmetric => "antisymmetric",
            StepType::Parabolic => "parabolic",
            StepType::Hyperbolic => "hyperbolic",
            StepType::Hamiltonian => "hamiltonian",
            StepType::Imex => "imex",
            StepType::Rk2 => "rk2",
            StepType::Ode => "ode",
        }
    }
}

impl std::str::FromStr for StepType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| Error::Config(format!("unknown layer `{s}`")))
    }
}

/// The `solver` key of an `ode` unit (SPEC section 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    Euler,
    Rk4,
    #[default]
    Dopri5,
}

/// The `gradient` key of an `ode` unit (SPEC section 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gradient {
    /// Discretize-optimize: the exact gradient of the computed output.
    #[default]
    Discretize,
    /// Optimize-discretize: the continuous adjoint, solved backwards.
    Adjoint,
}

/// The keys of an `ode` unit, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OdeKeys {
    /// The step type whose `F` is the right-hand side: parabolic, resnet or antisymmetric.
    pub rhs: StepType,
    pub solver: Solver,
    pub substeps: usize,
    pub rtol: f64,
    pub atol: f64,
    pub gradient: Gradient,
    /// Steps (accepted and rejected) an adaptive solve may take per interval.
    pub max_steps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorKind {
    Full,
    Lean,
    Mgic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    Tv,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connect {
    Conv,
    Haar,
}

/// A network configuration exactly as SPEC section 4 writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kind: NetworkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_channels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_input: Option<usize>,
    pub classes: usize,
    pub widths: Vec<usize>,
    pub steps: Vec<usize>,
    pub layer: StepType,
    pub h: f64,
    #[serde(default = "default_operator")]
    pub operator: OperatorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<NormKind>,
    #[serde(default = "default_activation")]
    pub activation: Activation,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default = "default_connect")]
    pub connect: Connect,
    /// The keys of `layer: ode` (SPEC section 10); errors with any other layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rhs: Option<StepType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<Solver>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substeps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atol: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<Gradient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<usize>,
}

fn default_operator() -> OperatorKind {
    OperatorKind::Full
}
fn default_activation() -> Activation {
    Activation::Relu
}
fn default_gamma() -> f64 {
    1e-4
}
fn default_connect() -> Connect {
    Connect::Conv
}

/// The reference configurations of SPEC section 6, by name.
pub const REFERENCE_NAMES: [&str; 3] = ["ref-cifar", "ref-mnist", "ref-2d"];

impl Config {
    /// The normalisation in effect: `tv` for image and `none` for dense networks unless set.
    pub fn norm_kind(&self) -> NormKind {
        self.norm.unwrap_or(match self.kind {
            NetworkKind::Image => NormKind::Tv,
            NetworkKind::Dense => NormKind::None,
        })
    }

    /// The keys of an `ode` network with their defaults, `None` for other layers.
    pub fn ode(&self) -> Option<OdeKeys> {
        (self.layer == StepType::Ode).then(|| OdeKeys {
            rhs: self.rhs.unwrap_or(StepType::Parabolic),
            solver: self.solver.unwrap_or_default(),
            substeps: self.substeps.unwrap_or(1),
            rtol: self.rtol.unwrap_or(1e-3),
            atol: self.atol.unwrap_or(1e-4),
            gradient: self.gradient.unwrap_or_default(),
            max_steps: self.max_steps.unwrap_or(crate::limits::MAX_ODE_STEPS),
        })
    }

    /// The step type that fixes each step's parameters: `rhs` for `ode` units.
    pub fn step_layer(&self) -> StepType {
        self.ode().map_or(self.layer, |o| o.rhs)
    }

    /// Input channels (image) or input dimension (dense).
    pub fn input_width(&self) -> usize {
        match self.kind {
            NetworkKind::Image => self.in_channels.unwrap_or(0),
            NetworkKind::Dense => self.dense_input.unwrap_or(0),
        }
    }

    /// One input's shape: `[c, 32, 32]` (`[1, 28, 28]` for one channel), or `[d]`: the sample
    /// `bench`, `info` and the memory reservation size a batch with.
    pub fn sample_shape(&self) -> Vec<usize> {
        match self.kind {
            NetworkKind::Image if self.input_width() == 1 => vec![1, 28, 28],
            NetworkKind::Image => vec![self.input_width(), 32, 32],
            NetworkKind::Dense => vec![self.input_width()],
        }
    }

    /// A reference configuration of SPEC section 6 (`ref-cifar`, `ref-mnist`, `ref-2d`).
    pub fn reference(name: &str) -> Option<Config> {
        let json = match name {
            "ref-cifar" => {
                r#"{"kind":"image","in_channels":3,"classes":10,"widths":[32,64,112],
                "steps":[8,8,8],"layer":"hyperbolic","h":0.5,"operator":"full","norm":"tv",
                "activation":"relu"}"#
            }
            "ref-mnist" => {
                r#"{"kind":"image","in_channels":1,"classes":10,"widths":[16,32,64],
                "steps":[2,2,2],"layer":"hyperbolic","h":0.5}"#
            }
            "ref-2d" => {
                r#"{"kind":"dense","dense_input":2,"classes":2,"widths":[8],"steps":[16],
                "h":0.1,"layer":"resnet","activation":"tanh"}"#
            }
            _ => return None,
        };
        Some(serde_json::from_str(json).expect("built-in config parses"))
    }

    /// Reads a JSON or TOML file (by extension), or a reference name such as `ref-cifar`.
    pub fn load(path_or_name: &str) -> Result<Config> {
        if let Some(c) = Config::reference(path_or_name) {
            return Ok(c);
        }
        let path = Path::new(path_or_name);
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Config(format!(
                    "`{path_or_name}` is neither a config file nor a reference name ({})",
                    REFERENCE_NAMES.join(", ")
                ))
            } else {
                Error::io(path, e)
            }
        })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let cfg = Config::parse(&text, ext == "toml")
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip_config(e))))?;
        Ok(cfg)
    }

    /// Parses JSON (or TOML) text and validates it.
    pub fn parse(text: &str, toml_syntax: bool) -> Result<Config> {
        let cfg: Config = if toml_syntax {
            toml::from_str(text).map_err(|e| Error::Config(one_line(&e.to_string())))?
        } else {
            serde_json::from_str(text).map_err(|e| Error::Config(one_line(&e.to_string())))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The checks of SPEC section 4.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        if self.widths.is_empty() {
            return err("`widths` is empty".into());
        }
        if self.widths.len() != self.steps.len() {
            return err(format!(
                "`widths` has {} entries but `steps` has {}",
                self.widths.len(),
                self.steps.len()
            ));
        }
        if self.widths.contains(&0) {
            return err("every width must be positive".into());
        }
        // Sane bounds first, so that no count derived from the config can overflow.
        use crate::limits::{MAX_CLASSES, MAX_DENSE_INPUT, MAX_TOTAL_STEPS, MAX_WIDTH};
        if let Some((k, w)) = self.widths.iter().enumerate().find(|(_, &w)| w > MAX_WIDTH) {
            return err(format!(
                "widths[{k}] = {w} exceeds the limit of {MAX_WIDTH}"
            ));
        }
        if let Some((k, s)) = self
            .steps
            .iter()
            .enumerate()
            .find(|(_, &s)| s > MAX_TOTAL_STEPS)
        {
            return err(format!(
                "steps[{k}] = {s} exceeds the limit of {MAX_TOTAL_STEPS} steps"
            ));
        }
        if self.total_steps() > MAX_TOTAL_STEPS {
            return err(format!(
                "{} steps in all exceed the limit of {MAX_TOTAL_STEPS}",
                self.total_steps()
            ));
        }
        if self.classes > MAX_CLASSES {
            return err(format!(
                "classes = {} exceeds the limit of {MAX_CLASSES}",
                self.classes
            ));
        }
        if let Some(c) = self.in_channels.filter(|&c| c > MAX_WIDTH) {
            return err(format!(
                "in_channels = {c} exceeds the limit of {MAX_WIDTH}"
            ));
        }
        if let Some(d) = self.dense_input.filter(|&d| d > MAX_DENSE_INPUT) {
            return err(format!(
                "dense_input = {d} exceeds the limit of {MAX_DENSE_INPUT}"
            ));
        }
        if self.h.is_nan() || self.h <= 0.0 || self.h.is_infinite() {
            return err(format!("h must be positive and finite, got {}", self.h));
        }
        if self.classes < 2 {
            return err(format!("classes must be at least 2, got {}", self.classes));
        }
        if !self.gamma.is_finite() || self.gamma < 0.0 {
            return err(format!("gamma must be finite and >= 0, got {}", self.gamma));
        }
        match self.kind {
            NetworkKind::Image => {
                if self.in_channels.unwrap_or(0) == 0 {
                    return err("image networks need `in_channels` > 0".into());
                }
                if self.dense_input.is_some() {
                    return err("`dense_input` is for dense networks".into());
                }
            }
            NetworkKind::Dense => {
                if self.dense_input.unwrap_or(0) == 0 {
                    return err("dense networks need `dense_input` > 0".into());
                }
                if self.in_channels.is_some() {
                    return err("`in_channels` is for image networks".into());
                }
                if self.operator != OperatorKind::Full {
                    return err("dense networks support only `operator: full`".into());
                }
                if self.connect != Connect::Conv {
                    return err("`connect: haar` is for image networks".into());
                }
                if self.layer == StepType::Imex {
                    return err("`layer: imex` is for image networks".into());
                }
            }
        }
        self.validate_ode()?;
        if self.layer == StepType::Hamiltonian {
            if let Some(w) = self.widths.iter().find(|w| *w % 2 == 1) {
                return err(format!("hamiltonian layers need even widths, got {w}"));
            }
        }
        if self.connect == Connect::Haar {
            for k in 1..self.widths.len() {
                if self.widths[k] != 4 * self.widths[k - 1] {
                    return err(format!(
                        "`connect: haar` needs widths[{k}] = 4 * widths[{}] ({} != {})",
                        k - 1,
                        self.widths[k],
                        4 * self.widths[k - 1]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The keys of section 10: only with `layer: ode`, each in its range.
    fn validate_ode(&self) -> Result<()> {
        let err = |m: String| Err(Error::Config(m));
        let Some(o) = self.ode() else {
            let given = [
                ("rhs", self.rhs.is_some()),
                ("solver", self.solver.is_some()),
                ("substeps", self.substeps.is_some()),
                ("rtol", self.rtol.is_some()),
                ("atol", self.atol.is_some()),
                ("gradient", self.gradient.is_some()),
                ("max_steps", self.max_steps.is_some()),
            ];
            if let Some((key, _)) = given.iter().find(|(_, g)| *g) {
                return err(format!(
                    "`{key}` is a key of `layer: ode`, not of `layer: {}`",
                    self.layer.name()
                ));
            }
            return Ok(());
        };
        if !matches!(
            o.rhs,
            StepType::Parabolic | StepType::Resnet | StepType::Antisymmetric
        ) {
            return err(format!(
                "`rhs` must be parabolic, resnet or antisymmetric, not {}",
                o.rhs.name()
            ));
        }
        if o.substeps == 0 || o.substeps > crate::limits::MAX_ODE_STEPS {
            return err(format!(
                "`substeps` must be in 1..={}, got {}",
                crate::limits::MAX_ODE_STEPS,
                o.substeps
            ));
        }
        for (key, v) in [("rtol", o.rtol), ("atol", o.atol)] {
            if !(v > 0.0 && v.is_finite()) {
                return err(format!("`{key}` must be a positive number, got {v}"));
            }
        }
        if o.max_steps == 0 {
            return err("`max_steps` must be at least 1".into());
        }
        Ok(())
    }

    /// Total number of steps over all units.
    pub fn total_steps(&self) -> usize {
        self.steps.iter().fold(0, |a, &s| a.saturating_add(s))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_config(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_configs_validate() {
        for name in REFERENCE_NAMES {
            Config::reference(name).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn bad_configs_are_rejected_with_a_reason() {
        let base = r#""kind":"image","in_channels":3,"classes":10,"h":0.5"#;
        let cases = [
            (
                format!(r#"{{{base},"widths":[8],"steps":[2],"layer":"hyperbolic","foo":1}}"#),
                "unknown field",
            ),
            (
                format!(r#"{{{base},"widths":[8],"steps":[2],"layer":"cubic"}}"#),
                "unknown variant",
            ),
            (
                format!(r#"{{{base},"widths":[8,8],"steps":[2],"layer":"resnet"}}"#),
                "entries",
            ),
            (
                format!(r#"{{{base},"widths":[],"steps":[],"layer":"resnet"}}"#),
                "empty",
            ),
            (
                format!(r#"{{{base},"widths":[7],"steps":[2],"layer":"hamiltonian"}}"#),
                "even",
            ),
        ];
        for (text, needle) in cases {
            let e = Config::parse(&text, false).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        let e = Config::parse(
            r#"{"kind":"image","in_channels":3,"classes":10,"h":0,"widths":[8],"steps":[2],"layer":"resnet"}"#,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("h must be positive"));
    }

    #[test]
    fn toml_parses_like_json() {
        let t = "kind = \"dense\"\ndense_input = 2\nclasses = 2\nwidths = [8]\nsteps = [4]\nlayer = \"resnet\"\nh = 0.1\nactivation = \"tanh\"\n";
        let c = Config::parse(t, true).unwrap();
        assert_eq!(c.norm_kind(), NormKind::None);
        assert_eq!(c.activation, Activation::Tanh);
    }
}
