//! Counts gRPC calls by service, method and status code. The code is read where the answer
//! carries it: the `grpc-status` header of a trailers-only answer (tonic's errors before any
//! message), or else the trailers that end the body (unary answers and streams alike). A body
//! dropped before its trailers (the client went away) counts as CANCELLED. Paths that name no
//! method served here count as `unknown`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Response};
use axum::middleware::Next;
use http_body::Frame;
use prost::Message;
use tonic::Code;

const GRPC_STATUS: &str = "grpc-status";

/// Counts every call into `batch_manager_grpc_requests_total`, once its code is known.
pub(crate) async fn count_grpc_call(request: Request, next: Next) -> Response<Body> {
    let call = CallName::of(request.uri().path());
    let response = next.run(request).await;
    if let Some(code) = status_code(response.headers()) {
        call.record(code);
        return response;
    }
    response.map(|body| {
        Body::new(CountedBody {
            inner: body,
            call: Some(call),
        })
    })
}

/// The service and method a call's path names.
#[derive(Debug)]
struct CallName {
    service: String,
    method: String,
}

impl CallName {
    /// The call `path` names; paths that name no method served here are all `unknown`, so
    /// that clients (unauthenticated ones included) cannot grow the series without bound.
    fn of(path: &str) -> Self {
        let (service, method) = match path.trim_start_matches('/').split_once('/') {
            Some((service, method)) if served_calls().contains(path) => (service, method),
            _ => ("unknown", "unknown"),
        };
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
        }
    }

    fn record(self, code: Code) {
        super::global().grpc_answered(&self.service, &self.method, code);
    }
}

/// The paths of every method `serve` answers: the admin and health services (from their
/// descriptors) and reflection.
fn served_calls() -> &'static HashSet<String> {
    static CALLS: OnceLock<HashSet<String>> = OnceLock::new();
    CALLS.get_or_init(|| {
        let mut calls: HashSet<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for set in [
            crate::grpc::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        calls.insert(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        calls
    })
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
        for odd in [
            "/nothing",
            "/batchmanager.v1.BatchManager/Nothing",
            "/x.Y/Z",
        ] {
            let call = CallName::of(odd);
            assert_eq!(
                (call.service.as_str(), call.method.as_str()),
                ("unknown", "unknown")
            );
        }
        let health = CallName::of("/grpc.health.v1.Health/Check");
        assert_eq!(health.method, "Check");
    }

    #[test]
    fn status_codes_are_named_as_the_specification_does() {
        assert_eq!(code_name(Code::from_i32(3)), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::from_i32(0)), "OK");
    }
}
