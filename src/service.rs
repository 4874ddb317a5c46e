//! `veild`'s service: takes a resolved configuration and a shutdown future, prepares the folders,
//! reports what it runs on, then watches the share folders and protects every new photo once.
//!
//! Three parts: the async runtime only waits for signals (SIGHUP reloads the configuration) and pings
//! the systemd watchdog; the core thread ([`Core`]) owns the job database, scans and settles files
//! and feeds the engine thread ([`crate::worker`]), which owns libtorch.
//!
//! It is a library function so that tests can run it in a temporary home with their own shutdown;
//! the `veild` binary only wires it to the process's signals.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{Config, FolderConfig, OnBattery, Source},
    control::{self, server, ApiError, Command, Event, Reply},
    desktop,
    engine::{self, EngineError},
    imageio,
    models::{Inventory, Role},
    pipeline,
    power::{self, Power},
    store::{self, Finish, Observed, Status, Store, StoreError},
    systemd,
    watch::{self, Filter, Hint, Watcher},
    worker::{self, ErrorKind, Job, Report, Worker, WorkerError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Device(#[from] EngineError),
    #[error("cannot create folder {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("the engine probe stopped unexpectedly: {0}")]
    Probe(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error("another veild already runs for this user (pid {pid}, lock {}, socket {}); stop it first \
             (`systemctl --user stop veil`, or `kill {pid}`)", lock.display(), socket.display())]
    Running { lock: PathBuf, socket: PathBuf, pid: String },
    #[error("cannot lock the state folder {} (lock {}): {source}", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Control(#[from] server::ControlError),
    #[error("cannot start listening for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// Why a file skipped as a twin of another is queued after all: that one went before it was
/// protected (renamed, moved or deleted).
const ORPHAN: &str =
    "the file with the same content it was waiting for went before it was protected: protected on its own";
/// How long a stopping service waits for the photo being protected before it requeues it.
const STOP_GRACE: Duration = Duration::from_secs(8);
/// Jobs waiting for the engine thread at most.
const QUEUE: usize = 4;

/// Reads the configuration again (on SIGHUP): the new one, resolved, or why it is invalid.
pub type Reload = Box<dyn FnMut() -> Result<(Config, Source), String> + Send>;

/// Runs the service until `shutdown` completes. `config` must be resolved ([`Config::resolve`]);
/// `reload` reads it again when SIGHUP arrives.
pub async fn run(
    config: Config,
    source: Source,
    shutdown: impl Future<Output = ()>,
    mut reload: Reload,
) -> Result<(), ServiceError> {
    tracing::info!("veild {} starting", env!("CARGO_PKG_VERSION"));
    tracing::info!("config: {source}");

    // Loading libtorch's CUDA half and the model files blocks for a moment: keep it off the runtime.
    let device_choice = config.engine.device;
    let models_dir = config.models.dir.clone().unwrap_or_default();
    let (device, inventory) = tokio::task::spawn_blocking(move || {
        engine::select_device(device_choice).map(|d| (engine::describe(d), Inventory::take(&models_dir)))
    })
    .await
    .map_err(|e| ServiceError::Probe(e.to_string()))??;
    tracing::info!("device: {device} (engine.device = \"{device_choice}\")");
    log_models(&inventory);

    let models = loaded_models(&inventory);
    let state_dir = config.paths.state_dir.clone().unwrap_or_default();
    let socket = config.paths.socket.clone().unwrap_or_default();
    let _lock = lock(&state_dir, &socket)?;
    let listener = server::Listener::bind(&socket)?;
    let (store, recovered) = Store::open(&state_dir)?;
    create_folders(&config.folders, &store)?.keep(&store);
    if config.folders.is_empty() {
        tracing::warn!("no folders configured: nothing to watch");
    }

    if recovered > 0 {
        tracing::warn!("{recovered} photo(s) were being protected when veild last stopped: queued again");
    }
    // A database from a veild that left twins waiting for a photo renamed away before it was
    // protected. Not a reason not to start: they are looked at again after the next gone photo.
    match store.adopt_orphans() {
        Ok(queued) => queued.iter().for_each(|path| tracing::info!("{}: {ORPHAN}", path.display())),
        Err(e) => tracing::warn!("{e}"),
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let reports = tx.clone();
    let engine_config = config.clone();
    let told = tx.clone();
    let worker = tokio::task::spawn_blocking(move || {
        Worker::start(
            QUEUE,
            move || {
                let protector = worker::protector(&engine_config)?;
                if let Some(reason) = protector.unavailable() {
                    // For `veil status`, which would otherwise call the daemon idle.
                    let _ = told.send(Msg::Unavailable(reason.to_string()));
                }
                Ok(protector)
            },
            move |r| {
                let _ = reports.send(Msg::Report(r));
            },
        )
    })
    .await
    .map_err(|e| ServiceError::Probe(e.to_string()))??;

    let (events, _) = tokio::sync::broadcast::channel::<Event>(1024);
    let (notify, notify_config) = tokio::sync::watch::channel(config.notify.clone());
    let notifier = desktop::Health::default();
    let notifier_task = tokio::spawn(desktop::run(events.subscribe(), notify_config, notifier.clone()));
    let info = Info { device, models, started: Instant::now(), events: events.clone(), notify, notifier };
    let core = Core::new(config, store, worker, tx.clone(), info)?;
    let core = std::thread::Builder::new()
        .name("veil-core".into())
        .spawn(move || core.run(rx))
        .map_err(|e| ServiceError::Probe(e.to_string()))?;
    // Reloads are heard from before readiness is announced: a SIGHUP right after READY must not hit
    // the default action (terminate).
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signal)?;
    let (reload_tx, mut reload_rx) =
        tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<Reply>>();
    let to_core = std::sync::Mutex::new(tx.clone());
    let handle = server::Handle {
        core: std::sync::Arc::new(move |command, reply| {
            to_core.lock().is_ok_and(|tx| tx.send(Msg::Control(command, reply)).is_ok())
        }),
        reload: reload_tx,
        events: events.clone(),
    };
    let control = tokio::spawn(server::serve(listener, handle));
    systemd::notify("READY=1\nSTATUS=watching");
    tracing::info!("ready");

    let watchdog = systemd::watchdog_period().map(|period| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        })
    });

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                if let Err(e) = reload_config(&mut reload, &tx, None) {
                    tracing::error!("{e}");
                }
            }
            Some(reply) = reload_rx.recv() => {
                tracing::info!("reload asked on the control socket: reloading the configuration");
                if let Err(e) = reload_config(&mut reload, &tx, Some(reply)) {
                    tracing::error!("{e}");
                }
            }
        }
    }
    tracing::info!("shutting down");
    systemd::notify("STOPPING=1");
    control.abort();
    // The socket file goes with the listener, once the aborted task is dropped.
    let _ = control.await;
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = tx.send(Msg::Shutdown);
    let _ = tokio::task::spawn_blocking(move || core.join()).await;
    // Photos done since the last notification are told before veild goes, not lost with it.
    let _ = events.send(Event::new(desktop::STOPPING, None));
    let mut notifier_task = notifier_task;
    if tokio::time::timeout(desktop::LAST_WORD, &mut notifier_task).await.is_err() {
        notifier_task.abort();
    }
    Ok(())
}

/// Reads the configuration again and hands it to the core, which answers `reply` once applied; an
/// invalid one is answered (and returned) at once.
fn reload_config(
    reload: &mut Reload,
    tx: &mpsc::Sender<Msg>,
    reply: Option<tokio::sync::oneshot::Sender<Reply>>,
) -> Result<(), String> {
    match reload() {
        Ok((config, source)) => {
            tracing::info!("config: {source}");
            let _ = tx.send(Msg::Reload(Box::new(config), reply));
            Ok(())
        }
        Err(e) => {
            let message = format!("the new configuration is invalid, keeping the old one: {e}");
            if let Some(reply) = reply {
                let _ = reply.send(Err(ApiError::new(422, message.clone())));
            }
            Err(message)
        }
    }
}

/// The detector and the `ensemble` generators that loaded: what the engine runs, for `veil status`.
/// Holdouts only judge `veil eval`; the daemon never loads them.
fn loaded_models(inventory: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    if inventory.detector_ready() {
        out.push("mtcnn".to_string());
    }
    if let Ok(models) = &inventory.generators {
        out.extend(
            models.iter().filter(|(e, l)| l.is_ok() && e.role == Role::Ensemble).map(|(e, _)| e.name.clone()),
        );
    }
    out
}

/// Checks the folders of a configuration, then makes those missing that are new; [`Made::keep`]
/// takes them on once the configuration is, [`Made::undo`] removes what was made when it is refused
/// after all, so a configuration refused has no effect on the disk, even when one of its folders
/// cannot be made after others were. A folder that was there at an earlier start or reload (the
/// store remembers) and is missing now is gone, not new: its drive may not be mounted yet, and a
/// folder made in its place would fill the wrong disk and be hidden once the drive is mounted. It
/// is left missing: a watched folder is watched once it is back, an output's photos wait for it.
fn create_folders<'a>(folders: &'a [FolderConfig], store: &Store) -> Result<Made<'a>, ServiceError> {
    for folder in folders {
        watch::check_output(folder)?;
    }
    watch::check_outputs(folders)?;
    let mut made = Made { folders, dirs: Vec::new(), there: Vec::new() };
    for folder in folders {
        for dir in [&folder.path, &folder.output] {
            if !dir.exists() {
                // Not knowing is not "new": a folder made on the wrong disk is the harm avoided.
                let was_there = store.folder_was_there(dir).unwrap_or_else(|e| {
                    tracing::warn!("{e}");
                    true
                });
                if was_there {
                    tracing::warn!(
                        "{} was there before and is missing now (deleted, or its drive not mounted): \
                         not made again; Veil goes on once it is back",
                        dir.display()
                    );
                    continue;
                }
                if let Err(source) = made.make(dir) {
                    made.undo();
                    return Err(ServiceError::Folder { path: dir.clone(), source });
                }
            }
            made.there.push(dir.clone());
        }
    }
    Ok(made)
}

/// What [`create_folders`] made, and the folders it found or made there.
#[must_use = "keep or undo the folders made"]
struct Made<'a> {
    folders: &'a [FolderConfig],
    /// Every folder made, parents before their children.
    dirs: Vec<PathBuf>,
    there: Vec<PathBuf>,
}

impl Made<'_> {
    /// Makes `dir` and the parents it lacks, noting each.
    fn make(&mut self, dir: &Path) -> std::io::Result<()> {
        let missing: Vec<PathBuf> =
            dir.ancestors().take_while(|a| !a.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(dir)?;
        self.dirs.extend(missing.into_iter().rev());
        Ok(())
    }

    /// Removes the folders made, children first; one that holds something by now stays.
    fn undo(self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// The configuration is taken: its folders are remembered as there, and Veil's unfinished
    /// temporary files are cleared from its outputs.
    fn keep(self, store: &Store) {
        for dir in &self.there {
            if let Err(e) = store.folder_is_there(dir) {
                tracing::warn!("{e}");
            }
        }
        for folder in self.folders {
            let stale = watch::remove_stale_temporaries(&folder.output);
            if stale > 0 {
                tracing::info!(
                    "removed {stale} unfinished temporary file(s) from {}",
                    folder.output.display()
                );
            }
            tracing::info!(
                "share folder {} -> protected copies in {}",
                folder.path.display(),
                folder.output.display()
            );
        }
    }
}

/// Holds an exclusive `flock` on `veild.lock` in the state folder while the service runs; the file
/// holds the pid, so that a second `veild` can name the first.
fn lock(state_dir: &Path, socket: &Path) -> Result<std::fs::File, ServiceError> {
    let path = state_dir.join("veild.lock");
    store::create_state_dir(state_dir)
        .map_err(|source| ServiceError::Folder { path: state_dir.into(), source })?;
    server::lock_pid_file(&path).map_err(|e| match e {
        None => ServiceError::Running {
            lock: path.clone(),
            socket: socket.into(),
            pid: server::lock_holder(&path),
        },
        Some(source) => ServiceError::Locked { dir: state_dir.into(), lock: path.clone(), source },
    })
}

enum Msg {
    Hint {
        folder: PathBuf,
        hint: Hint,
    },
    Report(Report),
    /// A configuration read again; the reply, when the control socket asked.
    Reload(Box<Config>, Option<tokio::sync::oneshot::Sender<Reply>>),
    Control(Command, tokio::sync::oneshot::Sender<Reply>),
    /// The engine could not load its models: no photo can be protected (the reason).
    Unavailable(String),
    Shutdown,
}

/// What the core reports about the service on the control socket.
struct Info {
    device: String,
    models: Vec<String>,
    started: Instant,
    events: tokio::sync::broadcast::Sender<Event>,
    /// The `[notify]` section for the desktop notifier, sent again on a reload.
    notify: tokio::sync::watch::Sender<crate::config::NotifyConfig>,
    /// How the desktop notifier fares, for `veil status`.
    notifier: desktop::Health,
}

/// Errors `veil status` shows.
const LAST_ERRORS: usize = 10;

/// A watched folder.
struct Folder {
    config: FolderConfig,
    filter: Filter,
    /// `None`: polled.
    watcher: Option<Watcher>,
    next_poll: Option<Instant>,
    /// Why it is polled although events were asked for, or why it is not watched at all.
    watch_error: Option<String>,
    /// What was told when it went away, taken back from the last errors when it is back.
    told_gone: Option<String>,
    /// The folder's (device, inode) when it was last found; `None`: it is gone (deleted, moved
    /// away, its drive unmounted). Another one at the same path (made again, mounted again) is
    /// watched anew.
    id: Option<(u64, u64)>,
}

/// A file seen but not yet stable.
struct Candidate {
    folder: PathBuf,
    seen: store::Seen,
    since: Instant,
}

/// The core thread: owns the job database, the folders and the queue to the engine.
struct Core {
    config: Config,
    store: Store,
    worker: Worker,
    tx: mpsc::Sender<Msg>,
    folders: Vec<Folder>,
    candidates: HashMap<PathBuf, Candidate>,
    busy: Vec<PathBuf>,
    next_rescan: Instant,
    /// When the folders are next looked at (are they still there, still the same?).
    next_check: Instant,
    last_error: Option<String>,
    status: String,
    info: Info,
    paused: bool,
    errors: VecDeque<control::ErrorEntry>,
    /// What was told of a photo among the last errors (that it failed, or waits for its output
    /// folder), taken back once it is written, skipped or deleted: `veil status` shows what is wrong
    /// now.
    told: HashMap<PathBuf, Told>,
    /// Folders a scan could not read, with what was told of each.
    unreadable: HashMap<PathBuf, String>,
    /// The job database could not be written (its disk full, …): what was told (once), and when
    /// it is tried again. Meanwhile new photos stay candidates and nothing is dispatched.
    store_trouble: Option<StoreTrouble>,
    /// The last refusal of a new configuration, taken back from the last errors once one is applied.
    refused: Option<String>,
    /// Where the computer's power came from when last looked (with the folders).
    power: Power,
    /// Whether new photos were last held for the charger ([`Core::held`]): a change is logged and
    /// sent as an event.
    was_held: bool,
    /// Photos asked for by hand (`veil add`, `veil retry`) until they are finished: the battery
    /// does not hold them.
    asked: HashSet<PathBuf>,
}

struct StoreTrouble {
    told: String,
    retry_at: Instant,
}

/// A photo's message among the last errors.
enum Told {
    /// Its output folder could not take it: told once, then tried again quietly.
    Waiting(String),
    /// Quarantined until the file changes or `veil retry`.
    Failed(String),
}

impl Told {
    fn message(&self) -> &str {
        match self {
            Told::Waiting(m) | Told::Failed(m) => m,
        }
    }
}

impl Core {
    fn new(
        config: Config,
        store: Store,
        worker: Worker,
        tx: mpsc::Sender<Msg>,
        info: Info,
    ) -> Result<Core, ServiceError> {
        let rescan = rescan_period(&config);
        let mut core = Core {
            config,
            store,
            worker,
            tx,
            folders: Vec::new(),
            candidates: HashMap::new(),
            busy: Vec::new(),
            next_rescan: Instant::now() + rescan,
            next_check: Instant::now(),
            last_error: None,
            status: String::new(),
            info,
            paused: false,
            errors: VecDeque::new(),
            told: HashMap::new(),
            unreadable: HashMap::new(),
            store_trouble: None,
            refused: None,
            power: Power::now(),
            was_held: false,
            asked: HashSet::new(),
        };
        core.update_hold();
        let folders = core.config.folders.clone();
        core.set_folders(&folders)?;
        Ok(core)
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        // Those there (one gone is scanned once it is back).
        let all: Vec<PathBuf> =
            self.folders.iter().filter(|f| f.id.is_some()).map(|f| f.config.path.clone()).collect();
        for root in all {
            self.scan(&root, &root.clone());
        }
        self.settle();
        self.dispatch();
        loop {
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.tick();
            self.settle();
            self.dispatch();
            self.publish_status();
        }
        self.stop(&rx);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Hint { folder, hint } => self.hint(&folder, hint),
            Msg::Report(report) => self.finish(report),
            Msg::Reload(config, reply) => {
                let result = self.reload(*config);
                if let Some(reply) = reply {
                    let _ = reply.send(result.and_then(|()| {
                        control::to_reply(&control::StateReply {
                            state: self.state().into(),
                            message: "configuration reloaded".into(),
                        })
                    }));
                }
            }
            Msg::Control(command, reply) => {
                let _ = reply.send(self.command(command));
            }
            Msg::Unavailable(reason) => self.remember(worker::cannot_protect(&reason)),
            Msg::Shutdown => {}
        }
    }

    /// Folder checks, rescans and polls that are due.
    fn tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + self.poll_period();
            self.check_folders();
            self.check_power();
        }
        let mut due = Vec::new();
        let all = now >= self.next_rescan;
        if all {
            self.next_rescan = now + rescan_period(&self.config);
        }
        let poll = self.poll_period();
        // A folder that is gone is looked for by `check_folders`, not scanned.
        for f in self.folders.iter_mut().filter(|f| f.id.is_some()) {
            match f.next_poll {
                Some(t) if t <= now => {
                    f.next_poll = Some(now + poll);
                    due.push(f.config.path.clone());
                }
                _ if all => due.push(f.config.path.clone()),
                _ => {}
            }
        }
        for root in due {
            self.scan(&root, &root.clone());
        }
    }

    fn next_wake(&self) -> Instant {
        let settle = self.settle_time();
        let mut next = self.next_rescan.min(self.next_check);
        match self.store_held() {
            // The candidates wait for the database, tried again at `at`.
            Some(at) => next = next.min(at),
            None => {
                for c in self.candidates.values() {
                    next = next.min(c.since + settle);
                }
            }
        }
        for f in &self.folders {
            if let Some(t) = f.next_poll {
                next = next.min(t);
            }
        }
        if let Ok(Some(at)) = self.store.next_retry() {
            let now_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let wait = Duration::from_secs(u64::try_from(at - now_epoch).unwrap_or(0));
            next = next.min(Instant::now() + wait);
        }
        next
    }

    fn poll_period(&self) -> Duration {
        Duration::from_secs_f64(self.config.watch.poll_seconds.get())
    }

    /// Looks whether each folder is still the one found before: one that is gone is told once (a
    /// warning and a last error) and no longer watched; one that is back, or was replaced by
    /// another at its path (made again, its drive mounted again), is watched anew and scanned.
    fn check_folders(&mut self) {
        for i in 0..self.folders.len() {
            let (root, was) = (self.folders[i].config.path.clone(), self.folders[i].id);
            let now = folder_id(&root);
            if now == was {
                continue;
            }
            match now {
                None => self.folder_gone(i),
                Some(id) => {
                    let how = if was.is_none() { "is back" } else { "was replaced by another folder" };
                    tracing::info!("the watched folder {} {how}: watching it anew", root.display());
                    let config = self.folders[i].config.clone();
                    let (watcher, next_poll, watch_error) = self.watch(&config);
                    let f = &mut self.folders[i];
                    (f.watcher, f.next_poll, f.watch_error, f.id) =
                        (watcher, next_poll, watch_error, Some(id));
                    if let Some(told) = f.told_gone.take() {
                        self.forget(&told);
                    }
                    self.scan(&root, &root);
                }
            }
        }
    }

    /// The watched folder `i` is not there: no longer watched, told once (a warning and a last
    /// error); [`Core::check_folders`] watches it anew once it is back.
    fn folder_gone(&mut self, i: usize) {
        let root = self.folders[i].config.path.clone();
        let f = &mut self.folders[i];
        f.id = None;
        f.watcher = None;
        f.next_poll = None;
        f.watch_error = Some("the folder is gone; it is watched again when it is back".into());
        self.candidates.retain(|_, c| c.folder != root);
        let told = format!(
            "the watched folder {} is gone (deleted, moved away or its drive unmounted): photos \
             put there are not protected until it is back; veild looks for it every {} s",
            root.display(),
            self.config.watch.poll_seconds.get()
        );
        self.folders[i].told_gone = Some(told.clone());
        self.warn(told);
    }

    fn settle_time(&self) -> Duration {
        Duration::from_secs_f64(self.config.watch.settle_seconds.get())
    }

    fn folder(&self, root: &Path) -> Option<&Folder> {
        self.folders.iter().find(|f| f.config.path == root)
    }

    fn hint(&mut self, root: &Path, hint: Hint) {
        let Some(folder) = self.folder(root) else { return };
        match hint {
            Hint::Rescan => {
                tracing::info!("events from {} were lost: scanning it", root.display());
                self.scan(root, root);
            }
            Hint::Paths(paths) => {
                let filter = folder.filter.clone();
                for path in paths {
                    if !filter.takes(&path) {
                        continue;
                    }
                    if path.is_dir() {
                        // A folder created or moved in: its files come with no event of their own.
                        self.scan(root, &path);
                    } else if filter.takes_file(&path) {
                        match watch::stat(&path) {
                            Some(seen) => self.candidate(root, path, seen),
                            None => self.sources_gone(root, &path, &HashSet::new()),
                        }
                    }
                }
            }
            Hint::FolderGone => self.check_folders(),
            Hint::CannotWatch(message) => {
                let poll = self.config.watch.poll_seconds.get();
                tracing::error!("{message}; polling it every {poll} s meanwhile");
                if let Some(f) = self.folders.iter_mut().find(|f| f.config.path == root) {
                    f.watcher = None;
                    f.next_poll = Some(Instant::now());
                    f.watch_error = Some(message);
                }
            }
        }
    }

    /// Scans `dir` inside the folder `root`.
    fn scan(&mut self, root: &Path, dir: &Path) {
        let Some(folder) = self.folder(root) else { return };
        let (found, unreadable) = watch::scan_all(&folder.filter, dir);
        // Sub-folders that could not be read: told once (in `veil status` too), taken back once a
        // scan reads them (or they are gone).
        let read_now: Vec<PathBuf> = self
            .unreadable
            .keys()
            .filter(|p| p.starts_with(dir) && !unreadable.iter().any(|(u, _)| p.starts_with(u)))
            .cloned()
            .collect();
        for p in read_now {
            if let Some(told) = self.unreadable.remove(&p) {
                tracing::info!("{} can be read again", p.display());
                self.forget(&told);
            }
        }
        // A folder gone during the walk is not unreadable: its files are gone with it.
        for (d, e) in unreadable.into_iter().filter(|(_, e)| e.kind() != std::io::ErrorKind::NotFound) {
            if !self.unreadable.contains_key(&d) {
                let told = format!(
                    "cannot read folder {}: {e}; the photos in it wait until it can be read",
                    d.display()
                );
                self.warn(told.clone());
                self.unreadable.insert(d, told);
            }
        }
        let present: HashSet<PathBuf> = found.iter().map(|(p, _)| p.clone()).collect();
        for (path, seen) in found {
            self.candidate(root, path, seen);
        }
        self.sources_gone(root, dir, &present);
    }

    /// The photos at or under `under` that were deleted or moved away: a quarantined one's failure
    /// is forgotten (its row and what `veil status` told of it), a protected one is marked gone
    /// (`Store::sources_gone`). Not while the folder `root` itself is gone (its drive not
    /// mounted): its files are not deleted then.
    fn sources_gone(&mut self, root: &Path, under: &Path, present: &HashSet<PathBuf>) {
        if !root.is_dir() {
            return;
        }
        match self.store.sources_gone(under, present) {
            Ok(dropped) => {
                let any = !dropped.is_empty();
                for path in dropped {
                    tracing::info!("{} is gone: its failure is forgotten", path.display());
                    self.take_back(&path);
                    self.emit("removed", &path, None, None);
                }
                if any {
                    self.adopt_orphans();
                }
            }
            Err(e) => self.store_failed(e),
        }
    }

    /// Queues the twins whose photo went before it was protected ([`Store::adopt_orphans`]).
    fn adopt_orphans(&mut self) {
        match self.store.adopt_orphans() {
            Ok(queued) => {
                for path in queued {
                    tracing::info!("{}: {ORPHAN}", path.display());
                    self.emit("queued", &path, None, None);
                }
            }
            Err(e) => self.store_failed(e),
        }
    }

    fn candidate(&mut self, root: &Path, path: PathBuf, seen: store::Seen) {
        if self.busy.contains(&path) {
            return;
        }
        match self.store.is_known(&path, seen) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => return self.error(e.to_string()),
        }
        match self.candidates.get_mut(&path) {
            Some(c) if c.seen == seen => {}
            Some(c) => {
                c.seen = seen;
                c.since = Instant::now();
            }
            None => {
                let c = Candidate { folder: root.to_path_buf(), seen, since: Instant::now() };
                self.candidates.insert(path, c);
            }
        }
    }

    /// `path` has the content of `of`, which was seen gone: the photo was renamed, or moved within
    /// its folder. Its protected copy follows it (`a.jpg` renamed `beach.jpg`: `Out/a.jpg` becomes
    /// `Out/beach.jpg`, in the sub-folder mirroring the photo's), unless another file shares that
    /// copy or a file already has the new name (then `path` is skipped, pointing at the copy, as
    /// before). Returns whether the copy followed.
    fn follow_rename(&mut self, root: &Path, of: &Path, path: &Path) -> bool {
        // Its remove (or rename) event may not have been handled yet: look at the disk.
        if let Err(e) = self.store.sources_gone(of, &HashSet::new()) {
            tracing::warn!("{e}");
        }
        let copy = match self.store.renamed_copy(of, path) {
            Ok(Some(copy)) => copy,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("{e}");
                return false;
            }
        };
        let (Some(old), Some(new), Some(folder)) = (of.file_name(), path.file_name(), self.folder(root))
        else {
            return false;
        };
        let dir = output_dir(&folder.config, path);
        match imageio::rename_copy(&copy, old, new, &dir) {
            Ok(Some(to)) => match self.store.carry_over(of, path, &to) {
                Ok(()) => {
                    tracing::info!(
                        "{} was renamed {}: its protected copy {} is now {}",
                        of.display(),
                        path.display(),
                        copy.display(),
                        to.display()
                    );
                    // A failed file under the new name, replaced by this photo: its failure is over.
                    self.take_back(path);
                    self.emit("done", path, Some(&to), None);
                    true
                }
                Err(e) => {
                    // Not recorded: the copy goes back under the name the database knows.
                    let _ = std::fs::rename(&to, &copy);
                    self.store_failed(e);
                    false
                }
            },
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("cannot rename {} after its photo: {e}", copy.display());
                false
            }
        }
    }

    /// Takes the candidates that have not changed for the settle time.
    fn settle(&mut self) {
        let settle = self.settle_time();
        let now = Instant::now();
        let due: Vec<PathBuf> =
            self.candidates.iter().filter(|(_, c)| c.since + settle <= now).map(|(p, _)| p.clone()).collect();
        for path in due {
            if self.store_held().is_some() {
                // The database cannot record them now: they wait as candidates.
                return;
            }
            let Some(c) = self.candidates.remove(&path) else { continue };
            match watch::stat(&path) {
                None => {}
                Some(seen) if seen != c.seen => {
                    self.candidates.insert(path, Candidate { seen, since: now, ..c });
                }
                Some(seen) => self.take(&c.folder, &path, seen),
            }
        }
    }

    fn take(&mut self, root: &Path, path: &Path, seen: store::Seen) {
        let hash = match store::hash_file(path) {
            Ok(h) => h,
            Err(e) => {
                // Unreadable: record it like any failed photo, so it is named once.
                let _ = self.store.observe(root, path, seen, &store::unreadable_hash(path));
                let report =
                    Finish::Failed { error: format!("{}: cannot read: {e}", path.display()), retry: true };
                return self.record(path, &report);
            }
        };
        match self.store.observe(root, path, seen, &hash) {
            Ok(Observed::Queued) => {
                tracing::debug!("queued {}", path.display());
                self.emit("queued", path, None, None);
            }
            Ok(Observed::Duplicate { of }) => {
                if !self.follow_rename(root, &of, path) {
                    tracing::info!(
                        "{}: same content as {}, already protected or queued: skipped",
                        path.display(),
                        of.display()
                    )
                }
            }
            Ok(Observed::OwnCopy { of }) => {
                let reason = format!("{}: {}", path.display(), store::own_copy(&of));
                tracing::info!("{reason}: skipped");
                self.emit("skipped", path, None, Some(&reason));
            }
            Ok(Observed::SameContent | Observed::Unchanged) => {}
            Err(e) => {
                // Not recorded: taken again once the database can be written.
                let c = Candidate { folder: root.to_path_buf(), seen, since: Instant::now() };
                self.candidates.insert(path.to_path_buf(), c);
                return self.store_failed(e);
            }
        }
        self.store_works();
    }

    /// When the job database, which could not be written, is tried again; `None` when it works.
    fn store_held(&self) -> Option<Instant> {
        self.store_trouble.as_ref().map(|t| t.retry_at).filter(|at| *at > Instant::now())
    }

    /// A write to the job database failed: told once (an error and a last error), then quiet;
    /// photos wait as candidates and nothing is dispatched until a write works again, tried every
    /// `watch.poll_seconds`.
    fn store_failed(&mut self, e: StoreError) {
        let retry_at = Instant::now() + self.poll_period();
        if let Some(t) = &mut self.store_trouble {
            tracing::debug!("{e} (still)");
            t.retry_at = retry_at;
            return;
        }
        let told = format!(
            "{e}; new photos are recorded and protected once it can be written again (tried every {} s)",
            self.config.watch.poll_seconds.get()
        );
        self.error(told.clone());
        self.store_trouble = Some(StoreTrouble { told, retry_at });
    }

    /// A write to the job database worked: if it had failed before, that is over. Photos whose end
    /// could not be recorded are protected again, and the folders are scanned for any missed.
    fn store_works(&mut self) {
        let Some(t) = self.store_trouble.take() else { return };
        tracing::info!("the job database {} can be written again", self.store.path().display());
        self.forget(&t.told);
        match self.store.requeue_stale(&self.busy) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} photo(s) whose end was not recorded queued again"),
            Err(e) => self.store_failed(e),
        }
        self.next_rescan = Instant::now();
    }

    /// Where the computer's power comes from now; a change is logged, and may hold or release the
    /// photos.
    fn check_power(&mut self) {
        let power = Power::now();
        if power != self.power {
            tracing::info!("the computer is {power} (it was {})", self.power);
            self.power = power;
        }
        self.update_hold();
    }

    /// Whether new photos wait for the charger: on battery with `power.on_battery = "pause"`.
    fn held(&self) -> bool {
        self.power.on_battery() && self.config.power.on_battery == OnBattery::Pause
    }

    /// Tells (log and event) when new photos start or stop waiting for the charger.
    fn update_hold(&mut self) {
        let held = self.held();
        if held == self.was_held {
            return;
        }
        self.was_held = held;
        if held {
            tracing::info!("on battery: {} (power.on_battery = \"pause\")", power::HELD);
            let _ = self
                .info
                .events
                .send(Event { error: Some(power::HELD.into()), ..Event::new("battery", None) });
        } else {
            let again = format!("photos are protected again ({})", self.power);
            tracing::info!("{again}");
            let _ = self.info.events.send(Event { error: Some(again), ..Event::new("mains", None) });
        }
    }

    /// Hands pending jobs to the engine while its queue has room; on battery
    /// ([`Core::held`]) only those asked for by hand.
    fn dispatch(&mut self) {
        if self.paused || self.busy.len() >= QUEUE || self.store_held().is_some() {
            return;
        }
        let held = self.held();
        if held && self.asked.is_empty() {
            return;
        }
        let pending = match self.store.pending(usize::MAX, &self.busy) {
            Ok(p) => p,
            Err(e) => return self.store_failed(e),
        };
        for p in pending {
            if self.busy.len() >= QUEUE {
                break;
            }
            if held && !self.asked.contains(&p.path) {
                continue;
            }
            let job = match (self.folder(&p.folder), &p.output_dir) {
                (Some(folder), _) => self.job(&folder.config, &p.path, p.earlier.clone()),
                (None, Some(output)) => {
                    // Queued by hand from outside the watched folders: the defaults.
                    let config = FolderConfig {
                        path: p.folder.clone(),
                        output: output.clone(),
                        format: None,
                        preset: None,
                        recursive: false,
                        ignore: Vec::new(),
                        poll: false,
                    };
                    self.job(&config, &p.path, p.earlier.clone())
                }
                (None, None) => {
                    // Its folder is no longer watched (a job sent back by `veil retry`).
                    self.release_unwatched();
                    continue;
                }
            };
            if let Err(e) = self.store.set_running(&p.path) {
                return self.store_failed(e);
            }
            self.store_works();
            match self.worker.try_send(job) {
                Ok(()) => {
                    self.emit("running", &p.path, None, None);
                    self.busy.push(p.path)
                }
                Err(_) => {
                    let _ = self.store.finish(&p.path, &Finish::Requeue);
                    break;
                }
            }
        }
    }

    fn job(&self, c: &FolderConfig, source: &Path, earlier: Option<imageio::Earlier>) -> Job {
        let output_dir = output_dir(c, source);
        let imageio = imageio::Settings { earlier, ..self.config.imageio.clone() };
        Job {
            source: source.to_path_buf(),
            folder: c.path.clone(),
            output_dir,
            preset: c.preset.unwrap_or(self.config.protect.preset),
            format: c.format,
            imageio,
        }
    }

    fn finish(&mut self, report: Report) {
        let path = report.job.source;
        self.busy.retain(|p| *p != path);
        if report.result.is_some() {
            self.asked.remove(&path);
        }
        let finish = match report.result {
            None => Finish::Requeue,
            Some(Ok(done)) => {
                if done.protected {
                    tracing::info!(
                        "protected {} -> {} ({} face(s), {:.2} s)",
                        path.display(),
                        done.output.display(),
                        done.faces,
                        done.seconds
                    );
                } else {
                    tracing::info!(
                        "no face in {}: copied unchanged -> {} ({:.2} s)",
                        path.display(),
                        done.output.display(),
                        done.seconds
                    );
                }
                Finish::Done {
                    output: done.output,
                    faces: done.faces,
                    seconds: done.seconds,
                    losses: done.losses,
                }
            }
            Some(Err(e)) => match e.kind {
                ErrorKind::Gone => Finish::Gone,
                ErrorKind::Skip => Finish::Skipped { reason: e.message },
                ErrorKind::Transient | ErrorKind::OutOfMemory => {
                    Finish::Failed { error: e.message, retry: true }
                }
                ErrorKind::Output => Finish::Waiting { error: e.message },
                ErrorKind::Permanent => Finish::Failed { error: e.message, retry: false },
            },
        };
        self.record(&path, &finish);
    }

    fn record(&mut self, path: &Path, finish: &Finish) {
        if !matches!(finish, Finish::Waiting { .. } | Finish::Requeue) {
            // Written, skipped, gone, or failed anew: what was told of it before is over.
            self.take_back(path);
        }
        match (self.store.finish(path, finish), finish) {
            (Ok(Some(Status::Pending)), Finish::Waiting { error }) => {
                self.emit("waiting", path, None, Some(error));
                if let Some(Told::Waiting(_)) = self.told.get(path) {
                    tracing::debug!("{error} (still waiting)");
                } else {
                    self.take_back(path);
                    let told = format!(
                        "{}: waiting for its output folder, tried again every {} min at most: {error}",
                        path.display(),
                        store::WAIT_MAX / 60
                    );
                    self.warn(told.clone());
                    self.told.insert(path.to_path_buf(), Told::Waiting(told));
                }
            }
            (Ok(Some(Status::Failed)), Finish::Failed { error, .. }) => {
                self.emit("failed", path, None, Some(error));
                let told = format!("{error} (tried again when the file changes, or by `veil retry`)");
                self.error(told.clone());
                self.told.insert(path.to_path_buf(), Told::Failed(told));
            }
            (Ok(Some(Status::Pending)), Finish::Failed { error, .. }) => {
                self.emit("retrying", path, None, Some(error));
                tracing::warn!("{error} (will try again)")
            }
            (Ok(Some(Status::Skipped)), Finish::Skipped { reason }) => {
                self.emit("skipped", path, None, Some(reason));
                tracing::info!("{reason}: skipped")
            }
            (Ok(Some(Status::Done)), Finish::Done { output, faces, .. }) => {
                // A photo first found unreadable is known by its content from now on.
                if let Err(e) = self.store.real_hash(path) {
                    tracing::warn!("{}: cannot record its content's hash: {e}", path.display());
                }
                self.emit_done(path, output, *faces)
            }
            (Ok(Some(Status::Pending)), Finish::Requeue) => self.emit("queued", path, None, None),
            // Gone before it could be read: nothing is left of it, but its twins are protected.
            (Ok(None), Finish::Gone) => {
                self.emit("removed", path, None, None);
                self.adopt_orphans();
            }
            (Ok(_), _) => {}
            (Err(e), _) => return self.store_failed(e),
        }
        self.store_works();
    }

    fn error(&mut self, message: String) {
        tracing::error!("{message}");
        self.remember(message);
    }

    /// A warning that also goes to the last errors `veil status` shows.
    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.remember(message);
    }

    /// Takes back what was told of the photo at `path` (see `told`).
    fn take_back(&mut self, path: &Path) {
        if let Some(told) = self.told.remove(path) {
            self.forget(told.message());
        }
    }

    /// Takes a message back from the last errors once what it told of is over (a folder is back,
    /// a photo is written): `veil status` shows what is wrong now.
    fn forget(&mut self, message: &str) {
        self.errors.retain(|e| e.message != message);
        if self.last_error.as_deref() == Some(message) {
            self.last_error = self.errors.back().map(|e| e.message.clone());
        }
    }

    fn remember(&mut self, message: String) {
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if self.errors.len() == LAST_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(control::ErrorEntry { at, message: message.clone() });
        self.last_error = Some(message);
    }

    /// Tells the event stream's subscribers (`veil watch`, the desktop notifier) about a job.
    fn emit(&self, event: &str, path: &Path, output: Option<&Path>, error: Option<&str>) {
        self.emit_job(event, path, output, error, None);
    }

    /// A `done` event for a photo the engine has just protected: with its count of faces.
    fn emit_done(&self, path: &Path, output: &Path, faces: u32) {
        self.emit_job("done", path, Some(output), None, Some(faces));
    }

    fn emit_job(
        &self,
        event: &str,
        path: &Path,
        output: Option<&Path>,
        error: Option<&str>,
        faces: Option<u32>,
    ) {
        if self.info.events.receiver_count() == 0 {
            return;
        }
        let id = self.store.job_of(path).ok().flatten().map(|(id, _)| id);
        let _ = self.info.events.send(Event {
            id,
            output: output.map(control::lossy),
            error: error.map(str::to_string),
            faces,
            ..Event::new(event, Some(path))
        });
    }

    fn state(&self) -> &'static str {
        let store::Counts { queued, waiting, .. } = self.store.counts().unwrap_or_default();
        if self.paused {
            "paused"
        } else if self.store_trouble.is_some() && self.busy.is_empty() {
            // Nothing moves until the database can be written: said among the last errors.
            "waiting"
        } else if !self.busy.is_empty() || !self.candidates.is_empty() {
            "working"
        } else if queued > waiting {
            if self.held() {
                "on battery"
            } else {
                "working"
            }
        } else if waiting > 0 {
            "waiting"
        } else {
            "idle"
        }
    }

    /// About how long the `queue` (photos pending, running or settling) takes, in seconds: those
    /// due now (not `waiting` for another try) at the mean pace of the last photos. `None` when
    /// nothing moves (paused, on battery), nothing is due, or nothing was timed yet.
    fn eta(&self, queue: u64, waiting: u64) -> Result<Option<u64>, StoreError> {
        let due = queue.saturating_sub(waiting);
        if self.paused || self.held() || due == 0 {
            return Ok(None);
        }
        Ok(self.store.recent_seconds()?.map(|s| (s * due as f64).ceil() as u64))
    }

    /// Answers the control socket.
    fn command(&mut self, command: Command) -> Reply {
        let store = |e: StoreError| ApiError::new(500, e.to_string());
        match command {
            Command::Status => {
                let counts = self.store.counts_by_status().map_err(store)?;
                let counts: BTreeMap<String, u64> =
                    counts.into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect();
                let queue = counts.get("pending").copied().unwrap_or(0)
                    + counts.get("running").copied().unwrap_or(0)
                    + self.candidates.len() as u64;
                let waiting = self.store.counts().map_err(store)?.waiting;
                control::to_reply(&control::StatusReport {
                    state: self.state().into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    pid: std::process::id(),
                    uptime_seconds: self.info.started.elapsed().as_secs(),
                    device: self.info.device.clone(),
                    models: self.info.models.clone(),
                    queue,
                    eta_seconds: self.eta(queue, waiting).map_err(store)?,
                    waiting,
                    counts,
                    folders: self
                        .folders
                        .iter()
                        .map(|f| control::FolderStatus {
                            path: control::lossy(&f.config.path),
                            output: control::lossy(&f.config.output),
                            watch: match (&f.watcher, f.id) {
                                (_, None) => "gone",
                                (Some(_), _) => "events",
                                (None, _) => "poll",
                            }
                            .into(),
                            error: f.watch_error.clone(),
                        })
                        .collect(),
                    last_errors: self.errors.iter().cloned().collect(),
                    notify: Some(self.info.notifier.describe()),
                    power: power::describe(self.power, self.config.power.on_battery),
                })
            }
            Command::Jobs { status, after, limit } => {
                let rows = self.store.jobs(status, after, limit).map_err(store)?;
                let next = if rows.len() == limit { rows.last().map(|r| r.id) } else { None };
                let jobs = rows
                    .into_iter()
                    .map(|r| control::JobInfo {
                        id: r.id,
                        path: control::lossy(&r.path),
                        status: r.status.as_str().into(),
                        attempts: r.attempts,
                        error: r.error,
                        output: r.output.as_deref().map(control::lossy),
                        output_deleted: r.output.as_deref().is_some_and(store::copy_deleted),
                        faces: r.faces,
                        seconds: r.seconds,
                        updated: r.updated,
                    })
                    .collect();
                control::to_reply(&control::JobsPage { jobs, next })
            }
            Command::Pause | Command::Resume => {
                let pause = matches!(command, Command::Pause);
                let changed = self.paused != pause;
                self.paused = pause;
                let mut message = match (pause, changed) {
                    (true, true) => "paused: no new photo goes to the engine (the current ones finish)",
                    (true, false) => "already paused",
                    (false, true) => "resumed",
                    (false, false) => "not paused",
                }
                .to_string();
                if !pause && self.held() {
                    message += &format!(
                        "; the computer runs on battery: {} (`veil add PHOTO` protects one now)",
                        power::HELD
                    );
                }
                if changed {
                    tracing::info!("{message} (control socket)");
                    let _ = self.info.events.send(Event::new(if pause { "paused" } else { "resumed" }, None));
                }
                control::to_reply(&control::StateReply { state: self.state().into(), message })
            }
            Command::Retry(request) => {
                let retried = match request.id {
                    Some(id) => match self.store.retry_one(id).map_err(store)? {
                        Some(path) => {
                            tracing::info!("{}: queued again (control socket)", path.display());
                            self.emit("queued", &path, None, None);
                            self.asked.insert(path);
                            1
                        }
                        None => return Err(ApiError::new(404, format!("no job {id} that can be retried"))),
                    },
                    None => {
                        let again = self.store.retry_failed(None).map_err(store)?;
                        tracing::info!(
                            "{} failed or waiting photo(s) queued again (control socket)",
                            again.len()
                        );
                        let n = again.len() as u64;
                        self.asked.extend(again);
                        n
                    }
                };
                control::to_reply(&control::RetryReply { retried })
            }
            Command::Protect(request) => {
                let photos = request
                    .paths
                    .iter()
                    .flat_map(|p| self.protect_now(p, request.output.as_deref()))
                    .collect();
                control::to_reply(&control::ProtectReply { photos })
            }
            Command::Reload(config) => self.reload(*config).and_then(|()| {
                control::to_reply(&control::StateReply {
                    state: self.state().into(),
                    message: "configuration reloaded".into(),
                })
            }),
        }
    }

    /// `POST /v1/protect` for one path: a file as [`Core::protect_file_now`]; a folder walked as
    /// `veil protect` walks it (hidden entries, other files and every output folder left out), and
    /// each of its photos protected now.
    fn protect_now(&mut self, path: &Path, output: Option<&Path>) -> Vec<control::ProtectOutcome> {
        let fail = |message: &str| control::ProtectOutcome {
            path: control::lossy(path),
            outcome: "error".into(),
            id: None,
            message: Some(message.into()),
        };
        if !path.is_absolute() {
            return vec![fail("not an absolute path")];
        }
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            return vec![self.protect_file_now(path, output)];
        }
        let mut outputs: Vec<PathBuf> = self.config.folders.iter().map(|f| f.output.clone()).collect();
        outputs.extend(output.map(Path::to_path_buf));
        if outputs.iter().any(|o| folder_id(o).is_some() && folder_id(o) == folder_id(path)) {
            return vec![fail("an output folder: Veil does not protect its own copies again")];
        }
        match pipeline::collect_photos(&[path.to_path_buf()], &outputs) {
            Ok(found) if found.photos.is_empty() => {
                vec![fail(&format!("a folder with {}", found.no_photos()))]
            }
            Ok(found) => {
                let mut outcomes: Vec<_> =
                    found.photos.iter().map(|p| self.protect_file_now(p, output)).collect();
                if let Some(what) = found.left_out() {
                    outcomes.push(control::ProtectOutcome {
                        outcome: "left out".into(),
                        message: Some(what),
                        ..fail("")
                    });
                }
                outcomes
            }
            Err(e) => vec![fail(&e.to_string())],
        }
    }

    /// `POST /v1/protect` for one file: hashed and recorded at once, without the settle time. A
    /// photo outside the watched folders goes to `output`, else to the first folder's output.
    fn protect_file_now(&mut self, path: &Path, output: Option<&Path>) -> control::ProtectOutcome {
        let outcome = |outcome: &str, id: Option<i64>, message: Option<String>| control::ProtectOutcome {
            path: control::lossy(path),
            outcome: outcome.into(),
            id,
            message,
        };
        let fail = |message: String| outcome("error", None, Some(message));
        if !path.is_absolute() {
            return fail("not an absolute path".into());
        }
        let Some(seen) = watch::stat(path) else {
            return fail("not a regular file (or it does not exist)".into());
        };
        if pipeline::is_hidden(path) {
            return fail(pipeline::HIDDEN_FILE.into());
        }
        // A copy Veil wrote (in a folder's output, however the path is spelled).
        let real = watch::resolved(path);
        if self.config.folders.iter().any(|f| real.starts_with(watch::resolved(&f.output))) {
            return fail("in an output folder: Veil does not protect its own copies again".into());
        }
        let watched =
            self.folders.iter().find(|f| path.starts_with(&f.config.path)).map(|f| f.config.path.clone());
        // An output folder made here for a photo that turns out to need none goes again.
        let mut made = None;
        let (root, output_dir) = match watched {
            Some(root) => (root, None),
            None => {
                let output = match output
                    .map(Path::to_path_buf)
                    .or_else(|| self.config.folders.first().map(|f| f.output.clone()))
                {
                    Some(o) => o,
                    None => {
                        return fail(
                            "outside every watched folder, and no output folder given or configured".into(),
                        )
                    }
                };
                if output.exists() && !output.is_dir() {
                    return fail(format!("the output {} is not a folder", output.display()));
                }
                if !output.exists() {
                    made = Some(output.clone());
                }
                if let Err(e) = std::fs::create_dir_all(&output) {
                    return fail(format!("cannot create the output folder {}: {e}", output.display()));
                }
                (path.parent().unwrap_or(Path::new("/")).to_path_buf(), Some(output))
            }
        };
        if self.busy.iter().any(|p| p == path) {
            let id = self.store.job_of(path).ok().flatten().map(|(id, _)| id);
            return outcome("running", id, None);
        }
        self.candidates.remove(path);
        let hash = match store::hash_file(path) {
            Ok(h) => h,
            Err(e) => return fail(format!("cannot read: {e}")),
        };
        let observed = match self.store.observe_to(&root, path, seen, &hash, output_dir.as_deref()) {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        let job = self.store.job_of(path).ok().flatten();
        let id = job.map(|(id, _)| id);
        let pending = matches!(job, Some((_, Status::Pending)));
        if pending {
            // Asked for now: the battery does not hold it.
            self.asked.insert(path.to_path_buf());
        }
        let now = self.held().then(|| "protected now, although the computer runs on battery".to_string());
        if !matches!(observed, Observed::Queued) && !pending {
            if let Some(dir) = made {
                let _ = std::fs::remove_dir(dir);
            }
        }
        match (observed, job) {
            (Observed::Queued, _) => {
                tracing::info!("{}: queued (control socket)", path.display());
                self.emit("queued", path, None, None);
                outcome("queued", id, now)
            }
            (_, Some(_)) if pending && now.is_some() => {
                tracing::info!("{}: protected now on battery (control socket)", path.display());
                outcome("queued", id, now)
            }
            (Observed::Duplicate { of }, _) => {
                outcome("duplicate", id, Some(format!("same content as {}", of.display())))
            }
            (Observed::OwnCopy { of }, _) => {
                tracing::info!("{}: {}: skipped (control socket)", path.display(), store::own_copy(&of));
                outcome("skipped", id, Some(store::own_copy(&of)))
            }
            (_, Some((_, status))) => {
                let known = match self.store.copy_of(path).ok().flatten() {
                    Some(copy) => format!("already known with this content; its copy is {}", copy.display()),
                    None => "already known with this content".into(),
                };
                outcome(status.as_str(), id, Some(known))
            }
            (_, None) => fail("the job database lost it".into()),
        }
    }

    fn publish_status(&mut self) {
        let counts = self.store.counts().unwrap_or_default();
        let queued = counts.queued + self.candidates.len() as u64;
        let waiting = match counts.waiting {
            0 => String::new(),
            n => format!(" ({n} waiting to be tried again)"),
        };
        let held = if self.held() && queued > 0 { "; on battery: waiting for the charger" } else { "" };
        let status = match &self.last_error {
            Some(e) => format!("{queued} photo(s) queued{waiting}{held}; last error: {e}"),
            None => format!("{queued} photo(s) queued{waiting}{held}"),
        };
        if status != self.status {
            systemd::notify(&format!("STATUS={status}"));
            self.status = status;
        }
    }

    /// Replaces the folders with `wanted`: unchanged ones keep their watcher, new ones are watched
    /// and scanned, removed ones are released.
    fn set_folders(&mut self, wanted: &[FolderConfig]) -> Result<Vec<PathBuf>, ServiceError> {
        let outputs: Vec<PathBuf> = wanted.iter().map(|f| f.output.clone()).collect();
        let filters = wanted.iter().map(|f| Filter::new(f, &outputs)).collect::<Result<Vec<_>, _>>()?;
        let mut old: Vec<Folder> = std::mem::take(&mut self.folders);
        let mut added = Vec::new();
        for (config, filter) in wanted.iter().zip(filters) {
            if let Some(i) = old.iter().position(|f| f.config == *config) {
                let mut f = old.swap_remove(i);
                f.filter = filter;
                self.folders.push(f);
                continue;
            }
            let id = folder_id(&config.path);
            if id.is_none() {
                // Missing at start or reload (made at neither: it was there before): gone.
                self.folders.push(Folder {
                    config: config.clone(),
                    filter,
                    watcher: None,
                    next_poll: None,
                    watch_error: None,
                    told_gone: None,
                    id,
                });
                self.folder_gone(self.folders.len() - 1);
                continue;
            }
            let (watcher, next_poll, watch_error) = self.watch(config);
            self.folders.push(Folder {
                config: config.clone(),
                filter,
                watcher,
                next_poll,
                watch_error,
                told_gone: None,
                id,
            });
            added.push(config.path.clone());
        }
        for f in old {
            tracing::info!("no longer watching {}", f.config.path.display());
            self.candidates.retain(|_, c| c.folder != f.config.path);
            if let Some(told) = &f.told_gone {
                self.forget(told);
            }
        }
        self.release_unwatched();
        Ok(added)
    }

    /// Forgets the photos waiting in folders no longer watched (taken out of the configuration,
    /// before a reload or while veild was stopped): nothing would take them, and `veil status`
    /// would say `working` for ever. Their messages leave the last errors.
    fn release_unwatched(&mut self) {
        let watched: Vec<PathBuf> = self.folders.iter().map(|f| f.config.path.clone()).collect();
        match self.store.release_unwatched(&watched) {
            Ok(released) if !released.is_empty() => {
                tracing::info!(
                    "{} photo(s) waiting in folders no longer watched were let go (not protected)",
                    released.len()
                );
                for path in &released {
                    self.take_back(path);
                    self.emit("removed", path, None, None);
                }
            }
            Ok(_) => {}
            Err(e) => self.store_failed(e),
        }
    }

    fn watch(&mut self, config: &FolderConfig) -> (Option<Watcher>, Option<Instant>, Option<String>) {
        let poll = self.config.watch.poll_seconds.get();
        if config.poll {
            tracing::info!("watching {} by scanning it every {poll} s (poll = true)", config.path.display());
            return (None, Some(Instant::now()), None);
        }
        let tx = self.tx.clone();
        let root = config.path.clone();
        match Watcher::new(config, move |hint| {
            let _ = tx.send(Msg::Hint { folder: root.clone(), hint });
        }) {
            Ok(w) => {
                tracing::info!("watching {}", config.path.display());
                (Some(w), None, None)
            }
            Err(message) => {
                self.error(format!("{message}; polling it every {poll} s instead"));
                (None, Some(Instant::now()), Some(message.to_string()))
            }
        }
    }

    /// A new configuration not applied: said once in the last errors (an earlier refusal taken back).
    fn refuse(&mut self, e: impl std::fmt::Display) -> ApiError {
        let message = format!("the new configuration is not applied, keeping the old one: {e}");
        if let Some(old) = self.refused.replace(message.clone()) {
            self.forget(&old);
        }
        self.error(message.clone());
        ApiError::new(422, message)
    }

    fn reload(&mut self, config: Config) -> Result<(), ApiError> {
        let folders = config.folders.clone();
        let made = match create_folders(&folders, &self.store) {
            Ok(made) => made,
            Err(e) => return Err(self.refuse(e)),
        };
        let protect_changed = config.protect != self.config.protect || config.engine != self.config.engine;
        let old = std::mem::replace(&mut self.config, config);
        match self.set_folders(&folders) {
            Ok(added) => {
                made.keep(&self.store);
                for root in added {
                    self.scan(&root, &root.clone());
                }
                self.next_rescan = Instant::now() + rescan_period(&self.config);
                if protect_changed {
                    tracing::warn!("[engine] and [protect] changes take effect when veild restarts");
                }
                tracing::info!("configuration reloaded");
                if let Some(refused) = self.refused.take() {
                    self.forget(&refused);
                }
                self.info.notify.send_replace(self.config.notify.clone());
                let _ = self.info.events.send(Event::new("reloaded", None));
                self.update_hold();
                Ok(())
            }
            Err(e) => {
                self.config = old;
                made.undo();
                Err(self.refuse(e))
            }
        }
    }

    /// Takes no more work; waits a moment for the photos in the engine, requeues the rest.
    fn stop(mut self, rx: &mpsc::Receiver<Msg>) {
        self.worker.stop();
        let deadline = Instant::now() + STOP_GRACE;
        while !self.busy.is_empty() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Msg::Report(r)) => self.finish(r),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for path in std::mem::take(&mut self.busy) {
            tracing::warn!("{} was still being protected: queued for the next start", path.display());
        }
        // As after a crash: the next attempt replaces what this one may have written already (its
        // copy can be in place while its quality is being checked), not adding `name (1).jpg`.
        if let Err(e) = self.store.requeue_stale(&[]) {
            tracing::error!("{e}");
        }
    }
}

/// Where the copy of `source`, in the folder `c`, goes: the sub-folder of `c`'s output that
/// mirrors the photo's, made here when the output folder is there (a missing output folder is the
/// job's error, not made).
fn output_dir(c: &FolderConfig, source: &Path) -> PathBuf {
    let rel_dir = source.parent().and_then(|p| p.strip_prefix(&c.path).ok()).unwrap_or(Path::new(""));
    let output_dir = c.output.join(rel_dir);
    if !rel_dir.as_os_str().is_empty() && c.output.is_dir() {
        if let Err(e) = std::fs::create_dir_all(&output_dir) {
            tracing::warn!("cannot create {}: {e}", output_dir.display());
        }
    }
    output_dir
}

/// The (device, inode) of the folder at `path`, if one is there.
fn folder_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

fn rescan_period(config: &Config) -> Duration {
    Duration::from_secs_f64(config.watch.rescan_minutes.get() * 60.0)
}

fn log_models(inventory: &Inventory) {
    tracing::info!("models: {}", inventory.dir.display());
    if inventory.detector_ready() {
        tracing::info!("face detector: MTCNN loaded");
    }
    for (path, loaded) in &inventory.detector {
        if let Err(e) = loaded {
            tracing::error!("face detector weights {}: {e}", path.display());
        }
    }
    match &inventory.generators {
        Ok(models) => {
            for (entry, loaded) in models {
                match (loaded, entry.role) {
                    (Ok(()), Role::Ensemble) => tracing::info!("generator {} (ensemble) loads", entry.name),
                    (Ok(()), Role::Holdout) => {
                        tracing::debug!("generator {} (holdout, for veil eval only) loads", entry.name)
                    }
                    (Err(e), Role::Ensemble) => tracing::error!("generator {}: {e}", entry.name),
                    (Err(e), Role::Holdout) => {
                        tracing::warn!("generator {} (holdout, for veil eval only): {e}", entry.name)
                    }
                }
            }
        }
        Err(e) => tracing::error!("no generators: {e}"),
    }
}
