//! Entry point: picks the role (a Lambda handler, or a command) and runs it.

use std::process::ExitCode;

use clap::Parser;

use batch_manager::config::{Cli, Command};
use batch_manager::logging::{self, LogFormat};
use batch_manager::{app, cli, lambda};

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => app::serve(*args).await,
        Command::Submit(args) => cli::submit(args).await,
        Command::Status(args) => cli::status(args).await,
        Command::Watch(args) => cli::watch(args).await,
        Command::Batches(args) => cli::batches(args).await,
        Command::Items(args) => cli::items(args).await,
        Command::Export(args) => cli::export(args).await,
        Command::Cancel(args) => cli::cancel(args).await,
        Command::Update(args) => cli::update(args).await,
        Command::Pause(args) => cli::pause(args).await,
        Command::Resume(args) => cli::resume(args).await,
        Command::Redrive(args) => cli::redrive(args).await,
        Command::JobItems(args) => cli::job_items(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => batch_manager::bench::run(args).await,
    }
}

fn main() -> ExitCode {
    if lambda::is_lambda_environment() {
        return lambda::main();
    }
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(args) => logging::init("info", args.log_format()),
        _ => logging::init("warn", LogFormat::Text),
    }
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
