//! The backend interface: every primitive op with its forward and vector-Jacobian products.
//!
//! Layers, the scheduler and the tests are written once against [`Backend`] and run on every
//! implementation: [`reference::Reference`] (f64, plain loops: the oracle), [`cpu::Cpu`] (fast
//! f32) and `cuda::Cuda` (hand-written kernels). Fused ops have default bodies that compose the
//! primitives; the default *is* the specification, and a backend overrides only what it fuses.
//! No default moves data to the host: a backend without a kernel for an op calls the op's
//! [`host_fallback`] from its impl.
//!
//! Conventions: activations are NCHW described by [`Dims`]; weights are flat buffers in the
//! SPEC's layouts (`K: [cout, cin, 3, 3]`, 1x1 `K: [cout, cin]`); every op returns fresh buffers
//! (the backend decides where they live) and weight gradients are returned, not accumulated.

pub mod cpu;
pub mod cuda;
pub mod half16;
pub mod host_fallback;
/// Constants shared with the CUDA kernels (build.rs writes them into `pdenet_constants.cuh`).
pub mod kernel_constants;
pub mod optim;
pub mod reference;

use crate::error::Result;
use crate::operators::OpRef;
use crate::tensor::Dims;

/// [`Backend::scaled_sq`] over host values, summed in index order.
pub fn scaled_sq_host<T: Copy + Into<f64>>(
    x: &[T],
    a: &[T],
    b: &[T],
    atol: f64,
    rtol: f64,
) -> Result<f64> {
    if x.len() != a.len() || x.len() != b.len() {
        return Err(crate::Error::Shape(format!(
            "scaled norm: lengths {} / {} / {} differ",
            x.len(),
            a.len(),
            b.len()
        )));
    }
    Ok(x.iter()
        .zip(a)
        .zip(b)
        .map(|((&x, &a), &b)| scaled_term(x.into(), a.into(), b.into(), atol, rtol))
        .sum())
}

/// One term of [`Backend::scaled_sq`] (the CUDA kernel computes the same in double).
#[inline]
pub fn scaled_term(x: f64, a: f64, b: f64, atol: f64, rtol: f64) -> f64 {
    let e = x / (atol + rtol * a.abs().max(b.abs()));
    e * e
}

/// Pointwise nonlinearity `sigma`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Tanh,
    /// `log(e^x + e^-x)`, derivative `tanh`.
    Logcosh,
}

impl Activation {
    /// Scalar forward in f64 (the reference definition).
    pub fn apply(self, x: f64) -> f64 {
        match self {
            // Not `x.max(0.0)`, which maps NaN to 0: relu(NaN) is NaN, as in PyTorch.
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::Tanh => x.tanh(),
            // log(2 cosh x) computed without overflow.
            Activation::Logcosh => x.abs() + (-2.0 * x.abs()).exp().ln_1p(),
        }
    }
    /// Scalar derivative in f64 (relu'(0) = 0, as PyTorch).
    pub fn derivative(self, x: f64) -> f64 {
        match self {
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            Activation::Logcosh => x.tanh(),
        }
    }
}

/// Batch statistics saved by [`Backend::batchnorm_train`] for the VJP and the running update.
pub struct BnStats<B> {
    /// Per-channel batch mean `[c]`.
    pub mean: B,
    /// Per-channel biased batch variance `[c]`.
    pub var: B,
}

/// tvNorm epsilon and the batch-norm epsilon and momentum (SPEC section 2), shared with the kernels.
pub use kernel_constants::{BN_EPS, BN_MOMENTUM, TV_EPS};

/// A compute device. All buffers hold real numbers in the backend's precision (f64 for the
/// reference, f32 elsewhere); `IBuf` holds the i32 fixed-point states of the `exact` policy and
/// `HBuf` the 16-bit states that `store` keeps under [`Storage::Bf16`] / [`Storage::F16`].
pub trait Backend: Send + Sync + Sized {
    type Buf: Send + Sync;
    type IBuf: Send + Sync;
    type HBuf: Send + Sync;

    /// Short name for messages and reports ("reference", "cpu", "cuda").
    fn name(&self) -> &'static str;

    /// Working memory that `op` needs beyond its inputs and outputs, for the memory plan
    /// ([`crate::schedule::plan::Planner::for_device`]). Default: none.
    fn scratch_bytes(&self, _op: ScratchOp) -> Scratch {
        Scratch::default()
    }
    /// Whether [`Backend::step_full3x3`] and [`Backend::sym_full3x3_vjp`] run fused, allocating
    /// only their outputs (plus [`Backend::scratch_bytes`]) instead of the buffers of the
    /// default composition. The memory plan follows it.
    fn fuses_sym_full3x3(&self) -> bool {
        false
    }
    /// Whether [`Backend::step_full3x3_vjp`] runs fused, allocating only its outputs (plus
    /// [`Backend::scratch_bytes`]) instead of running its default body. The memory plan
    /// follows it.
    fn fuses_step_full3x3_vjp(&self) -> bool {
        false
    }

    // ---- memory -------------------------------------------------------------------------
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, data: &[f64]) -> Result<Self::Buf>;
    fn upload_f32(&self, data: &[f32]) -> Result<Self::Buf> {
        let v: Vec<f64> = data.iter().map(|&x| x as f64).collect();
        self.upload(&v)
    }
    /// Uploads a host tensor, checking that its data fill its shape. The memory planner
    /// overrides it to read the shape alone, so that a plan needs no host buffers.
    fn upload_host(&self, t: &crate::tensor::HostTensor) -> Result<Self::Buf> {
        crate::ensure_shape!(
            t.data.len() == t.numel(),
            "a tensor of shape {:?} holds {} values",
            t.shape,
            t.data.len()
        );
        self.upload_f32(&t.data)
    }
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f64>>;
    fn download_f32(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        Ok(self.download(buf)?.into_iter().map(|x| x as f32).collect())
    }
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    fn copy(&self, buf: &Self::Buf) -> Result<Self::Buf>;
    fn iupload(&self, data: &[i32]) -> Result<Self::IBuf>;
    fn idownload(&self, buf: &Self::IBuf) -> Result<Vec<i32>>;
    /// `x` rounded to nearest (ties to even) in the 16-bit `format` (`Storage::F32` is refused):
    /// how a kept state is stored. NaN stays NaN; f16 overflows to infinity beyond 65504.
    fn pack16(&self, x: &Self::Buf, format: Storage) -> Result<Self::HBuf>;
    /// The values of a packed buffer, exactly.
    fn unpack16(&self, h: &Self::HBuf) -> Result<Self::Buf>;

    // ---- elementwise ----------------------------------------------------------------------
    /// `sum_i a_i x_i` (all `x_i` of one length, at least one term).
    fn lincomb(&self, terms: &[(f64, &Self::Buf)]) -> Result<Self::Buf>;
    /// `y += a x`.
    fn axpy(&self, a: f64, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// `sum_i (x_i / (atol + rtol max(|a_i|, |b_i|)))^2` in f64: the ODE controller's scaled
    /// norm (SPEC section 10) before the mean and root. Deterministic whatever the thread count
    /// ([`host_fallback::scaled_sq`] sums on the host in index order).
    fn scaled_sq(
        &self,
        x: &Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        atol: f64,
        rtol: f64,
    ) -> Result<f64>;

    // ---- optimizer updates, in place (formulas: [`optim`]) -------------------------------
    /// One SGD step of weights `w` with momentum buffer `m` and gradient `g` (one length).
    fn sgd_step(
        &self,
        w: &mut Self::Buf,
        m: &mut Self::Buf,
        g: &Self::Buf,
        s: &optim::SgdStep,
    ) -> Result<()>;
    /// One Adam step of weights `w` with moments `m`, `v` and gradient `g` (one length).
    fn adam_step(
        &self,
        w: &mut Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        g: &Self::Buf,
        s: &optim::AdamStep,
    ) -> Result<()>;

    // ---- convolution ([`ConvSpec`]: 3x3 or 1x1, zero padding, stride 1, no bias, groups) -
    /// `conv(x, K)`: x `[n, cin, h, w]` (`d`), K `[cout, cin / groups, s, s]` (`s` =
    /// [`ConvSpec::side`]; flat `[cout, cin]` for a full 1x1, which is also the dense operator and
    /// the linear layer) -> `[n, cout, h, w]`. Group `g` maps input channels
    /// `[g cin/groups, (g+1) cin/groups)` to output channels `[g cout/groups, (g+1) cout/groups)`
    /// (PyTorch's `groups`); `groups` must divide `cin` and `cout`.
    fn conv(
        &self,
        spec: ConvSpec,
        x: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        cout: usize,
    ) -> Result<Self::Buf>;
    /// `convT(z, K)`, the exact adjoint of [`Backend::conv`] (`<conv(x, K), z> = <x,
    /// convT(z, K)>`): z `[n, cout, h, w]` (`d`), K `[cout, cin / groups, s, s]` ->
    /// `[n, cin, h, w]`.
    fn conv_t(
        &self,
        spec: ConvSpec,
        z: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        cin: usize,
    ) -> Result<Self::Buf>;
    /// Weight gradient of `conv(x, K)` given the output cotangent `dz` `[n, cout, h, w]`:
    /// `[cout, cin / groups, s, s]`, `dK[o,i,a,b] = sum_{n,p} dz[n,o,p] x[n,gi+i,p + (a-r, b-r)]`
    /// with `r = (s-1)/2` and `gi` the first input channel of `o`'s group (for a full 1x1,
    /// `dK[o,i] = sum_{n,p} dz[n,o,p] x[n,i,p]`). `d` is the shape of `x`.
    fn conv_wgrad(
        &self,
        spec: ConvSpec,
        x: &Self::Buf,
        d: Dims,
        dz: &Self::Buf,
        cout: usize,
    ) -> Result<Self::Buf>;

    // ---- per-channel affine maps and normalisation ---------------------------------------
    /// `x + b[c]`.
    fn add_channel_bias(&self, x: &Self::Buf, d: Dims, b: &Self::Buf) -> Result<Self::Buf>;
    /// `sum_{n,p} dy[n,c,p]` -> `[c]` (the VJP of a channel bias).
    fn channel_sum(&self, dy: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    /// tvNorm: `s_c x / sqrt(sum_c' x^2 + eps) + b_c`, pixel-wise across channels.
    fn tvnorm(&self, x: &Self::Buf, d: Dims, s: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf>;
    /// Returns `(dx, ds, db)`.
    fn tvnorm_vjp(
        &self,
        x: &Self::Buf,
        d: Dims,
        s: &Self::Buf,
        dy: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;
    /// Training-mode batch norm over (N, H, W); returns the output and the batch statistics.
    fn batchnorm_train(
        &self,
        x: &Self::Buf,
        d: Dims,
        gamma: &Self::Buf,
        beta: &Self::Buf,
    ) -> Result<(Self::Buf, BnStats<Self::Buf>)>;
    /// Evaluation-mode batch norm with running statistics.
    fn batchnorm_eval(
        &self,
        x: &Self::Buf,
        d: Dims,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
    ) -> Result<Self::Buf>;
    /// VJP of training-mode batch norm; returns `(dx, dgamma, dbeta)`.
    fn batchnorm_vjp(
        &self,
        x: &Self::Buf,
        d: Dims,
        gamma: &Self::Buf,
        stats: &BnStats<Self::Buf>,
        dy: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;
    /// PyTorch's running update: `r <- (1-m) r + m stat`, with the unbiased variance
    /// (`count` = N*H*W values per channel).
    fn batchnorm_update_running(
        &self,
        running_mean: &mut Self::Buf,
        running_var: &mut Self::Buf,
        stats: &BnStats<Self::Buf>,
        count: usize,
    ) -> Result<()>;

    // ---- pointwise nonlinearity ------------------------------------------------------------
    fn activation(&self, act: Activation, x: &Self::Buf) -> Result<Self::Buf>;
    /// `sigma'(x) * dy`, with `x` the activation's input.
    fn activation_vjp(&self, act: Activation, x: &Self::Buf, dy: &Self::Buf) -> Result<Self::Buf>;

    // ---- pooling ----------------------------------------------------------------------------
    /// 2x2 average pooling, stride 2 (floor for odd sizes); `d` is the input shape.
    fn avgpool2(&self, x: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    /// `dy` has the pooled shape; returns `d`-shaped `dx`.
    fn avgpool2_vjp(&self, dy: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    /// Mean over all pixels: `[n, c, h, w]` -> `[n, c]`.
    fn global_mean(&self, x: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    fn global_mean_vjp(&self, dy: &Self::Buf, d: Dims) -> Result<Self::Buf>;

    // ---- channel halves (hamiltonian) -------------------------------------------------------
    /// Splits `[n, c, h, w]` into channels `[0, c1)` and `[c1, c)`.
    fn split_channels(&self, x: &Self::Buf, d: Dims, c1: usize) -> Result<(Self::Buf, Self::Buf)>;
    /// Inverse of [`Backend::split_channels`]: `a` has `c1` channels, `b` the rest of `d.c`.
    fn concat_channels(
        &self,
        a: &Self::Buf,
        b: &Self::Buf,
        d: Dims,
        c1: usize,
    ) -> Result<Self::Buf>;

    // ---- loss -------------------------------------------------------------------------------
    /// Mean softmax cross-entropy of `logits [n, classes]`; returns the loss and its gradient
    /// with respect to the logits. Labels must be `< classes` (checked by the caller).
    fn softmax_xent(
        &self,
        logits: &Self::Buf,
        n: usize,
        classes: usize,
        labels: &[usize],
    ) -> Result<(f64, Self::Buf)>;

    // ---- fixed point (the `exact` policy) ---------------------------------------------------
    /// `round(x * 2^shift)` as i32 (saturating).
    fn quantize(&self, x: &Self::Buf, shift: u32) -> Result<Self::IBuf>;
    /// `q / 2^shift`.
    fn dequantize(&self, q: &Self::IBuf, shift: u32) -> Result<Self::Buf>;
    /// `sum_i c_i q_i + round(coef * f)` in wrapping i32 arithmetic, so that the update can be
    /// undone bit for bit whatever the values.
    fn fixed_update(
        &self,
        terms: &[(i32, &Self::IBuf)],
        coef: f64,
        f: &Self::Buf,
    ) -> Result<Self::IBuf>;

    // ---- operators of SPEC section 7 (host round trips: [`host_fallback`]) -------------------
    /// Depthwise 5-point stencil: x `[n, c, h, w]` (`d`), D `[c, 5]` (centre, up, down, left,
    /// right), zero padding.
    fn stencil5(&self, x: &Self::Buf, d: Dims, dw: &Self::Buf) -> Result<Self::Buf>;
    /// Adjoint of [`Backend::stencil5`].
    fn stencil5_t(&self, z: &Self::Buf, d: Dims, dw: &Self::Buf) -> Result<Self::Buf>;
    /// `dD[c, t] = sum_{n,p} dz[n, c, p] x[n, c, p + off_t]`: `[c, 5]`.
    fn stencil5_wgrad(&self, x: &Self::Buf, d: Dims, dz: &Self::Buf) -> Result<Self::Buf>;

    /// The implicit diffusion solve of IMEX: `(I + h a_c L)^{-1} x` per channel, L the periodic
    /// 5-point negative Laplacian, `a_c = diff_c^2` (`diff: [c]`); [`host_fallback`] runs
    /// `rustfft`.
    fn diffusion_solve(
        &self,
        x: &Self::Buf,
        d: Dims,
        diff: &Self::Buf,
        h: f64,
    ) -> Result<Self::Buf>;
    /// VJP of [`Backend::diffusion_solve`] given its output `y` and the cotangent `g`:
    /// returns `(dx, ddiff)`.
    fn diffusion_solve_vjp(
        &self,
        y: &Self::Buf,
        d: Dims,
        diff: &Self::Buf,
        h: f64,
        g: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf)>;

    /// Orthonormal 2x2 Haar transform of every channel: `[n, c, h, w]` (`d`) ->
    /// `[n, 4c, h/2, w/2]`, output channel `4c + i` for filter i (SPEC section 7).
    fn haar(&self, x: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    /// Inverse (= adjoint) of [`Backend::haar`]; `d` is the shape of the result.
    fn haar_inv(&self, y: &Self::Buf, d: Dims) -> Result<Self::Buf>;
    /// Fixed point: `2 H q`, exact in integers (a state with one more fractional bit).
    fn haar_fixed(&self, q: &Self::IBuf, d: Dims) -> Result<Self::IBuf>;
    /// Inverse of [`Backend::haar_fixed`] (bit-exact).
    fn haar_fixed_inv(&self, q: &Self::IBuf, d: Dims) -> Result<Self::IBuf>;

    // ---- TNRD reaction-diffusion stage (restore::tnrd; host round trip: [`host_fallback`]) --
    /// One TNRD stage on grey images `u`, `f` `[n, 1, h, w]` (`d`):
    /// `u - sum_i K_i^T phi_i(K_i u) - lambda (u - f)`, with `K_i u` the correlation of filter
    /// `i` of `k` (`[filters, size, size]`, used as given) under symmetric padding, `K_i^T` its
    /// exact adjoint and `phi_i` the Gaussian-RBF influence function with weights
    /// `rbf[i, 0..CENTRES]` ([`reference::tnrd`] is the specification).
    #[allow(clippy::too_many_arguments)]
    fn tnrd_stage(
        &self,
        u: &Self::Buf,
        f: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        rbf: &Self::Buf,
        lambda: f64,
        size: usize,
    ) -> Result<Self::Buf>;
    /// The VJP of [`Backend::tnrd_stage`] for the output cotangent `g`: the gradients against
    /// `u`, `f`, `k`, `rbf` and `lambda`, the parameter ones summed over the `n` images.
    #[allow(clippy::too_many_arguments)]
    fn tnrd_stage_vjp(
        &self,
        u: &Self::Buf,
        f: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        rbf: &Self::Buf,
        lambda: f64,
        size: usize,
        g: &Self::Buf,
    ) -> Result<TnrdGrads<Self::Buf>>;

    // ---- fused ops (defaults compose the primitives; backends may override) ----------------
    /// One explicit step with the full 3x3 operator: `sum_i a_i x_i + coef * f(y)`, where
    /// `f(y) = -K^T sigma(N(K y))` is the symmetric layer (SPEC section 2). With
    /// `terms = [(1, y)]`, `coef = h` this is a parabolic step; `[(2, y), (-1, y_prev)]`,
    /// `coef = h^2` a leapfrog step; a Verlet half-step updates the other half of the state.
    #[allow(clippy::too_many_arguments)]
    fn step_full3x3(
        &self,
        terms: &[(f64, &Self::Buf)],
        coef: f64,
        y: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        norm: Norm<'_, Self::Buf>,
        act: Activation,
    ) -> Result<Self::Buf> {
        crate::operators::sym_step(self, OpRef::Full3x3(k), terms, coef, y, d, norm, act)
    }

    /// The VJP of `f(y) = -K^T sigma(N(K y))` (full 3x3 operator) for the cotangent `g`:
    /// returns `J_f(y)^T g` and the gradients of `K` and the norm's parameters.
    #[allow(clippy::too_many_arguments)]
    fn sym_full3x3_vjp(
        &self,
        y: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        norm: Norm<'_, Self::Buf>,
        act: Activation,
        g: &Self::Buf,
    ) -> Result<SymGrads<Self::Buf>> {
        sym_full3x3_vjp_composed(self, y, d, k, norm, act, g)
    }

    /// [`Backend::sym_full3x3_vjp`] at `y` for `g` and [`Backend::step_full3x3`] at the same
    /// `y`, returned as `(step, vjp)`: the leapfrog backward's VJP at `Y_j` and its rebuild
    /// `Y_{j-1} = 2 Y_j - Y_{j+1} + h^2 f(Y_j)` (or `f(Y_j)` alone, `terms = []`, `coef = 1`, in
    /// fixed point) both read `K Y_j`, its norms and `sigma`, which a fused backend computes
    /// once. This default body is the specification: each result equals its op's.
    #[allow(clippy::too_many_arguments)]
    fn step_full3x3_vjp(
        &self,
        terms: &[(f64, &Self::Buf)],
        coef: f64,
        y: &Self::Buf,
        d: Dims,
        k: &Self::Buf,
        norm: Norm<'_, Self::Buf>,
        act: Activation,
        g: &Self::Buf,
    ) -> Result<(Self::Buf, SymGrads<Self::Buf>)> {
        let v = self.sym_full3x3_vjp(y, d, k, norm, act, g)?;
        let s = self.step_full3x3(terms, coef, y, d, k, norm, act)?;
        Ok((s, v))
    }
}

/// [`Backend::sym_full3x3_vjp`] composed of the primitives (the trait's default, and the
/// fused backends' path for shapes their kernels do not take).
pub(crate) fn sym_full3x3_vjp_composed<B: Backend>(
    be: &B,
    y: &B::Buf,
    d: Dims,
    k: &B::Buf,
    norm: Norm<'_, B::Buf>,
    act: Activation,
    g: &B::Buf,
) -> Result<SymGrads<B::Buf>> {
    let g = crate::operators::sym_vjp(be, OpRef::Full3x3(k), y, d, norm, act, g)?;
    let mut dop = g.dop.into_iter();
    let dk = dop
        .next()
        .ok_or_else(|| crate::error::Error::Other("the full operator has one weight".into()))?;
    Ok(SymGrads {
        dy: g.dy,
        dk,
        dscale: g.dscale,
        dshift: g.dshift,
    })
}

/// The kernel size of a convolution: 3x3 (zero padding 1) or 1x1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Taps {
    K1,
    K3,
}

impl Taps {
    /// The side `s` of the `s x s` kernel: 1 or 3.
    pub const fn side(self) -> usize {
        match self {
            Taps::K1 => 1,
            Taps::K3 => 3,
        }
    }
    /// Taps per (output, input) channel pair: `side^2`, 1 or 9.
    pub const fn count(self) -> usize {
        self.side() * self.side()
    }
}

/// One convolution of the op vocabulary ([`Backend::conv`], [`Backend::conv_t`],
/// [`Backend::conv_wgrad`]): a 3x3 or 1x1 kernel, zero padding `(side-1)/2`, stride 1, no bias,
/// in `groups` groups (1: the full convolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec {
    pub taps: Taps,
    /// Number of groups; it must divide the input and output channel counts.
    pub groups: usize,
}

impl ConvSpec {
    /// Full 3x3 convolution, K `[cout, cin, 3, 3]`.
    pub const fn full3x3() -> Self {
        ConvSpec {
            taps: Taps::K3,
            groups: 1,
        }
    }
    /// Full 1x1 convolution (the dense operator, the linear layer), K `[cout, cin]`.
    pub const fn full1x1() -> Self {
        ConvSpec {
            taps: Taps::K1,
            groups: 1,
        }
    }
    /// Grouped 3x3 convolution, K `[cout, cin / groups, 3, 3]`.
    pub const fn grouped3x3(groups: usize) -> Self {
        ConvSpec {
            taps: Taps::K3,
            groups,
        }
    }
    /// Grouped 1x1 convolution, K `[cout, cin / groups]`.
    pub const fn grouped1x1(groups: usize) -> Self {
        ConvSpec {
            taps: Taps::K1,
            groups,
        }
    }
    /// Whether this is the full (one-group) convolution.
    pub const fn is_full(self) -> bool {
        self.groups == 1
    }
    /// The kernel side: 1 or 3.
    pub const fn side(self) -> usize {
        self.taps.side()
    }
    /// Taps per channel pair: 1 or 9.
    pub const fn tap_count(self) -> usize {
        self.taps.count()
    }
    /// Length of the weight `[cout, cin / groups, side, side]` (0 groups count as 1 here; the
    /// ops refuse them).
    pub const fn weight_len(self, cin: usize, cout: usize) -> usize {
        let groups = if self.groups == 0 { 1 } else { self.groups };
        cout * (cin / groups) * self.tap_count()
    }
}

/// An op whose working memory a backend may declare ([`Backend::scratch_bytes`]); `d` is the
/// shape of the op's (first) input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScratchOp {
    Conv3x3 {
        d: Dims,
        cout: usize,
    },
    Conv3x3T {
        d: Dims,
        cin: usize,
    },
    Conv3x3Wgrad {
        d: Dims,
        cout: usize,
    },
    Conv1x1Wgrad {
        d: Dims,
        cout: usize,
    },
    Tvnorm {
        d: Dims,
    },
    TvnormVjp {
        d: Dims,
    },
    StepFull3x3 {
        d: Dims,
    },
    SymFull3x3Vjp {
        d: Dims,
    },
    StepFull3x3Vjp {
        d: Dims,
    },
    /// `d` the images, `filters` of `size x size`.
    TnrdStage {
        d: Dims,
        filters: usize,
        size: usize,
    },
    TnrdStageVjp {
        d: Dims,
        filters: usize,
        size: usize,
    },
}

/// Working memory of one op, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scratch {
    /// Live only while the op runs, beside its inputs and outputs.
    pub transient: usize,
    /// Requested from each of the backend's grow-only workspace pools (per-thread buffers kept
    /// for reuse): a pool holds the largest request made so far, from then on.
    pub pools: [usize; 2],
}

/// The normalisation `N` inside a step: tvNorm with scale and shift, or the shift alone
/// (`norm: none`).
pub enum Norm<'a, B> {
    Tv { s: &'a B, b: &'a B },
    Shift { b: &'a B },
}

impl<B> Clone for Norm<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Norm<'_, B> {}

/// Gradients of the symmetric layer `f(y; K, N)`.
pub struct SymGrads<B> {
    /// `J_f(y)^T g`.
    pub dy: B,
    pub dk: B,
    /// Gradient of the tvNorm scale (`None` for the shift-only norm).
    pub dscale: Option<B>,
    pub dshift: B,
}

/// Gradients of [`Backend::tnrd_stage`].
pub struct TnrdGrads<B> {
    pub du: B,
    pub df: B,
    /// Against the filters as given (`[filters, size, size]`), summed over the images.
    pub dk: B,
    /// `[filters, CENTRES]`, summed over the images.
    pub drbf: B,
    pub dlambda: f64,
}

/// Which device to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when a usable GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(crate::error::Error::Input(format!(
                "unknown device `{other}` (expected auto, cpu or cuda)"
            ))),
        }
    }
}

/// The arithmetic of the convolution GEMMs. Storage and accumulation stay f32 in every mode;
/// `tf32`, `bf16` and `f16` round the GEMM operands for the tensor cores (CUDA only).
///
/// `f16` keeps tf32's 10 mantissa bits (operand rounding 2^-11) but not f32's range: an operand
/// above 65504 in magnitude becomes infinite, and one below 2^-14 loses bits as a subnormal.
/// PyTorch's f16 autocast pairs it with loss scaling; pdenet scales nothing, so weights,
/// activations and gradients must stay within that range (`bf16` keeps f32's range instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Tf32,
    Bf16,
    F16,
}

impl Precision {
    /// Every precision, f32 first.
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::Tf32,
        Precision::Bf16,
        Precision::F16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            other => Err(crate::error::Error::Input(format!(
                "unknown precision `{other}` (expected f32, tf32, bf16 or f16)"
            ))),
        }
    }
}

/// The format of the states that the `store` policy keeps for the backward pass. Forward
/// arithmetic is unchanged; the backward pass reads the kept states rounded to the format (as
/// PyTorch under autocast keeps its activations), which halves the memory that grows with depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Storage {
    #[default]
    F32,
    /// bfloat16: f32's range, 8 significant bits.
    Bf16,
    /// IEEE half: 11 significant bits, range +-65504 (larger states overflow to infinity).
    F16,
}

impl Storage {
    pub const ALL: [Storage; 3] = [Storage::F32, Storage::Bf16, Storage::F16];
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
            Storage::F16 => "f16",
        }
    }
    /// Bytes per kept element.
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 | Storage::F16 => 2,
        }
    }
}

impl std::str::FromStr for Storage {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        Storage::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                crate::error::Error::Input(format!(
                    "unknown storage `{s}` (expected f32, bf16 or f16)"
                ))
            })
    }
}

/// Whether a CUDA device can be used in this process (driver, device and kernels load).
pub fn cuda_is_usable() -> bool {
    cuda::Cuda::try_new().is_ok()
}

#[cfg(test)]
mod tests {
    use super::{ConvSpec, Precision, Taps};

    #[test]
    fn precision_names_parse_back() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("bf16 or f16"), "{e}");
    }

    #[test]
    fn conv_spec_shapes() {
        assert_eq!(ConvSpec::grouped3x3(1), ConvSpec::full3x3());
        assert_eq!(ConvSpec::grouped1x1(1), ConvSpec::full1x1());
        assert!(ConvSpec::full1x1().is_full() && !ConvSpec::grouped3x3(2).is_full());
        assert_eq!((Taps::K3.side(), Taps::K3.count()), (3, 9));
        assert_eq!((Taps::K1.side(), Taps::K1.count()), (1, 1));
        assert_eq!(ConvSpec::full3x3().weight_len(8, 4), 4 * 8 * 9);
        assert_eq!(ConvSpec::full1x1().weight_len(8, 4), 4 * 8);
        assert_eq!(ConvSpec::grouped3x3(4).weight_len(8, 4), 4 * 2 * 9);
        assert_eq!(ConvSpec::grouped1x1(2).weight_len(8, 4), 4 * 4);
    }
}
