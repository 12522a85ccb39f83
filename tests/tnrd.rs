//! TNRD (Chen & Pock 2017): the f64 stage VJP against central differences, the f32 fast path
//! against the f64 reference, adjointness of K and K^T, zero-mean filters on constants, model
//! files, and `pdenet denoise --method tnrd` on a crop and on bad weights.

use pdenet::restore::image::{read_png, write_png, Image};
use pdenet::restore::noise::add_noise;
use pdenet::restore::tnrd::fast::FastStage;
use pdenet::restore::tnrd::{fast, io, reference, zero_mean, Model, Stage, CENTRES, GAMMA};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::process::Command;

fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn random_stage(nf: usize, s: usize, seed: u64) -> Stage {
    let mut r = rng(seed);
    Stage {
        w: (0..nf * s * s).map(|_| r.random_range(-0.5..0.5)).collect(),
        rbf: (0..nf * CENTRES)
            .map(|_| r.random_range(-0.1..0.1))
            .collect(),
        log_lambda: r.random_range(-3.0..-1.0),
    }
}

fn image(n: usize, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n).map(|_| r.random_range(0.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn stage_vjp_matches_central_differences() {
    let (w, h, nf) = (9, 7, 3);
    for s in [3usize, 5] {
        let st = random_stage(nf, s, s as u64);
        let (u, f, g) = (image(w * h, 1), image(w * h, 2), image(w * h, 3));
        let gr = reference::vjp(&st, &u, &f, &g, w, h, s);
        let obj =
            |st: &Stage, u: &[f64], f: &[f64]| dot(&reference::forward(st, u, f, w, h, s), &g);
        let eps = 1e-6;
        let check = |name: &str, an: f64, plus: f64, minus: f64| {
            let num = (plus - minus) / (2.0 * eps);
            assert!(
                (an - num).abs() <= 1e-6 * (1.0 + num.abs()),
                "s {s} {name}: analytic {an} numeric {num}"
            );
        };
        for p in [0, 17, w * h - 1] {
            let (mut a, mut b) = (u.clone(), u.clone());
            a[p] += eps;
            b[p] -= eps;
            check("u", gr.du[p], obj(&st, &a, &f), obj(&st, &b, &f));
            let (mut a, mut b) = (f.clone(), f.clone());
            a[p] += eps;
            b[p] -= eps;
            check("f", gr.df[p], obj(&st, &u, &a), obj(&st, &u, &b));
        }
        for q in [0, s * s + 1, nf * s * s - 1] {
            let (mut a, mut b) = (st.clone(), st.clone());
            a.w[q] += eps;
            b.w[q] -= eps;
            check("W", gr.dw[q], obj(&a, &u, &f), obj(&b, &u, &f));
        }
        for q in [20, CENTRES + 31, nf * CENTRES - 25] {
            let (mut a, mut b) = (st.clone(), st.clone());
            a.rbf[q] += eps;
            b.rbf[q] -= eps;
            check("rbf", gr.drbf[q], obj(&a, &u, &f), obj(&b, &u, &f));
        }
        let (mut a, mut b) = (st.clone(), st.clone());
        a.log_lambda += eps;
        b.log_lambda -= eps;
        check(
            "log_lambda",
            gr.dlog_lambda,
            obj(&a, &u, &f),
            obj(&b, &u, &f),
        );
    }
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn fast_path_matches_reference(w in 2usize..14, h in 2usize..12, nf in 1usize..4,
                                   half in 1usize..3, seed in 0u64..1000) {
        let s = 2 * half + 1;
        let st = random_stage(nf, s, seed);
        let (u, f, g) = (image(w * h, seed + 1), image(w * h, seed + 2), image(w * h, seed + 3));
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let fs = FastStage::new(&st, s);
        let out = reference::forward(&st, &u, &f, w, h, s);
        prop_assert!(rel(&fast::forward(&fs, &f32s(&u), &f32s(&f), w, h), &out) < 1e-5);
        prop_assert!(rel(&fast::forward_seq(&fs, &f32s(&u), &f32s(&f), w, h), &out) < 1e-5);
        let gr = reference::vjp(&st, &u, &f, &g, w, h, s);
        let fg = fast::vjp_seq(&fs, &f32s(&u), &f32s(&f), &f32s(&g), w, h);
        prop_assert!(rel(&fg.du, &gr.du) < 1e-5);
        prop_assert!(rel(&fg.df, &gr.df) < 1e-5);
        prop_assert!(rel(&fg.drbf, &gr.drbf) < 1e-5);
        // The fast path returns the gradient against K; W's is its zero-mean projection.
        let mut dk: Vec<f64> = fg.dk.iter().map(|&x| x as f64).collect();
        pdenet::restore::tnrd::zero_mean_grad(&mut dk, s);
        let dk32: Vec<f32> = dk.iter().map(|&x| x as f32).collect();
        prop_assert!(rel(&dk32, &gr.dw) < 1e-5);
        let lam = st.log_lambda.exp();
        prop_assert!(((fg.dlambda as f64) * lam - gr.dlog_lambda).abs() < 1e-5 * (1.0 + gr.dlog_lambda.abs()));
    }
}

#[test]
fn conv_transpose_is_the_adjoint() {
    for (w, h, s) in [(9, 7, 3), (6, 5, 5), (2, 3, 5), (13, 4, 7)] {
        let k = image(s * s, 7);
        let (x, y) = (image(w * h, 8), image(w * h, 9));
        let lhs = dot(&reference::conv_t(&y, w, h, &k, s), &x);
        let rhs = dot(&y, &reference::conv(&x, w, h, &k, s));
        assert!(
            (lhs - rhs).abs() < 1e-10 * rhs.abs().max(1.0),
            "{w}x{h} s {s}"
        );
    }
}

#[test]
fn zero_mean_filters_leave_constants_alone() {
    let (w, h, s) = (11, 8, 5);
    let st = random_stage(4, s, 5);
    let k = zero_mean(&st.w, s);
    let c = vec![0.42; w * h];
    for f in k.chunks(s * s) {
        assert!(reference::conv(&c, w, h, f, s)
            .iter()
            .all(|v| v.abs() < 1e-12));
    }
    // The diffusion term K^T phi(K c) = K^T phi(0) vanishes for phi(0) = 0 (the initial ramp);
    // with f = c the reaction term vanishes too: the stage is the identity.
    let ramp = Stage {
        w: st.w.clone(),
        ..Stage::init(4, s, 0.3, 0.1)
    };
    let out = reference::forward(&ramp, &c, &c, w, h, s);
    assert!(out.iter().all(|v| (v - 0.42).abs() < 1e-9));
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdenet-tnrd-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn model_files_round_trip_and_bad_ones_are_refused() {
    let m = Model {
        sigma: 25.0,
        filters: 2,
        size: 3,
        stages: vec![Stage::init(2, 3, 0.05, 0.02), random_stage(2, 3, 1)],
    };
    let p = tmp("m.safetensors");
    io::save(&p, &m).unwrap();
    let back = io::load(&p).unwrap();
    assert_eq!(back.stages.len(), 2);
    assert!((back.stages[1].log_lambda - m.stages[1].log_lambda).abs() < 1e-6);
    // Shapes that disagree with the metadata: one error naming the key.
    let mut wrong = m.clone();
    wrong.filters = 3;
    let bytes = io::to_bytes(&wrong);
    assert!(bytes.is_err() || io::from_bytes(&bytes.unwrap(), "x").is_err());
    let e = io::from_bytes(b"nonsense", "bad.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.safetensors") && !e.contains('\n'), "{e}");
}

fn camera_crop(n: usize) -> Vec<f32> {
    let img = read_png(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/images/camera.png"))
        .unwrap();
    let g = img.luminance();
    (0..n * n)
        .map(|i| g[(100 + i / n) * img.width + 200 + i % n])
        .collect()
}

fn denoise(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pdenet"))
        .arg("denoise")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_tnrd_improves_psnr_and_refuses_bad_weights() {
    let n = 64;
    let c = tmp("clean.png");
    write_png(&c, &Image::grey(n, n, camera_crop(n), true)).unwrap();
    let (c, o) = (c.to_str().unwrap(), tmp("out.png"));
    let o = o.to_str().unwrap();
    let base = [
        "--method", "tnrd", "--input", c, "--out", o, "--sigma", "25",
    ];
    let mut args = base.to_vec();
    args.extend(["--add-noise", "--seed", "1", "--clean", c]);
    let out = denoise(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Vec<f64> = text.lines().last().unwrap()[5..]
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(last[1] > last[0] + 3.0, "{text}");
    // Bad weights: a non-safetensors file and a safetensors file of another kind.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let other = tmp("other.safetensors");
    let t: Vec<f32> = vec![1.0; 4];
    pdenet::params::write_safetensors(
        &other,
        &[("k".to_string(), pdenet::params::OutTensor::F32(&[4], &t))],
    )
    .unwrap();
    let never = tmp("never.png");
    for bad in [&junk, &other] {
        let args = [
            "--method",
            "tnrd",
            "--input",
            c,
            "--out",
            never.to_str().unwrap(),
            "--sigma",
            "25",
            "--weights",
            bad.to_str().unwrap(),
        ];
        let out = denoise(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(bad.to_str().unwrap()), "{err}");
        assert!(!never.exists());
    }
    let _ = add_noise;
}

// ---- the stage as a backend op (Backend::tnrd_stage / tnrd_stage_vjp) ----------------------

use pdenet::backend::reference::Reference;
use pdenet::backend::Backend;
use pdenet::tensor::Dims;

/// Random op inputs on `n` images: zero-mean filters K, RBF weights, lambda, u, f, g.
#[allow(clippy::type_complexity)]
fn op_inputs(
    d: Dims,
    nf: usize,
    s: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>, f64, Vec<f64>, Vec<f64>, Vec<f64>) {
    let st = random_stage(nf, s, seed);
    (
        zero_mean(&st.w, s),
        st.rbf,
        st.log_lambda.exp(),
        image(d.len(), seed + 1),
        image(d.len(), seed + 2),
        image(d.len(), seed + 3),
    )
}

/// One body for every f32 backend: forward and every VJP output against the f64 reference
/// backend within 1e-5 of the largest value.
fn backend_matches_reference<B: Backend>(be: &B, d: Dims, nf: usize, s: usize, seed: u64) {
    let re = Reference;
    let (k, rbf, lam, u, f, g) = op_inputs(d, nf, s, seed);
    let up = |v: &[f64]| be.upload(v).unwrap();
    let (ub, fb, gb, kb, rb) = (up(&u), up(&f), up(&g), up(&k), up(&rbf));
    let close = |a: &B::Buf, b: &[f64], what: &str| {
        let a = be.download(a).unwrap();
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err / scale < 1e-5,
            "{} {what} {d:?} nf {nf} s {s}: relative {:e}",
            be.name(),
            err / scale
        );
    };
    let want = re.tnrd_stage(&u, &f, d, &k, &rbf, lam, s).unwrap();
    close(
        &be.tnrd_stage(&ub, &fb, d, &kb, &rb, lam, s).unwrap(),
        &want,
        "forward",
    );
    let wg = re.tnrd_stage_vjp(&u, &f, d, &k, &rbf, lam, s, &g).unwrap();
    let gg = be
        .tnrd_stage_vjp(&ub, &fb, d, &kb, &rb, lam, s, &gb)
        .unwrap();
    close(&gg.du, &wg.du, "du");
    close(&gg.df, &wg.df, "df");
    close(&gg.dk, &wg.dk, "dk");
    close(&gg.drbf, &wg.drbf, "drbf");
    assert!(
        (gg.dlambda - wg.dlambda).abs() <= 1e-5 * (1.0 + wg.dlambda.abs()),
        "{} dlambda",
        be.name()
    );
    // Shapes are checked: colour images and a wrong RBF count are refused.
    assert!(be
        .tnrd_stage(&ub, &fb, d.with_c(2), &kb, &rb, lam, s)
        .is_err());
    assert!(be
        .tnrd_stage(&ub, &fb, d, &kb, &up(&rbf[1..]), lam, s)
        .is_err());
}

/// The reference backend's op is the specification of `restore::tnrd::reference` (one formula):
/// a model stage run through either gives the same bits.
#[test]
fn reference_backend_is_the_stage_specification() {
    let (w, h, nf, s) = (8, 6, 3, 5);
    let st = random_stage(nf, s, 7);
    let (u, f) = (image(w * h, 8), image(w * h, 9));
    let d = Dims::new(1, 1, h, w);
    let k = zero_mean(&st.w, s);
    let got = Reference
        .tnrd_stage(&u, &f, d, &k, &st.rbf, st.log_lambda.exp(), s)
        .unwrap();
    assert_eq!(got, reference::forward(&st, &u, &f, w, h, s));
}

/// The op's VJP on the reference backend against central differences of its forward, for
/// every input (u, f, K, the RBF weights, lambda) on a batch of two images.
#[test]
fn backend_op_vjp_matches_central_differences() {
    let (d, nf, s) = (Dims::new(2, 1, 5, 6), 2, 3);
    let re = Reference;
    let (k, rbf, lam, u, f, g) = op_inputs(d, nf, s, 21);
    let gr = re.tnrd_stage_vjp(&u, &f, d, &k, &rbf, lam, s, &g).unwrap();
    let loss = |u: &[f64], f: &[f64], k: &[f64], rbf: &[f64], lam: f64| {
        dot(
            &re.tnrd_stage(
                &u.to_vec(),
                &f.to_vec(),
                d,
                &k.to_vec(),
                &rbf.to_vec(),
                lam,
                s,
            )
            .unwrap(),
            &g,
        )
    };
    let eps = 1e-6;
    let fd = |plus: f64, minus: f64| (plus - minus) / (2.0 * eps);
    let check = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{what}: vjp {a} vs fd {b}"
        );
    };
    for i in [0, 7, 31, 59] {
        let (mut up_, mut dn) = (u.clone(), u.clone());
        up_[i] += eps;
        dn[i] -= eps;
        check(
            gr.du[i],
            fd(loss(&up_, &f, &k, &rbf, lam), loss(&dn, &f, &k, &rbf, lam)),
            "du",
        );
        let (mut up_, mut dn) = (f.clone(), f.clone());
        up_[i] += eps;
        dn[i] -= eps;
        check(
            gr.df[i],
            fd(loss(&u, &up_, &k, &rbf, lam), loss(&u, &dn, &k, &rbf, lam)),
            "df",
        );
    }
    for i in 0..k.len() {
        let (mut up_, mut dn) = (k.clone(), k.clone());
        up_[i] += eps;
        dn[i] -= eps;
        check(
            gr.dk[i],
            fd(loss(&u, &f, &up_, &rbf, lam), loss(&u, &f, &dn, &rbf, lam)),
            "dk",
        );
    }
    for i in (0..rbf.len()).step_by(5) {
        let (mut up_, mut dn) = (rbf.clone(), rbf.clone());
        up_[i] += eps;
        dn[i] -= eps;
        check(
            gr.drbf[i],
            fd(loss(&u, &f, &k, &up_, lam), loss(&u, &f, &k, &dn, lam)),
            "drbf",
        );
    }
    check(
        gr.dlambda,
        fd(
            loss(&u, &f, &k, &rbf, lam + eps),
            loss(&u, &f, &k, &rbf, lam - eps),
        ),
        "dlambda",
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// The CPU backend's op (the fast path) against the reference backend on batches.
    #[test]
    fn cpu_backend_op_matches_reference(n in 1usize..4, w in 2usize..12, h in 2usize..10,
                                        nf in 1usize..4, half in 1usize..3, seed in 0u64..1000) {
        let s = 2 * half + 1;
        backend_matches_reference(&pdenet::backend::cpu::Cpu::new(), Dims::new(n, 1, h, w), nf, s, seed);
    }
}

/// The CUDA kernels (kernels/tnrd.cu) against the reference backend; prints SKIP without a GPU.
#[test]
fn cuda_backend_op_matches_reference() {
    match pdenet::backend::cuda::Cuda::try_new() {
        Ok(c) => {
            for (d, nf, s, seed) in [
                (Dims::new(1, 1, 7, 9), 3, 5, 1),
                (Dims::new(3, 1, 2, 3), 2, 5, 2),
                (Dims::new(2, 1, 33, 40), 4, 3, 3),
                (Dims::new(1, 1, 64, 64), 24, 5, 4),
            ] {
                backend_matches_reference(&c, d, nf, s, seed);
            }
        }
        Err(e) => pdenet::backend::cuda::report_skip(e),
    }
}

/// The fast path's influence function (window from the nearest centre, Cody-Waite offset,
/// polynomial exp) keeps f32 precision against the f64 sum over all centres.
#[test]
fn fast_phi_keeps_f32_precision() {
    let mut r = rng(5);
    let (mut ev, mut ed) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        let w: Vec<f64> = (0..CENTRES).map(|_| r.random_range(-0.1..0.1)).collect();
        let w32: Vec<f32> = w.iter().map(|&x| x as f32).collect();
        for _ in 0..200 {
            let z = r.random_range(-1.6f32..1.6);
            let (a, b) = reference::phi(z as f64, &w);
            let (c, d) = fast::phi(z, &w32);
            ev = ev.max((c as f64 - a).abs() / 0.1);
            ed = ed.max((d as f64 - b).abs() * GAMMA / 0.1);
        }
    }
    // Relative to the weights' scale (0.1, and 0.1 / gamma for phi'); ~5e-7 measured.
    assert!(ev < 2e-6 && ed < 2e-6, "phi {ev:e} phi' {ed:e}");
    // Far outside the centres phi vanishes; NaN stays NaN without a panic.
    let w32 = vec![0.05f32; CENTRES];
    assert_eq!(fast::phi(1e6, &w32), (0.0, 0.0));
    assert!(fast::phi(f32::NAN, &w32).0.is_nan());
}
