//! Face detection end to end, on the shared test data (`../shared/data`, see its README): agreement with
//! facenet-pytorch's own MTCNN, group photos built from portraits pasted into camera JPEGs, photos
//! without faces, and `veil faces`. Each test says why and returns when the data, the weights or the
//! Python reference environment are missing.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use image::{imageops, RgbImage};
use veil::{
    config::FacesConfig,
    faces::{self, Detector, Face, FaceBox},
};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn data_dir() -> Option<PathBuf> {
    let dir = crate_dir().join("../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: no test data at {}", dir.display());
        None
    }
}

fn detector(config: &FacesConfig) -> Option<Detector> {
    detector_on(config, tch::Device::Cpu)
}

fn detector_on(config: &FacesConfig, device: tch::Device) -> Option<Detector> {
    let models = crate_dir().join("models");
    if !veil::models::mtcnn_files(&models).iter().all(|p| p.is_file()) {
        eprintln!("skipped: no MTCNN weights in {} (run `make setup`)", models.display());
        return None;
    }
    Some(Detector::load(&models, config, device).unwrap())
}

/// The .jpg files directly in `dir`, sorted.
fn jpegs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")))
        .collect();
    files.sort();
    files
}

fn portrait_dirs(data: &Path) -> Vec<PathBuf> {
    ["src/female", "src/male", "ref/female", "ref/male"]
        .iter()
        .map(|d| data.join("portraits").join(d))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Agreement with facenet-pytorch.

const WHEEL: &str = ".cache/wheels/facenet_pytorch-2.6.0-py3-none-any.whl";
const SCRIPT: &str = include_str!("mtcnn_reference.py");

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[derive(serde::Deserialize)]
struct RefImage {
    width: u32,
    height: u32,
    faces: Vec<RefFace>,
}

#[derive(serde::Deserialize)]
struct RefFace {
    #[serde(rename = "box")]
    b: [f32; 4],
    score: f32,
}

/// Whose JPEG decoder the reference sees.
#[derive(Clone, Copy, PartialEq)]
enum Pixels {
    /// The pixels Veil decoded (passed as PPM): compares the detectors alone.
    Ours,
    /// PIL's own decoding of the files (libjpeg-turbo): detectors and decoders together.
    Pil,
}

/// facenet-pytorch's detections for `files`, keyed by file path, from `tests/mtcnn_reference.py`,
/// cached in `target/faces-reference/` under a hash of the script, the settings and the input (the
/// decoded pixels themselves for [`Pixels::Ours`]).
fn reference(
    name: &str,
    files: &[PathBuf],
    images: &[RgbImage],
    pixels: Pixels,
    config: &FacesConfig,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let Some(python) = common::python() else {
        eprintln!("skipped: no Python environment (.venv or $VIRTUAL_ENV) to run the reference");
        return None;
    };
    let wheel = crate_dir().join(WHEEL);
    if !wheel.is_file() {
        eprintln!("skipped: no {} (run `make setup`)", wheel.display());
        return None;
    }
    let [t0, t1, t2] = config.thresholds.map(|t| t.to_string());
    let settings = [
        "--min-face".to_string(),
        config.min_face_px.to_string(),
        "--factor".into(),
        config.scale_factor.to_string(),
        "--thresholds".into(),
        t0,
        t1,
        t2,
    ];
    let mut key = fnv1a(settings.join("\n").as_bytes(), fnv1a(SCRIPT.as_bytes(), 0xcbf2_9ce4_8422_2325));
    for (file, image) in files.iter().zip(images) {
        key = fnv1a(file.to_string_lossy().as_bytes(), key);
        if pixels == Pixels::Ours {
            key = fnv1a(&image.width().to_le_bytes(), key);
            key = fnv1a(image.as_raw(), key);
        }
    }
    let tag = if pixels == Pixels::Ours { "ours" } else { "pil" };
    let cache = crate_dir().join("target/faces-reference");
    std::fs::create_dir_all(&cache).unwrap();
    let out = cache.join(format!("{name}-{tag}-{key:016x}.json"));
    if !out.is_file() {
        eprintln!("running the facenet-pytorch reference on {name} ({tag} decoding) into {}", out.display());
        let tmp = tempfile::tempdir().unwrap();
        // The script's inputs, and which file each of its answers stands for.
        let inputs: Vec<(PathBuf, &PathBuf)> = match pixels {
            Pixels::Pil => files.iter().map(|f| (f.clone(), f)).collect(),
            Pixels::Ours => files
                .iter()
                .zip(images)
                .enumerate()
                .map(|(i, (file, image))| {
                    let ppm = tmp.path().join(format!("{i:05}.ppm"));
                    let mut bytes = format!("P6\n{} {}\n255\n", image.width(), image.height()).into_bytes();
                    bytes.extend_from_slice(image.as_raw());
                    std::fs::write(&ppm, bytes).unwrap();
                    (ppm, file)
                })
                .collect(),
        };
        let raw = tmp.path().join("reference.json");
        let mut cmd = Command::new(&python);
        cmd.arg(crate_dir().join("tests/mtcnn_reference.py"))
            .arg("--wheel")
            .arg(&wheel)
            .arg("--out")
            .arg(&raw);
        cmd.args(&settings);
        match pixels {
            Pixels::Ours => cmd.arg(tmp.path()),
            Pixels::Pil => cmd.args(inputs.iter().map(|(input, _)| input)),
        };
        let status = cmd.status().unwrap();
        assert!(status.success(), "{} tests/mtcnn_reference.py failed", python.display());
        let mut answers: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&raw).unwrap()).unwrap();
        let by_file: serde_json::Map<String, serde_json::Value> = inputs
            .iter()
            .map(|(input, file)| {
                let answer = answers.remove(&input.display().to_string()).unwrap();
                (file.display().to_string(), answer)
            })
            .collect();
        std::fs::write(&out, serde_json::to_string(&by_file).unwrap()).unwrap();
    }
    let text = std::fs::read_to_string(&out).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

/// How one image set compares with the reference.
#[derive(Debug, Default)]
struct Agreement {
    images: usize,
    same_count: usize,
    matched: usize,
    iou_ok: usize,
    reference_faces: usize,
    ours: usize,
    worst_iou: f32,
    differing: Vec<String>,
}

fn compare(name: &str, dirs: &[PathBuf], detector: &Detector, pixels: Pixels) -> Option<Agreement> {
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| jpegs(d)).collect();
    let images: Vec<RgbImage> = files.iter().map(|f| faces::open_upright(f).unwrap()).collect();
    let reference = reference(name, &files, &images, pixels, detector.config())?;
    let min = detector.config().min_face_px;
    let mut a = Agreement { worst_iou: 1.0, ..Agreement::default() };
    for (file, image) in files.iter().zip(&images) {
        let want: RefImage = serde_json::from_value(reference[&file.display().to_string()].clone()).unwrap();
        assert_eq!((image.width(), image.height()), (want.width, want.height), "{}", file.display());
        let got = detector.detect(image).unwrap().faces;
        // The reference returns every face MTCNN finds; `detect` leaves out those under the minimum.
        let want: Vec<(FaceBox, f32)> = want
            .faces
            .iter()
            .map(|f| (FaceBox { x1: f.b[0], y1: f.b[1], x2: f.b[2], y2: f.b[3] }, f.score))
            .filter(|(b, _)| !faces::is_too_small(b, min))
            .collect();
        a.images += 1;
        a.reference_faces += want.len();
        a.ours += got.len();
        if want.len() == got.len() {
            a.same_count += 1;
        } else {
            a.differing.push(format!(
                "{}: reference {:?}, ours {:?}",
                file.display(),
                want,
                got.iter().map(|f| (&f.bbox, f.score)).collect::<Vec<_>>()
            ));
        }
        // Greedy matching, best IoU first.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (i, (w, _)) in want.iter().enumerate() {
            for (j, g) in got.iter().enumerate() {
                pairs.push((w.iou(&g.bbox), i, j));
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
        let (mut used_w, mut used_g) = (vec![false; want.len()], vec![false; got.len()]);
        for (iou, i, j) in pairs {
            if iou > 0.3 && !used_w[i] && !used_g[j] {
                used_w[i] = true;
                used_g[j] = true;
                a.matched += 1;
                a.worst_iou = a.worst_iou.min(iou);
                if iou >= 0.95 {
                    a.iou_ok += 1;
                } else {
                    a.differing.push(format!("{}: IoU {iou:.4} with the reference", file.display()));
                }
            }
        }
    }
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    let tag = if pixels == Pixels::Ours { "same pixels" } else { "PIL decoding for the reference" };
    println!(
        "{name} ({tag}): {} images, same face count on {} ({:.2} %); {} reference faces, {} ours, \
         {} matched, IoU ≥ 0.95 on {} ({:.2} % of matched), worst IoU {:.4}",
        a.images,
        a.same_count,
        pct(a.same_count, a.images),
        a.reference_faces,
        a.ours,
        a.matched,
        a.iou_ok,
        pct(a.iou_ok, a.matched),
        a.worst_iou
    );
    for d in &a.differing {
        println!("  {d}");
    }
    Some(a)
}

fn check(a: &Agreement) {
    assert!(a.images > 0);
    assert!(a.same_count * 100 >= a.images * 99, "{a:?}");
    assert!(a.iou_ok * 100 >= a.matched * 99, "{a:?}");
}

#[test]
fn matches_facenet_pytorch_on_celeba_val() {
    let Some(data) = data_dir() else { return };
    let Some(detector) = detector(&FacesConfig::default()) else { return };
    if let Some(a) = compare("celeba-val", &[data.join("celeba/val")], &detector, Pixels::Ours) {
        check(&a);
    }
}

#[test]
fn matches_facenet_pytorch_on_portraits() {
    let Some(data) = data_dir() else { return };
    let Some(detector) = detector(&FacesConfig::default()) else { return };
    if let Some(a) = compare("portraits", &portrait_dirs(&data), &detector, Pixels::Ours) {
        check(&a);
    }
}

/// The same comparison with the reference decoding the JPEGs itself (PIL, libjpeg-turbo), so that the
/// figures include the decoders' rounding differences, to which MTCNN's thresholds are sensitive.
/// Ignored: a measurement (`-- --ignored --nocapture decoders`). The decoders differ by a level or two
/// on a fifth of the pixels, which moves some boxes by a few pixels (IoU down to about 0.75 on CelebA's
/// small faces); it only checks that the counts agree on ≥ 95 % of images and that matched faces are
/// the same faces.
#[test]
#[ignore]
fn matches_facenet_pytorch_with_decoders_differing() {
    let Some(data) = data_dir() else { return };
    let Some(detector) = detector(&FacesConfig::default()) else { return };
    for (name, dirs) in [("celeba-val", vec![data.join("celeba/val")]), ("portraits", portrait_dirs(&data))] {
        if let Some(a) = compare(name, &dirs, &detector, Pixels::Pil) {
            assert!(a.same_count * 100 >= a.images * 95, "{a:?}");
            assert!(a.worst_iou >= 0.5, "{a:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Group photos and photos without faces.

/// The single face the detector finds in a portrait at its own size.
fn portrait_face(detector: &Detector, portrait: &RgbImage) -> Face {
    let found = detector.detect(portrait).unwrap().faces;
    assert_eq!(found.len(), 1, "a portrait shows one face: {found:?}");
    found[0].clone()
}

#[test]
fn finds_every_face_pasted_into_camera_photos() {
    let Some(data) = data_dir() else { return };
    let Some(detector) = detector(&FacesConfig::default()) else { return };
    let portraits: Vec<PathBuf> = portrait_dirs(&data).iter().flat_map(|d| jpegs(d)).collect();
    let backgrounds = jpegs(&data.join("exif-samples/jpg/mobile"));
    assert!(!backgrounds.is_empty() && portraits.len() >= 4);
    // Side of each pasted portrait as a fraction of the background's shorter side: faces from about
    // 50 px to about half the photo.
    let layouts: [&[f32]; 3] = [&[0.45, 0.2], &[0.3, 0.15, 0.5], &[0.08, 0.25, 0.12, 0.35]];
    let mut next = 0;
    for (n, background) in backgrounds.iter().enumerate() {
        for (l, sizes) in layouts.iter().enumerate() {
            let mut photo = faces::open_upright(background).unwrap();
            let (w, h) = photo.dimensions();
            let mut expected = Vec::new();
            // Portraits side by side along the longer axis, each vertically placed differently.
            let slot = w.max(h) / sizes.len() as u32;
            for (k, frac) in sizes.iter().enumerate() {
                let portrait = faces::open_upright(&portraits[(next * 7 + 3) % portraits.len()]).unwrap();
                next += 1;
                let side = (w.min(h) as f32 * frac) as u32;
                let small = imageops::resize(&portrait, side, side, imageops::FilterType::Triangle);
                let along = k as u32 * slot + (slot.saturating_sub(side)) / 2;
                let across = (w.min(h) - side) * (k as u32 % 3) / 2;
                let (x, y) = if w >= h { (along, across) } else { (across, along) };
                imageops::replace(&mut photo, &small, i64::from(x), i64::from(y));
                let face = portrait_face(&detector, &small);
                let b = face.bbox;
                expected.push(FaceBox {
                    x1: b.x1 + x as f32,
                    y1: b.y1 + y as f32,
                    x2: b.x2 + x as f32,
                    y2: b.y2 + y as f32,
                });
            }
            let found = detector.detect(&photo).unwrap();
            let name = format!("{} layout {l}", background.display());
            for (k, want) in expected.iter().enumerate() {
                let best = found.faces.iter().map(|f| f.bbox.iou(want)).fold(0.0, f32::max);
                assert!(
                    best >= 0.6,
                    "{name}: pasted face {k} at {want:?} not found (best IoU {best}): {found:?}"
                );
            }
            assert_eq!(found.faces.len(), expected.len(), "{name}: extra faces: {found:?}");
            // The protection's regions are squares inside the photo around each face.
            let regions = found.crop_regions(0.2);
            assert_eq!(regions.len(), found.faces.len());
            for (f, r) in found.faces.iter().zip(regions) {
                assert!(r.x + r.size <= w && r.y + r.size <= h && r.size > 0);
                let (cx, cy) = ((f.bbox.x1 + f.bbox.x2) / 2.0, (f.bbox.y1 + f.bbox.y2) / 2.0);
                assert!((r.x as f32..(r.x + r.size) as f32).contains(&cx), "{r:?} {f:?}");
                assert!((r.y as f32..(r.y + r.size) as f32).contains(&cy), "{r:?} {f:?}");
            }
            println!(
                "{name}: {} pasted, {} found, detected at {:?}",
                expected.len(),
                found.faces.len(),
                found.detect_size
            );
        }
        let _ = n;
    }
}

#[test]
fn camera_photos_without_faces_have_none() {
    let Some(data) = data_dir() else { return };
    let Some(detector) = detector(&FacesConfig::default()) else { return };
    let jpg = data.join("exif-samples/jpg");
    let mut files = jpegs(&jpg.join("mobile"));
    files.extend(jpegs(&jpg.join("orientation")).into_iter().take(4));
    files.extend(jpegs(&jpg).into_iter().take(6));
    for file in files {
        let image = faces::open_upright(&file).unwrap();
        let found = detector.detect(&image).unwrap();
        assert!(found.faces.is_empty(), "{}: {found:?}", file.display());
    }
}

#[test]
fn cuda_finds_what_the_cpu_finds() {
    let Some(data) = data_dir() else { return };
    if let veil::engine::CudaStatus::Unavailable { reason } = veil::engine::cuda() {
        eprintln!("skipped: no CUDA ({reason})");
        return;
    }
    let config = FacesConfig::default();
    let (Some(cpu), Some(gpu)) = (detector(&config), detector_on(&config, tch::Device::Cuda(0))) else {
        return;
    };
    let mut files: Vec<PathBuf> = portrait_dirs(&data).iter().flat_map(|d| jpegs(d)).take(8).collect();
    files.extend(jpegs(&data.join("celeba/val")).into_iter().take(20));
    files.extend(jpegs(&data.join("exif-samples/jpg/mobile")));
    for file in files {
        let image = faces::open_upright(&file).unwrap();
        let (a, b) = (cpu.detect(&image).unwrap(), gpu.detect(&image).unwrap());
        assert_eq!(a.faces.len(), b.faces.len(), "{}: cpu {a:?} cuda {b:?}", file.display());
        for (x, y) in a.faces.iter().zip(&b.faces) {
            assert!(x.bbox.iou(&y.bbox) >= 0.95, "{}: cpu {x:?} cuda {y:?}", file.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Benchmark (ignored: a measurement, not a check).

/// `cargo test --release --test faces -- --ignored --nocapture bench_12mp`: a 4000×3000 photo (a
/// mobile JPEG scaled up, one portrait pasted in), median of 7 detections after a warm-up, on the
/// device `engine.device = "auto"` picks (the GPU when there is one); `VEIL_BENCH_DEVICE=cpu` forces
/// the CPU.
#[test]
#[ignore]
fn bench_12mp_one_face() {
    let Some(data) = data_dir() else { return };
    let choice = std::env::var("VEIL_BENCH_DEVICE").unwrap_or_else(|_| "auto".into());
    let device = veil::engine::select_device(choice.parse().unwrap()).unwrap();
    let Some(detector) = detector_on(&FacesConfig::default(), device) else { return };
    let background = faces::open_upright(&data.join("exif-samples/jpg/mobile/HMD_Nokia_8.3_5G.jpg")).unwrap();
    let mut photo = imageops::resize(&background, 4000, 3000, imageops::FilterType::Triangle);
    let portrait = faces::open_upright(&data.join("portraits/ref/female/015248.jpg")).unwrap();
    let small = imageops::resize(&portrait, 900, 900, imageops::FilterType::Triangle);
    imageops::replace(&mut photo, &small, 1500, 1000);
    let mut times = Vec::new();
    for run in 0..8 {
        let start = Instant::now();
        let found = detector.detect(&photo).unwrap();
        let t = start.elapsed().as_secs_f64();
        assert_eq!(found.faces.len(), 1, "{found:?}");
        if run > 0 {
            times.push(t);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "12 MP (4000×3000), one face, on {}: median {:.3} s (min {:.3}, max {:.3}) over {} runs",
        veil::engine::describe(detector.device()),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}

// ---------------------------------------------------------------------------------------------------
// `veil faces`.

/// Writes `home/veil.toml`: the CPU, the checkout's models.
fn write_config(home: &Path) -> PathBuf {
    let config = home.join("veil.toml");
    let models = crate_dir().join("models");
    std::fs::write(
        &config,
        format!("[engine]\ndevice = \"cpu\"\n\n[models]\ndir = \"{}\"\n", models.display()),
    )
    .unwrap();
    config
}

/// Runs `veil --config <cpu, checkout's models> ARGS` in `home`.
fn veil_faces(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .env("HOME", home)
        .env_remove("VEIL_LOG")
        .arg("--config")
        .arg(write_config(home))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn veil_faces_prints_a_table_json_and_draws() {
    let Some(data) = data_dir() else { return };
    if detector(&FacesConfig::default()).is_none() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let photo = data.join("portraits/ref/female/015248.jpg");
    let photo_arg = photo.to_str().unwrap();

    let out = veil_faces(home.path(), &["faces", "--json", photo_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let reports: serde_json::Value = serde_json::from_str(&text).unwrap();
    let report = &reports[0];
    assert_eq!(report["width"], 1024);
    assert_eq!(report["too_small"], 0);
    let faces = report["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1, "{text}");
    let b: Vec<f64> = faces[0]["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(b.len() == 4 && b[0] < b[2] && b[1] < b[3], "{b:?}");
    assert!(faces[0]["score"].as_f64().unwrap() > 0.9);
    let marks = faces[0]["landmarks"].as_array().unwrap();
    assert_eq!(marks.len(), 5);
    for m in marks {
        let (x, y) = (m[0].as_f64().unwrap(), m[1].as_f64().unwrap());
        assert!(x > b[0] && x < b[2] && y > b[1] && y < b[3], "landmark {m} outside {b:?}");
    }
    // The square an aligner would cut: centred inside the box, larger than it.
    let a = &faces[0]["aligned"];
    let (x, y, side) = (a["x"].as_f64().unwrap(), a["y"].as_f64().unwrap(), a["side"].as_f64().unwrap());
    let (cx, cy) = (x + side / 2.0, y + side / 2.0);
    assert!(cx > b[0] && cx < b[2] && cy > b[1] && cy < b[3] && side > b[2] - b[0], "{a}");

    let drawn = home.path().join("seen.png");
    let out = veil_faces(home.path(), &["faces", photo_arg, "--draw", drawn.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("1024×1024, 1 face\n"), "{text}");
    let image = image::open(&drawn).unwrap().into_rgb8();
    assert_eq!(image.dimensions(), (1024, 1024));
    // The box's top-left corner is painted.
    let (x, y) = (b[0].round() as u32, b[1].round() as u32);
    assert_eq!(image.get_pixel(x, y).0, [0, 255, 64]);

    // A drawing already there is kept unless --force; the photo itself never is replaced.
    let before = std::fs::read(&drawn).unwrap();
    std::fs::write(&drawn, b"mine").unwrap();
    let out = veil_faces(home.path(), &["faces", photo_arg, "--draw", drawn.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("seen.png: already exists; pass --force"), "{err}");
    assert_eq!(std::fs::read(&drawn).unwrap(), b"mine");
    let out = veil_faces(home.path(), &["faces", photo_arg, "--draw", drawn.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&drawn).unwrap(), before);
    let copy = home.path().join("mine.jpg");
    std::fs::copy(&photo, &copy).unwrap();
    let out = veil_faces(
        home.path(),
        &["faces", copy.to_str().unwrap(), "--draw", copy.to_str().unwrap(), "--force"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mine.jpg: is the photo itself"), "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&photo).unwrap());
    // The drawing is a PNG: under another photo's name it would be misread.
    let jpg = home.path().join("drawn.jpg");
    let out = veil_faces(home.path(), &["faces", photo_arg, "--draw", jpg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("drawn.jpg: the drawing is written as a PNG; give --draw a name ending in .png"),
        "{err}"
    );
    assert!(!jpg.exists());
    // No temporary file is left beside the drawing.
    let names: Vec<_> = std::fs::read_dir(home.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")), "{names:?}");
}

#[test]
fn veil_faces_goes_on_past_a_photo_it_cannot_read() {
    let Some(data) = data_dir() else { return };
    if detector(&FacesConfig::default()).is_none() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let photo = data.join("portraits/ref/female/015248.jpg");
    // A name that is not UTF-8 is reported in JSON too (its stray byte as U+FFFD).
    use std::os::unix::ffi::OsStrExt;
    let latin = home.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::copy(&photo, &latin).unwrap();
    let empty = home.path().join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let args = [empty.as_os_str(), latin.as_os_str()];
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .env("HOME", home.path())
        .env_remove("VEIL_LOG")
        .arg("--config")
        .arg(write_config(home.path()))
        .args(["faces", "--json"])
        .args(args)
        .output()
        .unwrap();
    let (text, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(err.contains("empty.jpg: the file is empty (nothing has been written in it yet)"), "{err}");
    let reports: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(reports[0]["error"].as_str().unwrap().contains("the file is empty"), "{text}");
    assert!(reports[1]["photo"].as_str().unwrap().ends_with("caf\u{fffd}.jpg"), "{text}");
    assert_eq!(reports[1]["faces"].as_array().unwrap().len(), 1, "{text}");
}

#[test]
fn veil_faces_reports_bad_arguments() {
    if detector(&FacesConfig::default()).is_none() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("nowhere.jpg");
    let out = veil_faces(home.path(), &["faces", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nowhere.jpg"), "{err}");
    // A wrong number of photos for --draw is a bad argument (exit status 2).
    let out = veil_faces(home.path(), &["faces", "a.jpg", "b.jpg", "--draw", "out.png"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--draw takes exactly one photo"), "{err}");
}
