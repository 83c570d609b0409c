//! `serve`: the gRPC service and the seed HTTP endpoint over one backend, started together and
//! stopped together. Local: the SQLite store and the embedded engine. AWS: a deployed stack's
//! DynamoDB tables and Step Functions state machine.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::AwsSettings;
use crate::engine::local::{EngineConfig, EngineRunner, LocalEngine};
use crate::engine::stepfunctions::{self, StepFunctionsOrchestrator};
use crate::grpc::{grpc_router, AdminService};
use crate::pipeline::{Intake, Steps, Tasks};
use crate::store::dynamo::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::BatchStore;

/// What a local server needs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub db: PathBuf,
    pub engine: EngineConfig,
}

/// A running server over a store of type `S`.
pub struct App<S> {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
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

    /// Stops accepting requests, lets the work under way end (for the local backend, the
    /// engine's steps), and returns.
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
        let store = SqliteStore::open(&config.db)
            .with_context(|| format!("opening database {}", config.db.display()))?;
        let shared_store: Arc<dyn BatchStore> = Arc::new(store.clone());
        let steps = Steps::new(Arc::clone(&shared_store), tasks);
        let (engine, runner) = LocalEngine::start(config.engine, Arc::new(store.clone()), steps)
            .await
            .context("starting the engine")?;
        let intake = Intake::new(Arc::clone(&shared_store), Arc::new(engine));
        let server = Server::start(
            config.grpc_addr,
            config.http_addr,
            intake,
            shared_store,
            Some(runner),
        )
        .await?;
        tracing::info!(
            grpc_addr = %server.grpc_addr,
            http_addr = %server.http_addr,
            db = %config.db.display(),
            "serving"
        );
        Ok(Self::new(server, store))
    }
}

/// What a server on a deployed stack needs.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub stack: AwsSettings,
}

impl AwsApp {
    /// Builds the DynamoDB store and the Step Functions orchestrator from `sdk_config`, binds
    /// both listeners and returns once the server accepts requests. Makes no AWS call.
    pub async fn spawn(
        config: AwsConfig,
        sdk_config: &aws_config::SdkConfig,
    ) -> anyhow::Result<Self> {
        let store = DynamoStore::new(
            aws_sdk_dynamodb::Client::new(sdk_config),
            config.stack.tables.clone(),
        );
        let orchestrator = StepFunctionsOrchestrator::new(
            stepfunctions::client(sdk_config),
            config.stack.state_machine_arn.clone(),
        );
        let shared_store: Arc<dyn BatchStore> = Arc::new(store.clone());
        let intake = Intake::new(Arc::clone(&shared_store), Arc::new(orchestrator));
        let server = Server::start(
            config.grpc_addr,
            config.http_addr,
            intake,
            shared_store,
            None,
        )
        .await?;
        tracing::info!(
            grpc_addr = %server.grpc_addr,
            http_addr = %server.http_addr,
            batch_table = %config.stack.tables.batch_table,
            request_table = %config.stack.tables.request_table,
            state_machine = %config.stack.state_machine_arn,
            "serving"
        );
        Ok(Self::new(server, store))
    }
}

/// The gRPC service and the seed HTTP endpoint, serving in a task until stopped.
struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Binds both listeners and starts serving. `engine` is the embedded engine to stop with
    /// the listeners, when the backend runs chunks in this process.
    async fn start(
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
        intake: Intake,
        store: Arc<dyn BatchStore>,
        engine: Option<EngineRunner>,
    ) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("binding gRPC address {grpc_addr}"))?;
        let http_listener = TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("binding HTTP address {http_addr}"))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let routes = grpc_router(AdminService::new(intake.clone(), store)).await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            routes,
            grpc_listener,
            crate::http::router(intake),
            http_listener,
            engine,
            stopped,
        ));
        Ok(Self {
            grpc_addr,
            http_addr,
            stop,
            task,
        })
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("server task panicked")?
    }

    async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

async fn run(
    routes: tonic::service::Routes,
    grpc_listener: TcpListener,
    http: axum::Router,
    http_listener: TcpListener,
    engine: Option<EngineRunner>,
    stopped: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let (grpc_stop, grpc_stopped) = oneshot::channel::<()>();
    let (http_stop, http_stopped) = oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), async {
                let _ = grpc_stopped.await;
            }),
    );
    let http = tokio::spawn(async move {
        axum::serve(http_listener, http)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });
    let _ = stopped.await;
    let _ = grpc_stop.send(());
    let _ = http_stop.send(());
    if let Some(engine) = engine {
        engine.shutdown().await;
    }
    grpc.await?.context("gRPC server")?;
    http.await?.context("HTTP server")?;
    Ok(())
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
