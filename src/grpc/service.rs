//! The `batchmanager.v1.BatchManager` service, plus health and reflection, as one router.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::Submission;
use super::deadline::DeadlineLayer;
use super::error::ApiError;
use super::export::Exporter;
use super::pb;
use super::pb::batch_manager_server::{BatchManager, BatchManagerServer};
use crate::domain::{Batch, BatchId, ItemRecord, NewPart};
use crate::items_uri::s3::ObjectReader;
use crate::items_uri::BatchByReference;
use crate::metrics::grpc_layer::count_grpc_call;
use crate::pipeline::{Accepted, Intake, IntakeError, RunRequestError};
use crate::run_request::RunRequest;
use crate::store::{
    BatchQuery, BatchStore, CancelOutcome, ControlOutcome, ItemQuery, ListError, Page,
    RedriveOutcome,
};

/// Largest gRPC message the server accepts: 100,000 IDs of up to 256 bytes, with room to spare.
pub(crate) const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// How often a watcher re-reads a batch when the store cannot signal changes.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Shortest gap between two watch snapshots, so a busy batch does not flood its watchers.
const WATCH_MIN_GAP: Duration = Duration::from_millis(100);

/// The admin service over a store and an intake.
#[derive(Clone)]
pub(crate) struct AdminService {
    intake: Intake,
    objects: ObjectReader,
    store: Arc<dyn BatchStore>,
    stopping: watch::Receiver<bool>,
}

impl AdminService {
    /// `stopping` turns true when the server shuts down: open watches then end with
    /// UNAVAILABLE, so that their connections can close.
    pub(crate) fn new(
        (intake, objects): (Intake, ObjectReader),
        store: Arc<dyn BatchStore>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            intake,
            objects,
            store,
            stopping,
        }
    }

    /// Stores the part and starts its chunks on a task of its own, so that a call dropped
    /// half-way (its deadline passed, its client went away) still starts the chunks it stored.
    async fn accept(&self, part: NewPart) -> Result<Accepted, ApiError> {
        let intake = self.intake.clone();
        let accepting = tokio::spawn(async move { intake.submit(&part).await }.in_current_span());
        match accepting.await {
            Ok(outcome) => Ok(outcome?),
            Err(err) => Err(ApiError::Panicked(err)),
        }
    }

    /// As [`Self::accept`], for a batch whose items are read from an object.
    async fn accept_by_reference(&self, request: BatchByReference) -> Result<Accepted, ApiError> {
        let (intake, objects) = (self.intake.clone(), self.objects.clone());
        let accepting = tokio::spawn(
            async move { intake.submit_from_uri(&objects, &request).await }.in_current_span(),
        );
        match accepting.await {
            Ok(outcome) => Ok(outcome?),
            Err(err) => Err(ApiError::Panicked(err)),
        }
    }

    /// The batch, as `GetBatchStatus` reads it.
    pub(crate) async fn batch(&self, batch_id: &BatchId) -> Result<Batch, ApiError> {
        self.store
            .get_batch(batch_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(batch_id.clone()))
    }

    /// `CancelBatch`: cancels the batch and stops its external jobs.
    pub(crate) async fn cancel(&self, batch_id: BatchId) -> Result<Batch, ApiError> {
        match self.store.cancel_batch(&batch_id).await? {
            CancelOutcome::Cancelled(batch) => {
                // The cancel stands once stored; jobs a failed stop leaves running end at
                // their deadline, and their chunks are then recorded as usual.
                match self.intake.stop_jobs(&batch_id).await {
                    Ok(0) => {}
                    Ok(stopped) => {
                        tracing::info!(batch_id = %batch_id, stopped, "stopping the cancelled batch's jobs")
                    }
                    Err(err) => {
                        tracing::error!(batch_id = %batch_id, error = %err, "could not stop the cancelled batch's jobs")
                    }
                }
                Ok(batch)
            }
            CancelOutcome::AlreadyTerminal(batch) => Err(ApiError::AlreadyTerminal {
                batch_id,
                status: batch.status,
            }),
            CancelOutcome::NotFound => Err(ApiError::NotFound(batch_id)),
        }
    }

    /// `ListBatches`: a page of batches, newest first.
    pub(crate) async fn batches(&self, query: &BatchQuery) -> Result<Page<Batch>, ApiError> {
        Ok(self.store.list_batches(query).await?)
    }

    /// `ListBatchItems`: a page of a batch's items, in submission order.
    pub(crate) async fn items(&self, query: &ItemQuery) -> Result<Page<ItemRecord>, ApiError> {
        self.store.list_items(query).await.map_err(|err| match err {
            ListError::NotFound => ApiError::NotFound(query.batch_id.clone()),
            other => other.into(),
        })
    }

    /// `RedriveBatch`: the batch it left running and how many items it redrove.
    pub(crate) async fn redrive(
        &self,
        batch_id: BatchId,
        include_cancelled: bool,
    ) -> Result<(Batch, u64), ApiError> {
        match self.intake.redrive(&batch_id, include_cancelled).await? {
            RedriveOutcome::Redriven { batch, items, .. } => Ok((batch, items)),
            RedriveOutcome::Refused(reason) => Err(ApiError::Refused(reason)),
            RedriveOutcome::NotFound => Err(ApiError::NotFound(batch_id)),
        }
    }

    /// `PauseBatch`.
    pub(crate) async fn pause(&self, batch_id: BatchId) -> Result<Batch, ApiError> {
        let outcome = self.intake.pause(&batch_id).await;
        controlled(batch_id, outcome)
    }

    /// `ResumeBatch`.
    pub(crate) async fn resume(&self, batch_id: BatchId) -> Result<Batch, ApiError> {
        let outcome = self.intake.resume(&batch_id).await;
        controlled(batch_id, outcome)
    }

    /// `WatchBatch`: the batch's snapshots as it changes, from `first` to the terminal one;
    /// an error ends them.
    pub(crate) fn follow(&self, first: Batch) -> mpsc::Receiver<Result<Batch, ApiError>> {
        let (sender, receiver) = mpsc::channel(4);
        let watcher = Watcher {
            batch_id: first.batch_id.clone(),
            store: Arc::clone(&self.store),
            stopping: self.stopping.clone(),
            sender,
        };
        tokio::spawn(watcher.run(first));
        receiver
    }
}

/// The admin service, `grpc.health.v1.Health`, and reflection (v1 and v1alpha) as one router,
/// every call held to the deadline its client set ([`DeadlineLayer`]).
pub(crate) async fn grpc_router(
    service: AdminService,
    access: crate::access::AccessControl,
) -> anyhow::Result<axum::Router> {
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
    let routes = tonic::service::Routes::new(admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok(routes
        .prepare()
        .into_axum_router()
        .layer(DeadlineLayer)
        .layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::require_grpc_token,
        ))
        .layer(axum::middleware::from_fn(count_grpc_call))
        .layer(axum::middleware::from_fn(crate::logging::request_span)))
}

type ExportStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportBatchItemsResponse, Status>> + Send>>;

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchBatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BatchManager for AdminService {
    async fn submit_batch(
        &self,
        request: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        let accepted = match Submission::try_from(request.into_inner())? {
            Submission::Inline(part) => self.accept(part).await?,
            Submission::ByReference(request) => self.accept_by_reference(request).await?,
        };
        Ok(Response::new(accepted.into()))
    }

    async fn append_batch_items(
        &self,
        request: Request<pb::AppendBatchItemsRequest>,
    ) -> Result<Response<pb::AppendBatchItemsResponse>, Status> {
        let part = NewPart::try_from(request.into_inner())?;
        Ok(Response::new(self.accept(part).await?.into()))
    }

    async fn get_batch_status(
        &self,
        request: Request<pb::GetBatchStatusRequest>,
    ) -> Result<Response<pb::GetBatchStatusResponse>, Status> {
        let batch_id = BatchId::try_from(request.into_inner())?;
        Ok(Response::new(self.batch(&batch_id).await?.into()))
    }

    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let query = BatchQuery::try_from(request.into_inner())?;
        Ok(Response::new(self.batches(&query).await?.into()))
    }

    async fn list_batch_items(
        &self,
        request: Request<pb::ListBatchItemsRequest>,
    ) -> Result<Response<pb::ListBatchItemsResponse>, Status> {
        let query = ItemQuery::try_from(request.into_inner())?;
        Ok(Response::new(self.items(&query).await?.into()))
    }

    type ExportBatchItemsStream = ExportStream;

    async fn export_batch_items(
        &self,
        request: Request<pb::ExportBatchItemsRequest>,
    ) -> Result<Response<Self::ExportBatchItemsStream>, Status> {
        let query = ItemQuery::try_from(request.into_inner())?;
        self.batch(&query.batch_id).await?;
        let (exporter, pages) =
            Exporter::new(Arc::clone(&self.store), query, self.stopping.clone());
        tokio::spawn(exporter.run());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(pages),
        )))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Result<Response<pb::CancelBatchResponse>, Status> {
        let batch_id = BatchId::try_from(request.into_inner())?;
        Ok(Response::new(self.cancel(batch_id).await?.into()))
    }

    async fn submit_run_request(
        &self,
        request: Request<pb::SubmitRunRequestRequest>,
    ) -> Result<Response<pb::SubmitRunRequestResponse>, Status> {
        let run_request = RunRequest::try_from(request.into_inner())?;
        let intake = self.intake.clone();
        let submitting = tokio::spawn(
            async move { intake.submit_run_request(&run_request).await }.in_current_span(),
        );
        let run_request_id = match submitting.await {
            Ok(Ok(id)) => id,
            Ok(Err(RunRequestError::NoExternalJob)) => {
                return Err(
                    ApiError::NoExternalJob(RunRequestError::NoExternalJob.to_string()).into(),
                )
            }
            Ok(Err(RunRequestError::Intake(err))) => return Err(ApiError::Intake(err).into()),
            Err(err) => return Err(ApiError::Panicked(err).into()),
        };
        Ok(Response::new(pb::SubmitRunRequestResponse {
            run_request_id: run_request_id.as_str().to_owned(),
        }))
    }

    async fn update_batch(
        &self,
        request: Request<pb::UpdateBatchRequest>,
    ) -> Result<Response<pb::UpdateBatchResponse>, Status> {
        let (batch_id, max_concurrency) = <(BatchId, Option<u32>)>::try_from(request.into_inner())?;
        let batch = self.batch(&batch_id).await?;
        if batch.status.is_terminal() {
            return Err(ApiError::AlreadyTerminal {
                batch_id,
                status: batch.status,
            }
            .into());
        }
        let batch = self
            .intake
            .set_max_concurrency(&batch_id, max_concurrency)
            .await
            .map_err(ApiError::from)?;
        let batch = batch.ok_or(ApiError::NotFound(batch_id))?;
        Ok(Response::new(batch.into()))
    }

    async fn redrive_batch(
        &self,
        request: Request<pb::RedriveBatchRequest>,
    ) -> Result<Response<pb::RedriveBatchResponse>, Status> {
        let request = request.into_inner();
        let include_cancelled = request.include_cancelled;
        let batch_id = BatchId::try_from(request)?;
        let (batch, items) = self.redrive(batch_id, include_cancelled).await?;
        Ok(Response::new(pb::RedriveBatchResponse {
            batch: Some((&batch).into()),
            redriven_items: items,
        }))
    }

    async fn pause_batch(
        &self,
        request: Request<pb::PauseBatchRequest>,
    ) -> Result<Response<pb::PauseBatchResponse>, Status> {
        let batch_id = BatchId::try_from(request.into_inner())?;
        Ok(Response::new(self.pause(batch_id).await?.into()))
    }

    async fn resume_batch(
        &self,
        request: Request<pb::ResumeBatchRequest>,
    ) -> Result<Response<pb::ResumeBatchResponse>, Status> {
        let batch_id = BatchId::try_from(request.into_inner())?;
        Ok(Response::new(self.resume(batch_id).await?.into()))
    }

    type WatchBatchStream = WatchStream;

    async fn watch_batch(
        &self,
        request: Request<pb::WatchBatchRequest>,
    ) -> Result<Response<Self::WatchBatchStream>, Status> {
        let batch_id = BatchId::try_from(request.into_inner())?;
        let first = self.batch(&batch_id).await?;
        let snapshots = tokio_stream::wrappers::ReceiverStream::new(self.follow(first));
        Ok(Response::new(Box::pin(snapshots.map(|snapshot| {
            snapshot
                .map(pb::WatchBatchResponse::from)
                .map_err(Status::from)
        }))))
    }
}

/// The batch a pause or resume left, or why there is none.
fn controlled(
    batch_id: BatchId,
    outcome: Result<ControlOutcome, IntakeError>,
) -> Result<Batch, ApiError> {
    match outcome? {
        ControlOutcome::Applied(batch) => Ok(batch),
        ControlOutcome::Refused(reason) => Err(ApiError::Refused(reason)),
        ControlOutcome::NotFound => Err(ApiError::NotFound(batch_id)),
    }
}

/// Sends one watcher the snapshots of a batch as it changes, until the terminal one.
struct Watcher {
    batch_id: BatchId,
    store: Arc<dyn BatchStore>,
    stopping: watch::Receiver<bool>,
    sender: mpsc::Sender<Result<Batch, ApiError>>,
}

impl Watcher {
    async fn run(mut self, first: Batch) {
        let mut generation = 0;
        let mut last_sent: Option<Batch> = None;
        let mut current = first;
        loop {
            if last_sent.as_ref() != Some(&current) {
                let terminal = current.status.is_terminal();
                if self.sender.send(Ok(current.clone())).await.is_err() || terminal {
                    return;
                }
                last_sent = Some(current);
                tokio::time::sleep(WATCH_MIN_GAP).await;
            }
            generation = match self.wait(generation).await {
                Ok(changed) => changed,
                Err(Some(err)) => return self.fail(err).await,
                Err(None) => return,
            };
            current = match self.store.get_batch(&self.batch_id).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return self.fail(ApiError::NotFound(self.batch_id.clone())).await,
                Err(err) => return self.fail(err.into()).await,
            };
        }
    }

    /// Waits for the batch to change. `Err` ends the watch, with what to tell the client if
    /// it is still there.
    async fn wait(&mut self, generation: u64) -> Result<u64, Option<ApiError>> {
        let stopping = &mut self.stopping;
        tokio::select! {
            changed = self.store.wait_for_change(generation, WATCH_POLL) => Ok(changed),
            // The client went away: stop reading the batch for it.
            () = self.sender.closed() => Err(None),
            _ = stopping.wait_for(|stopping| *stopping) => Err(Some(ApiError::ShuttingDown)),
        }
    }

    async fn fail(&self, err: ApiError) {
        let _ = self.sender.send(Err(err)).await;
    }
}
