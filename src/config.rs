//! Typed settings from flags and environment variables, read once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::dynamo::DynamoTables;

/// Batch-processing manager: a local gRPC service with an embedded engine, or four AWS Lambdas
/// under Step Functions, from one binary.
#[derive(Debug, Parser)]
#[command(name = "batch-manager", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The binary's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC admin service, the seed HTTP endpoint and (local backend) the engine.
    Serve(Box<ServeArgs>),
    /// Submit a batch from a file of item IDs, one per line.
    Submit(SubmitArgs),
    /// Show a batch's status.
    Status(BatchArgs),
    /// Follow a batch with a progress bar until it ends.
    Watch(WatchArgs),
    /// List batches, newest first.
    Batches(BatchesArgs),
    /// List a batch's items and their outcomes.
    Items(ItemsArgs),
    /// Write every item of a batch (or those in one status) to a file or standard output, as
    /// JSON Lines or CSV, as the server streams them.
    Export(ExportArgs),
    /// Cancel a batch.
    Cancel(BatchArgs),
    /// Change a running batch's limit on chunk executions in flight at once.
    Update(UpdateArgs),
    /// Pause a batch: no chunk starts until it is resumed; running chunks finish.
    Pause(BatchArgs),
    /// Resume a paused batch where it stopped.
    Resume(BatchArgs),
    /// Re-run the failed items of an ended batch as new attempts.
    Redrive(RedriveArgs),
    /// Inside an AWS Batch job: print the item IDs the job works on, read from the stack's
    /// tables (for chunks whose IDs do not fit in the job's environment).
    JobItems(JobItemsArgs),
    /// Measure the embedded engine: N items end to end on a temporary database.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

/// Where the service keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    /// Embedded SQLite store and engine.
    Local,
    /// A deployed stack's DynamoDB tables and Step Functions state machine.
    Aws,
}

/// The flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(
        long,
        env = "BATCH_MANAGER_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub(crate) backend: Backend,
    /// gRPC listen address.
    #[arg(
        long,
        env = "BATCH_MANAGER_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub(crate) grpc_addr: SocketAddr,
    /// Seed-compatible HTTP listen address.
    #[arg(
        long,
        env = "BATCH_MANAGER_HTTP_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub(crate) http_addr: SocketAddr,
    /// SQLite database file (local backend).
    #[arg(long, env = "BATCH_MANAGER_DB", default_value = "batch-manager.db")]
    pub(crate) db: PathBuf,
    /// Chunk executions the embedded engine steps at once (an execution waiting for an
    /// external job holds no worker), and the most task commands running at once.
    #[arg(long, env = "BATCH_MANAGER_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) concurrency: u16,
    #[command(flatten)]
    pub(crate) jobs: JobArgs,
    /// Buckets a batch's `items_uri` may name (comma-separated); any bucket the server's AWS
    /// credentials can read when empty.
    #[arg(long, env = "ITEMS_BUCKETS", value_name = "BUCKETS")]
    pub(crate) items_buckets: Option<String>,
    #[command(flatten)]
    pub(crate) connections: ConnectionArgs,
    #[command(flatten)]
    pub(crate) callbacks: CallbackArgs,
    #[command(flatten)]
    pub(crate) access: AccessArgs,
    #[command(flatten)]
    pub(crate) aws: AwsArgs,
    /// Log lines as human-readable text, or as JSON objects carrying each request's ID.
    #[arg(
        long,
        env = "BATCH_MANAGER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) log_format: crate::logging::LogFormat,
}

impl ServeArgs {
    /// How `serve` writes its log lines.
    pub fn log_format(&self) -> crate::logging::LogFormat {
        self.log_format
    }
}

/// Who may call the server, and over what.
#[derive(Debug, Clone, Args)]
pub(crate) struct AccessArgs {
    /// File of the bearer tokens callers must send (`authorization: Bearer <token>`): one per
    /// line, an optional name after a space, `ro:` in front of a read-only token.
    #[arg(long, env = "BATCH_MANAGER_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub(crate) auth_token_file: Option<PathBuf>,
    /// Serve without tokens on addresses other machines can reach (refused otherwise).
    #[arg(long, env = "BATCH_MANAGER_ALLOW_UNAUTHENTICATED")]
    pub(crate) allow_unauthenticated: bool,
    /// PEM certificate chain: serve gRPC and HTTP over TLS (needs --tls-key).
    #[arg(
        long,
        env = "BATCH_MANAGER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "BATCH_MANAGER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,
}

impl AccessArgs {
    /// Reads the token file and the certificate, refusing an open server beyond loopback.
    pub(crate) fn settings(
        &self,
        addresses: &[(&str, SocketAddr)],
    ) -> anyhow::Result<crate::app::AccessConfig> {
        let control = match &self.auth_token_file {
            Some(path) => crate::access::AccessControl::from_file(path)?,
            None => crate::access::AccessControl::open(),
        };
        crate::access::check_exposure(&control, addresses, self.allow_unauthenticated)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::app::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(crate::app::AccessConfig { control, tls })
    }
}

/// Tasks as external jobs. A task with a command runs it on this machine once per chunk
/// attempt (the chunk's item IDs on stdin; the contract is in the README); without one, a task
/// whose `TASK1_JOB_QUEUE` / `TASK1_JOB_DEFINITION` (or `TASK2_...`) are set submits AWS Batch
/// jobs; otherwise the built-in task runs.
#[derive(Debug, Clone, Args)]
pub(crate) struct JobArgs {
    /// Task 1 as a command, split into words without a shell (e.g. "python3 validate.py").
    #[arg(long, env = "BATCH_MANAGER_TASK1_COMMAND")]
    pub(crate) task1_command: Option<String>,
    /// Task 2 as a command, split into words without a shell (e.g. "python3 my_task.py").
    #[arg(long, env = "BATCH_MANAGER_TASK2_COMMAND")]
    pub(crate) task2_command: Option<String>,
    /// Seconds one attempt's job may run before it is stopped and the attempt fails.
    #[arg(long, env = "BATCH_MANAGER_TASK_TIMEOUT", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub(crate) task_timeout: u64,
    /// Seconds before the first poll of a job; the wait doubles with every poll, up to 60.
    #[arg(long, env = "BATCH_MANAGER_JOB_POLL_INTERVAL", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub(crate) job_poll_interval: u64,
}

/// Text that holds a secret: read like any flag, never shown (`Debug` hides it).
#[derive(Clone)]
pub(crate) struct SecretText(String);

impl SecretText {
    /// The secret, for the one place that sends or uses it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for SecretText {
    type Err = std::convert::Infallible;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(Self(raw.to_owned()))
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(hidden)")
    }
}

/// Completion callbacks: the signing secret, and (hidden, for tests) the delivery timings.
#[derive(Debug, Clone, Args)]
pub(crate) struct CallbackArgs {
    /// File holding the secret completion callbacks are signed with (HMAC-SHA256), at least
    /// 16 bytes; without a secret, batches naming a callback URL are refused.
    #[arg(long, env = "BATCH_MANAGER_CALLBACK_SECRET_FILE", value_name = "PATH")]
    pub(crate) callback_secret_file: Option<PathBuf>,
    /// The secret itself, from the environment only (BATCH_MANAGER_CALLBACK_SECRET).
    #[arg(
        long,
        env = "BATCH_MANAGER_CALLBACK_SECRET",
        hide = true,
        hide_env_values = true,
        conflicts_with = "callback_secret_file"
    )]
    pub(crate) callback_secret: Option<SecretText>,
    /// How long one delivery attempt may take.
    #[arg(long, hide = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) callback_timeout: Duration,
    /// The delay after a failed attempt; it doubles per attempt up to --callback-retry-max.
    #[arg(long, hide = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) callback_retry_first: Duration,
    /// The longest delay between attempts.
    #[arg(long, hide = true, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) callback_retry_max: Duration,
    /// How long after a batch ends its callback is still attempted.
    #[arg(long, hide = true, default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) callback_max_age: Duration,
    /// How often due callbacks are looked for.
    #[arg(long, hide = true, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) callback_poll: Duration,
    /// With --backend aws on a stack that puts completion events (its CompletionNotification
    /// is eventbridge or both): every batch this server ends (a cancel) gets one.
    #[arg(long, env = "COMPLETION_EVENTS", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub(crate) completion_events: bool,
    /// Deliver callbacks to private and link-local addresses too (by default only to public
    /// ones, and loopback), for receivers inside the server's network.
    #[arg(long, env = "BATCH_MANAGER_CALLBACK_ALLOW_PRIVATE_NETWORKS")]
    pub(crate) callback_allow_private_networks: bool,
    /// The only hosts a batch's callback URL may name (comma-separated; `*.example.com` for
    /// any name under example.com); any host when empty.
    #[arg(
        long,
        env = "BATCH_MANAGER_CALLBACK_ALLOWED_HOSTS",
        value_name = "HOSTS"
    )]
    pub(crate) callback_allowed_hosts: Option<String>,
}

impl CallbackArgs {
    /// The typed settings; fails naming the flag when the secret cannot be read or is short.
    pub(crate) fn settings(&self) -> anyhow::Result<crate::callbacks::CallbackSettings> {
        use crate::callbacks::{CallbackSettings, RetrySchedule, SigningSecret};
        let secret = match (&self.callback_secret_file, &self.callback_secret) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    anyhow::anyhow!("--callback-secret-file {}: {err}", path.display())
                })?;
                Some(SigningSecret::parse(&text).map_err(|rule| {
                    anyhow::anyhow!("--callback-secret-file {}: {rule}", path.display())
                })?)
            }
            (None, Some(SecretText(text))) => Some(
                SigningSecret::parse(text)
                    .map_err(|rule| anyhow::anyhow!("BATCH_MANAGER_CALLBACK_SECRET: {rule}"))?,
            ),
            (None, None) => None,
        };
        Ok(CallbackSettings {
            secret,
            timeout: self.callback_timeout,
            retry: RetrySchedule {
                first_delay: self.callback_retry_first,
                max_delay: self.callback_retry_max,
                max_age: self.callback_max_age,
            },
            poll: self.callback_poll,
            completion_events: self.completion_events,
            allow_private_networks: self.callback_allow_private_networks,
            allowed_hosts: crate::callbacks::AllowedHosts::parse(
                self.callback_allowed_hosts.as_deref().unwrap_or_default(),
            )
            .map_err(|rule| anyhow::anyhow!("--callback-allowed-hosts: {rule}"))?,
        })
    }
}

impl ServeArgs {
    /// The buckets `items_uri` may name: those listed, or any when the list is empty.
    pub(crate) fn items_buckets(&self) -> crate::items_uri::s3::BucketPolicy {
        use crate::items_uri::s3::BucketPolicy;
        match BucketPolicy::only_listed(self.items_buckets.as_deref().unwrap_or_default()) {
            BucketPolicy::Only(buckets) if buckets.is_empty() => BucketPolicy::Any,
            listed => listed,
        }
    }
}

impl JobArgs {
    pub(crate) fn config(&self) -> crate::app::JobConfig {
        let non_blank =
            |command: &Option<String>| command.clone().filter(|command| !command.trim().is_empty());
        crate::app::JobConfig {
            task1_command: non_blank(&self.task1_command),
            task2_command: non_blank(&self.task2_command),
            deadline: Duration::from_secs(self.task_timeout),
            first_poll_interval: Duration::from_secs(self.job_poll_interval),
        }
    }
}

/// Limits and timeouts of the two listeners. Durations read as `500ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionArgs {
    /// Longest time for a request's head (request line and headers) to arrive, from its first byte.
    #[arg(long, env = "BATCH_MANAGER_HTTP_HEADER_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub(crate) http_header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    #[arg(long, env = "BATCH_MANAGER_HTTP_BODY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub(crate) http_body_timeout: Duration,
    /// An HTTP connection with no request under way is closed after this long.
    #[arg(long, env = "BATCH_MANAGER_HTTP_IDLE_TIMEOUT", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub(crate) http_idle_timeout: Duration,
    /// Most open HTTP connections; default: a quarter of the open-file limit, 16 to 4096.
    #[arg(long, env = "BATCH_MANAGER_HTTP_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) http_max_connections: Option<u32>,
    /// Host names the HTTP endpoint answers to besides the loopback ones (comma-separated);
    /// with a loopback address, any other Host is refused.
    #[arg(long, env = "BATCH_MANAGER_HTTP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub(crate) http_allowed_hosts: Vec<String>,
    /// How often the gRPC server pings a connection to check that its client is still there.
    #[arg(long, env = "BATCH_MANAGER_GRPC_KEEPALIVE_INTERVAL", default_value = "60s",
          value_parser = humantime::parse_duration)]
    pub(crate) grpc_keepalive_interval: Duration,
    /// A connection whose client does not answer a ping within this long is closed.
    #[arg(long, env = "BATCH_MANAGER_GRPC_KEEPALIVE_TIMEOUT", default_value = "20s",
          value_parser = humantime::parse_duration)]
    pub(crate) grpc_keepalive_timeout: Duration,
    /// Longest wait for the next piece of a gRPC request body; a call whose request stalls
    /// fails instead of holding its stream.
    #[arg(long, env = "BATCH_MANAGER_GRPC_BODY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub(crate) grpc_body_timeout: Duration,
    /// A gRPC connection with no call under way is closed (GOAWAY) after this long.
    #[arg(long, env = "BATCH_MANAGER_GRPC_IDLE_TIMEOUT", default_value = "5m",
          value_parser = humantime::parse_duration)]
    pub(crate) grpc_idle_timeout: Duration,
    /// A gRPC connection is asked to close (GOAWAY; calls under way finish) after this long;
    /// unlimited when absent.
    #[arg(long, env = "BATCH_MANAGER_GRPC_MAX_CONNECTION_AGE",
          value_parser = humantime::parse_duration)]
    pub(crate) grpc_max_connection_age: Option<Duration>,
    /// Most open gRPC connections; default: a quarter of the open-file limit, 16 to 4096.
    #[arg(long, env = "BATCH_MANAGER_GRPC_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) grpc_max_connections: Option<u32>,
    /// On SIGTERM or SIGINT, longest wait for requests under way before connections are closed.
    #[arg(long, env = "BATCH_MANAGER_SHUTDOWN_GRACE", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub(crate) shutdown_grace: Duration,
}

impl ConnectionArgs {
    /// The typed settings; absent connection caps are derived from the open-file limit.
    pub(crate) fn settings(&self) -> ConnectionConfig {
        let default_cap = default_max_connections(open_file_limit());
        let cap = |flag: Option<u32>| flag.map_or(default_cap, |n| n as usize);
        ConnectionConfig {
            http: HttpLimits {
                max_connections: cap(self.http_max_connections),
                header_timeout: self.http_header_timeout,
                body_timeout: self.http_body_timeout,
                idle_timeout: self.http_idle_timeout,
                allowed_hosts: self.http_allowed_hosts.clone(),
            },
            grpc: GrpcLimits {
                max_connections: cap(self.grpc_max_connections),
                keepalive_interval: self.grpc_keepalive_interval,
                keepalive_timeout: self.grpc_keepalive_timeout,
                body_timeout: self.grpc_body_timeout,
                idle_timeout: self.grpc_idle_timeout,
                max_connection_age: self.grpc_max_connection_age,
            },
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// Limits and timeouts of both listeners, and of shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// The HTTP listener's limits.
    pub http: HttpLimits,
    /// The gRPC listener's limits.
    pub grpc: GrpcLimits,
    /// On shutdown, the longest wait for requests under way before connections are closed.
    pub shutdown_grace: Duration,
}

/// The HTTP listener's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most open connections; at the cap, the connection idle the longest is closed to make room.
    pub max_connections: usize,
    /// Longest time for a request's head to arrive, from its first byte.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// A connection with no request under way is closed after this long.
    pub idle_timeout: Duration,
    /// Host names accepted besides the loopback ones.
    pub allowed_hosts: Vec<String>,
}

/// The gRPC listener's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Most open connections; at the cap, the connection idle the longest is closed to make room.
    pub max_connections: usize,
    /// HTTP/2 ping interval.
    pub keepalive_interval: Duration,
    /// Longest wait for a ping's answer.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// A connection with no call under way is closed after this long.
    pub idle_timeout: Duration,
    /// A connection is asked to close after this long, when set.
    pub max_connection_age: Option<Duration>,
}

impl Default for ConnectionConfig {
    /// The defaults of `serve`'s flags.
    fn default() -> Self {
        let cap = default_max_connections(open_file_limit());
        Self {
            http: HttpLimits {
                max_connections: cap,
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(60),
                allowed_hosts: Vec::new(),
            },
            grpc: GrpcLimits {
                max_connections: cap,
                keepalive_interval: Duration::from_secs(60),
                keepalive_timeout: Duration::from_secs(20),
                body_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(300),
                max_connection_age: None,
            },
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Open files set aside for everything but connections: the database, logs, task processes.
const FILES_RESERVED_BEYOND_CONNECTIONS: u64 = 4;
/// Bounds of the derived per-listener connection cap.
const MIN_DERIVED_CONNECTIONS: u64 = 16;
const MAX_DERIVED_CONNECTIONS: u64 = 4096;

/// The connection cap of each listener when none is given: a quarter of the open-file limit
/// (both listeners together use at most half, leaving the rest to the database, the engine's
/// task processes and the files a request opens), from 16 to 4096.
pub(crate) fn default_max_connections(open_file_limit: u64) -> usize {
    (open_file_limit / FILES_RESERVED_BEYOND_CONNECTIONS)
        .clamp(MIN_DERIVED_CONNECTIONS, MAX_DERIVED_CONNECTIONS) as usize
}

/// The process's current (soft) open-file limit; 1024 where it cannot be read.
pub(crate) fn open_file_limit() -> u64 {
    #[cfg(unix)]
    if let Ok((soft, _hard)) = rlimit::Resource::NOFILE.get() {
        return soft;
    }
    1024
}

/// Raises the soft open-file limit to the hard limit, so that the server is limited by what
/// the system allows rather than by a conservative shell default. Returns the limit now in force.
pub(crate) fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The deployed stack `--backend aws` works on. Optional here so that the local backend runs
/// without them; [`AwsArgs::require`] insists on all three.
#[derive(Debug, Clone, Args)]
pub(crate) struct AwsArgs {
    /// DynamoDB batch table (the stack's BatchTableName output; aws backend).
    #[arg(long, env = "BATCH_TABLE")]
    pub(crate) batch_table: Option<String>,
    /// DynamoDB request table (the stack's RequestTableName output; aws backend).
    #[arg(long, env = "REQUEST_TABLE")]
    pub(crate) request_table: Option<String>,
    /// The chunk state machine (the stack's StateMachineArn output; aws backend).
    #[arg(long, env = "STATE_MACHINE_ARN")]
    pub(crate) state_machine_arn: Option<String>,
}

/// Everything `--backend aws` needs to find a deployed stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// The stack's DynamoDB tables.
    pub tables: DynamoTables,
    /// The chunk state machine's ARN.
    pub state_machine_arn: String,
}

/// A setting `--backend aws` cannot run without.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("missing --{flag} (or the {env_var} environment variable): the stack's {output} output")]
pub(crate) struct MissingSetting {
    pub(crate) flag: &'static str,
    pub(crate) env_var: &'static str,
    pub(crate) output: &'static str,
}

impl AwsArgs {
    /// The settings, or the first one missing. Empty values count as missing.
    pub(crate) fn require(&self) -> Result<AwsSettings, MissingSetting> {
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
pub(crate) async fn aws_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    /// gRPC server URL.
    #[arg(
        long,
        env = "BATCH_MANAGER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) server: String,
    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How a client proves itself to a server, and trusts it.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CredentialArgs {
    /// Bearer token for a server started with --auth-token-file.
    #[arg(long, env = "BATCH_MANAGER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<SecretText>,
    /// PEM certificate(s) to trust for an https:// server, besides the system's roots (a
    /// self-signed certificate, or a private CA).
    #[arg(long, env = "BATCH_MANAGER_CA_CERT", value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
}

impl ClientArgs {
    /// Connects to the server these flags name.
    pub(crate) async fn connect(
        &self,
    ) -> Result<crate::grpc::client::AdminClient, crate::grpc::client::ClientError> {
        self.credentials.connect(&self.server).await
    }
}

impl CredentialArgs {
    /// Connects to `server` with these credentials.
    pub(crate) async fn connect(
        &self,
        server: &str,
    ) -> Result<crate::grpc::client::AdminClient, crate::grpc::client::ClientError> {
        let options = crate::grpc::client::ConnectOptions {
            token: self.token.as_ref().map(|token| token.expose().to_owned()),
            ca_cert: self.ca_cert.clone(),
        };
        crate::grpc::client::AdminClient::connect_with(server, &options).await
    }
}

/// The flags of `submit`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("items").required(true).args(["items_file", "items_uri"])))]
pub struct SubmitArgs {
    /// File with one item ID per line (blank lines are skipped); `-` reads standard input.
    #[arg(long)]
    pub(crate) items_file: Option<PathBuf>,
    /// The items by reference instead: an S3 object (s3://bucket/key) of any size, which the
    /// server reads with its own AWS credentials.
    #[arg(long, value_name = "S3_URI")]
    pub(crate) items_uri: Option<String>,
    /// The object's format: lines, csv or jsonl; by default from the key's extension (.csv,
    /// .jsonl or .ndjson, else lines).
    #[arg(long, requires = "items_uri", value_parser = ["lines", "csv", "jsonl"])]
    pub(crate) items_format: Option<String>,
    /// The CSV object's first record is a header, skipped.
    #[arg(long, requires = "items_uri")]
    pub(crate) items_header: bool,
    /// Items per chunk (1 to 1000).
    #[arg(long, default_value_t = 100)]
    pub(crate) batch_size: u32,
    /// Batch ID (the idempotency key); a UUID is generated when absent.
    #[arg(long)]
    pub(crate) batch_id: Option<String>,
    /// Chunk executions of this batch in flight at once (1 to 10000); the server's default
    /// when absent.
    #[arg(long)]
    pub(crate) max_concurrency: Option<u32>,
    /// Stop the batch once more than this percentage (0 to 100) of its items failed: chunks
    /// not yet started never run, and the batch ends FAILED.
    #[arg(long, value_name = "PERCENT")]
    pub(crate) tolerated_failure_percentage: Option<u64>,
    /// Stop the batch once more than this many of its items failed.
    #[arg(long, value_name = "ITEMS")]
    pub(crate) tolerated_failure_count: Option<u64>,
    /// POST the batch's final status to this URL each time it ends (https, or http to a
    /// loopback host), signed with the server's callback secret.
    #[arg(long, value_name = "URL")]
    pub(crate) callback_url: Option<String>,
    /// Follow the batch until it ends.
    #[arg(long)]
    pub(crate) watch: bool,
    #[command(flatten)]
    pub(crate) reconnect: ReconnectArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `update`.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    pub(crate) batch_id: String,
    /// Chunk executions of the batch in flight at once (1 to 10000); 0 restores the server's
    /// default.
    #[arg(long)]
    pub(crate) max_concurrency: u32,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `redrive`.
#[derive(Debug, Clone, Args)]
pub struct RedriveArgs {
    pub(crate) batch_id: String,
    /// Also re-run the items that ended CANCELLED.
    #[arg(long)]
    pub(crate) include_cancelled: bool,
    /// Follow the batch until it ends again.
    #[arg(long)]
    pub(crate) watch: bool,
    #[command(flatten)]
    pub(crate) reconnect: ReconnectArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    pub(crate) batch_id: String,
    #[command(flatten)]
    pub(crate) reconnect: ReconnectArgs,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// What a watch does when the server goes away (it stops, restarts, or the connection breaks).
#[derive(Debug, Clone, Args)]
pub(crate) struct ReconnectArgs {
    /// How long a watch keeps trying to reach a server that went away, with growing pauses,
    /// before it fails (e.g. `30s`, `5m`; `0s` fails at once).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) reconnect_timeout: Duration,
}

/// The arguments of `status`, `cancel`, `pause` and `resume`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    pub(crate) batch_id: String,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `job-items`: what AWS Batch and batch-manager put in a job's environment,
/// and the stack's tables (set them in the job definition).
#[derive(Debug, Clone, Args)]
pub struct JobItemsArgs {
    /// The job's batch.
    #[arg(long, env = "BATCH_MANAGER_BATCH_ID")]
    pub(crate) batch_id: String,
    /// The job's chunk.
    #[arg(long, env = "BATCH_MANAGER_CHUNK")]
    pub(crate) chunk: u64,
    /// The fingerprint of the items the job was submitted with; the items printed must match.
    #[arg(long, env = "BATCH_MANAGER_ITEMS_DIGEST")]
    pub(crate) items_digest: String,
    /// Print only this item (a child of an array job works on item AWS_BATCH_JOB_ARRAY_INDEX).
    #[arg(long, env = "AWS_BATCH_JOB_ARRAY_INDEX")]
    pub(crate) index: Option<usize>,
    /// Print every item of the job, even in an array job's child.
    #[arg(long)]
    pub(crate) all: bool,
    #[command(flatten)]
    pub(crate) tables: TableArgs,
}

/// The stack's DynamoDB tables.
#[derive(Debug, Clone, Args)]
pub(crate) struct TableArgs {
    /// DynamoDB batch table (the stack's BatchTableName output).
    #[arg(long, env = "BATCH_TABLE")]
    pub(crate) batch_table: String,
    /// DynamoDB request table (the stack's RequestTableName output).
    #[arg(long, env = "REQUEST_TABLE")]
    pub(crate) request_table: String,
}

/// The arguments of `items`.
#[derive(Debug, Clone, Args)]
pub struct ItemsArgs {
    pub(crate) batch_id: String,
    /// Only items in this status: pending, succeeded, failed, cancelled.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Stop after this many items.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `batches`.
#[derive(Debug, Clone, Args)]
pub struct BatchesArgs {
    /// Only batches in this status: pending, running, paused, completed,
    /// completed_with_failures, failed, cancelled.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Stop after this many batches.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

/// The arguments of `export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    pub(crate) batch_id: String,
    /// Only items in this status: pending, succeeded, failed, cancelled.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// jsonl: one JSON object per item; csv: a header, then one record per item (RFC 4180).
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
    pub(crate) format: String,
    /// Write to this file (created or truncated) instead of standard output.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// gRPC server URL.
    #[arg(
        long,
        env = "BATCH_MANAGER_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) server: String,
    #[command(flatten)]
    pub(crate) credentials: CredentialArgs,
}

/// The flags of `bench`.
#[cfg(feature = "bench")]
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Items to run through.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) items: u64,
    /// Items per chunk.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch_size: u32,
    /// Chunk executions at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: u16,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_defaults_are_the_default_connection_settings() {
        let cli = Cli::try_parse_from(["batch-manager", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        if std::env::vars().any(|(name, _)| name.starts_with("BATCH_MANAGER_")) {
            return;
        }
        assert_eq!(args.connections.settings(), ConnectionConfig::default());
    }

    #[test]
    fn durations_and_hosts_parse_from_flags() {
        let cli = Cli::try_parse_from([
            "batch-manager",
            "serve",
            "--http-header-timeout",
            "500ms",
            "--grpc-max-connection-age",
            "2h",
            "--http-allowed-hosts",
            "batch.internal,example.test",
            "--http-max-connections",
            "7",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        let settings = args.connections.settings();
        assert_eq!(settings.http.header_timeout, Duration::from_millis(500));
        assert_eq!(
            settings.grpc.max_connection_age,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            settings.http.allowed_hosts,
            vec!["batch.internal", "example.test"]
        );
        assert_eq!(settings.http.max_connections, 7);
        assert!(
            Cli::try_parse_from(["batch-manager", "serve", "--http-max-connections", "0"]).is_err()
        );
    }

    #[test]
    fn the_derived_connection_cap_is_a_quarter_of_the_file_limit_within_bounds() {
        assert_eq!(default_max_connections(256), 64);
        assert_eq!(default_max_connections(1024), 256);
        assert_eq!(default_max_connections(20), 16);
        assert_eq!(default_max_connections(1 << 20), 4096);
        assert_eq!(default_max_connections(u64::MAX), 4096);
    }
}
