//! float8 e4m3 weights with a per-tensor scale (ComfyUI's `fp8_scaled` files) to the compute
//! dtype, at use: `float(w) · scale`, rounded once to the target dtype.
//!
//! The CPU path (and oracle) is candle's float8 conversion to float32, the scale, then the
//! target dtype. On CUDA a kernel of ours does the same in one pass: candle 0.11's CUDA casts
//! from float8 look up kernels under names its PTX does not define (`cast_f8e4m3_*` against
//! `cast_f8_e4m3_*`), so they fail with "named symbol not found".

use candle_core::{DType, Device, Tensor};

use crate::{KernelError, Kernels};

const KERNEL: &str = "fp8_dequantize";

/// `weight` times `scale`, as `dtype` (float32, bfloat16 or float16). `weight` is float8
/// e4m3 as stored, or already widened (a LoRA merged into an fp8 layer comes back in float32,
/// still divided by the scale).
pub fn dequantize(
    kernels: &Kernels,
    weight: &Tensor,
    scale: f64,
    dtype: DType,
) -> Result<Tensor, KernelError> {
    if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::BadInput {
            kernel: KERNEL,
            problem: format!("dequantizes to float32, bfloat16 or float16, not {dtype:?}"),
        });
    }
    if weight.dtype() != DType::F8E4M3 {
        return Ok(weight
            .to_dtype(DType::F32)?
            .affine(scale, 0.0)?
            .to_dtype(dtype)?);
    }
    match weight.device() {
        Device::Cpu => Ok(weight
            .to_dtype(DType::F32)?
            .affine(scale, 0.0)?
            .to_dtype(dtype)?),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => crate::gpu::glue::fp8_dequantize(kernels, weight, scale, dtype),
        other => {
            let _ = kernels;
            Err(KernelError::BadInput {
                kernel: KERNEL,
                problem: format!("no float8 dequantization on {other:?}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_once_and_refuses_integer_targets() {
        let values = Tensor::new(&[0.5_f32, -1.75, 448.0, 0.0, 0.001_953_125], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let out = dequantize(&Kernels::cpu(), &values, 0.25, DType::F32).unwrap();
        assert_eq!(
            out.to_vec1::<f32>().unwrap(),
            [0.125, -0.4375, 112.0, 0.0, 0.000_488_281_25]
        );
        let bf16 = dequantize(&Kernels::cpu(), &values, 0.25, DType::BF16).unwrap();
        assert_eq!(bf16.dtype(), DType::BF16);
        // A weight already widened (a merged LoRA) is scaled the same way.
        let merged = Tensor::new(&[2_f32, -4.0], &Device::Cpu).unwrap();
        let out = dequantize(&Kernels::cpu(), &merged, 0.25, DType::F32).unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), [0.5, -1.0]);
        assert!(dequantize(&Kernels::cpu(), &values, 1.0, DType::U8).is_err());
    }
}
