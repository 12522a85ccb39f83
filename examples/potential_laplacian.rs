//! Issue 16's pdenet side: time per sample of the exact Laplacian (`eval_batch`,
//! `Order::Laplacian`) of a potential network (SPEC section 11; width 32, 2 residual layers,
//! h = 0.5, rank min(10, d), default init) at d = 10, 100, 1000, in f32 and f64, with
//! value + gradient (`Order::Gradient`) for reference. The batch runs in a rayon pool of
//! `THREADS` threads (default 1), as `eval_batch` splits samples over rayon's threads.
//!
//! For each d it writes, into OUTDIR, the network and inputs so that PyTorch times the same
//! network (`scripts/laplacian_compare.py`):
//! `d{d}.config.json` (a `"kind": "potential"` config), `d{d}.weights.safetensors` (SPEC
//! section 11 names, f32), `d{d}.x.safetensors` (`x`, f32 `[N, d]`) and `d{d}.ref.json` (the
//! first samples' values and Laplacians in f64 and f32). The f64 network is the f32 one cast
//! up, so both precisions and the file hold the same weights.
//!
//!     cargo run --release --example potential_laplacian -- OUTDIR [THREADS] [REPEATS]
//!
//! Prints one `RESULT pdenet <method> <precision> <d> <N> <us per sample>` line per timing
//! (the median of REPEATS timed batches after one warm-up batch).

use pdenet::params::{save_params, write_safetensors, OutTensor};
use pdenet::potential::{eval_batch, Order, PotentialConfig, PotentialNet, Real};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;
use std::time::Instant;

/// Samples whose outputs go to `d{d}.ref.json`.
const CHECK: usize = 16;

fn main() {
    if let Err(e) = run() {
        eprintln!("potential_laplacian: {e}");
        std::process::exit(1);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds per sample of `eval_batch(net, x, order)`.
fn time<T: Real>(net: &PotentialNet<T>, x: &[T], order: Order, repeats: usize) -> f64 {
    let rows = x.len() / net.shape.n;
    std::hint::black_box(eval_batch(net, x, order));
    let times = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(eval_batch(net, std::hint::black_box(x), order));
            t.elapsed().as_secs_f64()
        })
        .collect();
    median(times) / rows as f64
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = Path::new(args.first().ok_or("usage: OUTDIR [THREADS] [REPEATS]")?);
    let threads: usize = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let repeats: usize = args.get(2).map_or(Ok(7), |s| s.parse())?;
    std::fs::create_dir_all(out)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "pdenet eval_batch in a rayon pool of {} thread(s), median of {repeats} batches",
        pool.current_num_threads()
    );
    for (d, rows) in [(10usize, 1024usize), (100, 1024), (1000, 256)] {
        let cfg = PotentialConfig::new(d, 32, 2, 0.5);
        let shape = cfg.shape()?;
        let net32 = PotentialNet::<f32>::init(shape, 16 + d as u64);
        let net64 = net32.cast::<f64>();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1000 + d as u64);
        let x32: Vec<f32> = (0..rows * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();

        std::fs::write(
            out.join(format!("d{d}.config.json")),
            serde_json::to_string_pretty(&cfg)?,
        )?;
        save_params(
            &out.join(format!("d{d}.weights.safetensors")),
            &net32.to_params(),
        )?;
        write_safetensors(
            &out.join(format!("d{d}.x.safetensors")),
            &[("x".to_string(), OutTensor::F32(&[rows, d], &x32))],
        )?;
        let check = CHECK.min(rows);
        let r64 = eval_batch(&net64, &x64[..check * d], Order::Laplacian);
        let r32 = eval_batch(&net32, &x32[..check * d], Order::Laplacian);
        let reference = serde_json::json!({
            "d": d,
            "rows": check,
            "value_f64": r64.value,
            "laplacian_f64": r64.laplacian,
            "value_f32": r32.value,
            "laplacian_f32": r32.laplacian,
        });
        std::fs::write(
            out.join(format!("d{d}.ref.json")),
            serde_json::to_string(&reference)?,
        )?;

        pool.install(|| {
            for (method, order) in [("exact-lap", Order::Laplacian), ("grad", Order::Gradient)] {
                let s32 = time(&net32, &x32, order, repeats);
                println!("RESULT pdenet {method} f32 {d} {rows} {:.4}", s32 * 1e6);
                let s64 = time(&net64, &x64, order, repeats);
                println!("RESULT pdenet {method} f64 {d} {rows} {:.4}", s64 * 1e6);
            }
        });
    }
    Ok(())
}
