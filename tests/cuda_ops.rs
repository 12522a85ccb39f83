//! Every `Backend` op of the CUDA backend against the f64 reference on random inputs, the
//! fused step against the default composition, determinism (bit-identical repeats) and shape
//! errors. Without a usable GPU each test prints `SKIP: <reason>` and passes.
//!
//! The comparison helpers are generic over `B: Backend`, so they can be shared with other
//! backends later.

use pdenet::backend::cuda::Cuda;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm, Precision};
use pdenet::{Dims, Error};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

fn cuda() -> Option<Cuda> {
    match Cuda::try_new() {
        Ok(c) => Some(c),
        Err(e) => {
            pdenet::backend::cuda::report_skip(e);
            None
        }
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Random values in [-scale, scale), rounded to f32 so both backends see the same numbers.
fn rand_vec(r: &mut ChaCha8Rng, len: usize, scale: f64) -> Vec<f64> {
    (0..len)
        .map(|_| (r.random_range(-1.0..1.0) * scale) as f32 as f64)
        .collect()
}

/// ||a - b|| / ||b|| (absolute when b is zero).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    let e = rel_err(got, want);
    assert!(e <= TOL, "{what}: relative error {e:.3e} > {TOL:.0e}");
}

/// tvNorm (scale `s`, shift `b`) or shift-only, on the device and on the reference.
fn norms<'a, B: Backend>(
    tv: bool,
    s: &'a Both<B>,
    b: &'a Both<B>,
) -> (Norm<'a, B::Buf>, Norm<'a, Vec<f64>>) {
    if tv {
        let dev = Norm::Tv {
            s: &s.dev,
            b: &b.dev,
        };
        (
            dev,
            Norm::Tv {
                s: &s.host,
                b: &b.host,
            },
        )
    } else {
        (Norm::Shift { b: &b.dev }, Norm::Shift { b: &b.host })
    }
}

/// A test input held on the backend under test and on the reference.
struct Both<B: Backend> {
    dev: B::Buf,
    host: Vec<f64>,
}

fn both<B: Backend>(b: &B, host: Vec<f64>) -> Both<B> {
    Both {
        dev: b.upload(&host).unwrap(),
        host,
    }
}

fn check<B: Backend>(b: &B, what: &str, got: &B::Buf, want: &[f64]) {
    assert_eq!(b.buf_len(got), want.len(), "{what}: length");
    assert_close(what, &b.download(got).unwrap(), want);
}

/// Shapes covering batch 1, one channel, odd sizes, dense features and channel counts that
/// straddle the 32 / 64 channel tiles.
fn shapes() -> Vec<(Dims, usize)> {
    vec![
        (Dims::new(1, 1, 1, 1), 1),
        (Dims::new(1, 1, 5, 3), 1),
        (Dims::new(2, 3, 7, 5), 5),
        (Dims::new(1, 4, 8, 8), 33),
        (Dims::new(3, 33, 6, 7), 40),
        (Dims::new(2, 16, 9, 11), 70),
        (Dims::new(2, 70, 4, 3), 16),
        (Dims::new(5, 7, 1, 1), 9),
        (Dims::new(1, 2, 31, 17), 3),
    ]
}

#[test]
fn memory_roundtrip_and_linear_algebra() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(1);
    for len in [0usize, 1, 7, 1000] {
        let x = both(&c, rand_vec(&mut g, len, 1.0));
        assert_eq!(c.download(&x.dev).unwrap(), x.host);
        assert_eq!(c.download(&c.copy(&x.dev).unwrap()).unwrap(), x.host);
        assert_eq!(c.download(&c.zeros(len).unwrap()).unwrap(), vec![0.0; len]);
        let xs: Vec<Both<Cuda>> = (0..6)
            .map(|_| both(&c, rand_vec(&mut g, len, 1.0)))
            .collect();
        for nt in 1..=6 {
            let coefs: Vec<f64> = (0..nt).map(|i| 0.5 - i as f64 * 0.3).collect();
            let tc: Vec<(f64, &_)> = (0..nt).map(|i| (coefs[i], &xs[i].dev)).collect();
            let tr: Vec<(f64, &_)> = (0..nt).map(|i| (coefs[i], &xs[i].host)).collect();
            let want = r.lincomb(&tr).unwrap();
            check(&c, "lincomb", &c.lincomb(&tc).unwrap(), &want);
        }
        let mut y = c.copy(&xs[0].dev).unwrap();
        let mut yr = xs[0].host.clone();
        c.axpy(-1.5, &xs[1].dev, &mut y).unwrap();
        r.axpy(-1.5, &xs[1].host, &mut yr).unwrap();
        check(&c, "axpy", &y, &yr);
    }
    let q: Vec<i32> = vec![i32::MIN, -5, 0, 7, i32::MAX];
    assert_eq!(c.idownload(&c.iupload(&q).unwrap()).unwrap(), q);
}

#[test]
fn conv3x3_family() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(2);
    for (d, cout) in shapes() {
        let x = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let k = both(
            &c,
            rand_vec(&mut g, cout * d.c * 9, 1.0 / (d.c as f64 * 9.0).sqrt()),
        );
        let od = d.with_c(cout);
        let z = both(&c, rand_vec(&mut g, od.len(), 1.0));
        let what = format!("{d} -> {cout}");
        check(
            &c,
            &format!("conv3x3 {what}"),
            &c.conv(ConvSpec::full3x3(), &x.dev, d, &k.dev, cout)
                .unwrap(),
            &r.conv(ConvSpec::full3x3(), &x.host, d, &k.host, cout)
                .unwrap(),
        );
        check(
            &c,
            &format!("conv3x3_t {what}"),
            &c.conv_t(ConvSpec::full3x3(), &z.dev, od, &k.dev, d.c)
                .unwrap(),
            &r.conv_t(ConvSpec::full3x3(), &z.host, od, &k.host, d.c)
                .unwrap(),
        );
        check(
            &c,
            &format!("conv3x3_wgrad {what}"),
            &c.conv_wgrad(ConvSpec::full3x3(), &x.dev, d, &z.dev, cout)
                .unwrap(),
            &r.conv_wgrad(ConvSpec::full3x3(), &x.host, d, &z.host, cout)
                .unwrap(),
        );
    }
}

#[test]
fn conv1x1_family() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(3);
    for (d, cout) in shapes() {
        let x = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let k = both(&c, rand_vec(&mut g, cout * d.c, 1.0 / (d.c as f64).sqrt()));
        let od = d.with_c(cout);
        let z = both(&c, rand_vec(&mut g, od.len(), 1.0));
        let what = format!("{d} -> {cout}");
        check(
            &c,
            &format!("conv1x1 {what}"),
            &c.conv(ConvSpec::full1x1(), &x.dev, d, &k.dev, cout)
                .unwrap(),
            &r.conv(ConvSpec::full1x1(), &x.host, d, &k.host, cout)
                .unwrap(),
        );
        check(
            &c,
            &format!("conv1x1_t {what}"),
            &c.conv_t(ConvSpec::full1x1(), &z.dev, od, &k.dev, d.c)
                .unwrap(),
            &r.conv_t(ConvSpec::full1x1(), &z.host, od, &k.host, d.c)
                .unwrap(),
        );
        check(
            &c,
            &format!("conv1x1_wgrad {what}"),
            &c.conv_wgrad(ConvSpec::full1x1(), &x.dev, d, &z.dev, cout)
                .unwrap(),
            &r.conv_wgrad(ConvSpec::full1x1(), &x.host, d, &z.host, cout)
                .unwrap(),
        );
    }
}

/// `v` as the tensor cores read it: tf32 rounds to nearest with ties away (cvt.rna), bf16 and
/// f16 to nearest even (cvt.rn).
fn round_for(p: Precision, v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|&x| {
            let f = x as f32;
            let u = f.to_bits();
            let r = match p {
                Precision::F32 => f,
                Precision::Tf32 => f32::from_bits(u.wrapping_add(0x1000) & 0xffff_e000),
                Precision::Bf16 => {
                    f32::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1))) & 0xffff_0000)
                }
                Precision::F16 => half::f16::from_f32(f).to_f32(),
            };
            r as f64
        })
        .collect()
}

/// The tensor-core convolutions equal the reference run on the rounded operands (so the check
/// is as tight as f32's): this pins down the mma fragment layouts exactly.
#[test]
fn tensor_core_convolutions() {
    if cuda().is_none() {
        return;
    }
    let r = Reference;
    // Every precision, pipelined and unpipelined tiles (f32: exact reference, no rounding).
    let runs = Precision::ALL
        .into_iter()
        .flat_map(|p| [(p, true), (p, false)]);
    for (p, pipelined) in runs {
        let c = Cuda::try_new_with(p).unwrap().with_pipelined(pipelined);
        let mut g = rng(21);
        let mut shp = shapes();
        shp.push((Dims::new(4, 8, 32, 32), 8)); // the split-K weight gradient
        for (d, cout) in shp {
            let od = d.with_c(cout);
            for taps in [9usize, 1] {
                let x = rand_vec(&mut g, d.len(), 1.0);
                let k = rand_vec(&mut g, cout * d.c * taps, 0.5);
                let z = rand_vec(&mut g, od.len(), 1.0);
                let (xr, kr, zr) = (round_for(p, &x), round_for(p, &k), round_for(p, &z));
                let (xd, kd, zd) = (
                    c.upload(&x).unwrap(),
                    c.upload(&k).unwrap(),
                    c.upload(&z).unwrap(),
                );
                let what = format!(
                    "{} pipelined={pipelined} taps={taps} {d} -> {cout}",
                    p.name()
                );
                let (fwd, tr, wg) = if taps == 9 {
                    (
                        c.conv(ConvSpec::full3x3(), &xd, d, &kd, cout).unwrap(),
                        c.conv_t(ConvSpec::full3x3(), &zd, od, &kd, d.c).unwrap(),
                        c.conv_wgrad(ConvSpec::full3x3(), &xd, d, &zd, cout)
                            .unwrap(),
                    )
                } else {
                    (
                        c.conv(ConvSpec::full1x1(), &xd, d, &kd, cout).unwrap(),
                        c.conv_t(ConvSpec::full1x1(), &zd, od, &kd, d.c).unwrap(),
                        c.conv_wgrad(ConvSpec::full1x1(), &xd, d, &zd, cout)
                            .unwrap(),
                    )
                };
                let (wf, wt, ww) = if taps == 9 {
                    (
                        r.conv(ConvSpec::full3x3(), &xr, d, &kr, cout).unwrap(),
                        r.conv_t(ConvSpec::full3x3(), &zr, od, &kr, d.c).unwrap(),
                        r.conv_wgrad(ConvSpec::full3x3(), &xr, d, &zr, cout)
                            .unwrap(),
                    )
                } else {
                    (
                        r.conv(ConvSpec::full1x1(), &xr, d, &kr, cout).unwrap(),
                        r.conv_t(ConvSpec::full1x1(), &zr, od, &kr, d.c).unwrap(),
                        r.conv_wgrad(ConvSpec::full1x1(), &xr, d, &zr, cout)
                            .unwrap(),
                    )
                };
                check(&c, &format!("fwd {what}"), &fwd, &wf);
                check(&c, &format!("transpose {what}"), &tr, &wt);
                check(&c, &format!("wgrad {what}"), &wg, &ww);
            }
        }
    }
}

/// The fused step in tf32 / bf16 / f16 against the f64 composition, within the operands'
/// rounding (f16's is tf32's).
#[test]
fn tensor_core_fused_step() {
    if cuda().is_none() {
        return;
    }
    let r = Reference;
    let runs = [
        (Precision::Tf32, 3e-3),
        (Precision::Bf16, 2e-2),
        (Precision::F16, 3e-3),
    ]
    .into_iter()
    .flat_map(|(p, tol)| [(p, tol, true), (p, tol, false)]);
    for (p, tol, pipelined) in runs {
        let c = Cuda::try_new_with(p).unwrap().with_pipelined(pipelined);
        let mut g = rng(22);
        for d in [
            Dims::new(2, 3, 7, 5),
            Dims::new(2, 32, 8, 8),
            Dims::new(2, 70, 4, 3),
        ] {
            let y = both(&c, rand_vec(&mut g, d.len(), 1.0));
            let yp = both(&c, rand_vec(&mut g, d.len(), 1.0));
            let k = both(
                &c,
                rand_vec(&mut g, d.c * d.c * 9, 1.0 / (d.c as f64 * 9.0).sqrt()),
            );
            let s = both(&c, rand_vec(&mut g, d.c, 1.5));
            let b = both(&c, rand_vec(&mut g, d.c, 0.3));
            let got = c
                .step_full3x3(
                    &[(2.0, &y.dev), (-1.0, &yp.dev)],
                    0.25,
                    &y.dev,
                    d,
                    &k.dev,
                    Norm::Tv {
                        s: &s.dev,
                        b: &b.dev,
                    },
                    Activation::Tanh,
                )
                .unwrap();
            let want = r
                .step_full3x3(
                    &[(2.0, &y.host), (-1.0, &yp.host)],
                    0.25,
                    &y.host,
                    d,
                    &k.host,
                    Norm::Tv {
                        s: &s.host,
                        b: &b.host,
                    },
                    Activation::Tanh,
                )
                .unwrap();
            let e = rel_err(&c.download(&got).unwrap(), &want);
            let what = format!("{} pipelined={pipelined} fused step {d}", p.name());
            println!("{what}: relative error {e:.2e}");
            assert!(e <= tol, "{what}: {e:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn large_weight_gradient_uses_splits() {
    // Enough pixels for the split-K path and its second reduction pass.
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(4);
    let d = Dims::new(4, 8, 32, 32);
    let x = both(&c, rand_vec(&mut g, d.len(), 1.0));
    let z = both(&c, rand_vec(&mut g, d.len(), 1.0));
    check(
        &c,
        "conv3x3_wgrad split",
        &c.conv_wgrad(ConvSpec::full3x3(), &x.dev, d, &z.dev, 8)
            .unwrap(),
        &r.conv_wgrad(ConvSpec::full3x3(), &x.host, d, &z.host, 8)
            .unwrap(),
    );
    check(
        &c,
        "conv1x1_wgrad split",
        &c.conv_wgrad(ConvSpec::full1x1(), &x.dev, d, &z.dev, 8)
            .unwrap(),
        &r.conv_wgrad(ConvSpec::full1x1(), &x.host, d, &z.host, 8)
            .unwrap(),
    );
}

#[test]
fn channel_ops_and_norms() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(5);
    for (d, _) in shapes() {
        let x = both(&c, rand_vec(&mut g, d.len(), 2.0));
        let dy = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let s = both(&c, rand_vec(&mut g, d.c, 1.5));
        let b = both(&c, rand_vec(&mut g, d.c, 0.5));
        let w = format!("{d}");
        check(
            &c,
            &format!("add_channel_bias {w}"),
            &c.add_channel_bias(&x.dev, d, &b.dev).unwrap(),
            &r.add_channel_bias(&x.host, d, &b.host).unwrap(),
        );
        check(
            &c,
            &format!("channel_sum {w}"),
            &c.channel_sum(&dy.dev, d).unwrap(),
            &r.channel_sum(&dy.host, d).unwrap(),
        );
        check(
            &c,
            &format!("tvnorm {w}"),
            &c.tvnorm(&x.dev, d, &s.dev, &b.dev).unwrap(),
            &r.tvnorm(&x.host, d, &s.host, &b.host).unwrap(),
        );
        let (dx, ds, db) = c.tvnorm_vjp(&x.dev, d, &s.dev, &dy.dev).unwrap();
        let (rdx, rds, rdb) = r.tvnorm_vjp(&x.host, d, &s.host, &dy.host).unwrap();
        check(&c, &format!("tvnorm_vjp dx {w}"), &dx, &rdx);
        check(&c, &format!("tvnorm_vjp ds {w}"), &ds, &rds);
        check(&c, &format!("tvnorm_vjp db {w}"), &db, &rdb);

        // Batch norm (offset data so that the mean matters).
        let xb = both(&c, x.host.iter().map(|v| v + 0.75).collect());
        let (y, st) = c.batchnorm_train(&xb.dev, d, &s.dev, &b.dev).unwrap();
        let (ry, rst) = r.batchnorm_train(&xb.host, d, &s.host, &b.host).unwrap();
        check(
            &c,
            &format!("batchnorm_train mean {w}"),
            &st.mean,
            &rst.mean,
        );
        check(&c, &format!("batchnorm_train var {w}"), &st.var, &rst.var);
        if d.n * d.hw() > 1 {
            // With one value per channel the output is (0/sqrt(eps)) * gamma + beta: rounding-bound.
            check(&c, &format!("batchnorm_train y {w}"), &y, &ry);
        }
        let (dx, dgm, dbt) = c.batchnorm_vjp(&xb.dev, d, &s.dev, &st, &dy.dev).unwrap();
        let (rdx, rdgm, rdbt) = r
            .batchnorm_vjp(&xb.host, d, &s.host, &rst, &dy.host)
            .unwrap();
        if d.n * d.hw() > 1 {
            check(&c, &format!("batchnorm_vjp dx {w}"), &dx, &rdx);
            check(&c, &format!("batchnorm_vjp dgamma {w}"), &dgm, &rdgm);
        }
        check(&c, &format!("batchnorm_vjp dbeta {w}"), &dbt, &rdbt);
        let rm = both(&c, rand_vec(&mut g, d.c, 1.0));
        let rv = both(
            &c,
            rand_vec(&mut g, d.c, 1.0)
                .iter()
                .map(|v| v.abs() + 0.1)
                .collect(),
        );
        check(
            &c,
            &format!("batchnorm_eval {w}"),
            &c.batchnorm_eval(&xb.dev, d, &s.dev, &b.dev, &rm.dev, &rv.dev)
                .unwrap(),
            &r.batchnorm_eval(&xb.host, d, &s.host, &b.host, &rm.host, &rv.host)
                .unwrap(),
        );
        let (mut cm, mut cv) = (c.copy(&rm.dev).unwrap(), c.copy(&rv.dev).unwrap());
        let (mut hm, mut hv) = (rm.host.clone(), rv.host.clone());
        let count = d.n * d.hw();
        c.batchnorm_update_running(&mut cm, &mut cv, &st, count)
            .unwrap();
        r.batchnorm_update_running(&mut hm, &mut hv, &rst, count)
            .unwrap();
        check(&c, &format!("running mean {w}"), &cm, &hm);
        check(&c, &format!("running var {w}"), &cv, &hv);
    }
}

#[test]
fn activations() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(6);
    let mut xs = rand_vec(&mut g, 999, 4.0);
    xs.extend([0.0, 30.0, -30.0, 1e-8, -1e-8]);
    let x = both(&c, xs);
    let dy = both(&c, rand_vec(&mut g, x.host.len(), 1.0));
    for act in [Activation::Relu, Activation::Tanh, Activation::Logcosh] {
        check(
            &c,
            &format!("{act:?}"),
            &c.activation(act, &x.dev).unwrap(),
            &r.activation(act, &x.host).unwrap(),
        );
        check(
            &c,
            &format!("{act:?} vjp"),
            &c.activation_vjp(act, &x.dev, &dy.dev).unwrap(),
            &r.activation_vjp(act, &x.host, &dy.host).unwrap(),
        );
    }
}

#[test]
fn pooling_and_channel_halves() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(7);
    for (d, _) in shapes() {
        let x = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let w = format!("{d}");
        check(
            &c,
            &format!("avgpool2 {w}"),
            &c.avgpool2(&x.dev, d).unwrap(),
            &r.avgpool2(&x.host, d).unwrap(),
        );
        let dyp = both(&c, rand_vec(&mut g, d.pooled().len(), 1.0));
        check(
            &c,
            &format!("avgpool2_vjp {w}"),
            &c.avgpool2_vjp(&dyp.dev, d).unwrap(),
            &r.avgpool2_vjp(&dyp.host, d).unwrap(),
        );
        check(
            &c,
            &format!("global_mean {w}"),
            &c.global_mean(&x.dev, d).unwrap(),
            &r.global_mean(&x.host, d).unwrap(),
        );
        let dym = both(&c, rand_vec(&mut g, d.n * d.c, 1.0));
        check(
            &c,
            &format!("global_mean_vjp {w}"),
            &c.global_mean_vjp(&dym.dev, d).unwrap(),
            &r.global_mean_vjp(&dym.host, d).unwrap(),
        );
        for c1 in [0, d.c / 2, d.c] {
            let (a, b) = c.split_channels(&x.dev, d, c1).unwrap();
            let (ra, rb) = r.split_channels(&x.host, d, c1).unwrap();
            assert_eq!(c.download(&a).unwrap(), ra, "split first {w} at {c1}");
            assert_eq!(c.download(&b).unwrap(), rb, "split second {w} at {c1}");
            let back = c.concat_channels(&a, &b, d, c1).unwrap();
            assert_eq!(c.download(&back).unwrap(), x.host, "concat {w} at {c1}");
        }
    }
}

#[test]
fn softmax_cross_entropy() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(8);
    for (n, classes) in [(1usize, 1usize), (1, 10), (7, 3), (64, 10), (5, 100)] {
        let logits = both(&c, rand_vec(&mut g, n * classes, 5.0));
        let labels: Vec<usize> = (0..n).map(|_| g.random_range(0..classes)).collect();
        let (l, gr) = c.softmax_xent(&logits.dev, n, classes, &labels).unwrap();
        let (rl, rgr) = r.softmax_xent(&logits.host, n, classes, &labels).unwrap();
        assert!(
            (l - rl).abs() <= TOL * rl.abs().max(1e-3),
            "loss {l} vs {rl}"
        );
        check(&c, &format!("softmax grad {n}x{classes}"), &gr, &rgr);
    }
    let logits = c.zeros(6).unwrap();
    assert!(c.softmax_xent(&logits, 2, 3, &[0, 3]).is_err());
}

#[test]
fn fixed_point_is_exact() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(9);
    let mut xs = rand_vec(&mut g, 2000, 3.0);
    // Ties (round half away from zero), saturation and tiny values.
    xs.extend([
        0.5 / 65536.0,
        -0.5 / 65536.0,
        1.5 / 65536.0,
        -2.5 / 65536.0,
        1e6,
        -1e6,
        0.0,
    ]);
    let x = both(&c, xs);
    for shift in [0u32, 8, 16] {
        let q = c.quantize(&x.dev, shift).unwrap();
        let rq = r.quantize(&x.host, shift).unwrap();
        assert_eq!(c.idownload(&q).unwrap(), rq, "quantize shift {shift}");
        let dq = c.dequantize(&q, shift).unwrap();
        let rdq: Vec<f64> = r
            .dequantize(&rq, shift)
            .unwrap()
            .iter()
            .map(|&v| v as f32 as f64)
            .collect();
        assert_eq!(c.download(&dq).unwrap(), rdq, "dequantize shift {shift}");
    }
    let len = x.host.len();
    let qs: Vec<Vec<i32>> = (0..5)
        .map(|_| (0..len).map(|_| g.random::<i32>()).collect())
        .collect();
    let qd: Vec<_> = qs.iter().map(|q| c.iupload(q).unwrap()).collect();
    for nt in 0..=5 {
        let coefs: Vec<i32> = (0..nt).map(|i| [2, -1, 3, 1, -7][i]).collect();
        let tc: Vec<(i32, &_)> = (0..nt).map(|i| (coefs[i], &qd[i])).collect();
        let tr: Vec<(i32, &_)> = (0..nt).map(|i| (coefs[i], &qs[i])).collect();
        for coef in [0.25 * 65536.0, 65536.0 * 65536.0 * 4.0, 1.0] {
            let got = c.fixed_update(&tc, coef, &x.dev).unwrap();
            let want = r.fixed_update(&tr, coef, &x.host).unwrap();
            assert_eq!(
                c.idownload(&got).unwrap(),
                want,
                "fixed_update {nt} terms, coef {coef}"
            );
        }
    }
}

/// The fused step against the default composition on the reference.
#[test]
fn fused_step_matches_composition() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(10);
    let dims = [
        Dims::new(1, 1, 1, 1),
        Dims::new(1, 1, 5, 3),
        Dims::new(2, 3, 7, 5),
        Dims::new(2, 32, 8, 8),
        Dims::new(1, 40, 5, 9),
        Dims::new(2, 70, 4, 3),
        Dims::new(9, 6, 1, 1),
        Dims::new(1, 3, 2, 130), // wider than the prologue's halo buffer
    ];
    for d in dims {
        let y = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let yp = both(&c, rand_vec(&mut g, d.len(), 1.0));
        let k = both(
            &c,
            rand_vec(&mut g, d.c * d.c * 9, 1.0 / (d.c as f64 * 9.0).sqrt()),
        );
        let s = both(&c, rand_vec(&mut g, d.c, 1.5));
        let b = both(&c, rand_vec(&mut g, d.c, 0.3));
        for act in [Activation::Relu, Activation::Tanh, Activation::Logcosh] {
            for tv in [true, false] {
                let (nc, nr) = norms(tv, &s, &b);
                let cases: Vec<(Vec<f64>, f64)> = vec![
                    (vec![1.0], 0.5),
                    (vec![2.0, -1.0], 0.25),
                    (vec![1.0, 0.5, -0.25], 0.1),
                    (vec![1.0, 0.5, -0.25, 2.0], 0.3),
                ];
                for (coefs, h) in cases {
                    let xs_c = [&y.dev, &yp.dev, &y.dev, &yp.dev];
                    let xs_r = [&y.host, &yp.host, &y.host, &yp.host];
                    let tc: Vec<(f64, &_)> = coefs
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| (a, xs_c[i]))
                        .collect();
                    let tr: Vec<(f64, &_)> = coefs
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| (a, xs_r[i]))
                        .collect();
                    let got = c.step_full3x3(&tc, h, &y.dev, d, &k.dev, nc, act).unwrap();
                    let want = r
                        .step_full3x3(&tr, h, &y.host, d, &k.host, nr, act)
                        .unwrap();
                    check(
                        &c,
                        &format!("step {d} {act:?} tv={tv} terms={}", coefs.len()),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

/// The fused VJP of the symmetric layer (kernels/fused_step.cu `sym_vjp_mid` between four
/// convolutions) against the f64 composition: tvNorm and shift-only, tanh and relu, one
/// channel (where tvNorm's VJP cancels), 64-row tiles split over two parts and several blocks.
#[test]
fn symmetric_layer_vjp() {
    let Some(c) = cuda() else { return };
    let r = Reference;
    let mut g = rng(11);
    let shapes = [
        Dims::new(2, 3, 7, 5),
        Dims::new(2, 33, 6, 6),
        Dims::new(1, 1, 4, 4),
        Dims::new(3, 70, 12, 11),
    ];
    for d in shapes {
        for tv in [true, false] {
            for act in [Activation::Tanh, Activation::Relu] {
                let y = both(&c, rand_vec(&mut g, d.len(), 1.0));
                let gr = both(&c, rand_vec(&mut g, d.len(), 1.0));
                let k = both(
                    &c,
                    rand_vec(&mut g, d.c * d.c * 9, 1.0 / (d.c as f64 * 9.0).sqrt()),
                );
                let s = both(&c, rand_vec(&mut g, d.c, 1.5));
                let b = both(&c, rand_vec(&mut g, d.c, 0.3));
                let (nc, nr) = norms(tv, &s, &b);
                let gc = c
                    .sym_full3x3_vjp(&y.dev, d, &k.dev, nc, act, &gr.dev)
                    .unwrap();
                let gw = r
                    .sym_full3x3_vjp(&y.host, d, &k.host, nr, act, &gr.host)
                    .unwrap();
                check(&c, "sym dy", &gc.dy, &gw.dy);
                check(&c, "sym dk", &gc.dk, &gw.dk);
                assert_eq!(gc.dscale.is_some(), tv);
                if let (Some(a), Some(w)) = (&gc.dscale, &gw.dscale) {
                    check(&c, "sym dscale", a, w);
                }
                check(&c, "sym dshift", &gc.dshift, &gw.dshift);
            }
        }
    }
}

/// Every reduction runs twice more and must give the same bits.
#[test]
fn deterministic_repeats() {
    let Some(c) = cuda() else { return };
    let mut g = rng(12);
    let d = Dims::new(16, 48, 16, 16);
    let x = c.upload(&rand_vec(&mut g, d.len(), 1.0)).unwrap();
    let dz = c.upload(&rand_vec(&mut g, d.len(), 1.0)).unwrap();
    let k = c.upload(&rand_vec(&mut g, d.c * d.c * 9, 0.05)).unwrap();
    let s = c.upload(&rand_vec(&mut g, d.c, 1.0)).unwrap();
    let b = c.upload(&rand_vec(&mut g, d.c, 1.0)).unwrap();
    let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
    let logits = c.upload(&rand_vec(&mut g, 640, 4.0)).unwrap();
    let run = || -> Vec<Vec<f32>> {
        let f = |v: &<Cuda as Backend>::Buf| c.download_f32(v).unwrap();
        let (tdx, tds, tdb) = c.tvnorm_vjp(&x, d, &s, &dz).unwrap();
        let (bn, st) = c.batchnorm_train(&x, d, &s, &b).unwrap();
        let (bdx, bdg, bdb) = c.batchnorm_vjp(&x, d, &s, &st, &dz).unwrap();
        let (loss, lg) = c.softmax_xent(&logits, 64, 10, &labels).unwrap();
        let step = c
            .step_full3x3(
                &[(2.0, &x), (-1.0, &dz)],
                0.25,
                &x,
                d,
                &k,
                Norm::Tv { s: &s, b: &b },
                Activation::Relu,
            )
            .unwrap();
        vec![
            f(&c.conv(ConvSpec::full3x3(), &x, d, &k, d.c).unwrap()),
            f(&c.conv_t(ConvSpec::full3x3(), &x, d, &k, d.c).unwrap()),
            f(&c.conv_wgrad(ConvSpec::full3x3(), &x, d, &dz, d.c).unwrap()),
            f(&c.conv_wgrad(ConvSpec::full1x1(), &x, d, &dz, d.c).unwrap()),
            f(&c.channel_sum(&dz, d).unwrap()),
            f(&c.global_mean(&x, d).unwrap()),
            f(&tdx),
            f(&tds),
            f(&tdb),
            f(&bn),
            f(&st.mean),
            f(&st.var),
            f(&bdx),
            f(&bdg),
            f(&bdb),
            f(&step),
            vec![loss as f32],
            f(&lg),
        ]
    };
    let first = run();
    for _ in 0..2 {
        let again = run();
        for (i, (a, b)) in first.iter().zip(&again).enumerate() {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "output {i} differs between repeats");
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let Some(c) = cuda() else { return };
    let d = Dims::new(2, 3, 4, 4);
    let x = c.zeros(d.len()).unwrap();
    let short = c.zeros(5).unwrap();
    let k = c.zeros(3 * 3 * 9).unwrap();
    let is_shape = |r: Result<(), Error>| matches!(r, Err(Error::Shape(_)));
    assert!(is_shape(
        c.conv(ConvSpec::full3x3(), &short, d, &k, 3).map(|_| ())
    ));
    assert!(is_shape(
        c.conv(ConvSpec::full3x3(), &x, d, &short, 3).map(|_| ())
    ));
    assert!(is_shape(
        c.conv_t(ConvSpec::full3x3(), &x, d, &k, 4).map(|_| ())
    ));
    assert!(is_shape(
        c.conv_wgrad(ConvSpec::full3x3(), &x, d, &short, 3)
            .map(|_| ())
    ));
    assert!(is_shape(
        c.conv(ConvSpec::full1x1(), &x, d, &k, 3).map(|_| ())
    ));
    assert!(is_shape(c.tvnorm(&x, d, &short, &short).map(|_| ())));
    assert!(is_shape(c.lincomb(&[]).map(|_| ())));
    assert!(is_shape(c.lincomb(&[(1.0, &x), (1.0, &short)]).map(|_| ())));
    assert!(is_shape(c.split_channels(&x, d, 4).map(|_| ())));
    assert!(is_shape(c.avgpool2_vjp(&x, d).map(|_| ())));
    let s = c.zeros(3).unwrap();
    assert!(is_shape(
        c.step_full3x3(
            &[(1.0, &short)],
            0.1,
            &x,
            d,
            &k,
            Norm::Tv { s: &s, b: &s },
            Activation::Relu
        )
        .map(|_| ())
    ));
}

#[test]
fn peak_memory_is_tracked() {
    let Some(c) = cuda() else { return };
    c.reset_peak();
    let base = c.current_bytes();
    {
        let _a = c.zeros(1 << 20).unwrap();
        let _b = c.zeros(1 << 20).unwrap();
        assert_eq!(c.current_bytes(), base + (8 << 20));
    }
    assert_eq!(c.current_bytes(), base);
    assert!(c.peak_bytes() >= base + (8 << 20));
    c.reset_peak();
    assert_eq!(c.peak_bytes(), base);
}

/// The driver's pool high-water mark sees the same allocations as the backend's count.
#[test]
fn driver_peak_memory_matches_the_backend_count() {
    let Some(c) = cuda() else { return };
    c.reset_driver_peak();
    let Some(before) = c.driver_peak_bytes() else {
        pdenet::backend::cuda::report_skip(
            "the device has no default memory pool (no cuMemAllocAsync)",
        );
        return;
    };
    {
        let _a = c.zeros(1 << 22).unwrap();
        let _b = c.zeros(1 << 22).unwrap();
        let peak = c.driver_peak_bytes().unwrap();
        // Pool allocations are rounded up, never down.
        assert!(
            peak >= before + (32 << 20),
            "driver peak {peak} < {before} + 32 MiB"
        );
    }
    c.reset_driver_peak();
    let after = c.driver_peak_bytes().unwrap();
    assert!(after < before + (32 << 20), "reset left {after} bytes");
}

#[test]
fn unavailable_is_an_error_not_a_panic() {
    // Runs everywhere: creating the backend must return, whatever the machine.
    match Cuda::try_new() {
        Ok(c) => println!("CUDA device: {}", c.device_name()),
        Err(e) => {
            assert!(
                matches!(e, Error::CudaUnavailable(_)),
                "unexpected error {e}"
            );
            pdenet::backend::cuda::report_skip(e);
        }
    }
}

#[test]
fn embedded_sources_compile_with_nvrtc() {
    // Needs libnvrtc, not a GPU. Skips only when the library is missing: any compile error
    // fails. A build that embeds PTX compiles the repository's kernel sources instead.
    use pdenet::backend::cuda::{check_nvrtc_dir, check_nvrtc_sources, embeds_sources};
    if !pdenet::backend::cuda::nvrtc_present() {
        pdenet::backend::cuda::report_skip("the NVRTC library (libnvrtc) is not installed");
        return;
    }
    let n = if embeds_sources() {
        check_nvrtc_sources()
    } else {
        check_nvrtc_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels"))
    }
    .unwrap_or_else(|e| panic!("NVRTC: {e}"));
    assert!(n > 0, "no kernel module compiled");
    println!("NVRTC compiled {n} kernel modules");
}

/// Kept states in 16 bits: the device's pack16 / unpack16 give exactly the `half` crate's values
/// (round to nearest even) on random, tiny, huge and halfway inputs.
#[test]
fn pack16_matches_the_half_crate() {
    let Some(gpu) = cuda() else { return };
    let cpu = pdenet::backend::cpu::Cpu::new();
    let mut r = rng(16);
    let mut x: Vec<f32> = (0..4096)
        .map(|_| f32::from_bits(r.random::<u32>()))
        .collect();
    x.retain(|v| !v.is_nan());
    x.extend([
        0.0,
        -0.0,
        1.0 + 2f32.powi(-8),
        65504.0,
        65520.0,
        1e-7,
        -3e-5,
        1e30,
    ]);
    for storage in [
        pdenet::backend::Storage::Bf16,
        pdenet::backend::Storage::F16,
    ] {
        let on_gpu = gpu.unpack16(&gpu.pack16(&gpu.upload_f32(&x).unwrap(), storage).unwrap());
        let on_cpu = cpu.unpack16(&cpu.pack16(&x, storage).unwrap()).unwrap();
        let got = gpu.download_f32(&on_gpu.unwrap()).unwrap();
        for (i, (g, c)) in got.iter().zip(&on_cpu).enumerate() {
            assert_eq!(g.to_bits(), c.to_bits(), "{storage:?} x[{i}] = {}", x[i]);
        }
    }
}
