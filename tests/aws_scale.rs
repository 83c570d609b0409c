//! The AWS path at scale, on moto with the compiled binary's Lambda roles: chunk starts off the
//! request path (the request table's stream delivered to `init` by a test-side poller, as the
//! stack's event source mapping would), bounded concurrency per batch, `UpdateBatch` widening a
//! running batch, replayed stream records changing nothing, and a start lost between its
//! claim and its start repaired by the schedule.
//!
//! Sizes are small enough for every run of the suite; `SCALE_POST_ITEMS` and `SCALE_RUN_ITEMS`
//! raise them (scripts/bench-aws-scale.sh runs them large and reports the figures).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch_manager::domain::{BatchId, BatchStatus};
use batch_manager::grpc::pb;
use batch_manager::store::BatchStore;
use common::lambda::{
    fixture, http_reply, play_all_executions, run_to_end, ChunkFunctions, MotoStack, Round,
};
use common::process::{Launch, ServerProcess};
use common::stream::StreamPoller;
use serde_json::{json, Value};

/// How long a batch may take to run on moto: `SCALE_RUN_DEADLINE_SECS`, 600 by default.
fn run_deadline() -> Duration {
    let seconds = std::env::var("SCALE_RUN_DEADLINE_SECS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(seconds)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn api_event(body: &Value) -> Value {
    let mut event = fixture("apigw-v2-seed.json");
    event["body"] = Value::String(body.to_string());
    event["isBase64Encoded"] = json!(false);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_limited_to_five_never_runs_more_and_a_raise_to_twenty_widens_it() {
    let stack = MotoStack::deploy("scale-limit").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let functions = Arc::new(functions);
    let app = stack.serve().await;
    let mut client = common::connect(app.grpc_addr).await;
    client
        .submit_batch(pb::SubmitBatchRequest {
            max_concurrency: 5,
            ..common::submit_request("limited-on-aws", common::uuids(150), 1)
        })
        .await
        .expect("SubmitBatch");

    let batch_id = BatchId::parse("limited-on-aws").unwrap();
    let mut raised_at: Option<u64> = None;
    let mut rounds: Vec<(bool, Round)> = Vec::new();
    let raise = tokio::sync::Notify::new();
    let ended = {
        let run = run_to_end(
            &stack,
            &init,
            Arc::clone(&functions),
            &batch_id,
            run_deadline(),
            |round| {
                rounds.push((raised_at.is_some(), round));
                if raised_at.is_none() && round.recorded >= 40 {
                    raised_at = Some(round.recorded);
                    raise.notify_one();
                }
            },
        );
        let widen = async {
            raise.notified().await;
            let updated = client
                .clone()
                .update_batch(pb::UpdateBatchRequest {
                    batch_id: "limited-on-aws".into(),
                    max_concurrency: 20,
                })
                .await
                .expect("UpdateBatch")
                .into_inner()
                .batch
                .expect("batch");
            assert_eq!(updated.max_concurrency, 20);
        };
        let (ended, ()) = tokio::join!(run, widen);
        ended
    };
    assert_eq!(ended.status, BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, 150);

    let before: Vec<u64> = rounds
        .iter()
        .filter(|(raised, _)| !raised)
        .map(|(_, round)| round.in_flight())
        .collect();
    let after: Vec<u64> = rounds
        .iter()
        .filter(|(raised, _)| *raised)
        .map(|(_, round)| round.in_flight())
        .collect();
    let peak_before = before.iter().copied().max().unwrap_or(0);
    let peak_after = after.iter().copied().max().unwrap_or(0);
    println!(
        "in flight, sampled each round: at most {peak_before} of 5 over {} rounds, then at most {peak_after} of 20 over {} rounds",
        before.len(),
        after.len()
    );
    assert!(
        (1..=5).contains(&peak_before),
        "{peak_before} chunks in flight under a limit of 5"
    );
    assert!(
        (6..=20).contains(&peak_after),
        "{peak_after} chunks in flight after the raise to 20"
    );
    app.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn replayed_stream_records_change_nothing() {
    let stack = MotoStack::deploy("scale-replay").await;
    let init_env = env(&[("DEFAULT_MAX_CONCURRENCY", "2")]);
    let (init, functions) = tokio::join!(
        stack.function_with("init", &init_env),
        ChunkFunctions::start(&stack)
    );
    let body = json!({
        "batchId": "replayed",
        "totalItems": 10,
        "batchSize": 1,
        "currentBatch": 1,
        "itemIds": common::uuids(10),
    });
    let (status, reply) = http_reply(init.invoke(api_event(&body)).await);
    assert_eq!(status, 200, "{reply}");
    stack.deliver_stream(&init).await;
    assert_eq!(stack.executions().await.len(), 2, "two slots, two starts");

    // Every record so far delivered again, as an at-least-once stream may: no slot is taken
    // twice, nothing new starts.
    let batch_id = BatchId::parse("replayed").unwrap();
    let before = stack.store().get_batch(&batch_id).await.unwrap();
    let replay = StreamPoller::new(&stack.sdk_config, &stack.request_table).await;
    assert!(replay.deliver(&init).await > 0);
    assert_eq!(stack.executions().await.len(), 2);
    assert_eq!(stack.store().get_batch(&batch_id).await.unwrap(), before);

    let ends = play_all_executions(&stack, &init, &functions).await;
    assert_eq!(ends.len(), 10);
    let ended = stack.store().get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(ended.status, BatchStatus::Completed);
    assert_eq!(ended.succeeded_items, 10);

    // The whole stream again, after the end: still nothing starts or changes.
    let replay = StreamPoller::new(&stack.sdk_config, &stack.request_table).await;
    assert!(
        replay.deliver(&init).await >= 11,
        "a part and ten recorded chunks"
    );
    assert_eq!(stack.executions().await.len(), 10);
    assert_eq!(
        stack.store().get_batch(&batch_id).await.unwrap(),
        Some(ended)
    );
}

#[tokio::test]
async fn a_start_lost_between_its_claim_and_its_start_is_repaired_by_the_schedule() {
    let stack = MotoStack::deploy("scale-lost").await;
    let init_env = env(&[("START_CLAIM_TIMEOUT_SECONDS", "1")]);
    let (init, functions) = tokio::join!(
        stack.function_with("init", &init_env),
        ChunkFunctions::start(&stack)
    );
    let (status, reply) = http_reply(init.invoke(fixture("apigw-v2-seed.json")).await);
    assert_eq!(status, 200, "{reply}");
    let batch_id = BatchId::parse("4b4dc5c6-fbd9-493d-98ff-c459c378f45d").unwrap();

    // A function claims the batch's slots and dies before starting anything.
    let store = stack.store();
    store.mark_startable(&batch_id, 0, 2).await.unwrap();
    let claim = store
        .claim_starts(&batch_id, 100, 500, Duration::from_secs(1))
        .await
        .unwrap()
        .expect("a claim");
    assert_eq!((claim.first, claim.end), (0, 2));

    // While the claim is fresh, its claimer may still be starting it: the stream leaves it.
    stack.deliver_stream(&init).await;
    assert!(stack.executions().await.is_empty());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let swept = init
        .invoke(json!({
            "version": "0",
            "id": "schedule",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-12-05T00:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {}
        }))
        .await
        .expect("the sweep runs");
    assert_eq!(swept["started"], json!(2), "{swept}");
    assert_eq!(stack.executions().await.len(), 2);
    assert!(
        init.logs().contains("never confirmed"),
        "the repair is logged: {}",
        init.logs()
    );

    let ends = play_all_executions(&stack, &init, &functions).await;
    assert_eq!(ends.len(), 2);
    let ended = store.get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(ended.status, BatchStatus::Completed);
    assert_eq!(ended.succeeded_items, 10);
}

/// `name`'s value as a number, or `default`.
fn scale(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(default)
}

fn post_body(batch_id: &str, items: usize) -> Value {
    json!({
        "batchId": batch_id,
        "totalItems": items,
        "batchSize": 10,
        "currentBatch": 1,
        "itemIds": common::uuids(items),
    })
}

/// A POST of `SCALE_POST_ITEMS` IDs (20,000 by default) at batch size 10: answered once its
/// part is stored, whatever its chunk count, and the stream then starts the first chunks
/// within the default limit.
#[tokio::test]
async fn a_large_post_is_answered_once_stored_and_the_stream_starts_its_first_chunks() {
    let items = scale("SCALE_POST_ITEMS", 20_000);
    let stack = MotoStack::deploy("scale-post").await;
    let init_env = env(&[("DEFAULT_MAX_CONCURRENCY", "50")]);
    let init = stack.function_with("init", &init_env).await;
    let body = post_body("large-post", items);
    let posted = Instant::now();
    let (status, reply) = http_reply(init.invoke(api_event(&body)).await);
    let answered = posted.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert!(
        stack.executions().await.is_empty(),
        "the request stores; the stream starts"
    );
    let batch_id = BatchId::parse("large-post").unwrap();
    let stored = stack.store().get_batch(&batch_id).await.unwrap().unwrap();
    let chunks = items.div_ceil(10) as u64;
    assert_eq!(
        (stored.total_items, stored.total_chunks),
        (items as u64, chunks)
    );

    let delivered = Instant::now();
    stack.deliver_stream(&init).await;
    let first_starts = delivered.elapsed();
    assert_eq!(stack.execution_names().await.len() as u64, chunks.min(50));
    println!(
        "POST of {items} IDs at batch size 10 ({chunks} chunks): answered in {:.2} s; the stream's first {} starts took {:.2} s",
        answered.as_secs_f64(),
        chunks.min(50),
        first_starts.as_secs_f64()
    );
}

/// Every chunk of a POST of `SCALE_RUN_ITEMS` IDs (1,000 by default) at batch size 10 runs
/// through the Lambda roles to exact counts, within the default limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chunk_of_a_posted_batch_completes_within_the_default_limit() {
    let items = scale("SCALE_RUN_ITEMS", 1_000);
    let stack = MotoStack::deploy("scale-run").await;
    let init_env = env(&[("DEFAULT_MAX_CONCURRENCY", "20")]);
    let (init, functions) = tokio::join!(
        stack.function_with("init", &init_env),
        ChunkFunctions::start(&stack)
    );
    let (status, reply) = http_reply(init.invoke(api_event(&post_body("run", items))).await);
    assert_eq!(status, 200, "{reply}");

    let batch_id = BatchId::parse("run").unwrap();
    let chunks = items.div_ceil(10) as u64;
    let mut progress = Progress::new(chunks);
    let ended = run_to_end(
        &stack,
        &init,
        Arc::new(functions),
        &batch_id,
        run_deadline(),
        |round| progress.see(round),
    )
    .await;
    let peak = progress.peak;
    println!(
        "{items} IDs at batch size 10 ({chunks} chunks) ran on moto in {:.1} s, at most {peak} in flight",
        progress.started.elapsed().as_secs_f64()
    );
    assert_eq!(ended.status, BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, items as u64);
    assert_eq!(ended.completed_chunks, chunks);
    assert!(peak <= 20, "the default limit holds: {peak}");
}

/// A long run's progress: every tenth of its chunks printed as they are recorded (runs of
/// 1,000 chunks or more), and the most chunks in flight seen.
struct Progress {
    chunks: u64,
    every: u64,
    next: u64,
    started: Instant,
    peak: u64,
}

impl Progress {
    fn new(chunks: u64) -> Self {
        let every = if chunks >= 1000 { chunks / 10 } else { 0 };
        Self {
            chunks,
            every,
            next: every,
            started: Instant::now(),
            peak: 0,
        }
    }

    fn see(&mut self, round: Round) {
        self.peak = self.peak.max(round.in_flight());
        if self.every > 0 && round.recorded >= self.next {
            println!(
                "  {} of {} chunks recorded after {:.0} s",
                round.recorded,
                self.chunks,
                self.started.elapsed().as_secs_f64()
            );
            self.next = round.recorded + self.every;
        }
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}

/// An S3 object of `SCALE_OBJECT_LINES` IDs (20,000 by default) at batch size 100: one
/// `SubmitBatch` by reference to `serve --backend aws` (the binary) is answered once the object
/// is checked and stored; the stream then starts every chunk through `init` and they run to
/// exact counts. `init` also takes the same object by reference in a POST; its peak RSS is
/// read before and after both. The object lives on a moto server of its own: moto answers one
/// request at a time, and a reader storing parts while the object's download is still open
/// would otherwise wait on itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_object_submitted_by_one_request_runs_to_exact_counts_with_init_memory_flat() {
    let lines = scale("SCALE_OBJECT_LINES", 20_000);
    let stack = MotoStack::deploy("scale-s3").await;
    let s3_endpoint = common::moto::start_moto_server(&[]).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&common::moto::sdk_config(&s3_endpoint).await)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!(
        "scale-ids-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create the bucket");
    let body: String = common::uuids(lines)
        .iter()
        .map(|id| format!("{id}\n"))
        .collect();
    s3.put_object()
        .bucket(&bucket)
        .key("ids.txt")
        .body(body.into_bytes().into())
        .send()
        .await
        .expect("put the object");
    let uri = format!("s3://{bucket}/ids.txt");

    let init_env = env(&[
        ("ITEMS_BUCKETS", bucket.as_str()),
        ("AWS_ENDPOINT_URL_S3", s3_endpoint.as_str()),
    ]);
    let (init, functions) = tokio::join!(
        stack.function_with("init", &init_env),
        ChunkFunctions::start(&stack)
    );
    let small = json!({"batchId": "small", "totalItems": 10, "batchSize": 100,
        "currentBatch": 1, "itemIds": common::uuids(10)});
    let (status, reply) = http_reply(init.invoke(api_event(&small)).await);
    assert_eq!(status, 200, "{reply}");
    let rss_at_start = peak_rss_mib(init.pid());

    let directory = tempfile::tempdir().unwrap();
    let mut serve_env: Vec<(&str, String)> = common::moto::aws_env(&stack.endpoint);
    serve_env.push(("AWS_ENDPOINT_URL_S3", s3_endpoint.clone()));
    let server = ServerProcess::start_with(
        &directory.path().join("unused.db"),
        Launch {
            args: &[
                "--backend",
                "aws",
                "--batch-table",
                &stack.batch_table,
                "--request-table",
                &stack.request_table,
                "--state-machine-arn",
                &stack.state_machine_arn,
                "--items-buckets",
                &bucket,
            ],
            env: &serve_env,
            ..Launch::default()
        },
    );
    let mut client = common::connect(server.grpc_addr).await;
    let submitted_at = Instant::now();
    let submitted = client
        .submit_batch(pb::SubmitBatchRequest {
            batch_id: "from-s3".into(),
            items_uri: uri.clone(),
            batch_size: 100,
            ..Default::default()
        })
        .await
        .expect("SubmitBatch by reference")
        .into_inner();
    let accepted = submitted_at.elapsed();
    assert_eq!(submitted.total_items, lines as u64);
    let chunks = lines.div_ceil(100) as u64;
    assert_eq!(submitted.total_chunks, chunks);

    let posted_at = Instant::now();
    let by_post = json!({"batchId": "posted-from-s3", "batchSize": 100, "itemsUri": uri});
    let (status, reply) = http_reply(init.invoke(api_event(&by_post)).await);
    let posted = posted_at.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["totalItems"], json!(lines));
    let rss_after_post = peak_rss_mib(init.pid());
    // Only the first batch runs here; the second was there to weigh init's memory.
    client
        .cancel_batch(pb::CancelBatchRequest {
            batch_id: "posted-from-s3".into(),
        })
        .await
        .expect("CancelBatch");

    let batch_id = BatchId::parse("from-s3").unwrap();
    let mut progress = Progress::new(chunks);
    let ended = run_to_end(
        &stack,
        &init,
        Arc::new(functions),
        &batch_id,
        run_deadline(),
        |round| progress.see(round),
    )
    .await;
    let rss_at_end = peak_rss_mib(init.pid());
    println!(
        "S3 object of {lines} IDs at batch size 100 ({chunks} chunks): SubmitBatch answered in {:.1} s; \
         a POST of it to init answered in {:.1} s; all chunks ran on moto in {:.0} s, at most {} in flight; \
         init peak RSS {rss_at_start:.1} MiB after a 10-item POST, {rss_after_post:.1} MiB after the object's POST, \
         {rss_at_end:.1} MiB after starting every chunk",
        accepted.as_secs_f64(),
        posted.as_secs_f64(),
        progress.started.elapsed().as_secs_f64(),
        progress.peak
    );
    assert_eq!(ended.status, BatchStatus::Completed, "{ended:?}");
    assert_eq!(ended.succeeded_items, lines as u64);
    assert_eq!(ended.completed_chunks, chunks);
    assert!(
        progress.peak <= 100,
        "the default limit holds: {}",
        progress.peak
    );
    assert!(
        rss_at_end < 128.0 && rss_after_post < 128.0,
        "init's memory grew: {rss_at_start} -> {rss_after_post} -> {rss_at_end} MiB"
    );
}

/// A batch stored before chunk starts were counted (its first part's chunks were started by
/// the request that stored them) gets its next part's chunks started, and only those.
#[tokio::test]
async fn a_batch_from_before_counted_starts_has_its_next_parts_chunks_started() {
    let stack = MotoStack::deploy("scale-legacy").await;
    let store = stack.store();
    let batch_id = BatchId::parse("legacy").unwrap();
    let part = |number: u64| {
        batch_manager::domain::NewPart::new(
            batch_id.clone(),
            20,
            batch_manager::domain::BatchSize::parse(5).unwrap(),
            number,
            batch_manager::domain::parse_item_ids(common::uuids(10)).unwrap(),
        )
        .unwrap()
    };
    store.append_part(&part(1)).await.unwrap();
    // The batch item as an earlier version wrote it: no start counters.
    aws_sdk_dynamodb::Client::new(&stack.sdk_config)
        .update_item()
        .table_name(&stack.batch_table)
        .key(
            "batchId",
            aws_sdk_dynamodb::types::AttributeValue::S("legacy".into()),
        )
        .update_expression("REMOVE startableChunks, startedChunks, inFlight")
        .send()
        .await
        .expect("strip the counters");
    store.append_part(&part(2)).await.unwrap();

    store.mark_startable(&batch_id, 2, 4).await.unwrap();
    let claim = store
        .claim_starts(&batch_id, 100, 500, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the new part's chunks");
    assert_eq!((claim.first, claim.end), (2, 4));
    store.confirm_starts(&batch_id, &claim).await.unwrap();
    assert!(store
        .claim_starts(&batch_id, 100, 500, Duration::from_secs(60))
        .await
        .unwrap()
        .is_none());
}

/// A part whose stream records never reached `init` (they ran out of retries) is made
/// startable and started by the schedule.
#[tokio::test]
async fn a_part_whose_stream_records_were_lost_is_started_by_the_schedule() {
    let stack = MotoStack::deploy("scale-stranded").await;
    let (init, functions) = tokio::join!(stack.function("init"), ChunkFunctions::start(&stack));
    let (status, reply) = http_reply(init.invoke(fixture("apigw-v2-seed.json")).await);
    assert_eq!(status, 200, "{reply}");
    // The stream's records are dropped: read, and never delivered.
    assert_eq!(stack.stream.read().await.len(), 1);

    let swept = init
        .invoke(json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}))
        .await
        .expect("the sweep runs");
    assert_eq!(swept["started"], json!(2), "{swept}");
    assert!(
        init.logs().contains("stream records were lost"),
        "{}",
        init.logs()
    );

    let ends = play_all_executions(&stack, &init, &functions).await;
    assert_eq!(ends.len(), 2);
    let batch_id = BatchId::parse("4b4dc5c6-fbd9-493d-98ff-c459c378f45d").unwrap();
    let ended = stack.store().get_batch(&batch_id).await.unwrap().unwrap();
    assert_eq!(ended.status, BatchStatus::Completed);
    assert_eq!(ended.succeeded_items, 10);
}
