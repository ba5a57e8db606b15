//! The device's stream-ordered memory pool, which candle's CUDA allocations come from (cudarc
//! allocates with `cuMemAllocAsync` where the device has pools): how much it holds from the
//! driver and how much of that is in live allocations. The memory plan's predictions are of
//! live bytes; the difference is what the pool keeps for reuse.

use candle_core::Device;

use crate::KernelError;

/// Bytes the pool holds from the driver, and bytes of it in live allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub reserved: u64,
    pub used: u64,
}

/// The default pool's usage on `device`; `None` on devices without one (the CPU).
pub fn usage(device: &Device) -> Result<Option<PoolUsage>, KernelError> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return crate::gpu::pool::usage(cuda).map(Some);
    }
    let _ = device;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_pool() {
        assert_eq!(usage(&Device::Cpu).unwrap(), None);
    }
}
