//! Shared test helpers: a real server on loopback port 0 with a fresh SQLite file, a connected
//! gRPC client, and ways to wait for a batch and to fingerprint the database.
#![allow(dead_code)]

/// One `#[tokio::test]` per behaviour and backend: `sqlite::<name>` and `dynamodb::<name>`,
/// each calling `<name>(store)` with the store [`sqlite_store`] or [`dynamo_store`] opens (a
/// guard returned beside it lives as long as the test). The test file imports both.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let (store, _guard) = super::sqlite_store().await;
                    super::$behaviour(store).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let (store, _guard) = super::dynamo_store().await;
                    super::$behaviour(store).await;
                }
            )*
        }
    };
}

pub(crate) mod aws_batch;
pub(crate) mod lambda;
pub(crate) mod moto;
pub(crate) mod process;
pub(crate) mod stream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batch_manager::app::{LocalApp, LocalConfig};
use batch_manager::config::ConnectionConfig;
use batch_manager::engine::local::EngineConfig;
use batch_manager::grpc::pb;
use batch_manager::grpc::pb::batch_manager_client::BatchManagerClient;
use batch_manager::pipeline::Tasks;
use tonic::transport::Channel;

/// Longest a test waits for a batch to end.
pub(crate) const BATCH_DEADLINE: Duration = Duration::from_secs(60);

pub(crate) struct TestApp {
    pub app: LocalApp,
    pub client: BatchManagerClient<Channel>,
    pub db: PathBuf,
    _directory: tempfile::TempDir,
}

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(Tasks::default()).await
}

pub(crate) async fn spawn_app_with(tasks: Tasks) -> TestApp {
    spawn_app_configured(tasks, ConnectionConfig::default()).await
}

/// A server with these tasks and connection settings.
pub(crate) async fn spawn_app_configured(tasks: Tasks, connections: ConnectionConfig) -> TestApp {
    spawn_app_running(tasks, connections, batch_manager::app::JobConfig::default()).await
}

/// A server whose tasks run as the external jobs `jobs` asks for.
pub(crate) async fn spawn_app_with_jobs(jobs: batch_manager::app::JobConfig) -> TestApp {
    spawn_app_running(Tasks::default(), ConnectionConfig::default(), jobs).await
}

async fn spawn_app_running(
    tasks: Tasks,
    connections: ConnectionConfig,
    jobs: batch_manager::app::JobConfig,
) -> TestApp {
    let directory = tempfile::tempdir().expect("temporary directory");
    let db = directory.path().join("test.db");
    let app = LocalApp::spawn(
        LocalConfig {
            grpc_addr: loopback(),
            http_addr: loopback(),
            db: db.clone(),
            engine: EngineConfig::default(),
            connections,
            jobs,
            items_buckets: Default::default(),
            access: Default::default(),
        },
        tasks,
    )
    .await
    .expect("server starts");
    let client = connect(app.grpc_addr).await;
    TestApp {
        app,
        client,
        db,
        _directory: directory,
    }
}

/// A SQLite store in a fresh temporary directory (kept as long as the guard).
pub(crate) async fn sqlite_store() -> (
    std::sync::Arc<dyn batch_manager::store::BatchStore>,
    tempfile::TempDir,
) {
    let directory = tempfile::tempdir().unwrap();
    let store =
        batch_manager::store::sqlite::SqliteStore::open(directory.path().join("store.db")).unwrap();
    (std::sync::Arc::new(store), directory)
}

/// A DynamoDB store on fresh tables in this binary's moto server.
pub(crate) async fn dynamo_store() -> (std::sync::Arc<dyn batch_manager::store::BatchStore>, ()) {
    (
        std::sync::Arc::new(moto::dynamo_store("behaviour").await),
        (),
    )
}

pub(crate) async fn connect(addr: SocketAddr) -> BatchManagerClient<Channel> {
    BatchManagerClient::connect(format!("http://{addr}"))
        .await
        .expect("client connects")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

impl TestApp {
    pub(crate) fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.http_addr)
    }

    pub(crate) async fn status(&mut self, batch_id: &str) -> pb::Batch {
        fetch_status(&mut self.client, batch_id).await
    }

    /// Polls until the batch is terminal; panics after [`BATCH_DEADLINE`].
    pub(crate) async fn wait_terminal(&mut self, batch_id: &str) -> pb::Batch {
        wait_terminal(&mut self.client, batch_id).await
    }

    pub(crate) async fn all_items(
        &mut self,
        batch_id: &str,
        status: pb::ItemStatus,
    ) -> Vec<pb::Item> {
        all_items(&mut self.client, batch_id, status).await
    }
}

/// `GetBatchStatus`, which must succeed.
pub(crate) async fn fetch_status(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
) -> pb::Batch {
    client
        .get_batch_status(pb::GetBatchStatusRequest {
            batch_id: batch_id.to_owned(),
        })
        .await
        .expect("GetBatchStatus")
        .into_inner()
        .batch
        .expect("batch")
}

/// `PauseBatch`: the batch as it stands after, or the refusal.
pub(crate) async fn pause(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
) -> Result<pb::Batch, tonic::Status> {
    let request = pb::PauseBatchRequest {
        batch_id: batch_id.to_owned(),
    };
    let response = client.pause_batch(request).await?.into_inner();
    Ok(response.batch.expect("batch"))
}

/// `ResumeBatch`: the batch as it stands after, or the refusal.
pub(crate) async fn resume(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
) -> Result<pb::Batch, tonic::Status> {
    let request = pb::ResumeBatchRequest {
        batch_id: batch_id.to_owned(),
    };
    let response = client.resume_batch(request).await?.into_inner();
    Ok(response.batch.expect("batch"))
}

/// `RedriveBatch`: its answer (the batch and how many items run again), or the refusal.
pub(crate) async fn redrive(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
    include_cancelled: bool,
) -> Result<pb::RedriveBatchResponse, tonic::Status> {
    let request = pb::RedriveBatchRequest {
        batch_id: batch_id.to_owned(),
        include_cancelled,
    };
    Ok(client.redrive_batch(request).await?.into_inner())
}

/// A `SubmitBatch` request.
pub(crate) fn submit_request(
    batch_id: &str,
    item_ids: Vec<String>,
    batch_size: u32,
) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        batch_id: batch_id.to_owned(),
        item_ids,
        batch_size,
        ..Default::default()
    }
}

pub(crate) async fn wait_terminal(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
) -> pb::Batch {
    let deadline = Instant::now() + BATCH_DEADLINE;
    loop {
        let batch = fetch_status(client, batch_id).await;
        if is_terminal(batch.status()) {
            return batch;
        }
        assert!(
            Instant::now() < deadline,
            "batch {batch_id} did not finish: {batch:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn is_terminal(status: pb::BatchStatus) -> bool {
    !matches!(
        status,
        pb::BatchStatus::Pending
            | pb::BatchStatus::Running
            | pb::BatchStatus::Paused
            | pb::BatchStatus::Unspecified
    )
}

pub(crate) async fn all_items(
    client: &mut BatchManagerClient<Channel>,
    batch_id: &str,
    status: pb::ItemStatus,
) -> Vec<pb::Item> {
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_batch_items(pb::ListBatchItemsRequest {
                batch_id: batch_id.to_owned(),
                status: status as i32,
                page_size: 1000,
                page_token,
            })
            .await
            .expect("ListBatchItems")
            .into_inner();
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return items;
        }
        page_token = page.next_page_token;
    }
}

/// The seed example's body, as shipped with the old system.
pub(crate) fn seed_body() -> serde_json::Value {
    serde_json::from_str(include_str!("../fixtures/seed-request.json")).expect("fixture")
}

pub(crate) fn seed_item_ids() -> Vec<String> {
    seed_body()["itemIds"]
        .as_array()
        .expect("itemIds")
        .iter()
        .map(|id| id.as_str().expect("string").to_owned())
        .collect()
}

/// Half UUIDs, half not (the built-in task 1 fails those), interleaved.
pub(crate) fn half_bad(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            if n % 2 == 0 {
                uuid::Uuid::new_v4().to_string()
            } else {
                format!("bad-{n}")
            }
        })
        .collect()
}

pub(crate) fn uuids(count: usize) -> Vec<String> {
    (0..count)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect()
}

/// [`database_fingerprint`] once the embedded engine has recorded the end of every chunk
/// execution, which it does a moment after the batch turns terminal: taken as the "before" of
/// a request that must write nothing, it cannot change by itself afterwards.
pub(crate) async fn settled_fingerprint(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let deadline = Instant::now() + BATCH_DEADLINE;
    loop {
        let running: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM executions WHERE status = 'RUNNING'",
                [],
                |row| row.get(0),
            )
            .expect("count running executions");
        if running == 0 {
            return database_fingerprint(db);
        }
        assert!(
            Instant::now() < deadline,
            "{running} chunk executions still running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fingerprint of every table's rows, to show a rejected request wrote nothing.
pub(crate) fn database_fingerprint(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.retain(|name| name != "sqlite_sequence");
    let mut fingerprint = String::new();
    for table in tables {
        let mut statement = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = statement.column_count();
        let mut rows = statement.query([]).unwrap();
        fingerprint.push_str(&format!("[{table}]\n"));
        while let Some(row) = rows.next().unwrap() {
            for column in 0..columns {
                let value: rusqlite::types::Value = row.get(column).unwrap();
                fingerprint.push_str(&format!("{value:?}|"));
            }
            fingerprint.push('\n');
        }
    }
    fingerprint
}

/// POSTs `body` as JSON to `url`; the answer's status and JSON body.
pub(crate) async fn post_json_body(
    url: String,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response
        .json::<serde_json::Value>()
        .await
        .expect("JSON body");
    (status, body)
}
