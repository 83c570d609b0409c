//! Every DynamoDB attribute name, index name and sort-key shape the store uses, and the
//! conversions between attribute values and Rust values. No other file names an attribute.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::domain::BatchId;
use crate::store::StoreError;

/// One DynamoDB item.
pub(super) type Item = HashMap<String, AttributeValue>;

// Keys: `batchId` in both tables, plus `sk` in the request table.
pub(super) const BATCH_ID: &str = "batchId";
pub(super) const SK: &str = "sk";

// Batch table: one item per batch.
pub(super) const STATUS: &str = "status";
pub(super) const TOTAL_ITEMS: &str = "totalItems";
pub(super) const RECEIVED_ITEMS: &str = "receivedItems";
pub(super) const SUCCEEDED_ITEMS: &str = "succeededItems";
pub(super) const FAILED_ITEMS: &str = "failedItems";
pub(super) const CANCELLED_ITEMS: &str = "cancelledItems";
pub(super) const TOTAL_CHUNKS: &str = "totalChunks";
pub(super) const COMPLETED_CHUNKS: &str = "completedChunks";
pub(super) const BATCH_SIZE: &str = "batchSize";
pub(super) const CANCEL_REQUESTED: &str = "cancelRequested";
pub(super) const CREATED_AT: &str = "createdAt";
pub(super) const UPDATED_AT: &str = "updatedAt";
pub(super) const COMPLETED_AT: &str = "completedAt";
/// The batch's limit on chunk executions in flight; absent for the deployment's default.
pub(super) const MAX_CONCURRENCY: &str = "maxConcurrency";
/// The failure budget's two limits (absent when unset).
pub(super) const TOLERATED_PERCENTAGE: &str = "toleratedFailurePercentage";
pub(super) const TOLERATED_COUNT: &str = "toleratedFailureCount";
/// Why the batch ended FAILED early.
pub(super) const FAILURE_REASON: &str = "failureReason";
/// Why the batch stopped starting chunks in its current run (`CANCEL` or `BUDGET`).
pub(super) const STOPPED_BY: &str = "stoppedBy";
/// When the current run's stop was requested.
pub(super) const STOPPED_AT: &str = "stoppedAt";
/// Set once a stop has cancelled every chunk no task started.
pub(super) const STOP_SWEPT: &str = "stopSwept";
/// Times the batch was redriven.
pub(super) const REDRIVE_COUNT: &str = "redriveCount";
/// Whether the last redrive re-ran cancelled items too.
pub(super) const REDRIVE_INCLUDES_CANCELLED: &str = "redriveIncludesCancelled";
/// The start position of the last redrive's first chunk (see `starts`).
pub(super) const REDRIVE_FIRST_POSITION: &str = "redriveFirstPosition";
/// The batch's callback URL; absent when it has none.
pub(super) const CALLBACK_URL: &str = "callbackUrl";
/// The delivery of the batch's last terminal transition: status, attempts, last error.
pub(super) const CALLBACK_STATUS: &str = "callbackStatus";
pub(super) const CALLBACK_ATTEMPTS: &str = "callbackAttempts";
pub(super) const CALLBACK_LAST_ERROR: &str = "callbackLastError";
/// The batch's rate window (see `store::progress`): when it began, the batch's terminal items
/// then, the previous window's items per second, and when its newest chunk was counted.
pub(super) const WINDOW_STARTED_AT: &str = "windowStartedAt";
pub(super) const WINDOW_TERMINAL: &str = "windowTerminal";
pub(super) const PREVIOUS_RATE: &str = "previousRate";
pub(super) const LAST_RECORDED_AT: &str = "lastRecordedAt";
/// Sort key of both listing indexes: creation time, then batch ID.
pub(super) const CREATED_KEY: &str = "createdKey";
/// Partition key of `by-created`: the same value on every batch.
pub(super) const LIST_PARTITION: &str = "listPartition";
pub(super) const LIST_PARTITION_VALUE: &str = "batches";
/// Keys-only index on (`status`, `createdKey`).
pub(super) const BY_STATUS_INDEX: &str = "by-status";
/// Keys-only index on (`listPartition`, `createdKey`).
pub(super) const BY_CREATED_INDEX: &str = "by-created";

// Request table, `part#<n>` items.
pub(super) const DIGEST: &str = "digest";
pub(super) const FIRST_CHUNK: &str = "firstChunk";
pub(super) const CHUNK_COUNT: &str = "chunkCount";
pub(super) const CHUNKS_WRITTEN: &str = "chunksWritten";
// `part#<n>#hashes#<k>` items.
pub(super) const HASHES: &str = "hashes";
// `chunk#<n>` items (also `itemCount` on parts).
pub(super) const ITEM_COUNT: &str = "itemCount";
pub(super) const STAGE: &str = "stage";
pub(super) const STATES: &str = "states";
pub(super) const ERRORS: &str = "errors";
pub(super) const FAILED_COUNT: &str = "failedCount";
pub(super) const ATTEMPTS: &str = "attempts";
pub(super) const VERSION: &str = "version";
/// The redrive whose run a chunk state belongs to (absent: the first run).
pub(super) const RUN: &str = "run";
/// Task attempts of a chunk's runs before its last redrive.
pub(super) const ATTEMPT_BASE: &str = "attemptBase";
// `redrive#<run>#<page>` items: the chunks a redrive re-runs, in start order.
pub(super) const CHUNKS: &str = "chunks";
// `chunk#<n>#ids` items.
pub(super) const ITEM_IDS: &str = "itemIds";

// The `errorCounts` item: a batch's failure counts, one attribute per message kept.
pub(super) const ERROR_COUNTS_SK: &str = "errorCounts";
/// The prefix of a kept message's count attribute: `e#<key of the message>`.
pub(super) const ERROR_PREFIX: &str = "e#";
/// The sort-key prefix of a kept message's text item: `errorMessage#<key of the message>`.
pub(super) const ERROR_MESSAGE_PREFIX: &str = "errorMessage#";
/// A kept message's text.
pub(super) const ERROR_MESSAGE: &str = "message";
/// How many messages the item keeps.
pub(super) const DISTINCT_ERRORS: &str = "distinctErrors";
/// Failures whose message is not kept.
pub(super) const OTHER_ERRORS: &str = "otherErrors";

/// The sort-key prefix of parts and their hashes.
pub(super) const PART_PREFIX: &str = "part#";
/// A sort key past every chunk key.
pub(super) const AFTER_CHUNKS: &str = "chunk#~";

/// The `createdKey` of a batch: creation time (fixed width, so keys sort by time), then its ID.
pub(super) fn created_key(created_at: i64, batch_id: &BatchId) -> String {
    format!("{created_at:020}#{batch_id}")
}

pub(super) fn part_sk(part: u64) -> String {
    format!("part#{part:020}")
}

pub(super) fn hashes_sk(part: u64, segment: usize) -> String {
    format!("part#{part:020}#hashes#{segment:03}")
}

pub(super) fn chunk_sk(chunk: u64) -> String {
    format!("chunk#{chunk:020}")
}

// `outbox#<completedAt>` items: one per terminal transition to deliver.
/// The batch as the transition left it (the outbox snapshot's JSON).
pub(super) const SNAPSHOT: &str = "snapshot";
pub(super) const DELIVERY_STATUS: &str = "deliveryStatus";
pub(super) const LAST_ERROR: &str = "lastError";
pub(super) const EVENT_SENT: &str = "eventSent";
/// When the record is next due; with [`DUE_PARTITION`], only on pending records, so the
/// `by-due` index (keys only) lists exactly the records still to deliver.
pub(super) const DUE_AT: &str = "dueAt";
pub(super) const DUE_PARTITION: &str = "duePartition";
pub(super) const DUE_PARTITION_VALUE: &str = "due";
/// Keys-only index of the request table on (`duePartition`, `dueAt`).
pub(super) const BY_DUE_INDEX: &str = "by-due";

/// The sort-key prefix of outbox records.
pub const OUTBOX_PREFIX: &str = "outbox#";

pub(super) fn outbox_sk(completed_at: i64) -> String {
    format!("{OUTBOX_PREFIX}{completed_at:020}")
}

/// The sort-key prefix of chunks' job records.
pub(super) const JOB_PREFIX: &str = "job#";
/// The sort key of a batch's job settings.
pub(super) const JOB_SETTINGS_SK: &str = "jobSettings";
/// A job record or job settings document (JSON the pipeline owns).
pub(super) const RECORD: &str = "record";
/// A job record's revision.
pub(super) const REVISION: &str = "revision";

pub(super) fn job_sk(chunk: u64) -> String {
    format!("{JOB_PREFIX}{chunk:020}")
}

/// The sort key of a page of a redrive's chunks.
pub(super) fn redrive_sk(run: u32, page: u64) -> String {
    format!("redrive#{run:04}#{page:08}")
}

pub(super) fn ids_sk(chunk: u64) -> String {
    format!("chunk#{chunk:020}#ids")
}

/// What a request-table sort key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKey {
    /// `part#<n>`
    Part(u64),
    /// `part#<n>#hashes#<k>`
    PartHashes(u64),
    /// `chunk#<n>`
    ChunkState(u64),
    /// `chunk#<n>#ids`
    ChunkIds(u64),
}

impl RequestKey {
    fn parse(sk: &str) -> Option<Self> {
        if let Some(rest) = sk.strip_prefix("part#") {
            return match rest.split_once('#') {
                None => Some(Self::Part(rest.parse().ok()?)),
                Some((number, segment)) if segment.starts_with("hashes#") => {
                    Some(Self::PartHashes(number.parse().ok()?))
                }
                Some(_) => None,
            };
        }
        let rest = sk.strip_prefix("chunk#")?;
        match rest.split_once('#') {
            None => Some(Self::ChunkState(rest.parse().ok()?)),
            Some((index, "ids")) => Some(Self::ChunkIds(index.parse().ok()?)),
            Some(_) => None,
        }
    }
}

/// A batch-table key.
pub(super) fn batch_key(batch_id: &BatchId) -> Item {
    HashMap::from([(BATCH_ID.to_owned(), s(batch_id.as_str()))])
}

/// A request-table key.
pub(super) fn request_key(batch_id: &BatchId, sk: String) -> Item {
    HashMap::from([
        (BATCH_ID.to_owned(), s(batch_id.as_str())),
        (SK.to_owned(), s(sk)),
    ])
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored item has no valid {what}"))
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn flag_value(value: bool) -> AttributeValue {
    AttributeValue::Bool(value)
}

pub(super) fn blob(bytes: &[u8]) -> AttributeValue {
    AttributeValue::B(Blob::new(bytes))
}

pub(super) fn text<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn optional_text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

pub(super) fn number<T: FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn optional_number<T: FromStr>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => number(item, name).map(Some),
    }
}

pub(super) fn flag(item: &Item, name: &str) -> bool {
    matches!(item.get(name), Some(AttributeValue::Bool(true)))
}

pub(super) fn bytes<'a>(item: &'a Item, name: &str) -> Result<&'a [u8], StoreError> {
    match item.get(name) {
        Some(AttributeValue::B(value)) => Ok(value.as_ref()),
        _ => Err(corrupt(name)),
    }
}

/// The sort key of a request-table item, parsed.
pub(super) fn request_key_of(item: &Item) -> Result<Option<RequestKey>, StoreError> {
    Ok(RequestKey::parse(text(item, SK)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_parse_back_to_what_they_name() {
        assert_eq!(RequestKey::parse(&part_sk(7)), Some(RequestKey::Part(7)));
        assert_eq!(
            RequestKey::parse(&hashes_sk(7, 2)),
            Some(RequestKey::PartHashes(7))
        );
        assert_eq!(
            RequestKey::parse(&chunk_sk(u64::MAX)),
            Some(RequestKey::ChunkState(u64::MAX))
        );
        assert_eq!(RequestKey::parse(&ids_sk(3)), Some(RequestKey::ChunkIds(3)));
        assert_eq!(RequestKey::parse("chunk#1#other"), None);
        assert_eq!(RequestKey::parse("other"), None);
    }

    #[test]
    fn chunk_keys_sort_state_then_ids_then_the_next_chunk() {
        let mut keys = vec![chunk_sk(2), ids_sk(1), chunk_sk(10), chunk_sk(1), ids_sk(2)];
        keys.sort();
        assert_eq!(
            keys,
            vec![chunk_sk(1), ids_sk(1), chunk_sk(2), ids_sk(2), chunk_sk(10)]
        );
        assert!(chunk_sk(u64::MAX).as_str() < AFTER_CHUNKS);
        assert!(hashes_sk(1, 0) > part_sk(1) && hashes_sk(1, 0) < part_sk(2));
    }

    #[test]
    fn attribute_values_convert_both_ways() {
        let item: Item = HashMap::from([
            ("t".to_owned(), s("x")),
            ("n".to_owned(), n(42)),
            ("f".to_owned(), flag_value(true)),
            ("b".to_owned(), blob(&[1, 2])),
            ("null".to_owned(), AttributeValue::Null(true)),
        ]);
        assert_eq!(text(&item, "t").unwrap(), "x");
        assert_eq!(number::<u64>(&item, "n").unwrap(), 42);
        assert_eq!(optional_number::<u64>(&item, "null").unwrap(), None);
        assert_eq!(optional_number::<u64>(&item, "missing").unwrap(), None);
        assert!(flag(&item, "f") && !flag(&item, "missing"));
        assert_eq!(bytes(&item, "b").unwrap(), &[1, 2]);
        assert!(matches!(
            number::<u64>(&item, "t"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(text(&item, "n"), Err(StoreError::Corrupt(_))));
        assert_eq!(optional_text(&item, "missing"), None);
    }
}
