//! Every kind of bad gRPC input is INVALID_ARGUMENT naming the field and the rule, and writes
//! nothing.

mod common;

use batch_manager::grpc::pb;
use common::*;
use tonic::Code;

use common::submit_request as submit;

#[tokio::test]
async fn bad_submissions_are_rejected_and_the_database_is_unchanged() {
    let mut test = spawn_app().await;
    // One good batch first, so "unchanged" is checked against a database with content.
    test.client
        .submit_batch(submit("existing", uuids(3), 3))
        .await
        .unwrap();
    test.wait_terminal("existing").await;
    let before = settled_fingerprint(&test.db).await;

    let many: Vec<String> = (0..100_001).map(|i| format!("item-{i}")).collect();
    let cases: Vec<(pb::SubmitBatchRequest, &str, &str)> = vec![
        (submit("b1", vec![], 10), "item_ids", "at least one"),
        (
            submit("b2", vec!["a".into(), "".into()], 10),
            "item_ids[1]",
            "empty",
        ),
        (
            submit("b3", vec!["a".into(), "a".into()], 10),
            "item_ids[1]",
            "duplicate",
        ),
        (
            submit("b4", vec!["x".repeat(257)], 10),
            "item_ids[0]",
            "256 bytes",
        ),
        (
            submit("b5", vec!["tab\there".into()], 10),
            "item_ids[0]",
            "control",
        ),
        (
            submit("b6", vec!["nul\0".into()], 10),
            "item_ids[0]",
            "control",
        ),
        (
            submit("b7", vec!["a".into()], 1001),
            "batch_size",
            "between 1 and 1000",
        ),
        (submit("b8", many, 100), "item_ids", "at most 100000"),
        (
            submit(&"b".repeat(257), vec!["a".into()], 10),
            "batch_id",
            "256 bytes",
        ),
        (
            submit("bad\nid", vec!["a".into()], 10),
            "batch_id",
            "control",
        ),
        (
            submit("b9", vec!["a".into(), "   ".into()], 10),
            "item_ids[1]",
            "only whitespace",
        ),
        (
            submit("b10", vec!["invoice\u{202E}fdp.exe".into()], 10),
            "item_ids[0]",
            "U+202E",
        ),
        (
            submit("b11", vec!["look\u{200B}alike".into()], 10),
            "item_ids[0]",
            "U+200B",
        ),
        (
            submit("b12", vec!["\u{2066}isolated".into()], 10),
            "item_ids[0]",
            "U+2066",
        ),
        (
            submit("b13", vec!["bom\u{FEFF}".into()], 10),
            "item_ids[0]",
            "U+FEFF",
        ),
        (submit("  \t ", vec!["a".into()], 10), "batch_id", "control"),
        (
            submit("   ", vec!["a".into()], 10),
            "batch_id",
            "only whitespace",
        ),
        (
            submit("batch\u{2069}", vec!["a".into()], 10),
            "batch_id",
            "U+2069",
        ),
        (
            submit("batch\u{2060}", vec!["a".into()], 10),
            "batch_id",
            "U+2060",
        ),
        (
            pb::SubmitBatchRequest {
                max_concurrency: 10_001,
                ..submit("limited", vec!["a".into()], 10)
            },
            "max_concurrency",
            "between 1 and 10000",
        ),
    ];
    for (request, field, rule) in cases {
        let shown = format!("{:?}", request.batch_id);
        let status = test.client.submit_batch(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}");
        assert!(
            status.message().starts_with(&format!("{field}:")) && status.message().contains(rule),
            "{shown}: {:?} should name {field} and say {rule:?}",
            status.message()
        );
    }

    let append = |batch_id: &str, total: u64, part: u64, size: u32| pb::AppendBatchItemsRequest {
        batch_id: batch_id.into(),
        total_items: total,
        batch_size: size,
        part_number: part,
        item_ids: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    let append_cases = vec![
        (append("", 2, 1, 10), "batch_id"),
        (append("p", 0, 1, 10), "total_items"),
        (append("p", 1, 1, 10), "total_items"),
        (append("p", 2, 0, 10), "part_number"),
        (append("p", 2, 1, 5000), "batch_size"),
        (
            pb::AppendBatchItemsRequest {
                max_concurrency: 20_000,
                ..append("p", 2, 1, 10)
            },
            "max_concurrency",
        ),
    ];
    for (request, field) in append_cases {
        let status = test.client.append_batch_items(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{}",
            status.message()
        );
    }

    let listing = vec![
        pb::ListBatchesRequest {
            status: 99,
            page_size: 0,
            page_token: String::new(),
        },
        pb::ListBatchesRequest {
            status: 0,
            page_size: 1001,
            page_token: String::new(),
        },
    ];
    for request in listing {
        let status = test.client.list_batches(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let status = test
        .client
        .list_batch_items(pb::ListBatchItemsRequest {
            batch_id: "existing".into(),
            status: 42,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("status:"));
    for batch_id in ["", " ", "exist\u{202D}ing"] {
        let status = test
            .client
            .get_batch_status(pb::GetBatchStatusRequest {
                batch_id: batch_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{batch_id:?}");
        assert!(status.message().starts_with("batch_id:"), "{batch_id:?}");
    }

    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn numbers_beyond_the_allowed_range_are_invalid_argument_naming_the_field() {
    let mut test = spawn_app().await;
    let before = database_fingerprint(&test.db);
    let max_count = batch_manager::domain::MAX_COUNT;
    let append = |total: u64, part: u64| pb::AppendBatchItemsRequest {
        batch_id: "huge-numbers".into(),
        total_items: total,
        batch_size: 10,
        part_number: part,
        item_ids: vec!["a".into()],
        ..Default::default()
    };
    let cases = [
        (append(1 << 63, 1), "total_items"),
        (append(u64::MAX, 1), "total_items"),
        (append(max_count + 1, 1), "total_items"),
        (append(10, 1 << 63), "part_number"),
        (append(10, u64::MAX), "part_number"),
        (append(10, max_count + 1), "part_number"),
    ];
    for (request, field) in cases {
        let shown = format!("{}/{}", request.total_items, request.part_number);
        let status = test.client.append_batch_items(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{shown}: {status:?}");
        assert!(
            status.message().starts_with(&format!(
                "{field}: must be an integer between 1 and {max_count}"
            )),
            "{shown}: {:?}",
            status.message()
        );
    }
    for page_size in [1001, u32::MAX] {
        let status = test
            .client
            .list_batches(pb::ListBatchesRequest {
                status: 0,
                page_size,
                page_token: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("page_size: must be between 1 and 1000"),
            "{:?}",
            status.message()
        );
    }
    let status = test
        .client
        .submit_batch(submit("huge-size", vec!["a".into()], u32::MAX))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status
        .message()
        .starts_with("batch_size: must be an integer between 1 and 1000"));
    assert_eq!(database_fingerprint(&test.db), before);

    let accepted = test
        .client
        .append_batch_items(append(max_count, max_count))
        .await
        .expect("the largest count and part number are accepted")
        .into_inner();
    assert_eq!(accepted.total_items, max_count);
}
