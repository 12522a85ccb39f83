//! `Backend` for [`Cuda`]: shape checks, launch geometry and one launch per kernel.

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::kernels::{Kernel, TensorCoreKernel};
use super::{cu, grid_1d, i32_of, Cuda, DeviceBuf};
use crate::backend::kernel_constants::{
    ACT_LOGCOSH, ACT_RELU, ACT_TANH, BK, BN, DIFF_MAX, NT, RED_A, RED_A_B_P, RED_A_XHAT, RED_SQDEV,
    RED_THREADS, S7_THREADS, STORAGE_BF16, STORAGE_F16, SYM_THREADS, TN_THREADS,
};
use crate::backend::{
    host_fallback, optim, sym_full3x3_vjp_composed, Activation, Backend, BnStats, ConvSpec, Norm,
    Storage, SymGrads, BN_MOMENTUM,
};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Dims;

type Buf = DeviceBuf<f32>;
type IBuf = DeviceBuf<i32>;

/// A kept state in 16 bits on the device (kernels/pointwise.cu `pack16`).
pub struct PackedBuf {
    bits: DeviceBuf<u16>,
    format: Storage,
}

/// The `format` argument of the pack16 / unpack16 kernels (STORAGE_BF16 / STORAGE_F16).
fn storage_code(format: Storage) -> Result<i32> {
    match format {
        Storage::Bf16 => Ok(STORAGE_BF16),
        Storage::F16 => Ok(STORAGE_F16),
        Storage::F32 => Err(Error::Other(
            "pack16 needs a 16-bit storage format (bf16 or f16)".into(),
        )),
    }
}

/// A kernel table entry that names one loaded function.
trait Launchable {
    fn function(self, cuda: &Cuda) -> &CudaFunction;
}
impl Launchable for Kernel {
    fn function(self, cuda: &Cuda) -> &CudaFunction {
        cuda.kernel(self)
    }
}
impl Launchable for TensorCoreKernel {
    fn function(self, cuda: &Cuda) -> &CudaFunction {
        cuda.tensor_core_kernel(self)
    }
}

/// Launches kernel `$kernel` (a [`Kernel`] or [`TensorCoreKernel`]) with `$cfg`; arguments are
/// device slices or references to locals.
macro_rules! launch {
    ($self:expr, $kernel:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let f = Launchable::function($kernel, $self);
        let mut b = $self.stream.launch_builder(f);
        $( b.arg($arg); )*
        // SAFETY: the argument lists match the kernel signatures in kernels/*.cu, and every
        // buffer is checked to hold the number of values the kernel touches.
        cu(unsafe { b.launch($cfg) }).map(|_| ())
    }};
}

fn check_len(buf: &Buf, len: usize, what: &str) -> Result<()> {
    ensure_shape!(
        buf.len() == len,
        "{what}: expected {len} values, got {}",
        buf.len()
    );
    Ok(())
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Relu => ACT_RELU,
        Activation::Tanh => ACT_TANH,
        Activation::Logcosh => ACT_LOGCOSH,
    }
}

/// The output-channel tile for `m` output channels: 32 rows (the kernels' `_m32` variants) for
/// at most 32 channels, 64 above.
fn m_tile(m: usize) -> usize {
    if m <= 32 {
        32
    } else {
        64
    }
}

fn gemm_grid(nq: usize, m: usize, bm: usize) -> Result<LaunchConfig> {
    let gx = nq.div_ceil(BN);
    let gy = m.div_ceil(bm);
    ensure_shape!(
        gx < (1 << 31) && gy < 65536,
        "convolution of {nq} pixels x {m} channels exceeds the launch grid"
    );
    Ok(LaunchConfig {
        grid_dim: (gx as u32, gy as u32, 1),
        block_dim: (NT as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The kernel family of a convolution with `taps` = 9 (3x3) or 1 (1x1).
fn conv_family(taps: usize) -> &'static str {
    if taps == 9 {
        "conv3x3"
    } else {
        "conv1x1"
    }
}

/// Per-group channel counts `(cin / groups, cout / groups)`, or a shape error.
fn group_sizes(cin: usize, cout: usize, groups: usize) -> Result<(usize, usize)> {
    ensure_shape!(
        groups > 0 && cin.is_multiple_of(groups) && cout.is_multiple_of(groups),
        "grouped convolution: {groups} groups do not divide {cin} -> {cout} channels"
    );
    Ok((cin / groups, cout / groups))
}

/// Elements per block of `scaled_sq_partial`: a multiple of its RED_THREADS threads.
const SCALED_SQ_CHUNK: usize = 32 * RED_THREADS;

impl Cuda {
    fn check_dims(&self, d: Dims) -> Result<()> {
        i32_of(d.len(), "tensor length")?;
        Ok(())
    }

    /// Implicit-GEMM forward or transpose convolution `spec` (3x3 or 1x1, in `spec.groups`
    /// groups as PyTorch's grouped convolution): input `[n, cin, h, w]` (`d`), output
    /// `[n, cout, h, w]`, each group mapping `cin / groups` to `cout / groups` channels.
    fn conv_gemm(
        &self,
        spec: ConvSpec,
        trans: bool,
        x: &Buf,
        d: Dims,
        k: &Buf,
        cout: usize,
    ) -> Result<Buf> {
        let (taps, groups) = (spec.tap_count(), spec.groups);
        let (cg, mo) = group_sizes(d.c, cout, groups)?;
        let family = conv_family(taps);
        let what = if trans {
            "transposed convolution"
        } else {
            "convolution"
        };
        check_len(x, d.len(), &format!("{family} {what} input"))?;
        // [cout, cin / groups, taps] forward; the same tensor, read as its adjoint, transposed.
        check_len(k, cout * cg * taps, &format!("{family} {what} weight"))?;
        let od = d.with_c(cout);
        self.check_dims(d)?;
        self.check_dims(od)?;
        if od.is_empty() || cg == 0 {
            // No input channels: the result is zero.
            return self.zeros(od.len());
        }
        let bm = m_tile(mo);
        let kernel = TensorCoreKernel::conv(taps, trans, bm == 32);
        let mut cfg = gemm_grid(d.n * d.hw(), mo, bm)?;
        ensure_shape!(groups < 65536, "{groups} groups exceed the launch grid");
        cfg.grid_dim.2 = groups as u32;
        let out = self.alloc::<f32>(od.len())?;
        let v = [d.n, cg, mo, d.h, d.w, groups].map(|v| v as i32);
        launch!(self, kernel, cfg; x.slice(), k.slice(), out.slice(), &v[0], &v[1], &v[2],
                &v[3], &v[4], &v[5])?;
        Ok(out)
    }

    /// Weight gradient `[cout, cin / groups * taps]` of the convolution `spec` with input `x`
    /// (`d`) and output cotangent `dz` `[n, cout, h, w]`: split-K over pixels, then a
    /// fixed-order sum of splits.
    fn conv_splitk_wgrad(
        &self,
        spec: ConvSpec,
        x: &Buf,
        d: Dims,
        dz: &Buf,
        cout: usize,
    ) -> Result<Buf> {
        let (taps, groups) = (spec.tap_count(), spec.groups);
        let (cg, mo) = group_sizes(d.c, cout, groups)?;
        let what = format!("{}_wgrad", conv_family(taps));
        let od = d.with_c(cout);
        check_len(x, d.len(), &format!("{what} input"))?;
        check_len(dz, od.len(), &format!("{what} cotangent"))?;
        self.check_dims(d)?;
        self.check_dims(od)?;
        let ncol = cg * taps;
        let len = cout * ncol;
        i32_of(len, "weight size")?;
        let nq = d.n * d.hw();
        if len == 0 || nq == 0 {
            return self.zeros(len);
        }
        // 32-row tiles for at most 32 output channels, 64-row ones above.
        let bm = m_tile(mo);
        let kernel = TensorCoreKernel::wgrad(taps, bm == 32);
        let tiles = ncol.div_ceil(BN) * mo.div_ceil(bm) * groups;
        // Enough blocks to fill the device; each split covers a whole number of BK pixels.
        let want = 1024usize.div_ceil(tiles).max(1);
        let chunk = nq.div_ceil(want).div_ceil(BK) * BK;
        let chunk = chunk.max(4 * BK);
        let splits = nq.div_ceil(chunk);
        ensure_shape!(
            splits * groups < 65536,
            "weight gradient over {nq} pixels in {groups} groups: too many splits"
        );
        let cfg = LaunchConfig {
            grid_dim: (
                ncol.div_ceil(BN) as u32,
                mo.div_ceil(bm) as u32,
                (splits * groups) as u32,
            ),
            block_dim: (NT as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let v = [d.n, cg, mo, d.h, d.w, groups, chunk].map(|v| v as i32);
        let out = self.alloc::<f32>(len)?;
        if splits == 1 {
            launch!(self, kernel, cfg; x.slice(), dz.slice(), out.slice(), &v[0], &v[1], &v[2],
                    &v[3], &v[4], &v[5], &v[6])?;
            return Ok(out);
        }
        let partial = self.alloc::<f32>(splits * len)?;
        launch!(self, kernel, cfg; x.slice(), dz.slice(), partial.slice(), &v[0], &v[1], &v[2],
                &v[3], &v[4], &v[5], &v[6])?;
        let (ns, l) = (splits as i32, len as i32);
        launch!(self, Kernel::ReduceSplits, grid_1d(len); partial.slice(), out.slice(), &ns, &l)?;
        Ok(out)
    }

    /// The stencil (or its adjoint) of the lean operator.
    fn stencil5_apply(&self, x: &Buf, d: Dims, dw: &Buf, adjoint: bool) -> Result<Buf> {
        check_len(x, d.len(), "stencil5 input")?;
        check_len(dw, d.c * 5, "stencil5 weight")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let v = [d.n, d.c, d.h, d.w, adjoint as usize].map(|v| v as i32);
        launch!(self, Kernel::Stencil5Apply, grid_1d(d.len()); x.slice(), dw.slice(), out.slice(),
                &v[0], &v[1], &v[2], &v[3], &v[4])?;
        Ok(out)
    }

    /// The checked TNRD stage shape: the filter count and `[nb, nf, h, w, s]` as kernel ints.
    fn tnrd_shape(
        &self,
        d: Dims,
        lens: [usize; 2],
        k: &Buf,
        rbf: &Buf,
        size: usize,
    ) -> Result<(usize, [i32; 5])> {
        let nf = crate::backend::reference::tnrd::check_stage(d, lens, k.len(), rbf.len(), size)?;
        i32_of(d.len() * nf, "tnrd stage responses")?;
        let v = [d.n, nf, d.h, d.w, size].map(|v| v as i32);
        Ok((nf, v))
    }

    /// `v = K_i x` for every filter and image: `[n, nf, h, w]`.
    fn tnrd_response(&self, x: &Buf, k: &Buf, d: Dims, v: [i32; 5]) -> Result<Buf> {
        let len = d.len() * v[1] as usize;
        let out = self.alloc::<f32>(len)?;
        launch!(self, Kernel::TnrdResponse, grid_1d(len); x.slice(), k.slice(), out.slice(), &v[0],
                &v[1], &v[2], &v[3], &v[4])?;
        Ok(out)
    }

    /// `x - c (x - y) - sum_i K_i^T z_i` (`y` absent: zero).
    #[allow(clippy::too_many_arguments)]
    fn tnrd_adjoint(
        &self,
        z: &Buf,
        k: &Buf,
        x: &Buf,
        y: Option<&Buf>,
        c: f64,
        d: Dims,
        v: [i32; 5],
    ) -> Result<Buf> {
        let out = self.alloc::<f32>(d.len())?;
        let (cf, has_y) = (c as f32, y.is_some() as i32);
        let y = y.unwrap_or(x);
        launch!(self, Kernel::TnrdAdjoint, grid_1d(d.len()); z.slice(), k.slice(), x.slice(),
                y.slice(), out.slice(), &v[0], &v[1], &v[2], &v[3], &v[4], &cf, &has_y)?;
        Ok(out)
    }

    /// `scale * sum over splits` of a `*_partial` kernel with `rows` outputs per split over
    /// `total` (image, pixel) pairs; `run(grid, chunk, partial)` launches it.
    fn tnrd_reduce(
        &self,
        rows: usize,
        total: usize,
        scale: f64,
        run: impl FnOnce(LaunchConfig, i32, &DeviceBuf<f64>) -> Result<()>,
    ) -> Result<Buf> {
        // About 64 splits, fixed by the shape alone (deterministic).
        let chunk = total.div_ceil(64).max(256);
        let splits = total.div_ceil(chunk).max(1);
        ensure_shape!(rows < (1 << 31), "tnrd gradient: too many rows");
        let partial = self.alloc::<f64>(splits * rows)?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, splits as u32, 1),
            block_dim: (TN_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        run(cfg, i32_of(chunk, "tnrd chunk")?, &partial)?;
        let out = self.alloc::<f32>(rows)?;
        let (ns, len) = (splits as i32, rows as i32);
        launch!(self, Kernel::ChannelFinish, grid_1d(rows); partial.slice(), &ns, &len, &scale,
                out.slice())?;
        Ok(out)
    }

    /// Whether the diffusion kernels take planes of `d` (their tables live in shared memory).
    fn diffusion_on_device(d: Dims) -> bool {
        d.h <= DIFF_MAX && d.w <= DIFF_MAX
    }

    /// `(I + h a_c L)^{-1} x` plane by plane on the device (`diffusion_on_device(d)` holds).
    fn diffusion_planes(&self, x: &Buf, d: Dims, diff: &Buf, h: f64) -> Result<Buf> {
        check_len(x, d.len(), "diffusion solve input")?;
        check_len(diff, d.c, "diffusion coefficients")?;
        ensure_shape!(h.is_finite() && h >= 0.0, "diffusion step {h} is not >= 0");
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let cfg = LaunchConfig {
            grid_dim: (i32_of(d.n * d.c, "diffusion planes")? as u32, 1, 1),
            block_dim: (S7_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nc, hh, ww, hs) = (d.c as i32, d.h as i32, d.w as i32, h as f32);
        launch!(self, Kernel::DiffusionSolvePlanes, cfg; x.slice(), diff.slice(), out.slice(), &nc,
                &hh, &ww, &hs)?;
        Ok(out)
    }

    /// Haar transform `[n, c, h, w]` (`d`, fine) <-> `[n, 4c, h/2, w/2]`, in f32 or fixed point.
    fn haar_launch<T: cudarc::driver::DeviceRepr>(
        &self,
        kernel: Kernel,
        src: &DeviceBuf<T>,
        d: Dims,
        inverse: bool,
    ) -> Result<DeviceBuf<T>> {
        ensure_shape!(
            d.h.is_multiple_of(2) && d.w.is_multiple_of(2),
            "haar: image {}x{} must have even sides",
            d.h,
            d.w
        );
        ensure_shape!(
            src.len() == d.len(),
            "haar input: expected {} values, got {}",
            d.len(),
            src.len()
        );
        self.check_dims(d)?;
        let out = self.alloc::<T>(d.len())?;
        let blocks = d.len() / 4;
        if blocks == 0 {
            return Ok(out);
        }
        let v = [d.n, d.c, d.h, d.w, inverse as usize].map(|v| v as i32);
        launch!(self, kernel, grid_1d(blocks); src.slice(), out.slice(), &v[0], &v[1], &v[2],
                &v[3], &v[4])?;
        Ok(out)
    }

    /// `scale * sum_{n,p} v(n, c, p)` per channel, `v` chosen by `mode` (kernels/norm.cu).
    #[allow(clippy::too_many_arguments)]
    fn channel_reduce(
        &self,
        mode: i32,
        d: Dims,
        a: &Buf,
        b: &Buf,
        pv: &Buf,
        cv: &Buf,
        cv2: &Buf,
        scale: f64,
    ) -> Result<Buf> {
        let out = self.alloc::<f32>(d.c)?;
        if d.c == 0 {
            return Ok(out);
        }
        let total = d.n * d.hw();
        let splits = 512usize
            .div_ceil(d.c)
            .min(total.div_ceil(256))
            .clamp(1, 65535);
        let chunk = total.div_ceil(splits).max(1);
        let splits = total.div_ceil(chunk).max(1);
        let partial = self.alloc::<f64>(splits * d.c)?;
        let cfg = LaunchConfig {
            grid_dim: (d.c as u32, splits as u32, 1),
            block_dim: (RED_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nb, nc, hw, ch) = (d.n as i32, d.c as i32, d.hw() as i32, chunk as i32);
        launch!(self, Kernel::ChannelPartial, cfg; &mode, a.slice(), b.slice(), pv.slice(), cv.slice(),
                cv2.slice(), &nb, &nc, &hw, &ch, partial.slice())?;
        let ns = splits as i32;
        launch!(self, Kernel::ChannelFinish, grid_1d(d.c); partial.slice(), &ns, &nc, &scale, out.slice())?;
        Ok(out)
    }

    fn act_launch(
        &self,
        kernel: Kernel,
        act: Activation,
        x: &Buf,
        dy: Option<&Buf>,
    ) -> Result<Buf> {
        let len = x.len();
        let l = i32_of(len, "activation length")?;
        let out = self.alloc::<f32>(len)?;
        if len == 0 {
            return Ok(out);
        }
        let a = act_code(act);
        match dy {
            None => launch!(self, kernel, grid_1d(len); x.slice(), out.slice(), &l, &a)?,
            Some(dy) => {
                check_len(dy, len, "activation_vjp cotangent")?;
                launch!(self, kernel, grid_1d(len); x.slice(), dy.slice(), out.slice(), &l, &a)?
            }
        }
        Ok(out)
    }
}

impl Backend for Cuda {
    type Buf = Buf;
    type IBuf = IBuf;
    type HBuf = PackedBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn zeros(&self, len: usize) -> Result<Buf> {
        self.alloc_zeros::<f32>(len)
    }
    fn upload(&self, data: &[f64]) -> Result<Buf> {
        let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.upload_slice(&v)
    }
    fn upload_f32(&self, data: &[f32]) -> Result<Buf> {
        self.upload_slice(data)
    }
    fn download(&self, buf: &Buf) -> Result<Vec<f64>> {
        Ok(self
            .download_slice(buf)?
            .into_iter()
            .map(|x| x as f64)
            .collect())
    }
    fn download_f32(&self, buf: &Buf) -> Result<Vec<f32>> {
        self.download_slice(buf)
    }
    fn buf_len(&self, buf: &Buf) -> usize {
        buf.len()
    }
    fn copy(&self, buf: &Buf) -> Result<Buf> {
        let mut out = self.alloc::<f32>(buf.len())?;
        if !buf.is_empty() {
            cu(self.stream.memcpy_dtod(&buf.slice, &mut out.slice))?;
        }
        Ok(out)
    }
    fn iupload(&self, data: &[i32]) -> Result<IBuf> {
        self.upload_slice(data)
    }
    fn idownload(&self, buf: &IBuf) -> Result<Vec<i32>> {
        self.download_slice(buf)
    }
    fn pack16(&self, x: &Buf, format: Storage) -> Result<PackedBuf> {
        let code = storage_code(format)?;
        let len = x.len();
        let l = i32_of(len, "pack16 length")?;
        let bits = self.alloc::<u16>(len)?;
        if len > 0 {
            launch!(self, Kernel::Pack16, grid_1d(len); x.slice(), bits.slice(), &l, &code)?;
        }
        Ok(PackedBuf { bits, format })
    }
    fn unpack16(&self, h: &PackedBuf) -> Result<Buf> {
        let code = storage_code(h.format)?;
        let len = h.bits.len();
        let l = i32_of(len, "unpack16 length")?;
        let out = self.alloc::<f32>(len)?;
        if len > 0 {
            launch!(self, Kernel::Unpack16, grid_1d(len); h.bits.slice(), out.slice(), &l, &code)?;
        }
        Ok(out)
    }

    fn scaled_sq(&self, x: &Buf, a: &Buf, b: &Buf, atol: f64, rtol: f64) -> Result<f64> {
        let len = x.len();
        check_len(a, len, "scaled norm `a`")?;
        check_len(b, len, "scaled norm `b`")?;
        if len == 0 {
            return Ok(0.0);
        }
        let l = i32_of(len, "scaled norm length")?;
        // Fixed chunks (not tied to the device's size): the same sum on every GPU.
        let chunk = SCALED_SQ_CHUNK.min(len);
        let blocks = len.div_ceil(chunk);
        let partial = self.alloc::<f64>(blocks)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (RED_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let ch = chunk as i32;
        launch!(self, Kernel::ScaledSqPartial, cfg; x.slice(), a.slice(), b.slice(), &l, &ch, &atol,
                &rtol, partial.slice())?;
        Ok(self.download_slice(&partial)?.iter().sum())
    }
    fn lincomb(&self, terms: &[(f64, &Buf)]) -> Result<Buf> {
        ensure_shape!(!terms.is_empty(), "lincomb needs at least one term");
        let len = terms[0].1.len();
        for (_, x) in terms {
            check_len(x, len, "lincomb term")?;
        }
        let l = i32_of(len, "lincomb length")?;
        let out = self.alloc::<f32>(len)?;
        if len == 0 {
            return Ok(out);
        }
        let head = &terms[..terms.len().min(4)];
        let nt = head.len() as i32;
        let a: Vec<f32> = (0..4)
            .map(|i| head.get(i).map_or(0.0, |t| t.0 as f32))
            .collect();
        let x = |i: usize| head.get(i).unwrap_or(&head[0]).1.slice();
        launch!(self, Kernel::Lincomb4, grid_1d(len); out.slice(), &l, &nt, &a[0], x(0), &a[1], x(1),
                &a[2], x(2), &a[3], x(3))?;
        let mut out = out;
        for (c, x) in &terms[head.len()..] {
            self.axpy(*c, x, &mut out)?;
        }
        Ok(out)
    }
    fn sgd_step(&self, w: &mut Buf, m: &mut Buf, g: &Buf, s: &optim::SgdStep) -> Result<()> {
        optim::check_lens("sgd_step", &[w.len(), m.len(), g.len()])?;
        let l = i32_of(w.len(), "sgd_step length")?;
        if w.is_empty() {
            return Ok(());
        }
        let (lr, mu, wd) = (s.lr as f32, s.momentum as f32, s.weight_decay as f32);
        launch!(self, Kernel::SgdStep, grid_1d(w.len());
            w.slice(), m.slice(), g.slice(), &l, &lr, &mu, &wd)
    }
    fn adam_step(
        &self,
        w: &mut Buf,
        m: &mut Buf,
        v: &mut Buf,
        g: &Buf,
        s: &optim::AdamStep,
    ) -> Result<()> {
        optim::check_lens("adam_step", &[w.len(), m.len(), v.len(), g.len()])?;
        let l = i32_of(w.len(), "adam_step length")?;
        if w.is_empty() {
            return Ok(());
        }
        let wd = s.weight_decay as f32;
        launch!(self, Kernel::AdamStep, grid_1d(w.len());
            w.slice(), m.slice(), v.slice(), g.slice(), &l, &s.lr, &s.beta1, &s.beta2, &s.eps,
            &wd, &s.bias1, &s.bias2)
    }
    fn axpy(&self, a: f64, x: &Buf, y: &mut Buf) -> Result<()> {
        check_len(x, y.len(), "axpy")?;
        let l = i32_of(x.len(), "axpy length")?;
        if x.is_empty() {
            return Ok(());
        }
        let a = a as f32;
        launch!(self, Kernel::Axpy, grid_1d(x.len()); y.slice(), x.slice(), &a, &l)
    }

    fn conv(&self, spec: ConvSpec, x: &Buf, d: Dims, k: &Buf, cout: usize) -> Result<Buf> {
        self.conv_gemm(spec, false, x, d, k, cout)
    }
    fn conv_t(&self, spec: ConvSpec, z: &Buf, d: Dims, k: &Buf, cin: usize) -> Result<Buf> {
        self.conv_gemm(spec, true, z, d, k, cin)
    }
    fn conv_wgrad(&self, spec: ConvSpec, x: &Buf, d: Dims, dz: &Buf, cout: usize) -> Result<Buf> {
        self.conv_splitk_wgrad(spec, x, d, dz, cout)
    }

    // ---- SPEC section 7 on the device ------------------------------------------------------
    fn stencil5(&self, x: &Buf, d: Dims, dw: &Buf) -> Result<Buf> {
        self.stencil5_apply(x, d, dw, false)
    }
    fn stencil5_t(&self, z: &Buf, d: Dims, dw: &Buf) -> Result<Buf> {
        self.stencil5_apply(z, d, dw, true)
    }
    fn stencil5_wgrad(&self, x: &Buf, d: Dims, dz: &Buf) -> Result<Buf> {
        check_len(x, d.len(), "stencil5_wgrad input")?;
        check_len(dz, d.len(), "stencil5_wgrad cotangent")?;
        self.check_dims(d)?;
        let total = d.n * d.hw();
        if d.c == 0 || total == 0 {
            return self.zeros(d.c * 5);
        }
        // About 64 blocks per channel, fixed by the shape alone (deterministic).
        let chunk = total.div_ceil(64).max(256);
        let splits = total.div_ceil(chunk);
        ensure_shape!(d.c < (1 << 31), "stencil5_wgrad: too many channels");
        let partial = self.alloc::<f64>(splits * d.c * 5)?;
        let cfg = LaunchConfig {
            grid_dim: (d.c as u32, splits as u32, 1),
            block_dim: (S7_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let v = [d.n, d.c, d.h, d.w, chunk].map(|v| v as i32);
        launch!(self, Kernel::Stencil5WgradPartial, cfg; x.slice(), dz.slice(), &v[0], &v[1], &v[2],
                &v[3], &v[4], partial.slice())?;
        let out = self.alloc::<f32>(d.c * 5)?;
        let (ns, len, one) = (splits as i32, (d.c * 5) as i32, 1.0f64);
        launch!(self, Kernel::ChannelFinish, grid_1d(d.c * 5); partial.slice(), &ns, &len, &one,
                out.slice())?;
        Ok(out)
    }

    // ---- the TNRD stage (kernels/tnrd.cu) ---------------------------------------------------
    fn tnrd_stage(
        &self,
        u: &Buf,
        f: &Buf,
        d: Dims,
        k: &Buf,
        rbf: &Buf,
        lambda: f64,
        size: usize,
    ) -> Result<Buf> {
        let (nf, v) = self.tnrd_shape(d, [u.len(), f.len()], k, rbf, size)?;
        if d.is_empty() {
            return self.alloc::<f32>(0);
        }
        let z = self.tnrd_response(u, k, d, v)?;
        let (hw, one) = (d.hw() as i32, 0i32);
        launch!(self, Kernel::TnrdPhi, grid_1d(d.len() * nf); z.slice(), z.slice(), rbf.slice(),
                &v[0], &v[1], &hw, &one)?;
        self.tnrd_adjoint(&z, k, u, Some(f), lambda, d, v)
    }
    fn tnrd_stage_vjp(
        &self,
        u: &Buf,
        f: &Buf,
        d: Dims,
        k: &Buf,
        rbf: &Buf,
        lambda: f64,
        size: usize,
        g: &Buf,
    ) -> Result<crate::backend::TnrdGrads<Buf>> {
        let (nf, v) = self.tnrd_shape(d, [u.len(), f.len()], k, rbf, size)?;
        check_len(g, d.len(), "tnrd stage cotangent")?;
        if d.is_empty() {
            return Ok(crate::backend::TnrdGrads {
                du: self.alloc::<f32>(0)?,
                df: self.alloc::<f32>(0)?,
                dk: self.zeros(k.len())?,
                drbf: self.zeros(rbf.len())?,
                dlambda: 0.0,
            });
        }
        let centres = crate::backend::reference::tnrd::CENTRES;
        let (total, hw) = (d.len(), d.hw() as i32);
        // v = K u and e = K g; the RBF gradient reads both before phi overwrites them.
        let resp = self.tnrd_response(u, k, d, v)?;
        let e = self.tnrd_response(g, k, d, v)?;
        let drbf = self.tnrd_reduce(nf * centres, total, -1.0, |cfg, chunk, part| {
            launch!(self, Kernel::TnrdRbfPartial, cfg; resp.slice(), e.slice(), &v[0], &v[1], &hw,
                    &chunk, part.slice())
        })?;
        // resp <- z = phi(v), e <- de = phi'(v) e.
        let with_e = 1i32;
        launch!(self, Kernel::TnrdPhi, grid_1d(total * nf); resp.slice(), e.slice(), rbf.slice(),
                &v[0], &v[1], &hw, &with_e)?;
        let dk = self.tnrd_reduce(k.len(), total, -1.0, |cfg, chunk, part| {
            launch!(self, Kernel::TnrdWgradPartial, cfg; resp.slice(), g.slice(), e.slice(),
                    u.slice(), &v[0], &v[1], &v[2], &v[3], &v[4], &chunk, part.slice())
        })?;
        let du = self.tnrd_adjoint(&e, k, g, None, lambda, d, v)?;
        let df = self.lincomb(&[(lambda, g)])?;
        let len = i32_of(total, "tnrd image")?;
        let dl = self.tnrd_reduce(1, total, -1.0, |cfg, chunk, part| {
            launch!(self, Kernel::TnrdDotPartial, cfg; g.slice(), u.slice(), f.slice(), &len,
                    &chunk, part.slice())
        })?;
        let dlambda = self.download(&dl)?[0];
        Ok(crate::backend::TnrdGrads {
            du,
            df,
            dk,
            drbf,
            dlambda,
        })
    }

    fn diffusion_solve(&self, x: &Buf, d: Dims, diff: &Buf, h: f64) -> Result<Buf> {
        if !Self::diffusion_on_device(d) {
            return host_fallback::diffusion_solve(self, x, d, diff, h);
        }
        self.diffusion_planes(x, d, diff, h)
    }
    fn diffusion_solve_vjp(
        &self,
        y: &Buf,
        d: Dims,
        diff: &Buf,
        h: f64,
        g: &Buf,
    ) -> Result<(Buf, Buf)> {
        if !Self::diffusion_on_device(d) {
            return host_fallback::diffusion_solve_vjp(self, y, d, diff, h, g);
        }
        check_len(y, d.len(), "diffusion solve output")?;
        check_len(g, d.len(), "diffusion solve cotangent")?;
        // The solve is symmetric: dx = S g; d<g, y>/d diff_c = -2 h diff_c <S g, L y>_c.
        let dx = self.diffusion_planes(g, d, diff, h)?;
        if d.is_empty() {
            return Ok((dx, self.zeros(d.c)?));
        }
        let planes = d.n * d.c;
        let partial = self.alloc::<f64>(planes)?;
        let cfg = LaunchConfig {
            grid_dim: (planes as u32, 1, 1),
            block_dim: (S7_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nb, nc, hh, ww) = (d.n as i32, d.c as i32, d.h as i32, d.w as i32);
        launch!(self, Kernel::DiffusionDdiffPartial, cfg; dx.slice(), y.slice(), diff.slice(), &nc,
                &hh, &ww, partial.slice())?;
        let dd = self.alloc::<f32>(d.c)?;
        let scale = -2.0 * h;
        launch!(self, Kernel::ChannelFinish, grid_1d(d.c); partial.slice(), &nb, &nc, &scale,
                dd.slice())?;
        Ok((dx, dd))
    }

    fn haar(&self, x: &Buf, d: Dims) -> Result<Buf> {
        self.haar_launch(Kernel::HaarApply, x, d, false)
    }
    fn haar_inv(&self, y: &Buf, d: Dims) -> Result<Buf> {
        self.haar_launch(Kernel::HaarApply, y, d, true)
    }
    fn haar_fixed(&self, q: &IBuf, d: Dims) -> Result<IBuf> {
        self.haar_launch(Kernel::HaarFixedApply, q, d, false)
    }
    fn haar_fixed_inv(&self, q: &IBuf, d: Dims) -> Result<IBuf> {
        self.haar_launch(Kernel::HaarFixedApply, q, d, true)
    }

    fn add_channel_bias(&self, x: &Buf, d: Dims, b: &Buf) -> Result<Buf> {
        check_len(x, d.len(), "bias input")?;
        check_len(b, d.c, "bias")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let (nc, hw, l) = (d.c as i32, d.hw() as i32, d.len() as i32);
        launch!(self, Kernel::AddChannelBias, grid_1d(d.len()); x.slice(), b.slice(), out.slice(), &nc, &hw, &l)?;
        Ok(out)
    }
    fn channel_sum(&self, dy: &Buf, d: Dims) -> Result<Buf> {
        check_len(dy, d.len(), "channel_sum input")?;
        self.check_dims(d)?;
        self.channel_reduce(RED_A, d, dy, dy, dy, dy, dy, 1.0)
    }
    fn tvnorm(&self, x: &Buf, d: Dims, s: &Buf, b: &Buf) -> Result<Buf> {
        check_len(x, d.len(), "tvnorm input")?;
        check_len(s, d.c, "tvnorm scale")?;
        check_len(b, d.c, "tvnorm shift")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let (nb, nc, hw) = (d.n as i32, d.c as i32, d.hw() as i32);
        launch!(self, Kernel::TvnormFwd, grid_1d(d.n * d.hw()); x.slice(), s.slice(), b.slice(), out.slice(), &nb, &nc, &hw)?;
        Ok(out)
    }
    fn tvnorm_vjp(&self, x: &Buf, d: Dims, s: &Buf, dy: &Buf) -> Result<(Buf, Buf, Buf)> {
        check_len(x, d.len(), "tvnorm_vjp input")?;
        check_len(dy, d.len(), "tvnorm_vjp cotangent")?;
        check_len(s, d.c, "tvnorm_vjp scale")?;
        self.check_dims(d)?;
        if d.is_empty() {
            return Ok((self.zeros(d.len())?, self.zeros(d.c)?, self.zeros(d.c)?));
        }
        let dx = self.alloc::<f32>(d.len())?;
        let rinv = self.alloc::<f32>(d.n * d.hw())?;
        let (nb, nc, hw) = (d.n as i32, d.c as i32, d.hw() as i32);
        launch!(self, Kernel::TvnormVjpDx, grid_1d(d.n * d.hw()); x.slice(), s.slice(), dy.slice(),
                dx.slice(), rinv.slice(), &nb, &nc, &hw)?;
        let ds = self.channel_reduce(RED_A_B_P, d, dy, x, &rinv, dy, dy, 1.0)?;
        let db = self.channel_reduce(RED_A, d, dy, dy, dy, dy, dy, 1.0)?;
        Ok((dx, ds, db))
    }
    fn batchnorm_train(
        &self,
        x: &Buf,
        d: Dims,
        gamma: &Buf,
        beta: &Buf,
    ) -> Result<(Buf, BnStats<Buf>)> {
        check_len(x, d.len(), "batchnorm input")?;
        check_len(gamma, d.c, "batchnorm weight")?;
        check_len(beta, d.c, "batchnorm bias")?;
        self.check_dims(d)?;
        ensure_shape!(d.n * d.hw() > 0, "batch norm over an empty batch");
        let inv_m = 1.0 / (d.n * d.hw()) as f64;
        let mean = self.channel_reduce(RED_A, d, x, x, x, x, x, inv_m)?;
        let var = self.channel_reduce(RED_SQDEV, d, x, x, x, &mean, x, inv_m)?;
        let stats = BnStats { mean, var };
        let y = self.batchnorm_eval(x, d, gamma, beta, &stats.mean, &stats.var)?;
        Ok((y, stats))
    }
    fn batchnorm_eval(
        &self,
        x: &Buf,
        d: Dims,
        gamma: &Buf,
        beta: &Buf,
        running_mean: &Buf,
        running_var: &Buf,
    ) -> Result<Buf> {
        check_len(x, d.len(), "batchnorm input")?;
        for (v, what) in [
            (gamma, "weight"),
            (beta, "bias"),
            (running_mean, "mean"),
            (running_var, "var"),
        ] {
            check_len(v, d.c, what)?;
        }
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let (nc, hw, l) = (d.c as i32, d.hw() as i32, d.len() as i32);
        launch!(self, Kernel::BnApply, grid_1d(d.len()); x.slice(), gamma.slice(), beta.slice(),
                running_mean.slice(), running_var.slice(), out.slice(), &nc, &hw, &l)?;
        Ok(out)
    }
    fn batchnorm_vjp(
        &self,
        x: &Buf,
        d: Dims,
        gamma: &Buf,
        stats: &BnStats<Buf>,
        dy: &Buf,
    ) -> Result<(Buf, Buf, Buf)> {
        check_len(x, d.len(), "batchnorm_vjp input")?;
        check_len(dy, d.len(), "batchnorm_vjp cotangent")?;
        check_len(gamma, d.c, "batchnorm_vjp weight")?;
        check_len(&stats.mean, d.c, "batchnorm_vjp mean")?;
        check_len(&stats.var, d.c, "batchnorm_vjp var")?;
        self.check_dims(d)?;
        ensure_shape!(d.n * d.hw() > 0, "batch norm over an empty batch");
        let sum_dy = self.channel_reduce(RED_A, d, dy, dy, dy, dy, dy, 1.0)?;
        let sum_dy_xhat =
            self.channel_reduce(RED_A_XHAT, d, dy, x, dy, &stats.mean, &stats.var, 1.0)?;
        let dx = self.alloc::<f32>(d.len())?;
        let (nc, hw, l) = (d.c as i32, d.hw() as i32, d.len() as i32);
        let inv_m = 1.0f32 / (d.n * d.hw()) as f32;
        launch!(self, Kernel::BnVjpDx, grid_1d(d.len()); x.slice(), dy.slice(), gamma.slice(),
                stats.mean.slice(), stats.var.slice(), sum_dy.slice(), sum_dy_xhat.slice(),
                dx.slice(), &nc, &hw, &l, &inv_m)?;
        Ok((dx, sum_dy_xhat, sum_dy))
    }
    fn batchnorm_update_running(
        &self,
        running_mean: &mut Buf,
        running_var: &mut Buf,
        stats: &BnStats<Buf>,
        count: usize,
    ) -> Result<()> {
        let c = running_mean.len();
        check_len(running_var, c, "running var")?;
        check_len(&stats.mean, c, "batch mean")?;
        check_len(&stats.var, c, "batch var")?;
        if c == 0 {
            return Ok(());
        }
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        let nc = i32_of(c, "channels")?;
        let m = BN_MOMENTUM;
        launch!(self, Kernel::BnUpdateRunning, grid_1d(c); running_mean.slice(), running_var.slice(),
                stats.mean.slice(), stats.var.slice(), &nc, &m, &unbias)
    }

    fn activation(&self, act: Activation, x: &Buf) -> Result<Buf> {
        self.act_launch(Kernel::ActFwd, act, x, None)
    }
    fn activation_vjp(&self, act: Activation, x: &Buf, dy: &Buf) -> Result<Buf> {
        self.act_launch(Kernel::ActVjp, act, x, Some(dy))
    }

    fn avgpool2(&self, x: &Buf, d: Dims) -> Result<Buf> {
        check_len(x, d.len(), "avgpool2 input")?;
        self.check_dims(d)?;
        let pd = d.pooled();
        let out = self.alloc::<f32>(pd.len())?;
        if pd.is_empty() {
            return Ok(out);
        }
        let (nc, h, w) = ((d.n * d.c) as i32, d.h as i32, d.w as i32);
        launch!(self, Kernel::Avgpool2, grid_1d(pd.len()); x.slice(), out.slice(), &nc, &h, &w)?;
        Ok(out)
    }
    fn avgpool2_vjp(&self, dy: &Buf, d: Dims) -> Result<Buf> {
        check_len(dy, d.pooled().len(), "avgpool2_vjp cotangent")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let (nc, h, w) = ((d.n * d.c) as i32, d.h as i32, d.w as i32);
        launch!(self, Kernel::Avgpool2Vjp, grid_1d(d.len()); dy.slice(), out.slice(), &nc, &h, &w)?;
        Ok(out)
    }
    fn global_mean(&self, x: &Buf, d: Dims) -> Result<Buf> {
        check_len(x, d.len(), "global_mean input")?;
        self.check_dims(d)?;
        ensure_shape!(d.hw() > 0, "global mean over an empty image");
        let out = self.alloc::<f32>(d.n * d.c)?;
        if d.is_empty() {
            return Ok(out);
        }
        let (nc, hw) = ((d.n * d.c) as i32, d.hw() as i32);
        // One warp per (n, c) plane.
        launch!(self, Kernel::GlobalMean, grid_1d(d.n * d.c * 32); x.slice(), out.slice(), &nc, &hw)?;
        Ok(out)
    }
    fn global_mean_vjp(&self, dy: &Buf, d: Dims) -> Result<Buf> {
        check_len(dy, d.n * d.c, "global_mean_vjp cotangent")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        if d.is_empty() {
            return Ok(out);
        }
        let (hw, l) = (d.hw() as i32, d.len() as i32);
        launch!(self, Kernel::GlobalMeanVjp, grid_1d(d.len()); dy.slice(), out.slice(), &hw, &l)?;
        Ok(out)
    }

    fn split_channels(&self, x: &Buf, d: Dims, c1: usize) -> Result<(Buf, Buf)> {
        check_len(x, d.len(), "split_channels input")?;
        ensure_shape!(c1 <= d.c, "split at {c1} of {} channels", d.c);
        self.check_dims(d)?;
        let a = self.copy_channels(x, d.n, d.hw(), d.c, 0, c1, c1, 0)?;
        let b = self.copy_channels(x, d.n, d.hw(), d.c, c1, d.c - c1, d.c - c1, 0)?;
        Ok((a, b))
    }
    fn concat_channels(&self, a: &Buf, b: &Buf, d: Dims, c1: usize) -> Result<Buf> {
        ensure_shape!(c1 <= d.c, "concat at {c1} of {} channels", d.c);
        check_len(a, d.n * c1 * d.hw(), "concat_channels first")?;
        check_len(b, d.n * (d.c - c1) * d.hw(), "concat_channels second")?;
        self.check_dims(d)?;
        let out = self.alloc::<f32>(d.len())?;
        self.copy_channels_into(a, &out, d.n, d.hw(), c1, 0, c1, d.c, 0)?;
        self.copy_channels_into(b, &out, d.n, d.hw(), d.c - c1, 0, d.c - c1, d.c, c1)?;
        Ok(out)
    }

    fn softmax_xent(
        &self,
        logits: &Buf,
        n: usize,
        classes: usize,
        labels: &[usize],
    ) -> Result<(f64, Buf)> {
        check_len(logits, n * classes, "logits")?;
        ensure_shape!(labels.len() == n, "{} labels for {n} rows", labels.len());
        ensure_shape!(
            n > 0 && classes > 0,
            "softmax over an empty batch or no classes"
        );
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(Error::Input(format!(
                "label {bad} out of range for {classes} classes"
            )));
        }
        let lab: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        let lab = self.upload_slice(&lab)?;
        let grad = self.alloc::<f32>(n * classes)?;
        let rows = self.alloc::<f64>(n)?;
        let (nn, nc) = (i32_of(n, "batch")?, i32_of(classes, "classes")?);
        i32_of(n * classes, "logits")?;
        launch!(self, Kernel::SoftmaxXent, grid_1d(n); logits.slice(), lab.slice(), grad.slice(),
                rows.slice(), &nn, &nc)?;
        let rows = self.download_slice(&rows)?;
        Ok((rows.iter().sum::<f64>() / n as f64, grad))
    }

    fn quantize(&self, x: &Buf, shift: u32) -> Result<IBuf> {
        ensure_shape!(shift < 63, "fixed-point shift {shift} too large");
        let len = x.len();
        let l = i32_of(len, "quantize length")?;
        let out = self.alloc::<i32>(len)?;
        if len == 0 {
            return Ok(out);
        }
        let scale = (1u64 << shift) as f32;
        let bad = self.alloc_zeros::<i32>(1)?;
        launch!(self, Kernel::Quantize, grid_1d(len); x.slice(), out.slice(), &scale, &l, bad.slice())?;
        // One flag read per quantised state: the fixed-point policy refuses NaN and infinities
        // (which the conversion would make 0 and the i32 limits) instead of carrying them on.
        if self.download_slice(&bad)?[0] != 0 {
            return Err(Error::NonFinite(
                "the fixed-point policy cannot quantise a non-finite state value".into(),
            ));
        }
        Ok(out)
    }
    fn dequantize(&self, q: &IBuf, shift: u32) -> Result<Buf> {
        ensure_shape!(shift < 63, "fixed-point shift {shift} too large");
        let len = q.len();
        let l = i32_of(len, "dequantize length")?;
        let out = self.alloc::<f32>(len)?;
        if len == 0 {
            return Ok(out);
        }
        let inv = 1.0f32 / (1u64 << shift) as f32;
        launch!(self, Kernel::Dequantize, grid_1d(len); q.slice(), out.slice(), &inv, &l)?;
        Ok(out)
    }
    fn fixed_update(&self, terms: &[(i32, &IBuf)], coef: f64, f: &Buf) -> Result<IBuf> {
        let len = f.len();
        for (_, q) in terms {
            ensure_shape!(
                q.len() == len,
                "fixed_update: term of {} values, f {}",
                q.len(),
                len
            );
        }
        let l = i32_of(len, "fixed_update length")?;
        let out = self.alloc::<i32>(len)?;
        if len == 0 {
            return Ok(out);
        }
        let head = &terms[..terms.len().min(3)];
        let nt = head.len() as i32;
        let c: Vec<i32> = (0..3).map(|i| head.get(i).map_or(0, |t| t.0)).collect();
        // Unused term slots point at the output (never read: nterms bounds them).
        let q = |i: usize| head.get(i).map_or(out.slice(), |t| t.1.slice());
        launch!(self, Kernel::FixedUpdate, grid_1d(len); out.slice(), f.slice(), &coef, &l, &nt,
                &c[0], q(0), &c[1], q(1), &c[2], q(2))?;
        for (ci, qi) in &terms[head.len()..] {
            launch!(self, Kernel::FixedAxpy, grid_1d(len); out.slice(), qi.slice(), ci, &l)?;
        }
        Ok(out)
    }

    /// Four convolutions around one pointwise kernel (kernels/fused_step.cu `sym_vjp_mid`):
    /// `Z = K y` with tvNorm's sums of squares (the forward step's first launch), `G = K g`,
    /// the middle, then `K^T dz` and the two weight gradients.
    fn sym_full3x3_vjp(
        &self,
        y: &Buf,
        d: Dims,
        k: &Buf,
        norm: Norm<'_, Buf>,
        act: Activation,
        g: &Buf,
    ) -> Result<SymGrads<Buf>> {
        check_len(y, d.len(), "step VJP input")?;
        check_len(g, d.len(), "step VJP cotangent")?;
        check_len(k, d.c * d.c * 9, "step VJP weight")?;
        let (s, b, tv) = match norm {
            Norm::Tv { s, b } => {
                check_len(s, d.c, "step VJP norm scale")?;
                (s, b, 1i32)
            }
            Norm::Shift { b } => (b, b, 0i32),
        };
        check_len(b, d.c, "step VJP shift")?;
        self.check_dims(d)?;
        if d.is_empty() || d.c == 0 {
            return sym_full3x3_vjp_composed(self, y, d, k, norm, act, g);
        }
        let nq = d.n * d.hw();
        let (nb, c) = (d.n as i32, d.c as i32);
        let (z, ss, parts) = self.step_conv_first(y, d, k, tv == 1)?;
        let gk = self.conv(ConvSpec::full3x3(), g, d, k, d.c)?;
        let blocks = nq.div_ceil(SYM_THREADS);
        let sneg = self.alloc::<f32>(d.len())?;
        let dz = self.alloc::<f32>(d.len())?;
        let part_scale = self.alloc::<f64>(blocks * d.c)?;
        let part_shift = self.alloc::<f64>(blocks * d.c)?;
        let mid = LaunchConfig {
            grid_dim: (
                u32::try_from(blocks).map_err(|_| Error::Shape("too many pixels".into()))?,
                1,
                1,
            ),
            block_dim: (SYM_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_parts, a, hw) = (parts as i32, act_code(act), d.hw() as i32);
        let ss_slice = ss.as_ref().map_or(z.slice(), |v| v.slice());
        launch!(self, Kernel::SymVjpMid, mid; z.slice(), ss_slice, &n_parts, gk.slice(), s.slice(),
                b.slice(), &tv, &a, &nb, &c, &hw, sneg.slice(), dz.slice(), part_scale.slice(),
                part_shift.slice())?;
        drop((z, ss, gk));
        let finish = |part: &DeviceBuf<f64>| -> Result<Buf> {
            let out = self.alloc::<f32>(d.c)?;
            let ns = blocks as i32;
            launch!(self, Kernel::ChannelFinish, grid_1d(d.c); part.slice(), &ns, &c, &1.0f64,
                    out.slice())?;
            Ok(out)
        };
        let dscale = if tv == 1 {
            Some(finish(&part_scale)?)
        } else {
            None
        };
        let dshift = finish(&part_shift)?;
        drop((part_scale, part_shift));
        let dy = self.conv_t(ConvSpec::full3x3(), &dz, d, k, d.c)?;
        let mut dk = self.conv_wgrad(ConvSpec::full3x3(), g, d, &sneg, d.c)?;
        drop(sneg);
        let dk_y = self.conv_wgrad(ConvSpec::full3x3(), y, d, &dz, d.c)?;
        self.axpy(1.0, &dk_y, &mut dk)?;
        Ok(SymGrads {
            dy,
            dk,
            dscale,
            dshift,
        })
    }

    fn step_full3x3(
        &self,
        terms: &[(f64, &Buf)],
        coef: f64,
        y: &Buf,
        d: Dims,
        k: &Buf,
        norm: Norm<'_, Buf>,
        act: Activation,
    ) -> Result<Buf> {
        check_len(y, d.len(), "step input")?;
        check_len(k, d.c * d.c * 9, "step weight")?;
        match norm {
            Norm::Tv { s, b } => {
                check_len(s, d.c, "step norm scale")?;
                check_len(b, d.c, "step norm shift")?;
            }
            Norm::Shift { b } => check_len(b, d.c, "step shift")?,
        }
        for (_, x) in terms {
            check_len(x, d.len(), "step term")?;
        }
        self.check_dims(d)?;
        // More than three terms: fold them into one first (the kernel epilogue takes three).
        let folded;
        let terms: Vec<(f64, &Buf)> = if terms.len() > 3 {
            folded = self.lincomb(terms)?;
            vec![(1.0, &folded)]
        } else {
            terms.to_vec()
        };
        if d.is_empty() || d.c == 0 {
            let mut all = terms.clone();
            let zero = self.zeros(d.len())?;
            all.push((-coef, &zero));
            return self.lincomb(&all);
        }
        let (s, b, tv) = match norm {
            Norm::Tv { s, b } => (s, b, 1i32),
            Norm::Shift { b } => (b, b, 0i32),
        };
        let (z, ss, parts) = self.step_conv_first(y, d, k, tv == 1)?;
        let bm = m_tile(d.c);
        let cfg = gemm_grid(d.n * d.hw(), d.c, bm)?;
        let (nb, c, h, w) = (d.n as i32, d.c as i32, d.h as i32, d.w as i32);
        let out = self.alloc::<f32>(d.len())?;
        let n_parts = parts as i32;
        let a = act_code(act);
        let neg = (-coef) as f32;
        let nt = terms.len() as i32;
        let ac: Vec<f32> = (0..3)
            .map(|i| terms.get(i).map_or(0.0, |t| t.0 as f32))
            .collect();
        // Unused slots point at y (never read: nterms bounds them).
        let xt = |i: usize| terms.get(i).map_or(y.slice(), |t| t.1.slice());
        let ss_slice = ss.as_ref().map_or(z.slice(), |v| v.slice());
        let kernel = if bm == 32 {
            TensorCoreKernel::StepConvtM32
        } else {
            TensorCoreKernel::StepConvtM64
        };
        launch!(self, kernel, cfg; z.slice(), k.slice(),
                out.slice(), &nb, &c, &h, &w, ss_slice, &n_parts, s.slice(), b.slice(), &tv, &a,
                &neg, &nt, &ac[0], xt(0), &ac[1], xt(1), &ac[2], xt(2))?;
        Ok(out)
    }
}

impl Cuda {
    /// The first launch of the fused step and of its VJP: `Z = K y` (square `K`) and, with
    /// tvNorm, the per-tile sums of squares `[parts][pixels]` its prologues read. Returns `Z`,
    /// the sums and the number of tiles.
    fn step_conv_first(
        &self,
        y: &Buf,
        d: Dims,
        k: &Buf,
        tv: bool,
    ) -> Result<(Buf, Option<Buf>, usize)> {
        let bm = m_tile(d.c);
        let nq = d.n * d.hw();
        let cfg = gemm_grid(nq, d.c, bm)?;
        let parts = d.c.div_ceil(bm);
        let (nb, c, h, w) = (d.n as i32, d.c as i32, d.h as i32, d.w as i32);
        let z = self.alloc::<f32>(d.len())?;
        if !tv {
            let kernel = TensorCoreKernel::conv(9, false, bm == 32);
            launch!(self, kernel, cfg; y.slice(),
                    k.slice(), z.slice(), &nb, &c, &c, &h, &w, &1i32)?;
            return Ok((z, None, parts));
        }
        let ss = self.alloc::<f32>(parts * nq)?;
        let kernel = if bm == 32 {
            TensorCoreKernel::StepConvSsM32
        } else {
            TensorCoreKernel::StepConvSsM64
        };
        launch!(self, kernel, cfg; y.slice(),
                k.slice(), z.slice(), ss.slice(), &nb, &c, &h, &w)?;
        Ok((z, Some(ss), parts))
    }

    /// A new `[n, cc, hw]` buffer holding channels `[off, off + cc)` of `src` (`c_src` channels).
    #[allow(clippy::too_many_arguments)]
    fn copy_channels(
        &self,
        src: &Buf,
        n: usize,
        hw: usize,
        c_src: usize,
        off: usize,
        cc: usize,
        c_dst: usize,
        dst_off: usize,
    ) -> Result<Buf> {
        let out = self.alloc::<f32>(n * c_dst * hw)?;
        self.copy_channels_into(src, &out, n, hw, cc, off, c_src, c_dst, dst_off)?;
        Ok(out)
    }

    /// `dst[n, dst_off + c, p] = src[n, src_off + c, p]` for `c < cc`.
    #[allow(clippy::too_many_arguments)]
    fn copy_channels_into(
        &self,
        src: &Buf,
        dst: &Buf,
        n: usize,
        hw: usize,
        cc: usize,
        src_off: usize,
        c_src: usize,
        c_dst: usize,
        dst_off: usize,
    ) -> Result<()> {
        let len = n * cc * hw;
        if len == 0 {
            return Ok(());
        }
        let v = [n, hw, cc, c_src, src_off, c_dst, dst_off]
            .iter()
            .map(|&v| i32_of(v, "channel copy"))
            .collect::<Result<Vec<i32>>>()?;
        launch!(self, Kernel::CopyChannels, grid_1d(len); src.slice(), dst.slice(), &v[0], &v[1],
                &v[2], &v[3], &v[4], &v[5], &v[6])
    }
}
