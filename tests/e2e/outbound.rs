//! Outbound HTTP: denied unless the origin is allowed.

use crate::support::{Server, client, example, read_request_head};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A tiny upstream on loopback that answers every request with
/// `upstream says hi` and counts its connections.
fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            counter.fetch_add(1, Ordering::SeqCst);
            // It answers even a head cut short, as a careless upstream would.
            let _ = read_request_head(&mut stream);
            let body = "upstream says hi";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, connections)
}

#[test]
fn outbound_requests_are_denied_by_default() {
    let (addr, connections) = upstream();
    let server = Server::start(&example("fetch"), &[]);
    let response = client()
        .get(server.url(&format!("/?url=http://{addr}/")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().unwrap();
    assert!(body.contains("denied by the host"), "{body}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    server.wait_for_log("denied: not in --allow-outbound", Duration::from_secs(5));
}

#[test]
fn an_allowed_origin_is_reached_and_others_are_not() {
    let (allowed, allowed_hits) = upstream();
    let (other, other_hits) = upstream();
    let origin = format!("http://{allowed}");
    let server = Server::start(&example("fetch"), &["--allow-outbound", &origin]);
    let http = client();

    let response = http
        .get(server.url(&format!("/?url=http://{allowed}/x")))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "upstream says hi");
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);

    let denied = http
        .get(server.url(&format!("/?url=http://{other}/")))
        .send()
        .unwrap();
    assert_eq!(denied.status(), 502);
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
}
