//! The control socket: how the `veil` CLI (or `curl --unix-socket`) sees and steers `veild`.
//!
//! HTTP/1.1 with JSON bodies over a Unix socket, every route under `/v1/`. This is the only module
//! that knows HTTP: [`server`] is the daemon's side (socket, lock, peer credentials, routing),
//! [`client`] a small blocking client for the CLI. The protocol's JSON types live here; the daemon's
//! core answers [`Command`]s and emits [`Event`]s, never seeing a request.

pub mod client;
pub mod server;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{config::Config, store::Status};

/// The protocol's version: the path prefix is `/v{API}/`.
pub const API: u32 = 1;
/// Request bodies larger than this are refused (413).
pub const MAX_BODY: usize = 1 << 20;
/// `GET /v1/jobs` returns at most this many jobs per page.
pub const MAX_PAGE: usize = 1000;

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    pub api: u32,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `idle`, `working` (photos queued or in the engine), `waiting` (nothing to do but photos that
    /// wait for another try: their output folder could not take them, an attempt failed, or the
    /// job database cannot be written), `on battery` (photos wait for the charger) or `paused`.
    pub state: String,
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub device: String,
    /// The generators and the face detector that loaded.
    pub models: Vec<String>,
    /// Photos waiting, in the engine, or seen and settling.
    pub queue: u64,
    /// About how long the queue will take, in seconds, at the pace of the last photos; absent
    /// when nothing is to do now, nothing was timed yet, or the photos wait (paused, on battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Of the queue, photos that wait for another try after an error (see `last_errors`) and are
    /// not due yet.
    #[serde(default)]
    pub waiting: u64,
    /// Jobs per status (`pending`, `running`, `done`, `failed`, `skipped`).
    pub counts: BTreeMap<String, u64>,
    pub folders: Vec<FolderStatus>,
    /// The most recent errors, oldest first.
    pub last_errors: Vec<ErrorEntry>,
    /// The desktop notifications: `batches through /usr/bin/notify-send`, `off`, why there are none,
    /// or why the last one was not shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// Where the computer's power comes from and what that means for the photos: `on mains
    /// power`, `on battery: new photos wait for the charger …`; absent when nothing says (no
    /// battery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderStatus {
    pub path: String,
    pub output: String,
    /// `events` (inotify and friends), `poll`, or `gone` (the folder is not there: it is watched
    /// again when it is back).
    pub watch: String,
    /// Why the folder cannot be watched by events, if it cannot.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// Seconds since the epoch.
    pub at: u64,
    pub message: String,
}

/// One job of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub path: String,
    pub status: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub output: Option<String>,
    /// The copy `output` names was deleted since (its folder is there, the file is not); the
    /// photo, dropped again, is protected again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_deleted: bool,
    pub faces: Option<u32>,
    pub seconds: Option<f64>,
    /// Seconds since the epoch of the last change.
    pub updated: i64,
}

/// `GET /v1/jobs`: a page; `next` is the `after` of the next page, absent on the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsPage {
    pub jobs: Vec<JobInfo>,
    pub next: Option<i64>,
}

/// `POST /v1/protect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectRequest {
    /// Files or folders (walked) to protect now.
    pub paths: Vec<PathBuf>,
    /// Where the copies of photos outside every watched folder go (default: the first folder's
    /// output). Photos inside a watched folder always go to that folder's output.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

/// What became of one photo of a `POST /v1/protect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectOutcome {
    pub path: String,
    /// `queued`, `duplicate` (same content already protected or queued), `running`, `error`, or, for
    /// a folder, `left out` (what its walk passed over: camera RAW files, other pictures, links, counted in
    /// `message`).
    pub outcome: String,
    pub id: Option<i64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectReply {
    pub photos: Vec<ProtectOutcome>,
}

/// `POST /v1/retry`: one job (`id`), or every failed one and every one waiting for another try
/// (`all`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryReply {
    pub retried: u64,
}

/// `POST /v1/pause`, `/v1/resume`, `/v1/reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateReply {
    pub state: String,
    pub message: String,
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `subscribed` (first line), `queued`, `running`, `done`, `failed`, `retrying` (failed, will be
    /// tried again), `waiting` (its output folder cannot take it now: tried again later), `skipped`, `removed` (a failed photo
    /// was deleted or moved away: its failure is forgotten; or a waiting one was let go with its
    /// folder, taken out of the configuration; or a queued one went away before it was read), `paused`, `resumed`, `reloaded`,
    /// `battery` (the computer went on battery: new photos wait for the charger), `mains` (they
    /// go on), or
    /// `lagged` (events were lost).
    pub event: String,
    /// Seconds since the epoch.
    pub at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The faces protected, on a `done` event for a photo the engine has just protected (0: it had
    /// none, and its copy is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<u32>,
}

impl Event {
    pub fn new(event: &str, path: Option<&Path>) -> Event {
        Event {
            event: event.into(),
            at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            id: None,
            path: path.map(lossy),
            output: None,
            error: None,
            faces: None,
        }
    }
}

/// An error as shown beside its photo's path (`veil jobs`, `veil watch`, the desktop notifications):
/// without that path, which every error starts with.
pub fn without_path<'a>(error: &'a str, path: &str) -> &'a str {
    error.strip_prefix(path).and_then(|e| e.strip_prefix(": ")).unwrap_or(error)
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
}

/// An error answer: HTTP status and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

/// What the server asks the daemon's core.
#[derive(Debug)]
pub enum Command {
    Status,
    Jobs {
        status: Option<Status>,
        after: i64,
        limit: usize,
    },
    Pause,
    Resume,
    Protect(ProtectRequest),
    Retry(RetryRequest),
    /// Apply a configuration read again (`POST /v1/reload`, like SIGHUP).
    Reload(Box<Config>),
}

/// The core's answer: a JSON body for 200, or an error.
pub type Reply = Result<serde_json::Value, ApiError>;

/// A path as the protocol writes it (non-UTF-8 bytes replaced).
pub fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Serializes an answer (the protocol types cannot fail to serialize).
pub fn to_reply<T: Serialize>(value: &T) -> Reply {
    serde_json::to_value(value).map_err(|e| ApiError::new(500, format!("cannot write the answer: {e}")))
}
