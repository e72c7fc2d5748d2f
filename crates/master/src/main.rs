//! `river`: see the library for what the master and its workers do.

use std::process::ExitCode;

use clap::Parser;

/// Workers allocate and free dozens of small objects per proxied request
/// (headers, futures, buffers); mimalloc's thread-local free lists cost about a
/// third of glibc malloc's there and lift requests/s per core by ~15 %.
/// Built `no_thp`: with transparent huge pages mimalloc backs each process's
/// arena with 2 MiB pages, 6 MiB more RSS per process (bench/reload.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match river::run(river::cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("river: {err:#}");
            ExitCode::FAILURE
        }
    }
}
