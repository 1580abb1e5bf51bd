//! Redeploys under load: the component behind a route is replaced on disk
//! 20 times while clients keep calling it (`--watch` and `POST /reload`),
//! with no failed request, the new version answering soon after each swap,
//! and a broken version refused while the old one keeps serving.

use crate::support::{Server, client, example, temp_dir};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HELLO: &str = "hello from fnhost\n";
const PLAIN: &str = "hello from a plain wasi:http guest\n";

/// Replaces `target` with `source` atomically (write beside, rename over),
/// as a deploy tool does.
fn replace(source: &Path, target: &Path) {
    let staging = target.with_extension("wasm.new");
    std::fs::copy(source, &staging).unwrap();
    std::fs::rename(&staging, target).unwrap();
}

/// Polls `url` until it answers `body`; returns how long that took.
fn time_until_body(url: &str, body: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let http = client();
    loop {
        if let Ok(response) = http.get(url).send()
            && response.text().is_ok_and(|text| text == body)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{url} did not answer {body:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn twenty_swaps_under_load_fail_no_request_and_a_broken_version_is_refused() {
    let dir = temp_dir("redeploy");
    let component = dir.join("app.wasm");
    std::fs::copy(example("hello"), &component).unwrap();
    let manifest = dir.join("fnhost.toml");
    std::fs::write(
        &manifest,
        "manifest_version = 1\n\n[[function]]\nname = \"app\"\ncomponent = \"app.wasm\"\nroute = \"/...\"\n",
    )
    .unwrap();
    let server = Server::start(
        &manifest,
        &["--watch", "--workers", "2", "--admin", "127.0.0.1:0"],
    );
    let url = server.url("/");
    let reload_url = server.admin_url("/reload");
    time_until_body(&url, HELLO, Duration::from_secs(60));

    // Clients calling the route for the whole test, counting what is not 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            std::thread::spawn(move || {
                let http = client();
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).send() {
                        Ok(response) if response.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{other:?}"));
                        }
                    }
                }
                failures
            })
        })
        .collect();

    let versions = [(example("plain_hello"), PLAIN), (example("hello"), HELLO)];
    let mut waits = Vec::new();
    for swap in 0..20 {
        let (source, body) = &versions[swap % 2];
        replace(source, &component);
        if swap % 4 == 3 {
            // Also the explicit way (the watcher may reload the same file too).
            let response = client().post(&reload_url).send().unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().unwrap());
        }
        // The first time each version loads, the workers compile it.
        let limit = if swap < 2 {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(2)
        };
        waits.push(time_until_body(&url, body, limit));
    }

    // A broken component is refused (watch and POST /reload), and the
    // version before it keeps serving.
    std::fs::write(dir.join("app.wasm.new"), b"not a component").unwrap();
    std::fs::rename(dir.join("app.wasm.new"), &component).unwrap();
    server.wait_for_log("refused", Duration::from_secs(10));
    let response = client().post(&reload_url).send().unwrap();
    assert_eq!(response.status(), 422);
    let text = response.text().unwrap();
    assert!(text.contains("app.wasm"), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "{text}");
    let before = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "the old version stopped serving"
    );
    assert_eq!(client().get(&url).send().unwrap().text().unwrap(), HELLO);

    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed during the swaps, e.g. {:?}",
        failures.len(),
        failures.len() as u64 + ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(3)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too few calls to say anything"
    );
    eprintln!("new version answering after each swap: {waits:?}");
}

#[test]
fn sighup_redeploys_a_single_component() {
    let dir = temp_dir("redeploy-hup");
    let component = dir.join("app.wasm");
    std::fs::copy(example("hello"), &component).unwrap();
    let server = Server::start(&component, &[]);
    let url = server.url("/");
    time_until_body(&url, HELLO, Duration::from_secs(60));
    replace(&example("plain_hello"), &component);
    server.signal("HUP");
    time_until_body(&url, PLAIN, Duration::from_secs(60));
    server.wait_for_log("redeployed: app version 2", Duration::from_secs(5));
}

#[test]
fn in_process_sighup_swaps_the_app_without_a_failed_call() {
    let dir = temp_dir("redeploy-in-process");
    let component = dir.join("app.wasm");
    std::fs::copy(example("hello"), &component).unwrap();
    let server = Server::start(&component, &["--in-process"]);
    let url = server.url("/");
    time_until_body(&url, HELLO, Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let caller = {
        let (stop, ok, url) = (stop.clone(), ok.clone(), url.clone());
        std::thread::spawn(move || {
            let http = client();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send() {
                    Ok(response) if response.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed.push(format!("{other:?}")),
                }
            }
            failed
        })
    };
    // Calls keep going across each swap: some before it, some after.
    let more_calls = |count: u64| {
        let from = ok.load(Ordering::Relaxed);
        crate::support::wait_until(Duration::from_secs(30), "calls going on", || {
            ok.load(Ordering::Relaxed) >= from + count
        });
    };
    for (source, body) in [(example("plain_hello"), PLAIN), (example("hello"), HELLO)] {
        more_calls(20);
        replace(&source, &component);
        server.signal("HUP");
        time_until_body(&url, body, Duration::from_secs(60));
        more_calls(20);
    }
    // A broken version is refused and the running one stays.
    std::fs::write(&component, b"not a component").unwrap();
    server.signal("HUP");
    server.wait_for_log("redeploy (SIGHUP) refused", Duration::from_secs(10));
    more_calls(20);
    assert_eq!(client().get(&url).send().unwrap().text().unwrap(), HELLO);
    stop.store(true, Ordering::Relaxed);
    let failed = caller.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} calls failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

/// A call in flight across a redeploy is counted when it ends, against the
/// version it started on (on a handed connection no call holds its
/// version, so the supervisor keeps replaced versions' counts).
#[test]
fn a_call_in_flight_across_a_redeploy_is_counted() {
    let dir = temp_dir("redeploy-count");
    let component = dir.join("app.wasm");
    std::fs::copy(example("sleep"), &component).unwrap();
    let server = Server::start(&component, &["--admin", "127.0.0.1:0"]);
    let url = server.url("/?ms=1500");
    let slow = std::thread::spawn(move || client().get(url).send().unwrap().status());
    std::thread::sleep(Duration::from_millis(300));
    let reload = client().post(server.admin_url("/reload")).send().unwrap();
    assert!(reload.status().is_success(), "{:?}", reload.text());
    assert_eq!(slow.join().unwrap(), 200);
    let metrics = server.admin_text("/metrics");
    assert!(
        metrics.contains(r#"fnhost_invocations_total{function="app",lane="async",outcome="ok"} 1"#),
        "{metrics}"
    );
}
