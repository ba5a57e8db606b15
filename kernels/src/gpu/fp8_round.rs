//! The stochastic float8 rounding of `crate::fp8_stochastic` on the GPU (`cuda/fp8.cu`,
//! `stillmotion_fp8_stochastic_round`): float32 in, e4m3fn codes out, one byte a value.

use candle_core::backend::BackendDevice;
use candle_core::cuda::CudaStorageSlice;
use candle_core::{DType, Tensor};
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::{device_ptr, int, loaded, output_tensor};
use crate::{KernelError, Kernels};

const KERNEL: &str = "fp8_stochastic_round";
const THREADS: u32 = 256;
/// Enough blocks to fill any GPU; the kernel's grid-stride loop covers the rest.
const MAX_BLOCKS: usize = 8192;

/// `values` (float32 on the device) as float8 e4m3, rounded with `seed`'s stream.
pub(crate) fn stochastic_round(
    kernels: &Kernels,
    values: &Tensor,
    seed: u64,
) -> Result<Tensor, KernelError> {
    let gpu = loaded(kernels)?;
    let values = values.contiguous()?;
    let n = values.elem_count();
    let vp = device_ptr(&values, KERNEL)?;
    // SAFETY: the kernel writes all n codes before anything reads them.
    let codes = unsafe { gpu.device.alloc_uninit(values.shape(), DType::F8E4M3) }?;
    let stream = gpu.device.cuda_stream();
    let codes_ptr = {
        let CudaStorageSlice::F8E4M3(slice) = &codes.slice else {
            return Err(KernelError::Cuda {
                problem: "candle allocated float8 storage of another dtype".to_owned(),
            });
        };
        slice.device_ptr(&stream).0
    };
    if n > 0 {
        let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
        let config = LaunchConfig {
            grid_dim: (int(KERNEL, blocks)?.unsigned_abs(), 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let function = gpu.fp8_function("stillmotion_fp8_stochastic_round")?;
        let n64 = n as i64;
        let mut launch = stream.launch_builder(&function);
        launch.arg(&vp).arg(&codes_ptr).arg(&n64).arg(&seed);
        // SAFETY: matches the kernel's signature; `values` holds n float32 (kept alive by the
        // binding above until the launch is queued; frees are stream-ordered), `codes` n bytes.
        unsafe { launch.launch(config) }?;
    }
    let shape = values.shape().clone();
    drop(values);
    Ok(output_tensor(codes, shape))
}
