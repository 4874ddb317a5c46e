//! The models folder: `manifest.toml` listing the generators Veil attacks (`ensemble`) or only
//! evaluates against (`holdout`), and `mtcnn/`, the face detector's weights converted at setup.
//!
//! ```toml
//! [[model]]
//! name = "stargan"
//! file = "stargan.pt"            # TorchScript: forward(x [N,3,H,W] in [-1,1], c [N,C]) -> [N,3,H,W]
//! role = "ensemble"              # or "holdout"
//! input_size = 128
//! attributes = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]
//! conditions = [[1, 0, 0, 1, 1], [0, 1, 0, 0, 1]]   # the vectors the protection attacks
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const MANIFEST: &str = "manifest.toml";
/// The MTCNN stages, each a safetensors state dict under `mtcnn/`.
pub const MTCNN_STAGES: [&str; 3] = ["pnet", "rnet", "onet"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ensemble,
    Holdout,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    /// Relative to the models folder.
    pub file: PathBuf,
    pub role: Role,
    /// The square side the generator takes.
    pub input_size: u32,
    #[serde(default)]
    pub attributes: Vec<String>,
    #[serde(default)]
    pub conditions: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl Manifest {
    /// Reads and checks `dir/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, ModelsError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ModelsError::Read { path: path.clone(), source })?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| ModelsError::Invalid { path: path.clone(), message: e.to_string() })?;
        manifest.check().map_err(|message| ModelsError::Invalid { path, message })?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|other| other.name == m.name) {
                return Err(format!("model name {:?} appears twice", m.name));
            }
            if m.input_size == 0 {
                return Err(format!("model {:?}: input_size must be positive", m.name));
            }
            if let Some(c) = m.conditions.iter().find(|c| c.len() != m.attributes.len()) {
                return Err(format!(
                    "model {:?}: a condition has {} values but there are {} attributes",
                    m.name,
                    c.len(),
                    m.attributes.len()
                ));
            }
        }
        Ok(())
    }

    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(move |m| m.role == role)
    }
}

/// `Ok` when a file exists and loads, else why it does not.
pub type Loads = Result<(), String>;

/// A libtorch error's message without the C++ backtrace libtorch appends to it ("Exception raised
/// from …" and its frames): what a person can act on.
/// A TorchScript interpreter error keeps its first line and its last (the Python exception), not
/// the two tracebacks between them.
pub fn torch_message(e: &tch::TchError) -> String {
    let text = e.to_string();
    let text = text[..text.find("Exception raised from").unwrap_or(text.len())].trim_end();
    if text.contains("Traceback of TorchScript") {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if let (Some(first), Some(last)) = (lines.next(), lines.next_back()) {
            return format!("{first} {last}");
        }
    }
    text.to_string()
}

/// Runs a loaded generator once on a blank face (`[1,3,S,S]` zeros, the first condition or none)
/// and checks it answers Veil's interface: `forward(x: [N,3,S,S] in [-1,1], c: [N,C]) -> [N,3,S,S]`.
/// Catches a file of the wrong kind (a classifier, another generator's size) when it is loaded
/// rather than halfway through a photo.
pub fn check_generator(module: &tch::CModule, entry: &ModelEntry, device: tch::Device) -> Result<(), String> {
    let s = i64::from(entry.input_size);
    let x = tch::Tensor::zeros([1, 3, s, s], (tch::Kind::Float, device));
    // What the engine hands it: the first attacked condition, or `[1,0]` when none is listed.
    let (c, cond) = match entry.conditions.first() {
        Some(first) => {
            let c = first.len() as i64;
            (c, tch::Tensor::from_slice(first).view([1, c]).to_device(device))
        }
        None => (0, tch::Tensor::zeros([1, 0], (tch::Kind::Float, device))),
    };
    let interface = format!(
        "does not answer Veil's interface forward(x: [1,3,{s},{s}], c: [1,{c}]) -> [1,3,{s},{s}] \
         (see models/README.md, \"Bring your own generator\")"
    );
    let y = tch::no_grad(|| module.forward_ts(&[x, cond]))
        .map_err(|e| format!("{interface}: {}", torch_message(&e)))?;
    if y.size() != [1, 3, s, s] {
        return Err(format!("{interface}: it returned {:?}", y.size()));
    }
    Ok(())
}

/// What a models folder holds and whether each file loads: what `veil doctor` and `veild` report.
#[derive(Debug)]
pub struct Inventory {
    pub dir: PathBuf,
    /// Each MTCNN stage's file and whether it loads.
    pub detector: Vec<(PathBuf, Loads)>,
    /// The manifest's models with whether each file loads, or why the manifest could not be read.
    pub generators: Result<Vec<(ModelEntry, Loads)>, ModelsError>,
}

impl Inventory {
    /// Looks at `dir` and loads every file it names on the CPU (nothing is kept): what `veild`
    /// reports at start, before its engine loads (and checks) the generators it runs.
    pub fn take(dir: &Path) -> Inventory {
        Inventory::read(dir, false)
    }

    /// [`Inventory::take`], each generator also run once as [`check_generator`] runs it: what
    /// `veil doctor` reports, so a file of the wrong kind is named before anything uses it.
    pub fn check(dir: &Path) -> Inventory {
        Inventory::read(dir, true)
    }

    fn read(dir: &Path, run: bool) -> Inventory {
        let detector = mtcnn_files(dir)
            .into_iter()
            .map(|path| {
                let loaded = if path.is_file() {
                    tch::Tensor::read_safetensors(&path).map(drop).map_err(|e| torch_message(&e))
                } else {
                    Err("missing".to_string())
                };
                (path, loaded)
            })
            .collect();
        let generators = Manifest::load(dir).map(|manifest| {
            manifest
                .models
                .into_iter()
                .map(|entry| {
                    let path = dir.join(&entry.file);
                    let loaded = if path.is_file() {
                        tch::CModule::load(&path)
                            .map_err(|e| torch_message(&e))
                            .and_then(|mut m| {
                                if !run {
                                    return Ok(());
                                }
                                // As the engine runs it: fp32 (the files hold fp16), eval mode.
                                m.to(tch::Device::Cpu, tch::Kind::Float, false);
                                m.set_eval();
                                check_generator(&m, &entry, tch::Device::Cpu)
                            })
                            .map_err(|e| format!("{}: {e}", path.display()))
                    } else {
                        Err(format!("missing file {}", path.display()))
                    };
                    (entry, loaded)
                })
                .collect()
        });
        Inventory { dir: dir.to_path_buf(), detector, generators }
    }

    pub fn detector_ready(&self) -> bool {
        self.detector.iter().all(|(_, loaded)| loaded.is_ok())
    }
}

/// Paths of the MTCNN weight files in `dir/mtcnn/`.
pub fn mtcnn_files(dir: &Path) -> [PathBuf; 3] {
    MTCNN_STAGES.map(|stage| dir.join("mtcnn").join(format!("{stage}.safetensors")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(MANIFEST), text).unwrap();
    }

    #[test]
    fn reads_models_and_roles() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            r#"
[[model]]
name = "a"
file = "a.pt"
role = "ensemble"
input_size = 128
attributes = ["Male", "Young"]
conditions = [[1, 0], [0, 1]]

[[model]]
name = "b"
file = "b.pt"
role = "holdout"
input_size = 64
"#,
        );
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.models.len(), 2);
        assert_eq!(m.with_role(Role::Ensemble).map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(m.with_role(Role::Holdout).count(), 1);
    }

    #[test]
    fn condition_length_must_match_attributes() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "[[model]]\nname = \"a\"\nfile = \"a.pt\"\nrole = \"ensemble\"\ninput_size = 128\nattributes = [\"Male\"]\nconditions = [[1, 0]]\n",
        );
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("manifest.toml") && err.contains("2 values"), "{err}");
    }

    #[test]
    fn missing_manifest_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().join(MANIFEST).display().to_string()), "{err}");
    }
}
