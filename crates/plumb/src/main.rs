//! The `plumb` binary: parse the command line, run the command, turn any
//! error into one line on stderr and a meaningful exit code.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plumb: {}", cli::error_line(&e));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
