//! End to end through the real `veil` binary: `veil preview` on a real portrait and on a camera photo
//! without a face, with the tiny generator fixtures. Needs `make fixtures` (make test does) and
//! ../shared/data; without the data the tests say so and return. Sheets go to temporary folders.

use std::{path::Path, process::Command};

mod common;
use common::{data, fixture_config};

use veil::preview::layout::{Layout, WIDTH};

/// Runs `veil --config <cfg> preview ARGS` in `dir` (also its HOME).
fn preview(dir: &Path, args: &[&str]) -> std::process::Output {
    let cfg = fixture_config(dir);
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .env_remove("LD_LIBRARY_PATH")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .current_dir(dir)
        .args(["--config", cfg.to_str().unwrap(), "preview"])
        .args(args)
        .output()
        .unwrap()
}

fn rect(v: &serde_json::Value) -> [u32; 4] {
    let a: Vec<u32> = v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    [a[0], a[1], a[2], a[3]]
}

/// Sum over `a` and `b` (same size) of the absolute channel differences between the two areas of
/// `img`.
fn difference(img: &image::RgbImage, a: [u32; 4], b: [u32; 4]) -> u64 {
    assert_eq!((a[2], a[3]), (b[2], b[3]));
    let mut sum = 0;
    for y in 0..a[3] {
        for x in 0..a[2] {
            let (p, q) = (img.get_pixel(a[0] + x, a[1] + y).0, img.get_pixel(b[0] + x, b[1] + y).0);
            sum += p.iter().zip(q).map(|(u, v)| u64::from(u.abs_diff(v))).sum::<u64>();
        }
    }
    sum
}

/// Distinct colours in an area (a blank panel has one).
fn colours(img: &image::RgbImage, r: [u32; 4]) -> usize {
    let mut seen = std::collections::HashSet::new();
    for y in r[1]..r[1] + r[3] {
        for x in r[0]..r[0] + r[2] {
            seen.insert(img.get_pixel(x, y).0);
        }
    }
    seen.len()
}

#[test]
fn preview_of_a_portrait_shows_every_generator_before_and_after() {
    let Some(data) = data() else { return };
    let dir = data.join("portraits/src/female");
    let portrait = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).map(|e| e.path()).min().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sheet_path = tmp.path().join("sheet.png");
    let o = preview(
        tmp.path(),
        &["--preset", "fast", "--json", "--out", sheet_path.to_str().unwrap(), portrait.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sheet = image::open(&sheet_path).unwrap().to_rgb8();
    assert_eq!(
        (sheet.width(), sheet.height()),
        (r["width"].as_u64().unwrap() as u32, r["height"].as_u64().unwrap() as u32)
    );
    assert_eq!(sheet.width(), WIDTH);
    assert!(r["faces"].as_u64().unwrap() >= 1, "{r}");

    // Every generator of the fixture manifest, ensemble and holdout, with its conditions.
    let generators = r["generators"].as_array().unwrap();
    let names: Vec<&str> = generators.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["stargan", "ganimation", "attgan", "faceswap", "cyclegan", "stargan_adv"]);
    assert_eq!(generators.iter().filter(|g| g["role"] == "holdout").count(), 2);
    let sections = generators[0]["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["face"].as_u64().unwrap())
        .max()
        .unwrap();
    let counts: Vec<usize> =
        generators.iter().map(|g| g["panels"].as_array().unwrap().len() / sections as usize).collect();
    assert_eq!(counts, [3, 3, 3, 1, 1, 3]);

    // The sheet is exactly the layout for this photo, these faces and these generators.
    let (w, h) = image::image_dimensions(&portrait).unwrap();
    let layout = Layout::new((w, h), sections as usize, &counts);
    assert_eq!((layout.width, layout.height), (sheet.width(), sheet.height()));

    // Original and protected photos differ (the perturbation), but not by much; the perturbation panel
    // is not blank.
    let (orig, prot) = (rect(&r["original"]), rect(&r["protected"]));
    let photo_diff = difference(&sheet, orig, prot);
    assert!(photo_diff > 0 && photo_diff < u64::from(orig[2] * orig[3]) * 3 * 16, "{photo_diff}");
    assert!(colours(&sheet, rect(&r["perturbation"])) > 10);

    // Each generator's output on the protected face differs from its output on the original, and the
    // MSE agrees with the verdict.
    for g in generators {
        let panels = g["panels"].as_array().unwrap();
        let mut mean = 0.0;
        for p in panels {
            let (a, b) = (rect(&p["original"]), rect(&p["protected"]));
            assert!(colours(&sheet, a) > 10, "{p}");
            assert!(difference(&sheet, a, b) > 0, "{} {p}: panels identical", g["name"]);
            let mse = p["mse"].as_f64().unwrap();
            assert!(mse > 0.0 && mse.is_finite(), "{p}");
            mean += mse / panels.len() as f64;
        }
        assert!((g["mean_mse"].as_f64().unwrap() - mean).abs() < 1e-9);
        assert_eq!(g["disrupted"].as_bool().unwrap(), mean >= 0.05, "{g}");
    }

    // An existing sheet is not overwritten without --force.
    let before = std::fs::read(&sheet_path).unwrap();
    let again = preview(tmp.path(), &["--out", sheet_path.to_str().unwrap(), portrait.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&sheet_path).unwrap(), before);
}

#[test]
fn preview_of_a_photo_without_a_face_says_so_in_the_current_folder() {
    let Some(data) = data() else { return };
    let camera = data.join("exif-samples/jpg/gps/DSCN0010.jpg");
    let tmp = tempfile::tempdir().unwrap();
    let o = preview(tmp.path(), &["--json", camera.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Default name, in the current folder (not next to the photo).
    let sheet_path = tmp.path().join("DSCN0010-preview.png");
    let sheet = image::open(&sheet_path).unwrap().to_rgb8();
    assert_eq!(r["faces"], 0);
    assert!(r["generators"].as_array().unwrap().is_empty());
    let messages: Vec<&str> = r["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert!(messages[0].starts_with("No face found"), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("no_face = \"copy\"")), "{messages:?}");
    // The short layout: the photo and the message lines only.
    let layout = Layout::no_face(image::image_dimensions(&camera).unwrap(), messages.len());
    assert_eq!((sheet.width(), sheet.height()), (layout.width, layout.height));
    assert!(sheet.height() < 700, "{}", sheet.height());
    // The message lines hold text (ink on white), and the photo is there.
    for line in &layout.verdicts {
        assert!(colours(&sheet, [line.x, line.y, line.w, line.h]) > 1);
    }
    assert!(colours(&sheet, rect(&r["original"])) > 100);

    // A photo named in any bytes gets its sheet; never the photo itself, even with --force.
    use std::os::unix::ffi::OsStrExt;
    let latin = tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::copy(&camera, &latin).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_veil"))
        .env("HOME", tmp.path())
        .current_dir(tmp.path())
        .arg("--config")
        .arg(fixture_config(tmp.path()))
        .args(["preview", "--force", "--out"])
        .arg(&latin)
        .arg(&latin)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is the photo itself"), "{err}");
    assert_eq!(std::fs::read(&latin).unwrap(), std::fs::read(&camera).unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_veil"))
        .env("HOME", tmp.path())
        .current_dir(tmp.path())
        .arg("--config")
        .arg(fixture_config(tmp.path()))
        .arg("preview")
        .arg(&latin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9-preview.png")).is_file());
}
