//! The generator zoo loads in Rust: every model in a manifest loads with `tch::CModule` on the CPU
//! (fp16 weights converted to fp32), runs on a real face, and answers with the interface Veil attacks:
//! `[1,3,S,S]` in [-1,1], finite, and not a constant image.
//!
//! Checked on the tiny fixtures `make test` trains (`target/fixtures/models`) and on the committed
//! zoo in `models/` when it has a manifest.

use std::path::{Path, PathBuf};

use tch::{CModule, Device, Kind, Tensor};
use veil::models::{Manifest, Role};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A CelebA val face as `[1,3,size,size]` in [-1,1] (standard aligned crop: rows 20..198).
fn face(size: i64) -> Option<Tensor> {
    let dir = crate_dir().join("../shared/data/celeba/val");
    let path = std::fs::read_dir(&dir).ok()?.filter_map(Result::ok).map(|e| e.path()).min()?;
    let img = tch::vision::image::load(&path).unwrap(); // [3,218,178] u8
    let crop = img.narrow(1, 20, 178);
    let resized = tch::vision::image::resize(&crop, size, size).unwrap();
    Some(resized.to_kind(Kind::Float).unsqueeze(0) / 127.5 - 1.0)
}

fn check_zoo(dir: &Path) -> usize {
    let manifest = Manifest::load(dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(!manifest.models.is_empty(), "{} lists no model", dir.display());
    for entry in &manifest.models {
        let path = dir.join(&entry.file);
        let mut module =
            CModule::load_on_device(&path, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        module.to(Device::Cpu, Kind::Float, false);
        module.set_eval();
        let size = i64::from(entry.input_size);
        let Some(x) = face(size) else {
            println!("skipped running {}: ../shared/data/celeba/val is not there", entry.name);
            continue;
        };
        let c = match entry.conditions.first() {
            Some(c) => Tensor::from_slice(c).unsqueeze(0),
            None => Tensor::zeros([1, 0], (Kind::Float, Device::Cpu)),
        };
        let y =
            tch::no_grad(|| module.forward_ts(&[&x, &c])).unwrap_or_else(|e| panic!("{}: {e}", entry.name));
        assert_eq!(y.size(), [1, 3, size, size], "{}", entry.name);
        assert_eq!(y.kind(), Kind::Float, "{}", entry.name);
        let (lo, hi) = (y.min().double_value(&[]), y.max().double_value(&[]));
        assert!(lo.is_finite() && hi.is_finite(), "{}: not finite", entry.name);
        assert!(lo >= -1.0 - 1e-4 && hi <= 1.0 + 1e-4, "{}: range [{lo}, {hi}]", entry.name);
        assert!(y.std(true).double_value(&[]) > 1e-3, "{}: constant output", entry.name);
        if !entry.conditions.is_empty() {
            assert_eq!(entry.attributes.len(), entry.conditions[0].len());
        }
    }
    manifest.models.len()
}

#[test]
fn tiny_fixtures_load_and_keep_the_interface() {
    let dir = crate_dir().join("target/fixtures/models");
    assert!(
        dir.join("manifest.toml").is_file(),
        "{} is missing: run `make fixtures` (make test does)",
        dir.display()
    );
    let manifest = Manifest::load(&dir).unwrap();
    assert!(manifest.with_role(Role::Ensemble).count() >= 3);
    assert!(manifest.with_role(Role::Holdout).count() >= 2);
    assert_eq!(check_zoo(&dir), 6);
    // The attribute classifier that judges edits: 5 logits per face.
    let clf = PathBuf::from(&dir).join("classifier.pt");
    let mut clf = CModule::load_on_device(&clf, Device::Cpu).unwrap();
    clf.to(Device::Cpu, Kind::Float, false);
    let x = Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(tch::no_grad(|| clf.forward_ts(&[x])).unwrap().size(), [2, 5]);
}

#[test]
fn committed_zoo_loads_when_present() {
    let dir = crate_dir().join("models");
    if !dir.join("manifest.toml").is_file() {
        println!("skipped: models/manifest.toml is not committed yet (the trained zoo needs a GPU run)");
        return;
    }
    assert!(check_zoo(&dir) >= 5);
}
