//! Direct 3x3 convolutions (stride 1, padding 1) with `std::arch` micro-kernels: AVX-512 and
//! AVX2+FMA, chosen at run time; the im2col + GEMM path of [`super::conv`] is the portable
//! fallback.
//!
//! Layout. A sample's input `[c, h, w]` is copied once per op into three column-shifted,
//! zero-extended planes per channel ([`Shifted`]): plane `b` holds `x[ci, i, j + b - 1]` (zero
//! off the image) at flat index `off + i * w + j`, with `off >= w` zeros before and after. Tap
//! `(a, b)` of output pixel `p` is then plane `b` at `off + p + (a - 1) * w`: a contiguous,
//! unmasked vector load whatever the image width, so pixels are vectorised over the flattened
//! image (an 8x8 image fills whole vectors too) and no im2col (9 copies) is written.
//!
//! Blocking (as oneDNN's and LIBXSMM's direct convolutions: output channels x pixels in
//! registers, the weights of one output-channel block hot in L1). The forward kernel keeps
//! `CO` output channels x `P <= 3` pixel vectors of accumulators (AVX-512: 8 x 3 = 24 zmm;
//! AVX2: 4 x 3 = 12 ymm); per input channel and tap it loads `P` input vectors and broadcasts
//! `CO` weights from a packed `[cout / CO][cin][9][CO]` copy. The weight gradient keeps
//! `CO` output channels x the 3 horizontal taps of one `(ci, a)` and runs over the pixels.
//! Every sum runs in an order fixed by the shapes alone, so results do not depend on the
//! thread count.

use std::ops::Range;

use rayon::prelude::*;

use super::par::{map_chunks, sum_partials_f32, with_ws32, ELEM_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Dims;

/// Which convolution kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Isa {
    /// Direct kernels on zmm registers (`avx512f`).
    Avx512,
    /// Direct kernels on ymm registers (`avx2` and `fma`).
    Avx2,
    /// The AVX-512 kernels with bf16 operands (rounded to nearest even) and f32 accumulation:
    /// `vdpbf16ps` over pairs of input channels in the forward and adjoint kernels, over pairs of
    /// neighbouring pixels in the weight gradient ([`wgrad_bf16`]; `avx512f`, `avx512bw` and
    /// `avx512bf16`).
    /// Reached through `--precision bf16`, never chosen as the f32 kernels.
    Avx512Bf16,
    /// im2col + the `gemm` crate (every CPU).
    Gemm,
}

impl Isa {
    /// Whether this CPU runs the kernels.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            Isa::Gemm => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest f32 kernels this CPU runs.
    pub fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Gemm)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Gemm => "gemm",
        }
    }

    /// Output channels per register block (the packed weights' block).
    fn co(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Avx512Bf16 => 8,
            _ => 4,
        }
    }
}

impl std::str::FromStr for Isa {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "avx512" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "gemm" => Ok(Isa::Gemm),
            _ => Err(Error::Input(format!(
                "unknown CPU kernels `{s}` (avx512, avx2, gemm)"
            ))),
        }
    }
}

/// 0: not chosen yet (the best available); otherwise `1 + Isa as u8`.
static SELECTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The kernels the CPU backend's 3x3 convolutions run (default: [`Isa::best`]).
pub fn selected() -> Isa {
    match SELECTED.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Isa::Avx512,
        2 => Isa::Avx2,
        3 => Isa::Gemm,
        _ => Isa::best(),
    }
}

/// Chooses the kernels of the CPU backend's 3x3 convolutions for the whole process (the
/// benchmarks compare them side by side); a kernel set this CPU lacks is refused.
pub fn select(isa: Isa) -> Result<()> {
    if isa == Isa::Avx512Bf16 {
        return Err(Error::Input(
            "CPU kernels `avx512bf16` compute in bf16: ask for them with --precision bf16".into(),
        ));
    }
    if !isa.available() {
        return Err(Error::Input(format!(
            "CPU kernels `{}`: this CPU lacks the instructions",
            isa.name()
        )));
    }
    let v = match isa {
        Isa::Avx512 => 1,
        Isa::Avx2 => 2,
        Isa::Gemm | Isa::Avx512Bf16 => 3,
    };
    SELECTED.store(v, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Values a workspace carries beyond its planes so that they can start on a cache line.
pub(super) const ALIGN_PAD: usize = 16;

/// What a shifted plane holds per pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pack {
    /// One channel's f32 value.
    F32,
    /// One channel's value rounded to bf16 (nearest even), 16 bits a pixel (a plane fills half
    /// as many f32 slots): the weight gradient's operand under bf16, read in pairs of pixels.
    Bf16Rows,
    /// Two channels `2j, 2j + 1` as bf16 in one 32-bit slot (low half first): the operand of
    /// `vdpbf16ps`; an odd last channel pairs with zero.
    Bf16Pairs,
}

/// Geometry of the shifted planes of one sample `[c, h, w]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shifted {
    pub c: usize,
    pub w: usize,
    pub hw: usize,
    /// Zeros before the image (`>= w`, a multiple of 16).
    pub off: usize,
    /// Values per plane: `off`, the image, at least `w + 16` zeros (the last vector's overhang
    /// plus the row below).
    pub plane: usize,
    pub pack: Pack,
}

impl Shifted {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        let hw = h * w;
        let off = w.next_multiple_of(16);
        Shifted {
            c,
            w,
            hw,
            off,
            plane: (off + hw + off + 16).next_multiple_of(16),
            pack: Pack::F32,
        }
    }

    /// The planes the forward kernels of `isa` read.
    pub fn for_forward(isa: Isa, c: usize, h: usize, w: usize) -> Self {
        let pack = match isa {
            Isa::Avx512Bf16 => Pack::Bf16Pairs,
            _ => Pack::F32,
        };
        Shifted {
            pack,
            ..Shifted::new(c, h, w)
        }
    }

    /// The planes the weight-gradient kernels of `isa` read.
    pub fn for_wgrad(isa: Isa, c: usize, h: usize, w: usize) -> Self {
        let pack = match isa {
            Isa::Avx512Bf16 => Pack::Bf16Rows,
            _ => Pack::F32,
        };
        Shifted {
            pack,
            ..Shifted::new(c, h, w)
        }
    }

    /// Planes per column shift: channels, or channel pairs.
    pub fn groups(&self) -> usize {
        match self.pack {
            Pack::Bf16Pairs => self.c.div_ceil(2),
            _ => self.c,
        }
    }

    /// f32 slots of one plane (`plane` values, two to a slot for [`Pack::Bf16Rows`]).
    fn slots(&self) -> usize {
        match self.pack {
            Pack::Bf16Rows => self.plane / 2,
            _ => self.plane,
        }
    }

    /// f32 slots of the three planes of every channel (or channel pair).
    pub fn len(&self) -> usize {
        3 * self.groups() * self.slots()
    }

    /// Splits `samples` samples' planes off the front of a workspace of at least
    /// `samples * len() + ALIGN_PAD` values, starting on a 64-byte boundary (planes are
    /// multiples of 16 values, so every plane, and every vector of a whole-image pass, is
    /// cache-line aligned: no load splits a line); the rest comes back second.
    pub fn carve<'a>(&self, ws: &'a mut [f32], samples: usize) -> (&'a mut [f32], &'a mut [f32]) {
        let skip = ws.as_ptr().align_offset(64).min(ALIGN_PAD);
        let (planes, rest) = ws[skip..].split_at_mut(samples * self.len());
        let from = (ALIGN_PAD - skip).min(rest.len());
        (planes, &mut rest[from..])
    }

    /// Fills `xs` (`len()` values) from one sample `x [c, h, w]`.
    pub fn fill(&self, x: &[f32], xs: &mut [f32]) {
        let hw = self.hw;
        let zero = [0.0f32; 0];
        for gi in 0..self.groups() {
            let (lo, hi): (&[f32], &[f32]) = match self.pack {
                Pack::Bf16Pairs => {
                    let hi = if 2 * gi + 1 < self.c {
                        &x[(2 * gi + 1) * hw..(2 * gi + 2) * hw]
                    } else {
                        &zero
                    };
                    (&x[2 * gi * hw..(2 * gi + 1) * hw], hi)
                }
                _ => (&x[gi * hw..(gi + 1) * hw], &zero),
            };
            for b in 0..3 {
                let dst = &mut xs[(b * self.groups() + gi) * self.slots()..][..self.slots()];
                if self.pack == Pack::Bf16Rows {
                    self.fill_plane16(b, lo, bytemuck::cast_slice_mut(dst));
                } else {
                    self.fill_plane(b, lo, hi, dst);
                }
            }
        }
    }

    /// Plane `b` (column shift `b - 1`) of one channel `lo`, or of the pair `(lo, hi)` (`hi`
    /// empty: zero).
    fn fill_plane(&self, b: usize, lo: &[f32], hi: &[f32], dst: &mut [f32]) {
        let body = self.zero_margins(dst);
        match self.pack {
            Pack::F32 => shifted_rows(b, self.w, body, |d, s| d.copy_from_slice(&lo[s])),
            _ => shifted_rows(b, self.w, body, |d, s| {
                pairs_row(d, &lo[s.clone()], (!hi.is_empty()).then(|| &hi[s]))
            }),
        }
    }

    /// Plane `b` of one channel as bf16 values ([`Pack::Bf16Rows`]).
    fn fill_plane16(&self, b: usize, x: &[f32], dst: &mut [u16]) {
        let body = self.zero_margins(dst);
        shifted_rows(b, self.w, body, |d, s| to_bf16(&x[s], d));
    }

    /// Zeroes the margins of a plane before and after the image; the image's part comes back.
    fn zero_margins<'a, T: Copy + Default>(&self, dst: &'a mut [T]) -> &'a mut [T] {
        let (hw, off) = (self.hw, self.off);
        dst[..off].fill(T::default());
        dst[off + hw..].fill(T::default());
        &mut dst[off..off + hw]
    }
}

/// Row by row of `body` (`w` values a row): `put(dst, src)` writes the source pixels `src` of the
/// row shifted by `b - 1` columns into `dst`; the pixel shifted in from off the image is zero.
fn shifted_rows<T: Copy + Default>(
    b: usize,
    w: usize,
    body: &mut [T],
    mut put: impl FnMut(&mut [T], Range<usize>),
) {
    if w == 0 {
        return;
    }
    for (r, row) in body.chunks_exact_mut(w).enumerate() {
        let base = r * w;
        match b {
            1 => put(row, base..base + w),
            0 => {
                row[0] = T::default();
                put(&mut row[1..], base..base + w - 1);
            }
            _ => {
                row[w - 1] = T::default();
                put(&mut row[..w - 1], base + 1..base + w);
            }
        }
    }
}

/// `dst[j] = bf16(lo[j]) | bf16(hi[j]) << 16` (`hi` absent: zero), as [`Pack::Bf16Pairs`].
fn pairs_row(dst: &mut [f32], lo: &[f32], hi: Option<&[f32]>) {
    match hi {
        #[cfg(target_arch = "x86_64")]
        Some(hi) if Isa::Avx512Bf16.available() => {
            // SAFETY: the features were just detected; the lengths are checked inside.
            unsafe { pairs_avx512(dst, lo, hi) }
        }
        Some(hi) => {
            for ((o, &a), &b) in dst.iter_mut().zip(lo).zip(hi) {
                *o = f32::from_bits(bf16_bits(a) as u32 | (bf16_bits(b) as u32) << 16);
            }
        }
        None => {
            for (o, &a) in dst.iter_mut().zip(lo) {
                *o = f32::from_bits(bf16_bits(a) as u32);
            }
        }
    }
}

/// `dst[j] = bf16(src[j])` (nearest even), with `vcvtneps2bf16` where the CPU has it.
pub(super) fn to_bf16(src: &[f32], dst: &mut [u16]) {
    assert!(dst.len() >= src.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512Bf16.available() {
        // SAFETY: the features were just detected; the lengths were checked.
        unsafe { to_bf16_avx512(src, dst) };
        return;
    }
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = bf16_bits(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut j = 0;
    while j < n {
        let m: __mmask16 = if n - j >= 16 {
            0xffff
        } else {
            ((1u32 << (n - j)) - 1) as __mmask16
        };
        let a = _mm512_maskz_loadu_ps(m, src.as_ptr().add(j));
        let v = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(a));
        _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(j).cast(), m, v);
        j += 16;
    }
}

/// `dst[j] = bf16(lo[j]) | bf16(hi[j]) << 16`, 16 pixels an iteration: `vcvtne2ps2bf16`
/// rounds both (nearest even, as [`bf16_bits`]) into one register and a word permutation
/// interleaves them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_avx512(dst: &mut [f32], lo: &[f32], hi: &[f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    assert!(lo.len() >= n && hi.len() >= n);
    // Word j of the result: lo's word j / 2 (words 0..16), or hi's (words 16..32).
    let idx: [i16; 32] = std::array::from_fn(|j| (j / 2 + 16 * (j % 2)) as i16);
    let idx = _mm512_loadu_si512(idx.as_ptr().cast());
    let mut j = 0;
    while j < n {
        let m: __mmask16 = if n - j >= 16 {
            0xffff
        } else {
            ((1u32 << (n - j)) - 1) as __mmask16
        };
        let a = _mm512_maskz_loadu_ps(m, lo.as_ptr().add(j));
        let b = _mm512_maskz_loadu_ps(m, hi.as_ptr().add(j));
        // Low 16 words from the second operand, high 16 from the first.
        let packed: __m512i = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
        let v = _mm512_permutexvar_epi16(idx, packed);
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(j).cast(), m, v);
        j += 16;
    }
}

/// `v` rounded to bf16, to nearest even (NaN stays NaN), as its 16 bits.
#[inline]
pub(super) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    // A select, not a branch, so that the fills vectorise.
    (if v.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }) as u16
}

/// `K [cout, cin, 3, 3]` packed as `[cout / co][cin][9][co]` (output channels padded with zero
/// weights to a multiple of `co`), the order in which the forward kernel broadcasts them; for
/// the bf16 kernels `[cout / co][cin / 2][9][co]` pairs of input channels.
pub(super) fn pack_weights(isa: Isa, k: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    pack_with(isa, cout, cin, |o, ci, t| k[(o * cin + ci) * 9 + t])
}

/// Packed weights of the adjoint: the flipped, channel-transposed kernel
/// `K'[ci, o, a, b] = K[o, ci, 2 - a, 2 - b]` as a forward kernel `cout -> cin`, packed as
/// [`pack_weights`] packs (no flipped copy in between).
pub(super) fn pack_weights_t(isa: Isa, k: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    pack_with(isa, cin, cout, |ci, o, t| k[(o * cin + ci) * 9 + (8 - t)])
}

/// Packs the forward kernel `cin -> cout` whose tap `t` from input `ci` to output `o` is
/// `k(o, ci, t)`.
fn pack_with(
    isa: Isa,
    cout: usize,
    cin: usize,
    k: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let co = isa.co();
    let mut wp = vec![0.0f32; packed_len(isa, cout, cin)];
    for o in 0..cout {
        let (ob, j) = (o / co, o % co);
        if isa == Isa::Avx512Bf16 {
            let cp = cin.div_ceil(2);
            for g in 0..cp {
                for t in 0..9 {
                    let lo = bf16_bits(k(o, 2 * g, t)) as u32;
                    let hi = if 2 * g + 1 < cin {
                        bf16_bits(k(o, 2 * g + 1, t)) as u32
                    } else {
                        0
                    };
                    wp[((ob * cp + g) * 9 + t) * co + j] = f32::from_bits(lo | hi << 16);
                }
            }
            continue;
        }
        for ci in 0..cin {
            for t in 0..9 {
                wp[((ob * cin + ci) * 9 + t) * co + j] = k(o, ci, t);
            }
        }
    }
    wp
}

/// Values of the packed weights of a forward kernel `cin -> cout`.
pub(super) fn packed_len(isa: Isa, cout: usize, cin: usize) -> usize {
    let groups = match isa {
        Isa::Avx512Bf16 => cin.div_ceil(2),
        _ => cin,
    };
    cout.next_multiple_of(isa.co()) * groups * 9
}

/// Pixels `px` of `out[o, p] = beta * (K x)[o, p] (+ out[o, p])`, `o < cout`, from the shifted
/// planes `xs` of one sample: `out[o * out_rs + (p - px.start)]`. `wp` from [`pack_weights`]
/// with the same `isa` (not [`Isa::Gemm`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    isa: Isa,
    g: &Shifted,
    xs: &[f32],
    wp: &[f32],
    cout: usize,
    px: Range<usize>,
    out: &mut [f32],
    out_rs: usize,
    beta: f32,
    accumulate: bool,
) {
    let len = px.len();
    if len == 0 || cout == 0 {
        return;
    }
    // The kernels' reads and writes stay inside these bounds.
    assert!(px.end <= g.hw && xs.len() >= g.len(), "direct conv input");
    assert_eq!(
        g.pack == Pack::Bf16Pairs,
        isa == Isa::Avx512Bf16,
        "planes of another kernel set"
    );
    assert!(wp.len() >= cout.div_ceil(isa.co()) * g.groups() * 9 * isa.co());
    assert!(out.len() >= (cout - 1) * out_rs + len && out_rs >= len);
    let a = Args {
        xs: xs.as_ptr(),
        plane: g.plane,
        off: g.off,
        c: g.groups(),
        w: g.w,
        start: px.start,
        len,
    };
    // SAFETY: the features were detected (`Isa::available`, checked by the callers' choice)
    // and the bounds above cover every access of the kernels.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::forward(
                &a,
                wp.as_ptr(),
                cout,
                out.as_mut_ptr(),
                out_rs,
                beta,
                accumulate,
            ),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::forward(
                &a,
                wp.as_ptr(),
                cout,
                out.as_mut_ptr(),
                out_rs,
                beta,
                accumulate,
            ),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => avx512bf16::forward(
                &a,
                wp.as_ptr(),
                cout,
                out.as_mut_ptr(),
                out_rs,
                beta,
                accumulate,
            ),
            _ => unreachable!("direct kernels need avx2 or avx512"),
        }
    }
}

/// `dk[o, ci, a, b] += beta * sum_s sum_{p in px} dz_s[o, p] x_{s,b}[ci, p + (a - 1) w]` for
/// `o < cout` over `samples` samples: sample `s`'s planes at `xs[s * g.len()..]`, its
/// cotangent at `dz[s * dz_stride + o * dz_rs + (p - px.start)]`; `dk [cout, c, 3, 3]`. The
/// accumulators run over all the samples before their lanes are added, so small images do not
/// pay a horizontal sum per pixel vector.
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad(
    isa: Isa,
    g: &Shifted,
    xs: &[f32],
    samples: usize,
    dz: &[f32],
    dz_rs: usize,
    dz_stride: usize,
    cout: usize,
    px: Range<usize>,
    dk: &mut [f32],
    beta: f32,
) {
    assert_eq!(
        g.pack,
        Pack::F32,
        "f32 weight gradient on bf16 planes (see wgrad_bf16)"
    );
    let len = px.len();
    if len == 0 || cout == 0 || g.c == 0 || samples == 0 {
        return;
    }
    assert!(
        px.end <= g.hw && xs.len() >= samples * g.len(),
        "direct wgrad input"
    );
    assert!(dz_rs >= len && dz_stride >= (cout - 1) * dz_rs + len);
    assert!(dz.len() >= (samples - 1) * dz_stride + (cout - 1) * dz_rs + len);
    assert!(dk.len() >= cout * g.c * 9);
    let a = Args {
        xs: xs.as_ptr(),
        plane: g.plane,
        off: g.off,
        c: g.c,
        w: g.w,
        start: px.start,
        len,
    };
    let strides = (samples, g.len(), dz_stride);
    // Output channels past `cout` in the last block read a zero row.
    let zero = vec![
        0.0f32;
        if cout.is_multiple_of(isa.co()) {
            0
        } else {
            len
        }
    ];
    // SAFETY: as in `forward`.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::wgrad(
                &a,
                strides,
                dz.as_ptr(),
                dz_rs,
                cout,
                zero.as_ptr(),
                dk.as_mut_ptr(),
                beta,
            ),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::wgrad(
                &a,
                strides,
                dz.as_ptr(),
                dz_rs,
                cout,
                zero.as_ptr(),
                dk.as_mut_ptr(),
                beta,
            ),
            _ => unreachable!("direct kernels need avx2 or avx512"),
        }
    }
}

/// [`wgrad`] under bf16: the planes `xs` are [`Pack::Bf16Rows`] (from
/// [`Shifted::for_wgrad`] with [`Isa::Avx512Bf16`]) and the cotangent `dz` is bf16 too; the
/// kernel multiplies pairs of neighbouring pixels with `vdpbf16ps` (f32 accumulators).
#[allow(clippy::too_many_arguments)]
pub(super) fn wgrad_bf16(
    g: &Shifted,
    xs: &[f32],
    samples: usize,
    dz: &[u16],
    dz_rs: usize,
    dz_stride: usize,
    cout: usize,
    px: Range<usize>,
    dk: &mut [f32],
    beta: f32,
) {
    assert_eq!(g.pack, Pack::Bf16Rows, "bf16 weight gradient on f32 planes");
    assert!(
        Isa::Avx512Bf16.available(),
        "bf16 kernels without avx512_bf16"
    );
    let len = px.len();
    if len == 0 || cout == 0 || g.c == 0 || samples == 0 {
        return;
    }
    assert!(
        px.end <= g.hw && xs.len() >= samples * g.len(),
        "direct wgrad input"
    );
    assert!(dz_rs >= len && dz_stride >= (cout - 1) * dz_rs + len);
    assert!(dz.len() >= (samples - 1) * dz_stride + (cout - 1) * dz_rs + len);
    assert!(dk.len() >= cout * g.c * 9);
    let a = Args {
        xs: xs.as_ptr(),
        plane: g.plane,
        off: g.off,
        c: g.c,
        w: g.w,
        start: px.start,
        len,
    };
    // Plane strides in bf16 values: a sample's planes are `g.len()` f32 slots.
    let strides = (samples, 2 * g.len(), dz_stride);
    let zero = vec![0u16; if cout.is_multiple_of(8) { 0 } else { len }];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the features were checked above and the bounds cover every access (masked loads
    // stop at `len`; the planes extend at least a row and a vector past the image).
    unsafe {
        avx512bf16::wgrad(
            &a,
            strides,
            dz.as_ptr(),
            dz_rs,
            cout,
            zero.as_ptr(),
            dk.as_mut_ptr(),
            beta,
        )
    }
}

/// What a kernel reads: the shifted planes and the pixel range.
struct Args {
    xs: *const f32,
    plane: usize,
    off: usize,
    c: usize,
    w: usize,
    start: usize,
    len: usize,
}

/// The forward kernel, written once over a module's vector primitives (`V`, `M`, `VL`, `CO`,
/// `zero`, `set1`, `load`, `mac` (the inner product's multiply-add), `fma`, `mul`, `mask`,
/// `load_m`, `store_m`) and compiled with its target features.
#[cfg(target_arch = "x86_64")]
macro_rules! direct_forward {
    ($feat:literal) => {
        /// Pixel vectors per register block.
        const PMAX: usize = 3;

        #[target_feature(enable = $feat)]
        pub(super) unsafe fn forward(
            a: &Args,
            wp: *const f32,
            cout: usize,
            out: *mut f32,
            out_rs: usize,
            beta: f32,
            accumulate: bool,
        ) {
            let nv = a.len.div_ceil(VL);
            for ob in 0..cout.div_ceil(CO) {
                let wpb = wp.add(ob * a.c * 9 * CO);
                let mut v = 0;
                while v < nv {
                    let q = (nv - v).min(PMAX);
                    let e = (ob, v, wpb, cout, out, out_rs, beta, accumulate);
                    match q {
                        3 => fwd_tile::<3>(a, e),
                        2 => fwd_tile::<2>(a, e),
                        _ => fwd_tile::<1>(a, e),
                    }
                    v += q;
                }
            }
        }

        type Tile = (usize, usize, *const f32, usize, *mut f32, usize, f32, bool);

        /// `CO` output channels (block `ob`) x `P` vectors from vector `v0` of the range.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn fwd_tile<const P: usize>(a: &Args, e: Tile) {
            let (ob, v0, wpb, cout, out, out_rs, beta, accumulate) = e;
            let base = a.xs.add(a.off + a.start + v0 * VL);
            let w = a.w as isize;
            let mut acc = [[zero(); P]; CO];
            for ci in 0..a.c {
                let wci = wpb.add(ci * 9 * CO);
                for ta in 0..3 {
                    let row = base.offset((ta as isize - 1) * w);
                    for tb in 0..3 {
                        let src = row.add((tb * a.c + ci) * a.plane);
                        let mut xv = [zero(); P];
                        for q in 0..P {
                            xv[q] = load(src.add(q * VL));
                        }
                        let wt = wci.add((ta * 3 + tb) * CO);
                        for o in 0..CO {
                            let wv = set1(*wt.add(o));
                            for q in 0..P {
                                acc[o][q] = mac(wv, xv[q], acc[o][q]);
                            }
                        }
                    }
                }
            }
            let bv = set1(beta);
            for o in 0..CO {
                let oc = ob * CO + o;
                if oc >= cout {
                    break;
                }
                for q in 0..P {
                    let pix = (v0 + q) * VL;
                    let m = mask(a.len - pix);
                    let dst = out.add(oc * out_rs + pix);
                    let r = if accumulate {
                        fma(bv, acc[o][q], load_m(dst, m))
                    } else {
                        mul(bv, acc[o][q])
                    };
                    store_m(dst, m, r);
                }
            }
        }
    };
}

/// The weight-gradient kernel over the same primitives (and `hsum_all`).
#[cfg(target_arch = "x86_64")]
macro_rules! direct_wgrad {
    ($feat:literal) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn wgrad(
            a: &Args,
            (samples, xs_stride, dz_stride): (usize, usize, usize),
            dz: *const f32,
            dz_rs: usize,
            cout: usize,
            zero_row: *const f32,
            dk: *mut f32,
            beta: f32,
        ) {
            let nv = a.len.div_ceil(VL);
            let w = a.w as isize;
            for ob in 0..cout.div_ceil(CO) {
                let mut rows = [zero_row; CO];
                // The zero row stays put from sample to sample.
                let mut row_step = [0usize; CO];
                for o in 0..CO {
                    if ob * CO + o < cout {
                        rows[o] = dz.add((ob * CO + o) * dz_rs);
                        row_step[o] = dz_stride;
                    }
                }
                for ci in 0..a.c {
                    for ta in 0..3 {
                        let row = a.xs.add(a.off + a.start).offset((ta as isize - 1) * w);
                        let src = [
                            row.add(ci * a.plane),
                            row.add((a.c + ci) * a.plane),
                            row.add((2 * a.c + ci) * a.plane),
                        ];
                        let mut acc = [[zero(); 3]; CO];
                        for smp in 0..samples {
                            let src = src.map(|r| r.add(smp * xs_stride));
                            let mut rs = rows;
                            for o in 0..CO {
                                rs[o] = rs[o].add(smp * row_step[o]);
                            }
                            for v in 0..nv {
                                let p = v * VL;
                                let m = mask(a.len - p);
                                let mut xv = [zero(); 3];
                                let full = p + VL <= a.len;
                                for tb in 0..3 {
                                    xv[tb] = if full {
                                        load(src[tb].add(p))
                                    } else {
                                        load_m(src[tb].add(p), m)
                                    };
                                }
                                for o in 0..CO {
                                    let d = if full {
                                        load(rs[o].add(p))
                                    } else {
                                        load_m(rs[o].add(p), m)
                                    };
                                    for tb in 0..3 {
                                        acc[o][tb] = fma(d, xv[tb], acc[o][tb]);
                                    }
                                }
                            }
                        }
                        // The lanes of all 3 * CO accumulators at once (one tree).
                        let mut sums = [0.0f32; 3 * CO];
                        hsum_all(&acc, &mut sums);
                        for o in 0..CO {
                            let oc = ob * CO + o;
                            if oc >= cout {
                                break;
                            }
                            for tb in 0..3 {
                                let t = dk.add((oc * a.c + ci) * 9 + ta * 3 + tb);
                                *t += beta * sums[o * 3 + tb];
                            }
                        }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Args;
    use std::arch::x86_64::*;

    pub(super) type V = __m512;
    pub(super) type M = __mmask16;
    pub(super) const VL: usize = 16;
    pub(super) const CO: usize = 8;

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn zero() -> V {
        _mm512_setzero_ps()
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn set1(v: f32) -> V {
        _mm512_set1_ps(v)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn load(p: *const f32) -> V {
        _mm512_loadu_ps(p)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fma(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn mul(a: V, b: V) -> V {
        _mm512_mul_ps(a, b)
    }
    /// The inner product's multiply-add.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn mac(w: V, x: V, acc: V) -> V {
        fma(w, x, acc)
    }
    /// The first `min(n, 16)` lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn mask(n: usize) -> M {
        if n >= VL {
            0xffff
        } else {
            ((1u32 << n) - 1) as M
        }
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn load_m(p: *const f32, m: M) -> V {
        _mm512_maskz_loadu_ps(m, p)
    }
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn store_m(p: *mut f32, m: M, v: V) {
        _mm512_mask_storeu_ps(p, m, v)
    }
    /// `out[i]` = the sum of the lanes of accumulator `i` (row-major over `acc`), 16 at a time
    /// through one transpose-and-add tree (45 operations where 16 separate horizontal sums
    /// take about 130).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn hsum_all(acc: &[[V; 3]; CO], out: &mut [f32; 3 * CO]) {
        let flat: [V; 3 * CO] = std::array::from_fn(|i| acc[i / 3][i % 3]);
        for (vs, o) in flat.chunks(16).zip(out.chunks_mut(16)) {
            let mut v = [_mm512_setzero_ps(); 16];
            v[..vs.len()].copy_from_slice(vs);
            let r = sum16(&v);
            let mut lanes = [0.0f32; 16];
            // SAFETY: 16 values into a 16-value array.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), r) };
            o.copy_from_slice(&lanes[..o.len()]);
        }
    }

    /// Lane `i` of the result = the sum of the lanes of `v[i]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sum16(v: &[V; 16]) -> V {
        // Pairs: per 128-bit lane [a0+a2, b0+b2, a1+a3, b1+b3].
        let p: [V; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
        });
        // Quads: per 128-bit lane [a, b, c, d], each summed over the lane.
        let q: [V; 4] = std::array::from_fn(|i| {
            let (x, y) = (_mm512_castps_pd(p[2 * i]), _mm512_castps_pd(p[2 * i + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
            )
        });
        // The four 128-bit lanes of each quad added: lane block k of the result is quad k.
        let fold = |x: V, y: V| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        };
        fold(fold(q[0], q[1]), fold(q[2], q[3]))
    }

    direct_forward!("avx512f");
    direct_wgrad!("avx512f");
}

/// The AVX-512 forward kernel on bf16 pairs: each 32-bit lane of a plane holds two input
/// channels of one pixel, each broadcast weight the same two channels' taps, and `vdpbf16ps`
/// adds both products into the f32 accumulator (half the instructions of the f32 kernel).
#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::avx512::{hsum_all, load, load_m, mask, mul, set1, store_m, zero, CO, V, VL};
    use super::Args;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fma(a: V, b: V, c: V) -> V {
        _mm512_fmadd_ps(a, b, c)
    }
    /// `acc + w.lo x.lo + w.hi x.hi` per lane.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    fn mac(w: V, x: V, acc: V) -> V {
        // SAFETY: both are 512-bit vectors; the bits are reinterpreted as 32 bf16 values.
        let (w, x) = unsafe {
            (
                std::mem::transmute::<__m512, __m512bh>(w),
                std::mem::transmute::<__m512, __m512bh>(x),
            )
        };
        _mm512_dpbf16_ps(acc, x, w)
    }

    direct_forward!("avx512f,avx512bf16");

    /// The weight gradient on bf16 rows: as the f32 kernel, with 32 pixels a vector taken as
    /// 16 pairs (`vdpbf16ps` adds both products of a pair); `a.xs` points at bf16 planes.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn wgrad(
        a: &Args,
        (samples, xs_stride, dz_stride): (usize, usize, usize),
        dz: *const u16,
        dz_rs: usize,
        cout: usize,
        zero_row: *const u16,
        dk: *mut f32,
        beta: f32,
    ) {
        const PX: usize = 32;
        let xs = a.xs as *const u16;
        let nv = a.len.div_ceil(PX);
        let w = a.w as isize;
        let bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
        for ob in 0..cout.div_ceil(CO) {
            let mut rows = [zero_row; CO];
            let mut row_step = [0usize; CO];
            for o in 0..CO {
                if ob * CO + o < cout {
                    rows[o] = dz.add((ob * CO + o) * dz_rs);
                    row_step[o] = dz_stride;
                }
            }
            for ci in 0..a.c {
                for ta in 0..3 {
                    let row = xs.add(a.off + a.start).offset((ta as isize - 1) * w);
                    let src = [
                        row.add(ci * a.plane),
                        row.add((a.c + ci) * a.plane),
                        row.add((2 * a.c + ci) * a.plane),
                    ];
                    let mut acc = [[zero(); 3]; CO];
                    for smp in 0..samples {
                        let src = src.map(|r| r.add(smp * xs_stride));
                        let mut rs = rows;
                        for o in 0..CO {
                            rs[o] = rs[o].add(smp * row_step[o]);
                        }
                        for v in 0..nv {
                            let p = v * PX;
                            let left = a.len - p;
                            let m: __mmask32 = if left >= PX {
                                u32::MAX
                            } else {
                                (1u32 << left) - 1
                            };
                            let mut xv = [_mm512_setzero_si512(); 3];
                            for tb in 0..3 {
                                xv[tb] = _mm512_maskz_loadu_epi16(m, src[tb].add(p).cast());
                            }
                            for o in 0..CO {
                                let d = bh(_mm512_maskz_loadu_epi16(m, rs[o].add(p).cast()));
                                for tb in 0..3 {
                                    acc[o][tb] = _mm512_dpbf16_ps(acc[o][tb], d, bh(xv[tb]));
                                }
                            }
                        }
                    }
                    let mut sums = [0.0f32; 3 * CO];
                    hsum_all(&acc, &mut sums);
                    for o in 0..CO {
                        let oc = ob * CO + o;
                        if oc >= cout {
                            break;
                        }
                        for tb in 0..3 {
                            let t = dk.add((oc * a.c + ci) * 9 + ta * 3 + tb);
                            *t += beta * sums[o * 3 + tb];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Args;
    use std::arch::x86_64::*;

    type V = __m256;
    type M = __m256i;
    const VL: usize = 8;
    const CO: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn zero() -> V {
        _mm256_setzero_ps()
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn set1(v: f32) -> V {
        _mm256_set1_ps(v)
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load(p: *const f32) -> V {
        _mm256_loadu_ps(p)
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fma(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mul(a: V, b: V) -> V {
        _mm256_mul_ps(a, b)
    }
    /// The first `min(n, 8)` lanes (all bits set in a lane's 32 bits).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mask(n: usize) -> M {
        let n = n.min(VL) as i32;
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes)
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_m(p: *const f32, m: M) -> V {
        _mm256_maskload_ps(p, m)
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store_m(p: *mut f32, m: M, v: V) {
        _mm256_maskstore_ps(p, m, v)
    }
    /// `out[i]` = the sum of the lanes of accumulator `i` (row-major over `acc`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum_all(acc: &[[V; 3]; CO], out: &mut [f32; 3 * CO]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = hsum(acc[i / 3][i % 3]);
        }
    }

    /// Lanes added as a fixed tree: (0+4, 1+5, 2+6, 3+7), then pairs.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: V) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The inner product's multiply-add.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn mac(w: V, x: V, acc: V) -> V {
        fma(w, x, acc)
    }

    direct_forward!("avx2,fma");
    direct_wgrad!("avx2,fma");
}

/// Refuses kernels this CPU lacks, and lengths that do not match (one line naming the tensor).
fn check(isa: Isa, what: &str, x: usize, want_x: usize, k: usize, want_k: usize) -> Result<()> {
    if !isa.available() {
        return Err(Error::Input(format!(
            "{what}: this CPU lacks the `{}` instructions",
            isa.name()
        )));
    }
    if x != want_x || k != want_k {
        return Err(Error::Input(format!(
            "{what}: expected {want_x} input and {want_k} weight values, got {x} and {k}"
        )));
    }
    Ok(())
}

/// `conv(x, K)` for `K [cout, d.c, 3, 3]` with the kernels of `isa`.
pub fn conv3x3(isa: Isa, x: &[f32], d: Dims, k: &[f32], cout: usize) -> Result<Vec<f32>> {
    check(isa, "conv3x3", x.len(), d.len(), k.len(), cout * d.c * 9)?;
    Ok(match isa {
        Isa::Gemm => super::conv::conv3x3(x, d, k, cout),
        _ => conv_packed(isa, x, d, &pack_weights(isa, k, cout, d.c), cout),
    })
}

/// `convT(z, K)` for `K [d.c, cin, 3, 3]`: the forward kernels on the flipped weights.
pub fn conv3x3_t(isa: Isa, z: &[f32], d: Dims, k: &[f32], cin: usize) -> Result<Vec<f32>> {
    check(isa, "conv3x3_t", z.len(), d.len(), k.len(), cin * d.c * 9)?;
    Ok(match isa {
        Isa::Gemm => super::conv::conv3x3_t(z, d, k, cin),
        _ => conv_packed(isa, z, d, &pack_weights_t(isa, k, d.c, cin), cin),
    })
}

fn conv_packed(isa: Isa, x: &[f32], d: Dims, wp: &[f32], cout: usize) -> Vec<f32> {
    let hw = d.hw();
    let mut y = vec![0.0f32; d.n * cout * hw];
    if hw == 0 || cout == 0 {
        return y;
    }
    let g = Shifted::for_forward(isa, d.c, d.h, d.w);
    y.par_chunks_mut(cout * hw)
        .zip(x.par_chunks(d.c * hw.max(1)))
        .for_each(|(ys, xs)| {
            with_ws32(g.len() + ALIGN_PAD, |ws| {
                let (planes, _) = g.carve(ws, 1);
                g.fill(xs, planes);
                forward(isa, &g, planes, wp, cout, 0..hw, ys, hw, 1.0, false);
            })
        });
    y
}

/// `dK [cout, d.c, 3, 3] = sum_n dz_n x_n^T` with the kernels of `isa`.
pub fn conv3x3_wgrad(isa: Isa, x: &[f32], d: Dims, dz: &[f32], cout: usize) -> Result<Vec<f32>> {
    check(
        isa,
        "conv3x3_wgrad",
        x.len(),
        d.len(),
        dz.len(),
        d.with_c(cout).len(),
    )?;
    Ok(match isa {
        Isa::Gemm => super::conv::conv3x3_wgrad(x, d, dz, cout),
        _ => wgrad_direct(isa, x, d, dz, cout),
    })
}

/// The direct weight gradient: one partial per fixed batch range, added in range order;
/// within a range, groups of [`wgrad_group`] samples share the accumulators.
fn wgrad_direct(isa: Isa, x: &[f32], d: Dims, dz: &[f32], cout: usize) -> Vec<f32> {
    let hw = d.hw();
    let len = cout * d.c * 9;
    if hw == 0 || len == 0 {
        return vec![0.0; len];
    }
    let g = Shifted::for_wgrad(isa, d.c, d.h, d.w);
    let group = wgrad_group(d);
    // Under bf16 the cotangent is rounded once (the planes as they are filled).
    let dz16: Vec<u16> = if isa == Isa::Avx512Bf16 {
        let mut v = vec![0u16; dz.len()];
        v.par_chunks_mut(ELEM_CHUNK)
            .zip(dz.par_chunks(ELEM_CHUNK))
            .for_each(|(o, i)| to_bf16(i, o));
        v
    } else {
        Vec::new()
    };
    let parts = map_chunks(d.n, |r| {
        let mut part = vec![0.0f32; len];
        let mut s0 = r.start;
        while s0 < r.end {
            let m = group.min(r.end - s0);
            with_ws32(m * g.len() + ALIGN_PAD, |ws| {
                let (ws, _) = g.carve(ws, m);
                for (j, planes) in ws.chunks_exact_mut(g.len()).enumerate() {
                    let s = s0 + j;
                    g.fill(&x[s * d.c * hw..(s + 1) * d.c * hw], planes);
                }
                let dzs = s0 * cout * hw..(s0 + m) * cout * hw;
                if isa == Isa::Avx512Bf16 {
                    let dzs = &dz16[dzs];
                    wgrad_bf16(&g, ws, m, dzs, hw, cout * hw, cout, 0..hw, &mut part, 1.0);
                } else {
                    let dzs = &dz[dzs];
                    wgrad(
                        isa,
                        &g,
                        ws,
                        m,
                        dzs,
                        hw,
                        cout * hw,
                        cout,
                        0..hw,
                        &mut part,
                        1.0,
                    );
                }
            });
            s0 += m;
        }
        part
    });
    sum_partials_f32(&parts, len)
}

/// Samples whose pixels one weight-gradient pass accumulates before the horizontal sums: at
/// least 512 pixels (32 zmm vectors) where the batch range allows it.
fn wgrad_group(d: Dims) -> usize {
    512usize
        .div_ceil(d.hw().max(1))
        .min(super::par::chunk_size(d.n))
}

/// Workspace values per thread of the direct convolutions of `d`'s samples.
pub fn shifted_ws(isa: Isa, d: Dims) -> usize {
    Shifted::for_forward(isa, d.c, d.h, d.w).len() + ALIGN_PAD
}

/// Workspace values per thread of the direct weight gradient (a group of samples' planes).
pub fn wgrad_ws(isa: Isa, d: Dims) -> usize {
    wgrad_group(d) * Shifted::for_wgrad(isa, d.c, d.h, d.w).len() + ALIGN_PAD
}
