//! `riverctl`: see the library.

fn main() -> std::process::ExitCode {
    riverctl::main()
}
