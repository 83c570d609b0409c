//! Entry point: picks the role (a Lambda handler, or a command) and runs it.

use std::process::ExitCode;

use clap::Parser;

use batch_manager::app::{AwsApp, AwsConfig};
use batch_manager::config::{Backend, Cli, Command, ServeArgs};
use batch_manager::engine::local::EngineConfig;

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    match args.backend {
        Backend::Local => {
            let app = batch_manager::app::LocalApp::spawn(
                batch_manager::app::LocalConfig {
                    grpc_addr: args.grpc_addr,
                    http_addr: args.http_addr,
                    db: args.db,
                    engine: EngineConfig {
                        concurrency: usize::from(args.concurrency),
                        ..EngineConfig::default()
                    },
                },
                batch_manager::pipeline::Tasks::default(),
            )
            .await?;
            app.run_until(batch_manager::app::shutdown_signal()).await
        }
        Backend::Aws => {
            let stack = args.aws.require()?;
            let sdk_config = batch_manager::config::aws_sdk_config().await;
            let app = AwsApp::spawn(
                AwsConfig {
                    grpc_addr: args.grpc_addr,
                    http_addr: args.http_addr,
                    stack,
                },
                &sdk_config,
            )
            .await?;
            app.run_until(batch_manager::app::shutdown_signal()).await
        }
    }
}

fn main() -> ExitCode {
    if batch_manager::lambda::is_lambda_environment() {
        return batch_manager::lambda::main();
    }
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_tracing(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Submit(args) => batch_manager::cli::submit(args).await,
            Command::Status(args) => batch_manager::cli::status(args).await,
            Command::Watch(args) => batch_manager::cli::watch(args).await,
            Command::Items(args) => batch_manager::cli::items(args).await,
            Command::Cancel(args) => batch_manager::cli::cancel(args).await,
            #[cfg(feature = "bench")]
            Command::Bench(args) => batch_manager::bench::run(args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
