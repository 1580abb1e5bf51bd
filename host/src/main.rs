//! The `fnhost` command: parse arguments, run the subcommand, turn an error
//! into its exit code (2 for anything wrong before serving starts).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "fnhost: error: {}",
                fnhost::component::one_line(&format!("{error:#}"))
            );
            ExitCode::from(2)
        }
    }
}
