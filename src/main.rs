//! The `pdenet` command line: each command is a thin call into the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOC: pdenet::alloc::CountingAlloc = pdenet::alloc::CountingAlloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pdenet: {e}");
            ExitCode::FAILURE
        }
    }
}
