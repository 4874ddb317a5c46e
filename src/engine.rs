//! libtorch at run time: loading its CUDA half and choosing the device tensors live on.
//!
//! The binaries link `libtorch_cpu`/`libtorch` only: nothing in them references `libtorch_cuda.so`,
//! so the linker drops it even from a CUDA build. [`cuda`] opens it once with
//! `dlopen(RTLD_NOW | RTLD_GLOBAL)` through the binary's rpath (or `LD_LIBRARY_PATH`); its static
//! initializers register the CUDA backend with libtorch. When that fails (a CPU-only machine, no
//! driver), Veil runs on the CPU and says so once in the log.

use std::{
    ffi::{c_char, c_int, c_uint, CStr},
    fmt,
    sync::OnceLock,
};

use crate::config::DeviceChoice;

/// The libtorch version the binaries were linked against (from the venv's `torch/version.py`).
pub const LIBTORCH_VERSION: &str = env!("VEIL_LIBTORCH_VERSION");
/// The directory that libtorch was linked from (the rpath); empty where the build could not tell.
pub const LIBTORCH_LIB_DIR: &str = env!("VEIL_LIBTORCH_LIB");

/// The folder the running process actually loaded `libtorch_cpu` from (the rpath, or whatever
/// `LD_LIBRARY_PATH` chose instead), read from `/proc/self/maps`; `None` where that cannot be read.
pub fn loaded_libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next().is_some_and(|name| name.starts_with("libtorch_cpu.")))
        .and_then(|path| std::path::Path::new(path).parent().map(std::path::Path::to_path_buf))
}

/// What [`cuda`] found.
#[derive(Debug, Clone)]
pub enum CudaStatus {
    /// `libtorch_cuda` loaded and libtorch sees at least one GPU.
    Available { gpus: Vec<Gpu> },
    /// No usable GPU; `reason` says why in words a user can act on.
    Unavailable { reason: String },
}

/// One GPU as the CUDA driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: usize,
    pub name: String,
    pub memory_bytes: u64,
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = self.memory_bytes as f64 / (1u64 << 30) as f64;
        write!(f, "cuda:{} {} ({gib:.1} GiB)", self.index, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine.device is {wanted} but CUDA is not available: {reason}")]
    CudaUnavailable { wanted: DeviceChoice, reason: String },
    #[error("engine.device is {wanted} but this machine has {count} GPU(s) (cuda:0 to cuda:{})", count.saturating_sub(1))]
    NoSuchGpu { wanted: DeviceChoice, count: usize },
}

/// Loads libtorch's CUDA backend on the first call and reports what it found; later calls return the
/// same answer. Logs the outcome once.
pub fn cuda() -> &'static CudaStatus {
    static STATUS: OnceLock<CudaStatus> = OnceLock::new();
    STATUS.get_or_init(|| {
        let status = load_cuda();
        match &status {
            CudaStatus::Available { gpus } => {
                for gpu in gpus {
                    tracing::info!("CUDA loaded: {gpu}");
                }
            }
            CudaStatus::Unavailable { reason } => {
                tracing::info!("CUDA not available ({reason}); using the CPU");
            }
        }
        status
    })
}

fn load_cuda() -> CudaStatus {
    const LIB: &CStr = c"libtorch_cuda.so";
    // SAFETY: dlopen with a valid C string; the handle is deliberately never closed, so the library
    // and the backend it registers stay loaded for the life of the process.
    let handle = unsafe { libc::dlopen(LIB.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return CudaStatus::Unavailable { reason: format!("cannot load libtorch_cuda.so: {}", dl_error()) };
    }
    if !tch::Cuda::is_available() {
        return CudaStatus::Unavailable {
            reason: "libtorch_cuda.so loaded, but no CUDA device is usable (no GPU or no NVIDIA driver)"
                .to_string(),
        };
    }
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    let gpus = (0..count)
        .map(|index| {
            let (name, memory_bytes) =
                driver::describe(index).unwrap_or_else(|| ("unknown GPU".to_string(), 0));
            Gpu { index, name, memory_bytes }
        })
        .collect();
    CudaStatus::Available { gpus }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc, copied at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }
}

/// The device to run on for `choice`, given what [`cuda`] found.
pub fn select_device(choice: DeviceChoice) -> Result<tch::Device, EngineError> {
    let device = device_for(choice, cuda())?;
    if device.is_cuda() {
        // The generators' inputs keep a few shapes (input size × batch): let cudnn time its
        // algorithms for each shape once and reuse the fastest.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}

fn device_for(choice: DeviceChoice, status: &CudaStatus) -> Result<tch::Device, EngineError> {
    match (choice, status) {
        (DeviceChoice::Cpu, _) => Ok(tch::Device::Cpu),
        (DeviceChoice::Auto, CudaStatus::Available { gpus }) if !gpus.is_empty() => Ok(tch::Device::Cuda(0)),
        (DeviceChoice::Auto, _) => Ok(tch::Device::Cpu),
        (DeviceChoice::Cuda(n), CudaStatus::Available { gpus }) if n < gpus.len() => Ok(tch::Device::Cuda(n)),
        (DeviceChoice::Cuda(_), CudaStatus::Available { gpus }) => {
            Err(EngineError::NoSuchGpu { wanted: choice, count: gpus.len() })
        }
        (DeviceChoice::Cuda(_), CudaStatus::Unavailable { reason }) => {
            Err(EngineError::CudaUnavailable { wanted: choice, reason: reason.clone() })
        }
    }
}

/// A device in words for logs and `veil doctor`: `cpu (2 threads)`, `cuda:0 NVIDIA H100 (79.1 GiB)`.
pub fn describe(device: tch::Device) -> String {
    match (device, cuda()) {
        (tch::Device::Cuda(n), CudaStatus::Available { gpus }) => {
            gpus.get(n).map_or_else(|| format!("cuda:{n}"), Gpu::to_string)
        }
        (tch::Device::Cuda(n), _) => format!("cuda:{n}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}

/// GPU memory in use on the current CUDA context (total minus free, all processes), or `None` on
/// the CPU or when the driver does not answer.
pub fn gpu_memory_used(device: tch::Device) -> Option<u64> {
    match device {
        tch::Device::Cuda(_) => driver::memory_used(),
        _ => None,
    }
}

/// The CUDA driver API (`libcuda.so.1`), used only to name GPUs and size their memory: libtorch's C
/// API exposes neither. Its signatures have been stable since CUDA 3.2.
mod driver {
    use super::*;

    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
    type CuMemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;

    /// Total minus free memory of the GPU whose context is current on this thread.
    pub(super) fn memory_used() -> Option<u64> {
        // SAFETY: plain dlopen of the driver (already loaded by libtorch), never closed.
        let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: cuMemGetInfo_v2 has this signature; it fails cleanly without a current context.
        unsafe {
            let get: CuMemGetInfo = std::mem::transmute(symbol(handle, c"cuMemGetInfo_v2")?);
            let (mut free, mut total) = (0usize, 0usize);
            (get(&mut free, &mut total) == 0).then(|| (total - free.min(total)) as u64)
        }
    }

    fn symbol(handle: *mut libc::c_void, name: &CStr) -> Option<*mut libc::c_void> {
        // SAFETY: handle is a live dlopen handle and name a valid C string.
        let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!sym.is_null()).then_some(sym)
    }

    /// Name and total memory of GPU `index`, or `None` when the driver does not answer.
    pub(super) fn describe(index: usize) -> Option<(String, u64)> {
        // SAFETY: plain dlopen of the driver, never closed.
        let handle = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: each symbol is transmuted to its documented driver-API signature.
        unsafe {
            let init: CuInit = std::mem::transmute(symbol(handle, c"cuInit")?);
            let get: CuDeviceGet = std::mem::transmute(symbol(handle, c"cuDeviceGet")?);
            let get_name: CuDeviceGetName = std::mem::transmute(symbol(handle, c"cuDeviceGetName")?);
            let total_mem: CuDeviceTotalMem = std::mem::transmute(symbol(handle, c"cuDeviceTotalMem_v2")?);
            if init(0) != 0 {
                return None;
            }
            let mut device: c_int = 0;
            if get(&mut device, c_int::try_from(index).ok()?) != 0 {
                return None;
            }
            let mut name = [0 as c_char; 256];
            if get_name(name.as_mut_ptr(), name.len() as c_int, device) != 0 {
                return None;
            }
            let mut bytes: usize = 0;
            if total_mem(&mut bytes, device) != 0 {
                return None;
            }
            let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            Some((name, bytes as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: usize) -> CudaStatus {
        CudaStatus::Available {
            gpus: (0..n).map(|index| Gpu { index, name: "GPU".into(), memory_bytes: 1 << 34 }).collect(),
        }
    }

    fn none() -> CudaStatus {
        CudaStatus::Unavailable { reason: "no driver".into() }
    }

    #[test]
    fn auto_prefers_cuda_and_falls_back_to_cpu() {
        assert_eq!(device_for(DeviceChoice::Auto, &gpus(2)).unwrap(), tch::Device::Cuda(0));
        assert_eq!(device_for(DeviceChoice::Auto, &none()).unwrap(), tch::Device::Cpu);
        assert_eq!(device_for(DeviceChoice::Cpu, &gpus(1)).unwrap(), tch::Device::Cpu);
    }

    #[test]
    fn explicit_cuda_without_gpu_is_an_error_that_says_why() {
        let err = device_for(DeviceChoice::Cuda(0), &none()).unwrap_err().to_string();
        assert!(err.contains("cuda:0") && err.contains("no driver"), "{err}");
        let err = device_for(DeviceChoice::Cuda(2), &gpus(2)).unwrap_err().to_string();
        assert!(err.contains("2 GPU(s)"), "{err}");
        assert_eq!(device_for(DeviceChoice::Cuda(1), &gpus(2)).unwrap(), tch::Device::Cuda(1));
    }

    #[test]
    fn the_loaded_libtorch_is_found() {
        if cfg!(target_os = "linux") {
            let dir = loaded_libtorch_dir().expect("libtorch_cpu is mapped");
            assert!(dir.join("libtorch_cpu.so").is_file(), "{}", dir.display());
        }
    }

    #[test]
    fn libtorch_version_is_recorded_at_build_time() {
        assert!(LIBTORCH_VERSION.starts_with("2.11.0"), "{LIBTORCH_VERSION}");
    }

    #[test]
    fn cuda_probe_answers_on_any_machine() {
        // On a machine without a GPU this must say why; with one it must name it.
        match cuda() {
            CudaStatus::Available { gpus } => assert!(!gpus.is_empty()),
            CudaStatus::Unavailable { reason } => assert!(!reason.is_empty()),
        }
        let device = select_device(DeviceChoice::Auto).unwrap();
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, device));
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 4.0);
    }
}
