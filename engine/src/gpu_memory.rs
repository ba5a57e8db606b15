//! GPU memory as the CUDA driver reports it (device-wide free and total), for the app's gauge.
//! Reading it retains the process's primary CUDA context, the one the engine's device uses, so
//! it costs no extra GPU memory once the engine runs.

/// Device-wide memory of CUDA GPU 0, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuMemory {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl GpuMemory {
    /// Bytes in use by every process, this one included.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }
}

/// Reads GPU 0's memory. It holds the process's primary CUDA context (the one the engine's
/// device uses too), so reading again costs no context creation.
pub struct GpuMemoryReader {
    #[cfg(feature = "cuda")]
    context: std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaContext>,
}

impl GpuMemoryReader {
    /// A reader, or `None` when this build has no CUDA or no driver reports a GPU.
    #[must_use]
    pub fn open() -> Option<Self> {
        if !crate::device::cuda_available() {
            return None;
        }
        Self::open_cuda()
    }

    #[cfg(feature = "cuda")]
    fn open_cuda() -> Option<Self> {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::new(0)
            .map_err(|error| tracing::warn!("no GPU memory gauge: {error}"))
            .ok()
            .map(|context| Self { context })
    }

    #[cfg(not(feature = "cuda"))]
    fn open_cuda() -> Option<Self> {
        None
    }

    /// The memory now, or `None` when the driver does not answer.
    #[cfg(feature = "cuda")]
    #[must_use]
    pub fn read(&self) -> Option<GpuMemory> {
        let (free, total) = self
            .context
            .mem_get_info()
            .map_err(|error| tracing::warn!("no GPU memory reading: {error}"))
            .ok()?;
        Some(GpuMemory {
            total_bytes: total as u64,
            free_bytes: free as u64,
        })
    }

    /// The memory now (never, without CUDA in this build).
    #[cfg(not(feature = "cuda"))]
    #[must_use]
    pub fn read(&self) -> Option<GpuMemory> {
        None
    }
}

/// The memory of the CUDA device a job runs on (its own context), `None` on the CPU.
#[must_use]
pub fn of_device(device: &candle_core::Device) -> Option<GpuMemory> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(cuda) = device {
        return cuda
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, total)| GpuMemory {
                total_bytes: total as u64,
                free_bytes: free as u64,
            });
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_less_free_and_no_gpu_opens_no_reader() {
        let memory = GpuMemory {
            total_bytes: 24 << 30,
            free_bytes: 20 << 30,
        };
        assert_eq!(memory.used_bytes(), 4 << 30);
        if !crate::device::cuda_available() {
            assert!(GpuMemoryReader::open().is_none());
        }
    }
}
