//! The generators the protection attacks (or, for `veil eval`, judges against), loaded from the
//! manifest as TorchScript on the engine device.

use std::{collections::BTreeMap, path::Path};

use tch::{CModule, Device, Kind, Tensor};

use super::{spread::Transform, ProtectError};
use crate::{
    config::FuseClean,
    models::{Manifest, Role},
};

/// One loaded generator with its attacked condition vectors.
#[derive(Debug)]
pub struct Generator {
    pub name: String,
    pub role: Role,
    /// Square side the generator takes.
    pub input_size: i64,
    /// `[K,C]` on the device (`[1,0]` for unconditional models).
    pub conditions: Tensor,
    /// Weight of this generator's loss (see `Params::focus` for how losses are scaled).
    pub weight: f64,
    /// Number format the module runs in (`Float`, or `Half`/`BFloat16` on CUDA); inputs are cast to
    /// it and outputs back to `Float`.
    kind: Kind,
    /// Inputs handed over in channels-last layout (`engine.channels_last`).
    channels_last: bool,
    module: CModule,
}

impl Generator {
    pub fn condition_count(&self) -> usize {
        self.conditions.size()[0] as usize
    }

    /// What a thread needs to run this generator ([`Runner`]).
    pub fn runner(&self) -> Runner<'_> {
        Runner {
            name: &self.name,
            module: &self.module,
            conditions: self.conditions.shallow_clone(),
            kind: self.kind,
            channels_last: self.channels_last,
        }
    }

    /// Runs the module on `x: [N,3,S,S]` with conditions `c: [N,C]`; a model that answers with the
    /// wrong shape is an error, not a panic.
    pub fn run(&self, x: &Tensor, c: &Tensor) -> Result<Tensor, ProtectError> {
        self.runner().run(x, c)
    }

    /// Faces `xs[n]: [1,3,h_n,w_n] in [-1,1]`, each resized to the input size, through `t`:
    /// `[N,3,S,S]`.
    pub fn resized(&self, xs: &[Tensor], t: Transform) -> Tensor {
        let s = self.input_size;
        let r: Vec<Tensor> = xs.iter().map(|x| super::spread::resize(x, s, s)).collect();
        t.apply(&Tensor::cat(&r, 0))
    }

    /// Every face against every attacked condition in one batch: inputs `[N*K,3,S,S]` (face-major:
    /// row `n*K + k` is face n under condition k) and conditions `[N*K,C]`.
    fn batch(&self, xs: &[Tensor], t: Transform) -> (Tensor, Tensor) {
        self.batch_resized(&self.resized(xs, t))
    }

    /// [`Generator::batch`] from faces already resized and transformed, `[N,3,S,S]`.
    fn batch_resized(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (n, k, s) = (x.size()[0], self.condition_count() as i64, self.input_size);
        let x = x.unsqueeze(1).expand([n, k, 3, s, s], false).reshape([n * k, 3, s, s]);
        (x, self.conditions.repeat([n, 1]))
    }

    /// [`Generator::resized`], made once per input size and transform: generators of one size share
    /// it (and its backward) through `shared`, which holds what was made so far.
    pub fn resized_shared(&self, shared: &mut Inputs, xs: &[Tensor], t: Transform) -> Tensor {
        let s = self.input_size;
        if let Some((_, _, x)) = shared.transformed.iter().find(|(size, tt, _)| *size == s && *tt == t) {
            return x.shallow_clone();
        }
        let resized = match shared.resized.iter().find(|(size, _)| *size == s) {
            Some((_, x)) => x.shallow_clone(),
            None => {
                let x = self.resized(xs, Transform::Identity);
                shared.resized.push((s, x.shallow_clone()));
                x
            }
        };
        let x = t.apply(&resized);
        shared.transformed.push((s, t, x.shallow_clone()));
        x
    }

    /// Every face against every attacked condition, each condition's rows through its own transform:
    /// `[N*K,3,S,S]`, face-major, row `n*K + k` face n resized and through `ts[k % ts.len()]`. Made
    /// from `shared` as [`Generator::resized_shared`] makes them; [`Generator::forward_rows`] runs it.
    pub fn rows_shared(&self, shared: &mut Inputs, xs: &[Tensor], ts: &[Transform]) -> Tensor {
        let (k, s) = (self.condition_count(), self.input_size);
        let first = ts.first().copied().unwrap_or(Transform::Identity);
        if ts.iter().take(k).all(|t| *t == first) {
            return self.batch_resized(&self.resized_shared(shared, xs, first)).0;
        }
        // K tensors [N,3,S,S] -> [N,K,3,S,S] -> [N*K,3,S,S].
        let per_condition: Vec<Tensor> =
            (0..k).map(|j| self.resized_shared(shared, xs, ts[j % ts.len()])).collect();
        Tensor::stack(&per_condition, 1).reshape([-1, 3, s, s])
    }

    /// `G(x_r, c_(r mod K))` for rows made by [`Generator::rows_shared`] (`[N*K,3,S,S]`):
    /// `[N*K,3,S,S]`.
    pub fn forward_rows(&self, x: &Tensor) -> Result<Tensor, ProtectError> {
        self.runner().forward_rows(x)
    }

    /// `G(resize(x), c)` for every face and attacked condition: `[N*K,3,S,S]`, face-major.
    pub fn forward_all(&self, xs: &[Tensor]) -> Result<Tensor, ProtectError> {
        self.forward_resized(&self.resized(xs, Transform::Identity))
    }

    /// [`Generator::forward_all`] from faces already resized (`[N,3,S,S]`).
    pub fn forward_resized(&self, x: &Tensor) -> Result<Tensor, ProtectError> {
        let (x, c) = self.batch_resized(x);
        self.run(&x, &c)
    }

    /// Of clean outputs `target` (`[N*K,3,S,S]`, face-major, as [`Generator::forward_all`] gives
    /// them), those under condition `k`: `[N,3,S,S]`.
    pub fn target_one(&self, target: &Tensor, k: usize) -> Tensor {
        let (kk, s) = (self.condition_count() as i64, self.input_size);
        target.view([-1, kk, 3, s, s]).select(1, k as i64)
    }

    /// `G(x, c_k)` for faces already resized (`x: [N,3,S,S]`): `[N,3,S,S]`.
    pub fn forward_one_resized(&self, x: &Tensor, k: usize) -> Result<Tensor, ProtectError> {
        self.runner().forward_one_resized(x, k)
    }
}

/// A generator's module (shared: `CModule` is `Sync`) with its own handle on the attacked
/// conditions: what an attack step runs on another thread (`engine.parallel_generators`). `Send`,
/// where `&Generator` is not, since a `Tensor` is not `Sync`.
pub struct Runner<'a> {
    name: &'a str,
    module: &'a CModule,
    /// `[K,C]` on the device.
    conditions: Tensor,
    kind: Kind,
    channels_last: bool,
}

impl Runner<'_> {
    /// [`Generator::run`].
    pub fn run(&self, x: &Tensor, c: &Tensor) -> Result<Tensor, ProtectError> {
        let mut input = x.to_kind(self.kind);
        if self.channels_last {
            // Still [N,3,S,S], with NHWC strides: convolutions take their channels-last kernels.
            input = input.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
        }
        let y = self
            .module
            .forward_ts(&[input, c.to_kind(self.kind)])
            .map_err(|e| ProtectError::Model {
                name: self.name.to_string(),
                message: crate::models::torch_message(&e),
            })?
            .to_kind(Kind::Float);
        if y.size() != x.size() {
            return Err(ProtectError::Model {
                name: self.name.to_string(),
                message: format!("returned {:?} for an input of {:?}", y.size(), x.size()),
            });
        }
        Ok(y)
    }

    /// [`Generator::forward_rows`].
    pub fn forward_rows(&self, x: &Tensor) -> Result<Tensor, ProtectError> {
        let n = x.size()[0] / self.conditions.size()[0];
        self.run(x, &self.conditions.repeat([n, 1]))
    }

    /// [`Generator::forward_one_resized`].
    pub fn forward_one_resized(&self, x: &Tensor, k: usize) -> Result<Tensor, ProtectError> {
        let c = self.conditions.narrow(0, k as i64, 1).expand([x.size()[0], -1], false);
        self.run(x, &c)
    }

    pub fn name(&self) -> &str {
        self.name
    }
}

/// Generator inputs made once and shared by the generators of one input size (and their backward):
/// the faces resized to each size (`[N,3,S,S]`), and those through each transform asked for.
#[derive(Default)]
pub struct Inputs {
    resized: Vec<(i64, Tensor)>,
    transformed: Vec<(i64, Transform, Tensor)>,
}

/// The loaded generators of one or more roles.
#[derive(Debug)]
pub struct Ensemble {
    pub generators: Vec<Generator>,
    pub device: Device,
    /// When an attack step runs the clean outputs in the perturbed face's generator pass
    /// (`engine.fuse_clean`, see [`Ensemble::fuses`]).
    pub fuse_clean: FuseClean,
    /// Each attack step runs every generator's forward and backward on its own thread
    /// (`engine.parallel_generators`).
    pub parallel_generators: bool,
}

/// Refuses `weights` (`protect.weights`) naming a model that `dir`'s `manifest` does not list.
pub fn check_weights(
    dir: &Path,
    manifest: &Manifest,
    weights: &BTreeMap<String, f64>,
) -> Result<(), ProtectError> {
    match weights.keys().find(|n| !manifest.models.iter().any(|m| &&m.name == n)) {
        Some(name) => Err(ProtectError::UnknownWeight {
            name: name.clone(),
            manifest: dir.join(crate::models::MANIFEST).display().to_string(),
            known: manifest.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        }),
        None => Ok(()),
    }
}

impl Ensemble {
    /// Loads every model of `roles` from `dir/manifest.toml` onto `device` in fp32, with gradients
    /// off for their parameters (backward then computes only the input gradient). `weights` overrides
    /// the loss weight (1.0) per model name.
    pub fn load(
        dir: &Path,
        roles: &[Role],
        device: Device,
        weights: &BTreeMap<String, f64>,
    ) -> Result<Ensemble, ProtectError> {
        let manifest = Manifest::load(dir)?;
        check_weights(dir, &manifest, weights)?;
        let mut generators = Vec::new();
        for entry in manifest.models.iter().filter(|m| roles.contains(&m.role)) {
            let err = |message: String| ProtectError::Model { name: entry.name.clone(), message };
            let path = dir.join(&entry.file);
            let mut module = CModule::load_on_device(&path, device)
                .map_err(|e| err(format!("{}: {}", path.display(), crate::models::torch_message(&e))))?;
            module.to(device, Kind::Float, false);
            module.set_eval();
            for (_, p) in module.named_parameters().map_err(|e| err(crate::models::torch_message(&e)))? {
                let _ = p.set_requires_grad(false);
            }
            crate::models::check_generator(&module, entry, device)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            let conditions = if entry.conditions.is_empty() {
                Tensor::zeros([1, 0], (Kind::Float, device))
            } else {
                let flat: Vec<f32> = entry.conditions.iter().flatten().copied().collect();
                Tensor::from_slice(&flat)
                    .view([entry.conditions.len() as i64, entry.attributes.len() as i64])
                    .to_device(device)
            };
            generators.push(Generator {
                name: entry.name.clone(),
                role: entry.role,
                input_size: i64::from(entry.input_size),
                conditions,
                weight: weights.get(&entry.name).copied().unwrap_or(1.0),
                kind: Kind::Float,
                channels_last: false,
                module,
            });
        }
        if generators.is_empty() {
            return Err(ProtectError::EmptyEnsemble(dir.join(crate::models::MANIFEST).display().to_string()));
        }
        Ok(Ensemble { generators, device, fuse_clean: FuseClean::Off, parallel_generators: false })
    }

    /// Applies `[engine]`: the number format (on CUDA only; the CPU stays fp32), the input layout,
    /// and how an attack step runs its generators (`fuse_clean`, `parallel_generators`, which only
    /// the CPU takes: an attack with it did not finish on an H200, so CUDA runs the generators in
    /// turn and logs a warning). Returns the number format in effect.
    pub fn configure(&mut self, engine: &crate::config::EngineConfig) -> Kind {
        for g in &mut self.generators {
            g.channels_last = engine.channels_last;
        }
        self.fuse_clean = engine.fuse_clean;
        self.parallel_generators = engine.parallel_generators && !self.device.is_cuda();
        // Said once per process: `veil eval` configures a second ensemble for its baselines.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if engine.parallel_generators
            && self.device.is_cuda()
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "engine.parallel_generators is ignored on CUDA (an attack with it did not finish on an \
                 H200): the generators run in turn"
            );
        }
        self.set_precision(engine.precision)
    }

    /// Whether an attack pass over `faces` faces runs each step's clean outputs in the perturbed
    /// rows' pass (`engine.fuse_clean` on this ensemble's device).
    pub fn fuses(&self, faces: usize) -> bool {
        fuses(self.fuse_clean, faces, self.device)
    }

    /// Runs the generators in `precision` when the ensemble is on CUDA (the CPU stays fp32). Returns
    /// the number format in effect.
    pub fn set_precision(&mut self, precision: crate::config::Precision) -> Kind {
        use crate::config::Precision;
        let kind = match (self.device, precision) {
            (Device::Cpu, _) | (_, Precision::Fp32) => Kind::Float,
            (_, Precision::Fp16) => Kind::Half,
            (_, Precision::Bf16) => Kind::BFloat16,
        };
        for g in &mut self.generators {
            if g.kind != kind {
                g.module.to(self.device, kind, false);
                g.kind = kind;
            }
        }
        kind
    }

    /// Keeps only the attacked conditions `range` of every conditional generator (a single-condition
    /// attack is `0..1`); unconditional generators keep their one empty condition.
    pub fn restrict_conditions(&mut self, range: std::ops::Range<i64>) {
        for g in &mut self.generators {
            if g.conditions.size()[1] > 0 {
                let end = range.end.min(g.conditions.size()[0]);
                g.conditions = g.conditions.narrow(0, range.start, end - range.start);
            }
        }
    }

    /// Per generator and attacked condition, what an attacker who applies `defense` to every input
    /// sees: `MSE(G(T(x_prot), c), G(T(x), c))`, both `[1,3,h,w] in [-1,1]`.
    pub fn mse_per_condition(
        &self,
        x: &Tensor,
        x_prot: &Tensor,
        defense: Transform,
    ) -> Result<Vec<(String, Vec<f64>)>, ProtectError> {
        tch::no_grad(|| {
            self.generators
                .iter()
                .map(|g| {
                    let (xc, c) = g.batch(std::slice::from_ref(x), defense);
                    let clean = g.run(&xc, &c)?;
                    let prot = g.run(&g.batch(std::slice::from_ref(x_prot), defense).0, &c)?;
                    let per = (prot - clean).square().mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
                    Ok((g.name.clone(), Vec::<f64>::try_from(per).unwrap_or_default()))
                })
                .collect()
        })
    }

    /// Per face of `xs_prot` (each `[1,3,h,w] in [-1,1]`), per generator: `MSE(G(x_prot), G(x))`
    /// averaged over its attacked conditions (no transform), with `targets` the clean outputs
    /// (per generator, `[N*K,3,S,S]` face-major, as [`Generator::forward_all`] gives them). One
    /// batched pass per generator input size and generator.
    pub fn disruption_batch(
        &self,
        xs_prot: &[Tensor],
        targets: &[Tensor],
    ) -> Result<Vec<Vec<(String, f64)>>, ProtectError> {
        let n = xs_prot.len();
        let mut per_face: Vec<Vec<(String, f64)>> = vec![Vec::with_capacity(self.generators.len()); n];
        let mut inputs = Inputs::default();
        for (g, target) in self.generators.iter().zip(targets) {
            let x_in = g.resized_shared(&mut inputs, xs_prot, Transform::Identity);
            let k = g.condition_count() as i64;
            // [N*K] -> [N]: the mean over conditions and pixels of each face.
            let per = (g.forward_resized(&x_in)? - target)
                .square()
                .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
                .view([n as i64, k])
                .mean_dim(&[1i64][..], false, Kind::Float);
            let values = Vec::<f64>::try_from(per).map_err(|e| ProtectError::Model {
                name: g.name.clone(),
                message: format!("cannot read its disruption: {e}"),
            })?;
            for (face, v) in per_face.iter_mut().zip(values) {
                face.push((g.name.clone(), v));
            }
        }
        Ok(per_face)
    }
}

/// `engine.fuse_clean` for an attack pass over `faces` faces on `device`: `auto` fuses on CUDA when
/// the pass attacks one face (an H200 waits on launches there: 0.161 against 0.286 s), not for more
/// (8 faces: 0.421 against 0.336 s, the backward through the clean rows costs more) nor on the CPU.
fn fuses(setting: FuseClean, faces: usize, device: Device) -> bool {
    match setting {
        FuseClean::On => true,
        FuseClean::Off => false,
        FuseClean::Auto => device.is_cuda() && faces == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_fuses_one_face_on_cuda_only() {
        let cuda = Device::Cuda(0);
        assert!(fuses(FuseClean::Auto, 1, cuda));
        assert!(!fuses(FuseClean::Auto, 2, cuda));
        assert!(!fuses(FuseClean::Auto, 1, Device::Cpu));
        assert!(fuses(FuseClean::On, 8, Device::Cpu));
        assert!(!fuses(FuseClean::Off, 1, cuda));
    }
}
