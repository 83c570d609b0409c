//! The one place where protobuf messages and domain types convert, both ways: `From` where a
//! conversion cannot fail, `TryFrom` where the wire can carry what the domain refuses. A refusal
//! is a [`FieldError`] naming the field in the contract's terms (`item_ids[3]`,
//! `batch.created_at`); the server answers it with INVALID_ARGUMENT, the client reports it to
//! its user. Nothing read from the wire falls back silently: an unknown or unspecified status and
//! a missing timestamp are refused. Only where the contract says an empty value means "none"
//! (an item's `error`, a page token) is empty read as absent.

use prost_types::Timestamp as PbTimestamp;

use super::client::{BatchSubmission, Submitted};
use super::pb;
use crate::domain::{
    parse_count, parse_item_ids, parse_max_concurrency, Batch, BatchId, BatchProgress, BatchSize,
    BatchSizeError, BatchStatus, Callback, CallbackStatus, CallbackUrl, CallbackUrlError,
    CountError, ErrorCount, FailureBudget, IdError, ItemId, ItemIdsError, ItemRecord, ItemStatus,
    MaxConcurrencyError, NewPart, PartError, PercentageError, Timestamp,
};
use crate::items_uri::{ItemsError, ReferenceRule};
use crate::pipeline::Accepted;
use crate::run_request::{self, RunRequest, RunRequestFieldError};
use crate::store::{BatchQuery, ItemQuery, Page};

/// Default and largest `ListBatches` page.
pub(super) const DEFAULT_BATCH_PAGE: u32 = 50;
pub(super) const MAX_BATCH_PAGE: u32 = 1000;
/// Default and largest `ListBatchItems` page.
pub(super) const DEFAULT_ITEM_PAGE: u32 = 100;
pub(super) const MAX_ITEM_PAGE: u32 = 10_000;

/// Earliest and latest seconds a `google.protobuf.Timestamp` may hold (0001-01-01 to
/// 9999-12-31), as its definition says.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A message field that breaks a rule: its name in the contract, and the rule.
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub struct FieldError {
    /// `item_ids[3]`, `batch.created_at`...
    pub field: String,
    #[source]
    pub rule: FieldRule,
}

/// The rule a message field breaks: a domain rule, or one of the contract's.
#[derive(Debug, thiserror::Error)]
pub enum FieldRule {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    ItemIds(#[from] ItemIdsError),
    #[error(transparent)]
    BatchSize(#[from] BatchSizeError),
    #[error(transparent)]
    Count(#[from] CountError),
    #[error(transparent)]
    MaxConcurrency(#[from] MaxConcurrencyError),
    #[error(transparent)]
    Percentage(#[from] PercentageError),
    #[error(transparent)]
    Part(#[from] PartError),
    #[error(transparent)]
    CallbackUrl(#[from] CallbackUrlError),
    #[error("must be between 1 and {max}, or 0 for the default ({default})")]
    PageSize { max: u32, default: u32 },
    /// `what` names the enum with its article: "a BatchStatus".
    #[error("{value} is not {what}")]
    UnknownValue { value: i32, what: &'static str },
    #[error("must not be {name}")]
    Unspecified { name: &'static str },
    #[error("is missing")]
    Missing,
    #[error("{seconds} s {nanos} ns is not a valid timestamp")]
    Timestamp { seconds: i64, nanos: i32 },
    /// A run request's field rule, as the HTTP endpoint words it.
    #[error("{0}")]
    RunRequest(String),
    #[error(transparent)]
    Reference(#[from] ReferenceRule),
    #[error(transparent)]
    Items(#[from] ItemsError),
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<FieldRule>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same refusal for a field inside `parent`: `created_at` becomes `batch.created_at`.
    fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    /// Names the offending ID as `item_ids[3]`, or the list as `item_ids`.
    fn item_ids(err: ItemIdsError) -> Self {
        match err {
            ItemIdsError::InvalidId { index, rule } => {
                Self::new(format!("item_ids[{index}]"), rule)
            }
            other => match other.index() {
                Some(index) => Self::new(format!("item_ids[{index}]"), other),
                None => Self::new("item_ids", other),
            },
        }
    }

    /// Names the part's value to blame; `total_field` is where the request states the total.
    fn part(err: PartError, total_field: &str) -> Self {
        match err {
            PartError::TotalItems(rule) => Self::new(total_field, rule),
            PartError::PartNumber(rule) => Self::new("part_number", rule),
            PartError::TotalBelowItems { .. } => Self::new(total_field, err),
        }
    }
}

fn batch_id(raw: String) -> Result<BatchId, FieldError> {
    BatchId::parse(raw).map_err(|rule| FieldError::new("batch_id", rule))
}

fn batch_size(raw: u32) -> Result<BatchSize, FieldError> {
    BatchSize::parse_or_default(u64::from(raw)).map_err(|rule| FieldError::new("batch_size", rule))
}

fn max_concurrency(raw: u32) -> Result<Option<u32>, FieldError> {
    parse_max_concurrency(u64::from(raw)).map_err(|rule| FieldError::new("max_concurrency", rule))
}

fn failure_budget(
    percentage: Option<u32>,
    count: Option<u64>,
) -> Result<FailureBudget, FieldError> {
    FailureBudget::parse(percentage.map(u64::from), count)
        .map_err(|rule| FieldError::new("tolerated_failure_percentage", rule))
}

/// The contract's "empty means none" for a callback URL.
fn callback_url(raw: String) -> Result<Option<CallbackUrl>, FieldError> {
    if raw.is_empty() {
        return Ok(None);
    }
    CallbackUrl::parse(raw)
        .map(Some)
        .map_err(|rule| FieldError::new("callback_url", rule))
}

fn count(raw: u64, field: &str) -> Result<u64, FieldError> {
    parse_count(raw).map_err(|rule| FieldError::new(field, rule))
}

fn page_size(raw: u32, default: u32, max: u32) -> Result<u32, FieldError> {
    match raw {
        0 => Ok(default),
        size if size <= max => Ok(size),
        _ => Err(FieldError::new(
            "page_size",
            FieldRule::PageSize { max, default },
        )),
    }
}

/// The contract's "empty means none" for page tokens.
fn page_token(raw: String) -> Option<String> {
    (!raw.is_empty()).then_some(raw)
}

// ---- enums ----

impl From<BatchStatus> for pb::BatchStatus {
    fn from(status: BatchStatus) -> Self {
        match status {
            BatchStatus::Pending => Self::Pending,
            BatchStatus::Running => Self::Running,
            BatchStatus::Completed => Self::Completed,
            BatchStatus::CompletedWithFailures => Self::CompletedWithFailures,
            BatchStatus::Failed => Self::Failed,
            BatchStatus::Cancelled => Self::Cancelled,
            BatchStatus::Paused => Self::Paused,
        }
    }
}

impl From<ItemStatus> for pb::ItemStatus {
    fn from(status: ItemStatus) -> Self {
        match status {
            ItemStatus::Pending => Self::Pending,
            ItemStatus::Succeeded => Self::Succeeded,
            ItemStatus::Failed => Self::Failed,
            ItemStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// A `BatchStatus` field: `None` for UNSPECIFIED (a filter's "any"), an error for an unknown
/// value.
fn batch_status_or_any(raw: i32) -> Result<Option<BatchStatus>, FieldRule> {
    let status = pb::BatchStatus::try_from(raw).map_err(|_| FieldRule::UnknownValue {
        value: raw,
        what: "a BatchStatus",
    })?;
    Ok(match status {
        pb::BatchStatus::Unspecified => None,
        pb::BatchStatus::Pending => Some(BatchStatus::Pending),
        pb::BatchStatus::Running => Some(BatchStatus::Running),
        pb::BatchStatus::Completed => Some(BatchStatus::Completed),
        pb::BatchStatus::CompletedWithFailures => Some(BatchStatus::CompletedWithFailures),
        pb::BatchStatus::Failed => Some(BatchStatus::Failed),
        pb::BatchStatus::Cancelled => Some(BatchStatus::Cancelled),
        pb::BatchStatus::Paused => Some(BatchStatus::Paused),
    })
}

/// An `ItemStatus` field: `None` for UNSPECIFIED, an error for an unknown value.
fn item_status_or_any(raw: i32) -> Result<Option<ItemStatus>, FieldRule> {
    let status = pb::ItemStatus::try_from(raw).map_err(|_| FieldRule::UnknownValue {
        value: raw,
        what: "an ItemStatus",
    })?;
    Ok(match status {
        pb::ItemStatus::Unspecified => None,
        pb::ItemStatus::Pending => Some(ItemStatus::Pending),
        pb::ItemStatus::Succeeded => Some(ItemStatus::Succeeded),
        pb::ItemStatus::Failed => Some(ItemStatus::Failed),
        pb::ItemStatus::Cancelled => Some(ItemStatus::Cancelled),
    })
}

/// A status a response must carry: UNSPECIFIED is refused like an unknown value.
fn batch_status(raw: i32) -> Result<BatchStatus, FieldError> {
    batch_status_or_any(raw)
        .and_then(|status| {
            status.ok_or(FieldRule::Unspecified {
                name: "BATCH_STATUS_UNSPECIFIED",
            })
        })
        .map_err(|rule| FieldError::new("status", rule))
}

fn item_status(raw: i32) -> Result<ItemStatus, FieldError> {
    item_status_or_any(raw)
        .and_then(|status| {
            status.ok_or(FieldRule::Unspecified {
                name: "ITEM_STATUS_UNSPECIFIED",
            })
        })
        .map_err(|rule| FieldError::new("status", rule))
}

// ---- timestamps ----

impl From<Timestamp> for PbTimestamp {
    fn from(at: Timestamp) -> Self {
        Self {
            seconds: at.0.div_euclid(1_000_000),
            nanos: (at.0.rem_euclid(1_000_000) * 1000) as i32,
        }
    }
}

/// Reads a protobuf timestamp within its defined range; the domain keeps microseconds, so
/// nanoseconds below a microsecond are dropped.
impl TryFrom<PbTimestamp> for Timestamp {
    type Error = FieldRule;

    fn try_from(at: PbTimestamp) -> Result<Self, FieldRule> {
        let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&at.seconds)
            && (0..1_000_000_000).contains(&at.nanos);
        if !in_range {
            return Err(FieldRule::Timestamp {
                seconds: at.seconds,
                nanos: at.nanos,
            });
        }
        Ok(Self(at.seconds * 1_000_000 + i64::from(at.nanos) / 1000))
    }
}

fn required_timestamp(at: Option<PbTimestamp>, field: &str) -> Result<Timestamp, FieldError> {
    at.ok_or(FieldRule::Missing)
        .and_then(Timestamp::try_from)
        .map_err(|rule| FieldError::new(field, rule))
}

// ---- requests: client to wire, and wire to domain on the server ----

impl From<BatchSubmission> for pb::SubmitBatchRequest {
    fn from(submission: BatchSubmission) -> Self {
        Self {
            batch_id: submission.batch_id.as_str().to_owned(),
            item_ids: submission
                .items
                .into_iter()
                .map(ItemId::into_string)
                .collect(),
            batch_size: submission.batch_size.get(),
            max_concurrency: submission.max_concurrency.unwrap_or(0),
            tolerated_failure_percentage: submission.failure_budget.percentage.map(u32::from),
            tolerated_failure_count: submission.failure_budget.count,
            callback_url: submission
                .callback_url
                .map(|url| url.as_str().to_owned())
                .unwrap_or_default(),
            ..Self::default()
        }
    }
}

/// A whole batch in one request: part 1 of as many items as it holds. An empty `batch_id`
/// takes a fresh UUID.
impl TryFrom<pb::SubmitBatchRequest> for NewPart {
    type Error = FieldError;

    fn try_from(request: pb::SubmitBatchRequest) -> Result<Self, FieldError> {
        let batch_id = if request.batch_id.is_empty() {
            BatchId::generate()
        } else {
            batch_id(request.batch_id)?
        };
        let batch_size = batch_size(request.batch_size)?;
        let limit = max_concurrency(request.max_concurrency)?;
        let budget = failure_budget(
            request.tolerated_failure_percentage,
            request.tolerated_failure_count,
        )?;
        let callback = callback_url(request.callback_url)?;
        let items = parse_item_ids(request.item_ids).map_err(FieldError::item_ids)?;
        let total = items.len() as u64;
        NewPart::new(batch_id, total, batch_size, 1, items)
            .map(|part| {
                part.with_max_concurrency(limit)
                    .with_failure_budget(budget)
                    .with_callback_url(callback)
            })
            .map_err(|err| FieldError::part(err, "item_ids"))
    }
}

impl From<NewPart> for pb::AppendBatchItemsRequest {
    fn from(part: NewPart) -> Self {
        Self {
            batch_id: part.batch_id.as_str().to_owned(),
            total_items: part.total_items,
            batch_size: part.batch_size.get(),
            part_number: part.part_number,
            item_ids: part.items.into_iter().map(ItemId::into_string).collect(),
            max_concurrency: part.max_concurrency.unwrap_or(0),
            tolerated_failure_percentage: part
                .failure_budget
                .and_then(|budget| budget.percentage.map(u32::from)),
            tolerated_failure_count: part.failure_budget.and_then(|budget| budget.count),
            callback_url: part
                .callback_url
                .map(|url| url.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::AppendBatchItemsRequest> for NewPart {
    type Error = FieldError;

    fn try_from(request: pb::AppendBatchItemsRequest) -> Result<Self, FieldError> {
        let batch_id = batch_id(request.batch_id)?;
        let total_items = count(request.total_items, "total_items")?;
        let part_number = count(request.part_number, "part_number")?;
        let batch_size = batch_size(request.batch_size)?;
        let limit = max_concurrency(request.max_concurrency)?;
        let budget = failure_budget(
            request.tolerated_failure_percentage,
            request.tolerated_failure_count,
        )?;
        let callback = callback_url(request.callback_url)?;
        let items = parse_item_ids(request.item_ids).map_err(FieldError::item_ids)?;
        NewPart::new(batch_id, total_items, batch_size, part_number, items)
            .map(|part| {
                part.with_max_concurrency(limit)
                    .with_failure_budget(budget)
                    .with_callback_url(callback)
            })
            .map_err(|err| FieldError::part(err, "total_items"))
    }
}

/// `UpdateBatch`: the batch and its new limit (`None`: the deployment's default).
impl TryFrom<pb::UpdateBatchRequest> for (BatchId, Option<u32>) {
    type Error = FieldError;

    fn try_from(request: pb::UpdateBatchRequest) -> Result<Self, FieldError> {
        Ok((
            batch_id(request.batch_id)?,
            max_concurrency(request.max_concurrency)?,
        ))
    }
}

impl TryFrom<pb::SubmitRunRequestRequest> for RunRequest {
    type Error = FieldError;

    fn try_from(request: pb::SubmitRunRequestRequest) -> Result<Self, FieldError> {
        let refusal = |field: &str, err: RunRequestFieldError| {
            FieldError::new(field, FieldRule::RunRequest(err.rule))
        };
        run_request::check_name("process_name", &request.process_name)
            .map_err(|err| refusal("process_name", err))?;
        run_request::check_name("client_name", &request.client_name)
            .map_err(|err| refusal("client_name", err))?;
        let timestamp = run_request::check_timestamp(&request.timestamp)
            .map_err(|err| refusal("timestamp", err))?;
        Ok(RunRequest {
            process_name: request.process_name,
            client_name: request.client_name,
            timestamp: (!timestamp.is_empty()).then(|| timestamp.to_owned()),
        })
    }
}

/// The requests that name one batch and nothing else.
macro_rules! batch_id_request {
    ($($request:ty),+) => {$(
        impl From<&BatchId> for $request {
            fn from(batch_id: &BatchId) -> Self {
                Self { batch_id: batch_id.as_str().to_owned() }
            }
        }

        impl TryFrom<$request> for BatchId {
            type Error = FieldError;

            fn try_from(request: $request) -> Result<Self, FieldError> {
                batch_id(request.batch_id)
            }
        }
    )+};
}

batch_id_request!(
    pb::GetBatchStatusRequest,
    pb::CancelBatchRequest,
    pb::WatchBatchRequest,
    pb::PauseBatchRequest,
    pb::ResumeBatchRequest
);

impl TryFrom<pb::RedriveBatchRequest> for BatchId {
    type Error = FieldError;

    fn try_from(request: pb::RedriveBatchRequest) -> Result<Self, FieldError> {
        batch_id(request.batch_id)
    }
}

impl From<BatchQuery> for pb::ListBatchesRequest {
    fn from(query: BatchQuery) -> Self {
        Self {
            status: query
                .status
                .map_or(pb::BatchStatus::Unspecified, Into::into) as i32,
            page_size: query.page_size,
            page_token: query.page_token.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ListBatchesRequest> for BatchQuery {
    type Error = FieldError;

    fn try_from(request: pb::ListBatchesRequest) -> Result<Self, FieldError> {
        Ok(Self {
            status: batch_status_or_any(request.status)
                .map_err(|rule| FieldError::new("status", rule))?,
            page_size: page_size(request.page_size, DEFAULT_BATCH_PAGE, MAX_BATCH_PAGE)?,
            page_token: page_token(request.page_token),
        })
    }
}

impl From<ItemQuery> for pb::ListBatchItemsRequest {
    fn from(query: ItemQuery) -> Self {
        Self {
            batch_id: query.batch_id.as_str().to_owned(),
            status: query.status.map_or(pb::ItemStatus::Unspecified, Into::into) as i32,
            page_size: query.page_size,
            page_token: query.page_token.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ListBatchItemsRequest> for ItemQuery {
    type Error = FieldError;

    fn try_from(request: pb::ListBatchItemsRequest) -> Result<Self, FieldError> {
        Ok(Self {
            batch_id: batch_id(request.batch_id)?,
            status: item_status_or_any(request.status)
                .map_err(|rule| FieldError::new("status", rule))?,
            page_size: page_size(request.page_size, DEFAULT_ITEM_PAGE, MAX_ITEM_PAGE)?,
            page_token: page_token(request.page_token),
        })
    }
}

impl From<ItemQuery> for pb::ExportBatchItemsRequest {
    fn from(query: ItemQuery) -> Self {
        Self {
            batch_id: query.batch_id.as_str().to_owned(),
            status: query.status.map_or(pb::ItemStatus::Unspecified, Into::into) as i32,
        }
    }
}

/// An export reads the batch as listings do, a largest page at a time from the start.
impl TryFrom<pb::ExportBatchItemsRequest> for ItemQuery {
    type Error = FieldError;

    fn try_from(request: pb::ExportBatchItemsRequest) -> Result<Self, FieldError> {
        Ok(Self {
            batch_id: batch_id(request.batch_id)?,
            status: item_status_or_any(request.status)
                .map_err(|rule| FieldError::new("status", rule))?,
            page_size: MAX_ITEM_PAGE,
            page_token: None,
        })
    }
}

// ---- responses: domain to wire on the server, and wire to domain in the client ----

impl From<&Batch> for pb::Batch {
    fn from(batch: &Batch) -> Self {
        Self {
            batch_id: batch.batch_id.to_string(),
            status: pb::BatchStatus::from(batch.status) as i32,
            total_items: batch.total_items,
            succeeded_items: batch.succeeded_items,
            failed_items: batch.failed_items,
            pending_items: batch.pending_items(),
            cancelled_items: batch.cancelled_items,
            total_chunks: batch.total_chunks,
            completed_chunks: batch.completed_chunks,
            created_at: Some(batch.created_at.into()),
            updated_at: Some(batch.updated_at.into()),
            completed_at: batch.completed_at.map(Into::into),
            received_items: batch.received_items,
            batch_size: batch.batch_size,
            max_concurrency: batch.max_concurrency.unwrap_or(0),
            tolerated_failure_percentage: batch.failure_budget.percentage.map(u32::from),
            tolerated_failure_count: batch.failure_budget.count,
            failure_reason: batch.failure_reason.clone().unwrap_or_default(),
            redrive_count: batch.redrive_count,
            callback_url: batch
                .callback
                .url
                .as_ref()
                .map(|url| url.as_str().to_owned())
                .unwrap_or_default(),
            callback_status: pb::CallbackStatus::from(batch.callback.status) as i32,
            callback_attempts: batch.callback.attempts,
            callback_last_error: batch.callback.last_error.clone().unwrap_or_default(),
            items_per_second: batch.progress.items_per_second,
            eta_seconds: batch.progress.eta_seconds,
            top_errors: batch
                .progress
                .top_errors
                .iter()
                .map(|error| pb::ErrorCount {
                    message: error.message.clone(),
                    count: error.count,
                })
                .collect(),
        }
    }
}

impl From<CallbackStatus> for pb::CallbackStatus {
    fn from(status: CallbackStatus) -> Self {
        match status {
            CallbackStatus::None => Self::None,
            CallbackStatus::Pending => Self::Pending,
            CallbackStatus::Delivered => Self::Delivered,
            CallbackStatus::Failed => Self::Failed,
        }
    }
}

/// A batch's callback as a response carries it; an unknown status reads as NONE, since
/// older servers send none at all.
fn callback(batch: &pb::Batch) -> Result<Callback, FieldError> {
    let status = match pb::CallbackStatus::try_from(batch.callback_status) {
        Ok(pb::CallbackStatus::Pending) => CallbackStatus::Pending,
        Ok(pb::CallbackStatus::Delivered) => CallbackStatus::Delivered,
        Ok(pb::CallbackStatus::Failed) => CallbackStatus::Failed,
        Ok(pb::CallbackStatus::None | pb::CallbackStatus::Unspecified) | Err(_) => {
            CallbackStatus::None
        }
    };
    let url = match batch.callback_url.as_str() {
        "" => None,
        raw => Some(CallbackUrl::parse(raw).map_err(|rule| FieldError::new("callback_url", rule))?),
    };
    Ok(Callback {
        url,
        status,
        attempts: batch.callback_attempts,
        last_error: (!batch.callback_last_error.is_empty())
            .then(|| batch.callback_last_error.clone()),
    })
}

/// `pending_items` is not read: the domain derives it from the other counters.
impl TryFrom<pb::Batch> for Batch {
    type Error = FieldError;

    fn try_from(batch: pb::Batch) -> Result<Self, FieldError> {
        let callback = callback(&batch)?;
        Ok(Self {
            batch_id: batch_id(batch.batch_id)?,
            status: batch_status(batch.status)?,
            total_items: batch.total_items,
            received_items: batch.received_items,
            succeeded_items: batch.succeeded_items,
            failed_items: batch.failed_items,
            cancelled_items: batch.cancelled_items,
            total_chunks: batch.total_chunks,
            completed_chunks: batch.completed_chunks,
            batch_size: batch.batch_size,
            created_at: required_timestamp(batch.created_at, "created_at")?,
            updated_at: required_timestamp(batch.updated_at, "updated_at")?,
            completed_at: batch
                .completed_at
                .map(Timestamp::try_from)
                .transpose()
                .map_err(|rule| FieldError::new("completed_at", rule))?,
            max_concurrency: (batch.max_concurrency > 0).then_some(batch.max_concurrency),
            failure_budget: failure_budget(
                batch.tolerated_failure_percentage,
                batch.tolerated_failure_count,
            )?,
            failure_reason: (!batch.failure_reason.is_empty()).then_some(batch.failure_reason),
            redrive_count: batch.redrive_count,
            callback,
            progress: BatchProgress {
                items_per_second: batch.items_per_second,
                eta_seconds: batch.eta_seconds,
                top_errors: batch
                    .top_errors
                    .into_iter()
                    .map(|error| ErrorCount {
                        message: error.message,
                        count: error.count,
                    })
                    .collect(),
            },
        })
    }
}

/// The responses that carry one batch and nothing else.
macro_rules! batch_response {
    ($($response:ty),+) => {$(
        impl From<Batch> for $response {
            fn from(batch: Batch) -> Self {
                Self { batch: Some((&batch).into()) }
            }
        }

        impl TryFrom<$response> for Batch {
            type Error = FieldError;

            fn try_from(response: $response) -> Result<Self, FieldError> {
                let batch = response
                    .batch
                    .ok_or_else(|| FieldError::new("batch", FieldRule::Missing))?;
                Batch::try_from(batch).map_err(|err| err.within("batch"))
            }
        }
    )+};
}

batch_response!(
    pb::GetBatchStatusResponse,
    pb::CancelBatchResponse,
    pb::UpdateBatchResponse,
    pb::PauseBatchResponse,
    pb::ResumeBatchResponse,
    pb::WatchBatchResponse
);

/// `RedriveBatch`'s answer: the batch and how many items run again.
impl TryFrom<pb::RedriveBatchResponse> for (Batch, u64) {
    type Error = FieldError;

    fn try_from(response: pb::RedriveBatchResponse) -> Result<Self, FieldError> {
        let batch = response
            .batch
            .ok_or_else(|| FieldError::new("batch", FieldRule::Missing))?;
        let batch = Batch::try_from(batch).map_err(|err| err.within("batch"))?;
        Ok((batch, response.redriven_items))
    }
}

impl From<Accepted> for pb::SubmitBatchResponse {
    fn from(accepted: Accepted) -> Self {
        let batch = accepted.batch;
        Self {
            batch_id: batch.batch_id.to_string(),
            total_items: batch.total_items,
            total_chunks: batch.total_chunks,
            status: pb::BatchStatus::from(batch.status) as i32,
            created: accepted.created,
        }
    }
}

impl TryFrom<pb::SubmitBatchResponse> for Submitted {
    type Error = FieldError;

    fn try_from(response: pb::SubmitBatchResponse) -> Result<Self, FieldError> {
        Ok(Self {
            batch_id: batch_id(response.batch_id)?,
            total_items: response.total_items,
            total_chunks: response.total_chunks,
            status: batch_status(response.status)?,
            created: response.created,
        })
    }
}

impl From<Accepted> for pb::AppendBatchItemsResponse {
    fn from(accepted: Accepted) -> Self {
        let batch = accepted.batch;
        Self {
            batch_id: batch.batch_id.to_string(),
            total_items: batch.total_items,
            received_items: batch.received_items,
            total_chunks: batch.total_chunks,
            status: pb::BatchStatus::from(batch.status) as i32,
            created: accepted.created,
        }
    }
}

impl TryFrom<pb::AppendBatchItemsResponse> for Submitted {
    type Error = FieldError;

    fn try_from(response: pb::AppendBatchItemsResponse) -> Result<Self, FieldError> {
        Ok(Self {
            batch_id: batch_id(response.batch_id)?,
            total_items: response.total_items,
            total_chunks: response.total_chunks,
            status: batch_status(response.status)?,
            created: response.created,
        })
    }
}

impl From<Page<Batch>> for pb::ListBatchesResponse {
    fn from(page: Page<Batch>) -> Self {
        Self {
            batches: page.entries.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ListBatchesResponse> for Page<Batch> {
    type Error = FieldError;

    fn try_from(response: pb::ListBatchesResponse) -> Result<Self, FieldError> {
        let entries = response
            .batches
            .into_iter()
            .enumerate()
            .map(|(index, batch)| {
                Batch::try_from(batch).map_err(|err| err.within(&format!("batches[{index}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entries,
            next_page_token: page_token(response.next_page_token),
        })
    }
}

/// An item's `error` is empty unless it failed: "none" in the domain.
impl From<ItemRecord> for pb::Item {
    fn from(record: ItemRecord) -> Self {
        Self {
            item_id: record.item_id.into_string(),
            status: pb::ItemStatus::from(record.status) as i32,
            error: record.error.unwrap_or_default(),
            attempts: record.attempts,
            chunk: record.chunk,
        }
    }
}

impl TryFrom<pb::Item> for ItemRecord {
    type Error = FieldError;

    fn try_from(item: pb::Item) -> Result<Self, FieldError> {
        Ok(Self {
            item_id: ItemId::parse(item.item_id)
                .map_err(|rule| FieldError::new("item_id", rule))?,
            status: item_status(item.status)?,
            error: (!item.error.is_empty()).then_some(item.error),
            attempts: item.attempts,
            chunk: item.chunk,
        })
    }
}

impl From<Page<ItemRecord>> for pb::ListBatchItemsResponse {
    fn from(page: Page<ItemRecord>) -> Self {
        Self {
            items: page.entries.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ListBatchItemsResponse> for Page<ItemRecord> {
    type Error = FieldError;

    fn try_from(response: pb::ListBatchItemsResponse) -> Result<Self, FieldError> {
        let entries = response
            .items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                ItemRecord::try_from(item).map_err(|err| err.within(&format!("items[{index}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entries,
            next_page_token: page_token(response.next_page_token),
        })
    }
}

impl From<Vec<ItemRecord>> for pb::ExportBatchItemsResponse {
    fn from(items: Vec<ItemRecord>) -> Self {
        Self {
            items: items.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::ExportBatchItemsResponse> for Vec<ItemRecord> {
    type Error = FieldError;

    fn try_from(response: pb::ExportBatchItemsResponse) -> Result<Self, FieldError> {
        response
            .items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                ItemRecord::try_from(item).map_err(|err| err.within(&format!("items[{index}]")))
            })
            .collect()
    }
}

mod items_uri;
#[cfg(test)]
mod tests;

pub(crate) use self::items_uri::Submission;
