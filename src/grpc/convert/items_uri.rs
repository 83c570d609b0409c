//! `SubmitBatch` with its items by reference (`items_uri`, `items_format`, `items_header`):
//! which of the two shapes a request has, and the conversions of the reference both ways.

use super::{batch_id, batch_size, FieldError, FieldRule};
use crate::domain::{BatchId, NewPart};
use crate::grpc::client::ReferenceSubmission;
use crate::grpc::pb;
use crate::items_uri::{BatchByReference, ItemsFormat, ItemsReference, ItemsUri, ReferenceRule};

/// A `SubmitBatch` request: its items inline, or by reference.
#[derive(Debug)]
pub(crate) enum Submission {
    Inline(NewPart),
    ByReference(BatchByReference),
}

impl TryFrom<pb::SubmitBatchRequest> for Submission {
    type Error = FieldError;

    fn try_from(request: pb::SubmitBatchRequest) -> Result<Self, FieldError> {
        if request.items_uri.is_empty() {
            let option = if request.items_format != 0 {
                Some("items_format")
            } else if request.items_header {
                Some("items_header")
            } else {
                None
            };
            if let Some(option) = option {
                return Err(FieldError::new(
                    option,
                    ReferenceRule::WithoutReference("items_uri"),
                ));
            }
            return NewPart::try_from(request).map(Self::Inline);
        }
        if !request.item_ids.is_empty() {
            return Err(FieldError::new(
                "items_uri",
                ReferenceRule::WithInlineItems("item_ids"),
            ));
        }
        let batch_id = if request.batch_id.is_empty() {
            BatchId::generate()
        } else {
            batch_id(request.batch_id)?
        };
        let batch_size = batch_size(request.batch_size)?;
        let max_concurrency = super::max_concurrency(request.max_concurrency)?;
        let failure_budget = super::failure_budget(
            request.tolerated_failure_percentage,
            request.tolerated_failure_count,
        )?;
        let callback_url = super::callback_url(request.callback_url)?;
        let uri = ItemsUri::parse(&request.items_uri)
            .map_err(|rule| FieldError::new("items_uri", rule))?;
        let format = items_format(request.items_format)
            .map_err(|rule| FieldError::new("items_format", rule))?;
        let items = ItemsReference::new(uri, format, request.items_header)
            .map_err(|rule| FieldError::new("items_header", rule))?;
        Ok(Self::ByReference(BatchByReference {
            batch_id,
            batch_size,
            items,
            max_concurrency,
            failure_budget,
            callback_url,
        }))
    }
}

/// An `ItemsFormat` field: `None` for UNSPECIFIED (the key's extension decides).
fn items_format(raw: i32) -> Result<Option<ItemsFormat>, FieldRule> {
    let format = pb::ItemsFormat::try_from(raw).map_err(|_| FieldRule::UnknownValue {
        value: raw,
        what: "an ItemsFormat",
    })?;
    Ok(match format {
        pb::ItemsFormat::Unspecified => None,
        pb::ItemsFormat::Lines => Some(ItemsFormat::Lines),
        pb::ItemsFormat::Csv => Some(ItemsFormat::Csv),
        pb::ItemsFormat::Jsonl => Some(ItemsFormat::JsonLines),
    })
}

impl From<ItemsFormat> for pb::ItemsFormat {
    fn from(format: ItemsFormat) -> Self {
        match format {
            ItemsFormat::Lines => Self::Lines,
            ItemsFormat::Csv => Self::Csv,
            ItemsFormat::JsonLines => Self::Jsonl,
        }
    }
}

impl From<ReferenceSubmission> for pb::SubmitBatchRequest {
    fn from(submission: ReferenceSubmission) -> Self {
        Self {
            batch_id: submission.batch_id.as_str().to_owned(),
            batch_size: submission.batch_size.get(),
            items_uri: submission.items.uri.to_string(),
            items_format: pb::ItemsFormat::from(submission.items.format) as i32,
            items_header: submission.items.header,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{with_sources, BatchSize};

    fn request(edit: impl FnOnce(&mut pb::SubmitBatchRequest)) -> pb::SubmitBatchRequest {
        let mut request = pb::SubmitBatchRequest {
            batch_id: "by-reference".to_owned(),
            batch_size: 10,
            items_uri: "s3://ids/today.csv".to_owned(),
            ..Default::default()
        };
        edit(&mut request);
        request
    }

    fn refusal(request: pb::SubmitBatchRequest) -> String {
        with_sources(&Submission::try_from(request).unwrap_err())
    }

    #[test]
    fn a_reference_takes_its_format_from_the_key_unless_one_is_given() {
        let Submission::ByReference(batch) = Submission::try_from(request(|r| {
            r.items_header = true;
        }))
        .unwrap() else {
            panic!("not by reference");
        };
        assert_eq!(batch.batch_id.as_str(), "by-reference");
        assert_eq!(batch.batch_size, BatchSize::parse(10).unwrap());
        assert_eq!(batch.items.uri.to_string(), "s3://ids/today.csv");
        assert_eq!(batch.items.format, ItemsFormat::Csv);
        assert!(batch.items.header);
        let Submission::ByReference(batch) = Submission::try_from(request(|r| {
            r.items_format = pb::ItemsFormat::Jsonl as i32;
            r.batch_id = String::new();
        }))
        .unwrap() else {
            panic!("not by reference");
        };
        assert_eq!(batch.items.format, ItemsFormat::JsonLines);
        assert!(!batch.batch_id.as_str().is_empty());
    }

    #[test]
    fn a_request_without_a_reference_is_the_inline_one() {
        let submission = Submission::try_from(pb::SubmitBatchRequest {
            batch_id: "inline".to_owned(),
            item_ids: vec!["a".to_owned()],
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(submission, Submission::Inline(part) if part.items.len() == 1));
    }

    #[test]
    fn each_malformed_reference_names_its_field_and_rule() {
        let cases = [
            (
                request(|r| r.item_ids = vec!["a".to_owned()]),
                "items_uri: must not be given with item_ids: send the item IDs inline or by reference, not both",
            ),
            (
                request(|r| r.items_uri = "file:///etc/passwd".to_owned()),
                "items_uri: must be an s3:// URI (s3://bucket/key), not file://",
            ),
            (
                request(|r| r.items_uri = "/srv/ids.txt".to_owned()),
                "items_uri: must be an s3:// URI (s3://bucket/key)",
            ),
            (
                request(|r| r.items_format = 9),
                "items_format: 9 is not an ItemsFormat",
            ),
            (
                request(|r| {
                    r.items_format = pb::ItemsFormat::Lines as i32;
                    r.items_header = true;
                }),
                "items_header: applies only to the csv format (the format is lines)",
            ),
            (
                request(|r| r.batch_size = 1001),
                "batch_size: must be an integer between 1 and 1000",
            ),
            (
                request(|r| {
                    r.items_uri = String::new();
                    r.item_ids = vec!["a".to_owned()];
                    r.items_format = pb::ItemsFormat::Csv as i32;
                }),
                "items_format: applies only with items_uri",
            ),
            (
                request(|r| {
                    r.items_uri = String::new();
                    r.item_ids = vec!["a".to_owned()];
                    r.items_header = true;
                }),
                "items_header: applies only with items_uri",
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(refusal(request.clone()), expected, "{request:?}");
        }
    }

    #[test]
    fn a_reference_submission_round_trips() {
        let submission = ReferenceSubmission {
            batch_id: BatchId::parse("round-trip").unwrap(),
            batch_size: BatchSize::parse(7).unwrap(),
            items: ItemsReference::new(
                ItemsUri::parse("s3://ids/x.txt").unwrap(),
                Some(ItemsFormat::Csv),
                true,
            )
            .unwrap(),
            max_concurrency: Some(12),
            failure_budget: Default::default(),
            callback_url: None,
        };
        let Submission::ByReference(batch) =
            Submission::try_from(pb::SubmitBatchRequest::from(submission.clone())).unwrap()
        else {
            panic!("not by reference");
        };
        assert_eq!(batch.batch_id, submission.batch_id);
        assert_eq!(batch.batch_size, submission.batch_size);
        assert_eq!(batch.items, submission.items);
        assert_eq!(batch.max_concurrency, Some(12));
    }
}
