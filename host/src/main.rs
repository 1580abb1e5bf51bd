//! The `fnhost` command: parse arguments, run the subcommand, turn an error
//! into its exit code (2 for anything wrong before serving starts).

mod cli;

use std::process::ExitCode;

/// jemalloc, not glibc's malloc: instantiating a fresh guest per request
/// allocates and frees many mid-sized objects, which takes 6.5-11% fewer
/// instructions per request with jemalloc (callgrind), and glibc's arenas
/// contend between runtime threads (docs/architecture.md, "The
/// allocator"). mimalloc was as fast but reserves a 1 GiB arena up front,
/// which `--worker-memory` (`RLIMIT_DATA`) would count.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
