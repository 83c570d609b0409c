//! Client deadlines. A gRPC client states how long it will wait in the `grpc-timeout` request
//! header; once that time has passed, the call is answered DEADLINE_EXCEEDED and its work is
//! dropped, as the gRPC protocol asks of a server: a call its client gave up on stops holding the
//! server's resources. tonic enforces this only inside its own server (privately), and `serve`
//! runs the gRPC router on its own connection layer, so this layer does it on the router.
//!
//! Before the answer starts, the handler is dropped and a trailers-only DEADLINE_EXCEEDED is
//! sent; once a streamed answer is under way (`WatchBatch`), the stream is cut and ends with
//! DEADLINE_EXCEEDED trailers. A header that does not parse is ignored, as tonic does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Response};
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tower::{Layer, Service};

/// The request header holding the client's timeout.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Holds every call to the deadline its client stated.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub(super) struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let deadline = grpc_timeout(request.headers()).map(|timeout| Instant::now() + timeout);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return answer.await;
            };
            // A call whose deadline has passed on arrival is not started at all.
            if Instant::now() >= deadline {
                return Ok(exceeded().into_http());
            }
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(response)) => {
                    Ok(response.map(|body| Body::new(DeadlineBody::new(body, deadline))))
                }
                Err(_elapsed) => Ok(exceeded().into_http()),
            }
        })
    }
}

fn exceeded() -> Status {
    Status::deadline_exceeded("the deadline the client set (grpc-timeout) has passed")
}

/// The client's timeout, if its `grpc-timeout` header holds one: 1 to 8 digits and a unit,
/// `H`, `M`, `S`, `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// An answer's body held to the call's deadline: if it passes before the body ends, the
    /// rest is dropped and the body ends with DEADLINE_EXCEEDED trailers.
    struct DeadlineBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: Sleep,
        state: BodyState,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// The answer's own frames are passed on.
    Streaming,
    /// The answer ended by itself.
    Ended,
    /// The deadline passed: DEADLINE_EXCEEDED trailers were sent, nothing follows.
    Exceeded,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep_until(deadline),
            state: BodyState::Streaming,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        if *this.state != BodyState::Streaming {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.is_none() {
                *this.state = BodyState::Ended;
            }
            return Poll::Ready(frame);
        }
        ready!(this.deadline.poll(cx));
        *this.state = BodyState::Exceeded;
        let mut trailers = HeaderMap::new();
        if exceeded().add_header(&mut trailers).is_err() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            BodyState::Streaming => self.inner.is_end_stream(),
            BodyState::Ended | BodyState::Exceeded => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.state {
            BodyState::Streaming => http_body::SizeHint::default(),
            BodyState::Ended | BodyState::Exceeded => http_body::SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_str(value).unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn every_unit_of_the_grpc_timeout_header_is_read() {
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(timeout("0m"), Some(Duration::ZERO));
        assert_eq!(
            timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn a_malformed_grpc_timeout_header_is_ignored() {
        for value in [
            "",
            "S",
            "10",
            "10s",
            "123456789S",
            "+5S",
            "-5S",
            "1.5S",
            "5 S",
        ] {
            assert_eq!(timeout(value), None, "{value:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_body_still_streaming_at_the_deadline_ends_with_deadline_exceeded_trailers() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut body = std::pin::pin!(DeadlineBody::new(Body::from_stream(stream), deadline));
        sender.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
        let first = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let last = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        let trailers = last.into_trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(http_body_util::BodyExt::frame(&mut body).await.is_none());
        assert!(http_body::Body::is_end_stream(&*body));
        drop(sender);
    }

    #[tokio::test]
    async fn a_body_that_ends_before_the_deadline_is_passed_on_whole() {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let body = DeadlineBody::new(Body::from("whole"), deadline);
        let collected = http_body_util::BodyExt::collect(body).await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), "whole");
    }
}
