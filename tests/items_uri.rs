//! Batches by reference: `SubmitBatch` with `items_uri` and the seed body with `itemsUri`,
//! against S3 on moto's server. The real binary runs `serve` on a fresh SQLite database with
//! `AWS_ENDPOINT_URL` pointing at moto (the standard SDK configuration, as a user would set
//! it), and in the `init` Lambda role under the Runtime API emulator with `ITEMS_BUCKETS`.

mod common;

use std::path::PathBuf;

use batch_manager::domain::BatchId;
use batch_manager::grpc::pb;
use batch_manager::grpc::pb::batch_manager_client::BatchManagerClient;
use batch_manager::store::BatchStore;
use common::lambda::{fixture, http_reply, MotoStack};
use common::moto;
use common::process::{cli, Launch, ServerProcess};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

/// A bucket of its own on this test binary's moto server.
struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
}

impl Bucket {
    async fn create(prefix: &str) -> Self {
        let endpoint = moto::moto_endpoint().await;
        let config = aws_sdk_s3::config::Builder::from(&moto::sdk_config(&endpoint).await)
            .force_path_style(true)
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(config);
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}-{}", &unique[..12]);
        s3.create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create the bucket");
        Self { s3, name }
    }

    async fn put(&self, key: &str, body: impl Into<Vec<u8>>) -> String {
        self.s3
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(body.into().into())
            .send()
            .await
            .expect("put the object");
        self.uri(key)
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }
}

/// `batch-manager serve` on a fresh database, its AWS SDK pointed at moto.
struct Served {
    server: ServerProcess,
    client: BatchManagerClient<Channel>,
    db: PathBuf,
    _directory: tempfile::TempDir,
}

async fn serve(args: &[&str]) -> Served {
    let endpoint = moto::moto_endpoint().await;
    let env = moto::aws_env(&endpoint);
    let directory = tempfile::tempdir().expect("temporary directory");
    let db = directory.path().join("items-uri.db");
    let server = ServerProcess::start_with(
        &db,
        Launch {
            args,
            env: &env,
            ..Launch::default()
        },
    );
    let client = common::connect(server.grpc_addr).await;
    Served {
        server,
        client,
        db,
        _directory: directory,
    }
}

impl Served {
    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.http_addr)
    }

    async fn submit(
        &mut self,
        batch_id: &str,
        uri: &str,
        edit: impl FnOnce(&mut pb::SubmitBatchRequest),
    ) -> Result<pb::SubmitBatchResponse, tonic::Status> {
        let mut request = pb::SubmitBatchRequest {
            batch_id: batch_id.to_owned(),
            items_uri: uri.to_owned(),
            batch_size: 100,
            ..Default::default()
        };
        edit(&mut request);
        self.client
            .submit_batch(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn not_found(&mut self, batch_id: &str) {
        let status = self
            .client
            .get_batch_status(pb::GetBatchStatusRequest {
                batch_id: batch_id.to_owned(),
            })
            .await
            .expect_err("the batch must not exist");
        assert_eq!(status.code(), Code::NotFound, "{batch_id}: {status:?}");
    }

    /// The parts stored for a batch, by number, with their item counts.
    fn parts(&self, batch_id: &str) -> Vec<i64> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the database");
        let mut statement = conn
            .prepare(
                "SELECT p.part_number FROM parts p JOIN batches b ON b.seq = p.batch_seq \
                 WHERE b.batch_id = ?1 ORDER BY p.part_number",
            )
            .expect("prepare");
        statement
            .query_map([batch_id], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

fn uuids(count: usize) -> Vec<String> {
    common::uuids(count)
}

#[tokio::test]
async fn a_lines_object_with_crlf_and_blank_lines_runs_to_completion_with_exact_counts() {
    let bucket = Bucket::create("lines").await;
    let ids = uuids(1000);
    let mut content = String::from("\r\n");
    for (index, id) in ids.iter().enumerate() {
        content.push_str(id);
        content.push_str(if index % 2 == 0 { "\r\n" } else { "\n" });
        if index % 100 == 0 {
            content.push_str("  \n");
        }
    }
    content.pop();
    let uri = bucket.put("daily/ids.txt", content).await;
    let mut served = serve(&[]).await;

    let submitted = served
        .submit("lines-batch", &uri, |_| {})
        .await
        .expect("SubmitBatch");
    assert!(submitted.created, "{submitted:?}");
    assert_eq!(submitted.total_items, 1000);
    assert_eq!(submitted.total_chunks, 10);
    let batch = common::wait_terminal(&mut served.client, "lines-batch").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(
        (batch.total_items, batch.succeeded_items, batch.failed_items),
        (1000, 1000, 0)
    );
    let listed: Vec<String> = common::all_items(
        &mut served.client,
        "lines-batch",
        pb::ItemStatus::Unspecified,
    )
    .await
    .into_iter()
    .map(|item| item.item_id)
    .collect();
    assert_eq!(listed, ids, "every ID, in the object's order");
}

#[tokio::test]
async fn a_csv_object_with_a_header_and_quoted_ids_takes_its_first_column() {
    let bucket = Bucket::create("csv").await;
    let ids = uuids(500);
    let mut content = String::from("item_id,note\r\n");
    for (index, id) in ids.iter().enumerate() {
        if index % 3 == 0 {
            content.push_str(&format!("\"{id}\",\"a note, with a comma\"\r\n"));
        } else {
            content.push_str(&format!("{id},\"spans\ntwo lines\"\r\n"));
        }
    }
    // Task 1 fails IDs that are not UUIDs: ten of them, one quoted with a comma inside.
    for index in 0..9 {
        content.push_str(&format!("not-a-uuid-{index},x\n"));
    }
    content.push_str("\"not, a uuid\"");
    let uri = bucket.put("export.CSV", content).await;
    let mut served = serve(&[]).await;

    let submitted = served
        .submit("csv-batch", &uri, |request| {
            request.items_header = true;
            request.batch_size = 50;
        })
        .await
        .expect("SubmitBatch");
    assert_eq!(submitted.total_items, 510);
    let batch = common::wait_terminal(&mut served.client, "csv-batch").await;
    assert_eq!(
        batch.status(),
        pb::BatchStatus::CompletedWithFailures,
        "{batch:?}"
    );
    assert_eq!(
        (batch.total_items, batch.succeeded_items, batch.failed_items),
        (510, 500, 10)
    );
    let failed: Vec<String> =
        common::all_items(&mut served.client, "csv-batch", pb::ItemStatus::Failed)
            .await
            .into_iter()
            .map(|item| item.item_id)
            .collect();
    assert_eq!(failed.last().map(String::as_str), Some("not, a uuid"));
}

#[tokio::test]
async fn a_json_lines_object_takes_each_lines_id() {
    let bucket = Bucket::create("jsonl").await;
    let ids = uuids(300);
    let content: String = ids
        .iter()
        .enumerate()
        .map(|(index, id)| format!("{{\"seq\": {index}, \"id\": \"{id}\", \"tags\": [\"a\"]}}\n"))
        .collect();
    // The format given overrides the key's extension.
    let uri = bucket.put("items.json", content).await;
    let mut served = serve(&[]).await;

    let submitted = served
        .submit("jsonl-batch", &uri, |request| {
            request.items_format = pb::ItemsFormat::Jsonl as i32;
        })
        .await
        .expect("SubmitBatch");
    assert_eq!(submitted.total_items, 300);
    let batch = common::wait_terminal(&mut served.client, "jsonl-batch").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!((batch.total_items, batch.succeeded_items), (300, 300));
}

#[tokio::test]
async fn the_seed_body_with_items_uri_stores_the_whole_batch_once_however_often_it_is_sent() {
    let bucket = Bucket::create("seed").await;
    let content: String = uuids(250).iter().map(|id| format!("{id}\n")).collect();
    let uri = bucket.put("ids.ndjson.txt", content).await;
    let mut served = serve(&[]).await;

    let body = json!({"batchId": "seed-by-reference", "batchSize": 25, "itemsUri": uri});
    for _ in 0..2 {
        let (status, reply) =
            common::post_json_body(served.http_url("/stateMachineInit"), body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            reply,
            json!({"batchId": "seed-by-reference", "totalItems": 250})
        );
    }
    let batch = common::wait_terminal(&mut served.client, "seed-by-reference").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!((batch.total_items, batch.total_chunks), (250, 10));
    let listed = common::all_items(
        &mut served.client,
        "seed-by-reference",
        pb::ItemStatus::Unspecified,
    )
    .await;
    assert_eq!(listed.len(), 250);
}

#[tokio::test]
async fn an_object_of_250000_lines_is_stored_in_parts_of_100000_and_completes() {
    let bucket = Bucket::create("large").await;
    let mut content = String::with_capacity(250_000 * 37);
    for id in uuids(250_000) {
        content.push_str(&id);
        content.push('\n');
    }
    let uri = bucket.put("large.txt", content).await;
    let mut served = serve(&[]).await;

    let submitted = served
        .submit("large-batch", &uri, |request| request.batch_size = 1000)
        .await
        .expect("SubmitBatch");
    assert!(submitted.created);
    assert_eq!(
        (submitted.total_items, submitted.total_chunks),
        (250_000, 250)
    );
    assert_eq!(served.parts("large-batch"), vec![1, 2, 3]);

    // The same request again stores nothing new.
    let again = served
        .submit("large-batch", &uri, |request| request.batch_size = 1000)
        .await
        .expect("SubmitBatch again");
    assert!(!again.created, "{again:?}");
    assert_eq!(again.total_items, 250_000);

    let batch = common::wait_terminal(&mut served.client, "large-batch").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");
    assert_eq!(
        (batch.total_items, batch.succeeded_items, batch.total_chunks),
        (250_000, 250_000, 250)
    );
}

#[tokio::test]
async fn each_bad_reference_or_object_is_refused_naming_the_rule_and_nothing_is_stored() {
    let bucket = Bucket::create("bad").await;
    let other = Bucket::create("unlisted").await;
    let missing_bucket = format!(
        "missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );

    let mut line_537 = String::new();
    for id in uuids(536) {
        line_537.push_str(&id);
        line_537.push('\n');
    }
    line_537.push_str("tab\tinside\n");
    line_537.push_str(&uuids(10).join("\n"));
    let bad_line = bucket.put("bad-line.txt", line_537).await;
    let empty = bucket.put("empty.txt", "").await;
    let blank = bucket.put("blank.csv", "id\r\n\r\n  \n").await;
    let oversized = bucket
        .put(
            "oversized.txt",
            format!("a\nb\n{}\nc\n", "x".repeat(1 << 20)),
        )
        .await;
    let mut repeated_ids = uuids(900);
    repeated_ids[899] = repeated_ids[11].clone();
    let repeated_id = repeated_ids[11].clone();
    let repeated = bucket.put("repeated.txt", repeated_ids.join("\n")).await;
    let not_json = bucket
        .put("lines.jsonl", "{\"id\": \"a\"}\n{\"id\": 7}\n")
        .await;
    let unlisted = other.put("ids.txt", "a\nb\n").await;

    let allowed = format!("{},{missing_bucket}", bucket.name);
    let mut served = serve(&["--items-buckets", &allowed]).await;
    let before = common::database_fingerprint(&served.db);

    let cases: Vec<(String, String)> = vec![
        (
            "file:///etc/passwd".to_owned(),
            "must be an s3:// URI (s3://bucket/key), not file://".to_owned(),
        ),
        (
            "http://127.0.0.1:9/ids.txt".to_owned(),
            "must be an s3:// URI (s3://bucket/key), not http://".to_owned(),
        ),
        (
            "/etc/passwd".to_owned(),
            "must be an s3:// URI (s3://bucket/key)".to_owned(),
        ),
        (
            bucket.uri("no-such-object.txt"),
            "the object does not exist".to_owned(),
        ),
        (
            format!("s3://{missing_bucket}/ids.txt"),
            format!("bucket \"{missing_bucket}\" does not exist"),
        ),
        (
            bad_line,
            "line 537: must not contain control characters (found U+0009)".to_owned(),
        ),
        (empty, "the object holds no item IDs".to_owned()),
        (blank, "the object holds no item IDs".to_owned()),
        (oversized, "line 3: must be at most 256 bytes".to_owned()),
        (
            repeated,
            format!("line 900: duplicate item ID \"{repeated_id}\" (first on line 12)"),
        ),
        (
            not_json,
            "line 2: must be a JSON object with an \"id\" string".to_owned(),
        ),
        (
            unlisted,
            format!(
                "bucket \"{}\" is not one this server may read (its ITEMS_BUCKETS setting)",
                other.name
            ),
        ),
    ];
    for (index, (uri, rule)) in cases.iter().enumerate() {
        let batch_id = format!("refused-{index}");
        let header = uri.ends_with(".csv");
        let status = served
            .submit(&batch_id, uri, |request| request.items_header = header)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{uri}: {status:?}");
        assert_eq!(status.message(), format!("items_uri: {rule}"), "{uri}");

        let body =
            json!({"batchId": batch_id, "batchSize": 10, "itemsUri": uri, "itemsHeader": header});
        let (code, reply) =
            common::post_json_body(served.http_url("/stateMachineInit"), body.to_string()).await;
        assert_eq!(code, 400, "{uri}: {reply}");
        assert_eq!(reply, json!({"message": format!("itemsUri: {rule}")}));
        served.not_found(&batch_id).await;
    }

    let both = served
        .submit("refused-both", &bucket.uri("ids.txt"), |request| {
            request.item_ids = vec!["a".to_owned()];
        })
        .await
        .expect_err("refused");
    assert_eq!(both.code(), Code::InvalidArgument);
    assert!(
        both.message()
            .starts_with("items_uri: must not be given with item_ids"),
        "{both:?}"
    );
    served.not_found("refused-both").await;

    let listed = served
        .client
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .expect("ListBatches")
        .into_inner();
    assert!(listed.batches.is_empty(), "{listed:?}");
    assert_eq!(common::database_fingerprint(&served.db), before);
}

/// An API Gateway (HTTP API) event carrying `body`.
fn api_event(body: &Value) -> Value {
    let mut event = fixture("apigw-v2-seed.json");
    event["body"] = Value::String(body.to_string());
    event["isBase64Encoded"] = Value::Bool(false);
    event
}

#[tokio::test]
async fn the_init_function_reads_listed_buckets_only_and_stores_the_batch() {
    let stack = MotoStack::deploy("items-uri").await;
    let bucket = Bucket::create("init").await;
    let other = Bucket::create("init-unlisted").await;
    // Small objects: moto serves one request at a time, and init writes to DynamoDB on moto
    // while it reads the object.
    let content: String = uuids(120).iter().map(|id| format!("{id}\n")).collect();
    let uri = bucket.put("ids.txt", content.clone()).await;
    let unlisted = other.put("ids.txt", content).await;

    let init = stack
        .function_with(
            "init",
            &[("ITEMS_BUCKETS".to_owned(), format!(" {} ,", bucket.name))],
        )
        .await;
    let (status, reply) = http_reply(
        init.invoke(api_event(
            &json!({"batchId": "init-by-reference", "batchSize": 50, "itemsUri": uri}),
        ))
        .await,
    );
    assert_eq!(status, 200, "{reply}: {}", init.logs());
    assert_eq!(
        reply,
        json!({"batchId": "init-by-reference", "totalItems": 120})
    );
    let store = stack.store();
    let batch = store
        .get_batch(&BatchId::parse("init-by-reference").unwrap())
        .await
        .expect("GetBatch")
        .expect("the batch is stored");
    assert_eq!(
        (batch.total_items, batch.received_items, batch.total_chunks),
        (120, 120, 3)
    );

    let (status, reply) = http_reply(
        init.invoke(api_event(
            &json!({"batchId": "init-unlisted", "batchSize": 50, "itemsUri": unlisted}),
        ))
        .await,
    );
    assert_eq!(status, 400, "{reply}");
    assert_eq!(
        reply,
        json!({"message": format!(
            "itemsUri: bucket \"{}\" is not one this server may read (its ITEMS_BUCKETS setting)",
            other.name
        )})
    );
    assert!(store
        .get_batch(&BatchId::parse("init-unlisted").unwrap())
        .await
        .expect("GetBatch")
        .is_none());

    // Without ITEMS_BUCKETS, no bucket may be read.
    let closed = stack.function("init").await;
    let (status, reply) = http_reply(
        closed
            .invoke(api_event(
                &json!({"batchId": "init-closed", "batchSize": 50, "itemsUri": bucket.uri("ids.txt")}),
            ))
            .await,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("itemsUri: bucket \"{}\" is not one", bucket.name)),
        "{reply}"
    );
    assert!(store
        .get_batch(&BatchId::parse("init-closed").unwrap())
        .await
        .expect("GetBatch")
        .is_none());
}

#[tokio::test]
async fn the_cli_submits_by_reference_and_checks_its_flags_before_sending() {
    let bucket = Bucket::create("cli").await;
    let content: String = std::iter::once("id;ignored\n".to_owned())
        .chain(uuids(40).iter().map(|id| format!("{id},x\n")))
        .collect();
    let uri = bucket.put("ids.data", content).await;
    let mut served = serve(&[]).await;
    let server = format!("http://{}", served.server.grpc_addr);

    let (ok, stdout, stderr) = cli(
        &server,
        &[
            "submit",
            "--items-uri",
            &uri,
            "--items-format",
            "csv",
            "--items-header",
            "--batch-size",
            "10",
            "--batch-id",
            "cli-by-reference",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let submitted: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(submitted["totalItems"], 40, "{submitted}");
    assert_eq!(submitted["totalChunks"], 4, "{submitted}");
    let batch = common::wait_terminal(&mut served.client, "cli-by-reference").await;
    assert_eq!(batch.status(), pb::BatchStatus::Completed, "{batch:?}");

    for (args, expected) in [
        (
            vec!["submit", "--items-uri", "file:///etc/passwd"],
            "--items-uri: must be an s3:// URI (s3://bucket/key), not file://",
        ),
        (
            vec!["submit", "--items-uri", &uri, "--items-header"],
            "--items-header: applies only to the csv format (the format is lines)",
        ),
        (
            vec!["submit", "--items-uri", &uri, "--items-file", "ids.txt"],
            "cannot be used with",
        ),
        (vec!["submit", "--items-format", "csv"], "required"),
    ] {
        let (ok, _, stderr) = cli(&server, &args).await;
        assert!(!ok, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
