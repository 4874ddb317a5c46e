//! The engine worker: one thread that owns libtorch and the loaded models, fed through a bounded
//! queue. What it does with each photo is a [`Protector`]; [`protector`] builds the one `veild` runs.
//!
//! Jobs that are waiting together are handed over as one batch ([`Protector::protect_batch`]), so an
//! engine can run the faces of several photos in one pass. When the engine runs out of GPU memory the
//! batch is split and retried, and, down to single photos, the engine is asked to move to the CPU.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
};

use crate::{
    config::Config,
    imageio,
    pipeline::{FileJob, Grouping, JobOptions, Pipeline, PipelineError},
    protect::{Preset, Rng},
};

/// One photo to protect.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The source file (never written to).
    pub source: PathBuf,
    /// The watched folder it was found in (a symbolic link must not lead out of it).
    pub folder: PathBuf,
    /// The folder the protected copy goes to (it exists).
    pub output_dir: PathBuf,
    /// The folder's preset (or `protect.preset`).
    pub preset: Preset,
    /// The folder's output format; `None`: the source's.
    pub format: Option<imageio::Format>,
    /// How to read and write it; `replace_existing` is set when an earlier attempt may have written
    /// the copy already.
    pub imageio: imageio::Settings,
}

/// A protected photo.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub output: PathBuf,
    pub faces: u32,
    pub seconds: f64,
    /// The final loss against each generator of the ensemble, by name.
    pub losses: Vec<(String, f64)>,
}

/// Why a photo was not protected; `message` names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file itself is the problem (broken, unsupported): trying again will not help.
    Permanent,
    /// The surroundings are (disk full, output folder missing or read-only): try again later.
    Transient,
    /// Nothing to protect and nothing written on purpose (no face with `no_face = "skip"`).
    Skip,
    /// The source disappeared before it was read.
    Gone,
    /// The device ran out of memory: a smaller batch, or the CPU, may succeed.
    OutOfMemory,
}

impl JobError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> JobError {
        JobError { message: message.into(), kind }
    }
}

/// What the engine worker does with photos; runs on the engine thread, which owns libtorch.
pub trait Protector: Send {
    /// Protects one photo: reads `job.source`, writes the protected copy into `job.output_dir`.
    fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError>;

    /// Protects several photos; an engine that batches faces across photos overrides it. A batch
    /// that does not fit in device memory answers [`ErrorKind::OutOfMemory`] for its jobs.
    fn protect_batch(&mut self, jobs: &[Job]) -> Vec<Result<JobOutcome, JobError>> {
        jobs.iter().map(|j| self.protect(j)).collect()
    }

    /// Moves the engine to the CPU after a GPU ran out of memory on a single photo; returns whether
    /// it did (false: already on the CPU).
    fn fall_back_to_cpu(&mut self) -> bool {
        false
    }

    /// The largest number of photos worth handing over at once.
    fn batch_size(&self) -> usize {
        1
    }

    /// Protects the jobs `next` hands over until it answers `None`, and hands each job's report to
    /// `done` (from any thread, in any order). `next(true)` waits for a job; `next(false)` answers
    /// only a job already waiting. Once `stopping` is set, no further photo may be started: a job
    /// taken but not started is reported unattempted. By default: batches of the jobs already
    /// waiting, up to [`Protector::batch_size`], each run to its end before the next is taken (the
    /// worker's `next` stops handing out jobs once `stopping` is set).
    fn protect_stream(
        &mut self,
        next: &mut (dyn FnMut(bool) -> Option<Job> + Send),
        done: &Done,
        stopping: &AtomicBool,
    ) {
        while let Some(first) = next(true) {
            let mut batch = vec![first];
            while batch.len() < self.batch_size().max(1) {
                match next(false) {
                    Some(job) => batch.push(job),
                    None => break,
                }
            }
            if stopping.load(Ordering::SeqCst) {
                for job in batch {
                    done(Report { job, result: None });
                }
                continue;
            }
            for (job, result) in protect_fitting(self, batch) {
                done(Report { job, result: Some(result) });
            }
        }
    }
}

/// Where [`Protector::protect_stream`] hands each job's report.
pub type Done = dyn Fn(Report) + Sync;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    #[error("the engine did not start: {0}")]
    Start(String),
}

/// Builds the protector `veild` runs, on the engine thread, after the configuration is loaded: the
/// real pipeline (MTCNN and the `ensemble` generators on the engine device).
///
/// When the models cannot be loaded (none installed yet, a broken file), `veild` still runs: every
/// photo is recorded and answered with that reason as a retryable error, and nothing unprotected is
/// ever written into an output folder.
pub fn protector(config: &Config) -> Result<Box<dyn Protector>, String> {
    let device = crate::engine::select_device(config.engine.device).map_err(|e| e.to_string())?;
    let pipeline = match Pipeline::load(config, device) {
        Ok(p) => p,
        Err(e) => {
            let reason = e.to_string();
            tracing::error!("photos cannot be protected: {reason}; they are recorded and retried, and nothing is written until the models load (see `veil doctor`)");
            return Ok(Box::new(Unavailable { reason }));
        }
    };
    let names: Vec<&str> = pipeline.ensemble().generators.iter().map(|g| g.name.as_str()).collect();
    tracing::info!("protection engine loaded on {}: {}", crate::engine::describe(device), names.join(", "));
    let rng = Rng::new(config.protect.seed());
    Ok(Box::new(PipelineProtector { pipeline, rng }))
}

/// The real engine: [`Pipeline::protect_files`] for each batch of jobs.
pub struct PipelineProtector {
    pipeline: Pipeline,
    rng: Rng,
}

impl PipelineProtector {
    fn file_job(job: &Job) -> FileJob {
        FileJob {
            source: job.source.clone(),
            out_dir: job.output_dir.clone(),
            options: JobOptions {
                preset: Some(job.preset),
                format: job.format,
                folder: Some(job.folder.clone()),
                imageio: Some(job.imageio.clone()),
            },
        }
    }
}

impl Protector for PipelineProtector {
    fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError> {
        let mut out = self.protect_batch(std::slice::from_ref(job));
        out.pop().unwrap_or_else(|| Err(JobError::new(ErrorKind::Transient, "the engine answered nothing")))
    }

    fn protect_batch(&mut self, jobs: &[Job]) -> Vec<Result<JobOutcome, JobError>> {
        let file_jobs: Vec<FileJob> = jobs.iter().map(Self::file_job).collect();
        let outcomes = self.pipeline.protect_files(&file_jobs, &mut self.rng);
        jobs.iter().zip(outcomes).map(|(job, outcome)| job_outcome(job, outcome)).collect()
    }

    /// The pipeline's stages run for as long as jobs come: the next photos are read and the last
    /// ones written while the engine attacks, and a group is attacked as soon as the photo after it
    /// has not arrived yet. Out of GPU memory, the pipeline retries photos one by one, then on the CPU.
    fn protect_stream(
        &mut self,
        next: &mut (dyn FnMut(bool) -> Option<Job> + Send),
        done: &Done,
        stopping: &AtomicBool,
    ) {
        self.pipeline.protect_stream(
            || {
                let job = next(true)?;
                let file_job = Self::file_job(&job);
                Some((job, file_job))
            },
            |job, outcome| {
                let result = match outcome {
                    Err(PipelineError::Stopped { .. }) => None,
                    outcome => Some(job_outcome(&job, outcome)),
                };
                done(Report { job, result });
            },
            &mut self.rng,
            Grouping::AsReady,
            stopping,
        );
    }
}

/// A pipeline outcome as the worker reports it: no file written is a skip.
fn job_outcome(
    job: &Job,
    outcome: Result<crate::pipeline::Outcome, PipelineError>,
) -> Result<JobOutcome, JobError> {
    let outcome = outcome.map_err(from_pipeline)?;
    match outcome.written {
        Some(w) => Ok(JobOutcome {
            output: w.path,
            faces: u32::try_from(outcome.faces).unwrap_or(u32::MAX),
            seconds: outcome.seconds,
            losses: outcome.losses,
        }),
        None => Err(JobError::new(
            ErrorKind::Skip,
            format!("{}: no face found; nothing written (protect.no_face = \"skip\")", job.source.display()),
        )),
    }
}

/// The engine when the models did not load: refuses every job with the reason.
pub struct Unavailable {
    reason: String,
}

impl Protector for Unavailable {
    fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError> {
        Err(JobError::new(
            ErrorKind::Transient,
            format!("{}: not protected: {}", job.source.display(), self.reason),
        ))
    }
}

/// Sorts a pipeline error into the file's fault, the surroundings', or the device's memory.
fn from_pipeline(e: PipelineError) -> JobError {
    match e {
        PipelineError::Image(e) => from_image(e),
        PipelineError::Name { .. } => JobError::new(ErrorKind::Permanent, e.to_string()),
        other => {
            let kind = if other.is_out_of_memory() { ErrorKind::OutOfMemory } else { ErrorKind::Transient };
            JobError::new(kind, other.to_string())
        }
    }
}

/// Reads each photo and writes its pixels back unchanged: the whole path of a protected copy but
/// the attack. Tests use it to check how `imageio` errors are sorted.
#[cfg(test)]
pub struct CopyProtector;

#[cfg(test)]
impl Protector for CopyProtector {
    fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError> {
        let start = std::time::Instant::now();
        let photo = imageio::read_in_folder(&job.folder, &job.source, &job.imageio).map_err(from_image)?;
        let name = job.source.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            JobError::new(
                ErrorKind::Permanent,
                format!("{}: the file name is not valid UTF-8", job.source.display()),
            )
        })?;
        let written =
            imageio::write(&photo, &job.output_dir, name, job.format, &job.imageio).map_err(from_image)?;
        Ok(JobOutcome {
            output: written.path,
            faces: 0,
            seconds: start.elapsed().as_secs_f64(),
            losses: Vec::new(),
        })
    }
}

/// Sorts an `imageio` error into the file's fault or the surroundings'.
pub fn from_image(e: imageio::ImageError) -> JobError {
    use imageio::ImageError as E;
    let kind = match &e {
        E::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => ErrorKind::Gone,
        E::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            ErrorKind::Transient
        }
        E::OutputDirMissing { .. }
        | E::OutputDirNotWritable { .. }
        | E::DiskFull { .. }
        | E::Write { .. } => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };
    JobError::new(kind, e.to_string())
}

/// A job's end, as the worker reports it.
#[derive(Debug)]
pub struct Report {
    pub job: Job,
    /// `None`: not attempted because the worker is stopping.
    pub result: Option<Result<JobOutcome, JobError>>,
}

/// The running engine thread.
pub struct Worker {
    jobs: mpsc::SyncSender<Job>,
    stopping: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the engine thread, builds the protector on it with `make`, and waits until it is built.
    /// Each finished job is handed to `report`. At most `queue` jobs wait.
    pub fn start<M, R>(queue: usize, make: M, report: R) -> Result<Worker, WorkerError>
    where
        M: FnOnce() -> Result<Box<dyn Protector>, String> + Send + 'static,
        R: Fn(Report) + Send + 'static,
    {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        std::thread::Builder::new()
            .name("veil-engine".into())
            .spawn(move || {
                let protector = match make() {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                run(protector, rx, &stop, report);
            })
            .map_err(WorkerError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Worker { jobs, stopping }),
            Ok(Err(e)) => Err(WorkerError::Start(e)),
            Err(_) => Err(WorkerError::Start("the engine thread ended while starting".into())),
        }
    }

    /// Queues a job; gives it back when the queue is full or the worker has stopped.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j) => j,
        })
    }

    /// Asks the worker to take no new job: the ones still queued come back unattempted.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// The engine thread's life: jobs from the queue go through the protector's stream; results and the
/// jobs left unattempted once stopping are reported, in the order they end, from a reporting thread
/// (the protector may finish photos on threads of its own).
fn run(
    mut protector: Box<dyn Protector>,
    rx: mpsc::Receiver<Job>,
    stopping: &AtomicBool,
    report: impl Fn(Report) + Send,
) {
    let (tx, reports) = mpsc::channel::<Report>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for r in reports {
                report(r);
            }
        });
        let unattempted = tx.clone();
        let mut next = move |wait: bool| loop {
            let job = if wait { rx.recv().ok()? } else { rx.try_recv().ok()? };
            if !stopping.load(Ordering::SeqCst) {
                return Some(job);
            }
            let _ = unattempted.send(Report { job, result: None });
        };
        let done = move |report: Report| {
            let _ = tx.send(report);
        };
        protector.protect_stream(&mut next, &done, stopping);
    });
}

/// Runs a batch; on out-of-memory splits it in halves, and for a single photo falls back to the CPU
/// once before giving up on it.
fn protect_fitting<P: Protector + ?Sized>(
    p: &mut P,
    batch: Vec<Job>,
) -> Vec<(Job, Result<JobOutcome, JobError>)> {
    let results = p.protect_batch(&batch);
    let oom = results.iter().any(|r| matches!(r, Err(e) if e.kind == ErrorKind::OutOfMemory));
    if !oom {
        return batch.into_iter().zip(results).collect();
    }
    if batch.len() > 1 {
        tracing::warn!("out of device memory with {} photos at once: trying smaller batches", batch.len());
        let mut batch = batch;
        let second = batch.split_off(batch.len() / 2);
        let mut out = protect_fitting(p, batch);
        out.extend(protect_fitting(p, second));
        return out;
    }
    if p.fall_back_to_cpu() {
        tracing::warn!("out of GPU memory on {}: continuing on the CPU", batch[0].source.display());
        let results = p.protect_batch(&batch);
        return batch.into_iter().zip(results).collect();
    }
    batch.into_iter().zip(results).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs out of memory above `fits` photos at once while on the GPU.
    struct Tight {
        fits: usize,
        on_cpu: bool,
        calls: Vec<usize>,
    }

    impl Protector for Tight {
        fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError> {
            Ok(JobOutcome { output: job.source.clone(), faces: 1, seconds: 0.0, losses: vec![] })
        }
        fn protect_batch(&mut self, jobs: &[Job]) -> Vec<Result<JobOutcome, JobError>> {
            self.calls.push(jobs.len());
            if !self.on_cpu && jobs.len() > self.fits {
                return jobs.iter().map(|_| Err(JobError::new(ErrorKind::OutOfMemory, "oom"))).collect();
            }
            jobs.iter().map(|j| self.protect(j)).collect()
        }
        fn fall_back_to_cpu(&mut self) -> bool {
            !std::mem::replace(&mut self.on_cpu, true)
        }
    }

    fn job(n: usize) -> Job {
        Job {
            source: PathBuf::from(format!("/in/{n}.jpg")),
            folder: "/in".into(),
            output_dir: "/out".into(),
            preset: Preset::Balanced,
            format: None,
            imageio: imageio::Settings::default(),
        }
    }

    #[test]
    fn out_of_memory_splits_the_batch_then_moves_to_the_cpu() {
        let mut p = Tight { fits: 2, on_cpu: false, calls: vec![] };
        let out = protect_fitting(&mut p, (0..5).map(job).collect());
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(
            out.iter().map(|(j, _)| j.source.clone()).collect::<Vec<_>>(),
            (0..5).map(|n| job(n).source).collect::<Vec<_>>()
        );
        assert_eq!(p.calls, [5, 2, 3, 1, 2], "halves until they fit");
        assert!(!p.on_cpu);

        let mut p = Tight { fits: 0, on_cpu: false, calls: vec![] };
        let out = protect_fitting(&mut p, vec![job(0)]);
        assert!(out[0].1.is_ok() && p.on_cpu, "a single photo that does not fit runs on the CPU");
    }

    #[test]
    fn worker_reports_every_job_and_returns_queued_ones_when_stopping() {
        let (tx, rx) = mpsc::channel();
        let worker = Worker::start(
            4,
            || Ok(Box::new(Tight { fits: 9, on_cpu: false, calls: vec![] }) as Box<dyn Protector>),
            move |r| tx.send(r).unwrap(),
        )
        .unwrap();
        worker.try_send(job(1)).unwrap();
        let r = rx.recv().unwrap();
        assert_eq!(r.job.source, job(1).source);
        assert!(matches!(r.result, Some(Ok(_))));
        worker.stop();
        worker.try_send(job(2)).unwrap();
        assert!(rx.recv().unwrap().result.is_none());
        let err = Worker::start(1, || Err("no models".into()), |_| {}).err().unwrap();
        assert!(err.to_string().contains("no models"));
    }

    #[test]
    fn copy_protector_writes_the_photo_and_names_broken_ones() {
        let d = tempfile::tempdir().unwrap();
        let (input, out) = (d.path().join("in"), d.path().join("out"));
        std::fs::create_dir_all(&input).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let src = input.join("p.png");
        image::RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30])).save(&src).unwrap();
        let mut job = job(0);
        (job.source, job.folder, job.output_dir) = (src.clone(), input.clone(), out.clone());
        let done = CopyProtector.protect(&job).unwrap();
        assert_eq!(done.output, out.join("p.png"));
        assert_eq!(image::open(&done.output).unwrap().to_rgb8().get_pixel(3, 2).0, [10, 20, 30]);

        std::fs::write(&src, b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let e = CopyProtector.protect(&job).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("p.png"), "{e}");
        std::fs::remove_file(&src).unwrap();
        assert_eq!(CopyProtector.protect(&job).unwrap_err().kind, ErrorKind::Gone);
        std::fs::write(&src, std::fs::read(&done.output).unwrap()).unwrap();
        std::fs::remove_dir(&out).ok();
        std::fs::remove_file(out.join("p.png")).ok();
        std::fs::remove_dir(&out).unwrap();
        assert_eq!(CopyProtector.protect(&job).unwrap_err().kind, ErrorKind::Transient);
    }
}
