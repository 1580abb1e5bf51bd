//! Instance reuse in both WASIp2 lanes, made safe: a component whose
//! instances break on a second call is noticed, its clients still get 200
//! where the failed call could run again, and reuse stops.

use crate::support::{Server, client, example, js_component};
use std::time::Duration;

const NOTICED: &str = "this component's instances fail when reused";
const RAN_AGAIN: &str = "running it again on a fresh one";

fn count(server: &Server, needle: &str) -> usize {
    server.log().iter().filter(|l| l.contains(needle)).count()
}

/// `trap`'s `/once` answers only the first call on an instance. With reuse
/// allowed, the second call fails on the reused instance; it read no body,
/// sent nothing and got no answer, so it runs again on a fresh instance and
/// succeeds, which proves reuse was at fault: reuse stops, said once.
#[test]
fn a_call_that_fails_on_a_reused_instance_runs_again_and_reuse_stops() {
    for mode in ["sync", "async"] {
        let server = Server::start(
            &example("trap"),
            &["--mode", mode, "--threads", "1", "--instance-reuse", "100"],
        );
        for call in 0..8 {
            let response = client().get(server.url("/once")).send().unwrap();
            assert_eq!(
                response.status(),
                200,
                "{mode} lane, call {call}: {:?}",
                response.text()
            );
        }
        server.wait_for_log(NOTICED, Duration::from_secs(5));
        assert_eq!(
            count(&server, NOTICED),
            1,
            "{mode} lane: {:?}",
            server.log()
        );
        assert_eq!(
            count(&server, RAN_AGAIN),
            1,
            "{mode} lane: {:?}",
            server.log()
        );
    }
}

/// A call whose body the guest read cannot run again (the body is gone), so
/// its client gets the failure; three such failures in a row on reused
/// instances, with fresh instances succeeding in between, stop reuse.
#[test]
fn failures_that_cannot_run_again_stop_reuse_after_three_in_a_row() {
    let server = Server::start(
        &example("trap"),
        &[
            "--mode",
            "sync",
            "--threads",
            "1",
            "--instance-reuse",
            "100",
        ],
    );
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            client()
                .post(server.url("/once"))
                .body("a body the handler reads")
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    // Fresh, reused (fails), fresh, reused (fails), fresh, reused (fails:
    // the third strike), then a fresh instance for every call.
    assert_eq!(
        statuses,
        [200, 500, 200, 500, 200, 500, 200, 200, 200, 200],
        "{:?}",
        server.log()
    );
    assert_eq!(count(&server, NOTICED), 1);
    assert_eq!(count(&server, RAN_AGAIN), 0);
}

/// A guest that fails because of its request, on a fresh instance as on a
/// reused one, keeps its reuse.
#[test]
fn a_request_that_fails_everywhere_does_not_stop_reuse() {
    let server = Server::start(
        &example("trap"),
        &["--threads", "1", "--instance-reuse", "100"],
    );
    for _ in 0..5 {
        assert_eq!(
            client().get(server.url("/ok")).send().unwrap().status(),
            200
        );
        let failed = client().get(server.url("/boom")).send().unwrap();
        assert_eq!(failed.status(), 500);
        assert_eq!(failed.headers()["fnhost-error"], "trap");
    }
    assert_eq!(count(&server, NOTICED), 0, "{:?}", server.log());
}

/// componentize-js's fetch handler cannot run twice on one instance
/// (`wasmtime serve --max-instance-reuse-count` answers 500 to every call
/// after the first). Its initial memory (about 9 MiB) makes fnhost reuse
/// its instances by default; every call still gets 200.
#[test]
fn a_componentize_js_component_answers_every_call_with_reuse_allowed() {
    let server = Server::start(&js_component("hello"), &[]);
    server.wait_for_log(
        "each instance serves up to 1000 calls",
        Duration::from_secs(5),
    );
    for call in 0..10 {
        let response = client().get(server.url("/js")).send().unwrap();
        assert_eq!(response.status(), 200, "call {call}: {:?}", server.log());
        let body = response.text().unwrap();
        assert!(
            body.starts_with("hello from JavaScript (/js, call 1 on this instance)"),
            "call {call}: {body}"
        );
    }
    assert_eq!(count(&server, NOTICED), 1, "{:?}", server.log());
}
