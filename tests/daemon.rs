//! End to end: the real `veild` watching real folders in a temporary home, with real signals; the job
//! database is read with SQLite as an operator would.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

mod common;
use common::{output_within, Daemon, Home, CLI_LIMIT, REFUSED_LIMIT};

impl Home {
    fn start(&self) -> Daemon {
        let d = Daemon::spawn(
            self.command(env!("CARGO_BIN_EXE_veild"))
                .args(["--config", self.config_path().to_str().unwrap()])
                .env("VEIL_LOG", "veil=debug,info"),
        );
        d.wait_log("ready", Duration::from_secs(60));
        d
    }

    fn db(&self) -> rusqlite::Connection {
        let path = self.path().join("state/jobs.sqlite");
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    /// Every row: path → (status, error, output, attempts). Paths are read as the bytes they are.
    fn rows(&self) -> HashMap<PathBuf, Row> {
        use std::os::unix::ffi::OsStringExt;
        let path = |b: Vec<u8>| PathBuf::from(std::ffi::OsString::from_vec(b));
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT path, status, error, output, attempts, duplicate_of FROM files").unwrap();
        stmt.query_map([], |r| {
            Ok((
                path(r.get(0)?),
                Row {
                    status: r.get(1)?,
                    error: r.get(2)?,
                    output: r.get::<_, Option<Vec<u8>>>(3)?.map(path),
                    attempts: r.get(4)?,
                    duplicate_of: r.get::<_, Option<Vec<u8>>>(5)?.map(path),
                },
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Waits until `n` rows exist and none is pending or running.
    fn wait_settled(&self, d: &Daemon, n: usize, timeout: Duration) -> HashMap<PathBuf, Row> {
        let start = Instant::now();
        loop {
            if self.path().join("state/jobs.sqlite").exists() {
                let rows = self.rows();
                if rows.len() >= n && rows.values().all(|r| r.status != "pending" && r.status != "running") {
                    return rows;
                }
                if start.elapsed() > timeout {
                    panic!("not settled after {timeout:?}: {rows:#?}\n{}", d.log());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)] // read through Debug in failure messages
struct Row {
    status: String,
    error: Option<String>,
    output: Option<PathBuf>,
    attempts: i64,
    duplicate_of: Option<PathBuf>,
}

/// A small photo whose pixels depend on `seed`, encoded as the extension of `name` says.
fn photo(seed: u32, side: u32, name: &str) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let v = seed.wrapping_mul(2_654_435_761).wrapping_add(x * 7 + y * 13);
        image::Rgb([(v >> 3) as u8, (v >> 11) as u8, (v >> 19) as u8 ^ (x as u8)])
    });
    let format = image::ImageFormat::from_path(name).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Files in `dir` and below.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn decodes_bytes(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

fn decodes(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

#[test]
fn two_hundred_files_at_once_each_valid_one_protected_once_broken_ones_failed() {
    let home = Home::new();
    home.configure("settle_seconds = 0.5", &[("In", "Out")]);
    let d = home.start();
    let staging = home.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let mut originals: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..150u32 {
        let name = if i % 2 == 0 { format!("valid-{i}.jpg") } else { format!("valid-{i}.png") };
        originals.insert(name.clone(), photo(i, 16 + i % 5, &name));
    }
    for i in 0..25u32 {
        let of = originals[&format!("valid-{}.jpg", i * 2)].clone();
        originals.insert(format!("copy-{i}.jpg"), of);
    }
    for i in 0..25u32 {
        let name = format!("broken-{i}.{}", ["jpg", "png", "webp", "tiff", "jpeg"][i as usize % 5]);
        let mut bytes = format!("not a photo {i} ").into_bytes();
        bytes.extend((0..200u32).map(|k| (k * 31 + i) as u8));
        originals.insert(name, bytes);
    }
    for (name, bytes) in &originals {
        std::fs::write(staging.join(name), bytes).unwrap();
    }
    // Dropped at once: every file is renamed in.
    let input = home.path().join("In");
    for name in originals.keys() {
        std::fs::rename(staging.join(name), input.join(name)).unwrap();
    }

    let rows = home.wait_settled(&d, 200, Duration::from_secs(180));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(rows.len(), 200, "{rows:#?}");
    let by = |s: &str| rows.iter().filter(|(_, r)| r.status == s).count();
    assert_eq!((by("done"), by("skipped"), by("failed")), (150, 25, 25), "{rows:#?}");

    let out = home.path().join("Out");
    let outputs = files(&out);
    assert_eq!(outputs.len(), 150, "one protected copy per distinct photo: {outputs:#?}");
    for (path, row) in &rows {
        let name = path.file_name().unwrap().to_str().unwrap();
        match row.status.as_str() {
            "done" => {
                let output = row.output.as_ref().unwrap();
                assert_eq!(output, &out.join(name), "{row:?}");
                assert_eq!(row.attempts, 1, "{row:?}");
                assert_eq!(decodes(output).dimensions(), decodes(path).dimensions());
            }
            "skipped" => {
                // A duplicate points at the copy of the photo with its content.
                let of = row.duplicate_of.as_ref().unwrap();
                assert_eq!(originals[of.file_name().unwrap().to_str().unwrap()], originals[name]);
                assert_eq!(row.output.as_ref(), rows[of].output.as_ref(), "{row:?}");
            }
            _ => {
                assert!(name.starts_with("broken-"), "{name}: {row:?}");
                let error = row.error.as_deref().unwrap();
                assert!(error.contains(&path.display().to_string()), "{error}");
                assert_eq!(row.attempts, 1, "a broken file is not tried again: {row:?}");
                // Logged once.
                assert_eq!(log.matches(error).count(), 1, "{error}\n{log}");
            }
        }
    }
    for (name, bytes) in &originals {
        assert_eq!(&std::fs::read(input.join(name)).unwrap(), bytes, "{name} changed");
    }
    let hidden: Vec<_> = files(home.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".veil-") || p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
}

#[test]
fn a_file_written_slowly_is_protected_once_from_its_complete_content() {
    let home = Home::new();
    home.configure("settle_seconds = 2.0", &[("In", "Out")]);
    let d = home.start();
    let bytes = photo(7, 64, "slow.png");
    let target = home.path().join("In/slow.png");
    let mut file = std::fs::File::create(&target).unwrap();
    let chunk = bytes.len().div_ceil(7);
    for part in bytes.chunks(chunk) {
        file.write_all(part).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(file);
    let rows = home.wait_settled(&d, 1, Duration::from_secs(60));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[&target];
    assert_eq!((row.status.as_str(), row.attempts), ("done", 1), "{row:?}\n{log}");
    let outputs = files(&home.path().join("Out"));
    assert_eq!(outputs, [home.path().join("Out/slow.png")]);
    assert_eq!(decodes(&outputs[0]), decodes(&target), "the copy has the complete photo");
    assert!(!log.contains("cannot decode"), "{log}");
}

#[test]
fn kill_9_in_the_middle_then_a_restart_protects_every_file_exactly_once() {
    let home = Home::new();
    home.configure("settle_seconds = 0.2", &[("In", "Out")]);
    let mut d = home.start();
    let staging = home.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let n = 40;
    for i in 0..n {
        let name = format!("big-{i}.jpg");
        std::fs::write(staging.join(&name), photo(i, 900, &name)).unwrap();
    }
    for i in 0..n {
        let name = format!("big-{i}.jpg");
        std::fs::rename(staging.join(&name), home.path().join("In").join(&name)).unwrap();
    }
    // Kill as soon as the first copies are written.
    let start = Instant::now();
    loop {
        let done = home.path().join("state/jobs.sqlite").exists()
            && home.rows().values().filter(|r| r.status == "done").count() >= 3;
        if done || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let before = home.rows();
    let done_before = before.values().filter(|r| r.status == "done").count();
    assert!(done_before < n as usize, "the kill came after the last photo: the test proves nothing");

    let d = home.start();
    let rows = home.wait_settled(&d, n as usize, Duration::from_secs(180));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(rows.values().all(|r| r.status == "done"), "{rows:#?}");
    let outputs = files(&home.path().join("Out"));
    let expected: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = (0..n).map(|i| home.path().join(format!("Out/big-{i}.jpg"))).collect();
        v.sort();
        v
    };
    assert_eq!(outputs, expected, "exactly one copy per photo, no partial or temporary files");
    for o in &outputs {
        assert_eq!(decodes(o).dimensions(), (900, 900));
    }
}

#[test]
fn sighup_watches_a_new_folder_and_keeps_the_old_config_when_the_new_one_is_broken() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("In2", "Out2")]);
    d.signal(libc::SIGHUP);
    d.wait_log(&format!("watching {}", home.path().join("In2").display()), Duration::from_secs(20));
    std::fs::write(home.path().join("In2/a.png"), photo(1, 8, "a.png")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(30));
    assert!(home.path().join("Out2/a.png").is_file());

    std::fs::write(home.config_path(), "[watch]\nsettle_seconds = \"soon\"\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("keeping the old one", Duration::from_secs(20));
    std::fs::write(home.path().join("In/b.png"), photo(2, 8, "b.png")).unwrap();
    std::fs::write(home.path().join("In2/c.png"), photo(3, 8, "c.png")).unwrap();
    home.wait_settled(&d, 3, Duration::from_secs(30));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(home.path().join("Out/b.png").is_file() && home.path().join("Out2/c.png").is_file(), "{log}");
    assert!(log.contains("settle_seconds"), "the error names the key: {log}");
}

#[test]
fn each_folder_gets_its_own_copy_a_refused_config_leaves_no_trace_and_a_folder_taken_out_lets_go() {
    let home = Home::new();
    let two = [("In", "Out"), ("In2", "Out2")];
    home.configure("settle_seconds = 0.3", &two);
    let d = home.start();
    // The same photo dropped into two folders: a copy in each folder's output.
    for dir in ["In", "In2"] {
        std::fs::write(home.path().join(dir).join("a.png"), photo(1, 8, "a.png")).unwrap();
    }
    home.wait_settled(&d, 2, Duration::from_secs(30));
    assert!(
        home.path().join("Out/a.png").is_file() && home.path().join("Out2/a.png").is_file(),
        "{}",
        d.log()
    );

    // A photo waiting for its output folder (gone).
    std::fs::remove_dir_all(home.path().join("Out2")).unwrap();
    let waiting = home.path().join("In2/b.png");
    std::fs::write(&waiting, photo(2, 8, "b.png")).unwrap();
    let start = Instant::now();
    while !home.rows().get(&waiting).is_some_and(|r| r.status == "pending" && r.error.is_some()) {
        assert!(start.elapsed() < Duration::from_secs(30), "{:#?}\n{}", home.rows(), d.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Refused (a watched folder inside an output): none of its folders is made.
    home.configure("settle_seconds = 0.3", &[("In", "Out"), ("Out/x", "Elsewhere")]);
    d.signal(libc::SIGHUP);
    d.wait_log("not applied", Duration::from_secs(20));
    assert!(!home.path().join("Out/x").exists() && !home.path().join("Elsewhere").exists(), "{}", d.log());
    // Refused part-way: the new folders made before one that cannot be (its parent is a file) are
    // removed again, the parents made for them too.
    std::fs::write(home.path().join("blocker"), b"a file").unwrap();
    home.configure(
        "settle_seconds = 0.3",
        &[("In", "Out"), ("Fresh", "New/deep/FreshOut"), ("In3", "blocker/out")],
    );
    d.signal(libc::SIGHUP);
    let start = Instant::now();
    while d.log().matches("not applied").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    for gone in ["Fresh", "New", "In3"] {
        assert!(!home.path().join(gone).exists(), "{gone} left behind: {}", d.log());
    }
    assert!(d.log().contains("blocker/out"), "the error names the folder: {}", d.log());

    // In2 taken out of the configuration: its waiting photo is let go, and nothing is left to do.
    home.configure("settle_seconds = 0.3", &two[..1]);
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded", Duration::from_secs(20));
    d.wait_log("were let go", Duration::from_secs(20));
    let rows = home.rows();
    assert!(!rows.contains_key(&waiting), "{rows:#?}");
    assert!(rows.values().all(|r| r.status == "done"), "{rows:#?}");
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn folders_missing_at_a_later_start_are_not_made_again_and_are_used_once_back() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3\npoll_seconds = 1", &[("In", "Out")]);
    let (input, output) = (home.path().join("In"), home.path().join("Out"));
    // The first start makes them (new folders).
    let d = home.start();
    assert!(input.is_dir() && output.is_dir());
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    // Gone while veild was stopped (a drive not mounted): not made again in their place.
    std::fs::remove_dir(&input).unwrap();
    std::fs::remove_dir(&output).unwrap();
    let d = home.start();
    d.wait_log("is gone (deleted, moved away or its drive unmounted)", Duration::from_secs(20));
    assert!(!input.exists() && !output.exists(), "{}", d.log());
    assert!(d.log().contains("was there before and is missing now"), "{}", d.log());
    // Back: watched, and its photos protected.
    std::fs::create_dir(&input).unwrap();
    std::fs::create_dir(&output).unwrap();
    d.wait_log("is back: watching it anew", Duration::from_secs(20));
    std::fs::write(input.join("a.png"), photo(1, 8, "a.png")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(30));
    assert!(output.join("a.png").is_file(), "{}", d.log());
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_photo_renamed_or_moved_in_its_folder_takes_its_copy_along() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let (input, output) = (home.path().join("In"), home.path().join("Out"));
    std::fs::write(input.join("a.png"), photo(1, 8, "a.png")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(30));
    let protected = std::fs::read(output.join("a.png")).unwrap();
    // Renamed: the copy follows, the same bytes under the new name.
    std::fs::rename(input.join("a.png"), input.join("beach.png")).unwrap();
    d.wait_log("beach.png: its protected copy", Duration::from_secs(30));
    assert_eq!(files(&output), [output.join("beach.png")], "{}", d.log());
    assert_eq!(std::fs::read(output.join("beach.png")).unwrap(), protected);
    let rows = home.rows();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[&input.join("beach.png")];
    assert_eq!((row.status.as_str(), row.output.clone()), ("done", Some(output.join("beach.png"))));
    // Moved into a sub-folder: into the mirrored one.
    std::fs::create_dir(input.join("2026")).unwrap();
    std::fs::rename(input.join("beach.png"), input.join("2026/beach.png")).unwrap();
    d.wait_log("2026/beach.png: its protected copy", Duration::from_secs(30));
    assert_eq!(files(&output), [output.join("2026/beach.png")], "{}", d.log());
    // A name already taken in the output: the copy stays, the photo points at it (skipped).
    std::fs::write(output.join("taken.png"), b"someone else's").unwrap();
    std::fs::rename(input.join("2026/beach.png"), input.join("taken.png")).unwrap();
    let start = Instant::now();
    while home.rows().get(&input.join("taken.png")).is_none_or(|r| r.status != "skipped") {
        assert!(start.elapsed() < Duration::from_secs(30), "{:#?}\n{}", home.rows(), d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(output.join("taken.png")).unwrap(), b"someone else's");
    assert_eq!(std::fs::read(output.join("2026/beach.png")).unwrap(), protected);
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn a_name_used_again_never_costs_another_photo_its_copy_and_an_edit_replaces_its_own() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let (input, out) = (home.path().join("In"), home.path().join("Out"));
    let a = input.join("a.png");
    // Written aside and renamed in, as an editor saves.
    let put = |seed: u32| {
        std::fs::write(input.join(".a.png.tmp"), photo(seed, 16, "a.png")).unwrap();
        std::fs::rename(input.join(".a.png.tmp"), &a).unwrap();
    };
    // Waits until a.png's row holds this content and is done.
    let done = |seed: u32| {
        let want = decodes_bytes(&photo(seed, 16, "a.png"));
        let start = Instant::now();
        loop {
            let row = home.rows().get(&a).cloned();
            if let Some(Row { status, output: Some(output), .. }) = &row {
                if status == "done" && output.is_file() && decodes(output) == want {
                    return output.clone();
                }
            }
            assert!(start.elapsed() < Duration::from_secs(60), "seed {seed}: {row:?}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    put(1);
    assert_eq!(done(1), out.join("a.png"));

    // Renamed: b.png is the same photo, its copy goes with it; then another photo is named a.png.
    std::fs::rename(&a, input.join("b.png")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(30));
    let start = Instant::now();
    while !out.join("b.png").is_file() {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // A copy of b.png under another name too: the copy stands for both, and stays where it is.
    std::fs::copy(input.join("b.png"), input.join("c.png")).unwrap();
    home.wait_settled(&d, 2, Duration::from_secs(30));
    put(2);
    assert_eq!(done(2), out.join("a.png"), "the name is free once b.png's copy followed it");

    // Deleted, and later another photo under the same name (a camera's numbering starting over).
    std::fs::remove_file(&a).unwrap();
    let start = Instant::now();
    while home.db().query_row(
        "SELECT gone FROM files WHERE path = ?1",
        [a.as_os_str().as_encoded_bytes()],
        |r| r.get::<_, bool>(0),
    ) != Ok(true)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "a.png never seen gone: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    put(3);
    assert_eq!(done(3), out.join("a (1).png"));
    // Edited in place: the new copy replaces its own old copy and nothing else.
    put(4);
    assert_eq!(done(4), out.join("a (1).png"));
    // b.png renamed again while c.png shares its copy: the copy stays (c.png points at it).
    std::fs::rename(input.join("b.png"), input.join("d.png")).unwrap();
    home.wait_settled(&d, 4, Duration::from_secs(30));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let names = ["a (1).png", "a.png", "b.png"];
    assert_eq!(files(&out), names.map(|n| out.join(n)), "{log}");
    for (name, seed) in [("b.png", 1), ("a.png", 2), ("a (1).png", 4)] {
        assert_eq!(decodes(&out.join(name)), decodes_bytes(&photo(seed, 16, "a.png")), "{name} kept");
    }
}

#[test]
fn a_photo_dropped_again_after_its_copy_was_deleted_is_protected_again() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let (a, copy) = (home.path().join("In/a.png"), home.path().join("Out/a.png"));
    let drop_in = || {
        std::fs::write(home.path().join("In/.a.png"), photo(1, 16, "a.png")).unwrap();
        std::fs::rename(home.path().join("In/.a.png"), &a).unwrap();
    };
    let wait_copy = || {
        let start = Instant::now();
        while !copy.is_file() {
            assert!(start.elapsed() < Duration::from_secs(60), "no copy: {}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    drop_in();
    wait_copy();
    // Shared, then both cleared; later the same photo is dropped again to share it again.
    std::fs::remove_file(&copy).unwrap();
    let jobs = output_within(
        home.command(env!("CARGO_BIN_EXE_veil")).args([
            "--config",
            home.config_path().to_str().unwrap(),
            "jobs",
        ]),
        REFUSED_LIMIT,
    );
    let jobs = String::from_utf8_lossy(&jobs.stdout);
    assert!(jobs.contains("Out/a.png (deleted since)"), "veil jobs says so: {jobs}");
    std::fs::remove_file(&a).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop_in();
    wait_copy();
    let rows = home.wait_settled(&d, 1, Duration::from_secs(30));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(rows[&a].status, "done", "{rows:?}");
    assert_eq!(files(&home.path().join("Out")), std::slice::from_ref(&copy), "{log}");
}

/// The CelebA `val` faces in `data`, in order.
fn val_faces(data: &Path) -> Vec<PathBuf> {
    let mut faces: Vec<PathBuf> = std::fs::read_dir(data.join("celeba/val"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    faces.sort();
    faces
}

#[test]
fn a_protected_copy_dropped_back_among_the_photos_is_not_protected_twice() {
    let Some(data) = common::data() else { return };
    let faces = val_faces(&data);
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let (face, copy) = (home.path().join("In/face.jpg"), home.path().join("Out/face.jpg"));
    std::fs::copy(&faces[0], &face).unwrap();
    let rows = home.wait_settled(&d, 1, Duration::from_secs(120));
    assert_eq!(rows[&face].status, "done", "{rows:?}\n{}", d.log());
    assert_ne!(std::fs::read(&copy).unwrap(), std::fs::read(&face).unwrap(), "its face was protected");

    // The protected copy, put back among the photos to share it from there.
    let back = home.path().join("In/shared.jpg");
    std::fs::copy(&copy, &back).unwrap();
    let rows = home.wait_settled(&d, 2, Duration::from_secs(60));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(rows[&back].status, "skipped", "{rows:?}");
    let error = rows[&back].error.clone().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "a copy Veil already protected (from {}): protecting it twice would double its noise",
            face.display()
        )
    );
    assert_eq!(files(&home.path().join("Out")), [copy], "{log}");
    assert!(log.contains("shared.jpg: a copy Veil already protected"), "{log}");
}

#[test]
fn a_copy_veil_protect_wrote_is_known_to_veil_protect_and_to_veild_when_given_back() {
    let Some(data) = common::data() else { return };
    let faces = val_faces(&data);
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let face = home.path().join("Camera/face.jpg");
    std::fs::create_dir_all(face.parent().unwrap()).unwrap();
    std::fs::copy(&faces[0], &face).unwrap();
    let protect = |out: &str, photo: &Path| {
        let mut cmd = home.command(env!("CARGO_BIN_EXE_veil"));
        cmd.arg("--config").arg(home.config_path()).args(["protect", "--json", "--out"]);
        output_within(cmd.arg(home.path().join(out)).arg(photo), CLI_LIMIT)
    };
    let o = protect("Mine", &face);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let copy = home.path().join("Mine/face.jpg");
    assert_ne!(std::fs::read(&copy).unwrap(), std::fs::read(&face).unwrap(), "its face was protected");
    let why = format!(
        "a copy Veil already protected (from {}): protecting it twice would double its noise",
        face.display()
    );
    // Saved elsewhere, then given to `veil protect` again: told, not protected twice.
    let shared = home.path().join("Desktop/shared.jpg");
    std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
    std::fs::copy(&copy, &shared).unwrap();
    let o = protect("Again", &shared);
    assert_eq!(o.status.code(), Some(1), "nothing was protected: {}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    assert_eq!(line, serde_json::json!({"source": shared.to_string_lossy(), "skipped": why}));
    assert!(!home.path().join("Again").exists());
    // Dropped among the photos veild watches: skipped there too.
    let d = home.start();
    let back = home.path().join("In/shared.jpg");
    std::fs::copy(&copy, &back).unwrap();
    let rows = home.wait_settled(&d, 1, Duration::from_secs(60));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(rows[&back].status, "skipped", "{rows:?}");
    assert_eq!(rows[&back].error.as_deref(), Some(why.as_str()), "{rows:?}");
    assert!(!home.path().join("Out/shared.jpg").exists(), "{log}");
}

#[test]
fn a_directory_of_photos_moved_in_is_picked_up() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    let album = home.path().join("album");
    std::fs::create_dir_all(album.join("day 2")).unwrap();
    let names = ["one.jpg", "two.png", "day 2/three.jpg"];
    for (i, name) in names.iter().enumerate() {
        std::fs::write(album.join(name), photo(i as u32, 12, name)).unwrap();
    }
    std::fs::rename(&album, home.path().join("In/album")).unwrap();
    home.wait_settled(&d, 3, Duration::from_secs(30));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let outputs = files(&home.path().join("Out"));
    let mut expected: Vec<PathBuf> = names.iter().map(|n| home.path().join("Out/album").join(n)).collect();
    expected.sort();
    assert_eq!(outputs, expected, "{log}");
}

#[test]
fn a_photo_waits_while_its_output_folder_is_gone_and_is_protected_once_it_is_back() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    // As when the drive the output folder lives on is not mounted.
    let out = home.path().join("Out");
    std::fs::remove_dir(&out).unwrap();
    let source = home.path().join("In/a.png");
    std::fs::write(&source, photo(1, 16, "a.png")).unwrap();
    d.wait_log(": waiting for its output folder", Duration::from_secs(60));
    let row = home.rows()[&source].clone();
    assert_eq!(row.status, "pending", "it waits, it has not failed: {row:?}");
    let error = row.error.unwrap_or_default();
    assert!(error.contains("output directory") && error.contains("does not exist"), "{error}");
    assert!(
        !out.exists(),
        "veild does not make the folder itself (it would fill the disk under a mount point)"
    );

    std::fs::create_dir(&out).unwrap();
    let rows = home.wait_settled(&d, 1, Duration::from_secs(60));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let row = &rows[&source];
    assert_eq!(row.status, "done", "{row:?}\n{log}");
    assert_eq!(row.output.as_deref(), Some(out.join("a.png").as_path()), "{row:?}");
    assert_eq!(files(&out), [out.join("a.png")], "one copy, no temporary left: {log}");
    assert_eq!(log.matches(": waiting for its output folder").count(), 1, "told once: {log}");
}

/// A tmpfs mounted at a folder for a test's life (unmounted on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None`, said on stderr, where this user cannot mount (not root, no `CAP_SYS_ADMIN`).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            Some(Tmpfs(at.to_path_buf()))
        } else {
            eprintln!("skipped: cannot mount a tmpfs at {} (needs root)", at.display());
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until its file system has no byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 16, 1 << 12, 1] {
        while f.write_all(&vec![0u8; chunk]).is_ok() {}
    }
    let _ = f.sync_all();
}

#[test]
fn photos_wait_while_the_job_database_cannot_be_written_and_none_is_lost() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3\npoll_seconds = 1", &[("In", "Out")]);
    // The state folder on a disk of its own, as on a small /home; veild makes the database there.
    let Some(_disk) = Tmpfs::mount(&home.path().join("state"), "4m") else { return };
    let d = home.start();
    let filler = home.path().join("state/filler");
    fill(&filler);
    let n = 30;
    let input = home.path().join("In");
    for i in 0..n {
        let name = format!("p{i:02}.png");
        std::fs::write(input.join(format!(".{name}")), photo(i, 16, &name)).unwrap();
        std::fs::rename(input.join(format!(".{name}")), input.join(&name)).unwrap();
    }
    d.wait_log("new photos are recorded and protected once it can be written again", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));

    std::fs::remove_file(&filler).unwrap();
    d.wait_log("can be written again", Duration::from_secs(30));
    let rows = home.wait_settled(&d, n as usize, Duration::from_secs(120));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(rows.values().all(|r| r.status == "done"), "{rows:#?}\n{log}");
    let out = home.path().join("Out");
    let names: Vec<String> = (0..n).map(|i| format!("p{i:02}.png")).collect();
    let expected: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    assert_eq!(files(&out), expected, "each photo protected once, nothing else: {log}");
    let told = log.lines().filter(|l| l.contains("ERROR") && l.contains("database or disk is full"));
    assert_eq!(told.count(), 1, "told once: {log}");
}

#[test]
fn a_watched_folder_deleted_then_made_again_or_replaced_is_watched_anew() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3\npoll_seconds = 1", &[("In", "Out")]);
    let d = home.start();
    let input = home.path().join("In");
    std::fs::remove_dir(&input).unwrap();
    d.wait_log("the watched folder", Duration::from_secs(30));
    d.wait_log("is gone (deleted, moved away or its drive unmounted)", Duration::from_secs(1));
    // veild does not make it again itself.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!input.exists());

    std::fs::create_dir(&input).unwrap();
    d.wait_log("is back: watching it anew", Duration::from_secs(30));
    std::fs::write(input.join("a.png"), photo(1, 16, "a.png")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(60));

    // Moved away and another folder put in its place (as a drive mounted again is): the new one
    // is watched, and nothing in the old one is taken for a photo of the new.
    std::fs::rename(&input, home.path().join("In.old")).unwrap();
    std::fs::create_dir(&input).unwrap();
    // Seen replaced, or (a check falling between the two calls above) gone and back.
    let start = Instant::now();
    while d.log().matches(": watching it anew").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "not watched anew:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(input.join("b.png"), photo(2, 16, "b.png")).unwrap();
    std::fs::write(home.path().join("In.old/c.png"), photo(3, 16, "c.png")).unwrap();
    let rows = home.wait_settled(&d, 2, Duration::from_secs(60));
    // One more check period: c.png is never picked up.
    std::thread::sleep(Duration::from_secs(3));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = home.path().join("Out");
    assert_eq!(files(&out), [out.join("a.png"), out.join("b.png")], "{rows:#?}\n{log}");
    assert_eq!(home.rows().len(), 2, "{log}");
}

#[test]
fn a_photo_whose_name_is_not_utf8_is_protected_under_the_same_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let d = home.start();
    // "café.png" in Latin-1, as old cameras, archives and some network shares write it.
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    std::fs::write(home.path().join("In").join(name), photo(4, 16, "a.png")).unwrap();
    let rows = home.wait_settled(&d, 1, Duration::from_secs(60));
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = home.path().join("Out").join(name);
    assert_eq!(rows.values().next().map(|r| r.status.as_str()), Some("done"), "{rows:#?}");
    assert_eq!(files(&home.path().join("Out")), std::slice::from_ref(&out), "{log}");
    assert_eq!(decodes(&out).dimensions(), (16, 16));
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_veild_uses_no_measurable_cpu() {
    let home = Home::new();
    home.configure("", &[("In", "Out")]);
    let d = home.start();
    std::thread::sleep(Duration::from_secs(3));
    let before = cpu_ticks(d.child.id());
    std::thread::sleep(Duration::from_secs(60));
    let used = cpu_ticks(d.child.id()) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    eprintln!("idle veild used {used} clock ticks ({:.3} s of CPU) in 60 s", used as f64 / hz as f64);
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(used * 100 <= hz * 6, "idle veild used {used} ticks at {hz} Hz in a minute (over 0.1%)");
}

#[test]
fn a_second_veild_on_the_same_state_is_refused() {
    let home = Home::new();
    home.configure("", &[("In", "Out")]);
    let d = home.start();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_veild"))
            .args(["--config", home.config_path().to_str().unwrap()])
            .env_remove("LD_LIBRARY_PATH")
            .env("HOME", home.path()),
        REFUSED_LIMIT,
    );
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another veild already runs") && err.contains("veild.lock"), "{err}");
}

impl Home {
    /// Waits for `input/real.png` to settle, gives a feedback loop from a copy inside the watched
    /// folder time to show, stops `d`, and checks that real.png was the only job and that
    /// `input/Protected` holds its one copy.
    fn only_real_png_protected_once(&self, d: Daemon, input: &Path) {
        let rows = self.wait_settled(&d, 1, Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(2));
        let rows_after = self.rows();
        let (status, log) = d.stop();
        assert_eq!(status.code(), Some(0), "{log}");
        assert_eq!(rows.keys().collect::<HashSet<_>>(), rows_after.keys().collect::<HashSet<_>>());
        assert_eq!(rows_after.keys().cloned().collect::<Vec<_>>(), [input.join("real.png")], "{log}");
        assert_eq!(files(&input.join("Protected")), [input.join("Protected/real.png")]);
    }
}

#[test]
fn ignored_names_and_the_output_inside_the_watched_folder_are_left_alone() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "In/Protected")]);
    let d = home.start();
    let input = home.path().join("In");
    for name in [".hidden.png", "x.png.part", "y.png.crdownload", "z.tmp", "w.png~", "Thumbs.db"] {
        std::fs::write(input.join(name), photo(9, 8, "a.png")).unwrap();
    }
    std::fs::create_dir_all(input.join("@eaDir")).unwrap();
    std::fs::write(input.join("@eaDir/t.png"), photo(10, 8, "a.png")).unwrap();
    std::fs::write(input.join("real.png"), photo(11, 8, "real.png")).unwrap();
    home.only_real_png_protected_once(d, &input);
}

#[test]
fn an_output_inside_the_watched_folder_through_a_symbolic_link_is_left_alone() {
    let home = Home::new();
    let input = home.path().join("In");
    std::fs::create_dir_all(&input).unwrap();
    std::os::unix::fs::symlink(&input, home.path().join("Link")).unwrap();
    home.configure("settle_seconds = 0.3", &[("In", "Link/Protected")]);
    let d = home.start();
    std::fs::write(input.join("real.png"), photo(12, 8, "real.png")).unwrap();
    // Until the filter followed links, each copy was taken again: In/Protected/Protected/real.png, ...
    home.only_real_png_protected_once(d, &input);
}

#[test]
fn an_output_that_is_the_watched_folder_through_a_symbolic_link_is_refused_at_start() {
    let home = Home::new();
    let input = home.path().join("In");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("real.png"), photo(13, 8, "real.png")).unwrap();
    std::os::unix::fs::symlink(&input, home.path().join("Same")).unwrap();
    home.configure("", &[("In", "Same")]);
    let out = output_within(
        home.command(env!("CARGO_BIN_EXE_veild")).args(["--config", home.config_path().to_str().unwrap()]),
        REFUSED_LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is the folder itself once symbolic links are followed"), "{err}");
    assert_eq!(files(&input), [input.join("real.png")]);
}

#[test]
fn a_watched_folder_that_is_another_folders_output_is_refused_at_start_and_by_doctor() {
    let home = Home::new();
    home.configure("", &[("In", "Out"), ("Out", "Out2")]);
    let config = home.config_path();
    let out = output_within(
        home.command(env!("CARGO_BIN_EXE_veild")).args(["--config", config.to_str().unwrap()]),
        REFUSED_LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = format!(
        "it is {}, the output of folder {}",
        home.path().join("Out").display(),
        home.path().join("In").display()
    );
    assert!(err.contains(&expected), "{err}");
    let doctor = output_within(
        home.command(env!("CARGO_BIN_EXE_veil")).args(["--config", config.to_str().unwrap(), "doctor"]),
        REFUSED_LIMIT,
    );
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL") && text.contains(&expected), "{text}");
}

#[test]
fn without_models_nothing_unprotected_is_written_and_the_reason_is_recorded() {
    let home = Home::new();
    home.configure("settle_seconds = 0.3", &[("In", "Out")]);
    let empty = home.path().join("no-models");
    std::fs::create_dir_all(&empty).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/models");
    let text = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(
        home.config_path(),
        text.replace(&fixtures.display().to_string(), &empty.display().to_string()),
    )
    .unwrap();
    let d = home.start();
    std::fs::write(home.path().join("In/a.png"), photo(1, 8, "a.png")).unwrap();
    d.wait_log("not protected", Duration::from_secs(30));
    // `veil status` says why, not just "idle" or "waiting".
    let shown = output_within(
        home.command(env!("CARGO_BIN_EXE_veil")).args([
            "--config",
            home.config_path().to_str().unwrap(),
            "status",
        ]),
        CLI_LIMIT,
    );
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("last errors:\n  photos cannot be protected: "), "{shown}");
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("photos cannot be protected"), "{log}");
    assert!(files(&home.path().join("Out")).is_empty(), "an unprotected copy was written");
    let rows = home.rows();
    let row = rows.values().next().expect("the photo is recorded");
    assert!(
        row.error.as_deref().is_some_and(|e| e.contains("a.png") && e.contains("not protected")),
        "{row:?}"
    );
}

/// `veild` with a fake `notify-send` on its PATH, as the desktop has it, which writes each
/// notification's arguments to the returned file, one per line, a blank line after each.
fn with_fake_notifier(home: &Home) -> (Daemon, PathBuf, PathBuf) {
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let told = home.path().join("told");
    let fake = bin.join("notify-send");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> {}\necho >> {0}\n",
            told.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let d = Daemon::spawn(
        home.command(env!("CARGO_BIN_EXE_veild"))
            .args(["--config", home.config_path().to_str().unwrap()])
            .env("PATH", path)
            .env("VEIL_LOG", "veil=debug,info"),
    );
    d.wait_log("ready", Duration::from_secs(60));
    (d, fake, told)
}

#[test]
fn a_batch_cut_short_by_a_stop_is_told_as_veild_stops() {
    let home = Home::new();
    // A batch is told after ten minutes of quiet at the earliest, unless veild stops first.
    home.configure(
        "settle_seconds = 0.3\n\n[notify]\nwhen = \"batches\"\nquiet_seconds = 600",
        &[("In", "Out")],
    );
    let (d, _, told) = with_fake_notifier(&home);
    std::fs::write(home.path().join("In").join("a.jpg"), photo(1, 24, "a.jpg")).unwrap();
    home.wait_settled(&d, 1, Duration::from_secs(60));
    assert!(!told.exists(), "told before the quiet time");
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let text = std::fs::read_to_string(&told).unwrap_or_default();
    assert!(text.starts_with("--app-name=Veil\nVeil: No face found in 1 photo\n"), "{text:?}\n{log}");
}

#[test]
fn a_batch_is_told_to_the_desktop_once_with_what_failed_and_a_reload_can_keep_it_to_errors() {
    let home = Home::new();
    let notify =
        |when: &str| format!("settle_seconds = 0.3\n\n[notify]\nwhen = \"{when}\"\nquiet_seconds = 1");
    home.configure(&notify("batches"), &[("In", "Out")]);
    let (d, fake, told) = with_fake_notifier(&home);
    let input = home.path().join("In");
    std::fs::write(input.join("a.jpg"), photo(1, 24, "a.jpg")).unwrap();
    std::fs::write(input.join("b.png"), photo(2, 24, "b.png")).unwrap();
    std::fs::write(input.join("broken.png"), b"no photo at all").unwrap();
    let wait_told = |n: usize| {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&told).unwrap_or_default();
            if text.matches("--app-name=Veil").count() >= n {
                return text;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "not told {n} time(s): {text:?}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let text = wait_told(1);
    // `veil status` names the notifier.
    let status = output_within(
        home.command(env!("CARGO_BIN_EXE_veil")).args([
            "--config",
            home.config_path().to_str().unwrap(),
            "status",
        ]),
        CLI_LIMIT,
    );
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains(&format!("notify: batches through {}\n", fake.display())), "{status}");
    let out = home.path().join("Out");
    let expected = format!(
        "--app-name=Veil\nVeil: 1 photo could not be protected\n2 had no face and were copied unchanged\n\
         Copies in {}\nbroken.png: unsupported format: a text file under a photo's name, not a JPEG, PNG",
        out.display()
    );
    // One notification for the batch (the formats named depend on the build).
    assert!(text.starts_with(&expected) && text.ends_with(" file\n\n"), "{text:?}");
    assert_eq!(text.lines().count(), 6, "{text:?}");

    // Kept to errors: a batch that went well is not told, one with a failure is.
    home.configure(&notify("errors"), &[("In", "Out")]);
    d.signal(libc::SIGHUP);
    d.wait_log("configuration reloaded", Duration::from_secs(20));
    std::fs::write(input.join("c.jpg"), photo(3, 24, "c.jpg")).unwrap();
    home.wait_settled(&d, 4, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(input.join("cut.webp"), b"RIFF\x10\0\0\0WEBPVP8 ").unwrap();
    let text = wait_told(2);
    let (status, log) = d.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let second = text.split("--app-name=Veil\n").nth(2).unwrap();
    assert!(second.starts_with("Veil: 1 photo could not be protected\ncut.webp: "), "{second:?}");
    assert!(!second.contains("unchanged"), "c.jpg's batch was not told: {second:?}");
    assert!(!log.contains("desktop notification not shown"), "{log}");
}
