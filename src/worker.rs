//! The engine worker: one thread that owns libtorch and the loaded models, fed through a bounded
//! queue. What it does with each photo is a [`Protector`]; [`protector`] builds the one `veild` runs.
//!
//! Jobs flow from the queue through [`Protector::protect_stream`] for as long as the worker runs. The
//! real engine streams them through [`Pipeline::protect_stream`], which groups photos, reads ahead,
//! writes behind, and handles running out of GPU memory (photos one by one, then the CPU).

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
    /// How to read and write it; `earlier` names the copy an earlier content or attempt may have
    /// written, which this one replaces.
    pub imageio: imageio::Settings,
}

/// A protected photo.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub output: PathBuf,
    /// False when no face was found and the copy is the photo unchanged (`protect.no_face = "copy"`).
    pub protected: bool,
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
    /// The surroundings are (the source unreadable for now, the engine not loaded): try again a
    /// few times.
    Transient,
    /// The output folder cannot take the copy now (missing, read-only, disk full): the photo waits
    /// for it and is tried again until it can.
    Output,
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

    /// Protects the jobs `next` hands over until it answers `None` (it waits for the next job), and
    /// hands each job's report to `done` (from any thread, in any order). Once `stopping` is set, no
    /// further photo may be started: a job taken but not started is reported unattempted. By
    /// default: one job at a time through [`Protector::protect`].
    fn protect_stream(
        &mut self,
        next: &mut (dyn FnMut() -> Option<Job> + Send),
        done: &Done,
        stopping: &AtomicBool,
    ) {
        while let Some(job) = next() {
            let result = (!stopping.load(Ordering::SeqCst)).then(|| self.protect(&job));
            done(Report { job, result });
        }
    }

    /// Why this protector protects nothing (its models did not load), if so.
    fn unavailable(&self) -> Option<&str> {
        None
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
            tracing::error!("{}", cannot_protect(&reason));
            return Ok(Box::new(Unavailable { reason }));
        }
    };
    let names: Vec<&str> = pipeline.ensemble().generators.iter().map(|g| g.name.as_str()).collect();
    tracing::info!("protection engine loaded on {}: {}", crate::engine::describe(device), names.join(", "));
    let rng = Rng::new(config.protect.seed());
    Ok(Box::new(PipelineProtector { pipeline, rng }))
}

/// What `veild` tells (in its log and `veil status`) of an engine whose models did not load.
pub fn cannot_protect(reason: &str) -> String {
    format!(
        "photos cannot be protected: {reason}; nothing is written: each photo is tried a few times, then \
         marked failed (fix the models, see `veil doctor`, restart veild, then `veil retry --all`)"
    )
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
        let mut out = self.pipeline.protect_files(&[Self::file_job(job)], &mut self.rng);
        out.pop().map_or_else(
            || Err(JobError::new(ErrorKind::Transient, "the engine answered nothing")),
            |outcome| job_outcome(job, outcome),
        )
    }

    /// The pipeline's stages run for as long as jobs come: the next photos are read and the last
    /// ones written while the engine attacks, and a group is attacked as soon as the photo after it
    /// has not arrived yet. Out of GPU memory, the pipeline retries photos one by one, then on the CPU.
    fn protect_stream(
        &mut self,
        next: &mut (dyn FnMut() -> Option<Job> + Send),
        done: &Done,
        stopping: &AtomicBool,
    ) {
        self.pipeline.protect_stream(
            || {
                let job = next()?;
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
            protected: outcome.action != crate::pipeline::Action::CopiedNoFace,
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

    fn unavailable(&self) -> Option<&str> {
        Some(&self.reason)
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
        let name = job.source.file_name().ok_or_else(|| {
            JobError::new(ErrorKind::Permanent, format!("{}: not a file name", job.source.display()))
        })?;
        let written =
            imageio::write(&photo, &job.output_dir, name, job.format, &job.imageio).map_err(from_image)?;
        Ok(JobOutcome {
            output: written.path,
            protected: false,
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
        | E::NoSpace { .. } => ErrorKind::Output,
        E::Write { .. } => ErrorKind::Transient,
        // A video or a text beside the photos: left alone, and not called a failure.
        E::NotAPhoto { .. } => ErrorKind::Skip,
        // Still being written, most likely: tried again (and again when it changes).
        e if e.may_be_incomplete() => ErrorKind::Transient,
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
    pub fn try_send(&self, job: Job) -> Result<(), Box<Job>> {
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(j) | mpsc::TrySendError::Disconnected(j) => Box::new(j),
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
        let mut next = move || loop {
            let job = rx.recv().ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every job as protected, without touching a file.
    struct Echo;

    impl Protector for Echo {
        fn protect(&mut self, job: &Job) -> Result<JobOutcome, JobError> {
            Ok(JobOutcome {
                output: job.source.clone(),
                protected: true,
                faces: 1,
                seconds: 0.0,
                losses: vec![],
            })
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
    fn worker_reports_every_job_and_returns_queued_ones_when_stopping() {
        let (tx, rx) = mpsc::channel();
        let worker =
            Worker::start(4, || Ok(Box::new(Echo) as Box<dyn Protector>), move |r| tx.send(r).unwrap())
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

        std::fs::write(&src, b"not a photo at all").unwrap();
        let e = CopyProtector.protect(&job).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("p.png"), "{e}");
        // Cut short, as a file still being written reads: tried again.
        std::fs::write(&src, b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let e = CopyProtector.protect(&job).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("p.png") && e.message.contains("truncated PNG"), "{e}");
        std::fs::remove_file(&src).unwrap();
        assert_eq!(CopyProtector.protect(&job).unwrap_err().kind, ErrorKind::Gone);
        std::fs::write(&src, std::fs::read(&done.output).unwrap()).unwrap();
        std::fs::remove_dir(&out).ok();
        std::fs::remove_file(out.join("p.png")).ok();
        std::fs::remove_dir(&out).unwrap();
        assert_eq!(CopyProtector.protect(&job).unwrap_err().kind, ErrorKind::Output);
    }
}
