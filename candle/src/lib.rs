//! pdenet units inside candle graphs.
//!
//! [`Unit`] wraps a pdenet unit ([`pdenet::api::Unit`]) as a candle [`CustomOp2`] of two
//! tensors: the input `x` (NCHW, f32, `C` = the unit's width) and every parameter of the unit
//! packed into one rank-1 f32 tensor (candle's custom ops take at most three inputs, a unit has
//! `steps × (2 or 3)` parameters). The forward pass runs pdenet's CPU engine; the backward pass
//! runs pdenet's backward under the unit's memory policy (`reversible` and `exact` rebuild the
//! states of a hyperbolic or hamiltonian unit backwards from its last two, `store` keeps them
//! all), so that the memory of candle's backward stays flat in the unit's depth: candle itself
//! keeps only `x`, the packed parameters and the output for this op.
//!
//! # Packing
//!
//! The packed tensor is the concatenation of the unit's parameters, each flattened in row-major
//! order, in SPEC section 8 order with unit-relative names (`steps.{j}.K`,
//! `steps.{j}.norm.weight`, `steps.{j}.norm.bias`, `steps.{j}.K1`, ...); [`Unit::slots`] gives
//! each name's shape, offset and length, [`Unit::pack`] / [`Unit::unpack`] convert both ways
//! and [`Unit::init_params`] gives pdenet's initial values (`pdenet init`'s, from the options'
//! seed). The gradient of the packed tensor is packed the same way.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use pdenet::api::UnitOptions;
//! use pdenet::config::StepType;
//! use pdenet::schedule::Policy;
//!
//! let opts = UnitOptions::new(StepType::Hyperbolic, 4, 3, 0.5);
//! let unit = pdenet_candle::Unit::new(&opts, Policy::Reversible)?;
//! let theta = Var::from_tensor(&unit.init_params(&Device::Cpu)?)?;
//! let x = Tensor::randn(0f32, 1f32, (2, 4, 5, 5), &Device::Cpu)?;
//! let y = unit.forward(&x, &theta)?;
//! let grads = y.sqr()?.sum_all()?.backward()?;
//! let g = unit.unpack(grads.get(&theta).unwrap())?;
//! assert_eq!(g[0].0, "steps.0.K");
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! Errors are candle errors ([`candle_core::Error::Msg`]) carrying pdenet's one-line message.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor,
};
use pdenet::api::{self, UnitOptions};
use pdenet::schedule::Policy;
use std::sync::{Arc, Mutex};

/// The version of this crate (equal to pdenet's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A candle error with pdenet's one-line message.
fn pdenet_err(e: pdenet::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("pdenet: {e}"))
}

fn msg(s: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("pdenet-candle: {s}"))
}

/// Where one parameter lies in the packed tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Unit-relative SPEC name (`steps.0.K`).
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

/// The engine behind the op, with the packed values it holds now.
struct Engine {
    unit: api::Unit,
    /// The packed parameters last written into `unit` (skips rewriting unchanged values).
    loaded: Vec<f32>,
}

/// The custom op itself: shared by every tensor it produced (candle keeps it for `bwd`).
struct UnitOp {
    engine: Mutex<Engine>,
    slots: Vec<Slot>,
    packed_len: usize,
    width: usize,
    policy: Policy,
}

/// A pdenet unit as a candle op of `(x, packed parameters)`.
#[derive(Clone)]
pub struct Unit {
    op: Arc<UnitOp>,
    arc: Arc<Box<dyn CustomOp2 + Send + Sync>>,
}

/// Forwards the trait to the shared op, so that [`Unit`] and candle hold the same engine.
struct Shared(Arc<UnitOp>);

impl Unit {
    /// The unit of `opts` (layer, width, steps, h, ...: SPEC section 4 keys) whose backward
    /// pass runs under `policy`.
    pub fn new(opts: &UnitOptions, policy: Policy) -> candle_core::Result<Unit> {
        if opts.precision != api::Precision::F32 {
            return Err(msg(
                "only `precision: f32` units run inside candle graphs (candle tensors are f32 here)"
                    .into(),
            ));
        }
        let unit = api::Unit::new(opts).map_err(pdenet_err)?;
        let mut slots = Vec::new();
        let mut offset = 0;
        for (name, shape) in unit.param_shapes() {
            let len = shape.iter().product();
            slots.push(Slot {
                name,
                shape,
                offset,
                len,
            });
            offset += len;
        }
        let loaded = flatten(&unit, &slots)?;
        let op = Arc::new(UnitOp {
            width: unit.width(),
            engine: Mutex::new(Engine { unit, loaded }),
            slots,
            packed_len: offset,
            policy,
        });
        let arc: Arc<Box<dyn CustomOp2 + Send + Sync>> = Arc::new(Box::new(Shared(op.clone())));
        Ok(Unit { op, arc })
    }

    /// [`Unit::new`] from the options as a JSON object (`{"layer": "hyperbolic", "width": 16,
    /// "steps": 8, "h": 0.5}`) and a policy name (`store`, `reversible`, `exact`).
    pub fn from_json(options: &str, policy: &str) -> candle_core::Result<Unit> {
        let opts = UnitOptions::from_json(options).map_err(pdenet_err)?;
        let policy: Policy = policy.parse().map_err(|e: pdenet::Error| pdenet_err(e))?;
        Unit::new(&opts, policy)
    }

    /// The unit's width: the channels of its input and output.
    pub fn width(&self) -> usize {
        self.op.width
    }

    /// The memory policy of the backward pass.
    pub fn policy(&self) -> Policy {
        self.op.policy
    }

    /// The number of values of the packed parameter tensor.
    pub fn packed_len(&self) -> usize {
        self.op.packed_len
    }

    /// Each parameter's name, shape and place in the packed tensor, in SPEC order.
    pub fn slots(&self) -> &[Slot] {
        &self.op.slots
    }

    /// pdenet's initial parameters (from the options' seed), packed, on `device`.
    pub fn init_params(&self, device: &Device) -> candle_core::Result<Tensor> {
        let e = self.op.lock()?;
        let v = flatten(&e.unit, &self.op.slots)?;
        Tensor::from_vec(v, self.op.packed_len, device)
    }

    /// Packs named tensors (unit-relative SPEC names, each of its slot's shape; every slot
    /// once, in any order) into one rank-1 tensor.
    pub fn pack(&self, params: &[(String, Tensor)]) -> candle_core::Result<Tensor> {
        let mut parts = Vec::with_capacity(self.op.slots.len());
        for s in &self.op.slots {
            let t = params
                .iter()
                .find(|(n, _)| *n == s.name)
                .map(|(_, t)| t)
                .ok_or_else(|| msg(format!("pack: no tensor `{}`", s.name)))?;
            if t.dims() != s.shape.as_slice() {
                return Err(msg(format!(
                    "pack: `{}` has shape {:?}, the unit needs {:?}",
                    s.name,
                    t.dims(),
                    s.shape
                )));
            }
            parts.push(t.flatten_all()?.to_dtype(DType::F32)?);
        }
        if let Some((n, _)) = params
            .iter()
            .find(|(n, _)| !self.op.slots.iter().any(|s| s.name == *n))
        {
            return Err(msg(format!("pack: the unit has no parameter `{n}`")));
        }
        Tensor::cat(&parts, 0)
    }

    /// The named tensors (SPEC order and shapes) of a packed tensor (or of its gradient).
    pub fn unpack(&self, packed: &Tensor) -> candle_core::Result<Vec<(String, Tensor)>> {
        self.op.check_packed(packed.dims())?;
        self.op
            .slots
            .iter()
            .map(|s| {
                let t = packed
                    .narrow(0, s.offset, s.len)?
                    .reshape(s.shape.clone())?;
                Ok((s.name.clone(), t))
            })
            .collect()
    }

    /// The unit's last state for `x` (`[n, width, h, w]`, f32) with the packed parameters
    /// `params`; differentiable in both (candle's `backward` runs pdenet's backward).
    pub fn forward(&self, x: &Tensor, params: &Tensor) -> candle_core::Result<Tensor> {
        self.op.check_x(x.dims())?;
        self.op.check_packed(params.dims())?;
        x.contiguous()?
            .apply_op2_arc(&params.contiguous()?, self.arc.clone())
    }
}

/// The packed values of the unit's parameters now.
fn flatten(unit: &api::Unit, slots: &[Slot]) -> candle_core::Result<Vec<f32>> {
    let params = unit.params().map_err(pdenet_err)?;
    let mut v = Vec::with_capacity(slots.iter().map(|s| s.len).sum());
    for s in slots {
        let (_, _, data) = params
            .iter()
            .find(|(n, _, _)| *n == s.name)
            .ok_or_else(|| msg(format!("no parameter `{}`", s.name)))?;
        v.extend_from_slice(data);
    }
    Ok(v)
}

/// The values of an f32 CPU tensor, in row-major order.
fn host_values(t: &Tensor, what: &str) -> candle_core::Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        return Err(msg(format!(
            "`{what}` is {:?}, the unit runs in f32",
            t.dtype()
        )));
    }
    t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()
}

impl UnitOp {
    fn lock(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Engine>> {
        self.engine
            .lock()
            .map_err(|_| msg("the unit's engine was poisoned by an earlier panic".into()))
    }

    fn check_x(&self, dims: &[usize]) -> candle_core::Result<[usize; 4]> {
        match *dims {
            [n, c, h, w] if c == self.width => Ok([n, c, h, w]),
            _ => Err(msg(format!(
                "the input has shape {dims:?}, the unit needs [n, {}, h, w] (NCHW)",
                self.width
            ))),
        }
    }

    fn check_packed(&self, dims: &[usize]) -> candle_core::Result<()> {
        if dims != [self.packed_len] {
            return Err(msg(format!(
                "the packed parameters have shape {dims:?}, the unit needs [{}] ({} tensors)",
                self.packed_len,
                self.slots.len()
            )));
        }
        Ok(())
    }

    /// Writes the packed values into the engine where they changed.
    fn load(&self, e: &mut Engine, packed: &[f32]) -> candle_core::Result<()> {
        if e.loaded.as_slice() == packed {
            return Ok(());
        }
        for s in &self.slots {
            let new = &packed[s.offset..s.offset + s.len];
            if &e.loaded[s.offset..s.offset + s.len] != new {
                e.unit.set_param(&s.name, new).map_err(pdenet_err)?;
            }
        }
        e.loaded.clear();
        e.loaded.extend_from_slice(packed);
        Ok(())
    }
}

/// The contiguous f32 values a CPU storage holds for `l`.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = s
        .as_slice::<f32>()
        .map_err(|_| msg(format!("`{what}` is {:?}, the unit runs in f32", s.dtype())))?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| msg(format!("`{what}` is not contiguous")))?;
    Ok(&data[a..b])
}

impl CustomOp2 for Shared {
    fn name(&self) -> &'static str {
        "pdenet-unit"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let shape = op.check_x(l1.dims())?;
        op.check_packed(l2.dims())?;
        let (x, p) = (slice(s1, l1, "x")?, slice(s2, l2, "params")?);
        let mut e = op.lock()?;
        op.load(&mut e, p)?;
        let y = e.unit.forward(x, shape, op.policy).map_err(pdenet_err)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Err(candle_core::Error::Cuda(
            "pdenet-candle: pdenet's library API (pdenet::api) runs units on the CPU only; its \
             CUDA engine cannot yet take candle's stream: move the unit's tensors to the CPU \
             (`to_device(&Device::Cpu)`)"
                .into(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let op = &self.0;
        let shape = op.check_x(x.dims())?;
        op.check_packed(params.dims())?;
        let xv = host_values(x, "x")?;
        let pv = host_values(params, "params")?;
        let gv = host_values(grad_res, "the output's gradient")?;
        let (gx, grads) = {
            let mut e = op.lock()?;
            op.load(&mut e, &pv)?;
            e.unit
                .backward(&xv, shape, &gv, op.policy)
                .map_err(pdenet_err)?
        };
        let mut gp = vec![0f32; op.packed_len];
        for s in &op.slots {
            let (_, g) = grads
                .iter()
                .find(|(n, _)| *n == s.name)
                .ok_or_else(|| msg(format!("no gradient of `{}`", s.name)))?;
            if g.len() != s.len {
                return Err(msg(format!(
                    "the gradient of `{}` has the wrong size",
                    s.name
                )));
            }
            gp[s.offset..s.offset + s.len].copy_from_slice(g);
        }
        let gx = Tensor::from_vec(gx, x.shape().clone(), x.device())?;
        let gp = Tensor::from_vec(gp, op.packed_len, params.device())?;
        Ok((Some(gx), Some(gp)))
    }
}
