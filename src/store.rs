//! The job database: one SQLite row per source file `veild` has seen, in the state folder.
//!
//! A row holds what the file was when it was last looked at (size, modification time, BLAKE3 hash of
//! its content) and what became of it: `pending`, `running`, `done`, `failed` or `skipped`, the
//! attempts, the last error, the protected copy, the faces, the seconds and the loss per generator.
//! The disk is the truth: [`Store::observe`] reconciles a file found on disk with its row, so the same
//! content is never protected twice and changed content is protected again.

use std::{
    collections::{HashMap, HashSet},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rusqlite::{params, Connection, OptionalExtension};

use crate::imageio::Earlier;

/// File name of the database inside the state folder.
pub const FILE_NAME: &str = "jobs.sqlite";

/// Attempts after which a file whose errors looked temporary is quarantined (`failed`).
pub const MAX_ATTEMPTS: u32 = 3;

/// The first pause, in seconds, before a photo waiting for its output folder is tried again.
pub const WAIT_FIRST: i64 = 10;
/// The longest such pause: a folder that is fixed (space freed, a drive mounted again) is used
/// again within this many seconds.
pub const WAIT_MAX: i64 = 300;

/// The pause before the next try of a photo that has waited `attempts` times.
fn wait_after(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (WAIT_FIRST << doublings).min(WAIT_MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state folder {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("job database {}: {source}", path.display())]
    Sql { path: PathBuf, source: rusqlite::Error },
    /// The file is not a database, or a damaged one: it is left as it is.
    #[error(
        "job database {} is damaged ({cause}); veild leaves it as it is: move it aside (`mv {0} {0}.broken`) \
         to start afresh; the photos it knew are then protected again, their copies written as `name (1).jpg`",
        path.display()
    )]
    Damaged { path: PathBuf, cause: rusqlite::Error },
    /// `veil protect`'s record of its copies ([`COPIES_FILE`]).
    #[error("the record of the copies veil protect wrote, {}: {source}", path.display())]
    Copies { path: PathBuf, source: rusqlite::Error },
    #[error("cannot read the copy {}: {source}", path.display())]
    ReadCopy { path: PathBuf, source: std::io::Error },
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }

    /// The status named `s`, as [`Status::as_str`] writes it.
    pub fn from_name(s: &str) -> Option<Status> {
        [Status::Pending, Status::Running, Status::Done, Status::Failed, Status::Skipped]
            .into_iter()
            .find(|st| st.as_str() == s)
    }

    fn parse(s: &str) -> Status {
        match s {
            "running" => Status::Running,
            "done" => Status::Done,
            "failed" => Status::Failed,
            "skipped" => Status::Skipped,
            _ => Status::Pending,
        }
    }
}

/// A file as found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// What [`Store::observe`] made of a file.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Size and time as recorded: nothing to do.
    Unchanged,
    /// New or changed content, queued as `pending`.
    Queued,
    /// Content already protected (or being protected) from the named file: `skipped`.
    Duplicate { of: PathBuf },
    /// Touched, but the content is the one recorded.
    SameContent,
    /// A protected copy Veil wrote of the named file (dropped back in, or copied elsewhere):
    /// `skipped`, since a second protection would double its noise.
    OwnCopy { of: PathBuf },
}

/// A file waiting to be protected.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingJob {
    pub path: PathBuf,
    pub folder: PathBuf,
    /// The copy this one replaces rather than taking `name (1).ext`: an older content's copy,
    /// the copy `veil retry` makes again, or what an interrupted attempt may have written.
    pub earlier: Option<Earlier>,
    /// Set for a photo queued by hand from outside the watched folders: where its copy goes.
    pub output_dir: Option<PathBuf>,
}

/// One job as `veil jobs` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub path: PathBuf,
    pub status: Status,
    pub attempts: u32,
    pub error: Option<String>,
    pub output: Option<PathBuf>,
    pub faces: Option<u32>,
    pub seconds: Option<f64>,
    /// Seconds since the epoch of the last change.
    pub updated: i64,
}

/// What one row says, for reports and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub path: PathBuf,
    pub status: Status,
    pub attempts: u32,
    pub error: Option<String>,
    pub output: Option<PathBuf>,
    pub faces: Option<u32>,
    pub duplicate_of: Option<PathBuf>,
}

/// The result of one job, as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Done {
        output: PathBuf,
        faces: u32,
        seconds: f64,
        losses: Vec<(String, f64)>,
    },
    /// Skipped on purpose (for instance no face and `protect.no_face = "skip"`).
    Skipped {
        reason: String,
    },
    /// Failed; `retry` says whether another attempt may succeed (disk full, permissions).
    Failed {
        error: String,
        retry: bool,
    },
    /// The output folder cannot take the copy now (gone, read-only, full): the photo is not at
    /// fault, so it stays `pending` with the error kept and is tried again after a pause that
    /// doubles from [`WAIT_FIRST`] to [`WAIT_MAX`] seconds; it never turns `failed` for this.
    Waiting {
        error: String,
    },
    /// Not attempted (shutdown): back to `pending`, no attempt counted.
    Requeue,
    /// The file is gone: its row is dropped.
    Gone,
}

pub struct Store {
    db: Connection,
    path: PathBuf,
    /// `veil protect`'s record of its copies ([`COPIES_FILE`]), read only, opened once it exists.
    book: std::cell::RefCell<Option<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    folder BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    output BLOB,
    faces INTEGER,
    seconds REAL,
    losses TEXT,
    duplicate_of BLOB,
    replace INTEGER NOT NULL DEFAULT 0,
    not_before INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_hash ON files(hash);
CREATE INDEX IF NOT EXISTS files_status ON files(status);
CREATE TABLE IF NOT EXISTS folders (path BLOB PRIMARY KEY) WITHOUT ROWID;
";

/// Columns added after the first schema: a stable job number (for `veil retry ID` and paging), the
/// output folder of a photo queued by hand from outside the watched folders, whether the file was
/// seen gone after it was protected (see [`Store::sources_gone`]), the copy a pending job
/// replaces ([`PendingJob::earlier`]), and the hash of the protected copy written (see
/// [`Observed::OwnCopy`]).
const ADDED_COLUMNS: [(&str, &str); 5] = [
    ("id", "INTEGER"),
    ("output_dir", "BLOB"),
    ("gone", "INTEGER NOT NULL DEFAULT 0"),
    ("replaces", "BLOB"),
    ("output_hash", "TEXT"),
];

/// [`copy_deleted`] for a copy as the database holds it.
fn copy_deleted_blob(output: Option<&[u8]>) -> bool {
    output.is_some_and(|o| copy_deleted(&path_of(o.to_vec())))
}

/// Whether the copy at `copy` was deleted: its folder is there, the file is not (a folder on a
/// drive not mounted is not a deletion).
pub fn copy_deleted(copy: &Path) -> bool {
    missing(copy) && copy.parent().is_some_and(Path::is_dir)
}

/// Whether nothing, not even a dangling link, is at `path`.
fn missing(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Back to `pending`, from `running`, for a row whose attempt ended unrecorded (a crash, or a
/// database that could not be written): its copy, if it wrote one, is replaced — the one it
/// replaced, or what it wrote since its start (`updated`; see [`Earlier::Since`]).
const REQUEUE_UNRECORDED: &str =
    "UPDATE files SET status = 'pending', replaces = COALESCE(replaces, output), \
     replace = CASE WHEN replace > 0 THEN replace ELSE MAX(updated, 1) END WHERE status = 'running'";

fn blob(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn path_of(b: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Creates the state folder where it is missing, with any missing parents, readable by its owner
/// only (`rwx------`, as the XDG base directory specification asks): the job database lists every
/// photo's path. A folder already there is left as it is.
pub fn create_state_dir(state_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)
}

impl Store {
    /// Opens (creating) the database in `state_dir`. Rows left `running` by a crash go back to
    /// `pending`, marked so that their protected copy, if one was written, is replaced.
    pub fn open(state_dir: &Path) -> Result<(Store, usize), StoreError> {
        create_state_dir(state_dir)
            .map_err(|source| StoreError::Folder { path: state_dir.into(), source })?;
        let path = state_dir.join(FILE_NAME);
        let err = |source: rusqlite::Error| {
            let damaged = matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            );
            if damaged {
                StoreError::Damaged { path: path.clone(), cause: source }
            } else {
                StoreError::Sql { path: path.clone(), source }
            }
        };
        let db = Connection::open(&path).map_err(err)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        db.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        db.execute_batch(SCHEMA).map_err(err)?;
        migrate(&db).map_err(err)?;
        let recovered = db.execute(REQUEUE_UNRECORDED, []).map_err(err)?;
        Ok((Store { db, path, book: Default::default() }, recovered))
    }

    /// The photo a copy `veil protect` wrote with the content `hash` was made from (never an error:
    /// an unreadable record knows nothing).
    fn book_source(&self, hash: &str, path: &Path) -> Option<PathBuf> {
        let mut book = self.book.borrow_mut();
        if book.is_none() {
            *book = open_read_only(&self.path.parent()?.join(COPIES_FILE));
        }
        known_source(book.as_ref(), BOOK_COPY, hash, path)
    }

    /// Whether a configured folder (watched or output) at `path` was there at an earlier start or
    /// reload: missing now, it is gone (a drive not mounted, say), not new.
    pub fn folder_was_there(&self, path: &Path) -> Result<bool, StoreError> {
        self.db
            .query_row("SELECT EXISTS (SELECT 1 FROM folders WHERE path = ?1)", [blob(path)], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Records that the configured folder at `path` is there.
    pub fn folder_is_there(&self, path: &Path) -> Result<(), StoreError> {
        self.db
            .execute("INSERT OR IGNORE INTO folders (path) VALUES (?1)", [blob(path)])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql { path: self.path.clone(), source }
    }

    /// Whether the file needs hashing: false when its size and time are those recorded, and it was
    /// not seen gone since (a photo moved out and back in is observed again, which clears that).
    pub fn is_known(&self, path: &Path, seen: Seen) -> Result<bool, StoreError> {
        let row: Option<(i64, i64)> = self
            .db
            .query_row("SELECT size, mtime_ns FROM files WHERE path = ?1 AND gone = 0", [blob(path)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row == Some((seen.size as i64, seen.mtime_ns)))
    }

    /// Records a file found on disk in `folder` with the content hash `hash`.
    pub fn observe(
        &self,
        folder: &Path,
        path: &Path,
        seen: Seen,
        hash: &str,
    ) -> Result<Observed, StoreError> {
        self.observe_to(folder, path, seen, hash, None)
    }

    /// [`Store::observe`] for a photo queued by hand: `output_dir`, when given, is where its
    /// protected copy goes (the file is outside every watched folder).
    pub fn observe_to(
        &self,
        folder: &Path,
        path: &Path,
        seen: Seen,
        hash: &str,
        output_dir: Option<&Path>,
    ) -> Result<Observed, StoreError> {
        let e = |e| self.err(e);
        // (hash, output, gone, status, replaces)
        type Row = (String, Option<Vec<u8>>, bool, String, Option<Vec<u8>>);
        let old: Option<Row> = self
            .db
            .query_row(
                "SELECT hash, output, gone, status, replaces FROM files WHERE path = ?1",
                [blob(path)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(e)?;
        if let Some((old_hash, output, _, status, _)) = &old {
            // The same photo dropped again: nothing to do, unless its copy was deleted since.
            let copy_gone =
                matches!(status.as_str(), "done" | "skipped") && copy_deleted_blob(output.as_deref());
            if old_hash == hash && !copy_gone {
                self.db
                    .execute(
                        "UPDATE files SET size = ?2, mtime_ns = ?3, gone = 0 WHERE path = ?1",
                        params![blob(path), seen.size as i64, seen.mtime_ns],
                    )
                    .map_err(e)?;
                return Ok(Observed::SameContent);
            }
        }
        // A protected copy Veil wrote (veild or `veil protect`), back among the photos: not
        // protected a second time.
        let own = match copy_source(&self.db, JOBS_COPY, hash, path).map_err(e)? {
            Some(of) => Some(of),
            None => self.book_source(hash, path),
        };
        // New content under a known name: the photo was edited, and its new copy replaces the old
        // one (or, when the edit before this one is still on its way, as a slow writer's half-saved
        // file fails and waits, the copy that edit was to replace), unless the file was seen gone
        // in between (another photo under the same name) or the old copy also stands for other
        // files (same content under other names): then the new copy gets a name of its own and
        // nothing is lost.
        let earlier = match &old {
            // An own copy is skipped: it replaces nothing.
            _ if own.is_some() => None,
            // A skipped twin's output is the other photo's copy, not its own.
            Some((_, Some(output), false, status, _)) if status != "skipped" => Some(output),
            Some((_, None, false, _, Some(replaces))) => Some(replaces),
            _ => None,
        };
        let replaces = match earlier {
            Some(copy) => {
                let shared = self
                    .db
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM files WHERE output = ?1 AND path != ?2)",
                        params![copy, blob(path)],
                        |r| r.get::<_, bool>(0),
                    )
                    .map_err(e)?;
                (!shared).then(|| copy.clone())
            }
            None => None,
        };
        let replace = replaces.is_some();
        // Another file with this content in the same folder (so with the same output folder and
        // settings), done (its copy still there) or on its way? A photo dropped into two folders
        // gets a copy in each folder's output. Not for an edit whose copy is to be replaced: that
        // copy would go on showing the old picture.
        let twin: Option<(Vec<u8>, Option<Vec<u8>>, String)> = if replace || own.is_some() {
            None
        } else {
            let mut stmt = self
                .db
                .prepare_cached(
                    "SELECT path, output, status FROM files WHERE hash = ?1 AND path != ?2 \
                     AND folder = ?3 AND output_dir IS ?4 \
                     AND status IN ('done', 'pending', 'running') ORDER BY status = 'done' DESC",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map(params![hash, blob(path), blob(folder), output_dir.map(blob)], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, String>(2)?))
                })
                .map_err(e)?;
            let mut twin = None;
            for row in rows {
                let row = row.map_err(e)?;
                if row.2 != "done" || !copy_deleted_blob(row.1.as_deref()) {
                    twin = Some(row);
                    break;
                }
            }
            twin
        };
        let (status, output, duplicate_of, error) = match (&own, &twin) {
            (Some(of), _) => (Status::Skipped, None, None, Some(own_copy(of))),
            (None, Some((of, output, _))) => (Status::Skipped, output.clone(), Some(of.clone()), None),
            (None, None) => (Status::Pending, None, None, None),
        };
        self.db
            .execute(
                "INSERT OR REPLACE INTO files (path, folder, size, mtime_ns, hash, status, attempts, \
                 error, output, faces, seconds, losses, duplicate_of, replace, not_before, updated, \
                 id, output_dir, gone, replaces) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?13, ?7, NULL, NULL, NULL, ?8, ?9, 0, ?10, \
                 COALESCE((SELECT id FROM files WHERE path = ?1), \
                          (SELECT COALESCE(MAX(id), 0) + 1 FROM files)), ?11, 0, ?12)",
                params![
                    blob(path),
                    blob(folder),
                    seen.size as i64,
                    seen.mtime_ns,
                    hash,
                    status.as_str(),
                    output,
                    duplicate_of,
                    replace,
                    now(),
                    output_dir.map(blob),
                    replaces,
                    error
                ],
            )
            .map_err(e)?;
        Ok(match (own, twin) {
            (Some(of), _) => Observed::OwnCopy { of },
            (None, Some((of, _, _))) => Observed::Duplicate { of: path_of(of) },
            (None, None) => Observed::Queued,
        })
    }

    /// Up to `limit` pending files whose retry time has come, oldest first, skipping `busy`.
    pub fn pending(&self, limit: usize, busy: &[PathBuf]) -> Result<Vec<PendingJob>, StoreError> {
        let e = |e| self.err(e);
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT path, folder, replace, output_dir, replaces FROM files WHERE status = 'pending' \
                 AND not_before <= ?1 ORDER BY updated, path",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map([now()], |r| {
                let (replace, replaces) = (r.get::<_, i64>(2)?, r.get::<_, Option<Vec<u8>>>(4)?);
                Ok(PendingJob {
                    path: path_of(r.get(0)?),
                    folder: path_of(r.get(1)?),
                    output_dir: r.get::<_, Option<Vec<u8>>>(3)?.map(path_of),
                    earlier: match (replaces, replace) {
                        (Some(copy), _) => Some(Earlier::Copy(path_of(copy))),
                        // An attempt's start, in seconds (1 in databases from before this).
                        (None, since) if since > 0 => {
                            Some(Earlier::Since(UNIX_EPOCH + std::time::Duration::from_secs(since as u64)))
                        }
                        (None, _) => None,
                    },
                })
            })
            .map_err(e)?;
        let mut out = Vec::new();
        for row in rows {
            let row = row.map_err(e)?;
            if !busy.contains(&row.path) {
                out.push(row);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The earliest time (seconds since the epoch) a pending file waits for, if any waits.
    pub fn next_retry(&self) -> Result<Option<i64>, StoreError> {
        self.db
            .query_row(
                "SELECT MIN(not_before) FROM files WHERE status = 'pending' AND not_before > ?1",
                [now()],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    pub fn set_running(&self, path: &Path) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE files SET status = 'running', updated = ?2 WHERE path = ?1",
                params![blob(path), now()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// `path`, recorded under [`unreadable_hash`] and now read (its photo protected): its content's
    /// hash replaces the placeholder, while the file keeps the size and time recorded with it (one
    /// changed since is observed again as an edit). False when nothing was replaced.
    pub fn real_hash(&self, path: &Path) -> Result<bool, StoreError> {
        let e = |e| self.err(e);
        let recorded: Option<(i64, i64)> = self
            .db
            .query_row(
                "SELECT size, mtime_ns FROM files WHERE path = ?1 AND substr(hash, 1, ?2) = ?3",
                params![blob(path), UNREADABLE.len() as i64, UNREADABLE],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e)?;
        let Some(recorded) = recorded else { return Ok(false) };
        let now = || crate::watch::stat(path).map(|s| (s.size as i64, s.mtime_ns));
        // Unchanged before and after the hash: the hash is of the content recorded.
        let unchanged = now() == Some(recorded);
        let Some(hash) = hash_file(path).ok().filter(|_| unchanged && now() == Some(recorded)) else {
            return Ok(false);
        };
        let n = self
            .db
            .execute(
                "UPDATE files SET hash = ?2 WHERE path = ?1 AND size = ?3 AND mtime_ns = ?4",
                params![blob(path), hash, recorded.0, recorded.1],
            )
            .map_err(e)?;
        Ok(n > 0)
    }

    /// Records how a job ended; returns the row's new status (`None` when the row was dropped).
    pub fn finish(&self, path: &Path, finish: &Finish) -> Result<Option<Status>, StoreError> {
        let e = |e| self.err(e);
        let p = blob(path);
        let status = match finish {
            Finish::Done { output, faces, seconds, losses } => {
                let losses: Vec<String> = losses.iter().map(|(n, l)| format!("{n}={l}")).collect();
                // A copy with faces protected is known again if it comes back among the photos
                // (one without faces has the original's pixels, often its bytes).
                let output_hash = if *faces > 0 { hash_file(output).ok() } else { None };
                self.db
                    .execute(
                        "UPDATE files SET status = 'done', error = NULL, output = ?2, faces = ?3, \
                         seconds = ?4, losses = ?5, replace = 0, replaces = NULL, attempts = attempts + 1, updated = ?6, \
                         output_hash = ?7 WHERE path = ?1",
                        params![p, blob(output), faces, seconds, losses.join(","), now(), output_hash],
                    )
                    .map_err(e)?;
                // Files with the same content point at this copy (not those that found an earlier
                // content under this name).
                self.db
                    .execute(
                        "UPDATE files SET output = ?2 WHERE duplicate_of = ?1 AND status = 'skipped' \
                         AND hash = (SELECT hash FROM files WHERE path = ?1)",
                        params![p, blob(output)],
                    )
                    .map_err(e)?;
                Status::Done
            }
            Finish::Skipped { reason } => {
                self.db
                    .execute(
                        "UPDATE files SET status = 'skipped', error = ?2, attempts = attempts + 1, \
                         updated = ?3 WHERE path = ?1",
                        params![p, reason, now()],
                    )
                    .map_err(e)?;
                Status::Skipped
            }
            Finish::Failed { error, retry } => {
                let attempts = self.this_attempt(p)?;
                let status = if *retry && attempts < MAX_ATTEMPTS { Status::Pending } else { Status::Failed };
                let wait = 10 * i64::from(attempts);
                self.db
                    .execute(
                        "UPDATE files SET status = ?2, error = ?3, attempts = ?4, not_before = ?5, \
                         updated = ?6 WHERE path = ?1",
                        params![p, status.as_str(), error, attempts, now() + wait, now()],
                    )
                    .map_err(e)?;
                if status == Status::Failed {
                    // Files with the same content share the fate of this one.
                    let message = format!("same content as {}, which failed: {error}", path.display());
                    self.db
                        .execute(
                            "UPDATE files SET status = 'failed', error = ?2 WHERE duplicate_of = ?1 \
                             AND status = 'skipped' AND output IS NULL \
                             AND hash = (SELECT hash FROM files WHERE path = ?1)",
                            params![p, message],
                        )
                        .map_err(e)?;
                }
                status
            }
            Finish::Waiting { error } => {
                let attempts = self.this_attempt(p)?;
                self.db
                    .execute(
                        "UPDATE files SET status = 'pending', error = ?2, attempts = ?3, not_before = ?4, \
                         updated = ?5 WHERE path = ?1",
                        params![p, error, attempts, now() + wait_after(attempts), now()],
                    )
                    .map_err(e)?;
                Status::Pending
            }
            Finish::Requeue => {
                self.db.execute("UPDATE files SET status = 'pending' WHERE path = ?1", [p]).map_err(e)?;
                Status::Pending
            }
            Finish::Gone => {
                self.db.execute("DELETE FROM files WHERE path = ?1", [p]).map_err(e)?;
                return Ok(None);
            }
        };
        Ok(Some(status))
    }

    /// The number of the attempt that just ended for the row at `path` (its attempts so far + 1).
    fn this_attempt(&self, path: &[u8]) -> Result<u32, StoreError> {
        let before: Option<u32> = self
            .db
            .query_row("SELECT attempts FROM files WHERE path = ?1", [path], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(before.unwrap_or(0).saturating_add(1))
    }

    /// Sends quarantined files, and pending ones that wait for another try after an error (all of
    /// them, or those under `under`), back to `pending` with their attempts cleared, to be tried
    /// now; returns their paths.
    pub fn retry_failed(&self, under: Option<&Path>) -> Result<Vec<PathBuf>, StoreError> {
        let rows = self.rows()?;
        let mut again_paths = Vec::new();
        let again =
            |r: &&Row| r.status == Status::Failed || (r.status == Status::Pending && r.error.is_some());
        for row in rows.iter().filter(again) {
            if under.is_none_or(|u| row.path.starts_with(u)) {
                let n = self
                    .db
                    .execute(
                        "UPDATE files SET status = 'pending', attempts = 0, not_before = 0, \
                         duplicate_of = NULL WHERE path = ?1",
                        [blob(&row.path)],
                    )
                    .map_err(|e| self.err(e))?;
                if n > 0 {
                    again_paths.push(row.path.clone());
                }
            }
        }
        Ok(again_paths)
    }

    /// Sends the rows left `running` that are not in the engine (`busy`) back to `pending`, to be
    /// protected again replacing any copy they wrote: their end could not be recorded (the
    /// database could not be written). Returns how many.
    pub fn requeue_stale(&self, busy: &[PathBuf]) -> Result<usize, StoreError> {
        let e = |e| self.err(e);
        let running: Vec<PathBuf> = {
            let mut stmt =
                self.db.prepare_cached("SELECT path FROM files WHERE status = 'running'").map_err(e)?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(e)?;
            rows.map(|r| r.map(path_of)).collect::<Result<_, _>>().map_err(e)?
        };
        let mut n = 0;
        for path in running.iter().filter(|p| !busy.contains(p)) {
            n += self.db.execute(&format!("{REQUEUE_UNRECORDED} AND path = ?1"), [blob(path)]).map_err(e)?;
        }
        Ok(n)
    }

    /// Looks at the rows at or under `under` whose file is no longer there (deleted, or moved or
    /// renamed away). A quarantined one is dropped: its failure is over. A protected or skipped one
    /// is kept (the copy is still there, and so is the record of it) but marked `gone`, so a
    /// different photo that later comes under the same name (a camera's numbering starting over,
    /// another file renamed to it) gets a copy of its own instead of replacing this one. Returns the
    /// failed paths dropped. The caller makes sure the watched folder itself is there (a drive not
    /// mounted is not a deletion).
    /// `present` are files a scan just found (not looked at again).
    pub fn sources_gone(&self, under: &Path, present: &HashSet<PathBuf>) -> Result<Vec<PathBuf>, StoreError> {
        let e = |e| self.err(e);
        // The paths under `under/` lie between `under/` and `under0` ('0' follows '/'), a range
        // of the primary key: one removed file costs a look-up, not a scan of the table.
        let mut prefix = blob(under).to_vec();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        let mut end = prefix.clone();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let rows: Vec<(PathBuf, String)> = {
            let mut stmt = self
                .db
                .prepare_cached(
                    "SELECT path, status FROM files WHERE (path = ?1 OR (path >= ?2 AND path < ?3)) \
                     AND (status = 'failed' OR (status IN ('done', 'skipped') AND gone = 0))",
                )
                .map_err(e)?;
            let rows = stmt
                .query_map(params![blob(under), prefix, end], |r| Ok((path_of(r.get(0)?), r.get(1)?)))
                .map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)?
        };
        let mut dropped = Vec::new();
        for (path, status) in rows.into_iter().filter(|(p, _)| !present.contains(p) && missing(p)) {
            if status == "failed" {
                let n = self
                    .db
                    .execute("DELETE FROM files WHERE path = ?1 AND status = 'failed'", [blob(&path)])
                    .map_err(e)?;
                if n > 0 {
                    dropped.push(path);
                }
            } else {
                self.db.execute("UPDATE files SET gone = 1 WHERE path = ?1", [blob(&path)]).map_err(e)?;
            }
        }
        Ok(dropped)
    }

    /// Twins left without their photo: files `skipped` as having the content of another one that
    /// was still on its way (`duplicate_of`, no copy yet), whose row is gone since (that file was
    /// deleted, or renamed or moved away, before it was protected; or it failed and was deleted).
    /// Nothing would ever protect them: the first of each group goes back to `pending`, the others
    /// now wait for its copy. Returns the paths queued again.
    pub fn adopt_orphans(&self) -> Result<Vec<PathBuf>, StoreError> {
        let e = |e| self.err(e);
        let orphans: Vec<(Vec<u8>, Vec<u8>)> = {
            let mut stmt = self
                .db
                .prepare_cached(
                    "SELECT path, duplicate_of FROM files AS t WHERE status = 'skipped' \
                     AND duplicate_of IS NOT NULL AND output IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM files WHERE path = t.duplicate_of) ORDER BY id",
                )
                .map_err(e)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)?
        };
        let mut heirs: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut queued = Vec::new();
        for (path, of) in orphans {
            match heirs.get(&of) {
                Some(heir) => {
                    self.db
                        .execute("UPDATE files SET duplicate_of = ?2 WHERE path = ?1", params![path, heir])
                        .map_err(e)?;
                }
                None => {
                    self.db
                        .execute(
                            "UPDATE files SET status = 'pending', duplicate_of = NULL, error = NULL, \
                             attempts = 0, not_before = 0, updated = ?2 WHERE path = ?1",
                            params![path, now()],
                        )
                        .map_err(e)?;
                    queued.push(path_of(path.clone()));
                    heirs.insert(of, path);
                }
            }
        }
        Ok(queued)
    }

    /// For `path`, just recorded as having the content of `of`: `of`'s protected copy, when `of`
    /// was seen gone with the modification time `path` has (renamed or moved within its folder,
    /// which keeps it: this is the same photo under its new name; a photo deleted and later copied
    /// in again has the time of that copy, and the copy of its first name stays where it is) and no
    /// other file shares that copy. The caller renames the copy after the photo and records it with
    /// [`Store::carry_over`].
    pub fn renamed_copy(&self, of: &Path, path: &Path) -> Result<Option<PathBuf>, StoreError> {
        self.db
            .query_row(
                "SELECT output FROM files AS f WHERE path = ?1 AND status = 'done' AND gone = 1 \
                 AND mtime_ns = (SELECT mtime_ns FROM files WHERE path = ?2) \
                 AND output IS NOT NULL AND NOT EXISTS (SELECT 1 FROM files AS o \
                 WHERE o.output = f.output AND o.path != ?1 AND o.path != ?2)",
                params![blob(of), blob(path)],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|o| o.map(path_of))
            .map_err(|e| self.err(e))
    }

    /// `of`'s record goes to `path` (the photo renamed), with its copy now at `copy`.
    pub fn carry_over(&self, of: &Path, path: &Path, copy: &Path) -> Result<(), StoreError> {
        let e = |e| self.err(e);
        let tx = self.db.unchecked_transaction().map_err(e)?;
        tx.execute(
            "UPDATE files SET status = 'done', output = ?3, duplicate_of = NULL, error = NULL, \
             faces = (SELECT faces FROM files WHERE path = ?1), \
             seconds = (SELECT seconds FROM files WHERE path = ?1), \
             losses = (SELECT losses FROM files WHERE path = ?1) WHERE path = ?2",
            params![blob(of), blob(path), blob(copy)],
        )
        .map_err(e)?;
        tx.execute("DELETE FROM files WHERE path = ?1", [blob(of)]).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Forgets the photos waiting (`pending`) or quarantined (`failed`) in folders that are no
    /// longer watched (`watched` are those that are): the folder was taken out of the
    /// configuration, so nothing would ever take them. Photos queued by hand with an output of
    /// their own are kept, and so are the records of copies made. Returns the paths forgotten.
    pub fn release_unwatched(&self, watched: &[PathBuf]) -> Result<Vec<PathBuf>, StoreError> {
        let e = |e| self.err(e);
        let rows: Vec<(PathBuf, PathBuf)> = {
            let mut stmt = self
                .db
                .prepare_cached(
                    "SELECT path, folder FROM files WHERE status IN ('pending', 'failed') \
                     AND output_dir IS NULL",
                )
                .map_err(e)?;
            let rows = stmt.query_map([], |r| Ok((path_of(r.get(0)?), path_of(r.get(1)?)))).map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)?
        };
        let mut released = Vec::new();
        for (path, _) in rows.into_iter().filter(|(_, folder)| !watched.contains(folder)) {
            // One that has a copy (a protected photo sent back by `veil retry`) keeps its record.
            self.db
                .execute(
                    "UPDATE files SET status = 'done', error = NULL WHERE path = ?1 \
                     AND status IN ('pending', 'failed') AND output IS NOT NULL",
                    [blob(&path)],
                )
                .map_err(e)?;
            let n = self
                .db
                .execute(
                    "DELETE FROM files WHERE path = ?1 AND status IN ('pending', 'failed')",
                    [blob(&path)],
                )
                .map_err(e)?;
            if n > 0 {
                // Its twins waiting for its copy (in the same folder) go with it.
                let mut stmt = self
                    .db
                    .prepare_cached(
                        "DELETE FROM files WHERE duplicate_of = ?1 AND status = 'skipped' \
                         AND output IS NULL RETURNING path",
                    )
                    .map_err(e)?;
                let twins = stmt.query_map([blob(&path)], |r| r.get::<_, Vec<u8>>(0)).map_err(e)?;
                let twins: Vec<PathBuf> =
                    twins.map(|r| r.map(path_of)).collect::<Result<_, _>>().map_err(e)?;
                released.push(path);
                released.extend(twins);
            }
        }
        Ok(released)
    }

    /// Sends one job back to `pending` with its attempts cleared, whatever its status but
    /// `running`; returns its path, or `None` when no job has that number (or it is running).
    pub fn retry_one(&self, id: i64) -> Result<Option<PathBuf>, StoreError> {
        let e = |e| self.err(e);
        let path: Option<Vec<u8>> = self
            .db
            .query_row("SELECT path FROM files WHERE id = ?1 AND status != 'running'", [id], |r| r.get(0))
            .optional()
            .map_err(e)?;
        let Some(path) = path else { return Ok(None) };
        self.db
            .execute(
                "UPDATE files SET status = 'pending', attempts = 0, not_before = 0, duplicate_of = NULL, \
                 replace = (output IS NOT NULL), replaces = output, updated = ?2 WHERE path = ?1",
                params![path, now()],
            )
            .map_err(e)?;
        Ok(Some(path_of(path)))
    }

    /// Up to `limit` jobs numbered above `after`, in number order, optionally of one status.
    pub fn jobs(&self, status: Option<Status>, after: i64, limit: usize) -> Result<Vec<JobRow>, StoreError> {
        let e = |e| self.err(e);
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT id, path, status, attempts, error, output, faces, seconds, updated FROM files \
                 WHERE id > ?1 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT ?3",
            )
            .map_err(e)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after, status.map(Status::as_str), limit], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    path: path_of(r.get(1)?),
                    status: Status::parse(&r.get::<_, String>(2)?),
                    attempts: r.get(3)?,
                    error: r.get(4)?,
                    output: r.get::<_, Option<Vec<u8>>>(5)?.map(path_of),
                    faces: r.get(6)?,
                    seconds: r.get(7)?,
                    updated: r.get(8)?,
                })
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// The number and status of the job for `path`, if it has one.
    /// The protected copy recorded for `path`, if it has one.
    pub fn copy_of(&self, path: &Path) -> Result<Option<PathBuf>, StoreError> {
        self.db
            .query_row("SELECT output FROM files WHERE path = ?1 AND output IS NOT NULL", [blob(path)], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map(|o| o.map(path_of))
            .map_err(|e| self.err(e))
    }

    pub fn job_of(&self, path: &Path) -> Result<Option<(i64, Status)>, StoreError> {
        self.db
            .query_row("SELECT id, status FROM files WHERE path = ?1", [blob(path)], |r| {
                Ok((r.get(0)?, Status::parse(&r.get::<_, String>(1)?)))
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// How many jobs have each status.
    pub fn counts_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let e = |e| self.err(e);
        let mut stmt =
            self.db.prepare_cached("SELECT status, COUNT(*) FROM files GROUP BY status").map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((Status::parse(&r.get::<_, String>(0)?), r.get::<_, i64>(1)?.max(0) as u64))
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// Every row, by path.
    pub fn rows(&self) -> Result<Vec<Row>, StoreError> {
        let e = |e| self.err(e);
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT path, status, attempts, error, output, faces, duplicate_of FROM files ORDER BY path",
            )
            .map_err(e)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Row {
                    path: path_of(r.get(0)?),
                    status: Status::parse(&r.get::<_, String>(1)?),
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    output: r.get::<_, Option<Vec<u8>>>(4)?.map(path_of),
                    faces: r.get(5)?,
                    duplicate_of: r.get::<_, Option<Vec<u8>>>(6)?.map(path_of),
                })
            })
            .map_err(e)?;
        rows.collect::<Result<_, _>>().map_err(e)
    }

    /// The mean time the engine took for the last [`RECENT`] photos it protected or copied, for
    /// `veil status`'s estimate of the time left; `None` before the first.
    pub fn recent_seconds(&self) -> Result<Option<f64>, StoreError> {
        self.db
            .query_row(
                "SELECT AVG(seconds) FROM (SELECT seconds FROM files WHERE status = 'done' \
                 AND seconds IS NOT NULL ORDER BY updated DESC LIMIT ?1)",
                [RECENT],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// How many rows are queued, failed and waiting, in one query.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let n = |v: i64| v.max(0) as u64;
        self.db
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE status IN ('pending', 'running')), \
                 COUNT(*) FILTER (WHERE status = 'failed'), \
                 COUNT(*) FILTER (WHERE status = 'pending' AND error IS NOT NULL AND not_before > ?1) \
                 FROM files",
                [now()],
                |r| Ok(Counts { queued: n(r.get(0)?), failed: n(r.get(1)?), waiting: n(r.get(2)?) }),
            )
            .map_err(|e| self.err(e))
    }
}

/// Photos [`Store::recent_seconds`] averages over.
const RECENT: i64 = 20;

/// What [`Store::counts`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Pending or running.
    pub queued: u64,
    pub failed: u64,
    /// Of the queued: pending after an error (their output folder could not take them, or an
    /// attempt failed), waiting for another try that is not due yet.
    pub waiting: u64,
}

/// Adds the columns a database made by an older `veild` lacks and numbers its jobs.
fn migrate(db: &Connection) -> rusqlite::Result<()> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('files')")?;
    let have: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for (name, kind) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            db.execute_batch(&format!("ALTER TABLE files ADD COLUMN {name} {kind}"))?;
        }
    }
    let first: i64 = db.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM files", [], |r| r.get(0))?;
    let mut stmt = db.prepare("SELECT path FROM files WHERE id IS NULL ORDER BY path")?;
    let unnumbered: Vec<Vec<u8>> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    for (n, path) in unnumbered.into_iter().enumerate() {
        db.execute("UPDATE files SET id = ?2 WHERE path = ?1", params![path, first + n as i64])?;
    }
    db.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS files_id ON files(id);
         CREATE INDEX IF NOT EXISTS files_output_hash ON files(output_hash);",
    )
}

/// Where `veil protect` records the protected copies it writes, in the state folder beside the job
/// database (which only `veild`'s core writes): the content's hash and the photo it came from.
/// `veild` and `veil protect` read both, so neither protects a copy of the other's twice.
pub const COPIES_FILE: &str = "copies.sqlite";

const COPIES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS copies (
    hash TEXT PRIMARY KEY,
    source BLOB NOT NULL,
    written INTEGER NOT NULL
);
";

/// The database at `path`, read only, where there is one (`None`, logged, when it cannot be opened).
fn open_read_only(path: &Path) -> Option<Connection> {
    if !path.is_file() {
        return None;
    }
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|db| db.busy_timeout(std::time::Duration::from_secs(5)).map(|()| db))
        .inspect_err(|e| tracing::debug!("{}: not read for the copies Veil protected: {e}", path.display()))
        .ok()
}

/// [`COPIES_FILE`] in `state_dir`, to record in: made when missing, the state folder with it.
fn open_book_to_write(state_dir: &Path) -> Result<Connection, StoreError> {
    create_state_dir(state_dir).map_err(|source| StoreError::Folder { path: state_dir.into(), source })?;
    let path = state_dir.join(COPIES_FILE);
    let err = |source| StoreError::Copies { path: path.clone(), source };
    let db = Connection::open(&path).map_err(err)?;
    db.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
    db.execute_batch(COPIES_SCHEMA).map_err(err)?;
    Ok(db)
}

/// The protected copies Veil wrote, for `veil protect`, so that a copy given to it is not protected
/// twice: those `veild` recorded (its job database, read only: the daemon's core stays its one
/// writer) and those `veil protect` wrote ([`COPIES_FILE`], which [`KnownCopies::record`] adds
/// to). Without either database, or with a job database older than [`Observed::OwnCopy`], nothing
/// is known.
pub struct KnownCopies {
    jobs: Option<Connection>,
    book: Option<Connection>,
    state_dir: PathBuf,
}

impl KnownCopies {
    pub fn open(state_dir: &Path) -> KnownCopies {
        KnownCopies {
            jobs: open_read_only(&state_dir.join(FILE_NAME)),
            book: open_read_only(&state_dir.join(COPIES_FILE)),
            state_dir: state_dir.into(),
        }
    }

    /// The photo `file` is a protected copy of, when Veil wrote it (same content).
    pub fn source_of(&self, file: &Path) -> Option<PathBuf> {
        if self.jobs.is_none() && self.book.is_none() {
            return None;
        }
        let hash = hash_file(file).ok()?;
        known_source(self.jobs.as_ref(), JOBS_COPY, &hash, file)
            .or_else(|| known_source(self.book.as_ref(), BOOK_COPY, &hash, file))
    }

    /// Records `copy`, a protected copy of `source` just written, so that it is known when it comes
    /// back. The error says why it could not be.
    pub fn record(&mut self, source: &Path, copy: &Path) -> Result<(), StoreError> {
        let path = self.state_dir.join(COPIES_FILE);
        // Opened read only at first (or not at all, when missing): for writing now.
        let db = match self.book.take().filter(|db| !db.is_readonly(rusqlite::MAIN_DB).unwrap_or(true)) {
            Some(db) => db,
            None => open_book_to_write(&self.state_dir)?,
        };
        let db = self.book.insert(db);
        let hash = hash_file(copy).map_err(|source| StoreError::ReadCopy { path: copy.into(), source })?;
        db.execute(
            "INSERT OR REPLACE INTO copies (hash, source, written) VALUES (?1, ?2, ?3)",
            params![hash, blob(source), now()],
        )
        .map(drop)
        .map_err(|source| StoreError::Copies { path, source })
    }
}

/// In the job database: the file whose copy `veild` protected has the content `?1`, other than `?2`.
const JOBS_COPY: &str = "SELECT path FROM files WHERE output_hash = ?1 AND path != ?2 LIMIT 1";
/// In [`COPIES_FILE`]: the photo whose copy `veil protect` wrote has the content `?1`, other than `?2`.
const BOOK_COPY: &str = "SELECT source FROM copies WHERE hash = ?1 AND source != ?2";

/// The photo (other than `path`) whose protected copy has the content `hash`, in the record `sql`
/// reads ([`JOBS_COPY`] or [`BOOK_COPY`]).
fn copy_source(db: &Connection, sql: &str, hash: &str, path: &Path) -> rusqlite::Result<Option<PathBuf>> {
    db.query_row(sql, params![hash, blob(path)], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .map(|p| p.map(path_of))
}

/// [`copy_source`] where the record is only a hint: one that is missing or cannot be read knows
/// nothing (logged).
fn known_source(db: Option<&Connection>, sql: &str, hash: &str, path: &Path) -> Option<PathBuf> {
    copy_source(db?, sql, hash, path)
        .inspect_err(|e| tracing::debug!("the record of the copies Veil protected cannot be read: {e}"))
        .ok()
        .flatten()
}

/// How [`own_copy`] starts.
pub const OWN_COPY: &str = "a copy Veil already protected";

/// Why a protected copy Veil wrote of `of` is not protected again.
pub fn own_copy(of: &Path) -> String {
    format!("{OWN_COPY} (from {}): protecting it twice would double its noise", of.display())
}

/// The hash recorded for a file that could not be read when it was found: it matches no other
/// file's, so it is neither deduplicated nor followed through a rename until its real hash replaces
/// it ([`Store::real_hash`]).
pub fn unreadable_hash(path: &Path) -> String {
    format!("{UNREADABLE}{}", path.display())
}

const UNREADABLE: &str = "unreadable-";

/// The BLAKE3 hash of a file's content, as hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let file = std::fs::File::open(path)?;
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 16, file), &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(size: u64) -> Seen {
        Seen { size, mtime_ns: 1 }
    }

    #[test]
    fn a_new_state_folder_is_its_owners_alone_and_an_existing_one_is_left_as_it_is() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let state = d.path().join("home/.local/state/veil");
        Store::open(&state).unwrap();
        assert_eq!((mode(&state), mode(state.parent().unwrap())), (0o700, 0o700));
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
        Store::open(&shared).unwrap();
        assert_eq!(mode(&shared), 0o750);
    }

    #[test]
    fn a_protected_copy_back_among_the_photos_is_skipped_and_an_unchanged_one_is_not_known() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(&d.path().join("state")).unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (f, a, b) = (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"));
        assert_eq!(s.observe(f, a, seen(5), "h-a").unwrap(), Observed::Queued);
        assert_eq!(s.observe(f, b, seen(6), "h-b").unwrap(), Observed::Queued);
        // a had a face: its copy differs from it; b had none: its copy is its own bytes.
        let (copy_a, copy_b) = (out.join("a.jpg"), out.join("b.jpg"));
        std::fs::write(&copy_a, b"protected pixels").unwrap();
        std::fs::write(&copy_b, b"the original's bytes").unwrap();
        let done = |output: &Path, faces| Finish::Done {
            output: output.into(),
            faces,
            seconds: 1.0,
            losses: vec![],
        };
        s.finish(a, &done(&copy_a, 1)).unwrap();
        s.finish(b, &done(&copy_b, 0)).unwrap();

        // a's copy dropped into the folder again, under another name.
        let back = Path::new("/in/a-shared.jpg");
        let hash = hash_file(&copy_a).unwrap();
        assert_eq!(s.observe(f, back, seen(16), &hash).unwrap(), Observed::OwnCopy { of: a.into() });
        let row = s.rows().unwrap().into_iter().find(|r| r.path == back).unwrap();
        assert_eq!(row.status, Status::Skipped);
        assert_eq!(row.error.as_deref(), Some(own_copy(a).as_str()));
        assert!(s.pending(10, &[]).unwrap().is_empty());
        // `veil protect` reads the same record.
        let known = KnownCopies::open(&d.path().join("state"));
        assert_eq!(known.source_of(&copy_a), Some(a.to_path_buf()));
        assert_eq!(known.source_of(&copy_b), None);
        assert_eq!(KnownCopies::open(&d.path().join("nowhere")).source_of(&copy_a), None);
        // Edited afterwards, it is a photo of its own.
        assert_eq!(s.observe(f, back, seen(17), "h-edited").unwrap(), Observed::Queued);
        // b's copy is not told apart from a photo (it has b's pixels, and nothing of Veil's).
        let hash = hash_file(&copy_b).unwrap();
        assert_eq!(s.observe(f, Path::new("/in/b-again.jpg"), seen(20), &hash).unwrap(), Observed::Queued);
    }

    #[test]
    fn the_copies_veil_protect_writes_are_recorded_for_it_and_for_veild() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let copy = d.path().join("copy.jpg");
        std::fs::write(&copy, b"protected pixels").unwrap();
        let source = Path::new("/camera/a.jpg");
        // Nothing recorded yet: no state folder is made just to look.
        let mut known = KnownCopies::open(&state);
        assert_eq!(known.source_of(&copy), None);
        assert!(!state.exists());
        known.record(source, &copy).unwrap();
        assert!(state.join(COPIES_FILE).is_file());
        assert_eq!(known.source_of(&copy), Some(source.to_path_buf()));
        assert_eq!(KnownCopies::open(&state).source_of(&copy), Some(source.to_path_buf()));
        // veild's job database, opened before or after the record was made, knows it too.
        let (s, _) = Store::open(&state).unwrap();
        let hash = hash_file(&copy).unwrap();
        let f = Path::new("/in");
        assert_eq!(
            s.observe(f, Path::new("/in/back.jpg"), seen(16), &hash).unwrap(),
            Observed::OwnCopy { of: source.into() }
        );
        assert_eq!(s.observe(f, Path::new("/in/other.jpg"), seen(3), "h-other").unwrap(), Observed::Queued);
        // An unwritable state folder: told, not fatal.
        let blocked = d.path().join("file");
        std::fs::write(&blocked, b"").unwrap();
        let e = KnownCopies::open(&blocked.join("state")).record(source, &copy).unwrap_err().to_string();
        assert!(e.starts_with("cannot create the state folder"), "{e}");
    }

    #[test]
    fn twins_of_a_photo_that_went_before_it_was_protected_are_protected_in_its_place() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let f = Path::new("/in");
        let (a, b, c, x) =
            (Path::new("/in/a.jpg"), Path::new("/in/b.jpg"), Path::new("/in/c.jpg"), Path::new("/in/x.jpg"));
        assert_eq!(s.observe(f, a, seen(5), "h").unwrap(), Observed::Queued);
        assert!(matches!(s.observe(f, b, seen(5), "h").unwrap(), Observed::Duplicate { .. }));
        assert!(matches!(s.observe(f, c, seen(5), "h").unwrap(), Observed::Duplicate { .. }));
        assert_eq!(s.observe(f, x, seen(6), "other").unwrap(), Observed::Queued);
        assert!(s.adopt_orphans().unwrap().is_empty(), "a is still on its way");
        // a was renamed away before the engine reached it.
        assert_eq!(s.finish(a, &Finish::Gone).unwrap(), None);
        assert_eq!(s.adopt_orphans().unwrap(), [b.to_path_buf()]);
        assert!(s.adopt_orphans().unwrap().is_empty());
        let rows = s.rows().unwrap();
        let row = |p: &Path| rows.iter().find(|r| r.path == p).unwrap().clone();
        assert_eq!((row(b).status, row(b).duplicate_of), (Status::Pending, None));
        assert_eq!((row(c).status, row(c).duplicate_of), (Status::Skipped, Some(b.to_path_buf())));
        // b's copy is c's too.
        let done = Finish::Done { output: "/out/b.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] };
        s.finish(b, &done).unwrap();
        let rows = s.rows().unwrap();
        let c_row = rows.iter().find(|r| r.path == c).unwrap();
        assert_eq!(c_row.output.as_deref(), Some(Path::new("/out/b.jpg")));
    }

    #[test]
    fn a_photo_deleted_then_copied_in_again_is_no_rename_and_its_copy_stays() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let f = Path::new("/in");
        let (a, b, c) = (Path::new("/in/a.jpg"), Path::new("/in/b.jpg"), Path::new("/in/c.jpg"));
        s.observe(f, a, seen(1), "ha").unwrap();
        let done = Finish::Done { output: "/out/a.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] };
        s.finish(a, &done).unwrap();
        s.sources_gone(f, &Default::default()).unwrap();
        // Copied in again: the copy's own modification time.
        let later = Seen { size: 1, mtime_ns: 2 };
        assert_eq!(s.observe(f, b, later, "ha").unwrap(), Observed::Duplicate { of: a.into() });
        assert_eq!(s.renamed_copy(a, b).unwrap(), None, "not renamed: a's copy stays");
        // b points at a's copy now: not even a file with a's time (a rename) takes it from b.
        assert_eq!(s.observe(f, c, seen(1), "ha").unwrap(), Observed::Duplicate { of: a.into() });
        assert_eq!(s.renamed_copy(a, c).unwrap(), None, "b shares the copy");
    }

    #[test]
    fn the_time_a_photo_took_lately_is_the_mean_of_the_last_ones_done() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        assert_eq!(s.recent_seconds().unwrap(), None);
        let f = Path::new("/in");
        for (i, seconds) in [4.0, 6.0, 0.5].into_iter().enumerate() {
            let p = PathBuf::from(format!("/in/{i}.jpg"));
            s.observe(f, &p, seen(i as u64 + 1), &format!("h{i}")).unwrap();
            let output = PathBuf::from(format!("/out/{i}.jpg"));
            s.finish(&p, &Finish::Done { output, faces: u32::from(seconds > 1.0), seconds, losses: vec![] })
                .unwrap();
        }
        // A failed one took no time that counts.
        s.observe(f, Path::new("/in/x.jpg"), seen(9), "hx").unwrap();
        s.finish(Path::new("/in/x.jpg"), &Finish::Failed { error: "x".into(), retry: false }).unwrap();
        assert_eq!(s.recent_seconds().unwrap(), Some(3.5));
    }

    #[test]
    fn same_content_is_protected_once_and_changed_content_again() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let (f, a, b) = (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"));
        assert_eq!(s.observe(f, a, seen(1), "h1").unwrap(), Observed::Queued);
        assert!(s.is_known(a, seen(1)).unwrap());
        assert!(!s.is_known(a, seen(2)).unwrap());
        assert_eq!(s.observe(f, b, seen(1), "h1").unwrap(), Observed::Duplicate { of: a.into() });
        let jobs = s.pending(10, &[]).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].path, a);
        s.set_running(a).unwrap();
        let done = Finish::Done { output: "/out/a.jpg".into(), faces: 2, seconds: 1.5, losses: vec![] };
        assert_eq!(s.finish(a, &done).unwrap(), Some(Status::Done));
        let rows = s.rows().unwrap();
        assert_eq!(rows[1].output.as_deref(), Some(Path::new("/out/a.jpg")), "{rows:?}");
        assert_eq!(rows[1].status, Status::Skipped);
        // Touched without a change of content: nothing to do.
        assert_eq!(s.observe(f, a, seen(5), "h1").unwrap(), Observed::SameContent);
        // New content, but the old copy also stands for b: it stays, the new one gets its own name.
        assert_eq!(s.observe(f, a, seen(6), "h2").unwrap(), Observed::Queued);
        let job = |p: &Path, replaces: Option<&str>| PendingJob {
            path: p.into(),
            folder: f.into(),
            output_dir: None,
            earlier: replaces.map(|c| Earlier::Copy(c.into())),
        };
        assert_eq!(s.pending(10, &[]).unwrap(), vec![job(a, None)]);
        assert_eq!(s.rows().unwrap()[1].output.as_deref(), Some(Path::new("/out/a.jpg")), "b keeps its copy");

        // A photo edited in place: its new copy replaces its old one.
        let c = Path::new("/in/c.jpg");
        s.observe(f, c, seen(1), "h3").unwrap();
        let done = Finish::Done { output: "/out/c.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] };
        s.finish(c, &done).unwrap();
        assert_eq!(s.observe(f, c, seen(2), "h4").unwrap(), Observed::Queued);
        assert!(s.pending(10, &[]).unwrap().contains(&job(c, Some("/out/c.jpg"))));
        s.finish(c, &done).unwrap();
        // Seen gone (these paths are not on disk), then another photo under its name: a copy of its own.
        s.sources_gone(f, &Default::default()).unwrap();
        assert_eq!(s.observe(f, c, seen(3), "h5").unwrap(), Observed::Queued);
        assert!(s.pending(10, &[]).unwrap().contains(&job(c, None)));
    }

    /// The links between a photo and its copy that a daemon's users broke by hand: a photo moved out
    /// and back in, an edit saved slowly enough to fail halfway, an edit into another photo's
    /// content, a photo first found unreadable.
    #[test]
    fn a_photo_keeps_its_copy_through_a_return_a_slow_save_and_a_twin_edit() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let f = Path::new("/in");
        let done = |s: &Store, p: &Path, out: &str| {
            s.set_running(p).unwrap();
            let finish = Finish::Done { output: out.into(), faces: 1, seconds: 1.0, losses: vec![] };
            s.finish(p, &finish).unwrap();
        };
        let job = |p: &Path, replaces: Option<&str>| PendingJob {
            path: p.into(),
            folder: f.into(),
            output_dir: None,
            earlier: replaces.map(|c| Earlier::Copy(c.into())),
        };

        // Moved out (seen gone) and back in with its size and time: looked at again, and the same
        // content clears the mark, so the name keeps its copy.
        let a = Path::new("/in/a.jpg");
        s.observe(f, a, seen(1), "ha").unwrap();
        done(&s, a, "/out/a.jpg");
        s.sources_gone(f, &Default::default()).unwrap();
        assert!(!s.is_known(a, seen(1)).unwrap(), "a photo seen gone is looked at again");
        assert_eq!(s.observe(f, a, seen(1), "ha").unwrap(), Observed::SameContent);
        assert!(s.is_known(a, seen(1)).unwrap());
        assert_eq!(s.renamed_copy(a, Path::new("/in/a copy.jpg")).unwrap(), None, "a is not gone");

        // Saved slowly: the half-written file fails and waits; the whole one still replaces the copy.
        s.observe(f, a, seen(2), "half").unwrap();
        assert_eq!(s.pending(10, &[]).unwrap(), vec![job(a, Some("/out/a.jpg"))]);
        s.set_running(a).unwrap();
        s.finish(a, &Finish::Failed { error: "truncated JPEG".into(), retry: true }).unwrap();
        assert_eq!(s.observe(f, a, seen(3), "whole").unwrap(), Observed::Queued);
        assert_eq!(s.pending(10, &[]).unwrap(), vec![job(a, Some("/out/a.jpg"))]);
        done(&s, a, "/out/a.jpg");

        // Edited into the content of another protected photo: its own copy is made again (the old
        // one would go on showing the earlier picture), not skipped as that photo's twin.
        let b = Path::new("/in/b.jpg");
        s.observe(f, b, seen(1), "hb").unwrap();
        done(&s, b, "/out/b.jpg");
        assert_eq!(s.observe(f, a, seen(4), "hb").unwrap(), Observed::Queued);
        assert_eq!(s.pending(10, &[]).unwrap(), vec![job(a, Some("/out/a.jpg"))]);
        // A new name with that content is still a twin.
        assert_eq!(
            s.observe(f, Path::new("/in/c.jpg"), seen(1), "hb").unwrap(),
            Observed::Duplicate { of: b.into() }
        );

        // Found unreadable, protected later: its real hash replaces the placeholder, unless the
        // file changed since it was recorded.
        let u = d.path().join("u.jpg");
        std::fs::write(&u, b"photo").unwrap();
        let now = crate::watch::stat(&u).unwrap();
        s.observe(f, &u, now, &unreadable_hash(&u)).unwrap();
        done(&s, &u, "/out/u.jpg");
        assert!(s.real_hash(&u).unwrap());
        assert!(!s.real_hash(&u).unwrap(), "no placeholder left");
        let v = d.path().join("v.jpg");
        std::fs::write(&v, b"photo").unwrap();
        let twin = s.observe(f, &v, crate::watch::stat(&v).unwrap(), &hash_file(&v).unwrap()).unwrap();
        assert_eq!(twin, Observed::Duplicate { of: u.clone() }, "known by its content");
        let w = d.path().join("w.jpg");
        std::fs::write(&w, b"old").unwrap();
        s.observe(f, &w, seen(9), &unreadable_hash(&w)).unwrap();
        assert!(!s.real_hash(&w).unwrap(), "changed since it was recorded");
    }

    #[test]
    fn a_photo_in_two_folders_gets_a_copy_in_each_and_a_folder_let_go_takes_its_waiting_photos() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let (one, two) = (Path::new("/one"), Path::new("/two"));
        let (a, b, c) = (Path::new("/one/a.jpg"), Path::new("/two/a.jpg"), Path::new("/two/c.jpg"));
        assert_eq!(s.observe(one, a, seen(1), "h").unwrap(), Observed::Queued);
        // The same content in another folder (another output, maybe other settings): its own job.
        assert_eq!(s.observe(two, b, seen(1), "h").unwrap(), Observed::Queued);
        // Queued by hand with an output of its own: not the twin of a watched folder's photo.
        let by_hand = Path::new("/elsewhere/a.jpg");
        let queued = s.observe_to(Path::new("/elsewhere"), by_hand, seen(1), "h", Some(Path::new("/o")));
        assert_eq!(queued.unwrap(), Observed::Queued);
        // In the same folder it is a twin.
        assert_eq!(s.observe(two, c, seen(1), "h").unwrap(), Observed::Duplicate { of: b.into() });
        assert_eq!(s.pending(10, &[]).unwrap().len(), 3);

        // `/two` taken out of the configuration: its waiting photo is let go; the rest stays, and
        // a protected one sent back by `veil retry` keeps the record of its copy.
        let kept = Path::new("/two/kept.jpg");
        s.observe(two, kept, seen(2), "k").unwrap();
        s.finish(
            kept,
            &Finish::Done { output: "/out2/kept.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] },
        )
        .unwrap();
        let id = s.job_of(kept).unwrap().unwrap().0;
        s.retry_one(id).unwrap();
        s.finish(a, &Finish::Failed { error: "x".into(), retry: false }).unwrap();
        let released = s.release_unwatched(&[one.to_path_buf()]).unwrap();
        // b's twin, waiting for b's copy, goes with it.
        assert_eq!(released, vec![b.to_path_buf(), c.to_path_buf()]);
        let left: Vec<(PathBuf, Status)> =
            s.rows().unwrap().into_iter().map(|r| (r.path, r.status)).collect();
        assert_eq!(
            left,
            vec![
                (by_hand.to_path_buf(), Status::Pending),
                (a.to_path_buf(), Status::Failed),
                (kept.to_path_buf(), Status::Done)
            ]
        );
    }

    #[test]
    fn folders_seen_are_remembered_across_starts() {
        let d = tempfile::tempdir().unwrap();
        let out = Path::new("/media/drive/Protected");
        {
            let (s, _) = Store::open(d.path()).unwrap();
            assert!(!s.folder_was_there(out).unwrap());
            s.folder_is_there(out).unwrap();
            s.folder_is_there(out).unwrap();
        }
        let (s, _) = Store::open(d.path()).unwrap();
        assert!(s.folder_was_there(out).unwrap());
        assert!(!s.folder_was_there(Path::new("/media/drive")).unwrap());
    }

    #[test]
    fn a_damaged_database_is_named_with_what_to_do_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join(FILE_NAME);
        std::fs::write(&file, b"garbage, not a database").unwrap();
        let err = Store::open(d.path()).err().unwrap();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("is damaged (file is not a database)") && text.contains(".broken"), "{text}");
        assert_eq!(std::fs::read(&file).unwrap(), b"garbage, not a database");
    }

    #[test]
    fn running_goes_back_to_pending_after_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let a = Path::new("/in/a.jpg");
        let began = UNIX_EPOCH + std::time::Duration::from_secs(now() as u64);
        {
            let (s, _) = Store::open(d.path()).unwrap();
            s.observe(Path::new("/in"), a, seen(1), "h").unwrap();
            s.set_running(a).unwrap();
        }
        let (s, recovered) = Store::open(d.path()).unwrap();
        assert_eq!(recovered, 1);
        let jobs = s.pending(10, &[]).unwrap();
        // What it may have written is no older than its start (a second's precision).
        let Some(Earlier::Since(since)) = jobs[0].earlier else { panic!("{jobs:?}") };
        assert!(since >= began && since <= SystemTime::now(), "{jobs:?}");
        assert_eq!(s.pending(10, &[a.to_path_buf()]).unwrap(), vec![]);
    }

    #[test]
    fn a_photo_waiting_for_its_output_folder_never_fails_and_waits_longer_each_time() {
        assert_eq!((1..=7).map(wait_after).collect::<Vec<_>>(), [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(wait_after(u32::MAX), WAIT_MAX);
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let (f, a, b) = (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"));
        s.observe(f, a, seen(1), "ha").unwrap();
        s.observe(f, b, seen(1), "hb").unwrap();
        assert_eq!(s.counts().unwrap().waiting, 0);
        let full = Finish::Waiting { error: "/out/a.jpg: disk full; nothing was written".into() };
        for attempt in 1..=MAX_ATTEMPTS + 5 {
            let before = now();
            assert_eq!(s.finish(a, &full).unwrap(), Some(Status::Pending), "attempt {attempt}");
            let at = s.next_retry().unwrap().unwrap();
            let wait = wait_after(attempt);
            assert!((before + wait..=now() + wait).contains(&at), "attempt {attempt}: {at} - {before}");
        }
        let row = s.rows().unwrap().into_iter().find(|r| r.path == a).unwrap();
        assert_eq!(row.status, Status::Pending);
        assert_eq!(row.error.as_deref(), Some("/out/a.jpg: disk full; nothing was written"));
        // Not due: only b is handed out; a counts as waiting, b (no error) does not.
        let due: Vec<PathBuf> = s.pending(10, &[]).unwrap().into_iter().map(|j| j.path).collect();
        assert_eq!(due, [b]);
        assert_eq!(s.counts().unwrap().waiting, 1);
        // `veil retry --all` makes it due now.
        assert_eq!(s.retry_failed(None).unwrap(), [a]);
        assert_eq!(s.counts().unwrap().waiting, 0);
        assert_eq!(s.pending(10, &[]).unwrap().len(), 2);
        // Written at last: no error left.
        s.finish(a, &Finish::Done { output: "/out/a.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] })
            .unwrap();
        let row = s.rows().unwrap().into_iter().find(|r| r.path == a).unwrap();
        assert_eq!((row.status, row.error), (Status::Done, None));
    }

    #[test]
    fn a_photo_whose_end_was_not_recorded_is_queued_again_to_replace_its_copy() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let (f, a, b) = (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"));
        s.observe(f, a, seen(1), "ha").unwrap();
        s.observe(f, b, seen(1), "hb").unwrap();
        s.set_running(a).unwrap();
        s.set_running(b).unwrap();
        // b is still in the engine; a's finish could not be written.
        assert_eq!(s.requeue_stale(&[b.to_path_buf()]).unwrap(), 1);
        let jobs = s.pending(10, &[]).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].path.as_path(), a);
        assert!(matches!(jobs[0].earlier, Some(Earlier::Since(_))), "{jobs:?}");
        assert_eq!(s.job_of(b).unwrap().map(|(_, st)| st), Some(Status::Running));
    }

    #[test]
    fn a_photo_dropped_again_after_its_copy_was_deleted_gets_a_new_copy() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let (f, a, b) = (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"));
        let copy = out.join("a.jpg");
        s.observe(f, a, seen(1), "h").unwrap();
        std::fs::write(&copy, b"protected").unwrap();
        s.finish(a, &Finish::Done { output: copy.clone(), faces: 1, seconds: 1.0, losses: vec![] }).unwrap();
        // Touched, copy there: nothing to do; the same content under another name points at it.
        assert_eq!(s.observe(f, a, seen(2), "h").unwrap(), Observed::SameContent);
        assert_eq!(s.observe(f, b, seen(1), "h").unwrap(), Observed::Duplicate { of: a.into() });
        // The copy deleted (the user cleared the output folder): each, dropped again, is queued.
        std::fs::remove_file(&copy).unwrap();
        assert_eq!(s.observe(f, a, seen(3), "h").unwrap(), Observed::Queued);
        assert_eq!(
            s.observe(f, b, seen(2), "h").unwrap(),
            Observed::Duplicate { of: a.into() },
            "a is on its way"
        );
        // A copy whose folder is gone (a drive not mounted) was not deleted: nothing to do.
        s.finish(
            a,
            &Finish::Done { output: d.path().join("drive/a.jpg"), faces: 1, seconds: 1.0, losses: vec![] },
        )
        .unwrap();
        assert_eq!(s.observe(f, a, seen(4), "h").unwrap(), Observed::SameContent);
    }

    #[test]
    fn a_failed_file_deleted_is_forgotten_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let f = d.path().join("in");
        std::fs::create_dir_all(f.join("sub")).unwrap();
        let [kept, deleted, deep, done, pending] =
            ["kept.jpg", "deleted.jpg", "sub/deep.jpg", "done.jpg", "pending.jpg"].map(|n| f.join(n));
        for (n, p) in [&kept, &deleted, &deep, &done, &pending].into_iter().enumerate() {
            s.observe(&f, p, seen(1), &format!("h{n}")).unwrap();
        }
        let broken = Finish::Failed { error: "cannot decode".into(), retry: false };
        for p in [&kept, &deleted, &deep] {
            s.finish(p, &broken).unwrap();
        }
        let written = Finish::Done { output: "/out/done.jpg".into(), faces: 1, seconds: 1.0, losses: vec![] };
        s.finish(&done, &written).unwrap();
        std::fs::write(&kept, b"x").unwrap();
        // Only `kept` is on disk. A file given by name: only that one.
        assert_eq!(s.sources_gone(&deleted, &Default::default()).unwrap(), std::slice::from_ref(&deleted));
        assert_eq!(s.sources_gone(&f, &Default::default()).unwrap(), std::slice::from_ref(&deep));
        let left: Vec<(PathBuf, Status)> =
            s.rows().unwrap().into_iter().map(|r| (r.path, r.status)).collect();
        // Done and pending rows stay (the worker drops a pending one it cannot find).
        assert_eq!(left, [(done, Status::Done), (kept, Status::Failed), (pending, Status::Pending)]);
    }

    #[test]
    fn three_failures_quarantine_and_a_permanent_one_fails_at_once() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let (f, a, b, c) =
            (Path::new("/in"), Path::new("/in/a.jpg"), Path::new("/in/b.jpg"), Path::new("/in/c.jpg"));
        s.observe(f, a, seen(1), "ha").unwrap();
        let denied = Finish::Failed { error: "a.jpg: cannot read: permission denied".into(), retry: true };
        assert_eq!(s.finish(a, &denied).unwrap(), Some(Status::Pending));
        // It waits before the next attempt.
        assert!(s.pending(10, &[]).unwrap().is_empty());
        assert!(s.next_retry().unwrap().is_some());
        assert_eq!(s.finish(a, &denied).unwrap(), Some(Status::Pending));
        assert_eq!(s.finish(a, &denied).unwrap(), Some(Status::Failed));
        let row = &s.rows().unwrap()[0];
        assert_eq!((row.attempts, row.error.as_deref()), (3, Some("a.jpg: cannot read: permission denied")));

        s.observe(f, b, seen(1), "hb").unwrap();
        s.observe(f, c, seen(1), "hb").unwrap();
        let broken = Finish::Failed { error: "b.jpg: cannot decode".into(), retry: false };
        assert_eq!(s.finish(b, &broken).unwrap(), Some(Status::Failed));
        let rows = s.rows().unwrap();
        assert_eq!(rows[2].status, Status::Failed, "the duplicate shares the failure: {rows:?}");
        assert!(rows[2].error.as_deref().unwrap().contains("cannot decode"));
        assert_eq!(s.counts().unwrap(), Counts { queued: 0, failed: 3, waiting: 0 });
        assert_eq!(s.retry_failed(Some(Path::new("/in/a.jpg"))).unwrap().len(), 1);
        assert_eq!(s.counts().unwrap(), Counts { queued: 1, failed: 2, waiting: 0 });
        s.finish(a, &Finish::Gone).unwrap();
        assert_eq!(s.rows().unwrap().len(), 2);
    }

    #[test]
    fn jobs_are_numbered_paged_and_retried_one_by_one() {
        let d = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(d.path()).unwrap();
        let f = Path::new("/in");
        for (i, name) in ["/in/c.jpg", "/in/a.jpg", "/in/b.jpg"].iter().enumerate() {
            s.observe(f, Path::new(name), seen(1), &format!("h{i}")).unwrap();
        }
        // Numbers follow arrival and survive a change of content.
        s.observe(f, Path::new("/in/c.jpg"), seen(2), "new").unwrap();
        let all = s.jobs(None, 0, 10).unwrap();
        let ids: Vec<(i64, &Path)> = all.iter().map(|j| (j.id, j.path.as_path())).collect();
        assert_eq!(
            ids,
            [(1, Path::new("/in/c.jpg")), (2, Path::new("/in/a.jpg")), (3, Path::new("/in/b.jpg"))]
        );
        let page = s.jobs(None, 1, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, 2);
        let a = Path::new("/in/a.jpg");
        s.set_running(a).unwrap();
        s.finish(a, &Finish::Failed { error: "broken".into(), retry: false }).unwrap();
        let failed = s.jobs(Some(Status::Failed), 0, 10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.as_deref(), Some("broken"));
        assert_eq!(
            s.counts_by_status().unwrap().iter().find(|(st, _)| *st == Status::Failed),
            Some(&(Status::Failed, 1))
        );
        assert_eq!(s.retry_one(2).unwrap().as_deref(), Some(a));
        assert_eq!(s.retry_one(99).unwrap(), None);
        assert_eq!(s.job_of(a).unwrap(), Some((2, Status::Pending)));
        assert_eq!(Status::from_name("failed"), Some(Status::Failed));
        assert_eq!(Status::from_name("nope"), None);
    }

    #[test]
    fn an_older_database_gets_numbers_and_output_folders() {
        let d = tempfile::tempdir().unwrap();
        {
            let db = Connection::open(d.path().join(FILE_NAME)).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            db.execute(
                "INSERT INTO files (path, folder, size, mtime_ns, hash, status, updated) \
                 VALUES (X'2F612E6A7067', X'2F', 1, 1, 'h', 'done', 0)",
                [],
            )
            .unwrap();
        }
        let (s, _) = Store::open(d.path()).unwrap();
        let jobs = s.jobs(None, 0, 10).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].id, jobs[0].path.as_path()), (1, Path::new("/a.jpg")));
        let out = Path::new("/elsewhere/out");
        s.observe_to(Path::new("/x"), Path::new("/x/b.jpg"), seen(1), "hb", Some(out)).unwrap();
        let pending = s.pending(10, &[]).unwrap();
        assert_eq!(pending[0].output_dir.as_deref(), Some(out));
        assert_eq!(s.job_of(Path::new("/x/b.jpg")).unwrap(), Some((2, Status::Pending)));
    }
}
