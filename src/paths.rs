//! The platform's places for Veil's files: config, state, control socket, models.
//!
//! Linux follows XDG (`~/.config/veil`, `~/.local/share/veil`, `$XDG_RUNTIME_DIR/veil`); macOS uses
//! `~/Library/Application Support/veil` and, having no runtime directory, a `run` folder in the cache
//! directory for the socket. Everything here is computed, nothing is created.

use std::path::{Path, PathBuf};

use directories::ProjectDirs;

#[derive(Debug, thiserror::Error)]
#[error("cannot find your home directory (is HOME set?): Veil keeps its configuration and state there")]
pub struct NoHomeError;

/// Default locations, resolved once at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Dirs {
    pub home: Option<PathBuf>,
    /// Holds `veil.toml`.
    pub config_dir: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub models_dir: PathBuf,
}

impl Dirs {
    /// The current user's directories, from `HOME` and the XDG variables.
    pub fn from_env() -> Result<Dirs, NoHomeError> {
        let home = directories::BaseDirs::new().map(|b| b.home_dir().to_path_buf());
        let project = ProjectDirs::from("", "", "veil").ok_or(NoHomeError)?;
        let state_dir = project.state_dir().unwrap_or_else(|| project.data_dir()).to_path_buf();
        let runtime =
            project.runtime_dir().map(Path::to_path_buf).unwrap_or_else(|| project.cache_dir().join("run"));
        Ok(Dirs {
            home,
            config_dir: Some(project.config_dir().to_path_buf()),
            socket: runtime.join("veil.sock"),
            models_dir: default_models_dir(project.data_dir()),
            state_dir,
        })
    }

    /// Fixed directories under a fake home, for tests that must not look at the real one.
    pub fn for_tests(home: &Path) -> Dirs {
        Dirs {
            home: Some(home.to_path_buf()),
            config_dir: Some(home.join(".config/veil")),
            state_dir: home.join(".local/state/veil"),
            socket: home.join(".run/veil/veil.sock"),
            models_dir: home.join(".local/share/veil/models"),
        }
    }
}

/// The models folder when the config names none: next to an installed binary
/// (`<prefix>/share/veil/models`), else the checkout the binary was built from (`make run`), else the
/// data directory.
fn default_models_dir(data_dir: &Path) -> PathBuf {
    let installed = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|prefix| prefix.join("share/veil/models")));
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    installed
        .filter(|p| p.join("manifest.toml").is_file())
        .or_else(|| Some(checkout).filter(|p| p.is_dir()))
        .unwrap_or_else(|| data_dir.join("models"))
}

/// Expands a leading `~` to `home`; other paths are returned as they are.
pub fn expand_home(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = Some(Path::new("/home/ann"));
        assert_eq!(expand_home(Path::new("~/Pictures"), home), Path::new("/home/ann/Pictures"));
        assert_eq!(expand_home(Path::new("~"), home), Path::new("/home/ann"));
        assert_eq!(expand_home(Path::new("/srv/~/x"), home), Path::new("/srv/~/x"));
        assert_eq!(expand_home(Path::new("~ann/x"), home), Path::new("~ann/x"));
        assert_eq!(expand_home(Path::new("~/x"), None), Path::new("~/x"));
    }
}
