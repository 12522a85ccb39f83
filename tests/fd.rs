//! Finite-difference checks of every VJP of the f64 reference backend: for random `u`, `v`,
//! `<v, J^T u>` must match the central difference of `phi(x) = <u, F(x)>` along `v`.

mod common;

use common::{dot, norm, rand_vec};
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm};
use pdenet::Dims;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const EPS: f64 = 1e-6;
const TOL: f64 = 1e-6;
const B: Reference = Reference;

/// Small shapes: odd sizes, one channel, batch 1, a single pixel.
const SHAPES: [Dims; 4] = [
    Dims::new(2, 3, 5, 4),
    Dims::new(1, 1, 3, 3),
    Dims::new(3, 2, 1, 1),
    Dims::new(1, 4, 7, 2),
];

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `<v, jt_u>` against `(phi(x + eps v) - phi(x - eps v)) / (2 eps)` for three directions `v`.
fn check_vjp(
    what: &str,
    f: impl Fn(&[f64]) -> Vec<f64>,
    x: &[f64],
    u: &[f64],
    jt_u: &[f64],
    rng: &mut ChaCha8Rng,
) {
    assert_eq!(jt_u.len(), x.len(), "{what}: gradient length");
    let fx = f(x);
    assert_eq!(fx.len(), u.len(), "{what}: output length");
    for _ in 0..3 {
        let v = rand_vec(rng, x.len(), 1.0);
        let shifted = |s: f64| -> Vec<f64> { x.iter().zip(&v).map(|(a, b)| a + s * b).collect() };
        let fd = (dot(u, &f(&shifted(EPS))) - dot(u, &f(&shifted(-EPS)))) / (2.0 * EPS);
        let an = dot(&v, jt_u);
        // Scale: Cauchy-Schwarz bound of <v, J^T u>, plus the rounding of phi over 2 eps.
        let scale = norm(&v) * norm(jt_u) + 1e-15 * norm(u) * norm(&fx) / EPS;
        assert!(
            (fd - an).abs() <= TOL * scale.max(1e-12),
            "{what}: finite difference {fd} vs vjp {an} (scale {scale})"
        );
    }
}

#[test]
fn conv3x3_vjps() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(i as u64);
        let cout = 1 + i % 3;
        let od = d.with_c(cout);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let k = rand_vec(&mut r, cout * d.c * 9, 1.0);
        let u = rand_vec(&mut r, od.len(), 1.0);
        let jt = B.conv_t(ConvSpec::full3x3(), &u, od, &k, d.c).unwrap();
        check_vjp(
            "conv3x3 dx",
            |x| {
                B.conv(ConvSpec::full3x3(), &x.to_vec(), d, &k, cout)
                    .unwrap()
            },
            &x,
            &u,
            &jt,
            &mut r,
        );
        let jt = B.conv_wgrad(ConvSpec::full3x3(), &x, d, &u, cout).unwrap();
        check_vjp(
            "conv3x3 dK",
            |k| {
                B.conv(ConvSpec::full3x3(), &x, d, &k.to_vec(), cout)
                    .unwrap()
            },
            &k,
            &u,
            &jt,
            &mut r,
        );
        // The transpose as a map of its own: its VJPs are conv3x3 and a weight gradient.
        let z = rand_vec(&mut r, od.len(), 1.0);
        let ux = rand_vec(&mut r, d.len(), 1.0);
        let jt = B.conv(ConvSpec::full3x3(), &ux, d, &k, cout).unwrap();
        check_vjp(
            "conv3x3_t dz",
            |z| {
                B.conv_t(ConvSpec::full3x3(), &z.to_vec(), od, &k, d.c)
                    .unwrap()
            },
            &z,
            &ux,
            &jt,
            &mut r,
        );
        let jt = B.conv_wgrad(ConvSpec::full3x3(), &ux, d, &z, cout).unwrap();
        check_vjp(
            "conv3x3_t dK",
            |k| {
                B.conv_t(ConvSpec::full3x3(), &z, od, &k.to_vec(), d.c)
                    .unwrap()
            },
            &k,
            &ux,
            &jt,
            &mut r,
        );
    }
}

#[test]
fn conv1x1_vjps() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(10 + i as u64);
        let cout = 1 + (i + 1) % 4;
        let od = d.with_c(cout);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let k = rand_vec(&mut r, cout * d.c, 1.0);
        let u = rand_vec(&mut r, od.len(), 1.0);
        let jt = B.conv_t(ConvSpec::full1x1(), &u, od, &k, d.c).unwrap();
        check_vjp(
            "conv1x1 dx",
            |x| {
                B.conv(ConvSpec::full1x1(), &x.to_vec(), d, &k, cout)
                    .unwrap()
            },
            &x,
            &u,
            &jt,
            &mut r,
        );
        let jt = B.conv_wgrad(ConvSpec::full1x1(), &x, d, &u, cout).unwrap();
        check_vjp(
            "conv1x1 dK",
            |k| {
                B.conv(ConvSpec::full1x1(), &x, d, &k.to_vec(), cout)
                    .unwrap()
            },
            &k,
            &u,
            &jt,
            &mut r,
        );
        let z = rand_vec(&mut r, od.len(), 1.0);
        let ux = rand_vec(&mut r, d.len(), 1.0);
        let jt = B.conv(ConvSpec::full1x1(), &ux, d, &k, cout).unwrap();
        check_vjp(
            "conv1x1_t dz",
            |z| {
                B.conv_t(ConvSpec::full1x1(), &z.to_vec(), od, &k, d.c)
                    .unwrap()
            },
            &z,
            &ux,
            &jt,
            &mut r,
        );
    }
}

#[test]
fn conv_adjointness() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(20 + i as u64);
        let cout = 2;
        let od = d.with_c(cout);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let z = rand_vec(&mut r, od.len(), 1.0);
        for (k, lhs, rhs) in [
            {
                let k = rand_vec(&mut r, cout * d.c * 9, 1.0);
                let l = dot(&B.conv(ConvSpec::full3x3(), &x, d, &k, cout).unwrap(), &z);
                let rr = dot(&x, &B.conv_t(ConvSpec::full3x3(), &z, od, &k, d.c).unwrap());
                (k, l, rr)
            },
            {
                let k = rand_vec(&mut r, cout * d.c, 1.0);
                let l = dot(&B.conv(ConvSpec::full1x1(), &x, d, &k, cout).unwrap(), &z);
                let rr = dot(&x, &B.conv_t(ConvSpec::full1x1(), &z, od, &k, d.c).unwrap());
                (k, l, rr)
            },
        ] {
            let scale = norm(&x) * norm(&z) * norm(&k);
            assert!(
                (lhs - rhs).abs() <= 1e-12 * scale,
                "<conv x, z> {lhs} vs <x, convT z> {rhs}"
            );
        }
    }
}

#[test]
fn tvnorm_vjp() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(30 + i as u64);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let (s, b) = (rand_vec(&mut r, d.c, 1.0), rand_vec(&mut r, d.c, 1.0));
        let u = rand_vec(&mut r, d.len(), 1.0);
        let (dx, ds, db) = B.tvnorm_vjp(&x, d, &s, &u).unwrap();
        check_vjp(
            "tvnorm dx",
            |x| B.tvnorm(&x.to_vec(), d, &s, &b).unwrap(),
            &x,
            &u,
            &dx,
            &mut r,
        );
        check_vjp(
            "tvnorm ds",
            |s| B.tvnorm(&x, d, &s.to_vec(), &b).unwrap(),
            &s,
            &u,
            &ds,
            &mut r,
        );
        check_vjp(
            "tvnorm db",
            |b| B.tvnorm(&x, d, &s, &b.to_vec()).unwrap(),
            &b,
            &u,
            &db,
            &mut r,
        );
    }
}

#[test]
fn batchnorm_vjp() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(40 + i as u64);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let (g, b) = (rand_vec(&mut r, d.c, 1.0), rand_vec(&mut r, d.c, 1.0));
        let u = rand_vec(&mut r, d.len(), 1.0);
        let (_, st) = B.batchnorm_train(&x, d, &g, &b).unwrap();
        let (dx, dg, db) = B.batchnorm_vjp(&x, d, &g, &st, &u).unwrap();
        let y = |x: &[f64], g: &[f64], b: &[f64]| {
            B.batchnorm_train(&x.to_vec(), d, &g.to_vec(), &b.to_vec())
                .unwrap()
                .0
        };
        check_vjp("batchnorm dx", |x| y(x, &g, &b), &x, &u, &dx, &mut r);
        check_vjp("batchnorm dgamma", |g| y(&x, g, &b), &g, &u, &dg, &mut r);
        check_vjp("batchnorm dbeta", |b| y(&x, &g, b), &b, &u, &db, &mut r);
    }
}

#[test]
fn activation_vjps() {
    let mut r = rng(50);
    // Away from relu's kink at 0: |x| >= 0.1, far beyond the step eps.
    let x: Vec<f64> = rand_vec(&mut r, 60, 2.0)
        .into_iter()
        .map(|v| {
            if v.abs() < 0.1 {
                v + 0.2_f64.copysign(v)
            } else {
                v
            }
        })
        .collect();
    let u = rand_vec(&mut r, x.len(), 1.0);
    for act in [Activation::Relu, Activation::Tanh, Activation::Logcosh] {
        let jt = B.activation_vjp(act, &x, &u).unwrap();
        check_vjp(
            "activation",
            |x| B.activation(act, &x.to_vec()).unwrap(),
            &x,
            &u,
            &jt,
            &mut r,
        );
    }
}

#[test]
fn pooling_vjps() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(60 + i as u64);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let u = rand_vec(&mut r, d.pooled().len(), 1.0);
        let jt = B.avgpool2_vjp(&u, d).unwrap();
        check_vjp(
            "avgpool2",
            |x| B.avgpool2(&x.to_vec(), d).unwrap(),
            &x,
            &u,
            &jt,
            &mut r,
        );
        let u = rand_vec(&mut r, d.n * d.c, 1.0);
        let jt = B.global_mean_vjp(&u, d).unwrap();
        check_vjp(
            "global_mean",
            |x| B.global_mean(&x.to_vec(), d).unwrap(),
            &x,
            &u,
            &jt,
            &mut r,
        );
    }
}

#[test]
fn channel_bias_vjp() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(70 + i as u64);
        let x = rand_vec(&mut r, d.len(), 1.0);
        let b = rand_vec(&mut r, d.c, 1.0);
        let u = rand_vec(&mut r, d.len(), 1.0);
        let jt = B.channel_sum(&u, d).unwrap();
        check_vjp(
            "bias db",
            |b| B.add_channel_bias(&x, d, &b.to_vec()).unwrap(),
            &b,
            &u,
            &jt,
            &mut r,
        );
        check_vjp(
            "bias dx",
            |x| B.add_channel_bias(&x.to_vec(), d, &b).unwrap(),
            &x,
            &u,
            &u,
            &mut r,
        );
    }
}

#[test]
fn softmax_xent_grad() {
    let mut r = rng(80);
    for (n, classes) in [(1, 2), (3, 5), (4, 10)] {
        let logits = rand_vec(&mut r, n * classes, 4.0);
        let labels: Vec<usize> = (0..n).map(|i| (3 * i + 1) % classes).collect();
        let (_, g) = B.softmax_xent(&logits, n, classes, &labels).unwrap();
        let loss = |l: &[f64]| vec![B.softmax_xent(&l.to_vec(), n, classes, &labels).unwrap().0];
        check_vjp("softmax_xent", loss, &logits, &[1.0], &g, &mut r);
    }
}

#[test]
fn split_concat_vjps() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        let mut r = rng(90 + i as u64);
        let c1 = d.c / 2;
        let x = rand_vec(&mut r, d.len(), 1.0);
        let (ua, ub) = (
            rand_vec(&mut r, d.with_c(c1).len(), 1.0),
            rand_vec(&mut r, d.with_c(d.c - c1).len(), 1.0),
        );
        // split's VJP is concat ...
        let u: Vec<f64> = ua.iter().chain(&ub).copied().collect();
        let jt = B.concat_channels(&ua, &ub, d, c1).unwrap();
        let split = |x: &[f64]| {
            let (a, b) = B.split_channels(&x.to_vec(), d, c1).unwrap();
            a.into_iter().chain(b).collect::<Vec<f64>>()
        };
        check_vjp("split", split, &x, &u, &jt, &mut r);
        // ... and concat's is split.
        let ux = rand_vec(&mut r, d.len(), 1.0);
        let (ja, jb) = B.split_channels(&ux, d, c1).unwrap();
        let jt: Vec<f64> = ja.into_iter().chain(jb).collect();
        let ab: Vec<f64> = x.clone();
        let na = d.with_c(c1).len();
        let concat = |ab: &[f64]| {
            B.concat_channels(&ab[..na].to_vec(), &ab[na..].to_vec(), d, c1)
                .unwrap()
        };
        check_vjp("concat", concat, &ab, &ux, &jt, &mut r);
    }
}

/// `f(y) = -K^T sigma(N(K y))` through the trait's default composition.
fn sym_forward(
    y: &[f64],
    d: Dims,
    k: &[f64],
    s: Option<&[f64]>,
    b: &[f64],
    act: Activation,
) -> Vec<f64> {
    let (k, b) = (k.to_vec(), b.to_vec());
    let zero = vec![0.0; d.len()];
    let s = s.map(|s| s.to_vec());
    let norm = match &s {
        Some(s) => Norm::Tv { s, b: &b },
        None => Norm::Shift { b: &b },
    };
    // step with terms 0 * y and coef 1 is exactly f(y).
    B.step_full3x3(&[(0.0, &zero)], 1.0, &y.to_vec(), d, &k, norm, act)
        .unwrap()
}

#[test]
fn sym_full3x3_vjp() {
    for (i, d) in SHAPES.iter().copied().enumerate() {
        for act in [Activation::Tanh, Activation::Logcosh] {
            for tv in [true, false] {
                let mut r = rng(100 + i as u64);
                let y = rand_vec(&mut r, d.len(), 1.0);
                let k = rand_vec(&mut r, d.c * d.c * 9, 0.5);
                let (s, b) = (rand_vec(&mut r, d.c, 1.0), rand_vec(&mut r, d.c, 0.5));
                let g = rand_vec(&mut r, d.len(), 1.0);
                let sv = tv.then_some(&s[..]);
                let norm = if tv {
                    Norm::Tv { s: &s, b: &b }
                } else {
                    Norm::Shift { b: &b }
                };
                let grads = B.sym_full3x3_vjp(&y, d, &k, norm, act, &g).unwrap();
                check_vjp(
                    "sym dy",
                    |y| sym_forward(y, d, &k, sv, &b, act),
                    &y,
                    &g,
                    &grads.dy,
                    &mut r,
                );
                check_vjp(
                    "sym dK",
                    |k| sym_forward(&y, d, k, sv, &b, act),
                    &k,
                    &g,
                    &grads.dk,
                    &mut r,
                );
                check_vjp(
                    "sym dshift",
                    |b| sym_forward(&y, d, &k, sv, b, act),
                    &b,
                    &g,
                    &grads.dshift,
                    &mut r,
                );
                match grads.dscale {
                    Some(ds) => {
                        assert!(tv);
                        check_vjp(
                            "sym dscale",
                            |s| sym_forward(&y, d, &k, Some(s), &b, act),
                            &s,
                            &g,
                            &ds,
                            &mut r,
                        );
                    }
                    None => assert!(!tv, "tvNorm must return a scale gradient"),
                }
            }
        }
    }
}

#[test]
fn reference_rejects_bad_split_point() {
    let d = Dims::new(1, 2, 2, 2);
    let x = vec![0.0; d.len()];
    assert!(B.split_channels(&x, d, 3).is_err());
    assert!(B.concat_channels(&x, &x, d, 3).is_err());
}
