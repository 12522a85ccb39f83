//! Command definitions (clap) and their dispatch.

mod grad;

use clap::{Parser, Subcommand};
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
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init(a) => grad::run_init(a),
        Command::Grad(a) => grad::run_grad(a),
    }
}
