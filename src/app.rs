//! `serve` with the local backend: the SQLite store, the embedded engine, the gRPC service and
//! the seed HTTP endpoint, started together and stopped together.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::engine::local::{EngineConfig, EngineRunner, LocalEngine};
use crate::grpc::{grpc_router, AdminService};
use crate::pipeline::{Intake, Steps, Tasks};
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

/// A running local server.
pub struct LocalApp {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: SqliteStore,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
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

        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP address {}", config.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let routes = grpc_router(AdminService::new(intake.clone(), shared_store)).await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            routes,
            grpc_listener,
            crate::http::router(intake),
            http_listener,
            runner,
            stopped,
        ));
        tracing::info!(%grpc_addr, %http_addr, db = %config.db.display(), "serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            store,
            stop,
            task,
        })
    }

    /// Stops accepting requests, lets the engine's steps under way end, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("server task panicked")?
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
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
    engine: EngineRunner,
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
    engine.shutdown().await;
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
