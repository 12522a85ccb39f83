//! The potential network's parameters: one flat vector in SPEC order, with named views.

use super::config::PotentialShape;
use super::real::Real;
use crate::error::{Error, Result};
use crate::params::{ParamRole, ParamSet};
use crate::tensor::HostTensor;
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use std::collections::HashMap;

/// Where each parameter lies in the flat vector (SPEC section 11 order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offsets {
    pub open_weight: usize,
    pub open_bias: usize,
    /// First residual layer's weight; layer i (0-based) starts at `steps + i * (m*m + m)`.
    pub steps: usize,
    pub w: usize,
    pub a: usize,
    pub c_weight: usize,
    pub c_bias: usize,
    pub total: usize,
}

impl PotentialShape {
    pub fn offsets(&self) -> Offsets {
        let (n, m) = (self.n, self.m);
        let open_weight = 0;
        let open_bias = m * n;
        let steps = open_bias + m;
        let w = steps + self.layers * (m * m + m);
        let a = w + m;
        let c_weight = a + self.rank * n;
        let c_bias = c_weight + n;
        Offsets {
            open_weight,
            open_bias,
            steps,
            w,
            a,
            c_weight,
            c_bias,
            total: c_bias + 1,
        }
    }

    /// Every parameter's name, shape and offset, in SPEC order.
    pub fn named(&self) -> Vec<(String, Vec<usize>, usize, ParamRole)> {
        let (n, m) = (self.n, self.m);
        let o = self.offsets();
        let mut v = vec![
            (
                "open.weight".into(),
                vec![m, n],
                o.open_weight,
                ParamRole::Weight,
            ),
            ("open.bias".into(), vec![m], o.open_bias, ParamRole::Affine),
        ];
        for i in 0..self.layers {
            let at = o.steps + i * (m * m + m);
            v.push((
                format!("steps.{i}.weight"),
                vec![m, m],
                at,
                ParamRole::Weight,
            ));
            v.push((
                format!("steps.{i}.bias"),
                vec![m],
                at + m * m,
                ParamRole::Affine,
            ));
        }
        v.push(("w".into(), vec![m], o.w, ParamRole::Weight));
        v.push(("A".into(), vec![self.rank, n], o.a, ParamRole::Weight));
        v.push(("c.weight".into(), vec![1, n], o.c_weight, ParamRole::Weight));
        v.push(("c.bias".into(), vec![1], o.c_bias, ParamRole::Affine));
        v
    }

    /// Number of scalars.
    pub fn parameter_count(&self) -> usize {
        self.offsets().total
    }
}

/// A potential network: its sizes and its flat parameters in precision `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct PotentialNet<T: Real> {
    pub shape: PotentialShape,
    pub theta: Vec<T>,
}

impl<T: Real> PotentialNet<T> {
    /// PyTorch `Linear`'s default (uniform in +-1/sqrt(fan_in)) for the layers, A and w;
    /// c and c_0 zero, as OT-Flow starts with no linear term.
    pub fn init(shape: PotentialShape, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut theta = vec![T::default(); shape.parameter_count()];
        let o = shape.offsets();
        let mut fill = |from: usize, to: usize, fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            let dist = Uniform::new(-b, b).expect("positive bound");
            for v in &mut theta[from..to] {
                *v = T::from_f64(dist.sample(&mut rng));
            }
        };
        fill(o.open_weight, o.steps, shape.n);
        fill(o.steps, o.w, shape.m);
        fill(o.w, o.a, shape.m);
        fill(o.a, o.c_weight, shape.n);
        PotentialNet { shape, theta }
    }

    /// The same network in another precision.
    pub fn cast<U: Real>(&self) -> PotentialNet<U> {
        PotentialNet {
            shape: self.shape,
            theta: self.theta.iter().map(|v| U::from_f64(v.to_f64())).collect(),
        }
    }

    /// The named tensors (f32, the file format) in SPEC order.
    pub fn to_params(&self) -> ParamSet {
        let mut p = ParamSet::new();
        for (name, dims, at, role) in self.shape.named() {
            let len: usize = dims.iter().product();
            let data = self.theta[at..at + len]
                .iter()
                .map(|v| v.to_f64() as f32)
                .collect();
            p.push(name, role, HostTensor { shape: dims, data });
        }
        p
    }

    /// Reads the SPEC names from a weights file's tensors; `what` names the file in errors.
    pub fn from_tensors(
        shape: PotentialShape,
        mut tensors: HashMap<String, HostTensor>,
        what: &str,
    ) -> Result<Self> {
        let mut theta = vec![T::default(); shape.parameter_count()];
        for (name, dims, at, _) in shape.named() {
            let t = tensors.remove(&name).ok_or_else(|| {
                Error::MissingTensor(format!("{name} in {what} (a potential network's weights)"))
            })?;
            if t.shape != dims {
                return Err(Error::Shape(format!(
                    "{what}: tensor `{name}` has shape {:?}, the config needs {:?}",
                    t.shape, dims
                )));
            }
            for (dst, &src) in theta[at..at + t.data.len()].iter_mut().zip(&t.data) {
                *dst = T::from_f64(src as f64);
            }
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::Weights(format!(
                "{what}: tensor `{extra}` is not a parameter of this potential network"
            )));
        }
        Ok(PotentialNet { shape, theta })
    }
}
