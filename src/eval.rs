//! `veil eval`: the paper's table for Veil, measured through the real pipeline.
//!
//! For each aligned face of a CelebA-style folder (`attributes.csv` + `<split>/`), every attack variant
//! runs the real path: detection, crop, attack, 8-bit quantization and encoding (the copy is written to
//! a temporary folder and decoded again). Each generator, ensemble and holdout, then gets the
//! attacker's view: the standard aligned crop (central 178×178, rows 20..198) resized to its input,
//! under each defense. The conditions are the paper's, derived from the image's true attributes (set
//! each hair colour, flip Male, flip Young), not the vectors that were attacked, so the table measures
//! class transfer. A face counts as disrupted when `MSE(G(D(x_prot), c), G(D(x), c)) ≥ 0.05` in
//! [-1,1] (the paper's threshold).
//!
//! Variants, all in the same run: `veil` (the configured preset), `noise` (random ±ε in the same
//! regions), `single` (the same attack against one condition per generator), `no-spread` (the same
//! attack without spread-spectrum transforms).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tch::{Device, Kind, Tensor};

use crate::{
    imageio,
    models::Role,
    pipeline::{self, Action, Pipeline, PipelineError},
    protect::{self, spread, Ensemble, Params, Preset, Rng},
    quality,
};

pub use crate::protect::THRESHOLD;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Attributes { path: PathBuf, message: String },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Image(#[from] imageio::ImageError),
    #[error("cannot create a temporary folder: {0}")]
    Temp(std::io::Error),
    #[error("cannot enlarge {}: {message}", path.display())]
    Enlarge { path: PathBuf, message: String },
    #[error("the JPEG defense failed: {message}")]
    Defense { message: String },
    #[error("generator {name}: {message}")]
    Generator { name: String, message: String },
}

/// The defenses an attacker may apply to every input before the generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Defense {
    None,
    /// The paper's: Gaussian blur, kernel 11, σ 1.5.
    Blur,
    /// A real JPEG round trip at quality 75 with chroma at half resolution (4:2:0), as messaging apps,
    /// Pillow and libjpeg write by default, at the generator's size.
    Jpeg75,
    /// The same with full-resolution chroma (4:4:4), which keeps more of a perturbation's colour.
    Jpeg75Full,
    /// Downscale by half and back up.
    Resize50,
}

impl Defense {
    pub const ALL: [Defense; 5] =
        [Defense::None, Defense::Blur, Defense::Jpeg75, Defense::Jpeg75Full, Defense::Resize50];

    pub fn name(self) -> &'static str {
        match self {
            Defense::None => "none",
            Defense::Blur => "blur k11 σ1.5",
            Defense::Jpeg75 => "jpeg q75 4:2:0",
            Defense::Jpeg75Full => "jpeg q75 4:4:4",
            Defense::Resize50 => "resize 0.5×",
        }
    }

    /// `x: [1,3,S,S] in [-1,1]` as the generator would see it.
    fn apply(self, x: &Tensor) -> Result<Tensor, EvalError> {
        Ok(match self {
            Defense::None => x.shallow_clone(),
            Defense::Blur => spread::Transform::Gaussian { sigma: 1.5 }.apply(x),
            Defense::Resize50 => spread::Transform::Resize { factor: 0.5 }.apply(x),
            Defense::Jpeg75 => real_jpeg(x, 75, true)?,
            Defense::Jpeg75Full => real_jpeg(x, 75, false)?,
        })
    }
}

/// `x: [1,3,S,S] in [-1,1]` through a real JPEG encoder (`jpeg-encoder`, libjpeg's tables scaled to
/// `quality`, as Veil writes) and decoder (`image`'s, which enlarges subsampled chroma smoothly, as
/// libjpeg does). `subsampled`: chroma at half resolution (4:2:0), averaged over each 2×2 block as
/// libjpeg does (the writer's own 4:2:0 input, `imageio::jpeg::Averaged420`); else 4:4:4.
pub(crate) fn real_jpeg(x: &Tensor, quality: u8, subsampled: bool) -> Result<Tensor, EvalError> {
    let failed = |message: String| EvalError::Defense { message };
    let chroma = if subsampled { imageio::Chroma::Half } else { imageio::Chroma::Full };
    let size = x.size();
    let (h, w) = (size[2], size[3]);
    let (Ok(h16), Ok(w16)) = (u16::try_from(h), u16::try_from(w)) else {
        return Err(failed(format!("a {w}x{h} face is too large for JPEG")));
    };
    let img = pipeline::from_tensor(&unit_to_u8(x), u32::from(w16), u32::from(h16));
    let encoded =
        imageio::encode_jpeg_piece(img.as_raw(), w16, h16, quality, chroma, false).map_err(failed)?;
    let back = image::load_from_memory(&encoded).map_err(|e| failed(e.to_string()))?.to_rgb8();
    Ok(pipeline::to_tensor(&back).unsqueeze(0).to_kind(Kind::Float).to_device(x.device()) / 127.5 - 1.0)
}

/// The attack variants compared in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Veil,
    Noise,
    Single,
    NoSpread,
}

impl Variant {
    pub const ALL: [Variant; 4] = [Variant::Veil, Variant::Noise, Variant::Single, Variant::NoSpread];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Veil => "veil",
            Variant::Noise => "noise",
            Variant::Single => "single",
            Variant::NoSpread => "no-spread",
        }
    }
}

/// Counts for one table cell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cell {
    pub faces: usize,
    pub disrupted: usize,
    pub mse_sum: f64,
}

impl Cell {
    pub fn percent(&self) -> f64 {
        if self.faces == 0 {
            0.0
        } else {
            100.0 * self.disrupted as f64 / self.faces as f64
        }
    }

    pub fn mean_mse(&self) -> f64 {
        if self.faces == 0 {
            0.0
        } else {
            self.mse_sum / self.faces as f64
        }
    }
}

/// One row of the table: a generator, a condition and a defense; one cell per variant.
#[derive(Debug, Clone)]
pub struct Row {
    pub generator: String,
    pub role: Role,
    pub condition: String,
    pub defense: Defense,
    pub cells: BTreeMap<Variant, Cell>,
}

/// Image quality of one variant on the face crop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quality {
    pub images: usize,
    pub psnr_sum: f64,
    pub ssim_sum: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub images: usize,
    pub no_face: usize,
    pub preset: Preset,
    pub split: String,
    /// Degrees each photo was turned before protection (`Options::tilt`).
    pub tilt: f64,
    /// How many times each photo was enlarged before protection (`Options::upscale`).
    pub upscale: u32,
    /// The variants run, in table order (`Options::baselines`).
    pub variants: Vec<Variant>,
    pub rows: Vec<Row>,
    pub quality: BTreeMap<Variant, Quality>,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub data: PathBuf,
    pub split: String,
    pub limit: Option<usize>,
    pub preset: Option<Preset>,
    pub seed: u64,
    /// Degrees to turn each photo before protecting it, as a tilted head would be: the attacker
    /// turns it back (aligns it) before taking the aligned crop. 0 leaves photos as they are.
    pub tilt: f64,
    /// Enlarge each photo this many times (Catmull-Rom) before protecting it, so its face is as
    /// large as in a camera photo (CelebA's 178×218 at 6 is 1068×1308, the face about 600 px); the
    /// attacker's aligned crop is enlarged with it and resized to each generator's input as
    /// always. 1 leaves photos as they are.
    pub upscale: u32,
    /// Also run the baselines (±ε noise, single condition, no spread); `false` runs Veil's attack
    /// only, in about a third of the time.
    pub baselines: bool,
}

impl Options {
    /// The variants this run compares.
    pub fn variants(&self) -> Vec<Variant> {
        if self.baselines {
            Variant::ALL.to_vec()
        } else {
            vec![Variant::Veil]
        }
    }
}

/// One image of the evaluation set with its attributes (column name → present).
#[derive(Debug)]
struct Sample {
    path: PathBuf,
    attributes: BTreeMap<String, bool>,
}

fn read_samples(data: &Path, split: &str, limit: Option<usize>) -> Result<Vec<Sample>, EvalError> {
    let path = data.join("attributes.csv");
    let text =
        std::fs::read_to_string(&path).map_err(|source| EvalError::Read { path: path.clone(), source })?;
    let bad = |message: String| EvalError::Attributes { path: path.clone(), message };
    // A spreadsheet's "CSV UTF-8" starts with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let header: Vec<&str> =
        lines.next().map(|(_, l)| l).unwrap_or_default().split(',').map(str::trim).collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(split_col), Some(file_col)) = (col("split"), col("file")) else {
        return Err(bad("needs `split` and `file` columns".into()));
    };
    let mut out = Vec::new();
    for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(bad(format!("line {n} has {} fields, the header {}", fields.len(), header.len())));
        }
        if fields[split_col] != split {
            continue;
        }
        let mut attributes = BTreeMap::new();
        for (h, v) in
            header.iter().zip(&fields).filter(|(h, _)| !matches!(**h, "split" | "file" | "identity"))
        {
            // CelebA writes 1 and -1; 0 for absent is common too.
            let present = match *v {
                "1" => true,
                "-1" | "0" => false,
                other => {
                    return Err(bad(format!(
                        "line {n}: {h} is {other:?}; expected 1 (present) or -1 or 0 (absent)"
                    )))
                }
            };
            attributes.insert(h.to_string(), present);
        }
        out.push(Sample { path: data.join(split).join(fields[file_col]), attributes });
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
    }
    if out.is_empty() {
        return Err(bad(format!("no image in split {split:?}")));
    }
    Ok(out)
}

/// The paper's conditions for a generator's attribute list, from the image's true attributes:
/// each hair colour set (others cleared), Male flipped, Young flipped. Unconditional: one, unnamed.
fn paper_conditions(attributes: &[String], truth: &BTreeMap<String, bool>) -> Vec<(String, Vec<f32>)> {
    if attributes.is_empty() {
        return vec![("-".to_string(), Vec::new())];
    }
    let base: Vec<f32> =
        attributes.iter().map(|a| f32::from(u8::from(truth.get(a).copied().unwrap_or(false)))).collect();
    let hair = ["Black_Hair", "Blond_Hair", "Brown_Hair"];
    let mut out = Vec::new();
    for h in hair {
        if let Some(i) = attributes.iter().position(|a| a == h) {
            let mut c = base.clone();
            for other in hair {
                if let Some(j) = attributes.iter().position(|a| a == other) {
                    c[j] = 0.0;
                }
            }
            c[i] = 1.0;
            out.push((format!("set {h}"), c));
        }
    }
    for flip in ["Male", "Young"] {
        if let Some(i) = attributes.iter().position(|a| a == flip) {
            let mut c = base.clone();
            c[i] = 1.0 - c[i];
            out.push((format!("flip {flip}"), c));
        }
    }
    out
}

/// The attacker's view of a decoded photo: the central aligned square (rows 20..198 of a 178×218
/// CelebA image, scaled with the image when it was enlarged a whole number of times; the central
/// square otherwise) as `[1,3,s,s] in [-1,1]`.
fn aligned_crop(img: &image::RgbImage, device: Device) -> Tensor {
    let (w, h) = img.dimensions();
    let (x, y, s) = if w % 178 == 0 && w / 178 * 218 == h {
        let f = w / 178;
        (0, 20 * f, 178 * f)
    } else {
        let s = w.min(h);
        ((w - s) / 2, (h - s) / 2, s)
    };
    let t =
        pipeline::to_tensor(img).narrow(1, i64::from(y), i64::from(s)).narrow(2, i64::from(x), i64::from(s));
    protect::to_unit(&t, device)
}

/// `img` turned by `degrees` (counter-clockwise) about its center, the same size, resampled
/// bilinearly, its corners filled by reflection: a tilted head for `Options::tilt`.
pub fn turned(img: &image::RgbImage, degrees: f64) -> image::RgbImage {
    let (w, h) = img.dimensions();
    // [1,3,H,W] in [0,255]; the whole photo as the square an aligner would turn upright by -degrees.
    let x = pipeline::to_tensor(img).to_kind(Kind::Float).unsqueeze(0);
    let whole = protect::Region { x: 0, y: 0, w: i64::from(w), h: i64::from(h) };
    let y = protect::cut(&x, &protect::Aligned { square: whole, angle: -degrees });
    pipeline::from_tensor(&y.round().clamp(0.0, 255.0).to_kind(Kind::Uint8).squeeze_dim(0), w, h)
}

/// Runs the evaluation. `holdouts` may be empty. `progress(done, total)` is called after each image.
pub fn run(
    pipeline: &Pipeline,
    opts: &Options,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report, EvalError> {
    let started = std::time::Instant::now();
    let config = pipeline.config();
    let dir = config.models.dir.clone().unwrap_or_default();
    let device = pipeline.ensemble().device;
    let holdouts = match Ensemble::load(&dir, &[Role::Holdout], device, &BTreeMap::new()) {
        Ok(h) => Some(h),
        Err(protect::ProtectError::EmptyEnsemble(_)) => None,
        Err(e) => return Err(PipelineError::Generators(e).into()),
    };
    let mut single = Ensemble::load(&dir, &[Role::Ensemble], device, &config.protect.weights)
        .map_err(PipelineError::Generators)?;
    single.restrict_conditions(0..1);
    single.configure(&config.engine);
    let manifest = crate::models::Manifest::load(&dir).map_err(|e| PipelineError::Generators(e.into()))?;
    let attributes_of = |name: &str| {
        manifest.models.iter().find(|m| m.name == name).map(|m| m.attributes.clone()).unwrap_or_default()
    };

    let samples = read_samples(&opts.data, &opts.split, opts.limit)?;
    // The paper's conditions come from each image's true attributes: a generator's attribute the
    // table lacks would be taken as absent on every image.
    for m in &manifest.models {
        if let Some(a) = m.attributes.iter().find(|a| !samples[0].attributes.contains_key(*a)) {
            return Err(EvalError::Attributes {
                path: opts.data.join("attributes.csv"),
                message: format!("has no {a} column, which generator {} is conditioned on", m.name),
            });
        }
    }
    let params = pipeline.params(opts.preset);
    let no_spread = Params { spread: vec![spread::Transform::Identity], ..params.clone() };
    let tmp = tempfile::tempdir().map_err(EvalError::Temp)?;
    let variants = opts.variants();
    let mut rows: BTreeMap<(String, String, usize), Row> = BTreeMap::new();
    let mut quality_by: BTreeMap<Variant, Quality> = BTreeMap::new();
    let mut no_face = 0;
    // The judges run in fp32 whatever precision the attack used: they stand for the attacker's models.
    let judges = Ensemble::load(&dir, &[Role::Ensemble], device, &BTreeMap::new())
        .map_err(PipelineError::Generators)?;
    let generators: Vec<&protect::Generator> =
        judges.generators.iter().chain(holdouts.iter().flat_map(|h| h.generators.iter())).collect();

    for (done, sample) in samples.iter().enumerate() {
        let mut photo = imageio::read(&sample.path, &config.imageio)?;
        if opts.upscale > 1 {
            // Enlarged, then read as a photo of its own (a lossless PNG), as a camera file would be.
            let (w, h) = photo.pixels.dimensions();
            let (f, filter) = (opts.upscale, image::imageops::FilterType::CatmullRom);
            let big = image::imageops::resize(&photo.pixels, w * f, h * f, filter);
            let path = tmp.path().join(format!("enlarged-{done}.png"));
            big.save(&path)
                .map_err(|e| EvalError::Enlarge { path: sample.path.clone(), message: e.to_string() })?;
            photo = imageio::read(&path, &config.imageio)?;
        }
        if opts.tilt != 0.0 {
            photo.pixels = turned(&photo.pixels, opts.tilt);
        }
        // What the attacker crops, after turning a tilted photo upright again.
        let view = |pixels: &image::RgbImage| {
            if opts.tilt != 0.0 {
                aligned_crop(&turned(pixels, -opts.tilt), device)
            } else {
                aligned_crop(pixels, device)
            }
        };
        let found = pipeline.find(&photo)?;
        if matches!(found.action, Action::CopiedNoFace | Action::SkippedNoFace) {
            no_face += 1;
        }
        let clean = view(&photo.pixels);
        // What every judge makes of the clean face, under every defense and paper condition.
        let mut clean_outputs = Vec::with_capacity(generators.len());
        for g in &generators {
            let named = paper_conditions(&attributes_of(&g.name), &sample.attributes);
            let rows: Vec<f32> = named.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            let conditions = Tensor::from_slice(&rows).view([named.len() as i64, -1]).to_device(device);
            let outputs = judge(g, &clean, &conditions)?;
            clean_outputs.push(Judged {
                names: named.into_iter().map(|(n, _)| n).collect(),
                conditions,
                outputs,
            });
        }
        for &variant in &variants {
            // Its own draws per image and variant, so a variant's figures do not depend on which
            // others ran.
            let stream = (done * Variant::ALL.len() + variant as usize) as u64;
            let mut rng = Rng::new(opts.seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut prot = photo.clone();
            match variant {
                Variant::Veil => {
                    pipeline.protect_regions(
                        pipeline.ensemble(),
                        &mut prot,
                        found.clone(),
                        &params,
                        &mut rng,
                    )?;
                }
                Variant::Single => {
                    pipeline.protect_regions(&single, &mut prot, found.clone(), &params, &mut rng)?;
                }
                Variant::NoSpread => {
                    pipeline.protect_regions(
                        pipeline.ensemble(),
                        &mut prot,
                        found.clone(),
                        &no_spread,
                        &mut rng,
                    )?;
                }
                Variant::Noise => add_noise(&mut prot, &found.regions(), &params, &mut rng),
            }
            // The real path: encode as the pipeline writes, decode again.
            let name = format!(
                "{}-{}",
                variant.name(),
                sample.path.file_name().and_then(|n| n.to_str()).unwrap_or("x.jpg")
            );
            let written = imageio::write(&prot, tmp.path(), &name, None, &config.imageio)?;
            let back = imageio::read(&written.path, &config.imageio)?;
            let _ = std::fs::remove_file(&written.path);
            let protected = view(&back.pixels);
            let q = quality_by.entry(variant).or_default();
            // The attacker's square, whatever its size (178 px on a CelebA-sized image).
            let side = u32::try_from(clean.size()[3]).unwrap_or(0);
            let (a, b) = (
                pipeline::from_tensor(&unit_to_u8(&clean), side, side),
                pipeline::from_tensor(&unit_to_u8(&protected), side, side),
            );
            if let (Some(p), Some(s)) = (quality::psnr(&a, &b), quality::ssim(&a, &b)) {
                q.images += 1;
                q.psnr_sum += p.min(100.0);
                q.ssim_sum += s;
            }
            for (gi, (g, judged)) in generators.iter().zip(&clean_outputs).enumerate() {
                let yp = judge(g, &protected, &judged.conditions)?;
                // [D*Cn] per-row MSE, one read-back per generator and variant.
                let per = tch::no_grad(|| {
                    (yp - &judged.outputs).square().mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                });
                let per = Vec::<f64>::try_from(per.to_kind(Kind::Double))
                    .map_err(|e| EvalError::Generator { name: g.name.clone(), message: e.to_string() })?;
                let cn = judged.names.len();
                for (di, defense) in Defense::ALL.into_iter().enumerate() {
                    for (ci, cname) in judged.names.iter().enumerate() {
                        let mse = per[di * cn + ci];
                        let row =
                            rows.entry((format!("{gi:03}"), format!("{ci:02}"), di)).or_insert_with(|| Row {
                                generator: g.name.clone(),
                                role: g.role,
                                condition: cname.clone(),
                                defense,
                                cells: BTreeMap::new(),
                            });
                        let cell = row.cells.entry(variant).or_default();
                        cell.faces += 1;
                        cell.disrupted += usize::from(mse >= THRESHOLD);
                        cell.mse_sum += mse;
                    }
                }
            }
        }
        progress(done + 1, samples.len());
    }
    Ok(Report {
        images: samples.len(),
        no_face,
        preset: pipeline.preset(opts.preset),
        split: opts.split.clone(),
        tilt: opts.tilt,
        upscale: opts.upscale,
        variants,
        rows: rows.into_values().collect(),
        quality: quality_by,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A judge's view of one face: the paper conditions' names, `[Cn,C]` conditions, and its outputs for
/// the clean face, `[D*Cn,3,S,S]` (defense-major).
struct Judged {
    names: Vec<String>,
    conditions: Tensor,
    outputs: Tensor,
}

/// The aligned face `x: [1,3,178,178]` resized to `g`'s input, through every defense, against every
/// condition of `conditions: [Cn,C]`: inputs `[D*Cn,3,S,S]` (row `d*Cn + c`) and their conditions.
fn judge_inputs(
    g: &protect::Generator,
    x: &Tensor,
    conditions: &Tensor,
) -> Result<(Tensor, Tensor), EvalError> {
    let s = g.input_size;
    let cn = conditions.size()[0];
    let x = spread::resize(x, s, s);
    let defended = Defense::ALL.iter().map(|d| d.apply(&x)).collect::<Result<Vec<Tensor>, EvalError>>()?;
    let d = defended.len() as i64;
    let inputs =
        Tensor::cat(&defended, 0).unsqueeze(1).expand([d, cn, 3, s, s], false).reshape([d * cn, 3, s, s]);
    Ok((inputs, conditions.repeat([d, 1])))
}

/// `g`'s outputs `[D*Cn,3,S,S]` for the face `x` under every defense and condition (see [`judge_inputs`]).
fn judge(g: &protect::Generator, x: &Tensor, conditions: &Tensor) -> Result<Tensor, EvalError> {
    tch::no_grad(|| {
        let (x, c) = judge_inputs(g, x, conditions)?;
        g.run(&x, &c).map_err(|e| EvalError::Generator { name: g.name.clone(), message: e.to_string() })
    })
}

fn unit_to_u8(x: &Tensor) -> Tensor {
    ((x.squeeze_dim(0) + 1.0) * 127.5).round().clamp(0.0, 255.0).to_kind(Kind::Uint8).to_device(Device::Cpu)
}

/// The noise baseline: every pixel of the regions moved by ±ε (whole 8-bit levels), random sign.
fn add_noise(photo: &mut imageio::Photo, regions: &[protect::Region], params: &Params, rng: &mut Rng) {
    let levels = protect::max_levels(params.epsilon) as i16;
    for r in regions {
        for y in r.y..r.y + r.h {
            for x in r.x..r.x + r.w {
                let p = photo.pixels.get_pixel_mut(x as u32, y as u32);
                for v in p.0.iter_mut() {
                    let sign = if rng.next_u64() & 1 == 0 { -1 } else { 1 };
                    *v = (i16::from(*v) + sign * levels).clamp(0, 255) as u8;
                }
            }
        }
    }
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Disruption on {} {} images (preset {}), % of faces with MSE ≥ {THRESHOLD} and mean MSE; {} without a detected face.",
            self.images, self.split, self.preset, self.no_face
        );
        if self.upscale > 1 {
            let _ = writeln!(s, "Each photo enlarged {} times before protection.", self.upscale);
        }
        if self.tilt != 0.0 {
            let _ =
                writeln!(s, "Each photo turned by {}° before protection and back before judging.", self.tilt);
        }
        let _ = write!(s, "{:<12} {:<8} {:<17} {:<14}", "generator", "role", "condition", "defense");
        for v in &self.variants {
            let _ = write!(s, " {:>16}", v.name());
        }
        s.push('\n');
        for row in &self.rows {
            let role = match row.role {
                Role::Ensemble => "ensemble",
                Role::Holdout => "holdout",
            };
            let _ = write!(
                s,
                "{:<12} {:<8} {:<17} {:<14}",
                row.generator,
                role,
                row.condition,
                row.defense.name()
            );
            for v in &self.variants {
                let c = row.cells.get(v).copied().unwrap_or_default();
                let _ = write!(s, " {:>7.1}% {:>7.4}", c.percent(), c.mean_mse());
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\nImage quality on the face crop (mean over images):");
        for (v, q) in &self.quality {
            if q.images > 0 {
                let _ = writeln!(
                    s,
                    "  {:<10} PSNR {:.2} dB  SSIM {:.4}",
                    v.name(),
                    q.psnr_sum / q.images as f64,
                    q.ssim_sum / q.images as f64
                );
            }
        }
        let _ = writeln!(s, "{:.1} s", self.seconds);
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let cells: serde_json::Map<String, serde_json::Value> = r
                    .cells
                    .iter()
                    .map(|(v, c)| {
                        (
                            v.name().to_string(),
                            serde_json::json!({"faces": c.faces, "disrupted": c.disrupted, "percent": c.percent(), "mean_mse": c.mean_mse()}),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "generator": r.generator,
                    "role": if r.role == Role::Ensemble { "ensemble" } else { "holdout" },
                    "condition": r.condition,
                    "defense": r.defense.name(),
                    "variants": cells,
                })
            })
            .collect();
        let quality: serde_json::Map<String, serde_json::Value> = self
            .quality
            .iter()
            .filter(|(_, q)| q.images > 0)
            .map(|(v, q)| {
                (
                    v.name().to_string(),
                    serde_json::json!({"psnr": q.psnr_sum / q.images as f64, "ssim": q.ssim_sum / q.images as f64}),
                )
            })
            .collect();
        serde_json::json!({
            "images": self.images,
            "no_face": self.no_face,
            "split": self.split,
            "preset": self.preset.to_string(),
            "tilt": self.tilt,
            "upscale": self.upscale,
            "threshold": THRESHOLD,
            "rows": rows,
            "quality": quality,
            "seconds": self.seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_csv_is_read_strictly_and_named_in_errors() {
        let d = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            std::fs::write(d.path().join("attributes.csv"), text).unwrap();
            read_samples(d.path(), "val", None).map_err(|e| e.to_string())
        };
        // A byte-order mark, CRLF line ends, blank lines and spaces are taken; 0 and -1 are absent.
        let ok = read(
            "\u{feff}split,file,Male,Young\r\nval,a.jpg,1,-1\r\n\r\ntrain,b.jpg, 0,1\r\nval,c.jpg,0,1\r\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].path, d.path().join("val/a.jpg"));
        assert_eq!(ok[0].attributes, [("Male".to_string(), true), ("Young".to_string(), false)].into());
        assert!(!ok[1].attributes["Male"]);
        let e = read("split,file,Male\nval,a.jpg,1\nval,b.jpg\n").unwrap_err();
        assert!(e.contains("attributes.csv: line 3 has 2 fields, the header 3"), "{e}");
        let e = read("split,file,Male\nval,a.jpg,yes\n").unwrap_err();
        assert!(e.contains("line 2: Male is \"yes\""), "{e}");
        let e = read("split,file,Male\ntrain,a.jpg,1\n").unwrap_err();
        assert!(e.contains("no image in split \"val\""), "{e}");
    }

    #[test]
    fn the_attackers_square_of_an_enlarged_celeba_photo_scales_with_it() {
        // Rows 20..198 of 178×218, and rows 60..594 of the same photo at 3 times: the same face.
        let small = image::RgbImage::from_fn(178, 218, |_, y| {
            image::Rgb([if (20..198).contains(&y) { 200 } else { 0 }; 3])
        });
        let big = image::imageops::resize(&small, 534, 654, image::imageops::FilterType::Nearest);
        let (a, b) = (aligned_crop(&small, Device::Cpu), aligned_crop(&big, Device::Cpu));
        assert_eq!(a.size(), [1, 3, 178, 178]);
        assert_eq!(b.size(), [1, 3, 534, 534]);
        for x in [&a, &b] {
            assert!(x.min().double_value(&[]) > 0.5, "a row outside the face was taken");
        }
        // Any other size: the central square.
        let other = image::RgbImage::new(300, 200);
        assert_eq!(aligned_crop(&other, Device::Cpu).size(), [1, 3, 200, 200]);
    }

    #[test]
    fn paper_conditions_follow_the_true_attributes() {
        let attrs: Vec<String> =
            ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"].map(String::from).to_vec();
        let truth: BTreeMap<String, bool> = [
            ("Black_Hair", true),
            ("Blond_Hair", false),
            ("Brown_Hair", false),
            ("Male", true),
            ("Young", false),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let c = paper_conditions(&attrs, &truth);
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["set Black_Hair", "set Blond_Hair", "set Brown_Hair", "flip Male", "flip Young"]);
        assert_eq!(c[1].1, [0.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(c[3].1, [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(c[4].1, [1.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(paper_conditions(&[], &truth).len(), 1);
    }

    #[test]
    fn a_turn_is_counter_clockwise_keeps_the_size_and_turns_back() {
        // A 60×40 image, dark, with a bright square above the center.
        let mut img = image::RgbImage::from_pixel(60, 40, image::Rgb([20, 20, 20]));
        for y in 4..10 {
            for x in 27..33 {
                img.put_pixel(x, y, image::Rgb([240, 240, 240]));
            }
        }
        assert_eq!(turned(&img, 0.0), img);
        let t = turned(&img, 90.0);
        assert_eq!(t.dimensions(), (60, 40));
        // 13 px above the center turns to 13 px left of it, not right, and not above.
        let bright: Vec<(u32, u32)> =
            t.enumerate_pixels().filter(|p| p.2[0] > 200).map(|p| (p.0, p.1)).collect();
        assert!(t.get_pixel(16, 20)[0] > 200, "{bright:?}");
        assert!(t.get_pixel(44, 20)[0] < 40 && t.get_pixel(30, 7)[0] < 40);
        // 15° and back leaves the middle of the image nearly as it was (two bilinear resamplings
        // soften the square's edges by up to a quarter of its contrast).
        let back = turned(&turned(&img, 15.0), -15.0);
        let mut worst = 0u8;
        for (x, y) in (10..30).flat_map(|y| (15..45).map(move |x| (x, y))) {
            worst = worst.max(back.get_pixel(x, y)[0].abs_diff(img.get_pixel(x, y)[0]));
        }
        assert!(worst < 60, "{worst}");
    }

    #[test]
    fn cells_count_and_average() {
        let c = Cell { faces: 4, disrupted: 3, mse_sum: 0.4 };
        assert_eq!(c.percent(), 75.0);
        assert!((c.mean_mse() - 0.1).abs() < 1e-12);
        assert_eq!(Cell::default().percent(), 0.0);
    }
}
