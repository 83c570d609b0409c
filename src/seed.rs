//! The seed-compatible request, `POST /stateMachineInit` with `{batchId, totalItems, batchSize,
//! currentBatch, itemIds, maxConcurrency?, callbackUrl?}` (or, by reference, `{batchId, batchSize, itemsUri}`: [`items_uri`]):
//! parsing, and the status and JSON body of every answer. Shared by the local HTTP endpoint and
//! the `init` Lambda so both answer alike.

mod items_uri;

use serde_json::{json, Map, Value};

use crate::domain::{
    parse_count, parse_item_ids, parse_max_concurrency, with_sources, BatchId, BatchSize,
    BatchSizeError, CallbackUrl, CallbackUrlError, CountError, FailureBudget, IdError, ItemId,
    ItemIdsError, MaxConcurrencyError, NewPart, PartError, PercentageError,
};
use crate::items_uri::s3::ObjectReader;
use crate::items_uri::{ItemsError, ReferenceRule};
use crate::pipeline::{Accepted, Intake, IntakeError, CALLBACKS_DISABLED};
use crate::store::StoreError;

/// The route the old system exposed.
pub(crate) const ROUTE: &str = "/stateMachineInit";

/// An HTTP answer: status code and JSON body (of this endpoint and of `POST /runrequests`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// `{"message": ...}` with this status.
    pub(crate) fn message(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "message": message.into() }),
        }
    }

    /// `400` with the field and the rule: `{"message": "itemIds[3]: must not be empty"}`.
    fn bad_request(err: &SeedError) -> Self {
        Self::message(400, with_sources(err))
    }
}

/// A refused seed request: the body's own (JSON) name for the field, and the rule it breaks.
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub(crate) struct SeedError {
    /// `batchId`, `itemIds[3]`, `body`...
    pub field: String,
    #[source]
    pub rule: SeedRule,
}

/// The rule a seed request's field breaks: the body's shape, or a domain rule.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeedRule {
    #[error("is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("must be a JSON object")]
    NotAnObject,
    #[error("is required")]
    Required,
    #[error("must be a string")]
    NotAString,
    #[error("must be an array of strings")]
    NotAnArray,
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
    #[error("must be a non-negative integer")]
    NotACount,
    #[error(transparent)]
    Part(#[from] PartError),
    #[error(transparent)]
    CallbackUrl(#[from] CallbackUrlError),
    #[error("{CALLBACKS_DISABLED}")]
    CallbacksDisabled,
    #[error("{0}")]
    CallbackHost(String),
    #[error("must be true or false")]
    NotABool,
    #[error("must be \"lines\", \"csv\" or \"jsonl\"")]
    ItemsFormat,
    #[error(transparent)]
    Reference(#[from] ReferenceRule),
    #[error(transparent)]
    Items(#[from] ItemsError),
}

impl SeedError {
    fn new(field: impl Into<String>, rule: impl Into<SeedRule>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// Names the offending ID as `itemIds[3]`, or the list as `itemIds`.
    fn item_ids(err: ItemIdsError) -> Self {
        match err {
            ItemIdsError::InvalidId { index, rule } => Self::new(format!("itemIds[{index}]"), rule),
            other => match other.index() {
                Some(index) => Self::new(format!("itemIds[{index}]"), other),
                None => Self::new("itemIds", other),
            },
        }
    }

    /// Names the part's value to blame by its field in the body.
    fn part(err: PartError) -> Self {
        match err {
            PartError::TotalItems(rule) => Self::new("totalItems", rule),
            PartError::PartNumber(rule) => Self::new("currentBatch", rule),
            PartError::TotalBelowItems { .. } => Self::new("totalItems", err),
        }
    }
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a Value, SeedError> {
    body.get(name)
        .filter(|value| !value.is_null())
        .ok_or_else(|| SeedError::new(name, SeedRule::Required))
}

/// A count or part number: an integer from 1 to [`crate::domain::MAX_COUNT`]. Larger numbers,
/// negative ones and fractions are refused here, before they reach a store that could not hold
/// them.
fn count(body: &Map<String, Value>, name: &str) -> Result<u64, SeedError> {
    field(body, name)?
        .as_u64()
        .ok_or(CountError)
        .and_then(parse_count)
        .map_err(|rule| SeedError::new(name, rule))
}

fn batch_size(body: &Map<String, Value>, name: &str) -> Result<BatchSize, SeedError> {
    field(body, name)?
        .as_u64()
        .ok_or(BatchSizeError)
        .and_then(BatchSize::parse)
        .map_err(|rule| SeedError::new(name, rule))
}

/// `maxConcurrency`, optional: absent, null or 0 leaves the default.
fn max_concurrency(body: &Map<String, Value>) -> Result<Option<u32>, SeedError> {
    match body.get("maxConcurrency").filter(|value| !value.is_null()) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .ok_or(MaxConcurrencyError)
            .and_then(parse_max_concurrency)
            .map_err(|rule| SeedError::new("maxConcurrency", rule)),
    }
}

/// `toleratedFailurePercentage` (0 to 100) and `toleratedFailureCount`, optional: absent or
/// null leaves the batch without a budget.
pub(crate) fn failure_budget(body: &Map<String, Value>) -> Result<FailureBudget, SeedError> {
    let whole = |name: &str| -> Result<Option<u64>, SeedError> {
        match body.get(name).filter(|value| !value.is_null()) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| SeedError::new(name, SeedRule::NotACount)),
        }
    };
    let percentage = whole("toleratedFailurePercentage")?;
    let count = whole("toleratedFailureCount")?;
    FailureBudget::parse(percentage, count)
        .map_err(|rule| SeedError::new("toleratedFailurePercentage", rule))
}

/// `callbackUrl`, optional: absent, null or empty means none.
fn callback_url(body: &Map<String, Value>) -> Result<Option<CallbackUrl>, SeedError> {
    match body.get("callbackUrl").filter(|value| !value.is_null()) {
        None => Ok(None),
        Some(Value::String(raw)) if raw.is_empty() => Ok(None),
        Some(Value::String(raw)) => CallbackUrl::parse(raw.clone())
            .map(Some)
            .map_err(|rule| SeedError::new("callbackUrl", rule)),
        Some(_) => Err(SeedError::new("callbackUrl", SeedRule::NotAString)),
    }
}

fn batch_id(body: &Map<String, Value>) -> Result<BatchId, SeedError> {
    match field(body, "batchId")? {
        Value::String(id) => {
            BatchId::parse(id.clone()).map_err(|rule| SeedError::new("batchId", rule))
        }
        _ => Err(SeedError::new("batchId", SeedRule::NotAString)),
    }
}

fn item_ids(body: &Map<String, Value>) -> Result<Vec<ItemId>, SeedError> {
    let Value::Array(raw_ids) = field(body, "itemIds")? else {
        return Err(SeedError::new("itemIds", SeedRule::NotAnArray));
    };
    let ids = raw_ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            id.as_str()
                .map(str::to_owned)
                .ok_or_else(|| SeedError::new(format!("itemIds[{index}]"), SeedRule::NotAString))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parse_item_ids(ids).map_err(SeedError::item_ids)
}

/// Parses a seed request body into a batch part.
#[cfg(test)]
pub(crate) fn parse(body: &[u8]) -> Result<NewPart, SeedError> {
    part(&object(body)?)
}

/// The body's JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, SeedError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| SeedError::new("body", SeedRule::NotJson(err)))?;
    match value {
        Value::Object(body) => Ok(body),
        _ => Err(SeedError::new("body", SeedRule::NotAnObject)),
    }
}

/// The batch part a body with its items inline sends.
fn part(body: &Map<String, Value>) -> Result<NewPart, SeedError> {
    let batch_id = batch_id(body)?;
    let total_items = count(body, "totalItems")?;
    let batch_size = batch_size(body, "batchSize")?;
    let current_batch = count(body, "currentBatch")?;
    let limit = max_concurrency(body)?;
    let budget = failure_budget(body)?;
    let callback = callback_url(body)?;
    let items = item_ids(body)?;
    NewPart::new(batch_id, total_items, batch_size, current_batch, items)
        .map(|part| {
            part.with_max_concurrency(limit)
                .with_failure_budget(budget)
                .with_callback_url(callback)
        })
        .map_err(SeedError::part)
}

impl Reply {
    /// `503` for a store that cannot be reached, or `500` for any other internal failure; the
    /// failure is logged under a fresh request id, and the client is given only that id.
    pub(crate) fn failure(err: &IntakeError) -> Self {
        let request_id = uuid::Uuid::new_v4();
        tracing::error!(%request_id, error = %with_sources(err), "request failed");
        if matches!(err, IntakeError::Store(StoreError::Unavailable(_))) {
            Self::message(
                503,
                format!("storage is unavailable, retry later (request id {request_id})"),
            )
        } else {
            Self::message(500, format!("internal error (request id {request_id})"))
        }
    }
}

impl Reply {
    /// `200` with the batch's ID and total.
    fn accepted(accepted: &Accepted) -> Self {
        Self {
            status: 200,
            body: json!({
                "batchId": accepted.batch.batch_id.as_str(),
                "totalItems": accepted.batch.total_items,
            }),
        }
    }
}

/// Handles one request body end to end; `objects` reads the items of a body by reference.
pub(crate) async fn handle(intake: &Intake, objects: &ObjectReader, body: &[u8]) -> Reply {
    let body = match object(body) {
        Ok(body) => body,
        Err(err) => return Reply::bad_request(&err),
    };
    if items_uri::is_by_reference(&body) {
        return items_uri::handle(intake, objects, &body).await;
    }
    let part = match part(&body) {
        Ok(part) => part,
        Err(err) => return Reply::bad_request(&err),
    };
    match intake.submit(&part).await {
        Ok(accepted) => Reply::accepted(&accepted),
        Err(IntakeError::Conflict(reason) | IntakeError::Rejected(reason)) => {
            Reply::message(409, reason)
        }
        Err(IntakeError::CallbacksDisabled) => Reply::callbacks_disabled(),
        Err(err @ IntakeError::CallbackHostNotAllowed(_)) => Reply::callback_host(&err),
        Err(err) => Reply::failure(&err),
    }
}

impl Reply {
    /// `400`: a callback URL, and the server has no secret to sign callbacks with.
    fn callbacks_disabled() -> Self {
        Self::bad_request(&SeedError::new("callbackUrl", SeedRule::CallbacksDisabled))
    }

    /// `400`: a callback URL naming a host the server does not call back.
    pub(crate) fn callback_host(refusal: &IntakeError) -> Self {
        Self::bad_request(&SeedError::new(
            "callbackUrl",
            SeedRule::CallbackHost(refusal.to_string()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn the_seed_fixture_parses_into_one_part_of_ten_items() {
        let fixture = include_bytes!("../tests/fixtures/seed-request.json");
        let part = parse(fixture).unwrap();
        assert_eq!(part.items.len(), 10);
        assert_eq!(part.total_items, 10);
        assert_eq!(part.batch_size.get(), 5);
        assert_eq!(part.part_number, 1);
    }

    #[test]
    fn each_malformed_field_is_named() {
        let cases = [
            (
                json!({"totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"]}),
                "batchId",
            ),
            (
                json!({"batchId": 7, "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"]}),
                "batchId",
            ),
            (
                json!({"batchId": "b", "totalItems": "1", "batchSize": 1, "currentBatch": 1, "itemIds": ["a"]}),
                "totalItems",
            ),
            (
                json!({"batchId": "b", "totalItems": 1.5, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"]}),
                "totalItems",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 0, "currentBatch": 1, "itemIds": ["a"]}),
                "batchSize",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": -1, "itemIds": ["a"]}),
                "currentBatch",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": "a"}),
                "itemIds",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": [1]}),
                "itemIds[0]",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a", "b"]}),
                "totalItems",
            ),
            (json!([1, 2]), "body"),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"], "maxConcurrency": 10_001}),
                "maxConcurrency",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"], "maxConcurrency": "5"}),
                "maxConcurrency",
            ),
        ];
        for (value, field) in cases {
            let err = parse(&body(value.clone())).unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
        let err = parse(b"{not json").unwrap_err();
        assert_eq!(err.field, "body");
        assert!(matches!(err.rule, SeedRule::NotJson(_)));
        assert!(
            with_sources(&err).starts_with("body: is not valid JSON: key must be a string"),
            "{}",
            with_sources(&err)
        );
    }

    #[test]
    fn a_refusal_names_the_json_field_and_keeps_the_domain_rule() {
        let cases = [
            (
                json!({"batchId": "b", "totalItems": 2, "batchSize": 1, "currentBatch": 1, "itemIds": ["a", ""]}),
                "itemIds[1]: must not be empty",
            ),
            (
                json!({"batchId": "b", "totalItems": 2, "batchSize": 1, "currentBatch": 1, "itemIds": ["a", "a"]}),
                "itemIds[1]: duplicate item ID \"a\"",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": []}),
                "itemIds: must hold at least one item ID",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1001, "currentBatch": 1, "itemIds": ["a"]}),
                "batchSize: must be an integer between 1 and 1000",
            ),
            (
                json!({"batchId": "", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a"]}),
                "batchId: must not be empty",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 0, "itemIds": ["a"]}),
                "currentBatch: must be an integer between 1 and 9007199254740991",
            ),
            (
                json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": ["a", "b"]}),
                "totalItems: must be at least the number of items sent (2)",
            ),
        ];
        for (value, expected) in cases {
            let err = parse(&body(value.clone())).unwrap_err();
            assert_eq!(
                Reply::bad_request(&err).body["message"],
                expected,
                "{value}"
            );
        }
        let err = parse(&body(json!({"batchId": "b", "totalItems": 1, "batchSize": 1, "currentBatch": 1, "itemIds": [""]}))).unwrap_err();
        assert!(matches!(err.rule, SeedRule::Id(IdError::Empty)), "{err:?}");
    }
}
