//! The fast CPU backend: f32 storage, convolutions as GEMMs, rayon across the batch.
//!
//! Every reduction (weight gradients, channel sums, norm statistics, the loss) is summed in an
//! order fixed by the shapes alone (see [`par`]), so results are bit-identical from run to run
//! whatever the thread count. Norm statistics and the loss accumulate in f64.

mod conv;
mod direct;
mod fused;
mod par;
pub mod peak;
mod structured;
pub mod tnrd;

use rayon::prelude::*;

use super::half16::{self, Packed16};
use super::reference::round_to_i32;
use super::{host_fallback, optim};
use super::{
    Activation, Backend, BnStats, ConvSpec, Norm, Precision, Scratch, ScratchOp, Storage, SymGrads,
    Taps, BN_EPS, BN_MOMENTUM, TV_EPS,
};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Dims;
use par::{map_chunks, map_chunks_mut, sum2_f64, sum_f64, sum_partials_f64, with_ws64, ELEM_CHUNK};

/// The multi-threaded f32 CPU backend; with `bf16` precision its 3x3 convolutions take bf16
/// operands (rounded to nearest even) and accumulate in f32.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    precision: Precision,
}

impl Cpu {
    pub fn new() -> Self {
        Cpu::default()
    }

    /// A backend whose 3x3 convolutions compute in `precision`: `f32`, or `bf16` on a CPU with
    /// `avx512_bf16` (`vdpbf16ps`).
    pub fn with_precision(precision: Precision) -> Result<Cpu> {
        match precision {
            Precision::F32 => Ok(Cpu::new()),
            Precision::Bf16 if direct::Isa::Avx512Bf16.available() => Ok(Cpu { precision }),
            Precision::Bf16 => Err(Error::Input(
                "precision `bf16` on the CPU needs the `avx512_bf16` instructions (vdpbf16ps), \
                 which this CPU lacks; use f32, or bf16 on CUDA"
                    .into(),
            )),
            p => Err(Error::Input(format!(
                "precision `{}` runs on the CUDA tensor cores; the CPU computes in f32 or bf16",
                p.name()
            ))),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The 3x3 convolution kernels this backend runs: the bf16 set under bf16, otherwise the
    /// process-wide choice ([`kernels::selected`]).
    pub fn kernels(&self) -> direct::Isa {
        match self.precision {
            Precision::Bf16 => direct::Isa::Avx512Bf16,
            _ => direct::selected(),
        }
    }
}

pub use par::{release_workspaces, warm_threads};
pub use peak::FmaPeak;

/// The 3x3 convolution kernels by instruction set, callable directly (tests and benchmarks run
/// each path the CPU has), and the process-wide choice the backend's ops follow.
pub mod kernels {
    pub use super::direct::{conv3x3, conv3x3_t, conv3x3_wgrad, select, selected, Isa};
}

/// Threads that may run a parallel op over `tasks` tasks.
fn threads(tasks: usize) -> usize {
    rayon::current_num_threads().min(tasks).max(1)
}

/// Shapes of a grouped convolution `d.c -> cout`: input of `x_len` values, weight of `k_len`.
fn grouped_check(
    x_len: usize,
    d: Dims,
    k_len: usize,
    cout: usize,
    groups: usize,
    taps: usize,
) -> Result<()> {
    ensure_shape!(
        groups > 0 && d.c.is_multiple_of(groups) && cout.is_multiple_of(groups),
        "grouped conv: {groups} groups do not divide {} -> {cout} channels",
        d.c
    );
    ensure_shape!(
        x_len == d.len(),
        "grouped conv input: expected {} values, got {x_len}",
        d.len()
    );
    let want = cout * d.c / groups * taps;
    ensure_shape!(
        k_len == want,
        "grouped conv weight: expected {want} values, got {k_len}"
    );
    Ok(())
}

fn check_len<T>(buf: &[T], len: usize, what: &str) -> Result<()> {
    ensure_shape!(
        buf.len() == len,
        "{what}: expected {len} values, got {}",
        buf.len()
    );
    Ok(())
}

/// `out[i] = f(x[i])` in parallel blocks.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(ELEM_CHUNK)
        .zip(x.par_chunks(ELEM_CHUNK))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = f(v);
            }
        });
    out
}

/// `out[i] = f(x[i], y[i])` in parallel blocks.
fn map2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(ELEM_CHUNK)
        .zip(x.par_chunks(ELEM_CHUNK).zip(y.par_chunks(ELEM_CHUNK)))
        .for_each(|(o, (x, y))| {
            for ((o, &a), &b) in o.iter_mut().zip(x).zip(y) {
                *o = f(a, b);
            }
        });
    out
}

fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        // NaN stays NaN (PyTorch's relu); `max` would map it to 0.
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Logcosh => x.abs() + (-2.0 * x.abs()).exp().ln_1p(),
    }
}

fn act_derivative_f32(act: Activation, x: f32) -> f32 {
    match act {
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

/// Per-channel sums over (n, p) of `f(x, y)` for NCHW `x`, `y` of shape `d`, in f64.
fn channel_sums2(x: &[f32], y: &[f32], d: Dims, f: impl Fn(f64, f64) -> f64 + Sync) -> Vec<f64> {
    let (hw, sl) = (d.hw(), d.c * d.hw());
    let parts = map_chunks(d.n, |r| {
        let mut s = vec![0.0f64; d.c];
        for n in r {
            for (c, sc) in s.iter_mut().enumerate() {
                let o = n * sl + c * hw;
                *sc += sum2_f64(&x[o..o + hw], &y[o..o + hw], &f);
            }
        }
        s
    });
    sum_partials_f64(&parts, d.c)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type IBuf = Vec<i32>;
    type HBuf = Packed16;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn scratch_bytes(&self, op: ScratchOp) -> Scratch {
        // Pool 0: the f32 workspace of each thread, pool 1 the f64 one (`par::with_ws*`).
        let (f, g) = (4usize, 8usize);
        let parts = |d: Dims| d.n.div_ceil(par::chunk_size(d.n));
        let pools = |d: Dims, a: usize, b: usize| [threads(d.n) * f * a, threads(d.n) * g * b];
        match op {
            ScratchOp::Conv3x3 { d, cout } => match self.kernels() {
                direct::Isa::Gemm => Scratch {
                    transient: 0,
                    pools: pools(d, conv::im2col_ws(d), 0),
                },
                isa => Scratch {
                    transient: f * direct::packed_len(isa, cout, d.c),
                    pools: pools(d, direct::shifted_ws(isa, d), 0),
                },
            },
            ScratchOp::Conv3x3T { d, cin } => match self.kernels() {
                direct::Isa::Gemm => Scratch {
                    transient: f * d.c * cin * 9,
                    pools: pools(d, conv::im2col_ws(d), 0),
                },
                isa => Scratch {
                    transient: f * direct::packed_len(isa, cin, d.c),
                    pools: pools(d, direct::shifted_ws(isa, d), 0),
                },
            },
            ScratchOp::Conv3x3Wgrad { d, cout } => {
                let isa = self.kernels();
                let ws = match isa {
                    direct::Isa::Gemm => conv::im2col_ws(d),
                    _ => direct::wgrad_ws(isa, d),
                };
                // bf16: the cotangent in bf16.
                let rounded = match isa {
                    direct::Isa::Avx512Bf16 => 2 * d.with_c(cout).len(),
                    _ => 0,
                };
                Scratch {
                    transient: f * parts(d) * cout * d.c * 9 + rounded,
                    pools: [threads(parts(d)) * f * ws, 0],
                }
            }
            ScratchOp::Conv1x1Wgrad { d, cout } if d.hw() > 1 => Scratch {
                transient: f * parts(d) * cout * d.c,
                pools: [0, 0],
            },
            ScratchOp::Conv1x1Wgrad { .. } => Scratch::default(),
            ScratchOp::Tvnorm { d } => Scratch {
                transient: 0,
                pools: pools(d, 0, d.hw()),
            },
            ScratchOp::TvnormVjp { d } => Scratch {
                transient: g * parts(d) * 2 * d.c,
                pools: [0, threads(parts(d)) * g * 2 * d.hw()],
            },
            ScratchOp::StepFull3x3 { d } => Scratch {
                transient: fused::weight_bytes(self.kernels(), d.c),
                pools: pools(
                    d,
                    fused::step_ws32(self.kernels(), d),
                    fused::step_ws64(self.kernels(), d),
                ),
            },
            ScratchOp::SymFull3x3Vjp { d } => Scratch {
                transient: fused::weight_bytes(self.kernels(), d.c)
                    + parts(d) * (f * d.c * d.c * 9 + g * 2 * d.c),
                pools: [
                    threads(parts(d)) * f * fused::vjp_ws32(self.kernels(), d),
                    threads(parts(d)) * g * fused::vjp_ws64(self.kernels(), d),
                ],
            },
            ScratchOp::StepFull3x3Vjp { d } => Scratch {
                transient: fused::weight_bytes(self.kernels(), d.c)
                    + parts(d) * (f * d.c * d.c * 9 + g * 2 * d.c),
                pools: [
                    threads(parts(d)) * f * fused::step_vjp_ws32(self.kernels(), d),
                    threads(parts(d)) * g * fused::step_vjp_ws64(self.kernels(), d),
                ],
            },
            ScratchOp::TnrdStage { d, filters, size } => Scratch {
                transient: tnrd::forward_bytes(d, filters, size, threads(d.n.max(filters))),
                pools: [0, 0],
            },
            ScratchOp::TnrdStageVjp { d, filters, size } => Scratch {
                transient: tnrd::vjp_bytes(d, filters, size, threads(d.n)),
                pools: [0, 0],
            },
        }
    }
    fn fuses_sym_full3x3(&self) -> bool {
        true
    }
    fn fuses_step_full3x3_vjp(&self) -> bool {
        // The GEMM path runs the step and the VJP one after the other (the default body).
        self.kernels() != direct::Isa::Gemm
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, data: &[f64]) -> Result<Vec<f32>> {
        Ok(to_f32(data))
    }
    fn upload_f32(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f64>> {
        Ok(buf.iter().map(|&x| x as f64).collect())
    }
    fn download_f32(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn copy(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }
    fn iupload(&self, data: &[i32]) -> Result<Vec<i32>> {
        Ok(data.to_vec())
    }
    fn idownload(&self, buf: &Vec<i32>) -> Result<Vec<i32>> {
        Ok(buf.clone())
    }
    fn pack16(&self, x: &Vec<f32>, format: Storage) -> Result<Packed16> {
        half16::pack_f32(x, format)
    }
    fn unpack16(&self, h: &Packed16) -> Result<Vec<f32>> {
        Ok(h.to_f32())
    }

    fn lincomb(&self, terms: &[(f64, &Vec<f32>)]) -> Result<Vec<f32>> {
        ensure_shape!(!terms.is_empty(), "lincomb needs at least one term");
        let len = terms[0].1.len();
        for (_, x) in terms {
            check_len(x, len, "lincomb term")?;
        }
        let mut out = vec![0.0f32; len];
        out.par_chunks_mut(ELEM_CHUNK)
            .enumerate()
            .for_each(|(blk, o)| {
                let start = blk * ELEM_CHUNK;
                let (a0, x0) = terms[0];
                let a0 = a0 as f32;
                for (o, &v) in o.iter_mut().zip(&x0[start..]) {
                    *o = a0 * v;
                }
                for &(a, x) in &terms[1..] {
                    let a = a as f32;
                    for (o, &v) in o.iter_mut().zip(&x[start..]) {
                        *o += a * v;
                    }
                }
            });
        Ok(out)
    }
    fn scaled_sq(
        &self,
        x: &Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        atol: f64,
        rtol: f64,
    ) -> Result<f64> {
        check_len(a, x.len(), "scaled norm `a`")?;
        check_len(b, x.len(), "scaled norm `b`")?;
        // Fixed chunks summed in order: the same total whatever the thread count.
        let parts: Vec<f64> = x
            .par_chunks(ELEM_CHUNK)
            .zip(a.par_chunks(ELEM_CHUNK))
            .zip(b.par_chunks(ELEM_CHUNK))
            .map(|((x, a), b)| {
                crate::backend::scaled_sq_host(x, a, b, atol, rtol).unwrap_or(f64::NAN)
            })
            .collect();
        Ok(parts.iter().sum())
    }
    fn sgd_step(
        &self,
        w: &mut Vec<f32>,
        m: &mut Vec<f32>,
        g: &Vec<f32>,
        s: &optim::SgdStep,
    ) -> Result<()> {
        optim::check_lens("sgd_step", &[w.len(), m.len(), g.len()])?;
        w.par_chunks_mut(ELEM_CHUNK)
            .zip(m.par_chunks_mut(ELEM_CHUNK))
            .zip(g.par_chunks(ELEM_CHUNK))
            .for_each(|((w, m), g)| optim::sgd_host(s, w, m, g));
        Ok(())
    }
    fn adam_step(
        &self,
        w: &mut Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        g: &Vec<f32>,
        s: &optim::AdamStep,
    ) -> Result<()> {
        optim::check_lens("adam_step", &[w.len(), m.len(), v.len(), g.len()])?;
        w.par_chunks_mut(ELEM_CHUNK)
            .zip(m.par_chunks_mut(ELEM_CHUNK))
            .zip(v.par_chunks_mut(ELEM_CHUNK))
            .zip(g.par_chunks(ELEM_CHUNK))
            .for_each(|(((w, m), v), g)| optim::adam_host(s, w, m, v, g));
        Ok(())
    }
    fn axpy(&self, a: f64, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        check_len(x, y.len(), "axpy")?;
        let a = a as f32;
        y.par_chunks_mut(ELEM_CHUNK)
            .zip(x.par_chunks(ELEM_CHUNK))
            .for_each(|(y, x)| {
                for (yv, &xv) in y.iter_mut().zip(x) {
                    *yv += a * xv;
                }
            });
        Ok(())
    }

    fn conv(
        &self,
        spec: ConvSpec,
        x: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        cout: usize,
    ) -> Result<Vec<f32>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                check_len(x, d.len(), "conv3x3 input")?;
                check_len(k, cout * d.c * 9, "conv3x3 weight")?;
                direct::conv3x3(self.kernels(), x, d, k, cout)
            }
            (Taps::K1, 1) => {
                check_len(x, d.len(), "conv1x1 input")?;
                check_len(k, cout * d.c, "conv1x1 weight")?;
                Ok(conv::conv1x1(x, d, k, cout))
            }
            (taps, groups) => {
                grouped_check(x.len(), d, k.len(), cout, groups, taps.count())?;
                Ok(structured::forward(spec, x, d, k, cout))
            }
        }
    }
    fn conv_t(
        &self,
        spec: ConvSpec,
        z: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        cin: usize,
    ) -> Result<Vec<f32>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                check_len(z, d.len(), "conv3x3_t input")?;
                check_len(k, d.c * cin * 9, "conv3x3_t weight")?;
                direct::conv3x3_t(self.kernels(), z, d, k, cin)
            }
            (Taps::K1, 1) => {
                check_len(z, d.len(), "conv1x1_t input")?;
                check_len(k, d.c * cin, "conv1x1_t weight")?;
                Ok(conv::conv1x1_t(z, d, k, cin))
            }
            (taps, groups) => {
                let xd = d.with_c(cin);
                grouped_check(xd.len(), xd, k.len(), d.c, groups, taps.count())?;
                check_len(z, d.len(), "grouped conv_t input")?;
                Ok(structured::adjoint(spec, z, d, k, cin))
            }
        }
    }
    fn conv_wgrad(
        &self,
        spec: ConvSpec,
        x: &Vec<f32>,
        d: Dims,
        dz: &Vec<f32>,
        cout: usize,
    ) -> Result<Vec<f32>> {
        match (spec.taps, spec.groups) {
            (Taps::K3, 1) => {
                check_len(x, d.len(), "conv3x3_wgrad input")?;
                check_len(dz, d.with_c(cout).len(), "conv3x3_wgrad cotangent")?;
                direct::conv3x3_wgrad(self.kernels(), x, d, dz, cout)
            }
            (Taps::K1, 1) => {
                check_len(x, d.len(), "conv1x1_wgrad input")?;
                check_len(dz, d.with_c(cout).len(), "conv1x1_wgrad cotangent")?;
                Ok(conv::conv1x1_wgrad(x, d, dz, cout))
            }
            (taps, groups) => {
                grouped_check(
                    x.len(),
                    d,
                    spec.weight_len(d.c, cout),
                    cout,
                    groups,
                    taps.count(),
                )?;
                check_len(dz, d.with_c(cout).len(), "grouped conv wgrad cotangent")?;
                Ok(structured::wgrad(spec, x, d, dz, cout))
            }
        }
    }

    fn stencil5(&self, x: &Vec<f32>, d: Dims, dw: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(x, d.len(), "stencil5 input")?;
        check_len(dw, d.c * 5, "stencil5 weight")?;
        Ok(structured::stencil(x, d, dw, false))
    }
    fn stencil5_t(&self, z: &Vec<f32>, d: Dims, dw: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(z, d.len(), "stencil5_t input")?;
        check_len(dw, d.c * 5, "stencil5_t weight")?;
        Ok(structured::stencil(z, d, dw, true))
    }
    fn stencil5_wgrad(&self, x: &Vec<f32>, d: Dims, dz: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(x, d.len(), "stencil5_wgrad input")?;
        check_len(dz, d.len(), "stencil5_wgrad cotangent")?;
        Ok(structured::stencil_wgrad(x, d, dz))
    }
    fn diffusion_solve(&self, x: &Vec<f32>, d: Dims, diff: &Vec<f32>, h: f64) -> Result<Vec<f32>> {
        crate::backend::reference::structured::check_diffusion_shape(x.len(), d, diff.len(), h)?;
        Ok(structured::diffusion_solve(x, d, diff, h))
    }
    fn diffusion_solve_vjp(
        &self,
        y: &Vec<f32>,
        d: Dims,
        diff: &Vec<f32>,
        h: f64,
        g: &Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        crate::backend::reference::structured::check_diffusion_shape(y.len(), d, diff.len(), h)?;
        check_len(g, d.len(), "diffusion solve cotangent")?;
        // The solve is symmetric: dx = S g.
        let dx = structured::diffusion_solve(g, d, diff, h);
        let dd = structured::diffusion_diff_grad(y, &dx, d, diff, h);
        Ok((dx, dd))
    }

    // The Haar transforms have no CPU kernel: the f64 reference on a copy.
    fn haar(&self, x: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        host_fallback::haar(self, x, d)
    }
    fn haar_inv(&self, y: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        host_fallback::haar_inv(self, y, d)
    }
    fn haar_fixed(&self, q: &Vec<i32>, d: Dims) -> Result<Vec<i32>> {
        host_fallback::haar_fixed(self, q, d)
    }
    fn haar_fixed_inv(&self, q: &Vec<i32>, d: Dims) -> Result<Vec<i32>> {
        host_fallback::haar_fixed_inv(self, q, d)
    }

    fn tnrd_stage(
        &self,
        u: &Vec<f32>,
        f: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        rbf: &Vec<f32>,
        lambda: f64,
        size: usize,
    ) -> Result<Vec<f32>> {
        let st = tnrd::filters(d, [u.len(), f.len()], k, rbf, lambda, size)?;
        if d.is_empty() {
            return Ok(Vec::new());
        }
        Ok(tnrd::forward_batch(&st, u, f, d.n, d.w, d.h))
    }
    fn tnrd_stage_vjp(
        &self,
        u: &Vec<f32>,
        f: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        rbf: &Vec<f32>,
        lambda: f64,
        size: usize,
        g: &Vec<f32>,
    ) -> Result<crate::backend::TnrdGrads<Vec<f32>>> {
        let st = tnrd::filters(d, [u.len(), f.len()], k, rbf, lambda, size)?;
        check_len(g, d.len(), "tnrd stage cotangent")?;
        let gr = tnrd::vjp_batch(&st, u, f, g, d.n, d.w, d.h);
        Ok(crate::backend::TnrdGrads {
            du: gr.du,
            df: gr.df,
            dk: gr.dk,
            drbf: gr.drbf,
            dlambda: gr.dlambda as f64,
        })
    }

    fn add_channel_bias(&self, x: &Vec<f32>, d: Dims, b: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(x, d.len(), "bias input")?;
        check_len(b, d.c, "bias")?;
        let hw = d.hw();
        let mut y = x.clone();
        if hw > 0 {
            y.par_chunks_mut(hw).enumerate().for_each(|(nc, plane)| {
                let bc = b[nc % d.c];
                plane.iter_mut().for_each(|v| *v += bc);
            });
        }
        Ok(y)
    }

    fn channel_sum(&self, dy: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        check_len(dy, d.len(), "channel_sum input")?;
        Ok(to_f32(&channel_sums2(dy, dy, d, |a, _| a)))
    }

    fn tvnorm(&self, x: &Vec<f32>, d: Dims, s: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(x, d.len(), "tvnorm input")?;
        check_len(s, d.c, "tvnorm scale")?;
        check_len(b, d.c, "tvnorm shift")?;
        let (hw, sl) = (d.hw(), d.c * d.hw());
        let mut y = vec![0.0f32; d.len()];
        if sl == 0 {
            return Ok(y);
        }
        y.par_chunks_mut(sl)
            .zip(x.par_chunks(sl))
            .for_each(|(ys, xs)| {
                with_ws64(hw, |rinv| {
                    rinv.fill(0.0);
                    for xc in xs.chunks_exact(hw) {
                        for (r, &v) in rinv.iter_mut().zip(xc) {
                            *r += v as f64 * v as f64;
                        }
                    }
                    rinv.iter_mut()
                        .for_each(|r| *r = 1.0 / (*r + TV_EPS).sqrt());
                    for (c, (yc, xc)) in
                        ys.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).enumerate()
                    {
                        let (sc, bc) = (s[c] as f64, b[c] as f64);
                        for ((o, &v), &r) in yc.iter_mut().zip(xc).zip(rinv.iter()) {
                            *o = (sc * v as f64 * r + bc) as f32;
                        }
                    }
                })
            });
        Ok(y)
    }

    fn tvnorm_vjp(
        &self,
        x: &Vec<f32>,
        d: Dims,
        s: &Vec<f32>,
        dy: &Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        check_len(x, d.len(), "tvnorm_vjp input")?;
        check_len(dy, d.len(), "tvnorm_vjp cotangent")?;
        check_len(s, d.c, "tvnorm_vjp scale")?;
        let (hw, sl) = (d.hw(), d.c * d.hw());
        let mut dx = vec![0.0f32; d.len()];
        // Per range: the partial sums of ds (first c) and db (last c).
        let parts = map_chunks_mut(d.n, &mut dx, sl, |r, dxs| {
            let mut acc = vec![0.0f64; 2 * d.c];
            if hw == 0 {
                return acc;
            }
            // Workspace: 1/r and the pixel's dot product sum_c s_c dy_c x_c.
            with_ws64(2 * hw, |ws| {
                let (rinv, dot) = ws.split_at_mut(hw);
                for (i, n) in r.enumerate() {
                    let xs = &x[n * sl..(n + 1) * sl];
                    let gs = &dy[n * sl..(n + 1) * sl];
                    rinv.fill(0.0);
                    dot.fill(0.0);
                    for c in 0..d.c {
                        let sc = s[c] as f64;
                        let (xc, gc) = (&xs[c * hw..(c + 1) * hw], &gs[c * hw..(c + 1) * hw]);
                        for p in 0..hw {
                            let (xv, gv) = (xc[p] as f64, gc[p] as f64);
                            rinv[p] += xv * xv;
                            dot[p] += sc * gv * xv;
                        }
                    }
                    rinv.iter_mut()
                        .for_each(|r| *r = 1.0 / (*r + TV_EPS).sqrt());
                    let dxn = &mut dxs[i * sl..(i + 1) * sl];
                    for c in 0..d.c {
                        let sc = s[c] as f64;
                        let range = c * hw..(c + 1) * hw;
                        let (xc, gc) = (&xs[range.clone()], &gs[range.clone()]);
                        let (mut ds, mut db) = (0.0f64, 0.0f64);
                        for (p, o) in dxn[range].iter_mut().enumerate() {
                            let (xv, gv, ri) = (xc[p] as f64, gc[p] as f64, rinv[p]);
                            *o = (sc * gv * ri - xv * dot[p] * ri * ri * ri) as f32;
                            ds += gv * xv * ri;
                            db += gv;
                        }
                        acc[c] += ds;
                        acc[d.c + c] += db;
                    }
                }
            });
            acc
        });
        let tot = sum_partials_f64(&parts, 2 * d.c);
        Ok((dx, to_f32(&tot[..d.c]), to_f32(&tot[d.c..])))
    }

    fn batchnorm_train(
        &self,
        x: &Vec<f32>,
        d: Dims,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
    ) -> Result<(Vec<f32>, BnStats<Vec<f32>>)> {
        check_len(x, d.len(), "batchnorm input")?;
        check_len(gamma, d.c, "weight")?;
        check_len(beta, d.c, "bias")?;
        let m = (d.n * d.hw()) as f64;
        let mean: Vec<f64> = channel_sums2(x, x, d, |a, _| a)
            .into_iter()
            .map(|s| s / m)
            .collect();
        // Two passes (mean, then squared deviations) for accuracy.
        let (hw, sl) = (d.hw(), d.c * d.hw());
        let parts = map_chunks(d.n, |r| {
            let mut acc = vec![0.0f64; d.c];
            for n in r {
                for (c, a) in acc.iter_mut().enumerate() {
                    let o = n * sl + c * hw;
                    let xc = &x[o..o + hw];
                    *a += sum2_f64(xc, xc, |v, _| (v - mean[c]) * (v - mean[c]));
                }
            }
            acc
        });
        let var: Vec<f64> = sum_partials_f64(&parts, d.c)
            .into_iter()
            .map(|s| s / m)
            .collect();
        let y = bn_apply(x, d, gamma, beta, &mean, &var);
        Ok((
            y,
            BnStats {
                mean: to_f32(&mean),
                var: to_f32(&var),
            },
        ))
    }

    fn batchnorm_eval(
        &self,
        x: &Vec<f32>,
        d: Dims,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        running_mean: &Vec<f32>,
        running_var: &Vec<f32>,
    ) -> Result<Vec<f32>> {
        check_len(x, d.len(), "batchnorm input")?;
        for (v, what) in [
            (gamma, "weight"),
            (beta, "bias"),
            (running_mean, "mean"),
            (running_var, "var"),
        ] {
            check_len(v, d.c, what)?;
        }
        let mean: Vec<f64> = running_mean.iter().map(|&v| v as f64).collect();
        let var: Vec<f64> = running_var.iter().map(|&v| v as f64).collect();
        Ok(bn_apply(x, d, gamma, beta, &mean, &var))
    }

    fn batchnorm_vjp(
        &self,
        x: &Vec<f32>,
        d: Dims,
        gamma: &Vec<f32>,
        stats: &BnStats<Vec<f32>>,
        dy: &Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        check_len(x, d.len(), "batchnorm_vjp input")?;
        check_len(dy, d.len(), "batchnorm_vjp cotangent")?;
        check_len(gamma, d.c, "batchnorm_vjp weight")?;
        check_len(&stats.mean, d.c, "batchnorm_vjp mean")?;
        check_len(&stats.var, d.c, "batchnorm_vjp var")?;
        let m = (d.n * d.hw()) as f64;
        let mean: Vec<f64> = stats.mean.iter().map(|&v| v as f64).collect();
        let inv: Vec<f64> = stats
            .var
            .iter()
            .map(|&v| 1.0 / (v as f64 + BN_EPS).sqrt())
            .collect();
        let sum_dy = channel_sums2(dy, dy, d, |g, _| g);
        // sum dy * xhat = inv * sum dy * (x - mean), per channel.
        let (hw, sl) = (d.hw(), d.c * d.hw());
        let parts = map_chunks(d.n, |r| {
            let mut acc = vec![0.0f64; d.c];
            for n in r {
                for (c, a) in acc.iter_mut().enumerate() {
                    let o = n * sl + c * hw;
                    *a += sum2_f64(&dy[o..o + hw], &x[o..o + hw], |g, v| g * (v - mean[c]));
                }
            }
            acc
        });
        let sum_dy_xhat: Vec<f64> = sum_partials_f64(&parts, d.c)
            .into_iter()
            .zip(&inv)
            .map(|(s, i)| s * i)
            .collect();
        let mut dx = vec![0.0f32; d.len()];
        if hw > 0 {
            dx.par_chunks_mut(hw).enumerate().for_each(|(nc, o)| {
                let c = nc % d.c;
                let (g, iv, mu) = (gamma[c] as f64, inv[c], mean[c]);
                let (mdy, mdx) = (sum_dy[c] / m, sum_dy_xhat[c] / m);
                let xs = &x[nc * hw..(nc + 1) * hw];
                let gs = &dy[nc * hw..(nc + 1) * hw];
                for ((o, &v), &gv) in o.iter_mut().zip(xs).zip(gs) {
                    let xhat = (v as f64 - mu) * iv;
                    *o = (g * iv * (gv as f64 - mdy - xhat * mdx)) as f32;
                }
            });
        }
        Ok((dx, to_f32(&sum_dy_xhat), to_f32(&sum_dy)))
    }

    fn batchnorm_update_running(
        &self,
        running_mean: &mut Vec<f32>,
        running_var: &mut Vec<f32>,
        stats: &BnStats<Vec<f32>>,
        count: usize,
    ) -> Result<()> {
        let c = running_mean.len();
        check_len(running_var, c, "running var")?;
        check_len(&stats.mean, c, "batch mean")?;
        check_len(&stats.var, c, "batch var")?;
        let unbias = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        for i in 0..c {
            let (rm, rv) = (running_mean[i] as f64, running_var[i] as f64);
            running_mean[i] =
                ((1.0 - BN_MOMENTUM) * rm + BN_MOMENTUM * stats.mean[i] as f64) as f32;
            running_var[i] =
                ((1.0 - BN_MOMENTUM) * rv + BN_MOMENTUM * stats.var[i] as f64 * unbias) as f32;
        }
        Ok(())
    }

    fn activation(&self, act: Activation, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(map1(x, |v| act_f32(act, v)))
    }
    fn activation_vjp(&self, act: Activation, x: &Vec<f32>, dy: &Vec<f32>) -> Result<Vec<f32>> {
        check_len(dy, x.len(), "activation_vjp")?;
        Ok(map2(x, dy, |v, g| act_derivative_f32(act, v) * g))
    }

    fn avgpool2(&self, x: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        check_len(x, d.len(), "avgpool2 input")?;
        let pd = d.pooled();
        let mut y = vec![0.0f32; pd.len()];
        if pd.hw() == 0 {
            return Ok(y);
        }
        y.par_chunks_mut(pd.hw())
            .zip(x.par_chunks(d.hw()))
            .for_each(|(yp, xp)| {
                for i in 0..pd.h {
                    let (r0, r1) = (&xp[2 * i * d.w..], &xp[(2 * i + 1) * d.w..]);
                    for j in 0..pd.w {
                        let s = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
                        yp[i * pd.w + j] = s * 0.25;
                    }
                }
            });
        Ok(y)
    }

    fn avgpool2_vjp(&self, dy: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        let pd = d.pooled();
        check_len(dy, pd.len(), "avgpool2_vjp cotangent")?;
        let mut dx = vec![0.0f32; d.len()];
        if pd.hw() == 0 {
            return Ok(dx);
        }
        dx.par_chunks_mut(d.hw())
            .zip(dy.par_chunks(pd.hw()))
            .for_each(|(xp, gp)| {
                for i in 0..pd.h {
                    for j in 0..pd.w {
                        let g = gp[i * pd.w + j] * 0.25;
                        for a in 0..2 {
                            let row = (2 * i + a) * d.w + 2 * j;
                            xp[row] = g;
                            xp[row + 1] = g;
                        }
                    }
                }
            });
        Ok(dx)
    }

    fn global_mean(&self, x: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        check_len(x, d.len(), "global_mean input")?;
        let hw = d.hw();
        if hw == 0 {
            // The mean of no values, as the reference's 0/0.
            return Ok(vec![f32::NAN; d.n * d.c]);
        }
        Ok(x.par_chunks(hw)
            .map(|p| (sum_f64(p) / hw as f64) as f32)
            .collect())
    }

    fn global_mean_vjp(&self, dy: &Vec<f32>, d: Dims) -> Result<Vec<f32>> {
        check_len(dy, d.n * d.c, "global_mean_vjp cotangent")?;
        let hw = d.hw();
        let mut dx = vec![0.0f32; d.len()];
        if hw > 0 {
            dx.par_chunks_mut(hw)
                .zip(dy.par_iter())
                .for_each(|(p, &g)| p.fill((g as f64 / hw as f64) as f32));
        }
        Ok(dx)
    }

    fn split_channels(&self, x: &Vec<f32>, d: Dims, c1: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        check_len(x, d.len(), "split_channels input")?;
        ensure_shape!(c1 <= d.c, "split at {c1} of {} channels", d.c);
        let hw = d.hw();
        let (mut a, mut b) = (
            Vec::with_capacity(d.n * c1 * hw),
            Vec::with_capacity(d.n * (d.c - c1) * hw),
        );
        for n in 0..d.n {
            let s = &x[n * d.c * hw..(n + 1) * d.c * hw];
            a.extend_from_slice(&s[..c1 * hw]);
            b.extend_from_slice(&s[c1 * hw..]);
        }
        Ok((a, b))
    }

    fn concat_channels(&self, a: &Vec<f32>, b: &Vec<f32>, d: Dims, c1: usize) -> Result<Vec<f32>> {
        ensure_shape!(c1 <= d.c, "concat at {c1} of {} channels", d.c);
        let (hw, c2) = (d.hw(), d.c - c1);
        check_len(a, d.n * c1 * hw, "concat_channels first")?;
        check_len(b, d.n * c2 * hw, "concat_channels second")?;
        let mut x = Vec::with_capacity(d.len());
        for n in 0..d.n {
            x.extend_from_slice(&a[n * c1 * hw..(n + 1) * c1 * hw]);
            x.extend_from_slice(&b[n * c2 * hw..(n + 1) * c2 * hw]);
        }
        Ok(x)
    }

    fn softmax_xent(
        &self,
        logits: &Vec<f32>,
        n: usize,
        classes: usize,
        labels: &[usize],
    ) -> Result<(f64, Vec<f32>)> {
        check_len(logits, n * classes, "logits")?;
        ensure_shape!(labels.len() == n, "{} labels for {n} rows", labels.len());
        ensure_shape!(
            labels.iter().all(|&l| l < classes),
            "a label is not below {classes} classes"
        );
        // Rows are few (the batch): one sequential f64 pass keeps the loss order fixed.
        let mut loss = 0.0f64;
        let mut g = vec![0.0f32; n * classes];
        for r in 0..n {
            let row = &logits[r * classes..(r + 1) * classes];
            let mx = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - mx).exp()).sum();
            loss += z.ln() + mx - row[labels[r]] as f64;
            for (c, gv) in g[r * classes..(r + 1) * classes].iter_mut().enumerate() {
                let p = (row[c] as f64 - mx).exp() / z;
                let t = if c == labels[r] { 1.0 } else { 0.0 };
                *gv = ((p - t) / n as f64) as f32;
            }
        }
        Ok((loss / n as f64, g))
    }

    fn step_full3x3(
        &self,
        terms: &[(f64, &Vec<f32>)],
        coef: f64,
        y: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        norm: Norm<'_, Vec<f32>>,
        act: Activation,
    ) -> Result<Vec<f32>> {
        check_len(y, d.len(), "step input")?;
        for (_, x) in terms {
            check_len(x, d.len(), "step term")?;
        }
        check_len(k, d.c * d.c * 9, "step weight")?;
        let np = norm_params(norm, d.c)?;
        let terms: Vec<(f32, &[f32])> = terms.iter().map(|&(a, x)| (a as f32, &x[..])).collect();
        Ok(fused::step(
            self.kernels(),
            &terms,
            coef as f32,
            y,
            d,
            k,
            np,
            act,
        ))
    }

    fn sym_full3x3_vjp(
        &self,
        y: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        norm: Norm<'_, Vec<f32>>,
        act: Activation,
        g: &Vec<f32>,
    ) -> Result<SymGrads<Vec<f32>>> {
        check_len(y, d.len(), "sym vjp input")?;
        check_len(g, d.len(), "sym vjp cotangent")?;
        check_len(k, d.c * d.c * 9, "sym vjp weight")?;
        let np = norm_params(norm, d.c)?;
        let (dy, dk, dscale, dshift) = fused::sym_vjp(self.kernels(), y, d, k, np, act, g);
        Ok(SymGrads {
            dy,
            dk,
            dscale,
            dshift,
        })
    }

    fn step_full3x3_vjp(
        &self,
        terms: &[(f64, &Vec<f32>)],
        coef: f64,
        y: &Vec<f32>,
        d: Dims,
        k: &Vec<f32>,
        norm: Norm<'_, Vec<f32>>,
        act: Activation,
        g: &Vec<f32>,
    ) -> Result<(Vec<f32>, SymGrads<Vec<f32>>)> {
        if !self.fuses_step_full3x3_vjp() {
            let v = self.sym_full3x3_vjp(y, d, k, norm, act, g)?;
            let s = self.step_full3x3(terms, coef, y, d, k, norm, act)?;
            return Ok((s, v));
        }
        check_len(y, d.len(), "step vjp input")?;
        check_len(g, d.len(), "step vjp cotangent")?;
        for (_, x) in terms {
            check_len(x, d.len(), "step vjp term")?;
        }
        check_len(k, d.c * d.c * 9, "step vjp weight")?;
        let np = norm_params(norm, d.c)?;
        let terms: Vec<(f32, &[f32])> = terms.iter().map(|&(a, x)| (a as f32, &x[..])).collect();
        let (s, (dy, dk, dscale, dshift)) =
            fused::step_vjp(self.kernels(), &terms, coef as f32, y, d, k, np, act, g);
        Ok((
            s,
            SymGrads {
                dy,
                dk,
                dscale,
                dshift,
            },
        ))
    }

    fn quantize(&self, x: &Vec<f32>, shift: u32) -> Result<Vec<i32>> {
        ensure_shape!(shift < 64, "fixed-point shift {shift} is too large");
        // A cast would quantise NaN to 0 and infinities to the i32 limits, silently.
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(crate::error::Error::NonFinite(format!(
                "the fixed-point policy cannot quantise {} (state value {i})",
                x[i]
            )));
        }
        let scale = (1u64 << shift) as f64;
        let mut q = vec![0i32; x.len()];
        q.par_chunks_mut(ELEM_CHUNK)
            .zip(x.par_chunks(ELEM_CHUNK))
            .for_each(|(q, x)| {
                for (q, &v) in q.iter_mut().zip(x) {
                    *q = (v as f64 * scale).round() as i32;
                }
            });
        Ok(q)
    }
    fn dequantize(&self, q: &Vec<i32>, shift: u32) -> Result<Vec<f32>> {
        ensure_shape!(shift < 64, "fixed-point shift {shift} is too large");
        let scale = (1u64 << shift) as f64;
        let mut x = vec![0.0f32; q.len()];
        x.par_chunks_mut(ELEM_CHUNK)
            .zip(q.par_chunks(ELEM_CHUNK))
            .for_each(|(x, q)| {
                for (x, &v) in x.iter_mut().zip(q) {
                    *x = (v as f64 / scale) as f32;
                }
            });
        Ok(x)
    }
    fn fixed_update(
        &self,
        terms: &[(i32, &Vec<i32>)],
        coef: f64,
        f: &Vec<f32>,
    ) -> Result<Vec<i32>> {
        for (_, q) in terms {
            check_len(q, f.len(), "fixed_update term")?;
        }
        let mut out = vec![0i32; f.len()];
        out.par_chunks_mut(ELEM_CHUNK)
            .enumerate()
            .for_each(|(blk, o)| {
                let start = blk * ELEM_CHUNK;
                for (ov, &fv) in o.iter_mut().zip(&f[start..]) {
                    *ov = round_to_i32(coef * fv as f64);
                }
                // Wrapping integer sums commute, so adding term by term (vectorised) equals
                // the reference's per-element order bit for bit.
                for &(c, q) in terms {
                    for (ov, &qv) in o.iter_mut().zip(&q[start..]) {
                        *ov = ov.wrapping_add(c.wrapping_mul(qv));
                    }
                }
            });
        Ok(out)
    }
}

/// The normalisation's parameters as slices, checked against `c` channels.
fn norm_params<'a>(norm: Norm<'a, Vec<f32>>, c: usize) -> Result<fused::NormP<'a>> {
    Ok(match norm {
        Norm::Tv { s, b } => {
            check_len(s, c, "tvnorm scale")?;
            check_len(b, c, "tvnorm shift")?;
            fused::NormP { s: Some(s), b }
        }
        Norm::Shift { b } => {
            check_len(b, c, "shift")?;
            fused::NormP { s: None, b }
        }
    })
}

/// `gamma (x - mean) / sqrt(var + eps) + beta` per channel.
fn bn_apply(
    x: &[f32],
    d: Dims,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f64],
    var: &[f64],
) -> Vec<f32> {
    let hw = d.hw();
    let mut y = vec![0.0f32; d.len()];
    if hw == 0 {
        return y;
    }
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(nc, (yp, xp))| {
            let c = nc % d.c;
            let a = gamma[c] as f64 / (var[c] + BN_EPS).sqrt();
            let b = beta[c] as f64 - a * mean[c];
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = (a * v as f64 + b) as f32;
            }
        });
    y
}
