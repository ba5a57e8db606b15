//! The encoder's projections (no bias): a plain weight, or a float8 e4m3 weight with a
//! per-tensor `scale_weight` as ComfyUI's `umt5_xxl_fp8_e4m3fn_scaled.safetensors` stores it.
//! Float8 weights stay resident as float8 (half the memory of bf16) and are dequantized at use,
//! `weight.to(dtype) * scale`, as ComfyUI does when it does not run an fp8 matmul. GGUF
//! projections in a block-quantized type stay resident as a candle `QTensor` and are
//! dequantized at use too (ComfyUI-GGUF's arithmetic).

#![allow(
    clippy::needless_pass_by_value,
    reason = "candle's layer constructors take the VarBuilder by value: vb.pp(..) makes one per layer"
)]

use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear_no_bias};
use stillmotion_kernels::Kernels;

use crate::gguf::{GGML_TYPE_SUFFIX, ggml_type_from_id};

/// Name of the per-tensor scale beside a float8 weight.
pub(super) const SCALE_WEIGHT: &str = "scale_weight";

#[derive(Clone, Debug)]
pub(super) enum Proj {
    Plain(Linear),
    /// Float8 `[out, in]` as stored, its scale, and the dtype it dequantizes to.
    Scaled {
        weight: Tensor,
        scale: f64,
        dtype: DType,
        /// Dequantizes on the weight's device (candle's own fp8 casts fail on CUDA).
        kernels: Kernels,
    },
    /// GGML blocks `[out, in]` and the dtype they dequantize to.
    Quantized {
        weight: Arc<QTensor>,
        dtype: DType,
    },
}

impl Proj {
    pub(super) fn new(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder<'_>,
        kernels: &Kernels,
    ) -> candle_core::Result<Self> {
        let marker = format!("weight{GGML_TYPE_SUFFIX}");
        if vb.contains_tensor(&marker) {
            let code = vb
                .get_unchecked_dtype(&marker, DType::U32)?
                .to_vec1::<u32>()?;
            let ggml = code.first().and_then(|&id| ggml_type_from_id(id));
            if let Some(ggml) = ggml
                && in_dim.is_multiple_of(ggml.block_size())
            {
                let bytes = vb
                    .get_unchecked_dtype("weight", DType::U8)?
                    .to_vec1::<u8>()?;
                let storage =
                    QStorage::from_data(std::borrow::Cow::Owned(bytes), vb.device(), ggml)?;
                return Ok(Self::Quantized {
                    weight: Arc::new(QTensor::new(storage, (out_dim, in_dim))?),
                    dtype: vb.dtype(),
                });
            }
            candle_core::bail!(
                "{}.weight is stored in a GGML type this layer cannot use",
                vb.prefix()
            );
        }
        if !vb.contains_tensor(SCALE_WEIGHT) {
            return Ok(Self::Plain(linear_no_bias(in_dim, out_dim, vb)?));
        }
        let scale = vb
            .get_unchecked_dtype(SCALE_WEIGHT, DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let [scale] = scale[..] else {
            candle_core::bail!(
                "{}.{SCALE_WEIGHT} holds {} values; only per-tensor float8 scales are supported",
                vb.prefix(),
                scale.len()
            );
        };
        // Asking for F8E4M3 keeps the stored float8 as it is.
        let weight = vb.get_with_hints_dtype(
            (out_dim, in_dim),
            "weight",
            candle_nn::Init::Const(0.0),
            DType::F8E4M3,
        )?;
        Ok(Self::Scaled {
            weight,
            scale: f64::from(scale),
            dtype: vb.dtype(),
            kernels: kernels.clone(),
        })
    }

    /// The weight's dtype as resident.
    #[cfg(test)]
    pub(super) fn stored_dtype(&self) -> DType {
        match self {
            Self::Plain(linear) => linear.weight().dtype(),
            Self::Scaled { weight, .. } => weight.dtype(),
            Self::Quantized { .. } => DType::U8,
        }
    }
}

impl Module for Proj {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Plain(linear) => linear.forward(x),
            Self::Scaled {
                weight,
                scale,
                dtype,
                kernels,
            } => {
                let weight = stillmotion_kernels::fp8::dequantize(kernels, weight, *scale, *dtype)
                    .map_err(candle_core::Error::wrap)?;
                Linear::new(weight, None).forward(x)
            }
            Self::Quantized { weight, dtype } => {
                let weight = weight.dequantize(&weight.device())?.to_dtype(*dtype)?;
                Linear::new(weight, None).forward(x)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;

    #[test]
    fn float8_stays_float8_and_is_scaled_at_use() {
        let dev = Device::Cpu;
        let stored = Tensor::new(&[[1.0_f32, -2.0], [0.5, 4.0]], &dev)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let tensors = HashMap::from([
            ("q.weight".to_owned(), stored),
            (
                "q.scale_weight".to_owned(),
                Tensor::new(0.25_f32, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let proj = Proj::new(2, 2, vb.pp("q"), &Kernels::cpu()).unwrap();
        assert_eq!(proj.stored_dtype(), DType::F8E4M3);
        let y = proj
            .forward(&Tensor::new(&[[1.0_f32, 1.0]], &dev).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(y, vec![vec![-0.25, 1.125]]);
    }
}
