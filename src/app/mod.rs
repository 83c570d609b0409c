//! `serve`: the gRPC service and the seed HTTP endpoint over one backend, started together and
//! stopped together. Local: the SQLite store and the embedded engine. AWS: a deployed stack's
//! DynamoDB tables and Step Functions state machine. Both listeners run on one connection layer
//! ([`listener`]): connection caps, timeouts, and a shutdown bounded by a grace period.

mod connection;
mod jobs;
mod listener;
mod tls;

pub use self::tls::TlsFiles;

pub(crate) use self::jobs::build as build_job_runners;
pub use self::jobs::JobConfig;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::connection::{Protocol, Timeouts};
use self::listener::{Http2Settings, ListenerConfig};
use crate::access::AccessControl;
use crate::callbacks::{CallbackSettings, Deliverer};
use crate::config::{AwsSettings, Backend, ConnectionConfig, ServeArgs};
use crate::engine::local::{EngineConfig, EngineRunner, LocalEngine};
use crate::grpc::{grpc_router, AdminService};
use crate::http::{HostPolicy, HttpSettings};
use crate::items_uri::s3::{BucketPolicy, ObjectReader};
use crate::pipeline::{Intake, StartedByStream, Steps, Tasks};
use crate::store::dynamo::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::BatchStore;

/// `batch-manager serve`: raises the open-file limit, starts the server the flags describe (on
/// the local store and engine, or on a deployed stack), and runs it until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let open_file_limit = match crate::config::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "could not raise the open-file limit");
            crate::config::open_file_limit()
        }
    };
    let connections = args.connections.settings();
    tracing::info!(
        open_file_limit,
        http_max_connections = connections.http.max_connections,
        grpc_max_connections = connections.grpc.max_connections,
        "connection limits"
    );
    let items_buckets = args.items_buckets();
    let callbacks = args.callbacks.settings()?;
    let access = args
        .access
        .settings(&[("gRPC", args.grpc_addr), ("HTTP", args.http_addr)])?;
    if access.control.requires_tokens() {
        tokio::spawn(reload_tokens_on_hangup(access.control.clone()));
    }
    match args.backend {
        Backend::Local => {
            let config = LocalConfig {
                grpc_addr: args.grpc_addr,
                http_addr: args.http_addr,
                db: args.db,
                engine: EngineConfig {
                    concurrency: usize::from(args.concurrency),
                    ..EngineConfig::default()
                },
                connections,
                jobs: args.jobs.config(),
                items_buckets,
                access,
            };
            let app = LocalApp::spawn_with(config, Tasks::default(), callbacks).await?;
            app.run_until(shutdown_signal()).await
        }
        Backend::Aws => {
            let config = AwsConfig {
                grpc_addr: args.grpc_addr,
                http_addr: args.http_addr,
                stack: args.aws.require()?,
                connections,
                jobs: args.jobs.config(),
                items_buckets,
                access,
            };
            let sdk_config = crate::config::aws_sdk_config().await;
            let app = AwsApp::spawn_with(config, &sdk_config, callbacks).await?;
            app.run_until(shutdown_signal()).await
        }
    }
}

/// What a local server needs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// The seed HTTP listen address (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// The SQLite database file.
    pub db: PathBuf,
    /// The embedded engine's settings.
    pub engine: EngineConfig,
    /// The listeners' limits and timeouts.
    pub connections: ConnectionConfig,
    /// Which tasks run as external jobs.
    pub jobs: JobConfig,
    /// The buckets a batch's `items_uri` may name; read with the standard AWS configuration.
    pub items_buckets: BucketPolicy,
    /// Who may call, and whether over TLS.
    pub access: AccessConfig,
}

/// Who may call a server, and whether its listeners speak TLS.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// The tokens callers need (open when none).
    pub control: AccessControl,
    /// The certificate and key both listeners serve TLS with (plain text when none).
    pub tls: Option<TlsFiles>,
}

/// A running server over a store of type `S`.
pub struct App<S> {
    /// The gRPC address the server listens on.
    pub grpc_addr: SocketAddr,
    /// The HTTP address the server listens on.
    pub http_addr: SocketAddr,
    /// The server's store.
    pub store: S,
    server: Server,
}

/// A running local server: SQLite store and embedded engine.
pub type LocalApp = App<SqliteStore>;

/// A running server on a deployed stack: chunks run in Step Functions, not in this process.
pub type AwsApp = App<DynamoStore>;

impl<S> App<S> {
    fn new(server: Server, store: S) -> Self {
        Self {
            grpc_addr: server.grpc_addr,
            http_addr: server.http_addr,
            store,
            server,
        }
    }

    /// Stops accepting requests, ends open watches, lets the work under way end (for the local
    /// backend, the engine's steps) within the shutdown grace, closes what is left, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.server.run_until(signal).await
    }
}

impl LocalApp {
    /// Binds both listeners and starts everything; returns once the server accepts requests.
    pub async fn spawn(config: LocalConfig, tasks: Tasks) -> anyhow::Result<Self> {
        Self::spawn_with(config, tasks, CallbackSettings::default()).await
    }

    /// As [`Self::spawn`], delivering completion callbacks as `callbacks` says.
    pub async fn spawn_with(
        config: LocalConfig,
        tasks: Tasks,
        callbacks: CallbackSettings,
    ) -> anyhow::Result<Self> {
        let store = SqliteStore::open(&config.db)
            .with_context(|| format!("opening database {}", config.db.display()))?;
        let shared_store: Arc<dyn BatchStore> = Arc::new(store.clone());
        let job_runners = jobs::build(&config.jobs, config.engine.concurrency, None).await?;
        let steps =
            Steps::new(Arc::clone(&shared_store), tasks).with_jobs(job_runners.runners.clone());
        let (engine, runner) =
            LocalEngine::start(config.engine, Arc::new(store.clone()), steps.clone())
                .await
                .context("starting the engine")?;
        let intake = Intake::new(Arc::clone(&shared_store), Arc::new(engine))
            .with_jobs(steps)
            .with_callbacks(callbacks.secret.is_some())
            .with_callback_hosts(callbacks.allowed_hosts.clone());
        let objects = ObjectReader::from_environment(config.items_buckets.clone());
        let deliverer = Deliverer::new(Arc::new(store.clone()), callbacks);
        let mut server = Server::start(
            (config.grpc_addr, config.http_addr),
            (&config.connections, &config.access),
            (intake, objects),
            shared_store,
            (Some(runner), job_runners),
        )
        .await?;
        server.deliver_callbacks(deliverer);
        tracing::info!(
            grpc_addr = %server.grpc_addr,
            http_addr = %server.http_addr,
            db = %config.db.display(),
            dashboard = %server.dashboard_url(),
            "serving"
        );
        Ok(Self::new(server, store))
    }
}

/// What a server on a deployed stack needs.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// The gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// The seed HTTP listen address (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// The deployed stack's tables and state machine.
    pub stack: AwsSettings,
    /// The listeners' limits and timeouts.
    pub connections: ConnectionConfig,
    /// Which tasks run as external jobs (their jobs are stopped from here on cancel).
    pub jobs: JobConfig,
    /// The buckets a batch's `items_uri` may name.
    pub items_buckets: BucketPolicy,
    /// Who may call, and whether over TLS.
    pub access: AccessConfig,
}

impl AwsApp {
    /// Builds the DynamoDB store and the Step Functions orchestrator from `sdk_config`, binds
    /// both listeners and returns once the server accepts requests. Makes no AWS call.
    pub async fn spawn(
        config: AwsConfig,
        sdk_config: &aws_config::SdkConfig,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(config, sdk_config, CallbackSettings::default()).await
    }

    /// As [`Self::spawn`]; `callbacks.secret` says whether batches may name a callback URL
    /// (the stack's `init` function delivers them).
    pub async fn spawn_with(
        config: AwsConfig,
        sdk_config: &aws_config::SdkConfig,
        callbacks: CallbackSettings,
    ) -> anyhow::Result<Self> {
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk_config),
            config.stack.tables.clone(),
        )
        .with_completion_events(callbacks.completion_events);
        let shared_store: Arc<dyn BatchStore> = Arc::new(store.clone());
        // No engine runs here, so the commands never run; AWS Batch runners stop jobs on cancel.
        let job_config = JobConfig {
            task1_command: None,
            task2_command: None,
            ..config.jobs.clone()
        };
        let job_runners = jobs::build(&job_config, 1, Some(sdk_config)).await?;
        let steps = Steps::new(Arc::clone(&shared_store), Tasks::default())
            .with_jobs(job_runners.runners.clone());
        // The stack's request-table stream starts the chunks of the parts stored here.
        let intake = Intake::new(Arc::clone(&shared_store), Arc::new(StartedByStream))
            .with_jobs(steps)
            .with_callbacks(callbacks.secret.is_some())
            .with_callback_hosts(callbacks.allowed_hosts.clone());
        let objects = ObjectReader::new(
            aws_sdk_s3::Client::new(sdk_config),
            config.items_buckets.clone(),
        );
        let server = Server::start(
            (config.grpc_addr, config.http_addr),
            (&config.connections, &config.access),
            (intake, objects),
            shared_store,
            (None, job_runners),
        )
        .await?;
        tracing::info!(
            grpc_addr = %server.grpc_addr,
            http_addr = %server.http_addr,
            batch_table = %config.stack.tables.batch_table,
            request_table = %config.stack.tables.request_table,
            state_machine = %config.stack.state_machine_arn,
            dashboard = %server.dashboard_url(),
            "serving"
        );
        Ok(Self::new(server, store))
    }
}

/// The gRPC service and the seed HTTP endpoint, each on its own listener, until stopped.
struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<Option<Instant>>,
    watchers_stop: watch::Sender<bool>,
    grpc: JoinHandle<()>,
    http: JoinHandle<()>,
    engine: Option<EngineRunner>,
    jobs: jobs::BuiltRunners,
    shutdown_grace: Duration,
    callbacks: Option<JoinHandle<()>>,
    tls: bool,
}

impl Server {
    /// Binds both listeners and starts serving. `engine` is the embedded engine to stop with
    /// the listeners, when the backend runs chunks in this process.
    async fn start(
        addresses: (SocketAddr, SocketAddr),
        (connections, access): (&ConnectionConfig, &AccessConfig),
        (intake, objects): (Intake, ObjectReader),
        store: Arc<dyn BatchStore>,
        (engine, jobs): (Option<EngineRunner>, jobs::BuiltRunners),
    ) -> anyhow::Result<Self> {
        let (grpc_addr, http_addr) = addresses;
        let grpc_listener = TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding gRPC address {grpc_addr}"))?;
        let http_listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding HTTP address {http_addr}"))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let (stop, stopped) = watch::channel(None);
        let (watchers_stop, watchers_stopped) = watch::channel(false);
        let admin = AdminService::new((intake.clone(), objects.clone()), store, watchers_stopped);
        let dashboard = crate::dashboard::router(admin.clone());
        let grpc_routes = grpc_router(admin, access.control.clone()).await?;
        let http_routes = crate::http::router(
            (intake, objects),
            HttpSettings {
                body_timeout: connections.http.body_timeout,
                hosts: HostPolicy::for_address(http_addr, &connections.http.allowed_hosts),
                access: access.control.clone(),
            },
            dashboard,
        );
        let (grpc_tls, http_tls) = match &access.tls {
            Some(files) => (Some(files.load(b"h2")?), Some(files.load(b"http/1.1")?)),
            None => (None, None),
        };
        if access.control.requires_tokens() {
            tracing::info!("calls need a bearer token");
        }
        let grpc = tokio::spawn(listener::serve(
            grpc_listener,
            grpc_routes,
            ListenerConfig {
                tls: grpc_tls,
                ..grpc_listener_config(connections)
            },
            stopped.clone(),
        ));
        let http = tokio::spawn(listener::serve(
            http_listener,
            http_routes,
            ListenerConfig {
                tls: http_tls,
                ..http_listener_config(connections)
            },
            stopped,
        ));
        Ok(Self {
            grpc_addr,
            http_addr,
            stop,
            watchers_stop,
            grpc,
            http,
            engine,
            jobs,
            shutdown_grace: connections.shutdown_grace,
            callbacks: None,
            tls: access.tls.is_some(),
        })
    }

    /// Where a browser finds the dashboard.
    fn dashboard_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.http_addr)
    }

    /// Delivers completion callbacks from the store's outbox until shutdown.
    fn deliver_callbacks(&mut self, deliverer: Deliverer) {
        let stopping = self.watchers_stop.subscribe();
        self.callbacks = Some(tokio::spawn(deliverer.run(stopping)));
    }

    /// Stops accepting, ends open watches, lets requests and engine steps under way finish
    /// within the shutdown grace, then closes what is left (engine steps cut short resume from
    /// their journal on the next start).
    async fn shutdown(self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.shutdown_grace;
        let _ = self.watchers_stop.send(true);
        let _ = self.stop.send(Some(deadline));
        let engine = async {
            if let Some(engine) = self.engine {
                if tokio::time::timeout_at(deadline.into(), engine.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "engine steps still under way after the shutdown grace were stopped; \
                         they resume on the next start"
                    );
                }
            }
        };
        let callbacks = async {
            if let Some(callbacks) = self.callbacks {
                let _ = callbacks.await;
            }
        };
        let (grpc, http, (), ()) = tokio::join!(self.grpc, self.http, engine, callbacks);
        // Commands still running are stopped; after a restart their attempts run again.
        self.jobs.shutdown().await;
        grpc.context("gRPC listener panicked")?;
        http.context("HTTP listener panicked")?;
        Ok(())
    }

    async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

fn grpc_listener_config(connections: &ConnectionConfig) -> ListenerConfig {
    let grpc = &connections.grpc;
    ListenerConfig {
        name: "gRPC",
        protocol: Protocol::Http2,
        max_connections: grpc.max_connections,
        timeouts: Timeouts {
            idle: grpc.idle_timeout,
            header: None,
        },
        request_body_timeout: Some(grpc.body_timeout),
        http2: Some(Http2Settings {
            keepalive_interval: grpc.keepalive_interval,
            keepalive_timeout: grpc.keepalive_timeout,
            max_connection_age: grpc.max_connection_age,
        }),
        rewrite_head: None,
        tls: None,
    }
}

fn http_listener_config(connections: &ConnectionConfig) -> ListenerConfig {
    let http = &connections.http;
    ListenerConfig {
        name: "HTTP",
        protocol: Protocol::Http1,
        max_connections: http.max_connections,
        timeouts: Timeouts {
            idle: http.idle_timeout,
            header: Some(http.header_timeout),
        },
        // The endpoint's handler reads bodies itself, answering 408 when one stalls.
        request_body_timeout: None,
        http2: None,
        rewrite_head: Some(crate::http::framing::json_error_response),
        tls: None,
    }
}

/// Reads the token file again on every SIGHUP, so tokens rotate without a restart.
async fn reload_tokens_on_hangup(control: AccessControl) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match control.reload() {
                Ok(count) => tracing::info!(tokens = count, "token file read again"),
                Err(err) => tracing::error!(
                    error = format!("{:#}", anyhow::Error::new(err)),
                    "the token file cannot be used; the tokens in force are kept"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = control;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
