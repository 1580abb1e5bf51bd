//! Serving: hello, echo, concurrency, traps.

use crate::support::{Server, client, example, invocation_id};
use sha2::{Digest, Sha256};
use std::time::Duration;

#[test]
fn hello_answers_with_an_invocation_id() {
    let server = Server::start(&example("hello"), &[]);
    let response = client().get(server.url("/")).send().unwrap();
    assert_eq!(response.status(), 200);
    invocation_id(&response);
    assert_eq!(response.text().unwrap(), "hello from fnhost\n");
}

#[test]
fn echo_reports_method_path_query_headers_and_a_1mib_body() {
    let server = Server::start(&example("echo"), &[]);
    let body: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected_sha: String = Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let response = client()
        .put(server.url("/some/path?x=1&y=two"))
        .header("x-test", "value-42")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().unwrap();
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/some/path");
    assert_eq!(json["query"], "x=1&y=two");
    assert_eq!(json["headers"]["x-test"], "value-42");
    assert_eq!(json["body_length"], 1 << 20);
    assert_eq!(json["body_sha256"], expected_sha.as_str());
}

#[test]
fn two_hundred_concurrent_requests_are_all_answered() {
    let server = Server::start(&example("hello"), &[]);
    let url = server.url("/");
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let response = client().get(&url).send().expect("request failed");
                (
                    response.status().as_u16(),
                    response.text().unwrap_or_default(),
                )
            })
        })
        .collect();
    for handle in handles {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "hello from fnhost\n");
    }
}

#[test]
fn a_trap_answers_500_is_logged_with_its_id_and_the_host_keeps_serving() {
    let server = Server::start(&example("trap"), &[]);
    let http = client();
    let failed = http.get(server.url("/boom")).send().unwrap();
    assert_eq!(failed.status(), 500);
    assert_eq!(failed.headers()["fnhost-error"], "trap");
    let id = invocation_id(&failed);
    let body = failed.text().unwrap();
    assert!(body.contains(&id), "body names the invocation: {body:?}");
    for leak in ["wasm backtrace", "panicked", ".rs", "/work", "/root"] {
        assert!(!body.contains(leak), "body leaks {leak:?}: {body:?}");
    }
    // The panic message the guest printed, and the failure, both carry the id.
    server.wait_for_log(
        &format!("[{id}] invocation failed: trap"),
        Duration::from_secs(5),
    );
    let panic_line = server.wait_for_log("panics on purpose", Duration::from_secs(5));
    assert!(panic_line.starts_with(&format!("[{id}]")), "{panic_line}");

    let ok = http.get(server.url("/ok")).send().unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().unwrap(), "still serving\n");
}

/// A guest written against the `wasip2` bindings alone, as for `wasmtime
/// serve`: no marker, so the async lane, with every default.
#[test]
fn a_guest_written_without_the_sdk_is_served_with_the_defaults() {
    let server = Server::start(&example("plain_hello"), &[]);
    server.wait_for_log(
        "async lane (no marker: the default)",
        Duration::from_secs(5),
    );
    for _ in 0..3 {
        let response = client().get(server.url("/")).send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().unwrap(),
            "hello from a plain wasi:http guest\n"
        );
    }
}
