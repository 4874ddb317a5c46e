//! `veil`: the companion CLI. Parses flags and prints what the library reports.

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use veil::{config::Config, doctor, paths::Dirs};

/// Protects personal photos against deepfakes. `veil doctor` checks that everything is in place.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file to use instead of the platform's (~/.config/veil/veil.toml on Linux).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check libtorch, CUDA, the configuration, the models and the folders; exits non-zero on a problem.
    Doctor,
    /// Show or check the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults filled in, `~` expanded) as TOML.
    Show,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dirs = Dirs::from_env()?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Doctor => {
            let report = doctor::run(cli.config.as_deref(), &dirs);
            write!(out, "{report}")?;
            Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Config { command: ConfigCommand::Show } => {
            let (config, source) = Config::load(cli.config.as_deref(), &dirs)?;
            writeln!(out, "# effective configuration; source: {source}")?;
            write!(out, "{}", config.resolve(&dirs).to_toml())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
