//! The model's linear layer: a plain weight, or a float8 e4m3 weight with a per-tensor scale as
//! ComfyUI's `fp8_scaled` files store it (`scale_weight`, or `weight_scale` in the newer
//! `comfy_quant` format). Float8 weights stay resident as float8 and are dequantized at use,
//! `weight.to(dtype) * scale`, the dequantization ComfyUI applies before its matmul.

use candle_core::{DType, Shape, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::linear::{Epilogue, linear};

use crate::EngineError;

/// Per-tensor scale names: ComfyUI's `scaled_fp8` files, then its `comfy_quant` format.
const SCALE_NAMES: [&str; 2] = ["scale_weight", "weight_scale"];

#[derive(Clone, Debug)]
enum Weight {
    Plain(Tensor),
    /// Float8 as stored, the scale, and the dtype to dequantize to.
    Scaled {
        weight: Tensor,
        scale: f64,
        dtype: DType,
    },
}

/// A linear layer that accepts any input dtype (the residual stream is float32 while weights
/// may be half precision, as under the official autocast).
#[derive(Clone, Debug)]
pub(super) struct Lin {
    weight: Weight,
    bias: Tensor,
}

impl Lin {
    pub(super) fn new(
        in_dim: usize,
        out_dim: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self, EngineError> {
        Self::reshaped((out_dim, in_dim), out_dim, in_dim, vb)
    }

    /// A layer whose checkpoint weight has shape `stored` (a Conv3d with kernel = stride, for
    /// the patch embedding) and is used as an `[out_dim, in_dim]` matrix.
    pub(super) fn reshaped(
        stored: impl Into<Shape>,
        out_dim: usize,
        in_dim: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Self, EngineError> {
        let stored = stored.into();
        let bias = vb.get(out_dim, "bias")?;
        let Some(scale_name) = SCALE_NAMES.iter().find(|n| vb.contains_tensor(n)) else {
            let weight = vb.get(stored, "weight")?.reshape((out_dim, in_dim))?;
            return Ok(Self {
                weight: Weight::Plain(weight),
                bias,
            });
        };
        let scale = vb
            .get_unchecked_dtype(scale_name, DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let [scale] = scale[..] else {
            return Err(EngineError::BadCheckpoint {
                problem: format!(
                    "{}.{scale_name} holds {} values; only per-tensor float8 scales are supported",
                    vb.prefix(),
                    scale.len()
                ),
            });
        };
        // `F8E4M3` asks the loader for the weight as stored (see `crate::weights`).
        let weight = vb
            .get_with_hints_dtype(stored, "weight", candle_nn::Init::Const(0.0), DType::F8E4M3)?
            .reshape((out_dim, in_dim))?;
        Ok(Self {
            weight: Weight::Scaled {
                weight,
                scale: f64::from(scale),
                dtype: vb.dtype(),
            },
            bias,
        })
    }

    /// The weight as stored (float8 for scaled layers).
    #[cfg(test)]
    pub(super) fn stored_dtype(&self) -> DType {
        match &self.weight {
            Weight::Plain(w) | Weight::Scaled { weight: w, .. } => w.dtype(),
        }
    }

    /// The dtype the layer computes in (the weight's, or the dequantization target).
    pub(super) fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Plain(w) => w.dtype(),
            Weight::Scaled { dtype, .. } => *dtype,
        }
    }

    fn weight(&self) -> Result<Tensor, EngineError> {
        Ok(match &self.weight {
            Weight::Plain(w) => w.clone(),
            Weight::Scaled {
                weight,
                scale,
                dtype,
            } => weight.to_dtype(*dtype)?.affine(*scale, 0.0)?,
        })
    }

    pub(super) fn forward(&self, kernels: &Kernels, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_with(kernels, x, Epilogue::None)
    }

    /// The layer followed by GELU (tanh approximation), fused into the GEMM on CUDA.
    pub(super) fn forward_gelu(
        &self,
        kernels: &Kernels,
        x: &Tensor,
    ) -> Result<Tensor, EngineError> {
        self.forward_with(kernels, x, Epilogue::GeluTanh)
    }

    fn forward_with(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        epilogue: Epilogue,
    ) -> Result<Tensor, EngineError> {
        Ok(linear(
            kernels,
            x,
            &self.weight()?,
            Some(&self.bias),
            epilogue,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;

    use super::*;

    #[test]
    fn float8_weights_stay_float8_and_are_scaled_at_use() {
        let dev = Device::Cpu;
        let stored = Tensor::new(&[[1.0_f32, -2.0], [0.5, 4.0]], &dev)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let tensors = HashMap::from([
            ("l.weight".to_owned(), stored),
            (
                "l.bias".to_owned(),
                Tensor::new(&[0.25_f32, 0.0], &dev).unwrap(),
            ),
            (
                "l.scale_weight".to_owned(),
                Tensor::new(0.01_f32, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let lin = Lin::new(2, 2, &vb.pp("l")).unwrap();
        assert_eq!(lin.stored_dtype(), DType::F8E4M3);
        let x = Tensor::new(&[[1.0_f32, 1.0]], &dev).unwrap();
        let y = lin
            .forward(&Kernels::cpu(), &x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let expected = [-0.01_f32 + 0.25, 0.01 * 4.5];
        for (a, b) in y[0].iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{y:?} vs {expected:?}");
        }
    }

    #[test]
    fn float8_dequantizes_to_half_precision_model_dtypes() {
        let dev = Device::Cpu;
        for dtype in [DType::BF16, DType::F16] {
            let stored = Tensor::new(&[[1.0_f32, -2.0], [0.5, 4.0]], &dev)
                .unwrap()
                .to_dtype(DType::F8E4M3)
                .unwrap();
            let tensors = HashMap::from([
                ("weight".to_owned(), stored),
                (
                    "bias".to_owned(),
                    Tensor::zeros(2, DType::F32, &dev).unwrap(),
                ),
                (
                    "weight_scale".to_owned(),
                    Tensor::new(0.5_f32, &dev).unwrap(),
                ),
            ]);
            let lin = Lin::new(2, 2, &VarBuilder::from_tensors(tensors, dtype, &dev)).unwrap();
            let y = lin
                .forward(
                    &Kernels::cpu(),
                    &Tensor::new(&[[1.0_f32, 1.0]], &dev).unwrap(),
                )
                .unwrap();
            assert_eq!(y.dtype(), dtype);
            let y = y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(y, vec![vec![-0.5, 2.25]]);
        }
    }

    #[test]
    fn per_channel_scales_are_refused_by_name() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "l.weight".to_owned(),
                Tensor::zeros((2, 2), DType::F8E4M3, &dev).unwrap(),
            ),
            (
                "l.bias".to_owned(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            ),
            (
                "l.weight_scale".to_owned(),
                Tensor::ones(2, DType::F32, &dev).unwrap(),
            ),
        ]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let err = Lin::new(2, 2, &vb.pp("l")).unwrap_err().to_string();
        assert!(
            err.contains("l.weight_scale") && err.contains("per-tensor"),
            "{err}"
        );
    }
}
