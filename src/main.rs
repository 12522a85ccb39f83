//! The `pdenet` command line: each command is a thin call into the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOC: pdenet::alloc::CountingAlloc = pdenet::alloc::CountingAlloc;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing to a closed pipe (`pdenet info | head -3`) would panic;
    // restore the default so that the command ends quietly, as every Unix tool does.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            // One line, as every other error: clap's first line names the flag and the reason.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("pdenet: {first} (see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version; a closed pipe ends quietly.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pdenet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A closed stdout (`pdenet info | head -3`) ends a command quietly, as in every Unix tool.
fn is_broken_pipe(e: &pdenet::Error) -> bool {
    matches!(e, pdenet::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
