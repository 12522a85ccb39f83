//! The operators of SPEC section 7 as primitives: adjoint identities `<A x, z> = <x, A^T z>`,
//! weight gradients by finite differences, the diffusion solve (against its equation, the
//! `rustfft` fallback, and the gradient of `d`), the Haar transform (orthonormal; bit-exact in
//! fixed point), and IMEX's field of view.

use pdenet::backend::reference::structured;
use pdenet::backend::reference::Reference;
use pdenet::backend::{Activation, Backend, ConvSpec, Norm};
use pdenet::config::StepType;
use pdenet::operators::{OpRef, MGIC_GROUP};
use pdenet::steps::{self, Layer, StepSettings};
use pdenet::tensor::Dims;
use rand::{Rng, SeedableRng};

fn rand_vec(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    let err = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
    assert!(err < tol, "{what}: {a} vs {b} (relative {err:e})");
}

const D: Dims = Dims::new(2, 4, 5, 6);

#[test]
fn stencil_adjoint_and_wgrad() {
    let be = Reference;
    let (x, z, w) = (
        rand_vec(D.len(), 1),
        rand_vec(D.len(), 2),
        rand_vec(D.c * 5, 3),
    );
    let ax = be.stencil5(&x, D, &w).unwrap();
    let atz = be.stencil5_t(&z, D, &w).unwrap();
    assert_close(dot(&ax, &z), dot(&x, &atz), 1e-12, "stencil5 adjoint");
    // Linear in D: <dz, D x> = <dD, D>.
    let dw = be.stencil5_wgrad(&x, D, &z).unwrap();
    assert_close(dot(&ax, &z), dot(&dw, &w), 1e-12, "stencil5 wgrad");
    // SPEC's tap order: D[c, 1] reads the pixel above.
    let mut delta = vec![0.0; D.len()];
    delta[2 * D.w + 3] = 1.0; // n 0, c 0, (2, 3)
    let mut one = vec![0.0; D.c * 5];
    one[1] = 1.0;
    let y = be.stencil5(&delta, D, &one).unwrap();
    assert_eq!(
        y[3 * D.w + 3],
        1.0,
        "(D Y)[3,3] reads Y[2,3] through D[c,1]"
    );
    assert_eq!(y.iter().filter(|v| **v != 0.0).count(), 1);
    assert!(be.stencil5(&x, D, &w[..7].to_vec()).is_err());
}

#[test]
fn grouped_convolutions_adjoint_and_wgrad() {
    let be = Reference;
    let d = Dims::new(2, 8, 4, 5);
    for (ks, cout, groups) in [(3, 8, 2), (3, 4, 4), (1, 4, 2), (1, 8, 8)] {
        let od = d.with_c(cout);
        let klen = cout * d.c / groups * ks * ks;
        let (x, z, k) = (
            rand_vec(d.len(), 4),
            rand_vec(od.len(), 5),
            rand_vec(klen, 6),
        );
        let spec = if ks == 3 {
            ConvSpec::grouped3x3(groups)
        } else {
            ConvSpec::grouped1x1(groups)
        };
        assert_eq!((spec.side(), spec.weight_len(d.c, cout)), (ks, klen));
        let (ax, atz, dk) = (
            be.conv(spec, &x, d, &k, cout).unwrap(),
            be.conv_t(spec, &z, od, &k, d.c).unwrap(),
            be.conv_wgrad(spec, &x, d, &z, cout).unwrap(),
        );
        let what = format!("grouped {ks}x{ks} {} -> {cout} in {groups} groups", d.c);
        assert_close(
            dot(&ax, &z),
            dot(&x, &atz),
            1e-12,
            &format!("{what} adjoint"),
        );
        assert_close(dot(&ax, &z), dot(&dk, &k), 1e-12, &format!("{what} wgrad"));
    }
    // One group is the plain convolution: the grouped loops at one group give the full ones.
    assert_eq!(ConvSpec::grouped3x3(1), ConvSpec::full3x3());
    let k = rand_vec(6 * 8 * 9, 7);
    let x = rand_vec(d.len(), 8);
    assert_eq!(
        structured::grouped_conv(ConvSpec::full3x3(), &x, d, &k, 6).unwrap(),
        be.conv(ConvSpec::full3x3(), &x, d, &k, 6).unwrap()
    );
    assert!(
        be.conv(ConvSpec::grouped3x3(3), &x, d, &k, 6).is_err(),
        "3 groups of 8 channels"
    );
}

/// `<K x, z> = <x, K^T z>` and the weight gradients of `<z, K x>` by central differences.
fn check_operator(weights: Vec<Vec<f64>>, d: Dims, make: fn(&[Vec<f64>]) -> OpRef<'_, Reference>) {
    let be = Reference;
    let (x, z) = (rand_vec(d.len(), 9), rand_vec(d.len(), 10));
    let op = make(&weights);
    let kx = op.apply(&be, &x, d).unwrap();
    let ktz = op.adjoint(&be, &z, d).unwrap();
    assert_close(dot(&kx, &z), dot(&x, &ktz), 1e-12, "operator adjoint");
    let grads = op.wgrad(&be, &x, &z, d).unwrap();
    assert_eq!(grads.len(), weights.len());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for (t, g) in grads.iter().enumerate() {
        assert_eq!(g.len(), weights[t].len());
        for _ in 0..4 {
            let i = rng.random_range(0..g.len());
            let eps = 1e-5;
            let value = |delta: f64| {
                let mut w = weights.clone();
                w[t][i] += delta;
                dot(&z, &make(&w).apply(&be, &x, d).unwrap())
            };
            let fd = (value(eps) - value(-eps)) / (2.0 * eps);
            assert_close(g[i], fd, 1e-6, &format!("weight {t}[{i}]"));
        }
    }
}

#[test]
fn lean_operator() {
    let d = Dims::new(2, 4, 5, 6);
    let w = vec![rand_vec(16, 12), rand_vec(20, 13)];
    check_operator(w, d, |w| OpRef::Lean { p: &w[0], d: &w[1] });
}

fn mgic_weights(w: usize, seed: u64) -> Vec<Vec<f64>> {
    let g = MGIC_GROUP;
    if w <= g {
        return vec![rand_vec(w * w * 9, seed)];
    }
    let mut out = vec![rand_vec(w * g * 9, seed), rand_vec(w / 2 * g, seed + 1)];
    out.extend(mgic_weights(w / 2, seed + 2));
    out
}

#[test]
fn mgic_operator() {
    for w in [16, 32, 64] {
        let d = Dims::new(1, w, 4, 3);
        check_operator(mgic_weights(w, 14), d, |w| OpRef::Mgic {
            weights: w,
            group: MGIC_GROUP,
        });
    }
    // Too few weights for the width is a shape error, not a panic.
    let w = mgic_weights(32, 1);
    let op: OpRef<'_, Reference> = OpRef::Mgic {
        weights: &w[..2],
        group: MGIC_GROUP,
    };
    let d = Dims::new(1, 32, 2, 2);
    assert!(op.apply(&Reference, &rand_vec(d.len(), 1), d).is_err());
}

#[test]
fn diffusion_solve_satisfies_its_equation_and_matches_the_fft_path() {
    let be = Reference;
    for d in [D, Dims::new(1, 2, 8, 1), Dims::new(1, 1, 7, 9)] {
        let (x, diff, h) = (rand_vec(d.len(), 15), rand_vec(d.c, 16), 0.7);
        let y = be.diffusion_solve(&x, d, &diff, h).unwrap();
        // (I + h a_c L) y = x.
        let ly = structured::neg_laplacian(&y, d);
        let hw = d.hw();
        for i in 0..d.len() {
            let a = diff[(i / hw) % d.c].powi(2);
            assert!(
                (y[i] + h * a * ly[i] - x[i]).abs() < 1e-12,
                "residual at {i}"
            );
        }
        let fast = structured::diffusion_solve_fft(&x, d, &diff, h).unwrap();
        let err = y
            .iter()
            .zip(&fast)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-12, "rustfft vs DFT: {err}");
        // Symmetric: its own adjoint.
        let z = rand_vec(d.len(), 17);
        let sz = be.diffusion_solve(&z, d, &diff, h).unwrap();
        assert_close(dot(&y, &z), dot(&x, &sz), 1e-12, "solve adjoint");
    }
}

#[test]
fn diffusion_solve_vjp_by_finite_differences() {
    let be = Reference;
    let (x, diff, g, h) = (
        rand_vec(D.len(), 18),
        rand_vec(D.c, 19),
        rand_vec(D.len(), 20),
        0.4,
    );
    let y = be.diffusion_solve(&x, D, &diff, h).unwrap();
    let (dx, dd) = be.diffusion_solve_vjp(&y, D, &diff, h, &g).unwrap();
    let loss = |x: &[f64], diff: &[f64]| {
        dot(
            &g,
            &be.diffusion_solve(&x.to_vec(), D, &diff.to_vec(), h)
                .unwrap(),
        )
    };
    let eps = 1e-6;
    for c in 0..D.c {
        let (mut p, mut m) = (diff.clone(), diff.clone());
        p[c] += eps;
        m[c] -= eps;
        let fd = (loss(&x, &p) - loss(&x, &m)) / (2.0 * eps);
        assert_close(dd[c], fd, 1e-6, &format!("d diffusion[{c}]"));
    }
    for i in [0, 17, 100, D.len() - 1] {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[i] += eps;
        m[i] -= eps;
        let fd = (loss(&p, &diff) - loss(&m, &diff)) / (2.0 * eps);
        assert_close(dx[i], fd, 1e-6, &format!("dx[{i}]"));
    }
}

#[test]
fn haar_is_orthonormal_and_exact_in_fixed_point() {
    let be = Reference;
    let d = Dims::new(2, 3, 4, 6);
    let (x, z) = (rand_vec(d.len(), 21), rand_vec(d.len(), 22));
    let hx = be.haar(&x, d).unwrap();
    assert_close(dot(&hx, &hx), dot(&x, &x), 1e-12, "norm preserved");
    let back = be.haar_inv(&hx, d).unwrap();
    assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-14));
    let hiz = be.haar_inv(&z, d).unwrap();
    assert_close(dot(&hx, &z), dot(&x, &hiz), 1e-12, "adjoint = inverse");
    // Filter 1 of channel 0 at block (0, 0): [1,-1;1,-1]/2, output channel 1.
    let (a, b, c, e) = (x[0], x[1], x[d.w], x[d.w + 1]);
    let coarse = (d.h / 2) * (d.w / 2);
    assert!((hx[coarse] - (a - b + c - e) / 2.0).abs() < 1e-14);
    // Fixed point: 2 H q is exact and one fractional bit finer.
    let q = be.quantize(&x, 16).unwrap();
    let q2 = be.haar_fixed(&q, d).unwrap();
    assert_eq!(be.haar_fixed_inv(&q2, d).unwrap(), q);
    let direct = be.haar(&be.dequantize(&q, 16).unwrap(), d).unwrap();
    assert_eq!(be.dequantize(&q2, 17).unwrap(), direct);
    assert!(be.haar(&x, Dims::new(2, 3, 3, 8)).is_err(), "odd height");
}

/// One step on a single-pixel input (shift-only norm with zero shift and tanh, so zero maps to
/// zero): an explicit step reaches the 3x3 neighbourhood, the symmetric layer 5x5, IMEX every
/// pixel.
#[test]
fn imex_field_of_view() {
    let be = Reference;
    let d = Dims::new(1, 2, 12, 11);
    let k = rand_vec(d.c * d.c * 9, 23);
    let b = vec![0.0; d.c];
    let diff = vec![1.0, 0.5];
    let l = Layer::<Reference> {
        op: OpRef::Full3x3(&k),
        norm: Norm::Shift { b: &b },
    };
    let kind = |layer| StepSettings {
        layer,
        h: 0.5,
        act: Activation::Tanh,
        gamma: 0.0,
    };
    let (ci, cj) = (6, 5);
    let mut x = vec![0.0; d.len()];
    x[ci * d.w + cj] = 1.0;
    let support = |y: &[f64]| -> (usize, usize) {
        let mut reach = 0;
        let mut count = 0;
        for (i, v) in y.iter().enumerate() {
            if v.abs() > 1e-300 {
                let p = i % d.hw();
                let (r, c) = (p / d.w, p % d.w);
                reach = reach.max(r.abs_diff(ci)).max(c.abs_diff(cj));
                count += 1;
            }
        }
        (reach, count)
    };
    let resnet = steps::forward_single(&be, kind(StepType::Resnet), l, &x, None, d).unwrap();
    assert_eq!(support(&resnet).0, 1, "explicit step: 3x3");
    let para = steps::forward_single(&be, kind(StepType::Parabolic), l, &x, None, d).unwrap();
    assert_eq!(support(&para).0, 2, "symmetric layer: 5x5");
    let imex = steps::imex_forward(&be, kind(StepType::Imex), l, &diff, &x, d).unwrap();
    assert_eq!(
        support(&imex).1,
        d.len(),
        "IMEX: every pixel of every channel"
    );
}

/// The fast CPU backend (f32; grouped convolutions on its GEMM kernels, the stencil in f32
/// loops, the solve through the `rustfft` fallback) against the f64 reference.
#[test]
fn cpu_matches_reference_on_structured_primitives() {
    fast_matches_reference(&pdenet::backend::cpu::Cpu::new());
}

/// The CUDA backend (grouped implicit-GEMM convolutions, stencil, Haar and diffusion-solve
/// kernels) against the f64 reference.
#[test]
fn cuda_matches_reference_on_structured_primitives() {
    match pdenet::backend::cuda::Cuda::try_new() {
        Ok(c) => fast_matches_reference(&c),
        Err(e) => pdenet::backend::cuda::report_skip(e),
    }
}

/// One body for every f32 backend: each section-7 primitive against the reference within 1e-5
/// of the largest value, Haar in fixed point bit for bit.
fn fast_matches_reference<B: Backend>(cpu: &B) {
    let re = Reference;
    let up = |v: &[f64]| cpu.upload(v).unwrap();
    let close = |a: &B::Buf, b: &[f64], what: &str| {
        let a = cpu.download(a).unwrap();
        assert_eq!(a.len(), b.len(), "{what}: length");
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err / scale < 1e-5,
            "{what}: relative error {:e}",
            err / scale
        );
    };
    let d = Dims::new(3, 8, 7, 6);
    let (x, z, w5) = (
        rand_vec(d.len(), 30),
        rand_vec(d.len(), 31),
        rand_vec(d.c * 5, 32),
    );
    let (xc, zc, wc) = (up(&x), up(&z), up(&w5));
    close(
        &cpu.stencil5(&xc, d, &wc).unwrap(),
        &re.stencil5(&x, d, &w5).unwrap(),
        "stencil5",
    );
    close(
        &cpu.stencil5_t(&zc, d, &wc).unwrap(),
        &re.stencil5_t(&z, d, &w5).unwrap(),
        "stencil5_t",
    );
    close(
        &cpu.stencil5_wgrad(&xc, d, &zc).unwrap(),
        &re.stencil5_wgrad(&x, d, &z).unwrap(),
        "stencil5_wgrad",
    );
    for (cout, groups) in [(8, 2), (4, 4), (16, 8)] {
        let od = d.with_c(cout);
        let zo = rand_vec(od.len(), 33);
        let zoc = up(&zo);
        for ks in [1usize, 3] {
            let k = rand_vec(cout * d.c / groups * ks * ks, 34);
            let kc = up(&k);
            let what = format!("grouped {ks}x{ks} {cout}/{groups}");
            let spec = if ks == 3 {
                ConvSpec::grouped3x3(groups)
            } else {
                ConvSpec::grouped1x1(groups)
            };
            let (f, t, w) = (
                cpu.conv(spec, &xc, d, &kc, cout).unwrap(),
                cpu.conv_t(spec, &zoc, od, &kc, d.c).unwrap(),
                cpu.conv_wgrad(spec, &xc, d, &zoc, cout).unwrap(),
            );
            close(
                &f,
                &structured::grouped_conv(spec, &x, d, &k, cout).unwrap(),
                &what,
            );
            close(
                &t,
                &structured::grouped_conv_t(spec, &zo, od, &k, d.c).unwrap(),
                &what,
            );
            close(
                &w,
                &structured::grouped_conv_wgrad(spec, &x, d, &zo, cout).unwrap(),
                &what,
            );
        }
        let bad = up(&rand_vec(7, 1));
        assert!(cpu
            .conv(ConvSpec::grouped3x3(groups), &xc, d, &bad, cout)
            .is_err());
        assert!(cpu
            .conv(ConvSpec::grouped1x1(3), &xc, d, &bad, cout)
            .is_err());
    }
    // The solve at the test shape, at CIFAR's and MNIST's sides (the CUDA kernel's tables) and
    // past the kernel's 32-pixel limit (the host path).
    for (i, ds) in [
        d,
        Dims::new(2, 3, 32, 32),
        Dims::new(1, 2, 28, 28),
        Dims::new(1, 2, 40, 33),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 40 + 3 * i as u64;
        let (xs, zs, diff) = (
            rand_vec(ds.len(), seed),
            rand_vec(ds.len(), seed + 1),
            rand_vec(ds.c, seed + 2),
        );
        let what = |w: &str| format!("diffusion {w} {}x{}", ds.h, ds.w);
        let y = re.diffusion_solve(&xs, ds, &diff, 0.6).unwrap();
        let yc = cpu.diffusion_solve(&up(&xs), ds, &up(&diff), 0.6).unwrap();
        close(&yc, &y, &what("solve"));
        let (dx, dd) = re.diffusion_solve_vjp(&y, ds, &diff, 0.6, &zs).unwrap();
        let (dxc, ddc) = cpu
            .diffusion_solve_vjp(&yc, ds, &up(&diff), 0.6, &up(&zs))
            .unwrap();
        close(&dxc, &dx, &what("dx"));
        close(&ddc, &dd, &what("dd"));
    }
    assert!(cpu.diffusion_solve(&xc, d, &up(&[1.0]), 0.6).is_err());
    assert!(cpu.diffusion_solve(&xc, d, &up(&w5[..d.c]), -1.0).is_err());
    let he = Dims::new(3, 8, 8, 6);
    let xh = rand_vec(he.len(), 36);
    close(
        &cpu.haar(&up(&xh), he).unwrap(),
        &re.haar(&xh, he).unwrap(),
        "haar",
    );
    let hc = he.with_c(4 * he.c);
    let hc = Dims::new(hc.n, hc.c, he.h / 2, he.w / 2);
    close(
        &cpu.haar_inv(&up(&re.haar(&xh, he).unwrap()), he).unwrap(),
        &xh,
        "haar_inv",
    );
    assert_eq!(hc.len(), he.len());
    let q: Vec<i32> = xh.iter().map(|v| (v * 65536.0) as i32).collect();
    let fq = cpu.haar_fixed(&cpu.iupload(&q).unwrap(), he).unwrap();
    assert_eq!(
        cpu.idownload(&fq).unwrap(),
        structured::haar_fixed(&q, he).unwrap(),
        "haar_fixed"
    );
    let back = cpu.haar_fixed_inv(&fq, he).unwrap();
    assert_eq!(cpu.idownload(&back).unwrap(), q, "haar_fixed_inv");
    assert!(cpu.haar(&up(&xh), Dims::new(3, 8, 7, 6)).is_err());
}
