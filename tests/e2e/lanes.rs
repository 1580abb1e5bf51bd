//! The execution lanes: fairness in the async lane, the sync lane's thread
//! pool and queue, limits in both lanes, concurrent I/O.

use crate::support::{
    Server, client, example, invocation_id, light_requests, quantile, slow_upstream,
};
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Runs `count` GETs of `url` at once (one thread each, released together,
/// one shared connection pool); returns (status, latency) per request and
/// the time from the release until the last one finished.
fn concurrent(url: &str, count: usize) -> (Vec<(u16, Duration)>, Duration) {
    let http = client();
    let barrier = Arc::new(Barrier::new(count + 1));
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let (url, http, barrier) = (url.to_string(), http.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let sent = Instant::now();
                let status = http.get(&url).send().map_or(0, |r| r.status().as_u16());
                (status, sent.elapsed())
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let results = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (results, started.elapsed())
}

#[test]
fn the_lane_comes_from_the_marker_unless_mode_overrides_it() {
    let sync = Server::start(&example("hello"), &[]);
    sync.wait_for_log(
        "sync lane (from the component's marker)",
        Duration::from_secs(5),
    );
    let forced = Server::start(&example("hello"), &["--mode", "async"]);
    forced.wait_for_log("async lane (from --mode)", Duration::from_secs(5));
    assert_eq!(client().get(forced.url("/")).send().unwrap().status(), 200);
}

/// Two guests spin 3 s without ever waiting, on this 2-core machine, while
/// light requests keep coming. Without real yields (say `--yield-fuel
/// 1000000000000000`, or `wasmtime serve`) no light request completes while
/// the hogs spin: the one in flight waits the whole 3 s. So the test asserts
/// on progress (light requests completed while both hogs still ran), on the
/// 90th percentile against a baseline taken in the same test before the
/// hogs start, and on a worst case far (4x) from what a loaded machine
/// measures (about 250 ms) and still 3x shorter than the hogs.
#[test]
fn spinning_guests_in_the_async_lane_do_not_starve_light_requests() {
    let server = Server::start(&example("hog"), &[]);
    let light_url = server.url("/?ms=0");
    let baseline = light_requests(&light_url, Duration::from_millis(500), || false);
    let baseline_p90 = quantile(&baseline, 0.9);

    let hogs_running = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let (url, running) = (server.url("/?ms=3000"), hogs_running.clone());
            std::thread::spawn(move || {
                let status = client().get(&url).send().unwrap().status().as_u16();
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                status
            })
        })
        .collect();
    // Let both hogs reach the guest before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let window = Instant::now();
    let during = light_requests(&light_url, Duration::from_secs(2), || {
        hogs_running.load(std::sync::atomic::Ordering::SeqCst) < 2
    });
    let window = window.elapsed();
    for hog in hogs {
        assert_eq!(hog.join().unwrap(), 200);
    }
    let (p90, worst) = (quantile(&during, 0.9), *during.last().unwrap());
    let summary = format!(
        "{} light requests in {window:?} while the hogs spun: p90 {p90:?}, worst {worst:?}; \
         before the hogs: {} requests, p90 {baseline_p90:?}",
        during.len(),
        baseline.len()
    );
    eprintln!("{summary}");
    assert!(during.len() >= 20, "too little progress: {summary}");
    assert!(
        p90 < Duration::from_millis(250).max(baseline_p90 * 20),
        "light requests slowed down: {summary}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "a light request starved: {summary}"
    );
}

#[test]
fn the_sync_lane_runs_as_many_calls_at_once_as_it_has_threads() {
    let server = Server::start(&example("sleep"), &["--mode", "sync", "--threads", "2"]);
    let url = server.url("/?ms=300");
    // One call alone, after a first one has warmed the host: the baseline.
    assert_eq!(client().get(&url).send().unwrap().status(), 200);
    let started = Instant::now();
    assert_eq!(client().get(&url).send().unwrap().status(), 200);
    let one = started.elapsed();
    let (results, elapsed) = concurrent(&url, 6);
    assert!(
        results.iter().all(|(status, _)| *status == 200),
        "{results:?}"
    );
    // Three rounds of two: at least 900 ms whatever the load (three threads
    // would take two rounds), and fewer than the six rounds of one thread.
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < one.mul_f64(4.5),
        "six 300 ms calls on two threads took {elapsed:?}; one alone took {one:?}"
    );
}

#[test]
fn a_full_sync_queue_answers_503_with_retry_after() {
    let server = Server::start(
        &example("sleep"),
        &["--mode", "sync", "--threads", "1", "--queue-depth", "1"],
    );
    // Of three calls at once, one runs, one waits and one finds the queue
    // full (each runs 2 s, far longer than the three take to arrive). On a
    // loaded machine the thread may not have taken the first call off the
    // queue when the others arrive, and then two are refused; with an
    // unbounded queue none would be.
    let url = server.url("/?ms=2000");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || client().get(&url).send().unwrap())
        })
        .collect();
    let responses: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    let served = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        served + refused == 3 && (1..=2).contains(&served) && refused >= 1,
        "{statuses:?}"
    );
    let refused = responses
        .iter()
        .find(|r| r.status() == 503)
        .unwrap_or_else(|| panic!("no call was refused: {statuses:?}"));
    assert_eq!(refused.headers()["fnhost-error"], "capacity");
    assert_eq!(refused.headers()["retry-after"], "1");
    invocation_id(refused);
}

#[test]
fn a_sync_guest_past_its_timeout_is_trapped_and_the_next_call_succeeds() {
    let server = Server::start(&example("hog"), &["--mode", "sync", "--timeout", "500ms"]);
    let started = Instant::now();
    // Untrapped, the guest would spin for 30 s.
    let response = client().get(server.url("/?ms=30000")).send().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["fnhost-error"], "timeout");
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    let next = client().get(server.url("/?ms=1")).send().unwrap();
    assert_eq!(next.status(), 200);
}

#[test]
fn a_cpu_budget_ends_a_long_computation_with_504() {
    let server = Server::start(&example("cpu"), &["--max-fuel", "5000000"]);
    let within = client().get(server.url("/?n=1000")).send().unwrap();
    assert_eq!(within.status(), 200);
    let over = client().get(server.url("/?n=100000000")).send().unwrap();
    assert_eq!(over.status(), 504);
    assert_eq!(over.headers()["fnhost-error"], "timeout");
}

#[test]
fn a_memory_bomb_gets_500_memory_in_both_lanes() {
    for mode in ["sync", "async"] {
        let server = Server::start(
            &example("alloc"),
            &["--mode", mode, "--max-memory", "64MiB"],
        );
        let bomb = client().get(server.url("/?mb=512")).send().unwrap();
        assert_eq!(bomb.status(), 500, "{mode}");
        assert_eq!(bomb.headers()["fnhost-error"], "memory", "{mode}");
        let fine = client().get(server.url("/?mb=16")).send().unwrap();
        assert_eq!(fine.status(), 200, "{mode}");
        assert_eq!(fine.text().unwrap(), "touched 16 MiB\n");
    }
}

#[test]
fn five_hundred_concurrent_sleeps_in_the_async_lane_take_about_one_sleep() {
    let server = Server::start(&example("sleep"), &[]);
    let (results, elapsed) = concurrent(&server.url("/?ms=100"), 500);
    let failed: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // A thread per sleeping call (the sync lane's default six threads on
    // this machine) would need 84 rounds: 8.4 s.
    assert!(
        elapsed < Duration::from_secs(4),
        "500 concurrent 100 ms sleeps took {elapsed:?}"
    );
}

#[test]
fn fanout_sends_its_ten_requests_concurrently() {
    let upstream = slow_upstream(Duration::from_millis(500));
    let url = format!("http://{upstream}/");
    let origin = format!("http://{upstream}");
    let server = Server::start(
        &example("fanout"),
        &[
            "--env",
            &format!("FANOUT_URL={url}"),
            "--allow-outbound",
            &origin,
        ],
    );
    let started = Instant::now();
    let response = client().get(server.url("/")).send().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().unwrap(),
        format!("[{}]", ["200"; 10].join(","))
    );
    // Ten serial requests would take 5 s.
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(2500),
        "fanout of ten 500 ms requests took {elapsed:?}"
    );
}

#[test]
fn a_client_that_stops_sending_its_body_cannot_hold_a_sync_thread() {
    let server = Server::start(
        &example("echo"),
        &["--mode", "sync", "--threads", "1", "--timeout", "1s"],
    );
    // Promise ten bytes, send none, keep the connection open.
    let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut answer = [0u8; 64];
    let read = stalled.read(&mut answer).unwrap();
    let status = String::from_utf8_lossy(&answer[..read]).to_string();
    assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    // A held thread would leave the read waiting its full 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // The only thread is free again.
    let next = client().post(server.url("/")).body("hi").send().unwrap();
    assert_eq!(next.status(), 200);
}
