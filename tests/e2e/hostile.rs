//! Hostile and careless input: an oversized component, directory grants
//! that would hand a guest the host, a guest flooding its output with
//! terminal escapes, and calls left waiting for a sync-lane thread.

use crate::support::{Server, client, example, run_fnhost, temp_dir, temp_file};
use std::time::{Duration, Instant};

/// A valid component (`hello`) made `extra` bytes larger by a custom
/// section at the end, as an attacker or a careless build would.
fn padded_hello(extra: usize) -> std::path::PathBuf {
    let mut bytes = std::fs::read(example("hello")).unwrap();
    let name = b"padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.resize(payload.len() + extra, 0);
    bytes.push(0); // custom section id
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&payload);
    temp_file("padded-hello.wasm", &bytes)
}

fn assert_one_line_exit_2(args: &[&str], says: &[&str]) {
    let (code, stdout, stderr) = run_fnhost(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr:?}");
    for needle in says {
        assert!(lines[0].contains(needle), "says {needle:?}: {stderr:?}");
    }
    assert!(!stdout.contains("serving"), "never served: {stdout}");
}

#[test]
fn a_component_over_the_size_cap_is_refused_before_it_is_compiled() {
    let big = padded_hello(80 << 20);
    let big = big.to_str().unwrap();
    let says = [big, "64MiB component size cap", "--max-component-size"];
    assert_one_line_exit_2(&["check", big], &says);
    assert_one_line_exit_2(&["serve", "--listen", "127.0.0.1:0", big], &says);
    // The same file is a valid component: the cap alone refused it.
    let (code, stdout, stderr) = run_fnhost(&["check", "--max-component-size", "100MiB", big]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn directory_grants_of_the_root_or_of_fnhost_folders_are_refused() {
    let hello = example("hello");
    let hello = hello.to_str().unwrap();
    assert_one_line_exit_2(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            "/::/host",
            hello,
        ],
        &["--dir /", "whole filesystem"],
    );
    let parent = temp_dir("grant-parent");
    let cache = parent.join("cache");
    let cache_arg = cache.to_str().unwrap();
    let around = format!("{}::/data", parent.display());
    assert_one_line_exit_2(
        &["serve", "--cache-dir", cache_arg, "--dir", &around, hello],
        &["contains fnhost's compile cache"],
    );
    std::fs::create_dir_all(cache.join("inside")).unwrap();
    let inside = format!("{}::/data", cache.join("inside").display());
    assert_one_line_exit_2(
        &["serve", "--cache-dir", cache_arg, "--dir", &inside, hello],
        &["is inside fnhost's compile cache"],
    );
    // Nested grants: the guest could swap the inner one for a symlink.
    std::fs::create_dir_all(parent.join("a").join("b")).unwrap();
    let outer = format!("{}::/a", parent.join("a").display());
    let inner = format!("{}::/b", parent.join("a").join("b").display());
    assert_one_line_exit_2(
        &["serve", "--dir", &outer, "--dir", &inner, hello],
        &["overlaps --dir"],
    );
    // A grant holding the component: the guest could rewrite what loads.
    let app = parent.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(example("hello"), app.join("hello.wasm")).unwrap();
    let own = format!("{}::/app", app.display());
    let component = app.join("hello.wasm");
    assert_one_line_exit_2(
        &["serve", "--dir", &own, component.to_str().unwrap()],
        &["contains fnhost's component file"],
    );
}

/// 4 MiB of screen-clearing escape sequences: the log gets at most the
/// cap, escaped, with one marker line, and the next call starts a new
/// budget.
#[test]
fn guest_output_is_capped_per_invocation_and_escaped() {
    let server = Server::start(&example("trap"), &["--max-guest-output", "64KiB"]);
    let flood = |bytes: u32| {
        let response = client()
            .get(server.url(&format!("/flood?bytes={bytes}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["fnhost-invocation-id"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let first = flood(4 << 20);
    let marker = format!("[{first}] fnhost: guest output cut at 64KiB");
    server.wait_for_log(&marker, Duration::from_secs(5));
    let second = flood(1 << 10);
    server.wait_for_log(&format!("[{second}] "), Duration::from_secs(5));
    let log = server.log();
    let of = |id: &str| -> Vec<String> {
        let prefix = format!("[{id}] ");
        log.iter()
            .filter(|l| l.starts_with(&prefix))
            .cloned()
            .collect()
    };
    let first_lines = of(&first);
    let guest_bytes: usize = first_lines
        .iter()
        .filter(|l| !l.contains("fnhost: guest output cut"))
        .map(|l| l.len())
        .sum();
    // 64 KiB of guest bytes, each escape written as six characters.
    assert!(guest_bytes < 6 * (64 << 10), "{guest_bytes} bytes logged");
    assert!(guest_bytes > 32 << 10, "the output up to the cap is kept");
    assert_eq!(
        first_lines
            .iter()
            .filter(|l| l.contains("guest output cut"))
            .count(),
        1
    );
    assert!(
        log.iter()
            .all(|l| !l.contains('\u{1b}') && !l.contains('\r')),
        "no raw escape or carriage return reaches the log"
    );
    assert!(first_lines[0].contains("\\u{1b}[2J\\u{1b}[31mred text"));
    assert!(
        !of(&second).is_empty(),
        "a new invocation gets a new budget"
    );
}

/// `--queue-timeout`: a call that cannot get a sync-lane thread in time is
/// refused with 503 and Retry-After instead of waiting behind the others.
#[test]
fn a_call_left_waiting_for_a_sync_thread_is_refused_at_the_queue_timeout() {
    let server = Server::start(
        &example("sleep"),
        &[
            "--mode",
            "sync",
            "--threads",
            "1",
            "--queue-timeout",
            "200ms",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let long = {
        let url = server.url("/?ms=3000");
        std::thread::spawn(move || client().get(url).send().unwrap().status())
    };
    // The long call holds the only thread once it is in flight.
    crate::support::wait_until(Duration::from_secs(2), "the long call in flight", || {
        client()
            .get(server.admin_url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .is_ok_and(|text| text.lines().any(|l| l == "fnhost_in_flight 1"))
    });
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let refused = client().get(server.url("/?ms=1")).send().unwrap();
    let waited = started.elapsed();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["fnhost-error"], "capacity");
    assert!(refused.headers().contains_key("retry-after"));
    // Refused at the bound, far before the thread frees (2.5 s later).
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_millis(2000), "{waited:?}");
    assert_eq!(long.join().unwrap(), 200);
}

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// A client that asks for a 32 MiB response and stops reading: the
/// supervisor holds at most the response window (not the body), the write
/// timeout cuts the connection, and the one sync-lane thread is free for
/// the next call.
#[test]
fn a_client_that_stops_reading_costs_one_window_and_is_cut_at_the_write_timeout() {
    use std::io::{Read, Write};
    let server = Server::start(
        &example("trap"),
        &["--threads", "1", "--write-timeout", "2s"],
    );
    assert_eq!(
        client().get(server.url("/ok")).send().unwrap().status(),
        200
    );
    let before = resident(server.pid());
    let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
    stalled
        .write_all(b"GET /big?bytes=33554432 HTTP/1.1\r\nhost: fnhost\r\n\r\n")
        .unwrap();
    let mut head = [0u8; 512];
    let read = stalled.read(&mut head).unwrap();
    assert!(
        head[..read].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &head[..read]
    );
    // The guest has written what it can by now; the client reads no more.
    std::thread::sleep(Duration::from_millis(1000));
    let during = resident(server.pid());
    assert!(
        during < before + (16 << 20),
        "the supervisor grew by {} MiB while the client did not read",
        (during.saturating_sub(before)) >> 20
    );
    // Past the write timeout the connection is cut and the thread serves
    // the next call (otherwise it waits until the client goes away, and
    // this call gets 503 at the queue timeout).
    let started = Instant::now();
    let next = client().get(server.url("/ok")).send().unwrap();
    assert_eq!(next.status(), 200, "{:?}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stalled);
}

/// A log reader that stalls (the host's stdout is a pipe nobody reads)
/// must not stall the guests: their output lines are dropped and counted
/// instead, and every call still answers quickly.
#[test]
fn a_stalled_log_reader_does_not_stall_the_guests() {
    let server = Server::start_with_stdout_unread(
        &example("trap"),
        &["--admin", "127.0.0.1:0", "--threads", "2"],
    );
    // Each call writes 512 KiB of lines to stdout; the pipe holds 64 KiB.
    for call in 0..16 {
        let started = Instant::now();
        let response = client()
            .get(server.url("/flood?bytes=524288"))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "call {call}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "call {call} took {:?}",
            started.elapsed()
        );
    }
    let dropped = crate::support::wait_until(
        Duration::from_secs(5),
        "the dropped lines counted in /metrics",
        || {
            client()
                .get(server.admin_url("/metrics"))
                .send()
                .and_then(|r| r.text())
                .is_ok_and(|text| {
                    text.lines().any(|l| {
                        l.starts_with("fnhost_guest_output_dropped_lines_total ")
                            && !l.ends_with(" 0")
                    })
                })
        },
    );
    let _ = dropped;
}
