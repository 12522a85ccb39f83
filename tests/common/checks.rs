//! One check per op: the backend under test against the f64 [`Reference`] on the same data.

use pdenet::backend::optim::{AdamStep, SgdStep};
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm};
use pdenet::Dims;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::Rng;

use super::{close, close_scaled, norm, rand_vec, Case};

type R = Result<(), TestCaseError>;

const ACTS: [Activation; 3] = [Activation::Relu, Activation::Tanh, Activation::Logcosh];

fn up<B: Backend>(b: &B, v: &[f64]) -> B::Buf {
    b.upload(v).expect("upload")
}

fn down<B: Backend>(b: &B, v: &B::Buf) -> Vec<f64> {
    b.download(v).expect("download")
}

/// Uploads `v` to both backends.
fn both<B: Backend>(b: &B, v: &[f64]) -> (B::Buf, Vec<f64>) {
    (up(b, v), v.to_vec())
}

pub fn lincomb<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len();
    let xs: Vec<Vec<f64>> = (0..3).map(|_| rand_vec(&mut rng, len, 1.0)).collect();
    let coefs = [2.0, -1.0, 0.3];
    for k in 1..=3 {
        let fb: Vec<B::Buf> = xs[..k].iter().map(|x| up(b, x)).collect();
        let ft: Vec<(f64, &B::Buf)> = coefs.iter().copied().zip(fb.iter()).collect();
        let rt: Vec<(f64, &Vec<f64>)> = coefs.iter().copied().zip(xs[..k].iter()).collect();
        let fast = down(b, &b.lincomb(&ft).unwrap());
        close("lincomb", &fast, &Reference.lincomb(&rt).unwrap())?;
    }
    Ok(())
}

/// The ODE controller's scaled squares against the reference, and the same bits on 1 and 3
/// threads (inputs long enough to span several chunks).
pub fn scaled_sq<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len() * 997;
    let (x, y0, y1) = (
        rand_vec(&mut rng, len, 1.0),
        rand_vec(&mut rng, len, 3.0),
        rand_vec(&mut rng, len, 3.0),
    );
    let (fx, f0, f1) = (up(b, &x), up(b, &y0), up(b, &y1));
    let (atol, rtol) = (1e-4, 1e-3);
    let want = Reference.scaled_sq(&x, &y0, &y1, atol, rtol).unwrap();
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| b.scaled_sq(&fx, &f0, &f1, atol, rtol).unwrap())
    };
    let got = on(1);
    close("scaled_sq", &[got], &[want])?;
    prop_assert_eq!(
        got.to_bits(),
        on(3).to_bits(),
        "scaled_sq differs across threads"
    );
    Ok(())
}

pub fn axpy<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len();
    let (x, y) = (rand_vec(&mut rng, len, 1.0), rand_vec(&mut rng, len, 1.0));
    let (mut fy, mut ry) = both(b, &y);
    b.axpy(-0.7, &up(b, &x), &mut fy).unwrap();
    Reference.axpy(-0.7, &x, &mut ry).unwrap();
    close("axpy", &down(b, &fy), &ry)
}

/// Three SGD steps, with and without weight decay, against the reference's f64 updates.
pub fn sgd_step<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len();
    let w = rand_vec(&mut rng, len, 1.0);
    let (mut fw, mut rw) = both(b, &w);
    let (mut fm, mut rm) = both(b, &vec![0.0; len]);
    for (t, wd) in [(0, 5e-4), (1, 0.0), (2, 5e-4)] {
        let g = rand_vec(&mut rng, len, 1.0 + t as f64);
        let s = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: wd,
        };
        b.sgd_step(&mut fw, &mut fm, &up(b, &g), &s).unwrap();
        Reference.sgd_step(&mut rw, &mut rm, &g, &s).unwrap();
    }
    close("sgd_step weights", &down(b, &fw), &rw)?;
    close("sgd_step momentum", &down(b, &fm), &rm)
}

/// Three Adam steps (bias corrections of steps 1..3) against the reference's f64 updates.
pub fn adam_step<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len();
    let w = rand_vec(&mut rng, len, 1.0);
    let (mut fw, mut rw) = both(b, &w);
    let (mut fm, mut rm) = both(b, &vec![0.0; len]);
    let (mut fv, mut rv) = both(b, &vec![0.0; len]);
    for t in 1..=3 {
        let g = rand_vec(&mut rng, len, 1.0);
        let s = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            bias1: 1.0 - 0.9f64.powi(t),
            bias2: 1.0 - 0.999f64.powi(t),
        };
        b.adam_step(&mut fw, &mut fm, &mut fv, &up(b, &g), &s)
            .unwrap();
        Reference
            .adam_step(&mut rw, &mut rm, &mut rv, &g, &s)
            .unwrap();
    }
    close("adam_step weights", &down(b, &fw), &rw)?;
    close("adam_step first moment", &down(b, &fm), &rm)?;
    close("adam_step second moment", &down(b, &fv), &rv)?;
    let short = up(b, &vec![0.0; len + 1]);
    let s = SgdStep {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    prop_assert!(
        b.sgd_step(&mut fw, &mut fm, &short, &s).is_err(),
        "sgd_step took a gradient of another length"
    );
    Ok(())
}

pub fn conv3x3<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let k = rand_vec(&mut rng, c.cout * c.d.c * 9, 1.0);
    let fast = down(
        b,
        &b.conv(ConvSpec::full3x3(), &up(b, &x), c.d, &up(b, &k), c.cout)
            .unwrap(),
    );
    close(
        "conv3x3",
        &fast,
        &Reference
            .conv(ConvSpec::full3x3(), &x, c.d, &k, c.cout)
            .unwrap(),
    )
}

pub fn conv3x3_t<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    // z has d.c (= cout of the forward) channels and maps to c.cout channels.
    let z = rand_vec(&mut rng, c.d.len(), 1.0);
    let k = rand_vec(&mut rng, c.d.c * c.cout * 9, 1.0);
    let fast = down(
        b,
        &b.conv_t(ConvSpec::full3x3(), &up(b, &z), c.d, &up(b, &k), c.cout)
            .unwrap(),
    );
    close(
        "conv3x3_t",
        &fast,
        &Reference
            .conv_t(ConvSpec::full3x3(), &z, c.d, &k, c.cout)
            .unwrap(),
    )
}

pub fn conv3x3_wgrad<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let dz = rand_vec(&mut rng, c.d.with_c(c.cout).len(), 1.0);
    let fast = down(
        b,
        &b.conv_wgrad(ConvSpec::full3x3(), &up(b, &x), c.d, &up(b, &dz), c.cout)
            .unwrap(),
    );
    let reff = Reference
        .conv_wgrad(ConvSpec::full3x3(), &x, c.d, &dz, c.cout)
        .unwrap();
    close("conv3x3_wgrad", &fast, &reff)
}

/// The image shape of the case and its dense `[n*h, c]` counterpart (the `hw == 1` path).
fn shapes_1x1(c: &Case) -> [Dims; 2] {
    [c.d, Dims::dense(c.d.n * c.d.h, c.d.c)]
}

pub fn conv1x1<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    for d in shapes_1x1(c) {
        let x = rand_vec(&mut rng, d.len(), 1.0);
        let k = rand_vec(&mut rng, c.cout * d.c, 1.0);
        let fast = down(
            b,
            &b.conv(ConvSpec::full1x1(), &up(b, &x), d, &up(b, &k), c.cout)
                .unwrap(),
        );
        close(
            "conv1x1",
            &fast,
            &Reference
                .conv(ConvSpec::full1x1(), &x, d, &k, c.cout)
                .unwrap(),
        )?;
    }
    Ok(())
}

pub fn conv1x1_t<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    for d in shapes_1x1(c) {
        let z = rand_vec(&mut rng, d.len(), 1.0);
        let k = rand_vec(&mut rng, d.c * c.cout, 1.0);
        let fast = down(
            b,
            &b.conv_t(ConvSpec::full1x1(), &up(b, &z), d, &up(b, &k), c.cout)
                .unwrap(),
        );
        close(
            "conv1x1_t",
            &fast,
            &Reference
                .conv_t(ConvSpec::full1x1(), &z, d, &k, c.cout)
                .unwrap(),
        )?;
    }
    Ok(())
}

pub fn conv1x1_wgrad<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    for d in shapes_1x1(c) {
        let x = rand_vec(&mut rng, d.len(), 1.0);
        let dz = rand_vec(&mut rng, d.with_c(c.cout).len(), 1.0);
        let fast = down(
            b,
            &b.conv_wgrad(ConvSpec::full1x1(), &up(b, &x), d, &up(b, &dz), c.cout)
                .unwrap(),
        );
        let reff = Reference
            .conv_wgrad(ConvSpec::full1x1(), &x, d, &dz, c.cout)
            .unwrap();
        close("conv1x1_wgrad", &fast, &reff)?;
    }
    Ok(())
}

pub fn add_channel_bias<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let bias = rand_vec(&mut rng, c.d.c, 1.0);
    let fast = down(
        b,
        &b.add_channel_bias(&up(b, &x), c.d, &up(b, &bias)).unwrap(),
    );
    close(
        "add_channel_bias",
        &fast,
        &Reference.add_channel_bias(&x, c.d, &bias).unwrap(),
    )
}

pub fn channel_sum<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let fast = down(b, &b.channel_sum(&up(b, &x), c.d).unwrap());
    close(
        "channel_sum",
        &fast,
        &Reference.channel_sum(&x, c.d).unwrap(),
    )
}

pub fn tvnorm<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let (s, sh) = (
        rand_vec(&mut rng, c.d.c, 1.0),
        rand_vec(&mut rng, c.d.c, 1.0),
    );
    let fast = down(
        b,
        &b.tvnorm(&up(b, &x), c.d, &up(b, &s), &up(b, &sh)).unwrap(),
    );
    close(
        "tvnorm",
        &fast,
        &Reference.tvnorm(&x, c.d, &s, &sh).unwrap(),
    )
}

pub fn tvnorm_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let s = rand_vec(&mut rng, c.d.c, 1.0);
    let dy = rand_vec(&mut rng, c.d.len(), 1.0);
    let (fx, fs, fb) = b
        .tvnorm_vjp(&up(b, &x), c.d, &up(b, &s), &up(b, &dy))
        .unwrap();
    let (rx, rs, rb) = Reference.tvnorm_vjp(&x, c.d, &s, &dy).unwrap();
    close("tvnorm_vjp dx", &down(b, &fx), &rx)?;
    close("tvnorm_vjp ds", &down(b, &fs), &rs)?;
    close("tvnorm_vjp db", &down(b, &fb), &rb)
}

/// Batch-norm inputs with a per-channel offset, so that the mean matters.
fn bn_data(c: &Case, rng: &mut impl Rng) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut x = rand_vec(rng, c.d.len(), 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((*v + 0.5 * ((i / c.d.hw()) % c.d.c) as f64) as f32) as f64;
    }
    (x, rand_vec(rng, c.d.c, 1.0), rand_vec(rng, c.d.c, 1.0))
}

pub fn batchnorm_train<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let (x, g, be) = bn_data(c, &mut rng);
    let (fy, fst) = b
        .batchnorm_train(&up(b, &x), c.d, &up(b, &g), &up(b, &be))
        .unwrap();
    let (ry, rst) = Reference.batchnorm_train(&x, c.d, &g, &be).unwrap();
    close("batchnorm y", &down(b, &fy), &ry)?;
    close("batchnorm mean", &down(b, &fst.mean), &rst.mean)?;
    close("batchnorm var", &down(b, &fst.var), &rst.var)
}

pub fn batchnorm_eval<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let (x, g, be) = bn_data(c, &mut rng);
    let rm = rand_vec(&mut rng, c.d.c, 1.0);
    let rv: Vec<f64> = rand_vec(&mut rng, c.d.c, 1.0)
        .iter()
        .map(|v| v.abs() + 0.1)
        .collect();
    let fast = b
        .batchnorm_eval(
            &up(b, &x),
            c.d,
            &up(b, &g),
            &up(b, &be),
            &up(b, &rm),
            &up(b, &rv),
        )
        .unwrap();
    let reff = Reference
        .batchnorm_eval(&x, c.d, &g, &be, &rm, &rv)
        .unwrap();
    close("batchnorm_eval", &down(b, &fast), &reff)
}

pub fn batchnorm_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let (x, g, be) = bn_data(c, &mut rng);
    let dy = rand_vec(&mut rng, c.d.len(), 1.0);
    let (fxb, fgb) = (up(b, &x), up(b, &g));
    let (_, fst) = b.batchnorm_train(&fxb, c.d, &fgb, &up(b, &be)).unwrap();
    let (fx, fg, fb) = b.batchnorm_vjp(&fxb, c.d, &fgb, &fst, &up(b, &dy)).unwrap();
    let (_, rst) = Reference.batchnorm_train(&x, c.d, &g, &be).unwrap();
    let (rx, rg, rb) = Reference.batchnorm_vjp(&x, c.d, &g, &rst, &dy).unwrap();
    // dx = gamma / sigma * (projection of dy), which vanishes for one or two values per
    // channel: compare it on the scale of gamma / sigma * dy.
    let scale = rst
        .var
        .iter()
        .zip(&g)
        .map(|(v, g)| g.abs() / (v + 1e-5).sqrt())
        .fold(0.0, f64::max)
        * norm(&dy);
    close_scaled("batchnorm_vjp dx", &down(b, &fx), &rx, scale)?;
    close("batchnorm_vjp dgamma", &down(b, &fg), &rg)?;
    close("batchnorm_vjp dbeta", &down(b, &fb), &rb)
}

pub fn batchnorm_update_running<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let (x, g, be) = bn_data(c, &mut rng);
    let count = c.d.n * c.d.hw();
    let rm = rand_vec(&mut rng, c.d.c, 1.0);
    let rv: Vec<f64> = rand_vec(&mut rng, c.d.c, 1.0)
        .iter()
        .map(|v| v.abs())
        .collect();
    let (_, fst) = b
        .batchnorm_train(&up(b, &x), c.d, &up(b, &g), &up(b, &be))
        .unwrap();
    let (mut fm, mut fv) = (up(b, &rm), up(b, &rv));
    b.batchnorm_update_running(&mut fm, &mut fv, &fst, count)
        .unwrap();
    let (_, rst) = Reference.batchnorm_train(&x, c.d, &g, &be).unwrap();
    let (mut m, mut v) = (rm.clone(), rv.clone());
    Reference
        .batchnorm_update_running(&mut m, &mut v, &rst, count)
        .unwrap();
    close("running mean", &down(b, &fm), &m)?;
    close("running var", &down(b, &fv), &v)
}

pub fn activation<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 3.0);
    for act in ACTS {
        let fast = down(b, &b.activation(act, &up(b, &x)).unwrap());
        close("activation", &fast, &Reference.activation(act, &x).unwrap())?;
    }
    Ok(())
}

pub fn activation_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 3.0);
    let dy = rand_vec(&mut rng, c.d.len(), 1.0);
    for act in ACTS {
        let fast = down(b, &b.activation_vjp(act, &up(b, &x), &up(b, &dy)).unwrap());
        close(
            "activation_vjp",
            &fast,
            &Reference.activation_vjp(act, &x, &dy).unwrap(),
        )?;
    }
    Ok(())
}

pub fn avgpool2<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let fast = down(b, &b.avgpool2(&up(b, &x), c.d).unwrap());
    close("avgpool2", &fast, &Reference.avgpool2(&x, c.d).unwrap())
}

pub fn avgpool2_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let dy = rand_vec(&mut rng, c.d.pooled().len(), 1.0);
    let fast = down(b, &b.avgpool2_vjp(&up(b, &dy), c.d).unwrap());
    close(
        "avgpool2_vjp",
        &fast,
        &Reference.avgpool2_vjp(&dy, c.d).unwrap(),
    )
}

pub fn global_mean<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let fast = down(b, &b.global_mean(&up(b, &x), c.d).unwrap());
    close(
        "global_mean",
        &fast,
        &Reference.global_mean(&x, c.d).unwrap(),
    )
}

pub fn global_mean_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let dy = rand_vec(&mut rng, c.d.n * c.d.c, 1.0);
    let fast = down(b, &b.global_mean_vjp(&up(b, &dy), c.d).unwrap());
    close(
        "global_mean_vjp",
        &fast,
        &Reference.global_mean_vjp(&dy, c.d).unwrap(),
    )
}

pub fn split_channels<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let c1 = rng.random_range(0..=c.d.c);
    let (fa, fb) = b.split_channels(&up(b, &x), c.d, c1).unwrap();
    let (ra, rb) = Reference.split_channels(&x, c.d, c1).unwrap();
    prop_assert_eq!(down(b, &fa), ra);
    prop_assert_eq!(down(b, &fb), rb);
    Ok(())
}

pub fn concat_channels<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let c1 = rng.random_range(0..=c.d.c);
    let a = rand_vec(&mut rng, c.d.with_c(c1).len(), 1.0);
    let bb = rand_vec(&mut rng, c.d.with_c(c.d.c - c1).len(), 1.0);
    let fast = down(
        b,
        &b.concat_channels(&up(b, &a), &up(b, &bb), c.d, c1).unwrap(),
    );
    prop_assert_eq!(fast, Reference.concat_channels(&a, &bb, c.d, c1).unwrap());
    Ok(())
}

pub fn softmax_xent<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let (n, classes) = (c.d.n * c.d.h, c.d.c + 1);
    let logits = rand_vec(&mut rng, n * classes, 5.0);
    let labels: Vec<usize> = (0..n).map(|_| rng.random_range(0..classes)).collect();
    let (fl, fg) = b
        .softmax_xent(&up(b, &logits), n, classes, &labels)
        .unwrap();
    let (rl, rg) = Reference
        .softmax_xent(&logits, n, classes, &labels)
        .unwrap();
    close("softmax_xent loss", &[fl], &[rl])?;
    close("softmax_xent grad", &down(b, &fg), &rg)
}

/// Quantisation of f32-representable data is bit-exact, saturation included.
pub fn quantize<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let mut x = rand_vec(&mut rng, c.d.len(), 100.0);
    x[0] = 1e5; // beyond i32 at shift 16: saturates
    if x.len() > 1 {
        x[1] = -1e5;
    }
    for shift in [0, 8, 16] {
        let fast = b
            .idownload(&b.quantize(&up(b, &x), shift).unwrap())
            .unwrap();
        prop_assert_eq!(fast, Reference.quantize(&x, shift).unwrap());
    }
    Ok(())
}

/// `quantize(dequantize(q)) == q` for 24-bit `q`, and `dequantize(quantize(x))` is within half
/// a unit of the last place.
pub fn quantize_roundtrip<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let shift = 16;
    let q: Vec<i32> = (0..c.d.len())
        .map(|_| rng.random_range(-(1 << 24)..=(1 << 24)))
        .collect();
    let deq = b.dequantize(&b.iupload(&q).unwrap(), shift).unwrap();
    prop_assert_eq!(&down(b, &deq), &Reference.dequantize(&q, shift).unwrap());
    prop_assert_eq!(b.idownload(&b.quantize(&deq, shift).unwrap()).unwrap(), q);
    let x = rand_vec(&mut rng, c.d.len(), 1.0);
    let back = down(
        b,
        &b.dequantize(&b.quantize(&up(b, &x), shift).unwrap(), shift)
            .unwrap(),
    );
    for (v, w) in x.iter().zip(&back) {
        prop_assert!((v - w).abs() <= 0.5 / 65536.0 + 1e-12);
    }
    Ok(())
}

/// The integer update is bit-exact against the reference, wrapping included, and undoable.
pub fn fixed_update<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let len = c.d.len();
    let q0: Vec<i32> = (0..len).map(|_| rng.random()).collect();
    let q1: Vec<i32> = (0..len)
        .map(|_| rng.random_range(-(1 << 20)..(1 << 20)))
        .collect();
    let f = rand_vec(&mut rng, len, 2.0);
    let coef = 65536.0 * 0.25;
    let (b0, b1, bf) = (b.iupload(&q0).unwrap(), b.iupload(&q1).unwrap(), up(b, &f));
    let q2 = b.fixed_update(&[(2, &b0), (-1, &b1)], coef, &bf).unwrap();
    let reff = Reference
        .fixed_update(&[(2, &q0), (-1, &q1)], coef, &f)
        .unwrap();
    prop_assert_eq!(b.idownload(&q2).unwrap(), reff);
    // Leapfrog inverse: q1 = 2 q0 - q2 + round(coef f).
    let back = b.fixed_update(&[(2, &b0), (-1, &q2)], coef, &bf).unwrap();
    prop_assert_eq!(b.idownload(&back).unwrap(), q1);
    Ok(())
}

pub fn step_full3x3<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let d = c.d;
    let (y, yp) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.5);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fyp, fk, fs, fsh) = (up(b, &y), up(b, &yp), up(b, &k), up(b, &s), up(b, &sh));
    for act in ACTS {
        let fast = b
            .step_full3x3(
                &[(2.0, &fy), (-1.0, &fyp)],
                0.25,
                &fy,
                d,
                &fk,
                Norm::Tv { s: &fs, b: &fsh },
                act,
            )
            .unwrap();
        let reff = Reference
            .step_full3x3(
                &[(2.0, &y), (-1.0, &yp)],
                0.25,
                &y,
                d,
                &k,
                Norm::Tv { s: &s, b: &sh },
                act,
            )
            .unwrap();
        close("step_full3x3 tv", &down(b, &fast), &reff)?;
        let fast = b
            .step_full3x3(
                &[(1.0, &fy)],
                0.5,
                &fy,
                d,
                &fk,
                Norm::Shift { b: &fsh },
                act,
            )
            .unwrap();
        let reff = Reference
            .step_full3x3(&[(1.0, &y)], 0.5, &y, d, &k, Norm::Shift { b: &sh }, act)
            .unwrap();
        close("step_full3x3 shift", &down(b, &fast), &reff)?;
    }
    Ok(())
}

pub fn sym_full3x3_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let d = c.d;
    let (y, g) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.5);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fg, fk, fs, fsh) = (up(b, &y), up(b, &g), up(b, &k), up(b, &s), up(b, &sh));
    for act in ACTS {
        for tv in [true, false] {
            let (fnorm, rnorm) = if tv {
                (Norm::Tv { s: &fs, b: &fsh }, Norm::Tv { s: &s, b: &sh })
            } else {
                (Norm::Shift { b: &fsh }, Norm::Shift { b: &sh })
            };
            let fast = b.sym_full3x3_vjp(&fy, d, &fk, fnorm, act, &fg).unwrap();
            let reff = Reference
                .sym_full3x3_vjp(&y, d, &k, rnorm, act, &g)
                .unwrap();
            close("sym dy", &down(b, &fast.dy), &reff.dy)?;
            close("sym dk", &down(b, &fast.dk), &reff.dk)?;
            // Channel sums over the batch may cancel: compare on the scale of the terms.
            let scale = 0.1 * norm(&g);
            close_scaled("sym dshift", &down(b, &fast.dshift), &reff.dshift, scale)?;
            prop_assert_eq!(fast.dscale.is_some(), reff.dscale.is_some());
            if let (Some(fs), Some(rs)) = (fast.dscale, reff.dscale) {
                close_scaled("sym dscale", &down(b, &fs), &rs, scale)?;
            }
        }
    }
    Ok(())
}

/// The step and the VJP at the same `y` in one call: each result against the reference's (the
/// trait's default body), and bit for bit the backend's own two ops (its arithmetic is theirs).
pub fn step_full3x3_vjp<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let d = c.d;
    let (y, yp, g) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.5);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fyp, fg, fk) = (up(b, &y), up(b, &yp), up(b, &g), up(b, &k));
    let (fs, fsh) = (up(b, &s), up(b, &sh));
    let bits = |v: &B::Buf| down(b, v).into_iter().map(f64::to_bits).collect::<Vec<_>>();
    for act in ACTS {
        for tv in [true, false] {
            let (fnorm, rnorm) = if tv {
                (Norm::Tv { s: &fs, b: &fsh }, Norm::Tv { s: &s, b: &sh })
            } else {
                (Norm::Shift { b: &fsh }, Norm::Shift { b: &sh })
            };
            // The leapfrog rebuild, and f alone (the fixed-point rebuild).
            #[allow(clippy::type_complexity)]
            let cases: [(Vec<(f64, &B::Buf)>, Vec<(f64, &Vec<f64>)>, f64); 2] = [
                (
                    vec![(2.0, &fy), (-1.0, &fyp)],
                    vec![(2.0, &y), (-1.0, &yp)],
                    0.25,
                ),
                (vec![], vec![], 1.0),
            ];
            for (ft, rt, coef) in &cases {
                let (fast, v) = b
                    .step_full3x3_vjp(ft, *coef, &fy, d, &fk, fnorm, act, &fg)
                    .unwrap();
                let (reff, rv) = Reference
                    .step_full3x3_vjp(rt, *coef, &y, d, &k, rnorm, act, &g)
                    .unwrap();
                close("step_vjp step", &down(b, &fast), &reff)?;
                close("step_vjp dy", &down(b, &v.dy), &rv.dy)?;
                close("step_vjp dk", &down(b, &v.dk), &rv.dk)?;
                let scale = 0.1 * norm(&g);
                close_scaled("step_vjp dshift", &down(b, &v.dshift), &rv.dshift, scale)?;
                prop_assert_eq!(v.dscale.is_some(), tv);
                let alone = b.step_full3x3(ft, *coef, &fy, d, &fk, fnorm, act).unwrap();
                let va = b.sym_full3x3_vjp(&fy, d, &fk, fnorm, act, &fg).unwrap();
                prop_assert_eq!(bits(&fast), bits(&alone), "step differs from step_full3x3");
                prop_assert_eq!(bits(&v.dy), bits(&va.dy));
                prop_assert_eq!(bits(&v.dk), bits(&va.dk));
                prop_assert_eq!(bits(&v.dshift), bits(&va.dshift));
                if let (Some(a), Some(e)) = (&v.dscale, &va.dscale) {
                    prop_assert_eq!(bits(a), bits(e));
                }
            }
        }
    }
    Ok(())
}

/// Mismatched lengths and channel counts are `Err`, never a panic.
pub fn shape_errors<B: Backend>(b: &B, c: &Case) -> R {
    let d = c.d;
    let x = up(b, &vec![0.5; d.len()]);
    let short = up(b, &vec![0.5; d.len() - 1]);
    let k = up(b, &vec![0.1; c.cout * d.c * 9]);
    let cb = up(b, &vec![1.0; d.c]);
    prop_assert!(b.conv(ConvSpec::full3x3(), &short, d, &k, c.cout).is_err());
    prop_assert!(b.conv(ConvSpec::full3x3(), &x, d, &k, c.cout + 1).is_err());
    prop_assert!(b
        .conv_t(ConvSpec::full3x3(), &x, d, &k, c.cout + 1)
        .is_err());
    let dz_long = up(b, &vec![0.5; d.with_c(c.cout).len() + 1]);
    prop_assert!(b
        .conv_wgrad(ConvSpec::full3x3(), &x, d, &dz_long, c.cout)
        .is_err());
    prop_assert!(b.conv(ConvSpec::full1x1(), &x, d, &k, c.cout).is_err());
    prop_assert!(b
        .conv_wgrad(ConvSpec::full1x1(), &x, d, &dz_long, c.cout)
        .is_err());
    prop_assert!(b.lincomb(&[]).is_err());
    prop_assert!(b.lincomb(&[(1.0, &x), (1.0, &short)]).is_err());
    prop_assert!(b.add_channel_bias(&x, d.with_c(d.c + 1), &cb).is_err());
    let cb_long = up(b, &vec![1.0; d.c + 1]);
    prop_assert!(b.tvnorm(&x, d, &cb, &cb_long).is_err());
    prop_assert!(b.tvnorm_vjp(&x, d, &cb, &short).is_err());
    prop_assert!(b.batchnorm_train(&short, d, &cb, &cb).is_err());
    prop_assert!(b.activation_vjp(Activation::Tanh, &x, &short).is_err());
    prop_assert!(b.avgpool2_vjp(&x, d).is_err() || d.pooled().len() == d.len());
    prop_assert!(b.global_mean_vjp(&x, d).is_err() || d.hw() == 1);
    prop_assert!(b.split_channels(&x, d, d.c + 1).is_err());
    prop_assert!(b.concat_channels(&x, &x, d, d.c + 1).is_err());
    prop_assert!(b
        .softmax_xent(&x, d.n, d.c * d.hw(), &vec![0; d.n + 1])
        .is_err());
    let q = b.iupload(&vec![0; d.len() - 1]).unwrap();
    prop_assert!(b.fixed_update(&[(1, &q)], 1.0, &x).is_err());
    Ok(())
}

/// Reductions are bit-identical under one and two threads (fixed summation order).
pub fn deterministic_threads<B: Backend>(b: &B, c: &Case) -> R {
    let mut rng = c.rng();
    let d = Dims::new(c.d.n * 5, c.d.c, c.d.h, c.d.w);
    let (y, g) = (
        rand_vec(&mut rng, d.len(), 1.0),
        rand_vec(&mut rng, d.len(), 1.0),
    );
    let k = rand_vec(&mut rng, d.c * d.c * 9, 0.5);
    let (s, sh) = (rand_vec(&mut rng, d.c, 1.0), rand_vec(&mut rng, d.c, 0.5));
    let (fy, fg, fk, fs, fsh) = (up(b, &y), up(b, &g), up(b, &k), up(b, &s), up(b, &sh));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let r = b
                .sym_full3x3_vjp(
                    &fy,
                    d,
                    &fk,
                    Norm::Tv { s: &fs, b: &fsh },
                    Activation::Relu,
                    &fg,
                )
                .unwrap();
            let (_, st) = b.batchnorm_train(&fy, d, &fs, &fsh).unwrap();
            let (bx, bg, bb) = b.batchnorm_vjp(&fy, d, &fs, &st, &fg).unwrap();
            let mut all = Vec::new();
            for v in [
                &r.dy,
                &r.dk,
                r.dscale.as_ref().unwrap(),
                &r.dshift,
                &st.mean,
                &st.var,
                &bx,
                &bg,
                &bb,
            ] {
                all.extend(b.download_f32(v).unwrap().into_iter().map(f32::to_bits));
            }
            all.extend(
                b.download_f32(&b.conv_wgrad(ConvSpec::full1x1(), &fy, d, &fg, d.c).unwrap())
                    .unwrap()
                    .into_iter()
                    .map(f32::to_bits),
            );
            all
        })
    };
    prop_assert_eq!(run(1), run(2));
    prop_assert_eq!(run(2), run(3));
    Ok(())
}
