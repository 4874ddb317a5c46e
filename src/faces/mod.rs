//! Face detection: MTCNN (P-Net, R-Net, O-Net) in tch, matching facenet-pytorch 2.6.0.
//!
//! [`Detector::load`] reads the three stages from `<models>/mtcnn/*.safetensors` onto a device;
//! [`Detector::detect`] takes an upright RGB photo at full resolution, runs the cascade on a copy whose
//! longest side is at most `faces.detect_max_side` (area-downscaled, never upscaled), and returns the
//! faces in full-resolution pixel coordinates. Faces whose box is smaller than `faces.min_face_px` are
//! left out and counted. [`Face::crop_region`] gives the square region the protection works on.
//!
//! Decoding is not done here: callers pass decoded, upright pixels (`image::RgbImage`), so the module
//! does not depend on `imageio`. [`open_upright`] is the small stand-in the CLI and the tests use until
//! `imageio` provides decoding with metadata.

mod draw;
mod mtcnn;
mod nets;

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Serialize;
use tch::Device;

pub use draw::draw;

use crate::{config::FacesConfig, models};

#[derive(Debug, thiserror::Error)]
pub enum FacesError {
    #[error("MTCNN weights {}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("face detection failed on a {width}×{height} image: {source}")]
    Torch { width: u32, height: u32, source: tch::TchError },
    #[error("cannot read image {}: {source}", path.display())]
    Decode { path: PathBuf, source: image::ImageError },
}

/// A face box `[x1, y1, x2, y2]` in pixels; it may reach a little outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaceBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl FaceBox {
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// Intersection over union with `other` (0 when either is empty).
    pub fn iou(&self, other: &FaceBox) -> f32 {
        let iw = (self.x2.min(other.x2) - self.x1.max(other.x1)).max(0.0);
        let ih = (self.y2.min(other.y2) - self.y1.max(other.y1)).max(0.0);
        let inter = iw * ih;
        let union = self.width().max(0.0) * self.height().max(0.0)
            + other.width().max(0.0) * other.height().max(0.0)
            - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// One detected face, in full-resolution pixel coordinates of the photo it was found in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Face {
    #[serde(rename = "box", serialize_with = "box_as_array")]
    pub bbox: FaceBox,
    /// O-Net's face probability, in (threshold, 1].
    pub score: f32,
    /// Left eye, right eye, nose, left and right mouth corners (as seen in the photo), `[x, y]`.
    pub landmarks: [[f32; 2]; 5],
}

fn box_as_array<S: serde::Serializer>(b: &FaceBox, s: S) -> Result<S::Ok, S::Error> {
    [b.x1, b.y1, b.x2, b.y2].serialize(s)
}

/// A square region of a photo, in whole pixels: columns `x..x + size`, rows `y..y + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CropRegion {
    pub x: u32,
    pub y: u32,
    pub size: u32,
}

impl Face {
    /// The square the protection works on: centred on the box, its side the box's longer side grown by
    /// `margin` of it on each side (`margin` 0.2 → 1.4 × the side), moved to lie inside the
    /// `width`×`height` image, and shrunk only when the image is smaller than the square. `None` for an
    /// empty image.
    pub fn crop_region(&self, margin: f64, width: u32, height: u32) -> Option<CropRegion> {
        if width == 0 || height == 0 {
            return None;
        }
        let b = &self.bbox;
        let side = f64::from(b.width().max(b.height()).max(1.0)) * (1.0 + 2.0 * margin.max(0.0));
        let size = (side.round() as u32).clamp(1, width.min(height));
        let place = |centre: f64, extent: u32| {
            let start = (centre - f64::from(size) / 2.0).round();
            start.clamp(0.0, f64::from(extent - size)) as u32
        };
        let cx = f64::from(b.x1 + b.x2) / 2.0;
        let cy = f64::from(b.y1 + b.y2) / 2.0;
        Some(CropRegion { x: place(cx, width), y: place(cy, height), size })
    }
}

/// Where the five landmarks of a face sit in a CelebA-aligned photo (178×218): left eye, right eye,
/// nose, left and right mouth corners. The mean of what [`Detector`] finds on the first 1,000 faces of
/// the CelebA train split (`veil faces --json`; standard deviation 1.5–2 px for the eyes, 2.5–6.7 px
/// for the nose and mouth).
const ALIGNED_LANDMARKS: [[f64; 2]; 5] =
    [[70.2, 112.1], [108.9, 112.0], [89.2, 135.9], [72.1, 153.9], [106.8, 153.8]];

/// The square generators trained on CelebA are fed, in the same aligned frame: columns 0..178, rows
/// 20..198 (`x`, `y`, side).
const ALIGNED_CROP: [f64; 3] = [0.0, 20.0, 178.0];

/// A square in photo pixels that may reach outside the photo, turned by `angle` about its center:
/// `x..x + side`, `y..y + side` before the turn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Square {
    pub x: f64,
    pub y: f64,
    pub side: f64,
    /// Degrees, counter-clockwise as seen: how far the face is tilted. An aligner turns the square
    /// back upright before it resizes it.
    pub angle: f64,
}

impl Face {
    /// The square a face-editing tool would cut from this face if it aligned it the way CelebA was
    /// aligned (the usual input of generators trained on CelebA): the standard crop mapped back
    /// through the similarity (scale, turn and shift) that best takes this face's landmarks onto
    /// [`ALIGNED_LANDMARKS`] (least squares). `None` when the landmarks are degenerate or disagree
    /// with the box (the square's center outside it, or its side outside 1 to 3 times the box's
    /// longer side).
    pub fn aligned_crop(&self) -> Option<Square> {
        let n = self.landmarks.len() as f64;
        let mean = |pts: &mut dyn Iterator<Item = [f64; 2]>| {
            pts.fold([0.0, 0.0], |[sx, sy], [x, y]| [sx + x / n, sy + y / n])
        };
        let p: Vec<[f64; 2]> = self.landmarks.iter().map(|[x, y]| [f64::from(*x), f64::from(*y)]).collect();
        let pm = mean(&mut p.iter().copied());
        let qm = mean(&mut ALIGNED_LANDMARKS.iter().copied());
        // q ≈ A·p + t with A = [[a, -b], [b, a]] (a scale and a turn), in y-down pixel coordinates.
        let (mut a, mut b, mut pp) = (0.0, 0.0, 0.0);
        for ([px, py], [qx, qy]) in p.iter().zip(ALIGNED_LANDMARKS) {
            let (dx, dy) = (px - pm[0], py - pm[1]);
            let (ex, ey) = (qx - qm[0], qy - qm[1]);
            a += dx * ex + dy * ey;
            b += dx * ey - dy * ex;
            pp += dx * dx + dy * dy;
        }
        let (a, b) = (a / pp, b / pp);
        let s2 = a * a + b * b;
        if !(s2.is_finite() && s2 > 0.0 && a.is_finite() && b.is_finite()) {
            return None;
        }
        let t = [qm[0] - (a * pm[0] - b * pm[1]), qm[1] - (b * pm[0] + a * pm[1])];
        // The crop's center in the photo: A⁻¹·(q - t), A⁻¹ = Aᵀ / s².
        let [x0, y0, side] = ALIGNED_CROP;
        let (qx, qy) = (x0 + side / 2.0 - t[0], y0 + side / 2.0 - t[1]);
        let (mx, my) = ((a * qx + b * qy) / s2, (-b * qx + a * qy) / s2);
        let side = side / s2.sqrt();
        // A turns clockwise as seen by atan2(b, a) (y points down), undoing a tilt the other way.
        let square = Square { x: mx - side / 2.0, y: my - side / 2.0, side, angle: b.atan2(a).to_degrees() };
        let bx = &self.bbox;
        let longer = f64::from(bx.width().max(bx.height()));
        let inside = (f64::from(bx.x1)..=f64::from(bx.x2)).contains(&mx)
            && (f64::from(bx.y1)..=f64::from(bx.y2)).contains(&my);
        (inside && (longer..=3.0 * longer).contains(&square.side)).then_some(square)
    }
}

/// What [`Detector::detect`] found in one photo.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detections {
    /// Faces at least `min_face_px` in size, best score first.
    pub faces: Vec<Face>,
    /// Faces the cascade found that were smaller than `min_face_px`, left out of `faces`.
    pub too_small: usize,
    /// The photo's size, `[width, height]`, which the faces' coordinates refer to.
    pub image_size: [u32; 2],
    /// The size the cascade ran at, `[width, height]` (the photo's, or its downscaled copy's).
    pub detect_size: [u32; 2],
}

impl Detections {
    /// Each face's square region for the protection ([`Face::crop_region`]), in the order of `faces`.
    pub fn crop_regions(&self, margin: f64) -> Vec<CropRegion> {
        let [w, h] = self.image_size;
        self.faces.iter().filter_map(|f| f.crop_region(margin, w, h)).collect()
    }
}

/// The loaded MTCNN cascade and its settings.
pub struct Detector {
    pnet: nets::PNet,
    rnet: nets::RNet,
    onet: nets::ONet,
    device: Device,
    config: FacesConfig,
}

impl Detector {
    /// Loads `models_dir/mtcnn/{pnet,rnet,onet}.safetensors` onto `device`.
    pub fn load(models_dir: &Path, config: &FacesConfig, device: Device) -> Result<Detector, FacesError> {
        let [p, r, o] = models::mtcnn_files(models_dir);
        Ok(Detector {
            pnet: nets::PNet::load(&p, device)?,
            rnet: nets::RNet::load(&r, device)?,
            onet: nets::ONet::load(&o, device)?,
            device,
            config: config.clone(),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn config(&self) -> &FacesConfig {
        &self.config
    }

    /// Finds the faces in an upright RGB photo at full resolution.
    pub fn detect(&self, image: &RgbImage) -> Result<Detections, FacesError> {
        let (width, height) = image.dimensions();
        let torch = |source| FacesError::Torch { width, height, source };
        if width == 0 || height == 0 {
            let size = [width, height];
            return Ok(Detections { faces: Vec::new(), too_small: 0, image_size: size, detect_size: size });
        }
        // [1,3,H,W] float in [0,255] on the device.
        let full = mtcnn::image_tensor(image.as_raw(), i64::from(height), i64::from(width), self.device)
            .map_err(torch)?;
        let [dw, dh] = detect_size(width, height, self.config.detect_max_side);
        let small = if [dw, dh] == [width, height] {
            full
        } else {
            // [1,3,dh,dw] in [0,255]: area downscale, as MTCNN's own pyramid.
            let _guard = tch::no_grad_guard();
            full.f_adaptive_avg_pool2d([i64::from(dh), i64::from(dw)]).map_err(torch)?
        };
        let (fx, fy) = (width as f32 / dw as f32, height as f32 / dh as f32);
        // The smallest face at detection size, never below P-Net's 12 px window.
        let min_size = (f64::from(self.config.min_face_px) * f64::from(dw) / f64::from(width)).max(12.0);
        let thresholds = self.config.thresholds.map(|t| t as f32);
        let raw = mtcnn::detect(
            (&self.pnet, &self.rnet, &self.onet),
            &small,
            min_size,
            thresholds,
            self.config.scale_factor,
        )
        .map_err(torch)?;
        let mut faces = Vec::with_capacity(raw.len());
        let mut too_small = 0;
        for f in raw {
            let face = Face {
                bbox: FaceBox { x1: f.b[0] * fx, y1: f.b[1] * fy, x2: f.b[2] * fx, y2: f.b[3] * fy },
                score: f.score,
                landmarks: f.landmarks.map(|[x, y]| [x * fx, y * fy]),
            };
            if is_too_small(&face.bbox, self.config.min_face_px) {
                too_small += 1;
            } else {
                faces.push(face);
            }
        }
        Ok(Detections { faces, too_small, image_size: [width, height], detect_size: [dw, dh] })
    }
}

/// Whether a face box is below the minimum face size: its longer side under `min_face_px`.
pub fn is_too_small(b: &FaceBox, min_face_px: u32) -> bool {
    b.width().max(b.height()) < min_face_px as f32
}

/// The size detection runs at for a `width`×`height` photo: the longest side brought down to
/// `max_side` (aspect kept, rounded, at least 1), never up.
pub fn detect_size(width: u32, height: u32, max_side: u32) -> [u32; 2] {
    let longest = width.max(height);
    if longest <= max_side || longest == 0 {
        return [width, height];
    }
    let s = f64::from(max_side) / f64::from(longest);
    let scaled = |v: u32| ((f64::from(v) * s).round() as u32).clamp(1, max_side);
    [scaled(width), scaled(height)]
}

/// Decodes an image file into upright RGB pixels (EXIF orientation applied). A stand-in for `imageio`,
/// which will decode with metadata; `faces` itself only ever sees pixels.
pub fn open_upright(path: &Path) -> Result<RgbImage, FacesError> {
    use image::ImageDecoder;
    let err = |source| FacesError::Decode { path: path.to_path_buf(), source };
    let reader = image::ImageReader::open(path)
        .map_err(|e| err(image::ImageError::IoError(e)))?
        .with_guessed_format()
        .map_err(|e| err(image::ImageError::IoError(e)))?;
    let mut decoder = reader.into_decoder().map_err(err)?;
    let orientation = decoder.orientation().map_err(err)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x1: f32, y1: f32, x2: f32, y2: f32) -> Face {
        Face { bbox: FaceBox { x1, y1, x2, y2 }, score: 0.99, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn crop_region_is_a_square_grown_by_the_margin() {
        // A 100×120 box centred at (250, 260): side 120 × 1.4 = 168.
        let r = face(200.0, 200.0, 300.0, 320.0).crop_region(0.2, 1000, 800).unwrap();
        assert_eq!(r, CropRegion { x: 166, y: 176, size: 168 });
        assert_eq!(face(200.0, 200.0, 300.0, 320.0).crop_region(0.0, 1000, 800).unwrap().size, 120);
    }

    #[test]
    fn crop_region_stays_inside_the_image() {
        // Near the top-left corner and partly outside: moved in, not cut.
        let r = face(-10.0, -5.0, 90.0, 95.0).crop_region(0.2, 1000, 800).unwrap();
        assert_eq!(r, CropRegion { x: 0, y: 0, size: 140 });
        // Near the bottom-right corner.
        let r = face(950.0, 750.0, 1010.0, 810.0).crop_region(0.5, 1000, 800).unwrap();
        assert_eq!(r, CropRegion { x: 880, y: 680, size: 120 });
        // Bigger than the image: the largest square that fits.
        let r = face(0.0, 0.0, 200.0, 200.0).crop_region(0.5, 300, 150).unwrap();
        assert_eq!(r, CropRegion { x: 25, y: 0, size: 150 });
        assert!(face(0.0, 0.0, 1.0, 1.0).crop_region(0.2, 0, 10).is_none());
    }

    #[test]
    fn the_aligned_crop_follows_the_landmarks() {
        // The template itself, in a CelebA-aligned photo: the standard crop.
        let mut f = face(50.0, 60.0, 130.0, 180.0);
        f.landmarks = ALIGNED_LANDMARKS.map(|[x, y]| [x as f32, y as f32]);
        let sq = f.aligned_crop().unwrap();
        assert!(
            (sq.x - 0.0).abs() < 1e-3
                && (sq.y - 20.0).abs() < 1e-3
                && (sq.side - 178.0).abs() < 1e-3
                && sq.angle.abs() < 1e-4,
            "{sq:?}"
        );
        // The same face twice as large and moved by (300, 100): the square follows.
        let mut g = face(400.0, 220.0, 560.0, 460.0);
        g.landmarks = ALIGNED_LANDMARKS.map(|[x, y]| [(2.0 * x + 300.0) as f32, (2.0 * y + 100.0) as f32]);
        let sq = g.aligned_crop().unwrap();
        assert!(
            (sq.x - 300.0).abs() < 1e-2 && (sq.y - 140.0).abs() < 1e-2 && (sq.side - 356.0).abs() < 1e-2,
            "{sq:?}"
        );
        // The template tilted by 20° counter-clockwise (as seen) about the crop's center: the same
        // square, turned by 20°.
        let (sin, cos) = 20f64.to_radians().sin_cos();
        let mut h = f.clone();
        h.landmarks = ALIGNED_LANDMARKS.map(|[x, y]| {
            let (dx, dy) = (x - 89.0, y - 109.0);
            [(89.0 + dx * cos + dy * sin) as f32, (109.0 - dx * sin + dy * cos) as f32]
        });
        let sq = h.aligned_crop().unwrap();
        assert!(
            (sq.x - 0.0).abs() < 1e-3
                && (sq.y - 20.0).abs() < 1e-3
                && (sq.side - 178.0).abs() < 1e-3
                && (sq.angle - 20.0).abs() < 1e-3,
            "{sq:?}"
        );
        // Landmarks all at one point, or far from the box: no square.
        assert_eq!(face(0.0, 0.0, 10.0, 10.0).aligned_crop(), None);
        g.bbox = FaceBox { x1: 0.0, y1: 0.0, x2: 100.0, y2: 100.0 };
        assert_eq!(g.aligned_crop(), None);
    }

    #[test]
    fn detect_size_downscales_the_longest_side_only() {
        assert_eq!(detect_size(4000, 3000, 1600), [1600, 1200]);
        assert_eq!(detect_size(3000, 4000, 1600), [1200, 1600]);
        assert_eq!(detect_size(1024, 1024, 1600), [1024, 1024]);
        assert_eq!(detect_size(1600, 10, 1600), [1600, 10]);
        assert_eq!(detect_size(6400, 1, 1600), [1600, 1]);
    }

    #[test]
    fn iou_of_boxes() {
        let a = FaceBox { x1: 0.0, y1: 0.0, x2: 10.0, y2: 10.0 };
        let b = FaceBox { x1: 5.0, y1: 0.0, x2: 15.0, y2: 10.0 };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        let far = FaceBox { x1: 20.0, y1: 20.0, x2: 30.0, y2: 30.0 };
        assert_eq!(a.iou(&far), 0.0);
    }

    #[test]
    fn too_small_is_the_longer_side_under_the_minimum() {
        assert!(is_too_small(&FaceBox { x1: 0.0, y1: 0.0, x2: 39.0, y2: 30.0 }, 40));
        assert!(!is_too_small(&FaceBox { x1: 0.0, y1: 0.0, x2: 20.0, y2: 40.0 }, 40));
    }

    fn weights() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        if models::mtcnn_files(&dir).iter().all(|p| p.is_file()) {
            Some(dir)
        } else {
            eprintln!("skipped: no MTCNN weights in {} (run `make setup`)", dir.display());
            None
        }
    }

    #[test]
    fn a_flat_image_has_no_faces() {
        let Some(dir) = weights() else { return };
        let detector = Detector::load(&dir, &FacesConfig::default(), Device::Cpu).unwrap();
        let img = RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
        let found = detector.detect(&img).unwrap();
        assert!(found.faces.is_empty() && found.too_small == 0, "{found:?}");
        assert_eq!(found.detect_size, [640, 480]);
        let empty = detector.detect(&RgbImage::new(0, 0)).unwrap();
        assert!(empty.faces.is_empty());
    }

    #[test]
    fn weights_of_the_wrong_shape_name_the_file_and_tensor() {
        let Some(dir) = weights() else { return };
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("mtcnn")).unwrap();
        for stage in ["pnet", "rnet"] {
            let name = format!("mtcnn/{stage}.safetensors");
            std::fs::copy(dir.join(&name), tmp.path().join(&name)).unwrap();
        }
        // O-Net's file holds P-Net's tensors.
        std::fs::copy(dir.join("mtcnn/pnet.safetensors"), tmp.path().join("mtcnn/onet.safetensors")).unwrap();
        let err = Detector::load(tmp.path(), &FacesConfig::default(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("onet.safetensors") && err.contains("conv1.weight"), "{err}");
        std::fs::remove_file(tmp.path().join("mtcnn/pnet.safetensors")).unwrap();
        let err = Detector::load(tmp.path(), &FacesConfig::default(), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("pnet.safetensors") && err.contains("missing"), "{err}");
    }
}
