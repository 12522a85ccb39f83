//! `pdenet potential` (SPEC section 11), `pdenet solve` (SPEC section 12) and `init` for
//! potential configs.

use clap::Args;
use pdenet::params::{read_safetensors, save_params, write_safetensors, OutTensor};
use pdenet::potential::{
    default_width, eval_batch, solve, Method, Order, PotentialConfig, PotentialNet, Problem,
    SolveOptions,
};
use pdenet::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PotentialArgs {
    /// A potential network's config (`"kind": "potential"`).
    #[arg(long)]
    pub config: PathBuf,
    /// Weights (safetensors, SPEC section 11 names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Inputs (safetensors): `x` f32 `[N, n]`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output: `value [N]`, `grad [N, n]`, `laplacian [N]`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    F64,
}

/// The library's [`Problem`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProblemArg {
    /// Unit ball of R^d (d even), `u* = sum_k x_{2k-1} x_{2k}`, g = 0.
    PoissonBall,
    /// `(0, 1)^d`, `u* = (1/d) sum_i sin(pi x_i)`.
    PoissonCube,
}

impl From<ProblemArg> for Problem {
    fn from(a: ProblemArg) -> Self {
        match a {
            ProblemArg::PoissonBall => Problem::PoissonBall,
            ProblemArg::PoissonCube => Problem::PoissonCube,
        }
    }
}

/// The library's [`Method`] as a flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// `mean(1/2 |grad u|^2 - g u)` + boundary penalty (first derivatives only).
    Ritz,
    /// `mean((Laplace u + g)^2)` + boundary penalty (the exact Laplacian).
    Pinn,
}

impl From<MethodArg> for Method {
    fn from(a: MethodArg) -> Self {
        match a {
            MethodArg::Ritz => Method::Ritz,
            MethodArg::Pinn => Method::Pinn,
        }
    }
}

#[derive(Args, Debug)]
pub struct SolveArgs {
    #[arg(long, value_enum)]
    pub problem: ProblemArg,
    /// Dimension d.
    #[arg(long)]
    pub dim: usize,
    #[arg(long, value_enum, default_value = "ritz")]
    pub method: MethodArg,
    #[arg(long, default_value_t = 0, value_parser = super::args::parse_seed)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Adam steps.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Interior points per step.
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Boundary points per step.
    #[arg(long, default_value_t = 512)]
    pub boundary_batch: usize,
    /// Weight of the boundary integral of (u - u*)^2; the boundary mean is weighted by it
    /// times |boundary| / |domain| (2d for the cube, d for the ball).
    #[arg(long, default_value_t = 250.0)]
    pub penalty: f64,
    /// First learning rate (cosine decay to lr * lr-floor).
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-2)]
    pub lr_floor: f64,
    /// Width m of the potential network [default: max(32, d)].
    #[arg(long)]
    pub width: Option<usize>,
    /// Residual layers M.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Step h of the residual layers.
    #[arg(long, default_value_t = 0.5)]
    pub h: f64,
    /// Steps between progress lines (0: none).
    #[arg(long, default_value_t = 500)]
    pub log_every: usize,
    /// Writes the trained weights (safetensors, SPEC section 11 names) and `<out>.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `pdenet init` for a config with `"kind": "potential"`.
pub fn init_potential(config: &Path, seed: u64, out: &Path) -> Result<()> {
    let cfg = PotentialConfig::load(config)?;
    let net = PotentialNet::<f32>::init(cfg.shape()?, seed);
    save_params(out, &net.to_params())?;
    eprintln!("wrote {} ({} parameters)", out.display(), net.theta.len());
    Ok(())
}

pub fn run_potential(a: PotentialArgs) -> Result<()> {
    let cfg = PotentialConfig::load(&a.config)?;
    let shape = cfg.shape()?;
    let what = a.weights.display().to_string();
    let net = PotentialNet::<f32>::from_tensors(shape, read_safetensors(&a.weights)?, &what)?;
    let mut inputs = read_safetensors(&a.input)?;
    let x = inputs
        .remove("x")
        .ok_or_else(|| Error::MissingTensor(format!("x in {}", a.input.display())))?;
    if x.shape.len() != 2 || x.shape[1] != shape.n {
        return Err(Error::Shape(format!(
            "{}: `x` has shape {:?}, the network needs [N, {}]",
            a.input.display(),
            x.shape,
            shape.n
        )));
    }
    let rows = x.shape[0];
    let out = eval_batch(&net, &x.data, Order::Laplacian);
    let tensors = [
        ("value".to_string(), OutTensor::F32(&[rows], &out.value)),
        (
            "grad".to_string(),
            OutTensor::F32(&[rows, shape.n], &out.grad),
        ),
        (
            "laplacian".to_string(),
            OutTensor::F32(&[rows], &out.laplacian),
        ),
    ];
    for (name, t) in &tensors {
        if let OutTensor::F32(_, data) = t {
            pdenet::params::check_finite(data, &format!("the output `{name}`"))
                .map_err(|m| Error::NonFinite(format!("{m}; {} not written", a.out.display())))?;
        }
    }
    write_safetensors(&a.out, &tensors)?;
    eprintln!("{rows} samples; wrote {}", a.out.display());
    Ok(())
}

pub fn run_solve(a: SolveArgs) -> Result<()> {
    let opt = SolveOptions {
        problem: a.problem.into(),
        dim: a.dim,
        method: a.method.into(),
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        boundary_batch: a.boundary_batch,
        penalty: a.penalty,
        lr: a.lr,
        lr_floor: a.lr_floor,
        width: a.width.unwrap_or_else(|| default_width(a.dim)),
        layers: a.layers,
        h: a.h,
        log_every: a.log_every,
    };
    let mut print = |line: &str| println!("{line}");
    let report = match a.precision {
        Precision::F32 => solve::<f32>(&opt, &mut print)?,
        Precision::F64 => solve::<f64>(&opt, &mut print)?,
    };
    if let Some(out) = &a.out {
        save_params(out, &report.net.to_params())?;
        let cfg = serde_json::to_string_pretty(&opt.config())
            .map_err(|e| Error::Other(format!("config: {e}")))?;
        let cfg_path = out.with_extension("json");
        pdenet::params::write_atomic(&cfg_path, cfg.as_bytes())?;
        eprintln!("wrote {} and {}", out.display(), cfg_path.display());
    }
    println!(
        "time {:.1}s {} d {} {:?} precision {:?}",
        report.seconds,
        opt.problem.name(),
        a.dim,
        opt.method,
        a.precision
    );
    println!("rel_l2 {:.4e}", report.rel_l2);
    Ok(())
}
