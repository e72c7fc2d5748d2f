//! `river-docgen OUT_DIR`: write River's man pages (OUT_DIR/man) and shell
//! completions (OUT_DIR/completions/{bash,zsh,fish}).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: river-docgen OUT_DIR");
        return ExitCode::from(2);
    };
    match river_docgen::generate(&PathBuf::from(out)) {
        Ok(generated) => {
            for path in generated.man_pages.iter().chain(&generated.completions) {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("river-docgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}
