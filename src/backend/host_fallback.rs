//! Ops computed by a host round trip: download the operands, run the f64 reference formula
//! ([`super::reference`]), upload the result. No [`Backend`] method does this by default; a
//! backend that has no kernel of its own for an op calls the function here from its impl, where
//! the round trip is visible (the CPU's Haar transforms, CUDA's diffusion solve of large images).

use super::reference::{structured, tnrd};
use super::{scaled_sq_host, Backend, ConvSpec, TnrdGrads};
use crate::error::Result;
use crate::tensor::Dims;

/// [`Backend::scaled_sq`], summed on the host in index order.
pub fn scaled_sq<B: Backend>(
    be: &B,
    x: &B::Buf,
    a: &B::Buf,
    b: &B::Buf,
    atol: f64,
    rtol: f64,
) -> Result<f64> {
    let (x, a, b) = (be.download(x)?, be.download(a)?, be.download(b)?);
    scaled_sq_host(&x, &a, &b, atol, rtol)
}

/// [`Backend::stencil5`].
pub fn stencil5<B: Backend>(be: &B, x: &B::Buf, d: Dims, dw: &B::Buf) -> Result<B::Buf> {
    let y = structured::stencil5(&be.download(x)?, d, &be.download(dw)?)?;
    be.upload(&y)
}

/// [`Backend::stencil5_t`].
pub fn stencil5_t<B: Backend>(be: &B, z: &B::Buf, d: Dims, dw: &B::Buf) -> Result<B::Buf> {
    let x = structured::stencil5_t(&be.download(z)?, d, &be.download(dw)?)?;
    be.upload(&x)
}

/// [`Backend::stencil5_wgrad`].
pub fn stencil5_wgrad<B: Backend>(be: &B, x: &B::Buf, d: Dims, dz: &B::Buf) -> Result<B::Buf> {
    let g = structured::stencil5_wgrad(&be.download(x)?, d, &be.download(dz)?)?;
    be.upload(&g)
}

/// [`Backend::conv`] of any [`ConvSpec`], by the reference's grouped loops.
pub fn conv<B: Backend>(
    be: &B,
    spec: ConvSpec,
    x: &B::Buf,
    d: Dims,
    k: &B::Buf,
    cout: usize,
) -> Result<B::Buf> {
    let (x, k) = (be.download(x)?, be.download(k)?);
    be.upload(&structured::grouped_conv(spec, &x, d, &k, cout)?)
}

/// [`Backend::conv_t`] of any [`ConvSpec`].
pub fn conv_t<B: Backend>(
    be: &B,
    spec: ConvSpec,
    z: &B::Buf,
    d: Dims,
    k: &B::Buf,
    cin: usize,
) -> Result<B::Buf> {
    let (z, k) = (be.download(z)?, be.download(k)?);
    be.upload(&structured::grouped_conv_t(spec, &z, d, &k, cin)?)
}

/// [`Backend::conv_wgrad`] of any [`ConvSpec`].
pub fn conv_wgrad<B: Backend>(
    be: &B,
    spec: ConvSpec,
    x: &B::Buf,
    d: Dims,
    dz: &B::Buf,
    cout: usize,
) -> Result<B::Buf> {
    let (x, dz) = (be.download(x)?, be.download(dz)?);
    be.upload(&structured::grouped_conv_wgrad(spec, &x, d, &dz, cout)?)
}

/// [`Backend::diffusion_solve`] through `rustfft`.
pub fn diffusion_solve<B: Backend>(
    be: &B,
    x: &B::Buf,
    d: Dims,
    diff: &B::Buf,
    h: f64,
) -> Result<B::Buf> {
    let (x, diff) = (be.download(x)?, be.download(diff)?);
    be.upload(&structured::diffusion_solve_fft(&x, d, &diff, h)?)
}

/// [`Backend::diffusion_solve_vjp`] through `rustfft`.
pub fn diffusion_solve_vjp<B: Backend>(
    be: &B,
    y: &B::Buf,
    d: Dims,
    diff: &B::Buf,
    h: f64,
    g: &B::Buf,
) -> Result<(B::Buf, B::Buf)> {
    let (y, diff, g) = (be.download(y)?, be.download(diff)?, be.download(g)?);
    let (dx, dd) =
        structured::diffusion_vjp_with(&y, d, &diff, h, &g, structured::diffusion_solve_fft)?;
    Ok((be.upload(&dx)?, be.upload(&dd)?))
}

/// [`Backend::haar`].
pub fn haar<B: Backend>(be: &B, x: &B::Buf, d: Dims) -> Result<B::Buf> {
    be.upload(&structured::haar(&be.download(x)?, d)?)
}

/// [`Backend::haar_inv`].
pub fn haar_inv<B: Backend>(be: &B, y: &B::Buf, d: Dims) -> Result<B::Buf> {
    be.upload(&structured::haar_inv(&be.download(y)?, d)?)
}

/// [`Backend::haar_fixed`].
pub fn haar_fixed<B: Backend>(be: &B, q: &B::IBuf, d: Dims) -> Result<B::IBuf> {
    be.iupload(&structured::haar_fixed(&be.idownload(q)?, d)?)
}

/// [`Backend::haar_fixed_inv`].
pub fn haar_fixed_inv<B: Backend>(be: &B, q: &B::IBuf, d: Dims) -> Result<B::IBuf> {
    be.iupload(&structured::haar_fixed_inv(&be.idownload(q)?, d)?)
}

/// [`Backend::tnrd_stage`].
#[allow(clippy::too_many_arguments)]
pub fn tnrd_stage<B: Backend>(
    be: &B,
    u: &B::Buf,
    f: &B::Buf,
    d: Dims,
    k: &B::Buf,
    rbf: &B::Buf,
    lambda: f64,
    size: usize,
) -> Result<B::Buf> {
    let (u, f) = (be.download(u)?, be.download(f)?);
    let (k, rbf) = (be.download(k)?, be.download(rbf)?);
    be.upload(&tnrd::stage_batch(&u, &f, d, &k, &rbf, lambda, size)?)
}

/// [`Backend::tnrd_stage_vjp`].
#[allow(clippy::too_many_arguments)]
pub fn tnrd_stage_vjp<B: Backend>(
    be: &B,
    u: &B::Buf,
    f: &B::Buf,
    d: Dims,
    k: &B::Buf,
    rbf: &B::Buf,
    lambda: f64,
    size: usize,
    g: &B::Buf,
) -> Result<TnrdGrads<B::Buf>> {
    let (u, f, g) = (be.download(u)?, be.download(f)?, be.download(g)?);
    let (k, rbf) = (be.download(k)?, be.download(rbf)?);
    let gr = tnrd::stage_vjp_batch(&u, &f, d, &k, &rbf, lambda, size, &g)?;
    Ok(TnrdGrads {
        du: be.upload(&gr.du)?,
        df: be.upload(&gr.df)?,
        dk: be.upload(&gr.dk)?,
        drbf: be.upload(&gr.drbf)?,
        dlambda: gr.dlambda,
    })
}
