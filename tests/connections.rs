//! The real binary's connection handling: idle, slow-header and stalled-body clients are cut
//! off by the configured timeouts, and a server holding more connections than it has file
//! descriptors still serves a new client.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{Launch, ServerProcess};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a test waits for the server to act; far above every configured timeout.
const PATIENCE: Duration = Duration::from_secs(30);

fn start(args: &[&str]) -> (ServerProcess, tempfile::TempDir) {
    start_with(Launch {
        args,
        ..Launch::default()
    })
}

fn start_with(launch: Launch<'_>) -> (ServerProcess, tempfile::TempDir) {
    let directory = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(&directory.path().join("edges.db"), launch);
    (server, directory)
}

/// Reads until the server closes the connection; panics if it has not within [`PATIENCE`].
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
    received
}

fn seed_request(host: SocketAddr) -> Vec<u8> {
    let body = common::seed_body().to_string();
    format!(
        "POST /stateMachineInit HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends the seed request on a fresh connection and returns the status line.
async fn post_seed(http: SocketAddr) -> String {
    let mut stream = TcpStream::connect(http).await.expect("connect");
    stream.write_all(&seed_request(http)).await.expect("send");
    let response = read_until_closed(&mut stream).await;
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let (server, _directory) = start(&["--http-header-timeout", "1s", "--http-idle-timeout", "1h"]);
    let mut silent = TcpStream::connect(server.http_addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn a_kept_alive_http_connection_is_closed_after_the_idle_timeout() {
    let (server, _directory) = start(&["--http-idle-timeout", "1s", "--http-header-timeout", "1h"]);
    let mut reused = TcpStream::connect(server.http_addr).await.unwrap();
    reused
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let response = read_until_closed(&mut reused).await;
    assert!(response.starts_with(b"HTTP/1.1 404"), "{response:?}");
}

#[tokio::test]
async fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let (server, _directory) = start(&["--http-header-timeout", "1s", "--http-idle-timeout", "1h"]);
    let mut slow = TcpStream::connect(server.http_addr).await.unwrap();
    let head = b"POST /stateMachineInit HTTP/1.1\r\nHost: localhost\r\nX-Padding: ";
    let started = Instant::now();
    let mut sent = 0;
    let cut_off = loop {
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if slow.write_all(&[byte]).await.is_err() {
            break true;
        }
        sent += 1;
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) | Err(_) => {}
        }
        if started.elapsed() > PATIENCE {
            break false;
        }
    };
    assert!(
        cut_off,
        "a head trickling in for {PATIENCE:?} was never cut off"
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_408_in_json_and_the_connection_closed() {
    let (server, _directory) = start(&["--http-body-timeout", "1s"]);
    let mut stalled = TcpStream::connect(server.http_addr).await.unwrap();
    stalled
        .write_all(
            b"POST /stateMachineInit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"batchId\": ",
        )
        .await
        .unwrap();
    let response = String::from_utf8(read_until_closed(&mut stalled).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert!(
        body["message"].as_str().unwrap().starts_with("body:"),
        "{body}"
    );
}

#[tokio::test]
async fn an_idle_grpc_connection_is_sent_away_after_the_idle_timeout() {
    let (server, _directory) = start(&["--grpc-idle-timeout", "1s"]);
    let frame_types = h2_frames_until_closed(server.grpc_addr).await;
    assert!(frame_types.contains(&GOAWAY), "{frame_types:?}");
}

/// Speaks just enough HTTP/2 to stay a live client (the preface, an empty SETTINGS frame, an
/// answer to every PING) until the server closes the connection; returns the frame types it
/// sent. Panics if the server keeps the connection past [`PATIENCE`].
async fn h2_frames_until_closed(addr: SocketAddr) -> Vec<u8> {
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame_types = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            frame_types.push(header[3]);
            if header[3] == PING && header[4] & ACK == 0 {
                let mut ack = header;
                ack[4] = ACK;
                let _ = stream.write_all(&ack).await;
                let _ = stream.write_all(&payload).await;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open; frame types {frame_types:?}"
    );
    frame_types
}

const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_limit_at_start() {
    let (_soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if hard <= 256 {
        return;
    }
    let (server, _directory) = start_with(Launch {
        soft_open_file_limit: Some(256),
        ..Launch::default()
    });
    let log = server.log();
    let limit: u64 = log
        .iter()
        .find_map(|line| {
            let start = line.find("open_file_limit=")? + "open_file_limit=".len();
            line[start..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("the limit is logged: {log:#?}"));
    assert!(limit > 256 && limit <= hard, "{limit} of hard {hard}");
}

/// Opens `count` connections and keeps them open, sending nothing.
async fn hold_idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    held
}

#[tokio::test]
async fn a_server_holding_more_idle_connections_than_file_descriptors_still_serves_a_new_client() {
    let (server, _directory) = start_with(Launch {
        args: &[],
        open_file_limit: Some(256),
        ..Launch::default()
    });
    let _held = hold_idle_connections(server.http_addr, 400).await;
    let status = tokio::time::timeout(PATIENCE, post_seed(server.http_addr))
        .await
        .expect("a new client is served while 400 idle connections are held");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let log = server.log();
    assert!(
        log.iter()
            .any(|line| line.contains("http_max_connections=64")),
        "the cap is derived from the open-file limit: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|line| line.contains("connection limit reached")),
        "reaching the cap is logged: {log:#?}"
    );
}

#[tokio::test]
async fn a_cap_above_the_file_limit_backs_off_logs_and_still_serves_a_new_client() {
    let (server, _directory) = start_with(Launch {
        args: &["--http-max-connections", "100000"],
        open_file_limit: Some(128),
        ..Launch::default()
    });
    let _held = hold_idle_connections(server.http_addr, 300).await;
    let status = tokio::time::timeout(PATIENCE, post_seed(server.http_addr))
        .await
        .expect("a new client is served although accept runs out of descriptors");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let log = server.log();
    let failures: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("accepting connections fails"))
        .collect();
    assert!(!failures.is_empty(), "accept failures are logged: {log:#?}");
    assert!(
        failures.len() < 20,
        "accept failures are logged at a limited rate: {failures:#?}"
    );
}

#[tokio::test]
async fn a_grpc_listener_at_its_cap_closes_an_idle_connection_to_serve_a_new_client() {
    let (server, _directory) = start(&["--grpc-max-connections", "4"]);
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.grpc_addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        idle.push(stream);
    }
    let status = tokio::time::timeout(PATIENCE, async {
        let mut client = common::connect(server.grpc_addr).await;
        client
            .get_batch_status(batch_manager::grpc::pb::GetBatchStatusRequest {
                batch_id: "absent".into(),
            })
            .await
            .unwrap_err()
    })
    .await
    .expect("a new gRPC client is served while the cap is held by idle connections");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let mut closed = 0;
    for stream in &mut idle {
        let mut buffer = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => return Ok(0),
                    Ok(_) => continue,
                    Err(err) => return Err(err),
                }
            }
        })
        .await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 1,
        "an idle connection made room for the new client"
    );
}

#[tokio::test]
async fn a_grpc_connection_past_its_maximum_age_is_sent_away() {
    let (server, _directory) = start(&[
        "--grpc-max-connection-age",
        "1s",
        "--grpc-idle-timeout",
        "1h",
    ]);
    let frame_types = h2_frames_until_closed(server.grpc_addr).await;
    assert!(frame_types.contains(&GOAWAY), "{frame_types:?}");
}

/// One header field as HPACK "literal without indexing, new name" (no Huffman coding).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut field = vec![0x00, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

#[tokio::test]
async fn a_grpc_call_whose_request_body_never_arrives_is_answered_and_its_stream_freed() {
    const HEADERS: u8 = 0x1;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let (server, _directory) = start(&["--grpc-body-timeout", "1s"]);
    let mut stream = TcpStream::connect(server.grpc_addr).await.unwrap();
    let block: Vec<u8> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/batchmanager.v1.BatchManager/GetBatchStatus"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .flat_map(|(name, value)| hpack_literal(name, value))
    .collect();
    let mut opening =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let length = block.len() as u32;
    opening.extend_from_slice(&length.to_be_bytes()[1..]);
    opening.extend_from_slice(&[HEADERS, END_HEADERS, 0, 0, 0, 1]);
    opening.extend_from_slice(&block);
    // The call's headers, then never its body.
    stream.write_all(&opening).await.unwrap();

    let answered = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut header = [0u8; 9];
            stream
                .read_exact(&mut header)
                .await
                .expect("the connection stays up");
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            stream
                .read_exact(&mut payload)
                .await
                .expect("a whole frame");
            let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            if header[3] == HEADERS && stream_id == 1 && header[4] & END_STREAM != 0 {
                return;
            }
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "a call stalled on its request body was never answered"
    );
}
