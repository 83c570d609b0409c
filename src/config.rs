//! Typed settings from flags and environment variables, read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::dynamo::DynamoTables;

/// Batch-processing manager: a local gRPC service with an embedded engine, or four AWS Lambdas
/// under Step Functions, from one binary.
#[derive(Debug, Parser)]
#[command(name = "batch-manager", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC admin service, the seed HTTP endpoint and (local backend) the engine.
    Serve(ServeArgs),
    /// Submit a batch from a file of item IDs, one per line.
    Submit(SubmitArgs),
    /// Show a batch's status.
    Status(BatchArgs),
    /// Follow a batch with a progress bar until it ends.
    Watch(BatchArgs),
    /// List a batch's items and their outcomes.
    Items(ItemsArgs),
    /// Cancel a batch.
    Cancel(BatchArgs),
    /// Measure the embedded engine: N items end to end on a temporary database.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

/// Where the service keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Embedded SQLite store and engine.
    Local,
    /// A deployed stack's DynamoDB tables and Step Functions state machine.
    Aws,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(
        long,
        env = "BATCH_MANAGER_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub backend: Backend,
    /// gRPC listen address.
    #[arg(
        long,
        env = "BATCH_MANAGER_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,
    /// Seed-compatible HTTP listen address.
    #[arg(
        long,
        env = "BATCH_MANAGER_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub http_addr: SocketAddr,
    /// SQLite database file (local backend).
    #[arg(long, env = "BATCH_MANAGER_DB", default_value = "batch-manager.db")]
    pub db: PathBuf,
    /// Chunk executions the embedded engine runs at once.
    #[arg(long, env = "BATCH_MANAGER_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// The deployed stack `--backend aws` works on. Optional here so that the local backend runs
/// without them; [`AwsArgs::require`] insists on all three.
#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// DynamoDB batch table (the stack's BatchTableName output; aws backend).
    #[arg(long, env = "BATCH_TABLE")]
    pub batch_table: Option<String>,
    /// DynamoDB request table (the stack's RequestTableName output; aws backend).
    #[arg(long, env = "REQUEST_TABLE")]
    pub request_table: Option<String>,
    /// The chunk state machine (the stack's StateMachineArn output; aws backend).
    #[arg(long, env = "STATE_MACHINE_ARN")]
    pub state_machine_arn: Option<String>,
}

/// Everything `--backend aws` needs to find a deployed stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub tables: DynamoTables,
    pub state_machine_arn: String,
}

/// A setting `--backend aws` cannot run without.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing --{flag} (or the {env_var} environment variable): the stack's {output} output")]
pub struct MissingSetting {
    pub flag: &'static str,
    pub env_var: &'static str,
    pub output: &'static str,
}

impl AwsArgs {
    /// The settings, or the first one missing. Empty values count as missing.
    pub fn require(&self) -> Result<AwsSettings, MissingSetting> {
        fn present(
            value: &Option<String>,
            flag: &'static str,
            env_var: &'static str,
            output: &'static str,
        ) -> Result<String, MissingSetting> {
            value
                .clone()
                .filter(|value| !value.is_empty())
                .ok_or(MissingSetting {
                    flag,
                    env_var,
                    output,
                })
        }
        Ok(AwsSettings {
            tables: DynamoTables {
                batch_table: present(
                    &self.batch_table,
                    "batch-table",
                    "BATCH_TABLE",
                    "BatchTableName",
                )?,
                request_table: present(
                    &self.request_table,
                    "request-table",
                    "REQUEST_TABLE",
                    "RequestTableName",
                )?,
            },
            state_machine_arn: present(
                &self.state_machine_arn,
                "state-machine-arn",
                "STATE_MACHINE_ARN",
                "StateMachineArn",
            )?,
        })
    }
}

/// The AWS SDK configuration from the standard sources (environment variables such as
/// `AWS_REGION` and `AWS_ENDPOINT_URL`, profile files, the Lambda or container credentials).
/// Credentials are fetched on first use; with the region in the environment, as on Lambda,
/// loading makes no network call.
pub async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// gRPC server URL.
    #[arg(
        long,
        env = "BATCH_MANAGER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// File with one item ID per line (blank lines are skipped); `-` reads standard input.
    #[arg(long)]
    pub items_file: PathBuf,
    /// Items per chunk (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub batch_size: u32,
    /// Batch ID (the idempotency key); a UUID is generated when absent.
    #[arg(long)]
    pub batch_id: Option<String>,
    /// Follow the batch until it ends.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    pub batch_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ItemsArgs {
    pub batch_id: String,
    /// Only items in this status: pending, succeeded, failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Stop after this many items.
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[cfg(feature = "bench")]
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Items to run through.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u64,
    /// Items per chunk.
    #[arg(long, default_value_t = 100)]
    pub batch_size: u32,
    /// Chunk executions at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}
