//! Who may call `serve`: with a token file, every gRPC call (health checks excepted) and every
//! HTTP route (`/healthz` excepted) needs `authorization: Bearer <token>`; a read-only token
//! may only read. Without one the server is open, which [`check_exposure`] allows on loopback
//! addresses only, unless the operator says otherwise.
//!
//! A refusal never says whether the token was missing, malformed or unknown, and the token
//! itself never reaches a log: calls that change something are logged with the token's name.

mod grpc_gate;
mod http_gate;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::{header, HeaderMap};

pub(crate) use self::grpc_gate::require_grpc_token;
pub(crate) use self::http_gate::{require_http_token, HEALTH_ROUTE};
pub use self::tokens::{Access, Caller, TokenFileError, Tokens, MIN_TOKEN_CHARS, READ_ONLY_MARKER};

/// The one message of every refusal for want of a good token.
pub(crate) const UNAUTHENTICATED_MESSAGE: &str =
    "this server requires a valid bearer token (authorization: Bearer <token>)";

/// Which callers a server admits.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    tokens: Option<Arc<TokenSource>>,
}

/// The tokens in force, and the file they were read from (to read again on SIGHUP).
#[derive(Debug)]
struct TokenSource {
    file: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

/// What the gate decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No token file: everyone is admitted, anonymously.
    Open,
    /// A known token's holder.
    Caller(Caller),
    /// No usable token.
    Refused,
}

impl AccessControl {
    /// Admits everyone: the default, for a server on loopback.
    pub fn open() -> Self {
        Self::default()
    }

    /// Admits only holders of the tokens in `file`, which [`Self::reload`] reads again.
    pub fn from_file(file: &Path) -> Result<Self, TokenFileError> {
        let tokens = Tokens::read(file)?;
        Ok(Self {
            tokens: Some(Arc::new(TokenSource {
                file: file.to_owned(),
                current: RwLock::new(Arc::new(tokens)),
            })),
        })
    }

    /// Reads the token file again and puts its tokens in force, returning how many there are
    /// (none for an open server); a file that cannot be used leaves the tokens in force as
    /// they were.
    pub fn reload(&self) -> Result<usize, TokenFileError> {
        let Some(source) = &self.tokens else {
            return Ok(0);
        };
        let tokens = Tokens::read(&source.file)?;
        let count = tokens.len();
        *source
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        Ok(count)
    }

    /// Whether calls need a token.
    pub fn requires_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Reads the bearer token of `headers` and says who sent it.
    pub(crate) fn admit(&self, headers: &HeaderMap) -> Admission {
        let Some(source) = &self.tokens else {
            return Admission::Open;
        };
        let tokens = Arc::clone(
            &source
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        match bearer_token(headers).and_then(|token| tokens.verify(token)) {
            Some(caller) => Admission::Caller(caller.clone()),
            None => Admission::Refused,
        }
    }
}

/// The token of the request's one `authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.as_bytes();
    let (scheme, token) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !token.starts_with(b" ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Refuses to serve an open server on an address other machines can reach, unless
/// `allow_unauthenticated`; then warns.
pub fn check_exposure(
    access: &AccessControl,
    addresses: &[(&str, SocketAddr)],
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    if access.requires_tokens() {
        return Ok(());
    }
    let exposed: Vec<String> = addresses
        .iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(name, addr)| format!("{name} {addr}"))
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    let exposed = exposed.join(", ");
    if allow_unauthenticated {
        tracing::warn!(
            addresses = %exposed,
            "serving without authentication beyond loopback (--allow-unauthenticated): anyone who \
             can reach these addresses can read, submit and cancel batches"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve without authentication on {exposed}, which other machines can \
         reach: give --auth-token-file FILE (or BATCH_MANAGER_AUTH_TOKEN_FILE), or pass \
         --allow-unauthenticated to serve anyone who can connect"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_nothing_else_is() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers(&["Basic abc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearerabc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer "])), None);
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer a"])), None);
        assert_eq!(bearer_token(&headers(&[])), None);
    }

    #[test]
    fn an_open_server_is_refused_beyond_loopback_unless_allowed() {
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let open = AccessControl::open();
        check_exposure(
            &open,
            &[("HTTP", loopback), ("gRPC", "[::1]:1".parse().unwrap())],
            false,
        )
        .unwrap();
        let refusal = check_exposure(&open, &[("HTTP", loopback), ("gRPC", everywhere)], false)
            .unwrap_err()
            .to_string();
        assert!(refusal.contains("--auth-token-file"), "{refusal}");
        assert!(refusal.contains("gRPC 0.0.0.0:50051"), "{refusal}");
        check_exposure(&open, &[("gRPC", everywhere)], true).unwrap();
    }
}
