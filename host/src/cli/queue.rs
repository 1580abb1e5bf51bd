//! `fnhost queue`: send messages to a queue and look at it, from a shell,
//! while a host serves it (the embedded store is shared safely across
//! processes; a Redis stream is shared by design).

use clap::{Args, Subcommand};
use fnhost::queue::{DEFAULT_DATA_DIR, Queue, QueueSpec};
use std::path::PathBuf;
use std::process::ExitCode;

/// `fnhost queue …`.
#[derive(Args)]
pub struct QueueCommand {
    #[command(subcommand)]
    action: QueueAction,

    /// Folder of the embedded queue store.
    #[arg(long, global = true, env = "FNHOST_DATA_DIR", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Add a message; prints its id.
    Send {
        /// A queue NAME or redis://HOST:PORT/STREAM.
        queue: String,
        /// The body, or @FILE to read it from a file (@- for stdin).
        data: String,
        /// An attribute the handler sees (repeatable).
        #[arg(long = "attribute", value_parser = fnhost::config::parse::parse_env_pair, value_name = "K=V", conflicts_with = "lines")]
        attributes: Vec<(String, String)>,
        /// Send each non-empty line of DATA as its own message, all at once; prints one id per line.
        #[arg(long)]
        lines: bool,
    },
    /// Print length, oldest age, in-flight and poison counts as JSON.
    Stats {
        /// A queue NAME or redis://HOST:PORT/STREAM.
        queue: String,
    },
    /// Print up to N messages (oldest first) without receiving them, as JSON lines.
    Peek {
        /// A queue NAME or redis://HOST:PORT/STREAM (e.g. jobs-poison).
        queue: String,
        /// How many.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
}

impl QueueCommand {
    /// Runs the action; errors are one line and exit 2.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.run())
    }

    async fn run(self) -> anyhow::Result<ExitCode> {
        let name = match &self.action {
            QueueAction::Send { queue, .. }
            | QueueAction::Stats { queue }
            | QueueAction::Peek { queue, .. } => queue.clone(),
        };
        let spec = QueueSpec::parse(&name)?;
        let queue = Queue::open(&spec, &self.data_dir).await?;
        match self.action {
            QueueAction::Send {
                data,
                attributes,
                lines,
                ..
            } => {
                let body = read_data(&data)?;
                if lines {
                    let bodies = body
                        .split(|&b| b == b'\n')
                        .filter(|line| !line.is_empty())
                        .map(bytes::Bytes::copy_from_slice)
                        .collect();
                    for id in queue.send_batch(bodies).await? {
                        println!("{id}");
                    }
                } else {
                    let id = queue.send(body.into(), attributes).await?;
                    println!("{id}");
                }
            }
            QueueAction::Stats { .. } => {
                println!("{}", queue.stats().await?.to_json());
            }
            QueueAction::Peek { count, .. } => {
                for message in queue.peek(count).await? {
                    println!(
                        "{}",
                        serde_json::json!({
                            "id": message.id,
                            "body": String::from_utf8_lossy(&message.body),
                            "dequeue_count": message.dequeue_count,
                            "enqueued_at_ms": message.enqueued_at_ms,
                            "attributes": message.attributes,
                        })
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The message body: the argument, or a file's bytes for `@FILE`.
fn read_data(data: &str) -> anyhow::Result<Vec<u8>> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
            Ok(body)
        }
        Some(path) => std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: cannot read: {e}")),
        None => Ok(data.as_bytes().to_vec()),
    }
}
