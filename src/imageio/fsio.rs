//! Opening sources safely and writing outputs atomically.

use std::{
    ffi::{OsStr, OsString},
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::SystemTime,
};

use super::ImageError;

/// Resolves `path` (found in `folder`) to the file it names, refusing any that leads outside
/// `folder` through a symbolic link.
pub fn resolve_in_folder(folder: &Path, path: &Path) -> Result<PathBuf, ImageError> {
    let root = folder.canonicalize().map_err(|source| ImageError::Open { path: folder.into(), source })?;
    let target = path.canonicalize().map_err(|source| ImageError::Open { path: path.into(), source })?;
    if !target.starts_with(&root) {
        return Err(ImageError::OutsideFolder { path: path.into(), target, folder: folder.into() });
    }
    Ok(target)
}

/// Reads `file` (which `shown` names in errors): opened read-only, without following a symbolic
/// link, not blocking on a FIFO; checked to be a regular file no larger than `max` before reading.
/// Returns the bytes and the file's (device, inode).
pub fn read_source(shown: &Path, file: &Path, max: u64) -> Result<(Vec<u8>, FileId), ImageError> {
    let f = open_source(file).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            ImageError::Symlink { path: shown.into() }
        } else {
            ImageError::Open { path: shown.into(), source }
        }
    })?;
    let meta = f.metadata().map_err(|source| ImageError::Open { path: shown.into(), source })?;
    if !meta.is_file() {
        return Err(ImageError::NotAFile { path: shown.into() });
    }
    if meta.len() > max {
        return Err(ImageError::FileTooLarge { path: shown.into(), size: meta.len(), max });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` guards against a file that grows while it is read.
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Open { path: shown.into(), source })?;
    if bytes.len() as u64 > max {
        return Err(ImageError::FileTooLarge { path: shown.into(), size: bytes.len() as u64, max });
    }
    Ok((bytes, FileId { id: Some((meta.dev(), meta.ino())), mode: Some(meta.mode() & 0o7777) }))
}

/// Up to `n` bytes from the start of `file`, opened as [`read_source`] opens it (for a file too
/// large to read whole, to tell what it is).
pub fn read_head(file: &Path, n: u64) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    open_source(file).ok()?.take(n).read_to_end(&mut head).ok()?;
    Some(head)
}

/// Read-only, without following a symbolic link, and without blocking on a FIFO.
fn open_source(file: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file)
}

/// What the writer of a copy knows of its source file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileId {
    /// The source's (device, inode), which tells it apart from any output.
    pub id: Option<(u64, u64)>,
    /// Its permission bits: the copy is readable by no one the original is not readable by.
    pub mode: Option<u32>,
}

impl FileId {
    /// The permissions a copy is created with (before the umask): `rw-r--r--`, less the group's
    /// and others' read where the source denies it (a private `rw-------` photo gets a private copy).
    fn copy_mode(self) -> u32 {
        0o644 & self.mode.map_or(0o777, |m| m | 0o600)
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// What [`write_atomic`] may put its copy over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite<'a> {
    /// Nothing: a name taken gives `name (1).ext`.
    Nothing,
    /// Whatever file has the name (`imageio.replace_existing`).
    SameName,
    /// This earlier copy of the same photo, when it lies in the folder under the name or one of
    /// its `name (k).ext` forms; otherwise nothing.
    Copy(&'a Path),
    /// A copy an interrupted attempt may have written, under the name or one of its forms, no
    /// older than `since`: an older file there is another photo's, and passed over.
    Since(SystemTime),
}

/// Whether `file` is `name` or one of the `stem (k).ext` forms [`candidate`] makes of it.
fn is_candidate(name: &OsStr, file: &OsStr) -> bool {
    if file == name {
        return true;
    }
    // The number in the last " (k)" of the name, which `candidate` must give back exactly.
    let bytes = file.as_bytes();
    let Some(open) = bytes.windows(2).rposition(|w| w == b" (") else { return false };
    let digits: Vec<u8> = bytes[open + 2..].iter().copied().take_while(u8::is_ascii_digit).collect();
    let k = std::str::from_utf8(&digits).ok().and_then(|d| d.parse::<u32>().ok());
    k.is_some_and(|k| k > 0 && candidate(name, k) == file)
}

/// Longest file name most file systems take, in bytes.
const NAME_MAX: usize = 255;

/// `name`, then `stem (1).ext`, `stem (2).ext`, … (the name's bytes kept as they are; a stem cut
/// short, at a character's start, where the name would pass [`NAME_MAX`]).
fn candidate(name: &OsStr, k: u32) -> OsString {
    if k == 0 {
        return name.to_os_string();
    }
    let bytes = name.as_bytes();
    let (stem, ext) = match bytes.iter().rposition(|&b| b == b'.').filter(|&i| i > 0) {
        Some(i) => bytes.split_at(i),
        None => (bytes, &[][..]),
    };
    let suffix = format!(" ({k})");
    let mut keep = stem.len().min(NAME_MAX.saturating_sub(suffix.len() + ext.len()).max(1));
    // Not in the middle of a UTF-8 character (a continuation byte is 10xxxxxx).
    while keep > 1 && keep < stem.len() && stem[keep] & 0xC0 == 0x80 {
        keep -= 1;
    }
    let mut out = stem[..keep].to_vec();
    out.extend_from_slice(suffix.as_bytes());
    out.extend_from_slice(ext);
    OsString::from_vec(out)
}

/// A new hidden temporary file in `dir` for a file to be named `name`, and its path: a name no
/// other writer uses (this process's id and a counter), short enough for any file system whatever
/// the length of `name`, never through a symbolic link; with the permission bits `mode`, less the
/// umask.
fn create_temporary(dir: &Path, name: &OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    let short: String = name.to_string_lossy().chars().take(64).collect();
    let tmp = dir.join(format!(
        ".{short}.veil-{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    Ok((tmp, file))
}

/// Writes `bytes` as `dir/name` atomically: a hidden temporary file in `dir` is written and
/// synced, then renamed into place without replacing anything (a free `name (k).ext` is picked),
/// or replacing an existing file when `replace` says so, but never the source `(dev, inode)`. The
/// directory is synced last. On any error the temporary file is removed.
pub fn write_atomic(
    dir: &Path,
    name: &OsStr,
    bytes: &[u8],
    overwrite: Overwrite,
    source: FileId,
) -> Result<PathBuf, ImageError> {
    output_dir_exists(dir)?;
    let target = dir.join(name);
    let (tmp, mut file) =
        create_temporary(dir, name, source.copy_mode()).map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                ImageError::OutputDirNotWritable { dir: dir.into(), source }
            }
            _ if is_disk_full(&source) => ImageError::DiskFull { path: target.clone() },
            _ => ImageError::Write { path: target.clone(), source },
        })?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()
    })();
    drop(file);
    let fail = |source: io::Error, at: &Path| {
        let _ = std::fs::remove_file(&tmp);
        if is_disk_full(&source) {
            ImageError::DiskFull { path: at.into() }
        } else {
            ImageError::Write { path: at.into(), source }
        }
    };
    if let Err(e) = result {
        return Err(fail(e, &target));
    }
    let mut placed = None;
    // Never over the source, nor through a symbolic link.
    let foreign = |m: &std::fs::Metadata| source.id == Some((m.dev(), m.ino())) || m.file_type().is_symlink();
    let is_source = |path: &Path| std::fs::symlink_metadata(path).ok().is_some_and(|m| foreign(&m));
    if let Overwrite::Copy(old) = overwrite {
        let ours = old.parent() == Some(dir) && old.file_name().is_some_and(|f| is_candidate(name, f));
        if ours && !is_source(old) {
            std::fs::rename(&tmp, old).map_err(|e| fail(e, old))?;
            placed = Some(old.to_path_buf());
        }
    }
    for k in 0..10_000 {
        if placed.is_some() {
            break;
        }
        let path = dir.join(candidate(name, k));
        let outcome = match overwrite {
            Overwrite::SameName if is_source(&path) => continue,
            Overwrite::SameName => std::fs::rename(&tmp, &path),
            Overwrite::Since(since) => match std::fs::symlink_metadata(&path) {
                Ok(m) if !m.is_file() || foreign(&m) || m.modified().map_or(true, |t| t < since) => continue,
                Ok(_) => std::fs::rename(&tmp, &path),
                Err(_) => rename_noreplace(&tmp, &path),
            },
            Overwrite::Nothing | Overwrite::Copy(_) => rename_noreplace(&tmp, &path),
        };
        match outcome {
            Ok(()) => {
                placed = Some(path);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(e, &path)),
        }
    }
    let Some(path) = placed else {
        return Err(fail(
            io::Error::new(io::ErrorKind::AlreadyExists, "no free name after 10000 tries"),
            &target,
        ));
    };
    // The rename is durable once the directory is synced; some file systems cannot sync one.
    if let Ok(d) = File::open(dir) {
        if let Err(e) = d.sync_all() {
            if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) {
                return Err(ImageError::Write { path, source: e });
            }
        }
    }
    Ok(path)
}

/// The copy `copy` of the photo once named `old` (a file name), renamed after the photo's new name
/// `new` into the folder `dir`: `new` itself when the copy had the photo's name (or one of its
/// `name (k)` forms), `new`'s stem with the copy's extension when the copy had the photo's stem (a
/// photo written in another format). Never over a file there (`Ok(None)`: the copy stays), never
/// into a folder that is not there, nor for a copy named otherwise.
pub fn rename_copy(copy: &Path, old: &OsStr, new: &OsStr, dir: &Path) -> io::Result<Option<PathBuf>> {
    let Some(name) = copy.file_name() else { return Ok(None) };
    let with_ext = |n: &OsStr| -> Option<OsString> {
        let mut out = Path::new(n).file_stem()?.to_os_string();
        out.push(".");
        out.push(Path::new(name).extension()?);
        Some(out)
    };
    let target = if is_candidate(old, name) {
        new.to_os_string()
    } else if with_ext(old).is_some_and(|o| is_candidate(&o, name)) {
        match with_ext(new) {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    if !dir.is_dir() || target.as_bytes().starts_with(b".") {
        return Ok(None);
    }
    let to = dir.join(target);
    match rename_noreplace(copy, &to) {
        Ok(()) => Ok(Some(to)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` as the file `path` the user named (a preview sheet, a drawing) all at once: a
/// hidden temporary file next to it is written and synced, then renamed to `path`, over a file
/// there only when `replace` (else the error is `AlreadyExists`). A failed write (a full disk)
/// leaves neither a partial file nor a damaged earlier one; the temporary file is removed.
pub fn write_whole(path: &Path, bytes: &[u8], replace: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    if !replace && std::fs::symlink_metadata(path).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let (tmp, mut file) = create_temporary(dir, name, 0o644)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            rename_noreplace(&tmp, path)
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir` exists and is a folder.
fn output_dir_exists(dir: &Path) -> Result<(), ImageError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ImageError::OutputDirNotWritable {
            dir: dir.into(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ImageError::OutputDirMissing { dir: dir.into() })
        }
        Err(source) => Err(ImageError::OutputDirNotWritable { dir: dir.into(), source }),
    }
}

/// Checks, before any work is spent on `photo`, that `dir` can take its copy now: it exists, is a
/// writable folder (a read-only mount included), and its file system has at least `need` bytes
/// free for this user. A cheap test of the surroundings, not a promise: the write itself still
/// reports a disk that fills up meanwhile.
pub fn check_output_dir(photo: &Path, dir: &Path, need: u64) -> Result<(), ImageError> {
    output_dir_exists(dir)?;
    writable(dir).map_err(|source| ImageError::OutputDirNotWritable { dir: dir.into(), source })?;
    if need == 0 {
        return Ok(());
    }
    // A file system that cannot say: the write will tell.
    let Some(free) = free_bytes(dir) else { return Ok(()) };
    if free < need {
        // Named without the trailing `/` a joined empty sub-folder leaves.
        return Err(ImageError::NoSpace { path: photo.into(), dir: dir.components().collect(), free, need });
    }
    Ok(())
}

/// Whether this user may write into `path` (permissions, and a read-only mount), as `access(2)` says.
pub fn writable(path: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bytes this user may still write on the file system that holds `dir`, when it says.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct it is given; `c` outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between Linux and macOS
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Renames without replacing an existing file (`AlreadyExists` then).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE)
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)) {
            return Err(e);
        }
    }
    // Without renameat2: a hard link fails when the name exists; then the temporary name goes.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_follows_its_photo_renamed_but_never_over_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = |s: &str| d.path().join(s);
        let name = OsStr::new;
        std::fs::write(p("a (1).jpg"), b"a").unwrap();
        assert_eq!(
            rename_copy(&p("a (1).jpg"), name("a.jpg"), name("beach.jpg"), d.path()).unwrap(),
            Some(p("beach.jpg"))
        );
        // Another format: the stem follows, the copy's extension stays.
        std::fs::write(p("b.jpg"), b"b").unwrap();
        assert_eq!(
            rename_copy(&p("b.jpg"), name("b.heic"), name("sea.heic"), d.path()).unwrap(),
            Some(p("sea.jpg"))
        );
        // A name taken: the copy stays where it is.
        std::fs::write(p("c.jpg"), b"c").unwrap();
        assert_eq!(rename_copy(&p("c.jpg"), name("c.jpg"), name("beach.jpg"), d.path()).unwrap(), None);
        assert_eq!(std::fs::read(p("beach.jpg")).unwrap(), b"a");
        // A copy not named after the photo, or a folder not there: left alone.
        assert_eq!(rename_copy(&p("c.jpg"), name("x.jpg"), name("y.jpg"), d.path()).unwrap(), None);
        assert_eq!(rename_copy(&p("c.jpg"), name("c.jpg"), name("y.jpg"), &p("no")).unwrap(), None);
        assert!(p("c.jpg").is_file());
    }

    #[test]
    fn a_whole_file_replaces_only_when_told_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let sheet = d.path().join("sheet.png");
        write_whole(&sheet, b"one", false).unwrap();
        let err = write_whole(&sheet, b"two", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&sheet).unwrap(), b"one");
        write_whole(&sheet, b"two", true).unwrap();
        assert_eq!(std::fs::read(&sheet).unwrap(), b"two");
        // Into a folder that is not there: an error, and no temporary file anywhere.
        assert!(write_whole(&d.path().join("no/sheet.png"), b"x", true).is_err());
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["sheet.png"]);
    }

    #[test]
    fn candidates() {
        assert_eq!(candidate(OsStr::new("photo.jpg"), 0), "photo.jpg");
        assert_eq!(candidate(OsStr::new("photo.jpg"), 1), "photo (1).jpg");
        assert_eq!(candidate(OsStr::new("a.b.png"), 2), "a.b (2).png");
        assert_eq!(candidate(OsStr::new(".hidden"), 1), ".hidden (1)");
        // A name at the limit: the stem is cut, never a character in two.
        let long = format!("{}ééé.jpg", "a".repeat(245));
        assert_eq!(long.len(), 255);
        let c = candidate(OsStr::new(&long), 12);
        assert_eq!(c.to_str(), Some(format!("{} (12).jpg", "a".repeat(245)).as_str()));
        assert_eq!(
            candidate(OsStr::new(&long), 1).to_str(),
            Some(format!("{}é (1).jpg", "a".repeat(245)).as_str())
        );
        assert!(is_candidate(OsStr::new(&long), &c));
    }

    #[test]
    fn never_clobbers_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let a = write_atomic(d.path(), OsStr::new("p.jpg"), b"one", Overwrite::Nothing, FileId::default())
            .unwrap();
        let b = write_atomic(d.path(), OsStr::new("p.jpg"), b"two", Overwrite::Nothing, FileId::default())
            .unwrap();
        assert_eq!(a, d.path().join("p.jpg"));
        assert_eq!(b, d.path().join("p (1).jpg"));
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        let c = write_atomic(d.path(), OsStr::new("p.jpg"), b"three", Overwrite::SameName, FileId::default())
            .unwrap();
        assert_eq!(c, a);
        assert_eq!(std::fs::read(&a).unwrap(), b"three");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn long_names_get_a_short_temporary_name() {
        let d = tempfile::tempdir().unwrap();
        let name = format!("{}.jpg", "é".repeat(120));
        assert_eq!(
            write_atomic(d.path(), OsStr::new(&name), b"x", Overwrite::Nothing, FileId::default()).unwrap(),
            d.path().join(&name)
        );
    }

    #[test]
    fn an_earlier_copy_is_replaced_only_where_it_is_one_of_the_names() {
        assert!(is_candidate(OsStr::new("p.jpg"), OsStr::new("p (12).jpg")));
        for other in ["p (0).jpg", "p (1).png", "p ().jpg", "p (1a).jpg", "q (1).jpg", "p(1).jpg"] {
            assert!(!is_candidate(OsStr::new("p.jpg"), OsStr::new(other)), "{other}");
        }
        let d = tempfile::tempdir().unwrap();
        let [taken, old] = ["p.jpg", "p (2).jpg"].map(|n| d.path().join(n));
        std::fs::write(&taken, b"another photo's copy").unwrap();
        std::fs::write(&old, b"old copy").unwrap();
        let out = write_atomic(
            d.path(),
            OsStr::new("p.jpg"),
            b"new copy",
            Overwrite::Copy(&old),
            FileId::default(),
        )
        .unwrap();
        assert_eq!(out, old);
        assert_eq!(std::fs::read(&old).unwrap(), b"new copy");
        assert_eq!(std::fs::read(&taken).unwrap(), b"another photo's copy");
        // A copy elsewhere, or under another name, is not this photo's: a name of its own.
        let elsewhere = tempfile::tempdir().unwrap();
        let stray = elsewhere.path().join("p.jpg");
        for old in [stray.as_path(), &d.path().join("q.jpg")] {
            let out =
                write_atomic(d.path(), OsStr::new("p.jpg"), b"x", Overwrite::Copy(old), FileId::default())
                    .unwrap();
            assert!(!out.ends_with("p.jpg") && !out.ends_with("p (2).jpg") && !old.exists(), "{out:?}");
        }
        assert_eq!(std::fs::read(&taken).unwrap(), b"another photo's copy");
    }

    #[test]
    fn an_interrupted_attempt_replaces_only_what_it_may_have_written() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("p.jpg");
        std::fs::write(&other, b"another photo's copy").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        File::options().write(true).open(&other).unwrap().set_modified(old).unwrap();
        // The attempt began after that file was written: it wrote p (1).jpg, or nothing.
        let began = SystemTime::now() - std::time::Duration::from_secs(1);
        let first =
            write_atomic(d.path(), OsStr::new("p.jpg"), b"one", Overwrite::Since(began), FileId::default())
                .unwrap();
        assert_eq!(first, d.path().join("p (1).jpg"));
        let again =
            write_atomic(d.path(), OsStr::new("p.jpg"), b"two", Overwrite::Since(began), FileId::default())
                .unwrap();
        assert_eq!(again, first, "the interrupted attempt's copy is replaced, not doubled");
        assert_eq!(std::fs::read(&first).unwrap(), b"two");
        assert_eq!(std::fs::read(&other).unwrap(), b"another photo's copy");
    }

    #[test]
    fn replace_never_touches_the_source() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("p.jpg");
        std::fs::write(&src, b"original").unwrap();
        let m = std::fs::metadata(&src).unwrap();
        let out = write_atomic(
            d.path(),
            OsStr::new("p.jpg"),
            b"copy",
            Overwrite::SameName,
            FileId { id: Some((m.dev(), m.ino())), mode: None },
        )
        .unwrap();
        assert_eq!(out, d.path().join("p (1).jpg"));
        assert_eq!(std::fs::read(&src).unwrap(), b"original");
    }

    #[test]
    fn a_private_photo_gets_a_private_copy() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for (source, denied) in [(0o600, 0o077), (0o640, 0o037), (0o400, 0o077), (0o644, 0o033)] {
            let src = d.path().join(format!("{source:o}.jpg"));
            std::fs::write(&src, b"original").unwrap();
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(source)).unwrap();
            let (_, id) = read_source(&src, &src, 100).unwrap();
            assert_eq!(id.mode, Some(source));
            let out = d.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            let copy = write_atomic(&out, src.file_name().unwrap(), b"copy", Overwrite::Nothing, id).unwrap();
            // Whatever the umask leaves, nobody the source denies may read the copy; the owner may.
            let mode = mode_of(&copy);
            assert_eq!((mode & denied, mode & 0o600), (0, 0o600), "{source:o} gave {mode:o}");
        }
        // Before the umask: the usual rw-r--r-- for a photo everyone may read, or when the source's
        // mode is unknown.
        assert_eq!(FileId { id: None, mode: Some(0o664) }.copy_mode(), 0o644);
        assert_eq!(FileId { id: None, mode: Some(0o640) }.copy_mode(), 0o640);
        assert_eq!(FileId::default().copy_mode(), 0o644);
    }

    #[test]
    fn missing_output_directory_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let err = write_atomic(&missing, OsStr::new("p.jpg"), b"x", Overwrite::Nothing, FileId::default())
            .unwrap_err();
        assert!(matches!(err, ImageError::OutputDirMissing { .. }));
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn the_output_folder_is_checked_before_any_work() {
        let d = tempfile::tempdir().unwrap();
        let photo = Path::new("/in/p.jpg");
        check_output_dir(photo, d.path(), 0).unwrap();
        check_output_dir(photo, d.path(), 1).unwrap();
        let missing = d.path().join("gone");
        let err = check_output_dir(photo, &missing, 0).unwrap_err();
        assert!(matches!(err, ImageError::OutputDirMissing { .. }), "{err}");
        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = check_output_dir(photo, &file, 0).unwrap_err();
        assert!(matches!(err, ImageError::OutputDirNotWritable { .. }), "{err}");
        // No file system has this much free: the photo, the folder (without the trailing slash of
        // a joined empty sub-folder) and the need are named.
        let err = check_output_dir(photo, &d.path().join(""), u64::MAX).unwrap_err();
        let ImageError::NoSpace { dir, need, .. } = &err else { panic!("{err}") };
        assert_eq!((dir.as_path(), *need), (d.path(), u64::MAX));
        let text = err.to_string();
        let start = format!("/in/p.jpg: output directory {} is full (", d.path().display());
        assert!(text.starts_with(&start), "{text}");
        assert!(text.ends_with("the photo alone is 18446744073.7 GB); nothing was written"), "{text}");
    }

    #[test]
    fn symlinked_source_is_refused_and_folder_escape_named() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.jpg");
        std::fs::write(&secret, b"x").unwrap();
        let link = d.path().join("link.jpg");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = read_source(&link, &link, 100).unwrap_err();
        assert!(matches!(err, ImageError::Symlink { .. }), "{err}");
        let err = resolve_in_folder(d.path(), &link).unwrap_err();
        assert!(matches!(err, ImageError::OutsideFolder { .. }), "{err}");
        assert!(err.to_string().contains("outside the watched folder"), "{err}");
        // A link that stays inside the folder resolves to its target.
        let inside = d.path().join("real.jpg");
        std::fs::write(&inside, b"y").unwrap();
        let link2 = d.path().join("link2.jpg");
        std::os::unix::fs::symlink(&inside, &link2).unwrap();
        let target = resolve_in_folder(d.path(), &link2).unwrap();
        assert_eq!(read_source(&link2, &target, 100).unwrap().0, b"y");
    }

    #[test]
    fn size_limit_is_checked_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.jpg");
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let err = read_source(&p, &p, 999).unwrap_err();
        assert!(matches!(err, ImageError::FileTooLarge { size: 1000, max: 999, .. }), "{err}");
    }
}
