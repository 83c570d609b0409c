//! A listener's accept loop and its connections: at most `max_connections` open at once; at the
//! cap, or when the process runs out of file descriptors, the connection idle the longest is
//! closed to make room (as nginx reuses its idle keep-alive connections), so that a crowd of idle
//! or slow clients cannot lock a new one out; accept errors back off and are logged at most once
//! per interval; every connection is held to its timeouts and closed within the shutdown grace.

use std::collections::HashMap;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::http::framing::{MAX_HEADER_FIELDS, MAX_HEAD_BYTES};

use super::connection::{
    ConnectionState, HeadRewriter, Protocol, Timeouts, TrackedIo, TrackedService, Verdict,
};
use super::tls::Tls;

/// How long a connection closed for being idle (or to make room) may take to say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Shortest interval between two warnings of the same kind from one listener.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed accept, doubling up to the maximum while failures go on.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often a listener at its cap with every connection busy looks for one gone idle.
const FULL_RECHECK: Duration = Duration::from_millis(100);
/// Longest a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings of a gRPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Http2Settings {
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_connection_age: Option<Duration>,
}

/// How one listener serves.
#[derive(Debug, Clone)]
pub(super) struct ListenerConfig {
    /// For the logs: "HTTP" or "gRPC".
    pub name: &'static str,
    pub protocol: Protocol,
    pub max_connections: usize,
    pub timeouts: Timeouts,
    /// When set, a request body that sends nothing for this long fails.
    pub request_body_timeout: Option<Duration>,
    pub http2: Option<Http2Settings>,
    /// For HTTP/1: gives the responses hyper writes by itself a JSON body.
    pub rewrite_head: Option<HeadRewriter>,
    /// When set, connections speak TLS.
    pub tls: Option<Tls>,
}

/// When shutdown began, the instant by which every connection must be closed.
pub(super) type StopSignal = watch::Receiver<Option<Instant>>;

async fn stop_deadline(stop: &mut StopSignal) -> Instant {
    loop {
        if let Some(deadline) = *stop.borrow_and_update() {
            return deadline;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The open connections of one listener.
#[derive(Default)]
struct Registry {
    connections: Mutex<HashMap<u64, Arc<ConnectionState>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnectionState>>> {
        // The map holds no invariant a panic could break halfway.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState::new(id, Instant::now()));
        self.connections().insert(id, Arc::clone(&state));
        Registration {
            registry: Arc::clone(self),
            state,
        }
    }

    fn any_closing(&self) -> bool {
        self.connections().values().any(|state| state.is_closing())
    }

    /// Asks the connection idle the longest to close; false when every connection is busy.
    fn close_longest_idle(&self) -> bool {
        let connections = self.connections();
        let longest = connections
            .values()
            .filter(|state| !state.is_closing())
            .filter_map(|state| Some((state.idle_since()?, state)))
            .min_by_key(|(idle_since, _)| *idle_since);
        match longest {
            Some((_, state)) => state.request_close(),
            None => false,
        }
    }
}

/// A connection's entry in the registry, removed when dropped.
struct Registration {
    registry: Arc<Registry>,
    state: Arc<ConnectionState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.connections().remove(&self.state.id);
    }
}

/// Logs a recurring condition at most once per [`WARNING_INTERVAL`], counting the rest.
struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// Some(occurrences since the last warning, this one included) when it is time to warn.
    fn occurred(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed) + 1)
    }
}

/// Errors of one connection that `accept` reports; the next accept is unaffected.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Out of file descriptors or kernel memory: closing a connection helps.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The accept loop's state between two accepts.
struct Acceptor {
    config: Arc<ListenerConfig>,
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
    backoff: Duration,
    accept_failures: RateLimitedWarning,
    at_capacity: RateLimitedWarning,
}

impl Acceptor {
    fn new(config: ListenerConfig) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        Self {
            config: Arc::new(config),
            registry: Arc::default(),
            permits,
            backoff: ACCEPT_BACKOFF_MIN,
            accept_failures: RateLimitedWarning::new(),
            at_capacity: RateLimitedWarning::new(),
        }
    }

    /// Logs, frees a descriptor if that is what ran out, and waits before the next accept.
    async fn accept_failed(&mut self, err: io::Error) {
        let shed = is_resource_exhaustion(&err) && self.registry.close_longest_idle();
        if let Some(failures) = self.accept_failures.occurred(Instant::now()) {
            tracing::warn!(
                listener = self.config.name,
                error = %err,
                failures,
                closed_idle_connection = shed,
                retry_in_ms = self.backoff.as_millis() as u64,
                "accepting connections fails"
            );
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
    }

    /// A connection slot: at once if one is free, else after closing the longest-idle
    /// connection or, when all are busy, once one ends. None if shutdown began meanwhile.
    async fn slot(&mut self, stop: &mut StopSignal) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Some(permit);
        }
        if let Some(occurrences) = self.at_capacity.occurred(Instant::now()) {
            tracing::warn!(
                listener = self.config.name,
                max_connections = self.config.max_connections,
                occurrences,
                "connection limit reached; closing the connections idle the longest to make room"
            );
        }
        loop {
            // One connection closing at a time frees a slot; closing more would shed clients
            // that could have stayed.
            if !self.registry.any_closing() {
                self.registry.close_longest_idle();
            }
            tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => return permit.ok(),
                _ = tokio::time::sleep(FULL_RECHECK) => {}
                _ = stop_deadline(stop) => return None,
            }
        }
    }
}

/// Serves `router` on `listener` until the stop signal; returns once every connection is closed.
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    config: ListenerConfig,
    mut stop: StopSignal,
) {
    let mut acceptor = Acceptor::new(config);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop_deadline(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) if is_per_connection_error(&err) => continue,
            Err(err) => {
                acceptor.accept_failed(err).await;
                continue;
            }
        };
        acceptor.backoff = ACCEPT_BACKOFF_MIN;
        let Some(permit) = acceptor.slot(&mut stop).await else {
            break;
        };
        let registration = acceptor.registry.register();
        connections.spawn(serve_connection(
            stream,
            registration,
            permit,
            router.clone(),
            Arc::clone(&acceptor.config),
            stop.clone(),
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    registration: Registration,
    permit: OwnedSemaphorePermit,
    router: axum::Router,
    config: Arc<ListenerConfig>,
    mut stop: StopSignal,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = config.tls.clone() else {
        return serve_stream(stream, registration, permit, router, config, stop).await;
    };
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)) => handshake,
        _ = stop_deadline(&mut stop) => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_stream(stream, registration, permit, router, config, stop).await,
        Ok(Err(err)) => {
            tracing::debug!(listener = config.name, error = %err, "TLS handshake failed");
        }
        Err(_) => tracing::debug!(listener = config.name, "TLS handshake timed out"),
    }
}

async fn serve_stream<S>(
    stream: S,
    registration: Registration,
    _permit: OwnedSemaphorePermit,
    router: axum::Router,
    config: Arc<ListenerConfig>,
    stop: StopSignal,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::clone(&registration.state);
    let io = TokioIo::new(TrackedIo::new(
        stream,
        Arc::clone(&state),
        config.rewrite_head,
    ));
    let service = TrackedService::new(router, Arc::clone(&state), config.request_body_timeout);
    match (config.protocol, config.http2) {
        (Protocol::Http2, Some(http2)) => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(http2.keepalive_interval)
                .keep_alive_timeout(http2.keepalive_timeout);
            let connection = builder.serve_connection(io, service);
            supervise(connection, &state, &config, stop).await;
        }
        _ => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .max_headers(MAX_HEADER_FIELDS)
                .max_header_size(MAX_HEAD_BYTES)
                .writev(false);
            let connection = builder.serve_connection(io, service);
            supervise(connection, &state, &config, stop).await;
        }
    }
}

/// Drives a connection to its end, closing it when its timeouts say so, when the listener
/// needs the room, or on shutdown; a connection that does not close gracefully in time is
/// dropped.
async fn supervise<C>(
    connection: C,
    state: &ConnectionState,
    config: &ListenerConfig,
    mut stop: StopSignal,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let age_limit = config
        .http2
        .and_then(|http2| http2.max_connection_age)
        .map(|age| Instant::now() + age);
    let mut aged = false;
    let mut closing_by: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        let wake = match closing_by {
            Some(deadline) => deadline,
            None => match state.verdict(now, &config.timeouts) {
                Verdict::Close(reason) => {
                    tracing::debug!(
                        listener = config.name,
                        reason = reason.as_str(),
                        "closing connection"
                    );
                    connection.as_mut().graceful_shutdown();
                    closing_by = Some(now + CLOSE_GRACE);
                    continue;
                }
                Verdict::Keep { recheck_at } => match age_limit.filter(|_| !aged) {
                    Some(limit) => limit.min(recheck_at),
                    None => recheck_at,
                },
            },
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(listener = config.name, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if closing_by.is_some_and(|deadline| now >= deadline) {
                    return;
                }
                if !aged && age_limit.is_some_and(|limit| now >= limit) {
                    aged = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = state.deadline_moved(), if closing_by.is_none() => {}
            _ = state.close_requested(), if closing_by.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing_by = Some(Instant::now() + CLOSE_GRACE);
            }
            deadline = stop_deadline(&mut stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
                closing_by = Some(closing_by.map_or(deadline, |by| by.min(deadline)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recurring_warning_is_logged_once_per_interval_with_its_count() {
        let mut warning = RateLimitedWarning::new();
        let start = Instant::now();
        assert_eq!(warning.occurred(start), Some(1));
        for n in 1..=5 {
            assert_eq!(warning.occurred(start + Duration::from_millis(n)), None);
        }
        assert_eq!(warning.occurred(start + WARNING_INTERVAL), Some(6));
    }

    #[test]
    fn the_connection_idle_the_longest_is_the_one_closed() {
        let registry = Arc::new(Registry::default());
        let first = registry.register();
        std::thread::sleep(Duration::from_millis(2));
        let second = registry.register();
        assert!(registry.close_longest_idle());
        assert!(first.state.is_closing());
        assert!(!second.state.is_closing());
        assert!(registry.close_longest_idle());
        assert!(second.state.is_closing());
        assert!(!registry.close_longest_idle(), "nothing left to close");
    }

    #[test]
    fn running_out_of_descriptors_is_told_apart_from_a_failed_handshake() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_resource_exhaustion(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(is_per_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
