//! Raw device pointers of candle tensors and tensors around freshly allocated device memory.

use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Shape, Storage, Tensor};
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig};

use crate::KernelError;

type LaunchError = cudarc::driver::DriverError;

impl From<LaunchError> for KernelError {
    fn from(error: LaunchError) -> Self {
        Self::Cuda {
            problem: error.to_string(),
        }
    }
}

/// The device address of a contiguous CUDA tensor's first element.
///
/// Every launch goes to candle's one stream, where frees are stream-ordered, so the address
/// stays valid for kernels queued while the caller holds the tensor.
pub(crate) fn device_ptr(tensor: &Tensor, kernel: &'static str) -> Result<u64, KernelError> {
    let (storage, layout) = tensor.storage_and_layout();
    let Some(offset) = layout.contiguous_offsets().map(|(start, _)| start) else {
        return Err(KernelError::BadInput {
            kernel,
            problem: format!(
                "needs a contiguous tensor, got strides {:?}",
                layout.stride()
            ),
        });
    };
    let Storage::Cuda(cuda) = &*storage else {
        return Err(KernelError::BadInput {
            kernel,
            problem: "tensor is not on a CUDA device".to_owned(),
        });
    };
    let stream = cuda.device.cuda_stream();
    let (base, element) = match tensor.dtype() {
        DType::BF16 => (cuda.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0, 2),
        DType::F16 => (cuda.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0, 2),
        DType::F32 => (cuda.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
        DType::U32 => (cuda.as_cuda_slice::<u32>()?.device_ptr(&stream).0, 4),
        other => {
            return Err(KernelError::BadInput {
                kernel,
                problem: format!("dtype {other:?} is not supported"),
            });
        }
    };
    Ok(base + (offset * element) as u64)
}

/// Device memory for `n` elements of `T`, wrapped as candle storage, with its address.
fn alloc<T: DeviceRepr + candle_core::cuda::CudaDType>(
    device: &CudaDevice,
    n: usize,
) -> Result<(CudaStorage, u64), KernelError> {
    let stream = device.cuda_stream();
    // SAFETY: every kernel that receives this memory writes all `n` elements before
    // anything reads them.
    let slice = unsafe { stream.alloc::<T>(n) }?;
    let ptr = slice.device_ptr(&stream).0;
    Ok((CudaStorage::wrap_cuda_slice(slice, device.clone()), ptr))
}

/// Uninitialised device memory for `shape` elements of `dtype`, with its address.
pub(crate) fn empty_like_shape(
    device: &CudaDevice,
    dtype: DType,
    shape: &Shape,
) -> Result<(CudaStorage, u64), KernelError> {
    let n = shape.elem_count().max(1);
    match dtype {
        DType::BF16 => alloc::<half::bf16>(device, n),
        DType::F16 => alloc::<half::f16>(device, n),
        DType::F32 => alloc::<f32>(device, n),
        other => Err(KernelError::BadInput {
            kernel: "alloc",
            problem: format!("dtype {other:?} is not supported"),
        }),
    }
}

/// Scratch memory a vendor library owns during one call on `stream`, with its address (0 and no
/// allocation when it needs none). Keep the slice alive until the call is queued: frees on
/// candle's stream are stream-ordered.
pub(crate) fn scratch(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    bytes: usize,
) -> Result<(Option<cudarc::driver::CudaSlice<u8>>, u64), KernelError> {
    if bytes == 0 {
        return Ok((None, 0));
    }
    // SAFETY: the library writes its scratch before it reads it; nothing else touches it.
    let slice = unsafe { stream.alloc::<u8>(bytes) }?;
    let ptr = slice.device_ptr(stream).0;
    Ok((Some(slice), ptr))
}

/// Wraps storage filled by a kernel as a tensor of `shape`.
pub(crate) fn output_tensor(storage: CudaStorage, shape: Shape) -> Tensor {
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// A one-dimensional launch over `n` items, capped so grid-stride loops cover the rest.
pub(crate) fn grid_1d(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_536 * 4);
    LaunchConfig {
        grid_dim: (u32::try_from(blocks).unwrap_or(u32::MAX), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}
