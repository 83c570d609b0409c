//! The `init` role's other event sources: the request table's DynamoDB stream, which starts
//! chunk executions off the request path, and a schedule that repairs lost starts.
//!
//! A request only stores its part. The part's last write (its `chunksWritten` mark) reaches
//! the stream; so does every chunk's recording and every change of a batch's limit. For each
//! batch named by a batch of records, [`ChunkStarter::fill`] starts chunks while the batch has
//! free slots (`store::dynamo` keeps the slots; see its `starts` module):
//! - a part written: its chunks become startable, and start within the batch's limit;
//! - a chunk recorded: its slot freed in the same write, so the next pending chunk starts;
//! - a limit changed: a raise starts more at once.
//!
//! Every step is safe to repeat, as at-least-once delivery requires: marking chunks startable
//! is idempotent, a claim takes only free slots, and starting a chunk twice is a no-op on
//! Standard workflows (deterministic names) and an idempotent repeat on Express ones. A batch
//! whose handling fails is reported in `batchItemFailures` with its first record, so Lambda
//! retries from there (the mapping bisects and, in the end, sends the records to its on-failure
//! destination).
//!
//! A function that dies between claiming slots and starting their chunks leaves the claim
//! unconfirmed; the schedule ([`ChunkStarter::sweep`], every minute in the stack) fills every
//! unfinished batch, which starts such a claim's chunks again once it is older than
//! `START_CLAIM_TIMEOUT_SECONDS` (`store::dynamo::STALE_CLAIM` by default), so a lost start is repaired
//! within about two minutes.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::callbacks::Deliverer;
use crate::domain::BatchId;
use crate::engine::stepfunctions::StepFunctionsOrchestrator;
use crate::pipeline::OrchestratorError;
use crate::store::dynamo::DynamoStore;
use crate::store::{DeliveryKey, StoreError};

/// Chunks one claim takes at most: their starts end far inside a claim's timeout.
const CLAIM_MOST: u64 = 500;
/// Claims one fill makes at most, so that one busy batch cannot hold an invocation for long.
const CLAIMS_PER_FILL: usize = 40;

/// Why a batch's chunks could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
}

/// Starts chunk executions within each batch's slots.
pub(crate) struct ChunkStarter {
    store: DynamoStore,
    orchestrator: StepFunctionsOrchestrator,
    /// The limit of a batch that names none (`DEFAULT_MAX_CONCURRENCY`).
    default_limit: u32,
    /// How long a claim may stay unconfirmed before its chunks are started again.
    stale_after: Duration,
    /// Delivers completion callbacks from the outbox records the stream brings.
    deliverer: Option<Deliverer>,
}

/// What one record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// A part's chunks `first..end` are written.
    PartWritten { first: u64, end: u64 },
    /// A chunk was recorded (its slot freed), or the batch's limit changed.
    RoomMayHaveChanged,
    /// An outbox record was written: deliver it.
    Deliver(DeliveryKey),
}

/// A stream record, as far as this module reads it.
#[derive(Debug, Deserialize)]
struct StreamRecord {
    #[serde(rename = "eventSource", default)]
    event_source: String,
    dynamodb: Option<StreamChange>,
}

#[derive(Debug, Deserialize)]
struct StreamChange {
    #[serde(rename = "SequenceNumber", default)]
    sequence_number: String,
    #[serde(rename = "Keys", default)]
    keys: HashMap<String, Value>,
    #[serde(rename = "NewImage", default)]
    new_image: HashMap<String, Value>,
}

/// A batch of stream records, as Lambda delivers them.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamEvent {
    #[serde(rename = "Records")]
    records: Vec<StreamRecord>,
}

fn string_attribute<'a>(attributes: &'a HashMap<String, Value>, name: &str) -> Option<&'a str> {
    attributes.get(name)?.get("S")?.as_str()
}

fn number_attribute(attributes: &HashMap<String, Value>, name: &str) -> Option<u64> {
    attributes.get(name)?.get("N")?.as_str()?.parse().ok()
}

fn bool_attribute(attributes: &HashMap<String, Value>, name: &str) -> bool {
    attributes
        .get(name)
        .and_then(|value| value.get("BOOL"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The batch a record concerns and what it asks for, if anything.
fn classify(change: &StreamChange) -> Option<(BatchId, Change)> {
    let batch_id = BatchId::parse(string_attribute(&change.keys, "batchId")?).ok()?;
    let sk = string_attribute(&change.keys, "sk")?;
    let image = &change.new_image;
    let is_numbered = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = sk.strip_prefix("part#") {
        if !is_numbered(rest) || !bool_attribute(image, "chunksWritten") {
            return None;
        }
        let first = number_attribute(image, "firstChunk")?;
        let count = number_attribute(image, "chunkCount")?;
        return Some((
            batch_id,
            Change::PartWritten {
                first,
                end: first + count,
            },
        ));
    }
    if let Some(rest) = sk.strip_prefix("chunk#") {
        return (is_numbered(rest) && string_attribute(image, "stage") == Some("RECORDED"))
            .then_some((batch_id, Change::RoomMayHaveChanged));
    }
    if sk.starts_with(crate::store::dynamo::OUTBOX_PREFIX) {
        // Only the record's insert: later writes are the delivery's own.
        if number_attribute(image, "attempts") != Some(0) {
            return None;
        }
        let key = crate::store::dynamo::delivery_key(batch_id.clone(), sk)?;
        return Some((batch_id, Change::Deliver(key)));
    }
    (sk == crate::store::dynamo::LIMIT_CHANGED_SK).then_some((batch_id, Change::RoomMayHaveChanged))
}

/// Which of `init`'s event sources an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventSource {
    /// A batch of DynamoDB stream records.
    Stream,
    /// The repair schedule (an EventBridge scheduled event).
    Schedule,
    /// Anything else: an API Gateway request.
    Api,
}

/// The few top-level fields that tell the sources apart; the rest of the event (an API
/// Gateway request's body, up to 6 MB) is skipped, not built.
#[derive(Deserialize)]
struct SourceFields {
    #[serde(rename = "Records", default)]
    records: Vec<RecordSource>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Deserialize)]
struct RecordSource {
    #[serde(rename = "eventSource", default)]
    event_source: String,
}

/// The source of a raw event (API Gateway when it cannot tell).
pub(crate) fn event_source(raw: &str) -> EventSource {
    let Ok(fields) = serde_json::from_str::<SourceFields>(raw) else {
        return EventSource::Api;
    };
    if fields
        .records
        .first()
        .is_some_and(|record| record.event_source == "aws:dynamodb")
    {
        EventSource::Stream
    } else if fields.source.as_deref() == Some("aws.events") {
        EventSource::Schedule
    } else {
        EventSource::Api
    }
}

impl ChunkStarter {
    pub(crate) fn new(
        store: DynamoStore,
        orchestrator: StepFunctionsOrchestrator,
        default_limit: u32,
        stale_after: Duration,
    ) -> Self {
        Self {
            store,
            orchestrator,
            default_limit,
            stale_after,
            deliverer: None,
        }
    }

    /// This starter, also delivering completion callbacks.
    pub(crate) fn with_deliverer(mut self, deliverer: Deliverer) -> Self {
        self.deliverer = Some(deliverer);
        self
    }

    /// Starts the batch's chunks while it has free slots; how many it started.
    pub(crate) async fn fill(&self, batch_id: &BatchId) -> Result<u64, StartError> {
        let mut started = 0;
        for _ in 0..CLAIMS_PER_FILL {
            let Some(claim) = self
                .store
                .claim_starts(batch_id, self.default_limit, CLAIM_MOST, self.stale_after)
                .await?
            else {
                break;
            };
            if claim.taken_over {
                tracing::warn!(
                    batch_id = %batch_id,
                    first = claim.first,
                    end = claim.end,
                    "starting the chunks of a claim its claimer never confirmed"
                );
            }
            let chunks = self.store.claimed_chunks(batch_id, &claim).await?;
            self.orchestrator
                .start_run_chunks(batch_id, &chunks, claim.run)
                .await?;
            self.store.confirm_starts(batch_id, &claim).await?;
            started += claim.end - claim.first;
        }
        Ok(started)
    }

    /// Handles a batch of stream records; the answer names the first record of each batch
    /// whose handling failed (`batchItemFailures`), for Lambda to retry from.
    pub(crate) async fn handle_stream(&self, event: StreamEvent) -> Value {
        let mut batches: Vec<(BatchId, String, Vec<Change>)> = Vec::new();
        let mut deliveries = Vec::new();
        for record in event.records {
            if record.event_source != "aws:dynamodb" {
                continue;
            }
            let Some(change) = record.dynamodb else {
                continue;
            };
            let Some((batch_id, what)) = classify(&change) else {
                continue;
            };
            if let Change::Deliver(key) = what {
                deliveries.push((key, change.sequence_number));
                continue;
            }
            match batches.iter_mut().find(|(id, ..)| *id == batch_id) {
                Some((_, _, changes)) => changes.push(what),
                None => batches.push((batch_id, change.sequence_number, vec![what])),
            }
        }
        let mut failures = self.deliver(deliveries).await;
        for (batch_id, first_sequence, changes) in batches {
            if let Err(err) = self.apply(&batch_id, &changes).await {
                tracing::error!(batch_id = %batch_id, error = %err, "starting chunks failed; the stream retries");
                failures.push(json!({ "itemIdentifier": first_sequence }));
            }
        }
        json!({ "batchItemFailures": failures })
    }

    /// Attempts the outbox records the stream brought, all at once, so that slow receivers
    /// add up to one attempt's time, not one per record; the failures to report.
    async fn deliver(&self, deliveries: Vec<(DeliveryKey, String)>) -> Vec<Value> {
        let Some(deliverer) = &self.deliverer else {
            return Vec::new();
        };
        let attempts = deliveries.into_iter().map(|(key, sequence)| async move {
            match deliverer.attempt_key(&key).await {
                Ok(()) => None,
                Err(err) => {
                    tracing::error!(batch_id = %key.batch_id, error = %err, "a completion callback could not be recorded; the stream retries");
                    Some(json!({ "itemIdentifier": sequence }))
                }
            }
        });
        futures::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn apply(&self, batch_id: &BatchId, changes: &[Change]) -> Result<(), StartError> {
        for change in changes {
            if let Change::PartWritten { first, end } = change {
                self.store.mark_startable(batch_id, *first, *end).await?;
            }
        }
        let started = self.fill(batch_id).await?;
        if started > 0 {
            tracing::info!(batch_id = %batch_id, started, "started chunk executions");
        }
        Ok(())
    }

    /// Fills every unfinished batch: makes startable the parts whose stream records were lost,
    /// repairs starts lost between a claim and its starts, and any start a failed stream
    /// delivery left undone. Returns a summary for the logs.
    pub(crate) async fn sweep(&self) -> Result<Value, StartError> {
        let batches = self.store.unfinished_batches().await?;
        let mut started = 0;
        let mut failed = 0;
        for batch_id in &batches {
            let repaired = self.store.repair_startable(batch_id).await;
            match repaired {
                Ok(0) => {}
                Ok(parts) => {
                    tracing::warn!(batch_id = %batch_id, parts, "made startable parts whose stream records were lost")
                }
                Err(err) => {
                    tracing::error!(batch_id = %batch_id, error = %err, "the sweep could not check the batch's parts")
                }
            }
            match self.store.finish_stop(batch_id, self.stale_after).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(batch_id = %batch_id, "finished a stop its requester left undone")
                }
                Err(err) => {
                    tracing::error!(batch_id = %batch_id, error = %err, "the sweep could not finish a stop")
                }
            }
            match self.fill(batch_id).await {
                Ok(count) => started += count,
                Err(err) => {
                    failed += 1;
                    tracing::error!(batch_id = %batch_id, error = %err, "the sweep could not start chunks");
                }
            }
        }
        if started > 0 {
            tracing::warn!(started, "the sweep started chunks the stream had not");
        }
        let callbacks_due = match &self.deliverer {
            Some(deliverer) => match deliverer.deliver_due().await {
                Ok(due) => due,
                Err(err) => {
                    tracing::error!(error = %err, "the sweep could not deliver due callbacks");
                    0
                }
            },
            None => 0,
        };
        Ok(json!({
            "callbacksDue": callbacks_due,
            "batches": batches.len(),
            "started": started,
            "failed": failed,
            "claimTimeoutSeconds": self.stale_after.as_secs(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(sk: &str, image: Value) -> StreamChange {
        serde_json::from_value(json!({
            "SequenceNumber": "1",
            "Keys": {"batchId": {"S": "b"}, "sk": {"S": sk}},
            "NewImage": image,
        }))
        .unwrap()
    }

    #[test]
    fn records_are_read_for_what_they_ask() {
        let batch = BatchId::parse("b").unwrap();
        let written = change(
            "part#00000000000000000002",
            json!({"chunksWritten": {"BOOL": true}, "firstChunk": {"N": "10"}, "chunkCount": {"N": "5"}}),
        );
        assert_eq!(
            classify(&written),
            Some((batch.clone(), Change::PartWritten { first: 10, end: 15 }))
        );
        let reserved = change(
            "part#00000000000000000002",
            json!({"chunksWritten": {"BOOL": false}, "firstChunk": {"N": "10"}, "chunkCount": {"N": "5"}}),
        );
        assert_eq!(classify(&reserved), None);
        let hashes = change("part#00000000000000000002#hashes#000", json!({}));
        assert_eq!(classify(&hashes), None);
        let recorded = change(
            "chunk#00000000000000000003",
            json!({"stage": {"S": "RECORDED"}}),
        );
        assert_eq!(
            classify(&recorded),
            Some((batch.clone(), Change::RoomMayHaveChanged))
        );
        let started = change(
            "chunk#00000000000000000003",
            json!({"stage": {"S": "STARTED"}}),
        );
        assert_eq!(classify(&started), None);
        let ids = change("chunk#00000000000000000003#ids", json!({}));
        assert_eq!(classify(&ids), None);
        let limit = change("limitChanged", json!({}));
        assert_eq!(classify(&limit), Some((batch, Change::RoomMayHaveChanged)));
    }

    #[test]
    fn events_are_told_apart() {
        let source = |event: Value| event_source(&event.to_string());
        assert_eq!(
            source(json!({"Records": [{"eventSource": "aws:dynamodb"}]})),
            EventSource::Stream
        );
        assert_eq!(
            source(json!({"Records": [{"eventSource": "aws:s3"}]})),
            EventSource::Api
        );
        assert_eq!(
            source(json!({"source": "aws.events", "detail-type": "Scheduled Event"})),
            EventSource::Schedule
        );
        assert_eq!(
            source(json!({"httpMethod": "POST", "body": "{\"Records\": []}"})),
            EventSource::Api
        );
    }
}
