//! A typed client of the admin service for the CLI: it sends domain values and returns domain
//! values (or the small views below), so that generated types stay inside `grpc`. An answer that
//! breaks the contract (an unknown status, a missing timestamp) is an error, never a guess.

use std::path::PathBuf;

use tonic::codegen::http::uri::InvalidUri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};

use super::convert::FieldError;
use super::pb;
use super::pb::batch_manager_client::BatchManagerClient;
use super::MAX_MESSAGE_BYTES;
use crate::domain::{
    Batch, BatchId, BatchSize, BatchStatus, CallbackUrl, FailureBudget, ItemId, ItemRecord, NewPart,
};
use crate::items_uri::ItemsReference;
use crate::store::{BatchQuery, ItemQuery, Page};

/// A connected client.
#[derive(Clone)]
pub struct AdminClient {
    inner: BatchManagerClient<InterceptedService<Channel, BearerToken>>,
}

/// How to reach a server beyond its URL.
#[derive(Default, Clone)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
    /// PEM certificates to trust for an `https://` server, besides the system's roots.
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "hidden"))
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone)]
struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A whole batch sent in one `SubmitBatch` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSubmission {
    /// The batch's ID (the idempotency key).
    pub batch_id: BatchId,
    /// Items per chunk.
    pub batch_size: BatchSize,
    /// The batch's items, in order.
    pub items: Vec<ItemId>,
    /// Chunk executions in flight at once; `None` for the deployment's default.
    pub max_concurrency: Option<u32>,
    /// Failed items tolerated before the batch stops (unset: no budget).
    pub failure_budget: FailureBudget,
    /// Where the batch's final status is POSTed when it ends.
    pub callback_url: Option<CallbackUrl>,
}

/// A whole batch sent in one `SubmitBatch` call by reference: the server reads its items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSubmission {
    /// The batch's ID (the idempotency key).
    pub batch_id: BatchId,
    /// Items per chunk.
    pub batch_size: BatchSize,
    /// Where the items are.
    pub items: ItemsReference,
    /// Chunk executions in flight at once; `None` for the deployment's default.
    pub max_concurrency: Option<u32>,
    /// Failed items tolerated before the batch stops (unset: no budget).
    pub failure_budget: FailureBudget,
    /// Where the batch's final status is POSTed when it ends.
    pub callback_url: Option<CallbackUrl>,
}

/// What a submission (`SubmitBatch` or one `AppendBatchItems` part) returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The batch's ID.
    pub batch_id: BatchId,
    /// Items the whole batch will hold.
    pub total_items: u64,
    /// Chunks created so far.
    pub total_chunks: u64,
    /// The batch's status.
    pub status: BatchStatus,
    /// False when the batch (or the part) had been stored already.
    pub created: bool,
}

/// Why a call through the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a valid URI.
    #[error("{url:?} is not a server URL")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is not.
        #[source]
        source: InvalidUri,
    },
    /// The token cannot be sent in a header.
    #[error("the token must be printable ASCII without spaces")]
    BadToken,
    /// The CA certificate file could not be read.
    #[error("cannot read the CA certificate {}", path.display())]
    CaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call failed: the server answered with an error status, or it could not be reached.
    #[error("{}", describe(.0))]
    Call(Status),
    /// The server's answer breaks the contract.
    #[error("the server's answer could not be read")]
    Answer(#[source] FieldError),
}

/// A status as a user reads it: its code and message, and for a status the client made itself
/// (the server could not be reached), the root cause: `connection refused`.
fn describe(status: &Status) -> String {
    let mut described = format!("{}: {}", status.code(), status.message());
    let mut root = std::error::Error::source(status);
    while let Some(cause) = root.and_then(std::error::Error::source) {
        root = Some(cause);
    }
    if let Some(root) = root {
        let root = root.to_string();
        if !status.message().contains(&root) {
            described.push_str(&format!(" ({root})"));
        }
    }
    described
}

impl ClientError {
    /// The call's gRPC code. A failed connection counts as UNAVAILABLE, and an answer the client
    /// cannot read as INTERNAL (as tonic counts a message it cannot decode).
    pub fn code(&self) -> Code {
        match self {
            Self::BadUrl { .. } | Self::BadToken | Self::CaCert { .. } => Code::InvalidArgument,
            Self::Connect { .. } => Code::Unavailable,
            Self::Call(status) => status.code(),
            Self::Answer(_) => Code::Internal,
        }
    }

    /// Whether trying the same idempotent call again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
        )
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Call(status)
    }
}

impl From<FieldError> for ClientError {
    fn from(err: FieldError) -> Self {
        Self::Answer(err)
    }
}

impl AdminClient {
    /// Connects to the server at `url` (`http://127.0.0.1:50051`). Should the connection
    /// break later, the next call opens a new one.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects to the server at `url` (`http://` or `https://`) with `options`: a token for a
    /// server that requires one, a certificate to trust for one with its own.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let token = match &options.token {
            Some(token) if token.bytes().all(|byte| byte.is_ascii_graphic()) => Some(
                MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?,
            ),
            Some(_) => return Err(ClientError::BadToken),
            None => None,
        };
        let mut endpoint =
            Channel::from_shared(url.to_owned()).map_err(|source| ClientError::BadUrl {
                url: url.to_owned(),
                source,
            })?;
        if endpoint.uri().scheme_str() == Some("https") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(path) = &options.ca_cert {
                let pem = std::fs::read(path).map_err(|source| ClientError::CaCert {
                    path: path.clone(),
                    source,
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|source| ClientError::Connect {
                    url: url.to_owned(),
                    source,
                })?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self {
            inner: BatchManagerClient::with_interceptor(channel, BearerToken(token))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// Submits a whole batch in one call.
    pub async fn submit(&mut self, submission: BatchSubmission) -> Result<Submitted, ClientError> {
        let request = pb::SubmitBatchRequest::from(submission);
        let response = self.inner.submit_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Submits a whole batch by reference; the server reads and checks the object before it
    /// answers.
    pub async fn submit_by_reference(
        &mut self,
        submission: ReferenceSubmission,
    ) -> Result<Submitted, ClientError> {
        let request = pb::SubmitBatchRequest::from(submission);
        let response = self.inner.submit_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Sends one part of a batch built in parts.
    pub async fn append(&mut self, part: NewPart) -> Result<Submitted, ClientError> {
        let request = pb::AppendBatchItemsRequest::from(part);
        let response = self.inner.append_batch_items(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// The batch's status.
    pub async fn status(&mut self, batch_id: &BatchId) -> Result<Batch, ClientError> {
        let request = pb::GetBatchStatusRequest::from(batch_id);
        let response = self.inner.get_batch_status(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Cancels the batch; returns it as it stands after.
    pub async fn cancel(&mut self, batch_id: &BatchId) -> Result<Batch, ClientError> {
        let request = pb::CancelBatchRequest::from(batch_id);
        let response = self.inner.cancel_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Sets a batch's limit on chunk executions in flight (`None`: the server's default).
    pub async fn update(
        &mut self,
        batch_id: &BatchId,
        max_concurrency: Option<u32>,
    ) -> Result<Batch, ClientError> {
        let request = pb::UpdateBatchRequest {
            batch_id: batch_id.as_str().to_owned(),
            max_concurrency: max_concurrency.unwrap_or(0),
        };
        let response = self.inner.update_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Pauses the batch; returns it as it stands after.
    pub async fn pause(&mut self, batch_id: &BatchId) -> Result<Batch, ClientError> {
        let request = pb::PauseBatchRequest::from(batch_id);
        let response = self.inner.pause_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Resumes the batch; returns it as it stands after.
    pub async fn resume(&mut self, batch_id: &BatchId) -> Result<Batch, ClientError> {
        let request = pb::ResumeBatchRequest::from(batch_id);
        let response = self.inner.resume_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Redrives the batch's failed items (and cancelled ones with `include_cancelled`);
    /// returns the batch as it stands after and how many items run again.
    pub async fn redrive(
        &mut self,
        batch_id: &BatchId,
        include_cancelled: bool,
    ) -> Result<(Batch, u64), ClientError> {
        let request = pb::RedriveBatchRequest {
            batch_id: batch_id.as_str().to_owned(),
            include_cancelled,
        };
        let response = self.inner.redrive_batch(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// Opens a watch; each `next` yields a snapshot until the terminal one.
    pub async fn watch(&mut self, batch_id: &BatchId) -> Result<BatchWatch, ClientError> {
        let request = pb::WatchBatchRequest::from(batch_id);
        let stream = self.inner.watch_batch(request).await?.into_inner();
        Ok(BatchWatch { stream })
    }

    /// Opens an export of the items `query` selects (its page size and token are not sent);
    /// each `next` yields the next items until the last.
    pub async fn export(&mut self, query: ItemQuery) -> Result<ItemExport, ClientError> {
        let request = pb::ExportBatchItemsRequest::from(query);
        let stream = self.inner.export_batch_items(request).await?.into_inner();
        Ok(ItemExport { stream })
    }

    /// One page of batches, newest first.
    pub async fn batches(&mut self, query: BatchQuery) -> Result<Page<Batch>, ClientError> {
        let request = pb::ListBatchesRequest::from(query);
        let response = self.inner.list_batches(request).await?.into_inner();
        Ok(response.try_into()?)
    }

    /// One page of items.
    pub async fn items(&mut self, query: ItemQuery) -> Result<Page<ItemRecord>, ClientError> {
        let request = pb::ListBatchItemsRequest::from(query);
        let response = self.inner.list_batch_items(request).await?.into_inner();
        Ok(response.try_into()?)
    }
}

/// A stream of a batch's items, as the server reads them.
pub struct ItemExport {
    stream: tonic::Streaming<pb::ExportBatchItemsResponse>,
}

impl ItemExport {
    /// The next items in submission order, or None after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<ItemRecord>>, ClientError> {
        match self.stream.message().await? {
            Some(response) => Ok(Some(response.try_into()?)),
            None => Ok(None),
        }
    }
}

/// A stream of batch snapshots.
pub struct BatchWatch {
    stream: tonic::Streaming<pb::WatchBatchResponse>,
}

impl BatchWatch {
    /// The next snapshot, or None after the terminal one.
    pub async fn next(&mut self) -> Result<Option<Batch>, ClientError> {
        match self.stream.message().await {
            Ok(Some(response)) => Ok(Some(response.try_into()?)),
            Ok(None) => Ok(None),
            Err(status) if status.code() == Code::Cancelled => Ok(None),
            Err(status) => Err(status.into()),
        }
    }
}
