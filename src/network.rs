//! The network of SPEC section 4 as a parameter layout: every tensor's SPEC name, shape and role,
//! and the index of each one that the layers use. Kaiming-normal initialisation.

use crate::config::{Config, Connect, NetworkKind, NormKind, OperatorKind, StepType};
use crate::error::{Error, Result};
use crate::operators::MGIC_GROUP;
use crate::params::{ParamRole, ParamSet};
use crate::tensor::HostTensor;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};

/// Where the normalisation parameters of one `f` live.
#[derive(Clone, Copy, Debug)]
pub enum NormIdx {
    Tv { scale: usize, shift: usize },
    Shift { shift: usize },
}

/// The operator `K` of one `f`: indices of its weight tensors, in name order (consecutive).
#[derive(Clone, Debug)]
pub struct OpIdx {
    pub weights: Vec<usize>,
}

/// One `f(.; K, N)` inside a step.
#[derive(Clone, Debug)]
pub struct LayerIdx {
    pub op: OpIdx,
    pub norm: NormIdx,
}

/// The parameters of one step: one layer, or two for hamiltonian (`K1, N1`, `K2, N2`).
#[derive(Clone, Debug)]
pub struct StepIdx {
    pub layers: Vec<LayerIdx>,
    /// `diffusion [w]` of an IMEX step.
    pub diffusion: Option<usize>,
}

/// The connective layer after a unit.
#[derive(Clone, Copy, Debug)]
pub enum ConnectIdx {
    /// Image: `relu(BN(conv1x1(Y)))`, then pooling.
    ConvBn {
        conv: usize,
        bn_weight: usize,
        bn_bias: usize,
        running_mean: usize,
        running_var: usize,
    },
    /// Dense, where widths change: `tanh(W Y + b)`.
    Dense { weight: usize, bias: usize },
    /// The orthonormal Haar transform (SPEC section 7): nothing to learn, no pooling.
    Haar,
    /// Dense between equal widths: nothing to learn.
    None,
}

#[derive(Clone, Debug)]
pub struct UnitIdx {
    pub width: usize,
    /// Width after the connective layer.
    pub out_width: usize,
    pub steps: Vec<StepIdx>,
    pub connect: ConnectIdx,
}

/// Parameters of the opening layer.
#[derive(Clone, Copy, Debug)]
pub enum OpenIdx {
    ConvBn {
        conv: usize,
        bn_weight: usize,
        bn_bias: usize,
        running_mean: usize,
        running_var: usize,
    },
    Dense {
        weight: usize,
        bias: usize,
    },
}

/// The whole network's parameter layout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub config: Config,
    /// Names, shapes (zeros) and roles in SPEC order.
    pub template: ParamSet,
    pub open: OpenIdx,
    pub units: Vec<UnitIdx>,
    pub classifier_weight: usize,
    pub classifier_bias: usize,
}

struct Builder {
    set: ParamSet,
}

impl Builder {
    fn add(&mut self, name: String, shape: Vec<usize>, role: ParamRole) -> usize {
        // Shapes only: a layout allocates no parameter memory (`info` plans huge networks).
        self.set.push(name, role, HostTensor::shape_only(shape));
        self.set.len() - 1
    }

    fn norm(&mut self, prefix: &str, suffix: &str, kind: NormKind, w: usize) -> NormIdx {
        match kind {
            NormKind::Tv => NormIdx::Tv {
                scale: self.add(
                    format!("{prefix}norm{suffix}.weight"),
                    vec![w],
                    ParamRole::Affine,
                ),
                shift: self.add(
                    format!("{prefix}norm{suffix}.bias"),
                    vec![w],
                    ParamRole::Affine,
                ),
            },
            NormKind::None => NormIdx::Shift {
                shift: self.add(format!("{prefix}b{suffix}"), vec![w], ParamRole::Affine),
            },
        }
    }

    /// The weight tensors of one operator at width `w`, in name order. `slot` is `K` (the names
    /// go straight under `prefix`) or `K1`/`K2` (under `prefix.K1.`); the full operator keeps the
    /// name `K`/`K1`/`K2` itself. The tensors are added consecutively (the engine relies on it).
    fn operator(&mut self, cfg: &Config, prefix: &str, slot: &str, w: usize) -> Result<OpIdx> {
        let base = if slot == "K" {
            prefix.to_string()
        } else {
            format!("{prefix}{slot}.")
        };
        let tensors = match (cfg.kind, cfg.operator) {
            (NetworkKind::Dense, _) => vec![(format!("{prefix}{slot}"), vec![w, w])],
            (NetworkKind::Image, OperatorKind::Full) => {
                vec![(format!("{prefix}{slot}"), vec![w, w, 3, 3])]
            }
            (NetworkKind::Image, OperatorKind::Lean) => vec![
                (format!("{base}P"), vec![w, w, 1, 1]),
                (format!("{base}D"), vec![w, 5]),
            ],
            (NetworkKind::Image, OperatorKind::Mgic) => mgic_tensors(&base, w, MGIC_GROUP)?,
        };
        let weights = tensors
            .into_iter()
            .map(|(name, shape)| self.add(name, shape, ParamRole::Weight))
            .collect();
        Ok(OpIdx { weights })
    }
}

/// Names and shapes of the mgic operator at width `w`: `G`, `R`, then the coarse operator under
/// `coarse.`, down to the full `K` at `w <= g`.
fn mgic_tensors(base: &str, w: usize, g: usize) -> Result<Vec<(String, Vec<usize>)>> {
    if w <= g {
        return Ok(vec![(format!("{base}K"), vec![w, w, 3, 3])]);
    }
    if !w.is_multiple_of(g) || !(w / g).is_power_of_two() {
        return Err(Error::Config(format!(
            "`operator: mgic` needs operator widths of at most {g} or {g} times a power of two, got {w}"
        )));
    }
    let mut out = vec![
        (format!("{base}G"), vec![w, g, 3, 3]),
        (format!("{base}R"), vec![w / 2, g, 1, 1]),
    ];
    out.extend(mgic_tensors(&format!("{base}coarse."), w / 2, g)?);
    Ok(out)
}

impl Layout {
    pub fn new(config: &Config) -> Result<Layout> {
        config.validate()?;
        let chain = config.connect == Connect::Haar && config.layer == StepType::Hyperbolic;
        if chain && config.steps.contains(&0) {
            return Err(Error::Config(
                "`connect: haar` with hyperbolic layers needs at least one step per unit".into(),
            ));
        }
        let cfg = config;
        let mut b = Builder {
            set: ParamSet::new(),
        };
        let w0 = cfg.widths[0];
        let open = match cfg.kind {
            NetworkKind::Image => OpenIdx::ConvBn {
                conv: b.add(
                    "open.conv.weight".into(),
                    vec![w0, cfg.input_width(), 3, 3],
                    ParamRole::Weight,
                ),
                bn_weight: b.add("open.bn.weight".into(), vec![w0], ParamRole::Affine),
                bn_bias: b.add("open.bn.bias".into(), vec![w0], ParamRole::Affine),
                running_mean: b.add("open.bn.running_mean".into(), vec![w0], ParamRole::Buffer),
                running_var: b.add("open.bn.running_var".into(), vec![w0], ParamRole::Buffer),
            },
            NetworkKind::Dense => OpenIdx::Dense {
                weight: b.add(
                    "open.weight".into(),
                    vec![w0, cfg.input_width()],
                    ParamRole::Weight,
                ),
                bias: b.add("open.bias".into(), vec![w0], ParamRole::Affine),
            },
        };
        let norm = cfg.norm_kind();
        let rule = crate::steps::rule::rule_of(cfg.step_layer())?;
        let mut units = Vec::new();
        for (k, (&w, &nt)) in cfg.widths.iter().zip(&cfg.steps).enumerate() {
            let mut steps = Vec::with_capacity(nt);
            for j in 0..nt {
                let p = format!("units.{k}.steps.{j}.");
                // The rule says how many layers a step has and on how many channels (its
                // parts); SPEC names: `K`, or `K1`, `K2`, ... (operators first, then norms).
                let n_layers = rule.layer_count();
                let width = w / rule.parts;
                let suffix = |i: usize| match n_layers {
                    1 => String::new(),
                    _ => (i + 1).to_string(),
                };
                let ops = (0..n_layers)
                    .map(|i| b.operator(cfg, &p, &format!("K{}", suffix(i)), width))
                    .collect::<Result<Vec<_>>>()?;
                let layers = ops
                    .into_iter()
                    .enumerate()
                    .map(|(i, op)| LayerIdx {
                        op,
                        norm: b.norm(&p, &suffix(i), norm, width),
                    })
                    .collect();
                let diffusion = rule
                    .solve
                    .then(|| b.add(format!("{p}diffusion"), vec![w], ParamRole::Affine));
                steps.push(StepIdx { layers, diffusion });
            }
            let out_width = *cfg.widths.get(k + 1).unwrap_or(&w);
            let p = format!("units.{k}.connect.");
            let connect = match cfg.kind {
                NetworkKind::Image if cfg.connect == Connect::Haar => ConnectIdx::Haar,
                NetworkKind::Image => ConnectIdx::ConvBn {
                    conv: b.add(
                        format!("{p}conv.weight"),
                        vec![out_width, w, 1, 1],
                        ParamRole::Weight,
                    ),
                    bn_weight: b.add(format!("{p}bn.weight"), vec![out_width], ParamRole::Affine),
                    bn_bias: b.add(format!("{p}bn.bias"), vec![out_width], ParamRole::Affine),
                    running_mean: b.add(
                        format!("{p}bn.running_mean"),
                        vec![out_width],
                        ParamRole::Buffer,
                    ),
                    running_var: b.add(
                        format!("{p}bn.running_var"),
                        vec![out_width],
                        ParamRole::Buffer,
                    ),
                },
                NetworkKind::Dense if out_width != w => ConnectIdx::Dense {
                    weight: b.add(format!("{p}weight"), vec![out_width, w], ParamRole::Weight),
                    bias: b.add(format!("{p}bias"), vec![out_width], ParamRole::Affine),
                },
                NetworkKind::Dense => ConnectIdx::None,
            };
            units.push(UnitIdx {
                width: w,
                out_width,
                steps,
                connect,
            });
        }
        let wl = *cfg.widths.last().expect("validated non-empty");
        let classifier_weight = b.add(
            "classifier.weight".into(),
            vec![cfg.classes, wl],
            ParamRole::Weight,
        );
        let classifier_bias = b.add(
            "classifier.bias".into(),
            vec![cfg.classes],
            ParamRole::Affine,
        );
        Ok(Layout {
            config: cfg.clone(),
            template: b.set,
            open,
            units,
            classifier_weight,
            classifier_bias,
        })
    }

    /// Fresh parameters: Kaiming-normal (`std = sqrt(2 / fan_in)`) for operators and
    /// convolutions, PyTorch's uniform `±1/sqrt(fan_in)` for linear layers and their biases,
    /// ones and zeros for normalisation. Deterministic in `seed`.
    pub fn init(&self, seed: u64) -> ParamSet {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut set = self.zeros();
        let linear_weights: Vec<usize> = [Some(self.classifier_weight), self.dense_linear()]
            .into_iter()
            .flatten()
            .chain(self.units.iter().filter_map(|u| match u.connect {
                ConnectIdx::Dense { weight, .. } => Some(weight),
                _ => None,
            }))
            .collect();
        let names: Vec<String> = set.names().map(str::to_string).collect();
        for (i, name) in names.iter().enumerate() {
            let t = set.get_mut(name).expect("own name");
            let fan_in: usize = t.shape[1..].iter().product();
            if linear_weights.contains(&i) {
                let bound = 1.0 / (fan_in as f32).sqrt();
                let u = Uniform::new_inclusive(-bound, bound).expect("finite bound");
                t.data.iter_mut().for_each(|v| *v = u.sample(&mut rng));
                // The bias belongs to the same layer: same bound.
                if let Some(bias) = linear_bias_of(name) {
                    let bt = set.get_mut(&bias).expect("linear layers have a bias");
                    bt.data.iter_mut().for_each(|v| *v = u.sample(&mut rng));
                }
            } else if self.template.iter().nth(i).map(|(_, r, _)| r) == Some(ParamRole::Weight) {
                let std = (2.0 / fan_in as f64).sqrt();
                let n = Normal::new(0.0, std).expect("positive std");
                t.data
                    .iter_mut()
                    .for_each(|v| *v = n.sample(&mut rng) as f32);
            }
        }
        set
    }

    /// Host parameters at their starting constants: variances, scales and diffusion
    /// coefficients one, everything else zero. Call [`Layout::check_host_memory`] first.
    pub fn zeros(&self) -> ParamSet {
        let mut set = self.template.clone();
        for (name, role, t) in set.iter_mut() {
            let ones = (role == ParamRole::Buffer && name.ends_with("running_var"))
                || (role == ParamRole::Affine
                    && (name.ends_with(".weight") || name.ends_with("diffusion")));
            *t = HostTensor::filled(t.shape.clone(), if ones { 1.0 } else { 0.0 });
        }
        set
    }

    /// Bytes of one f32 copy of every parameter and buffer.
    pub fn param_bytes(&self) -> usize {
        self.template.total_count().saturating_mul(4)
    }

    /// Checks that `copies` host copies of the parameters fit the machine's memory.
    pub fn check_host_memory(&self, copies: usize, what: &str) -> Result<()> {
        crate::limits::check_host_memory(
            self.param_bytes().saturating_mul(copies),
            &format!("{what} ({} parameters)", self.parameter_count()),
            "use smaller `widths`, fewer `steps` or `operator: lean`/`mgic`",
        )
    }

    fn dense_linear(&self) -> Option<usize> {
        match self.open {
            OpenIdx::Dense { weight, .. } => Some(weight),
            OpenIdx::ConvBn { .. } => None,
        }
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.template.trainable_count()
    }
}

fn linear_bias_of(weight_name: &str) -> Option<String> {
    weight_name
        .strip_suffix("weight")
        .map(|p| format!("{p}bias"))
}
