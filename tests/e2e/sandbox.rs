//! The sandbox: a guest sees nothing of the host unless granted.

use crate::support::{Server, client, example, temp_dir};
use std::net::TcpListener;

fn report(server: &Server, query: &str) -> serde_json::Value {
    let response = client()
        .get(server.url(&format!("/?{query}")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

#[test]
fn by_default_a_guest_sees_no_env_no_files_no_stdin_and_no_network() {
    // A listener the guest must not reach.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let server = Server::start(&example("sandbox"), &[]);
    let seen = report(&server, &format!("dir=/&connect={target}"));
    assert_eq!(seen["env"], serde_json::json!([]), "{seen}");
    assert!(
        seen["listing"]["error"].is_string(),
        "no preopened directory: {seen}"
    );
    assert_eq!(seen["stdin_bytes"], 0);
    let connect = seen["connect"].as_str().unwrap();
    assert!(connect.starts_with("refused"), "{connect}");
}

#[test]
fn granted_env_and_directories_are_visible() {
    let dir = temp_dir("e2e-sandbox-grant");
    std::fs::write(dir.join("hello.txt"), "hi").unwrap();
    let grant = format!("{}::/data", dir.display());
    let server = Server::start(
        &example("sandbox"),
        &["--env", "GREETING=hi", "--dir", &grant],
    );
    let seen = report(&server, "dir=/data");
    assert_eq!(seen["env"], serde_json::json!(["GREETING=hi"]), "{seen}");
    assert_eq!(
        seen["listing"]["entries"],
        serde_json::json!(["hello.txt"]),
        "{seen}"
    );
}
