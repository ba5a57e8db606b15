//! Bytes from the device into host buffers that are ready to use.
//!
//! candle's `to_vec1` on a CUDA tensor copies twice on the host side (into its own CPU storage,
//! then into the returned `Vec`), and splitting the result into frames copies a third time.
//! For RIFE's output frames (8-bit, tens of MB a batch) those copies, and the page faults of
//! each fresh buffer, cost more than the frames' arithmetic.

use candle_core::{DType, Tensor};

use crate::KernelError;

/// A contiguous u8 tensor split into `chunks` equal parts, each in its own `Vec` (on CUDA, one
/// device-to-host copy straight into it).
pub fn u8_chunks(tensor: &Tensor, chunks: usize) -> Result<Vec<Vec<u8>>, KernelError> {
    const KERNEL: &str = "u8_chunks";
    let len = tensor.elem_count();
    if tensor.dtype() != DType::U8 || chunks == 0 || !len.is_multiple_of(chunks) {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!(
                "{:?} {:?} does not split into {chunks} equal u8 parts",
                tensor.dtype(),
                tensor.dims()
            ),
        });
    }
    #[cfg(feature = "cuda")]
    if tensor.device().is_cuda() {
        return crate::gpu::download::u8_chunks(tensor, chunks);
    }
    let bytes = tensor.flatten_all()?.to_vec1::<u8>()?;
    Ok(bytes
        .chunks_exact(len / chunks)
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn equal_parts_in_order_and_a_clear_refusal_otherwise() {
        let t = Tensor::arange(0_u8, 12, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let parts = u8_chunks(&t, 3).unwrap();
        assert_eq!(
            parts,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]
        );
        assert!(u8_chunks(&t, 5).is_err());
        assert!(u8_chunks(&t.to_dtype(DType::F32).unwrap(), 3).is_err());
    }
}
