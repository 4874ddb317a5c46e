//! Links the binaries to the libtorch that torch-sys found (the project's `.venv`, `torch/lib`) with an
//! rpath, so they run without `LD_LIBRARY_PATH`, and records that libtorch's version for `veil doctor`.

use std::{env, fs, path::Path};

/// Where the .deb's binaries look for libtorch when the build machine's is not there.
const SYSTEM_LIBTORCH: &str = "/opt/veil/torch/torch/lib";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = env::var("DEP_TCH_LIBTORCH_LIB") else {
        // torch-sys only reports the directory on Linux and macOS; elsewhere the loader's own
        // search path has to find libtorch.
        println!("cargo:rustc-env=VEIL_LIBTORCH_LIB=");
        println!("cargo:rustc-env=VEIL_LIBTORCH_VERSION=unknown");
        return;
    };
    // The rpath covers every binary of the package, tests included. `libtorch_cuda.so` sits in the same
    // directory and is opened at run time through the same rpath (see `engine::cuda`).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // Second, the fixed place the .deb documents for machines that did not build Veil: PyTorch
    // installed with `pip install --target /opt/veil/torch torch==<the same version>` (README,
    // "Debian package"). A real directory, not a link, so libtorch_cuda's own `$ORIGIN` rpaths to the
    // nvidia/* wheels next to it resolve. Searched only when the first is missing.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{SYSTEM_LIBTORCH}");
    println!("cargo:rustc-env=VEIL_LIBTORCH_LIB={lib_dir}");
    // The PyPI wheel keeps its version in torch/version.py: `__version__ = '2.11.0+cu130'`.
    let version_py = Path::new(&lib_dir).join("..").join("version.py");
    println!("cargo:rerun-if-changed={}", version_py.display());
    let version = fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let rest = line.strip_prefix("__version__")?;
                let value = rest.split('=').nth(1)?.trim();
                Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=VEIL_LIBTORCH_VERSION={version}");
}
