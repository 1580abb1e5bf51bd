//! WASIp3 components (`wasi:http/handler@0.3.x`): served in the async lane,
//! several calls per instance.

use crate::support::{Server, client, example, invocation_id, run_fnhost};
use std::time::Duration;

#[test]
fn a_wasip3_component_is_served_and_checked_as_such() {
    let wasm = example("hello_p3");
    let (code, stdout, stderr) = run_fnhost(&["check", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("http (WASIp3, wasi:http/handler@0.3"),
        "{stdout}"
    );
    assert!(stdout.contains("lane:      async"), "{stdout}");

    let server = Server::start(&wasm, &[]);
    server.wait_for_log("WASIp3 components always run in it", Duration::from_secs(5));
    let response = client().get(server.url("/there?x=1")).send().unwrap();
    assert_eq!(response.status(), 200);
    invocation_id(&response);
    assert_eq!(
        response.text().unwrap(),
        "hello from WASIp3 at /there?x=1\n"
    );
}

#[test]
fn concurrent_calls_to_a_wasip3_component_all_succeed() {
    let server = Server::start(&example("hello_p3"), &["--max-concurrent-reuse", "4"]);
    let http = client();
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let (http, url) = (http.clone(), server.url(&format!("/{i}")));
            std::thread::spawn(move || {
                let response = http.get(&url).send().unwrap();
                (response.status().as_u16(), response.text().unwrap())
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("hello from WASIp3 at /{i}\n"));
    }
}

#[test]
fn a_wasip3_component_refuses_the_sync_lane() {
    let wasm = example("hello_p3");
    let (code, _stdout, stderr) = run_fnhost(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "sync",
        wasm.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("runs only in the async lane"), "{stderr}");
}
