//! Veil protects personal photos against deepfakes.
//!
//! # Layout
//!
//! The flow, once every part has landed: `watch` notices a photo in a share folder → `store` records
//! it as a job → a worker decodes it (`imageio`), finds the faces (`faces`), computes an adversarial
//! perturbation against the generator ensemble (`protect`, on `engine`'s device) → `imageio` writes
//! the protected copy with the original's metadata → `store` marks the job done. `control` lets the
//! `veil` CLI see and steer the daemon.
//!
//! What is here now:
//! - [`config`]: the TOML configuration, its defaults and its errors (file, line, key).
//! - [`paths`]: the platform's places for config, state, socket and models.
//! - [`imageio`]: decoding and encoding photos with their metadata, atomic safe writes.
//! - [`engine`]: libtorch at run time: loading CUDA, choosing the device.
//! - [`models`]: the models folder: generator manifest and face-detector weights.
//! - [`faces`]: MTCNN face detection in tch: boxes, scores, landmarks and crop regions at full resolution.
//! - [`logging`]: `tracing` to the systemd journal or to stderr.
//! - [`protect`]: the attack: PGD against the generator ensemble, class-transferable and
//!   spread-spectrum, face region by face region, quantized within ε.
//! - [`doctor`]: the checks behind `veil doctor`.
//! - [`preview`]: the before/after sheet of `veil preview`: what generators make of a photo's faces
//!   before and after protection.
//! - [`service`]: `veild`'s main loop, which takes its configuration and its shutdown signal.
//! - [`watch`]: which files a share folder takes, scans, file-system events.
//! - [`store`]: the SQLite job database, one row per source file.
//! - [`worker`]: the engine thread and the [`worker::Protector`] it runs photos through.
//! - [`systemd`]: `sd_notify` (ready, status, watchdog).
//! - [`service_unit`]: `veil service install`: the systemd user unit or launchd agent for `veild`.
//! - [`desktop`]: `veild`'s desktop notifications: one per batch of photos, with what failed and why.
//! - [`control`]: the control socket (HTTP/1.1 + JSON under `/v1/`) and the client `veil` uses.
//!
//! The binaries in `src/bin/` only parse arguments, wire these together and print errors.

pub mod bench;
pub mod config;
pub mod control;
pub mod desktop;
pub mod doctor;
pub mod engine;
pub mod eval;
pub mod faces;
pub mod imageio;
pub mod logging;
pub mod models;
pub mod paths;
pub mod pipeline;
pub mod power;
pub mod preview;
pub mod protect;
pub mod quality;
pub mod service;
pub mod service_unit;
pub mod store;
pub mod systemd;
pub mod watch;
pub mod worker;
