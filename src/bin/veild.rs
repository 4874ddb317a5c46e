//! `veild`: the background service. Parses flags, loads the configuration, starts logging and runs
//! `veil::service` until SIGINT or SIGTERM; SIGHUP reloads the configuration.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use veil::{config::Config, logging, paths::Dirs, service};

/// Veil's background service: protects the photos dropped into the share folders.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file to use instead of the platform's (~/.config/veil/veil.toml on Linux).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veild: {}", veil::logging::describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let dirs = Dirs::from_env()?;
    let (config, source) = Config::load(args.config.as_deref(), &dirs)?;
    logging::init(&config.log.filter)?;
    let config = config.resolve(&dirs);
    let explicit = args.config.clone();
    let reload: service::Reload = Box::new(move || {
        let (config, source) = Config::load(explicit.as_deref(), &dirs).map_err(|e| e.to_string())?;
        Ok((config.resolve(&dirs), source))
    });
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal().await?;
        service::run(config, source, shutdown, reload).await?;
        anyhow::Ok(())
    })
}

/// A future that completes on the first SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
