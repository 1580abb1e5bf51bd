//! Request limits: header flood and header size (431), URI length (414),
//! body size (413), header-read timeout.

use crate::support::{Server, client, example, invocation_id};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends a raw request and returns the status line (or "" if the connection closed).
fn raw_status(server: &Server, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_header_flood_gets_431() {
    let server = Server::start(&example("hello"), &[]);
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..500 {
        request.push_str(&format!("x-flood-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let status = raw_status(&server, request.as_bytes());
    assert!(status.contains(" 431 "), "status line {status:?}");
    // The host still serves afterwards.
    assert_eq!(client().get(server.url("/")).send().unwrap().status(), 200);
}

#[test]
fn an_oversized_header_section_gets_431_with_an_invocation_id() {
    let server = Server::start(&example("hello"), &[]);
    let response = client()
        .get(server.url("/"))
        .header("x-big", "v".repeat(100 << 10))
        .send()
        .unwrap();
    assert_eq!(response.status(), 431);
    invocation_id(&response);
}

#[test]
fn a_long_uri_gets_414() {
    let server = Server::start(&example("hello"), &[]);
    let response = client()
        .get(server.url(&format!("/{}", "a".repeat(10 << 10))))
        .send()
        .unwrap();
    assert_eq!(response.status(), 414);
    invocation_id(&response);
}

#[test]
fn an_oversized_body_gets_413_declared_or_chunked() {
    let server = Server::start(&example("echo"), &["--max-body", "1KiB"]);
    let http = client();

    let declared = http
        .post(server.url("/"))
        .body(vec![7u8; 2048])
        .send()
        .unwrap();
    assert_eq!(declared.status(), 413);
    invocation_id(&declared);

    // No Content-Length: the limit trips while the guest reads the stream.
    let chunked_body = reqwest::blocking::Body::new(std::io::Cursor::new(vec![7u8; 4096]));
    let chunked = http
        .post(server.url("/"))
        .body(chunked_body)
        .send()
        .unwrap();
    assert_eq!(chunked.status(), 413);
    invocation_id(&chunked);

    let small = http
        .post(server.url("/"))
        .body(vec![7u8; 1024])
        .send()
        .unwrap();
    assert_eq!(small.status(), 200);
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let server = Server::start(&example("hello"), &["--header-timeout", "1s"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: local").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // hyper answers 408 or simply closes; either way the read ends.
    let _ = stream.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "connection closed after {waited:?}"
    );
}
