//! The domain: batch and item identifiers, batch parts, statuses and outcomes.
//! Values are parsed once at the edge and trusted everywhere after; nothing here does I/O.

mod callback;

use std::fmt;

use sha2::{Digest, Sha256};

pub use self::callback::{
    Callback, CallbackStatus, CallbackUrl, CallbackUrlError, MAX_CALLBACK_URL_BYTES,
};

/// Longest batch or item ID, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Most items one request may carry (gRPC `SubmitBatch`/`AppendBatchItems`, HTTP POST).
pub const MAX_ITEMS_PER_REQUEST: usize = 100_000;
/// Largest chunk.
pub const MAX_BATCH_SIZE: u32 = 1000;
/// Chunk size when the client names none.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
/// Largest item count or part number: 2^53 - 1, the largest integer every JSON client (a
/// JavaScript number) holds exactly, and well inside what both stores keep (a signed 64-bit
/// integer), so sums of counters cannot overflow.
pub const MAX_COUNT: u64 = (1 << 53) - 1;
/// Most chunk executions of one batch a client may allow in flight at once.
pub const MAX_CONCURRENCY_LIMIT: u32 = 10_000;

/// The message of an error followed by those of its sources, joined by `": "` (as `anyhow`
/// shows a chain with `{:#}`): how an edge words a refusal for its client, e.g.
/// `item_ids[3]: must not be empty` from a field error whose source is the rule.
pub(crate) fn with_sources(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Why a batch or item ID was refused: the ID rule it breaks. Like every domain error, it reads
/// as a rule about one value; the edge that parsed the value puts its own name for it in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The ID is empty.
    #[error("must not be empty")]
    Empty,
    /// The ID is longer than [`MAX_ID_BYTES`].
    #[error("must be at most {MAX_ID_BYTES} bytes")]
    TooLong,
    /// The ID holds this control character.
    #[error("must not contain control characters (found U+{:04X})", u32::from(*.0))]
    ControlCharacter(char),
    /// The ID holds this bidirectional-control or zero-width character.
    #[error(
        "must not contain bidirectional-control or zero-width characters (found U+{:04X})",
        u32::from(*.0)
    )]
    InvisibleCharacter(char),
    /// The ID is only whitespace.
    #[error("must not be only whitespace")]
    OnlyWhitespace,
}

/// Why a request's list of item IDs was refused. `index` is the position of the offending ID
/// in the list, for the edge to name in its own terms (`item_ids[3]`, `itemIds[3]`, a line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemIdsError {
    /// The list holds no IDs.
    #[error("must hold at least one item ID")]
    Empty,
    /// The list holds more than [`MAX_ITEMS_PER_REQUEST`] IDs.
    #[error(
        "must hold at most {MAX_ITEMS_PER_REQUEST} item IDs per request (got {count}); send larger batches in parts"
    )]
    TooMany {
        /// The number of IDs sent.
        count: usize,
    },
    /// An ID breaks an ID rule.
    #[error("the item ID at position {index}")]
    InvalidId {
        /// The position of the ID.
        index: usize,
        /// The rule it breaks.
        #[source]
        rule: IdError,
    },
    /// An ID appears twice.
    #[error("duplicate item ID {id:?}")]
    Duplicate {
        /// The position of the second occurrence.
        index: usize,
        /// The repeated ID.
        id: String,
    },
}

impl ItemIdsError {
    /// The position of the offending ID, when one ID is to blame.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::InvalidId { index, .. } | Self::Duplicate { index, .. } => Some(*index),
            Self::Empty | Self::TooMany { .. } => None,
        }
    }
}

/// A chunk size that is not an integer from 1 to [`MAX_BATCH_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer between 1 and {MAX_BATCH_SIZE}")]
pub struct BatchSizeError;

/// A per-batch concurrency that is not an integer from 1 to [`MAX_CONCURRENCY_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer between 1 and {MAX_CONCURRENCY_LIMIT} (0 or absent for the default)")]
pub struct MaxConcurrencyError;

/// Parses a batch's limit on chunk executions in flight: `0` (protobuf's unset) leaves the
/// deployment's default, 1 to [`MAX_CONCURRENCY_LIMIT`] sets it.
pub fn parse_max_concurrency(raw: u64) -> Result<Option<u32>, MaxConcurrencyError> {
    match raw {
        0 => Ok(None),
        raw if raw <= u64::from(MAX_CONCURRENCY_LIMIT) => Ok(Some(raw as u32)),
        _ => Err(MaxConcurrencyError),
    }
}

/// The most times a batch may be redriven.
pub const MAX_REDRIVES: u32 = 1000;

/// A failure percentage that is not an integer from 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer between 0 and 100")]
pub struct PercentageError;

/// How many failed items a batch tolerates before it stops: once its failed items exceed a
/// share of its total items, or a count, it ends FAILED and its chunks not yet started never
/// run. Both may be set; exceeding either stops the batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureBudget {
    /// Failed items tolerated, as a percentage (0 to 100) of the batch's total items.
    pub percentage: Option<u8>,
    /// Failed items tolerated, as a count.
    pub count: Option<u64>,
}

impl FailureBudget {
    /// Parses a budget from its two optional parts; neither set is no budget.
    pub fn parse(percentage: Option<u64>, count: Option<u64>) -> Result<Self, PercentageError> {
        let percentage = percentage
            .map(|raw| {
                u8::try_from(raw)
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or(PercentageError)
            })
            .transpose()?;
        Ok(Self { percentage, count })
    }

    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.percentage.is_some() || self.count.is_some()
    }

    /// Why a batch of `total` items with `failed` failed items has overspent this budget, or
    /// None while it has not.
    pub fn exceeded(&self, failed: u64, total: u64) -> Option<String> {
        if let Some(percentage) = self.percentage {
            if u128::from(failed) * 100 > u128::from(percentage) * u128::from(total) {
                return Some(format!(
                    "failure budget exceeded: {failed} of {total} items failed, {percentage}% tolerated"
                ));
            }
        }
        if let Some(count) = self.count {
            if failed > count {
                return Some(format!(
                    "failure budget exceeded: {failed} of {total} items failed, {count} tolerated"
                ));
            }
        }
        None
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.percentage, self.count) {
            (None, None) => f.write_str("none"),
            (Some(p), None) => write!(f, "{p}%"),
            (None, Some(c)) => write!(f, "{c} items"),
            (Some(p), Some(c)) => write!(f, "{p}% or {c} items"),
        }
    }
}

/// An item count or part number that is not an integer from 1 to [`MAX_COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer between 1 and {MAX_COUNT}")]
pub struct CountError;

/// Why a part was refused before reaching the store. The variants say which of the part's
/// values is to blame, so that each edge can name its own field for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// The batch's item count.
    #[error(transparent)]
    TotalItems(CountError),
    /// The part's number.
    #[error(transparent)]
    PartNumber(CountError),
    /// The batch's item count is below the items this part alone holds.
    #[error("must be at least the number of items sent ({sent})")]
    TotalBelowItems {
        /// The items this part holds.
        sent: usize,
    },
}

/// Characters that change how the text around them is shown without being seen themselves:
/// the bidirectional controls (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069, which
/// can make an ID read differently in a terminal or a log) and the zero-width characters
/// (U+200B to U+200D, U+2060, U+FEFF, which make two IDs that look alike differ).
fn is_invisible_format_character(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// The rules every batch and item ID keeps: 1 to [`MAX_ID_BYTES`] bytes of UTF-8, not only
/// whitespace, no control characters, no bidirectional controls or zero-width characters. IDs
/// are shown in terminals and logs, where those characters would hide or disguise them.
fn check_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong);
    }
    // Most IDs are printable ASCII (UUIDs, keys): then only "all spaces" can be wrong.
    if raw.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return if raw.bytes().all(|b| b == b' ') {
            Err(IdError::OnlyWhitespace)
        } else {
            Ok(())
        };
    }
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(IdError::ControlCharacter(c));
    }
    if let Some(c) = raw.chars().find(|&c| is_invisible_format_character(c)) {
        return Err(IdError::InvisibleCharacter(c));
    }
    if raw.chars().all(char::is_whitespace) {
        return Err(IdError::OnlyWhitespace);
    }
    Ok(())
}

/// A batch's ID, under the ID rules (see `check_id`). The idempotency key of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(String);

impl BatchId {
    /// Parses a batch ID under the ID rules.
    pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
        let raw = raw.into();
        check_id(&raw)?;
        Ok(Self(raw))
    }

    /// A fresh random UUID, for submissions that name no ID.
    pub(crate) fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The ID's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An item's ID, under the ID rules (see `check_id`); having no control characters, a newline
/// can separate IDs in storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(String);

impl ItemId {
    /// Parses an item ID under the ID rules.
    pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
        let raw = raw.into();
        check_id(&raw)?;
        Ok(Self(raw))
    }

    /// Wraps an ID read back from the store, which only holds IDs that were parsed on the way in.
    pub(crate) fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    /// The ID's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ID's text, owned.
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
    pub(crate) fn parse_or_default(raw: u64) -> Result<Self, BatchSizeError> {
        if raw == 0 {
            return Ok(Self(DEFAULT_BATCH_SIZE));
        }
        Self::parse(raw)
    }

    /// Parses a chunk size: 1 to [`MAX_BATCH_SIZE`].
    pub fn parse(raw: u64) -> Result<Self, BatchSizeError> {
        if raw == 0 || raw > u64::from(MAX_BATCH_SIZE) {
            return Err(BatchSizeError);
        }
        Ok(Self(raw as u32))
    }

    /// Items per chunk.
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
pub fn parse_item_ids(raw: Vec<String>) -> Result<Vec<ItemId>, ItemIdsError> {
    if raw.is_empty() {
        return Err(ItemIdsError::Empty);
    }
    if raw.len() > MAX_ITEMS_PER_REQUEST {
        return Err(ItemIdsError::TooMany { count: raw.len() });
    }
    for (index, id) in raw.iter().enumerate() {
        check_id(id).map_err(|rule| ItemIdsError::InvalidId { index, rule })?;
    }
    if let Some(index) = first_repeat(&raw) {
        return Err(ItemIdsError::Duplicate {
            index,
            id: raw[index].clone(),
        });
    }
    Ok(raw.into_iter().map(ItemId).collect())
}

/// The lowest index whose ID appeared at an earlier index. Sorting seeded 64-bit hashes
/// (compared as text where two are equal) costs a fraction of a set of the IDs themselves.
fn first_repeat(ids: &[String]) -> Option<usize> {
    use std::sync::OnceLock;
    // Random per process, so no crafted set of IDs can make many hashes collide.
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(rand::random);
    let mut hashed: Vec<(u64, usize)> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            (
                xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), seed),
                index,
            )
        })
        .collect();
    hashed.sort_unstable();
    let mut first = None;
    for group in hashed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        // Indexes ascend within a group: each is a repeat if an earlier one has its text.
        for (later, &(_, index)) in group.iter().enumerate().skip(1) {
            if group[..later]
                .iter()
                .any(|&(_, earlier)| ids[earlier] == ids[index])
            {
                first = Some(first.map_or(index, |found: usize| found.min(index)));
                break;
            }
        }
    }
    first
}

/// Parses an item count or a part number: 1 to [`MAX_COUNT`].
pub(crate) fn parse_count(raw: u64) -> Result<u64, CountError> {
    if raw == 0 || raw > MAX_COUNT {
        return Err(CountError);
    }
    Ok(raw)
}

/// One part of a batch: the whole batch for `SubmitBatch`, one POST of the seed protocol, one `AppendBatchItems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPart {
    /// The batch the part belongs to.
    pub batch_id: BatchId,
    /// Items the whole batch will hold.
    pub total_items: u64,
    /// Items per chunk.
    pub batch_size: BatchSize,
    /// From 1; a part is stored once.
    pub part_number: u64,
    /// The part's items, in order.
    pub items: Vec<ItemId>,
    /// Chunk executions of the batch allowed in flight at once; `None` keeps the batch's
    /// (or, for a new batch, the deployment's default).
    pub max_concurrency: Option<u32>,
    /// The batch's failure budget; `None` keeps the batch's (none for a new batch).
    pub failure_budget: Option<FailureBudget>,
    /// Where the batch's final status is POSTed; `None` keeps the batch's.
    pub callback_url: Option<CallbackUrl>,
}

impl NewPart {
    /// Builds a part, checking what can be checked without the store: the total covers this part's items.
    pub fn new(
        batch_id: BatchId,
        total_items: u64,
        batch_size: BatchSize,
        part_number: u64,
        items: Vec<ItemId>,
    ) -> Result<Self, PartError> {
        let total_items = parse_count(total_items).map_err(PartError::TotalItems)?;
        let part_number = parse_count(part_number).map_err(PartError::PartNumber)?;
        if total_items < items.len() as u64 {
            return Err(PartError::TotalBelowItems { sent: items.len() });
        }
        Ok(Self {
            batch_id,
            total_items,
            batch_size,
            part_number,
            items,
            max_concurrency: None,
            failure_budget: None,
            callback_url: None,
        })
    }

    /// This part, setting the batch's limit on chunk executions in flight.
    pub fn with_max_concurrency(mut self, max_concurrency: Option<u32>) -> Self {
        self.max_concurrency = max_concurrency;
        self
    }

    /// This part, setting the batch's failure budget (unset budgets are `None`).
    pub fn with_failure_budget(mut self, budget: FailureBudget) -> Self {
        self.failure_budget = budget.is_set().then_some(budget);
        self
    }

    /// This part, setting the batch's callback URL.
    pub fn with_callback_url(mut self, callback_url: Option<CallbackUrl>) -> Self {
        self.callback_url = callback_url;
        self
    }

    /// A fingerprint of the part's items, in order: what makes a resubmission "the same".
    pub(crate) fn digest(&self) -> String {
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

    pub(crate) fn chunk_count(&self) -> u64 {
        self.items.len().div_ceil(self.batch_size.get() as usize) as u64
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchStatus {
    /// Accepted; no chunk has started.
    Pending,
    /// Chunks are running.
    Running,
    /// Every item succeeded.
    Completed,
    /// Every item ended, some failed.
    CompletedWithFailures,
    /// Every item failed.
    Failed,
    /// Cancelled before every item ended.
    Cancelled,
    /// Paused: no chunk starts until it is resumed; chunks already running finish.
    Paused,
}

impl BatchStatus {
    /// Every status, in order.
    pub const ALL: [BatchStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::CompletedWithFailures,
        Self::Failed,
        Self::Cancelled,
        Self::Paused,
    ];

    /// Whether the batch has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::Running | Self::Paused)
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
            Self::Paused => "PAUSED",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
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
    /// Not yet processed.
    Pending,
    /// Processed successfully.
    Succeeded,
    /// Failed; the record holds the message.
    Failed,
    /// Cancelled before it was processed.
    Cancelled,
}

impl ItemStatus {
    /// The stable name used in storage, JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
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
    /// The item succeeded.
    Succeeded,
    /// The item failed, with this message.
    Failed(String),
}

/// A point in time, in microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let elapsed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(elapsed.as_micros() as i64)
    }

    /// The time as RFC 3339 text; empty if out of range.
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
    /// The batch's ID.
    pub batch_id: BatchId,
    /// Where the batch stands.
    pub status: BatchStatus,
    /// Items the whole batch will hold.
    pub total_items: u64,
    /// Items received so far (equals `total_items` once every part arrived).
    pub received_items: u64,
    /// Items that succeeded.
    pub succeeded_items: u64,
    /// Items that failed.
    pub failed_items: u64,
    /// Items cancelled.
    pub cancelled_items: u64,
    /// Chunks created so far.
    pub total_chunks: u64,
    /// Chunks whose outcome is recorded (including cancelled chunks).
    pub completed_chunks: u64,
    /// Items per chunk.
    pub batch_size: u32,
    /// When the batch was accepted.
    pub created_at: Timestamp,
    /// When the batch last changed.
    pub updated_at: Timestamp,
    /// Unset until the batch is terminal.
    pub completed_at: Option<Timestamp>,
    /// Chunk executions allowed in flight at once; `None` is the deployment's default.
    pub max_concurrency: Option<u32>,
    /// Failed items tolerated before the batch stops (unset: no budget).
    pub failure_budget: FailureBudget,
    /// Why the batch ended FAILED early (its failure budget ran out); `None` otherwise.
    pub failure_reason: Option<String>,
    /// How many times the batch was redriven.
    pub redrive_count: u32,
    /// The completion callback and its delivery.
    pub callback: Callback,
    /// How fast the batch moves and how its items fail.
    pub progress: BatchProgress,
}

/// A batch's pace and its most frequent failures, as a status read shows them.
#[derive(Debug, Clone, Default)]
pub struct BatchProgress {
    /// Items turned terminal per second over about the last minute; 0 when none was measured.
    pub items_per_second: f64,
    /// Seconds until every item is terminal at that pace; `None` until a pace is measured and
    /// once the batch is terminal.
    pub eta_seconds: Option<u64>,
    /// The most frequent failure messages, most frequent first (empty where a read leaves
    /// them out, as listings do).
    pub top_errors: Vec<ErrorCount>,
}

// The rate is compared by its bits, so that a snapshot equals itself (watchers send a
// snapshot only when it differs from the last one sent).
impl PartialEq for BatchProgress {
    fn eq(&self, other: &Self) -> bool {
        self.items_per_second.to_bits() == other.items_per_second.to_bits()
            && self.eta_seconds == other.eta_seconds
            && self.top_errors == other.top_errors
    }
}

impl Eq for BatchProgress {}

/// How many of a batch's items failed with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCount {
    /// The failure message, cut to [`MAX_ERROR_MESSAGE_CHARS`] characters, or
    /// [`OTHER_ERRORS`].
    pub message: String,
    /// Items that failed with it.
    pub count: u64,
}

/// Longest failure message a batch's error counts keep, in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 200;
/// The message under which a batch counts failures whose message it does not keep.
pub const OTHER_ERRORS: &str = "(other errors)";

impl Batch {
    /// The batch as JSON, in camelCase (what `--json` prints and callbacks POST).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "batchId": self.batch_id.as_str(),
            "status": self.status.as_str(),
            "totalItems": self.total_items,
            "receivedItems": self.received_items,
            "succeededItems": self.succeeded_items,
            "failedItems": self.failed_items,
            "cancelledItems": self.cancelled_items,
            "pendingItems": self.pending_items(),
            "totalChunks": self.total_chunks,
            "completedChunks": self.completed_chunks,
            "batchSize": self.batch_size,
            "maxConcurrency": self.max_concurrency,
            "toleratedFailurePercentage": self.failure_budget.percentage,
            "toleratedFailureCount": self.failure_budget.count,
            "failureReason": self.failure_reason,
            "redriveCount": self.redrive_count,
            "callbackUrl": self.callback.url.as_ref().map(|url| url.as_str()),
            "callbackStatus": self.callback.status.as_str(),
            "callbackAttempts": self.callback.attempts,
            "callbackLastError": self.callback.last_error,
            "createdAt": self.created_at.to_rfc3339(),
            "updatedAt": self.updated_at.to_rfc3339(),
            "completedAt": self.completed_at.map(|t| t.to_rfc3339()),
            "itemsPerSecond": self.progress.items_per_second,
            "etaSeconds": self.progress.eta_seconds,
            "topErrors": self
                .progress
                .top_errors
                .iter()
                .map(|error| serde_json::json!({"message": error.message, "count": error.count}))
                .collect::<Vec<_>>(),
        })
    }

    /// Items not yet terminal, including those of parts not yet received.
    pub fn pending_items(&self) -> u64 {
        self.total_items
            .saturating_sub(self.succeeded_items + self.failed_items + self.cancelled_items)
    }
}

/// One item's outcome as listed by `ListBatchItems`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRecord {
    /// The item's ID.
    pub item_id: ItemId,
    /// The item's outcome.
    pub status: ItemStatus,
    /// Why the item failed; `None` unless it failed.
    pub error: Option<String>,
    /// How many times a task ran for the item's chunk.
    pub attempts: u32,
    /// The chunk the item is in.
    pub chunk: u64,
}

impl ItemRecord {
    /// The item as JSON, in camelCase (what `items --json` prints and `export` writes a line of).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "itemId": self.item_id.as_str(),
            "status": self.status.as_str(),
            "error": self.error,
            "attempts": self.attempts,
            "chunk": self.chunk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_with_a_control_character_is_rejected_naming_it() {
        let err = ItemId::parse("a\tb").unwrap_err();
        assert_eq!(err, IdError::ControlCharacter('\t'));
        assert_eq!(
            err.to_string(),
            "must not contain control characters (found U+0009)"
        );
    }

    #[test]
    fn an_id_of_only_whitespace_is_rejected_and_inner_spaces_are_kept() {
        for raw in [" ", "   ", "\u{3000}", " \u{00A0} "] {
            let err = BatchId::parse(raw).unwrap_err();
            assert_eq!(err.to_string(), "must not be only whitespace", "{raw:?}");
        }
        assert!(ItemId::parse("two words").is_ok());
    }

    #[test]
    fn an_id_with_a_bidi_control_or_zero_width_character_is_rejected_naming_it() {
        let hidden = [
            '\u{061C}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{200E}', '\u{200F}', '\u{202A}',
            '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{FEFF}',
        ];
        for c in hidden {
            let err = ItemId::parse(format!("invoice{c}fdp.exe")).unwrap_err();
            assert_eq!(err, IdError::InvisibleCharacter(c));
            assert!(
                err.to_string().contains(&format!("U+{:04X}", u32::from(c))),
                "{c:?}: {err}"
            );
        }
        assert!(ItemId::parse("caf\u{00E9}-\u{65E5}\u{672C}").is_ok());
    }

    #[test]
    fn an_id_of_257_bytes_is_rejected_and_256_accepted() {
        assert!(ItemId::parse("x".repeat(256)).is_ok());
        assert_eq!(ItemId::parse("x".repeat(257)), Err(IdError::TooLong));
        assert_eq!(BatchId::parse(""), Err(IdError::Empty));
    }

    #[test]
    fn of_several_repeated_ids_the_earliest_repeat_is_named() {
        let ids: Vec<String> = ["c", "a", "b", "x", "b", "a", "c"]
            .iter()
            .map(|id| (*id).to_owned())
            .collect();
        assert_eq!(first_repeat(&ids), Some(4));
        let unique: Vec<String> = (0..10_000).map(|i| format!("id-{i}")).collect();
        assert_eq!(first_repeat(&unique), None);
    }

    #[test]
    fn duplicate_item_ids_name_the_second_occurrence() {
        let err = parse_item_ids(vec!["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(
            err,
            ItemIdsError::Duplicate {
                index: 2,
                id: "a".into()
            }
        );
        assert_eq!(err.index(), Some(2));
        assert_eq!(err.to_string(), "duplicate item ID \"a\"");
    }

    #[test]
    fn an_invalid_item_id_keeps_its_position_and_rule() {
        let err = parse_item_ids(vec!["a".into(), String::new()]).unwrap_err();
        assert_eq!(
            err,
            ItemIdsError::InvalidId {
                index: 1,
                rule: IdError::Empty
            }
        );
        assert_eq!(
            with_sources(&err),
            "the item ID at position 1: must not be empty"
        );
    }

    #[test]
    fn an_empty_or_oversized_list_of_item_ids_is_rejected() {
        assert_eq!(parse_item_ids(Vec::new()), Err(ItemIdsError::Empty));
        let many = vec![String::new(); MAX_ITEMS_PER_REQUEST + 1];
        let err = parse_item_ids(many).unwrap_err();
        assert_eq!(
            err,
            ItemIdsError::TooMany {
                count: MAX_ITEMS_PER_REQUEST + 1
            }
        );
        assert_eq!(err.index(), None);
    }

    #[test]
    fn batch_size_zero_defaults_only_where_allowed() {
        assert_eq!(BatchSize::parse_or_default(0).unwrap().get(), 100);
        assert_eq!(BatchSize::parse(0), Err(BatchSizeError));
        assert_eq!(BatchSize::parse(1001), Err(BatchSizeError));
        assert_eq!(BatchSize::parse(1000).unwrap().get(), 1000);
    }

    #[test]
    fn counts_run_from_one_to_the_largest_exact_json_integer() {
        assert_eq!(parse_count(0), Err(CountError));
        assert_eq!(parse_count(MAX_COUNT), Ok(MAX_COUNT));
        assert_eq!(parse_count(MAX_COUNT + 1), Err(CountError));
    }

    fn items(count: usize) -> Vec<ItemId> {
        parse_item_ids((0..count).map(|i| i.to_string()).collect()).unwrap()
    }

    #[test]
    fn a_part_splits_into_chunks_of_batch_size() {
        let batch_size = BatchSize::parse(3).unwrap();
        let part = NewPart::new(BatchId::parse("b").unwrap(), 7, batch_size, 1, items(7)).unwrap();
        let sizes: Vec<usize> = part.chunks().map(<[ItemId]>::len).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert_eq!(part.chunk_count(), 3);
    }

    #[test]
    fn a_part_says_which_of_its_numbers_is_to_blame() {
        let part = |total, number| {
            NewPart::new(
                BatchId::parse("b").unwrap(),
                total,
                BatchSize::default(),
                number,
                items(2),
            )
        };
        assert_eq!(part(1, 1), Err(PartError::TotalBelowItems { sent: 2 }));
        assert_eq!(part(0, 1), Err(PartError::TotalItems(CountError)));
        assert_eq!(
            part(2, MAX_COUNT + 1),
            Err(PartError::PartNumber(CountError))
        );
        assert_eq!(
            part(1, 1).unwrap_err().to_string(),
            "must be at least the number of items sent (2)"
        );
    }
}
