//! Helpers shared by the end-to-end tests that run `veil` on the test data with the tiny fixtures.

use std::path::{Path, PathBuf};

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data`, or `None` (with the reason printed) when it is not there.
pub fn data() -> Option<PathBuf> {
    let d = crate_dir().join("../shared/data");
    if d.is_dir() {
        Some(d)
    } else {
        println!("skipped: {} is not there", d.display());
        None
    }
}

/// Writes `dir/veil.toml` naming the fixture models folder (tiny generators + MTCNN, made by
/// `make fixtures`) and a fixed seed.
pub fn fixture_config(dir: &Path) -> PathBuf {
    let models = crate_dir().join("target/fixtures/models");
    assert!(
        models.join("manifest.toml").is_file() && models.join("mtcnn/pnet.safetensors").is_file(),
        "run `make fixtures`"
    );
    let path = dir.join("veil.toml");
    std::fs::write(&path, format!("[models]\ndir = \"{}\"\n[protect]\nseed = 7\n", models.display()))
        .unwrap();
    path
}
