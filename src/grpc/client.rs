//! A typed client of the admin service, speaking domain types, for the CLI.

use tonic::transport::Channel;
use tonic::{Code, Status};

use super::convert;
use super::pb;
use super::pb::batch_manager_client::BatchManagerClient;
use super::service::MAX_MESSAGE_BYTES;
use crate::domain::{Batch, BatchId, BatchStatus, ItemId, ItemRecord, ItemStatus, Timestamp};

/// A connected client.
#[derive(Clone)]
pub struct AdminClient {
    inner: BatchManagerClient<Channel>,
}

/// What a submission returned.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub batch_id: String,
    pub total_items: u64,
    pub total_chunks: u64,
    pub created: bool,
}

fn batch_from(pb: pb::Batch) -> Result<Batch, Status> {
    let batch_id = BatchId::parse(pb.batch_id.clone())
        .map_err(|err| Status::internal(format!("server sent a bad batch id: {err}")))?;
    let status = pb::BatchStatus::try_from(pb.status)
        .ok()
        .and_then(convert::domain_batch_status)
        .unwrap_or(BatchStatus::Pending);
    Ok(Batch {
        batch_id,
        status,
        total_items: pb.total_items,
        received_items: pb.received_items,
        succeeded_items: pb.succeeded_items,
        failed_items: pb.failed_items,
        cancelled_items: pb.cancelled_items,
        total_chunks: pb.total_chunks,
        completed_chunks: pb.completed_chunks,
        batch_size: pb.batch_size,
        created_at: pb
            .created_at
            .as_ref()
            .map(convert::domain_timestamp)
            .unwrap_or(Timestamp(0)),
        updated_at: pb
            .updated_at
            .as_ref()
            .map(convert::domain_timestamp)
            .unwrap_or(Timestamp(0)),
        completed_at: pb.completed_at.as_ref().map(convert::domain_timestamp),
    })
}

fn item_status_from(raw: i32) -> ItemStatus {
    match pb::ItemStatus::try_from(raw) {
        Ok(pb::ItemStatus::Succeeded) => ItemStatus::Succeeded,
        Ok(pb::ItemStatus::Failed) => ItemStatus::Failed,
        Ok(pb::ItemStatus::Cancelled) => ItemStatus::Cancelled,
        _ => ItemStatus::Pending,
    }
}

fn missing_batch() -> Status {
    Status::internal("server sent no batch")
}

impl AdminClient {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())?.connect().await?;
        Ok(Self {
            inner: BatchManagerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// Submits a whole batch in one call.
    pub async fn submit(
        &mut self,
        batch_id: &str,
        item_ids: Vec<String>,
        batch_size: u32,
    ) -> Result<Submitted, Status> {
        let response = self
            .inner
            .submit_batch(pb::SubmitBatchRequest {
                batch_id: batch_id.to_owned(),
                item_ids,
                batch_size,
            })
            .await?
            .into_inner();
        Ok(Submitted {
            batch_id: response.batch_id,
            total_items: response.total_items,
            total_chunks: response.total_chunks,
            created: response.created,
        })
    }

    /// Sends one part of a batch built in parts.
    pub async fn append(
        &mut self,
        batch_id: &str,
        total_items: u64,
        batch_size: u32,
        part_number: u64,
        item_ids: Vec<String>,
    ) -> Result<Submitted, Status> {
        let response = self
            .inner
            .append_batch_items(pb::AppendBatchItemsRequest {
                batch_id: batch_id.to_owned(),
                total_items,
                batch_size,
                part_number,
                item_ids,
            })
            .await?
            .into_inner();
        Ok(Submitted {
            batch_id: response.batch_id,
            total_items: response.total_items,
            total_chunks: response.total_chunks,
            created: response.created,
        })
    }

    pub async fn status(&mut self, batch_id: &str) -> Result<Batch, Status> {
        let response = self
            .inner
            .get_batch_status(pb::GetBatchStatusRequest {
                batch_id: batch_id.to_owned(),
            })
            .await?
            .into_inner();
        batch_from(response.batch.ok_or_else(missing_batch)?)
    }

    pub async fn cancel(&mut self, batch_id: &str) -> Result<Batch, Status> {
        let response = self
            .inner
            .cancel_batch(pb::CancelBatchRequest {
                batch_id: batch_id.to_owned(),
            })
            .await?
            .into_inner();
        batch_from(response.batch.ok_or_else(missing_batch)?)
    }

    /// Opens a watch; each `next` yields a snapshot until the terminal one.
    pub async fn watch(&mut self, batch_id: &str) -> Result<BatchWatch, Status> {
        let stream = self
            .inner
            .watch_batch(pb::WatchBatchRequest {
                batch_id: batch_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(BatchWatch { stream })
    }

    /// One page of items.
    pub async fn items(
        &mut self,
        batch_id: &str,
        status: Option<ItemStatus>,
        page_size: u32,
        page_token: String,
    ) -> Result<(Vec<ItemRecord>, String), Status> {
        let response = self
            .inner
            .list_batch_items(pb::ListBatchItemsRequest {
                batch_id: batch_id.to_owned(),
                status: status.map_or(0, |s| convert::item_status(s) as i32),
                page_size,
                page_token,
            })
            .await?
            .into_inner();
        let items = response
            .items
            .into_iter()
            .map(|item| ItemRecord {
                item_id: ItemId::from_trusted(item.item_id),
                status: item_status_from(item.status),
                error: (!item.error.is_empty()).then_some(item.error),
                attempts: item.attempts,
                chunk: item.chunk,
            })
            .collect();
        Ok((items, response.next_page_token))
    }
}

/// A stream of batch snapshots.
pub struct BatchWatch {
    stream: tonic::Streaming<pb::WatchBatchResponse>,
}

impl BatchWatch {
    /// The next snapshot, or None after the terminal one.
    pub async fn next(&mut self) -> Result<Option<Batch>, Status> {
        match self.stream.message().await {
            Ok(Some(response)) => Ok(Some(batch_from(response.batch.ok_or_else(missing_batch)?)?)),
            Ok(None) => Ok(None),
            Err(status) if status.code() == Code::Cancelled => Ok(None),
            Err(status) => Err(status),
        }
    }
}
