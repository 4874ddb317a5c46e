//! Veil's configuration: one TOML file in which every key has a default.
//!
//! The file is read once into [`Config`]; unknown keys and invalid values are rejected with the file,
//! the line and the dotted key (`engine.device`). Paths may start with `~`. Keys whose default depends
//! on the platform (state directory, socket, models) are optional in the file and filled in by
//! [`Config::resolve`], which is what `veil config show` prints and what the binaries run on.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::paths::{self, Dirs};

/// File name of the configuration inside the platform config directory.
pub const FILE_NAME: &str = "veil.toml";

/// The whole configuration. `Default` is the embedded configuration `veild` runs on without a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub log: LogConfig,
    pub paths: PathsConfig,
    pub models: ModelsConfig,
    pub faces: FacesConfig,
    pub protect: crate::protect::ProtectConfig,
    /// Decoding and writing photos: limits, metadata, JPEG settings.
    pub imageio: crate::imageio::Settings,
    /// How `veild` notices new photos: settle time, periodic rescans, polling.
    pub watch: WatchConfig,
    /// Desktop notifications from `veild`: when a batch of photos is done, or only on failures.
    pub notify: NotifyConfig,
    /// What `veild` does while the computer runs on battery.
    pub power: PowerConfig,
    /// Folders `veild` watches, each with the folder protected copies go to.
    pub folders: Vec<FolderConfig>,
}

/// The `[watch]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// A file is taken once its size and modification time have not changed for this long.
    pub settle_seconds: Bounded<0, 60>,
    /// Every watched folder is scanned again this often, whatever the events said.
    pub rescan_minutes: Bounded<1, 1440>,
    /// How often a folder with `poll = true` (or one the OS cannot watch) is scanned.
    pub poll_seconds: Bounded<1, 3600>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            settle_seconds: Bounded(2.0),
            rescan_minutes: Bounded(10.0),
            poll_seconds: Bounded(10.0),
        }
    }
}

/// The `[notify]` section: what `veild` tells the user's desktop (see [`crate::desktop`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub when: NotifyWhen,
    /// Seconds with nothing left to protect before a batch is told (more photos may be coming).
    pub quiet_seconds: Bounded<1, 600>,
    /// A program to run instead of the platform's (`notify-send`, `osascript`), with its first
    /// arguments; the title and the text are added as the last two. Empty: the platform's.
    pub command: Vec<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig { when: NotifyWhen::Batches, quiet_seconds: Bounded(5.0), command: Vec::new() }
    }
}

/// `notify.when`: which batches are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyWhen {
    /// Once the photos that came together are all done: how many were protected, which failed.
    #[default]
    Batches,
    /// Only a batch in which a photo failed or waits for its output folder.
    Errors,
    /// Never.
    Off,
}

impl fmt::Display for NotifyWhen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotifyWhen::Batches => "batches",
            NotifyWhen::Errors => "errors",
            NotifyWhen::Off => "off",
        })
    }
}

/// The `[power]` section: what `veild` does while the computer runs on battery (see
/// [`crate::power`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    pub on_battery: OnBattery,
}

/// `power.on_battery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBattery {
    /// New photos wait for the charger (the ones in the engine finish); photos asked for by hand
    /// (`veil add`, `veil retry`) are protected at once.
    #[default]
    Pause,
    /// Protect as on mains power.
    Run,
}

/// A number checked to lie in `MIN..=MAX` when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Bounded<const MIN: u32, const MAX: u32>(f64);

impl<const MIN: u32, const MAX: u32> Bounded<MIN, MAX> {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<const MIN: u32, const MAX: u32> TryFrom<f64> for Bounded<MIN, MAX> {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if v.is_finite() && v >= f64::from(MIN) && v <= f64::from(MAX) {
            Ok(Bounded(v))
        } else {
            Err(format!("{v} is out of range: expected {MIN} to {MAX}"))
        }
    }
}

impl<const MIN: u32, const MAX: u32> From<Bounded<MIN, MAX>> for f64 {
    fn from(s: Bounded<MIN, MAX>) -> f64 {
        s.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Where tensors live: `auto` takes CUDA when it loaded, else the CPU.
    pub device: DeviceChoice,
    /// Number format the attacked generators run in on CUDA (`fp32`, `fp16`, `bf16`); the CPU always
    /// runs fp32. `veil eval` judges in fp32 whatever this says.
    pub precision: Precision,
    /// Hand the generators their inputs in channels-last (NHWC) layout, which suits tensor-core
    /// convolutions on CUDA; the same arithmetic either way.
    pub channels_last: bool,
    /// How many photos the engine attacks together at most (their faces share each attack pass).
    /// `None`: 8 on CUDA, 1 on the CPU (where batching gains nothing). Lower it on a GPU with little
    /// memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub photo_batch: Option<std::num::NonZeroUsize>,
    /// Run each step's clean outputs (the targets the loss pushes away from) in the same generator
    /// pass as the perturbed face, one pass of twice the rows instead of two: fewer kernel launches,
    /// which is what a small generator on a GPU waits on, for a backward through twice the rows,
    /// which a big batch and a CPU pay for in full. `auto` (the default) fuses on CUDA when a pass
    /// attacks one face, where an H200 ran the attack in 0.161 s instead of 0.286 s, and not for
    /// more faces (8: 0.421 s against 0.336 s) nor on the CPU (1.35× slower here);
    /// `true`/`false` force it. The same computation either way, though a batch of another size
    /// may round differently.
    pub fuse_clean: FuseClean,
    /// Run each attack step's generators on threads of their own, one each (forward and backward as
    /// far as their inputs), so that their kernel launches are issued side by side. The CPU only: on
    /// CUDA (an H200) the attack did not finish, so the engine runs them in turn there and says so;
    /// on the CPU, which has no launches to hide, it gains nothing measurable.
    pub parallel_generators: bool,
}

/// `engine.fuse_clean`: `"auto"`, `true` or `false` (see [`EngineConfig::fuse_clean`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FuseClean {
    /// Fused on CUDA when a pass attacks one face (`Ensemble::fuses`).
    #[default]
    Auto,
    On,
    Off,
}

impl Serialize for FuseClean {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FuseClean::Auto => s.serialize_str("auto"),
            FuseClean::On => s.serialize_bool(true),
            FuseClean::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for FuseClean {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FuseClean;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\", true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<FuseClean, E> {
                Ok(if v { FuseClean::On } else { FuseClean::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FuseClean, E> {
                match v {
                    "auto" => Ok(FuseClean::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `engine.precision`: the generators' number format on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `veil=debug,warn`, …); the `VEIL_LOG` variable overrides it.
    pub filter: LogFilter,
}

/// Where Veil keeps its own files. `None` means the platform default (see [`Config::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Veil's state (the job database, lock files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The control socket `veil` talks to `veild` through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Folder holding `manifest.toml`, the generators it lists and `mtcnn/` (the face detector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// `[faces]`: the MTCNN face detector. Each value is checked when the file is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FacesConfig {
    /// Smallest face, in pixels of the full-resolution photo, that is searched for and reported.
    #[serde(deserialize_with = "de_min_face_px")]
    pub min_face_px: u32,
    /// Score thresholds of the P-Net, R-Net and O-Net stages, each in (0, 1).
    #[serde(deserialize_with = "de_thresholds")]
    pub thresholds: [f64; 3],
    /// Ratio between the sizes of neighbouring levels of the image pyramid, in [0.1, 0.95].
    #[serde(deserialize_with = "de_scale_factor")]
    pub scale_factor: f64,
    /// Detection runs on a copy whose longest side is at most this many pixels (never upscaled).
    #[serde(deserialize_with = "de_detect_max_side")]
    pub detect_max_side: u32,
    /// The protected region around a face: its box grown by this fraction of the box on each side.
    #[serde(deserialize_with = "de_margin")]
    pub margin: f64,
}

impl Default for FacesConfig {
    fn default() -> Self {
        FacesConfig {
            min_face_px: 40,
            thresholds: [0.6, 0.7, 0.7],
            scale_factor: 0.709,
            detect_max_side: 1600,
            margin: 0.2,
        }
    }
}

fn checked<'de, D, T>(d: D, check: impl FnOnce(&T) -> Result<(), String>) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(d)?;
    check(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

fn de_min_face_px<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v: &u32| {
        if *v >= 12 {
            Ok(())
        } else {
            Err(format!("{v} is below 12, the smallest face MTCNN can see"))
        }
    })
}

fn de_thresholds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[f64; 3], D::Error> {
    checked(d, |v: &[f64; 3]| match v.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
        Some(t) => Err(format!("{t} is not a probability strictly between 0 and 1")),
        None => Ok(()),
    })
}

fn de_scale_factor<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(
        d,
        |v: &f64| {
            if (0.1..=0.95).contains(v) {
                Ok(())
            } else {
                Err(format!("{v} is outside [0.1, 0.95]"))
            }
        },
    )
}

fn de_detect_max_side<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v: &u32| if *v >= 64 { Ok(()) } else { Err(format!("{v} is below 64 pixels")) })
}

fn de_margin<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, |v: &f64| if (0.0..=2.0).contains(v) { Ok(()) } else { Err(format!("{v} is outside [0, 2]")) })
}

/// One watched folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawFolder")]
pub struct FolderConfig {
    /// The folder photos are dropped into. Veil only ever reads from it.
    pub path: PathBuf,
    /// Where protected copies are written.
    pub output: PathBuf,
    /// The format protected copies are written in; `None`: the format of each source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::imageio::Format>,
    /// The protection preset for this folder; `None`: `protect.preset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<crate::protect::Preset>,
    /// Also take photos in sub-folders (their protected copies go to the same sub-folders of
    /// `output`).
    pub recursive: bool,
    /// Glob patterns of names (or paths relative to `path`) to leave alone, on top of the built-in
    /// ones ([`DEFAULT_IGNORE`]).
    pub ignore: Vec<String>,
    /// Scan every `watch.poll_seconds` instead of relying on file-system events (network shares).
    pub poll: bool,
}

/// Names no folder ever takes: hidden files (Veil's own temporary files among them), partial
/// downloads and copies, NAS and OS litter.
pub const DEFAULT_IGNORE: &[&str] =
    &[".*", "*.part", "*.crdownload", "*.tmp", "*~", "@eaDir", "#recycle", "Thumbs.db", "desktop.ini"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    path: PathBuf,
    output: PathBuf,
    #[serde(default)]
    format: Option<crate::imageio::Format>,
    #[serde(default)]
    preset: Option<crate::protect::Preset>,
    #[serde(default = "yes")]
    recursive: bool,
    #[serde(default)]
    ignore: Vec<String>,
    #[serde(default)]
    poll: bool,
}

fn yes() -> bool {
    true
}

impl TryFrom<RawFolder> for FolderConfig {
    type Error = String;

    fn try_from(raw: RawFolder) -> Result<Self, String> {
        if raw.path.as_os_str().is_empty() || raw.output.as_os_str().is_empty() {
            return Err("`path` and `output` must not be empty".to_string());
        }
        if raw.path == raw.output {
            return Err(format!(
                "`output` must differ from `path` ({}): Veil never writes into the folder it reads",
                raw.path.display()
            ));
        }
        if raw.path.starts_with(&raw.output) {
            return Err(format!(
                "`path` ({}) must not lie inside `output` ({})",
                raw.path.display(),
                raw.output.display()
            ));
        }
        for pattern in &raw.ignore {
            globset::Glob::new(pattern).map_err(|e| format!("invalid `ignore` pattern {pattern:?}: {e}"))?;
        }
        Ok(FolderConfig {
            path: raw.path,
            output: raw.output,
            format: raw.format,
            preset: raw.preset,
            recursive: raw.recursive,
            ignore: raw.ignore,
            poll: raw.poll,
        })
    }
}

impl FolderConfig {
    /// A folder with the defaults for everything but its two paths.
    pub fn new(path: impl Into<PathBuf>, output: impl Into<PathBuf>) -> FolderConfig {
        FolderConfig {
            path: path.into(),
            output: output.into(),
            format: None,
            preset: None,
            recursive: true,
            ignore: Vec::new(),
            poll: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: EngineConfig::default(),
            log: LogConfig::default(),
            paths: PathsConfig::default(),
            models: ModelsConfig::default(),
            faces: FacesConfig::default(),
            protect: crate::protect::ProtectConfig::default(),
            imageio: crate::imageio::Settings::default(),
            watch: WatchConfig::default(),
            notify: NotifyConfig::default(),
            power: PowerConfig::default(),
            folders: vec![FolderConfig::new("~/Pictures/Veil/To-Share", "~/Pictures/Veil/Protected")],
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            channels_last: false,
            photo_batch: None,
            fuse_clean: FuseClean::Auto,
            parallel_generators: false,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: LogFilter("info".to_string()) }
    }
}

/// `engine.device`: `auto`, `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!("invalid device {s:?}: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")
                }),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A `tracing` filter directive, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogFilter {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&s)
            .map_err(|e| format!("invalid log filter {s:?}: {e}"))?;
        Ok(LogFilter(s))
    }
}

impl From<LogFilter> for String {
    fn from(f: LogFilter) -> String {
        f.0
    }
}

/// Where the configuration in use came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Read from this file.
    File(PathBuf),
    /// No file: the embedded defaults. `looked_at` is the platform path that had none.
    Defaults { looked_at: Option<PathBuf> },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults { looked_at: Some(p) } => {
                write!(f, "built-in defaults (no file at {})", p.display())
            }
            Source::Defaults { looked_at: None } => f.write_str("built-in defaults"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}, line {line}: key `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, key: String, message: String },
    #[error("config file {}, line {line}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, message: String },
}

impl Config {
    /// Loads the configuration: `explicit` (from `--config`) must exist; without it the platform file
    /// is read when there is one, and the embedded defaults are used when there is none.
    pub fn load(explicit: Option<&Path>, dirs: &Dirs) -> Result<(Config, Source), ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => {
                let candidate = dirs.config_dir.as_ref().map(|d| d.join(FILE_NAME));
                match candidate {
                    Some(p) if p.exists() => p,
                    looked_at => return Ok((Config::default(), Source::Defaults { looked_at })),
                }
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        let config = Config::parse(&text, &path)?;
        Ok((config, Source::File(path)))
    }

    /// The configuration the daemon's commands fall back on when the file does not load (being
    /// edited, say): the defaults with its `paths.socket` where that much of it reads, so that
    /// `veil status`, `pause`, `resume` and `reload` still reach the `veild` that runs on the
    /// configuration it loaded before. `None` where the file cannot be read at all.
    pub fn socket_only(explicit: Option<&Path>, dirs: &Dirs) -> Option<Config> {
        let path = explicit
            .map(Path::to_path_buf)
            .or_else(|| dirs.config_dir.as_ref().map(|d| d.join(FILE_NAME)))?;
        let text = std::fs::read_to_string(path).ok()?;
        let socket = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("paths")?.get("socket")?.as_str().map(PathBuf::from));
        let mut config = Config::default();
        config.paths.socket = socket;
        Some(config)
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1).unwrap_or(1)
        };
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: line_of(e.span()),
            message: e.message().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(inner.span()),
                key: unknown_key(inner.message()).map_or(key.clone(), |k| join_key(&key, k)),
                message: inner.message().to_string(),
            }
        })?;
        // A folder given relative to nothing in particular: veild, started by the service
        // manager, would look for it somewhere else than the shell that wrote it.
        let mut places: Vec<(String, &Path)> = Vec::new();
        for (i, f) in config.folders.iter().enumerate() {
            places.push((format!("folders[{i}].path"), &f.path));
            places.push((format!("folders[{i}].output"), &f.output));
        }
        if let Some(p) = &config.paths.state_dir {
            places.push(("paths.state_dir".into(), p));
        }
        if let Some(p) = &config.paths.socket {
            places.push(("paths.socket".into(), p));
        }
        if let Some(p) = &config.models.dir {
            places.push(("models.dir".into(), p));
        }
        for (key, value) in places {
            if value.is_relative() && !value.starts_with("~") {
                let shown = value.display().to_string();
                let at = text.find(&format!("\"{shown}\"")).or_else(|| text.find(&format!("'{shown}'")));
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: line_of(at.map(|a| a..a)),
                    key,
                    message: format!(
                        "\"{shown}\" is a relative path; write it in full (\"/…\") or from your home \
                         (\"~/{shown}\"): veild runs as a service, from no particular folder"
                    ),
                });
            }
        }
        Ok(config)
    }

    /// The effective configuration: platform defaults filled in, `~` expanded.
    pub fn resolve(&self, dirs: &Dirs) -> Config {
        let home = |p: &Path| paths::expand_home(p, dirs.home.as_deref());
        let state_dir = self.paths.state_dir.as_deref().map(home).unwrap_or_else(|| dirs.state_dir.clone());
        let socket = self.paths.socket.as_deref().map(home).unwrap_or_else(|| dirs.socket.clone());
        let models_dir = self.models.dir.as_deref().map(home).unwrap_or_else(|| dirs.models_dir.clone());
        // The program may be written from the home folder too; its arguments are left as they are.
        let mut notify_command = self.notify.command.clone();
        if let Some(program) = notify_command.first_mut() {
            *program = home(Path::new(program)).to_string_lossy().into_owned();
        }
        Config {
            engine: self.engine.clone(),
            log: self.log.clone(),
            paths: PathsConfig { state_dir: Some(state_dir), socket: Some(socket) },
            models: ModelsConfig { dir: Some(models_dir) },
            faces: self.faces.clone(),
            protect: self.protect.clone(),
            imageio: self.imageio.clone(),
            watch: self.watch.clone(),
            notify: NotifyConfig { command: notify_command, ..self.notify.clone() },
            power: self.power.clone(),
            folders: self
                .folders
                .iter()
                .map(|f| FolderConfig { path: home(&f.path), output: home(&f.output), ..f.clone() })
                .collect(),
        }
    }

    /// The configuration as TOML (what `veil config show` prints).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, paths and vectors cannot fail, except for a path
        // that is not UTF-8, which is shown lossily rather than dropped.
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot show configuration: {e}\n"))
    }
}

/// serde reports an unknown key as "unknown field `x`, expected …" with the path of its table.
fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// serde_path_to_error ends the path with the unknown key inside tables but not at the top level.
fn join_key(table: &str, key: &str) -> String {
    if table.is_empty() || table == "." {
        key.to_string()
    } else if table.rsplit('.').next() == Some(key) {
        table.to_string()
    } else {
        format!("{table}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/veil.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn device_values() {
        for (text, want) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            let c = parse(&format!("[engine]\ndevice = \"{text}\"\n")).unwrap();
            assert_eq!(c.engine.device, want);
        }
    }

    #[test]
    fn fuse_clean_takes_auto_or_a_bool() {
        for (text, want) in
            [("\"auto\"", FuseClean::Auto), ("true", FuseClean::On), ("false", FuseClean::Off)]
        {
            let c = parse(&format!("[engine]\nfuse_clean = {text}\n")).unwrap();
            assert_eq!(c.engine.fuse_clean, want);
            // Written back as it was read.
            assert_eq!(parse(&c.to_toml()).unwrap().engine.fuse_clean, want);
        }
        let msg = parse("[engine]\nfuse_clean = \"yes\"\n").unwrap_err().to_string();
        assert!(
            msg.contains("line 2") && msg.contains("\"yes\"") && msg.contains("\"auto\", true or false"),
            "{msg}"
        );
        let msg = parse("[engine]\nfuse_clean = 3\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("integer") && msg.contains("true or false"), "{msg}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[engine]\ndevice = \"cpu\"\ndevcie = \"cuda\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/veil.toml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("`engine.devcie`"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key() {
        let msg = parse("\n\nwatch = 1\n").unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("`watch`"), "{msg}");
    }

    #[test]
    fn invalid_value_names_file_line_and_key() {
        let msg = parse("[log]\nfilter = \"info\"\n[engine]\ndevice = \"gpu\"\n").unwrap_err().to_string();
        assert!(msg.contains("line 4") && msg.contains("`engine.device`"), "{msg}");
        assert!(msg.contains("\"gpu\""), "{msg}");
    }

    #[test]
    fn invalid_log_filter_is_rejected() {
        let msg = parse("[log]\nfilter = \"veil=loud\"\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("`log.filter`"), "{msg}");
    }

    #[test]
    fn folder_errors_point_at_the_folder() {
        let msg = parse(
            "[[folders]]\npath = \"/a\"\noutput = \"/b\"\n\n[[folders]]\npath = \"/c\"\noutput = \"/c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("`folders[1]`"), "{msg}");
        assert!(msg.contains("must differ"), "{msg}");
    }

    #[test]
    fn a_relative_folder_is_refused_with_what_to_write() {
        let msg = parse("[[folders]]\npath = \"~/In\"\noutput = \"Protected\"\n").unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("`folders[0].output`"), "{msg}");
        assert!(msg.contains("\"Protected\" is a relative path") && msg.contains("\"~/Protected\""), "{msg}");
        let msg = parse("[paths]\nstate_dir = 'state'\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("`paths.state_dir`"), "{msg}");
        let msg = parse("[models]\ndir = \"models\"\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("`models.dir`"), "{msg}");
        assert!(parse("[[folders]]\npath = \"~/In\"\noutput = \"/srv/out\"\n").is_ok());
    }

    #[test]
    fn syntax_error_names_the_line() {
        let msg = parse("[engine]\ndevice = \n").unwrap_err().to_string();
        assert!(msg.contains("/etc/veil.toml, line 2"), "{msg}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let msg = parse("folders = 3\n").unwrap_err().to_string();
        assert!(msg.contains("line 1") && msg.contains("`folders`"), "{msg}");
    }

    #[test]
    fn resolve_fills_platform_paths_and_expands_home() {
        let dirs = Dirs::for_tests(Path::new("/home/ann"));
        let resolved = Config::default().resolve(&dirs);
        assert_eq!(resolved.folders[0].path, Path::new("/home/ann/Pictures/Veil/To-Share"));
        assert_eq!(resolved.folders[0].output, Path::new("/home/ann/Pictures/Veil/Protected"));
        assert_eq!(resolved.paths.state_dir.as_deref(), Some(dirs.state_dir.as_path()));
        assert_eq!(resolved.paths.socket.as_deref(), Some(dirs.socket.as_path()));
        // What `config show` prints reads back as the same configuration.
        let again = parse(&resolved.to_toml()).unwrap();
        assert_eq!(again, resolved);
        // The notifier program may be written from home; its arguments stay as written.
        let c = parse("[notify]\nwhen = \"errors\"\ncommand = [\"~/bin/tell\", \"~/x\"]\n").unwrap();
        assert_eq!(c.notify.when, NotifyWhen::Errors);
        assert_eq!(c.resolve(&dirs).notify.command, ["/home/ann/bin/tell", "~/x"]);
        let msg = parse("[notify]\nwhen = \"always\"\n").unwrap_err().to_string();
        assert!(msg.contains("`notify.when`") && msg.contains("line 2"), "{msg}");
        assert_eq!(Config::default().power.on_battery, OnBattery::Pause);
        assert_eq!(parse("[power]\non_battery = \"run\"\n").unwrap().power.on_battery, OnBattery::Run);
        let msg = parse("[power]\non_battery = \"slow\"\n").unwrap_err().to_string();
        assert!(msg.contains("`power.on_battery`") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn faces_values_are_checked_and_named() {
        let c = parse("[faces]\nmin_face_px = 80\nmargin = 0.5\n").unwrap();
        assert_eq!(c.faces.min_face_px, 80);
        assert_eq!(c.faces.margin, 0.5);
        assert_eq!(c.faces.thresholds, FacesConfig::default().thresholds);
        for (text, key, line) in [
            ("[faces]\nmin_face_px = 8\n", "`faces.min_face_px`", 2),
            ("[faces]\n\nthresholds = [0.6, 1.2, 0.7]\n", "`faces.thresholds`", 3),
            ("[faces]\nscale_factor = 1.0\n", "`faces.scale_factor`", 2),
            ("[faces]\ndetect_max_side = 10\n", "`faces.detect_max_side`", 2),
            ("[faces]\nmargin = -0.1\n", "`faces.margin`", 2),
            ("[faces]\nthresholds = [0.6, 0.7]\n", "`faces.thresholds`", 2),
            ("[imageio]\nmax_pixels = 0\n", "`imageio.max_pixels`", 2),
            ("[imageio]\n\nmax_file_bytes = 0\n", "`imageio.max_file_bytes`", 3),
        ] {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(key) && msg.contains(&format!("line {line}")), "{text}: {msg}");
        }
    }

    const EXAMPLE: &str = include_str!("../config/veil.example.toml");

    #[test]
    fn example_config_parses_to_the_defaults() {
        assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn example_config_documents_every_key() {
        // Every key of the effective configuration (platform paths filled in) appears in the example,
        // set or commented out, under its table.
        let resolved = Config::default().resolve(&Dirs::for_tests(Path::new("/home/ann")));
        let value: toml::Table = toml::from_str(&resolved.to_toml()).unwrap();
        let lines: Vec<&str> = EXAMPLE.lines().map(|l| l.trim_start_matches(['#', ' '])).collect();
        for (table, entry) in &value {
            let (header, keys): (String, Vec<&String>) = match entry {
                toml::Value::Table(t) => (format!("[{table}]"), t.keys().collect()),
                toml::Value::Array(items) => {
                    let keys = items.iter().filter_map(|i| i.as_table()).flat_map(|t| t.keys()).collect();
                    (format!("[[{table}]]"), keys)
                }
                _ => (String::new(), vec![table]),
            };
            let start = lines
                .iter()
                .position(|l| *l == header)
                .unwrap_or_else(|| panic!("no {header} in the example"));
            let section = lines[start + 1..].iter().take_while(|l| !l.starts_with('['));
            let documented: Vec<&str> = section.filter_map(|l| l.split_once(" =").map(|(k, _)| k)).collect();
            for key in keys {
                // A sub-table (`[protect.weights]`) documents itself with its own header.
                let subtable = format!("[{table}.{key}]");
                assert!(
                    documented.contains(&key.as_str()) || lines.contains(&subtable.as_str()),
                    "{table}.{key} is not in config/veil.example.toml"
                );
            }
        }
    }

    #[test]
    fn imageio_settings_and_folder_format() {
        let c = parse(
            "[imageio]\nmetadata = \"keep-no-gps\"\njpeg_quality = 90\njpeg_chroma = \"420\"\n\n\
             [[folders]]\npath = \"/a\"\noutput = \"/b\"\nformat = \"png\"\n",
        )
        .unwrap();
        assert_eq!(c.imageio.metadata, crate::imageio::MetadataPolicy::KeepNoGps);
        assert_eq!(c.imageio.jpeg_quality.get(), 90);
        assert_eq!(c.imageio.jpeg_chroma, crate::imageio::Chroma::Half);
        assert_eq!(c.folders[0].format, Some(crate::imageio::Format::Png));
        let msg = parse("[imageio]\n\njpeg_quality = 101\n").unwrap_err().to_string();
        assert!(msg.contains("line 3") && msg.contains("`imageio.jpeg_quality`"), "{msg}");
        let msg = parse("[imageio]\nmetadata = \"some\"\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("`imageio.metadata`"), "{msg}");
    }

    #[test]
    fn folder_options_and_watch_settings() {
        let c = parse(
            "[watch]\nsettle_seconds = 0.5\n\n[[folders]]\npath = \"/a\"\noutput = \"/a/out\"\n\
             recursive = false\npoll = true\nignore = [\"*.raw\"]\npreset = \"fast\"\n",
        )
        .unwrap();
        assert_eq!(c.watch.settle_seconds.get(), 0.5);
        let f = &c.folders[0];
        assert!(!f.recursive && f.poll);
        assert_eq!(f.ignore, ["*.raw"]);
        assert_eq!(f.preset, Some(crate::protect::Preset::Fast));
        let msg = parse("[watch]\nsettle_seconds = 600\n").unwrap_err().to_string();
        assert!(msg.contains("line 2") && msg.contains("`watch.settle_seconds`"), "{msg}");
        let msg = parse("[[folders]]\npath = \"/a\"\noutput = \"/b\"\nignore = [\"a[\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`folders[0]`") && msg.contains("\"a[\""), "{msg}");
        let msg = parse("[[folders]]\npath = \"/b/in\"\noutput = \"/b\"\n").unwrap_err().to_string();
        assert!(msg.contains("inside `output`"), "{msg}");
        let msg =
            parse("[[folders]]\npath = \"/a\"\noutput = \"/b\"\npreset = \"max\"\n").unwrap_err().to_string();
        assert!(msg.contains("`folders[0].preset`") && msg.contains("max"), "{msg}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dirs = Dirs::for_tests(Path::new("/home/ann"));
        let err = Config::load(Some(Path::new("/nonexistent/veil.toml")), &dirs).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/veil.toml"));
    }
}
