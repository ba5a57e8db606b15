//! The model's linear layer: a plain weight, or a float8 e4m3 weight with a per-tensor scale as
//! ComfyUI's `fp8_scaled` files store it (`scale_weight`, or `weight_scale` in the newer
//! `comfy_quant` format). Float8 weights stay resident as float8 and are dequantized at use,
//! `weight.to(dtype) * scale`, the dequantization ComfyUI applies before its matmul. With
//! [`Kernels::fp8_matmul`] on, they multiply in FP8 instead ([`linear_fp8`]: the input
//! quantized to e4m3 with the file's input scale, `input_scale` or `scale_input`, where it is
//! not 1, else its own amax / 448, as ComfyUI's mixed-precision ops do).
//!
//! GGUF weights in a block-quantized type (Q4_0…Q8_0, K-quants) stay resident as a candle
//! `QTensor` on the model's device (see `crate::gguf` for how the loader hands them over) and
//! are multiplied per [`QuantizedMatmul`]: dequantized at use (ComfyUI-GGUF's arithmetic, the
//! default) or by candle's `QMatMul`. The bias stays a plain tensor.
//!
//! A LoRA applied on the fly rides beside any of these weights, untouched, as a
//! [`LoraSideCar`] whose product is added before the epilogue: on CUDA (plain and float8
//! weights) inside the layer's GEMM (`linear_low_rank` / `linear_fp8_low_rank`: the delta
//! written into the output, the GEMM accumulating onto it with its bias and GELU fused); on the
//! CPU (the reference) and for GGUF weights as a separate product and add.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Shape, Tensor};
use candle_nn::VarBuilder;
use stillmotion_kernels::Kernels;
use stillmotion_kernels::linear::{
    Epilogue, Fp8Weight, linear, linear_fp8, linear_fp8_low_rank, linear_low_rank,
};

use super::lora_side::LoraSideCar;
use crate::EngineError;
use crate::gguf::{GGML_TYPE_SUFFIX, QuantizedMatmul, ggml_type_from_id, quantized_linear};

/// Per-tensor scale names: ComfyUI's `scaled_fp8` files, then its `comfy_quant` format.
const SCALE_NAMES: [&str; 2] = ["scale_weight", "weight_scale"];
/// Per-tensor input scales for the FP8 matmul, in the same two formats.
const INPUT_SCALE_NAMES: [&str; 2] = ["scale_input", "input_scale"];

#[derive(Clone, Debug)]
enum Weight {
    Plain(Tensor),
    /// Float8 as stored, the scale, the dtype to dequantize to, and the input scale for the
    /// FP8 matmul (`None`: from each input's amax).
    Scaled {
        weight: Tensor,
        scale: f64,
        dtype: DType,
        input_scale: Option<f64>,
    },
    /// GGML blocks as stored, `[out, in]`, and the dtype the layer computes in.
    Quantized {
        weight: Arc<QTensor>,
        matmul: QuantizedMatmul,
        dtype: DType,
    },
}

/// A linear layer that accepts any input dtype (the residual stream is float32 while weights
/// may be half precision, as under the official autocast).
#[derive(Clone, Debug)]
pub(super) struct Lin {
    weight: Weight,
    bias: Tensor,
    /// LoRA factors applied on the fly (see [`super::lora_side`]).
    lora: Option<LoraSideCar>,
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
        // Before the weight: reading the factors is what keeps the weight unmerged.
        let lora = LoraSideCar::read(out_dim, in_dim, vb)?;
        let bias = vb.get(out_dim, "bias")?;
        if let Some(weight) = Self::quantized(&stored, out_dim, in_dim, vb)? {
            return Ok(Self { weight, bias, lora });
        }
        let Some(scale_name) = SCALE_NAMES.iter().find(|n| vb.contains_tensor(n)) else {
            let weight = vb.get(stored, "weight")?.reshape((out_dim, in_dim))?;
            return Ok(Self {
                weight: Weight::Plain(weight),
                bias,
                lora,
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
        if weight.dtype() != DType::F8E4M3 {
            // A LoRA merged into the layer: its float32 values, still divided by the scale,
            // become a plain weight in the model's dtype, the value dequantizing would give
            // (bf16 on the GPU: half the float32 merge's memory).
            let weight = weight
                .to_dtype(DType::F32)?
                .affine(f64::from(scale), 0.0)?
                .to_dtype(vb.dtype())?;
            return Ok(Self {
                weight: Weight::Plain(weight),
                bias,
                lora,
            });
        }
        Ok(Self {
            weight: Weight::Scaled {
                weight,
                scale: f64::from(scale),
                dtype: vb.dtype(),
                input_scale: Self::input_scale(vb)?,
            },
            bias,
            lora,
        })
    }

    /// The file's per-tensor input scale, if any. ComfyUI drops a legacy `scale_input` of
    /// exactly 1 (its converter, `convert_old_quants`), which means "from the input's amax".
    fn input_scale(vb: &VarBuilder<'_>) -> Result<Option<f64>, EngineError> {
        let Some(name) = INPUT_SCALE_NAMES.iter().find(|n| vb.contains_tensor(n)) else {
            return Ok(None);
        };
        let values = vb
            .get_unchecked_dtype(name, DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        match values[..] {
            [1.0] => Ok(None),
            [scale] if scale > 0.0 && scale.is_finite() => Ok(Some(f64::from(scale))),
            _ => Err(EngineError::BadCheckpoint {
                problem: format!(
                    "{}.{name} holds {values:?}; only one positive per-tensor input scale is supported",
                    vb.prefix()
                ),
            }),
        }
    }

    /// A GGUF weight kept quantized, when the loader offers one (`<weight>.ggml_type`) and its
    /// blocks fit the `[out_dim, in_dim]` rows; else `None` (the weight is read plain).
    fn quantized(
        stored: &Shape,
        out_dim: usize,
        in_dim: usize,
        vb: &VarBuilder<'_>,
    ) -> Result<Option<Weight>, EngineError> {
        let marker = format!("weight{GGML_TYPE_SUFFIX}");
        if !vb.contains_tensor(&marker) {
            return Ok(None);
        }
        let code = vb
            .get_unchecked_dtype(&marker, DType::U32)?
            .to_vec1::<u32>()?;
        let [type_id, matmul] = code[..] else {
            return Ok(None);
        };
        let Some(ggml) = ggml_type_from_id(type_id) else {
            return Ok(None);
        };
        // Blocks run along rows of the stored tensor; when `in_dim` is a whole number of
        // blocks, the `[out_dim, in_dim]` view of a flattened (patch-embedding) tensor keeps
        // every block inside one row.
        if stored.elem_count() != out_dim * in_dim || !in_dim.is_multiple_of(ggml.block_size()) {
            return Ok(None);
        }
        let bytes = vb
            .get_unchecked_dtype("weight", DType::U8)?
            .to_vec1::<u8>()?;
        let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), vb.device(), ggml)?;
        let weight = QTensor::new(storage, (out_dim, in_dim))?;
        let mut matmul = QuantizedMatmul::from_code(matmul);
        // candle's CPU dot products for these types assert (in debug builds) an even number of
        // blocks per row, though the arithmetic is right either way: such layers dequantize.
        let pairs_only = matches!(ggml, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
        if pairs_only && !(in_dim / ggml.block_size()).is_multiple_of(2) {
            matmul = QuantizedMatmul::DequantizeAtUse;
        }
        Ok(Some(Weight::Quantized {
            weight: Arc::new(weight),
            matmul,
            dtype: vb.dtype(),
        }))
    }

    /// The layer's tensors, weight, bias, then the on-the-fly LoRA factors if any (
    /// [`Self::tensor_count`] of them), for streaming it from host memory. GGUF
    /// block-quantized weights cannot stream (they are not candle tensors).
    pub(super) fn tensors(&self) -> Result<Vec<&Tensor>, EngineError> {
        let mut out = match &self.weight {
            Weight::Plain(w) | Weight::Scaled { weight: w, .. } => vec![w, &self.bias],
            Weight::Quantized { .. } => {
                return Err(EngineError::BadModelInput {
                    problem: "block swapping cannot stream GGUF block-quantized layers: use an fp8_scaled or bf16 file of the model, or a larger VRAM budget".to_owned(),
                });
            }
        };
        out.extend(self.lora.iter().flat_map(LoraSideCar::tensors));
        Ok(out)
    }

    /// Bytes the layer keeps on its device: its weight as stored (GGUF blocks at their block
    /// size), the bias and any on-the-fly LoRA factors.
    pub(super) fn resident_bytes(&self) -> usize {
        let weight = match &self.weight {
            Weight::Plain(w) | Weight::Scaled { weight: w, .. } => tensor_bytes(w),
            Weight::Quantized { weight, .. } => weight.storage_size_in_bytes(),
        };
        weight
            + tensor_bytes(&self.bias)
            + self
                .lora
                .iter()
                .flat_map(LoraSideCar::tensors)
                .map(tensor_bytes)
                .sum::<usize>()
    }

    /// How many tensors [`Self::tensors`] lists.
    pub(super) fn tensor_count(&self) -> usize {
        if self.lora.is_some() { 4 } else { 2 }
    }

    /// The same layer (scale, dtype) computing with `tensors` (in [`Self::tensors`] order)
    /// instead of its own: tensors of the same shapes and dtypes, such as a streaming slot's.
    pub(super) fn with_tensors(&self, tensors: &[Tensor]) -> Result<Self, EngineError> {
        let (weight, bias, lora) = match (tensors, &self.lora) {
            ([weight, bias], None) => (weight.clone(), bias.clone(), None),
            ([weight, bias, down, up], Some(_)) => (
                weight.clone(),
                bias.clone(),
                Some(LoraSideCar::with_tensors(down.clone(), up.clone())),
            ),
            _ => {
                return Err(EngineError::BadModelInput {
                    problem: format!(
                        "a linear layer of {} tensors was given {}",
                        self.tensor_count(),
                        tensors.len()
                    ),
                });
            }
        };
        let weight = match &self.weight {
            Weight::Plain(_) => Weight::Plain(weight),
            Weight::Scaled {
                scale,
                dtype,
                input_scale,
                ..
            } => Weight::Scaled {
                weight,
                scale: *scale,
                dtype: *dtype,
                input_scale: *input_scale,
            },
            Weight::Quantized { .. } => {
                return Err(EngineError::BadModelInput {
                    problem: "GGUF block-quantized layers cannot take streamed tensors".to_owned(),
                });
            }
        };
        Ok(Self { weight, bias, lora })
    }

    /// Whether a LoRA is applied on the fly (its factors kept beside the weight).
    #[cfg(test)]
    pub(super) fn has_lora_side_car(&self) -> bool {
        self.lora.is_some()
    }

    /// The weight as stored (float8 for scaled layers, u8 blocks for quantized ones).
    #[cfg(test)]
    pub(super) fn stored_dtype(&self) -> DType {
        match &self.weight {
            Weight::Plain(w) | Weight::Scaled { weight: w, .. } => w.dtype(),
            Weight::Quantized { .. } => DType::U8,
        }
    }

    /// Bytes the weight keeps resident (the bias not counted).
    #[cfg(test)]
    pub(super) fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Plain(w) | Weight::Scaled { weight: w, .. } => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            Weight::Quantized { weight, .. } => weight.storage_size_in_bytes(),
        }
    }

    /// The dtype the layer computes in (the weight's, or the dequantization target).
    pub(super) fn dtype(&self) -> DType {
        match &self.weight {
            Weight::Plain(w) => w.dtype(),
            Weight::Scaled { dtype, .. } | Weight::Quantized { dtype, .. } => *dtype,
        }
    }

    fn weight(&self, kernels: &Kernels) -> Result<Tensor, EngineError> {
        Ok(match &self.weight {
            Weight::Plain(w) => w.clone(),
            Weight::Scaled {
                weight,
                scale,
                dtype,
                ..
            } => stillmotion_kernels::fp8::dequantize(kernels, weight, *scale, *dtype)?,
            Weight::Quantized { weight, dtype, .. } => {
                weight.dequantize(&weight.device())?.to_dtype(*dtype)?
            }
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

    /// The base product, plus the on-the-fly LoRA's before the epilogue.
    fn forward_with(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        epilogue: Epilogue,
    ) -> Result<Tensor, EngineError> {
        let Some(lora) = &self.lora else {
            return self.base_forward(kernels, x, epilogue);
        };
        if x.device().is_cuda() && !matches!(self.weight, Weight::Quantized { .. }) {
            return self.fused_lora_forward(kernels, x, lora, epilogue);
        }
        let y = self.base_forward(kernels, x, Epilogue::None)?;
        let y = (&y + lora.forward(x)?.to_dtype(y.dtype())?)?;
        Ok(match epilogue {
            Epilogue::None => y,
            Epilogue::GeluTanh => y.gelu()?,
        })
    }

    /// The float8 weight and the compute dtype where this layer runs the FP8 GEMM: a float8
    /// (`fp8_scaled`) weight still stored as float8, with the kernels' FP8 matmul on.
    fn fp8_gemm_weight(&self, kernels: &Kernels) -> Option<(Fp8Weight<'_>, DType)> {
        match &self.weight {
            Weight::Scaled {
                weight,
                scale,
                dtype,
                input_scale,
            } if kernels.fp8_matmul() && weight.dtype() == DType::F8E4M3 => Some((
                Fp8Weight {
                    weight,
                    scale: *scale,
                    input_scale: *input_scale,
                },
                *dtype,
            )),
            _ => None,
        }
    }

    /// The layer with its on-the-fly LoRA inside the GEMM (see the module documentation).
    fn fused_lora_forward(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        lora: &LoraSideCar,
        epilogue: Epilogue,
    ) -> Result<Tensor, EngineError> {
        if let Some((weight, dtype)) = self.fp8_gemm_weight(kernels) {
            return Ok(linear_fp8_low_rank(
                kernels,
                x,
                weight,
                Some(&self.bias),
                lora.low_rank(),
                epilogue,
                dtype,
            )?);
        }
        Ok(linear_low_rank(
            kernels,
            x,
            &self.weight(kernels)?,
            Some(&self.bias),
            lora.low_rank(),
            epilogue,
        )?)
    }

    fn base_forward(
        &self,
        kernels: &Kernels,
        x: &Tensor,
        epilogue: Epilogue,
    ) -> Result<Tensor, EngineError> {
        if let Weight::Quantized {
            weight,
            matmul,
            dtype,
        } = &self.weight
        {
            return quantized_linear(kernels, x, weight, &self.bias, (*matmul, epilogue), *dtype);
        }
        if let Some((weight, dtype)) = self.fp8_gemm_weight(kernels) {
            return Ok(linear_fp8(
                kernels,
                x,
                weight,
                Some(&self.bias),
                epilogue,
                dtype,
            )?);
        }
        Ok(linear(
            kernels,
            x,
            &self.weight(kernels)?,
            Some(&self.bias),
            epilogue,
        )?)
    }
}

/// Bytes of a candle tensor's elements.
pub(super) fn tensor_bytes(tensor: &Tensor) -> usize {
    tensor.elem_count() * tensor.dtype().size_in_bytes()
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
    fn with_fp8_matmul_on_float8_layers_quantize_their_input_with_the_files_scale() {
        use stillmotion_kernels::linear::linear_fp8_reference;

        let dev = Device::Cpu;
        let stored = Tensor::new(&[[1.0_f32, -2.0, 0.5], [0.5, 4.0, -1.0]], &dev)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let bias = Tensor::new(&[0.25_f32, 0.0], &dev).unwrap();
        let x = Tensor::new(&[[0.3_f32, -1.1, 2.9]], &dev).unwrap();
        let on = Kernels::cpu().with_fp8_matmul(true);
        for (file_input_scale, used) in [
            (None, None),
            (Some(1.0_f32), None),
            (Some(0.02), Some(0.02_f32)),
        ] {
            let mut tensors = HashMap::from([
                ("weight".to_owned(), stored.clone()),
                ("bias".to_owned(), bias.clone()),
                (
                    "scale_weight".to_owned(),
                    Tensor::new(0.5_f32, &dev).unwrap(),
                ),
            ]);
            if let Some(s) = file_input_scale {
                tensors.insert("scale_input".to_owned(), Tensor::new(s, &dev).unwrap());
            }
            let lin = Lin::new(3, 2, &VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap();
            let y = lin.forward(&on, &x).unwrap().to_vec2::<f32>().unwrap();
            let weight = Fp8Weight {
                weight: &stored,
                scale: 0.5,
                input_scale: used.map(f64::from),
            };
            let expected =
                linear_fp8_reference(&x, weight, Some(&bias), Epilogue::None, DType::F32)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
            assert_eq!(y, expected, "input scale {file_input_scale:?}");
            // Off: today's dequantized product, which e4m3 inputs do not match exactly.
            let off = lin
                .forward(&Kernels::cpu(), &x)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_ne!(off, expected);
            assert!(
                (off[0][1] - expected[0][1]).abs() < 0.1,
                "{off:?} vs {expected:?}"
            );
        }
    }

    /// A whole (tiny) fp8_scaled DiT with the switch on: every float8 layer goes through the
    /// FP8 product, so the output moves by e4m3's activation error and no more.
    #[test]
    fn the_fp8_switch_reaches_every_float8_layer_of_the_model() {
        use crate::wan::{Config, ModelType, WanModel};

        let cfg = Config {
            model_type: ModelType::I2v,
            in_dim: 6,
            out_dim: 4,
            dim: 32,
            ffn_dim: 64,
            freq_dim: 8,
            text_dim: 12,
            text_len: 5,
            num_heads: 2,
            num_layers: 2,
            ..Config::t2v_a14b()
        };
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        WanModel::new(&cfg, &VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let mut tensors = HashMap::new();
        let mut float8 = 0;
        for (i, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
            let shape = var.as_tensor().shape().clone();
            let values: Vec<f32> = (0..shape.elem_count())
                .map(|j| ((((j * 31 + i * 17) % 89) as f32 / 89.0) - 0.5) * 0.6)
                .collect();
            let tensor = Tensor::from_vec(values, shape, &dev).unwrap();
            if name.starts_with("blocks.") && name.ends_with(".weight") && tensor.rank() == 2 {
                let scale = 0.3_f32 / 448.0;
                let prefix = name.trim_end_matches("weight");
                tensors.insert(
                    format!("{prefix}scale_weight"),
                    Tensor::new(scale, &dev).unwrap(),
                );
                let stored = tensor.affine(1.0 / f64::from(scale), 0.0).unwrap();
                tensors.insert(name.clone(), stored.to_dtype(DType::F8E4M3).unwrap());
                float8 += 1;
            } else {
                tensors.insert(name.clone(), tensor);
            }
        }
        assert!(float8 >= 2 * 10, "{float8} float8 layers");
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let ramp = |shape: &[usize], phase: f32| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
            Tensor::from_vec(values, shape, &dev).unwrap()
        };
        let (x, y) = (ramp(&[1, 4, 2, 4, 4], 0.0), ramp(&[1, 2, 2, 4, 4], 1.0));
        let context = ramp(&[1, 3, 12], 2.0);
        let t = Tensor::new(&[700_i64], &dev).unwrap();
        let model = WanModel::new(&cfg, &vb).unwrap();
        let dequantized = model.forward(&x, Some(&y), &t, &context).unwrap();
        let model = model.with_kernels(Kernels::cpu().with_fp8_matmul(true));
        let fp8 = model.forward(&x, Some(&y), &t, &context).unwrap();
        let diff = (&fp8 - &dequantized)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let norm = dequantized.sqr().unwrap().sum_all().unwrap();
        let rel_l2 = (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt();
        println!("tiny fp8_scaled DiT, FP8 matmul against dequantized: rel L2 {rel_l2:.2e}");
        assert!(rel_l2 > 1e-4 && rel_l2 < 0.1, "{rel_l2}");
    }

    /// What the LoRA backend gives for a float8 layer it merged into: float32 values, still
    /// divided by the scale, for the "as stored" request.
    struct MergedLike(HashMap<String, Tensor>);

    impl candle_nn::var_builder::SimpleBackend for MergedLike {
        fn get(
            &self,
            _: Shape,
            name: &str,
            _: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.get_unchecked(name, dtype, dev)
        }

        fn get_unchecked(
            &self,
            name: &str,
            dtype: DType,
            _: &Device,
        ) -> candle_core::Result<Tensor> {
            let t = self.0[name].clone();
            if dtype == DType::F8E4M3 {
                Ok(t)
            } else {
                t.to_dtype(dtype)
            }
        }

        fn contains_tensor(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
    }

    #[test]
    fn a_lora_merged_float8_layer_is_kept_in_the_model_dtype() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "weight".to_owned(),
                Tensor::new(&[[3.0_f32, -1.0], [0.25, 5.0]], &dev).unwrap(),
            ),
            (
                "bias".to_owned(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            ),
            (
                "scale_weight".to_owned(),
                Tensor::new(0.5_f32, &dev).unwrap(),
            ),
        ]);
        let x = Tensor::new(&[[1.0_f32, 2.0]], &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
                Box::new(MergedLike(tensors.clone()));
            let vb = VarBuilder::from_backend(backend, dtype, dev.clone());
            let lin = Lin::new(2, 2, &vb).unwrap();
            // Two bytes a value in bf16, not the merge's four.
            assert_eq!(lin.stored_dtype(), dtype);
            assert_eq!(lin.weight_bytes(), 4 * dtype.size_in_bytes());
            let y = lin.forward(&Kernels::cpu(), &x).unwrap();
            let y = y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(y, vec![vec![0.5, 5.125]]);
        }
    }

    /// A LoRA merged into a float8 layer through the real LoRA backend: requantized, the layer
    /// stays float8 with its own scale at one byte a weight; not, it is bf16 at two.
    #[test]
    fn a_requantized_lora_merge_keeps_the_layer_float8_with_its_scale() {
        use std::collections::HashSet;

        use super::super::lora::{LoraDeltas, LoraSpec};

        let dev = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lora.safetensors");
        let lora = HashMap::from([
            (
                "diffusion_model.l.lora_down.weight".to_owned(),
                Tensor::ones((1, 4), DType::F32, &dev).unwrap(),
            ),
            (
                "diffusion_model.l.lora_up.weight".to_owned(),
                Tensor::new(&[[0.01_f32], [0.02], [-0.03], [0.04]], &dev).unwrap(),
            ),
        ]);
        candle_core::safetensors::save(&lora, &path).unwrap();
        let values: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * 0.37).collect();
        let stored = Tensor::from_vec(values, (4, 4), &dev)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let tensors = HashMap::from([
            ("l.weight".to_owned(), stored),
            (
                "l.bias".to_owned(),
                Tensor::zeros(4, DType::F32, &dev).unwrap(),
            ),
            (
                "l.scale_weight".to_owned(),
                Tensor::new(0.5_f32, &dev).unwrap(),
            ),
        ]);
        let names: HashSet<String> = tensors.keys().cloned().collect();
        let x = Tensor::new(&[[1.0_f32, -2.0, 0.5, 3.0]], &dev).unwrap();
        let mut outputs = Vec::new();
        for requantize in [false, true] {
            let mut deltas = LoraDeltas::default();
            let spec = LoraSpec {
                path: path.clone(),
                strength: 1.0,
            };
            assert_eq!(deltas.add(&spec, &names).unwrap().merged, 1);
            let mode = super::super::LoraMode::Merge;
            let (backend, _) = deltas.wrap(Box::new(tensors.clone()), requantize, mode);
            let vb = VarBuilder::from_backend(backend, DType::BF16, dev.clone());
            let lin = Lin::new(4, 4, &vb.pp("l")).unwrap();
            let (dtype, bytes) = if requantize {
                (DType::F8E4M3, 16)
            } else {
                (DType::BF16, 32)
            };
            assert_eq!(lin.stored_dtype(), dtype);
            assert_eq!(lin.weight_bytes(), bytes);
            assert_eq!(lin.dtype(), DType::BF16);
            let y = lin.forward(&Kernels::cpu(), &x).unwrap();
            outputs.push(y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
        }
        // Stored values stay below 4, where an e4m3 step is 0.25: each weight moves by at most
        // 0.25 × the scale 0.5 from the exact merge, so an output by at most 0.125 · Σ|x| = 0.81
        // (plus bf16 rounding).
        for (a, b) in outputs[0][0].iter().zip(&outputs[1][0]) {
            assert!((a - b).abs() < 0.125 * 6.5 + 0.05, "{outputs:?}");
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
    fn gguf_block_quantized_weights_stay_quantized_and_save_memory() {
        use std::path::Path;

        use crate::gguf::{GgufFile, QuantizedMatmul};

        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/files_dit_gguf_kquants/wan_t2v_kquants.gguf");
        let dev = Device::Cpu;
        let file = GgufFile::open(&path).unwrap();
        let header = file.header();
        // Whole file: what the DiT keeps resident vs. the same weights dequantized to bf16.
        let resident = file.resident_bytes(2, false);
        let dequantized = file.resident_bytes(2, true);
        println!(
            "K-quant GGUF: {resident} bytes resident quantized, {dequantized} as bf16 ({:.2}x less)",
            dequantized as f64 / resident as f64
        );
        assert!(resident * 3 < dequantized, "{resident} vs {dequantized}");

        let names: HashMap<String, String> = file
            .shapes()
            .keys()
            .map(|k| (k.clone(), k.clone()))
            .collect();
        let vb = VarBuilder::from_backend(
            file.into_backend(names, QuantizedMatmul::default()),
            DType::BF16,
            dev.clone(),
        );
        let mut quantized = 0;
        for (module, in_dim, out_dim) in [
            ("blocks.0.self_attn.q", 256, 256),
            ("blocks.0.cross_attn.o", 256, 256),
            ("blocks.0.ffn.2", 256, 256),
            ("time_projection.1", 256, 6 * 256),
        ] {
            let lin = Lin::new(in_dim, out_dim, &vb.pp(module)).unwrap();
            let stored = &header.tensors[&format!("{module}.weight")];
            assert!(stored.dtype.starts_with('Q'), "{module}: {}", stored.dtype);
            assert_eq!(lin.stored_dtype(), DType::U8, "{module}");
            assert_eq!(lin.weight_bytes() as u64, stored.bytes, "{module}");
            // Less than half of bf16 for every block type (Q6_K: 6.56 bits a value).
            assert!(lin.weight_bytes() * 2 < in_dim * out_dim * 2, "{module}");
            assert_eq!(lin.dtype(), DType::BF16);
            quantized += 1;
        }
        assert_eq!(quantized, 4);
        // Plain GGUF tensors (F16 here: its input width is not a whole K-quant block) stay plain.
        let text = Lin::new(24, 256, &vb.pp("text_embedding.0")).unwrap();
        assert_eq!(text.stored_dtype(), DType::BF16);
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
