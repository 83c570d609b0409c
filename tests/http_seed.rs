//! The seed-compatible `POST /stateMachineInit`, over real HTTP.

mod common;

use batch_manager::grpc::pb;
use common::*;
use serde_json::{json, Value};

async fn post(test: &TestApp, body: impl Into<reqwest::Body>) -> (u16, Value) {
    post_json_body(test.http_url("/stateMachineInit"), body).await
}

async fn post_json(test: &TestApp, body: &Value) -> (u16, Value) {
    post(test, serde_json::to_vec(body).unwrap()).await
}

#[tokio::test]
async fn the_seed_example_posted_once_completes_with_ten_succeeded_items() {
    let mut test = spawn_app().await;
    let body = seed_body();
    let (status, reply) = post_json(&test, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"batchId": "4b4dc5c6-fbd9-493d-98ff-c459c378f45d", "totalItems": 10})
    );
    let batch = test
        .wait_terminal("4b4dc5c6-fbd9-493d-98ff-c459c378f45d")
        .await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 10);
    assert_eq!(batch.total_chunks, 2);

    let before = settled_fingerprint(&test.db).await;
    let (status, reply) = post_json(&test, &body).await;
    assert_eq!(status, 200, "re-posting the same part is a no-op: {reply}");
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn a_batch_posted_in_parts_finishes_when_total_items_are_processed() {
    let mut test = spawn_app().await;
    let ids = uuids(12);
    let part = |current: u64, items: &[String]| json!({"batchId": "seed-parts", "totalItems": 12, "batchSize": 5, "currentBatch": current, "itemIds": items});
    assert_eq!(post_json(&test, &part(1, &ids[..5])).await.0, 200);
    let waiting = test.status("seed-parts").await;
    assert_eq!(waiting.received_items, 5);
    assert!(!is_terminal(waiting.status()), "{waiting:?}");
    assert!(waiting.pending_items >= 7, "{waiting:?}");
    assert_eq!(post_json(&test, &part(2, &ids[5..])).await.0, 200);
    let batch = test.wait_terminal("seed-parts").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed);
    assert_eq!(batch.succeeded_items, 12);
    assert_eq!(batch.total_chunks, 3);
}

#[tokio::test]
async fn conflicting_posts_are_409_and_write_nothing() {
    let mut test = spawn_app().await;
    let ids = uuids(4);
    let body = json!({"batchId": "seed-conflict", "totalItems": 4, "batchSize": 2, "currentBatch": 1, "itemIds": ids});
    assert_eq!(post_json(&test, &body).await.0, 200);
    test.wait_terminal("seed-conflict").await;
    let before = settled_fingerprint(&test.db).await;

    let other_items = json!({"batchId": "seed-conflict", "totalItems": 4, "batchSize": 2, "currentBatch": 1, "itemIds": uuids(4)});
    let other_total = json!({"batchId": "seed-conflict", "totalItems": 9, "batchSize": 2, "currentBatch": 2, "itemIds": uuids(4)});
    let beyond_total = json!({"batchId": "seed-conflict", "totalItems": 4, "batchSize": 2, "currentBatch": 2, "itemIds": uuids(1)});
    for body in [other_items, other_total, beyond_total] {
        let (status, reply) = post_json(&test, &body).await;
        assert_eq!(status, 409, "{reply}");
        assert!(reply["message"].as_str().unwrap().contains("seed-conflict"));
    }
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn malformed_seed_requests_are_400_naming_the_field_and_write_nothing() {
    let test = spawn_app().await;
    let valid = seed_body();
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        serde_json::to_vec(&body).unwrap()
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&body).unwrap()
    };
    let mut duplicate = valid.clone();
    duplicate["itemIds"][1] = duplicate["itemIds"][0].clone();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"batchId\": ".to_vec(), "body"),
        (b"[]".to_vec(), "body"),
        (b"".to_vec(), "body"),
        (without("batchId"), "batchId"),
        (with("batchId", json!(42)), "batchId"),
        (with("batchId", json!("")), "batchId"),
        (with("batchId", json!("a\u{0007}b")), "batchId"),
        (with("batchId", json!("    ")), "batchId"),
        (with("batchId", json!("batch\u{202E}")), "batchId"),
        (with("batchId", json!("\u{FEFF}batch")), "batchId"),
        (without("totalItems"), "totalItems"),
        (with("totalItems", json!("10")), "totalItems"),
        (with("totalItems", json!(0)), "totalItems"),
        (with("totalItems", json!(-3)), "totalItems"),
        (with("totalItems", json!(2.5)), "totalItems"),
        (with("totalItems", json!(9)), "totalItems"),
        (with("batchSize", json!(0)), "batchSize"),
        (with("batchSize", json!(1001)), "batchSize"),
        (with("batchSize", json!(true)), "batchSize"),
        (with("currentBatch", json!(0)), "currentBatch"),
        (with("currentBatch", Value::Null), "currentBatch"),
        (without("itemIds"), "itemIds"),
        (with("itemIds", json!([])), "itemIds"),
        (with("itemIds", json!("e9837419")), "itemIds"),
        (with("itemIds", json!([1, 2])), "itemIds[0]"),
        (with("itemIds", json!(["ok", ""])), "itemIds[1]"),
        (with("itemIds", json!(["x".repeat(257)])), "itemIds[0]"),
        (with("itemIds", json!(["line\nbreak"])), "itemIds[0]"),
        (with("itemIds", json!(["ok", " "])), "itemIds[1]"),
        (with("itemIds", json!(["a\u{2067}b"])), "itemIds[0]"),
        (with("itemIds", json!(["a\u{200D}b"])), "itemIds[0]"),
        (serde_json::to_vec(&duplicate).unwrap(), "itemIds[1]"),
    ];
    for (body, field) in cases {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(120)
            .collect::<String>();
        let (status, reply) = post(&test, body).await;
        assert_eq!(status, 400, "{shown}: {reply}");
        let message = reply["message"].as_str().expect("message");
        assert!(
            message.starts_with(&format!("{field}:")),
            "{shown}: expected the message to name {field}, got {message:?}"
        );
    }
    let fingerprint = database_fingerprint(&test.db);
    assert!(!fingerprint.contains("4b4dc5c6"), "nothing was written");
}

#[tokio::test]
async fn numbers_beyond_the_allowed_range_are_400_naming_the_field_and_write_nothing() {
    let test = spawn_app().await;
    let before = database_fingerprint(&test.db);
    let max_count = batch_manager::domain::MAX_COUNT;
    let body = |total: &str, size: &str, current: &str| {
        format!(
            r#"{{"batchId": "huge-numbers", "totalItems": {total}, "batchSize": {size}, "currentBatch": {current}, "itemIds": ["a"]}}"#
        )
    };
    let beyond = (max_count + 1).to_string();
    let cases = [
        (
            body("9223372036854775808", "5", "1"),
            "totalItems",
            "1",
            max_count,
        ),
        (
            body("18446744073709551615", "5", "1"),
            "totalItems",
            "1",
            max_count,
        ),
        (
            body("18446744073709551616", "5", "1"),
            "totalItems",
            "1",
            max_count,
        ),
        (body("1e30", "5", "1"), "totalItems", "1", max_count),
        (body(&beyond, "5", "1"), "totalItems", "1", max_count),
        (
            body("10", "5", "9223372036854775808"),
            "currentBatch",
            "1",
            max_count,
        ),
        (
            body("10", "5", "18446744073709551615"),
            "currentBatch",
            "1",
            max_count,
        ),
        (body("10", "5", &beyond), "currentBatch", "1", max_count),
        (
            body("10", "9223372036854775808", "1"),
            "batchSize",
            "1",
            1000,
        ),
        (body("10", "4294967297", "1"), "batchSize", "1", 1000),
    ];
    for (body, field, low, high) in cases {
        let (status, reply) = post(&test, body.clone()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let expected = format!("{field}: must be an integer between {low} and {high}");
        assert!(
            reply["message"].as_str().unwrap().starts_with(&expected),
            "{body}: expected {expected:?}, got {reply}"
        );
    }
    assert_eq!(database_fingerprint(&test.db), before);
}

#[tokio::test]
async fn over_the_per_request_limit_is_400() {
    let test = spawn_app().await;
    let ids: Vec<String> = (0..100_001).map(|i| format!("id-{i}")).collect();
    let body = json!({"batchId": "huge", "totalItems": 100_001, "batchSize": 100, "currentBatch": 1, "itemIds": ids});
    let (status, reply) = post_json(&test, &body).await;
    assert_eq!(status, 400);
    assert!(reply["message"].as_str().unwrap().starts_with("itemIds:"));
    assert!(!database_fingerprint(&test.db).contains("huge"));
}
