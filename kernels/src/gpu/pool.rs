//! The CUDA side of [`crate::memory_pool`].

use candle_core::cuda::CudaDevice;
use cudarc::driver::sys;

use crate::KernelError;
use crate::memory_pool::PoolUsage;

fn attribute(
    pool: sys::CUmemoryPool,
    attribute: sys::CUmemPool_attribute,
) -> Result<u64, KernelError> {
    let mut value = 0_u64;
    // SAFETY: the reserved and used attributes are 64-bit values written to `value`.
    unsafe { sys::cuMemPoolGetAttribute(pool, attribute, (&raw mut value).cast()) }.result()?;
    Ok(value)
}

pub(crate) fn usage(device: &CudaDevice) -> Result<PoolUsage, KernelError> {
    let stream = device.cuda_stream();
    let context = stream.context();
    context.bind_to_thread()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` receives the device's default pool, a handle the driver owns.
    unsafe { sys::cuDeviceGetDefaultMemPool(&raw mut pool, context.cu_device()) }.result()?;
    Ok(PoolUsage {
        reserved: attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
        )?,
        used: attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        )?,
    })
}
