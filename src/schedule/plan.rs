//! The memory plan: the executor runs on [`Planner`], a backend whose buffers are sizes only, so
//! that every buffer of a forward + backward pass is known, with its lifetime, before any
//! arithmetic runs. The peak of live bytes is the planned peak.

use crate::backend::{
    optim, Activation, Backend, BnStats, ConvSpec, Norm, Scratch, ScratchOp, Storage, SymGrads,
    Taps,
};
use crate::ensure_shape;
use crate::error::Result;
use crate::network::Layout;
use crate::params::ParamSet;
use crate::schedule::{Engine, MemoryPolicy};
use crate::tensor::{Dims, HostTensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default, Debug)]
struct Counter {
    live: AtomicUsize,
    peak: AtomicUsize,
    flops: AtomicUsize,
    /// The device's grow-only workspace pools: the largest request of each so far.
    pools: [AtomicUsize; 2],
}

impl Counter {
    fn pool_bytes(&self) -> usize {
        self.pools.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }
}

/// What the planner asks of the device it plans for.
trait DeviceMem: Send + Sync {
    fn scratch(&self, op: ScratchOp) -> Scratch;
    fn fused(&self) -> bool;
    fn fused_step_vjp(&self) -> bool;
}

impl<B: Backend> DeviceMem for B {
    fn scratch(&self, op: ScratchOp) -> Scratch {
        self.scratch_bytes(op)
    }
    fn fused(&self) -> bool {
        self.fuses_sym_full3x3()
    }
    fn fused_step_vjp(&self) -> bool {
        self.fuses_step_full3x3_vjp()
    }
}

/// A buffer that is only a size: it counts itself live until dropped.
#[derive(Debug)]
pub struct PlanBuf {
    len: usize,
    bytes: usize,
    counter: Arc<Counter>,
}

impl Drop for PlanBuf {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Bytes per element on the executing devices (f32 and i32 storage; packed states declare their
/// own, [`Storage::bytes`]).
const ELEM_BYTES: usize = 4;

/// The planning backend.
#[derive(Clone, Default)]
pub struct Planner {
    counter: Arc<Counter>,
    /// The device whose workspaces and fused ops the plan includes (none: buffers only).
    device: Option<Arc<dyn DeviceMem>>,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner")
            .field("counter", &self.counter)
            .field("device", &self.device.is_some())
            .finish()
    }
}

impl Planner {
    /// A device-independent plan: the engine's buffers only.
    pub fn new() -> Self {
        Self::default()
    }
    /// The plan of a run on `device`: its buffers, the working memory it declares
    /// ([`Backend::scratch_bytes`]) and its fused ops' own allocations.
    pub fn for_device<B: Backend + Clone + 'static>(device: &B) -> Self {
        Planner {
            counter: Arc::default(),
            device: Some(Arc::new(device.clone())),
        }
    }
    fn buf(&self, len: usize) -> PlanBuf {
        self.buf_of(len, ELEM_BYTES)
    }
    fn buf_of(&self, len: usize, elem_bytes: usize) -> PlanBuf {
        let bytes = len * elem_bytes;
        let live = self.counter.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.counter
            .peak
            .fetch_max(live + self.counter.pool_bytes(), Ordering::Relaxed);
        PlanBuf {
            len,
            bytes,
            counter: self.counter.clone(),
        }
    }
    /// Accounts for the device's working memory of `op`, whose outputs are already allocated.
    fn scratch(&self, op: ScratchOp) {
        let Some(dev) = &self.device else { return };
        let s = dev.scratch(op);
        for (pool, &want) in self.counter.pools.iter().zip(&s.pools) {
            pool.fetch_max(want, Ordering::Relaxed);
        }
        let now = self.live_bytes() + self.counter.pool_bytes() + s.transient;
        self.counter.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn fused(&self) -> bool {
        self.device.as_ref().is_some_and(|d| d.fused())
    }
    fn fused_step_vjp(&self) -> bool {
        self.device.as_ref().is_some_and(|d| d.fused_step_vjp())
    }
    fn flop(&self, n: usize) {
        // Saturating: the sizes are bounded per op (`limits::MAX_ELEMENTS`), not their sum.
        let _ = self
            .counter
            .flops
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                Some(f.saturating_add(n))
            });
    }
    /// Floating-point operations counted so far (multiply-adds count two; elementwise work is
    /// counted one per output element and op).
    pub fn flops(&self) -> usize {
        self.counter.flops.load(Ordering::Relaxed)
    }
    /// Largest number of bytes live at once so far.
    pub fn peak_bytes(&self) -> usize {
        self.counter.peak.load(Ordering::Relaxed)
    }
    pub fn live_bytes(&self) -> usize {
        self.counter.live.load(Ordering::Relaxed)
    }
    /// Restarts the peak at the bytes live now (workspaces included).
    pub fn reset_peak(&self) {
        self.counter.peak.store(
            self.live_bytes() + self.counter.pool_bytes(),
            Ordering::Relaxed,
        );
    }
}

impl Backend for Planner {
    type Buf = PlanBuf;
    type IBuf = PlanBuf;
    type HBuf = PlanBuf;

    fn name(&self) -> &'static str {
        "plan"
    }
    /// The engine takes the fused path of the device planned for.
    fn fuses_step_full3x3_vjp(&self) -> bool {
        self.fused_step_vjp()
    }
    fn zeros(&self, len: usize) -> Result<PlanBuf> {
        Ok(self.buf(len))
    }
    fn upload(&self, data: &[f64]) -> Result<PlanBuf> {
        Ok(self.buf(data.len()))
    }
    fn upload_f32(&self, data: &[f32]) -> Result<PlanBuf> {
        Ok(self.buf(data.len()))
    }
    fn upload_host(&self, t: &HostTensor) -> Result<PlanBuf> {
        Ok(self.buf(t.numel()))
    }
    /// Nothing: the values of a plan are never read, and a download-sized host vector would
    /// make planning allocate what the run would.
    fn download(&self, _buf: &PlanBuf) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }
    fn download_f32(&self, _buf: &PlanBuf) -> Result<Vec<f32>> {
        Ok(Vec::new())
    }
    fn buf_len(&self, buf: &PlanBuf) -> usize {
        buf.len
    }
    fn copy(&self, buf: &PlanBuf) -> Result<PlanBuf> {
        Ok(self.buf(buf.len))
    }
    fn iupload(&self, data: &[i32]) -> Result<PlanBuf> {
        Ok(self.buf(data.len()))
    }
    fn idownload(&self, _buf: &PlanBuf) -> Result<Vec<i32>> {
        Ok(Vec::new())
    }
    fn pack16(&self, x: &PlanBuf, format: Storage) -> Result<PlanBuf> {
        ensure_shape!(
            format != Storage::F32,
            "pack16 needs a 16-bit storage format"
        );
        Ok(self.buf_of(x.len, format.bytes()))
    }
    fn unpack16(&self, h: &PlanBuf) -> Result<PlanBuf> {
        Ok(self.buf(h.len))
    }
    fn lincomb(&self, terms: &[(f64, &PlanBuf)]) -> Result<PlanBuf> {
        ensure_shape!(!terms.is_empty(), "lincomb needs at least one term");
        self.flop(2 * terms.len() * terms[0].1.len);
        Ok(self.buf(terms[0].1.len))
    }
    /// No values: a planned solve takes fixed steps ([`crate::solvers::ode::OdeOptions::plan_steps`]).
    fn scaled_sq(
        &self,
        x: &PlanBuf,
        a: &PlanBuf,
        b: &PlanBuf,
        _atol: f64,
        _rtol: f64,
    ) -> Result<f64> {
        ensure_shape!(
            x.len == a.len && x.len == b.len,
            "scaled norm: {} / {} / {}",
            x.len,
            a.len,
            b.len
        );
        self.flop(5 * x.len);
        Ok(0.0)
    }
    fn sgd_step(
        &self,
        w: &mut PlanBuf,
        m: &mut PlanBuf,
        g: &PlanBuf,
        _s: &optim::SgdStep,
    ) -> Result<()> {
        optim::check_lens("sgd_step", &[w.len, m.len, g.len])
    }
    fn adam_step(
        &self,
        w: &mut PlanBuf,
        m: &mut PlanBuf,
        v: &mut PlanBuf,
        g: &PlanBuf,
        _s: &optim::AdamStep,
    ) -> Result<()> {
        optim::check_lens("adam_step", &[w.len, m.len, v.len, g.len])
    }
    fn axpy(&self, _a: f64, x: &PlanBuf, y: &mut PlanBuf) -> Result<()> {
        ensure_shape!(x.len == y.len, "axpy: {} vs {}", x.len, y.len);
        Ok(())
    }
    fn conv(
        &self,
        spec: ConvSpec,
        _x: &PlanBuf,
        d: Dims,
        _k: &PlanBuf,
        cout: usize,
    ) -> Result<PlanBuf> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                self.flop(2 * 9 * d.len() * cout);
                let y = self.buf(d.with_c(cout).len());
                self.scratch(ScratchOp::Conv3x3 { d, cout });
                Ok(y)
            }
            (taps, groups) => {
                ensure_shape!(
                    groups > 0 && cout.is_multiple_of(groups),
                    "bad groups {groups}"
                );
                self.flop(2 * taps.count() * d.len() * cout / groups);
                Ok(self.buf(d.with_c(cout).len()))
            }
        }
    }
    fn conv_t(
        &self,
        spec: ConvSpec,
        _z: &PlanBuf,
        d: Dims,
        _k: &PlanBuf,
        cin: usize,
    ) -> Result<PlanBuf> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                self.flop(2 * 9 * d.len() * cin);
                let x = self.buf(d.with_c(cin).len());
                self.scratch(ScratchOp::Conv3x3T { d, cin });
                Ok(x)
            }
            (taps, groups) => {
                ensure_shape!(
                    groups > 0 && cin.is_multiple_of(groups),
                    "bad groups {groups}"
                );
                self.flop(2 * taps.count() * d.len() * cin / groups);
                Ok(self.buf(d.with_c(cin).len()))
            }
        }
    }
    fn conv_wgrad(
        &self,
        spec: ConvSpec,
        _x: &PlanBuf,
        d: Dims,
        _dz: &PlanBuf,
        cout: usize,
    ) -> Result<PlanBuf> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                self.flop(2 * 9 * d.len() * cout);
                let dk = self.buf(cout * d.c * 9);
                self.scratch(ScratchOp::Conv3x3Wgrad { d, cout });
                Ok(dk)
            }
            (Taps::K1, 1) => {
                self.flop(2 * d.len() * cout);
                let dk = self.buf(cout * d.c);
                self.scratch(ScratchOp::Conv1x1Wgrad { d, cout });
                Ok(dk)
            }
            (taps, groups) => {
                ensure_shape!(
                    groups > 0 && cout.is_multiple_of(groups),
                    "bad groups {groups}"
                );
                self.flop(2 * taps.count() * d.len() * cout / groups);
                Ok(self.buf(cout * d.c / groups * taps.count()))
            }
        }
    }
    fn add_channel_bias(&self, _x: &PlanBuf, d: Dims, _b: &PlanBuf) -> Result<PlanBuf> {
        Ok(self.buf(d.len()))
    }
    fn channel_sum(&self, _dy: &PlanBuf, d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(d.c))
    }
    fn tvnorm(&self, _x: &PlanBuf, d: Dims, _s: &PlanBuf, _b: &PlanBuf) -> Result<PlanBuf> {
        self.flop(5 * d.len());
        let y = self.buf(d.len());
        self.scratch(ScratchOp::Tvnorm { d });
        Ok(y)
    }
    fn tvnorm_vjp(
        &self,
        _x: &PlanBuf,
        d: Dims,
        _s: &PlanBuf,
        _dy: &PlanBuf,
    ) -> Result<(PlanBuf, PlanBuf, PlanBuf)> {
        let out = (self.buf(d.len()), self.buf(d.c), self.buf(d.c));
        self.scratch(ScratchOp::TvnormVjp { d });
        Ok(out)
    }
    fn batchnorm_train(
        &self,
        _x: &PlanBuf,
        d: Dims,
        _g: &PlanBuf,
        _b: &PlanBuf,
    ) -> Result<(PlanBuf, BnStats<PlanBuf>)> {
        Ok((
            self.buf(d.len()),
            BnStats {
                mean: self.buf(d.c),
                var: self.buf(d.c),
            },
        ))
    }
    fn batchnorm_eval(
        &self,
        _x: &PlanBuf,
        d: Dims,
        _g: &PlanBuf,
        _b: &PlanBuf,
        _m: &PlanBuf,
        _v: &PlanBuf,
    ) -> Result<PlanBuf> {
        Ok(self.buf(d.len()))
    }
    fn batchnorm_vjp(
        &self,
        _x: &PlanBuf,
        d: Dims,
        _g: &PlanBuf,
        _s: &BnStats<PlanBuf>,
        _dy: &PlanBuf,
    ) -> Result<(PlanBuf, PlanBuf, PlanBuf)> {
        Ok((self.buf(d.len()), self.buf(d.c), self.buf(d.c)))
    }
    fn batchnorm_update_running(
        &self,
        _m: &mut PlanBuf,
        _v: &mut PlanBuf,
        _s: &BnStats<PlanBuf>,
        _count: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn activation(&self, _act: Activation, x: &PlanBuf) -> Result<PlanBuf> {
        self.flop(x.len);
        Ok(self.buf(x.len))
    }
    fn activation_vjp(&self, _act: Activation, x: &PlanBuf, _dy: &PlanBuf) -> Result<PlanBuf> {
        Ok(self.buf(x.len))
    }
    fn avgpool2(&self, _x: &PlanBuf, d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(d.pooled().len()))
    }
    fn avgpool2_vjp(&self, _dy: &PlanBuf, d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(d.len()))
    }
    fn global_mean(&self, _x: &PlanBuf, d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(d.n * d.c))
    }
    fn global_mean_vjp(&self, _dy: &PlanBuf, d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(d.len()))
    }
    fn split_channels(&self, _x: &PlanBuf, d: Dims, c1: usize) -> Result<(PlanBuf, PlanBuf)> {
        Ok((
            self.buf(d.with_c(c1).len()),
            self.buf(d.with_c(d.c - c1).len()),
        ))
    }
    fn concat_channels(&self, _a: &PlanBuf, _b: &PlanBuf, d: Dims, _c1: usize) -> Result<PlanBuf> {
        Ok(self.buf(d.len()))
    }
    fn softmax_xent(
        &self,
        _l: &PlanBuf,
        n: usize,
        classes: usize,
        _labels: &[usize],
    ) -> Result<(f64, PlanBuf)> {
        Ok((0.0, self.buf(n * classes)))
    }
    fn quantize(&self, x: &PlanBuf, _shift: u32) -> Result<PlanBuf> {
        Ok(self.buf(x.len))
    }
    fn dequantize(&self, q: &PlanBuf, _shift: u32) -> Result<PlanBuf> {
        Ok(self.buf(q.len))
    }
    fn fixed_update(&self, _terms: &[(i32, &PlanBuf)], _coef: f64, f: &PlanBuf) -> Result<PlanBuf> {
        Ok(self.buf(f.len))
    }
    fn stencil5(&self, _x: &PlanBuf, d: Dims, _dw: &PlanBuf) -> Result<PlanBuf> {
        self.flop(2 * 5 * d.len());
        Ok(self.buf(d.len()))
    }
    fn stencil5_t(&self, _z: &PlanBuf, d: Dims, _dw: &PlanBuf) -> Result<PlanBuf> {
        self.flop(2 * 5 * d.len());
        Ok(self.buf(d.len()))
    }
    fn stencil5_wgrad(&self, _x: &PlanBuf, d: Dims, _dz: &PlanBuf) -> Result<PlanBuf> {
        self.flop(2 * 5 * d.len());
        Ok(self.buf(d.c * 5))
    }
    fn diffusion_solve(&self, _x: &PlanBuf, d: Dims, _diff: &PlanBuf, _h: f64) -> Result<PlanBuf> {
        self.flop(fft_solve_flops(d));
        Ok(self.buf(d.len()))
    }
    fn diffusion_solve_vjp(
        &self,
        _y: &PlanBuf,
        d: Dims,
        _diff: &PlanBuf,
        _h: f64,
        _g: &PlanBuf,
    ) -> Result<(PlanBuf, PlanBuf)> {
        // The solve of the cotangent, then `L y` and its product with it.
        self.flop(fft_solve_flops(d) + 8 * d.len());
        Ok((self.buf(d.len()), self.buf(d.c)))
    }
    fn tnrd_stage(
        &self,
        u: &PlanBuf,
        f: &PlanBuf,
        d: Dims,
        k: &PlanBuf,
        rbf: &PlanBuf,
        _lambda: f64,
        size: usize,
    ) -> Result<PlanBuf> {
        let filters =
            crate::backend::reference::tnrd::check_stage(d, [u.len, f.len], k.len, rbf.len, size)?;
        // Two convolutions of size^2 taps and 13 RBF terms per pixel and filter.
        self.flop(d.len() * filters * (4 * size * size + 40));
        let y = self.buf(d.len());
        self.scratch(ScratchOp::TnrdStage { d, filters, size });
        Ok(y)
    }
    fn tnrd_stage_vjp(
        &self,
        u: &PlanBuf,
        f: &PlanBuf,
        d: Dims,
        k: &PlanBuf,
        rbf: &PlanBuf,
        _lambda: f64,
        size: usize,
        g: &PlanBuf,
    ) -> Result<crate::backend::TnrdGrads<PlanBuf>> {
        let filters =
            crate::backend::reference::tnrd::check_stage(d, [u.len, f.len], k.len, rbf.len, size)?;
        ensure_shape!(g.len == d.len(), "tnrd stage cotangent: {} values", g.len);
        self.flop(d.len() * filters * (10 * size * size + 80));
        let grads = crate::backend::TnrdGrads {
            du: self.buf(d.len()),
            df: self.buf(d.len()),
            dk: self.buf(k.len),
            drbf: self.buf(rbf.len),
            dlambda: 0.0,
        };
        self.scratch(ScratchOp::TnrdStageVjp { d, filters, size });
        Ok(grads)
    }
    fn haar(&self, x: &PlanBuf, _d: Dims) -> Result<PlanBuf> {
        self.flop(4 * x.len);
        Ok(self.buf(x.len))
    }
    fn haar_inv(&self, y: &PlanBuf, _d: Dims) -> Result<PlanBuf> {
        self.flop(4 * y.len);
        Ok(self.buf(y.len))
    }
    fn haar_fixed(&self, q: &PlanBuf, _d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(q.len))
    }
    fn haar_fixed_inv(&self, q: &PlanBuf, _d: Dims) -> Result<PlanBuf> {
        Ok(self.buf(q.len))
    }

    fn step_full3x3(
        &self,
        terms: &[(f64, &PlanBuf)],
        coef: f64,
        y: &PlanBuf,
        d: Dims,
        k: &PlanBuf,
        norm: Norm<'_, PlanBuf>,
        act: Activation,
    ) -> Result<PlanBuf> {
        if !self.fused() {
            let op = crate::operators::OpRef::Full3x3(k);
            return crate::operators::sym_step(self, op, terms, coef, y, d, norm, act);
        }
        // The composition's flops; only the output is allocated.
        let len = d.len();
        self.flop(2 * 2 * 9 * len * d.c + 5 * len + len + 2 * (terms.len() + 1) * len);
        let out = self.buf(len);
        self.scratch(ScratchOp::StepFull3x3 { d });
        Ok(out)
    }

    fn sym_full3x3_vjp(
        &self,
        y: &PlanBuf,
        d: Dims,
        k: &PlanBuf,
        norm: Norm<'_, PlanBuf>,
        act: Activation,
        g: &PlanBuf,
    ) -> Result<SymGrads<PlanBuf>> {
        if !self.fused() {
            let op = crate::operators::OpRef::Full3x3(k);
            let mut g = crate::operators::sym_vjp(self, op, y, d, norm, act, g)?;
            ensure_shape!(g.dop.len() == 1, "the full operator has one weight");
            return Ok(SymGrads {
                dy: g.dy,
                dk: g.dop.swap_remove(0),
                dscale: g.dscale,
                dshift: g.dshift,
            });
        }
        let len = d.len();
        // Five convolution GEMMs (K y, K g, two weight gradients, K^T dz) and the pointwise work.
        self.flop(5 * 2 * 9 * len * d.c + 12 * len);
        let out = SymGrads {
            dy: self.buf(len),
            dk: self.buf(d.c * d.c * 9),
            dscale: matches!(norm, Norm::Tv { .. }).then(|| self.buf(d.c)),
            dshift: self.buf(d.c),
        };
        self.scratch(ScratchOp::SymFull3x3Vjp { d });
        Ok(out)
    }

    fn step_full3x3_vjp(
        &self,
        terms: &[(f64, &PlanBuf)],
        coef: f64,
        y: &PlanBuf,
        d: Dims,
        k: &PlanBuf,
        norm: Norm<'_, PlanBuf>,
        act: Activation,
        g: &PlanBuf,
    ) -> Result<(PlanBuf, SymGrads<PlanBuf>)> {
        if !self.fused_step_vjp() {
            // The trait's default body.
            let v = self.sym_full3x3_vjp(y, d, k, norm, act, g)?;
            let s = self.step_full3x3(terms, coef, y, d, k, norm, act)?;
            return Ok((s, v));
        }
        let len = d.len();
        // Six convolution GEMMs (the VJP's five and K^T s) and the pointwise work: one K y
        // fewer than the two ops.
        self.flop(6 * 2 * 9 * len * d.c + 12 * len + 2 * (terms.len() + 1) * len);
        let out = SymGrads {
            dy: self.buf(len),
            dk: self.buf(d.c * d.c * 9),
            dscale: matches!(norm, Norm::Tv { .. }).then(|| self.buf(d.c)),
            dshift: self.buf(d.c),
        };
        let s = self.buf(len);
        self.scratch(ScratchOp::StepFull3x3Vjp { d });
        Ok((s, out))
    }
}

/// Flops of one Fourier-space solve: a forward and an inverse complex 2-D FFT (`5 m log2 m`
/// each, the usual count) and the division per frequency.
fn fft_solve_flops(d: Dims) -> usize {
    let m = d.hw().max(1);
    let log = (usize::BITS - (m - 1).leading_zeros()) as usize;
    d.n * d.c * (2 * 5 * m * log + 6 * m)
}

/// The planned memory of one training step (forward + backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Parameters and buffers resident on the device.
    pub param_bytes: usize,
    /// Parameter gradients (trainable parameters only).
    pub grad_bytes: usize,
    /// Peak bytes live at once, parameters and gradients included.
    pub peak_bytes: usize,
}

impl MemoryPlan {
    /// Peak bytes beyond parameters and gradients: activations and temporaries.
    pub fn activation_bytes(&self) -> usize {
        self.peak_bytes - self.param_bytes - self.grad_bytes
    }
}

/// Accepted steps per weight interval that an adaptive `ode` solve is planned (and its FLOPs
/// counted) with: the true number depends on the values and the tolerances.
pub const PLAN_ODE_STEPS: usize = 4;

/// Plans a training step of `layout` on inputs of `input_shape` (e.g. `[32, 3, 32, 32]`):
/// the engine's buffers, on no device in particular.
pub fn plan_step(
    layout: &Layout,
    input_shape: &[usize],
    sched: MemoryPolicy,
) -> Result<MemoryPlan> {
    plan_step_on(Planner::new(), layout, input_shape, sched)
}

/// As [`plan_step`] with `planner` (e.g. [`Planner::for_device`], to include the device's
/// workspaces and fused ops).
pub fn plan_step_on(
    planner: Planner,
    layout: &Layout,
    input_shape: &[usize],
    sched: MemoryPolicy,
) -> Result<MemoryPlan> {
    check_sizes(layout, input_shape)?;
    // Shapes only: the template holds no data, and neither does the input.
    let params: ParamSet = layout.template.clone();
    let mut eng = Engine::new(planner.clone(), layout.clone(), &params)?;
    eng.plan_ode_steps = Some(PLAN_ODE_STEPS);
    let param_bytes = planner.live_bytes();
    let x = HostTensor::shape_only(input_shape.to_vec());
    let labels = vec![0; input_shape.first().copied().unwrap_or(0)];
    eng.grad(&x, &labels, sched, false)?;
    let grad_bytes = layout.parameter_count().saturating_mul(ELEM_BYTES);
    Ok(MemoryPlan {
        param_bytes,
        grad_bytes,
        peak_bytes: planner.peak_bytes(),
    })
}

/// Checks that every activation of a pass of `layout` on inputs shaped `input_shape` has a
/// size within [`crate::limits::MAX_ELEMENTS`] (the batch times the widest of the input and the
/// units at the input's resolution bounds them all), so that no size or flop count overflows.
pub fn check_sizes(layout: &Layout, input_shape: &[usize]) -> Result<()> {
    let widest = layout
        .config
        .widths
        .iter()
        .copied()
        .chain([layout.config.input_width(), layout.config.classes])
        .max()
        .unwrap_or(1);
    let mut dims = input_shape.to_vec();
    if let Some(c) = dims.get_mut(1) {
        *c = (*c).max(widest);
    }
    crate::limits::checked_product(&dims, "a batch of inputs")
        .map_err(|_| {
            crate::error::Error::Input(format!(
                "a batch of inputs shaped {input_shape:?} makes activations of more than 2^40 values at width {widest}; use a smaller --batch"
            ))
        })
        .map(|_| ())
}

/// Forward and training-step flops of one input of `sample_shape` (e.g. `[3, 32, 32]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlopCount {
    /// Evaluation forward pass, per input.
    pub forward: usize,
    /// Forward + backward under `store` (the least recomputation), per input.
    pub train_step: usize,
}

pub fn count_flops(layout: &Layout, sample_shape: &[usize]) -> Result<FlopCount> {
    let mut shape = vec![1];
    shape.extend_from_slice(sample_shape);
    check_sizes(layout, &shape)?;
    let x = HostTensor::shape_only(shape);
    let planner = Planner::new();
    let mut eng = Engine::new(planner.clone(), layout.clone(), &layout.template)?;
    eng.plan_ode_steps = Some(PLAN_ODE_STEPS);
    eng.logits(&x)?;
    let forward = planner.flops();
    eng.grad(&x, &[0], crate::schedule::Policy::Store.memory(), false)?;
    Ok(FlopCount {
        forward,
        train_step: planner.flops() - forward,
    })
}
