//! The seed-compatible request, `POST /stateMachineInit` with `{batchId, totalItems, batchSize,
//! currentBatch, itemIds}`: parsing, and the status and JSON body of every answer. Shared by the
//! local HTTP endpoint and the `init` Lambda so both answer alike.

use serde_json::{json, Map, Value};

use crate::domain::{
    parse_count, parse_item_ids, BatchId, BatchSize, InvalidInput, NewPart, MAX_COUNT,
};
use crate::pipeline::{Intake, IntakeError};
use crate::store::StoreError;

/// The route the old system exposed.
pub const ROUTE: &str = "/stateMachineInit";

/// An HTTP answer: status code and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn message(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "message": message.into() }),
        }
    }

    fn bad_request(err: InvalidInput) -> Self {
        Self::message(400, err.to_string())
    }
}

fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Result<&'a Value, InvalidInput> {
    body.get(name)
        .filter(|value| !value.is_null())
        .ok_or_else(|| InvalidInput::new(name, "is required"))
}

/// A count or part number: an integer from 1 to [`MAX_COUNT`]. Larger numbers, negative ones
/// and fractions are refused here, before they reach a store that could not hold them.
fn count(body: &Map<String, Value>, name: &str) -> Result<u64, InvalidInput> {
    let raw = field(body, name)?.as_u64().ok_or_else(|| {
        InvalidInput::new(
            name,
            format!("must be an integer between 1 and {MAX_COUNT}"),
        )
    })?;
    parse_count(raw, name)
}

fn batch_size(body: &Map<String, Value>, name: &str) -> Result<BatchSize, InvalidInput> {
    let raw = field(body, name)?
        .as_u64()
        .ok_or_else(|| BatchSize::out_of_range(name))?;
    BatchSize::parse(raw, name)
}

/// Parses a seed request body into a batch part.
pub fn parse(body: &[u8]) -> Result<NewPart, InvalidInput> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| InvalidInput::new("body", format!("is not valid JSON ({err})")))?;
    let Value::Object(body) = value else {
        return Err(InvalidInput::new("body", "must be a JSON object"));
    };
    let batch_id = match field(&body, "batchId")? {
        Value::String(id) => {
            BatchId::parse(id.clone()).map_err(|err| InvalidInput::new("batchId", err.rule))?
        }
        _ => return Err(InvalidInput::new("batchId", "must be a string")),
    };
    let total_items = count(&body, "totalItems")?;
    let batch_size = batch_size(&body, "batchSize")?;
    let current_batch = count(&body, "currentBatch")?;
    let Value::Array(raw_ids) = field(&body, "itemIds")? else {
        return Err(InvalidInput::new("itemIds", "must be an array of strings"));
    };
    let ids = raw_ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            id.as_str()
                .map(str::to_owned)
                .ok_or_else(|| InvalidInput::new(format!("itemIds[{index}]"), "must be a string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let items = parse_item_ids(ids, "itemIds")?;
    NewPart::new(
        batch_id,
        total_items,
        batch_size,
        current_batch,
        items,
        "totalItems",
        "currentBatch",
    )
}

fn internal(err: &dyn std::error::Error) -> Reply {
    let request_id = uuid::Uuid::new_v4();
    tracing::error!(%request_id, error = %err, source = ?err.source(), "seed request failed");
    Reply::message(500, format!("internal error (request id {request_id})"))
}

/// Handles one request body end to end.
pub async fn handle(intake: &Intake, body: &[u8]) -> Reply {
    let part = match parse(body) {
        Ok(part) => part,
        Err(err) => return Reply::bad_request(err),
    };
    match intake.submit(&part).await {
        Ok(accepted) => Reply {
            status: 200,
            body: json!({
                "batchId": accepted.batch.batch_id.as_str(),
                "totalItems": accepted.batch.total_items,
            }),
        },
        Err(IntakeError::Conflict(reason) | IntakeError::Rejected(reason)) => {
            Reply::message(409, reason)
        }
        Err(IntakeError::Store(err @ StoreError::Unavailable(_))) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %err, "seed request failed");
            Reply::message(
                503,
                format!("storage is unavailable, retry later (request id {request_id})"),
            )
        }
        Err(err) => internal(&err),
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
        ];
        for (value, field) in cases {
            let err = parse(&body(value.clone())).unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
        assert_eq!(parse(b"{not json").unwrap_err().field, "body");
    }
}
