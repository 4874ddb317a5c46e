//! `veil doctor`: everything a user needs to know when something is off, as a list of checks.
//!
//! The checks never stop at the first problem: a config that does not parse is reported, and the
//! rest is checked on the defaults, so one run shows everything that is wrong.

use std::{fmt, path::Path};

use crate::{
    config::{Config, Source},
    control::server::check_place,
    engine::{self, CudaStatus},
    models::{Inventory, MANIFEST},
    paths::Dirs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Information, neither good nor bad (a path, CUDA absent on a CPU machine).
    Info,
    Ok,
    /// Works now, but worth knowing (a folder veild will create).
    Warn,
    /// Veil cannot do its job until this is fixed: `veil doctor` exits non-zero.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Info => "--",
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { level, what: what.into(), detail: detail.into() });
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.what.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(f, "{:>4}  {:width$}  {}", c.level, c.what, c.detail)?;
        }
        let fails = self.checks.iter().filter(|c| c.level == Level::Fail).count();
        let warns = self.checks.iter().filter(|c| c.level == Level::Warn).count();
        match (fails, warns) {
            (0, 0) => writeln!(f, "\nEverything Veil needs is in place."),
            (0, w) => writeln!(f, "\nVeil can run; {w} warning(s) above."),
            (n, _) => writeln!(f, "\n{n} problem(s) above stop Veil from protecting photos."),
        }
    }
}

/// Runs every check. `explicit` is the `--config` argument, if any.
pub fn run(explicit: Option<&Path>, dirs: &Dirs) -> Report {
    let mut report = Report::default();

    report.push(Level::Info, "veil", env!("CARGO_PKG_VERSION"));
    // Where libtorch really came from: the rpath set at build time, unless LD_LIBRARY_PATH (say, on a
    // GPU host with its own torch) picked another copy.
    let lib = match engine::loaded_libtorch_dir() {
        Some(dir) => dir.display().to_string(),
        None if engine::LIBTORCH_LIB_DIR.is_empty() => "loader path".to_string(),
        None => engine::LIBTORCH_LIB_DIR.to_string(),
    };
    report.push(
        Level::Ok,
        "libtorch",
        format!("{} built against, loaded from {lib}", engine::LIBTORCH_VERSION),
    );

    let config = match Config::load(explicit, dirs) {
        Ok((config, source)) => {
            let what = match source {
                Source::File(_) => format!("{source}: parsed"),
                Source::Defaults { .. } => source.to_string(),
            };
            report.push(Level::Ok, "config", what);
            config
        }
        Err(e) => {
            report.push(Level::Fail, "config", format!("{e} (checking the rest with the defaults)"));
            Config::default()
        }
    }
    .resolve(dirs);

    match engine::cuda() {
        CudaStatus::Available { gpus } => {
            for gpu in gpus {
                report.push(Level::Ok, "CUDA", gpu.to_string());
            }
        }
        CudaStatus::Unavailable { reason } => {
            report.push(Level::Info, "CUDA", format!("not available: {reason}"))
        }
    }
    match engine::select_device(config.engine.device) {
        Ok(device) => report.push(
            Level::Ok,
            "device",
            format!("{} (engine.device = \"{}\")", engine::describe(device), config.engine.device),
        ),
        Err(e) => report.push(Level::Fail, "device", e.to_string()),
    }

    check_models(&mut report, &config);

    // iPhones save HEIC by default: a build without libheif refuses such photos by name.
    match crate::imageio::heic_support() {
        Ok(lib) => report.push(Level::Ok, "formats", format!("JPEG, PNG, WebP, TIFF, HEIC/HEIF ({lib})")),
        Err(why) => report.push(
            Level::Warn,
            "formats",
            format!("JPEG, PNG, WebP, TIFF; HEIC/HEIF photos (as iPhones take them) are refused: {why}"),
        ),
    }

    check_notify(&mut report, &config.notify);
    let power = crate::power::Power::now();
    report.push(
        Level::Info,
        "power",
        crate::power::describe(power, config.power.on_battery)
            .unwrap_or_else(|| "no battery found: photos are protected whatever the power".into()),
    );

    if config.imageio.jpeg_chroma == crate::imageio::Chroma::Half {
        // bench/results/jpeg420-copies-cpu-2026-11-27.md: StarGAN disrupted on 78 % of 30 val faces
        // with 4:2:0 copies against 100 % with 4:4:4 ones.
        report.push(
            Level::Warn,
            "imageio",
            "jpeg_chroma = \"420\": JPEG copies keep colour at half resolution, and with it lose part \
             of the protection (in veil eval 78 % of faces disrupted instead of 100 %); \"444\" keeps it",
        );
    }

    if let Some(state) = &config.paths.state_dir {
        let (level, detail) = describe_dir(state);
        report.push(level, "state", detail);
    }
    if let Some(socket) = &config.paths.socket {
        let (level, detail) = describe_socket(socket);
        report.push(level, "socket", detail);
    }

    if config.folders.is_empty() {
        report.push(Level::Warn, "folders", "none configured: veild has nothing to watch");
    }
    for folder in &config.folders {
        check_folder(&mut report, "watch", &folder.path, false);
        check_folder(&mut report, "output", &folder.output, true);
        if let Err(e) = crate::watch::check_output(folder) {
            report.push(Level::Fail, "output", e.to_string());
        }
    }
    if let Err(e) = crate::watch::check_outputs(&config.folders) {
        report.push(Level::Fail, "watch", e.to_string());
    }
    report
}

/// Whether `veild`'s desktop notifications can be shown: the program that shows them is there.
fn check_notify(report: &mut Report, config: &crate::config::NotifyConfig) {
    let (sink, detail) = crate::desktop::setup(config);
    let level = match sink {
        Some(_) => Level::Ok,
        None if config.when == crate::config::NotifyWhen::Off => Level::Info,
        None => Level::Warn,
    };
    report.push(level, "notify", detail);
}

fn check_models(report: &mut Report, config: &Config) {
    let Some(dir) = config.models.dir.as_deref() else { return };
    report.push(Level::Info, "models", dir.display().to_string());
    let inventory = Inventory::check(dir);
    let broken: Vec<String> = inventory
        .detector
        .iter()
        .filter_map(|(path, loaded)| loaded.as_ref().err().map(|e| format!("{}: {e}", path.display())))
        .collect();
    if broken.is_empty() {
        report.push(Level::Ok, "face detector", "MTCNN pnet, rnet, onet load");
    } else {
        report.push(
            Level::Fail,
            "face detector",
            format!(
                "{} (run `make setup` in the Veil checkout to fetch and convert them)",
                broken.join("; ")
            ),
        );
    }
    match &inventory.generators {
        Err(e) => report.push(Level::Fail, "generators", format!("{e}: no generators to protect against")),
        Ok(models) if models.is_empty() => {
            report.push(Level::Fail, "generators", format!("{} lists no model", dir.join(MANIFEST).display()))
        }
        Ok(models) => {
            for (entry, loaded) in models {
                let what = format!("model {}", entry.name);
                match loaded {
                    Ok(()) => {
                        report.push(Level::Ok, what, format!("{:?}, {}", entry.role, entry.file.display()))
                    }
                    Err(e) => report.push(Level::Fail, what, e.clone()),
                }
            }
            for name in config.protect.weights.keys().filter(|n| !models.iter().any(|(e, _)| &&e.name == n)) {
                report.push(
                    Level::Fail,
                    "config",
                    format!(
                        "protect.weights names {name:?}, which {} does not list",
                        dir.join(MANIFEST).display()
                    ),
                );
            }
            if !models.iter().any(|(entry, _)| entry.role == crate::models::Role::Ensemble) {
                report.push(
                    Level::Fail,
                    "generators",
                    format!(
                        "{} lists no `ensemble` model: there is nothing to protect against (`holdout` models only judge)",
                        dir.join(MANIFEST).display()
                    ),
                );
            }
        }
    }
}

/// A folder veild makes when it is missing: fine unless something other than a folder is in the way.
fn describe_dir(path: &Path) -> (Level, String) {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => (Level::Info, format!("{shown} (exists)")),
        Ok(_) => (Level::Fail, format!("{shown}: not a folder")),
        Err(_) => match blocked_by(path) {
            Some(file) => {
                (Level::Fail, format!("{shown}: cannot be created: {} is not a folder", file.display()))
            }
            None => (Level::Info, format!("{shown} (will be created)")),
        },
    }
}

/// The control socket: its place as veild would take it ([`check_place`]), then a socket there (a
/// daemon, or a stale one it replaces) or nothing, whose folder can be made.
fn describe_socket(path: &Path) -> (Level, String) {
    let shown = path.display();
    if let Err(e) = check_place(path) {
        return (Level::Fail, format!("{e}: veild will not start"));
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return (Level::Info, format!("{shown} (present)"));
    }
    match path.parent().and_then(blocked_by) {
        Some(file) => (
            Level::Fail,
            format!("{shown}: its folder cannot be created: {} is not a folder", file.display()),
        ),
        None => (Level::Info, format!("{shown} (absent: no daemon running)")),
    }
}

/// The nearest existing ancestor of a missing `path` (or `path` itself) when it is not a folder.
fn blocked_by(path: &Path) -> Option<&Path> {
    let found = path.ancestors().find(|a| std::fs::symlink_metadata(a).is_ok())?;
    (!found.is_dir()).then_some(found)
}

fn check_folder(report: &mut Report, what: &str, path: &Path, needs_write: bool) {
    let shown = path.display();
    if !path.exists() {
        report.push(Level::Warn, what, format!("{shown}: missing (veild makes it if it is new; one it has seen before it waits for: is its drive mounted?)"));
    } else if !path.is_dir() {
        report.push(Level::Fail, what, format!("{shown}: not a folder"));
    } else if let Err(e) = std::fs::read_dir(path) {
        report.push(Level::Fail, what, format!("{shown}: cannot read: {e}"));
    } else if needs_write && crate::imageio::writable(path).is_err() {
        report.push(Level::Fail, what, format!("{shown}: not writable"));
    } else if !needs_write {
        report.push(Level::Ok, what, format!("{shown} (readable)"));
    } else {
        let (level, detail) = space(crate::imageio::free_bytes(path));
        report.push(level, what, format!("{shown}{detail}"));
    }
}

/// Below this much free space an output folder is worth a warning: a few dozen camera photos.
const LOW_SPACE: u64 = 500_000_000;

/// How a writable output folder with `free` bytes left is reported.
fn space(free: Option<u64>) -> (Level, String) {
    match free {
        Some(free) if free < LOW_SPACE => (
            Level::Warn,
            format!(
                ": writable, but only {} free: photos wait there until space is freed",
                crate::imageio::bytes(free)
            ),
        ),
        Some(free) => (Level::Ok, format!(" (writable, {} free)", crate::imageio::bytes(free))),
        None => (Level::Ok, " (writable)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut report = Report::default();
        check_folder(&mut report, "watch", &tmp.path().join("absent"), false);
        check_folder(&mut report, "output", tmp.path(), true);
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        check_folder(&mut report, "watch", &file, false);
        let levels: Vec<Level> = report.checks.iter().map(|c| c.level).collect();
        // The output's level depends on this disk's free space (see `output_space`).
        assert!(matches!(levels[..], [Level::Warn, Level::Ok | Level::Warn, Level::Fail]), "{levels:?}");
        assert!(report.checks[1].detail.contains(" free"), "{:?}", report.checks[1]);
        assert!(report.failed());
    }

    #[test]
    fn state_and_socket_paths_blocked_by_a_file_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("afile");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(describe_dir(tmp.path()).0, Level::Info);
        assert_eq!(
            describe_dir(&tmp.path().join("a/b")),
            (Level::Info, format!("{} (will be created)", tmp.path().join("a/b").display()))
        );
        assert_eq!(describe_dir(&file).0, Level::Fail);
        let (level, detail) = describe_dir(&file.join("state"));
        assert_eq!(level, Level::Fail);
        assert!(detail.ends_with("afile is not a folder"), "{detail}");

        assert_eq!(describe_socket(&tmp.path().join("run/veil.sock")).0, Level::Info);
        let (level, detail) = describe_socket(&file);
        assert_eq!(level, Level::Fail);
        assert!(detail.contains("is not a socket"), "{detail}");
        assert_eq!(describe_socket(&file.join("veil.sock")).0, Level::Fail);
        let socket = tmp.path().join("veil.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert_eq!(describe_socket(&socket).0, Level::Info);
    }

    #[test]
    fn output_space() {
        assert_eq!(space(Some(40_000_000_000)), (Level::Ok, " (writable, 40.0 GB free)".to_string()));
        let (level, detail) = space(Some(73_700));
        assert_eq!(level, Level::Warn);
        assert_eq!(detail, ": writable, but only 73.7 KB free: photos wait there until space is freed");
        assert_eq!(space(None), (Level::Ok, " (writable)".to_string()));
    }

    #[test]
    fn bad_config_is_reported_and_the_rest_still_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("veil.toml");
        std::fs::write(&file, "[engine]\ndevice = \"tpu\"\n").unwrap();
        let report = run(Some(&file), &Dirs::for_tests(tmp.path()));
        let config = report.checks.iter().find(|c| c.what == "config").unwrap();
        assert_eq!(config.level, Level::Fail);
        assert!(config.detail.contains("line 2") && config.detail.contains("engine.device"), "{config:?}");
        assert!(report.checks.iter().any(|c| c.what == "device"));
        assert!(report.checks.iter().any(|c| c.what == "watch"));
    }

    #[test]
    fn half_resolution_jpeg_colour_is_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("veil.toml");
        let dirs = Dirs::for_tests(tmp.path());
        std::fs::write(&file, "[imageio]\njpeg_chroma = \"420\"\n").unwrap();
        let report = run(Some(&file), &dirs);
        let check = report.checks.iter().find(|c| c.what == "imageio").unwrap();
        assert_eq!(check.level, Level::Warn);
        assert!(check.detail.contains("420") && check.detail.contains("444"), "{check:?}");
        std::fs::write(&file, "[imageio]\njpeg_chroma = \"444\"\n").unwrap();
        assert!(!run(Some(&file), &dirs).checks.iter().any(|c| c.what == "imageio"));
    }

    #[test]
    fn heic_support_is_reported_as_built() {
        let tmp = tempfile::tempdir().unwrap();
        let report = run(None, &Dirs::for_tests(tmp.path()));
        let check = report.checks.iter().find(|c| c.what == "formats").unwrap();
        if cfg!(feature = "heic") {
            // The build links libheif; the HEIC samples decode (tests/imageio.rs), so it has HEVC.
            assert_eq!(check.level, Level::Ok, "{check:?}");
            assert!(check.detail.contains("HEIC/HEIF (libheif 1."), "{check:?}");
        } else {
            assert_eq!(check.level, Level::Warn, "{check:?}");
            assert!(check.detail.contains("refused") && check.detail.contains("libheif-dev"), "{check:?}");
        }
    }
}
