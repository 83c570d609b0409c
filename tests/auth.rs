//! Access control of `serve`, on the real binary: every gRPC call and HTTP route without a
//! token, with a wrong one, with a read-only one and with a good one; the refusal to serve an
//! open server beyond loopback; TLS end to end with a certificate made here, through the CLI
//! and over HTTP.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batch_manager::grpc::pb::FILE_DESCRIPTOR_SET;
use common::process::{run_cli, Launch, ServerProcess};
use common::*;
use prost::Message;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Code;

const WRITER: &str = "w-4f1c9a7e2b6d8053a1";
const READER: &str = "r-9d2e7b41c6a05f3e88";
const WRONG: &str = "x-0000000000000000000";

/// The credentials a call is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Missing,
    Wrong,
    ReadOnly,
    ReadWrite,
}

const CREDENTIALS: [Credential; 4] = [
    Credential::Missing,
    Credential::Wrong,
    Credential::ReadOnly,
    Credential::ReadWrite,
];

impl Credential {
    fn header(self) -> Option<String> {
        match self {
            Self::Missing => None,
            Self::Wrong => Some(format!("Bearer {WRONG}")),
            Self::ReadOnly => Some(format!("Bearer {READER}")),
            Self::ReadWrite => Some(format!("Bearer {WRITER}")),
        }
    }
}

fn token_file(directory: &Path) -> PathBuf {
    let path = directory.join("tokens");
    std::fs::write(
        &path,
        format!("# who may call\n{WRITER} deploy-bot\nro:{READER} wallboard\n"),
    )
    .unwrap();
    path
}

fn start_guarded(directory: &Path, extra: &[&str]) -> ServerProcess {
    let tokens = token_file(directory);
    let mut args = vec!["--auth-token-file", tokens.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServerProcess::start_with(
        &directory.join("auth.db"),
        Launch {
            args: &args,
            ..Launch::default()
        },
    )
}

/// Every method of every service the server offers, as `/package.Service/Method`, and whether
/// it streams its answer.
fn every_grpc_method() -> Vec<(String, bool)> {
    let mut methods = Vec::new();
    for set in [FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let set = prost_types::FileDescriptorSet::decode(set).unwrap();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push((
                        format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                        method.server_streaming(),
                    ));
                }
            }
        }
    }
    methods.push((
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
        true,
    ));
    methods
}

/// Calls `path` with an empty message (every field unset) and returns the call's code.
async fn call(channel: &Channel, path: &str, streams: bool, credential: Credential) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(());
    if let Some(header) = credential.header() {
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
    }
    request.set_timeout(Duration::from_secs(10));
    let path = PathAndQuery::try_from(path.to_owned()).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let outcome = if streams {
        match grpc.server_streaming(request, path, codec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                // An empty message asks for nothing that exists: the stream ends or fails at
                // once, never waits.
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Ok(()),
                }
            }
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    match outcome {
        Ok(()) => Code::Ok,
        Err(status) => {
            if matches!(status.code(), Code::Unauthenticated) {
                assert!(
                    !status.message().contains("wrong") && !status.message().contains("missing"),
                    "a refusal says nothing of what was wrong: {}",
                    status.message()
                );
            }
            status.code()
        }
    }
}

fn expected_grpc(path: &str, credential: Credential) -> Option<Code> {
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    let reads = path.starts_with("/grpc.reflection.")
        || ["Get", "List", "Watch", "Export"]
            .iter()
            .any(|verb| path.starts_with(&format!("/batchmanager.v1.BatchManager/{verb}")));
    match credential {
        Credential::Missing | Credential::Wrong => Some(Code::Unauthenticated),
        Credential::ReadOnly if !reads => Some(Code::PermissionDenied),
        Credential::ReadOnly | Credential::ReadWrite => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_call_admits_exactly_the_callers_its_token_allows() {
    let directory = tempfile::tempdir().unwrap();
    let server = start_guarded(directory.path(), &[]);
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let methods = every_grpc_method();
    assert!(methods.len() >= 16, "{methods:?}");
    let mut table = Vec::new();
    for (path, streams) in &methods {
        for credential in CREDENTIALS {
            let code = call(&channel, path, *streams, credential).await;
            match expected_grpc(path, credential) {
                Some(expected) => assert_eq!(code, expected, "{path} with {credential:?}"),
                None => assert!(
                    !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                    "{path} with {credential:?} was refused: {code:?}"
                ),
            }
            table.push(format!("{path} {credential:?} {code:?}"));
        }
    }
    assert_eq!(table.len(), methods.len() * CREDENTIALS.len());
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.http_addr))
        .header("authorization", format!("Bearer {READER}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for code in ["UNAUTHENTICATED", "PERMISSION_DENIED"] {
        assert!(
            metrics.contains(&format!("method=\"CancelBatch\",code=\"{code}\"")),
            "refusals are counted: {metrics}"
        );
    }

    let log = server.log().join("\n");
    assert!(
        log.contains("deploy-bot") && log.contains("SubmitBatch"),
        "mutating calls are logged with the token's name:\n{log}"
    );
    for token in [WRITER, READER, WRONG] {
        assert!(!log.contains(token), "a token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_cannot_submit_and_its_refusal_writes_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let server = start_guarded(directory.path(), &[]);
    let url = format!("http://{}", server.grpc_addr);
    let items = directory.path().join("items.txt");
    std::fs::write(&items, "a\nb\nc\n").unwrap();
    let items = items.to_str().unwrap();
    let submit = ["submit", "--batch-id", "ro-1", "--items-file", items];

    let (ok, _, stderr) = run_cli(&url, &submit);
    assert!(!ok);
    assert!(stderr.contains("requires a valid bearer token"), "{stderr}");
    let (ok, _, stderr) = run_cli(&url, &[&submit[..], &["--token", READER]].concat());
    assert!(!ok);
    assert!(stderr.contains("read-only"), "{stderr}");
    let (ok, stdout, stderr) = run_cli(&url, &["batches", "--token", READER]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("ro-1"), "{stdout}");

    let (ok, _, stderr) = run_cli(&url, &[&submit[..], &["--token", WRITER]].concat());
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run_cli(&url, &["status", "ro-1", "--token", READER]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ro-1"), "{stdout}");
}

/// What each HTTP route answers for each credential.
fn expected_http(method: &str, path: &str, credential: Credential) -> Option<u16> {
    if path == "/healthz" {
        return Some(200);
    }
    match credential {
        Credential::Missing | Credential::Wrong => Some(401),
        Credential::ReadOnly if method != "GET" => Some(403),
        Credential::ReadOnly | Credential::ReadWrite => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_route_admits_exactly_the_callers_its_token_allows() {
    let directory = tempfile::tempdir().unwrap();
    let server = start_guarded(directory.path(), &[]);
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();
    let seed = seed_body();
    let routes: Vec<(&str, &str, Option<serde_json::Value>)> = vec![
        ("GET", "/healthz", None),
        ("POST", "/stateMachineInit", Some(seed.clone())),
        (
            "POST",
            "/runrequests",
            Some(serde_json::json!({ "clientName": "c", "processName": "p" })),
        ),
        ("GET", "/metrics", None),
        ("GET", "/", None),
        ("GET", "/batches/any-batch", None),
        ("GET", "/batches/any-batch/events", None),
        (
            "POST",
            "/batches/any-batch/cancel",
            Some(serde_json::json!({})),
        ),
        ("GET", "/no-such-route", None),
    ];
    for (method, path, body) in &routes {
        for credential in CREDENTIALS {
            let mut request = match *method {
                "GET" => http.get(format!("{base}{path}")),
                _ => http.post(format!("{base}{path}")),
            };
            if let Some(header) = credential.header() {
                request = request.header("authorization", header);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().get("www-authenticate").cloned();
            let text = response.text().await.unwrap();
            match expected_http(method, path, credential) {
                Some(expected) => {
                    assert_eq!(
                        status, expected,
                        "{method} {path} with {credential:?}: {text}"
                    )
                }
                None => assert!(
                    status != 401 && status != 403,
                    "{method} {path} with {credential:?} was refused: {status} {text}"
                ),
            }
            if status == 401 {
                assert_eq!(challenge.unwrap(), "Bearer");
                assert!(text.contains("requires a valid bearer token"), "{text}");
            }
        }
    }
    let log = server.log().join("\n");
    assert!(
        log.contains("wallboard") || log.contains("deploy-bot"),
        "{log}"
    );
    assert!(!log.contains(WRITER) && !log.contains(READER));
}

fn serve_outcome(args: &[&str]) -> (Option<bool>, String) {
    let directory = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_batch-manager"))
        .arg("serve")
        .args(["--db", directory.path().join("x.db").to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("serving") && line.contains("grpc_addr") {
                break;
            }
        }
        seen
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if reader.is_finished() || std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    (exited, reader.join().unwrap())
}

#[test]
fn an_open_server_refuses_to_listen_beyond_loopback_unless_told_to() {
    let (exited, log) = serve_outcome(&["--grpc-addr", "0.0.0.0:0", "--http-addr", "127.0.0.1:0"]);
    assert_eq!(exited, Some(false), "{log}");
    assert!(log.contains("--auth-token-file"), "{log}");
    assert!(log.contains("--allow-unauthenticated"), "{log}");
    assert!(log.contains("gRPC 0.0.0.0:0"), "{log}");

    let (exited, log) = serve_outcome(&[
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "0.0.0.0:0",
        "--allow-unauthenticated",
    ]);
    assert_eq!(exited, None, "it serves: {log}");
    assert!(log.contains("without authentication"), "{log}");

    let directory = tempfile::tempdir().unwrap();
    let tokens = token_file(directory.path());
    let (exited, log) = serve_outcome(&[
        "--grpc-addr",
        "0.0.0.0:0",
        "--http-addr",
        "127.0.0.1:0",
        "--auth-token-file",
        tokens.to_str().unwrap(),
    ]);
    assert_eq!(exited, None, "it serves: {log}");
    assert!(!log.contains("without authentication"), "{log}");

    let short = directory.path().join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    let (exited, log) = serve_outcome(&["--auth-token-file", short.to_str().unwrap()]);
    assert_eq!(exited, Some(false), "{log}");
    assert!(
        log.contains("line 1") && log.contains("at least 16"),
        "{log}"
    );
    assert!(!log.contains("tooshort"), "{log}");
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
fn self_signed(directory: &Path) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let cert = directory.join("cert.pem");
    let key = directory.join("key.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_cli_and_http_with_a_self_signed_certificate() {
    let directory = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(directory.path());
    let server = start_guarded(
        directory.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let cert = cert.to_str().unwrap();
    let https = format!("https://localhost:{}", server.grpc_addr.port());
    let items = directory.path().join("items.txt");
    let ids = seed_item_ids();
    std::fs::write(&items, ids.join("\n")).unwrap();
    let (ok, stdout, stderr) = run_cli(
        &https,
        &[
            "submit",
            "--batch-id",
            "tls-1",
            "--items-file",
            items.to_str().unwrap(),
            "--token",
            WRITER,
            "--ca-cert",
            cert,
            "--watch",
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = run_cli(
        &format!("https://127.0.0.1:{}", server.grpc_addr.port()),
        &[
            "status",
            "tls-1",
            "--token",
            READER,
            "--ca-cert",
            cert,
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(status["succeededItems"], ids.len(), "{status}");

    let (ok, _, stderr) = run_cli(&https, &["batches", "--token", READER]);
    assert!(!ok, "an unknown issuer is not trusted");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    let (ok, _, _) = run_cli(
        &format!("http://{}", server.grpc_addr),
        &["batches", "--token", READER],
    );
    assert!(!ok, "plain text is not served on a TLS listener");

    let answer = https_post(server.http_addr.port(), &cert_pem, &seed_body().to_string()).await;
    assert_eq!(answer.0, 200, "{}", answer.1);
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.http_addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// POSTs the seed body over HTTPS to `localhost:port`, trusting only `cert_pem`.
async fn https_post(port: u16, cert_pem: &str, body: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<axum::body::Bytes>>(connector);
    let request = hyper::Request::post(format!("https://localhost:{port}/stateMachineInit"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {WRITER}"))
        .body(Full::new(axum::body::Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.expect("HTTPS answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Whether `token` is in force: an unknown route answers 404 to its holder, 401 to others.
async fn admitted(http_addr: std::net::SocketAddr, token: &str) -> bool {
    let status = reqwest::Client::new()
        .get(format!("http://{http_addr}/no-such-route"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(status == 401 || status == 404, "{status}");
    status == 404
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_on_sighup_and_a_broken_file_keeps_the_tokens_in_force() {
    let directory = tempfile::tempdir().unwrap();
    let server = start_guarded(directory.path(), &[]);
    let rotated = "n-7e3a9c0d5b1f2468ab";
    assert!(admitted(server.http_addr, WRITER).await);
    assert!(!admitted(server.http_addr, rotated).await);

    std::fs::write(
        directory.path().join("tokens"),
        format!("{rotated} rotated\n"),
    )
    .unwrap();
    server.signal_hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !admitted(server.http_addr, rotated).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token is never admitted: {:?}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!admitted(server.http_addr, WRITER).await);

    std::fs::write(directory.path().join("tokens"), "short\n").unwrap();
    server.signal_hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server
        .log()
        .iter()
        .any(|line| line.contains("tokens in force are kept"))
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted(server.http_addr, rotated).await);
}
