//! moto's AWS API server on loopback, one per test binary and serving one request at a time
//! (`tests/support/moto_server.py` says why), plus SDK configuration pointing at it and DynamoDB
//! tables created as `cf-templates/batch-processing-stack.yaml` defines them.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use tokio::sync::OnceCell;

static MOTO: OnceCell<String> = OnceCell::const_new();

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The endpoint of this test binary's moto server, started on first use. The server stops by
/// itself when the test process exits (a shell watches the parent).
pub(crate) async fn moto_endpoint() -> String {
    MOTO.get_or_init(|| async {
        let port = free_port();
        // The Python beside moto_server is the one moto is installed in.
        let moto = which("moto_server");
        let python = std::path::Path::new(&moto).with_file_name("python3");
        let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_server.py");
        let log = std::env::temp_dir().join(format!("batch-manager-moto-{port}.log"));
        let script = format!(
            "'{python}' '{launcher}' 127.0.0.1 {port} >'{log}' 2>&1 & child=$!; \\
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child",
            python = python.display(),
            log = log.display(),
            parent = std::process::id()
        );
        let mut watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's server");
        std::thread::spawn(move || watcher.wait());
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::get(format!("{endpoint}/moto-api/")).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto's server did not start; its output:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        endpoint
    })
    .await
    .clone()
}

fn which(program: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{program} is not on PATH: run scripts/test.sh (it installs moto[server])"
    );
    path
}

/// Environment for a child process (the Lambda binary) talking to moto.
pub(crate) fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// SDK configuration pointing at `endpoint`.
pub(crate) async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await
}

/// Unique table names for one test.
pub(crate) fn table_names(prefix: &str) -> (String, String) {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    (
        format!("{prefix}-{}-batches", &unique[..8]),
        format!("{prefix}-{}-requests", &unique[..8]),
    )
}

fn key(name: &str, key_type: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .expect("key")
}

fn string_attribute(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute")
}

fn keys_only_index(name: &str, hash: &str, range: &str) -> GlobalSecondaryIndex {
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash))
        .key_schema(key(range, KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .expect("index")
}

/// Creates both tables with the keys and indexes of the stack template.
pub(crate) async fn create_tables(
    client: &aws_sdk_dynamodb::Client,
    batch_table: &str,
    request_table: &str,
) {
    client
        .create_table()
        .table_name(batch_table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attribute("batchId"))
        .attribute_definitions(string_attribute("status"))
        .attribute_definitions(string_attribute("createdKey"))
        .attribute_definitions(string_attribute("listPartition"))
        .key_schema(key("batchId", KeyType::Hash))
        .global_secondary_indexes(keys_only_index("by-status", "status", "createdKey"))
        .global_secondary_indexes(keys_only_index("by-created", "listPartition", "createdKey"))
        .send()
        .await
        .expect("create batch table");
    client
        .create_table()
        .table_name(request_table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attribute("batchId"))
        .attribute_definitions(string_attribute("sk"))
        .attribute_definitions(string_attribute("duePartition"))
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("dueAt")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .expect("attribute"),
        )
        .key_schema(key("batchId", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(keys_only_index("by-due", "duePartition", "dueAt"))
        .stream_specification(
            aws_sdk_dynamodb::types::StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::NewImage)
                .build()
                .expect("stream specification"),
        )
        .send()
        .await
        .expect("create request table");
}

/// A DynamoDB store on fresh tables in this binary's moto server, with `config` (SDK settings
/// pointing at moto, or at a proxy in front of it).
pub(crate) async fn dynamo_store_with(
    prefix: &str,
    config: aws_sdk_dynamodb::Config,
) -> batch_manager::store::dynamo::DynamoStore {
    let endpoint = moto_endpoint().await;
    let setup = aws_sdk_dynamodb::Client::new(&sdk_config(&endpoint).await);
    let (batch_table, request_table) = table_names(prefix);
    create_tables(&setup, &batch_table, &request_table).await;
    batch_manager::store::dynamo::DynamoStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        batch_manager::store::dynamo::DynamoTables {
            batch_table,
            request_table,
        },
    )
}

/// A DynamoDB store on fresh tables in this binary's moto server.
pub(crate) async fn dynamo_store(prefix: &str) -> batch_manager::store::dynamo::DynamoStore {
    let endpoint = moto_endpoint().await;
    let config = aws_sdk_dynamodb::Config::from(&sdk_config(&endpoint).await);
    dynamo_store_with(prefix, config).await
}

/// Starts another moto server on loopback, with `extra_env` in its environment (settings moto
/// reads only from its own environment, e.g. `MOTO_SIMPLE_BATCH_FAIL_AFTER`), and returns its
/// endpoint. Unlike [`moto_endpoint`] it starts a new server on every call; it stops by itself
/// when the test process exits.
pub(crate) async fn start_moto_server(extra_env: &[(&str, &str)]) -> String {
    let port = free_port();
    let moto = which("moto_server");
    let python = std::path::Path::new(&moto).with_file_name("python3");
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/moto_server.py");
    let log = std::env::temp_dir().join(format!("batch-manager-moto-{port}.log"));
    let script = format!(
        "'{python}' '{launcher}' 127.0.0.1 {port} >'{log}' 2>&1 & child=$!; \\
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child",
        python = python.display(),
        log = log.display(),
        parent = std::process::id()
    );
    let mut watcher = Command::new("sh")
        .args(["-c", &script])
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto's server");
    std::thread::spawn(move || watcher.wait());
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{endpoint}/moto-api/")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "moto's server did not start; its output:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    endpoint
}
