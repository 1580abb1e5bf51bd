//! `fnhost top`: what each function of a running host costs, read from its
//! admin endpoint (`GET /functions`): its class (I/O-bound, CPU-bound,
//! mixed), the numbers behind it, and the settings the Azure Functions
//! advice gives for that class on this machine.

use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Settings of `fnhost top`.
#[derive(Args)]
pub struct TopCommand {
    /// The host's admin endpoint (its --admin address).
    #[arg(long, env = "FNHOST_ADMIN", value_name = "ADDR")]
    admin: SocketAddr,

    /// Print once and exit, instead of refreshing.
    #[arg(long)]
    once: bool,

    /// Time between refreshes.
    #[arg(long, default_value = "2s", value_parser = fnhost::config::parse::parse_duration, value_name = "DUR")]
    interval: Duration,
}

impl TopCommand {
    /// Prints the table, once or every `--interval` until interrupted.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        loop {
            let rows = runtime.block_on(fetch(self.admin))?;
            if !self.once {
                // Clear the screen and go home, as top does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&rows));
            if self.once {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(self.interval);
        }
    }
}

/// `GET /functions` from the admin endpoint at `admin`.
async fn fetch(admin: SocketAddr) -> anyhow::Result<Vec<serde_json::Value>> {
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .with_context(|| format!("--admin {admin}: no answer within 5 s"))?
    .with_context(|| format!("--admin {admin}: cannot connect"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/functions")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!("--admin {admin}: GET /functions answered {status}");
    }
    serde_json::from_slice(&body).with_context(|| format!("--admin {admin}: not a function list"))
}

/// The rows as a fixed-width table.
fn table(rows: &[serde_json::Value]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:>8} {:>10} {:>9} {:>10} {:>6} {:>5} {:>7}  {}\n",
        "FUNCTION",
        "CLASS",
        "CALLS",
        "WALL ms",
        "CPU ms",
        "QUEUED ms",
        "CPU %",
        "PEAK",
        "THREADS",
        "ADVICE"
    );
    for row in rows {
        let profile = &row["profile"];
        let number = |key: &str| profile[key].as_f64().unwrap_or(0.0);
        let class = profile["class"].as_str().unwrap_or("unknown");
        let advice = if class == "unknown" {
            "no calls yet".to_string()
        } else {
            format!(
                "--threads {} --workers {}",
                profile["advised_threads"], profile["advised_workers"]
            )
        };
        // Sync-lane threads now, summed over the workers.
        let threads = match row["lane"].as_str() {
            Some("sync") => profile["sync_threads"].to_string(),
            _ => "-".to_string(),
        };
        out += &format!(
            "{:<20} {:<10} {:>8} {:>10.2} {:>9.2} {:>10.2} {:>6.0} {:>5} {:>7}  {}\n",
            row["name"].as_str().unwrap_or("?"),
            class,
            profile["calls"].as_u64().unwrap_or(0),
            number("mean_wall_ms"),
            number("mean_cpu_ms"),
            number("mean_queued_ms"),
            number("cpu_share") * 100.0,
            profile["peak_in_flight"].as_u64().unwrap_or(0),
            threads,
            advice
        );
    }
    out
}
