//! Command definitions (clap) and their dispatch: the only place that parses flags; each
//! command turns its flags into the library's plain data.

mod args;
mod bench;
mod denoise;
mod grad;
mod info;
mod ot;
mod potential;
mod stability;
mod train;
mod train_denoiser;

use clap::{Parser, Subcommand};
use pdenet::train::engine_model::build_engine_model;
use pdenet::train::{run_eval, run_train};
use pdenet::Result;

#[derive(Parser, Debug)]
#[command(
    name = "pdenet",
    version,
    about = "Deep networks from PDEs: train, differentiate, benchmark"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Writes freshly initialised weights (Kaiming-normal K) with the SPEC names.
    Init(grad::InitArgs),
    /// Computes the loss, logits and every gradient of one batch (SPEC section 9).
    Grad(grad::GradArgs),
    /// Trains a network (default: ref-mnist on the MNIST subset in data/mnist-small).
    Train(train::TrainArgs),
    /// Prints the test accuracy and loss of trained weights.
    Eval(train::EvalArgs),
    /// Parameters, FLOPs per input and the planned memory of a training step per policy.
    Info(info::InfoArgs),
    /// Sweeps depth, layer, operator, policy, precision and device: throughput and memory.
    Bench(bench::BenchArgs),
    /// Value, exact gradient and exact Laplacian of a potential network (SPEC section 11).
    Potential(potential::PotentialArgs),
    /// Deep Ritz or PINN for the Poisson problems of SPEC section 12; last line `rel_l2 E`.
    Solve(potential::SolveArgs),
    /// OT-Flow between N(0, I) and a Gaussian (SPEC section 12): learned transport cost
    /// against W2^2; last line `cost C exact W gap G`.
    Ot(ot::OtArgs),
    /// Per unit: growth of forward perturbations (random and adversarial) and the spectral
    /// radius of each step's Jacobian (Haber & Ruthotto 2017).
    Stability(stability::StabilityArgs),
    /// TV (ROF), Perona-Malik or TNRD denoising of a PNG with noise of level sigma (SPEC section 13);
    /// with --clean the last line is `psnr INPUT OUTPUT`.
    Denoise(denoise::DenoiseArgs),
    /// Trains a TNRD denoiser (Chen & Pock 2017) on patches of the PNGs in a folder.
    TrainDenoiser(train_denoiser::TrainDenoiserArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(a) if pdenet::potential::config::is_potential_file(a.config.as_ref()) => {
            potential::init_potential(a.config.as_ref(), a.seed, &a.out)
        }
        Command::Init(a) => grad::run_init(a),
        Command::Grad(a) => grad::run_grad(a),
        Command::Bench(a) => bench::run_bench(a),
        Command::Train(a) => run_train(&a.into(), &build_engine_model).map(|_| ()),
        Command::Eval(a) => run_eval(&a.into(), &build_engine_model).map(|_| ()),
        Command::Info(a) => info::run_info(a),
        Command::Potential(a) => potential::run_potential(a),
        Command::Solve(a) => potential::run_solve(a),
        Command::Ot(a) => ot::run_ot(a),
        Command::Stability(a) => stability::run_stability(a),
        Command::Denoise(a) => denoise::run_denoise(a),
        Command::TrainDenoiser(a) => train_denoiser::run_train_denoiser(a),
    }
}
