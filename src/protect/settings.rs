//! The `[protect]` configuration section, its presets, and the resolved attack parameters.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize};

use super::spread::{self, Family, Transform, Width};

/// `[protect]` in the configuration. The preset gives every parameter; a key set here overrides it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectConfig {
    pub preset: Preset,
    /// L∞ bound in [-1,1] pixel space (0.05 ≈ 6 of 255 levels).
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "epsilon")]
    pub epsilon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "step")]
    pub step: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "iterations")]
    pub iterations: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<Vec<Family>>,
    /// Fixes the random start and the spread draws; unset, every run draws afresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Width of the perturbation's fade-out at a face region's edge, as a fraction of its shorter side.
    #[serde(deserialize_with = "feather")]
    pub feather: f64,
    /// Attack the face under a different framing at every step (see [`Framing`]); `false` attacks
    /// only the detector's own crop.
    pub framing: bool,
    /// Share of the framed steps on the crop a landmark aligner would cut (see [`Framing`]); 0 frames
    /// around Veil's own crop only and keeps the perturbation inside it.
    #[serde(deserialize_with = "share")]
    pub aligned: f64,
    /// How the generators' losses are weighed against the disruption threshold (see
    /// [`Params::focus`]); unset, the preset's.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "focus")]
    pub focus: Option<f64>,
    /// Joint mode: every attacked condition draws its own transform from the spread at each step, so
    /// one step's sign is taken over several transforms at once (see [`Params::mix`]); unset, the
    /// preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<bool>,
    /// A coarse part of the perturbation at 1/`coarse` of the face's resolution (see
    /// [`Params::coarse`]); 1 turns it off; unset, the preset's.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "coarse")]
    pub coarse: Option<u32>,
    /// A face larger than `detail` times the largest generator input (512 px for 128 px generators)
    /// is attacked at that size, and its perturbation enlarged to the photo's pixels (see
    /// [`Params::detail`]); 0 attacks every face at its own resolution.
    #[serde(deserialize_with = "detail")]
    pub detail: f64,
    pub no_face: NoFace,
    /// Loss weight per generator name (default 1.0).
    #[serde(deserialize_with = "weights")]
    pub weights: BTreeMap<String, f64>,
}

impl Default for ProtectConfig {
    fn default() -> Self {
        ProtectConfig {
            preset: Preset::Auto,
            epsilon: None,
            step: None,
            iterations: None,
            mode: None,
            spread: None,
            seed: None,
            feather: 0.1,
            framing: true,
            aligned: Framing::DEFAULT.aligned,
            focus: None,
            mix: None,
            coarse: None,
            detail: DEFAULT_DETAIL,
            no_face: NoFace::Copy,
            weights: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `balanced`, unless the engine runs on a CPU that would take more than
    /// [`AUTO_CPU_SECONDS_PER_FACE`] per face with it: then `cpu`. Resolved by the pipeline the first time it is needed.
    Auto,
    Fast,
    Balanced,
    Strong,
    /// For slow CPUs: the paper's 10 steps, but one condition per step (iterative), so a conditional
    /// generator costs a fifth of `balanced`; identity, Gaussian and JPEG transforms.
    Cpu,
}

/// Above this many seconds per face for `balanced` on a CPU, `auto` picks `cpu`.
pub const AUTO_CPU_SECONDS_PER_FACE: f64 = 60.0;

impl Preset {
    /// What `auto` becomes: `balanced` on a GPU, or on a CPU where `balanced_seconds_per_face` (an
    /// estimate) stays under [`AUTO_CPU_SECONDS_PER_FACE`]; else `cpu`. Other presets stay.
    pub fn resolve(self, on_cpu: bool, balanced_seconds_per_face: impl FnOnce() -> f64) -> Preset {
        match self {
            Preset::Auto if on_cpu && balanced_seconds_per_face() > AUTO_CPU_SECONDS_PER_FACE => Preset::Cpu,
            Preset::Auto => Preset::Balanced,
            other => other,
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Preset::Auto),
            "fast" => Ok(Preset::Fast),
            "balanced" => Ok(Preset::Balanced),
            "strong" => Ok(Preset::Strong),
            "cpu" => Ok(Preset::Cpu),
            _ => Err(format!("unknown preset {s:?}: expected auto, fast, balanced, strong or cpu")),
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Auto => "auto",
            Preset::Fast => "fast",
            Preset::Balanced => "balanced",
            Preset::Strong => "strong",
            Preset::Cpu => "cpu",
        })
    }
}

/// Class-transferable variants: `joint` sums the losses of all attacked conditions each step (one
/// batched pass); `iterative` cycles through them, one per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Joint,
    Iterative,
}

/// What to do with a photo in which no face was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoFace {
    /// Write an unchanged copy (metadata kept) and report it.
    Copy,
    /// Write nothing and report it.
    Skip,
    /// Attack the whole image as one region.
    Whole,
}

/// How the attacker might frame the face: each attack step crops the face again, a square
/// `scale` times the side of Veil's own crop (drawn uniformly in the range), its center moved by up
/// to `shift` times that side in each direction, before the resize to the generator's input.
///
/// A perturbation computed on one framing only barely survives another: the attacker's resize then
/// samples it on another grid. Measured with zoo v0's StarGAN on 40 CelebA val faces, attacked on a
/// Veil-like crop and judged on the standard aligned crop, mean MSE fell from 0.91 (same framing) to
/// 0.058; drawing a framing per step brought it back to 0.16.
///
/// A share `aligned` of the steps instead frames the crop a tool that aligns faces by their landmarks
/// would cut (`faces::Face::aligned_crop`, when the target has one), its side and center moved by up
/// to `jitter` of it. That is the crop the attacker's resize really samples when the tool aligns the
/// way CelebA was aligned, so those steps put the perturbation on the attacker's own grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Framing {
    pub scale: (f64, f64),
    pub shift: f64,
    /// Share of the steps framed on an aligned crop, in [0, 1].
    pub aligned: f64,
    /// How far an aligned framing's side and center may move, as a fraction of its side.
    pub jitter: f64,
}

impl Framing {
    /// Only Veil's own crop: the paper's setting.
    pub const NONE: Framing = Framing { scale: (1.0, 1.0), shift: 0.0, aligned: 0.0, jitter: 0.0 };
    /// MTCNN's box grown by `faces.margin` 0.2 is 1.4 times the box; tools that align faces the way
    /// CelebA was aligned crop about 1.6 times it. This spans 1.2 to 1.75 times the box. The aligned
    /// crop predicted from MTCNN's landmarks is off by about 3 px in place and 5 px in side on 178 px
    /// CelebA crops (200 val faces), which a jitter of 0.03 covers.
    pub const DEFAULT: Framing = Framing { scale: (0.85, 1.25), shift: 0.1, aligned: 0.5, jitter: 0.03 };

    pub fn is_none(&self) -> bool {
        self.scale == (1.0, 1.0) && self.shift == 0.0 && self.aligned == 0.0
    }

    /// How far past an aligned crop's edge its largest framing reaches, as a fraction of its side.
    pub fn aligned_reach(&self) -> f64 {
        if self.aligned > 0.0 {
            1.5 * self.jitter
        } else {
            0.0
        }
    }

    /// How far past the crop's edge the largest framing reaches, as a fraction of the crop's side.
    pub fn reach(&self) -> f64 {
        (self.scale.1 / 2.0 + self.shift - 0.5).max(0.0)
    }
}

/// Everything one attack needs, resolved from a preset and overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub epsilon: f64,
    pub step: f64,
    pub iterations: u32,
    pub mode: Mode,
    pub spread: Vec<Transform>,
    pub feather: f64,
    pub framing: Framing,
    /// 0: each generator's loss is its MSE normalized by its value at the random start, so every
    /// generator pulls alike. f in (0, 4]: the loss is weighed against the disruption threshold
    /// (`protect::focused_loss`), so effort goes where it can still bring a face past it; a larger f
    /// leans more on the rows nearest the threshold.
    pub focus: f64,
    /// Joint mode: each step draws one transform per attacked condition, and row k of every
    /// generator's batch (face n under condition k) goes through the k-th; `false`, or iterative
    /// mode: one transform per step for every row, as the paper did. Drawing per condition costs no
    /// generator pass, and the sign step then follows the gradient over several transforms at once
    /// instead of overfitting the last one drawn. Unconditional generators (one row per face) see the
    /// first transform only.
    pub mix: bool,
    /// f > 1: the perturbation is a fine part at the face's resolution plus a coarse part at 1/f of
    /// it, upsampled bilinearly, their sum clamped to ±ε; each part takes its own sign step. The
    /// coarse part's smooth patterns survive blur and downscaling, which a fine sign pattern does
    /// not. 1: one part, as the paper.
    pub coarse: u32,
    /// Faces whose crop is larger than `detail` × the largest generator input are attacked on a
    /// copy shrunk to that size (antialiased, as the generators' own resize), and the perturbation
    /// found there is enlarged bilinearly to the face's pixels; 0: every face at its own resolution.
    /// Every view the attack models (framing, resize to the generator, the spread's transforms)
    /// ends at the generator's input size, so finer detail is averaged away by the attacker's own
    /// resize, while a face attacked at full resolution costs memory and time in proportion to its
    /// pixels.
    pub detail: f64,
}

/// The default [`Params::detail`]: 4 times the generator input.
pub const DEFAULT_DETAIL: f64 = 4.0;

impl Params {
    /// The preset's parameters; `auto` unresolved means `balanced`.
    pub fn preset(preset: Preset) -> Params {
        use Family::*;
        let (step, iterations, mode, families, width): (f64, u32, Mode, &[Family], Width) = match preset {
            Preset::Fast => (0.02, 5, Mode::Joint, &[Identity, Gaussian, Jpeg], Width::Paper),
            Preset::Auto | Preset::Balanced => {
                (0.01, 10, Mode::Joint, &[Identity, Gaussian, Box, Resize, Jpeg], Width::Paper)
            }
            Preset::Strong => (0.01, 30, Mode::Joint, &[Identity, Gaussian, Box, Resize, Jpeg], Width::Wide),
            Preset::Cpu => (0.01, 10, Mode::Iterative, &[Identity, Gaussian, Jpeg], Width::Paper),
        };
        Params {
            epsilon: 0.05,
            step,
            iterations,
            mode,
            spread: spread::spread(families, width),
            feather: 0.1,
            framing: Framing::DEFAULT,
            focus: 1.0,
            mix: true,
            coarse: 2,
            detail: DEFAULT_DETAIL,
        }
    }
}

impl ProtectConfig {
    /// The parameters in effect: `preset` (or the configured one) with this section's overrides.
    pub fn params(&self, preset: Option<Preset>) -> Params {
        let preset = preset.unwrap_or(self.preset);
        let mut p = Params::preset(preset);
        if let Some(e) = self.epsilon {
            p.epsilon = e;
        }
        if let Some(s) = self.step {
            p.step = s;
        }
        if let Some(i) = self.iterations {
            p.iterations = i;
        }
        if let Some(m) = self.mode {
            p.mode = m;
        }
        if let Some(families) = &self.spread {
            let width = if preset == Preset::Strong { Width::Wide } else { Width::Paper };
            p.spread = spread::spread(families, width);
        }
        p.feather = self.feather;
        if let Some(f) = self.focus {
            p.focus = f;
        }
        if let Some(m) = self.mix {
            p.mix = m;
        }
        if let Some(c) = self.coarse {
            p.coarse = c;
        }
        p.detail = self.detail;
        p.framing.aligned = self.aligned;
        if !self.framing {
            p.framing = Framing::NONE;
        }
        p
    }

    /// The configured seed, or a fresh one.
    pub fn seed(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        self.seed.unwrap_or_else(|| std::collections::hash_map::RandomState::new().build_hasher().finish())
    }
}

fn bounded<'de, D: Deserializer<'de>>(d: D, lo: f64, hi: f64, what: &str) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > lo && v <= hi {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("{what} must be in ({lo}, {hi}], got {v}")))
    }
}

/// A number in `[lo, hi]`, or an error naming `what` and the range.
fn closed<'de, D, T>(d: D, lo: T, hi: T, what: &str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialOrd + Copy + fmt::Display,
{
    let v = T::deserialize(d)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("{what} must be between {lo} and {hi}, got {v}")))
    }
}

fn share<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    closed(d, 0.0, 1.0, "aligned")
}

fn coarse<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    closed(d, 1, 16, "coarse").map(Some)
}

fn detail<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v == 0.0 || (1.0..=64.0).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("detail must be 0 (off) or between 1 and 64, got {v}")))
    }
}

fn focus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    closed(d, 0.0, 4.0, "focus").map(Some)
}

fn epsilon<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, 0.0, 1.0, "epsilon").map(Some)
}

fn step<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    bounded(d, 0.0, 1.0, "step").map(Some)
}

fn iterations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    closed(d, 1, 1000, "iterations").map(Some)
}

fn feather<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    closed(d, 0.0, 0.5, "feather")
}

fn weights<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let w = BTreeMap::<String, f64>::deserialize(d)?;
    match w.iter().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        Some((k, v)) => {
            Err(serde::de::Error::custom(format!("weight of {k} must be a number >= 0, got {v}")))
        }
        None => Ok(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_is_the_paper() {
        let p = ProtectConfig::default().params(None);
        assert_eq!((p.epsilon, p.step, p.iterations, p.mode), (0.05, 0.01, 10, Mode::Joint));
        // The paper's blurs are all in the spread, with identity.
        for t in [Transform::Identity, Transform::Gaussian { sigma: 1.5 }, Transform::Box { k: 9 }] {
            assert!(p.spread.contains(&t), "{t}");
        }
        assert!(p.spread.iter().any(|t| matches!(t, Transform::Jpeg { .. })));
        assert!(p.spread.iter().any(|t| matches!(t, Transform::Resize { .. })));
    }

    #[test]
    fn auto_is_balanced_unless_a_cpu_is_too_slow_for_it() {
        let never = || -> f64 { panic!("a GPU needs no estimate") };
        assert_eq!(Preset::Auto.resolve(false, never), Preset::Balanced);
        assert_eq!(Preset::Auto.resolve(true, || 8.0), Preset::Balanced);
        assert_eq!(Preset::Auto.resolve(true, || 90.0), Preset::Cpu);
        // A preset someone chose stays, however slow.
        assert_eq!(Preset::Strong.resolve(true, || 900.0), Preset::Strong);
        let cpu = Params::preset(Preset::Cpu);
        assert_eq!((cpu.iterations, cpu.mode), (10, Mode::Iterative));
        assert_eq!("cpu".parse::<Preset>(), Ok(Preset::Cpu));
        assert_eq!(Preset::Auto.to_string(), "auto");
    }

    #[test]
    fn shares_and_feathers_out_of_range_are_refused_with_their_range() {
        let parse = |text: &str| toml::from_str::<ProtectConfig>(text).map_err(|e| e.to_string());
        assert_eq!(parse("aligned = 1.0\nfeather = 0.5").unwrap().aligned, 1.0);
        let err = parse("aligned = 1.5").unwrap_err();
        assert!(err.contains("aligned must be between 0 and 1, got 1.5"), "{err}");
        let err = parse("feather = -0.1").unwrap_err();
        assert!(err.contains("feather must be between 0 and 0.5, got -0.1"), "{err}");
        assert!(parse("aligned = nan").is_err());
        let err = parse("focus = 4.5").unwrap_err();
        assert!(err.contains("focus must be between 0 and 4, got 4.5"), "{err}");
        assert_eq!(parse("focus = 2").unwrap().params(None).focus, 2.0);
        assert_eq!(parse("focus = 0").unwrap().params(None).focus, 0.0);
        assert_eq!(parse("").unwrap().params(None).focus, 1.0);
        assert!(parse("").unwrap().params(None).mix);
        assert!(!parse("mix = false").unwrap().params(None).mix);
        assert_eq!(parse("").unwrap().params(None).coarse, 2);
        assert_eq!(parse("coarse = 1").unwrap().params(None).coarse, 1);
        assert_eq!(parse("").unwrap().params(None).detail, 4.0);
        assert_eq!(parse("detail = 0").unwrap().params(None).detail, 0.0);
        assert_eq!(parse("detail = 2.5").unwrap().params(None).detail, 2.5);
        let err = parse("detail = 0.5").unwrap_err();
        assert!(err.contains("detail must be 0 (off) or between 1 and 64, got 0.5"), "{err}");
        let err = parse("coarse = 0").unwrap_err();
        assert!(err.contains("coarse must be between 1 and 16, got 0"), "{err}");
    }

    #[test]
    fn overrides_apply_on_top_of_any_preset() {
        let c = ProtectConfig { iterations: Some(3), mode: Some(Mode::Iterative), ..Default::default() };
        let p = c.params(Some(Preset::Strong));
        assert_eq!((p.iterations, p.mode), (3, Mode::Iterative));
        assert!(Params::preset(Preset::Strong).spread.len() > Params::preset(Preset::Balanced).spread.len());
    }

    #[test]
    fn the_spread_may_name_jpeg_with_chroma_at_half_resolution() {
        let parse = |text: &str| toml::from_str::<ProtectConfig>(text).map_err(|e| e.to_string());
        let p = parse(r#"spread = ["identity", "jpeg420"]"#).unwrap().params(None);
        assert_eq!(p.spread.len(), 6);
        assert!(p.spread.contains(&Transform::Jpeg { quality: 70, subsampled: true }));
        // The presets' JPEG keeps full-resolution chroma, as before.
        assert!(Params::preset(Preset::Balanced)
            .spread
            .iter()
            .all(|t| !matches!(t, Transform::Jpeg { subsampled: true, .. })));
        assert!(parse(r#"spread = ["jpeg422"]"#).is_err());
    }
}
