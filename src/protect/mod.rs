//! The protection engine: class-transferable, spread-spectrum PGD against an ensemble of generators
//! (Ruiz, Bargal and Sclaroff, *Disrupting Deepfakes*, 2020), applied face by face at full resolution.
//!
//! For each face region the attack works on the region's own pixels (`[1,3,h,w] in [-1,1]`, with a
//! margin of context around it): each step crops the face under a framing drawn from
//! `params.framing` (an attacker crops faces their own way), a differentiable antialiased resize
//! feeds every generator its input size, a transform from the spread is applied (one per attacked
//! condition, `params.mix`: each sign step then follows the gradient under several), and the loss is
//! each generator's `MSE(G(T(x_adv), c), G(T(x), c))` on that framing: away from what the generator
//! makes of the same transform of the clean face, which is what an attacker applying `T` as a defense
//! would otherwise get (and what `veil eval` measures against). Against `G(x, c)`, as the paper's
//! loss reads, a blur's own change to the image (`T(x) - x`) dominates the gradient of generators
//! close to the identity, and with them the ensemble's sign step. Each generator's loss is weighed
//! against the paper's disruption threshold ([`focused_loss`], `params.focus`): a face and condition
//! pulls in proportion to its MSE while far below the threshold and fades past it, so generators the
//! attack cannot bring near the threshold take little of the sign step (`focus` 0: each loss
//! normalized by its value at the random start instead). Losses are weighted by the config. The
//! perturbation is feathered at the region's edge, quantized to 8 bits, and bounded by ε *after*
//! rounding: no output byte moves by more than `floor(ε·127.5)`.

pub mod ensemble;
pub mod settings;
pub mod spread;

use tch::{Device, Kind, Tensor};

pub use ensemble::{Ensemble, Generator};
pub use settings::{Framing, Mode, NoFace, Params, Preset, ProtectConfig};
use spread::Transform;

#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error("generator {name}: {message}")]
    Model { name: String, message: String },
    #[error("cannot load models: {0}")]
    Models(#[from] crate::models::ModelsError),
    #[error("the ensemble is empty: {0} lists no `ensemble` model")]
    EmptyEnsemble(String),
    #[error("protect.weights names {name:?}, which {manifest} does not list (its models: {known})")]
    UnknownWeight { name: String, manifest: String, known: String },
    #[error("image tensor must be [3,H,W] uint8, got {0:?}")]
    BadImage(Vec<i64>),
    #[error("an attack thread stopped without an answer (it panicked)")]
    Thread,
}

/// A rectangle of the image in full-resolution pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
}

impl Region {
    fn overlaps(&self, o: &Region) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    fn union(&self, o: &Region) -> Region {
        let (x, y) = (self.x.min(o.x), self.y.min(o.y));
        let (r, b) = ((self.x + self.w).max(o.x + o.w), (self.y + self.h).max(o.y + o.h));
        Region { x, y, w: r - x, h: b - y }
    }

    /// Grown by `by` times its width and height on every side, then clipped to `width`×`height`.
    fn grown(&self, by: f64, width: i64, height: i64) -> Region {
        let (gx, gy) = ((self.w as f64 * by).ceil() as i64, (self.h as f64 * by).ceil() as i64);
        Region { x: self.x - gx, y: self.y - gy, w: self.w + 2 * gx, h: self.h + 2 * gy }
            .clip(width, height)
            .unwrap_or(*self)
    }

    /// One framing of this region inside a `width`×`height` context: `scale` times its size, its
    /// center moved by `(dx, dy)` times its size, kept inside the context (shrunk to fit if needed).
    fn framed(&self, scale: f64, dx: f64, dy: f64, width: i64, height: i64) -> Region {
        let r = self.scaled(scale, dx, dy);
        let (w, h) = (r.w.min(width), r.h.min(height));
        Region { x: r.x.clamp(0, width - w), y: r.y.clamp(0, height - h), w, h }
    }

    /// `scale` times this region, its center moved by `(dx, dy)` times its size, wherever that falls.
    fn scaled(&self, scale: f64, dx: f64, dy: f64) -> Region {
        let w = ((self.w as f64 * scale).round() as i64).max(1);
        let h = ((self.h as f64 * scale).round() as i64).max(1);
        let cx = self.x as f64 + self.w as f64 * (0.5 + dx);
        let cy = self.y as f64 + self.h as f64 * (0.5 + dy);
        Region { x: (cx - w as f64 / 2.0).round() as i64, y: (cy - h as f64 / 2.0).round() as i64, w, h }
    }

    /// The same region in a crop whose top left corner is at `(x, y)`.
    fn within(&self, x: i64, y: i64) -> Region {
        Region { x: self.x - x, y: self.y - y, ..*self }
    }

    /// The same region in the image scaled by `sx` across and `sy` down.
    fn resized(&self, sx: f64, sy: f64) -> Region {
        let (x, y) = ((self.x as f64 * sx).round() as i64, (self.y as f64 * sy).round() as i64);
        let r = ((self.x + self.w) as f64 * sx).round() as i64;
        let b = ((self.y + self.h) as f64 * sy).round() as i64;
        Region { x, y, w: (r - x).max(1), h: (b - y).max(1) }
    }

    /// Grown by `px` pixels on every side.
    fn grown_by(&self, px: i64) -> Region {
        Region { x: self.x - px, y: self.y - px, w: self.w + 2 * px, h: self.h + 2 * px }
    }

    /// Clipped to an image of `width`×`height`; `None` when nothing is left.
    pub fn clip(&self, width: i64, height: i64) -> Option<Region> {
        let (x, y) = (self.x.max(0), self.y.max(0));
        let (r, b) = ((self.x + self.w).min(width), (self.y + self.h).min(height));
        (r > x && b > y).then_some(Region { x, y, w: r - x, h: b - y })
    }
}

/// A crop a tool aligning faces by their landmarks would cut: `square`, turned by `angle` degrees
/// (counter-clockwise as seen) about its center. The aligner turns it upright before resizing it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aligned {
    pub square: Region,
    pub angle: f64,
}

impl Aligned {
    /// An upright crop.
    pub fn upright(square: Region) -> Aligned {
        Aligned { square, angle: 0.0 }
    }

    /// The same crop in the image scaled by `sx` across and `sy` down: its center moved there, still
    /// a square, its side scaled by their mean.
    fn resized(&self, sx: f64, sy: f64) -> Aligned {
        let r = &self.square;
        let side = ((r.w as f64 * (sx + sy) / 2.0).round() as i64).max(1);
        let cx = (r.x as f64 + r.w as f64 / 2.0) * sx;
        let cy = (r.y as f64 + r.h as f64 / 2.0) * sy;
        let (x, y) = ((cx - side as f64 / 2.0).round() as i64, (cy - side as f64 / 2.0).round() as i64);
        Aligned { square: Region { x, y, w: side, h: side }, angle: self.angle }
    }

    /// The smallest rectangle around the turned square.
    pub fn bounds(&self) -> Region {
        if self.angle == 0.0 {
            return self.square;
        }
        let (sin, cos) = self.angle.to_radians().sin_cos();
        let (w, h) = (self.square.w as f64, self.square.h as f64);
        let (bw, bh) = (w * cos.abs() + h * sin.abs(), w * sin.abs() + h * cos.abs());
        let (cx, cy) = (self.square.x as f64 + w / 2.0, self.square.y as f64 + h / 2.0);
        let (x, y) = ((cx - bw / 2.0).floor() as i64, (cy - bh / 2.0).floor() as i64);
        Region { x, y, w: (cx + bw / 2.0).ceil() as i64 - x, h: (cy + bh / 2.0).ceil() as i64 - y }
    }

    /// Clipped to a `width`×`height` image: an upright crop is cut to it; a turned one, which an aligner
    /// samples past the edge, stays whole as long as part of it is inside. `None` when nothing is.
    fn clip(&self, width: i64, height: i64) -> Option<Aligned> {
        if self.angle == 0.0 {
            self.square.clip(width, height).map(Aligned::upright)
        } else {
            self.bounds().clip(width, height).map(|_| *self)
        }
    }
}

/// One face to protect, in full-resolution pixels of its photo.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Veil's own crop of the face (the detector's box grown by `faces.margin`): framings are drawn
    /// around it and the final report measures on it.
    pub face: Region,
    /// The crops a tool aligning faces by their landmarks would cut (`faces::Face::aligned_crop`);
    /// empty when there is none. The perturbation also covers them.
    pub aligned: Vec<Aligned>,
}

impl Target {
    /// A face without aligned crops: the perturbation stays in `face`.
    pub fn face(face: Region) -> Target {
        Target { face, aligned: Vec::new() }
    }

    /// Where the perturbation may go: the smallest rectangle around the face and its aligned crops,
    /// clipped to a `width`×`height` image (a turned crop may reach past it).
    pub fn extent(&self, width: i64, height: i64) -> Region {
        let all = self.aligned.iter().fold(self.face, |acc, a| acc.union(&a.bounds()));
        all.clip(width, height).unwrap_or(self.face)
    }

    /// Where an attack of this target with `params` reads pixels of a `width`×`height` image: its
    /// face grown by the farthest framing, its extent, and its aligned crops grown by theirs.
    fn context(&self, params: &Params, width: i64, height: i64) -> Region {
        let (reach, aligned_reach) = (params.framing.reach(), params.framing.aligned_reach());
        self.aligned
            .iter()
            .map(|a| a.bounds().grown(aligned_reach, width, height))
            .fold(self.face.grown(reach, width, height).union(&self.extent(width, height)), |acc, a| {
                acc.union(&a)
            })
    }

    /// The same target in a crop whose top left corner is at `(x, y)` of the image.
    pub fn within(&self, x: i64, y: i64) -> Target {
        Target {
            face: self.face.within(x, y),
            aligned: self
                .aligned
                .iter()
                .map(|a| Aligned { square: a.square.within(x, y), angle: a.angle })
                .collect(),
        }
    }
}

/// The part of a `width`×`height` image an attack of `targets` with `params` reads (`None` when no
/// target is inside the image), with the targets merged as [`protect_many`] merges them. Attacking
/// just that crop, with the merged targets moved into it ([`Target::within`]), gives the same pixels
/// as attacking the whole image, so a caller need not turn a whole photo into a tensor.
pub fn reach(targets: &[Target], params: &Params, width: i64, height: i64) -> Option<(Region, Vec<Target>)> {
    let merged = merge_targets(targets, width, height);
    let area = merged.iter().map(|t| t.context(params, width, height)).reduce(|a, b| a.union(&b))?;
    Some((area, merged))
}

/// Clips targets to the image and merges those whose extents overlap (repeatedly, so chains merge
/// too): a merged target's face is the rectangle around its faces and it keeps all their aligned
/// crops. Targets with nothing left inside the image are dropped.
pub fn merge_targets(targets: &[Target], width: i64, height: i64) -> Vec<Target> {
    let mut out: Vec<Target> = targets
        .iter()
        .filter_map(|t| {
            let face = t.face.clip(width, height)?;
            Some(Target { face, aligned: t.aligned.iter().filter_map(|a| a.clip(width, height)).collect() })
        })
        .collect();
    loop {
        let mut merged = false;
        'scan: for i in 0..out.len() {
            for j in i + 1..out.len() {
                if out[i].extent(width, height).overlaps(&out[j].extent(width, height)) {
                    let other = out.remove(j);
                    out[i].face = out[i].face.union(&other.face);
                    out[i].aligned.extend(other.aligned);
                    merged = true;
                    break 'scan;
                }
            }
        }
        if !merged {
            return out;
        }
    }
}

/// What the attack did to one region.
#[derive(Debug, Clone)]
pub struct RegionReport {
    pub region: Region,
    /// Per generator: `MSE(G(x_adv), G(x))` averaged over its attacked conditions, on the final
    /// quantized pixels, no transform.
    pub losses: Vec<(String, f64)>,
}

/// Small deterministic generator (SplitMix64) for the spread draws and the seed of the random start, so a seed
/// reproduces a run exactly on the CPU.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0,1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// A feather mask `[1,1,h,w]` in [0,1]: 1 inside, falling linearly to 0 over `feather` × the shorter
/// side at each edge (0 = no feathering).
pub fn feather_mask(h: i64, w: i64, feather: f64, device: Device) -> Tensor {
    let ramp = |len: i64| {
        let band = (feather * h.min(w) as f64).max(1e-6);
        let v: Vec<f32> = (0..len)
            .map(|i| {
                let d = (i.min(len - 1 - i) as f64 + 0.5) / band;
                d.min(1.0) as f32
            })
            .collect();
        Tensor::from_slice(&v)
    };
    (ramp(h).view([h, 1]) * ramp(w).view([1, w])).view([1, 1, h, w]).to_device(device)
}

/// `[3,H,W]` uint8 → `[1,3,H,W]` float in [-1,1] on `device`.
pub fn to_unit(pixels: &Tensor, device: Device) -> Tensor {
    // In place after the conversion: one float copy of a large crop, not three.
    let mut x = pixels.to_device(device).to_kind(Kind::Float);
    let _ = x.divide_scalar_(127.5).subtract_scalar_(1.0);
    x.unsqueeze(0)
}

/// Largest change in 8-bit levels that stays within ε after rounding.
pub fn max_levels(epsilon: f64) -> i64 {
    (epsilon * 127.5 + 1e-9).floor() as i64
}

/// Torch has one random generator per process (per device). Seeding it and drawing from it happen
/// under this lock, so attacks that run at once (tests, a daemon beside a `veil` in one process)
/// each draw what their own seed gives.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `draw` with torch's generator seeded with `seed`, and no other draw in between.
pub fn with_torch_seed<T>(seed: i64, draw: impl FnOnce() -> T) -> T {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// How many face regions one attack batches (per generator, `faces × conditions` inputs per pass).
pub const MAX_BATCH: usize = 8;

/// PGD on one region. `x: [1,3,h,w] in [-1,1]` on the ensemble's device, all of it the face;
/// `mask: [1,1,h,w]` (feather). Returns `x_adv` in the same layout (not yet quantized).
pub fn attack(
    ensemble: &Ensemble,
    x: &Tensor,
    mask: &Tensor,
    params: &Params,
    rng: &mut Rng,
) -> Result<Tensor, ProtectError> {
    let mut out = attack_batch(ensemble, std::slice::from_ref(x), std::slice::from_ref(mask), params, rng)?;
    Ok(out.remove(0))
}

/// PGD on several regions at once: each generator sees every face under every condition in one pass
/// per step, each condition through a transform drawn for it (`params.mix`; else one for all) and
/// shared by every face. `xs[n]: [1,3,h_n,w_n]
/// in [-1,1]` on the ensemble's device, each all face (framings then only zoom in), `masks[n]:
/// [1,1,h_n,w_n]`. Returns each `x_adv` (not yet quantized).
pub fn attack_batch(
    ensemble: &Ensemble,
    xs: &[Tensor],
    masks: &[Tensor],
    params: &Params,
    rng: &mut Rng,
) -> Result<Vec<Tensor>, ProtectError> {
    let faces: Vec<Region> =
        xs.iter().map(|x| Region { x: 0, y: 0, w: x.size()[3], h: x.size()[2] }).collect();
    let aligned = vec![Vec::new(); xs.len()];
    attack_batch_targets(ensemble, xs, masks, &faces, &aligned, params, rng).map(|(advs, _)| advs)
}

/// `[1,3,h,w]` → the part of it inside `r`.
fn crop(x: &Tensor, r: &Region) -> Tensor {
    x.narrow(2, r.y, r.h).narrow(3, r.x, r.w)
}

/// The part of a `width`×`height` context that [`cut`] reads for window `w`: the square itself when
/// upright, the turned square's bounds and a pixel for the bilinear neighbours when turned, clipped to
/// the context (where it is clipped, `cut` reflects at the context's own edge, so cutting from the
/// part gives what cutting from the whole context gives).
fn read_by(w: &Aligned, width: i64, height: i64) -> Region {
    let whole = Region { x: 0, y: 0, w: width, h: height };
    let reach = if w.angle == 0.0 { w.square } else { w.bounds().grown_by(1) };
    reach.clip(width, height).unwrap_or(whole)
}

/// What an aligner cuts from `x: [1,3,H,W]`: `w.square` turned upright, `[1,3,h,w]` of the square's
/// size; an upright square is a plain crop, a turned one is sampled bilinearly (differentiably), with
/// `x` reflected past its edge. Also turns whole photos for `veil eval --tilt`.
pub fn cut(x: &Tensor, w: &Aligned) -> Tensor {
    if w.angle == 0.0 {
        return crop(x, &w.square);
    }
    let (width, height) = (x.size()[3] as f64, x.size()[2] as f64);
    let r = &w.square;
    let (cx, cy) = (r.x as f64 + r.w as f64 / 2.0, r.y as f64 + r.h as f64 / 2.0);
    let (sin, cos) = w.angle.to_radians().sin_cos();
    // Output point (u, v) in [-1,1]² -> input pixel c + R·(u·w/2, v·h/2), R turning counter-clockwise
    // as seen ([[cos, sin], [-sin, cos]] with y down), in grid_sample's [-1,1] input coordinates.
    let (sw, sh) = (r.w as f64, r.h as f64);
    let theta = Tensor::from_slice(&[
        cos * sw / width,
        sin * sh / width,
        2.0 * cx / width - 1.0,
        -sin * sw / height,
        cos * sh / height,
        2.0 * cy / height - 1.0,
    ])
    // In fp32, without waiting for the GPU's queue to drain: this runs at every step that frames a
    // turned crop.
    .to_device_(x.device(), Kind::Float, true, false)
    .view([1, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, [1, 3, r.h, r.w], false);
    // Bilinear (0), reflection past the edge (2).
    x.grid_sampler(&grid, 0, 2, false)
}

/// `G(resize(x_n), c_k)` of every generator for every face and attacked condition: per generator
/// `[N*K,3,S,S]`, face-major. Generators of one input size share the resize.
fn clean_outputs(ensemble: &Ensemble, faces: &[Tensor]) -> Result<Vec<Tensor>, ProtectError> {
    let mut shared = ensemble::Inputs::default();
    tch::no_grad(|| {
        ensemble
            .generators
            .iter()
            .map(|g| g.forward_resized(&g.resized_shared(&mut shared, faces, Transform::Identity)))
            .collect()
    })
}

/// The paper's disruption threshold: a face counts as disrupted when `MSE(G(x_adv), G(x))` reaches it
/// (MSE in [-1,1] space).
pub const THRESHOLD: f64 = 0.05;

/// The loss of one generator with `focus` f in (0, 4]: the mean over rows (face and condition) of
/// `σ(f·ln(m/τ))/f`, with `m` the row's MSE and τ [`THRESHOLD`]. Its gradient is `σ'(f·ln(m/τ))·∇m/m`:
/// well below the threshold about `(m/τ)^f·∇m/m`, so f = 1 pulls in proportion to the MSE itself, a
/// smaller f moves toward the relative `∇m/m`, where every generator pulls alike, and a larger f leans
/// on the rows nearest the threshold (a weak condition under a mild transform); past the threshold it
/// fades. A generator or condition the attack cannot move near the threshold thus takes little of the
/// sign step, and one already disrupted with margin hands it to the others. `out`, `target`: `[R,3,S,S]`.
fn focused_loss(out: &Tensor, target: &Tensor, focus: f64) -> Tensor {
    let rows = (out - target).square().flatten(1, -1).mean_dim(&[1i64][..], false, Kind::Float); // [R]
    ((rows.clamp_min(1e-12) / THRESHOLD).log() * focus).sigmoid().mean(Kind::Float) / focus
}

/// What a generator's output is pushed away from in a step.
enum Away {
    /// The outputs of this clean input (same layout as the perturbed one), made in the step.
    Clean(Tensor),
    /// Clean outputs made before the loop (no framing, no transform).
    Fixed(Tensor),
}

/// One generator's share of an attack step, made on the attack's thread and, with
/// `engine.parallel_generators`, run on its own.
struct Term<'a> {
    runner: ensemble::Runner<'a>,
    /// Iterative mode: the one condition attacked this step.
    one: Option<usize>,
    /// The perturbed input: rows `[N*K,3,S,S]` (joint) or faces `[N,3,S,S]` (iterative).
    adv: Tensor,
    away: Away,
    fuse: bool,
    focus: f64,
    weight: f64,
    /// With `focus` 0: the loss at the first step, which normalizes the later ones.
    norm: Option<f64>,
}

impl Term<'_> {
    /// `G(x, c)` of the rows (joint) or of the faces under the step's condition (iterative).
    fn forward(&self, x: &Tensor) -> Result<Tensor, ProtectError> {
        match self.one {
            Some(k) => self.runner.forward_one_resized(x, k),
            None => self.runner.forward_rows(x),
        }
    }

    /// The generator's weighted loss, away from the clean outputs: `G(adv)` against the fixed
    /// target, or against `G(clean)` made in this step (in the same pass with `fuse`: perturbed rows
    /// first, then clean ones, each block keeping its row order, so row r keeps its condition).
    fn loss(&mut self) -> Result<Tensor, ProtectError> {
        let (out, target) = match &self.away {
            Away::Clean(clean) if self.fuse => {
                let r = self.adv.size()[0];
                let both = self.forward(&Tensor::cat(&[&self.adv, clean], 0))?;
                (both.narrow(0, 0, r), both.narrow(0, r, r).detach())
            }
            Away::Clean(clean) => (self.forward(&self.adv)?, tch::no_grad(|| self.forward(clean))?),
            Away::Fixed(fixed) => (self.forward(&self.adv)?, fixed.shallow_clone()),
        };
        Ok(if self.focus > 0.0 {
            focused_loss(&out, &target, self.focus) * self.weight
        } else {
            // Normalized by the loss at the random start so no generator dominates.
            let loss = out.mse_loss(&target, tch::Reduction::Mean);
            let norm = *self.norm.get_or_insert_with(|| loss.double_value(&[]).max(1e-8));
            loss * (self.weight / norm)
        })
    }
}

/// [`attack_batch`] on faces with context: `faces[n]` is where Veil's crop of the face lies in
/// `xs[n]`, which may extend past it so that framings (`params.framing`) can also zoom out, and
/// `aligned[n]` where its aligned crops lie (possibly none); the perturbation stays where `masks[n]`
/// lets it. Also returns the clean outputs of Veil's own crops
/// (per generator, `[N*K,3,S,S]` face-major), which the final report measures against.
///
/// Each step draws transforms from the spread (one per attacked condition with `params.mix`, else
/// one) and, per face, one framing (a share
/// `params.framing.aligned` of them on one of the face's aligned crops); the loss compares
/// `G(T(resize(framing of x_adv)))` with `G(T(resize(the same framing of x)))`, so a step's clean
/// outputs are computed in that step (once for the whole attack when neither framing nor a transform
/// applies). The loop reads nothing back from the device, except, with `params.focus` 0, each
/// generator's loss at the first step (its normalizer).
fn attack_batch_targets(
    ensemble: &Ensemble,
    xs: &[Tensor],
    masks: &[Tensor],
    faces: &[Region],
    aligned: &[Vec<Aligned>],
    params: &Params,
    rng: &mut Rng,
) -> Result<(Vec<Tensor>, Vec<Tensor>), ProtectError> {
    let eps = params.epsilon;
    let dev = ensemble.device;
    let own: Vec<Tensor> = xs.iter().zip(faces).map(|(x, r)| crop(x, r)).collect();
    let targets = clean_outputs(ensemble, &own)?;
    // Random start in the ε-ball: at x_adv = x the loss gradient is exactly zero. Drawn on the
    // device by torch's generator, seeded from `rng` so a seed still reproduces a run.
    let seed = (rng.next_u64() >> 1) as i64;
    // With `params.coarse` f > 1 the perturbation is a fine part at the face's resolution plus a
    // coarse part at 1/f of it, upsampled bilinearly: δ = clamp(δ_fine + up(δ_coarse), ±ε). Each part
    // takes its own sign step within ±ε. The coarse part starts at random (the fine one at 0, which
    // is enough to leave the zero gradient), and its smooth patterns survive blurs and resizes.
    let coarse_factor = i64::from(params.coarse.max(1));
    let start = |size: &[i64]| Tensor::rand(size, (Kind::Float, dev)) * (2.0 * eps) - eps;
    // A grey face (its three channels equal: a black-and-white photo) gets one perturbation for all
    // three, `[1,1,h,w]` broadcast over them, so its copy stays grey instead of gaining colour noise.
    let channels: Vec<i64> = xs.iter().map(|x| if is_grey(x) { 1 } else { 3 }).collect();
    let (mut deltas, mut coarse) = with_torch_seed(seed, || {
        let deltas: Vec<Tensor> = xs
            .iter()
            .zip(&channels)
            .map(|(x, &c)| {
                let size = [1, c, x.size()[2], x.size()[3]];
                if coarse_factor > 1 {
                    Tensor::zeros(size, (Kind::Float, dev))
                } else {
                    start(&size)
                }
            })
            .collect();
        let coarse: Vec<Tensor> = if coarse_factor > 1 {
            xs.iter()
                .zip(&channels)
                .map(|(x, &c)| {
                    let (h, w) = (x.size()[2], x.size()[3]);
                    start(&[
                        1,
                        c,
                        (h + coarse_factor - 1) / coarse_factor,
                        (w + coarse_factor - 1) / coarse_factor,
                    ])
                })
                .collect()
        } else {
            Vec::new()
        };
        (deltas, coarse)
    });
    // δ in [-ε,ε] of face n over `part` of its context, [1,3,h',w'], from its fine part (whole) and
    // (if any) its coarse part, which is upsampled whole (one kernel each way) and cut to the part.
    let combined = |n: usize, fine: &Tensor, coarse: Option<&Tensor>, part: &Region| match coarse {
        Some(c) => {
            let (h, w) = (xs[n].size()[2], xs[n].size()[3]);
            (crop(fine, part) + crop(&c.upsample_bilinear2d([h, w], false, None, None), part))
                .clamp(-eps, eps)
        }
        None => crop(fine, part),
    };
    // The whole context of face n.
    let whole = |n: usize| Region { x: 0, y: 0, w: xs[n].size()[3], h: xs[n].size()[2] };
    let spread = &params.spread;
    let framing = params.framing;
    let mut norms: Vec<Option<f64>> = vec![None; ensemble.generators.len()];
    // Transforms drawn per step: one per attacked condition when joint with `params.mix` (row k of
    // every generator goes through the k-th), else one for all.
    let draws = match params.mode {
        Mode::Joint if params.mix => {
            ensemble.generators.iter().map(Generator::condition_count).max().unwrap_or(1)
        }
        _ => 1,
    };
    for step in 0..params.iterations {
        let ts: Vec<Transform> = (0..draws).map(|_| spread::draw(spread, rng)).collect();
        // This step's framing of each face (Veil's own crops when framing is off): a square and the
        // turn an aligner would undo (0 for Veil's own framings).
        let windows: Vec<Aligned> = if framing.is_none() {
            faces.iter().copied().map(Aligned::upright).collect()
        } else {
            xs.iter()
                .zip(faces)
                .zip(aligned)
                .map(|((x, face), aligned)| {
                    // Around one of the aligned crops (jittered) or around Veil's crop.
                    let (around, (lo, hi), shift) = if !aligned.is_empty() && rng.unit() < framing.aligned {
                        let j = framing.jitter;
                        (aligned[rng.below(aligned.len())], (1.0 - j, 1.0 + j), j)
                    } else {
                        (Aligned::upright(*face), framing.scale, framing.shift)
                    };
                    let scale = lo + (hi - lo) * rng.unit();
                    let dx = (2.0 * rng.unit() - 1.0) * shift;
                    let dy = (2.0 * rng.unit() - 1.0) * shift;
                    if around.angle == 0.0 {
                        Aligned::upright(around.square.framed(scale, dx, dy, x.size()[3], x.size()[2]))
                    } else {
                        // A turned crop is sampled past the context's edge, so it is not pushed inside.
                        Aligned { square: around.square.scaled(scale, dx, dy), angle: around.angle }
                    }
                })
                .collect()
        };
        let framed_clean: Vec<Tensor> = xs.iter().zip(&windows).map(|(x, w)| cut(x, w)).collect();
        let ds: Vec<Tensor> = deltas.iter().map(|d| d.detach().set_requires_grad(true)).collect();
        let cs: Vec<Tensor> = coarse.iter().map(|c| c.detach().set_requires_grad(true)).collect();
        // The perturbed framings, made from the part of the context each one reads only (on a CPU the
        // per-pixel work of a step, forward and backward, is a large share of it).
        let x_adv: Vec<Tensor> = xs
            .iter()
            .zip(&ds)
            .zip(masks)
            .zip(&windows)
            .enumerate()
            .map(|(n, (((x, d), m), w))| {
                let part = read_by(w, x.size()[3], x.size()[2]);
                let delta = combined(n, d, cs.get(n), &part);
                cut(
                    &(crop(x, &part) + delta * crop(m, &part)).clamp(-1.0, 1.0),
                    &Aligned { square: w.square.within(part.x, part.y), ..*w },
                )
            })
            .collect();
        let per_step = !framing.is_none() || ts.iter().any(|t| *t != Transform::Identity);
        // Each generator's perturbed input (connected to δ), its clean input when the targets are
        // made in this step, else its fixed target: R = N*K rows (joint) or N faces (iterative) at
        // its input size. Generators of one input size share the resizes and the transforms (and
        // their backward).
        let mut inputs = ensemble::Inputs::default();
        let mut clean_inputs = ensemble::Inputs::default();
        let mut work = Vec::with_capacity(ensemble.generators.len());
        for (i, g) in ensemble.generators.iter().enumerate() {
            // Iterative mode attacks one condition per step (only that one's clean output is made).
            let k = step as usize % g.condition_count();
            let (adv, away) = match params.mode {
                Mode::Joint => {
                    let adv = g.rows_shared(&mut inputs, &x_adv, &ts);
                    if per_step {
                        (adv, Away::Clean(g.rows_shared(&mut clean_inputs, &framed_clean, &ts)))
                    } else {
                        (adv, Away::Fixed(targets[i].shallow_clone()))
                    }
                }
                Mode::Iterative => {
                    let adv = g.resized_shared(&mut inputs, &x_adv, ts[0]);
                    if per_step {
                        (adv, Away::Clean(g.resized_shared(&mut clean_inputs, &framed_clean, ts[0])))
                    } else {
                        (adv, Away::Fixed(g.target_one(&targets[i], k)))
                    }
                }
            };
            work.push(Term {
                runner: g.runner(),
                one: (params.mode == Mode::Iterative).then_some(k),
                away,
                fuse: ensemble.fuses(xs.len()),
                focus: params.focus,
                weight: g.weight,
                norm: norms[i],
                adv,
            });
        }
        if work.is_empty() {
            break;
        }
        if ensemble.parallel_generators && work.len() > 1 {
            // Each generator's forward and backward on its own thread, as far as its input (a leaf
            // there); then one backward from all the inputs at once, with their gradients, to δ.
            let advs: Vec<Tensor> = work.iter().map(|t| t.adv.shallow_clone()).collect();
            let results: Vec<Result<(Tensor, Option<f64>), ProtectError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .into_iter()
                    .map(|mut t| {
                        scope.spawn(move || {
                            let leaf = t.adv.detach().set_requires_grad(true);
                            t.adv = leaf.shallow_clone();
                            let term = t.loss()?;
                            let grad = Tensor::f_run_backward(&[term], &[leaf], false, false)
                                .map_err(|e| ProtectError::Model {
                                    name: t.runner.name().to_string(),
                                    message: e.to_string(),
                                })?
                                .pop()
                                .ok_or_else(|| ProtectError::Model {
                                    name: t.runner.name().to_string(),
                                    message: "no gradient for its input".into(),
                                })?;
                            Ok((grad, t.norm))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(ProtectError::Thread))).collect()
            });
            let mut parts = Vec::with_capacity(advs.len());
            for (i, (adv, r)) in advs.iter().zip(results).enumerate() {
                let (grad, norm) = r?;
                norms[i] = norm;
                // d/dδ of Σ (input · its gradient) is the gradient the whole loss sends back.
                parts.push((adv * grad).sum(Kind::Float));
            }
            if let Some(surrogate) = parts.into_iter().reduce(|acc, part| acc + part) {
                surrogate.backward();
            }
        } else {
            let mut terms = Vec::with_capacity(work.len());
            for (i, mut t) in work.into_iter().enumerate() {
                terms.push(t.loss()?);
                norms[i] = t.norm;
            }
            if let Some(total) = terms.into_iter().reduce(|acc, term| acc + term) {
                total.backward();
            }
        }
        let stepped = |parts: &[Tensor]| -> Vec<Tensor> {
            tch::no_grad(|| {
                parts.iter().map(|d| (d.detach() + d.grad().sign() * params.step).clamp(-eps, eps)).collect()
            })
        };
        deltas = stepped(&ds);
        coarse = stepped(&cs);
    }
    let advs = tch::no_grad(|| {
        xs.iter()
            .enumerate()
            .zip(&deltas)
            .zip(masks)
            .map(|(((n, x), d), m)| (x + combined(n, d, coarse.get(n), &whole(n)) * m).clamp(-1.0, 1.0))
            .collect()
    });
    Ok((advs, targets))
}

/// The size `(h, w)` at which `context` is attacked when its `face` is larger than `detail` times
/// `input` (the ensemble's largest generator input): shrunk so the face's longer side is that;
/// `None` when the face is not larger (or `detail` is 0), so it is attacked at its own resolution.
fn attack_size(face: &Region, context: &Region, input: i64, detail: f64) -> Option<(i64, i64)> {
    let most = detail * input as f64;
    let side = face.w.max(face.h) as f64;
    if detail <= 0.0 || input <= 0 || side <= most {
        return None;
    }
    let s = most / side;
    let shrunk = |len: i64| ((len as f64 * s).round() as i64).max(1);
    Some((shrunk(context.h), shrunk(context.w)))
}

/// Whether `x: [1,3,h,w]` is grey: its three channels equal everywhere.
fn is_grey(x: &Tensor) -> bool {
    let c = |i: i64| x.narrow(1, i, 1);
    c(0).equal(&c(1)) && c(1).equal(&c(2))
}

/// Protects the given faces of an image. `pixels: [3,H,W]` uint8 (CPU, upright). Returns the
/// protected pixels (same layout) and one report per merged target. Targets are attacked together,
/// up to [`MAX_BATCH`] at a time.
pub fn protect_pixels(
    ensemble: &Ensemble,
    pixels: &Tensor,
    regions: &[Target],
    params: &Params,
    rng: &mut Rng,
) -> Result<(Tensor, Vec<RegionReport>), ProtectError> {
    let mut out = protect_many(ensemble, &[(pixels, regions)], params, rng)?;
    Ok(out.remove(0))
}

/// [`protect_pixels`] for several images at once: the faces of all of them are attacked in batches
/// of up to [`MAX_BATCH`], so a GPU sees the faces of several photos in one pass. Returns, per image
/// in order, its protected pixels and one report per merged target (its region is the target's
/// extent, where the pixels may have changed).
pub fn protect_many(
    ensemble: &Ensemble,
    images: &[(&Tensor, &[Target])],
    params: &Params,
    rng: &mut Rng,
) -> Result<Vec<(Tensor, Vec<RegionReport>)>, ProtectError> {
    let mut outs = Vec::with_capacity(images.len());
    // (image index, merged target) for every face of every image.
    let mut work: Vec<(usize, Target)> = Vec::new();
    for (i, (pixels, regions)) in images.iter().enumerate() {
        let size = pixels.size();
        if size.len() != 3 || size[0] != 3 || pixels.kind() != Kind::Uint8 {
            return Err(ProtectError::BadImage(size));
        }
        outs.push((pixels.copy(), Vec::new()));
        work.extend(merge_targets(regions, size[2], size[1]).into_iter().map(|t| (i, t)));
    }
    let levels = max_levels(params.epsilon) as f64;
    for chunk in work.chunks(MAX_BATCH) {
        // Each target with the context its framings may reach.
        let size_of = |i: usize| (images[i].0.size()[2], images[i].0.size()[1]);
        let contexts: Vec<Region> = chunk
            .iter()
            .map(|(i, t)| {
                let (w, h) = size_of(*i);
                t.context(params, w, h)
            })
            .collect();
        // Where the face, its aligned crops and its extent lie in the context.
        let moved: Vec<Target> = chunk.iter().zip(&contexts).map(|((_, t), c)| t.within(c.x, c.y)).collect();
        let faces: Vec<Region> = moved.iter().map(|t| t.face).collect();
        let aligned: Vec<Vec<Aligned>> = moved.into_iter().map(|t| t.aligned).collect();
        let extents: Vec<Region> = chunk
            .iter()
            .zip(&contexts)
            .map(|((i, t), c)| {
                let (w, h) = size_of(*i);
                let e = t.extent(w, h);
                e.within(c.x, c.y)
            })
            .collect();
        let crops: Vec<Tensor> = chunk
            .iter()
            .zip(&contexts)
            .map(|((i, _), c)| images[*i].0.narrow(1, c.y, c.h).narrow(2, c.x, c.w))
            .collect();
        // The size (h, w) each context is attacked at when its face is larger than `params.detail`
        // allows; `None`: at its own.
        let input = ensemble.generators.iter().map(|g| g.input_size).max().unwrap_or(0);
        let shrink: Vec<Option<(i64, i64)>> =
            faces.iter().zip(&contexts).map(|(f, c)| attack_size(f, c, input, params.detail)).collect();
        // [1,3,h,w] in [-1,1]: the context at the size it is attacked at.
        let xs: Vec<Tensor> = crops
            .iter()
            .zip(&shrink)
            .map(|(c, size)| {
                let x = to_unit(c, ensemble.device);
                match size {
                    Some((h, w)) => spread::resize(&x, *h, *w),
                    None => x,
                }
            })
            .collect();
        // The feather mask of the extent, zero in the context around it, at the attack's size.
        let masks: Vec<Tensor> = contexts
            .iter()
            .zip(&extents)
            .zip(&shrink)
            .map(|((c, e), size)| {
                let feathered = feather_mask(e.h, e.w, params.feather, ensemble.device);
                let m = if (e.w, e.h) == (c.w, c.h) {
                    feathered
                } else {
                    let m = Tensor::zeros([1, 1, c.h, c.w], (Kind::Float, ensemble.device));
                    crop(&m, e).copy_(&feathered);
                    m
                };
                match size {
                    Some((h, w)) => spread::resize(&m, *h, *w),
                    None => m,
                }
            })
            .collect();
        let scaled = |n: usize| -> (f64, f64) {
            match shrink[n] {
                Some((h, w)) => (w as f64 / contexts[n].w as f64, h as f64 / contexts[n].h as f64),
                None => (1.0, 1.0),
            }
        };
        let attacked_faces: Vec<Region> = faces
            .iter()
            .enumerate()
            .map(|(n, f)| {
                let (sx, sy) = scaled(n);
                let (w, h) = (xs[n].size()[3], xs[n].size()[2]);
                f.resized(sx, sy).clip(w, h).unwrap_or(Region { x: 0, y: 0, w, h })
            })
            .collect();
        let attacked_aligned: Vec<Vec<Aligned>> = aligned
            .iter()
            .enumerate()
            .map(|(n, crops)| {
                let (sx, sy) = scaled(n);
                crops.iter().map(|a| a.resized(sx, sy)).collect()
            })
            .collect();
        let (advs, mut targets) =
            attack_batch_targets(ensemble, &xs, &masks, &attacked_faces, &attacked_aligned, params, rng)?;
        // Quantize: whole 8-bit levels, at most floor(ε·127.5) away from the original byte. Outside
        // the extent the mask is zero, so nothing moves there; a perturbation found at a smaller
        // size is enlarged to the context's pixels first, and only its extent is kept.
        let protected: Vec<Tensor> = tch::no_grad(|| {
            crops
                .iter()
                .zip(&xs)
                .zip(&advs)
                .zip(&extents)
                .zip(&shrink)
                .map(|((((crop_u8, x), x_adv), e), size)| {
                    let (h, w) = (crop_u8.size()[1], crop_u8.size()[2]);
                    // [1,3,h,w] in 8-bit levels, worked on in place: a large face's context holds
                    // hundreds of MB a float copy.
                    let delta = x_adv - x;
                    let mut delta = match size {
                        Some(_) => delta.upsample_bilinear2d([h, w], false, None, None),
                        None => delta,
                    };
                    let _ = delta.multiply_scalar_(127.5).round_().clamp_(-levels, levels);
                    let orig = crop_u8.narrow(1, e.y, e.h).narrow(2, e.x, e.w).to_device(ensemble.device);
                    // The extent's view of δ takes the original bytes in (promoted to float).
                    let mut out = crop(&delta, e);
                    let _ = out.g_add_(&orig.unsqueeze(0)).clamp_(0.0, 255.0);
                    out.squeeze_dim(0).to_kind(Kind::Uint8)
                })
                .collect()
        });
        // The disruption reached by the quantized faces (Veil's own crops), against the clean outputs
        // the attack used; of the face's own pixels where it was attacked at a smaller size.
        let units: Vec<Tensor> = protected
            .iter()
            .zip(&faces)
            .zip(&extents)
            .map(|((p, f), e)| {
                to_unit(&p.narrow(1, f.y - e.y, f.h).narrow(2, f.x - e.x, f.w), ensemble.device)
            })
            .collect();
        if shrink.iter().any(Option::is_some) {
            let own: Vec<Tensor> = crops
                .iter()
                .zip(&faces)
                .map(|(c, f)| to_unit(&c.narrow(1, f.y, f.h).narrow(2, f.x, f.w), ensemble.device))
                .collect();
            targets = clean_outputs(ensemble, &own)?;
        }
        let losses = tch::no_grad(|| ensemble.disruption_batch(&units, &targets))?;
        for (((i, target), protected), losses) in chunk.iter().zip(&protected).zip(losses) {
            let (w, h) = size_of(*i);
            let region = target.extent(w, h);
            let (out, reports) = &mut outs[*i];
            out.narrow(1, region.y, region.h)
                .narrow(2, region.x, region.w)
                .copy_(&protected.to_device(Device::Cpu));
            reports.push(RegionReport { region, losses });
        }
    }
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-element gradient of [`focused_loss`] on rows whose output is off the target by `a[r]`
    /// everywhere (row MSE `a[r]²`), per row.
    fn focused_pull(a: &[f32], focus: f64) -> Vec<f64> {
        let target = Tensor::zeros([a.len() as i64, 3, 4, 4], (Kind::Float, Device::Cpu));
        let out = (Tensor::from_slice(a).view([-1, 1, 1, 1]) + &target).set_requires_grad(true);
        focused_loss(&out, &target, focus).backward();
        let g = out.grad().select(1, 0).select(1, 0).select(1, 0);
        (0..a.len() as i64).map(|r| g.double_value(&[r])).collect()
    }

    #[test]
    fn only_a_face_larger_than_detail_times_the_input_is_attacked_shrunk() {
        let face = Region { x: 100, y: 50, w: 800, h: 1000 };
        let context = Region { x: 0, y: 0, w: 1200, h: 1600 };
        // 4 × 128 = 512 px for the face's longer side (1000): everything scaled by 0.512.
        assert_eq!(attack_size(&face, &context, 128, 4.0), Some((819, 614)));
        // Small enough already, off, or no generator input to go by: its own resolution.
        assert_eq!(attack_size(&face, &context, 128, 8.0), None);
        assert_eq!(attack_size(&Region { w: 512, h: 512, ..face }, &context, 128, 4.0), None);
        assert_eq!(attack_size(&face, &context, 128, 0.0), None);
        assert_eq!(attack_size(&face, &context, 0, 4.0), None);
        // A context never shrinks to nothing.
        let sliver = Region { x: 0, y: 0, w: 10_000, h: 1 };
        assert_eq!(attack_size(&Region { w: 10_000, ..sliver }, &sliver, 32, 1.0), Some((1, 32)));
    }

    #[test]
    fn a_region_and_an_aligned_crop_scale_with_the_image() {
        let r = Region { x: 10, y: 21, w: 100, h: 51 };
        // Edges are scaled and rounded, so a region's far edge lands where the image's does.
        assert_eq!(r.resized(0.5, 0.5), Region { x: 5, y: 11, w: 50, h: 25 });
        assert_eq!(r.resized(2.0, 3.0), Region { x: 20, y: 63, w: 200, h: 153 });
        assert_eq!(Region { x: 0, y: 0, w: 3, h: 3 }.resized(0.1, 0.1).w, 1);
        // An aligned crop keeps its center (in scaled coordinates), its angle and its squareness.
        let a = Aligned { square: Region { x: 100, y: 200, w: 300, h: 300 }, angle: 0.25 };
        let b = a.resized(0.5, 0.5);
        assert_eq!(b.square, Region { x: 50, y: 100, w: 150, h: 150 });
        assert_eq!(b.angle, 0.25);
    }

    #[test]
    fn the_focused_loss_pulls_like_the_mse_below_the_threshold_and_fades_past_it() {
        // Far below the threshold (MSE 1e-4 and 4e-4): focus 1 pulls in proportion to the MSE's own
        // gradient (2a, so twice as hard on the row twice as far off) ...
        let g = focused_pull(&[0.01, 0.02], 1.0);
        assert!((g[1] / g[0] - 2.0).abs() < 0.05, "{g:?}");
        // ... a small focus relatively (the MSE's gradient over the MSE, 2/a: half as hard) ...
        let g = focused_pull(&[0.01, 0.02], 0.01);
        assert!((g[1] / g[0] - 0.5).abs() < 0.01, "{g:?}");
        // ... a focus of 2 leans on the row nearer the threshold (as a³: eight times as hard) ...
        let g = focused_pull(&[0.01, 0.02], 2.0);
        assert!((g[1] / g[0] - 8.0).abs() < 0.1, "{g:?}");
        // ... and a row at MSE 1, 20 times the threshold, pulls far less than one right at it.
        let g = focused_pull(&[THRESHOLD.sqrt() as f32, 1.0], 1.0);
        assert!(g[1] < g[0] / 20.0 && g[1] > 0.0, "{g:?}");
    }

    #[test]
    fn regions_merge_when_they_overlap_and_clip_to_the_image() {
        let r = |x, y, w, h| Region { x, y, w, h };
        let merge = |rs: &[Region]| -> Vec<Region> {
            let targets: Vec<Target> = rs.iter().copied().map(Target::face).collect();
            merge_targets(&targets, 100, 100).iter().map(|t| t.face).collect()
        };
        let merged = merge(&[r(0, 0, 10, 10), r(50, 50, 10, 10), r(8, 8, 10, 10), r(17, 17, 5, 5)]);
        assert_eq!(merged, [r(0, 0, 22, 22), r(50, 50, 10, 10)]);
        assert_eq!(merge(&[r(-5, 90, 20, 20)]), [r(0, 90, 15, 10)]);
        assert!(merge(&[r(200, 200, 5, 5)]).is_empty());
    }

    #[test]
    fn targets_merge_on_their_extents_and_keep_their_aligned_crops() {
        let r = |x, y, w, h| Region { x, y, w, h };
        let up = Aligned::upright;
        let a = Target { face: r(0, 40, 50, 50), aligned: vec![up(r(0, 20, 60, 60))] };
        assert_eq!(a.extent(1000, 1000), r(0, 20, 60, 70));
        // b's face is clear of a's face but not of a's aligned crop: they merge.
        let b = Target { face: r(55, 0, 30, 30), aligned: Vec::new() };
        let far = Target { face: r(200, 200, 20, 20), aligned: vec![up(r(190, 190, 40, 40))] };
        let merged = merge_targets(&[a, b, far.clone()], 1000, 1000);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].face, r(0, 0, 85, 90));
        assert_eq!(merged[0].aligned, [up(r(0, 20, 60, 60))]);
        assert_eq!(merged[1], far);
        // Clipped to the image; an aligned crop wholly outside it is dropped.
        let edge = Target { face: r(-10, 0, 30, 30), aligned: vec![up(r(-50, -50, 20, 20))] };
        assert_eq!(merge_targets(&[edge], 100, 100), [Target::face(r(0, 0, 20, 30))]);
        // A turned crop reaching past the image stays whole (an aligner samples past the edge); the
        // extent, around its corners, is clipped.
        let turned = Aligned { square: r(-10, 10, 40, 40), angle: 45.0 };
        assert_eq!(turned.bounds(), r(-19, 1, 58, 58));
        let t = Target { face: r(0, 20, 20, 20), aligned: vec![turned] };
        let merged = merge_targets(std::slice::from_ref(&t), 100, 100);
        assert_eq!(merged[0].aligned, [turned]);
        assert_eq!(merged[0].extent(100, 100), r(0, 1, 39, 58));
    }

    #[test]
    fn a_turned_cut_is_the_square_turned_upright() {
        // A 40×40 image, dark, with a bright mark 10 px left of the center.
        let x = Tensor::full([1, 3, 40, 40], -1.0, (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 18, 4).narrow(3, 8, 4).fill_(1.0);
        let square = Region { x: 5, y: 5, w: 30, h: 30 };
        assert!(cut(&x, &Aligned::upright(square)).equal(&crop(&x, &square)));
        // The face tilted by 90° counter-clockwise has its top on the left: cut upright, the mark is
        // on top, 10 px above the center of the 30 px square.
        let up = cut(&x, &Aligned { square, angle: 90.0 });
        assert_eq!(up.size(), [1, 3, 30, 30]);
        let at = |y: i64, x: i64| up.double_value(&[0, 0, y, x]);
        assert!(at(5, 15) > 0.9 && at(25, 15) < -0.9 && at(15, 5) < -0.9, "{}", at(5, 15));
        // The cut passes gradients back to the image.
        let x = x.set_requires_grad(true);
        cut(&x, &Aligned { square, angle: 30.0 }).sum(Kind::Float).backward();
        assert!(x.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn a_cut_from_the_part_it_reads_is_the_cut_from_the_whole_context() {
        let x = with_torch_seed(5, || Tensor::rand([1, 3, 60, 50], (Kind::Float, Device::Cpu)));
        for w in [
            Aligned::upright(Region { x: 4, y: 6, w: 30, h: 30 }),
            Aligned { square: Region { x: 10, y: 12, w: 30, h: 30 }, angle: 12.0 },
            // Turned past the context's top left corner: reflected at the context's own edge.
            Aligned { square: Region { x: -6, y: -4, w: 40, h: 40 }, angle: -20.0 },
        ] {
            let part = read_by(&w, 50, 60);
            let moved = Aligned { square: w.square.within(part.x, part.y), ..w };
            let diff = (cut(&crop(&x, &part), &moved) - cut(&x, &w)).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{w:?} from {part:?}: {diff}");
        }
    }

    #[test]
    fn framings_scale_and_shift_the_face_and_stay_inside_the_context() {
        let face = Region { x: 30, y: 40, w: 100, h: 100 };
        assert_eq!(face.framed(1.0, 0.0, 0.0, 200, 200), face);
        // 1.2 times the side around the same center.
        assert_eq!(face.framed(1.2, 0.0, 0.0, 200, 200), Region { x: 20, y: 30, w: 120, h: 120 });
        // Moved right and up by a tenth of the side.
        assert_eq!(face.framed(1.0, 0.1, -0.1, 200, 200), Region { x: 40, y: 30, w: 100, h: 100 });
        // Pushed back inside a context that is too small, and shrunk to fit it.
        assert_eq!(face.framed(1.2, 0.0, 0.0, 140, 200), Region { x: 20, y: 30, w: 120, h: 120 });
        assert_eq!(face.framed(1.2, 0.0, 0.0, 130, 200), Region { x: 10, y: 30, w: 120, h: 120 });
        assert_eq!(face.framed(2.0, 0.0, 0.0, 150, 150), Region { x: 0, y: 0, w: 150, h: 150 });
        // The context the largest default framing needs, clipped to the image.
        let reach = Framing::DEFAULT.reach();
        assert!((reach - 0.225).abs() < 1e-9, "{reach}");
        assert_eq!(face.grown(reach, 1000, 1000), Region { x: 7, y: 17, w: 146, h: 146 });
        assert_eq!(face.grown(reach, 150, 1000), Region { x: 7, y: 17, w: 143, h: 146 });
        assert_eq!(face.grown(0.0, 1000, 1000), face);
    }

    #[test]
    fn feather_mask_is_one_inside_and_falls_to_the_edges() {
        let m = feather_mask(40, 40, 0.1, Device::Cpu);
        assert_eq!(m.double_value(&[0, 0, 20, 20]), 1.0);
        let corner = m.double_value(&[0, 0, 0, 0]);
        assert!(corner > 0.0 && corner < 0.1, "{corner}");
        assert_eq!(feather_mask(8, 8, 0.0, Device::Cpu).min().double_value(&[]), 1.0);
    }

    #[test]
    fn max_levels_matches_the_paper_epsilon() {
        assert_eq!(max_levels(0.05), 6); // 6 / 127.5 = 0.047 <= 0.05
        assert_eq!(max_levels(8.0 / 127.5), 8);
    }

    #[test]
    fn rng_is_reproducible() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        assert!((0..1000).map(|_| a.unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
