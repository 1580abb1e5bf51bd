//! The host tuning itself: `--threads auto` sizing the sync lane from what
//! its calls cost, and `--load-shedding on` refusing the excess at once.
//! Each test compares with a baseline taken in the same test (a fixed
//! thread count, or shedding off), so a loaded machine slows both sides.

use crate::support::{Server, client, example};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What `clients` closed-loop clients got from `path` in `run`.
struct Load {
    /// Latencies of the 200s, sorted.
    ok: Vec<Duration>,
    /// Latencies of the 503s that carried `Retry-After` and said
    /// `capacity`, sorted.
    refused: Vec<Duration>,
    /// Anything else: status and `fnhost-error`.
    other: Vec<String>,
}

fn load(server: &Server, path: &str, clients: usize, run: Duration) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let url = server.url(path);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let http = client();
                let mut seen = (Vec::new(), Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = match http.get(&url).send() {
                        Ok(response) => response,
                        Err(error) => {
                            seen.2.push(format!("request failed: {error}"));
                            continue;
                        }
                    };
                    let status = response.status().as_u16();
                    let kind = response
                        .headers()
                        .get("fnhost-error")
                        .map(|v| v.to_str().unwrap_or("?").to_string());
                    let retry_after = response.headers().contains_key("retry-after");
                    let _ = response.bytes();
                    match (status, kind.as_deref()) {
                        (200, _) => seen.0.push(sent.elapsed()),
                        (503, Some("capacity")) if retry_after => {
                            seen.1.push(sent.elapsed());
                            // A client that heeds the refusal backs off a
                            // little rather than asking again at once.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => seen.2.push(format!("{status} {kind:?}")),
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    let mut total = Load {
        ok: Vec::new(),
        refused: Vec::new(),
        other: Vec::new(),
    };
    for worker in workers {
        let (ok, refused, other) = worker.join().unwrap();
        total.ok.extend(ok);
        total.refused.extend(refused);
        total.other.extend(other);
    }
    total.ok.sort();
    total.refused.sort();
    total
}

/// The JSON of `GET /functions`, first function.
fn function_view(server: &Server) -> serde_json::Value {
    let body = server.admin_text("/functions");
    let functions: serde_json::Value = serde_json::from_str(&body).unwrap();
    functions[0].clone()
}

#[test]
fn auto_threads_grow_a_waiting_function_and_serve_more_than_the_fixed_default() {
    // 64 clients of a function that waits 100 ms per call in the sync lane:
    // the starting count, min(32, cores + 4), can finish at most ten calls
    // a second per thread.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = (cores + 4).min(32).to_string();
    let sleep = example("sleep");
    let path = "/?ms=100";
    let run = Duration::from_secs(4);
    let fixed = Server::start(&sleep, &["--mode", "sync", "--threads", &start]);
    let with_start = load(&fixed, path, 64, run);
    drop(fixed);
    let auto = Server::start(&sleep, &["--mode", "sync", "--admin", "127.0.0.1:0"]);
    let with_auto = load(&auto, path, 64, run);
    assert!(with_start.other.is_empty(), "{:?}", with_start.other);
    assert!(with_auto.other.is_empty(), "{:?}", with_auto.other);
    assert!(
        with_auto.ok.len() >= 2 * with_start.ok.len(),
        "auto finished {} calls, {start} threads {}",
        with_auto.ok.len(),
        with_start.ok.len()
    );
    // Each change is logged with its reason, and /functions shows the count.
    let grew = auto.wait_for_log(
        &format!("sync-lane threads {start} → "),
        Duration::from_secs(1),
    );
    assert!(grew.contains("calls waiting for a thread"), "{grew}");
    crate::support::wait_until(Duration::from_secs(5), "the threads reported", || {
        let view = function_view(&auto);
        view["profile"]["sync_threads"].as_u64().unwrap_or(0) > (cores as u64 + 4).min(32)
            && view["profile"]["thread_changes"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(function_view(&auto)["settings"]["threads"], "auto");
    // And on /metrics, by function.
    let metrics = auto.admin_text("/metrics");
    let threads = metrics
        .lines()
        .find(|line| line.starts_with("fnhost_function_sync_threads{"))
        .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no thread gauge in\n{metrics}"));
    assert!(threads > (cores as u64 + 4).min(32), "{metrics}");
}

#[test]
fn auto_threads_keep_within_the_memory_budget() {
    // The waiting function that the test above grows past its starting
    // count, under a budget smaller than the worker already holds: auto
    // may add no thread, and gives back all but one, saying why.
    let sleep = example("sleep");
    let server = Server::start(
        &sleep,
        &[
            "--mode",
            "sync",
            "--admin",
            "127.0.0.1:0",
            "--threads-memory",
            "1MiB",
        ],
    );
    let loaded = load(&server, "/?ms=50", 8, Duration::from_secs(3));
    assert!(loaded.other.is_empty(), "{:?}", loaded.other);
    assert!(!loaded.ok.is_empty(), "the function still serves");
    let shrunk = server.wait_for_log("MiB budget for --threads auto", Duration::from_secs(5));
    assert!(
        shrunk.contains("the process holds") && shrunk.contains("of its 1 MiB budget"),
        "{shrunk}"
    );
    crate::support::wait_until(Duration::from_secs(5), "one thread left", || {
        function_view(&server)["profile"]["sync_threads"].as_u64() == Some(1)
    });
    let grew = server.log_lines_with("calls waiting for a thread");
    assert!(grew.is_empty(), "grew past the budget: {grew:?}");
}

#[test]
fn auto_threads_keep_a_cpu_bound_function_at_the_cores() {
    // About 5 ms of work per call from 8 clients: more threads than cores
    // would only queue for the cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = Server::start(&example("cpu"), &["--admin", "127.0.0.1:0"]);
    let result = load(&server, "/?n=2000000", 8, Duration::from_secs(3));
    assert!(result.other.is_empty(), "{:?}", result.other);
    let shrunk = server.wait_for_log("cores busy", Duration::from_secs(5));
    assert!(shrunk.contains("need a core"), "{shrunk}");
    crate::support::wait_until(Duration::from_secs(5), "the threads reported", || {
        let threads = function_view(&server)["profile"]["sync_threads"]
            .as_u64()
            .unwrap_or(0);
        threads >= 1 && threads <= cores as u64
    });
}

#[test]
fn load_shedding_refuses_the_excess_at_once_and_keeps_the_admitted_fast() {
    // 16 clients of ~5 ms calls on 2 threads: without shedding each call
    // waits behind the others, about 16 × 5 / 2 = 40 ms.
    let cpu = example("cpu");
    let path = "/?n=2000000";
    let run = Duration::from_secs(4);
    let queued = Server::start(&cpu, &["--threads", "2"]);
    let without = load(&queued, path, 16, run);
    drop(queued);
    let shedding = Server::start(&cpu, &["--threads", "2", "--load-shedding", "on"]);
    let with = load(&shedding, path, 16, run);
    assert!(without.other.is_empty(), "{:?}", without.other);
    assert!(
        without.refused.is_empty(),
        "{} refused",
        without.refused.len()
    );
    // Nothing fails but the refusals, which carry Retry-After and come
    // back long before a call could have run.
    assert!(with.other.is_empty(), "{:?}", with.other);
    assert!(!with.refused.is_empty(), "nothing was refused");
    let median = |sorted: &[Duration]| sorted[sorted.len() / 2];
    let (admitted, waited) = (median(&with.ok), median(&without.ok));
    assert!(
        admitted * 2 < waited,
        "admitted calls took {admitted:?} at the median, queued ones {waited:?}"
    );
    assert!(
        median(&with.refused) < admitted,
        "refusals took {:?}, admitted calls {admitted:?}",
        median(&with.refused)
    );
    shedding.wait_for_log("at once from now on", Duration::from_secs(1));
}
