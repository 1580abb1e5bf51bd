//! The queue trigger: at-least-once delivery through worker kills and host
//! restarts, the poison queue, scaling on a backlog, on the embedded store
//! and on a real Redis server.

use crate::support::{Server, client, example, run_fnhost, temp_dir, temp_file};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The body of test message `i`: the guest waits `sleep_ms` first.
fn body(i: usize, sleep_ms: u64) -> String {
    format!("sleep:{sleep_ms}:m{i}")
}

/// Loads `count` messages (see [`body`]) into `queue` in one batch.
fn preload(queue: &str, data_dir: &str, count: usize, sleep_ms: u64) {
    let lines: String = (0..count).map(|i| body(i, sleep_ms) + "\n").collect();
    let file = temp_file(
        &format!("preload-{}.txt", std::process::id()),
        lines.as_bytes(),
    );
    let file_arg = format!("@{}", file.display());
    let (code, stdout, stderr) = run_fnhost(&[
        "queue",
        "send",
        "--data-dir",
        data_dir,
        queue,
        &file_arg,
        "--lines",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), count);
}

/// `fnhost queue stats` as JSON.
fn stats(queue: &str, data_dir: &str) -> Value {
    let (code, stdout, stderr) = run_fnhost(&["queue", "stats", "--data-dir", data_dir, queue]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

/// How often each body was handled, from the guest's `handled <id> <body>` lines.
fn handled(server: &Server) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in server.log() {
        if let Some(rest) = line.split("] handled ").nth(1)
            && let Some(body) = rest.split_whitespace().nth(1)
        {
            *counts.entry(body.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn ready_pids(server: &Server) -> Vec<u32> {
    let rows: Vec<Value> = client()
        .get(server.admin_url("/workers"))
        .send()
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log().join("\n")))
        .json()
        .unwrap();
    rows.iter()
        .filter(|w| w["phase"] == "ready")
        .filter_map(|w| w["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect()
}

/// Like `support::wait_until`, polling less often: these checks start a
/// `fnhost queue stats` process each time.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Serves `queue_worker` on `queue`, kills a worker every 2 s until the
/// queue is empty, then checks every message was handled at least once and
/// duplicates are bounded by what can be in flight at the kills.
fn at_least_once_through_kills(queue: &str, data_dir: &str, count: usize) {
    // 60 ms per message and at most 72 in flight: the backlog takes about
    // 8 s, so it sees about four kills, within the crash-loop breaker's
    // budget of 3 × 3 failures (more would stop the host, by design).
    let sleep_ms = 60;
    preload(queue, data_dir, count, sleep_ms);
    let (batch, threshold, workers) = (16, 8, 3);
    let server = Server::start(
        &example("queue_worker"),
        &[
            "--workers",
            "3",
            "--admin",
            "127.0.0.1:0",
            "--queue",
            queue,
            "--data-dir",
            data_dir,
            "--batch-size",
            "16",
            "--new-batch-threshold",
            "8",
        ],
    );
    let started = Instant::now();
    let mut kills = 0;
    let mut last_kill = Instant::now() - Duration::from_secs(1);
    loop {
        let left = stats(queue, data_dir)["length"].as_u64().unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{left} messages left after 4 minutes"
        );
        // Kill every 2 s, up to the breaker's budget (3 × workers
        // failures in 30 min; one more stops the host, as it should).
        if last_kill.elapsed() >= Duration::from_secs(2) && kills < 3 * workers {
            if let Some(pid) = ready_pids(&server).first() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                kills += 1;
            }
            last_kill = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the last guest output lines a moment to reach the log.
    std::thread::sleep(Duration::from_millis(300));
    let counts = handled(&server);
    let missing: Vec<String> = (0..count)
        .map(|i| body(i, sleep_ms))
        .filter(|body| !counts.contains_key(body))
        .collect();
    assert!(
        missing.is_empty(),
        "never handled: {:?}",
        &missing[..missing.len().min(20)]
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let in_flight_bound = (batch + threshold) * workers;
    assert!(
        duplicates <= kills * in_flight_bound,
        "{duplicates} duplicates after {kills} kills (at most {in_flight_bound} in flight per kill)"
    );
    assert!(
        kills >= 1,
        "the test killed nothing: the backlog drained too fast"
    );
    eprintln!(
        "{count} messages on {queue} in {:?}: {kills} kills, {duplicates} duplicates",
        started.elapsed()
    );
}

#[test]
fn ten_thousand_messages_survive_a_worker_kill_every_two_seconds() {
    let dir = temp_dir("queue-kills");
    at_least_once_through_kills("jobs", dir.to_str().unwrap(), 10_000);
}

#[test]
fn a_failing_message_is_poisoned_after_exactly_five_attempts_while_the_rest_flow() {
    let dir = temp_dir("queue-poison");
    let data_dir = dir.to_str().unwrap();
    preload("work", data_dir, 30, 0);
    let (code, bad_id, _) =
        run_fnhost(&["queue", "send", "--data-dir", data_dir, "work", "fail-me"]);
    assert_eq!(code, 0);
    let bad_id = bad_id.trim().to_string();
    let server = Server::start(
        &example("queue_worker"),
        &["--queue", "work", "--data-dir", data_dir],
    );
    wait_until(Duration::from_secs(60), "the queue drained", || {
        let stats = stats("work", data_dir);
        stats["length"] == 0 && stats["poison"] == 1
    });
    let counts = handled(&server);
    assert_eq!(counts.len(), 30, "every good message handled");
    let attempts = server
        .log_lines_with(&format!("message {bad_id} failed delivery"))
        .len();
    assert_eq!(attempts, 5, "log:\n{}", server.log().join("\n"));
    let (code, poison, _) = run_fnhost(&["queue", "peek", "--data-dir", data_dir, "work-poison"]);
    assert_eq!(code, 0);
    let poisoned: Value = serde_json::from_str(poison.trim()).unwrap();
    assert_eq!(poisoned["id"], bad_id.as_str());
    assert_eq!(poisoned["body"], "fail-me");
    assert_eq!(poisoned["dequeue_count"], 5);
}

#[test]
fn a_backlog_of_slow_messages_scales_workers_up_and_back_down() {
    let dir = temp_dir("queue-scale");
    let data_dir = dir.to_str().unwrap();
    let lines: String = (0..60).map(|_| "sleep:300\n").collect();
    let file = temp_file("scale-backlog.txt", lines.as_bytes());
    let server = Server::start(
        &example("queue_worker"),
        &[
            "--workers",
            "1..4",
            "--scale-cooldown",
            "2s",
            "--admin",
            "127.0.0.1:0",
            "--queue",
            "slow",
            "--data-dir",
            data_dir,
            "--batch-size",
            "2",
            "--new-batch-threshold",
            "1",
        ],
    );
    assert_eq!(ready_pids(&server).len(), 1, "starts at the minimum");
    let file_arg = format!("@{}", file.display());
    let (code, _, stderr) = run_fnhost(&[
        "queue",
        "send",
        "--data-dir",
        data_dir,
        "slow",
        &file_arg,
        "--lines",
    ]);
    assert_eq!(code, 0, "{stderr}");
    wait_until(Duration::from_secs(20), "4 workers ready", || {
        ready_pids(&server).len() == 4
    });
    let up = server.wait_for_log("scale: 1 → 4 workers", Duration::from_secs(1));
    assert!(
        up.contains("queue length"),
        "the decision names its inputs: {up}"
    );
    wait_until(Duration::from_secs(60), "the backlog drained", || {
        stats("slow", data_dir)["length"] == 0
    });
    wait_until(Duration::from_secs(20), "back to 1 worker", || {
        ready_pids(&server).len() == 1
    });
    server.wait_for_log("→ 1 workers", Duration::from_secs(1));
    let metrics = server.admin_text("/metrics");
    assert!(
        metrics.contains(r#"fnhost_queue_length{queue="slow"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("fnhost_scale_target_workers 1"),
        "{metrics}"
    );
    assert_eq!(handled(&server).get("sleep:300"), Some(&60));
}

#[test]
fn a_host_killed_mid_backlog_loses_nothing_after_a_restart() {
    let dir = temp_dir("queue-restart");
    let data_dir = dir.to_str().unwrap();
    preload("restart", data_dir, 3_000, 0);
    let args = [
        "--queue",
        "restart",
        "--data-dir",
        data_dir,
        "--visibility-timeout",
        "2s",
    ];
    let first = Server::start(&example("queue_worker"), &args);
    wait_until(Duration::from_secs(60), "some messages handled", || {
        handled(&first).len() >= 300
    });
    // kill -9 of the supervisor: its workers die with it, mid-batch.
    let _ = Command::new("kill")
        .args(["-9", &first.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    let before = handled(&first);
    assert!(
        stats("restart", data_dir)["length"].as_u64().unwrap() > 0,
        "the kill came mid-backlog"
    );
    let second = Server::start(&example("queue_worker"), &args);
    wait_until(Duration::from_secs(120), "the backlog drained", || {
        stats("restart", data_dir)["length"] == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = handled(&second);
    let missing: Vec<String> = (0..3_000)
        .map(|i| body(i, 0))
        .filter(|body| !before.contains_key(body) && !after.contains_key(body))
        .collect();
    assert!(
        missing.is_empty(),
        "lost: {:?}",
        &missing[..missing.len().min(20)]
    );
}

/// A `redis-server` on a free loopback port, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_redis_backend_delivers_at_least_once_through_worker_kills() {
    let redis = Redis::start();
    let dir = temp_dir("queue-redis");
    let queue = format!("redis://127.0.0.1:{}/jobs", redis.port);
    at_least_once_through_kills(&queue, dir.to_str().unwrap(), 10_000);
}
