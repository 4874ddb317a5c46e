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
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{Config, FolderConfig, Source},
    engine::{self, EngineError},
    models::Inventory,
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
    #[error("another veild already runs on the state folder {} (lock {}): {source}", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf, source: std::io::Error },
    #[error("cannot start listening for SIGHUP: {0}")]
    Signal(std::io::Error),
}

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

    let state_dir = config.paths.state_dir.clone().unwrap_or_default();
    let _lock = lock(&state_dir)?;
    create_folders(&config.folders)?;
    if config.folders.is_empty() {
        tracing::warn!("no folders configured: nothing to watch");
    }

    let (store, recovered) = Store::open(&state_dir)?;
    if recovered > 0 {
        tracing::warn!("{recovered} photo(s) were being protected when veild last stopped: queued again");
    }

    let (tx, rx) = mpsc::channel::<Msg>();
    let reports = tx.clone();
    let engine_config = config.clone();
    let worker = tokio::task::spawn_blocking(move || {
        Worker::start(
            QUEUE,
            move || worker::protector(&engine_config),
            move |r| {
                let _ = reports.send(Msg::Report(r));
            },
        )
    })
    .await
    .map_err(|e| ServiceError::Probe(e.to_string()))??;

    let core = Core::new(config, store, worker, tx.clone())?;
    let core = std::thread::Builder::new()
        .name("veil-core".into())
        .spawn(move || core.run(rx))
        .map_err(|e| ServiceError::Probe(e.to_string()))?;
    // Reloads are heard from before readiness is announced: a SIGHUP right after READY must not hit
    // the default action (terminate).
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(ServiceError::Signal)?;
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
                match reload() {
                    Ok((config, source)) => {
                        tracing::info!("config: {source}");
                        let _ = tx.send(Msg::Reload(Box::new(config)));
                    }
                    Err(e) => tracing::error!("the new configuration is invalid, keeping the old one: {e}"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    systemd::notify("STOPPING=1");
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = tx.send(Msg::Shutdown);
    let _ = tokio::task::spawn_blocking(move || core.join()).await;
    Ok(())
}

fn create_folders(folders: &[FolderConfig]) -> Result<(), ServiceError> {
    for folder in folders {
        for dir in [&folder.path, &folder.output] {
            std::fs::create_dir_all(dir)
                .map_err(|source| ServiceError::Folder { path: dir.clone(), source })?;
        }
        let stale = watch::remove_stale_temporaries(&folder.output);
        if stale > 0 {
            tracing::info!("removed {stale} unfinished temporary file(s) from {}", folder.output.display());
        }
        tracing::info!(
            "share folder {} -> protected copies in {}",
            folder.path.display(),
            folder.output.display()
        );
    }
    Ok(())
}

/// Holds an exclusive `flock` on `veild.lock` in the state folder while the service runs.
fn lock(state_dir: &Path) -> Result<std::fs::File, ServiceError> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("veild.lock");
    let locked = |source| ServiceError::Locked { dir: state_dir.into(), lock: path.clone(), source };
    std::fs::create_dir_all(state_dir)
        .map_err(|source| ServiceError::Folder { path: state_dir.into(), source })?;
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(locked)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(locked(std::io::Error::last_os_error()));
    }
    Ok(file)
}

enum Msg {
    Hint { folder: PathBuf, hint: Hint },
    Report(Report),
    Reload(Box<Config>),
    Shutdown,
}

/// A watched folder.
struct Folder {
    config: FolderConfig,
    filter: Filter,
    /// `None`: polled.
    watcher: Option<Watcher>,
    next_poll: Option<Instant>,
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
    last_error: Option<String>,
    status: String,
}

impl Core {
    fn new(
        config: Config,
        store: Store,
        worker: Worker,
        tx: mpsc::Sender<Msg>,
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
            last_error: None,
            status: String::new(),
        };
        let folders = core.config.folders.clone();
        core.set_folders(&folders)?;
        Ok(core)
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let all: Vec<PathBuf> = self.folders.iter().map(|f| f.config.path.clone()).collect();
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
            Msg::Reload(config) => self.reload(*config),
            Msg::Shutdown => {}
        }
    }

    /// Rescans and polls that are due.
    fn tick(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let all = now >= self.next_rescan;
        if all {
            self.next_rescan = now + rescan_period(&self.config);
        }
        let poll = Duration::from_secs_f64(self.config.watch.poll_seconds.get());
        for f in &mut self.folders {
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
        let mut next = self.next_rescan;
        for c in self.candidates.values() {
            next = next.min(c.since + settle);
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
                        if let Some(seen) = watch::stat(&path) {
                            self.candidate(root, path, seen);
                        }
                    }
                }
            }
            Hint::CannotWatch(message) => {
                let poll = self.config.watch.poll_seconds.get();
                tracing::error!("{message}; polling it every {poll} s meanwhile");
                if let Some(f) = self.folders.iter_mut().find(|f| f.config.path == root) {
                    f.watcher = None;
                    f.next_poll = Some(Instant::now());
                }
            }
        }
    }

    /// Scans `dir` inside the folder `root`.
    fn scan(&mut self, root: &Path, dir: &Path) {
        let Some(folder) = self.folder(root) else { return };
        let found = watch::scan(&folder.filter, dir);
        for (path, seen) in found {
            self.candidate(root, path, seen);
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

    /// Takes the candidates that have not changed for the settle time.
    fn settle(&mut self) {
        let settle = self.settle_time();
        let now = Instant::now();
        let due: Vec<PathBuf> =
            self.candidates.iter().filter(|(_, c)| c.since + settle <= now).map(|(p, _)| p.clone()).collect();
        for path in due {
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
                let _ = self.store.observe(root, path, seen, &format!("unreadable-{}", path.display()));
                let report =
                    Finish::Failed { error: format!("{}: cannot read: {e}", path.display()), retry: true };
                return self.record(path, &report);
            }
        };
        match self.store.observe(root, path, seen, &hash) {
            Ok(Observed::Queued) => tracing::debug!("queued {}", path.display()),
            Ok(Observed::Duplicate { of }) => {
                tracing::info!(
                    "{}: same content as {}, already protected or queued: skipped",
                    path.display(),
                    of.display()
                )
            }
            Ok(Observed::SameContent | Observed::Unchanged) => {}
            Err(e) => self.error(e.to_string()),
        }
    }

    /// Hands pending jobs to the engine while its queue has room.
    fn dispatch(&mut self) {
        if self.busy.len() >= QUEUE {
            return;
        }
        let pending = match self.store.pending(usize::MAX, &self.busy) {
            Ok(p) => p,
            Err(e) => return self.error(e.to_string()),
        };
        for p in pending {
            if self.busy.len() >= QUEUE {
                break;
            }
            let Some(folder) = self.folder(&p.folder) else { continue };
            let job = self.job(folder, &p.path, p.replace);
            if let Err(e) = self.store.set_running(&p.path) {
                return self.error(e.to_string());
            }
            match self.worker.try_send(job) {
                Ok(()) => self.busy.push(p.path),
                Err(_) => {
                    let _ = self.store.finish(&p.path, &Finish::Requeue);
                    break;
                }
            }
        }
    }

    fn job(&self, folder: &Folder, source: &Path, replace: bool) -> Job {
        let c = &folder.config;
        let rel_dir = source.parent().and_then(|p| p.strip_prefix(&c.path).ok()).unwrap_or(Path::new(""));
        let output_dir = c.output.join(rel_dir);
        if !rel_dir.as_os_str().is_empty() && c.output.is_dir() {
            // A sub-folder of an output folder that exists; a missing output folder is the job's error.
            if let Err(e) = std::fs::create_dir_all(&output_dir) {
                tracing::warn!("cannot create {}: {e}", output_dir.display());
            }
        }
        let mut imageio = self.config.imageio.clone();
        imageio.replace_existing |= replace;
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
        let finish = match report.result {
            None => Finish::Requeue,
            Some(Ok(done)) => {
                tracing::info!(
                    "protected {} -> {} ({} face(s), {:.2} s)",
                    path.display(),
                    done.output.display(),
                    done.faces,
                    done.seconds
                );
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
                ErrorKind::Permanent => Finish::Failed { error: e.message, retry: false },
            },
        };
        self.record(&path, &finish);
    }

    fn record(&mut self, path: &Path, finish: &Finish) {
        match (self.store.finish(path, finish), finish) {
            (Ok(Some(Status::Failed)), Finish::Failed { error, .. }) => {
                self.error(format!("{error} (not retried until asked)"))
            }
            (Ok(Some(Status::Pending)), Finish::Failed { error, .. }) => {
                tracing::warn!("{error} (will try again)")
            }
            (Ok(Some(Status::Skipped)), Finish::Skipped { reason }) => tracing::info!("{reason}: skipped"),
            (Ok(_), _) => {}
            (Err(e), _) => self.error(e.to_string()),
        }
    }

    fn error(&mut self, message: String) {
        tracing::error!("{message}");
        self.last_error = Some(message);
    }

    fn publish_status(&mut self) {
        let queued = self.store.counts().map(|(q, _)| q).unwrap_or(0) + self.candidates.len() as u64;
        let status = match &self.last_error {
            Some(e) => format!("{queued} photo(s) queued; last error: {e}"),
            None => format!("{queued} photo(s) queued"),
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
            let (watcher, next_poll) = self.watch(config);
            self.folders.push(Folder { config: config.clone(), filter, watcher, next_poll });
            added.push(config.path.clone());
        }
        for f in old {
            tracing::info!("no longer watching {}", f.config.path.display());
            self.candidates.retain(|_, c| c.folder != f.config.path);
        }
        Ok(added)
    }

    fn watch(&mut self, config: &FolderConfig) -> (Option<Watcher>, Option<Instant>) {
        let poll = self.config.watch.poll_seconds.get();
        if config.poll {
            tracing::info!("watching {} by scanning it every {poll} s (poll = true)", config.path.display());
            return (None, Some(Instant::now()));
        }
        let tx = self.tx.clone();
        let root = config.path.clone();
        match Watcher::new(config, move |hint| {
            let _ = tx.send(Msg::Hint { folder: root.clone(), hint });
        }) {
            Ok(w) => {
                tracing::info!("watching {}", config.path.display());
                (Some(w), None)
            }
            Err(message) => {
                self.error(format!("{message}; polling it every {poll} s instead"));
                (None, Some(Instant::now()))
            }
        }
    }

    fn reload(&mut self, config: Config) {
        if let Err(e) = create_folders(&config.folders) {
            return self.error(format!("the new configuration is not applied, keeping the old one: {e}"));
        }
        let protect_changed = config.protect != self.config.protect || config.engine != self.config.engine;
        let old = std::mem::replace(&mut self.config, config);
        let folders = self.config.folders.clone();
        match self.set_folders(&folders) {
            Ok(added) => {
                for root in added {
                    self.scan(&root, &root.clone());
                }
                self.next_rescan = Instant::now() + rescan_period(&self.config);
                if protect_changed {
                    tracing::warn!("[engine] and [protect] changes take effect when veild restarts");
                }
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                self.config = old;
                self.error(format!("the new configuration is not applied, keeping the old one: {e}"));
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
            let _ = self.store.finish(&path, &Finish::Requeue);
        }
    }
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
                match loaded {
                    Ok(()) => tracing::info!("generator {} ({:?}) loaded", entry.name, entry.role),
                    Err(e) => tracing::error!("generator {}: {e}", entry.name),
                }
            }
        }
        Err(e) => tracing::error!("no generators: {e}"),
    }
}
