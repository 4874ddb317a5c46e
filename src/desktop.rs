//! Desktop notifications from `veild`: once the photos that came together are all done, one
//! notification says how many were protected and where their copies are, which had no face, and
//! which could not be protected and why.
//!
//! The notifier reads the event stream `veil watch` reads ([`Event`]), so it tells what a user
//! following the daemon would have seen. A [`Batch`] gathers the events; once nothing has been left
//! to protect for `notify.quiet_seconds`, it becomes one [`Notice`], handed to the platform's
//! notifier (`notify-send` on Linux, `osascript` on macOS) or to `notify.command`. The daemon never
//! waits for it: a notifier that is missing or fails is logged, and the photos go on.

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, watch};

use crate::{
    config::{NotifyConfig, NotifyWhen},
    control::Event,
};

/// How long a batch waits for a photo that was seen coming but never seen done (events lost, a
/// photo on a slow CPU) before what is done is told anyway.
const STALL: Duration = Duration::from_secs(600);
/// How long a notifier program may run before it is stopped.
const PROGRAM_LIMIT: Duration = Duration::from_secs(10);
/// Failed photos named one by one in a notice; the others are counted.
const NAMED: usize = 3;
/// Characters of one line of a notice at most.
const LINE: usize = 160;
/// The event the daemon sends last, once its core has stopped: what is done is told at once.
pub const STOPPING: &str = "stopping";
/// How long a stopping daemon waits for its last notice.
pub const LAST_WORD: Duration = Duration::from_secs(PROGRAM_LIMIT.as_secs() + 1);

/// What one notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// The photos of the batch being gathered, from the daemon's events.
#[derive(Debug, Default)]
pub struct Batch {
    /// Photos seen queued or running and not yet seen finished.
    pending: HashSet<String>,
    /// Photos the engine took: only their `done` is a protection (a rename's `done` is not).
    running: HashSet<String>,
    protected: u32,
    /// Done with no face: copied unchanged.
    unchanged: u32,
    /// The folders the copies went to.
    outputs: BTreeSet<PathBuf>,
    /// Failed photos: path and error.
    failed: Vec<(String, String)>,
    /// Photos whose output folder cannot take their copy: path and why.
    waiting: Vec<(String, String)>,
    /// Photos already told waiting, not told again each time they are retried.
    told_waiting: HashSet<String>,
    /// Whether the daemon holds new photos for the charger (the computer runs on battery).
    on_battery: bool,
    /// Photos queued while on battery and not taken by the engine: they wait for the charger.
    held: HashSet<String>,
    /// Of those, the ones already told.
    told_held: HashSet<String>,
    /// Protected copies put back among the photos, skipped rather than protected twice.
    already: Vec<String>,
    /// The daemon is stopping: what is queued waits until it starts again.
    stopped: bool,
}

impl Batch {
    /// Takes one event of the daemon's stream into the batch.
    pub fn see(&mut self, e: &Event) {
        let Some(path) = e.path.clone() else {
            match e.event.as_str() {
                "paused" => {
                    // Nothing queued moves until `veil resume`: what is done is told meanwhile.
                    self.pending.clear();
                    self.running.clear();
                }
                "battery" => {
                    // What is queued waits for the charger; the photos in the engine finish.
                    self.on_battery = true;
                    let queued: Vec<String> = self.pending.difference(&self.running).cloned().collect();
                    for p in queued {
                        self.pending.remove(&p);
                        self.held.insert(p);
                    }
                }
                "mains" => {
                    self.on_battery = false;
                    self.pending.extend(self.held.drain());
                    self.told_held.clear();
                }
                STOPPING => self.stopped = true,
                _ => {}
            }
            return;
        };
        match e.event.as_str() {
            "queued" | "retrying" if self.on_battery => {
                self.held.insert(path);
            }
            "queued" | "retrying" => {
                self.pending.insert(path);
            }
            "running" => {
                self.held.remove(&path);
                self.pending.insert(path.clone());
                self.running.insert(path);
            }
            "done" => {
                // Only the engine's photos are protections (a rename's `done` is not).
                let ran = self.running.contains(&path);
                self.finish(&path);
                if ran {
                    match e.faces {
                        Some(0) => self.unchanged += 1,
                        _ => self.protected += 1,
                    }
                    if let Some(dir) = e.output.as_deref().and_then(|o| Path::new(o).parent()) {
                        self.outputs.insert(dir.to_path_buf());
                    }
                }
            }
            "failed" => {
                self.finish(&path);
                self.failed.push((path, e.error.clone().unwrap_or_default()));
            }
            "waiting" => {
                self.pending.remove(&path);
                self.running.remove(&path);
                if self.told_waiting.insert(path.clone()) {
                    self.waiting.push((path, e.error.clone().unwrap_or_default()));
                }
            }
            "skipped" => {
                self.finish(&path);
                let why = e.error.as_deref().map(|e| crate::control::without_path(e, &path));
                if why.is_some_and(|w| w.starts_with(crate::store::OWN_COPY)) {
                    self.already.push(path);
                }
            }
            "removed" => self.finish(&path),
            _ => {}
        }
    }

    fn finish(&mut self, path: &str) {
        self.pending.remove(path);
        self.running.remove(path);
        self.told_waiting.remove(path);
        self.held.remove(path);
        self.told_held.remove(path);
    }

    /// Photos waiting for the charger that were not told yet.
    fn newly_held(&self) -> usize {
        self.held.difference(&self.told_held).count()
    }

    /// Events were lost: photos seen coming may never be seen done, so none is waited for.
    pub fn lost(&mut self) {
        self.pending.clear();
        self.running.clear();
    }

    /// Whether photos seen coming are not done yet.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether there is something to tell under `when`.
    pub fn has_news(&self, when: NotifyWhen) -> bool {
        let errors = !self.failed.is_empty() || !self.waiting.is_empty();
        match when {
            NotifyWhen::Off => false,
            NotifyWhen::Errors => errors,
            NotifyWhen::Batches => {
                errors
                    || self.protected + self.unchanged > 0
                    || self.newly_held() > 0
                    || !self.already.is_empty()
            }
        }
    }

    /// The notice for the batch so far under `when`, if it has news; the batch starts anew.
    pub fn take(&mut self, when: NotifyWhen) -> Option<Notice> {
        let notice = self.has_news(when).then(|| self.notice());
        self.told_held.extend(self.held.iter().cloned());
        self.protected = 0;
        self.unchanged = 0;
        self.outputs.clear();
        self.failed.clear();
        self.waiting.clear();
        self.already.clear();
        notice
    }

    fn notice(&self) -> Notice {
        let (done, failed, waiting) = (self.protected, self.failed.len(), self.waiting.len());
        let held = self.newly_held();
        let title = match (done, failed) {
            (0, 0) if self.unchanged > 0 => format!("No face found in {}", photos(self.unchanged as usize)),
            (0, 0) if waiting == 0 && held > 0 => format!("{} for the charger", wait(held)),
            (0, 0) if waiting == 0 => format!(
                "{} protected already",
                if self.already.len() == 1 {
                    "1 copy was".into()
                } else {
                    format!("{} copies were", self.already.len())
                }
            ),
            (0, 0) => format!("{} for {} output folder", wait(waiting), their(waiting)),
            (0, k) => format!("{} could not be protected", photos(k)),
            (n, 0) => format!("{} protected", photos(n as usize)),
            (n, k) => format!("{} protected, {k} could not be", photos(n as usize)),
        };
        let mut lines = Vec::new();
        if self.unchanged > 0 {
            let n = self.unchanged;
            lines.push(match (done, failed) {
                (0, 0) => format!(
                    "{} copied unchanged: Veil protects faces",
                    if n == 1 { "It was" } else { "They were" }
                ),
                _ => format!("{n} had no face and {} copied unchanged", if n == 1 { "was" } else { "were" }),
            });
        }
        if let Some(dir) = common_folder(&self.outputs) {
            lines.push(format!("Copies in {}", dir.display()));
        } else if !self.outputs.is_empty() {
            lines.push(format!("Copies in {} folders", self.outputs.len()));
        }
        for (path, error) in self.failed.iter().take(NAMED) {
            lines.push(why(path, error));
        }
        if failed > NAMED {
            lines.push(format!("and {} more: `veil jobs --status failed`", failed - NAMED));
        }
        if let Some((path, error)) = self.waiting.first() {
            let others = match waiting {
                1 => String::new(),
                n => format!(" ({} more wait{})", n - 1, if n == 2 { "s" } else { "" }),
            };
            lines.push(format!(
                "{} waits for its output folder{others}: {}",
                name(path),
                crate::control::without_path(error, path)
            ));
        }
        for path in self.already.iter().take(NAMED) {
            lines.push(format!("{}: a copy Veil protected already, not protected twice", name(path)));
        }
        if self.already.len() > NAMED {
            lines.push(format!("and {} more copies protected already", self.already.len() - NAMED));
        }
        let left = self.pending.union(&self.held).count();
        if self.stopped && left > 0 {
            lines.push(format!(
                "veild stopped: {} protected when it starts again",
                if left == 1 { "1 photo is".into() } else { format!("{left} photos are") }
            ));
        } else if held > 0 {
            lines.push(if done == 0 && failed == 0 && waiting == 0 && self.unchanged == 0 {
                format!(
                    "The computer runs on battery: {} protected once it is plugged in (`veil add PHOTO` \
                     protects one now)",
                    if held == 1 { "it is" } else { "they are" }
                )
            } else {
                format!("{} for the charger: the computer runs on battery", wait(held))
            });
        }
        let body = lines.into_iter().map(|l| shorten(&l)).collect::<Vec<_>>().join("\n");
        Notice { title, body }
    }
}

fn photos(n: usize) -> String {
    format!("{n} photo{}", if n == 1 { "" } else { "s" })
}

fn wait(n: usize) -> String {
    format!("{} wait{}", photos(n), if n == 1 { "s" } else { "" })
}

fn their(n: usize) -> &'static str {
    if n == 1 {
        "its"
    } else {
        "their"
    }
}

/// A photo's file name, as a notice names it.
fn name(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
}

fn why(path: &str, error: &str) -> String {
    format!("{}: {}", name(path), crate::control::without_path(error, path))
}

/// The one folder holding every copy's folder, unless that is the root.
fn common_folder(dirs: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    let mut dirs = dirs.iter();
    let mut common = dirs.next()?.clone();
    for d in dirs {
        while !d.starts_with(&common) {
            if !common.pop() {
                return None;
            }
        }
    }
    (common.parent().is_some()).then_some(common)
}

fn shorten(line: &str) -> String {
    if line.chars().count() <= LINE {
        line.to_string()
    } else {
        line.chars().take(LINE - 1).chain(['…']).collect()
    }
}

/// Where notices go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// `notify-send` (libnotify) at this path.
    NotifySend(PathBuf),
    /// macOS's `osascript`, `display notification`.
    Osascript,
    /// `notify.command`: the program and its first arguments.
    Command { program: PathBuf, args: Vec<String> },
}

impl Sink {
    /// The notifier `config` asks for, or why there is none.
    pub fn choose(config: &NotifyConfig) -> Result<Sink, String> {
        if let Some((program, args)) = config.command.split_first() {
            return Ok(Sink::Command { program: program.into(), args: args.to_vec() });
        }
        if cfg!(target_os = "macos") {
            return Ok(Sink::Osascript);
        }
        find_program("notify-send").map(Sink::NotifySend).ok_or_else(|| {
            "notify-send is not installed (Debian/Ubuntu: apt install libnotify-bin); \
             or set notify.command, or notify.when = \"off\""
                .to_string()
        })
    }

    /// The program that shows the notices.
    pub fn program(&self) -> &Path {
        match self {
            Sink::NotifySend(program) | Sink::Command { program, .. } => program,
            Sink::Osascript => Path::new("osascript"),
        }
    }

    /// The program to run for `n`, and its arguments.
    pub fn command(&self, n: &Notice) -> (PathBuf, Vec<String>) {
        match self {
            Sink::NotifySend(program) => {
                // Notification servers read the text as markup.
                let body = n.body.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
                (program.clone(), vec!["--app-name=Veil".into(), format!("Veil: {}", n.title), body])
            }
            Sink::Osascript => {
                let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
                let script = format!(
                    "display notification {} with title \"Veil\" subtitle {}",
                    quoted(&n.body),
                    quoted(&n.title)
                );
                (self.program().into(), vec!["-e".into(), script])
            }
            Sink::Command { program, args } => {
                let mut args = args.clone();
                args.extend([n.title.clone(), n.body.clone()]);
                (program.clone(), args)
            }
        }
    }

    /// Runs the notifier for `n`; `Err` says why it failed.
    pub fn tell(&self, n: &Notice) -> Result<(), String> {
        let (program, args) = self.command(n);
        let shown = program.display().to_string();
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {shown}: {e}"))?;
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() < PROGRAM_LIMIT => std::thread::sleep(Duration::from_millis(50)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{shown} did not finish in {} s: stopped", PROGRAM_LIMIT.as_secs()));
                }
                Err(e) => return Err(format!("{shown}: {e}")),
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.by_ref().take(4096).read_to_string(&mut err);
        }
        let err = err.trim();
        Err(format!("{shown} failed ({status}){}{err}", if err.is_empty() { "" } else { ": " }))
    }
}

/// `name` on the `PATH`, as an executable file.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// How the notifier fares, for `veil status`: the notifier in use and whether the last notice was
/// shown. Cloned handles share it.
#[derive(Debug, Clone, Default)]
pub struct Health(std::sync::Arc<std::sync::Mutex<HealthState>>);

#[derive(Debug, Default)]
struct HealthState {
    /// `batches through /usr/bin/notify-send`, `off`, or why there is no notifier.
    setup: String,
    /// Why the last notice was not shown, if it was not.
    failed: Option<String>,
}

impl Health {
    /// One line: the notifier, and why the last notice was not shown if it was not.
    pub fn describe(&self) -> String {
        let Ok(h) = self.0.lock() else { return "unknown".into() };
        match &h.failed {
            Some(e) => format!("{}; the last notification was not shown: {e}", h.setup),
            None => h.setup.clone(),
        }
    }

    fn set_up(&self, setup: String) {
        if let Ok(mut h) = self.0.lock() {
            h.setup = setup;
            h.failed = None;
        }
    }

    /// Records how the last notice went; returns whether the one before had failed too.
    fn shown(&self, result: Result<(), String>) -> bool {
        let Ok(mut h) = self.0.lock() else { return false };
        let before = h.failed.is_some();
        h.failed = result.err();
        before
    }
}

/// Tells the user's desktop about the daemon's batches until the event stream closes. `config` is
/// the `[notify]` section, sent again when the configuration is reloaded; `health` is kept up to
/// date for `veil status`.
pub async fn run(
    mut events: broadcast::Receiver<Event>,
    mut config: watch::Receiver<NotifyConfig>,
    health: Health,
) {
    let mut batch = Batch::default();
    let mut last_event = tokio::time::Instant::now();
    let mut sink = choose(&config.borrow(), None, &health);
    let mut config_open = true;
    loop {
        let c = config.borrow().clone();
        // A batch with nothing to tell under `c.when` is let go all the same, so the next one
        // starts empty.
        let due = batch.has_news(NotifyWhen::Batches).then(|| {
            last_event + if batch.busy() { STALL } else { Duration::from_secs_f64(c.quiet_seconds.get()) }
        });
        tokio::select! {
            e = events.recv() => {
                match e {
                    Ok(e) if e.path.is_none() && e.event == STOPPING => {
                        // The last word: what is done is told now, not after `quiet_seconds`.
                        batch.see(&e);
                        if let (Some(notice), Some(sink)) = (batch.take(c.when), sink) {
                            let health = health.clone();
                            let _ = tokio::task::spawn_blocking(move || tell(&sink, &notice, &health)).await;
                        }
                        return;
                    }
                    Ok(e) => batch.see(&e),
                    Err(broadcast::error::RecvError::Lagged(_)) => batch.lost(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                last_event = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(due.unwrap_or(last_event)), if due.is_some() => {
                if let (Some(notice), Some(sink)) = (batch.take(c.when), &sink) {
                    let (sink, health) = (sink.clone(), health.clone());
                    // The program runs off the runtime, and nothing waits for it.
                    std::thread::spawn(move || tell(&sink, &notice, &health));
                }
            }
            changed = config.changed(), if config_open => {
                // Closed once the core has stopped: the last events (`STOPPING`) are still to come.
                config_open = changed.is_ok();
                if config_open {
                    sink = choose(&config.borrow(), sink.as_ref(), &health);
                }
            }
        }
    }
}

/// The notifier `config` sets up (none when off or missing), and how `veil doctor` and `veil status`
/// word it.
pub fn setup(config: &NotifyConfig) -> (Option<Sink>, String) {
    if config.when == NotifyWhen::Off {
        return (None, "off (notify.when = \"off\")".into());
    }
    match Sink::choose(config) {
        Ok(sink) => {
            let setup = format!("{} through {}", config.when, sink.program().display());
            (Some(sink), setup)
        }
        Err(why) => (None, format!("no desktop notifications: {why}")),
    }
}

/// The sink for `config`, told in the log when it changes (or there is none) and in `health`.
fn choose(config: &NotifyConfig, before: Option<&Sink>, health: &Health) -> Option<Sink> {
    let (sink, setup) = setup(config);
    match &sink {
        Some(s) if before != Some(s) => tracing::debug!("desktop notifications: {setup}"),
        None if config.when != NotifyWhen::Off => tracing::info!("{setup}"),
        _ => {}
    }
    health.set_up(setup);
    sink
}

fn tell(sink: &Sink, notice: &Notice, health: &Health) {
    let result = sink.tell(notice);
    let failing_before = health.shown(result.clone());
    match result {
        Ok(()) => tracing::debug!("told the desktop: {}", notice.title),
        Err(e) if failing_before => tracing::debug!("desktop notification: {e}"),
        Err(e) => {
            tracing::warn!("desktop notification not shown: {e} (notify.when = \"off\" turns them off)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: &str, path: &str) -> Event {
        Event::new(event, Some(Path::new(path)))
    }

    fn done(path: &str, output: &str, faces: u32) -> Event {
        Event { output: Some(output.into()), faces: Some(faces), ..event("done", path) }
    }

    fn failed(path: &str, error: &str) -> Event {
        Event { error: Some(error.into()), ..event("failed", path) }
    }

    fn see(b: &mut Batch, events: &[Event]) {
        events.iter().for_each(|e| b.see(e));
    }

    #[test]
    fn a_batch_is_told_once_every_photo_that_came_is_done_with_what_failed_and_why() {
        let mut b = Batch::default();
        see(
            &mut b,
            &[
                event("queued", "/in/a.jpg"),
                event("queued", "/in/b.jpg"),
                event("queued", "/in/sky.jpg"),
                event("queued", "/in/cut.jpg"),
                event("running", "/in/a.jpg"),
                done("/in/a.jpg", "/out/a.jpg", 1),
            ],
        );
        assert!(b.busy() && b.has_news(NotifyWhen::Batches));
        see(
            &mut b,
            &[
                event("running", "/in/b.jpg"),
                done("/in/b.jpg", "/out/trip/b.jpg", 2),
                event("running", "/in/sky.jpg"),
                done("/in/sky.jpg", "/out/sky.jpg", 0),
                Event {
                    error: Some("/in/cut.jpg: truncated JPEG".into()),
                    ..event("retrying", "/in/cut.jpg")
                },
            ],
        );
        assert!(b.busy(), "a photo tried again is still coming");
        b.see(&failed("/in/cut.jpg", "/in/cut.jpg: truncated JPEG (the file ends inside the image data)"));
        assert!(!b.busy());
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "2 photos protected, 1 could not be");
        assert_eq!(
            n.body,
            "1 had no face and was copied unchanged\nCopies in /out\n\
             cut.jpg: truncated JPEG (the file ends inside the image data)"
        );
        // Told: the next batch starts empty.
        assert!(!b.has_news(NotifyWhen::Batches) && b.take(NotifyWhen::Batches).is_none());
    }

    #[test]
    fn what_is_told_follows_notify_when() {
        let mut b = Batch::default();
        see(&mut b, &[event("running", "/in/a.jpg"), done("/in/a.jpg", "/out/a.jpg", 1)]);
        assert!(!b.has_news(NotifyWhen::Errors) && !b.has_news(NotifyWhen::Off));
        assert_eq!(b.take(NotifyWhen::Errors), None, "nothing failed");
        assert!(!b.has_news(NotifyWhen::Batches), "the batch was let go");
        b.see(&failed("/in/x.png", "/in/x.png: unsupported format"));
        assert!(b.has_news(NotifyWhen::Errors) && !b.has_news(NotifyWhen::Off));
        let n = b.take(NotifyWhen::Errors).unwrap();
        assert_eq!(
            (n.title.as_str(), n.body.as_str()),
            ("1 photo could not be protected", "x.png: unsupported format")
        );
    }

    #[test]
    fn renames_skips_and_removals_are_not_protections() {
        let mut b = Batch::default();
        see(
            &mut b,
            &[
                // A rename takes its copy along: `done` without the engine.
                done("/in/beach.jpg", "/out/beach.jpg", 1),
                event("queued", "/in/copy.jpg"),
                Event { error: Some("already protected".into()), ..event("skipped", "/in/copy.jpg") },
                event("queued", "/in/gone.jpg"),
                event("removed", "/in/gone.jpg"),
            ],
        );
        assert!(!b.busy() && !b.has_news(NotifyWhen::Batches));
    }

    #[test]
    fn a_photo_waiting_for_its_output_folder_is_told_once_and_no_face_alone_is_said_so() {
        let mut b = Batch::default();
        let wait = |p: &str| Event {
            error: Some(format!("{p}: cannot write to /media/usb/Protected: not there")),
            ..event("waiting", p)
        };
        see(
            &mut b,
            &[
                event("running", "/in/a.jpg"),
                wait("/in/a.jpg"),
                event("running", "/in/b.jpg"),
                wait("/in/b.jpg"),
            ],
        );
        let n = b.take(NotifyWhen::Errors).unwrap();
        assert_eq!(n.title, "2 photos wait for their output folder");
        assert_eq!(n.body, "a.jpg waits for its output folder (1 more waits): cannot write to /media/usb/Protected: not there");
        // Tried again 5 minutes later, still waiting: not told again.
        see(&mut b, &[event("running", "/in/a.jpg"), wait("/in/a.jpg")]);
        assert!(!b.has_news(NotifyWhen::Errors));
        // Once written, a later wait is news again.
        see(&mut b, &[event("running", "/in/a.jpg"), done("/in/a.jpg", "/media/usb/Protected/a.jpg", 0)]);
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "No face found in 1 photo");
        assert_eq!(n.body, "It was copied unchanged: Veil protects faces\nCopies in /media/usb/Protected");
    }

    #[test]
    fn many_failures_are_counted_long_lines_cut_and_lost_events_wait_for_nothing() {
        let mut b = Batch::default();
        for i in 0..5 {
            b.see(&failed(&format!("/in/{i}.jpg"), &format!("/in/{i}.jpg: {}", "x".repeat(300))));
        }
        let n = b.take(NotifyWhen::Batches).unwrap();
        let lines: Vec<&str> = n.body.lines().collect();
        assert_eq!(lines.len(), 4, "{}", n.body);
        assert!(
            lines[0].starts_with("0.jpg: xxx") && lines[0].chars().count() == LINE && lines[0].ends_with('…')
        );
        assert_eq!(lines[3], "and 2 more: `veil jobs --status failed`");
        // A pause, or events lost, leaves nothing waited for.
        b.see(&event("queued", "/in/z.jpg"));
        b.lost();
        assert!(!b.busy());
        b.see(&event("queued", "/in/z.jpg"));
        b.see(&Event::new("paused", None));
        assert!(!b.busy());
    }

    #[test]
    fn photos_held_for_the_charger_are_told_once_and_the_photo_in_the_engine_still_counts() {
        let mut b = Batch::default();
        see(
            &mut b,
            &[event("queued", "/in/a.jpg"), event("running", "/in/a.jpg"), event("queued", "/in/b.jpg")],
        );
        let battery =
            Event { error: Some("new photos wait for the charger".into()), ..Event::new("battery", None) };
        b.see(&battery);
        // a finishes; b waits: the batch is not held up by it.
        b.see(&done("/in/a.jpg", "/out/a.jpg", 1));
        b.see(&event("queued", "/in/c.jpg"));
        assert!(!b.busy());
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "1 photo protected");
        assert_eq!(n.body, "Copies in /out\n2 photos wait for the charger: the computer runs on battery");
        // Told once; a new one is news again, and alone it is the title.
        assert!(!b.has_news(NotifyWhen::Batches));
        b.see(&event("queued", "/in/d.jpg"));
        assert!(!b.has_news(NotifyWhen::Errors), "waiting for the charger is no error");
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "1 photo waits for the charger");
        assert_eq!(
            n.body,
            "The computer runs on battery: it is protected once it is plugged in (`veil add PHOTO` protects one now)"
        );
        // `veil add` runs one on battery; the charger brings the others back as a batch.
        see(&mut b, &[event("running", "/in/d.jpg"), done("/in/d.jpg", "/out/d.jpg", 2)]);
        b.see(&Event::new("mains", None));
        assert!(b.busy(), "b and c are coming");
        see(&mut b, &[event("running", "/in/b.jpg"), done("/in/b.jpg", "/out/b.jpg", 1)]);
        see(&mut b, &[event("running", "/in/c.jpg"), done("/in/c.jpg", "/out/c.jpg", 1)]);
        assert!(!b.busy());
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!((n.title.as_str(), n.body.as_str()), ("3 photos protected", "Copies in /out"));
    }

    #[test]
    fn a_daemon_stopping_mid_batch_tells_what_it_did_and_what_waits() {
        let mut b = Batch::default();
        see(
            &mut b,
            &[
                event("queued", "/in/a.jpg"),
                event("queued", "/in/b.jpg"),
                event("queued", "/in/c.jpg"),
                event("running", "/in/a.jpg"),
                done("/in/a.jpg", "/out/a.jpg", 1),
                event("running", "/in/b.jpg"),
            ],
        );
        b.see(&Event::new(STOPPING, None));
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "1 photo protected");
        assert_eq!(n.body, "Copies in /out\nveild stopped: 2 photos are protected when it starts again");
        // Stopping with nothing done is no news.
        let mut b = Batch::default();
        see(&mut b, &[event("queued", "/in/a.jpg"), Event::new(STOPPING, None)]);
        assert!(b.take(NotifyWhen::Batches).is_none());
    }

    #[test]
    fn a_protected_copy_put_back_is_told_as_not_protected_twice() {
        let mut b = Batch::default();
        let own = |p: &str| Event {
            error: Some(format!(
                "{p}: {} (from /in/a.jpg): protecting it twice would double its noise",
                crate::store::OWN_COPY
            )),
            ..event("skipped", p)
        };
        // A duplicate of a photo is not news; a copy of Veil's is.
        b.see(&Event {
            error: Some("/in/b.jpg: same content as /in/a.jpg".into()),
            ..event("skipped", "/in/b.jpg")
        });
        assert!(!b.has_news(NotifyWhen::Batches));
        b.see(&own("/in/shared.jpg"));
        assert!(b.has_news(NotifyWhen::Batches) && !b.has_news(NotifyWhen::Errors));
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "1 copy was protected already");
        assert_eq!(n.body, "shared.jpg: a copy Veil protected already, not protected twice");
        see(&mut b, &[event("running", "/in/c.jpg"), done("/in/c.jpg", "/out/c.jpg", 1), own("/in/x.jpg")]);
        let n = b.take(NotifyWhen::Batches).unwrap();
        assert_eq!(n.title, "1 photo protected");
        assert_eq!(n.body, "Copies in /out\nx.jpg: a copy Veil protected already, not protected twice");
    }

    #[test]
    fn copies_in_several_folders_are_named_by_the_folder_holding_them() {
        let set = |dirs: &[&str]| dirs.iter().map(PathBuf::from).collect::<BTreeSet<_>>();
        assert_eq!(common_folder(&set(&["/o/a", "/o/a/b", "/o/c"])), Some(PathBuf::from("/o")));
        assert_eq!(common_folder(&set(&["/o/a"])), Some(PathBuf::from("/o/a")));
        assert_eq!(common_folder(&set(&["/o/a", "/p/b"])), None);
        assert_eq!(common_folder(&set(&[])), None);
    }

    #[test]
    fn each_notifier_gets_the_title_and_text_in_its_own_form() {
        let n = Notice { title: "1 photo protected".into(), body: "Copies in /home/ann/R&D <2026>".into() };
        let (p, args) = Sink::NotifySend("/usr/bin/notify-send".into()).command(&n);
        assert_eq!(p, PathBuf::from("/usr/bin/notify-send"));
        assert_eq!(
            args,
            ["--app-name=Veil", "Veil: 1 photo protected", "Copies in /home/ann/R&amp;D &lt;2026&gt;"]
        );
        let q = Notice { title: "say \"hi\"".into(), body: "a\\b".into() };
        let (p, args) = Sink::Osascript.command(&q);
        assert_eq!(p, PathBuf::from("osascript"));
        assert_eq!(
            args[1],
            "display notification \"a\\\\b\" with title \"Veil\" subtitle \"say \\\"hi\\\"\""
        );
        let config = NotifyConfig { command: vec!["ntfy".into(), "send".into()], ..NotifyConfig::default() };
        let (p, args) = Sink::choose(&config).unwrap().command(&n);
        assert_eq!((p, args), (PathBuf::from("ntfy"), vec!["send".into(), n.title.clone(), n.body.clone()]));
    }

    #[test]
    fn a_notifier_that_fails_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("told");
        let script = format!("printf '%s|%s' \"$1\" \"$2\" > {}", log.display());
        let n = Notice { title: "t".into(), body: "b".into() };
        let sink = Sink::Command { program: "sh".into(), args: vec!["-c".into(), script, "sh".into()] };
        sink.tell(&n).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "t|b");
        let fails = Sink::Command {
            program: "sh".into(),
            args: vec!["-c".into(), "echo 'Cannot autolaunch D-Bus' >&2; exit 1".into(), "sh".into()],
        };
        let e = fails.tell(&n).unwrap_err();
        assert!(e.starts_with("sh failed (exit status: 1): Cannot autolaunch D-Bus"), "{e}");
        let missing = Sink::Command { program: dir.path().join("nothing"), args: vec![] };
        assert!(missing.tell(&n).unwrap_err().starts_with("cannot run "), "no such program");
    }

    #[test]
    fn health_says_the_notifier_and_why_the_last_notice_was_not_shown() {
        let h = Health::default();
        let off = NotifyConfig { when: NotifyWhen::Off, ..NotifyConfig::default() };
        assert_eq!(choose(&off, None, &h), None);
        assert_eq!(h.describe(), "off (notify.when = \"off\")");
        let mine = NotifyConfig { command: vec!["/bin/tell".into()], ..NotifyConfig::default() };
        assert!(choose(&mine, None, &h).is_some());
        assert!(!h.shown(Err("/bin/tell failed (exit status: 1)".into())));
        assert_eq!(h.describe(), "batches through /bin/tell; the last notification was not shown: /bin/tell failed (exit status: 1)");
        assert!(h.shown(Ok(())), "the one before had failed");
        assert_eq!(h.describe(), "batches through /bin/tell");
    }

    #[tokio::test]
    async fn the_notifier_tells_a_batch_after_the_quiet_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("told");
        let script = format!("printf '%s\\n' \"$1\" >> {}", log.display());
        let config = NotifyConfig {
            quiet_seconds: 1.0.try_into().unwrap(),
            command: vec!["sh".into(), "-c".into(), script, "sh".into()],
            ..NotifyConfig::default()
        };
        let (events, rx) = broadcast::channel(16);
        let (_config, config_rx) = watch::channel(config);
        let health = Health::default();
        let task = tokio::spawn(run(rx, config_rx, health.clone()));
        for e in
            [event("running", "/in/a.jpg"), done("/in/a.jpg", "/out/a.jpg", 1), event("queued", "/in/b.jpg")]
        {
            events.send(e).unwrap();
        }
        // Not while b.jpg is coming.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!log.exists());
        events.send(event("running", "/in/b.jpg")).unwrap();
        events.send(done("/in/b.jpg", "/out/b.jpg", 3)).unwrap();
        let start = Instant::now();
        while !log.exists() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "2 photos protected\n");
        assert_eq!(health.describe(), "batches through sh");
        drop(events);
        task.await.unwrap();
    }
}
