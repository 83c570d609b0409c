//! Every conversion both ways, and every refusal with the field it names.

use super::*;
use crate::domain::{with_sources, OTHER_ERRORS};

fn ids(raw: &[&str]) -> Vec<ItemId> {
    parse_item_ids(raw.iter().map(|id| id.to_string()).collect()).unwrap()
}

fn batch_id_of(raw: &str) -> BatchId {
    BatchId::parse(raw).unwrap()
}

fn sample_batch(completed_at: Option<Timestamp>) -> Batch {
    Batch {
        batch_id: batch_id_of("b-1"),
        status: BatchStatus::CompletedWithFailures,
        total_items: 10,
        received_items: 10,
        succeeded_items: 7,
        failed_items: 2,
        cancelled_items: 1,
        total_chunks: 4,
        completed_chunks: 4,
        batch_size: 3,
        // Before the epoch, with microseconds: the sign and the remainder must survive.
        created_at: Timestamp(-1_234_567),
        updated_at: Timestamp(1_700_000_000_123_456),
        completed_at,
        max_concurrency: Some(4),
        progress: BatchProgress {
            items_per_second: 12.5,
            eta_seconds: None,
            top_errors: vec![
                ErrorCount {
                    message: "timeout".into(),
                    count: 2,
                },
                ErrorCount {
                    message: OTHER_ERRORS.into(),
                    count: 1,
                },
            ],
        },
        failure_budget: FailureBudget::parse(Some(10), Some(3)).unwrap(),
        failure_reason: Some("failure budget exceeded: 2 of 10 items failed".into()),
        redrive_count: 2,
        callback: Callback {
            url: Some(CallbackUrl::parse("https://example.com/hook").unwrap()),
            status: CallbackStatus::Pending,
            attempts: 3,
            last_error: Some("HTTP 503".to_owned()),
        },
    }
}

fn sample_item(error: Option<&str>) -> ItemRecord {
    ItemRecord {
        item_id: ItemId::parse("item-7").unwrap(),
        status: if error.is_some() {
            ItemStatus::Failed
        } else {
            ItemStatus::Succeeded
        },
        error: error.map(str::to_owned),
        attempts: 2,
        chunk: 3,
    }
}

/// The message a client is shown for a refusal.
fn refusal<T: std::fmt::Debug>(result: Result<T, FieldError>) -> String {
    with_sources(&result.unwrap_err())
}

#[test]
fn a_part_round_trips_through_an_append_request() {
    let part = NewPart::new(
        batch_id_of("in-parts"),
        1000,
        BatchSize::parse(7).unwrap(),
        4,
        ids(&["a", "b", "c"]),
    )
    .unwrap();
    let request = pb::AppendBatchItemsRequest::from(part.clone());
    assert_eq!(request.item_ids, vec!["a", "b", "c"]);
    assert_eq!(NewPart::try_from(request).unwrap(), part);
}

#[test]
fn a_whole_batch_round_trips_through_a_submit_request_as_its_first_part() {
    let submission = BatchSubmission {
        batch_id: batch_id_of("whole"),
        batch_size: BatchSize::parse(2).unwrap(),
        items: ids(&["x", "y", "z"]),
        max_concurrency: Some(7),
        failure_budget: FailureBudget::parse(Some(0), None).unwrap(),
        callback_url: Some(CallbackUrl::parse("https://hooks.example.com/batch").unwrap()),
    };
    let part = NewPart::try_from(pb::SubmitBatchRequest::from(submission.clone())).unwrap();
    assert_eq!(part.batch_id, submission.batch_id);
    assert_eq!(part.batch_size, submission.batch_size);
    assert_eq!(part.items, submission.items);
    assert_eq!((part.total_items, part.part_number), (3, 1));
    assert_eq!(part.max_concurrency, Some(7));
    assert_eq!(part.failure_budget, Some(submission.failure_budget));
    assert_eq!(part.callback_url, submission.callback_url);
}

#[test]
fn a_failure_percentage_over_100_is_rejected_naming_the_field() {
    let err = NewPart::try_from(pb::SubmitBatchRequest {
        item_ids: vec!["a".into()],
        tolerated_failure_percentage: Some(101),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        with_sources(&err),
        "tolerated_failure_percentage: must be an integer between 0 and 100"
    );
    let err = NewPart::try_from(pb::AppendBatchItemsRequest {
        batch_id: "b".into(),
        total_items: 2,
        part_number: 1,
        item_ids: vec!["a".into()],
        tolerated_failure_percentage: Some(250),
        ..Default::default()
    })
    .unwrap_err();
    assert!(with_sources(&err).starts_with("tolerated_failure_percentage:"));
}

#[test]
fn a_submission_without_a_batch_id_gets_a_uuid_and_a_zero_batch_size_the_default() {
    let part = NewPart::try_from(pb::SubmitBatchRequest {
        batch_id: String::new(),
        item_ids: vec!["a".into()],
        batch_size: 0,
        ..Default::default()
    })
    .unwrap();
    assert!(uuid::Uuid::parse_str(part.batch_id.as_str()).is_ok());
    assert_eq!(part.batch_size, BatchSize::default());
}

#[test]
fn a_batch_round_trips_with_and_without_its_completion_time() {
    for completed_at in [None, Some(Timestamp(1_700_000_001_000_001))] {
        let batch = sample_batch(completed_at);
        let wire = pb::Batch::from(&batch);
        assert_eq!(wire.pending_items, 0);
        assert_eq!(
            wire.created_at,
            Some(PbTimestamp {
                seconds: -2,
                nanos: 765_433_000
            })
        );
        assert_eq!(Batch::try_from(wire).unwrap(), batch);
    }
}

#[test]
fn every_status_round_trips() {
    for status in BatchStatus::ALL {
        let wire = pb::BatchStatus::from(status) as i32;
        assert_eq!(batch_status(wire).unwrap(), status);
    }
    for status in [
        ItemStatus::Pending,
        ItemStatus::Succeeded,
        ItemStatus::Failed,
        ItemStatus::Cancelled,
    ] {
        let wire = pb::ItemStatus::from(status) as i32;
        assert_eq!(item_status(wire).unwrap(), status);
    }
}

#[test]
fn the_batch_responses_round_trip() {
    let batch = sample_batch(None);
    let get = pb::GetBatchStatusResponse::from(batch.clone());
    assert_eq!(Batch::try_from(get).unwrap(), batch);
    let cancel = pb::CancelBatchResponse::from(batch.clone());
    assert_eq!(Batch::try_from(cancel).unwrap(), batch);
    let watch = pb::WatchBatchResponse::from(batch.clone());
    assert_eq!(Batch::try_from(watch).unwrap(), batch);
}

#[test]
fn the_requests_naming_one_batch_round_trip() {
    let batch_id = batch_id_of("named");
    let get = pb::GetBatchStatusRequest::from(&batch_id);
    assert_eq!(BatchId::try_from(get).unwrap(), batch_id);
    let cancel = pb::CancelBatchRequest::from(&batch_id);
    assert_eq!(BatchId::try_from(cancel).unwrap(), batch_id);
    let watch = pb::WatchBatchRequest::from(&batch_id);
    assert_eq!(BatchId::try_from(watch).unwrap(), batch_id);
}

#[test]
fn an_acceptance_round_trips_through_both_submission_responses() {
    let batch = sample_batch(None);
    let accepted = Accepted {
        batch: batch.clone(),
        created: true,
    };
    let expected = Submitted {
        batch_id: batch.batch_id.clone(),
        total_items: 10,
        total_chunks: 4,
        status: BatchStatus::CompletedWithFailures,
        created: true,
    };
    let submit = pb::SubmitBatchResponse::from(accepted.clone());
    assert_eq!(Submitted::try_from(submit).unwrap(), expected);
    let append = pb::AppendBatchItemsResponse::from(accepted);
    assert_eq!(append.received_items, 10);
    assert_eq!(Submitted::try_from(append).unwrap(), expected);
}

#[test]
fn items_and_their_pages_round_trip_and_an_empty_error_means_none() {
    let page = Page {
        entries: vec![sample_item(None), sample_item(Some("not a UUID"))],
        next_page_token: Some("next".into()),
    };
    let wire = pb::ListBatchItemsResponse::from(page.clone());
    assert_eq!(wire.items[0].error, "");
    assert_eq!(Page::<ItemRecord>::try_from(wire).unwrap(), page);
    let last = Page::<ItemRecord> {
        entries: Vec::new(),
        next_page_token: None,
    };
    let wire = pb::ListBatchItemsResponse::from(last.clone());
    assert_eq!(wire.next_page_token, "");
    assert_eq!(Page::<ItemRecord>::try_from(wire).unwrap(), last);
}

#[test]
fn batch_pages_round_trip() {
    let page = Page {
        entries: vec![sample_batch(None), sample_batch(Some(Timestamp(5)))],
        next_page_token: None,
    };
    let wire = pb::ListBatchesResponse::from(page.clone());
    assert_eq!(Page::<Batch>::try_from(wire).unwrap(), page);
}

#[test]
fn list_queries_round_trip() {
    let items = ItemQuery {
        batch_id: batch_id_of("listed"),
        status: Some(ItemStatus::Failed),
        page_size: 250,
        page_token: Some("t".into()),
    };
    let wire = pb::ListBatchItemsRequest::from(items.clone());
    assert_eq!(ItemQuery::try_from(wire).unwrap(), items);
    let batches = BatchQuery {
        status: None,
        page_size: 10,
        page_token: None,
    };
    let wire = pb::ListBatchesRequest::from(batches.clone());
    assert_eq!(wire.status, 0);
    assert_eq!(BatchQuery::try_from(wire).unwrap(), batches);
}

#[test]
fn a_zero_page_size_takes_the_default() {
    let query = BatchQuery::try_from(pb::ListBatchesRequest::default()).unwrap();
    assert_eq!(query.page_size, DEFAULT_BATCH_PAGE);
    let query = ItemQuery::try_from(pb::ListBatchItemsRequest {
        batch_id: "b".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(query.page_size, DEFAULT_ITEM_PAGE);
}

#[test]
fn a_bad_submission_names_the_field_and_the_rule() {
    let submit = |batch_id: &str, item_ids: &[&str], batch_size| pb::SubmitBatchRequest {
        batch_id: batch_id.into(),
        item_ids: item_ids.iter().map(|id| id.to_string()).collect(),
        batch_size,
        ..Default::default()
    };
    let cases = [
        (submit("b", &[], 1), "item_ids: must hold at least one item ID"),
        (submit("b", &["a", ""], 1), "item_ids[1]: must not be empty"),
        (
            submit("b", &["a", "a"], 1),
            "item_ids[1]: duplicate item ID \"a\"",
        ),
        (
            submit("b", &["a\u{200B}"], 1),
            "item_ids[0]: must not contain bidirectional-control or zero-width characters (found U+200B)",
        ),
        (
            submit("b", &["a"], 1001),
            "batch_size: must be an integer between 1 and 1000",
        ),
        (submit("  ", &["a"], 1), "batch_id: must not be only whitespace"),
        (
            pb::SubmitBatchRequest {
                max_concurrency: 10_001,
                ..submit("b", &["a"], 1)
            },
            "max_concurrency: must be an integer between 1 and 10000 (0 or absent for the default)",
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(refusal(NewPart::try_from(request)), expected);
    }
    let err = NewPart::try_from(submit("b", &["ok", ""], 1)).unwrap_err();
    assert!(matches!(err.rule, FieldRule::Id(IdError::Empty)), "{err:?}");
}

#[test]
fn a_bad_part_names_the_field_and_the_rule() {
    let append = |total_items, part_number| pb::AppendBatchItemsRequest {
        batch_id: "p".into(),
        total_items,
        batch_size: 10,
        part_number,
        item_ids: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    let max = crate::domain::MAX_COUNT;
    let cases = [
        (
            append(0, 1),
            format!("total_items: must be an integer between 1 and {max}"),
        ),
        (
            append(max + 1, 1),
            format!("total_items: must be an integer between 1 and {max}"),
        ),
        (
            append(2, 0),
            format!("part_number: must be an integer between 1 and {max}"),
        ),
        (
            append(1, 1),
            "total_items: must be at least the number of items sent (2)".to_owned(),
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(refusal(NewPart::try_from(request)), expected);
    }
}

#[test]
fn an_unknown_filter_or_an_oversized_page_is_refused() {
    let batches = pb::ListBatchesRequest {
        status: 99,
        ..Default::default()
    };
    assert_eq!(
        refusal(BatchQuery::try_from(batches)),
        "status: 99 is not a BatchStatus"
    );
    let batches = pb::ListBatchesRequest {
        page_size: MAX_BATCH_PAGE + 1,
        ..Default::default()
    };
    assert_eq!(
        refusal(BatchQuery::try_from(batches)),
        "page_size: must be between 1 and 1000, or 0 for the default (50)"
    );
    let items = pb::ListBatchItemsRequest {
        batch_id: "b".into(),
        status: 42,
        ..Default::default()
    };
    assert_eq!(
        refusal(ItemQuery::try_from(items)),
        "status: 42 is not an ItemStatus"
    );
    let unnamed = pb::GetBatchStatusRequest::default();
    assert_eq!(
        refusal(BatchId::try_from(unnamed)),
        "batch_id: must not be empty"
    );
}

#[test]
fn a_batch_answer_without_a_status_or_a_timestamp_is_refused_not_guessed() {
    let wire = || pb::Batch::from(&sample_batch(None));
    let cases = [
        (
            pb::Batch {
                status: 0,
                ..wire()
            },
            "status: must not be BATCH_STATUS_UNSPECIFIED",
        ),
        (
            pb::Batch {
                status: 77,
                ..wire()
            },
            "status: 77 is not a BatchStatus",
        ),
        (
            pb::Batch {
                created_at: None,
                ..wire()
            },
            "created_at: is missing",
        ),
        (
            pb::Batch {
                updated_at: None,
                ..wire()
            },
            "updated_at: is missing",
        ),
        (
            pb::Batch {
                updated_at: Some(PbTimestamp {
                    seconds: 1,
                    nanos: -1,
                }),
                ..wire()
            },
            "updated_at: 1 s -1 ns is not a valid timestamp",
        ),
        (
            pb::Batch {
                completed_at: Some(PbTimestamp {
                    seconds: MAX_TIMESTAMP_SECONDS + 1,
                    nanos: 0,
                }),
                ..wire()
            },
            "completed_at: 253402300800 s 0 ns is not a valid timestamp",
        ),
        (
            pb::Batch {
                batch_id: String::new(),
                ..wire()
            },
            "batch_id: must not be empty",
        ),
    ];
    for (batch, expected) in cases {
        assert_eq!(refusal(Batch::try_from(batch)), expected);
    }
}

#[test]
fn a_refusal_inside_a_response_names_the_path_to_the_field() {
    assert_eq!(
        refusal(Batch::try_from(pb::GetBatchStatusResponse { batch: None })),
        "batch: is missing"
    );
    let mut batch = pb::Batch::from(&sample_batch(None));
    batch.created_at = None;
    let response = pb::WatchBatchResponse { batch: Some(batch) };
    assert_eq!(
        refusal(Batch::try_from(response)),
        "batch.created_at: is missing"
    );
    let mut page = pb::ListBatchItemsResponse::from(Page {
        entries: vec![sample_item(None), sample_item(None)],
        next_page_token: None,
    });
    page.items[1].status = 0;
    assert_eq!(
        refusal(Page::<ItemRecord>::try_from(page)),
        "items[1].status: must not be ITEM_STATUS_UNSPECIFIED"
    );
    let mut page = pb::ListBatchesResponse::from(Page {
        entries: vec![sample_batch(None)],
        next_page_token: None,
    });
    page.batches[0].status = 9;
    assert_eq!(
        refusal(Page::<Batch>::try_from(page)),
        "batches[0].status: 9 is not a BatchStatus"
    );
}

#[test]
fn an_item_answer_breaking_the_contract_is_refused() {
    let wire = || pb::Item::from(sample_item(None));
    let cases = [
        (
            pb::Item {
                status: 12,
                ..wire()
            },
            "status: 12 is not an ItemStatus",
        ),
        (
            pb::Item {
                item_id: String::new(),
                ..wire()
            },
            "item_id: must not be empty",
        ),
    ];
    for (item, expected) in cases {
        assert_eq!(refusal(ItemRecord::try_from(item)), expected);
    }
}

#[test]
fn a_submission_answer_without_a_status_is_refused() {
    let response = pb::SubmitBatchResponse {
        batch_id: "b".into(),
        status: 0,
        ..Default::default()
    };
    assert_eq!(
        refusal(Submitted::try_from(response)),
        "status: must not be BATCH_STATUS_UNSPECIFIED"
    );
    let response = pb::AppendBatchItemsResponse {
        batch_id: "b".into(),
        status: 8,
        ..Default::default()
    };
    assert_eq!(
        refusal(Submitted::try_from(response)),
        "status: 8 is not a BatchStatus"
    );
}

#[test]
fn timestamps_keep_microseconds_and_their_defined_range() {
    for micros in [0, 1, -1, 999_999, -1_000_001, 253_402_300_799_999_999] {
        let at = Timestamp(micros);
        assert_eq!(Timestamp::try_from(PbTimestamp::from(at)).unwrap(), at);
    }
    let earliest = PbTimestamp {
        seconds: MIN_TIMESTAMP_SECONDS,
        nanos: 0,
    };
    assert!(Timestamp::try_from(earliest).is_ok());
    let too_early = PbTimestamp {
        seconds: MIN_TIMESTAMP_SECONDS - 1,
        nanos: 999_999_999,
    };
    assert!(Timestamp::try_from(too_early).is_err());
    let too_many_nanos = PbTimestamp {
        seconds: 0,
        nanos: 1_000_000_000,
    };
    assert!(Timestamp::try_from(too_many_nanos).is_err());
}
