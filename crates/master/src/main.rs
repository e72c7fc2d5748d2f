//! `river`: see the library for what the master and its workers do.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match river::run(river::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("river: {err:#}");
            ExitCode::FAILURE
        }
    }
}
