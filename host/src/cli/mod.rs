//! Command-line definitions, one file per subcommand.

mod app;
mod check;
mod queue;
mod serve;
mod top;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

/// fnhost: serve WebAssembly function components, sandboxed.
#[derive(Parser)]
#[command(name = "fnhost", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a component (its HTTP handler, and its queue handler with --queue), or an app of functions from a manifest.
    Serve(Box<serve::ServeCommand>),
    /// Check a component (what it imports and exports, which trigger it serves), or every function of a manifest.
    Check(check::CheckCommand),
    /// Send messages to a queue, or look at one.
    Queue(queue::QueueCommand),
    /// Show what each function of a running host costs, its class and the settings advised for it.
    Top(top::TopCommand),
    /// A worker process; started by `fnhost serve`, not by hand.
    #[command(hide = true)]
    Worker,
}

use fnhost::worker::DEFAULT_LOG_FILTER;

/// Whether this process is a worker (`fnhost worker`, exactly): it starts
/// without building the whole command-line parser, which costs a worker's
/// start about 0.2 ms (docs/performance.md, "Start-up").
fn is_worker_command_line() -> bool {
    let mut args = std::env::args_os().skip(1);
    args.next().is_some_and(|arg| arg == "worker") && args.next().is_none()
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> anyhow::Result<ExitCode> {
    if is_worker_command_line() {
        // Workers set up logging from what the supervisor sends them.
        return fnhost::worker::run();
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    init_logging();
    match cli.command {
        Command::Worker => {
            unreachable!("`fnhost worker` takes no arguments and runs before parsing")
        }
        Command::Serve(command) => {
            let serve = matches
                .subcommand_matches("serve")
                .expect("the serve subcommand was parsed");
            command.execute(serve)
        }
        Command::Check(command) => {
            let check = matches
                .subcommand_matches("check")
                .expect("the check subcommand was parsed");
            command.execute(check)
        }
        Command::Queue(command) => command.execute(),
        Command::Top(command) => command.execute(),
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default:
/// [`DEFAULT_LOG_FILTER`]).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
