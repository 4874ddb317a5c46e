//! `veil preview`: one PNG sheet that shows what face-manipulation generators make of a photo before
//! and after protection.
//!
//! The photo is protected through the real pipeline (detection, crop regions, attack against the
//! ensemble, 8-bit quantization) and written and decoded again the way `veil protect` writes it, in a
//! temporary folder. Each face region (up to [`layout::MAX_FACES`]) of the original and of that
//! decoded copy is resized to each generator's input, ensemble and holdout alike, and run under up to
//! [`layout::MAX_CONDITIONS`] of the generator's attacked conditions from the manifest. The sheet shows
//! both outputs side by side with `MSE(G(x_prot, c), G(x, c))` in [-1,1], and one verdict per
//! generator: disrupted when the mean of those MSEs reaches the paper's [`eval::THRESHOLD`].

pub mod draw;
pub mod layout;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use image::{Rgb, RgbImage};
use tch::{Kind, Tensor};

use crate::{
    eval,
    imageio::{self, ImageError, Photo},
    models::{Manifest, Role},
    pipeline::{self, Pipeline, PipelineError},
    protect::{self, spread, Ensemble, Generator, NoFace, Params, ProtectError, Region, Rng},
};
use draw::{BAD, FRAME, GOOD, HOLDOUT, INK, MUTED, PAPER};
use layout::{Layout, Rect, CAPTION, LABEL, LINE, MAX_CONDITIONS, MAX_FACES};

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot load the models: {0}")]
    Models(#[from] crate::models::ModelsError),
    #[error("generator {name}: {message}")]
    Generator { name: String, message: String },
    #[error("cannot create a temporary folder: {0}")]
    Temp(std::io::Error),
    #[error("{}: the protected copy decoded to {got:?} pixels instead of {want:?}", path.display())]
    Size { path: PathBuf, got: (u32, u32), want: (u32, u32) },
    #[error("{}: already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("{}: cannot write: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: cannot encode the sheet: {message}", path.display())]
    Encode { path: PathBuf, message: String },
    #[error("{}: has no file name to name the sheet after", path.display())]
    Name { path: PathBuf },
}

impl From<ProtectError> for PreviewError {
    fn from(e: ProtectError) -> PreviewError {
        match e {
            ProtectError::Model { name, message } => PreviewError::Generator { name, message },
            other => PreviewError::Pipeline(PipelineError::Generators(other)),
        }
    }
}

/// One generator output pair on the sheet.
#[derive(Debug, Clone)]
pub struct Shown {
    pub face: usize,
    pub condition: String,
    pub mse: f64,
    pub pair: layout::Pair,
}

/// What one generator did with the faces of the photo.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub role: Role,
    pub shown: Vec<Shown>,
    /// Mean MSE over the shown conditions and faces.
    pub mean_mse: f64,
    pub disrupted: bool,
}

/// A rendered sheet with what it shows.
#[derive(Debug, Clone)]
pub struct Preview {
    pub sheet: RgbImage,
    pub layout: Layout,
    pub faces: usize,
    pub epsilon: f64,
    pub verdicts: Vec<Verdict>,
    /// The message lines of a no-face sheet (empty otherwise).
    pub messages: Vec<String>,
}

impl Preview {
    /// The JSON object `veil preview --json` prints.
    pub fn to_json(&self, out: &Path) -> serde_json::Value {
        let r = |r: &Rect| [r.x, r.y, r.w, r.h];
        serde_json::json!({
            "sheet": out.to_string_lossy(),
            "width": self.sheet.width(),
            "height": self.sheet.height(),
            "faces": self.faces,
            "epsilon": self.epsilon,
            "original": r(&self.layout.original),
            "protected": self.layout.protected.as_ref().map(r),
            "perturbation": self.layout.perturbation.as_ref().map(r),
            "messages": self.messages,
            "generators": self.verdicts.iter().map(|v| serde_json::json!({
                "name": v.name,
                "role": role_name(v.role),
                "mean_mse": v.mean_mse,
                "disrupted": v.disrupted,
                "panels": v.shown.iter().map(|s| serde_json::json!({
                    "face": s.face + 1,
                    "condition": s.condition,
                    "mse": s.mse,
                    "original": r(&s.pair.original),
                    "protected": r(&s.pair.protected),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// One line for people.
    pub fn summary(&self, out: &Path) -> String {
        let mut line = format!("{}: {}×{}", out.display(), self.sheet.width(), self.sheet.height());
        if self.faces == 0 {
            return line + "; no face found";
        }
        let disrupted = self.verdicts.iter().filter(|v| v.disrupted).count();
        line += &format!(
            "; {} face(s); {disrupted} of {} generator(s) disrupted at MSE >= {}",
            self.faces,
            self.verdicts.len(),
            eval::THRESHOLD
        );
        line
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Ensemble => "ensemble",
        Role::Holdout => "holdout",
    }
}

/// `<stem>-preview.png` in the current directory (never next to the photo, which may sit in a watched
/// folder).
pub fn default_out(photo: &Path) -> Result<PathBuf, PreviewError> {
    let stem = photo.file_stem().ok_or_else(|| PreviewError::Name { path: photo.to_path_buf() })?;
    let mut name = stem.to_os_string();
    name.push("-preview.png");
    Ok(PathBuf::from(name))
}

/// Writes `sheet` as PNG to `path`, all at once (a full disk leaves no partial sheet, and an earlier
/// sheet whole); an existing file is an error unless `force`.
pub fn save(sheet: &RgbImage, path: &Path, force: bool) -> Result<(), PreviewError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(sheet.as_raw(), sheet.width(), sheet.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| PreviewError::Encode { path: path.to_path_buf(), message: e.to_string() })?;
    imageio::write_whole(path, &bytes, force).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            PreviewError::Exists { path: path.to_path_buf() }
        } else {
            PreviewError::Write { path: path.to_path_buf(), source }
        }
    })
}

/// A condition shown on the sheet: its label and its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub label: String,
    pub values: Vec<f32>,
}

/// Readable name of an attribute: `Blond_Hair` → `blond hair`.
fn attribute_name(a: &str) -> String {
    a.replace('_', " ").to_lowercase()
}

/// Up to [`MAX_CONDITIONS`] of a generator's attacked conditions, spread over the list, each labelled
/// with the attributes it sets; an unconditional generator has one, `unconditional`.
pub fn shown_conditions(attributes: &[String], conditions: &[Vec<f32>]) -> Vec<Condition> {
    if attributes.is_empty() || conditions.is_empty() {
        return vec![Condition { label: "unconditional".to_string(), values: Vec::new() }];
    }
    let k = conditions.len();
    let mut picks: Vec<usize> = if k <= MAX_CONDITIONS {
        (0..k).collect()
    } else {
        (0..MAX_CONDITIONS).map(|i| i * (k - 1) / (MAX_CONDITIONS - 1)).collect()
    };
    picks.dedup();
    picks
        .into_iter()
        .map(|i| {
            let values = conditions[i].clone();
            let set: Vec<String> = attributes
                .iter()
                .zip(&values)
                .filter(|(_, v)| **v >= 0.5)
                .map(|(a, _)| attribute_name(a))
                .collect();
            let label = if set.is_empty() { "no attribute".to_string() } else { set.join(", ") };
            Condition { label, values }
        })
        .collect()
}

/// `[1,3,S,S]` in [-1,1] → an S×S picture.
fn unit_to_image(y: &Tensor) -> RgbImage {
    let size = y.size();
    let (h, w) = (size[2] as u32, size[3] as u32);
    let u8s = ((y.squeeze_dim(0) + 1.0) * 127.5).round().clamp(0.0, 255.0).to_kind(Kind::Uint8);
    pipeline::from_tensor(&u8s, w, h)
}

/// The region `r` of `pixels: [3,H,W]` uint8 as `[1,3,h,w]` in [-1,1] on `device`.
fn crop_unit(pixels: &Tensor, r: &Region, device: tch::Device) -> Tensor {
    protect::to_unit(&pixels.narrow(1, r.y, r.h).narrow(2, r.x, r.w), device)
}

fn crop_image(img: &RgbImage, r: &Region) -> RgbImage {
    image::imageops::crop_imm(img, r.x as u32, r.y as u32, r.w as u32, r.h as u32).to_image()
}

/// The difference `protected - original` in region `r`, amplified so that ±`levels` maps onto the
/// full 8-bit range around mid grey. Returns the picture and the amplification.
fn perturbation(original: &RgbImage, protected: &RgbImage, r: &Region, levels: i64) -> (RgbImage, f64) {
    let gain = 127.0 / levels.max(1) as f64;
    let (a, b) = (crop_image(original, r), crop_image(protected, r));
    let out = RgbImage::from_fn(a.width(), a.height(), |x, y| {
        let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
        Rgb(std::array::from_fn(|i| {
            (128.0 + (f64::from(q[i]) - f64::from(p[i])) * gain).round().clamp(0.0, 255.0) as u8
        }))
    });
    (out, gain)
}

/// Protects `photo` with `params` through `pipeline` and renders the sheet. Holdout generators of the
/// models folder are loaded next to the pipeline's ensemble.
pub fn render(
    pipeline: &Pipeline,
    photo: &Photo,
    params: &Params,
    rng: &mut Rng,
) -> Result<Preview, PreviewError> {
    let config = pipeline.config();
    let file_name =
        photo.source.file_name().ok_or_else(|| PreviewError::Name { path: photo.source.clone() })?;
    // The title shows a name that is not UTF-8 with U+FFFD for its stray bytes.
    let name = file_name.to_string_lossy().into_owned();
    let found = pipeline.find(photo)?;
    if found.faces == 0 {
        return Ok(no_face_sheet(photo, &name, config.protect.no_face, found.too_small));
    }

    // Protect as `veil protect` does, then write and decode the copy as it would be shared.
    let mut protected = photo.clone();
    let found = pipeline.protect_regions(pipeline.ensemble(), &mut protected, found, params, rng)?;
    let tmp = tempfile::tempdir().map_err(PreviewError::Temp)?;
    let written = imageio::write(&protected, tmp.path(), file_name, None, &config.imageio)?;
    let shared = imageio::read(&written.path, &config.imageio)?;
    if shared.pixels.dimensions() != photo.pixels.dimensions() {
        return Err(PreviewError::Size {
            path: photo.source.clone(),
            got: shared.pixels.dimensions(),
            want: photo.pixels.dimensions(),
        });
    }

    let dir = config.models.dir.clone().unwrap_or_default();
    let device = pipeline.ensemble().device;
    let holdouts = match Ensemble::load(&dir, &[Role::Holdout], device, &BTreeMap::new()) {
        Ok(h) => Some(h),
        Err(ProtectError::EmptyEnsemble(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let manifest = Manifest::load(&dir)?;
    let generators: Vec<&Generator> = pipeline
        .ensemble()
        .generators
        .iter()
        .chain(holdouts.iter().flat_map(|h| h.generators.iter()))
        .collect();
    let conditions: Vec<Vec<Condition>> = generators
        .iter()
        .map(|g| match manifest.models.iter().find(|m| m.name == g.name) {
            Some(m) => shown_conditions(&m.attributes, &m.conditions),
            None => shown_conditions(&[], &[]),
        })
        .collect();
    let regions: Vec<Region> = found.targets.iter().take(MAX_FACES).map(|t| t.face).collect();
    let counts: Vec<usize> = conditions.iter().map(Vec::len).collect();
    let layout = Layout::new(photo.pixels.dimensions(), regions.len(), &counts);
    let mut sheet = RgbImage::from_pixel(layout.width, layout.height, PAPER);

    // Generator outputs: [1,3,S,S] in [-1,1] for each face, generator and condition.
    let original_t = pipeline::to_tensor(&photo.pixels);
    let shared_t = pipeline::to_tensor(&shared.pixels);
    let mut verdicts: Vec<Verdict> = generators
        .iter()
        .map(|g| Verdict {
            name: g.name.clone(),
            role: g.role,
            shown: Vec::new(),
            mean_mse: 0.0,
            disrupted: false,
        })
        .collect();
    for (fi, (region, block)) in regions.iter().zip(&layout.faces).enumerate() {
        let x = crop_unit(&original_t, region, device);
        let xp = crop_unit(&shared_t, region, device);
        draw::paste(&mut sheet, &crop_image(&photo.pixels, region), block.thumb, false);
        draw::frame(&mut sheet, block.thumb, FRAME);
        let header =
            format!("face region {} at {},{} ({}×{} px)", fi + 1, region.x, region.y, region.w, region.h);
        draw::text(&mut sheet, block.header.x, block.header.y, &header, LABEL, INK);
        draw::text(
            &mut sheet,
            block.header.x,
            block.header.y + LINE,
            "in each pair: left = generator on the original, right = on the protected copy",
            CAPTION,
            MUTED,
        );
        for (gi, (g, row)) in generators.iter().zip(&block.rows).enumerate() {
            let s = g.input_size;
            let (xs, xps) = (spread::resize(&x, s, s), spread::resize(&xp, s, s));
            let color = if g.role == Role::Holdout { HOLDOUT } else { INK };
            draw::text(
                &mut sheet,
                row.label.x,
                row.label.y,
                &draw::fit(&g.name, row.label.w, LABEL),
                LABEL,
                color,
            );
            draw::text(&mut sheet, row.label.x, row.label.y + LINE, role_name(g.role), LABEL, color);
            for (cond, pair) in conditions[gi].iter().zip(&row.pairs) {
                let c =
                    Tensor::from_slice(&cond.values).view([1, cond.values.len() as i64]).to_device(device);
                let (y, yp) = tch::no_grad(|| -> Result<(Tensor, Tensor), ProtectError> {
                    Ok((g.run(&xs, &c)?, g.run(&xps, &c)?))
                })?;
                let mse = tch::no_grad(|| (&yp - &y).square().mean(Kind::Float).double_value(&[]));
                draw::paste(&mut sheet, &unit_to_image(&y), pair.original, false);
                draw::paste(&mut sheet, &unit_to_image(&yp), pair.protected, false);
                draw::frame(&mut sheet, pair.original, FRAME);
                draw::frame(&mut sheet, pair.protected, FRAME);
                let cap = pair.caption;
                draw::text(&mut sheet, cap.x, cap.y, &draw::fit(&cond.label, cap.w, CAPTION), CAPTION, INK);
                let verdict_color = if mse >= eval::THRESHOLD { GOOD } else { BAD };
                draw::text(
                    &mut sheet,
                    cap.x,
                    cap.y + layout::SMALL_LINE,
                    &format!("MSE {mse:.4}"),
                    CAPTION,
                    verdict_color,
                );
                verdicts[gi].shown.push(Shown { face: fi, condition: cond.label.clone(), mse, pair: *pair });
            }
        }
    }
    for v in &mut verdicts {
        v.mean_mse = v.shown.iter().map(|s| s.mse).sum::<f64>() / v.shown.len().max(1) as f64;
        v.disrupted = !v.shown.is_empty() && v.mean_mse >= eval::THRESHOLD;
    }

    // Title, top row, verdicts.
    let levels = protect::max_levels(params.epsilon);
    let title = format!("Veil preview: {name}");
    let settings = format!(
        "ε {:.3} (±{levels} of 255 levels), {} steps; {} face(s) in {} region(s){}; {} generator(s)",
        params.epsilon,
        params.iterations,
        found.faces,
        found.targets.len(),
        if found.targets.len() > MAX_FACES { format!(", first {MAX_FACES} shown") } else { String::new() },
        generators.len()
    );
    draw_title(&mut sheet, &layout, &title, &settings);
    draw_photo(&mut sheet, layout.original, &photo.pixels, "original");
    if let Some(r) = layout.protected {
        draw_photo(&mut sheet, r, &shared.pixels, "protected");
    }
    if let (Some(r), Some(cap), Some(first)) =
        (layout.perturbation, layout.perturbation_caption, regions.first())
    {
        let (picture, gain) = perturbation(&photo.pixels, &protected.pixels, first, levels);
        draw_photo(&mut sheet, r, &picture, &format!("perturbation ×{gain:.0}"));
        let text = format!("face region 1, ε = {:.3} (±{levels} levels), grey = unchanged", params.epsilon);
        draw::text(&mut sheet, cap.x, cap.y, &draw::fit(&text, cap.w, CAPTION), CAPTION, MUTED);
    }
    let head =
        format!("verdict: disrupted when the mean MSE of a generator's outputs >= {}", eval::THRESHOLD);
    if let Some(r) = layout.verdicts.first() {
        draw::text(&mut sheet, r.x, r.y, &draw::fit(&head, r.w, LABEL), LABEL, INK);
    }
    for (v, r) in verdicts.iter().zip(layout.verdicts.iter().skip(1)) {
        let (word, color) = if v.disrupted { ("disrupted", GOOD) } else { ("NOT disrupted", BAD) };
        let line = format!("{:<14}{:<10}{word:<15}mean MSE {:.4}", v.name, role_name(v.role), v.mean_mse);
        draw::text(&mut sheet, r.x, r.y, &draw::fit(&line, r.w, LABEL), LABEL, color);
    }
    Ok(Preview { sheet, layout, faces: found.faces, epsilon: params.epsilon, verdicts, messages: Vec::new() })
}

fn draw_title(sheet: &mut RgbImage, layout: &Layout, title: &str, settings: &str) {
    let t = layout.title;
    draw::text(sheet, t.x, t.y, &draw::fit(title, t.w, LABEL), LABEL, INK);
    draw::text(sheet, t.x, t.y + LINE, &draw::fit(settings, t.w, LABEL), LABEL, MUTED);
}

/// `picture` in `r` with `label` on the line above.
fn draw_photo(sheet: &mut RgbImage, r: Rect, picture: &RgbImage, label: &str) {
    draw::text(sheet, r.x, r.y - LINE, &draw::fit(label, r.w.max(8 * 8 * LABEL), LABEL), LABEL, INK);
    draw::paste(sheet, picture, r, false);
    draw::frame(sheet, r, FRAME);
}

/// What `no_face` would make `veil protect` and `veild` do with this photo.
fn policy_line(policy: NoFace) -> &'static str {
    match policy {
        NoFace::Copy => "no_face = \"copy\": Veil would write an unchanged copy.",
        NoFace::Skip => "no_face = \"skip\": Veil would write nothing for this photo.",
        NoFace::Whole => "no_face = \"whole\": Veil would protect the whole image as one region.",
    }
}

/// The short sheet for a photo without a face: the photo and what Veil would do with it.
pub fn no_face_sheet(photo: &Photo, name: &str, policy: NoFace, too_small: usize) -> Preview {
    let mut messages = vec!["No face found: there is nothing for a face generator to work on.".to_string()];
    if too_small > 0 {
        messages.push(format!("{too_small} face(s) smaller than faces.min_face_px were left out."));
    }
    messages.push(policy_line(policy).to_string());
    let layout = Layout::no_face(photo.pixels.dimensions(), messages.len());
    let mut sheet = RgbImage::from_pixel(layout.width, layout.height, PAPER);
    let (w, h) = photo.pixels.dimensions();
    draw_title(&mut sheet, &layout, &format!("Veil preview: {name}"), &format!("{w}×{h}, no face found"));
    draw_photo(&mut sheet, layout.original, &photo.pixels, "original");
    for (m, r) in messages.iter().zip(&layout.verdicts) {
        draw::text(&mut sheet, r.x, r.y, &draw::fit(m, r.w, LABEL), LABEL, INK);
    }
    Preview { sheet, layout, faces: 0, epsilon: 0.0, verdicts: Vec::new(), messages }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_spread_over_the_list_and_labelled_by_their_attributes() {
        let attributes: Vec<String> =
            ["Black_Hair", "Blond_Hair", "Male", "Young"].iter().map(|s| s.to_string()).collect();
        let conditions = vec![
            vec![1., 0., 1., 1.],
            vec![0., 1., 0., 1.],
            vec![0., 0., 0., 0.],
            vec![0., 1., 1., 0.],
            vec![1., 0., 0., 0.],
        ];
        let shown = shown_conditions(&attributes, &conditions);
        let labels: Vec<&str> = shown.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["black hair, male, young", "no attribute", "black hair"]);
        assert_eq!(shown[1].values, conditions[2]);
        assert_eq!(shown_conditions(&attributes, &conditions[..2]).len(), 2);
        let none = shown_conditions(&[], &[]);
        assert_eq!((none.len(), none[0].label.as_str(), none[0].values.len()), (1, "unconditional", 0));
    }

    #[test]
    fn perturbation_is_amplified_around_grey() {
        let a = RgbImage::from_pixel(4, 4, Rgb([100, 100, 100]));
        let mut b = a.clone();
        b.put_pixel(1, 1, Rgb([106, 94, 100]));
        let (p, gain) = perturbation(&a, &b, &Region { x: 1, y: 1, w: 2, h: 2 }, 6);
        assert_eq!(p.dimensions(), (2, 2));
        assert!((gain - 127.0 / 6.0).abs() < 1e-9);
        assert_eq!(p.get_pixel(0, 0).0, [255, 1, 128]);
        assert_eq!(p.get_pixel(1, 1).0, [128, 128, 128]);
    }

    #[test]
    fn default_out_is_in_the_current_folder_and_save_refuses_to_overwrite() {
        assert_eq!(default_out(Path::new("/watched/IMG_1.jpg")).unwrap(), PathBuf::from("IMG_1-preview.png"));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.png");
        let sheet = RgbImage::from_pixel(3, 2, Rgb([1, 2, 3]));
        save(&sheet, &path, false).unwrap();
        assert!(matches!(save(&sheet, &path, false), Err(PreviewError::Exists { .. })));
        save(&RgbImage::from_pixel(5, 5, PAPER), &path, true).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (5, 5));
    }

    #[test]
    fn policy_lines_name_the_setting() {
        for p in [NoFace::Copy, NoFace::Skip, NoFace::Whole] {
            assert!(policy_line(p).starts_with("no_face = "));
        }
    }
}
