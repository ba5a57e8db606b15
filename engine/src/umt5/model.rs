//! The umT5 encoder network. Layer names mirror the Hugging Face checkpoint keys
//! (`encoder.block.{i}.layer.{0,1}…`); Wan-native checkpoints are renamed to them on load.

#![allow(
    clippy::needless_pass_by_value,
    reason = "candle's layer constructors take the VarBuilder by value: vb.pp(..) makes one per layer"
)]

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder, embedding};
use stillmotion_kernels::Kernels;

use super::linear::Proj;

use super::Config;

/// T5's scale-only RMS norm. Statistics in f32 as both references compute them.
#[derive(Clone, Debug)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        x.broadcast_mul(&inv_rms)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// The bucket of each key-minus-query offset, bidirectional as in the encoder. The float path
/// mirrors the references' float32 arithmetic so bucket edges fall on the same offsets.
fn relative_position_buckets(len: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_span = (max_distance as f64 / max_exact as f64).ln() as f32;
    let mut buckets = Vec::with_capacity(len * len);
    for query in 0..len {
        for key in 0..len {
            let offset = key as i64 - query as i64;
            let base = if offset > 0 { half } else { 0 };
            let distance = offset.unsigned_abs() as usize;
            let within = if distance < max_exact {
                distance
            } else {
                let scaled = (distance as f32 / max_exact as f32).ln() / log_span
                    * (half - max_exact) as f32;
                (max_exact + scaled as usize).min(half - 1)
            };
            buckets.push((base + within) as u32);
        }
    }
    buckets
}

/// Self-attention with its own relative position bias (every umT5 layer has one) and no
/// 1/√d scaling of the scores (T5 folds it into the weights).
#[derive(Clone, Debug)]
struct SelfAttention {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    relative_attention_bias: Embedding,
    num_heads: usize,
    d_kv: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder<'_>, kernels: &Kernels) -> candle_core::Result<Self> {
        let inner = cfg.inner_dim();
        Ok(Self {
            q: Proj::new(cfg.d_model, inner, vb.pp("q"), kernels)?,
            k: Proj::new(cfg.d_model, inner, vb.pp("k"), kernels)?,
            v: Proj::new(cfg.d_model, inner, vb.pp("v"), kernels)?,
            o: Proj::new(inner, cfg.d_model, vb.pp("o"), kernels)?,
            relative_attention_bias: embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                vb.pp("relative_attention_bias"),
            )?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// `[1, heads, len, len]` bias for a sequence of `len` tokens.
    fn position_bias(&self, len: usize, device: &Device) -> candle_core::Result<Tensor> {
        let buckets = relative_position_buckets(len, self.num_buckets, self.max_distance);
        let buckets = Tensor::from_vec(buckets, (len, len), device)?;
        self.relative_attention_bias
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// `keep`: `[batch, 1, 1, len]` u8, 1 for keys that may be attended to.
    fn forward(&self, x: &Tensor, keep: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, len, _) = x.dims3()?;
        let heads = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, len, self.num_heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(self.q.forward(x)?)?;
        let k = heads(self.k.forward(x)?)?;
        let v = heads(self.v.forward(x)?)?;
        let dtype = x.dtype();
        let mut scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            .broadcast_add(&self.position_bias(len, x.device())?.to_dtype(DType::F32)?)?;
        if let Some(keep) = keep {
            // As the official masked_fill: masked keys get the lowest float, so exp() gives 0.
            let floor = Tensor::new(f32::MIN, x.device())?.broadcast_as(scores.shape())?;
            scores = keep
                .broadcast_as(scores.shape())?
                .where_cond(&scores, &floor)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out =
            weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, len, self.num_heads * self.d_kv))?;
        self.o.forward(&out)
    }
}

/// Gated-GELU feed-forward: `wo(gelu_tanh(wi_0 x) * wi_1 x)`.
#[derive(Clone, Debug)]
struct DenseGatedGeluDense {
    wi_0: Proj,
    wi_1: Proj,
    wo: Proj,
}

impl DenseGatedGeluDense {
    fn new(cfg: &Config, vb: VarBuilder<'_>, kernels: &Kernels) -> candle_core::Result<Self> {
        Ok(Self {
            wi_0: Proj::new(cfg.d_model, cfg.d_ff, vb.pp("wi_0"), kernels)?,
            wi_1: Proj::new(cfg.d_model, cfg.d_ff, vb.pp("wi_1"), kernels)?,
            wo: Proj::new(cfg.d_ff, cfg.d_model, vb.pp("wo"), kernels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.wi_0.forward(x)?.gelu()?;
        self.wo.forward(&(gate * self.wi_1.forward(x)?)?)
    }
}

#[derive(Clone, Debug)]
struct Block {
    attention_norm: T5LayerNorm,
    attention: SelfAttention,
    ffn_norm: T5LayerNorm,
    ffn: DenseGatedGeluDense,
}

impl Block {
    fn new(cfg: &Config, vb: VarBuilder<'_>, kernels: &Kernels) -> candle_core::Result<Self> {
        let attn = vb.pp("layer.0");
        let ffn = vb.pp("layer.1");
        Ok(Self {
            attention_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                attn.pp("layer_norm"),
            )?,
            attention: SelfAttention::new(cfg, attn.pp("SelfAttention"), kernels)?,
            ffn_norm: T5LayerNorm::new(cfg.d_model, cfg.layer_norm_epsilon, ffn.pp("layer_norm"))?,
            ffn: DenseGatedGeluDense::new(cfg, ffn.pp("DenseReluDense"), kernels)?,
        })
    }

    fn forward(&self, x: &Tensor, keep: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = fp16_clamp(
            (x + self
                .attention
                .forward(&self.attention_norm.forward(x)?, keep)?)?,
        )?;
        fp16_clamp((&x + self.ffn.forward(&self.ffn_norm.forward(&x)?)?)?)
    }
}

/// As both references do in float16: once the residual stream overflows, pull it back just
/// inside the finite range so later layers do not turn it into NaN.
fn fp16_clamp(x: Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F16 {
        return Ok(x);
    }
    let peak = x
        .abs()?
        .max_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    if peak.is_infinite() {
        let limit = f64::from(half::f16::MAX.to_f32()) - 1000.0;
        x.clamp(-limit, limit)
    } else {
        Ok(x)
    }
}

/// The umT5 encoder stack (`UMT5EncoderModel` / the official `T5Encoder`).
#[derive(Clone, Debug)]
pub struct Umt5Encoder {
    shared: Embedding,
    blocks: Vec<Block>,
    final_layer_norm: T5LayerNorm,
    cfg: Config,
}

impl Umt5Encoder {
    /// `vb` is rooted at the checkpoint's top level (`shared.weight`, `encoder.…`).
    pub fn new(cfg: &Config, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let encoder = vb.pp("encoder");
        // One handle for every layer: fp8 weights are dequantized through it at use.
        let kernels = Kernels::for_device(vb.device(), &crate::device::kernel_options())
            .map_err(candle_core::Error::wrap)?;
        let kernels = &kernels;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, encoder.pp(format!("block.{i}")), kernels))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            shared: embedding(cfg.vocab_size, cfg.d_model, vb.pp("shared"))?,
            blocks,
            final_layer_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                encoder.pp("final_layer_norm"),
            )?,
            cfg: cfg.clone(),
        })
    }

    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    #[must_use]
    pub fn device(&self) -> &Device {
        self.shared.embeddings().device()
    }

    /// Hidden states `[batch, len, d_model]` for token ids `[batch, len]`. `attention_mask`
    /// (`[batch, len]`, any integer or float type, nonzero = real token) hides padding keys.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, len) = input_ids.dims2()?;
        let keep = attention_mask
            .map(|mask| mask.ne(0.0)?.reshape((b, 1, 1, len)))
            .transpose()?;
        let mut x = self.shared.forward(input_ids)?;
        for block in &self.blocks {
            x = block.forward(&x, keep.as_ref())?;
        }
        self.final_layer_norm.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_overflow_is_clamped_and_other_dtypes_are_untouched() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[f32::INFINITY, -f32::INFINITY, 1.5], &dev).unwrap();
        let clamped = fp16_clamp(x.to_dtype(DType::F16).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            clamped[0].is_finite() && clamped[0] > 60_000.0,
            "{clamped:?}"
        );
        assert_eq!((clamped[1], clamped[2]), (-clamped[0], 1.5));
        let kept = fp16_clamp(x).unwrap().to_vec1::<f32>().unwrap();
        assert!(kept[0].is_infinite());
    }

    #[test]
    fn a_comfyui_fp8_scaled_file_keeps_every_projection_float8() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "../tests/golden/umt5_comfyui_fp8_scaled/umt5_tiny_fp8_e4m3fn_scaled.safetensors",
        );
        let cfg = Config {
            vocab_size: 96,
            d_model: 32,
            d_kv: 6,
            d_ff: 40,
            num_heads: 4,
            num_layers: 2,
            ..Config::umt5_xxl()
        };
        let encoder = super::super::Checkpoint::locate(&path)
            .unwrap()
            .load_encoder(&cfg, DType::BF16, &Device::Cpu)
            .unwrap();
        let mut resident = 0;
        for block in &encoder.blocks {
            let a = &block.attention;
            let f = &block.ffn;
            for proj in [&a.q, &a.k, &a.v, &a.o, &f.wi_0, &f.wi_1, &f.wo] {
                assert_eq!(proj.stored_dtype(), DType::F8E4M3);
                resident += 1;
            }
        }
        assert_eq!(resident, 14);
        assert_eq!(encoder.shared.embeddings().dtype(), DType::BF16);
    }

    #[test]
    fn a_gguf_encoder_keeps_its_block_quantized_projections_quantized() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/umt5_gguf_city96_q8_0/umt5_tiny_Q8_0.gguf");
        let cfg = Config {
            vocab_size: 96,
            d_model: 32,
            d_kv: 6,
            d_ff: 40,
            num_heads: 4,
            num_layers: 2,
            ..Config::umt5_xxl()
        };
        let encoder = super::super::Checkpoint::locate(&path)
            .unwrap()
            .load_encoder(&cfg, DType::F32, &Device::Cpu)
            .unwrap();
        for block in &encoder.blocks {
            let a = &block.attention;
            let f = &block.ffn;
            // Input width 32 (one Q8_0 block): q, k, v, wi_0, wi_1. o (24) and wo (40) are F16.
            for proj in [&a.q, &a.k, &a.v, &f.wi_0, &f.wi_1] {
                assert_eq!(proj.stored_dtype(), DType::U8);
            }
            for proj in [&a.o, &f.wo] {
                assert_eq!(proj.stored_dtype(), DType::F32);
            }
        }
    }

    #[test]
    fn buckets_match_hand_computed_t5_values() {
        // 32 buckets, max distance 128: 16 per direction, exact below 8, log-spaced to 128.
        let buckets = relative_position_buckets(200, 32, 128);
        let bucket = |query: usize, key: usize| buckets[query * 200 + key];
        assert_eq!(bucket(0, 0), 0);
        assert_eq!(bucket(5, 0), 5);
        assert_eq!(bucket(0, 5), 21);
        assert_eq!(bucket(0, 8), 24);
        assert_eq!(bucket(0, 16), 26);
        assert_eq!(bucket(16, 0), 10);
        assert_eq!(bucket(0, 199), 31);
        assert_eq!(bucket(199, 0), 15);
    }
}
