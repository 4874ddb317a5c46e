//! End to end through the real `veil` binary: `veil protect` on real portraits and camera files with
//! the tiny generator fixtures, and `veil eval` on CelebA faces. Needs `make fixtures` (make test does)
//! and ../shared/data; without the data the tests say so and return.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

mod common;
use common::{data, fixture_config};

fn veil(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .env_remove("LD_LIBRARY_PATH")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(args)
        .output()
        .unwrap()
}

fn exif_fields(path: &Path) -> Vec<(String, String)> {
    let file = std::fs::File::open(path).unwrap();
    let exif = exif::Reader::new().read_from_container(&mut std::io::BufReader::new(file)).unwrap();
    let mut fields: Vec<(String, String)> = exif
        .fields()
        .filter(|f| f.ifd_num == exif::In::PRIMARY)
        .map(|f| (format!("{}", f.tag), format!("{}", f.display_value())))
        .collect();
    fields.sort();
    fields
}

#[test]
fn protect_writes_protected_copies_with_metadata_and_reports_quality() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let out = tmp.path().join("out");
    let portrait = data.join("portraits/src/male");
    let camera = data.join("exif-samples/jpg/gps/DSCN0010.jpg");
    let broken = data.join("exif-samples/jpg/corrupted.jpg");
    let first = std::fs::read_dir(&portrait).unwrap().filter_map(Result::ok).map(|e| e.path()).min().unwrap();
    let before = std::fs::read(&first).unwrap();
    let o = veil(
        tmp.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "protect",
            "--json",
            "--preset",
            "fast",
            "--out",
            out.to_str().unwrap(),
            first.to_str().unwrap(),
            camera.to_str().unwrap(),
            broken.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    // One photo failed, so the status says so, but the others were written.
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("corrupted.jpg") && stderr.contains("corrupt JPEG"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);

    let p = &lines[0];
    assert_eq!(p["action"], "protected", "{p}");
    assert!(p["faces"].as_u64().unwrap() >= 1, "{p}");
    let psnr = p["psnr"].as_f64().unwrap();
    let ssim = p["ssim"].as_f64().unwrap();
    assert!(psnr > 30.0 && psnr < 60.0 && ssim > 0.9 && ssim < 1.0, "{p}");
    assert!(p["losses"]["stargan"].as_f64().unwrap() > 0.0, "{p}");
    let written = PathBuf::from(p["output"].as_str().unwrap());
    assert_eq!(written, out.join(first.file_name().unwrap()));
    assert_eq!(std::fs::read(&first).unwrap(), before, "the original changed");
    assert_ne!(std::fs::read(&written).unwrap(), before);

    // No face in the camera photo: an unchanged copy, the original's own bytes (no trailer follows
    // its EOI), so EXIF (with GPS) field for field and pixels identical.
    let c = &lines[1];
    assert_eq!(c["action"], "copied-no-face", "{c}");
    let copy = PathBuf::from(c["output"].as_str().unwrap());
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&camera).unwrap(), "{c}");
    assert_eq!(exif_fields(&copy), exif_fields(&camera));
    assert!(c["psnr"].is_null() && c["ssim"].as_f64().unwrap() > 0.9999, "{c}");
    assert!(lines[2]["error"].as_str().unwrap().contains("corrupt JPEG"));
    // Nothing else (no temporary file) in the output folder.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
}

#[test]
fn eval_reports_every_generator_condition_and_defense_with_baselines_or_without() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let celeba = data.join("celeba");
    // `veil eval --json` on 2 faces with the fast preset, and `extra` arguments.
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "eval", "--json", "--preset", "fast"];
        args.extend(["--limit", "2", "--data", celeba.to_str().unwrap()]);
        args.extend(extra);
        let o = veil(tmp.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let r = eval(&[]);
    assert_eq!(r["images"], 2);
    let rows = r["rows"].as_array().unwrap();
    // 4 conditional generators × 5 conditions + 2 unconditional × 1, each under 5 defenses.
    assert_eq!(rows.len(), (4 * 5 + 2) * 5, "{r}");
    for d in ["none", "blur k11 σ1.5", "jpeg q75 4:2:0", "jpeg q75 4:4:4", "resize 0.5×"] {
        assert!(rows.iter().any(|row| row["defense"] == d), "{d} missing");
    }
    for g in ["stargan", "ganimation", "attgan", "faceswap", "cyclegan", "stargan_adv"] {
        assert!(rows.iter().any(|row| row["generator"] == g), "{g} missing");
    }
    assert!(rows.iter().any(|row| row["role"] == "holdout"));
    for row in rows {
        for v in ["veil", "noise", "single", "no-spread"] {
            assert_eq!(row["variants"][v]["faces"], 2, "{row}");
        }
    }
    // The attack moves the ensemble's outputs more than noise of the same size, on average.
    let mean = |v: &str| {
        let ens: Vec<f64> = rows
            .iter()
            .filter(|row| row["role"] == "ensemble" && row["defense"] == "none")
            .map(|row| row["variants"][v]["mean_mse"].as_f64().unwrap())
            .collect();
        ens.iter().sum::<f64>() / ens.len() as f64
    };
    assert!(mean("veil") > 2.0 * mean("noise"), "veil {} noise {}", mean("veil"), mean("noise"));
    let q = &r["quality"]["veil"];
    assert!(q["psnr"].as_f64().unwrap() > 30.0 && q["ssim"].as_f64().unwrap() > 0.8, "{q}");

    // Without the baselines: Veil's column only, the same figures (each variant draws its own).
    let alone = eval(&["--no-baselines"]);
    let alone_rows = alone["rows"].as_array().unwrap();
    assert_eq!(alone_rows.len(), rows.len());
    for (a, b) in alone_rows.iter().zip(rows) {
        let cells = a["variants"].as_object().unwrap();
        assert_eq!(cells.keys().collect::<Vec<_>>(), ["veil"], "{a}");
        let (x, y) = (
            a["variants"]["veil"]["mean_mse"].as_f64().unwrap(),
            b["variants"]["veil"]["mean_mse"].as_f64().unwrap(),
        );
        // Not bit-equal: on a loaded machine libtorch's CPU reductions may split differently, and a
        // last-bit difference that flips one pixel's 8-bit rounding moves a JPEG row's MSE by ~1e-6
        // (seen in CI: 0.00589978 against 0.00589979). Another seed moves the rows by 10-30 %.
        assert!((x - y).abs() <= 1e-4 * y.max(1e-6), "{a} alone, {b} with baselines");
    }
    assert!(alone["quality"].get("noise").is_none(), "{}", alone["quality"]);
}

/// Faces that are not CelebA's 178×218: a 128 px aligned crop (a common preprocessing) and an image
/// twice CelebA's size. Their PSNR/SSIM come from the attacker's square at its own size (it panicked
/// under 178 px and read scrambled rows above it).
#[test]
fn eval_takes_aligned_faces_of_any_size() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let celeba = data.join("celeba");
    let set = tmp.path().join("faces");
    std::fs::create_dir_all(set.join("val")).unwrap();
    let table = std::fs::read_to_string(celeba.join("attributes.csv")).unwrap();
    let mut lines = table.lines();
    let mut csv = format!("{}\n", lines.next().unwrap());
    let rows: Vec<&str> = lines.filter(|l| l.starts_with("val,")).take(2).collect();
    for (i, row) in rows.iter().enumerate() {
        let file = row.split(',').nth(1).unwrap();
        let img = image::open(celeba.join("val").join(file)).unwrap();
        let img = if i == 0 {
            img.crop_imm(0, 20, 178, 178).resize_exact(128, 128, image::imageops::FilterType::Triangle)
        } else {
            img.resize_exact(356, 436, image::imageops::FilterType::Triangle)
        };
        img.to_rgb8().save(set.join("val").join(file)).unwrap();
        csv.push_str(row);
        csv.push('\n');
    }
    std::fs::write(set.join("attributes.csv"), csv).unwrap();
    let args = ["--config", cfg.to_str().unwrap(), "eval", "--json", "--preset", "fast", "--no-baselines"];
    let o = veil(tmp.path(), &[&args[..], &["--data", set.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["images"], 2, "{r}");
    let q = &r["quality"]["veil"];
    let psnr = q["psnr"].as_f64().unwrap();
    assert!(psnr > 28.0 && psnr < 45.0 && q["ssim"].as_f64().unwrap() > 0.8, "{q}");
}

/// `--upscale 3`: CelebA photos three times enlarged, so the 534 px faces are over `protect.detail`
/// (4) times the fixtures' 32 px input and attacked at a capped size; still found, disrupted beyond
/// what the attack's own noise floor would be, and written within ε.
#[test]
fn eval_enlarges_photos_and_still_finds_and_disrupts_their_faces() {
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let celeba = data.join("celeba");
    let args = ["--config", cfg.to_str().unwrap(), "eval", "--json", "--preset", "fast", "--no-baselines"];
    let more = ["--limit", "2", "--upscale", "3", "--data", celeba.to_str().unwrap()];
    let o = veil(tmp.path(), &[&args[..], &more[..]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["images"].as_u64(), r["no_face"].as_u64(), r["upscale"].as_u64()),
        (Some(2), Some(0), Some(3)),
        "{r}"
    );
    let rows = r["rows"].as_array().unwrap();
    let ens: Vec<f64> = rows
        .iter()
        .filter(|row| row["role"] == "ensemble" && row["defense"] == "none")
        .map(|row| row["variants"]["veil"]["mean_mse"].as_f64().unwrap())
        .collect();
    let mean = ens.iter().sum::<f64>() / ens.len() as f64;
    // ±ε sign noise moves the fixtures' outputs by about 1e-5 (tests/protect.rs); the attack by 1e-3.
    assert!(mean > 5e-4, "mean MSE {mean}: {r}");
    let q = &r["quality"]["veil"];
    let psnr = q["psnr"].as_f64().unwrap();
    assert!(psnr > 30.0 && psnr < 50.0 && q["ssim"].as_f64().unwrap() > 0.8, "{q}");
}

#[test]
fn protect_refuses_a_missing_path_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let (missing, out) = (tmp.path().join("nope.jpg"), tmp.path().join("x"));
    let protect = |photo: &Path, out: &Path| {
        let args = ["--config", cfg.to_str().unwrap(), "protect", "--out", out.to_str().unwrap()];
        let mut args = args.to_vec();
        args.push(photo.to_str().unwrap());
        veil(tmp.path(), &args)
    };
    let o = protect(&missing, &out);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches("nope.jpg").count(), 1, "named once: {stderr}");
    assert!(!out.exists(), "no output folder is made for nothing");
    // A photo that fails once read: the folders made for its copy go again.
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(&broken, b"no photo at all").unwrap();
    let deep = tmp.path().join("y/z");
    let o = protect(&broken, &deep);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!tmp.path().join("y").exists(), "empty output folders are left behind");
}

#[test]
fn protect_takes_each_photo_once_mirrors_sub_folders_names_empty_folders_and_prints_any_name() {
    use std::os::unix::ffi::OsStrExt;
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fixture_config(tmp.path());
    let (photos, empty, out) = (tmp.path().join("in"), tmp.path().join("empty"), tmp.path().join("out"));
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    let portrait =
        std::fs::read_dir(data.join("portraits/src/male")).unwrap().map(|e| e.unwrap().path()).min();
    let latin = photos.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    let portrait = portrait.unwrap();
    std::fs::copy(&portrait, &latin).unwrap();
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    std::fs::copy(&portrait, photos.join("sub/x.jpg")).unwrap();
    std::fs::write(photos.join("sub/x.CR2"), b"II*\0").unwrap();
    let again = photos.join(".").join(latin.file_name().unwrap());
    // A folder of camera RAW files: no photo Veil protects, and the message says what it passed over.
    let raws = tmp.path().join("raws");
    std::fs::create_dir_all(raws.join("day2")).unwrap();
    for name in ["DSC_0001.NEF", "day2/DSC_0002.dng", ".DSC_0003.nef", "notes.txt"] {
        std::fs::write(raws.join(name), b"II*\0").unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_veil"));
    cmd.env("HOME", tmp.path()).arg("--config").arg(&cfg).args(["protect", "--json", "--out"]).arg(&out);
    // The photo three times (its folder, itself, another path to it), and a folder with none.
    let o = cmd.arg(&photos).arg(&latin).arg(&again).arg(&empty).arg(&raws).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("empty: no photos in it"), "{stderr}");
    let raw_message = "raws: no photos Veil can protect in it: 2 camera RAW files (Veil protects \
                       developed photos: export them as JPEG or TIFF";
    assert!(stderr.contains(raw_message), "{stderr}");
    // Beside photos, RAW files are left out and said so.
    assert!(
        stderr.contains("in: left out 1 camera RAW file (Veil protects developed photos: export it"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0]["error"].as_str().unwrap().contains("no photos in it"), "{stdout}");
    assert!(lines[1]["error"].as_str().unwrap().contains("2 camera RAW files"), "{stdout}");
    assert!(lines[2]["source"].as_str().unwrap().ends_with("caf\u{fffd}.jpg"), "{stdout}");
    assert_eq!(lines[2]["action"], "protected", "{stdout}");
    // One copy, under the photo's own bytes; the sub-folder's photo in the same sub-folder there.
    assert_eq!(lines[3]["output"].as_str().unwrap(), out.join("sub/x.jpg").to_str().unwrap());
    let mut written: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    written.sort();
    assert_eq!(written, [latin.file_name().unwrap(), std::ffi::OsStr::new("sub")]);
    assert!(out.join("sub/x.jpg").is_file());

    // Only a folder with nothing in it: nothing to do is a failure, and no output folder is made.
    let elsewhere = tmp.path().join("elsewhere");
    let o = Command::new(env!("CARGO_BIN_EXE_veil"))
        .env("HOME", tmp.path())
        .arg("--config")
        .arg(&cfg)
        .args(["protect", "--out"])
        .arg(&elsewhere)
        .arg(&empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no photo to protect"), "{stderr}");
    assert!(!elsewhere.exists());
}

/// The pipeline on the tiny fixtures, on the CPU, attacking up to 4 photos together as on a GPU
/// (the CPU's default is 1), with its configuration and the CelebA val faces in order. `tmp` is a
/// scratch folder (the fixtures' presence is checked there).
fn batched_pipeline(
    tmp: &Path,
    data: &Path,
) -> (veil::config::Config, veil::pipeline::Pipeline, Vec<PathBuf>) {
    use veil::config::{Config, EngineConfig, ModelsConfig};
    fixture_config(tmp);
    let config = Config {
        models: ModelsConfig { dir: Some(common::crate_dir().join("target/fixtures/models")) },
        engine: EngineConfig { photo_batch: std::num::NonZeroUsize::new(4), ..EngineConfig::default() },
        ..Config::default()
    };
    tch::set_num_threads(1);
    let pipeline = veil::pipeline::Pipeline::load(&config, tch::Device::Cpu).unwrap();
    let mut faces: Vec<PathBuf> = std::fs::read_dir(data.join("celeba/val"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    faces.sort();
    (config, pipeline, faces)
}

#[test]
fn a_batch_of_files_is_protected_together_and_each_error_stays_with_its_file() {
    use veil::{
        imageio::{self, Format},
        pipeline::{Action, FileJob, JobOptions},
        protect::{max_levels, Preset, Rng},
    };
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (config, mut pipeline, faces) = batched_pipeline(tmp.path(), &data);
    let blank = tmp.path().join("blank.png");
    image::RgbImage::from_pixel(160, 120, image::Rgb([128, 128, 128])).save(&blank).unwrap();
    let broken = data.join("exif-samples/jpg/corrupted.jpg");
    let sources = [faces[0].clone(), broken.clone(), faces[1].clone(), blank.clone(), faces[2].clone()];
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // PNG output: lossless, so the ε bound can be checked on the written pixels.
    let options =
        JobOptions { preset: Some(Preset::Fast), format: Some(Format::Png), ..JobOptions::default() };
    let jobs: Vec<FileJob> = sources
        .iter()
        .map(|s| FileJob { source: s.clone(), out_dir: out.clone(), options: options.clone() })
        .collect();
    let results = pipeline.protect_files(&jobs, &mut Rng::new(1));
    assert_eq!(results.len(), 5);
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("corrupted.jpg"), "{err}");
    let blank_outcome = results[3].as_ref().unwrap();
    assert_eq!(blank_outcome.action, Action::CopiedNoFace);
    let settings = &config.imageio;
    for i in [0, 2, 4] {
        let o = results[i].as_ref().unwrap();
        assert_eq!(o.action, Action::Protected, "{}", sources[i].display());
        assert!(o.faces >= 1 && !o.losses.is_empty(), "{o:?}");
        let written = o.written.as_ref().unwrap();
        let (a, b) =
            (imageio::read(&sources[i], settings).unwrap(), imageio::read(&written.path, settings).unwrap());
        let max = a.pixels.as_raw().iter().zip(b.pixels.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(i64::from(max) <= max_levels(0.05) && max > 0, "{}: max change {max}", sources[i].display());
    }
    // Decoding runs on several threads, but the groups and their order do not depend on which photo
    // was decoded first: the same seed gives the same protected pixels.
    let again_dir = tmp.path().join("again");
    std::fs::create_dir(&again_dir).unwrap();
    let jobs: Vec<FileJob> = jobs.into_iter().map(|j| FileJob { out_dir: again_dir.clone(), ..j }).collect();
    let again = pipeline.protect_files(&jobs, &mut Rng::new(1));
    for i in [0, 2, 4] {
        let read = |r: &Result<veil::pipeline::Outcome, _>| {
            imageio::read(&r.as_ref().unwrap().written.as_ref().unwrap().path, settings).unwrap().pixels
        };
        assert!(read(&results[i]) == read(&again[i]), "{}: another run, other pixels", sources[i].display());
    }
}

/// The daemon's stream, with groups of up to 4 photos: a photo is protected without waiting for a
/// fuller group when the next one has not arrived, the next one is read while the one before it is
/// still being protected and written, and once stopping no photo is started.
#[test]
fn the_stream_protects_photos_as_they_arrive_reads_ahead_and_stops() {
    use std::{
        sync::{atomic::AtomicBool, mpsc, Mutex},
        time::{Duration, Instant},
    };
    use veil::{
        pipeline::{FileJob, Grouping, JobOptions},
        protect::{Preset, Rng},
    };
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut pipeline, faces) = batched_pipeline(tmp.path(), &data);
    assert_eq!(pipeline.photo_batch(), 4);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let options = JobOptions { preset: Some(Preset::Fast), ..JobOptions::default() };
    let job = |i: usize| FileJob { source: faces[i].clone(), out_dir: out.clone(), options: options.clone() };

    // Photo 1 is handed over only once photo 0 is done: an engine that waited for a fuller group
    // would never finish photo 0.
    let (jobs_tx, jobs_rx) = mpsc::channel::<(usize, FileJob)>();
    let (done_tx, done_rx) = mpsc::channel();
    jobs_tx.send((0, job(0))).unwrap();
    let jobs_tx = Mutex::new(Some(jobs_tx));
    std::thread::scope(|s| {
        let pipeline = &mut pipeline;
        s.spawn(move || {
            pipeline.protect_stream(
                move || jobs_rx.recv().ok(),
                |i, result| done_tx.send((i, result.map(|o| o.written.is_some()))).unwrap(),
                &mut Rng::new(1),
                Grouping::AsReady,
                &AtomicBool::new(false),
            )
        });
        let first = done_rx.recv_timeout(Duration::from_secs(120));
        if first.is_err() {
            jobs_tx.lock().unwrap().take(); // ends the stream, so that the failure ends the test
        }
        let first = first.expect("photo 0 waited for photo 1");
        assert!(matches!(first, (0, Ok(true))), "{first:?}");
        jobs_tx.lock().unwrap().as_ref().unwrap().send((1, job(1))).unwrap();
        let second = done_rx.recv_timeout(Duration::from_secs(120)).unwrap();
        assert!(matches!(second, (1, Ok(true))), "{second:?}");
        jobs_tx.lock().unwrap().take(); // the end of the stream
    });

    // Three photos waiting: photo 1 is taken from the source (and read) before photo 0 is done.
    let taken: Mutex<Vec<(usize, Instant)>> = Mutex::new(Vec::new());
    let finished: Mutex<Vec<(usize, Instant)>> = Mutex::new(Vec::new());
    let mut waiting = (2..5).map(|i| (i - 2, job(i)));
    pipeline.protect_stream(
        || {
            let next = waiting.next();
            if let Some((i, _)) = &next {
                taken.lock().unwrap().push((*i, Instant::now()));
            }
            next
        },
        |i, result| {
            assert!(result.is_ok(), "{result:?}");
            finished.lock().unwrap().push((i, Instant::now()));
        },
        &mut Rng::new(1),
        Grouping::AsReady,
        &AtomicBool::new(false),
    );
    let (taken, finished) = (taken.into_inner().unwrap(), finished.into_inner().unwrap());
    assert_eq!(finished.len(), 3);
    let at = |v: &[(usize, Instant)], i: usize| v.iter().find(|(j, _)| *j == i).unwrap().1;
    assert!(at(&taken, 1) < at(&finished, 0), "photo 1 was read only after photo 0 was done");

    // Stopping: photos read but not yet attacked end as not protected, and nothing is written.
    let stopped_out = tmp.path().join("stopped");
    std::fs::create_dir(&stopped_out).unwrap();
    let ended: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut waiting = (5..8).map(|i| (i, FileJob { out_dir: stopped_out.clone(), ..job(i) }));
    pipeline.protect_stream(
        || waiting.next(),
        |_, result| ended.lock().unwrap().push(result.map(|_| ()).unwrap_err().to_string()),
        &mut Rng::new(1),
        Grouping::AsReady,
        &AtomicBool::new(true),
    );
    let ended = ended.into_inner().unwrap();
    assert_eq!(ended.len(), 3);
    assert!(ended.iter().all(|e| e.contains("Veil is stopping")), "{ended:?}");
    assert_eq!(std::fs::read_dir(&stopped_out).unwrap().count(), 0);
}

/// On CelebA's own aligned photos, the crop Veil predicts from the landmarks is the one those photos
/// were aligned for (columns 0..178, rows 20..198), and the perturbation's extent covers it; with
/// `protect.aligned = 0` only Veil's crop is left.
#[test]
fn the_aligned_crop_predicted_from_landmarks_is_celebas_own() {
    use veil::{imageio, protect::Region};
    let Some(data) = data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (config, pipeline, faces) = batched_pipeline(tmp.path(), &data);
    for path in faces.iter().take(5) {
        let photo = imageio::read(path, &config.imageio).unwrap();
        let found = pipeline.find(&photo).unwrap();
        assert_eq!(found.targets.len(), 1, "{}", path.display());
        let t = &found.targets[0];
        let [a] = t.aligned.as_slice() else { panic!("{}: {t:?}", path.display()) };
        // Faces differ from the mean template: on 200 val photos the prediction is off by 3 px in
        // place and 5 px in side on average, by 14 px in side here. Their turn is the landmarks' noise
        // (under 3.3° here), taken as upright under 3°; an upright crop is clipped to the photo.
        let sq = a.square;
        assert!(
            sq.x.abs() <= 12 && (sq.y - 20).abs() <= 12 && (sq.h - 178).abs() <= 22 && a.angle.abs() < 4.0,
            "{}: {a:?}",
            path.display()
        );
        let e = t.extent(178, 218);
        assert!(e.y <= sq.y && e.y + e.h >= sq.y + sq.h && e.y + e.h >= t.face.y + t.face.h, "{e:?}");
        assert_eq!(found.regions(), [e]);
    }
    // The same photos tilted by 20° counter-clockwise: the predicted crop turns with them.
    for path in faces.iter().take(3) {
        let mut photo = imageio::read(path, &config.imageio).unwrap();
        photo.pixels = veil::eval::turned(&photo.pixels, 20.0);
        let found = pipeline.find(&photo).unwrap();
        let [a] = found.targets[0].aligned.as_slice() else { panic!("{}: {found:?}", path.display()) };
        assert!((a.angle - 20.0).abs() < 4.0 && (a.square.w - 178).abs() <= 22, "{}: {a:?}", path.display());
    }
    let mut off = config.clone();
    off.protect.aligned = 0.0;
    let pipeline = veil::pipeline::Pipeline::load(&off, tch::Device::Cpu).unwrap();
    let found = pipeline.find(&imageio::read(&faces[0], &off.imageio).unwrap()).unwrap();
    assert!(found.targets[0].aligned.is_empty());
    let face: Region = found.targets[0].face;
    assert_eq!(found.regions(), [face]);
}
