//! The batched CPU path: samples split into chunks over rayon's threads, each chunk with its
//! own workspace (and its own weight-gradient accumulator for losses).

use super::exact::{eval_sample, vjp_sample, Cotangent, Order, SampleOut, Workspace};
use super::net::PotentialNet;
use super::real::Real;
use rayon::prelude::*;

/// Samples per rayon task: enough work to amortise the workspace, small enough to balance.
const CHUNK: usize = 64;

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
    let outs: Vec<SampleOut<T>> = x
        .par_chunks(CHUNK * n)
        .flat_map_iter(|chunk| {
            let mut ws = Workspace::new(&net.shape);
            chunk
                .chunks_exact(n)
                .map(|xi| eval_sample(net, xi, order, &mut ws))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = BatchOut {
        value: Vec::with_capacity(rows),
        grad: Vec::with_capacity(if order == Order::Value { 0 } else { rows * n }),
        laplacian: Vec::with_capacity(rows),
    };
    for o in outs {
        out.value.push(o.value);
        out.grad.extend_from_slice(&o.grad);
        out.laplacian.push(o.laplacian);
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
    let (total, g) = x
        .par_chunks(CHUNK * n)
        .enumerate()
        .map(|(c, chunk)| {
            let mut ws = Workspace::new(&net.shape);
            let mut g = vec![T::default(); len];
            let mut total = 0.0;
            for (r, xi) in chunk.chunks_exact(n).enumerate() {
                let out = eval_sample(net, xi, order, &mut ws);
                let (term, cot) = loss.term(c * CHUNK + r, xi, &out);
                total += term;
                vjp_sample(net, xi, &cot, &mut ws, &mut g);
            }
            (total, g)
        })
        .reduce(
            || (0.0, vec![T::default(); len]),
            |(ta, mut ga), (tb, gb)| {
                for (a, b) in ga.iter_mut().zip(&gb) {
                    *a += *b;
                }
                (ta + tb, ga)
            },
        );
    for (d, s) in gtheta.iter_mut().zip(&g) {
        *d += *s;
    }
    total
}
