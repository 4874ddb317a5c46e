//! `veil service install | uninstall | status`: `veild` as a service of the current user.
//!
//! On Linux a systemd *user* unit (`~/.config/systemd/user/veil.service`, or under
//! `$XDG_CONFIG_HOME`), on macOS a launchd agent (`~/Library/LaunchAgents/org.veil.veild.plist`).
//! Both are rendered from the templates committed under `packaging/` with the real paths: `ExecStart`
//! (or `ProgramArguments`) is the `veild` next to the running `veil`, so the same code serves a `make`
//! build, `cargo install` and the .deb. A `--config FILE` given to `veil` is passed on to `veild`, and
//! an `LD_LIBRARY_PATH` set when installing is carried into the unit (the user manager does not see
//! the shell's environment).
//!
//! After writing the file, `install` runs `systemctl --user daemon-reload`, `enable` and `restart`
//! (or `launchctl bootout`/`bootstrap`) when the service manager answers; when it does not (no user
//! manager, a container, a test), it says what it wrote and which commands to run by hand. The
//! programs used are `systemctl`/`launchctl` from `PATH`, or whatever `VEIL_SYSTEMCTL` /
//! `VEIL_LAUNCHCTL` name.

use std::{
    ffi::OsString,
    fmt, fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// The systemd user unit, as the .deb installs it (`/usr/lib/systemd/user/veil.service`).
pub const UNIT_TEMPLATE: &str = include_str!("../packaging/systemd/veil.service");
/// The launchd agent with `@VEILD@` and `@HOME@` placeholders.
pub const PLIST_TEMPLATE: &str = include_str!("../packaging/launchd/org.veil.veild.plist");
pub const UNIT_NAME: &str = "veil.service";
pub const LAUNCHD_LABEL: &str = "org.veil.veild";

/// The `ExecStart` line of the template; rendering replaces it.
const TEMPLATE_EXEC_START: &str = "ExecStart=/usr/bin/veild\n";
const PLIST_PROGRAM: &str = "\t\t<string>@VEILD@</string>\n";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot tell where the running veil binary is: {0}")]
    CurrentExe(#[source] io::Error),
    #[error(
        "{} does not exist: veild must sit next to veil (make, cargo install and the .deb all put them \
         together)",
        .0.display()
    )]
    NoVeild(PathBuf),
    #[error("cannot tell the current directory to make the --config path absolute: {0}")]
    CurrentDir(#[source] io::Error),
    #[error("cannot find your home directory (is HOME set?): the service file goes there")]
    NoHome,
    #[error("cannot write the path {} into a {what}: {why}", .path.display())]
    UnusablePath { path: PathBuf, what: &'static str, why: &'static str },
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

/// Which service manager the file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// launchd on macOS, systemd elsewhere.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    fn file_kind(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd unit",
            Manager::Launchd => "launchd plist",
        }
    }
}

/// Everything an install needs, computed up front; nothing is touched until `install`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub manager: Manager,
    /// Absolute path of the `veild` to run.
    pub veild: PathBuf,
    /// Absolute path of a configuration file passed as `--config`.
    pub config: Option<PathBuf>,
    /// `LD_LIBRARY_PATH` to set for `veild` (systemd only).
    pub library_path: Option<OsString>,
    pub home: PathBuf,
    /// Where the unit or plist goes.
    pub file: PathBuf,
    /// `systemctl` or `launchctl`.
    pub tool: OsString,
    /// The user id launchd's `gui/<uid>` domain names.
    pub uid: u32,
}

impl Setup {
    /// For the current user: the `veild` next to this executable, the home and config folders from
    /// `HOME`/`XDG_CONFIG_HOME`, `LD_LIBRARY_PATH` and the tool overrides from the environment.
    pub fn for_current_user(manager: Manager, config: Option<&Path>) -> Result<Setup, ServiceError> {
        let exe = std::env::current_exe().map_err(ServiceError::CurrentExe)?;
        let veild = exe.with_file_name(format!("veild{}", std::env::consts::EXE_SUFFIX));
        if !veild.is_file() {
            return Err(ServiceError::NoVeild(veild));
        }
        let base = directories::BaseDirs::new().ok_or(ServiceError::NoHome)?;
        let config = match config {
            Some(c) => Some(std::path::absolute(c).map_err(ServiceError::CurrentDir)?),
            None => None,
        };
        let (tool_var, tool) = match manager {
            Manager::Systemd => ("VEIL_SYSTEMCTL", "systemctl"),
            Manager::Launchd => ("VEIL_LAUNCHCTL", "launchctl"),
        };
        Ok(Setup::new(
            manager,
            veild,
            config,
            std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()),
            base.home_dir(),
            base.config_dir(),
            std::env::var_os(tool_var).unwrap_or_else(|| tool.into()),
            // SAFETY: getuid cannot fail and has no preconditions.
            unsafe { libc::getuid() },
        ))
    }

    /// A setup from explicit parts; `config_home` is `$XDG_CONFIG_HOME` (or `~/.config`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        manager: Manager,
        veild: PathBuf,
        config: Option<PathBuf>,
        library_path: Option<OsString>,
        home: &Path,
        config_home: &Path,
        tool: OsString,
        uid: u32,
    ) -> Setup {
        let file = match manager {
            Manager::Systemd => config_home.join("systemd/user").join(UNIT_NAME),
            Manager::Launchd => home.join("Library/LaunchAgents").join(format!("{LAUNCHD_LABEL}.plist")),
        };
        let library_path = if manager == Manager::Systemd { library_path } else { None };
        Setup { manager, veild, config, library_path, home: home.to_path_buf(), file, tool, uid }
    }

    /// The unit or plist text with this setup's paths.
    pub fn render(&self) -> Result<String, ServiceError> {
        match self.manager {
            Manager::Systemd => self.render_unit(),
            Manager::Launchd => self.render_plist(),
        }
    }

    fn render_unit(&self) -> Result<String, ServiceError> {
        let mut exec = format!("ExecStart={}", systemd_word(&self.veild)?);
        if let Some(config) = &self.config {
            exec.push_str(&format!(" --config {}", systemd_word(config)?));
        }
        exec.push('\n');
        if let Some(lib) = &self.library_path {
            let lib = Path::new(lib);
            let value = utf8(lib, "systemd unit")?;
            check_line(lib, value, "systemd unit")?;
            // Environment= expands specifiers (%), not variables; the assignment is quoted whole.
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%");
            exec.push_str(&format!(
                "# The library path `veil service install` ran with, so veild finds libtorch as veil did.\n\
                 Environment=\"LD_LIBRARY_PATH={escaped}\"\n"
            ));
        }
        let header = "# Written by `veil service install`; `veil service uninstall` removes it. Edits are\n\
                      # overwritten by the next install: put changes in `systemctl --user edit veil`.\n";
        Ok(format!("{header}{}", UNIT_TEMPLATE.replacen(TEMPLATE_EXEC_START, &exec, 1)))
    }

    fn render_plist(&self) -> Result<String, ServiceError> {
        let mut program = format!("\t\t<string>{}</string>\n", xml_text(&self.veild)?);
        if let Some(config) = &self.config {
            program.push_str(&format!(
                "\t\t<string>--config</string>\n\t\t<string>{}</string>\n",
                xml_text(config)?
            ));
        }
        let home = xml_text(&self.home)?;
        Ok(PLIST_TEMPLATE.replacen(PLIST_PROGRAM, &program, 1).replace("@HOME@", &home))
    }

    /// The folder launchd writes the log into (`~/Library/Logs/Veil`); systemd logs to the journal.
    pub fn log_dir(&self) -> Option<PathBuf> {
        (self.manager == Manager::Launchd).then(|| self.home.join("Library/Logs/Veil"))
    }

    /// The commands that (re)start the service after the file is written.
    pub fn start_commands(&self) -> Vec<Vec<String>> {
        match self.manager {
            Manager::Systemd => vec![
                self.systemctl(&["daemon-reload"]),
                self.systemctl(&["enable", UNIT_NAME]),
                self.systemctl(&["restart", UNIT_NAME]),
            ],
            Manager::Launchd => vec![
                self.launchctl(&["bootout", &self.launchd_target()]),
                self.launchctl(&["bootstrap", &format!("gui/{}", self.uid), &self.file.to_string_lossy()]),
            ],
        }
    }

    /// The commands that stop the service before the file is removed.
    pub fn stop_commands(&self) -> Vec<Vec<String>> {
        match self.manager {
            Manager::Systemd => vec![self.systemctl(&["disable", "--now", UNIT_NAME])],
            Manager::Launchd => vec![self.launchctl(&["bootout", &self.launchd_target()])],
        }
    }

    fn status_commands(&self) -> Vec<Vec<String>> {
        match self.manager {
            Manager::Systemd => {
                vec![self.systemctl(&["is-enabled", UNIT_NAME]), self.systemctl(&["is-active", UNIT_NAME])]
            }
            Manager::Launchd => vec![self.launchctl(&["print", &self.launchd_target()])],
        }
    }

    fn launchd_target(&self) -> String {
        format!("gui/{}/{LAUNCHD_LABEL}", self.uid)
    }

    fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec![self.tool.to_string_lossy().into_owned(), "--user".to_string()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd
    }

    fn launchctl(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec![self.tool.to_string_lossy().into_owned()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd
    }

    /// Whether the service manager answers: `systemctl --user show-environment` succeeds (a user
    /// manager is running and reachable), or `launchctl` runs.
    pub fn manager_reachable(&self) -> bool {
        let probe = match self.manager {
            Manager::Systemd => self.systemctl(&["show-environment"]),
            Manager::Launchd => self.launchctl(&["version"]),
        };
        run(&self.tool, &probe[1..]).is_ok_and(|o| o.success)
    }

    /// The commands to type when the manager does not answer.
    fn manual_steps(&self) -> String {
        match self.manager {
            Manager::Systemd => {
                format!("systemctl --user daemon-reload && systemctl --user enable --now {}", "veil")
            }
            Manager::Launchd => {
                format!("launchctl bootstrap gui/{} {}", self.uid, self.file.display())
            }
        }
    }
}

/// What `install` or `uninstall` did, for the user to read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub lines: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lines.iter().try_for_each(|l| writeln!(f, "{l}"))
    }
}

/// What `--dry-run` prints: the file and the commands, touching nothing.
pub fn dry_run_install(setup: &Setup) -> Result<String, ServiceError> {
    let text = setup.render()?;
    let mut out = format!("would write {}:\n{text}", setup.file.display());
    if let Some(logs) = setup.log_dir() {
        out.push_str(&format!("would create {}\n", logs.display()));
    }
    for cmd in setup.start_commands() {
        out.push_str(&format!("would run: {}\n", cmd.join(" ")));
    }
    Ok(out)
}

/// What `uninstall --dry-run` prints.
pub fn dry_run_uninstall(setup: &Setup) -> String {
    let mut out = String::new();
    for cmd in setup.stop_commands() {
        out.push_str(&format!("would run: {}\n", cmd.join(" ")));
    }
    out.push_str(&format!("would remove {}\n", setup.file.display()));
    out
}

/// Writes the unit or plist and, unless `start` is false or the manager does not answer, enables and
/// (re)starts the service.
pub fn install(setup: &Setup, start: bool) -> Result<Report, ServiceError> {
    let text = setup.render()?;
    let mut report = Report::default();
    write_file(&setup.file, &text)?;
    report.lines.push(format!(
        "wrote {} ({} running {})",
        setup.file.display(),
        setup.manager.file_kind(),
        setup.veild.display()
    ));
    if let Some(lib) = &setup.library_path {
        report.lines.push(format!("  with LD_LIBRARY_PATH={}", lib.to_string_lossy()));
    }
    if let Some(logs) = setup.log_dir() {
        fs::create_dir_all(&logs).map_err(|source| ServiceError::CreateDir { path: logs.clone(), source })?;
        report.lines.push(format!("created {} for veild's log", logs.display()));
    }
    if !start {
        report.lines.push(format!("not started (--no-start): run `{}` to start it", setup.manual_steps()));
        return Ok(report);
    }
    if !setup.manager_reachable() {
        report.lines.push(format!(
            "{} is not available here: run `{}` yourself",
            unavailable_name(setup),
            setup.manual_steps()
        ));
        return Ok(report);
    }
    for (i, cmd) in setup.start_commands().iter().enumerate() {
        let outcome = run(&setup.tool, &cmd[1..]).map_err(|e| command_error(cmd, &e.to_string()))?;
        // launchd's bootout of a service that is not loaded fails; that is the usual case.
        let may_fail = setup.manager == Manager::Launchd && i == 0;
        if !outcome.success && !may_fail {
            return Err(command_error(
                cmd,
                &format!("{} ({} was written)", outcome.stderr, setup.file.display()),
            ));
        }
        report.lines.push(format!("ran {}", cmd.join(" ")));
    }
    Ok(report)
}

/// Stops and disables the service (when the manager answers) and removes the file.
pub fn uninstall(setup: &Setup) -> Result<Report, ServiceError> {
    let mut report = Report::default();
    let installed = setup.file.exists();
    if setup.manager_reachable() {
        for cmd in setup.stop_commands() {
            // Stopping a service that is not installed or not loaded fails harmlessly.
            match run(&setup.tool, &cmd[1..]) {
                Ok(o) if o.success => report.lines.push(format!("ran {}", cmd.join(" "))),
                Ok(o) => report.lines.push(format!("ran {} (it said: {})", cmd.join(" "), o.stderr.trim())),
                Err(e) => return Err(command_error(&cmd, &e.to_string())),
            }
        }
    } else if installed {
        report.lines.push(format!(
            "{} is not available here: stop the service yourself if it runs",
            unavailable_name(setup)
        ));
    }
    if installed {
        fs::remove_file(&setup.file)
            .map_err(|source| ServiceError::Remove { path: setup.file.clone(), source })?;
        report.lines.push(format!("removed {}", setup.file.display()));
        if setup.manager == Manager::Systemd && setup.manager_reachable() {
            let cmd = setup.systemctl(&["daemon-reload"]);
            if run(&setup.tool, &cmd[1..]).is_ok_and(|o| o.success) {
                report.lines.push(format!("ran {}", cmd.join(" ")));
            }
        }
    } else {
        report.lines.push(format!("{} is not installed (nothing to remove)", setup.file.display()));
    }
    Ok(report)
}

/// Whether the file exists, which `veild` it runs, and what the service manager says.
pub fn status(setup: &Setup) -> Result<Report, ServiceError> {
    let mut report = Report::default();
    match fs::read_to_string(&setup.file) {
        Ok(installed) => {
            report.lines.push(format!("{}: installed", setup.file.display()));
            let expected = setup.render()?;
            if installed == expected {
                report.lines.push(format!("  runs {} (this veil's veild)", setup.veild.display()));
            } else {
                let runs = match setup.manager {
                    Manager::Systemd => {
                        installed.lines().find(|l| l.starts_with("ExecStart=")).map(str::to_string)
                    }
                    Manager::Launchd => None,
                };
                report.lines.push(format!(
                    "  differs from what this veil would write{}: `veil service install` rewrites it",
                    runs.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report
                .lines
                .push(format!("{}: not installed (`veil service install` writes it)", setup.file.display()));
        }
        Err(source) => return Err(ServiceError::Read { path: setup.file.clone(), source }),
    }
    if !setup.manager_reachable() {
        report.lines.push(format!("{} is not available here", unavailable_name(setup)));
        return Ok(report);
    }
    for cmd in setup.status_commands() {
        let said = match run(&setup.tool, &cmd[1..]) {
            Ok(o) if setup.manager == Manager::Launchd => {
                if o.success {
                    "loaded".to_string()
                } else {
                    "not loaded".to_string()
                }
            }
            Ok(o) => o.stdout.trim().to_string(),
            Err(e) => e.to_string(),
        };
        report.lines.push(format!("{}: {said}", cmd.join(" ")));
    }
    Ok(report)
}

fn unavailable_name(setup: &Setup) -> String {
    match setup.manager {
        Manager::Systemd => format!("{} --user", setup.tool.to_string_lossy()),
        Manager::Launchd => setup.tool.to_string_lossy().into_owned(),
    }
}

fn command_error(cmd: &[String], detail: &str) -> ServiceError {
    ServiceError::Command { command: cmd.join(" "), detail: detail.trim().to_string() }
}

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(tool: &OsString, args: &[String]) -> io::Result<Outcome> {
    let out = Command::new(tool).args(args).stdin(std::process::Stdio::null()).output()?;
    Ok(Outcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Writes through a temporary file in the same folder and renames it into place, so a half-written
/// unit is never seen by the manager.
fn write_file(path: &Path, text: &str) -> Result<(), ServiceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| ServiceError::CreateDir { path: dir.to_path_buf(), source })?;
    let write = |source| ServiceError::Write { path: path.to_path_buf(), source };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write)?;
    io::Write::write_all(&mut tmp, text.as_bytes()).map_err(write)?;
    tmp.as_file().sync_all().map_err(write)?;
    tmp.persist(path).map_err(|e| write(e.error))?;
    Ok(())
}

fn utf8<'a>(path: &'a Path, what: &'static str) -> Result<&'a str, ServiceError> {
    path.to_str().ok_or_else(|| ServiceError::UnusablePath {
        path: path.to_path_buf(),
        what,
        why: "it is not valid UTF-8",
    })
}

fn check_line(path: &Path, text: &str, what: &'static str) -> Result<(), ServiceError> {
    if text.chars().any(char::is_control) {
        return Err(ServiceError::UnusablePath {
            path: path.to_path_buf(),
            what,
            why: "it contains a control character (a newline?)",
        });
    }
    Ok(())
}

/// One word of an `ExecStart=` line: `%` and `$` escaped, quoted when it holds spaces or quotes.
fn systemd_word(path: &Path) -> Result<String, ServiceError> {
    let text = utf8(path, "systemd unit")?;
    check_line(path, text, "systemd unit")?;
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    if text.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        Ok(format!("\"{escaped}\""))
    } else {
        Ok(escaped)
    }
}

/// A path as XML character data.
fn xml_text(path: &Path) -> Result<String, ServiceError> {
    let text = utf8(path, "launchd plist")?;
    check_line(path, text, "launchd plist")?;
    Ok(text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(manager: Manager, veild: &str) -> Setup {
        Setup::new(
            manager,
            PathBuf::from(veild),
            None,
            None,
            Path::new("/home/ann"),
            Path::new("/home/ann/.config"),
            "/nonexistent/tool".into(),
            1000,
        )
    }

    #[test]
    fn the_template_has_what_rendering_replaces() {
        assert_eq!(UNIT_TEMPLATE.matches(TEMPLATE_EXEC_START).count(), 1);
        assert_eq!(PLIST_TEMPLATE.matches(PLIST_PROGRAM).count(), 1);
        assert!(PLIST_TEMPLATE.contains("@HOME@/Library/Logs/Veil/"));
    }

    #[test]
    fn the_unit_runs_the_given_veild_with_its_config() {
        let mut s = setup(Manager::Systemd, "/opt/veil/bin/veild");
        s.config = Some(PathBuf::from("/home/ann/my veil.toml"));
        s.library_path = Some("/opt/torch/lib".into());
        let unit = s.render().unwrap();
        let exec: Vec<&str> = unit.lines().filter(|l| l.starts_with("ExecStart=")).collect();
        assert_eq!(exec, ["ExecStart=/opt/veil/bin/veild --config \"/home/ann/my veil.toml\""]);
        assert!(unit.contains("\nEnvironment=\"LD_LIBRARY_PATH=/opt/torch/lib\"\n"));
        assert!(!unit.contains("/usr/bin/veild"));
        assert_eq!(s.file, Path::new("/home/ann/.config/systemd/user/veil.service"));
        for key in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "WatchdogSec="]
        {
            assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
        }
    }

    #[test]
    fn unit_words_are_escaped() {
        assert_eq!(systemd_word(Path::new("/a/b")).unwrap(), "/a/b");
        assert_eq!(systemd_word(Path::new("/a b/100%/$x")).unwrap(), "\"/a b/100%%/$$x\"");
        assert_eq!(systemd_word(Path::new("/a\"b")).unwrap(), "\"/a\\\"b\"");
        let err = systemd_word(Path::new("/a\nExecStartPre=/bin/rm")).unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
    }

    #[test]
    fn the_unit_never_hides_the_gpu() {
        for hiding in ["PrivateDevices", "DevicePolicy", "DeviceAllow", "MemoryDenyWriteExecute"] {
            assert!(
                !UNIT_TEMPLATE.lines().any(|l| l.starts_with(hiding)),
                "{hiding} would break CUDA in the unit"
            );
        }
    }

    #[test]
    fn the_plist_has_the_users_paths_and_escapes_them() {
        let mut s = setup(Manager::Launchd, "/Users/a&b/bin/veild");
        s.home = PathBuf::from("/Users/a&b");
        s.library_path = Some("/ignored".into());
        let plist = s.render().unwrap();
        assert!(plist.contains("<string>/Users/a&amp;b/bin/veild</string>"));
        assert!(plist.contains("<string>/Users/a&amp;b/Library/Logs/Veil/veild.log</string>"));
        assert!(!plist.contains('@'));
        assert_eq!(s.log_dir(), Some(PathBuf::from("/Users/a&b/Library/Logs/Veil")));
        let s = setup(Manager::Launchd, "/usr/local/bin/veild");
        assert_eq!(s.file, Path::new("/home/ann/Library/LaunchAgents/org.veil.veild.plist"));
        assert_eq!(s.start_commands()[1][1..], ["bootstrap", "gui/1000", &s.file.to_string_lossy()]);
    }

    #[test]
    fn the_plist_parses_with_its_keys() {
        let mut s = setup(Manager::Launchd, "/usr/local/bin/veild");
        s.config = Some(PathBuf::from("/Users/ann/veil.toml"));
        s.home = PathBuf::from("/Users/ann");
        for text in [PLIST_TEMPLATE.to_string(), s.render().unwrap()] {
            let value = plist::Value::from_reader_xml(text.as_bytes()).unwrap();
            let dict = value.as_dictionary().unwrap();
            assert_eq!(dict.get("Label").and_then(|v| v.as_string()), Some(LAUNCHD_LABEL));
            assert_eq!(dict.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
            let keep_alive = dict.get("KeepAlive").and_then(|v| v.as_dictionary()).unwrap();
            assert_eq!(keep_alive.get("SuccessfulExit").and_then(|v| v.as_boolean()), Some(false));
            assert_eq!(dict.get("ProcessType").and_then(|v| v.as_string()), Some("Background"));
            for log in ["StandardOutPath", "StandardErrorPath"] {
                let path = dict.get(log).and_then(|v| v.as_string()).unwrap();
                assert!(path.ends_with("/Library/Logs/Veil/veild.log"), "{path}");
            }
        }
        let value = plist::Value::from_reader_xml(s.render().unwrap().as_bytes()).unwrap();
        let args: Vec<&str> = value.as_dictionary().unwrap()["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_string())
            .collect();
        assert_eq!(args, ["/usr/local/bin/veild", "--config", "/Users/ann/veil.toml"]);
        assert_eq!(
            value.as_dictionary().unwrap()["StandardErrorPath"].as_string(),
            Some("/Users/ann/Library/Logs/Veil/veild.log")
        );
    }

    #[test]
    fn without_a_manager_install_writes_and_says_what_to_run() {
        let home = tempfile::tempdir().unwrap();
        let mut s = setup(Manager::Systemd, "/opt/veild");
        s.file = home.path().join("systemd/user/veil.service");
        let report = install(&s, true).unwrap().to_string();
        assert!(report.contains("is not available here: run `systemctl --user daemon-reload"), "{report}");
        assert_eq!(fs::read_to_string(&s.file).unwrap(), s.render().unwrap());
        let status = status(&s).unwrap().to_string();
        assert!(status.contains("runs /opt/veild (this veil's veild)"), "{status}");
        let report = uninstall(&s).unwrap().to_string();
        assert!(report.contains("removed"), "{report}");
        assert!(!s.file.exists());
        let report = uninstall(&s).unwrap().to_string();
        assert!(report.contains("not installed"), "{report}");
    }
}
