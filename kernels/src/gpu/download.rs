//! The CUDA side of [`crate::download`].

use candle_core::{Storage, Tensor};

use crate::KernelError;

pub(crate) fn u8_chunks(tensor: &Tensor, chunks: usize) -> Result<Vec<Vec<u8>>, KernelError> {
    const KERNEL: &str = "u8_chunks";
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: "needs a contiguous tensor".to_owned(),
        });
    };
    let Storage::Cuda(cuda) = &*storage else {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: "tensor is not on a CUDA device".to_owned(),
        });
    };
    let slice = cuda.as_cuda_slice::<u8>()?;
    let stream = cuda.device.cuda_stream();
    let len = (end - start) / chunks;
    (0..chunks)
        .map(|i| {
            let first = start + i * len;
            let mut bytes = vec![0_u8; len];
            // Synchronises before returning: `bytes` is pageable host memory.
            stream
                .memcpy_dtoh(&slice.slice(first..first + len), bytes.as_mut_slice())
                .map_err(|e| KernelError::Cuda {
                    problem: format!("copying {len} bytes from the device: {e}"),
                })?;
            Ok(bytes)
        })
        .collect()
}
