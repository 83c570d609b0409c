//! The domain: batch and item identifiers, batch parts, statuses and outcomes.
//! Values are parsed once at the edge and trusted everywhere after; nothing here does I/O.

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest batch or item ID, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most items one request may carry (gRPC `SubmitBatch`/`AppendBatchItems`, HTTP POST).
pub const MAX_ITEMS_PER_REQUEST: usize = 100_000;
/// Largest chunk.
pub const MAX_BATCH_SIZE: u32 = 1000;
/// Chunk size when the client names none.
pub const DEFAULT_BATCH_SIZE: u32 = 100;

/// Input that breaks a rule: names the field and the rule, so a client can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct InvalidInput {
    pub field: String,
    pub rule: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

fn check_id(field: &str, raw: &str) -> Result<(), InvalidInput> {
    if raw.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(InvalidInput::new(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A batch's ID: 1 to 256 bytes, no control characters. The idempotency key of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(String);

impl BatchId {
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidInput> {
        let raw = raw.into();
        check_id("batch_id", &raw)?;
        Ok(Self(raw))
    }

    /// A fresh random UUID, for submissions that name no ID.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An item's ID: 1 to 256 bytes, no control characters (so a newline can separate IDs in storage).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(String);

impl ItemId {
    /// Parses one ID; `field` names it in the error (e.g. `item_ids[3]`).
    pub fn parse(raw: impl Into<String>, field: &str) -> Result<Self, InvalidInput> {
        let raw = raw.into();
        check_id(field, &raw)?;
        Ok(Self(raw))
    }

    /// Wraps an ID read back from the store, which only holds IDs that were parsed on the way in.
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Items per chunk: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSize(u32);

impl BatchSize {
    /// Parses a chunk size; `0` (protobuf's unset) takes the default.
    pub fn parse_or_default(raw: u64, field: &str) -> Result<Self, InvalidInput> {
        if raw == 0 {
            return Ok(Self(DEFAULT_BATCH_SIZE));
        }
        Self::parse(raw, field)
    }

    pub fn parse(raw: u64, field: &str) -> Result<Self, InvalidInput> {
        if raw == 0 || raw > u64::from(MAX_BATCH_SIZE) {
            return Err(InvalidInput::new(
                field,
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        Ok(Self(raw as u32))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for BatchSize {
    fn default() -> Self {
        Self(DEFAULT_BATCH_SIZE)
    }
}

/// Parses a request's item IDs: 1 to [`MAX_ITEMS_PER_REQUEST`], each valid, no duplicates.
pub fn parse_item_ids(raw: Vec<String>, field: &str) -> Result<Vec<ItemId>, InvalidInput> {
    if raw.is_empty() {
        return Err(InvalidInput::new(field, "must hold at least one item ID"));
    }
    if raw.len() > MAX_ITEMS_PER_REQUEST {
        return Err(InvalidInput::new(
            field,
            format!(
                "must hold at most {MAX_ITEMS_PER_REQUEST} item IDs per request (got {}); send larger batches in parts",
                raw.len()
            ),
        ));
    }
    // The field is named only when an ID is refused: naming it for each of 100,000 IDs, and
    // copying each into the set, cost more than checking them.
    let mut seen = std::collections::HashSet::with_capacity(raw.len());
    for (index, id) in raw.iter().enumerate() {
        let at = || format!("{field}[{index}]");
        check_id("", id).map_err(|err| InvalidInput::new(at(), err.rule))?;
        if !seen.insert(id.as_str()) {
            return Err(InvalidInput::new(at(), format!("duplicate item ID {id:?}")));
        }
    }
    Ok(raw.into_iter().map(ItemId).collect())
}

/// One part of a batch: the whole batch for `SubmitBatch`, one POST of the seed protocol, one `AppendBatchItems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPart {
    pub batch_id: BatchId,
    /// Items the whole batch will hold.
    pub total_items: u64,
    pub batch_size: BatchSize,
    /// From 1; a part is stored once.
    pub part_number: u64,
    pub items: Vec<ItemId>,
}

impl NewPart {
    /// Builds a part, checking what can be checked without the store: the total covers this part's items.
    pub fn new(
        batch_id: BatchId,
        total_items: u64,
        batch_size: BatchSize,
        part_number: u64,
        items: Vec<ItemId>,
        total_field: &str,
        part_field: &str,
    ) -> Result<Self, InvalidInput> {
        if part_number == 0 {
            return Err(InvalidInput::new(part_field, "must be a positive integer"));
        }
        if total_items < items.len() as u64 {
            return Err(InvalidInput::new(
                total_field,
                format!(
                    "must be at least the number of items sent ({})",
                    items.len()
                ),
            ));
        }
        Ok(Self {
            batch_id,
            total_items,
            batch_size,
            part_number,
            items,
        })
    }

    /// A fingerprint of the part's items, in order: what makes a resubmission "the same".
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for item in &self.items {
            hasher.update(item.as_str().as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }

    /// The part's items split into chunks of `batch_size`.
    pub fn chunks(&self) -> impl Iterator<Item = &[ItemId]> {
        self.items.chunks(self.batch_size.get() as usize)
    }

    pub fn chunk_count(&self) -> u64 {
        self.items.len().div_ceil(self.batch_size.get() as usize) as u64
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    Pending,
    Running,
    Completed,
    CompletedWithFailures,
    Failed,
    Cancelled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::CompletedWithFailures,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// The stable name used in storage, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::CompletedWithFailures => "COMPLETED_WITH_FAILURES",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }

    /// The terminal status of a batch whose every item is terminal.
    pub fn settled(cancel_requested: bool, succeeded: u64, failed: u64) -> Self {
        if cancel_requested {
            Self::Cancelled
        } else if failed == 0 {
            Self::Completed
        } else if succeeded == 0 {
            Self::Failed
        } else {
            Self::CompletedWithFailures
        }
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An item's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for ItemStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a task decided for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Succeeded,
    Failed(String),
}

/// A point in time, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let elapsed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(elapsed.as_micros() as i64)
    }

    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }
}

/// A batch's status and counters: what `GetBatchStatus` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_id: BatchId,
    pub status: BatchStatus,
    pub total_items: u64,
    pub received_items: u64,
    pub succeeded_items: u64,
    pub failed_items: u64,
    pub cancelled_items: u64,
    pub total_chunks: u64,
    pub completed_chunks: u64,
    pub batch_size: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

impl Batch {
    /// Items not yet terminal, including those of parts not yet received.
    pub fn pending_items(&self) -> u64 {
        self.total_items
            .saturating_sub(self.succeeded_items + self.failed_items + self.cancelled_items)
    }
}

/// One item's outcome as listed by `ListBatchItems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    pub item_id: ItemId,
    pub status: ItemStatus,
    pub error: Option<String>,
    pub attempts: u32,
    pub chunk: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_with_a_control_character_is_rejected() {
        let err = ItemId::parse("a\tb", "item_ids[0]").unwrap_err();
        assert_eq!(err.field, "item_ids[0]");
        assert!(err.rule.contains("control"));
    }

    #[test]
    fn an_id_of_257_bytes_is_rejected_and_256_accepted() {
        assert!(ItemId::parse("x".repeat(256), "f").is_ok());
        assert!(ItemId::parse("x".repeat(257), "f").is_err());
    }

    #[test]
    fn duplicate_item_ids_name_the_second_occurrence() {
        let err = parse_item_ids(vec!["a".into(), "b".into(), "a".into()], "item_ids").unwrap_err();
        assert_eq!(err.field, "item_ids[2]");
    }

    #[test]
    fn batch_size_zero_defaults_only_where_allowed() {
        assert_eq!(BatchSize::parse_or_default(0, "f").unwrap().get(), 100);
        assert!(BatchSize::parse(0, "f").is_err());
        assert!(BatchSize::parse(1001, "f").is_err());
        assert_eq!(BatchSize::parse(1000, "f").unwrap().get(), 1000);
    }

    #[test]
    fn a_part_splits_into_chunks_of_batch_size() {
        let items = parse_item_ids((0..7).map(|i| i.to_string()).collect(), "ids").unwrap();
        let part = NewPart::new(
            BatchId::parse("b").unwrap(),
            7,
            BatchSize::parse(3, "s").unwrap(),
            1,
            items,
            "total",
            "part",
        )
        .unwrap();
        let sizes: Vec<usize> = part.chunks().map(<[ItemId]>::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert_eq!(part.chunk_count(), 3);
    }

    #[test]
    fn a_total_smaller_than_the_items_sent_is_rejected() {
        let items = parse_item_ids(vec!["a".into(), "b".into()], "ids").unwrap();
        let err = NewPart::new(
            BatchId::parse("b").unwrap(),
            1,
            BatchSize::default(),
            1,
            items,
            "totalItems",
            "currentBatch",
        )
        .unwrap_err();
        assert_eq!(err.field, "totalItems");
    }

    #[test]
    fn the_settled_status_follows_the_counts() {
        assert_eq!(BatchStatus::settled(false, 5, 0), BatchStatus::Completed);
        assert_eq!(
            BatchStatus::settled(false, 4, 1),
            BatchStatus::CompletedWithFailures
        );
        assert_eq!(BatchStatus::settled(false, 0, 5), BatchStatus::Failed);
        assert_eq!(BatchStatus::settled(true, 4, 1), BatchStatus::Cancelled);
    }
}
