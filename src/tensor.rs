//! Shapes and host tensors. Device buffers are each backend's associated type.

use crate::error::{Error, Result};

/// The shape of an NCHW activation. Dense features `[N, d]` are `[N, d, 1, 1]`, so that a dense
/// operator `K: [out, in]` is a 1x1 convolution and tvNorm sums over the feature index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Dims { n, c, h, w }
    }
    /// Dense features `[n, d]`.
    pub const fn dense(n: usize, d: usize) -> Self {
        Dims {
            n,
            c: d,
            h: 1,
            w: 1,
        }
    }
    pub const fn hw(&self) -> usize {
        self.h * self.w
    }
    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub const fn with_c(&self, c: usize) -> Self {
        Dims { c, ..*self }
    }
    /// After 2x2 average pooling (floor, as PyTorch's `avg_pool2d(2)`).
    pub const fn pooled(&self) -> Self {
        Dims {
            h: self.h / 2,
            w: self.w / 2,
            ..*self
        }
    }
    pub fn bytes_f32(&self) -> usize {
        self.len() * 4
    }
}

impl std::fmt::Display for Dims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

/// A named-free host tensor in f32 (the file format's precision).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = crate::limits::checked_product(&shape, "tensor")?;
        if n != data.len() {
            return Err(Error::Shape(format!(
                "shape {:?} holds {} values, data has {}",
                shape,
                n,
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![0.0; n],
        }
    }
    pub fn filled(shape: Vec<usize>, v: f32) -> Self {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![v; n],
        }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Number of elements the shape describes (also for a shape-only tensor with no data).
    pub fn numel(&self) -> usize {
        // Saturating: a wrapped product would read as a small tensor.
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
    /// A tensor of `shape` with no data (a shape for planning: nothing is allocated).
    pub fn shape_only(shape: Vec<usize>) -> Self {
        HostTensor {
            shape,
            data: Vec::new(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
