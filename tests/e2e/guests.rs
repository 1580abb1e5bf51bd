//! The sleep, cpu and hog examples, and the per-invocation timeout.

use crate::support::{Server, client, example, invocation_id};
use std::time::{Duration, Instant};

/// The cpu example's checksum, computed here independently.
fn expected_checksum(rounds: u64) -> u64 {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sum: u64 = 0;
    for _ in 0..rounds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sum = sum.wrapping_add(state);
    }
    sum
}

#[test]
fn cpu_does_the_work_it_is_asked_for() {
    let server = Server::start(&example("cpu"), &[]);
    let http = client();
    for rounds in [0, 1, 12_345] {
        let body = http
            .get(server.url(&format!("/?n={rounds}")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(body, format!("checksum {}\n", expected_checksum(rounds)));
    }
    let bad = http.get(server.url("/?n=lots")).send().unwrap();
    assert_eq!(bad.status(), 400);
}

#[test]
fn sleeping_guests_wait_concurrently_without_a_thread_each() {
    let server = Server::start(&example("sleep"), &[]);
    let url = server.url("/?ms=500");
    let started = Instant::now();
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || client().get(&url).send().unwrap().text().unwrap())
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), "slept 500 ms\n");
    }
    let elapsed = started.elapsed();
    // Serially this would take 50 s; a thread per sleeping guest (the sync
    // lane's default six threads on this machine) 17 rounds, 8.5 s.
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(4),
        "100 concurrent 500 ms sleeps took {elapsed:?}"
    );
}

#[test]
fn a_guest_past_its_timeout_gets_504_and_the_host_keeps_serving() {
    let server = Server::start(&example("hog"), &["--timeout", "500ms"]);
    let http = client();
    let started = Instant::now();
    // Untimed, the guest would spin for 30 s.
    let response = http.get(server.url("/?ms=30000")).send().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["fnhost-error"], "timeout");
    let id = invocation_id(&response);
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(10),
        "a 500 ms timeout answered after {elapsed:?}"
    );
    server.wait_for_log(
        &format!("[{id}] invocation failed: timeout"),
        Duration::from_secs(5),
    );

    let quick = http.get(server.url("/?ms=10")).send().unwrap();
    assert_eq!(quick.status(), 200);
    assert_eq!(quick.text().unwrap(), "spun 10 ms\n");
}
