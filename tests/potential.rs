//! The potential network of SPEC section 11: exact gradient and Laplacian against finite
//! differences (f64), the Taylor test, the f32 batched path against the f64 reference, the
//! weight VJPs against finite differences, and bad input.

use pdenet::potential::{
    eval_batch, eval_sample, loss_and_grad, vjp_sample, Cotangent, Order, PotentialConfig,
    PotentialNet, PotentialShape, Workspace,
};
use rand::{Rng, SeedableRng};

fn shape(n: usize, m: usize, layers: usize, trace_dims: usize) -> PotentialShape {
    let mut c = PotentialConfig::new(n, m, layers, 0.4);
    c.rank = Some(3.min(n));
    c.trace_dims = Some(trace_dims);
    c.shape().unwrap()
}

/// A network with non-trivial c and c_0 and larger weights than init, so that every term acts.
fn net(s: PotentialShape, seed: u64) -> PotentialNet<f64> {
    let mut net = PotentialNet::<f64>::init(s, seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 100);
    for v in &mut net.theta {
        *v = 1.5 * *v + 0.2 * (rng.random::<f64>() - 0.5);
    }
    net
}

fn point(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

fn value(net: &PotentialNet<f64>, x: &[f64]) -> f64 {
    let mut ws = Workspace::new(&net.shape);
    eval_sample(net, x, Order::Value, &mut ws).value
}

const CASES: [(usize, usize, usize, usize); 4] =
    [(1, 3, 0, 1), (3, 4, 1, 3), (5, 6, 3, 5), (6, 5, 2, 4)];

#[test]
fn gradient_matches_central_differences() {
    for (ci, &(n, m, l, k)) in CASES.iter().enumerate() {
        let net = net(shape(n, m, l, k), ci as u64);
        let x = point(n, 7 + ci as u64);
        let mut ws = Workspace::new(&net.shape);
        let out = eval_sample(&net, &x, Order::Laplacian, &mut ws);
        assert!((out.value - value(&net, &x)).abs() < 1e-14);
        let eps = 1e-5;
        for c in 0..n {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[c] += eps;
            xm[c] -= eps;
            let fd = (value(&net, &xp) - value(&net, &xm)) / (2.0 * eps);
            let err = (fd - out.grad[c]).abs() / (1.0 + fd.abs());
            assert!(
                err < 1e-8,
                "case {ci} dim {c}: fd {fd} exact {}",
                out.grad[c]
            );
        }
    }
}

#[test]
fn laplacian_matches_trace_of_finite_difference_hessian() {
    for (ci, &(n, m, l, k)) in CASES.iter().enumerate() {
        let net = net(shape(n, m, l, k), 10 + ci as u64);
        let x = point(n, 20 + ci as u64);
        let mut ws = Workspace::new(&net.shape);
        let out = eval_sample(&net, &x, Order::Laplacian, &mut ws);
        // The Hessian's diagonal by central differences of the exact gradient.
        let eps = 1e-5;
        let mut trace = 0.0;
        for c in 0..k {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[c] += eps;
            xm[c] -= eps;
            let gp = eval_sample(&net, &xp, Order::Gradient, &mut ws).grad[c];
            let gm = eval_sample(&net, &xm, Order::Gradient, &mut ws).grad[c];
            trace += (gp - gm) / (2.0 * eps);
        }
        let err = (trace - out.laplacian).abs() / (1.0 + trace.abs());
        assert!(
            err < 1e-8,
            "case {ci}: fd trace {trace}, exact {}",
            out.laplacian
        );
        // And by second differences of the value alone.
        let e2 = 1e-4;
        let f0 = value(&net, &x);
        let mut trace2 = 0.0;
        for c in 0..k {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[c] += e2;
            xm[c] -= e2;
            trace2 += (value(&net, &xp) - 2.0 * f0 + value(&net, &xm)) / (e2 * e2);
        }
        assert!(
            (trace2 - out.laplacian).abs() / (1.0 + trace2.abs()) < 1e-5,
            "case {ci}: second differences {trace2}, exact {}",
            out.laplacian
        );
    }
}

#[test]
fn taylor_remainder_falls_as_t_squared() {
    let net = net(shape(5, 6, 3, 5), 3);
    let x = point(5, 4);
    let dir = point(5, 5);
    let mut ws = Workspace::new(&net.shape);
    let out = eval_sample(&net, &x, Order::Gradient, &mut ws);
    let slope: f64 = out.grad.iter().zip(&dir).map(|(g, v)| g * v).sum();
    let f0 = out.value;
    let rem = |t: f64| {
        let xt: Vec<f64> = x.iter().zip(&dir).map(|(a, b)| a + t * b).collect();
        (value(&net, &xt) - f0 - t * slope).abs()
    };
    let mut t = 0.1;
    let mut prev = rem(t);
    for _ in 0..6 {
        t /= 2.0;
        let r = rem(t);
        let ratio = prev / r;
        // Halving t divides an O(t^2) remainder by 4 (the zeroth-order one would by 1).
        assert!((3.6..4.4).contains(&ratio), "t {t}: ratio {ratio}");
        prev = r;
    }
}

#[test]
fn f32_batched_path_matches_f64_reference() {
    let s = shape(12, 16, 3, 9);
    let net64 = net(s, 42);
    let net32: PotentialNet<f32> = net64.cast();
    let rows = 150;
    let x64 = point(rows * s.n, 43);
    // The f64 reference computed on the f32-rounded inputs and weights.
    let net64r: PotentialNet<f64> = net32.cast();
    let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    let x64r: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
    let fast = eval_batch(&net32, &x32, Order::Laplacian);
    let mut ws = Workspace::new(&s);
    let mut worst = [0.0f64; 3];
    for r in 0..rows {
        let xi = &x64r[r * s.n..(r + 1) * s.n];
        let refo = eval_sample(&net64r, xi, Order::Laplacian, &mut ws);
        let rel = |a: f64, b: f64, scale: f64| (a - b).abs() / scale.max(1.0);
        worst[0] = worst[0].max(rel(fast.value[r] as f64, refo.value, refo.value.abs()));
        let gs = refo.grad.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for c in 0..s.n {
            worst[1] = worst[1].max(rel(fast.grad[r * s.n + c] as f64, refo.grad[c], gs));
        }
        worst[2] = worst[2].max(rel(
            fast.laplacian[r] as f64,
            refo.laplacian,
            refo.laplacian.abs(),
        ));
    }
    assert!(
        worst.iter().all(|&e| e < 2e-5),
        "value, grad, laplacian errors {worst:?}"
    );
}

/// The loss `sum_r cv_r Phi + cg_r . grad Phi + cl_r Lap Phi` with fixed random cotangents.
fn linear_loss(net: &PotentialNet<f64>, x: &[f64], cots: &[Cotangent<f64>], order: Order) -> f64 {
    let n = net.shape.n;
    let mut ws = Workspace::new(&net.shape);
    let mut total = 0.0;
    for (r, xi) in x.chunks_exact(n).enumerate() {
        let o = eval_sample(net, xi, order, &mut ws);
        let c = &cots[r];
        total += c.value * o.value + c.laplacian * o.laplacian;
        total += c.grad.iter().zip(&o.grad).map(|(a, b)| a * b).sum::<f64>();
    }
    total
}

#[test]
fn weight_vjps_match_finite_differences() {
    for (ci, &(n, m, l, k)) in CASES.iter().enumerate() {
        let base = net(shape(n, m, l, k), 50 + ci as u64);
        let rows = 3;
        let x = point(rows * n, 60 + ci as u64);
        for (mode, order) in [
            (0, Order::Value),
            (1, Order::Gradient),
            (2, Order::Laplacian),
            (3, Order::Laplacian),
        ] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(70 + ci as u64 + mode);
            let mut u = || rng.random::<f64>() - 0.5;
            let cots: Vec<Cotangent<f64>> = (0..rows)
                .map(|_| Cotangent {
                    value: if mode == 2 { 0.0 } else { u() },
                    grad: if mode >= 1 && mode != 2 {
                        (0..n).map(|_| u()).collect()
                    } else {
                        Vec::new()
                    },
                    laplacian: if mode >= 2 { u() } else { 0.0 },
                })
                .collect();
            let mut g = vec![0.0; base.theta.len()];
            let mut ws = Workspace::new(&base.shape);
            for (r, xi) in x.chunks_exact(n).enumerate() {
                eval_sample(&base, xi, order, &mut ws);
                vjp_sample(&base, xi, &cots[r], &mut ws, &mut g);
            }
            let eps = 1e-6;
            for (p, &gp) in g.iter().enumerate() {
                let (mut a, mut b) = (base.clone(), base.clone());
                a.theta[p] += eps;
                b.theta[p] -= eps;
                let fd = (linear_loss(&a, &x, &cots, order) - linear_loss(&b, &x, &cots, order))
                    / (2.0 * eps);
                let err = (fd - gp).abs() / (1.0 + fd.abs());
                assert!(
                    err < 1e-7,
                    "case {ci} mode {mode} param {p}: fd {fd}, vjp {gp}"
                );
            }
        }
    }
}

#[test]
fn batched_loss_gradient_equals_per_sample_sum() {
    let s = shape(4, 5, 2, 4);
    let net = net(s, 80);
    let rows = 200; // more than one chunk
    let x = point(rows * s.n, 81);
    let loss = |_r: usize, _x: &[f64], o: &pdenet::potential::SampleOut<f64>| {
        let res = o.laplacian + 1.0;
        (
            res * res + 0.5 * o.grad.iter().map(|g| g * g).sum::<f64>() - o.value,
            Cotangent {
                value: -1.0,
                grad: o.grad.clone(),
                laplacian: 2.0 * res,
            },
        )
    };
    let mut g = vec![0.0; net.theta.len()];
    let total = loss_and_grad(&net, &x, Order::Laplacian, &loss, &mut g);
    let mut g2 = vec![0.0; net.theta.len()];
    let mut t2 = 0.0;
    let mut ws = Workspace::new(&s);
    for (r, xi) in x.chunks_exact(s.n).enumerate() {
        let o = eval_sample(&net, xi, Order::Laplacian, &mut ws);
        let (t, c) = loss(r, xi, &o);
        t2 += t;
        vjp_sample(&net, xi, &c, &mut ws, &mut g2);
    }
    assert!((total - t2).abs() <= 1e-9 * t2.abs());
    for (a, b) in g.iter().zip(&g2) {
        assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()));
    }
}

#[test]
fn configs_that_are_not_potential_networks_are_refused() {
    let dense = r#"{"kind":"dense","dense_input":2,"classes":2,"widths":[8],"steps":[16],"h":0.1,"layer":"resnet"}"#;
    let e = PotentialConfig::parse(dense, false, "c.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a potential network") && !e.contains('\n'),
        "{e}"
    );
    let bad = [
        (
            r#"{"kind":"potential","dense_input":0,"widths":[8],"steps":[2],"h":0.5}"#,
            "dense_input",
        ),
        (
            r#"{"kind":"potential","dense_input":3,"widths":[8,8],"steps":[2],"h":0.5}"#,
            "widths",
        ),
        (
            r#"{"kind":"potential","dense_input":3,"widths":[8],"steps":[2],"h":0.5,"trace_dims":4}"#,
            "trace_dims",
        ),
        (
            r#"{"kind":"potential","dense_input":3,"widths":[8],"steps":[2],"h":-1}"#,
            "`h`",
        ),
        (
            r#"{"kind":"potential","dense_input":3,"widths":[8],"steps":[2],"h":0.5,"activation":"relu"}"#,
            "logcosh",
        ),
        (
            r#"{"kind":"potential","dense_input":3,"widths":[8],"steps":[2],"h":0.5,"depth":3}"#,
            "depth",
        ),
    ];
    for (text, key) in bad {
        let e = PotentialConfig::parse(text, false, "c.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(key) && e.contains("c.json") && !e.contains('\n'),
            "{e}"
        );
    }
    let ok = r#"{"kind":"potential","dense_input":3,"widths":[8],"steps":[2],"h":0.5}"#;
    let s = PotentialConfig::parse(ok, false, "c.json")
        .unwrap()
        .shape()
        .unwrap();
    assert_eq!((s.rank, s.trace_dims), (3, 3));
}

#[test]
fn weights_round_trip_with_spec_names() {
    let s = shape(3, 4, 2, 3);
    let net = PotentialNet::<f32>::init(s, 1);
    let p = net.to_params();
    let names: Vec<&str> = p.names().collect();
    assert_eq!(
        names,
        [
            "open.weight",
            "open.bias",
            "steps.0.weight",
            "steps.0.bias",
            "steps.1.weight",
            "steps.1.bias",
            "w",
            "A",
            "c.weight",
            "c.bias"
        ]
    );
    let map: std::collections::HashMap<_, _> = p.to_map().into_iter().collect();
    let back = PotentialNet::<f32>::from_tensors(s, map.clone(), "w.safetensors").unwrap();
    assert_eq!(back, net);
    let mut wrong = map.clone();
    wrong.get_mut("A").unwrap().shape = vec![3, 2];
    let e = PotentialNet::<f32>::from_tensors(s, wrong, "w.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`A`") && e.contains("w.safetensors"), "{e}");
    let mut missing = map;
    missing.remove("steps.1.bias");
    let e = PotentialNet::<f32>::from_tensors(s, missing, "w.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps.1.bias"), "{e}");
}

/// Shapes for the blocked path: d = 1, 3, 10, 37; widths off the SIMD width; 0, 1, 3 layers;
/// trace_dims below n.
const BLOCK_CASES: [(usize, usize, usize, usize); 6] = [
    (1, 3, 0, 1),
    (3, 5, 1, 3),
    (10, 13, 3, 10),
    (10, 7, 1, 4),
    (37, 11, 3, 37),
    (37, 9, 0, 20),
];

fn rel(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.abs().max(1.0)
}

fn random_cots(n: usize, rows: usize, seed: u64, mode: u64) -> Vec<Cotangent<f64>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut u = || rng.random::<f64>() - 0.5;
    (0..rows)
        .map(|r| Cotangent {
            value: u(),
            // mode 1: some rows without a gradient cotangent; mode 2: none at all.
            grad: if mode == 2 || (mode == 1 && r % 3 == 1) {
                Vec::new()
            } else {
                (0..n).map(|_| u()).collect()
            },
            laplacian: if mode == 2 { 0.0 } else { u() },
        })
        .collect()
}

#[test]
fn blocked_path_matches_per_sample_reference_f64() {
    use pdenet::potential::block::{eval_block, vjp_block, BlockWorkspace};
    for (ci, &(n, m, l, k)) in BLOCK_CASES.iter().enumerate() {
        let s = shape(n, m, l, k);
        let net = net(s, 200 + ci as u64);
        for rows in [1usize, 5, 8, 19] {
            let x = point(rows * n, 300 + ci as u64 + rows as u64);
            for mode in 0..3u64 {
                let cots = random_cots(n, rows, 400 + ci as u64 + mode, mode);
                // Reference.
                let mut ws = Workspace::new(&s);
                let mut gref = vec![0.0; net.theta.len()];
                let mut refs = Vec::new();
                for (r, xi) in x.chunks_exact(n).enumerate() {
                    refs.push(eval_sample(&net, xi, Order::Laplacian, &mut ws));
                    vjp_sample(&net, xi, &cots[r], &mut ws, &mut gref);
                }
                // Blocked, with a block size that does not divide the rows.
                for bs in [1usize, 4, 8] {
                    let mut bw = BlockWorkspace::new(&s, bs);
                    let mut g = vec![0.0; net.theta.len()];
                    for (bi, xb) in x.chunks(bs * n).enumerate() {
                        eval_block(&net, xb, Order::Laplacian, &mut bw);
                        for r in 0..xb.len() / n {
                            let o = &refs[bi * bs + r];
                            let what = format!("case {ci} rows {rows} bs {bs} row {r}");
                            assert!(rel(bw.value[r], o.value, o.value) < 1e-12, "{what} value");
                            assert!(
                                rel(bw.laplacian[r], o.laplacian, o.laplacian) < 1e-12,
                                "{what} laplacian {} vs {}",
                                bw.laplacian[r],
                                o.laplacian
                            );
                            for c in 0..n {
                                assert!(
                                    rel(bw.grad[r * n + c], o.grad[c], o.grad[c]) < 1e-12,
                                    "{what} grad {c}"
                                );
                            }
                        }
                        let nb = xb.len() / n;
                        vjp_block(&net, xb, &cots[bi * bs..bi * bs + nb], &mut bw, &mut g);
                    }
                    let gs = gref.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                    for (p, (a, b)) in g.iter().zip(&gref).enumerate() {
                        assert!(
                            rel(*a, *b, gs) < 1e-12,
                            "case {ci} rows {rows} bs {bs} mode {mode} param {p}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn blocked_batch_f32_matches_f64_reference() {
    for (ci, &(n, m, l, k)) in BLOCK_CASES.iter().enumerate() {
        let s = shape(n, m, l, k);
        let net64 = net(s, 500 + ci as u64);
        let net32: PotentialNet<f32> = net64.cast();
        let net64r: PotentialNet<f64> = net32.cast();
        let rows = 133;
        let x32: Vec<f32> = point(rows * n, 600 + ci as u64)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let fast = eval_batch(&net32, &x32, Order::Laplacian);
        let cots = random_cots(n, rows, 700 + ci as u64, 0);
        let cots32: Vec<Cotangent<f32>> = cots
            .iter()
            .map(|c| Cotangent {
                value: c.value as f32,
                grad: c.grad.iter().map(|&v| v as f32).collect(),
                laplacian: c.laplacian as f32,
            })
            .collect();
        let loss32 =
            |r: usize, _x: &[f32], _o: &pdenet::potential::SampleOut<f32>| (0.0, cots32[r].clone());
        let mut g32 = vec![0.0f32; net32.theta.len()];
        loss_and_grad(&net32, &x32, Order::Laplacian, &loss32, &mut g32);
        let mut ws = Workspace::new(&s);
        let mut gref = vec![0.0; net64r.theta.len()];
        for (r, xi) in x64.chunks_exact(n).enumerate() {
            let o = eval_sample(&net64r, xi, Order::Laplacian, &mut ws);
            let cr = Cotangent {
                value: cots32[r].value as f64,
                grad: cots32[r].grad.iter().map(|&v| v as f64).collect(),
                laplacian: cots32[r].laplacian as f64,
            };
            vjp_sample(&net64r, xi, &cr, &mut ws, &mut gref);
            assert!(
                rel(fast.value[r] as f64, o.value, o.value) < 1e-5,
                "case {ci} value"
            );
            assert!(
                rel(fast.laplacian[r] as f64, o.laplacian, o.laplacian) < 1e-5,
                "case {ci} laplacian"
            );
            let gs = o.grad.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for c in 0..n {
                assert!(
                    rel(fast.grad[r * n + c] as f64, o.grad[c], gs) < 1e-5,
                    "case {ci} grad"
                );
            }
        }
        let gs = gref.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (p, (a, b)) in g32.iter().zip(&gref).enumerate() {
            assert!(
                rel(*a as f64, *b, gs) < 1e-5,
                "case {ci} param {p}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn batch_results_do_not_depend_on_thread_count() {
    let s = shape(10, 13, 3, 10);
    let net = net(s, 900);
    let x = point(300 * s.n, 901);
    let loss = |_r: usize, _x: &[f64], o: &pdenet::potential::SampleOut<f64>| {
        (
            o.laplacian * o.laplacian,
            Cotangent {
                value: 0.3,
                grad: o.grad.clone(),
                laplacian: 2.0 * o.laplacian,
            },
        )
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let out = eval_batch(&net, &x, Order::Laplacian);
            let mut g = vec![0.0; net.theta.len()];
            let t = loss_and_grad(&net, &x, Order::Laplacian, &loss, &mut g);
            (out, t, g)
        })
    };
    let (o1, t1, g1) = run(1);
    let (o3, t3, g3) = run(3);
    assert_eq!(o1, o3);
    assert_eq!(t1.to_bits(), t3.to_bits());
    assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
}
