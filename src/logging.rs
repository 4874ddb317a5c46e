//! Logging: `tracing` events go to the systemd journal when the process runs under systemd with its
//! stderr connected to the journal, and to stderr as readable lines otherwise.
//!
//! The filter is `log.filter` from the configuration unless `VEIL_LOG` is set. Journal records carry
//! the priority, the target and the source location as journal fields (through
//! `systemd-journal-logger`), so `journalctl --user -u veil -p warning` works.

use std::{fmt::Write as _, io::IsTerminal};

use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing_subscriber::{layer::SubscriberExt, EnvFilter, Layer};

use crate::config::LogFilter;

/// Environment variable that overrides `log.filter`.
pub const ENV_FILTER: &str = "VEIL_LOG";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("{ENV_FILTER}={value:?} is not a valid log filter: {message}")]
    BadEnvFilter { value: String, message: String },
    #[error("cannot connect to the systemd journal: {0}")]
    Journal(std::io::Error),
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// `filter` with the notify crate held to warnings, unless it names notify or is that quiet already.
fn with_notify_quiet(filter: &str) -> String {
    let quiet_already = ["off", "error", "warn"].iter().any(|l| filter.starts_with(l));
    if filter.contains("notify") || quiet_already {
        filter.to_string()
    } else {
        format!("{filter},notify=warn")
    }
}

/// Installs the global subscriber. `default_filter` applies when `VEIL_LOG` is unset.
pub fn init(default_filter: &LogFilter) -> Result<Sink, LoggingError> {
    let filter = match std::env::var(ENV_FILTER) {
        Ok(value) => EnvFilter::builder()
            .parse(&value)
            .map_err(|e| LoggingError::BadEnvFilter { value, message: e.to_string() })?,
        // Already checked when the configuration was read. The notify crate's info lines (a watch
        // it could not remove from a folder already gone) say nothing a user can act on.
        Err(_) => EnvFilter::builder().parse_lossy(with_notify_quiet(default_filter.as_str())),
    };
    if systemd_journal_logger::connected_to_journal() {
        let journal = JournalLog::new().map_err(LoggingError::Journal)?;
        let subscriber = tracing_subscriber::registry().with(JournalLayer(journal).with_filter(filter));
        tracing::subscriber::set_global_default(subscriber).map_err(|_| LoggingError::AlreadyInstalled)?;
        Ok(Sink::Journal)
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init()
            .map_err(|_| LoggingError::AlreadyInstalled)?;
        Ok(Sink::Stderr)
    }
}

/// Forwards each `tracing` event to the journal as a `log` record.
struct JournalLayer(JournalLog);

impl<S: tracing::Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut text = EventText::default();
        event.record(&mut text);
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            tracing::Level::DEBUG => log::Level::Debug,
            tracing::Level::TRACE => log::Level::Trace,
        };
        log::Log::log(
            &self.0,
            &log::Record::builder()
                .args(format_args!("{}", text.0))
                .level(level)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .build(),
        );
    }
}

/// The event's message followed by its other fields as `key=value`.
#[derive(Default)]
struct EventText(String);

impl Visit for EventText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let sep = if self.0.is_empty() { "" } else { " " };
        // Writing into a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.0, "{sep}{value:?}")
        } else {
            write!(self.0, "{sep}{}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let sep = if self.0.is_empty() { "" } else { " " };
            self.0.push_str(sep);
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// An error and its causes on one line, as `{:#}` writes them, but without a cause that a message
/// before it already quotes: the library's errors name their source in their own message
/// (`…: cannot open: No such file or directory`), which `{:#}` would repeat.
pub fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod describe_tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: cannot open: {source}")]
    struct Quoting {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn causes_are_joined_once() {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let quoted = anyhow::Error::new(Quoting { path: "a.jpg".into(), source: gone() });
        assert_eq!(
            format!("{quoted:#}"),
            "a.jpg: cannot open: No such file or directory: No such file or directory"
        );
        assert_eq!(describe(&quoted), "a.jpg: cannot open: No such file or directory");
        let context = anyhow::Error::new(gone()).context("reading b.toml");
        assert_eq!(describe(&context), "reading b.toml: No such file or directory");
        assert_eq!(describe(&anyhow::anyhow!("plain")), "plain");
    }
}

#[cfg(test)]
mod filter_tests {
    use super::with_notify_quiet;

    #[test]
    fn notify_is_held_to_warnings_unless_the_filter_says_otherwise() {
        assert_eq!(with_notify_quiet("info"), "info,notify=warn");
        assert_eq!(with_notify_quiet("debug,veil=trace"), "debug,veil=trace,notify=warn");
        assert_eq!(with_notify_quiet("info,notify=debug"), "info,notify=debug");
        assert_eq!(with_notify_quiet("warn"), "warn");
        assert_eq!(with_notify_quiet("off"), "off");
    }
}
