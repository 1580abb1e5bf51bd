//! SIGTERM: stop accepting, finish in-flight requests, exit 0.

use crate::support::{Server, example};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn sigterm_finishes_an_in_flight_request_then_exits_0() {
    let mut server = Server::start(&example("echo"), &[]);
    // A chunked upload that is still arriving when the signal comes.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.signal("TERM");
    server.wait_for_log("draining", Duration::from_secs(5));
    // New connections are refused while draining.
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting after SIGTERM"
    );

    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"body_length\":11"), "{response}");

    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}
