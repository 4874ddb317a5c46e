//! End to end: `veil service install | uninstall | status`, `veil completions` and `veil man` run as
//! real processes in a temporary home. The real user's systemd is never touched: `VEIL_SYSTEMCTL`
//! names either a missing program (no manager reachable) or a script that records its arguments.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let home = Home { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(home.path().join("run")).unwrap();
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn unit(&self) -> PathBuf {
        self.path().join("xdg-config/systemd/user/veil.service")
    }

    /// `veil` with the temporary home, `XDG_CONFIG_HOME` outside `~/.config` (it must be honoured)
    /// and no session bus.
    fn veil(&self, systemctl: &Path, args: &[&str]) -> Output {
        let home = self.path();
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(args)
            .current_dir(home)
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("xdg-config"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("VEIL_SYSTEMCTL", systemctl)
            .output()
            .unwrap()
    }

    /// A `systemctl` that appends its arguments to `systemctl.log` and succeeds.
    fn fake_systemctl(&self) -> PathBuf {
        let script = self.path().join("systemctl");
        let log = self.path().join("systemctl.log");
        std::fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> '{}'\n", log.display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    fn systemctl_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "veil failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The veild next to the veil under test, as `veil service install` must find it.
fn veild() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_veil")).with_file_name("veild")
}

fn exec_start(unit: &str) -> Vec<&str> {
    unit.lines().filter(|l| l.starts_with("ExecStart=")).collect()
}

#[test]
fn dry_run_prints_the_unit_and_writes_nothing() {
    let home = Home::new();
    let out = stdout(&home.veil(Path::new("/nonexistent/systemctl"), &["service", "install", "--dry-run"]));
    assert!(out.starts_with(&format!("would write {}:\n", home.unit().display())), "{out}");
    assert_eq!(exec_start(&out), [format!("ExecStart={}", veild().display())]);
    assert!(out.contains("would run: /nonexistent/systemctl --user enable veil.service\n"), "{out}");
    assert!(!home.unit().exists());
    let out = stdout(&home.veil(Path::new("/nonexistent/systemctl"), &["service", "uninstall", "--dry-run"]));
    assert!(out.contains(&format!("would remove {}", home.unit().display())), "{out}");
}

#[test]
fn install_without_a_user_manager_writes_the_unit_and_says_what_to_run() {
    let home = Home::new();
    let missing = Path::new("/nonexistent/systemctl");
    // The configuration must load (every key has a default): a unit whose veild exits at once on it
    // is not installed.
    std::fs::write(home.path().join("my.toml"), "").unwrap();
    let out = stdout(&home.veil(missing, &["--config", "my.toml", "service", "install"]));
    assert!(out.contains(&format!("wrote {}", home.unit().display())), "{out}");
    assert!(
        out.contains("is not available here: run `systemctl --user daemon-reload && systemctl --user enable --now veil` yourself"),
        "{out}"
    );
    let unit = std::fs::read_to_string(home.unit()).unwrap();
    let config = home.path().join("my.toml");
    assert_eq!(exec_start(&unit), [format!("ExecStart={} --config {}", veild().display(), config.display())]);
    // The rpath finds libtorch: no library path is needed or carried.
    assert!(!unit.contains("LD_LIBRARY_PATH"));
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nWatchdogSec="));
    let status = stdout(&home.veil(missing, &["--config", "my.toml", "service", "status"]));
    assert!(status.contains(&format!("{}: installed", home.unit().display())), "{status}");
    assert!(status.contains("(this veil's veild)"), "{status}");
}

#[test]
fn install_carries_the_library_path_it_ran_with() {
    let home = Home::new();
    let torch = home.path().join("torch lib");
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["service", "install", "--no-start"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("xdg-config"))
        .env("LD_LIBRARY_PATH", &torch)
        .env("VEIL_SYSTEMCTL", "/nonexistent/systemctl")
        .output()
        .unwrap();
    let out = stdout(&out);
    assert!(out.contains("not started (--no-start)"), "{out}");
    let unit = std::fs::read_to_string(home.unit()).unwrap();
    assert!(unit.contains(&format!("\nEnvironment=\"LD_LIBRARY_PATH={}\"\n", torch.display())), "{unit}");
}

#[test]
fn install_status_uninstall_drive_systemctl() {
    let home = Home::new();
    let systemctl = home.fake_systemctl();
    let out = stdout(&home.veil(&systemctl, &["service", "install"]));
    assert!(out.contains(&format!("ran {} --user restart veil.service", systemctl.display())), "{out}");
    assert_eq!(
        home.systemctl_log(),
        [
            "--user show-environment",
            "--user daemon-reload",
            "--user enable veil.service",
            "--user restart veil.service"
        ]
    );
    let unit = std::fs::read_to_string(home.unit()).unwrap();
    assert_eq!(exec_start(&unit), [format!("ExecStart={}", veild().display())]);

    stdout(&home.veil(&systemctl, &["service", "status"]));
    assert_eq!(
        home.systemctl_log()[4..],
        ["--user show-environment", "--user is-enabled veil.service", "--user is-active veil.service"]
    );

    let out = stdout(&home.veil(&systemctl, &["service", "uninstall"]));
    assert!(out.contains(&format!("removed {}", home.unit().display())), "{out}");
    assert!(!home.unit().exists());
    assert_eq!(
        home.systemctl_log()[7..],
        [
            "--user show-environment",
            "--user disable --now veil.service",
            "--user show-environment",
            "--user daemon-reload"
        ]
    );
}

/// `systemd-analyze verify --user` on the unit as installed, whose ExecStart is the real veild.
#[test]
fn systemd_analyze_accepts_the_installed_unit() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd, or `make ci-deps`)"
        );
        return;
    }
    let home = Home::new();
    stdout(&home.veil(Path::new("/nonexistent/systemctl"), &["service", "install", "--no-start"]));
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user", "--man=no"])
        .arg(home.unit())
        .env("XDG_RUNTIME_DIR", home.path().join("run"))
        .env("HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let home = Home::new();
    let bash = stdout(&home.veil(Path::new("/nonexistent"), &["completions", "bash"]));
    assert!(bash.contains("complete -F _veil") && bash.contains("service"), "{bash}");
    let fish = stdout(&home.veil(Path::new("/nonexistent"), &["completions", "fish"]));
    assert!(fish.contains("complete -c veil") && fish.contains("uninstall"), "{fish}");
    let dir = home.path().join("man");
    stdout(&home.veil(Path::new("/nonexistent"), &["man", dir.to_str().unwrap()]));
    let veil = std::fs::read_to_string(dir.join("veil.1")).unwrap();
    assert!(veil.starts_with(".ie") || veil.contains(".TH veil 1"), "{veil}");
    assert!(veil.contains("service"));
    let service = std::fs::read_to_string(dir.join("veil-service.1")).unwrap();
    assert!(service.contains(".TH veil-service 1"), "{service}");
    assert!(!dir.join("veil-man.1").exists(), "the hidden man command gets no page");
}
