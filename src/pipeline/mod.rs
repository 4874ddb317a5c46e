//! One photo, end to end: read it (`imageio`, upright), find the faces (`faces`), protect their
//! regions against the ensemble (`protect`), and write the protected copy (`imageio`, metadata kept).
//!
//! A [`Pipeline`] owns the loaded detector and generators, so it lives on the thread that owns
//! libtorch. `veil protect`, `veil eval` and the daemon's engine worker all go through it.

mod stages;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Mutex, PoisonError},
    time::Instant,
};

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::{
    config::Config,
    faces::{self, Detector},
    imageio::{self, Format, ImageError, Photo, Written},
    models::Role,
    protect::{self, Aligned, Ensemble, NoFace, Params, Preset, ProtectError, Region, Rng, Target},
    quality,
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{}: {source}", path.display())]
    Faces { path: PathBuf, source: faces::FacesError },
    #[error("{}: {source}", path.display())]
    Protect { path: PathBuf, source: ProtectError },
    #[error("cannot load the face detector: {0}")]
    Detector(faces::FacesError),
    #[error("cannot load the generators: {0}")]
    Generators(ProtectError),
    #[error("{}: not a file name Veil can write", path.display())]
    Name { path: PathBuf },
    #[error("{}: not protected: Veil is stopping", path.display())]
    Stopped { path: PathBuf },
}

impl PipelineError {
    /// Whether the device ran out of memory (a smaller batch, or the CPU, may succeed).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, PipelineError::Protect { .. } | PipelineError::Faces { .. })
            && self.to_string().contains("out of memory")
    }
}

/// What happened to one photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Faces found and protected.
    Protected,
    /// No face: the whole image was protected (`no_face = "whole"`).
    ProtectedWhole,
    /// No face: an unchanged copy was written (`no_face = "copy"`).
    CopiedNoFace,
    /// No face: nothing written (`no_face = "skip"`).
    SkippedNoFace,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Protected => "protected",
            Action::ProtectedWhole => "protected-whole",
            Action::CopiedNoFace => "copied-no-face",
            Action::SkippedNoFace => "skipped-no-face",
        }
    }
}

/// The report of one photo.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub source: PathBuf,
    pub action: Action,
    pub written: Option<Written>,
    /// Faces found (at least the minimum size) and faces left out as too small.
    pub faces: usize,
    pub too_small: usize,
    /// The merged regions that were attacked, in upright full-resolution pixels.
    pub regions: Vec<Region>,
    /// Per generator: the final `MSE(G(x_prot), G(x))` averaged over the regions.
    pub losses: Vec<(String, f64)>,
    /// Of the written file, decoded again, against the original's upright pixels: PSNR over the
    /// whole image, SSIM over the protected regions (the whole image when none was protected).
    pub psnr: Option<f64>,
    pub ssim: Option<f64>,
    /// From the start to the written file: decode, detect, protect, encode and write.
    pub seconds: f64,
    /// The quality check after that: the written file decoded again, PSNR and SSIM.
    pub check_seconds: f64,
}

impl Outcome {
    /// One JSON object for `veil protect --json`. Paths are JSON strings: a name that is not UTF-8
    /// shows its stray bytes as U+FFFD there (the files themselves keep their names byte for byte).
    pub fn to_json(&self) -> serde_json::Value {
        let finite = |v: Option<f64>| v.filter(|x| x.is_finite());
        let losses: serde_json::Map<String, serde_json::Value> =
            self.losses.iter().map(|(n, v)| (n.clone(), serde_json::json!(v))).collect();
        serde_json::json!({
            "source": self.source.to_string_lossy(),
            "action": self.action.as_str(),
            "output": self.written.as_ref().map(|w| w.path.to_string_lossy()),
            "bytes": self.written.as_ref().map(|w| w.bytes),
            "input_bytes": self.written.as_ref().map(|w| w.input_bytes),
            "faces": self.faces,
            "too_small": self.too_small,
            "regions": self.regions.iter().map(|r| [r.x, r.y, r.w, r.h]).collect::<Vec<_>>(),
            "seconds": self.seconds,
            "check_seconds": self.check_seconds,
            "psnr": finite(self.psnr),
            "ssim": self.ssim,
            "losses": losses,
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        // A face found but too small to protect is named: "no face found" would hide it.
        let none = match self.too_small {
            0 => "no face found".to_string(),
            n => format!("no face large enough to protect ({n} smaller than faces.min_face_px)"),
        };
        let what = match self.action {
            Action::Protected => format!("{} face(s) protected", self.faces),
            Action::ProtectedWhole => format!("{none}; whole image protected"),
            // Its pixels, not always its bytes (a HEIC written as JPEG, metadata taken out): the
            // PSNR below tells.
            Action::CopiedNoFace => format!("{none}; copied without protection"),
            Action::SkippedNoFace => format!("{none}; skipped"),
        };
        let mut line = format!("{}: {what}", self.source.display());
        if self.action == Action::Protected && self.too_small > 0 {
            line += &format!(" ({} more smaller than faces.min_face_px left as they are)", self.too_small);
        }
        if let Some(w) = &self.written {
            line +=
                &format!(" -> {} ({} bytes; original {} bytes)", w.path.display(), w.bytes, w.input_bytes);
        }
        match (self.psnr, self.ssim) {
            (Some(p), _) if p.is_infinite() => line += ", pixels identical to the original's",
            (Some(p), Some(s)) => line += &format!(", PSNR {p:.1} dB, SSIM {s:.4}"),
            _ => {}
        }
        if !self.losses.is_empty() {
            let losses: Vec<String> = self.losses.iter().map(|(name, l)| format!("{name} {l:.3}")).collect();
            line += &format!(", disruption (MSE) {}", losses.join(" "));
        }
        line + &format!(", {:.1} s", self.seconds)
    }
}

/// What [`collect_photos`] found: the photos, and the camera RAW files its folder walks passed over
/// (photos to their owner, which Veil refuses), pictures in formats Veil does not read and symbolic
/// links, counted to be told ([`Walked::left_out`]).
#[derive(Debug, Default)]
pub struct Walked {
    pub photos: Vec<PathBuf>,
    pub raw: usize,
    /// GIF, BMP, PSD, … by their extension.
    pub other_images: usize,
    /// Symbolic links under a photo's name, not followed.
    pub links: usize,
}

impl Walked {
    /// What the walk passed over that a user may take for photos, and what to do about each kind:
    /// `2 camera RAW files (…); 1 symbolic link (…)`. `None` when nothing was.
    pub fn left_out(&self) -> Option<String> {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        let mut kinds = Vec::new();
        if self.raw > 0 {
            kinds.push(raw_files(self.raw));
        }
        if self.other_images > 0 {
            let n = self.other_images;
            kinds.push(format!(
                "{n} picture{} in a format Veil does not protect (GIF, BMP, PSD, …: save {} as JPEG or PNG and \
                 protect that)",
                s(n),
                if n == 1 { "it" } else { "them" }
            ));
        }
        if self.links > 0 {
            let n = self.links;
            kinds.push(format!(
                "{n} symbolic link{} (not followed in a folder: give Veil the photo{} {})",
                s(n),
                s(n),
                if n == 1 { "itself" } else { "themselves" }
            ));
        }
        (!kinds.is_empty()).then(|| kinds.join("; "))
    }

    /// Why a walk of a folder found no photo, for the user, with what it passed over
    /// ([`Walked::left_out`]), since those may be photos to their owner.
    pub fn no_photos(&self) -> String {
        match self.left_out() {
            None => {
                "no photos in it (hidden entries, symbolic links and output folders are not walked)".into()
            }
            Some(what) => format!("no photos Veil can protect in it: {what}"),
        }
    }
}

/// The photos named by `paths`: files as given, folders walked recursively (hidden entries and files
/// without a photo extension skipped; RAW files, other pictures and symbolic links counted), in a
/// stable order. The folders `outputs` (the copies' folders, which may lie inside them) are never
/// walked: that would protect the copies again.
pub fn collect_photos(paths: &[PathBuf], outputs: &[PathBuf]) -> Result<Walked, ImageError> {
    let outputs = identities(outputs);
    let mut found = Walked::default();
    for p in paths {
        let meta =
            std::fs::symlink_metadata(p).map_err(|source| ImageError::Open { path: p.clone(), source })?;
        if meta.is_dir() {
            walk(p, &meta, &outputs, &mut found)?;
        } else {
            found.photos.push(p.clone());
        }
    }
    Ok(found)
}

/// Why a hidden file named on its own is not protected (its copy would be hidden too, and `veild`
/// takes hidden names for temporary files).
pub const HIDDEN_FILE: &str = "a hidden file: Veil leaves hidden files alone (rename it to protect it)";

/// Whether `path`'s file name is a hidden one (by its bytes: a name that is not UTF-8 is not).
pub fn is_hidden(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    path.file_name().is_some_and(|n| n.as_bytes().starts_with(b"."))
}

/// `n` camera RAW files, and what to do about them.
fn raw_files(n: usize) -> String {
    format!(
        "{n} camera RAW file{} (Veil protects developed photos: export {} as JPEG or TIFF and protect that)",
        if n == 1 { "" } else { "s" },
        if n == 1 { "it" } else { "them" }
    )
}

/// The identities of the folders `outputs` that exist, which a walk does not enter.
fn identities(outputs: &[PathBuf]) -> Vec<(u64, u64)> {
    outputs.iter().filter_map(|o| std::fs::metadata(o).ok()).map(|m| file_id(&m)).collect()
}

/// A file's identity: device and inode, whatever path leads to it.
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Walks `dir`, whose metadata the caller has already read, unless it is an output folder (one of
/// the identities `outputs`): photos by their extension, RAW files counted.
fn walk(
    dir: &Path,
    meta: &std::fs::Metadata,
    outputs: &[(u64, u64)],
    found: &mut Walked,
) -> Result<(), ImageError> {
    if outputs.contains(&file_id(meta)) {
        tracing::info!("{}: the output folder, left out", dir.display());
        return Ok(());
    }
    let entries =
        std::fs::read_dir(dir).map_err(|source| ImageError::Open { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for p in paths {
        if is_hidden(&p) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            walk(&p, &meta, outputs, found)?;
        } else if meta.is_file() {
            match p.extension().and_then(|e| e.to_str()) {
                Some(e) if Format::is_photo_extension(e) => found.photos.push(p),
                Some(e) if imageio::is_raw_extension(e) => found.raw += 1,
                Some(e) if imageio::is_other_image_extension(e) => found.other_images += 1,
                _ => {}
            }
        } else if meta.file_type().is_symlink()
            && p.extension().and_then(|e| e.to_str()).is_some_and(Format::is_photo_extension)
        {
            // Under a photo's name: a photo to its owner.
            found.links += 1;
        }
    }
    Ok(())
}

/// Options of one job that may differ from the configuration (per folder, per command).
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    pub preset: Option<Preset>,
    pub format: Option<Format>,
    /// The watched folder the source was found in: symbolic links may not lead out of it.
    pub folder: Option<PathBuf>,
    /// Reading and writing settings for this job (default: the configuration's `[imageio]`).
    pub imageio: Option<imageio::Settings>,
}

/// How many photos the engine attacks together by default on a GPU, where their faces share each
/// attack pass.
const GPU_PHOTO_BATCH: usize = 8;

/// Aligned crops turned by less than this are taken as upright (see `Pipeline::find`).
const MIN_TURN_DEGREES: f64 = 3.0;

/// One file for [`Pipeline::protect_files`].
#[derive(Debug, Clone)]
pub struct FileJob {
    pub source: PathBuf,
    pub out_dir: PathBuf,
    pub options: JobOptions,
}

pub use stages::Grouping;

/// A decoded photo with its faces found, waiting for its attack and its write.
struct Prepared {
    photo: Photo,
    /// Its protected pixels, once attacked (only the part the attack may have changed).
    protected: Option<Patch>,
    /// The strips of its JPEG copy that no face crosses, encoded while it was attacked.
    preencoded: Option<imageio::Preencoded>,
    found: Found,
    params: Params,
    /// Time spent on it so far.
    seconds: f64,
}

/// A rectangle of pixels to put into a photo at `(x, y)`: the part of a photo the protection may
/// have changed, so that the photo itself is never copied whole (36 MB at 12 MP).
struct Patch {
    x: i64,
    y: i64,
    pixels: RgbImage,
}

impl Patch {
    /// Puts the patch into `image` and returns the pixels it covered there, as a patch of the same
    /// place (applying that one puts them back).
    fn apply(self, image: &mut RgbImage) -> Patch {
        let (w, h) = self.pixels.dimensions();
        let before = image::imageops::crop_imm(image, self.x as u32, self.y as u32, w, h).to_image();
        image::imageops::replace(image, &self.pixels, self.x, self.y);
        Patch { x: self.x, y: self.y, pixels: before }
    }
}

/// The loaded detector and generators, with the configuration they run under.
pub struct Pipeline {
    detector: Detector,
    ensemble: Ensemble,
    config: Config,
    /// What the `auto` preset resolves to on this engine, timed when first needed.
    auto: std::cell::OnceCell<Preset>,
}

impl Pipeline {
    /// Loads MTCNN and the `ensemble` generators of the models folder onto `device`. `config` must be
    /// resolved (it names the models folder).
    pub fn load(config: &Config, device: Device) -> Result<Pipeline, PipelineError> {
        let dir = config.models.dir.clone().unwrap_or_default();
        let detector = Detector::load(&dir, &config.faces, device).map_err(PipelineError::Detector)?;
        let mut ensemble = Ensemble::load(&dir, &[Role::Ensemble], device, &config.protect.weights)
            .map_err(PipelineError::Generators)?;
        ensemble.configure(&config.engine);
        Ok(Pipeline { detector, ensemble, config: config.clone(), auto: std::cell::OnceCell::new() })
    }

    /// The preset in effect for `preset` (or the configured one), with `auto` resolved.
    pub fn preset(&self, preset: Option<Preset>) -> Preset {
        match preset.unwrap_or(self.config.protect.preset) {
            Preset::Auto => *self.auto.get_or_init(|| {
                let device = self.ensemble.device;
                let auto = Preset::Auto
                    .resolve(!device.is_cuda(), || estimate_balanced_seconds_per_face(&self.ensemble));
                tracing::info!("preset auto: {auto} on {}", crate::engine::describe(device));
                auto
            }),
            other => other,
        }
    }

    /// How many photos the engine attacks together at most: `engine.photo_batch`, else several on a
    /// GPU and one on a CPU (where batching gains nothing); never 0.
    pub fn photo_batch(&self) -> usize {
        match self.config.engine.photo_batch {
            Some(n) => n.get(),
            None if self.ensemble.device.is_cuda() => GPU_PHOTO_BATCH,
            None => 1,
        }
    }

    pub fn ensemble(&self) -> &Ensemble {
        &self.ensemble
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The attack parameters for `preset` (or the configured one), `auto` resolved.
    pub fn params(&self, preset: Option<Preset>) -> Params {
        self.config.protect.params(Some(self.preset(preset)))
    }

    /// Protects one file into `out_dir` under its own name.
    pub fn protect_file(
        &mut self,
        source: &Path,
        out_dir: &Path,
        options: &JobOptions,
        rng: &mut Rng,
    ) -> Result<Outcome, PipelineError> {
        let job = FileJob {
            source: source.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            options: options.clone(),
        };
        let mut out = self.protect_files(std::slice::from_ref(&job), rng);
        out.pop().unwrap_or_else(|| Err(PipelineError::Name { path: source.to_path_buf() }))
    }

    /// Protects several files: [`Pipeline::protect_stream`] over `jobs`, grouped the same way
    /// whatever the timing (so a seed gives the same pixels). One result per job, in order; a file's
    /// error is its own.
    pub fn protect_files(&mut self, jobs: &[FileJob], rng: &mut Rng) -> Vec<Result<Outcome, PipelineError>> {
        let results: Mutex<Vec<Option<Result<Outcome, PipelineError>>>> =
            Mutex::new(jobs.iter().map(|_| None).collect());
        let mut next = jobs.iter().cloned().enumerate();
        let never = AtomicBool::new(false);
        self.protect_stream(
            move || next.next(),
            |i, outcome| {
                let mut results = results.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(outcome);
                }
            },
            rng,
            Grouping::Deterministic,
            &never,
        );
        results
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .zip(jobs)
            .map(|(r, job)| r.unwrap_or_else(|| Err(PipelineError::Name { path: job.source.clone() })))
            .collect()
    }

    /// Finds the faces of a decoded photo (`decode_seconds` spent decoding it).
    fn detect(
        &self,
        mut photo: Photo,
        decode_seconds: f64,
        job: &FileJob,
    ) -> Result<Prepared, PipelineError> {
        let started = Instant::now();
        let found = self.find(&photo)?;
        if found.action != Action::CopiedNoFace {
            // Only an unchanged copy is written from the source's bytes: a photo in flight need
            // not hold them beside its pixels.
            photo.release_original();
        }
        let detect_seconds = started.elapsed().as_secs_f64();
        tracing::debug!(
            "{}: decode {decode_seconds:.3} s, detect {detect_seconds:.3} s",
            job.source.display()
        );
        let params = self.params(job.options.preset);
        Ok(Prepared {
            photo,
            protected: None,
            preencoded: None,
            found,
            params,
            seconds: decode_seconds + detect_seconds,
        })
    }

    /// Attacks the faces of `members` together (`jobs[i]` is member i's job) and stores each
    /// protected photo. Meanwhile another thread encodes the strips of their JPEG copies that no face
    /// crosses ([`imageio::preencode`], on half the cores, so the engine's thread keeps one), which
    /// leaves the writers only the strips across the faces: on a GPU the encoding of a photo then
    /// mostly overlaps its attack.
    fn attack_group(
        &self,
        members: &mut [Prepared],
        jobs: &[&FileJob],
        params: &Params,
        rng: &mut Rng,
    ) -> Result<(), PipelineError> {
        let config = &self.config;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (out, pre) = std::thread::scope(|scope| {
            let ahead: &[Prepared] = members;
            let encoder = scope.spawn(move || {
                ahead
                    .iter()
                    .zip(jobs)
                    .map(|(p, job)| {
                        let settings = job.options.imageio.as_ref().unwrap_or(&config.imageio);
                        let changing: Vec<(i64, i64, i64, i64)> =
                            p.found.regions().iter().map(|r| (r.x, r.y, r.w, r.h)).collect();
                        let started = Instant::now();
                        let pre =
                            imageio::preencode(&p.photo, &changing, job.options.format, settings, cores / 2);
                        if let Some(pre) = &pre {
                            let (done, of) = pre.done();
                            tracing::debug!(
                                "{}: {done} of {of} JPEG strips encoded during the attack in {:.3} s",
                                job.source.display(),
                                started.elapsed().as_secs_f64()
                            );
                        }
                        pre
                    })
                    .collect::<Vec<_>>()
            });
            let photos: Vec<(&RgbImage, &[Target])> =
                ahead.iter().map(|p| (&p.photo.pixels, p.found.targets.as_slice())).collect();
            let out = attack_photos(&self.ensemble, &photos, params, rng);
            (out, encoder.join().unwrap_or_default())
        });
        let out = out.map_err(|source| {
            let path = members.first().map(|p| p.photo.source.clone()).unwrap_or_default();
            PipelineError::Protect { path, source }
        })?;
        let mut pre = pre.into_iter();
        for (p, (patch, losses)) in members.iter_mut().zip(out) {
            p.protected = patch;
            p.preencoded = pre.next().flatten();
            p.found.losses = losses;
        }
        Ok(())
    }

    /// Finds the faces of `photo` and the regions to protect under the `no_face` policy.
    pub fn find(&self, photo: &Photo) -> Result<Found, PipelineError> {
        let detections = self
            .detector
            .detect(&photo.pixels)
            .map_err(|source| PipelineError::Faces { path: photo.source.clone(), source })?;
        let (w, h) = photo.pixels.dimensions();
        let protect = &self.config.protect;
        // Aligned crops are framed and perturbed only when framing is on and some steps use them.
        let aligned = protect.framing && protect.aligned > 0.0;
        let mut targets: Vec<Target> = detections
            .faces
            .iter()
            .filter_map(|f| {
                let c = f.crop_region(self.config.faces.margin, w, h)?;
                let face = Region {
                    x: i64::from(c.x),
                    y: i64::from(c.y),
                    w: i64::from(c.size),
                    h: i64::from(c.size),
                };
                let aligned = f.aligned_crop().filter(|_| aligned).map(|sq| {
                    let side = sq.side.round() as i64;
                    let square = Region { x: sq.x.round() as i64, y: sq.y.round() as i64, w: side, h: side };
                    // A small turn is the landmarks' noise on an upright face (on CelebA's aligned val
                    // faces the fitted turn has a standard deviation of 1.7°): taken as upright.
                    let angle = if sq.angle.abs() < MIN_TURN_DEGREES { 0.0 } else { sq.angle };
                    Aligned { square, angle }
                });
                Some(Target { face, aligned: aligned.into_iter().collect() })
            })
            .collect();
        let action = match (targets.is_empty(), protect.no_face) {
            (false, _) => Action::Protected,
            (true, NoFace::Whole) => {
                targets.push(Target::face(Region { x: 0, y: 0, w: i64::from(w), h: i64::from(h) }));
                Action::ProtectedWhole
            }
            (true, NoFace::Copy) => Action::CopiedNoFace,
            (true, NoFace::Skip) => Action::SkippedNoFace,
        };
        let targets = protect::merge_targets(&targets, i64::from(w), i64::from(h));
        Ok(Found {
            action,
            faces: detections.faces.len(),
            too_small: detections.too_small,
            targets,
            size: [i64::from(w), i64::from(h)],
            losses: Vec::new(),
        })
    }

    /// Protects `found.regions` of `photo` against `ensemble` (the pipeline's own, or another for
    /// baselines such as a single-condition attack).
    pub fn protect_regions(
        &self,
        ensemble: &Ensemble,
        photo: &mut Photo,
        mut found: Found,
        params: &Params,
        rng: &mut Rng,
    ) -> Result<Found, PipelineError> {
        if found.targets.is_empty() {
            return Ok(found);
        }
        let mut out = attack_photos(ensemble, &[(&photo.pixels, found.targets.as_slice())], params, rng)
            .map_err(|source| PipelineError::Protect { path: photo.source.clone(), source })?;
        if let Some((patch, losses)) = out.pop() {
            if let Some(patch) = patch {
                patch.apply(&mut photo.pixels);
            }
            found.losses = losses;
        }
        Ok(found)
    }
}

/// Decodes a job's photo. Runs on a decoder thread: it needs no model.
fn decode(config: &Config, job: &FileJob) -> Result<Photo, PipelineError> {
    let settings = job.options.imageio.as_ref().unwrap_or(&config.imageio);
    // An output folder that cannot take the copy (gone, read-only, full) is found before the
    // photo's attack is computed for nothing. A copy in the source's format is rarely smaller than
    // the source; in another format it may be, so then only the folder itself is checked.
    let need = match job.options.format {
        None => std::fs::metadata(&job.source).map_or(0, |m| m.len()),
        Some(_) => 0,
    };
    imageio::check_output_dir(&job.source, &job.out_dir, need)?;
    Ok(match &job.options.folder {
        Some(folder) => imageio::read_in_folder(folder, &job.source, settings)?,
        None => imageio::read(&job.source, settings)?,
    })
}

/// Writes a prepared (and, with faces, protected) photo, then decodes what was written to measure
/// its quality. Runs on a writer thread: it needs no model.
fn finish(config: &Config, device: Device, p: Prepared, job: &FileJob) -> Result<Outcome, PipelineError> {
    let started = Instant::now();
    let settings = job.options.imageio.as_ref().unwrap_or(&config.imageio);
    let name = job.source.file_name().ok_or_else(|| PipelineError::Name { path: job.source.clone() })?;
    let Prepared { mut photo, protected, preencoded, found, seconds, .. } = p;
    // The photo goes out with its protected pixels (when it has any); the pixels they replace are
    // kept to be put back for the quality check.
    let replaced = protected.map(|patch| patch.apply(&mut photo.pixels));
    let written = match found.action {
        Action::SkippedNoFace => None,
        Action::CopiedNoFace => {
            Some(imageio::write_unchanged(&photo, &job.out_dir, name, job.options.format, settings)?)
        }
        Action::Protected | Action::ProtectedWhole => Some(imageio::write_with(
            &photo,
            &job.out_dir,
            name,
            job.options.format,
            settings,
            preencoded.as_ref(),
        )?),
    };
    let written_at = started.elapsed().as_secs_f64();
    if let Some(before) = replaced {
        before.apply(&mut photo.pixels);
    }
    let original = &photo.pixels;
    // Quality of what was actually written, decoded again.
    let (psnr, ssim) = match &written {
        Some(w) => match imageio::read(&w.path, settings) {
            Ok(back) => {
                let (w, h) = original.dimensions();
                let rects: Vec<(i64, i64, i64, i64)> = if found.targets.is_empty() {
                    vec![(0, 0, i64::from(w), i64::from(h))]
                } else {
                    found.regions().iter().map(|r| (r.x, r.y, r.w, r.h)).collect()
                };
                let psnr = quality::psnr(original, &back.pixels);
                // Identical pixels (a copy with nothing to protect) have SSIM 1 without measuring it.
                let ssim = match psnr {
                    Some(p) if p.is_infinite() => Some(1.0),
                    _ => quality::ssim_regions(original, &back.pixels, &rects, device),
                };
                (psnr, ssim)
            }
            Err(e) => {
                tracing::warn!("cannot re-read {} to measure its quality: {e}", w.path.display());
                (None, None)
            }
        },
        None => (None, None),
    };
    let checked = started.elapsed().as_secs_f64();
    tracing::debug!(
        "{}: detected and protected in {seconds:.3} s, encoded in {written_at:.3} s, quality check {:.3} s",
        job.source.display(),
        checked - written_at
    );
    Ok(Outcome {
        source: job.source.clone(),
        action: found.action,
        written,
        faces: found.faces,
        too_small: found.too_small,
        regions: found.regions(),
        losses: found.losses,
        psnr,
        ssim,
        seconds: seconds + written_at,
        check_seconds: checked - written_at,
    })
}

/// The final loss per generator, by name.
type Losses = Vec<(String, f64)>;

/// Attacks the face regions of several photos together against `ensemble`
/// ([`protect::protect_many`]). Only the part of each photo the attack reads ([`protect::reach`])
/// becomes a tensor, not the whole photo: on a 12 MP photo that saves most of a tenth of a second
/// of copying, and only that part comes back. Returns, per photo in order, its protected part
/// (`None` when nothing was attacked) and the final loss per generator averaged over its regions.
fn attack_photos(
    ensemble: &Ensemble,
    photos: &[(&RgbImage, &[Target])],
    params: &Params,
    rng: &mut Rng,
) -> Result<Vec<(Option<Patch>, Losses)>, ProtectError> {
    let started = Instant::now();
    // Per photo: the area read, as `[3,h,w]` uint8, and the merged targets moved into it.
    let mut areas: Vec<(Region, Tensor, Vec<Target>)> = Vec::with_capacity(photos.len());
    for (pixels, targets) in photos {
        let (w, h) = pixels.dimensions();
        let (area, merged) = protect::reach(targets, params, i64::from(w), i64::from(h))
            .unwrap_or((Region { x: 0, y: 0, w: 0, h: 0 }, Vec::new()));
        let crop =
            image::imageops::crop_imm(*pixels, area.x as u32, area.y as u32, area.w as u32, area.h as u32);
        let moved = merged.iter().map(|t| t.within(area.x, area.y)).collect();
        areas.push((area, to_tensor(&crop.to_image()), moved));
    }
    let images: Vec<(&Tensor, &[Target])> = areas.iter().map(|(_, t, m)| (t, m.as_slice())).collect();
    let to_tensors = started.elapsed().as_secs_f64();
    let out = protect::protect_many(ensemble, &images, params, rng)?;
    let attacked = started.elapsed().as_secs_f64();
    let photos: Vec<(Option<Patch>, Losses)> = out
        .into_iter()
        .zip(&areas)
        .map(|((protected, reports), (area, _, _))| {
            let patch = (area.w > 0 && area.h > 0).then(|| Patch {
                x: area.x,
                y: area.y,
                pixels: from_tensor(&protected, area.w as u32, area.h as u32),
            });
            (patch, mean_losses(reports.iter().map(|r| r.losses.as_slice())))
        })
        .collect();
    tracing::debug!(
        "attack of {} photo(s): {:.3} s, pixels to tensors {to_tensors:.3} s and back {:.3} s",
        photos.len(),
        attacked - to_tensors,
        started.elapsed().as_secs_f64() - attacked
    );
    Ok(photos)
}

/// Seconds one face would take with `balanced` on this engine, from one timed attack step on a
/// 256×256 face (after a warm-up step); about a second on a laptop CPU.
fn estimate_balanced_seconds_per_face(ensemble: &Ensemble) -> f64 {
    let dev = ensemble.device;
    let x = crate::protect::with_torch_seed(0, || Tensor::rand([1, 3, 256, 256], (tch::Kind::Float, dev)))
        * 2.0
        - 1.0;
    let mask = Tensor::ones([1, 1, 256, 256], (tch::Kind::Float, dev));
    let balanced = Params::preset(Preset::Balanced);
    let one_step = Params { iterations: 1, ..balanced.clone() };
    let mut rng = Rng::new(0);
    let mut step = || {
        let t = Instant::now();
        let ok = protect::attack(ensemble, &x, &mask, &one_step, &mut rng).is_ok();
        (ok, t.elapsed().as_secs_f64())
    };
    let _warm = step();
    match step() {
        // The timed run is the clean forward pass plus one step: a slight overestimate per step.
        (true, seconds) => seconds * f64::from(balanced.iterations),
        (false, _) => 0.0,
    }
}

/// What [`Pipeline::find`] found and [`Pipeline::protect_regions`] did.
#[derive(Debug, Clone)]
pub struct Found {
    pub action: Action,
    pub faces: usize,
    pub too_small: usize,
    /// The faces to protect, merged where their extents overlap.
    pub targets: Vec<Target>,
    /// The photo's `[width, height]`.
    pub size: [i64; 2],
    pub losses: Vec<(String, f64)>,
}

impl Found {
    /// Where the protection may change pixels: each target's extent.
    pub fn regions(&self) -> Vec<Region> {
        self.targets.iter().map(|t| t.extent(self.size[0], self.size[1])).collect()
    }
}

fn mean_losses<'a>(per_region: impl Iterator<Item = &'a [(String, f64)]>) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64, usize)> = Vec::new();
    for losses in per_region {
        for (name, v) in losses {
            match sums.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => {
                    entry.1 += v;
                    entry.2 += 1;
                }
                None => sums.push((name.clone(), *v, 1)),
            }
        }
    }
    sums.into_iter().map(|(n, s, c)| (n, s / c as f64)).collect()
}

/// `RgbImage` → `[3,H,W]` uint8 tensor on the CPU.
pub fn to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw()).view([i64::from(h), i64::from(w), 3]).permute([2, 0, 1]).contiguous()
}

/// `[3,H,W]` uint8 tensor → `RgbImage` of `w`×`h`.
pub fn from_tensor(t: &Tensor, w: u32, h: u32) -> RgbImage {
    let hwc = t.to_device(Device::Cpu).to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let mut raw = vec![0u8; (w as usize) * (h as usize) * 3];
    let n = raw.len();
    hwc.copy_data_u8(&mut raw, n);
    // The buffer has exactly w·h·3 bytes, so from_raw cannot fail.
    RgbImage::from_raw(w, h, raw).unwrap_or_else(|| RgbImage::new(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_face_too_small_to_protect_is_named_not_hidden_as_no_face() {
        let outcome = |action, faces, too_small| Outcome {
            source: "a.jpg".into(),
            action,
            written: None,
            faces,
            too_small,
            regions: Vec::new(),
            losses: Vec::new(),
            psnr: None,
            ssim: None,
            seconds: 1.0,
            check_seconds: 0.0,
        };
        let copied = outcome(Action::CopiedNoFace, 0, 2).summary();
        assert!(copied.starts_with("a.jpg: no face large enough to protect (2 smaller than"), "{copied}");
        assert!(outcome(Action::CopiedNoFace, 0, 0).summary().starts_with("a.jpg: no face found;"));
        let some = outcome(Action::Protected, 1, 1).summary();
        assert!(some.contains("1 face(s) protected (1 more smaller than faces.min_face_px"), "{some}");
        // The final loss per generator, as the JSON has it.
        let with_losses = Outcome {
            losses: vec![("stargan".into(), 0.3125), ("attgan".into(), 0.02)],
            ..outcome(Action::Protected, 1, 0)
        };
        let line = with_losses.summary();
        assert!(line.ends_with(", disruption (MSE) stargan 0.312 attgan 0.020, 1.0 s"), "{line}");
    }

    #[test]
    fn folders_are_walked_without_hidden_entries_other_files_or_the_output_folder() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for f in [
            "a.jpg",
            "notes.txt",
            "sub/b.PNG",
            "sub/f.jfif",
            "out/c.jpg",
            "out/deeper/e.jpg",
            ".hidden/d.jpg",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let names = |found: Vec<PathBuf>| -> Vec<String> {
            found.iter().map(|p| p.strip_prefix(root).unwrap().display().to_string()).collect()
        };
        // The output folder inside the walked one is left out, however its path is written.
        for out in [root.join("out"), root.join("sub/../out")] {
            assert_eq!(
                names(collect_photos(&[root.into()], &[out]).unwrap().photos),
                ["a.jpg", "sub/b.PNG", "sub/f.jfif"]
            );
        }
        assert_eq!(names(collect_photos(&[root.into()], &[root.join("new")]).unwrap().photos).len(), 5);
        // Several outputs: each is left out.
        let both = [root.join("out"), root.join("sub")];
        assert_eq!(names(collect_photos(&[root.into()], &both).unwrap().photos), ["a.jpg"]);
        // Named as a folder it is still left out; a file in it named on its own is taken.
        let out = root.join("out");
        assert!(collect_photos(std::slice::from_ref(&out), std::slice::from_ref(&out))
            .unwrap()
            .photos
            .is_empty());
        assert_eq!(
            names(collect_photos(&[out.join("c.jpg")], std::slice::from_ref(&out)).unwrap().photos),
            ["out/c.jpg"]
        );
        // A name that is not UTF-8 is not taken for a hidden one.
        use std::os::unix::ffi::OsStrExt;
        let latin = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
        std::fs::write(&latin, b"x").unwrap();
        assert_eq!(collect_photos(&[root.into()], std::slice::from_ref(&out)).unwrap().photos[1], latin);
        let err = collect_photos(&[root.join("missing")], &[out]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn what_a_walk_passes_over_is_counted_and_told() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for f in ["a.jpg", "anim.gif", "scan.BMP", "shot.NEF", "notes.txt", "sub/b.psd"] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        std::os::unix::fs::symlink(root.join("a.jpg"), root.join("link.jpg")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("sub-link")).unwrap();
        let found = collect_photos(&[root.into()], &[]).unwrap();
        assert_eq!(found.photos, [root.join("a.jpg")]);
        assert_eq!((found.raw, found.other_images, found.links), (1, 3, 1));
        assert_eq!(
            found.left_out().unwrap(),
            "1 camera RAW file (Veil protects developed photos: export it as JPEG or TIFF and protect that); \
             3 pictures in a format Veil does not protect (GIF, BMP, PSD, …: save them as JPEG or PNG and \
             protect that); 1 symbolic link (not followed in a folder: give Veil the photo itself)"
        );
        // Nothing else: the folder's error says why.
        let sub = collect_photos(&[root.join("sub")], &[]).unwrap();
        assert!(sub.photos.is_empty());
        assert!(sub.no_photos().starts_with("no photos Veil can protect in it: 1 picture in a format"));
        std::fs::create_dir(root.join("empty")).unwrap();
        let empty = collect_photos(&[root.join("empty")], &[]).unwrap();
        assert_eq!(empty.left_out(), None);
        assert!(empty.no_photos().starts_with("no photos in it"));
    }

    #[test]
    fn tensor_round_trip_keeps_pixels() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, (x + y) as u8]));
        let t = to_tensor(&img);
        assert_eq!(t.size(), [3, 5, 7]);
        assert_eq!(t.int64_value(&[0, 2, 3]), 90);
        assert_eq!(from_tensor(&t, 7, 5), img);
    }

    #[test]
    fn a_patch_goes_in_and_what_it_covered_comes_back_out() {
        let img = RgbImage::from_fn(9, 8, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut photo = img.clone();
        let patch = Patch { x: 3, y: 2, pixels: RgbImage::from_pixel(4, 5, image::Rgb([200, 201, 202])) };
        let before = patch.apply(&mut photo);
        assert_eq!((before.x, before.y, before.pixels.dimensions()), (3, 2, (4, 5)));
        assert_eq!(photo.get_pixel(3, 2).0, [200, 201, 202]);
        assert_eq!(photo.get_pixel(6, 6).0, [200, 201, 202]);
        assert_eq!(photo.get_pixel(7, 6).0, [7, 6, 7], "outside the patch");
        assert_eq!(photo.get_pixel(3, 7).0, [3, 7, 7], "outside the patch");
        before.apply(&mut photo);
        assert_eq!(photo, img);
    }

    #[test]
    fn losses_average_over_regions() {
        let a = vec![("g".to_string(), 1.0), ("h".to_string(), 4.0)];
        let b = vec![("g".to_string(), 3.0), ("h".to_string(), 0.0)];
        let m = mean_losses([a.as_slice(), b.as_slice()].into_iter());
        assert_eq!(m, [("g".to_string(), 2.0), ("h".to_string(), 2.0)]);
    }
}
