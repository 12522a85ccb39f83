//! Property tests over hostile inputs (issue 13): random configs and random safetensors headers
//! go through the library entry points of `init`, `info` and `grad`; every one ends in `Ok` or
//! a one-line error, never a panic (or an abort: the sizes that would allocate beyond the
//! machine are refused before anything is allocated). Bounded for CI: a few seconds.

use pdenet::backend::cpu::Cpu;
use pdenet::config::Config;
use pdenet::network::Layout;
use pdenet::params::{read_batch, read_safetensors};
use pdenet::schedule::plan::{count_flops, plan_step};
use pdenet::schedule::{Engine, Policy};
use pdenet::HostTensor;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Inputs tried and inputs refused with a one-line error, over both tests.
static TRIED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
/// Configs that reached a plan, and gradients computed (the paths to `Ok`).
static PLANNED: AtomicUsize = AtomicUsize::new(0);
static GRADS: AtomicUsize = AtomicUsize::new(0);
/// Errors seen in the current input (an input counts as refused once).
static ERRORS: AtomicUsize = AtomicUsize::new(0);

/// Runs `f`; a panic fails the property, an error must be one line. Returns the value.
fn handled<T>(
    what: &str,
    f: impl FnOnce() -> pdenet::Result<T>,
) -> Result<Option<T>, TestCaseError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("{what} panicked: {msg}")))
        }
        Ok(Err(e)) => {
            let m = e.to_string();
            prop_assert!(!m.trim().is_empty() && !m.contains('\n'), "{what}: `{m}`");
            ERRORS.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
        Ok(Ok(v)) => Ok(Some(v)),
    }
}

/// Counts one input: tried, and refused when any stage refused it.
fn count_input(r: Result<(), TestCaseError>) -> Result<(), TestCaseError> {
    TRIED.fetch_add(1, Ordering::Relaxed);
    if ERRORS.swap(0, Ordering::Relaxed) > 0 {
        REFUSED.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Sizes: mostly small, sometimes at or past the bounds, sometimes near `usize::MAX`.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..10,
        1 => 10u64..70_000,
        1 => (16u32..64).prop_map(|k| 1u64 << k),
        1 => prop_oneof![Just(u64::MAX), Just(u64::MAX - 1), Just(100_001), Just(65_537)],
    ]
}

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(options).prop_map(str::to_string)
}

/// A JSON config: every field random, each sometimes absent, sometimes of the wrong type.
fn config_json() -> impl Strategy<Value = String> {
    (
        pick(&["\"image\"", "\"dense\"", "\"sparse\"", "3"]),
        proptest::option::of(size()),
        proptest::option::of(size()),
        size(),
        proptest::collection::vec(size(), 0..4),
        proptest::collection::vec(size(), 0..4),
        pick(&[
            "\"resnet\"", "\"antisymmetric\"", "\"parabolic\"", "\"hyperbolic\"", "\"hamiltonian\"",
            "\"imex\"", "\"cubic\"",
        ]),
        pick(&["0.5", "0", "-1", "1e308", "1e400", "\"h\"", "0.1"]),
        (
            pick(&["\"full\"", "\"lean\"", "\"mgic\"", "\"odd\""]),
            pick(&["\"tv\"", "\"none\"", "null", "1"]),
            pick(&["\"relu\"", "\"tanh\"", "\"logcosh\"", "\"gelu\""]),
            pick(&["\"conv\"", "\"haar\""]),
            pick(&["", ",\"gamma\":-1", ",\"gamma\":0.01", ",\"depth\":3"]),
        ),
    )
        .prop_map(|(kind, inc, dense, classes, widths, steps, layer, h, rest)| {
            let (op, norm, act, connect, extra) = rest;
            let mut s = format!("{{\"kind\":{kind},\"classes\":{classes},\"layer\":{layer},\"h\":{h}");
            if let Some(c) = inc {
                s += &format!(",\"in_channels\":{c}");
            }
            if let Some(d) = dense {
                s += &format!(",\"dense_input\":{d}");
            }
            s += &format!(",\"widths\":{widths:?},\"steps\":{steps:?}");
            s += &format!(",\"operator\":{op},\"norm\":{norm},\"activation\":{act},\"connect\":{connect}{extra}}}");
            s
        })
}

/// A config that is valid but for its sizes (and, one time in four, one more field): reaches
/// the layout, the plan and the gradient far more often than [`config_json`].
fn near_valid_config() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        size(),
        2u64..12,
        proptest::collection::vec((size(), size()), 1..4),
        pick(&["resnet", "antisymmetric", "parabolic", "hyperbolic", "hamiltonian", "imex"]),
        pick(&["full", "lean", "mgic"]),
        pick(&["relu", "tanh", "logcosh"]),
        pick(&["", "", "", ",\"norm\":\"none\"", ",\"h\":-0.5", ",\"connect\":\"haar\""]),
    )
        .prop_map(|(image, input, classes, units, layer, op, act, extra)| {
            // Widths even (hamiltonian) and mostly small; steps mostly 0-3.
            let widths: Vec<u64> = units.iter().map(|(w, _)| 2 * (w / 2).max(1)).collect();
            let steps: Vec<u64> = units.iter().map(|(_, s)| match *s {
                    0..10 => s % 4,
                    // Valid deep units build a layout of 100,000 names in ~0.4 s: keep them
                    // shallow here, and the ones past the bound as they are.
                    10..100_000 => s % 200,
                    _ => *s,
                }).collect();
            let (kind, input, op) = if image {
                ("image", format!("\"in_channels\":{}", input.max(1)), op.as_str())
            } else {
                ("dense", format!("\"dense_input\":{}", input.max(1)), "full")
            };
            let layer = if !image && layer == "imex" { "resnet" } else { layer.as_str() };
            let h = if extra.contains("\"h\"") { "" } else { ",\"h\":0.5" };
            format!(
                "{{\"kind\":\"{kind}\",{input},\"classes\":{classes},\"widths\":{widths:?},\"steps\":{steps:?},\"layer\":\"{layer}\",\"operator\":\"{op}\",\"activation\":\"{act}\"{h}{extra}}}"
            )
        })
}

/// What `info`, `init` and `grad` do with a config, through the library.
fn exercise_config(text: &str, batch: u64, seed: u64) -> Result<(), TestCaseError> {
    let Some(cfg) = handled("parse", || Config::parse(text, false))? else {
        return Ok(());
    };
    let Some(layout) = handled("layout", || Layout::new(&cfg))? else {
        return Ok(());
    };
    let _ = layout.parameter_count();
    // A valid deep network (up to the bound of 100,000 steps) plans in seconds: for CI time
    // only its layout is built here (`tests/harden.rs` plans huge ones).
    if cfg.total_steps() > 200 {
        return Ok(());
    }
    let sample = cfg.sample_shape();
    handled("flops", || count_flops(&layout, &sample))?;
    let mut shape = vec![batch as usize];
    shape.extend_from_slice(&sample);
    for p in Policy::ALL {
        if handled("plan", || plan_step(&layout, &shape, p.memory()))?.is_some() {
            PLANNED.fetch_add(1, Ordering::Relaxed);
        }
    }
    // init and a real gradient only where they are small (the bounds above are what is tested;
    // a valid large network would merely take long).
    if layout.param_bytes() > 4_000_000 || cfg.total_steps() > 8 {
        return Ok(());
    }
    let params = layout.init(seed);
    let n = 2;
    let mut xs = vec![n];
    xs.extend(match cfg.kind {
        pdenet::config::NetworkKind::Image => vec![cfg.input_width(), 8, 8],
        pdenet::config::NetworkKind::Dense => vec![cfg.input_width()],
    });
    let len: usize = xs.iter().product();
    if len > 1 << 20 {
        return Ok(());
    }
    let x = HostTensor::new(
        xs,
        (0..len)
            .map(|i| ((i * 31 % 17) as f32) / 8.0 - 1.0)
            .collect(),
    )
    .expect("consistent");
    let labels: Vec<usize> = (0..n).map(|i| i % cfg.classes).collect();
    for p in Policy::ALL {
        let g = handled("grad", || {
            let mut eng = Engine::new(Cpu::new(), layout.clone(), &params)?;
            eng.grad(&x, &labels, p.memory(), false)
        })?;
        if g.is_some() {
            GRADS.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[test]
fn random_configs_through_init_info_and_grad() {
    let mut runner = TestRunner::new(PtConfig {
        cases: 300,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let t = std::time::Instant::now();
    runner
        .run(
            &(
                prop_oneof![config_json(), near_valid_config()],
                0u64..u64::MAX,
                0u64..100,
            ),
            |(text, batch, seed)| {
                // Batches: mostly small, sometimes absurd.
                let batch = if batch % 4 == 0 {
                    batch
                } else {
                    1 + batch % 64
                };
                count_input(exercise_config(&text, batch, seed))
            },
        )
        .unwrap();
    // The reference configs and a valid one too (the path to `Ok`).
    for name in pdenet::config::REFERENCE_NAMES {
        let text = serde_json::to_string(&Config::reference(name).unwrap()).unwrap();
        count_input(exercise_config(&text, 4, 1)).unwrap();
    }
    report("configs", t);
}

/// Bytes of a safetensors file: an 8-byte header length (sometimes wrong), a header built from
/// random pieces (names of the target network, random dtypes, shapes and offsets, sometimes
/// malformed JSON), and data of a random length.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let names = pick(&[
        "open.weight",
        "open.bias",
        "units.0.steps.0.K",
        "units.0.steps.0.b",
        "classifier.weight",
        "classifier.bias",
        "x",
        "labels",
        "__metadata__",
        "",
    ]);
    let dtype = pick(&[
        "F32", "F64", "BF16", "F16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "Q4",
    ]);
    let dim = prop_oneof![4 => 0usize..10, 1 => Just(usize::MAX), 1 => (20u32..63).prop_map(|k| 1usize << k)];
    let entry = (
        names,
        dtype,
        proptest::collection::vec(dim, 0..4),
        0usize..200,
        0usize..200,
    );
    (
        proptest::collection::vec(entry, 0..5),
        0usize..400,
        prop_oneof![6 => Just(None), 1 => (0u64..u64::MAX).prop_map(Some)],
        prop_oneof![8 => Just(None), 1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some)],
    )
        .prop_map(|(entries, data_len, bad_len, garbage)| {
            let header = match garbage {
                Some(g) => g,
                None => {
                    let body: Vec<String> = entries
                        .iter()
                        .map(|(n, dt, shape, a, b)| {
                            format!(
                                "\"{n}\":{{\"dtype\":\"{dt}\",\"shape\":{shape:?},\"data_offsets\":[{a},{b}]}}"
                            )
                        })
                        .collect();
                    format!("{{{}}}", body.join(",")).into_bytes()
                }
            };
            let mut out = bad_len.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&header);
            out.extend((0..data_len).map(|i| (i * 7 % 251) as u8));
            out
        })
}

#[test]
fn random_safetensors_headers_through_grad() {
    let dir = std::env::temp_dir().join(format!("pdenet-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Config::reference("ref-2d").unwrap();
    let layout = Layout::new(&cfg).unwrap();
    let mut runner = TestRunner::new(PtConfig {
        cases: 600,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let t = std::time::Instant::now();
    let path = dir.join("f.safetensors");
    runner
        .run(&safetensors_bytes(), |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            if let Some(w) = handled("read weights", || read_safetensors(&path))? {
                let mut params = layout.template.clone();
                if handled("load", || params.load_from_file(w, &path))?.is_some() {
                    let (x, labels) = pdenet::bench::random_batch(&cfg, 3, 1);
                    handled("grad", || {
                        let mut eng = Engine::new(Cpu::new(), layout.clone(), &params)?;
                        eng.grad(&x, &labels, Policy::Store.memory(), false)
                    })?;
                }
            }
            if let Some(b) = handled("read batch", || read_batch(&path))? {
                let params = layout.init(0);
                handled("grad", || {
                    let mut eng = Engine::new(Cpu::new(), layout.clone(), &params)?;
                    eng.grad(&b.x, &b.labels, Policy::Reversible.memory(), false)
                })?;
            }
            count_input(Ok(()))
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    report("safetensors files", t);
}

/// Written to the process's stderr, so that `cargo test` shows the counts without
/// `--nocapture`.
fn report(what: &str, t: std::time::Instant) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "fuzz ({what}): {} inputs so far, {} refused with a one-line error, no panic; {} plans, {} gradients ({:.1} s)",
        TRIED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
        PLANNED.load(Ordering::Relaxed),
        GRADS.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64()
    );
}
