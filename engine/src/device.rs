//! Choosing the compute device: CUDA when built for it and a driver answers, else the CPU.

use stillmotion_kernels::{DriverProbe, probe_cuda_driver};

use crate::EngineError;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePreference {
    /// CUDA if available, otherwise the CPU (with a message saying why).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The device chosen, and a sentence for the UI explaining the choice.
#[derive(Debug)]
pub struct SelectedDevice {
    pub device: candle_core::Device,
    pub description: String,
}

/// Picks a device for `preference`. `Auto` never fails; `Cuda` fails with the reason.
pub fn select_device(preference: DevicePreference) -> Result<SelectedDevice, EngineError> {
    if preference == DevicePreference::Cpu {
        return Ok(cpu("CPU (as requested)".to_owned()));
    }
    match cuda_device() {
        Ok(selected) => Ok(selected),
        Err(reason) if preference == DevicePreference::Auto => {
            tracing::info!("{reason}");
            Ok(cpu(format!("CPU: {reason}")))
        }
        Err(reason) => Err(EngineError::DeviceUnavailable(reason)),
    }
}

/// One line for the UI saying where rendering will run, without starting CUDA (cheap).
#[must_use]
pub fn availability_summary() -> String {
    match probe_cuda_driver() {
        DriverProbe::Available { device_count, .. } if stillmotion_kernels::built_with_cuda() => {
            format!("Rendering on CUDA ({device_count} GPU(s) found)")
        }
        DriverProbe::Available { .. } => {
            "Rendering on the CPU: this build has no CUDA support (rebuild with `cargo xtask run`)"
                .to_owned()
        }
        DriverProbe::Unavailable { reason } => format!("Rendering on the CPU: {reason}"),
    }
}

/// Whether renders can run on a CUDA GPU: this build has CUDA and a driver reports a device.
/// Cheap (does not start CUDA); the app's no-GPU mode asks this.
#[must_use]
pub fn cuda_available() -> bool {
    stillmotion_kernels::built_with_cuda()
        && matches!(probe_cuda_driver(), DriverProbe::Available { .. })
}

fn cpu(description: String) -> SelectedDevice {
    SelectedDevice {
        device: candle_core::Device::Cpu,
        description,
    }
}

fn cuda_device() -> Result<SelectedDevice, String> {
    // Probe first: cudarc's dynamic loading panics when the driver is missing.
    match probe_cuda_driver() {
        DriverProbe::Unavailable { reason } => Err(reason),
        DriverProbe::Available { .. } if !stillmotion_kernels::built_with_cuda() => Err(
            "an NVIDIA GPU is present but this build has no CUDA support; rebuild with `cargo xtask run` (it enables CUDA when `nvidia-smi` answers)"
                .to_owned(),
        ),
        DriverProbe::Available { driver_version, .. } => {
            let device = candle_core::Device::new_cuda(0).map_err(|error| {
                format!("the NVIDIA driver is present but CUDA could not start: {error}")
            })?;
            Ok(SelectedDevice {
                device,
                description: format!(
                    "CUDA GPU 0 (driver API {}.{})",
                    driver_version / 1000,
                    driver_version % 1000 / 10
                ),
            })
        }
    }
}

/// Where to find cuDNN for the fused attention, in order: `$STILLMOTION_CUDNN_LIBRARY`, the
/// copy `cargo xtask` installs under the cache folder, then the system loader's
/// `libcudnn.so.9`. Without any, the GPU runs our own attention kernel.
#[must_use]
pub fn kernel_options() -> stillmotion_kernels::KernelOptions {
    let mut libraries = Vec::new();
    if let Some(path) = std::env::var_os("STILLMOTION_CUDNN_LIBRARY") {
        libraries.push(std::path::PathBuf::from(path));
    }
    libraries.push(crate::paths::cache_dir().join("cudnn-pip/site/nvidia/cudnn/lib/libcudnn.so.9"));
    libraries.push(std::path::PathBuf::from("libcudnn.so.9"));
    stillmotion_kernels::KernelOptions {
        cudnn_libraries: libraries,
        attention: stillmotion_kernels::AttentionChoice::Auto,
        fp8_matmul: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available() {
        let selected = select_device(DevicePreference::Cpu).unwrap();
        assert!(selected.device.is_cpu());
    }

    #[test]
    fn auto_falls_back_with_a_reason_or_finds_cuda() {
        let selected = select_device(DevicePreference::Auto).unwrap();
        if selected.device.is_cpu() {
            assert!(
                selected.description.starts_with("CPU: "),
                "{}",
                selected.description
            );
        }
    }

    #[test]
    fn explicit_cuda_without_gpu_is_an_error_not_a_panic() {
        if probe_cuda_driver().is_available() && stillmotion_kernels::built_with_cuda() {
            return; // A real GPU build on a GPU machine: nothing to check here.
        }
        let error = select_device(DevicePreference::Cuda).unwrap_err();
        assert!(
            matches!(error, EngineError::DeviceUnavailable(_)),
            "{error}"
        );
    }
}
