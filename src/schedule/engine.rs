//! The executor: one forward + backward pass of a whole network on any backend, under a
//! [`Schedule`]. The same code runs on the planning backend to give the planned peak memory.

use super::{DriftGuard, Schedule};
use crate::backend::{Activation, Backend, BnStats, Norm, Storage};
use crate::config::{Connect, Kind, LayerType, OperatorKind};
use crate::error::{Error, Result};
use crate::layers::{self, Layer, StepKind};
use crate::network::{ConnectIdx, LayerIdx, Layout, NormIdx, OpenIdx, UnitIdx};
use crate::operators::{LayerGrads, OpRef, MGIC_GROUP};
use crate::params::{ParamRole, ParamSet};
use crate::tensor::{Dims, HostTensor};

mod external;
mod ode;
mod probe;
pub use external::{Head, KeptUnit, UnitGrads};
use ode::OdeKept;

/// A network's parameters resident on a backend, ready to run.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub layout: Layout,
    params: Vec<B::Buf>,
    /// Measure the reconstruction drift of rebuilt unit inputs (costs a download per unit).
    pub measure_drift: bool,
    /// Whether a drift-guard recomputation has been reported (it is said once per engine).
    recompute_said: std::sync::atomic::AtomicBool,
    /// Set on a planning backend (no values to control a step size on): adaptive `ode` solves
    /// take this many equal steps per weight interval instead.
    pub plan_ode_steps: Option<usize>,
    /// Right-hand-side evaluations per unit, `[forward, backward]`, since the last `grad`.
    nfe: std::sync::Mutex<Vec<[usize; 2]>>,
}

/// The result of [`Engine::grad`].
pub struct GradOutput {
    pub loss: f64,
    /// `[n, classes]`.
    pub logits: Vec<f32>,
    /// Gradient of the loss with respect to the input, shaped like it.
    pub grad_x: Vec<f32>,
    /// Gradient of every trainable parameter (SPEC names; buffers absent).
    pub grads: ParamSet,
    /// Largest relative error `max|rebuilt - stored| / max|stored|` of a unit input rebuilt by
    /// inverse steps (0 when nothing was rebuilt, the rebuild was exact, or
    /// [`Engine::measure_drift`] is off).
    pub drift: f64,
    /// Right-hand-side evaluations per unit in the forward and the backward pass (0 for units
    /// that are not `ode`), as `pdenet grad` writes them (`nfe.forward`, `nfe.backward`).
    pub nfe_forward: Vec<usize>,
    pub nfe_backward: Vec<usize>,
}

/// The states of a step: one tensor, or the halves `[A, B]` of a hamiltonian state.
type State<T> = Vec<T>;

/// A batch norm's running statistics to update after the step: the indices of its running mean
/// and variance, the batch statistics and the number of values per channel.
type RunningUpdate<T> = (usize, usize, BnStats<T>, usize);

/// A state of a kept trajectory: as computed, or rounded to 16 bits ([`Schedule::storage`]).
enum Slot<B: Backend> {
    Full(B::Buf),
    Packed(B::HBuf),
}

/// A kept state's values: borrowed, or unpacked for the caller.
enum Held<'a, B: Backend> {
    Borrowed(&'a B::Buf),
    Unpacked(B::Buf),
}

impl<B: Backend> std::ops::Deref for Held<'_, B> {
    type Target = B::Buf;
    fn deref(&self) -> &B::Buf {
        match self {
            Held::Borrowed(b) => b,
            Held::Unpacked(b) => b,
        }
    }
}

impl<B: Backend> Slot<B> {
    /// `x` as a kept state in `storage`.
    fn keep(be: &B, x: B::Buf, storage: Storage) -> Result<Self> {
        let mut slot = Slot::Full(x);
        slot.pack(be, storage)?;
        Ok(slot)
    }
    fn get<'a>(&'a self, be: &B) -> Result<Held<'a, B>> {
        Ok(match self {
            Slot::Full(b) => Held::Borrowed(b),
            Slot::Packed(h) => Held::Unpacked(be.unpack16(h)?),
        })
    }
    /// The values as a buffer of the caller's: a copy, or the unpacked state.
    fn to_buf(&self, be: &B) -> Result<B::Buf> {
        match self {
            Slot::Full(b) => be.copy(b),
            Slot::Packed(h) => be.unpack16(h),
        }
    }
    fn into_buf(self, be: &B) -> Result<B::Buf> {
        match self {
            Slot::Full(b) => Ok(b),
            Slot::Packed(h) => be.unpack16(&h),
        }
    }
    /// Packs a state kept in full precision (the forward's last window) once nothing else
    /// needs it.
    fn pack(&mut self, be: &B, storage: Storage) -> Result<()> {
        if let (Slot::Full(b), Storage::Bf16 | Storage::F16) = (&*self, storage) {
            *self = Slot::Packed(be.pack16(b, storage)?);
        }
        Ok(())
    }
}

/// What the backward pass has of a unit's states.
enum Kept<B: Backend> {
    /// Nothing: recompute from the unit input (or the unit has no steps).
    Nothing,
    /// Every state `0..=nt`, in [`Schedule::storage`] (the last window in full precision until
    /// [`Engine::forward`] packs it).
    All(Vec<State<Slot<B>>>),
    AllFixed(Vec<State<B::IBuf>>),
    /// The last state (hamiltonian) or the last two (hyperbolic), oldest first.
    Last(Vec<State<B::Buf>>),
    LastFixed(Vec<State<B::IBuf>>),
    /// An `ode` unit's intervals.
    Ode(OdeKept<B>),
}

struct UnitTape<B: Backend> {
    /// The unit's input: absent inside a Haar leapfrog chain (after unit 0), where the next
    /// unit's first two states give this unit's last two back.
    input: Option<B::Buf>,
    /// The unit's output, for the connective layer's backward (absent inside a Haar chain).
    output: Option<B::Buf>,
    kept: Kept<B>,
}

/// The explicit `Y_{-1}` of a leapfrog unit after a Haar connection; in fixed point `(Q_0,
/// Q_{-1})`, so that the chain stays in integers.
enum Pre<B: Backend> {
    Float(B::Buf),
    Fixed(B::IBuf, B::IBuf),
}

/// The first two states `(Y_0, Y_{-1})` of a leapfrog unit in a Haar chain, rebuilt backwards.
enum Pair<B: Backend> {
    Float(B::Buf, B::Buf),
    Fixed(B::IBuf, B::IBuf),
}

/// What the backward pass of one unit returns.
struct UnitGrad<B: Backend> {
    /// Gradient of `Y_0` (with `Y_{-1} = Y_0`'s folded in unless `Y_{-1}` was explicit).
    g: B::Buf,
    /// Gradient of an explicit `Y_{-1}`.
    g_pre: Option<B::Buf>,
    /// `(Y_0, Y_{-1})` rebuilt, when asked for.
    pair: Option<Pair<B>>,
    drift: f64,
}

/// Saved for the backward pass of an opening or connective layer: the pre-normalisation (or
/// pre-activation) tensor and, with batch norm, the batch statistics.
struct AffineTape<B: Backend> {
    z: B::Buf,
    stats: Option<BnStats<B::Buf>>,
}

struct Tape<B: Backend> {
    x: B::Buf,
    x_dims: Dims,
    open: AffineTape<B>,
    units: Vec<UnitTape<B>>,
    connects: Vec<Option<AffineTape<B>>>,
    features: B::Buf,
}

/// Gradient accumulators, one per trainable parameter, allocated before the forward pass so that
/// they form one block of memory the plan can name.
struct Grads<B: Backend> {
    g: Vec<Option<B::Buf>>,
}

impl<B: Backend> Grads<B> {
    fn add(&mut self, be: &B, idx: usize, scale: f64, v: B::Buf) -> Result<()> {
        match &mut self.g[idx] {
            Some(acc) => be.axpy(scale, &v, acc),
            None => Err(Error::Other(format!(
                "parameter {idx} has no gradient buffer"
            ))),
        }
    }
    fn add_layer(&mut self, be: &B, l: &LayerIdx, scale: f64, g: LayerGrads<B::Buf>) -> Result<()> {
        for (&i, v) in l.op.weights.iter().zip(g.dop) {
            self.add(be, i, scale, v)?;
        }
        match (l.norm, g.dscale) {
            (NormIdx::Tv { scale: si, shift }, Some(ds)) => {
                self.add(be, si, scale, ds)?;
                self.add(be, shift, scale, g.dshift)
            }
            (NormIdx::Shift { shift }, _) => self.add(be, shift, scale, g.dshift),
            (NormIdx::Tv { .. }, None) => {
                Err(Error::Other("tvNorm without a scale gradient".into()))
            }
        }
    }
}

/// Shape of each unit's input and the features before the classifier.
struct Geometry {
    unit_dims: Vec<Dims>,
    feature_dims: Dims,
}

impl<B: Backend> Engine<B> {
    /// Uploads `params` (checked against the layout) to the backend.
    pub fn new(backend: B, mut layout: Layout, params: &ParamSet) -> Result<Self> {
        let params = upload_params(&backend, &layout, params)?;
        // The engine needs only names, shapes and roles of the template: drop its zeros, which
        // would otherwise be one more parameter-sized copy in memory.
        for (_, _, t) in layout.template.iter_mut() {
            t.data = Vec::new();
        }
        Ok(Engine {
            backend,
            layout,
            params,
            measure_drift: false,
            recompute_said: Default::default(),
            plan_ode_steps: None,
            nfe: Default::default(),
        })
    }

    /// Downloads the current parameters and buffers.
    pub fn params(&self) -> Result<ParamSet> {
        let mut out = self.layout.template.clone();
        for (i, (_, _, t)) in out.iter_mut().enumerate() {
            t.data = self.backend.download_f32(&self.params[i])?;
        }
        Ok(out)
    }

    /// Replaces the parameters (same layout).
    pub fn set_params(&mut self, params: &ParamSet) -> Result<()> {
        self.params = upload_params(&self.backend, &self.layout, params)?;
        Ok(())
    }

    fn kind(&self) -> StepKind {
        let c = &self.layout.config;
        StepKind {
            layer: c.step_layer(),
            h: c.h,
            act: c.activation,
            gamma: c.gamma,
        }
    }

    fn layer(&self, l: &LayerIdx) -> Layer<'_, B> {
        let ws = &l.op.weights;
        let w = &self.params[ws[0]];
        let op = match (self.layout.config.kind, self.layout.config.operator) {
            (Kind::Dense, _) => OpRef::Dense(w),
            (Kind::Image, OperatorKind::Full) => OpRef::Full3x3(w),
            (Kind::Image, OperatorKind::Lean) => OpRef::Lean {
                p: w,
                d: &self.params[ws[1]],
            },
            // The layout adds an operator's tensors consecutively.
            (Kind::Image, OperatorKind::Mgic) => OpRef::Mgic {
                weights: &self.params[ws[0]..ws[0] + ws.len()],
                group: MGIC_GROUP,
            },
        };
        let norm = match l.norm {
            NormIdx::Tv { scale, shift } => Norm::Tv {
                s: &self.params[scale],
                b: &self.params[shift],
            },
            NormIdx::Shift { shift } => Norm::Shift {
                b: &self.params[shift],
            },
        };
        Layer { op, norm }
    }

    /// A fully hyperbolic network: Haar connections carry both leapfrog states between units.
    fn haar_chain(&self) -> bool {
        let c = &self.layout.config;
        c.connect == Connect::Haar && c.layer == LayerType::Hyperbolic
    }

    /// Fixed-point shift of unit `k` (invertible units only): each Haar level of a chain adds
    /// one fractional bit, as `2 H q` is exact in integers.
    fn unit_shift(&self, k: usize, sched: Schedule) -> Option<u32> {
        if !self.layout.config.layer.invertible() {
            return None;
        }
        let levels = if self.haar_chain() { k as u32 } else { 0 };
        sched.fixed_point.map(|s| s + levels)
    }

    fn geometry(&self, x: &HostTensor) -> Result<Geometry> {
        let cfg = &self.layout.config;
        let (n, mut d) = match (cfg.kind, x.shape.as_slice()) {
            (Kind::Image, &[n, c, h, w]) if c == cfg.input_width() => (n, Dims::new(n, c, h, w)),
            (Kind::Dense, &[n, c]) if c == cfg.input_width() => (n, Dims::dense(n, c)),
            _ => {
                let want = match cfg.kind {
                    Kind::Image => format!("[N, {}, H, W]", cfg.input_width()),
                    Kind::Dense => format!("[N, {}]", cfg.input_width()),
                };
                return Err(Error::Shape(format!(
                    "input `x` has shape {:?}, expected {want}",
                    x.shape
                )));
            }
        };
        if n == 0 || d.hw() == 0 {
            return Err(Error::Shape(format!("input `x` is empty: {:?}", x.shape)));
        }
        let mut unit_dims = Vec::new();
        for (k, u) in self.layout.units.iter().enumerate() {
            d = d.with_c(u.width);
            unit_dims.push(d);
            let last = k + 1 == self.layout.units.len();
            if cfg.kind == Kind::Image && !last {
                if cfg.connect == Connect::Haar {
                    if d.h % 2 != 0 || d.w % 2 != 0 {
                        return Err(Error::Shape(format!(
                            "the Haar connection after unit {k} needs even sizes, got {}x{}",
                            d.h, d.w
                        )));
                    }
                } else if d.h < 2 || d.w < 2 {
                    return Err(Error::Shape(format!(
                        "input {}x{} is too small to pool after unit {k}",
                        x.shape[2], x.shape[3]
                    )));
                }
                d = d.pooled();
            }
        }
        let wl = self.layout.units.last().map(|u| u.out_width).unwrap_or(0);
        Ok(Geometry {
            unit_dims,
            feature_dims: Dims::dense(n, wl),
        })
    }

    // ---- forward ------------------------------------------------------------------------------

    /// Opening layer: image `relu(BN(conv3x3 x))`, dense `tanh(W x + b)`.
    fn open_forward(&self, x: &B::Buf, xd: Dims, train: bool) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let w0 = self.layout.units[0].width;
        match self.layout.open {
            OpenIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let z = be.conv3x3(x, xd, &self.params[conv], w0)?;
                let zd = xd.with_c(w0);
                self.bn_relu(
                    z,
                    zd,
                    train,
                    [bn_weight, bn_bias, running_mean, running_var],
                )
            }
            OpenIdx::Dense { weight, bias } => self.dense_tanh(x, xd, weight, bias, w0),
        }
    }

    fn bn_relu(
        &self,
        z: B::Buf,
        d: Dims,
        train: bool,
        idx: [usize; 4],
    ) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let [g, b, rm, rv] = idx.map(|i| &self.params[i]);
        let (a, stats) = if train {
            let (a, s) = be.batchnorm_train(&z, d, g, b)?;
            (a, Some(s))
        } else {
            (be.batchnorm_eval(&z, d, g, b, rm, rv)?, None)
        };
        let y = be.activation(Activation::Relu, &a)?;
        Ok((y, AffineTape { z, stats }))
    }

    fn dense_tanh(
        &self,
        x: &B::Buf,
        xd: Dims,
        weight: usize,
        bias: usize,
        out: usize,
    ) -> Result<(B::Buf, AffineTape<B>)> {
        let be = &self.backend;
        let zd = be.conv1x1(x, xd, &self.params[weight], out)?;
        let z = be.add_channel_bias(&zd, xd.with_c(out), &self.params[bias])?;
        let y = be.activation(Activation::Tanh, &z)?;
        Ok((y, AffineTape { z, stats: None }))
    }

    /// Connective layer after unit `k` (and pooling or the global mean).
    fn connect_forward(
        &self,
        k: usize,
        y: &B::Buf,
        d: Dims,
        train: bool,
    ) -> Result<(B::Buf, Option<AffineTape<B>>)> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let last = k + 1 == self.layout.units.len();
        let od = d.with_c(u.out_width);
        if let ConnectIdx::Haar = u.connect {
            let out = if last {
                be.global_mean(y, d)?
            } else {
                be.haar(y, d)?
            };
            return Ok((out, None));
        }
        let (r, tape) = match u.connect {
            ConnectIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let z = be.conv1x1(y, d, &self.params[conv], u.out_width)?;
                let (r, t) = self.bn_relu(
                    z,
                    od,
                    train,
                    [bn_weight, bn_bias, running_mean, running_var],
                )?;
                (r, Some(t))
            }
            ConnectIdx::Dense { weight, bias } => {
                let (r, t) = self.dense_tanh(y, d, weight, bias, u.out_width)?;
                (r, Some(t))
            }
            ConnectIdx::None | ConnectIdx::Haar => (be.copy(y)?, None),
        };
        let out = match self.layout.config.kind {
            Kind::Image if last => be.global_mean(&r, od)?,
            Kind::Image => be.avgpool2(&r, od)?,
            Kind::Dense => r,
        };
        Ok((out, tape))
    }

    /// Runs unit `k` forward from `input` (and an explicit `Y_{-1}` in a Haar chain), keeping
    /// what `sched` allows.
    fn unit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        pre: Option<Pre<B>>,
        d: Dims,
        sched: Schedule,
    ) -> Result<(B::Buf, Kept<B>)> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let kind = self.kind();
        let nt = u.steps.len();
        if nt == 0 {
            return Ok((be.copy(input)?, Kept::Nothing));
        }
        if self.layout.config.layer == LayerType::Ode {
            return self.ode_forward(k, input, d, sched);
        }
        let fixed = self.unit_shift(k, sched);
        if pre.is_some() && kind.layer != LayerType::Hyperbolic {
            return Err(Error::Other(
                "only leapfrog units take an explicit Y_-1".into(),
            ));
        }
        match (kind.layer, fixed) {
            (LayerType::Hyperbolic, None) => {
                let mut pre = match pre {
                    None => None,
                    Some(Pre::Float(p)) => Some(p),
                    Some(Pre::Fixed(..)) => {
                        return Err(Error::Other("fixed-point Y_-1 in a float unit".into()))
                    }
                };
                // The window (Y_{j-1}, Y_j) the step reads; under `store` the states leaving it
                // are kept in the schedule's storage.
                let mut hist = vec![be.copy(input)?];
                let mut left = Vec::new();
                for s in &u.steps {
                    let y = &hist[hist.len() - 1];
                    let prev = if hist.len() > 1 {
                        Some(&hist[hist.len() - 2])
                    } else {
                        pre.as_ref()
                    };
                    let next =
                        layers::forward_single(be, kind, self.layer(&s.layers[0]), y, prev, d)?;
                    pre = None;
                    hist.push(next);
                    if hist.len() > 2 {
                        let old = hist.remove(0);
                        if sched.keep_all {
                            left.push(vec![Slot::keep(be, old, sched.storage)?]);
                        }
                    }
                }
                let out = be.copy(&hist[hist.len() - 1])?;
                Ok((
                    out,
                    self.kept_float(left, hist.into_iter().map(|y| vec![y]), sched),
                ))
            }
            (LayerType::Hyperbolic, Some(shift)) => {
                let coef = (1u64 << shift) as f64 * kind.h * kind.h;
                let (q0, mut qpre) = match pre {
                    None => (be.quantize(input, shift)?, None),
                    Some(Pre::Fixed(q0, qm1)) => (q0, Some(qm1)),
                    Some(Pre::Float(p)) => {
                        (be.quantize(input, shift)?, Some(be.quantize(&p, shift)?))
                    }
                };
                let mut hist = vec![q0];
                for s in &u.steps {
                    let q = &hist[hist.len() - 1];
                    let qp = if hist.len() > 1 {
                        &hist[hist.len() - 2]
                    } else {
                        qpre.as_ref().unwrap_or(q)
                    };
                    let y = be.dequantize(q, shift)?;
                    let f = layers::f_only(be, self.layer(&s.layers[0]), &y, d, kind.act)?;
                    drop(y);
                    let next = be.fixed_update(&[(2, q), (-1, qp)], coef, &f)?;
                    qpre = None;
                    hist.push(next);
                    if !sched.keep_all && hist.len() > 2 {
                        hist.remove(0);
                    }
                }
                let out = be.dequantize(&hist[hist.len() - 1], shift)?;
                let states = hist.into_iter().map(|q| vec![q]).collect();
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::AllFixed(states)
                    } else {
                        Kept::LastFixed(states)
                    },
                ))
            }
            (LayerType::Hamiltonian, None) => {
                let hd = d.with_c(d.c / 2);
                let (a, b) = be.split_channels(input, d, d.c / 2)?;
                let mut cur = vec![a, b];
                let mut left = Vec::new();
                for s in &u.steps {
                    let (l1, l2) = (self.layer(&s.layers[0]), self.layer(&s.layers[1]));
                    let (a1, b1) = layers::verlet_forward(be, kind, l1, l2, &cur[0], &cur[1], hd)?;
                    let old = std::mem::replace(&mut cur, vec![a1, b1]);
                    if sched.keep_all {
                        let kept = old.into_iter().map(|x| Slot::keep(be, x, sched.storage));
                        left.push(kept.collect::<Result<_>>()?);
                    }
                }
                let out = be.concat_channels(&cur[0], &cur[1], d, d.c / 2)?;
                Ok((out, self.kept_float(left, [cur], sched)))
            }
            (LayerType::Hamiltonian, Some(shift)) => {
                let hd = d.with_c(d.c / 2);
                let coef = (1u64 << shift) as f64 * kind.h;
                let (a, b) = be.split_channels(input, d, d.c / 2)?;
                let mut hist = vec![vec![be.quantize(&a, shift)?, be.quantize(&b, shift)?]];
                drop((a, b));
                for s in &u.steps {
                    let cur = &hist[hist.len() - 1];
                    let (l1, l2) = (self.layer(&s.layers[0]), self.layer(&s.layers[1]));
                    let b_f = be.dequantize(&cur[1], shift)?;
                    let f1 = layers::f_only(be, l1, &b_f, hd, kind.act)?;
                    drop(b_f);
                    let qa = be.fixed_update(&[(1, &cur[0])], coef, &f1)?;
                    drop(f1);
                    let a_f = be.dequantize(&qa, shift)?;
                    let f2 = layers::f_only(be, l2, &a_f, hd, kind.act)?;
                    drop(a_f);
                    let qb = be.fixed_update(&[(1, &cur[1])], -coef, &f2)?;
                    hist.push(vec![qa, qb]);
                    if !sched.keep_all {
                        hist.remove(0);
                    }
                }
                let last = &hist[hist.len() - 1];
                let (a, b) = (
                    be.dequantize(&last[0], shift)?,
                    be.dequantize(&last[1], shift)?,
                );
                let out = be.concat_channels(&a, &b, d, d.c / 2)?;
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::AllFixed(hist)
                    } else {
                        Kept::LastFixed(hist)
                    },
                ))
            }
            _ => {
                let keep = sched.keep_all.then_some(sched.storage);
                let (out, states) = self.explicit_forward(k, input, d, keep)?;
                Ok((
                    out,
                    if sched.keep_all {
                        Kept::All(states)
                    } else {
                        Kept::Nothing
                    },
                ))
            }
        }
    }

    /// The states of a float unit's forward: under `store` those that left the window (already
    /// in the schedule's storage) followed by the window in full precision; otherwise the window.
    fn kept_float(
        &self,
        left: Vec<State<Slot<B>>>,
        window: impl IntoIterator<Item = State<B::Buf>>,
        sched: Schedule,
    ) -> Kept<B> {
        if sched.keep_all {
            let mut all = left;
            all.extend(
                window
                    .into_iter()
                    .map(|st| st.into_iter().map(Slot::Full).collect()),
            );
            Kept::All(all)
        } else {
            Kept::Last(window.into_iter().collect())
        }
    }

    /// Forward of a single-state, non-invertible unit; returns the output and, when `keep` names
    /// a storage, every state `0..=nt` (the last in full precision).
    #[allow(clippy::type_complexity)]
    fn explicit_forward(
        &self,
        k: usize,
        input: &B::Buf,
        d: Dims,
        keep: Option<Storage>,
    ) -> Result<(B::Buf, Vec<State<Slot<B>>>)> {
        let be = &self.backend;
        let kind = self.kind();
        let mut states: Vec<State<Slot<B>>> = Vec::new();
        let mut cur = be.copy(input)?;
        for s in &self.layout.units[k].steps {
            let l = self.layer(&s.layers[0]);
            let next = match s.diffusion {
                Some(di) => layers::imex_forward(be, kind, l, &self.params[di], &cur, d)?,
                None => layers::forward_single(be, kind, l, &cur, None, d)?,
            };
            let old = std::mem::replace(&mut cur, next);
            if let Some(storage) = keep {
                states.push(vec![Slot::keep(be, old, storage)?]);
            }
        }
        if keep.is_some() {
            states.push(vec![Slot::Full(be.copy(&cur)?)]);
        }
        Ok((cur, states))
    }

    fn forward(&self, x: &HostTensor, sched: Schedule, train: bool) -> Result<(Tape<B>, Geometry)> {
        let be = &self.backend;
        let geo = self.geometry(x)?;
        let xd = match self.layout.config.kind {
            Kind::Image => Dims::new(x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
            Kind::Dense => Dims::dense(x.shape[0], x.shape[1]),
        };
        let xb = be.upload_host(x)?;
        let (mut y, open) = self.open_forward(&xb, xd, train)?;
        let mut units = Vec::new();
        let mut connects = Vec::new();
        let chain = self.haar_chain();
        let mut pre = None;
        for k in 0..self.layout.units.len() {
            let d = geo.unit_dims[k];
            let (out, mut kept) = self.unit_forward(k, &y, pre.take(), d, sched)?;
            let input = (!chain || k == 0).then_some(y);
            if chain && k + 1 < self.layout.units.len() {
                let (next, p) = self.haar_carry(&mut kept, d, self.unit_shift(k, sched))?;
                pack_window(be, &mut kept, sched.storage)?;
                units.push(UnitTape {
                    input,
                    output: None,
                    kept,
                });
                connects.push(None);
                y = next;
                pre = Some(p);
                continue;
            }
            pack_window(be, &mut kept, sched.storage)?;
            let (next, ct) = self.connect_forward(k, &out, d, train)?;
            units.push(UnitTape {
                input,
                output: Some(out),
                kept,
            });
            connects.push(ct);
            y = next;
        }
        Ok((
            Tape {
                x: xb,
                x_dims: xd,
                open,
                units,
                connects,
                features: y,
            },
            geo,
        ))
    }

    /// The Haar connection of a leapfrog chain: the next unit starts from `H(Y_nt)` with
    /// `Y_{-1} = H(Y_{nt-1})` (in fixed point `2 H Q`, one more fractional bit). Last-two states
    /// kept only for rebuilding are released: the next unit's first two give them back.
    fn haar_carry(
        &self,
        kept: &mut Kept<B>,
        d: Dims,
        shift: Option<u32>,
    ) -> Result<(B::Buf, Pre<B>)> {
        let be = &self.backend;
        let missing = || Error::Other("a leapfrog unit kept fewer than two states".into());
        let last_two = |n: usize| n.checked_sub(2).ok_or_else(missing);
        let carry = match kept {
            Kept::All(s) => {
                let i = last_two(s.len())?;
                let p = be.haar(&*s[i][0].get(be)?, d)?;
                (be.haar(&*s[i + 1][0].get(be)?, d)?, Pre::Float(p))
            }
            Kept::Last(s) => {
                let i = last_two(s.len())?;
                let p = be.haar(&s[i][0], d)?;
                (be.haar(&s[i + 1][0], d)?, Pre::Float(p))
            }
            Kept::AllFixed(s) | Kept::LastFixed(s) => {
                let i = last_two(s.len())?;
                let next_shift = shift.ok_or_else(missing)? + 1;
                let q0 = be.haar_fixed(&s[i + 1][0], d)?;
                let qm1 = be.haar_fixed(&s[i][0], d)?;
                (be.dequantize(&q0, next_shift)?, Pre::Fixed(q0, qm1))
            }
            Kept::Nothing | Kept::Ode(_) => return Err(missing()),
        };
        if matches!(kept, Kept::Last(_) | Kept::LastFixed(_)) {
            *kept = Kept::Nothing;
        }
        Ok(carry)
    }

    /// Inverse of [`Engine::haar_carry`] on a rebuilt pair: this unit's last two states.
    fn haar_uncarry(&self, pair: Pair<B>, d: Dims) -> Result<Kept<B>> {
        let be = &self.backend;
        Ok(match pair {
            Pair::Float(y0, ym1) => Kept::Last(vec![
                vec![be.haar_inv(&ym1, d)?],
                vec![be.haar_inv(&y0, d)?],
            ]),
            Pair::Fixed(q0, qm1) => Kept::LastFixed(vec![
                vec![be.haar_fixed_inv(&qm1, d)?],
                vec![be.haar_fixed_inv(&q0, d)?],
            ]),
        })
    }

    fn classify(&self, features: &B::Buf, fd: Dims) -> Result<B::Buf> {
        let be = &self.backend;
        let classes = self.layout.config.classes;
        let z = be.conv1x1(
            features,
            fd,
            &self.params[self.layout.classifier_weight],
            classes,
        )?;
        be.add_channel_bias(
            &z,
            fd.with_c(classes),
            &self.params[self.layout.classifier_bias],
        )
    }

    /// Evaluation-mode logits `[n, classes]` (batch norm with running statistics).
    pub fn logits(&self, x: &HostTensor) -> Result<Vec<f32>> {
        let sched = Schedule {
            keep_all: false,
            fixed_point: None,
            storage: Storage::F32,
            drift_guard: None,
        };
        let (tape, geo) = self.forward(x, sched, false)?;
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        self.backend.download_f32(&logits)
    }

    /// Training-mode loss (batch statistics) without the backward pass.
    pub fn loss(&self, x: &HostTensor, labels: &[usize]) -> Result<f64> {
        let sched = Schedule {
            keep_all: false,
            fixed_point: None,
            storage: Storage::F32,
            drift_guard: None,
        };
        let (tape, geo) = self.forward(x, sched, true)?;
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        let n = x.shape[0];
        Ok(self
            .backend
            .softmax_xent(&logits, n, self.layout.config.classes, labels)?
            .0)
    }

    /// Adds `delta` to element `index` of parameter `name` in the backend's precision (for
    /// finite-difference checks, which need more than f32 steps on the reference backend).
    pub fn nudge_param(&mut self, name: &str, index: usize, delta: f64) -> Result<()> {
        let i = self
            .layout
            .template
            .position(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let mut v = self.backend.download(&self.params[i])?;
        let slot = v
            .get_mut(index)
            .ok_or_else(|| Error::Shape(format!("`{name}` has no element {index}")))?;
        *slot += delta;
        self.params[i] = self.backend.upload(&v)?;
        Ok(())
    }

    // ---- backward -----------------------------------------------------------------------------

    /// Forward, loss and backward in training mode (batch statistics). When `update_running`,
    /// the batch-norm running statistics are updated as PyTorch does.
    pub fn grad(
        &mut self,
        x: &HostTensor,
        labels: &[usize],
        sched: Schedule,
        update_running: bool,
    ) -> Result<GradOutput> {
        let classes = self.layout.config.classes;
        if labels.len() != x.shape.first().copied().unwrap_or(0) {
            return Err(Error::Shape(format!(
                "{} labels for a batch of {}",
                labels.len(),
                x.shape.first().copied().unwrap_or(0)
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Input(format!(
                "label {bad} is out of range for {classes} classes"
            )));
        }
        let (out, stats) = self.grad_inner(x, Head::Labels(labels), sched)?;
        if !out.loss.is_finite() {
            let at = self
                .first_non_finite(x)?
                .unwrap_or_else(|| "the loss".into());
            return Err(Error::NonFinite(format!(
                "the loss is {}; the first non-finite values appear in `{at}`",
                out.loss
            )));
        }
        if update_running {
            self.update_running(&stats)?;
        }
        Ok(out)
    }

    /// The first layer whose output holds a NaN or an infinity in a training-mode forward pass
    /// (SPEC names: `open`, `units.1.steps.0`, `units.1.connect`, `classifier`), or `None`.
    /// Keeps every state, so it is for diagnosing a failed step, not for every step.
    pub fn first_non_finite(&self, x: &HostTensor) -> Result<Option<String>> {
        let be = &self.backend;
        let bad =
            |b: &B::Buf| -> Result<bool> { Ok(be.download(b)?.iter().any(|v| !v.is_finite())) };
        let sched = Schedule {
            keep_all: true,
            fixed_point: None,
            storage: Storage::F32,
            drift_guard: None,
        };
        let (tape, geo) = self.forward(x, sched, true)?;
        if bad(&tape.x)? {
            return Ok(Some("the input".into()));
        }
        if bad(&tape.open.z)? {
            return Ok(Some("open".into()));
        }
        for (k, (u, c)) in tape.units.iter().zip(&tape.connects).enumerate() {
            if let Some(input) = &u.input {
                if bad(input)? {
                    return Ok(Some(if k == 0 {
                        "open".into()
                    } else {
                        format!("units.{}.connect", k - 1)
                    }));
                }
            }
            if let Kept::All(states) = &u.kept {
                for (j, st) in states.iter().enumerate().skip(1) {
                    for part in st {
                        if bad(&*part.get(be)?)? {
                            return Ok(Some(format!("units.{k}.steps.{}", j - 1)));
                        }
                    }
                }
            }
            if let Some(out) = &u.output {
                if bad(out)? {
                    return Ok(Some(format!("units.{k}")));
                }
            }
            if let Some(t) = c {
                if bad(&t.z)? {
                    return Ok(Some(format!("units.{k}.connect")));
                }
            }
        }
        if bad(&tape.features)? {
            return Ok(Some(format!(
                "units.{}.connect",
                self.layout.units.len() - 1
            )));
        }
        let logits = self.classify(&tape.features, geo.feature_dims)?;
        Ok(bad(&logits)?.then(|| "classifier".into()))
    }

    /// The forward (`pass` 0) or backward (1) right-hand-side evaluations per unit.
    fn nfe_counts(&self, pass: usize) -> Vec<usize> {
        let nfe = self.nfe.lock().unwrap_or_else(|e| e.into_inner());
        (0..self.layout.units.len())
            .map(|k| nfe.get(k).map_or(0, |c| c[pass]))
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn grad_inner(
        &self,
        x: &HostTensor,
        head: Head<'_>,
        sched: Schedule,
    ) -> Result<(GradOutput, Vec<RunningUpdate<B::Buf>>)> {
        let be = &self.backend;
        let n = x.shape[0];
        let units_n = self.layout.units.len();
        *self.nfe.lock().unwrap_or_else(|e| e.into_inner()) = vec![[0, 0]; units_n];
        let mut grads = Grads::<B> {
            g: Vec::with_capacity(self.params.len()),
        };
        for (_, role, t) in self.layout.template.iter() {
            grads.g.push(match role {
                ParamRole::Buffer => None,
                _ => Some(be.zeros(t.numel())?),
            });
        }
        let (tape, geo) = self.forward(x, sched, true)?;
        let Tape {
            x: xb,
            x_dims,
            open,
            units,
            connects,
            features,
        } = tape;
        let fd = geo.feature_dims;
        let classes = self.layout.config.classes;
        let logits = self.classify(&features, fd)?;
        let (loss, g_logits) = match head {
            Head::Labels(labels) => be.softmax_xent(&logits, n, classes, labels)?,
            Head::LogitsGrad(g) => (0.0, external::upload_logits_grad(be, g, n, classes)?),
        };
        let logits_host = be.download_f32(&logits)?;
        drop(logits);

        let mut running = Vec::new();
        // Classifier.
        let cd = fd.with_c(classes);
        grads.add(
            be,
            self.layout.classifier_bias,
            1.0,
            be.channel_sum(&g_logits, cd)?,
        )?;
        grads.add(
            be,
            self.layout.classifier_weight,
            1.0,
            be.conv1x1_wgrad(&features, fd, &g_logits, classes)?,
        )?;
        let mut g = be.conv1x1_t(
            &g_logits,
            cd,
            &self.params[self.layout.classifier_weight],
            fd.c,
        )?;
        drop((g_logits, features));

        let mut drift: f64 = 0.0;
        let mut units = units;
        let mut connects = connects;
        let chain = self.haar_chain();
        // In a Haar chain: the gradient of the next unit's Y_{-1} and its rebuilt first states.
        let mut carry: Option<(B::Buf, Option<Pair<B>>)> = None;
        for k in (0..self.layout.units.len()).rev() {
            let d = geo.unit_dims[k];
            let mut ut = units.pop().expect("one tape per unit");
            let ct = connects.pop().expect("one tape per connect");
            let (g_out, g_pre) = match carry.take() {
                Some((g_m1, pair)) => {
                    if let (Kept::Nothing, Some(p)) = (&ut.kept, pair) {
                        ut.kept = self.haar_uncarry(p, d)?;
                    }
                    // H is orthonormal: its adjoint is its inverse.
                    (be.haar_inv(&g, d)?, Some(be.haar_inv(&g_m1, d)?))
                }
                None => {
                    let y = ut.output.take();
                    let g =
                        self.connect_backward(k, y.as_ref(), d, ct, g, &mut grads, &mut running)?;
                    (g, None)
                }
            };
            let want_pair = chain && k > 0;
            let r = self.unit_backward(k, ut, d, g_out, g_pre, want_pair, sched, &mut grads)?;
            drift = drift.max(r.drift);
            g = r.g;
            if want_pair {
                let g_m1 = r
                    .g_pre
                    .ok_or_else(|| Error::Other("leapfrog chain lost Y_-1's gradient".into()))?;
                carry = Some((g_m1, r.pair));
            }
        }
        // Opening layer: relu's derivative is read off its output (unit 0's input, kept above
        // only as long as needed), so recompute that output from z instead.
        let w0 = self.layout.units[0].width;
        let g_x = match self.layout.open {
            OpenIdx::ConvBn {
                conv,
                bn_weight,
                bn_bias,
                running_mean,
                running_var,
            } => {
                let zd = x_dims.with_c(w0);
                let gz = self.bn_relu_backward(
                    open,
                    zd,
                    g,
                    bn_weight,
                    bn_bias,
                    &mut grads,
                    &mut running,
                    (running_mean, running_var),
                )?;
                grads.add(be, conv, 1.0, be.conv3x3_wgrad(&xb, x_dims, &gz, w0)?)?;
                be.conv3x3_t(&gz, zd, &self.params[conv], x_dims.c)?
            }
            OpenIdx::Dense { weight, bias } => {
                let zd = x_dims.with_c(w0);
                let gz = be.activation_vjp(Activation::Tanh, &open.z, &g)?;
                grads.add(be, bias, 1.0, be.channel_sum(&gz, zd)?)?;
                grads.add(be, weight, 1.0, be.conv1x1_wgrad(&xb, x_dims, &gz, w0)?)?;
                be.conv1x1_t(&gz, zd, &self.params[weight], x_dims.c)?
            }
        };
        let grad_x = be.download_f32(&g_x)?;
        let mut out = ParamSet::new();
        for (i, (name, role, t)) in self.layout.template.iter().enumerate() {
            if role == ParamRole::Buffer {
                continue;
            }
            // Free each device gradient once it is on the host: one copy at a time, not two.
            let data = match grads.g[i].take() {
                Some(b) => be.download_f32(&b)?,
                None => vec![0.0; t.numel()],
            };
            out.push(
                name,
                role,
                HostTensor {
                    shape: t.shape.clone(),
                    data,
                },
            );
        }
        Ok((
            GradOutput {
                loss,
                logits: logits_host,
                grad_x,
                grads: out,
                drift,
                nfe_forward: self.nfe_counts(0),
                nfe_backward: self.nfe_counts(1),
            },
            running,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn bn_relu_backward(
        &self,
        tape: AffineTape<B>,
        d: Dims,
        g: B::Buf,
        bn_weight: usize,
        bn_bias: usize,
        grads: &mut Grads<B>,
        running: &mut Vec<RunningUpdate<B::Buf>>,
        running_idx: (usize, usize),
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let stats = tape
            .stats
            .ok_or_else(|| Error::Other("batch norm ran without statistics".into()))?;
        let a = be.batchnorm_eval(
            &tape.z,
            d,
            &self.params[bn_weight],
            &self.params[bn_bias],
            &stats.mean,
            &stats.var,
        )?;
        let ga = be.activation_vjp(Activation::Relu, &a, &g)?;
        drop((a, g));
        let (gz, dgamma, dbeta) =
            be.batchnorm_vjp(&tape.z, d, &self.params[bn_weight], &stats, &ga)?;
        grads.add(be, bn_weight, 1.0, dgamma)?;
        grads.add(be, bn_bias, 1.0, dbeta)?;
        running.push((running_idx.0, running_idx.1, stats, d.n * d.hw()));
        Ok(gz)
    }

    #[allow(clippy::too_many_arguments)]
    fn connect_backward(
        &self,
        k: usize,
        y: Option<&B::Buf>,
        d: Dims,
        tape: Option<AffineTape<B>>,
        g: B::Buf,
        grads: &mut Grads<B>,
        running: &mut Vec<RunningUpdate<B::Buf>>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let u = &self.layout.units[k];
        let last = k + 1 == self.layout.units.len();
        let od = d.with_c(u.out_width);
        if let ConnectIdx::Haar = u.connect {
            // H is orthonormal: its adjoint is its inverse.
            return if last {
                be.global_mean_vjp(&g, d)
            } else {
                be.haar_inv(&g, d)
            };
        }
        let g = match self.layout.config.kind {
            Kind::Image if last => be.global_mean_vjp(&g, od)?,
            Kind::Image => be.avgpool2_vjp(&g, od)?,
            Kind::Dense => g,
        };
        match (u.connect, tape) {
            (
                ConnectIdx::ConvBn {
                    conv,
                    bn_weight,
                    bn_bias,
                    running_mean,
                    running_var,
                },
                Some(t),
            ) => {
                let gz = self.bn_relu_backward(
                    t,
                    od,
                    g,
                    bn_weight,
                    bn_bias,
                    grads,
                    running,
                    (running_mean, running_var),
                )?;
                let y = y.ok_or_else(|| Error::Other(format!("unit {k} kept no output")))?;
                grads.add(be, conv, 1.0, be.conv1x1_wgrad(y, d, &gz, u.out_width)?)?;
                be.conv1x1_t(&gz, od, &self.params[conv], d.c)
            }
            (ConnectIdx::Dense { weight, bias }, Some(t)) => {
                let gz = be.activation_vjp(Activation::Tanh, &t.z, &g)?;
                grads.add(be, bias, 1.0, be.channel_sum(&gz, od)?)?;
                let y = y.ok_or_else(|| Error::Other(format!("unit {k} kept no output")))?;
                grads.add(be, weight, 1.0, be.conv1x1_wgrad(y, d, &gz, u.out_width)?)?;
                be.conv1x1_t(&gz, od, &self.params[weight], d.c)
            }
            (ConnectIdx::None | ConnectIdx::Haar, _) => Ok(g),
            _ => Err(Error::Other(format!(
                "connective layer {k} ran without a tape"
            ))),
        }
    }

    /// Backward through unit `k`: returns the input's gradient and the rebuild drift.
    /// Backward through unit `k` from the gradient of its output (and, in a Haar chain, of its
    /// second-last state `g_pre`); `want_pair` asks for its first two states rebuilt.
    #[allow(clippy::too_many_arguments)]
    fn unit_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        sched: Schedule,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let u = &self.layout.units[k];
        let plain = |g| UnitGrad {
            g,
            g_pre: None,
            pair: None,
            drift: 0.0,
        };
        if u.steps.is_empty() {
            return Ok(plain(g_out));
        }
        let shift = self.unit_shift(k, sched);
        match self.layout.config.layer {
            LayerType::Hyperbolic | LayerType::Hamiltonian => {
                let guard = match (sched.drift_guard, &tape.kept, &tape.input) {
                    (Some(guard), Kept::Last(_), Some(_)) if g_pre.is_none() && !want_pair => guard,
                    _ => {
                        let measure = self.measure_drift;
                        return self.invertible_backward(
                            k, tape, d, g_out, g_pre, want_pair, shift, measure, grads,
                        );
                    }
                };
                self.guarded_backward(k, tape, d, g_out, sched, guard, grads)
            }
            LayerType::Ode => match tape.kept {
                Kept::Ode(kept) => Ok(plain(self.ode_backward(k, kept, d, g_out, grads)?)),
                _ => Err(Error::Other(format!("ode unit {k} kept no intervals"))),
            },
            _ => {
                let states = match (tape.kept, &tape.input) {
                    (Kept::All(s), _) => s,
                    (_, Some(input)) => self.explicit_forward(k, input, d, Some(sched.storage))?.1,
                    _ => return Err(Error::Other(format!("unit {k} kept no input"))),
                };
                drop(tape.output);
                Ok(plain(self.explicit_backward(u, states, d, g_out, grads)?))
            }
        }
    }

    /// Backward through an invertible unit, its drift measured when `measure`.
    #[allow(clippy::too_many_arguments)]
    fn invertible_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        shift: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let u = &self.layout.units[k];
        if self.layout.config.layer == LayerType::Hyperbolic {
            return self
                .hyperbolic_backward(u, tape, d, g_out, g_pre, want_pair, shift, measure, grads);
        }
        let (g, drift) = self.hamiltonian_backward(u, tape, d, g_out, shift, measure, grads)?;
        Ok(UnitGrad {
            g,
            g_pre: None,
            pair: None,
            drift,
        })
    }

    /// [`DriftGuard`]: above the tolerance, the rebuild's parameter gradients are zeroed and the
    /// unit is recomputed from its kept input and run on stored states.
    #[allow(clippy::too_many_arguments)]
    fn guarded_backward(
        &self,
        k: usize,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        sched: Schedule,
        guard: DriftGuard,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let be = &self.backend;
        let input = match &tape.input {
            Some(x) => be.copy(x)?,
            None => return Err(Error::Other(format!("unit {k} kept no input"))),
        };
        let g_again = be.copy(&g_out)?;
        let shift = self.unit_shift(k, sched);
        let r = self.invertible_backward(k, tape, d, g_out, None, false, shift, true, grads)?;
        if r.drift <= guard.tol {
            return Ok(r);
        }
        let drift = r.drift;
        if guard.strict {
            return Err(Error::Other(format!(
                "unit {k}: the reversible rebuild of its input drifted {drift:.2e} (relative), above --drift-tol {:.1e}; without --strict the unit is recomputed from its input",
                guard.tol
            )));
        }
        drop(r);
        self.zero_unit_grads(k, grads)?;
        if !self
            .recompute_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!(
                "note: unit {k}: the reversible rebuild drifted {drift:.2e} from the kept input (above --drift-tol {:.1e}); such units are recomputed from their input",
                guard.tol
            );
        }
        let store = Schedule {
            keep_all: true,
            ..sched
        };
        let (_, kept) = self.unit_forward(k, &input, None, d, store)?;
        let tape = UnitTape {
            input: Some(input),
            output: None,
            kept,
        };
        let r = self.invertible_backward(k, tape, d, g_again, None, false, shift, false, grads)?;
        Ok(UnitGrad { drift, ..r })
    }

    /// Zeroes the gradients of unit `k`'s parameters, discarding what a rejected rebuild added:
    /// each parameter belongs to one unit, so nothing else had added to them yet.
    fn zero_unit_grads(&self, k: usize, grads: &mut Grads<B>) -> Result<()> {
        for l in self.layout.units[k]
            .steps
            .iter()
            .flat_map(|s| s.layers.iter())
        {
            let norm = match l.norm {
                NormIdx::Tv { scale, shift } => vec![scale, shift],
                NormIdx::Shift { shift } => vec![shift],
            };
            for i in l.op.weights.iter().copied().chain(norm) {
                if let Some(g) = grads.g[i].as_mut() {
                    *g = self.backend.zeros(self.backend.buf_len(g))?;
                }
            }
        }
        Ok(())
    }

    fn explicit_backward(
        &self,
        u: &UnitIdx,
        mut states: Vec<State<Slot<B>>>,
        d: Dims,
        mut g: B::Buf,
        grads: &mut Grads<B>,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let kind = self.kind();
        for j in (0..u.steps.len()).rev() {
            let next = states.pop(); // y_{j+1}: needed only by the IMEX solve's VJP
            let y = &*states[j][0].get(be)?;
            let li = &u.steps[j].layers[0];
            if let Some(di) = u.steps[j].diffusion {
                // y_{j+1} = S(z): back through the solve first.
                let y1 = next
                    .and_then(|mut v| v.pop())
                    .ok_or_else(|| Error::Other("missing IMEX state".into()))?
                    .into_buf(be)?;
                let (gz, gd) = be.diffusion_solve_vjp(&y1, d, &self.params[di], kind.h, &g)?;
                grads.add(be, di, 1.0, gd)?;
                g = gz;
            }
            let v = layers::grad_single(be, kind, self.layer(li), y, d, &g)?;
            g = be.lincomb(&[(1.0, &g), (kind.h, &v.dy)])?;
            grads.add_layer(be, li, kind.h, v)?;
        }
        Ok(g)
    }

    #[allow(clippy::too_many_arguments)]
    fn hyperbolic_backward(
        &self,
        u: &UnitIdx,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        g_pre: Option<B::Buf>,
        want_pair: bool,
        fixed: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<UnitGrad<B>> {
        let be = &self.backend;
        let kind = self.kind();
        let h2 = kind.h * kind.h;
        let nt = u.steps.len();
        let shift = fixed.unwrap_or(0);
        let coef = (1u64 << shift) as f64 * h2;
        drop(tape.output);
        // Where Y_j comes from: stored states, or a window (Y_j, Y_{j+1}) rebuilt backwards.
        enum Src<B: Backend> {
            All(Vec<State<Slot<B>>>),
            AllFixed(Vec<State<B::IBuf>>),
            Window(B::Buf, B::Buf),
            WindowFixed(B::IBuf, B::IBuf),
        }
        let mut src = match tape.kept {
            Kept::All(s) => Src::<B>::All(s),
            Kept::AllFixed(s) => Src::AllFixed(s),
            Kept::Last(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop());
                let cur = s.pop().and_then(|mut v| v.pop());
                match (cur, next) {
                    (Some(c), Some(n)) => Src::Window(c, n),
                    _ => {
                        return Err(Error::Other(
                            "leapfrog unit kept fewer than two states".into(),
                        ))
                    }
                }
            }
            Kept::LastFixed(mut s) => {
                let next = s.pop().and_then(|mut v| v.pop());
                let cur = s.pop().and_then(|mut v| v.pop());
                match (cur, next) {
                    (Some(c), Some(n)) => Src::WindowFixed(c, n),
                    _ => {
                        return Err(Error::Other(
                            "leapfrog unit kept fewer than two states".into(),
                        ))
                    }
                }
            }
            Kept::Nothing | Kept::Ode(_) => {
                return Err(Error::Other("leapfrog unit kept no states".into()))
            }
        };
        let mut g_next = g_out;
        // The gradient Y_j receives from step j + 1 (the `- Y_j` term of Y_{j+2}); at the end of a
        // Haar chain unit, that of Y_{nt-1} from the next unit.
        // Kept as `(coefficient, buffer)` so that the `-G_{j+1}` of each step costs no pass.
        let mut p_cur: Option<(f64, B::Buf)> = g_pre.map(|p| (1.0, p));
        let mut drift = 0.0;
        let mut pair = None;
        for j in (0..nt).rev() {
            let li = &u.steps[j].layers[0];
            let l = self.layer(li);
            if let Src::All(s) = &mut src {
                s.truncate(j + 1);
            }
            if let Src::AllFixed(s) = &mut src {
                s.truncate(j + 1);
            }
            let y_owned = match &src {
                Src::AllFixed(s) => Some(be.dequantize(&s[j][0], shift)?),
                Src::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
                Src::All(s) => match &s[j][0] {
                    Slot::Packed(h) => Some(be.unpack16(h)?),
                    Slot::Full(_) => None,
                },
                Src::Window(..) => None,
            };
            let y: &B::Buf = match (&src, &y_owned) {
                (_, Some(o)) => o,
                (Src::All(s), None) => match &s[j][0] {
                    Slot::Full(b) => b,
                    Slot::Packed(_) => {
                        return Err(Error::Other("packed state not unpacked".into()))
                    }
                },
                (Src::Window(c, _), None) => c,
                _ => return Err(Error::Other("leapfrog state source mismatch".into())),
            };
            // The first step reads the kept input, not its rebuild: where a pre-activation is
            // exactly zero (relu's kink), the rebuild's rounding could take the other branch.
            let y = match (&src, &tape.input) {
                (Src::Window(..), Some(input)) if j == 0 => input,
                _ => y,
            };
            let v = layers::sym_grad(be, l, y, d, kind.act, &g_next)?;
            let g_j = match &p_cur {
                Some((c, p)) => be.lincomb(&[(2.0, &g_next), (h2, &v.dy), (*c, p)])?,
                None => be.lincomb(&[(2.0, &g_next), (h2, &v.dy)])?,
            };
            grads.add_layer(be, li, h2, v)?;
            p_cur = Some((-1.0, std::mem::replace(&mut g_next, g_j)));
            if j > 0 {
                // Rebuild Y_{j-1} = 2 Y_j - Y_{j+1} + h^2 f(Y_j), in floats or bit-exactly in integers.
                match &mut src {
                    // Y_0 is kept: its rebuild serves only the drift and Y_{-1} of a chain.
                    Src::Window(..) if j == 1 && tape.input.is_some() && !measure && !want_pair => {
                    }
                    Src::Window(c, n) => {
                        let prev = layers::leapfrog_inverse(be, kind, l, c, n, d)?;
                        *n = std::mem::replace(c, prev);
                    }
                    Src::WindowFixed(c, n) => {
                        let y = y_owned
                            .as_ref()
                            .ok_or_else(|| Error::Other("no dequantised state".into()))?;
                        let f = layers::f_only(be, l, y, d, kind.act)?;
                        let prev = be.fixed_update(&[(2, c), (-1, n)], coef, &f)?;
                        *n = std::mem::replace(c, prev);
                    }
                    _ => {}
                }
            } else {
                let rebuilt = match &src {
                    _ if !measure => None,
                    Src::Window(c, _) => Some(be.copy(c)?),
                    Src::WindowFixed(c, _) => Some(be.dequantize(c, shift)?),
                    _ => None,
                };
                if let (Some(r), Some(input)) = (rebuilt, &tape.input) {
                    drift = self.relative_drift(&r, input, fixed)?;
                }
                if want_pair {
                    // One more inverse step gives Y_{-1}, the previous unit's Y_{nt-1}.
                    pair = match src {
                        Src::Window(c, n) => {
                            let prev = layers::leapfrog_inverse(be, kind, l, &c, &n, d)?;
                            Some(Pair::Float(c, prev))
                        }
                        Src::WindowFixed(c, n) => {
                            let y = y_owned
                                .as_ref()
                                .ok_or_else(|| Error::Other("no dequantised state".into()))?;
                            let f = layers::f_only(be, l, y, d, kind.act)?;
                            let prev = be.fixed_update(&[(2, &c), (-1, &n)], coef, &f)?;
                            Some(Pair::Fixed(c, prev))
                        }
                        // Stored states: the previous unit kept its own.
                        _ => None,
                    };
                    break;
                }
            }
        }
        let (pc, p) = p_cur.ok_or_else(|| Error::Other("leapfrog unit without steps".into()))?;
        if want_pair {
            let p = if pc == 1.0 {
                p
            } else {
                be.lincomb(&[(pc, &p)])?
            };
            return Ok(UnitGrad {
                g: g_next,
                g_pre: Some(p),
                pair,
                drift,
            });
        }
        // Y_{-1} = Y_0: its gradient joins Y_0's.
        Ok(UnitGrad {
            g: be.lincomb(&[(1.0, &g_next), (pc, &p)])?,
            g_pre: None,
            pair: None,
            drift,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn hamiltonian_backward(
        &self,
        u: &UnitIdx,
        tape: UnitTape<B>,
        d: Dims,
        g_out: B::Buf,
        fixed: Option<u32>,
        measure: bool,
        grads: &mut Grads<B>,
    ) -> Result<(B::Buf, f64)> {
        let be = &self.backend;
        let kind = self.kind();
        let h = kind.h;
        let half = d.c / 2;
        let hd = d.with_c(half);
        let nt = u.steps.len();
        let shift = fixed.unwrap_or(0);
        let coef = (1u64 << shift) as f64 * h;
        drop(tape.output);
        let (mut ga, mut gb) = be.split_channels(&g_out, d, half)?;
        drop(g_out);
        let mut kept = tape.kept;
        let mut drift = 0.0;
        for j in (0..nt).rev() {
            let (li1, li2) = (&u.steps[j].layers[0], &u.steps[j].layers[1]);
            let (l1, l2) = (self.layer(li1), self.layer(li2));
            // A_{j+1} and B_j, as floats.
            let (a1, bj): (B::Buf, B::Buf) = match &mut kept {
                Kept::All(s) => {
                    let a1 = s.pop().map(|mut v| v.swap_remove(0));
                    let a1 = a1.ok_or_else(|| Error::Other("missing state".into()))?;
                    (a1.into_buf(be)?, s[j][1].to_buf(be)?)
                }
                Kept::AllFixed(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    (
                        be.dequantize(&st[0], shift)?,
                        be.dequantize(&s[j][1], shift)?,
                    )
                }
                Kept::Last(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    match &tape.input {
                        // The first step reads the kept input (as the leapfrog's does) and
                        // A_1 = A_0 + h f(B_0) recomputed from it, not their rebuilds; the
                        // rebuilt input serves only the drift.
                        Some(input) if j == 0 => {
                            if measure {
                                let (a, b) =
                                    layers::verlet_inverse(be, kind, l1, l2, &st[0], &st[1], hd)?;
                                s.push(vec![a, b]);
                            }
                            let (a0, b0) = be.split_channels(input, d, half)?;
                            let f1 = layers::f_only(be, l1, &b0, hd, kind.act)?;
                            (be.lincomb(&[(1.0, &a0), (h, &f1)])?, b0)
                        }
                        _ => {
                            let (a, b) =
                                layers::verlet_inverse(be, kind, l1, l2, &st[0], &st[1], hd)?;
                            let pair = (be.copy(&st[0])?, be.copy(&b)?);
                            s.push(vec![a, b]);
                            pair
                        }
                    }
                }
                Kept::LastFixed(s) => {
                    let st = s
                        .pop()
                        .ok_or_else(|| Error::Other("missing state".into()))?;
                    let a1 = be.dequantize(&st[0], shift)?;
                    let f2 = layers::f_only(be, l2, &a1, hd, kind.act)?;
                    let qb = be.fixed_update(&[(1, &st[1])], coef, &f2)?;
                    drop(f2);
                    let bj = be.dequantize(&qb, shift)?;
                    let f1 = layers::f_only(be, l1, &bj, hd, kind.act)?;
                    let qa = be.fixed_update(&[(1, &st[0])], -coef, &f1)?;
                    s.push(vec![qa, qb]);
                    (a1, bj)
                }
                Kept::Nothing | Kept::Ode(_) => {
                    return Err(Error::Other("hamiltonian unit kept no states".into()))
                }
            };
            let v2 = layers::sym_grad(be, l2, &a1, hd, kind.act, &gb)?;
            ga = be.lincomb(&[(1.0, &ga), (-h, &v2.dy)])?;
            grads.add_layer(be, li2, -h, v2)?;
            let v1 = layers::sym_grad(be, l1, &bj, hd, kind.act, &ga)?;
            gb = be.lincomb(&[(1.0, &gb), (h, &v1.dy)])?;
            grads.add_layer(be, li1, h, v1)?;
        }
        // The state left is the rebuilt input (when rebuilt).
        let rebuilt = match &kept {
            _ if !measure => None,
            Kept::Last(s) => Some(be.concat_channels(&s[0][0], &s[0][1], d, half)?),
            Kept::LastFixed(s) => {
                let (a, b) = (
                    be.dequantize(&s[0][0], shift)?,
                    be.dequantize(&s[0][1], shift)?,
                );
                Some(be.concat_channels(&a, &b, d, half)?)
            }
            _ => None,
        };
        if let (Some(r), Some(input)) = (rebuilt, &tape.input) {
            drift = self.relative_drift(&r, input, fixed)?;
        }
        Ok((be.concat_channels(&ga, &gb, d, half)?, drift))
    }

    /// Relative max-norm error of a rebuilt unit input; in fixed point the stored input is
    /// compared after the same quantisation, so an exact rebuild reads 0.
    fn relative_drift(&self, rebuilt: &B::Buf, stored: &B::Buf, fixed: Option<u32>) -> Result<f64> {
        let be = &self.backend;
        let quantised;
        let stored = match fixed {
            Some(s) => {
                quantised = be.dequantize(&be.quantize(stored, s)?, s)?;
                &quantised
            }
            None => stored,
        };
        let diff = be.lincomb(&[(1.0, rebuilt), (-1.0, stored)])?;
        let (dv, sv) = (be.download(&diff)?, be.download(stored)?);
        let dmax = dv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let smax = sv.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        Ok(if smax > 0.0 { dmax / smax } else { dmax })
    }

    fn update_running(&mut self, stats: &[RunningUpdate<B::Buf>]) -> Result<()> {
        for (rm, rv, s, count) in stats {
            let (lo, hi) = self.params.split_at_mut(*rv);
            self.backend
                .batchnorm_update_running(&mut lo[*rm], &mut hi[0], s, *count)?;
        }
        Ok(())
    }
}

/// Packs the states of a kept trajectory still in full precision (the forward's last window).
fn pack_window<B: Backend>(be: &B, kept: &mut Kept<B>, storage: Storage) -> Result<()> {
    if let Kept::All(states) = kept {
        for slot in states.iter_mut().flatten() {
            slot.pack(be, storage)?;
        }
    }
    Ok(())
}

fn upload_params<B: Backend>(be: &B, layout: &Layout, params: &ParamSet) -> Result<Vec<B::Buf>> {
    let mut out = Vec::with_capacity(layout.template.len());
    for (name, _, t) in layout.template.iter() {
        let p = params
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if p.shape != t.shape {
            return Err(Error::Weights(format!(
                "`{name}` has shape {:?}, the config needs {:?}",
                p.shape, t.shape
            )));
        }
        out.push(be.upload_host(p)?);
    }
    Ok(out)
}
