//! The `batchmanager.v1.BatchManager` service, plus health and reflection, as one router.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use super::pb::batch_manager_server::{BatchManager, BatchManagerServer};
use crate::domain::{Batch, BatchId, NewPart};
use crate::pipeline::{Accepted, Intake};
use crate::store::{BatchQuery, BatchStore, CancelOutcome, ItemQuery};

/// Largest gRPC message the server accepts: 100,000 IDs of up to 256 bytes, with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// How often a watcher re-reads a batch when the store cannot signal changes.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Shortest gap between two watch snapshots, so a busy batch does not flood its watchers.
const WATCH_MIN_GAP: Duration = Duration::from_millis(100);

/// The admin service over a store and an intake.
#[derive(Clone)]
pub struct AdminService {
    intake: Intake,
    store: Arc<dyn BatchStore>,
    stopping: watch::Receiver<bool>,
}

impl AdminService {
    /// `stopping` turns true when the server shuts down: open watches then end with
    /// UNAVAILABLE, so that their connections can close.
    pub fn new(
        intake: Intake,
        store: Arc<dyn BatchStore>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            intake,
            store,
            stopping,
        }
    }

    async fn accept(&self, part: &NewPart) -> Result<Accepted, Status> {
        self.intake
            .submit(part)
            .await
            .map_err(convert::intake_error)
    }

    async fn batch(&self, batch_id: &BatchId) -> Result<Batch, Status> {
        self.store
            .get_batch(batch_id)
            .await
            .map_err(convert::store_error)?
            .ok_or_else(|| convert::not_found(batch_id))
    }
}

/// The admin service, `grpc.health.v1.Health`, and reflection (v1 and v1alpha) as one router.
pub async fn grpc_router(service: AdminService) -> anyhow::Result<tonic::service::Routes> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<BatchManagerServer<AdminService>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let admin = BatchManagerServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(tonic::service::Routes::new(admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; watch again once it is back")
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BatchManager for AdminService {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let accepted = self
            .accept(&convert::submit_part(request.into_inner())?)
            .await?;
        let batch = accepted.batch;
        Ok(Response::new(pb::SubmitBatchResponse {
            batch_id: batch.batch_id.to_string(),
            total_items: batch.total_items,
            total_chunks: batch.total_chunks,
            status: convert::batch_status(batch.status) as i32,
            created: accepted.created,
        }))
    }

    async fn append_batch_items(
        &self,
        request: Request<pb::AppendBatchItemsRequest>,
    ) -> Result<Response<pb::AppendBatchItemsResponse>, Status> {
        let accepted = self
            .accept(&convert::append_part(request.into_inner())?)
            .await?;
        let batch = accepted.batch;
        Ok(Response::new(pb::AppendBatchItemsResponse {
            batch_id: batch.batch_id.to_string(),
            total_items: batch.total_items,
            received_items: batch.received_items,
            total_chunks: batch.total_chunks,
            status: convert::batch_status(batch.status) as i32,
            created: accepted.created,
        }))
    }

    async fn get_batch_status(
        &self,
        request: Request<pb::GetBatchStatusRequest>,
    ) -> Result<Response<pb::GetBatchStatusResponse>, Status> {
        let batch_id = convert::parse_batch_id(request.into_inner().batch_id)?;
        let batch = self.batch(&batch_id).await?;
        Ok(Response::new(pb::GetBatchStatusResponse {
            batch: Some(convert::batch(&batch)),
        }))
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let request = request.into_inner();
        let query = BatchQuery {
            status: convert::batch_status_filter(request.status)?,
            page_size: convert::page_size(
                request.page_size,
                convert::DEFAULT_BATCH_PAGE,
                convert::MAX_BATCH_PAGE,
            )?,
            page_token: convert::page_token(request.page_token),
        };
        let page = self
            .store
            .list_batches(&query)
            .await
            .map_err(convert::list_error)?;
        Ok(Response::new(pb::ListBatchesResponse {
            batches: page.entries.iter().map(convert::batch).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn list_batch_items(
        &self,
        request: Request<pb::ListBatchItemsRequest>,
    ) -> Result<Response<pb::ListBatchItemsResponse>, Status> {
        let request = request.into_inner();
        let batch_id = convert::parse_batch_id(request.batch_id)?;
        let query = ItemQuery {
            status: convert::item_status_filter(request.status)?,
            page_size: convert::page_size(
                request.page_size,
                convert::DEFAULT_ITEM_PAGE,
                convert::MAX_ITEM_PAGE,
            )?,
            page_token: convert::page_token(request.page_token),
            batch_id: batch_id.clone(),
        };
        let page = self
            .store
            .list_items(&query)
            .await
            .map_err(|err| match err {
                crate::store::ListError::NotFound => convert::not_found(&batch_id),
                other => convert::list_error(other),
            })?;
        Ok(Response::new(pb::ListBatchItemsResponse {
            items: page.entries.into_iter().map(convert::item).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let batch_id = convert::parse_batch_id(request.into_inner().batch_id)?;
        match self
            .store
            .cancel_batch(&batch_id)
            .await
            .map_err(convert::store_error)?
        {
            CancelOutcome::Cancelled(batch) => Ok(Response::new(pb::CancelBatchResponse {
                batch: Some(convert::batch(&batch)),
            })),
            CancelOutcome::AlreadyTerminal(batch) => Err(Status::failed_precondition(format!(
                "batch {batch_id} is already {}",
                batch.status
            ))),
            CancelOutcome::NotFound => Err(convert::not_found(&batch_id)),
        }
    }

    type WatchBatchStream = WatchStream;

    async fn watch_batch(
        &self,
        request: Request<pb::WatchBatchRequest>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        let batch_id = convert::parse_batch_id(request.into_inner().batch_id)?;
        let first = self.batch(&batch_id).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let store = Arc::clone(&self.store);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut generation = 0;
            let mut last_sent: Option<Batch> = None;
            let mut current = first;
            loop {
                if last_sent.as_ref() != Some(&current) {
                    let snapshot = pb::WatchBatchResponse {
                        batch: Some(convert::batch(&current)),
                    };
                    if sender.send(Ok(snapshot)).await.is_err() {
                        return;
                    }
                    if current.status.is_terminal() {
                        return;
                    }
                    last_sent = Some(current.clone());
                    tokio::time::sleep(WATCH_MIN_GAP).await;
                }
                generation = tokio::select! {
                    changed = store.wait_for_change(generation, WATCH_POLL) => changed,
                    // The client went away: stop reading the batch for it.
                    _ = sender.closed() => return,
                    () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                        let _ = sender.send(Err(shutting_down())).await;
                        return;
                    }
                };
                current = match store.get_batch(&batch_id).await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => {
                        let _ = sender.send(Err(convert::not_found(&batch_id))).await;
                        return;
                    }
                    Err(err) => {
                        let _ = sender.send(Err(convert::store_error(err))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
