//! Slow clients and shutdown: a stalled request body times out, and SIGTERM ends the node
//! within its grace period even while a client keeps a connection open.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Node, CHAT_MODEL};

/// Opens a connection and sends the headers and half of a JSON body, then stops.
fn stalled_request(node: &Node) -> TcpStream {
    let address = node.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect to the node");
    let request = format!(
        "POST /ai/run/{CHAT_MODEL} HTTP/1.1\r\nHost: {address}\r\ncontent-type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"prompt\":"
    );
    stream
        .write_all(request.as_bytes())
        .expect("send a partial request");
    stream
}

#[test]
fn stalled_body_gets_408() {
    let node = Node::start("[limits]\nbody_timeout_seconds = 1\n");
    let mut stream = stalled_request(&node);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let mut response = vec![0u8; 1024];
    let read = stream
        .read(&mut response)
        .expect("a response before the read timeout");
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("3007"), "{text}");
}

#[test]
fn sigterm_exits_despite_stalled_client() {
    let mut node =
        Node::start("[limits]\nbody_timeout_seconds = 600\nshutdown_grace_seconds = 1\n");
    let _stream = stalled_request(&node);
    std::thread::sleep(Duration::from_millis(200));

    let status = node.terminate(Duration::from_secs(30));
    let status =
        status.unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", node.log_text()));
    assert!(status.success(), "exit status {status}");
    assert!(
        node.log_text().contains("grace period over"),
        "{}",
        node.log_text()
    );
}
