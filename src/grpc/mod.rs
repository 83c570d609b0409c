//! The gRPC admin service: generated code (quarantined in [`pb`]), the service, its errors,
//! exports, client deadlines, the client the CLI uses, and the one place where protobuf and domain types convert.

pub mod client;
mod convert;
mod deadline;
mod error;
mod export;
mod service;

/// Generated protobuf and tonic code; never used outside `grpc` (but by tests, as a raw client).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("batchmanager.v1");

    /// Encoded descriptor set of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/batch_manager_descriptor.bin"));
}

pub(crate) use error::ApiError;
pub(crate) use service::{grpc_router, AdminService, MAX_MESSAGE_BYTES};
