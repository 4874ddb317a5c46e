//! Helpers shared by the end-to-end tests: the test data, the tiny fixtures, and a temporary home
//! for the real `veil` and `veild` binaries. Each test file uses a part of them.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data`, or `None` (with the reason printed) when it is not there.
pub fn data() -> Option<PathBuf> {
    let d = crate_dir().join("../shared/data");
    if d.is_dir() {
        Some(d)
    } else {
        println!("skipped: {} is not there", d.display());
        None
    }
}

/// The project's Python: `<crate>/.venv/bin/python`, else `$VIRTUAL_ENV/bin/python`.
pub fn python() -> Option<PathBuf> {
    let local = crate_dir().join(".venv/bin/python");
    if local.is_file() {
        return Some(local);
    }
    let venv = PathBuf::from(std::env::var_os("VIRTUAL_ENV")?).join("bin/python");
    venv.is_file().then_some(venv)
}

/// Writes `dir/veil.toml` naming the fixture models folder (tiny generators + MTCNN, made by
/// `make fixtures`) and a fixed seed.
pub fn fixture_config(dir: &Path) -> PathBuf {
    let models = crate_dir().join("target/fixtures/models");
    assert!(
        models.join("manifest.toml").is_file() && models.join("mtcnn/pnet.safetensors").is_file(),
        "run `make fixtures`"
    );
    let path = dir.join("veil.toml");
    std::fs::write(&path, format!("[models]\ndir = \"{}\"\n[protect]\nseed = 7\n", models.display()))
        .unwrap();
    path
}

/// A temporary home with the XDG folders inside it and `veil.toml` at its root. Test files add their
/// own methods in `impl Home` blocks.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("veil.toml")
    }

    /// Writes `veil.toml`: state under home, the tiny fixture models, preset `fast`, the given
    /// `[watch]` body and folders (`path`, `output`, both under home).
    pub fn configure(&self, watch: &str, folders: &[(&str, &str)]) {
        let models = crate_dir().join("target/fixtures/models");
        let mut text = format!(
            "[paths]\nstate_dir = \"{}\"\n\n[models]\ndir = \"{}\"\n\n[protect]\npreset = \"fast\"\n\n[watch]\n{watch}\n",
            self.path().join("state").display(),
            models.display()
        );
        for (path, output) in folders {
            text += &format!(
                "\n[[folders]]\npath = \"{}\"\noutput = \"{}\"\n",
                self.path().join(path).display(),
                self.path().join(output).display()
            );
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// `bin` living in this home: no `LD_LIBRARY_PATH` (the rpath must find libtorch), no journal,
    /// no systemd notify socket, no `VEIL_LOG`, every XDG folder inside the home, and the power
    /// supplies read from `power_supply` in the home (none unless a test makes them), so that a
    /// test machine on battery holds no photo.
    pub fn command(&self, bin: &str) -> Command {
        let home = self.path();
        let mut cmd = Command::new(bin);
        cmd.env_remove("LD_LIBRARY_PATH")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("VEIL_LOG")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("VEIL_POWER_SUPPLY", home.join("power_supply"));
        cmd
    }
}

/// Collects a child's stderr (spawned with `Stdio::piped()`) on a thread: all of it so far, and each
/// line as it comes.
pub fn capture_stderr(child: &mut Child) -> (Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let pipe = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line.clone() + "\n"));
            let _ = tx.send(line);
        }
    });
    (log, lines)
}

/// A running `veild` (spawned with its stderr piped) and its log as it comes. Dropping it kills and
/// reaps the process, so a test that fails while its daemon runs (a refused second `veild` over its
/// time limit included) does not leave that daemon running after the test binary exits.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Spawns `cmd` (a configured `veild`) with stdout discarded and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (log, lines) = capture_stderr(&mut child);
        Daemon { child, log, lines }
    }

    /// All it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`; fails the test with the whole log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > timeout {
                panic!("veild never logged {needle:?}:\n{}", self.log());
            }
            let _ = self.lines.recv_timeout(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGTERM, then the exit status and the whole log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// `signal`, then the exit status and the whole log, read to the end of the pipe.
    pub fn stop_with(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        self.signal(signal);
        let status = self.child.wait().unwrap();
        // The reader thread ends, and drops its sender, at the end of the pipe.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Err(mpsc::RecvTimeoutError::Disconnected) =
                self.lines.recv_timeout(Duration::from_millis(100))
            {
                break;
            }
        }
        (status, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a `veild` that must refuse to start (a second instance, a bad configuration) may take
/// to exit: loading libtorch takes seconds, running on takes forever.
pub const REFUSED_LIMIT: Duration = Duration::from_secs(60);

/// How long one `veil` call may take in the tests: far above the slowest (a protection on the CPU
/// with the tiny fixtures), far below CI's limit.
pub const CLI_LIMIT: Duration = Duration::from_secs(600);

/// Runs `cmd` to completion like [`Command::output`], but kills it and fails the test when it is
/// still running after `limit`, so a program that should exit (a refused second `veild`, a CLI call)
/// and instead keeps running fails the test rather than hanging the whole run.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!("{cmd:?} still ran after {limit:?} and was killed; its stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}
