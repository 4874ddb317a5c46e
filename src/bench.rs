//! `veil bench`: how fast the protection is on this machine.
//!
//! Builds 12 MP test photos (4000×3000) from a camera photo with one and with four portraits pasted
//! in, then measures, after warm-up runs, the median of: the attack on one face region alone (faces
//! per second) and on `batch` such faces at once, the library's protection of that face in its
//! photo (`protect_pixels`: context, attack, quantization, report), and the whole path for each
//! photo (decode, detect, protect, encode and write; the quality check that follows, a second
//! decode with PSNR and SSIM, is reported apart). With
//! `photos` > 1 it also times that many one-face photos handed to the pipeline's stream together,
//! as the daemon does (their faces attacked in groups of the engine's photo batch, reading and
//! writing overlapped with the engine's work): wall-clock seconds per photo, quality check included. Peak
//! memory is the process's maximum resident set; on CUDA, the GPU memory in use at the end.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use image::{imageops, RgbImage};
use tch::Tensor;

use crate::{
    engine,
    imageio::{self, ImageError},
    pipeline::{self, FileJob, JobOptions, Pipeline, PipelineError},
    protect::{self, Preset, Rng, Target},
};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot write the test photo {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("no face was found in the synthetic photo {}", path.display())]
    NoFace { path: PathBuf },
    #[error("cannot create a temporary folder: {0}")]
    Temp(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Folder with `portraits/` and `exif-samples/jpg/mobile/` (Veil's test data layout).
    pub data: PathBuf,
    pub runs: usize,
    pub warmup: usize,
    pub preset: Option<Preset>,
    /// Also time the attack on this many faces at once (the batched path); 1 skips it.
    pub batch: usize,
    /// Also time the 12 MP photo with four faces.
    pub four_faces: bool,
    /// Also time this many one-face photos handed over together; 1 skips it.
    pub photos: usize,
}

/// Median, minimum and maximum of repeated timings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Timing {
    pub fn of(mut samples: Vec<f64>) -> Timing {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        Timing {
            median,
            min: samples.first().copied().unwrap_or(f64::NAN),
            max: samples.last().copied().unwrap_or(f64::NAN),
            runs: n,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub device: String,
    pub preset: Preset,
    pub generators: Vec<String>,
    /// The attack on one face region (its side in pixels) alone, as bench/reference.py times it.
    pub face: Timing,
    pub face_side: i64,
    /// The attack on `batch` faces of the same side at once, when `batch` > 1.
    pub face_batch: Option<(usize, Timing)>,
    /// [`protect::protect_pixels`] on that face in its photo: context, attack, quantization, report.
    pub protect_one: Timing,
    pub photo_one_face: Timing,
    /// With the number of faces found in it, when timed.
    pub photo_four_faces: Option<(Timing, usize)>,
    /// `n` one-face photos handed over together: the wall-clock time of the whole batch.
    pub photo_batch: Option<(usize, Timing)>,
    /// The quality check after each photo was written (decoded again, PSNR and SSIM), not part of
    /// the end-to-end times.
    pub quality_check: Timing,
    pub peak_rss_bytes: u64,
    pub gpu_memory_used_bytes: Option<u64>,
}

impl Report {
    pub fn faces_per_second(&self) -> f64 {
        1.0 / self.face.median
    }

    pub fn table(&self) -> String {
        let row = |what: &str, t: &Timing| {
            format!("{what:<34} {:>9.3} s  (min {:.3}, max {:.3}, {} runs)\n", t.median, t.min, t.max, t.runs)
        };
        let mut s = format!(
            "device {}, preset {}, generators: {}\n",
            self.device,
            self.preset,
            self.generators.join(", ")
        );
        s += &row(&format!("attack, one {0}×{0} face", self.face_side), &self.face);
        s += &format!("{:<34} {:>9.3}\n", "faces per second", self.faces_per_second());
        if let Some((n, t)) = &self.face_batch {
            s += &row(&format!("attack, {n} such faces at once"), t);
            s += &format!("{:<34} {:>9.3}\n", format!("faces per second, batch {n}"), *n as f64 / t.median);
        }
        s += &row("protect that face in its photo", &self.protect_one);
        s += &row("12 MP photo, 1 face, end to end", &self.photo_one_face);
        if let Some((t, found)) = &self.photo_four_faces {
            s += &row(&format!("12 MP photo, 4 faces ({found} found)"), t);
        }
        s += &row("then the quality check (re-read)", &self.quality_check);
        if let Some((n, t)) = &self.photo_batch {
            let per_photo = Timing {
                median: t.median / *n as f64,
                min: t.min / *n as f64,
                max: t.max / *n as f64,
                runs: t.runs,
            };
            s += &row(&format!("{n} such photos together, per photo"), &per_photo);
        }
        s += &format!("{:<34} {:>9.1} MiB\n", "peak RSS", self.peak_rss_bytes as f64 / 1048576.0);
        if let Some(g) = self.gpu_memory_used_bytes {
            s += &format!("{:<34} {:>9.1} MiB\n", "GPU memory in use at the end", g as f64 / 1048576.0);
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let t = |t: &Timing| serde_json::json!({"median_s": t.median, "min_s": t.min, "max_s": t.max, "runs": t.runs});
        serde_json::json!({
            "device": self.device,
            "preset": self.preset.to_string(),
            "generators": self.generators,
            "face_side": self.face_side,
            "attack_one_face": t(&self.face),
            "faces_per_second": self.faces_per_second(),
            "attack_batch": self.face_batch.as_ref().map(|(n, bt)| serde_json::json!({
                "faces": n, "timing": t(bt), "faces_per_second": *n as f64 / bt.median,
            })),
            "protect_one_face": t(&self.protect_one),
            "photo_12mp_one_face": t(&self.photo_one_face),
            "photo_12mp_four_faces": self.photo_four_faces.as_ref().map(|(ft, _)| t(ft)),
            "faces_found_in_four": self.photo_four_faces.as_ref().map(|(_, n)| n),
            "quality_check": t(&self.quality_check),
            "photo_batch": self.photo_batch.as_ref().map(|(n, bt)| serde_json::json!({
                "photos": n, "timing": t(bt), "seconds_per_photo": bt.median / *n as f64,
            })),
            "peak_rss_bytes": self.peak_rss_bytes,
            "gpu_memory_used_bytes": self.gpu_memory_used_bytes,
        })
    }
}

fn jpegs_in(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let err = |message: String| BenchError::Data { path: dir.to_path_buf(), message };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            err(format!("{e} (the photos are built from Veil's test data: point --data at its folder)"))
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(err("no JPEG here".into()));
    }
    Ok(out)
}

/// A 4000×3000 photo: the camera photo scaled up, with `faces` portraits pasted at decreasing sizes.
fn synthesize(background: &RgbImage, portraits: &[RgbImage], sides: &[u32]) -> RgbImage {
    let mut canvas = imageops::resize(background, 4000, 3000, imageops::FilterType::Triangle);
    let spots = [(300, 400), (2300, 300), (1300, 1600), (2900, 1900)];
    for ((portrait, &side), &(x, y)) in portraits.iter().cycle().zip(sides).zip(spots.iter()) {
        let p = imageops::resize(portrait, side, side, imageops::FilterType::Triangle);
        imageops::replace(&mut canvas, &p, x, y);
    }
    canvas
}

fn save_jpeg(img: &RgbImage, path: &Path) -> Result<(), BenchError> {
    let err = |message: String| BenchError::Write { path: path.to_path_buf(), message };
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut w = std::io::BufWriter::new(file);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut w, 92)
        .encode_image(img)
        .map_err(|e| err(e.to_string()))
}

/// Runs `f` `warmup + runs` times, announcing each as `label i/total` and waiting for the GPU after
/// each; the times of the runs after the warm-up.
fn time_runs<E>(
    opts: &Options,
    cuda: bool,
    label: &str,
    progress: &mut impl FnMut(&str),
    mut f: impl FnMut() -> Result<(), E>,
) -> Result<Timing, E> {
    let total = opts.warmup + opts.runs;
    let mut times = Vec::new();
    for i in 0..total {
        progress(&format!("{label} {}/{total}", i + 1));
        let t = Instant::now();
        f()?;
        if cuda {
            tch::Cuda::synchronize(0);
        }
        if i >= opts.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(Timing::of(times))
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    // ru_maxrss is in kilobytes on Linux, bytes on macOS.
    let scale = if cfg!(target_os = "macos") { 1 } else { 1024 };
    if ok {
        (usage.ru_maxrss.max(0) as u64) * scale
    } else {
        0
    }
}

pub fn run(
    pipeline: &mut Pipeline,
    opts: &Options,
    mut progress: impl FnMut(&str),
) -> Result<Report, BenchError> {
    let settings = &pipeline.config().imageio.clone();
    let portraits: Vec<RgbImage> = jpegs_in(&opts.data.join("portraits/src/female"))?
        .into_iter()
        .chain(jpegs_in(&opts.data.join("portraits/src/male"))?)
        .take(4)
        .map(|p| imageio::read(&p, settings).map(|ph| ph.pixels))
        .collect::<Result<_, _>>()?;
    let background_path = opts.data.join("exif-samples/jpg/mobile/jolla.jpg");
    let background = imageio::read(&background_path, settings)?.pixels;
    let tmp = tempfile::tempdir().map_err(BenchError::Temp)?;
    let one = tmp.path().join("one-face.jpg");
    let four = tmp.path().join("four-faces.jpg");
    save_jpeg(&synthesize(&background, &portraits[..1], &[900]), &one)?;
    save_jpeg(&synthesize(&background, &portraits, &[900, 750, 600, 500]), &four)?;
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).map_err(BenchError::Temp)?;

    let preset = pipeline.preset(opts.preset);
    let params = pipeline.params(Some(preset));
    let mut rng = Rng::new(1);
    let total = opts.warmup + opts.runs;

    // The attack alone on the first face of the one-face photo, as bench/reference.py attacks it: the
    // face region on the engine's device, all of it face (framings zoom within it). An aligned crop
    // changes where a step frames the face, not what a step costs.
    let photo = imageio::read(&one, settings)?;
    let found = pipeline.find(&photo)?;
    let region = found.targets.first().ok_or_else(|| BenchError::NoFace { path: one.clone() })?.face;
    let pixels = pipeline::to_tensor(&photo.pixels);
    let cuda = pipeline.ensemble().device.is_cuda();
    let crop = pixels.narrow(1, region.y, region.h).narrow(2, region.x, region.w);
    // [1,3,h,w] in [-1,1] and its feather mask [1,1,h,w], on the engine's device.
    let x = protect::to_unit(&crop, pipeline.ensemble().device);
    let mask = protect::feather_mask(region.h, region.w, params.feather, pipeline.ensemble().device);
    let mut attack_faces = |n: usize, label: &str, rng: &mut Rng| {
        let xs: Vec<Tensor> = (0..n).map(|_| x.shallow_clone()).collect();
        let masks: Vec<Tensor> = (0..n).map(|_| mask.shallow_clone()).collect();
        time_runs(opts, cuda, label, &mut progress, || {
            protect::attack_batch(pipeline.ensemble(), &xs, &masks, &params, rng)
                .map(drop)
                .map_err(|source| PipelineError::Protect { path: one.clone(), source })
        })
    };
    let face = attack_faces(1, "attack", &mut rng)?;
    // The same face `batch` times, attacked together.
    let batched = if opts.batch > 1 {
        Some((opts.batch, attack_faces(opts.batch, &format!("attack, {} faces", opts.batch), &mut rng)?))
    } else {
        None
    };
    // What the library does for that face in the photo: the attack on the face with the context its
    // framings may reach, quantization, the disruption report, and the copy back into the photo.
    let protect_one = time_runs(opts, cuda, "protect one face", &mut progress, || {
        protect::protect_pixels(pipeline.ensemble(), &pixels, &[Target::face(region)], &params, &mut rng)
            .map(drop)
            .map_err(|source| PipelineError::Protect { path: one.clone(), source })
    })?;

    let options = JobOptions { preset: Some(preset), ..JobOptions::default() };
    let mut checks = Vec::new();
    let mut end_to_end = |path: &Path, label: &str| -> Result<(Timing, usize), BenchError> {
        let mut times = Vec::new();
        let mut faces = 0;
        for i in 0..total {
            progress(&format!("{label} {}/{total}", i + 1));
            let outcome = pipeline.protect_file(path, &out, &options, &mut rng)?;
            faces = outcome.faces;
            if let Some(w) = &outcome.written {
                let _ = std::fs::remove_file(&w.path);
            }
            if i >= opts.warmup {
                times.push(outcome.seconds);
                checks.push(outcome.check_seconds);
            }
        }
        Ok((Timing::of(times), faces))
    };
    let (photo_one_face, _) = end_to_end(&one, "12 MP, 1 face")?;
    let photo_four_faces = if opts.four_faces { Some(end_to_end(&four, "12 MP, 4 faces")?) } else { None };
    let quality_check = Timing::of(checks);

    // `photos` one-face photos together, as the daemon hands them over: wall clock for all of them.
    let photo_batch = if opts.photos > 1 {
        let dir = tmp.path().join("batch");
        std::fs::create_dir_all(&dir).map_err(BenchError::Temp)?;
        let jobs = (0..opts.photos)
            .map(|i| {
                let source = dir.join(format!("photo-{i}.jpg"));
                std::fs::copy(&one, &source)
                    .map_err(|e| BenchError::Write { path: source.clone(), message: e.to_string() })?;
                Ok(FileJob { source, out_dir: out.clone(), options: options.clone() })
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let label = format!("{} photos together", opts.photos);
        let t = time_runs(opts, cuda, &label, &mut progress, || -> Result<(), BenchError> {
            for outcome in pipeline.protect_files(&jobs, &mut rng) {
                if let Some(w) = outcome?.written {
                    let _ = std::fs::remove_file(&w.path);
                }
            }
            Ok(())
        })?;
        Some((opts.photos, t))
    } else {
        None
    };

    Ok(Report {
        device: engine::describe(pipeline.ensemble().device),
        preset,
        generators: pipeline.ensemble().generators.iter().map(|g| g.name.clone()).collect(),
        face,
        face_side: region.w,
        face_batch: batched,
        protect_one,
        photo_one_face,
        photo_four_faces,
        photo_batch,
        quality_check,
        peak_rss_bytes: peak_rss_bytes(),
        gpu_memory_used_bytes: engine::gpu_memory_used(pipeline.ensemble().device),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(Timing::of(vec![3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Timing::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        let t = Timing::of(vec![5.0, 1.0]);
        assert_eq!((t.min, t.max, t.runs), (1.0, 5.0, 2));
        assert!(Timing::of(vec![]).median.is_nan());
    }

    #[test]
    fn synthetic_photo_is_12_mp_with_the_portraits_pasted() {
        let bg = RgbImage::from_pixel(40, 30, image::Rgb([10, 20, 30]));
        let face = RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
        let img = synthesize(&bg, &[face], &[900, 500]);
        assert_eq!(img.dimensions(), (4000, 3000));
        assert_eq!(img.get_pixel(300 + 450, 400 + 450).0, [200, 100, 50]);
        assert_eq!(img.get_pixel(2300 + 10, 300 + 10).0, [200, 100, 50]);
        assert_eq!(img.get_pixel(3999, 2999).0, [10, 20, 30]);
    }

    #[test]
    fn peak_rss_is_measured() {
        assert!(peak_rss_bytes() > 1 << 20);
    }
}
