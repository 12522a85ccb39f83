//! Deterministic parallel helpers.
//!
//! Reductions split the batch into at most [`REDUCE_CHUNKS`] contiguous ranges whose bounds
//! depend on the batch size alone, compute one partial per range and add the partials in range
//! order, so the result is bit-identical whatever the thread count or scheduling.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

/// Number of batch ranges a reduction is split into (fixed: never the thread count).
pub const REDUCE_CHUNKS: usize = 8;
/// Elements per task of elementwise ops: large enough to amortise the task overhead.
pub const ELEM_CHUNK: usize = 1 << 14;

/// Samples per reduction range for a batch of `n`.
pub fn chunk_size(n: usize) -> usize {
    n.div_ceil(REDUCE_CHUNKS).max(1)
}

/// Maps the fixed ranges of `0..n` in parallel; results come back in range order.
pub fn map_chunks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let size = chunk_size(n);
    (0..n.div_ceil(size))
        .into_par_iter()
        .map(|i| f(i * size..((i + 1) * size).min(n)))
        .collect()
}

/// As [`map_chunks`], also handing each range its slice of `out` (`per_sample` values a sample).
pub fn map_chunks_mut<T: Send>(
    n: usize,
    out: &mut [f32],
    per_sample: usize,
    f: impl Fn(Range<usize>, &mut [f32]) -> T + Sync,
) -> Vec<T> {
    if per_sample == 0 {
        return map_chunks(n, |r| f(r, &mut []));
    }
    let size = chunk_size(n);
    out[..n * per_sample]
        .par_chunks_mut(size * per_sample)
        .enumerate()
        .map(|(i, o)| f(i * size..i * size + o.len() / per_sample, o))
        .collect()
}

/// As [`map_chunks_mut`] with a second output `out2` cut the same way (`per_sample` values a
/// sample as well), or handed empty slices when `out2` is empty.
pub fn map_chunks_mut2<T: Send>(
    n: usize,
    out: &mut [f32],
    out2: &mut [f32],
    per_sample: usize,
    f: impl Fn(Range<usize>, &mut [f32], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    if out2.is_empty() {
        return map_chunks_mut(n, out, per_sample, |r, o| f(r, o, &mut []));
    }
    if per_sample == 0 {
        return map_chunks(n, |r| f(r, &mut [], &mut []));
    }
    let size = chunk_size(n);
    out[..n * per_sample]
        .par_chunks_mut(size * per_sample)
        .zip(out2[..n * per_sample].par_chunks_mut(size * per_sample))
        .enumerate()
        .map(|(i, (o, o2))| f(i * size..i * size + o.len() / per_sample, o, o2))
        .collect()
}

/// Adds equally long partials in order into f32.
pub fn sum_partials_f32(parts: &[Vec<f32>], len: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Adds equally long f64 partials in order.
pub fn sum_partials_f64(parts: &[Vec<f64>], len: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; len];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Sum of `xs` in f64 with four interleaved accumulators (a fixed order, but no long
/// dependency chain).
pub fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut it = xs.chunks_exact(4);
    for q in &mut it {
        for (a, &v) in acc.iter_mut().zip(q) {
            *a += v as f64;
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| v as f64).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Sum of `f(x_i, y_i)` in f64, as [`sum_f64`].
pub fn sum2_f64(xs: &[f32], ys: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut xi = xs.chunks_exact(4);
    let mut yi = ys.chunks_exact(4);
    for (qx, qy) in (&mut xi).zip(&mut yi) {
        for k in 0..4 {
            acc[k] += f(qx[k] as f64, qy[k] as f64);
        }
    }
    let tail: f64 = xi
        .remainder()
        .iter()
        .zip(yi.remainder())
        .map(|(&a, &b)| f(a as f64, b as f64))
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

thread_local! {
    static WS32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WS64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's f32 workspace of `len` values (contents unspecified), grown on
/// demand and reused across calls. Not re-entrant: `f` must not call it again.
pub fn with_ws32<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    WS32.with(|ws| {
        let mut ws = ws.borrow_mut();
        grow_exact(&mut ws, len);
        f(&mut ws[..len])
    })
}

/// The f64 counterpart of [`with_ws32`].
pub fn with_ws64<R>(len: usize, f: impl FnOnce(&mut [f64]) -> R) -> R {
    WS64.with(|ws| {
        let mut ws = ws.borrow_mut();
        grow_exact(&mut ws, len);
        f(&mut ws[..len])
    })
}

/// Grows `ws` to exactly `len` values (no amortised doubling), so that a workspace holds the
/// largest request made so far and no more: what the memory plan declares.
fn grow_exact<T: Copy + Default>(ws: &mut Vec<T>, len: usize) {
    if ws.len() < len {
        ws.reserve_exact(len - ws.len());
        ws.resize(len, T::default());
    }
}

/// Frees the workspaces of every thread of the global pool and of the caller, so that a
/// measured peak includes their growth again (as the memory plan assumes).
pub fn release_workspaces() {
    fn clear() {
        WS32.with(|w| *w.borrow_mut() = Vec::new());
        WS64.with(|w| *w.borrow_mut() = Vec::new());
    }
    rayon::broadcast(|_| clear());
    clear();
}

/// Runs a GEMM on every thread of the global pool and on the caller, so that the `gemm` crate's lazily
/// allocated per-thread packing buffer exists before a measured step (it is kept for the life
/// of the thread and is not part of any step's plan).
pub fn warm_threads() {
    // Large enough for the blocked (slab-using) path, as the convolutions' GEMMs.
    // The caller too: dense (hw = 1) convolutions run their GEMM on the calling thread.
    const N: usize = 256;
    let warm = || {
        let (a, b) = (vec![1.0f32; N * N], vec![1.0f32; N * N]);
        let mut c = vec![0.0f32; N * N];
        for rhs in [
            super::conv::Mat::rows(&b, N),
            super::conv::Mat::rows_t(&b, N),
        ] {
            super::conv::matmul(
                N,
                N,
                N,
                &mut c,
                N,
                false,
                super::conv::Mat::rows(&a, N),
                rhs,
            );
        }
        std::hint::black_box(&c);
    };
    rayon::broadcast(|_| warm());
    warm();
}
