//! The HTTP endpoint's edges over real sockets: every error answer, the framework's and hyper's
//! included, is `{"message": ...}` JSON with the right status; requests a browser could be made
//! to send from another site are refused and write nothing; the plain curl-style request works.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes, reads the answer until the server closes the connection, and returns its
/// status, lowercase head and body.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything (an oversized head).
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received));
    let _ = read.await.expect("the server answers and closes");
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete answer: {text:?}"));
    let status = head[9..12].parse().expect("status code");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

fn json_post(host: SocketAddr, body: &str) -> Vec<u8> {
    request(
        "POST",
        "/stateMachineInit",
        &[
            ("Host", &host.to_string()),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

#[tokio::test]
async fn every_framework_error_is_answered_with_a_json_message_and_the_right_status() {
    let test = spawn_app().await;
    let addr = test.app.http_addr;
    let authority = addr.to_string();
    let host = ("Host", authority.as_str());
    let json = ("Content-Type", "application/json");
    let huge_field = "a".repeat(40 * 1024);
    let many_fields: String = (0..150).map(|i| format!("X-Field-{i}: 1\r\n")).collect();
    let seed = seed_body().to_string();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown path", request("GET", "/nowhere", &[host], ""), 404),
        ("unknown path, POST", request("POST", "/nowhere", &[host, json], "{}"), 404),
        ("wrong method", request("GET", "/stateMachineInit", &[host], ""), 405),
        ("wrong method, DELETE", request("DELETE", "/stateMachineInit", &[host], ""), 405),
        ("preflight", request("OPTIONS", "/stateMachineInit", &[host], ""), 405),
        (
            "declared body too large",
            format!("POST /stateMachineInit HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n").into_bytes(),
            413,
        ),
        (
            "header field too large",
            request("GET", "/stateMachineInit", &[host, ("X-Huge", &huge_field)], ""),
            431,
        ),
        (
            "too many header fields",
            format!("GET /stateMachineInit HTTP/1.1\r\nHost: {addr}\r\n{many_fields}\r\n").into_bytes(),
            431,
        ),
        (
            "malformed header line",
            format!("GET /stateMachineInit HTTP/1.1\r\nHost: {addr}\r\nNo colon here\r\n\r\n").into_bytes(),
            400,
        ),
        ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n".to_vec(), 400),
        (
            "malformed Content-Length",
            format!("POST /stateMachineInit HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: ten\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "malformed chunked body",
            format!("POST /stateMachineInit HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nnot-a-size\r\n").into_bytes(),
            400,
        ),
        ("body is not JSON", json_post(addr, "{\"batchId\": "), 400),
        ("body is JSON of the wrong shape", json_post(addr, "[1, 2]"), 400),
        ("body is empty", json_post(addr, ""), 400),
        (
            "not JSON content",
            request("POST", "/stateMachineInit", &[host, ("Content-Type", "text/plain")], &seed),
            415,
        ),
    ];
    for (case, bytes, expected) in cases {
        let (status, head, body) = exchange(addr, &bytes).await;
        assert_eq!(status, expected, "{case}: {head}\n{body}");
        assert!(
            head.contains("content-type: application/json"),
            "{case}: {head}"
        );
        let body: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{case}: body is not JSON ({err}): {body:?}"));
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {body}"
        );
        if expected == 405 {
            assert!(head.contains("\r\nallow: post"), "{case}: {head}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("/stateMachineInit is not allowed; use POST")),
                "{case}: {body}"
            );
        }
    }
    let (status, head, body) = exchange(addr, &request("DELETE", "/healthz", &[host], "")).await;
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("\r\nallow: get,head"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["message"],
        "DELETE /healthz is not allowed; use GET,HEAD"
    );
    assert!(
        !database_fingerprint(&test.db).contains("4b4dc5c6"),
        "nothing was written"
    );
}

/// A refused request: what it is, its headers, the status and the field its message names.
type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

async fn post_seed_with(test: &TestApp, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(test.http_url("/stateMachineInit"))
        .body(seed_body().to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn requests_a_browser_could_send_from_another_site_are_refused_and_write_nothing() {
    let test = spawn_app().await;
    let json = ("content-type", "application/json");
    let cases: Vec<Refusal> = vec![
        (
            "a form-style text/plain body",
            vec![("content-type", "text/plain")],
            415,
            "Content-Type:",
        ),
        (
            "a url-encoded form",
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
            "Content-Type:",
        ),
        ("no content type", vec![], 415, "Content-Type:"),
        (
            "a DNS-rebound host name",
            vec![json, ("host", "attacker.example:8080")],
            403,
            "Host:",
        ),
        (
            "a foreign origin",
            vec![json, ("origin", "https://attacker.example")],
            403,
            "Origin:",
        ),
        (
            "an opaque origin",
            vec![json, ("origin", "null")],
            403,
            "Origin:",
        ),
        (
            "a lookalike origin",
            vec![json, ("origin", "http://127.0.0.1.attacker.example")],
            403,
            "Origin:",
        ),
        (
            "a cross-site fetch",
            vec![json, ("sec-fetch-site", "cross-site")],
            403,
            "Sec-Fetch-Site:",
        ),
    ];
    for (case, headers, expected, field) in cases {
        let (status, reply) = post_seed_with(&test, &headers).await;
        assert_eq!(status, expected, "{case}: {reply}");
        let message = reply["message"].as_str().expect("message");
        assert!(message.starts_with(field), "{case}: {message}");
    }
    assert!(
        !database_fingerprint(&test.db).contains("4b4dc5c6"),
        "no refused request wrote anything"
    );
}

#[tokio::test]
async fn the_curl_style_request_and_same_origin_requests_are_served() {
    let test = spawn_app().await;
    let port = test.app.http_addr.port();
    let localhost = format!("localhost:{port}");
    let ipv6 = format!("[::1]:{port}");
    let same_origin = format!("http://127.0.0.1:{port}");
    let charset = "application/json; charset=utf-8";
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("content-type", "application/json"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
        ],
        vec![("content-type", charset), ("host", &localhost)],
        vec![("content-type", "Application/JSON"), ("host", &ipv6)],
        vec![
            ("content-type", "application/json"),
            ("origin", &same_origin),
            ("sec-fetch-site", "same-origin"),
        ],
    ];
    for headers in cases {
        let (status, reply) = post_seed_with(&test, &headers).await;
        assert_eq!(status, 200, "{headers:?}: {reply}");
        assert_eq!(reply["batchId"], "4b4dc5c6-fbd9-493d-98ff-c459c378f45d");
    }
}
