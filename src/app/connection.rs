//! One connection's bookkeeping: whether a request is under way, since when it is idle, when
//! the head of its next request began to arrive; the byte stream and the response bodies that
//! keep that record; and the verdict of its timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body::Frame;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tower::ServiceExt;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.1: the seed endpoint.
    Http1,
    /// HTTP/2 with prior knowledge: gRPC.
    Http2,
}

/// The timeouts a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    /// With no request under way, the connection is closed after this long.
    pub idle: Duration,
    /// From the first byte of a request's head to its end (HTTP/1 only).
    pub header: Option<Duration>,
}

/// Why a connection is closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    Idle,
    SlowHeader,
}

impl CloseReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle timeout",
            Self::SlowHeader => "request head not received in time",
        }
    }
}

/// What the timeouts say about a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Keep it; look again at this instant.
    Keep {
        recheck_at: Instant,
    },
    Close(CloseReason),
}

#[derive(Debug)]
struct Activity {
    in_flight: usize,
    /// When the last request ended (or the connection was accepted).
    idle_since: Instant,
    /// When the first byte after the last request arrived.
    head_started: Option<Instant>,
}

/// One accepted connection, shared by its byte stream, its service and its supervisor.
#[derive(Debug)]
pub(super) struct ConnectionState {
    pub id: u64,
    activity: Mutex<Activity>,
    close_requested: AtomicBool,
    close: Notify,
    /// Signalled when a deadline moves earlier (a request head began to arrive).
    deadline_moved: Notify,
}

impl ConnectionState {
    pub(super) fn new(id: u64, now: Instant) -> Self {
        Self {
            id,
            // A client connects to send a request: the first head is due from the start, as
            // only a connection kept alive after an answer may wait for the idle timeout.
            activity: Mutex::new(Activity {
                in_flight: 0,
                idle_since: now,
                head_started: Some(now),
            }),
            close_requested: AtomicBool::new(false),
            close: Notify::new(),
            deadline_moved: Notify::new(),
        }
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // The lock guards plain values; a panic elsewhere cannot leave them half-written.
        self.activity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut activity = self.activity();
        activity.in_flight += 1;
        activity.head_started = None;
        RequestGuard(Arc::clone(self))
    }

    fn note_bytes_received(&self, now: Instant) {
        let mut activity = self.activity();
        if activity.in_flight == 0 && activity.head_started.is_none() {
            activity.head_started = Some(now);
            self.deadline_moved.notify_one();
        }
    }

    /// Resolves when a deadline moved earlier, so that the verdict must be asked again.
    pub(super) async fn deadline_moved(&self) {
        self.deadline_moved.notified().await;
    }

    /// Since when the connection has had no request under way; None while one is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        let activity = self.activity();
        (activity.in_flight == 0).then_some(activity.idle_since)
    }

    /// Asks the connection's supervisor to close it; false if that was asked before.
    pub(super) fn request_close(&self) -> bool {
        if self.close_requested.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.close.notify_one();
        true
    }

    pub(super) fn is_closing(&self) -> bool {
        self.close_requested.load(Ordering::Acquire)
    }

    /// Resolves once [`Self::request_close`] was called.
    pub(super) async fn close_requested(&self) {
        self.close.notified().await;
    }

    /// What the timeouts say at `now`.
    pub(super) fn verdict(&self, now: Instant, timeouts: &Timeouts) -> Verdict {
        let activity = self.activity();
        if activity.in_flight > 0 {
            // A request under way is bounded by its own body timeout and its handler.
            return Verdict::Keep {
                recheck_at: now + timeouts.idle,
            };
        }
        let idle_deadline = activity.idle_since + timeouts.idle;
        let header_deadline = timeouts
            .header
            .zip(activity.head_started)
            .map(|(limit, started)| started + limit);
        if header_deadline.is_some_and(|deadline| now >= deadline) {
            return Verdict::Close(CloseReason::SlowHeader);
        }
        if now >= idle_deadline {
            return Verdict::Close(CloseReason::Idle);
        }
        Verdict::Keep {
            recheck_at: header_deadline.map_or(idle_deadline, |h| h.min(idle_deadline)),
        }
    }
}

/// Marks a request under way until dropped, with the response body that carries it.
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<ConnectionState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut activity = self.0.activity();
        activity.in_flight = activity.in_flight.saturating_sub(1);
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`RequestGuard`]: a streamed response (a
    /// `WatchBatch`) keeps its connection busy until the stream ends.
    pub struct TrackedBody {
        #[pin]
        inner: Body,
        guard: RequestGuard,
    }
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that ends in an error once nothing arrived for its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {}", humantime::format_duration(*.0))]
pub(super) struct BodyStalled(Duration);

pin_project_lite::pin_project! {
    /// A request body held to a pace: each frame (the first included) must arrive within
    /// `limit` of the previous one.
    pub struct PacedBody {
        #[pin]
        inner: Incoming,
        #[pin]
        deadline: tokio::time::Sleep,
        limit: Duration,
    }
}

impl PacedBody {
    pub(super) fn new(inner: Incoming, limit: Duration) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep(limit),
            limit,
        }
    }
}

impl http_body::Body for PacedBody {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            let next = tokio::time::Instant::now() + *this.limit;
            this.deadline.as_mut().reset(next);
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        ready!(this.deadline.poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyStalled(*this.limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A router serving one connection, recording when its requests begin and end.
#[derive(Clone)]
pub(super) struct TrackedService {
    router: axum::Router,
    state: Arc<ConnectionState>,
    body_timeout: Option<Duration>,
}

impl TrackedService {
    /// `body_timeout`: when set, request bodies are [`PacedBody`]s held to it.
    pub(super) fn new(
        router: axum::Router,
        state: Arc<ConnectionState>,
        body_timeout: Option<Duration>,
    ) -> Self {
        Self {
            router,
            state,
            body_timeout,
        }
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for TrackedService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.state.begin_request();
        let router = self.router.clone();
        let request = match self.body_timeout {
            Some(limit) => request.map(|body| Body::new(PacedBody::new(body, limit))),
            None => request.map(Body::new),
        };
        Box::pin(async move {
            let response = router.oneshot(request).await?;
            Ok(response.map(|inner| TrackedBody { inner, guard }))
        })
    }
}

/// Rewrites a response head hyper wrote on its own (no handler ran) into one with a JSON body.
pub(super) type HeadRewriter = fn(&[u8]) -> Option<Vec<u8>>;

/// A replacement response being written in place of the bytes hyper handed over.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// How many bytes hyper is told were written once the replacement is out.
    claimed: usize,
}

pin_project_lite::pin_project! {
    /// The connection's byte stream: notes when bytes arrive, and for HTTP/1 gives the
    /// responses hyper writes by itself a JSON body (see [`HeadRewriter`]).
    pub struct TrackedIo<T> {
        #[pin]
        inner: T,
        state: Arc<ConnectionState>,
        rewrite: Option<HeadRewriter>,
        replacement: Option<Replacement>,
    }
}

impl<T> TrackedIo<T> {
    pub(super) fn new(
        inner: T,
        state: Arc<ConnectionState>,
        rewrite: Option<HeadRewriter>,
    ) -> Self {
        Self {
            inner,
            state,
            rewrite,
            replacement: None,
        }
    }
}

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.state.note_bytes_received(Instant::now());
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if this.replacement.is_none() {
            if let Some(bytes) = this.rewrite.and_then(|rewrite| rewrite(buf)) {
                *this.replacement = Some(Replacement {
                    bytes,
                    written: 0,
                    claimed: buf.len(),
                });
            }
        }
        let Some(replacement) = this.replacement.as_mut() else {
            return this.inner.poll_write(cx, buf);
        };
        while replacement.written < replacement.bytes.len() {
            let n = ready!(this
                .inner
                .as_mut()
                .poll_write(cx, &replacement.bytes[replacement.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            replacement.written += n;
        }
        let claimed = replacement.claimed;
        *this.replacement = None;
        Poll::Ready(Ok(claimed))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_some() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return self.poll_write(cx, first);
        }
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Without vectored writes hyper hands over each response head in one buffer, which is
        // what lets a head it wrote by itself be recognised.
        self.rewrite.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        idle: Duration::from_secs(60),
        header: Some(Duration::from_secs(10)),
    };

    #[test]
    fn a_new_connection_must_send_its_first_head_within_the_header_timeout() {
        let start = Instant::now();
        let state = ConnectionState::new(1, start);
        assert_eq!(
            state.verdict(start, &TIMEOUTS),
            Verdict::Keep {
                recheck_at: start + Duration::from_secs(10)
            }
        );
        assert_eq!(
            state.verdict(start + Duration::from_secs(10), &TIMEOUTS),
            Verdict::Close(CloseReason::SlowHeader)
        );
        let http2 = Timeouts {
            header: None,
            ..TIMEOUTS
        };
        assert_eq!(
            state.verdict(start + Duration::from_secs(10), &http2),
            Verdict::Keep {
                recheck_at: start + TIMEOUTS.idle
            }
        );
    }

    #[test]
    fn a_kept_alive_connection_waits_the_idle_timeout_then_the_header_timeout_from_its_next_byte() {
        let start = Instant::now();
        let state = Arc::new(ConnectionState::new(1, start));
        drop(state.begin_request());
        let idle_since = state.idle_since().expect("idle");
        assert_eq!(
            state.verdict(idle_since, &TIMEOUTS),
            Verdict::Keep {
                recheck_at: idle_since + TIMEOUTS.idle
            }
        );
        assert_eq!(
            state.verdict(idle_since + TIMEOUTS.idle, &TIMEOUTS),
            Verdict::Close(CloseReason::Idle)
        );
        let first_byte = idle_since + Duration::from_secs(30);
        state.note_bytes_received(first_byte);
        state.note_bytes_received(first_byte + Duration::from_secs(5));
        assert_eq!(
            state.verdict(first_byte, &TIMEOUTS),
            Verdict::Keep {
                recheck_at: first_byte + Duration::from_secs(10)
            }
        );
        assert_eq!(
            state.verdict(first_byte + Duration::from_secs(10), &TIMEOUTS),
            Verdict::Close(CloseReason::SlowHeader)
        );
    }

    #[test]
    fn a_request_under_way_is_never_idle_and_its_end_restarts_the_idle_clock() {
        let start = Instant::now();
        let state = Arc::new(ConnectionState::new(1, start));
        let guard = state.begin_request();
        let later = start + Duration::from_secs(600);
        assert!(matches!(
            state.verdict(later, &TIMEOUTS),
            Verdict::Keep { .. }
        ));
        assert_eq!(state.idle_since(), None);
        drop(guard);
        let idle_since = state.idle_since().expect("idle");
        assert!(idle_since >= start);
        assert!(matches!(
            state.verdict(idle_since, &TIMEOUTS),
            Verdict::Keep { .. }
        ));
    }

    #[test]
    fn closing_is_requested_once() {
        let state = ConnectionState::new(1, Instant::now());
        assert!(state.request_close());
        assert!(!state.request_close());
        assert!(state.is_closing());
    }
}
