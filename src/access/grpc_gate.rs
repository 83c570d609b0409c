//! The gate in front of the gRPC services: health checks pass; every other call needs a good
//! token; a read-only token may make only the calls that read.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tonic::Status;

use super::{AccessControl, Admission, Caller, UNAUTHENTICATED_MESSAGE};
use crate::access::Access;

/// The health service: probes and load balancers check it without a token.
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";

/// The calls a read-only token may make: the admin service's reads, and reflection (which
/// describes the service, never a batch).
const READ_ONLY_CALLS: &[&str] = &[
    "/batchmanager.v1.BatchManager/GetBatchStatus",
    "/batchmanager.v1.BatchManager/ListBatches",
    "/batchmanager.v1.BatchManager/ListBatchItems",
    "/batchmanager.v1.BatchManager/ExportBatchItems",
    "/batchmanager.v1.BatchManager/WatchBatch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Admits or refuses one gRPC call (UNAUTHENTICATED, PERMISSION_DENIED).
pub(crate) async fn require_grpc_token(
    State(access): State<AccessControl>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with(HEALTH_SERVICE) {
        return next.run(request).await;
    }
    match access.admit(request.headers()) {
        Admission::Open => next.run(request).await,
        Admission::Refused => Status::unauthenticated(UNAUTHENTICATED_MESSAGE).into_http(),
        Admission::Caller(caller) => {
            let reads_only = READ_ONLY_CALLS.contains(&path);
            if !reads_only {
                if caller.access == Access::ReadOnly {
                    return Status::permission_denied(format!(
                        "{}: a read-only token may only read batches",
                        call_name(path)
                    ))
                    .into_http();
                }
                tracing::info!(caller = %caller.name, call = call_name(path), "call");
            }
            request.extensions_mut().insert::<Caller>(caller);
            next.run(request).await
        }
    }
}

/// `CancelBatch` for `/batchmanager.v1.BatchManager/CancelBatch`.
fn call_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::grpc::pb::FILE_DESCRIPTOR_SET;

    #[test]
    fn read_only_tokens_may_make_exactly_the_admin_services_reads() {
        let descriptors = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let service = descriptors
            .file
            .iter()
            .flat_map(|file| file.service.iter().map(move |service| (file, service)))
            .find(|(_, service)| service.name() == "BatchManager")
            .unwrap();
        let (file, service) = service;
        let mut reads = 0;
        for method in &service.method {
            let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
            let is_read = ["Get", "List", "Watch", "Export"]
                .iter()
                .any(|verb| method.name().starts_with(verb));
            assert_eq!(READ_ONLY_CALLS.contains(&path.as_str()), is_read, "{path}");
            reads += usize::from(is_read);
        }
        assert_eq!(reads, 5);
    }
}
