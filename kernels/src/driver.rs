//! Probing for the NVIDIA driver before any CUDA call.
//!
//! With cudarc's `dynamic-loading`, a missing `libcuda` panics inside cudarc at first use
//! instead of returning an error (`docs/gpu.md`). So before a CUDA device is created we open the
//! driver library ourselves and ask it how many devices there are; any failure becomes a
//! sentence the UI can show, and the engine falls back to the CPU.

use std::ffi::c_int;

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverProbe {
    /// The driver library loaded, initialised, and reports this many devices (at least one).
    Available {
        device_count: u32,
        driver_version: u32,
    },
    /// No usable driver; the reason is a user-facing sentence.
    Unavailable { reason: String },
}

impl DriverProbe {
    #[must_use]
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available { .. })
    }
}

/// Library names tried in order; the first is what every driver install provides.
#[cfg(not(windows))]
const DRIVER_LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so"];
#[cfg(windows)]
const DRIVER_LIBRARIES: &[&str] = &["nvcuda.dll"];

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(version: *mut c_int) -> c_int;

/// Opens the CUDA driver library and counts devices, without touching cudarc or candle.
#[must_use]
pub fn probe_cuda_driver() -> DriverProbe {
    for name in DRIVER_LIBRARIES {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, which are designed
        // to be loaded this way (it is how every CUDA runtime finds the driver).
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return probe_library(&library),
            Err(error) => tracing::debug!("CUDA driver library {name}: {error}"),
        }
    }
    DriverProbe::Unavailable {
        reason: "no NVIDIA driver found".to_owned(),
    }
}

fn probe_library(library: &libloading::Library) -> DriverProbe {
    // SAFETY: the symbol names and signatures are the CUDA driver API's stable C ABI
    // (cuda.h: CUresult cuInit(unsigned int); cuDeviceGetCount(int*); cuDriverGetVersion(int*)).
    let symbols = unsafe {
        (
            library.get::<CuInit>(b"cuInit\0"),
            library.get::<CuDeviceGetCount>(b"cuDeviceGetCount\0"),
            library.get::<CuDriverGetVersion>(b"cuDriverGetVersion\0"),
        )
    };
    let (Ok(cu_init), Ok(cu_device_get_count), Ok(cu_driver_get_version)) = symbols else {
        return DriverProbe::Unavailable {
            reason: "the NVIDIA driver library lacks the CUDA driver API; reinstall the driver"
                .to_owned(),
        };
    };
    let mut count: c_int = 0;
    let mut version: c_int = 0;
    // SAFETY: valid function pointers from the loaded library; the out-pointers point to live
    // stack integers for the duration of each call.
    let (init, counted, versioned) = unsafe {
        (
            cu_init(0),
            cu_device_get_count(&raw mut count),
            cu_driver_get_version(&raw mut version),
        )
    };
    if init != 0 {
        return DriverProbe::Unavailable {
            reason: format!("the NVIDIA driver failed to initialise (CUDA error {init})"),
        };
    }
    if counted != 0 || count <= 0 {
        return DriverProbe::Unavailable {
            reason: "the NVIDIA driver reports no GPU".to_owned(),
        };
    }
    DriverProbe::Available {
        device_count: count.unsigned_abs(),
        driver_version: if versioned == 0 {
            version.unsigned_abs()
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_explains_absence() {
        // On CI there is no driver: the probe must say so in words. On a GPU machine it must
        // find at least one device. Either way it must not panic.
        match probe_cuda_driver() {
            DriverProbe::Available { device_count, .. } => assert!(device_count >= 1),
            DriverProbe::Unavailable { reason } => {
                assert!(reason.contains("driver"), "{reason}");
            }
        }
    }
}
