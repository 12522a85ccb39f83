//! The batched CPU path: samples split into blocks of [`block_rows`] over rayon's threads, each
//! block evaluated by the GEMM-blocked recursions of [`super::block`] (with its own
//! weight-gradient accumulator for losses, summed in block order so that the result does not
//! depend on the thread count).

use super::block::{block_rows, eval_block, vjp_block, BlockWorkspace};
use super::exact::{Cotangent, Order, SampleOut};
use super::net::PotentialNet;
use super::real::Real;
use rayon::prelude::*;

/// Values, gradients and Laplacians of a batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOut<T> {
    /// `[N]`.
    pub value: Vec<T>,
    /// `[N, n]` (empty for `Order::Value`).
    pub grad: Vec<T>,
    /// `[N]` (zeros below `Order::Laplacian`).
    pub laplacian: Vec<T>,
}

/// Evaluates every row of `x` (`[N, n]`, row-major).
pub fn eval_batch<T: Real>(net: &PotentialNet<T>, x: &[T], order: Order) -> BatchOut<T> {
    let n = net.shape.n;
    let rows = x.len() / n;
    let bs = block_rows(&net.shape);
    let blocks: Vec<BatchOut<T>> = x[..rows * n]
        .par_chunks(bs * n)
        .map_init(
            || BlockWorkspace::new(&net.shape, bs),
            |ws, chunk| {
                ws.clear();
                eval_block(net, chunk, order, ws);
                let nb = chunk.len() / n;
                BatchOut {
                    value: ws.value[..nb].to_vec(),
                    grad: if order == Order::Value {
                        Vec::new()
                    } else {
                        ws.grad[..nb * n].to_vec()
                    },
                    laplacian: ws.laplacian[..nb].to_vec(),
                }
            },
        )
        .collect();
    let mut out = BatchOut {
        value: Vec::with_capacity(rows),
        grad: Vec::with_capacity(if order == Order::Value { 0 } else { rows * n }),
        laplacian: Vec::with_capacity(rows),
    };
    for o in blocks {
        out.value.extend_from_slice(&o.value);
        out.grad.extend_from_slice(&o.grad);
        out.laplacian.extend_from_slice(&o.laplacian);
    }
    out
}

/// A loss that is a sum of per-sample terms: `term(row, x, out)` returns the sample's term and
/// the cotangents of its value, gradient and Laplacian.
pub trait SampleLoss<T>: Sync {
    fn term(&self, row: usize, x: &[T], out: &SampleOut<T>) -> (f64, Cotangent<T>);
}

impl<T, F> SampleLoss<T> for F
where
    F: Fn(usize, &[T], &SampleOut<T>) -> (f64, Cotangent<T>) + Sync,
{
    fn term(&self, row: usize, x: &[T], out: &SampleOut<T>) -> (f64, Cotangent<T>) {
        self(row, x, out)
    }
}

/// The loss `sum_rows term` over the rows of `x` and its gradient with respect to the weights
/// (added to `gtheta`, which has the length of `net.theta`).
pub fn loss_and_grad<T: Real, L: SampleLoss<T>>(
    net: &PotentialNet<T>,
    x: &[T],
    order: Order,
    loss: &L,
    gtheta: &mut [T],
) -> f64 {
    let n = net.shape.n;
    let len = net.theta.len();
    let rows = x.len() / n;
    let bs = block_rows(&net.shape);
    let parts: Vec<(f64, Vec<T>)> = x[..rows * n]
        .par_chunks(bs * n)
        .enumerate()
        .map_init(
            || BlockWorkspace::new(&net.shape, bs),
            |ws, (c, chunk)| {
                let mut g = vec![T::default(); len];
                ws.clear();
                eval_block(net, chunk, order, ws);
                let mut total = 0.0;
                let mut cots = Vec::with_capacity(bs);
                for (r, xi) in chunk.chunks_exact(n).enumerate() {
                    let out = SampleOut {
                        value: ws.value[r],
                        grad: if order == Order::Value {
                            Vec::new()
                        } else {
                            ws.grad[r * n..(r + 1) * n].to_vec()
                        },
                        laplacian: ws.laplacian[r],
                    };
                    let (term, cot) = loss.term(c * bs + r, xi, &out);
                    total += term;
                    cots.push(cot);
                }
                vjp_block(net, chunk, &cots, ws, &mut g);
                (total, g)
            },
        )
        .collect();
    // Summed in block order: the same sums whatever the number of threads.
    let mut total = 0.0;
    for (t, g) in &parts {
        total += t;
        for (d, s) in gtheta.iter_mut().zip(g) {
            *d += *s;
        }
    }
    total
}
