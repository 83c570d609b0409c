//! Counts gRPC calls by service, method and status code. The code is read where the answer
//! carries it: the `grpc-status` header of a trailers-only answer (tonic's errors before any
//! message), or else the trailers that end the body (unary answers and streams alike). A body
//! dropped before its trailers (the client went away) counts as CANCELLED.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Response};
use http_body::Frame;
use tonic::Code;
use tower::{Layer, Service};

const GRPC_STATUS: &str = "grpc-status";

/// Counts every call into `batch_manager_grpc_requests_total`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request> for GrpcMetrics<S>
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
        let call = CallName::of(request.uri().path());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let Ok(response) = answer.await;
            if let Some(code) = status_code(response.headers()) {
                call.record(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// The service and method a call's path names.
#[derive(Debug)]
struct CallName {
    service: String,
    method: String,
}

impl CallName {
    fn of(path: &str) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
        }
    }

    fn record(self, code: Code) {
        // Paths that name no method served here are counted together, so that clients cannot
        // grow the metric's series without bound.
        let (service, method) = if code == Code::Unimplemented {
            ("unknown", "unknown")
        } else {
            (self.service.as_str(), self.method.as_str())
        };
        super::global().grpc_answered(service, method, code);
    }
}

fn status_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

pin_project_lite::pin_project! {
    /// An answer's body that counts its call once its trailers pass, or when it is dropped.
    struct CountedBody {
        #[pin]
        inner: Body,
        call: Option<CallName>,
    }

    impl PinnedDrop for CountedBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.record(Code::Cancelled);
            }
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    if let Some(call) = this.call.take() {
                        call.record(code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.record(Code::Internal);
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    call.record(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A status code as gRPC's specification spells it (`OK`, `INVALID_ARGUMENT`, ...).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_its_service_and_method() {
        let call = CallName::of("/batchmanager.v1.BatchManager/SubmitBatch");
        assert_eq!(call.service, "batchmanager.v1.BatchManager");
        assert_eq!(call.method, "SubmitBatch");
        let odd = CallName::of("/nothing");
        assert_eq!((odd.service.as_str(), odd.method.as_str()), ("", ""));
    }

    #[test]
    fn status_codes_are_named_as_the_specification_does() {
        assert_eq!(code_name(Code::from_i32(3)), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::from_i32(0)), "OK");
    }
}
