//! Noticing photos in the share folders: which names a folder takes ([`Filter`]), scanning a folder
//! ([`scan`]), and file-system events ([`Watcher`], `notify` with `notify-debouncer-full`, rename pairs
//! stitched).
//!
//! Events are only hints: the service scans every folder at start, when events were lost, when a
//! directory appears and periodically, and takes a file only once it has stopped changing.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use crate::{
    config::{FolderConfig, DEFAULT_IGNORE},
    store::Seen,
};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("folder {}: invalid ignore pattern {pattern:?}: {source}", folder.display())]
    Pattern { folder: PathBuf, pattern: String, source: globset::Error },
    /// The folder and its output are one folder, or the folder lies inside its output, once symbolic
    /// links are followed (the configuration's own check compares the paths as written).
    #[error(
        "folder {}: its output {} {how} once symbolic links are followed ({}); Veil never writes into \
         the folder it reads: choose an output outside it",
        folder.display(),
        output.display(),
        real.display()
    )]
    OutputOverlaps { folder: PathBuf, output: PathBuf, how: &'static str, real: PathBuf },
    /// A watched folder is another folder's output, or lies inside it.
    #[error(
        "folder {}: it {how} {}, the output of folder {} (symbolic links followed); Veil leaves \
         protected copies alone, so nothing put there would ever be protected: watch a folder outside \
         every output",
        folder.display(),
        output.display(),
        other.display()
    )]
    InOtherOutput { folder: PathBuf, how: &'static str, other: PathBuf, output: PathBuf },
    /// Two entries watch the same folder, or one watches a folder inside another's (recursive)
    /// folder: a photo there would belong to both, and only one output would get its copy.
    #[error(
        "folder {}: it {how} folder {} (symbolic links followed), which another [[folders]] entry \
         watches; a photo there would have two outputs: watch each folder once",
        folder.display(),
        other.display()
    )]
    WatchedTwice { folder: PathBuf, how: &'static str, other: PathBuf },
}

/// Whether `folder`'s output stays out of the way once symbolic links are followed: an output that
/// is the folder itself, or holds it, is an error (the configuration's own check compares the paths
/// as written). An output inside the folder is fine: [`Filter`] leaves it alone.
pub fn check_output(folder: &FolderConfig) -> Result<(), WatchError> {
    let root = resolved(&folder.path);
    let own = resolved(&folder.output);
    let how = if own == root {
        "is the folder itself"
    } else if root.starts_with(&own) {
        "holds the folder"
    } else {
        return Ok(());
    };
    Err(WatchError::OutputOverlaps {
        folder: folder.path.clone(),
        output: folder.output.clone(),
        how,
        real: own,
    })
}

/// Whether any watched folder is, or lies inside, another folder's output ([`check_output`] checks
/// each folder against its own).
pub fn check_outputs(folders: &[FolderConfig]) -> Result<(), WatchError> {
    for (i, folder) in folders.iter().enumerate() {
        let root = resolved(&folder.path);
        for other in &folders[i + 1..] {
            let theirs = resolved(&other.path);
            let (inner, how, outer) = if root == theirs {
                (folder, "is", other)
            } else if root.starts_with(&theirs) && other.recursive {
                (folder, "lies inside", other)
            } else if theirs.starts_with(&root) && folder.recursive {
                (other, "lies inside", folder)
            } else {
                continue;
            };
            return Err(WatchError::WatchedTwice {
                folder: inner.path.clone(),
                how,
                other: outer.path.clone(),
            });
        }
    }
    for folder in folders {
        let root = resolved(&folder.path);
        for other in folders.iter().filter(|o| o.path != folder.path) {
            let output = resolved(&other.output);
            let how = if root == output {
                "is"
            } else if root.starts_with(&output) {
                "lies inside"
            } else {
                continue;
            };
            return Err(WatchError::InOtherOutput {
                folder: folder.path.clone(),
                how,
                other: other.path.clone(),
                output: other.output.clone(),
            });
        }
    }
    Ok(())
}

/// `path` with its symbolic links followed: its longest existing ancestor made canonical, the rest
/// appended as written (an output folder may not exist yet); `path` itself when nothing resolves.
pub fn resolved(path: &Path) -> PathBuf {
    for ancestor in path.ancestors() {
        if let (Ok(real), Ok(rest)) = (ancestor.canonicalize(), path.strip_prefix(ancestor)) {
            return if rest.as_os_str().is_empty() { real } else { real.join(rest) };
        }
    }
    path.to_path_buf()
}

/// Which files under a watched folder are photos to take.
#[derive(Debug, Clone)]
pub struct Filter {
    root: PathBuf,
    ignore: GlobSet,
    /// Output folders (of every configured folder) that lie inside this one, spelled under `root`
    /// (an output reached through a symbolic link is found by where it really is).
    excluded: Vec<PathBuf>,
    recursive: bool,
}

impl Filter {
    /// The filter of `folder`; `outputs` are the output folders of every configured folder. Symbolic
    /// links are followed, so an output that lies inside the folder under another name (a link on
    /// either path) is still left alone: else its copies would be taken again, and their copies,
    /// without end. An output that is the folder or holds it is an error ([`check_output`]).
    pub fn new(folder: &FolderConfig, outputs: &[PathBuf]) -> Result<Filter, WatchError> {
        let mut set = GlobSetBuilder::new();
        for pattern in DEFAULT_IGNORE.iter().copied().chain(folder.ignore.iter().map(String::as_str)) {
            let glob = GlobBuilder::new(pattern).literal_separator(true).build().map_err(|source| {
                WatchError::Pattern { folder: folder.path.clone(), pattern: pattern.to_string(), source }
            })?;
            set.add(glob);
        }
        let ignore = set.build().map_err(|source| WatchError::Pattern {
            folder: folder.path.clone(),
            pattern: String::new(),
            source,
        })?;
        check_output(folder)?;
        let root = resolved(&folder.path);
        let mut excluded = Vec::new();
        for output in outputs {
            if let Ok(rest) = resolved(output).strip_prefix(&root) {
                excluded.push(folder.path.join(rest));
            }
            if output.starts_with(&folder.path) {
                excluded.push(output.clone());
            }
        }
        excluded.dedup();
        Ok(Filter { root: folder.path.clone(), ignore, excluded, recursive: folder.recursive })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (a file or a directory) lies in this folder and is not left alone.
    pub fn takes(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.root) else { return false };
        if rel.as_os_str().is_empty() || self.excluded.iter().any(|o| path.starts_with(o)) {
            return false;
        }
        // Every name on the way, and the relative path itself, is matched.
        rel.components().all(|c| !self.ignore.is_match(Path::new(c.as_os_str())))
            && !self.ignore.is_match(rel)
    }

    /// Whether a file at `path` is deep enough to take (a non-recursive folder takes only its own
    /// files).
    fn depth_ok(&self, path: &Path) -> bool {
        self.recursive || path.parent() == Some(self.root.as_path())
    }

    /// Whether a file found at `path` should be taken.
    pub fn takes_file(&self, path: &Path) -> bool {
        self.takes(path) && self.depth_ok(path)
    }
}

/// Size and modification time of a regular file (a symbolic link is followed; the reader checks it
/// stays inside the folder). `None` for anything else or a file that is gone.
pub fn stat(path: &Path) -> Option<Seen> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| Seen {
        size: meta.len(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
    })
}

/// The files under `dir` (inside `filter`'s folder) that the folder takes. Unreadable directories
/// are logged and skipped; symbolic links to directories are not followed.
pub fn scan(filter: &Filter, dir: &Path) -> Vec<(PathBuf, Seen)> {
    let (found, unreadable) = scan_all(filter, dir);
    for (d, e) in unreadable {
        tracing::warn!("cannot read folder {}: {e}", d.display());
    }
    found
}

/// Directories a scan could not read, and why.
pub type Unreadable = Vec<(PathBuf, std::io::Error)>;

/// [`scan`], with the directories that could not be read and why, for the caller to tell.
pub fn scan_all(filter: &Filter, dir: &Path) -> (Vec<(PathBuf, Seen)>, Unreadable) {
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                unreadable.push((d, e));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !filter.takes(&path) {
                continue;
            }
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if filter.recursive {
                    stack.push(path);
                }
            } else if filter.depth_ok(&path) {
                if let Some(seen) = stat(&path) {
                    found.push((path, seen));
                }
            }
        }
    }
    (found, unreadable)
}

/// What the events of a folder say.
#[derive(Debug, Clone, PartialEq)]
pub enum Hint {
    /// These paths were created, written, moved in or out, or removed.
    Paths(Vec<PathBuf>),
    /// Events were lost: scan the whole folder.
    Rescan,
    /// The system cannot watch this folder (any more); the message says what to change.
    CannotWatch(String),
    /// The folder itself was removed or moved away: its watch has ended.
    FolderGone,
}

/// File-system events of one folder, delivered to a callback on the debouncer's thread.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl Watcher {
    /// Watches `folder`; `on_hint` receives what its events say. On failure, the message says why
    /// and what to change (the inotify limits).
    pub fn new(folder: &FolderConfig, on_hint: impl Fn(Hint) + Send + 'static) -> Result<Watcher, String> {
        let root = folder.path.clone();
        let handler = move |result: DebounceEventResult| match result {
            Ok(events) => {
                if events.iter().any(|e| e.need_rescan()) {
                    on_hint(Hint::Rescan);
                }
                let gone = |e: &notify_debouncer_full::DebouncedEvent| {
                    matches!(
                        e.kind,
                        EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ) && e.paths.contains(&root)
                };
                if events.iter().any(gone) {
                    on_hint(Hint::FolderGone);
                }
                let paths: Vec<PathBuf> = events
                    .into_iter()
                    .filter(|e| {
                        matches!(
                            e.kind,
                            EventKind::Create(_)
                                | EventKind::Modify(_)
                                | EventKind::Remove(_)
                                | EventKind::Any
                        )
                    })
                    .flat_map(|e| e.event.paths)
                    .collect();
                if !paths.is_empty() {
                    on_hint(Hint::Paths(paths));
                }
            }
            Err(errors) => {
                if let Some(e) = errors.iter().find(|e| matches!(e.kind, notify::ErrorKind::MaxFilesWatch)) {
                    on_hint(Hint::CannotWatch(explain(&root, e)));
                } else {
                    for e in &errors {
                        tracing::warn!("watching {}: {e}", root.display());
                    }
                    on_hint(Hint::Rescan);
                }
            }
        };
        let mut debouncer =
            new_debouncer(Duration::from_millis(500), Some(Duration::from_millis(250)), handler)
                .map_err(|e| explain(&folder.path, &e))?;
        let mode = if folder.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        debouncer.watch(&folder.path, mode).map_err(|e| explain(&folder.path, &e))?;
        Ok(Watcher { _debouncer: debouncer })
    }
}

/// Says why a folder cannot be watched and, for the inotify limits, which setting to raise.
fn explain(folder: &Path, e: &notify::Error) -> String {
    let fix = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => Some("fs.inotify.max_user_watches"),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            Some("fs.inotify.max_user_instances")
        }
        _ => None,
    };
    match fix {
        Some(key) => format!(
            "cannot watch {}: the system's inotify limit is reached ({e}); raise it with \
             `sudo sysctl {key}=524288` (and a line `{key}=524288` in /etc/sysctl.d/90-veil.conf to keep \
             it)",
            folder.display()
        ),
        None => format!("cannot watch {}: {e}", folder.display()),
    }
}

/// Removes temporary files an interrupted write left in `dir` and its sub-folders (Veil's own, named
/// `.NAME.veil-PID-N.tmp`); returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t)
                    if t.is_file()
                        && name.starts_with('.')
                        && name.contains(".veil-")
                        && name.ends_with(".tmp")
                        && std::fs::remove_file(entry.path()).is_ok() =>
                {
                    removed += 1;
                }
                _ => {}
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_leaves_alone_hidden_partial_and_nas_files_and_the_output() {
        let mut folder = FolderConfig::new("/in", "/in/Protected");
        folder.ignore = vec!["*.raw".into(), "private/**".into()];
        let f = Filter::new(&folder, &[folder.output.clone(), "/elsewhere".into()]).unwrap();
        for p in ["/in/a.jpg", "/in/sub/b.png", "/in/Protected2/c.jpg"] {
            assert!(f.takes_file(Path::new(p)), "{p}");
        }
        for p in [
            "/in/.hidden.jpg",
            "/in/a.jpg.part",
            "/in/a.jpg.crdownload",
            "/in/x.tmp",
            "/in/a.jpg~",
            "/in/@eaDir/a.jpg",
            "/in/#recycle/a.jpg",
            "/in/.DS_Store",
            "/in/Thumbs.db",
            "/in/.git/a.jpg",
            "/in/Protected/a.jpg",
            "/in/Protected",
            "/in/b.raw",
            "/in/private/a.jpg",
            "/other/a.jpg",
            "/in",
        ] {
            assert!(!f.takes_file(Path::new(p)), "{p}");
        }
        folder.recursive = false;
        let f = Filter::new(&folder, &[]).unwrap();
        assert!(f.takes_file(Path::new("/in/a.jpg")) && !f.takes_file(Path::new("/in/sub/a.jpg")));
    }

    #[test]
    fn scan_finds_files_in_sub_folders_but_not_in_the_output_or_hidden_ones() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("in");
        for p in ["a.jpg", "sub/b.jpg", "out/c.jpg", ".x/d.jpg", "e.part"] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, p).unwrap();
        }
        let folder = FolderConfig::new(&root, root.join("out"));
        let f = Filter::new(&folder, std::slice::from_ref(&folder.output)).unwrap();
        let mut found: Vec<PathBuf> = scan(&f, &root).into_iter().map(|(p, _)| p).collect();
        found.sort();
        assert_eq!(found, [root.join("a.jpg"), root.join("sub/b.jpg")]);
        assert_eq!(stat(&root.join("a.jpg")).unwrap().size, 5);
        assert!(stat(&root.join("sub")).is_none());
        // A folder that cannot be read is handed back with the reason (veild tells it once).
        let (files, unreadable) = scan_all(&f, &root.join("gone"));
        assert!(files.is_empty());
        assert_eq!(unreadable.len(), 1);
        assert_eq!(
            (&unreadable[0].0, unreadable[0].1.kind()),
            (&root.join("gone"), std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn an_output_inside_the_folder_under_another_name_is_still_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("share");
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::os::unix::fs::symlink(&root, d.path().join("link")).unwrap();
        std::fs::write(root.join("a.jpg"), "a").unwrap();
        std::fs::write(root.join("out/a.jpg"), "copy").unwrap();
        // The output named through a link to the folder, and the folder named through the link.
        for (path, output) in
            [(root.clone(), d.path().join("link/out")), (d.path().join("link"), root.join("out"))]
        {
            let folder = FolderConfig::new(&path, &output);
            let f = Filter::new(&folder, std::slice::from_ref(&folder.output)).unwrap();
            let found: Vec<PathBuf> = scan(&f, &path).into_iter().map(|(p, _)| p).collect();
            assert_eq!(found, [path.join("a.jpg")], "{folder:?}");
            assert!(!f.takes_file(&path.join("out/a.jpg")), "{folder:?}");
        }
        // An output that does not exist yet resolves through the part that does.
        let folder = FolderConfig::new(&root, d.path().join("link/later/out"));
        let f = Filter::new(&folder, std::slice::from_ref(&folder.output)).unwrap();
        assert!(!f.takes_file(&root.join("later/out/b.jpg")) && f.takes_file(&root.join("later/b.jpg")));
    }

    #[test]
    fn an_output_that_is_the_folder_or_holds_it_through_a_link_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("photos/share");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&root, d.path().join("same")).unwrap();
        std::os::unix::fs::symlink(d.path().join("photos"), d.path().join("up")).unwrap();
        for (output, how) in
            [(d.path().join("same"), "is the folder itself"), (d.path().join("up"), "holds the folder")]
        {
            let folder = FolderConfig::new(&root, &output);
            let err = Filter::new(&folder, std::slice::from_ref(&folder.output)).unwrap_err().to_string();
            assert!(err.contains(how) && err.contains(&*output.to_string_lossy()), "{err}");
            assert!(check_output(&folder).is_err());
        }
        assert!(check_output(&FolderConfig::new(&root, d.path().join("out"))).is_ok());
    }

    #[test]
    fn a_folder_that_is_or_lies_in_another_folders_output_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = |s: &str| d.path().join(s);
        std::fs::create_dir_all(p("b/sub")).unwrap();
        std::os::unix::fs::symlink(p("b"), p("link")).unwrap();
        let a = FolderConfig::new(p("a"), p("b"));
        for (watched, how) in [("b", "it is "), ("b/sub", "it lies inside "), ("link", "it is ")] {
            let folders = [a.clone(), FolderConfig::new(p(watched), p("c"))];
            let err = check_outputs(&folders).unwrap_err().to_string();
            let other = format!("the output of folder {}", p("a").display());
            assert!(err.starts_with(&format!("folder {}: {how}", p(watched).display())), "{err}");
            assert!(err.contains(&other), "{err}");
        }
        // An output inside another watched folder is fine (that folder leaves it alone), and so
        // are two folders with outputs of their own.
        let in_w = FolderConfig::new(p("a"), p("w/b"));
        assert!(check_outputs(&[in_w, FolderConfig::new(p("w"), p("c"))]).is_ok());
        assert!(check_outputs(&[a.clone(), FolderConfig::new(p("x"), p("a/out"))]).is_ok());
        assert!(check_outputs(&[a.clone(), FolderConfig::new(p("x"), p("y"))]).is_ok());
        // The same folder twice (another spelling too), or inside a recursive one: an error.
        std::fs::create_dir_all(p("a")).unwrap();
        for (watched, how) in [("a", "is"), ("a/../a", "is"), ("a/deep", "lies inside")] {
            let err =
                check_outputs(&[a.clone(), FolderConfig::new(p(watched), p("z"))]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("it {how} folder")) && err.contains("watch each folder once"),
                "{err}"
            );
        }
        // Inside a folder that is not walked recursively: fine.
        let flat = FolderConfig { recursive: false, ..a.clone() };
        assert!(check_outputs(&[flat, FolderConfig::new(p("a/deep"), p("z"))]).is_ok());
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("s")).unwrap();
        std::fs::write(d.path().join("s/.a.jpg.veil-12-0.tmp"), "x").unwrap();
        std::fs::write(d.path().join("a.jpg"), "x").unwrap();
        std::fs::write(d.path().join(".keep.tmp"), "x").unwrap();
        assert_eq!(remove_stale_temporaries(d.path()), 1);
        assert!(d.path().join("a.jpg").exists() && d.path().join(".keep.tmp").exists());
    }

    #[test]
    fn watcher_reports_a_new_file() {
        let d = tempfile::tempdir().unwrap();
        let folder = FolderConfig::new(d.path(), d.path().join("out"));
        let (tx, rx) = std::sync::mpsc::channel();
        let _w = Watcher::new(&folder, move |h| {
            let _ = tx.send(h);
        })
        .unwrap();
        std::fs::write(d.path().join("a.jpg"), "x").unwrap();
        let hint = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(&hint, Hint::Paths(p) if p.contains(&d.path().join("a.jpg"))), "{hint:?}");
    }

    #[test]
    fn watcher_reports_its_folder_removed_or_moved_away() {
        for moved in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let input = d.path().join("in");
            std::fs::create_dir(&input).unwrap();
            let folder = FolderConfig::new(&input, d.path().join("out"));
            let (tx, rx) = std::sync::mpsc::channel();
            let _w = Watcher::new(&folder, move |h| {
                let _ = tx.send(h);
            })
            .unwrap();
            if moved {
                std::fs::rename(&input, d.path().join("elsewhere")).unwrap();
            } else {
                std::fs::remove_dir(&input).unwrap();
            }
            // Other hints may come first (the debouncer's view of the same change).
            let mut hints = Vec::new();
            while let Ok(h) = rx.recv_timeout(Duration::from_secs(5)) {
                hints.push(h);
                if hints.last() == Some(&Hint::FolderGone) {
                    break;
                }
            }
            assert_eq!(hints.last(), Some(&Hint::FolderGone), "moved {moved}: {hints:?}");
        }
    }
}
