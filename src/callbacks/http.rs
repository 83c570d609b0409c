//! The HTTP(S) POST of a callback, over the rustls stack the AWS SDKs already compile in.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::destination::{self, CheckedResolver};

/// Header of the body's HMAC-SHA256: `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "X-Batch-Manager-Signature";
/// Header of the transition's delivery ID, the same on every attempt.
pub const DELIVERY_HEADER: &str = "X-Batch-Manager-Delivery";

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>, Full<Bytes>>;

/// Sends callbacks. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Sender {
    client: HttpsClient,
    timeout: Duration,
    allow_private: bool,
}

/// One POST, ready to send.
pub struct Post<'a> {
    /// The callback URL.
    pub url: &'a str,
    /// The exact bytes signed.
    pub body: Vec<u8>,
    /// The signature header's value.
    pub signature: String,
    /// The delivery ID.
    pub delivery_id: &'a str,
}

impl Sender {
    /// A sender whose every attempt (connect, TLS, answer) ends within `timeout`. Servers are
    /// checked against the system's root certificates, and their addresses against
    /// [`destination`] (private networks too when `allow_private`).
    pub fn new(timeout: Duration, allow_private: bool) -> Self {
        let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(error = %err, "no system root certificates: https callbacks will fail");
                let config = rustls_without_roots();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let mut resolved = HttpConnector::new_with_resolver(CheckedResolver { allow_private });
        resolved.enforce_http(false);
        let connector = https
            .https_or_http()
            .enable_http1()
            .wrap_connector(resolved);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            allow_private,
        }
    }

    /// POSTs once: `Ok` on a 2xx answer, else why not, in a few words for the batch's status.
    pub async fn post(&self, post: Post<'_>) -> Result<(), String> {
        let uri: hyper::Uri = post
            .url
            .parse()
            .map_err(|_| "the URL could not be used".to_owned())?;
        // An address in the URL is connected to without the resolver, so it is checked here.
        let literal = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<std::net::IpAddr>().ok());
        if literal.is_some_and(|ip| !destination::is_allowed(ip, self.allow_private)) {
            return Err(destination::REFUSED.to_owned());
        }
        let request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("batch-manager/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, post.signature)
            .header(DELIVERY_HEADER, post.delivery_id)
            .body(Full::new(Bytes::from(post.body)))
            .map_err(|_| "the URL could not be used".to_owned())?;
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err("timed out".to_owned()),
            Ok(Err(err)) => Err(describe(&err)),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("HTTP {}", response.status().as_u16())),
        }
    }
}

fn rustls_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A client error in a few words, without addresses or internal detail.
fn describe(err: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::PermissionDenied => destination::REFUSED.to_owned(),
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
                std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>()) =>
                {
                    "TLS handshake failed".to_owned()
                }
                _ if err.is_connect() => "could not connect".to_owned(),
                _ => "connection failed".to_owned(),
            };
        }
        source = cause.source();
    }
    if err.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    }
}
