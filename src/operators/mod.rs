//! Linear operators `K` of a step (`K Y`, `K^T Z` and the weight gradients of `<dZ, K X>`), and
//! the two layer shapes built on them, composed from backend primitives:
//! the symmetric layer `f(Y) = -K^T sigma(N(K Y))` and the explicit layer `sigma(N(A Y))`
//! (ResNet, and antisymmetric with `A = K - K^T - gamma I`).
//!
//! These compositions are the specification of the fused backend ops: the backend's default
//! `step_full3x3` / `sym_full3x3_vjp` call them with [`OpRef::Full3x3`].

use crate::backend::{Activation, Backend, ConvSpec, Norm};
use crate::error::Result;
use crate::tensor::Dims;

/// Group size g of the multigrid-in-channels operator (SPEC section 7).
pub const MGIC_GROUP: usize = 16;

/// A square operator `w -> w` acting on `[n, w, h, w]` (or dense `[n, w]`) states.
pub enum OpRef<'a, B: Backend> {
    /// Full 3x3 convolution, weight `[w, w, 3, 3]`.
    Full3x3(&'a B::Buf),
    /// Dense matrix `[w, w]` on features (a 1x1 convolution).
    Dense(&'a B::Buf),
    /// LeanConvNets: `K = P + D`, P a 1x1 convolution `[w, w]`, D a depthwise 5-point stencil
    /// `[w, 5]`.
    Lean { p: &'a B::Buf, d: &'a B::Buf },
    /// Multigrid in channels: `weights = [G, R, coarse.G, coarse.R, ..., K]` (name order), so
    /// that `weights[2..]` is the coarse operator at width w/2; a single weight is the full 3x3
    /// `K` of the coarsest level (`w <= group`).
    Mgic { weights: &'a [B::Buf], group: usize },
}

impl<B: Backend> Clone for OpRef<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for OpRef<'_, B> {}

/// One level of the mgic operator at width `w`: its own weights and the coarse operator.
struct MgicLevel<'a, B: Backend> {
    g: &'a B::Buf,
    r: &'a B::Buf,
    coarse: OpRef<'a, B>,
    /// `G`: grouped 3x3, one group per `group` channels.
    g_spec: ConvSpec,
    /// `R` (restriction to w/2 channels; `R^T` the prolongation): grouped 1x1, same groups.
    r_spec: ConvSpec,
}

/// Splits mgic weights at width `w` into the full 3x3 weight of the coarsest level or one level.
fn mgic_level<'a, B: Backend>(
    weights: &'a [B::Buf],
    group: usize,
    w: usize,
) -> Result<std::result::Result<&'a B::Buf, MgicLevel<'a, B>>> {
    match weights {
        [k] if w <= group => Ok(Ok(k)),
        [g, r, rest @ ..] if w > group && w.is_multiple_of(group) && !rest.is_empty() => {
            Ok(Err(MgicLevel {
                g,
                r,
                coarse: OpRef::Mgic {
                    weights: rest,
                    group,
                },
                g_spec: ConvSpec::grouped3x3(w / group),
                r_spec: ConvSpec::grouped1x1(w / group),
            }))
        }
        _ => Err(crate::error::Error::Shape(format!(
            "mgic operator at width {w} (group {group}) cannot use {} weight tensors",
            weights.len()
        ))),
    }
}

impl<B: Backend> OpRef<'_, B> {
    /// `K y`.
    pub fn apply(&self, be: &B, y: &B::Buf, d: Dims) -> Result<B::Buf> {
        match *self {
            OpRef::Full3x3(k) => be.conv(ConvSpec::full3x3(), y, d, k, d.c),
            OpRef::Dense(k) => be.conv(ConvSpec::full1x1(), y, d, k, d.c),
            OpRef::Lean { p, d: dw } => {
                let py = be.conv(ConvSpec::full1x1(), y, d, p, d.c)?;
                let dy = be.stencil5(y, d, dw)?;
                be.lincomb(&[(1.0, &py), (1.0, &dy)])
            }
            OpRef::Mgic { weights, group } => match mgic_level(weights, group, d.c)? {
                Ok(k) => be.conv(ConvSpec::full3x3(), y, d, k, d.c),
                // K y = G y + R^T K_c (R y).
                Err(l) => {
                    let cd = d.with_c(d.c / 2);
                    let ry = be.conv(l.r_spec, y, d, l.r, cd.c)?;
                    let kry = l.coarse.apply(be, &ry, cd)?;
                    drop(ry);
                    let up = be.conv_t(l.r_spec, &kry, cd, l.r, d.c)?;
                    drop(kry);
                    let gy = be.conv(l.g_spec, y, d, l.g, d.c)?;
                    be.lincomb(&[(1.0, &gy), (1.0, &up)])
                }
            },
        }
    }
    /// `K^T z`.
    pub fn adjoint(&self, be: &B, z: &B::Buf, d: Dims) -> Result<B::Buf> {
        match *self {
            OpRef::Full3x3(k) => be.conv_t(ConvSpec::full3x3(), z, d, k, d.c),
            OpRef::Dense(k) => be.conv_t(ConvSpec::full1x1(), z, d, k, d.c),
            OpRef::Lean { p, d: dw } => {
                let pz = be.conv_t(ConvSpec::full1x1(), z, d, p, d.c)?;
                let dz = be.stencil5_t(z, d, dw)?;
                be.lincomb(&[(1.0, &pz), (1.0, &dz)])
            }
            OpRef::Mgic { weights, group } => match mgic_level(weights, group, d.c)? {
                Ok(k) => be.conv_t(ConvSpec::full3x3(), z, d, k, d.c),
                // K^T z = G^T z + R^T K_c^T (R z).
                Err(l) => {
                    let cd = d.with_c(d.c / 2);
                    let rz = be.conv(l.r_spec, z, d, l.r, cd.c)?;
                    let krz = l.coarse.adjoint(be, &rz, cd)?;
                    drop(rz);
                    let up = be.conv_t(l.r_spec, &krz, cd, l.r, d.c)?;
                    drop(krz);
                    let gz = be.conv_t(l.g_spec, z, d, l.g, d.c)?;
                    be.lincomb(&[(1.0, &gz), (1.0, &up)])
                }
            },
        }
    }
    /// Gradients of `<dz, K x>` with respect to each weight tensor of `K`, in name order.
    pub fn wgrad(&self, be: &B, x: &B::Buf, dz: &B::Buf, d: Dims) -> Result<Vec<B::Buf>> {
        match *self {
            OpRef::Full3x3(_) => Ok(vec![be.conv_wgrad(ConvSpec::full3x3(), x, d, dz, d.c)?]),
            OpRef::Dense(_) => Ok(vec![be.conv_wgrad(ConvSpec::full1x1(), x, d, dz, d.c)?]),
            OpRef::Lean { .. } => Ok(vec![
                be.conv_wgrad(ConvSpec::full1x1(), x, d, dz, d.c)?,
                be.stencil5_wgrad(x, d, dz)?,
            ]),
            OpRef::Mgic { weights, group } => match mgic_level(weights, group, d.c)? {
                Ok(_) => Ok(vec![be.conv_wgrad(ConvSpec::full3x3(), x, d, dz, d.c)?]),
                // <dz, R^T K_c R x> = <R dz, K_c (R x)>: R appears on both sides, K_c in between.
                Err(l) => {
                    let cd = d.with_c(d.c / 2);
                    let dg = be.conv_wgrad(l.g_spec, x, d, dz, d.c)?;
                    let rx = be.conv(l.r_spec, x, d, l.r, cd.c)?;
                    let rdz = be.conv(l.r_spec, dz, d, l.r, cd.c)?;
                    let k_rx = l.coarse.apply(be, &rx, cd)?;
                    let kt_rdz = l.coarse.adjoint(be, &rdz, cd)?;
                    let dr_out = be.conv_wgrad(l.r_spec, dz, d, &k_rx, cd.c)?;
                    drop(k_rx);
                    let dr_in = be.conv_wgrad(l.r_spec, x, d, &kt_rdz, cd.c)?;
                    drop(kt_rdz);
                    let dr = be.lincomb(&[(1.0, &dr_out), (1.0, &dr_in)])?;
                    let mut out = vec![dg, dr];
                    out.extend(l.coarse.wgrad(be, &rx, &rdz, cd)?);
                    Ok(out)
                }
            },
        }
    }
}

/// Applies the normalisation `N`.
pub fn norm_forward<B: Backend>(
    be: &B,
    z: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
) -> Result<B::Buf> {
    match norm {
        Norm::Tv { s, b } => be.tvnorm(z, d, s, b),
        Norm::Shift { b } => be.add_channel_bias(z, d, b),
    }
}

/// Gradients of the normalisation: `(dz, dscale, dshift)`, `dscale` absent for the shift.
pub type NormGrads<B> = (B, Option<B>, B);

/// VJP of `N`: `(dz, dscale, dshift)`.
#[allow(clippy::type_complexity)]
pub fn norm_vjp<B: Backend>(
    be: &B,
    z: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    da: &B::Buf,
) -> Result<NormGrads<B::Buf>> {
    match norm {
        Norm::Tv { s, .. } => {
            let (dz, ds, db) = be.tvnorm_vjp(z, d, s, da)?;
            Ok((dz, Some(ds), db))
        }
        Norm::Shift { .. } => Ok((be.copy(da)?, None, be.channel_sum(da, d)?)),
    }
}

/// Gradients of a layer `F(y; K, N)` for a cotangent `g`.
pub struct LayerGrads<B> {
    /// `J_F(y)^T g`.
    pub dy: B,
    /// One per weight tensor of the operator, in name order.
    pub dop: Vec<B>,
    /// tvNorm scale gradient (`None` for the shift-only norm).
    pub dscale: Option<B>,
    pub dshift: B,
}

/// `sum_i a_i x_i + coef * f(y)` with `f(y) = -K^T sigma(N(K y))`.
#[allow(clippy::too_many_arguments)]
pub fn sym_step<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    terms: &[(f64, &B::Buf)],
    coef: f64,
    y: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    act: Activation,
) -> Result<B::Buf> {
    let z = op.apply(be, y, d)?;
    let a = norm_forward(be, &z, d, norm)?;
    drop(z);
    let s = be.activation(act, &a)?;
    drop(a);
    let kt = op.adjoint(be, &s, d)?;
    drop(s);
    let mut all: Vec<(f64, &B::Buf)> = terms.to_vec();
    all.push((-coef, &kt));
    be.lincomb(&all)
}

/// VJP of `f(y) = -K^T sigma(N(K y))`.
pub fn sym_vjp<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    y: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    act: Activation,
    g: &B::Buf,
) -> Result<LayerGrads<B::Buf>> {
    let z = op.apply(be, y, d)?;
    let a = norm_forward(be, &z, d, norm)?;
    let s = be.activation(act, &a)?;
    // f = -K^T s: the cotangent of s is -K g; K's weights get -wgrad(g -> s).
    let ds_neg = op.apply(be, g, d)?;
    let dop_t = op.wgrad(be, g, &s, d)?;
    drop(s);
    let da_neg = be.activation_vjp(act, &a, &ds_neg)?;
    drop((a, ds_neg));
    let (dz_neg, dscale, dshift) = norm_vjp(be, &z, d, norm, &da_neg)?;
    drop((z, da_neg));
    let dy_neg = op.adjoint(be, &dz_neg, d)?;
    let dop_z = op.wgrad(be, y, &dz_neg, d)?;
    let dop = dop_t
        .iter()
        .zip(&dop_z)
        .map(|(t, z)| be.lincomb(&[(-1.0, t), (-1.0, z)]))
        .collect::<Result<Vec<_>>>()?;
    Ok(LayerGrads {
        dy: be.lincomb(&[(-1.0, &dy_neg)])?,
        dop,
        dscale: dscale.map(|v| be.lincomb(&[(-1.0, &v)])).transpose()?,
        dshift: be.lincomb(&[(-1.0, &dshift)])?,
    })
}

/// `A y` for the explicit layer: `K y`, or `(K - K^T - gamma I) y` when antisymmetric.
fn explicit_apply<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    antisym: Option<f64>,
    y: &B::Buf,
    d: Dims,
) -> Result<B::Buf> {
    let ky = op.apply(be, y, d)?;
    match antisym {
        None => Ok(ky),
        Some(gamma) => {
            let kty = op.adjoint(be, y, d)?;
            be.lincomb(&[(1.0, &ky), (-1.0, &kty), (-gamma, y)])
        }
    }
}

/// `y + h sigma(N(A y))`: one forward-Euler (ResNet) or antisymmetric step.
#[allow(clippy::too_many_arguments)]
pub fn explicit_step<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    antisym: Option<f64>,
    h: f64,
    y: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    act: Activation,
) -> Result<B::Buf> {
    let s = explicit_f(be, op, antisym, y, d, norm, act)?;
    be.lincomb(&[(1.0, y), (h, &s)])
}

/// `sigma(N(A y))` alone: the right-hand side of the explicit step.
pub fn explicit_f<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    antisym: Option<f64>,
    y: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    act: Activation,
) -> Result<B::Buf> {
    let z = explicit_apply(be, op, antisym, y, d)?;
    let a = norm_forward(be, &z, d, norm)?;
    drop(z);
    be.activation(act, &a)
}

/// VJP of `sigma(N(A y))` (without the identity and the factor h).
#[allow(clippy::too_many_arguments)]
pub fn explicit_vjp<B: Backend>(
    be: &B,
    op: OpRef<'_, B>,
    antisym: Option<f64>,
    y: &B::Buf,
    d: Dims,
    norm: Norm<'_, B::Buf>,
    act: Activation,
    g: &B::Buf,
) -> Result<LayerGrads<B::Buf>> {
    let z = explicit_apply(be, op, antisym, y, d)?;
    let a = norm_forward(be, &z, d, norm)?;
    let da = be.activation_vjp(act, &a, g)?;
    drop(a);
    let (dz, dscale, dshift) = norm_vjp(be, &z, d, norm, &da)?;
    drop((z, da));
    let kt_dz = op.adjoint(be, &dz, d)?;
    let dop_fwd = op.wgrad(be, y, &dz, d)?;
    let (dy, dop) = match antisym {
        None => (kt_dz, dop_fwd),
        Some(gamma) => {
            // A^T = K^T - K - gamma I; <dz, -K^T y> = <-K dz, y> gives -wgrad(dz -> y).
            let k_dz = op.apply(be, &dz, d)?;
            let dy = be.lincomb(&[(1.0, &kt_dz), (-1.0, &k_dz), (-gamma, &dz)])?;
            let dop_adj = op.wgrad(be, &dz, y, d)?;
            let dop = dop_fwd
                .iter()
                .zip(&dop_adj)
                .map(|(f, a)| be.lincomb(&[(1.0, f), (-1.0, a)]))
                .collect::<Result<Vec<_>>>()?;
            (dy, dop)
        }
    };
    Ok(LayerGrads {
        dy,
        dop,
        dscale,
        dshift,
    })
}
