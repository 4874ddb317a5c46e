//! `veild`'s service: takes a resolved configuration and a shutdown future, prepares the folders,
//! reports what it runs on, and runs until shutdown.
//!
//! It is a library function so that tests can run it in a temporary home with their own shutdown;
//! the `veild` binary only wires it to the process's signals.

use std::{future::Future, path::PathBuf};

use crate::{
    config::{Config, Source},
    engine::{self, EngineError},
    models::Inventory,
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Device(#[from] EngineError),
    #[error("cannot create folder {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("the engine probe stopped unexpectedly: {0}")]
    Probe(String),
}

/// Runs the service until `shutdown` completes. `config` must be resolved ([`Config::resolve`]).
pub async fn run(
    config: Config,
    source: Source,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    tracing::info!("veild {} starting", env!("CARGO_PKG_VERSION"));
    tracing::info!("config: {source}");

    // Loading libtorch's CUDA half and the model files blocks for a moment: keep it off the runtime.
    let device_choice = config.engine.device;
    let models_dir = config.models.dir.clone().unwrap_or_default();
    let (device, inventory) = tokio::task::spawn_blocking(move || {
        engine::select_device(device_choice).map(|d| (engine::describe(d), Inventory::take(&models_dir)))
    })
    .await
    .map_err(|e| ServiceError::Probe(e.to_string()))??;
    tracing::info!("device: {device} (engine.device = \"{device_choice}\")");
    log_models(&inventory);

    for folder in &config.folders {
        for dir in [&folder.path, &folder.output] {
            std::fs::create_dir_all(dir)
                .map_err(|source| ServiceError::Folder { path: dir.clone(), source })?;
        }
        tracing::info!(
            "share folder {} -> protected copies in {}",
            folder.path.display(),
            folder.output.display()
        );
    }
    if config.folders.is_empty() {
        tracing::warn!("no folders configured: nothing to watch");
    } else {
        tracing::warn!(
            "this build does not watch folders or protect photos yet: photos dropped into the share \
             folders are left as they are and no protected copy is written"
        );
    }

    shutdown.await;
    tracing::info!("shutting down");
    Ok(())
}

fn log_models(inventory: &Inventory) {
    tracing::info!("models: {}", inventory.dir.display());
    if inventory.detector_ready() {
        tracing::info!("face detector: MTCNN loaded");
    }
    for (path, loaded) in &inventory.detector {
        if let Err(e) = loaded {
            tracing::error!("face detector weights {}: {e}", path.display());
        }
    }
    match &inventory.generators {
        Ok(models) => {
            for (entry, loaded) in models {
                match loaded {
                    Ok(()) => tracing::info!("generator {} ({:?}) loaded", entry.name, entry.role),
                    Err(e) => tracing::error!("generator {}: {e}", entry.name),
                }
            }
        }
        Err(e) => tracing::error!("no generators: {e}"),
    }
}
