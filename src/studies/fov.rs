//! Field of view of one step: the response of an explicit step, a symmetric layer and an IMEX
//! step to a single-pixel input (SPEC sections 3 and 7), computed by the layer code itself on
//! the f64 reference backend so that tiny far-field values are not lost to f32 rounding.
//!
//! The 3x3 weights are positive and the input is a positive impulse, so `relu` passes every
//! pixel that `K` reaches and the support of each response is exactly the set of pixels the
//! step couples: 3x3 for `y + h sigma(N(K y))`, 5x5 for `y + h f(y)` with `f = -K^T sigma(N(K y))`
//! (K, then K^T), and the whole image after the implicit solve `(I + h L)^{-1}`, whose inverse is
//! dense.

use crate::backend::reference::Reference;
use crate::backend::{Activation, Backend, Norm};
use crate::config::StepType;
use crate::error::{Error, Result};
use crate::operators::OpRef;
use crate::steps::{forward_single, imex_forward, Layer, StepSettings};
use crate::tensor::Dims;
use rand::{Rng, SeedableRng};

/// The experiment: a `size x size` image with `channels` channels, an impulse of 1 at the centre
/// of every channel, step size `h` and diffusion weight `d` (`a_c = d^2`) for the IMEX step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FovSetup {
    pub size: usize,
    pub channels: usize,
    pub h: f64,
    pub diffusion: f64,
    /// A pixel counts as reached when `max_c |response| > threshold`.
    pub threshold: f64,
    /// Seeds the positive 3x3 weights.
    pub seed: u64,
}

impl Default for FovSetup {
    fn default() -> Self {
        FovSetup {
            size: 33,
            channels: 4,
            h: 0.5,
            diffusion: 3.0,
            threshold: 1e-6,
            seed: 0,
        }
    }
}

/// One step's response: `max_c |y_out[c, i, j]|` as a row-major `size x size` map.
#[derive(Clone, Debug, PartialEq)]
pub struct FovResponse {
    pub name: &'static str,
    pub map: Vec<f64>,
    /// Pixels with a response above the setup's threshold.
    pub count: usize,
}

/// The responses of one explicit (ResNet) step, one symmetric layer (the parabolic step
/// `y + h f(y)`) and one IMEX step, in that order.
pub fn single_pixel_fov(s: &FovSetup) -> Result<[FovResponse; 3]> {
    if s.size == 0 || s.size > 1024 || s.channels == 0 || s.channels > 64 {
        return Err(Error::Input(format!(
            "field of view: size {} and channels {} must be in 1..=1024 and 1..=64",
            s.size, s.channels
        )));
    }
    if !(s.h > 0.0 && s.h.is_finite() && s.diffusion.is_finite() && s.threshold >= 0.0) {
        return Err(Error::Input(format!(
            "field of view: need h > 0 (got {}), a finite diffusion (got {}) and a threshold >= 0 (got {})",
            s.h, s.diffusion, s.threshold
        )));
    }
    let be = Reference;
    let (c, n) = (s.channels, s.size);
    let d = Dims::new(1, c, n, n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
    let k: Vec<f64> = (0..c * c * 9)
        .map(|_| rng.random_range(0.25..1.0))
        .collect();
    let k = be.upload(&k)?;
    // tvNorm with scale 1 and shift 0: zero stays zero, so the response is the step of the impulse.
    let (scale, shift) = (be.upload(&vec![1.0; c])?, be.zeros(c)?);
    let diff = be.upload(&vec![s.diffusion; c])?;
    let layer = Layer {
        op: OpRef::Full3x3(&k),
        norm: Norm::Tv {
            s: &scale,
            b: &shift,
        },
    };
    let mut x = vec![0.0; c * n * n];
    for ch in 0..c {
        x[(ch * n + n / 2) * n + n / 2] = 1.0;
    }
    let x = be.upload(&x)?;
    let kind = |layer| StepSettings {
        layer,
        h: s.h,
        act: Activation::Relu,
        gamma: 0.0,
    };
    let outs = [
        (
            "explicit step",
            forward_single(&be, kind(StepType::Resnet), layer, &x, None, d)?,
        ),
        (
            "symmetric layer",
            forward_single(&be, kind(StepType::Parabolic), layer, &x, None, d)?,
        ),
        (
            "IMEX step",
            imex_forward(&be, kind(StepType::Imex), layer, &diff, &x, d)?,
        ),
    ];
    let mut out = Vec::with_capacity(outs.len());
    for (name, y) in outs {
        let y = be.download(&y)?;
        let mut map = vec![0.0f64; n * n];
        for plane in y.chunks_exact(n * n) {
            for (m, v) in map.iter_mut().zip(plane) {
                *m = m.max(v.abs());
            }
        }
        let count = map.iter().filter(|&&v| v > s.threshold).count();
        out.push(FovResponse { name, map, count });
    }
    out.try_into()
        .map_err(|_| Error::Other("field of view: expected three responses".into()))
}
