//! `reversible` against `store`, tensor by tensor, over every step type x operator at several
//! widths, with the settings of the issue-13 report (relu, tvNorm, h = 0.5, `pdenet init`
//! weights). The rebuild's drift is ~1e-7 in f32; a gradient further off than 1e-5 is a defect.

use pdenet::backend::Backend;
use pdenet::config::{Config, LayerType};
use pdenet::network::Layout;
use pdenet::schedule::{Engine, Policy};
use pdenet::tensor::HostTensor;
use rand::{Rng, SeedableRng};

fn config(layer: LayerType, op: &str, widths: &[usize]) -> Config {
    let steps = vec![3; widths.len()];
    let json = format!(
        r#"{{"kind":"image","in_channels":1,"classes":3,"widths":{widths:?},"steps":{steps:?},
        "layer":"{}","h":0.5,"activation":"relu","norm":"tv","operator":"{op}"}}"#,
        layer.name()
    );
    Config::parse(&json, false).unwrap()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    num.sqrt() / den.sqrt().max(1e-30)
}

fn matrix<B: Backend>(make: impl Fn() -> B) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let x = HostTensor::new(
        vec![4, 1, 12, 12],
        (0..4 * 144).map(|_| rng.random_range(0.0..1.0)).collect(),
    )
    .unwrap();
    let labels = vec![0, 1, 2, 0];
    let mut worst = 0.0f64;
    for layer in LayerType::ALL {
        for (op, widths) in [
            ("full", &[8usize, 16][..]),
            ("lean", &[8, 16]),
            ("lean", &[4, 8]),
            ("mgic", &[32, 16]),
        ] {
            let cfg = config(layer, op, widths);
            let layout = Layout::new(&cfg).unwrap();
            let params = layout.init(7);
            let mut eng = Engine::new(make(), layout, &params).unwrap();
            let dev = eng.backend.name();
            let store = eng.grad(&x, &labels, Policy::Store.schedule(), false);
            let rev = eng.grad(&x, &labels, Policy::Reversible.schedule(), false);
            let (store, rev) = (store.unwrap(), rev.unwrap());
            for ((name, _, a), (_, _, b)) in rev.grads.iter().zip(store.grads.iter()) {
                let e = rel(&a.data, &b.data);
                worst = worst.max(e);
                assert!(
                    e <= 1e-5,
                    "{dev} {} {op} {widths:?}: reversible vs store {name}: {e:.2e}",
                    layer.name()
                );
            }
            let e = rel(&rev.grad_x, &store.grad_x);
            assert!(e <= 1e-5, "{dev} {} {op}: grad.x {e:.2e}", layer.name());
        }
    }
    println!("worst reversible-vs-store tensor: {worst:.2e}");
}

#[test]
fn reversible_matches_store_reference() {
    matrix(|| pdenet::backend::reference::Reference);
}

#[test]
fn reversible_matches_store_cpu() {
    matrix(pdenet::backend::cpu::Cpu::new);
}
