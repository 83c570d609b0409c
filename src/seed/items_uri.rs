//! The seed body by reference: `{batchId, batchSize, itemsUri, itemsFormat?, itemsHeader?}`.
//! The whole batch is read from the object, so the fields that send items inline
//! (`itemIds`, `totalItems`, `currentBatch`) are refused beside `itemsUri`.

use serde_json::{Map, Value};

use super::{
    batch_id, batch_size, callback_url, failure_budget, field, max_concurrency, Reply, SeedError,
    SeedRule,
};
use crate::items_uri::s3::ObjectReader;
use crate::items_uri::{
    BatchByReference, ItemsFormat, ItemsReference, ItemsUri, ReadError, ReferenceRule,
};
use crate::pipeline::{FromUriError, Intake, IntakeError};

/// Whether the body names its items by reference.
pub(super) fn is_by_reference(body: &Map<String, Value>) -> bool {
    body.get("itemsUri").is_some_and(|value| !value.is_null())
}

fn given<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|value| !value.is_null())
}

/// Parses a body by reference.
pub(super) fn parse(body: &Map<String, Value>) -> Result<BatchByReference, SeedError> {
    if given(body, "itemIds").is_some() {
        return Err(SeedError::new(
            "itemsUri",
            ReferenceRule::WithInlineItems("itemIds"),
        ));
    }
    for name in ["totalItems", "currentBatch"] {
        if given(body, name).is_some() {
            return Err(SeedError::new(
                name,
                ReferenceRule::WithReference("itemsUri"),
            ));
        }
    }
    let batch_id = batch_id(body)?;
    let batch_size = batch_size(body, "batchSize")?;
    let Value::String(raw_uri) = field(body, "itemsUri")? else {
        return Err(SeedError::new("itemsUri", SeedRule::NotAString));
    };
    let uri = ItemsUri::parse(raw_uri).map_err(|rule| SeedError::new("itemsUri", rule))?;
    let format = match given(body, "itemsFormat") {
        None => None,
        Some(Value::String(name)) => Some(
            ItemsFormat::from_name(name)
                .ok_or_else(|| SeedError::new("itemsFormat", SeedRule::ItemsFormat))?,
        ),
        Some(_) => return Err(SeedError::new("itemsFormat", SeedRule::NotAString)),
    };
    let header = match given(body, "itemsHeader") {
        None => false,
        Some(Value::Bool(header)) => *header,
        Some(_) => return Err(SeedError::new("itemsHeader", SeedRule::NotABool)),
    };
    let items = ItemsReference::new(uri, format, header)
        .map_err(|rule| SeedError::new("itemsHeader", rule))?;
    Ok(BatchByReference {
        batch_id,
        batch_size,
        items,
        max_concurrency: max_concurrency(body)?,
        failure_budget: failure_budget(body)?,
        callback_url: callback_url(body)?,
    })
}

/// Handles a body by reference end to end.
pub(super) async fn handle(
    intake: &Intake,
    objects: &ObjectReader,
    body: &Map<String, Value>,
) -> Reply {
    let request = match parse(body) {
        Ok(request) => request,
        Err(err) => return Reply::bad_request(&err),
    };
    match intake.submit_from_uri(objects, &request).await {
        Ok(accepted) => Reply::accepted(&accepted),
        Err(FromUriError::Read(ReadError::Refused(err))) => {
            Reply::bad_request(&SeedError::new("itemsUri", err))
        }
        Err(FromUriError::Read(err @ ReadError::Changed)) => {
            Reply::message(409, format!("itemsUri: {err}"))
        }
        Err(FromUriError::Read(err @ ReadError::Unreachable(_))) => {
            let request_id = uuid::Uuid::new_v4();
            tracing::error!(%request_id, error = %err, "items object unreadable");
            Reply::message(
                503,
                format!(
                    "itemsUri: the object could not be read, retry later (request id {request_id})"
                ),
            )
        }
        Err(FromUriError::Intake(
            IntakeError::Conflict(reason) | IntakeError::Rejected(reason),
        )) => Reply::message(409, reason),
        Err(FromUriError::Intake(IntakeError::CallbacksDisabled)) => Reply::callbacks_disabled(),
        Err(FromUriError::Intake(err @ IntakeError::CallbackHostNotAllowed(_))) => {
            Reply::callback_host(&err)
        }
        Err(FromUriError::Intake(err)) => Reply::failure(&err),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::with_sources;

    fn parsed(value: Value) -> Result<BatchByReference, SeedError> {
        let Value::Object(body) = value else {
            panic!("not an object");
        };
        assert!(is_by_reference(&body));
        parse(&body)
    }

    #[test]
    fn a_body_by_reference_parses_with_the_format_from_the_key_or_given() {
        let batch = parsed(json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a.csv", "itemsHeader": true})).unwrap();
        assert_eq!(batch.batch_id.as_str(), "b");
        assert_eq!(batch.batch_size.get(), 5);
        assert_eq!(batch.items.format, ItemsFormat::Csv);
        assert!(batch.items.header);
        let batch = parsed(json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a.csv", "itemsFormat": "jsonl", "itemsHeader": null})).unwrap();
        assert_eq!(batch.items.format, ItemsFormat::JsonLines);
        assert!(!batch.items.header);
    }

    #[test]
    fn each_malformed_body_by_reference_names_the_field_and_rule() {
        let cases = [
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a", "itemIds": ["a"]}),
                "itemsUri: must not be given with itemIds: send the item IDs inline or by reference, not both",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a", "totalItems": 3}),
                "totalItems: must not be given with itemsUri: the whole batch comes from the object",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a", "currentBatch": 1}),
                "currentBatch: must not be given with itemsUri: the whole batch comes from the object",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "http://example.com/ids"}),
                "itemsUri: must be an s3:// URI (s3://bucket/key), not http://",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": 7}),
                "itemsUri: must be a string",
            ),
            (
                json!({"batchId": "b", "itemsUri": "s3://ids/a"}),
                "batchSize: is required",
            ),
            (
                json!({"batchSize": 5, "itemsUri": "s3://ids/a"}),
                "batchId: is required",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a", "itemsFormat": "xml"}),
                "itemsFormat: must be \"lines\", \"csv\" or \"jsonl\"",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a", "itemsHeader": "yes"}),
                "itemsHeader: must be true or false",
            ),
            (
                json!({"batchId": "b", "batchSize": 5, "itemsUri": "s3://ids/a.txt", "itemsHeader": true}),
                "itemsHeader: applies only to the csv format (the format is lines)",
            ),
        ];
        for (body, expected) in cases {
            let err = parsed(body.clone()).unwrap_err();
            assert_eq!(with_sources(&err), expected, "{body}");
        }
    }
}
