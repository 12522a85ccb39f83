//! Training a TNRD model on noisy patches: greedy stage by stage (stage t with the earlier
//! stages fixed, loss on u_t), then all stages jointly; Adam on the f64 parameters, the f32
//! fast path for the work, rayon over patches. Loss: mean over patches of 0.5 ||u - clean||^2.

use super::fast::{forward_seq, vjp_seq, FastStage};
use super::{zero_mean_grad, Model, Stage};
use crate::backend::optim::{Cast, FlatAdam};
use rayon::prelude::*;

/// One training patch: clean and noisy planes of `size x size`.
pub struct Patch {
    pub clean: Vec<f32>,
    pub noisy: Vec<f32>,
}

pub struct TrainOptions {
    pub stages: usize,
    pub filters: usize,
    pub size: usize,
    pub sigma: f64,
    pub patch: usize,
    pub greedy_iters: usize,
    pub joint_iters: usize,
    pub lr: f64,
    /// The learning rate decays along a half cosine to `lr * lr_floor` in each phase (1: constant).
    pub lr_floor: f64,
}

/// The learning rate at iteration `k` of `n` (half cosine from `lr` to `lr * floor`).
fn schedule(lr: f64, floor: f64, k: usize, n: usize) -> f64 {
    let x = if n > 1 {
        k as f64 / (n - 1) as f64
    } else {
        0.0
    };
    lr * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * x).cos()))
}

/// TNRD's Adam epsilon since its first training runs (PyTorch's default is 1e-8).
const ADAM_EPS: f64 = 1e-12;
const F64: Cast<f64> = (f64::from, f64::from);

fn flatten(st: &Stage) -> Vec<f64> {
    let mut v = st.w.clone();
    v.extend(&st.rbf);
    v.push(st.log_lambda);
    v
}

fn unflatten(st: &mut Stage, v: &[f64]) {
    let (a, b) = (st.w.len(), st.rbf.len());
    st.w.copy_from_slice(&v[..a]);
    st.rbf.copy_from_slice(&v[a..a + b]);
    st.log_lambda = v[a + b];
}

/// Loss, PSNR and the flat gradients of stages `first..last` (earlier ones fixed: `start`
/// holds u_first per patch).
fn loss_grad(
    model: &Model,
    first: usize,
    last: usize,
    start: &[Vec<f32>],
    patches: &[Patch],
    p: usize,
) -> (f64, f64, Vec<Vec<f64>>) {
    let fast: Vec<FastStage> = model.stages[first..last]
        .iter()
        .map(|s| FastStage::new(s, model.size))
        .collect();
    let sizes: Vec<usize> = model.stages[first..last]
        .iter()
        .map(|s| s.w.len() + s.rbf.len() + 1)
        .collect();
    let zero = || {
        (
            0.0f64,
            sizes.iter().map(|&n| vec![0.0f64; n]).collect::<Vec<_>>(),
        )
    };
    let (loss, grads) = patches
        .par_iter()
        .zip(start)
        .fold(zero, |(mut l, mut gs), (pt, u0)| {
            let mut us = vec![u0.clone()];
            for st in &fast {
                let next = forward_seq(st, us.last().unwrap(), &pt.noisy, p, p);
                us.push(next);
            }
            let out = us.last().unwrap();
            let mut g: Vec<f32> = out.iter().zip(&pt.clean).map(|(a, b)| a - b).collect();
            l += 0.5 * g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
            for (j, st) in fast.iter().enumerate().rev() {
                let fg = vjp_seq(st, &us[j], &pt.noisy, &g, p, p);
                let dst = &mut gs[j];
                let (nk, nr) = (fg.dk.len(), fg.drbf.len());
                for (d, &x) in dst[..nk].iter_mut().zip(&fg.dk) {
                    *d += x as f64;
                }
                for (d, &x) in dst[nk..nk + nr].iter_mut().zip(&fg.drbf) {
                    *d += x as f64;
                }
                dst[nk + nr] += (fg.dlambda * st.lambda) as f64;
                g = fg.du;
            }
            (l, gs)
        })
        .reduce(zero, |(la, mut ga), (lb, gb)| {
            for (a, b) in ga.iter_mut().zip(&gb) {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            }
            (la + lb, ga)
        });
    let np = patches.len() as f64;
    let mut grads = grads;
    for (g, st) in grads.iter_mut().zip(&model.stages[first..last]) {
        g.iter_mut().for_each(|x| *x /= np);
        zero_mean_grad(&mut g[..st.w.len()], model.size);
    }
    let mse = 2.0 * loss / (np * (p * p) as f64);
    (loss / np, 10.0 * (1.0 / mse).log10(), grads)
}

/// Trains a model; `log(line)` receives `stage t iter k loss L psnr P` lines. The stages of
/// `init` (a model of the same filters and size, at most `opt.stages` stages) are kept as
/// trained: the greedy phase only trains the stages after them.
pub fn train(
    opt: &TrainOptions,
    patches: &[Patch],
    init: Option<Model>,
    mut log: impl FnMut(&str),
) -> Model {
    let p = opt.patch;
    let mut model = init.unwrap_or(Model {
        sigma: opt.sigma,
        filters: opt.filters,
        size: opt.size,
        stages: Vec::new(),
    });
    model.sigma = opt.sigma;
    let mut start: Vec<Vec<f32>> = patches.iter().map(|pt| pt.noisy.clone()).collect();
    for st in &model.stages {
        let fs = FastStage::new(st, opt.size);
        start = patches
            .par_iter()
            .zip(&start)
            .map(|(pt, u)| forward_seq(&fs, u, &pt.noisy, p, p))
            .collect();
    }
    for t in model.stages.len()..opt.stages {
        model
            .stages
            .push(Stage::init(opt.filters, opt.size, 0.05, 0.02));
        let mut x = flatten(&model.stages[t]);
        let mut adam = FlatAdam::new(x.len(), ADAM_EPS);
        for k in 0..opt.greedy_iters {
            let (l, ps, g) = loss_grad(&model, t, t + 1, &start, patches, p);
            if k % 10 == 0 || k + 1 == opt.greedy_iters {
                log(&format!(
                    "stage {} iter {k} loss {l:.6} psnr {ps:.3}",
                    t + 1
                ));
            }
            adam.step(
                &mut x,
                &g[0],
                schedule(opt.lr, opt.lr_floor, k, opt.greedy_iters),
                F64,
            );
            unflatten(&mut model.stages[t], &x);
        }
        let fs = FastStage::new(&model.stages[t], opt.size);
        start = patches
            .par_iter()
            .zip(&start)
            .map(|(pt, u)| forward_seq(&fs, u, &pt.noisy, p, p))
            .collect();
    }
    let init: Vec<Vec<f32>> = patches.iter().map(|pt| pt.noisy.clone()).collect();
    let mut xs: Vec<Vec<f64>> = model.stages.iter().map(flatten).collect();
    let mut adams: Vec<FlatAdam> = xs
        .iter()
        .map(|x| FlatAdam::new(x.len(), ADAM_EPS))
        .collect();
    for k in 0..opt.joint_iters {
        let (l, ps, g) = loss_grad(&model, 0, opt.stages, &init, patches, p);
        if k % 5 == 0 || k + 1 == opt.joint_iters {
            log(&format!("stage joint iter {k} loss {l:.6} psnr {ps:.3}"));
        }
        let lr = 0.5 * schedule(opt.lr, opt.lr_floor, k, opt.joint_iters);
        for t in 0..opt.stages {
            adams[t].step(&mut xs[t], &g[t], lr, F64);
            unflatten(&mut model.stages[t], &xs[t]);
        }
    }
    model
}
