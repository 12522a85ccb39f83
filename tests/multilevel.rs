//! Multilevel training in depth: the prolongated network (twice the steps, half the step size,
//! weights interpolated in time) discretises the same continuous network as the coarse one.

use pdenet::backend::reference::Reference;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::params::ParamSet;
use pdenet::schedule::Engine;
use pdenet::train::multilevel::prolongate;
use pdenet::HostTensor;

/// Step weights that vary linearly in time across each unit (so that the interpolation is exact
/// away from the ends); everything else as initialised.
fn smooth_in_time(cfg: &Config, seed: u64) -> ParamSet {
    let layout = Layout::new(cfg).unwrap();
    let a = layout.init(seed);
    let b = layout.init(seed + 1);
    let mut p = a.clone();
    let names: Vec<String> = p.names().map(str::to_string).collect();
    for name in names {
        let Some(rest) = name.strip_prefix("units.") else {
            continue;
        };
        let mut it = rest.splitn(4, '.');
        let (unit, kw, step, tail) = (it.next(), it.next(), it.next(), it.next());
        if kw != Some("steps") {
            continue;
        }
        let (unit, step, tail): (usize, usize, &str) = (
            unit.unwrap().parse().unwrap(),
            step.unwrap().parse().unwrap(),
            tail.unwrap(),
        );
        let t = (step as f32 + 0.5) / cfg.steps[unit] as f32;
        let a0 = a.get(&format!("units.{unit}.steps.0.{tail}")).unwrap();
        let b0 = b.get(&format!("units.{unit}.steps.0.{tail}")).unwrap();
        let out = p.get_mut(&name).unwrap();
        for ((o, x), y) in out.data.iter_mut().zip(&a0.data).zip(&b0.data) {
            *o = x + 0.5 * t * (y - x);
        }
    }
    p
}

fn logits(cfg: &Config, p: &ParamSet, x: &HostTensor) -> Vec<f64> {
    let engine = Engine::new(Reference, Layout::new(cfg).unwrap(), p).unwrap();
    engine
        .logits(x)
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    d / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn prolongation_keeps_names_shapes_and_constant_weights() {
    for name in ["ref-2d", "ref-mnist"] {
        let cfg = Config::reference(name).unwrap();
        let coarse = Layout::new(&cfg).unwrap().init(3);
        let (fine_cfg, fine) = prolongate(&cfg, &coarse).unwrap();
        assert_eq!(fine_cfg.h, cfg.h / 2.0);
        let want: Vec<usize> = cfg.steps.iter().map(|s| 2 * s).collect();
        assert_eq!(fine_cfg.steps, want);
        let template = Layout::new(&fine_cfg).unwrap().init(0);
        assert!(template
            .iter()
            .map(|(n, _, t)| (n, &t.shape))
            .eq(fine.iter().map(|(n, _, t)| (n, &t.shape))));
        // Non-step tensors are copied; the first and last fine steps are the coarse ends.
        for (n, _, t) in coarse.iter() {
            if !n.contains(".steps.") {
                assert_eq!(fine.get(n).unwrap(), t, "{n}");
            }
        }
        let last = cfg.steps[0] - 1;
        let k = "K";
        assert_eq!(
            fine.get(&format!("units.0.steps.0.{k}")),
            coarse.get(&format!("units.0.steps.0.{k}"))
        );
        assert_eq!(
            fine.get(&format!("units.0.steps.{}.{k}", 2 * last + 1)),
            coarse.get(&format!("units.0.steps.{last}.{k}"))
        );
    }
}

/// The logits of the prolongated networks converge as the step size halves (first order).
#[test]
fn prolongated_networks_converge_to_the_continuous_network() {
    for (name, x) in [
        (
            "ref-2d",
            HostTensor::new(vec![4, 2], vec![0.3, -0.7, 1.1, 0.2, -0.5, -0.4, 0.9, 0.8]).unwrap(),
        ),
        (
            "ref-mnist",
            HostTensor::new(
                vec![2, 1, 8, 8],
                (0..128)
                    .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.3)
                    .collect(),
            )
            .unwrap(),
        ),
    ] {
        let mut cfg = Config::reference(name).unwrap();
        if name == "ref-mnist" {
            cfg.layer = pdenet::config::StepType::Parabolic;
            cfg.steps = vec![4, 4, 4];
            cfg.h = 0.2;
        }
        let p0 = smooth_in_time(&cfg, 9);
        let (cfg1, p1) = prolongate(&cfg, &p0).unwrap();
        let (cfg2, p2) = prolongate(&cfg1, &p1).unwrap();
        let (l0, l1, l2) = (
            logits(&cfg, &p0, &x),
            logits(&cfg1, &p1, &x),
            logits(&cfg2, &p2, &x),
        );
        let (d01, d12) = (rel(&l0, &l1), rel(&l1, &l2));
        eprintln!("{name}: logits move {d01:.3e} (h -> h/2), then {d12:.3e} (h/2 -> h/4)");
        assert!(
            d01 < 0.1,
            "{name}: coarse -> fine moves the logits by {d01}"
        );
        assert!(d12 < 0.75 * d01, "{name}: no convergence: {d01} then {d12}");
    }
}

#[test]
fn missing_or_misshapen_coarse_weights_are_named() {
    let cfg = Config::reference("ref-2d").unwrap();
    let mut coarse = Layout::new(&cfg).unwrap().init(1);
    coarse.get_mut("units.0.steps.3.K").unwrap().shape = vec![4, 16];
    let err = prolongate(&cfg, &coarse).err().unwrap().to_string();
    assert!(err.contains("units.0.steps.3.K"), "{err}");
}
