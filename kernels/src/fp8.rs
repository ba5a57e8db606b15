//! float8 e4m3 with a per-tensor scale (ComfyUI's `fp8_scaled` files).
//!
//! - [`dequantize`]: a weight to the compute dtype, at use: `float(w) · scale`, rounded once to
//!   the target dtype. The CPU path (and oracle) is candle's float8 conversion to float32, the
//!   scale, then the target dtype. On CUDA a kernel of ours does the same in one pass: candle
//!   0.11's CUDA casts from float8 look up kernels under names its PTX does not define
//!   (`cast_f8e4m3_*` against `cast_f8_e4m3_*`), so they fail with "named symbol not found".
//! - [`quantize_activation`]: a linear layer's input to float8 e4m3 with one per-tensor scale,
//!   the input side of the FP8 GEMM (`crate::linear::linear_fp8`). It follows ComfyUI's
//!   `TensorCoreFP8Layout.quantize` (comfy/quant_ops.py), which its mixed-precision ops apply
//!   to every input of an fp8 layer: the scale is the file's input scale where the layer has
//!   one, else `amax(|x|) / 448` of this very input; then `q = e4m3(x · T(1 / scale))` with the
//!   product rounded to x's dtype `T` first, as torch multiplies in `T`. The e4m3 rounding is
//!   to nearest even and saturates at ±448 (torch would give NaN past 464, which ComfyUI only
//!   avoids because a dynamic scale cannot get there). The CPU code here defines it; the CUDA
//!   kernel (`cuda/fp8.cu`) computes the same bits.

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

/// The largest finite float8 e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// An activation quantized for an FP8 GEMM: float8 e4m3 values of the input's shape and the
/// float32 scale (shape `[1]`, on the same device) they stand for: `x ≈ float(q) · scale`.
#[derive(Clone, Debug)]
pub struct QuantizedActivation {
    pub values: Tensor,
    pub scale: Tensor,
}

/// The per-tensor activation scale: the file's `input_scale` where there is one, else
/// `amax / 448`; 1 where that is 0 or not finite (an all-zero input: ComfyUI would divide by
/// zero and return NaN).
#[must_use]
pub fn activation_scale(amax: f32, input_scale: Option<f32>) -> f32 {
    if let Some(scale) = input_scale {
        return scale;
    }
    let scale = amax / E4M3_MAX;
    if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    }
}

/// `value` rounded to `dtype` (to nearest even), back as float32.
pub(crate) fn round_to(dtype: DType, value: f32) -> f32 {
    match dtype {
        DType::BF16 => half::bf16::from_f32(value).to_f32(),
        DType::F16 => half::f16::from_f32(value).to_f32(),
        _ => value,
    }
}

/// `x` (float32, bfloat16 or float16) to float8 e4m3 with one per-tensor scale, the input
/// side of the FP8 GEMM (see the module documentation for the arithmetic). `input_scale` is
/// the file's (`input_scale` / `scale_input`); without it the scale comes from x's largest
/// magnitude, computed on the device (no host round trip on CUDA).
pub fn quantize_activation(
    kernels: &Kernels,
    x: &Tensor,
    input_scale: Option<f32>,
) -> Result<QuantizedActivation, KernelError> {
    const QUANTIZE: &str = "fp8_quantize_activation";
    if !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::BadInput {
            kernel: QUANTIZE,
            problem: format!(
                "quantizes float32, bfloat16 or float16, not {:?}",
                x.dtype()
            ),
        });
    }
    match x.device() {
        Device::Cpu => quantize_reference(x, input_scale),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => crate::gpu::fp8_linear::quantize_activation(kernels, x, input_scale),
        other => {
            let _ = kernels;
            Err(KernelError::BadInput {
                kernel: QUANTIZE,
                problem: format!("no float8 quantization on {other:?}"),
            })
        }
    }
}

/// The CPU definition of [`quantize_activation`].
fn quantize_reference(
    x: &Tensor,
    input_scale: Option<f32>,
) -> Result<QuantizedActivation, KernelError> {
    let dtype = x.dtype();
    // Exact: every bfloat16 and float16 value is a float32.
    let values = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    // `f32::max` skips NaN, as the CUDA kernel's `fmaxf` does.
    let amax = values.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    let scale = activation_scale(amax, input_scale);
    let inverse = round_to(dtype, 1.0 / scale);
    let scaled: Vec<f32> = values
        .iter()
        .map(|v| round_to(dtype, v * inverse))
        .collect();
    let values = Tensor::from_vec(scaled, x.shape(), &Device::Cpu)?.to_dtype(DType::F8E4M3)?;
    Ok(QuantizedActivation {
        values,
        scale: Tensor::new(&[scale], &Device::Cpu)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantized(x: &Tensor, input_scale: Option<f32>) -> (Vec<f32>, f32) {
        let q = quantize_activation(&Kernels::cpu(), x, input_scale).unwrap();
        let scale = q.scale.to_vec1::<f32>().unwrap()[0];
        let values = q.values.to_dtype(DType::F32).unwrap();
        (
            values.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            scale,
        )
    }

    #[test]
    fn dynamic_scale_maps_the_largest_magnitude_to_448() {
        let x = Tensor::new(&[[1.0_f32, -2.0], [0.5, 3.5]], &Device::Cpu).unwrap();
        let (q, scale) = quantized(&x, None);
        assert_eq!(scale, 3.5 / 448.0);
        // 1 · 128 = 128, −256, 64, 448: all exact in e4m3.
        assert_eq!(q, [128.0, -256.0, 64.0, 448.0]);
        // NaN does not take part in the maximum (it stays NaN); zeros give scale 1.
        let x = Tensor::new(&[f32::NAN, 0.25], &Device::Cpu).unwrap();
        let (q, scale) = quantized(&x, None);
        assert_eq!(scale, 0.25 / 448.0);
        assert!(q[0].is_nan() && q[1] == 448.0);
        let (q, scale) = quantized(&Tensor::zeros(4, DType::BF16, &Device::Cpu).unwrap(), None);
        assert_eq!((q, scale), (vec![0.0; 4], 1.0));
    }

    #[test]
    fn a_file_input_scale_rounds_to_nearest_even_and_saturates() {
        // Scale 0.5: x · 2. e4m3 steps are 1 between 8 and 16, 2 between 16 and 32.
        let x = Tensor::new(
            &[4.25_f32, 4.75, 9.0, 9.5, 1000.0, -1000.0, 0.0],
            &Device::Cpu,
        )
        .unwrap();
        let (q, scale) = quantized(&x, Some(0.5));
        assert_eq!(scale, 0.5);
        // 8.5 → 8 (tie to even), 9.5 → 10, 18 → 18, 19 → 20 (tie to even), ±2000 → ±448.
        assert_eq!(q, [8.0, 10.0, 18.0, 20.0, 448.0, -448.0, 0.0]);
    }

    #[test]
    fn the_product_is_rounded_to_the_input_dtype_before_e4m3() {
        // 9.4375 is exact in both dtypes. With scale 0.99609375 the reciprocal is 1.0039216 in
        // float32 (x · it = 9.474 → e4m3 9) but 1.0078125 in bfloat16, where x · it = 9.511
        // rounds to 9.5 in bfloat16, a tie that e4m3 breaks to the even 10.
        let x = Tensor::new(&[9.4375_f32], &Device::Cpu).unwrap();
        let (as_f32, _) = quantized(&x, Some(0.996_093_75));
        let (as_bf16, _) = quantized(&x.to_dtype(DType::BF16).unwrap(), Some(0.996_093_75));
        assert_eq!((as_f32[0], as_bf16[0]), (9.0, 10.0));
    }

    #[test]
    fn refuses_integer_inputs() {
        let x = Tensor::new(&[1_u32], &Device::Cpu).unwrap();
        assert!(quantize_activation(&Kernels::cpu(), &x, None).is_err());
    }

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
