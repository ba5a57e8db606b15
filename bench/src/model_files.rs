//! Random-weight model files at the real Wan2.2-I2V-A14B sizes, in the formats users download
//! from ComfyUI, for the end-to-end render benchmark: no real weights can be downloaded where it
//! runs, and two bf16 experts (57 GB) plus the text encoder would not fit the GPU machine's
//! disk, so the large models are written as ComfyUI `fp8_scaled` files (float8 e4m3 linear
//! weights with a per-tensor `scale_weight`, a `scaled_fp8` marker, the rest bf16):
//!
//! - `wan2.2_i2v_{high,low}_noise_14B_fp8_scaled.safetensors` (14.3 GB each);
//! - `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (6.7 GB) with a small `tokenizer.json` beside it
//!   (the golden cases' SentencePiece model: the prompt's ids only index the real-size table);
//! - `wan_2.1_vae.safetensors` (bf16).
//!
//! Tensors are generated while the file is written (safetensors asks for one tensor's bytes
//! at a time), on every core, from a table of 65,536 normal samples indexed by random bits:
//! values are N(0, 0.02²) at the precision of the stored dtype, norm scales are 1.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype, View};
use stillmotion_engine::wan::Config;
use stillmotion_engine::{umt5, wan_vae};

use crate::random_weights::dit_shapes;

/// The standard deviation of every random weight (what the DiT benchmark uses too).
const WEIGHT_STD: f32 = 0.02;

/// Where each file of the benchmark's model set lives in `dir`.
pub struct ModelSet {
    pub high_noise: PathBuf,
    pub low_noise: PathBuf,
    pub text_encoder: PathBuf,
    pub vae: PathBuf,
    /// A LoRA on every linear layer of the blocks, written only on request
    /// ([`ModelSet::write_lora`]).
    pub lora: PathBuf,
}

/// The LoRA's rank: LightX2V's distillation LoRAs are rank 64.
const LORA_RANK: usize = 64;

impl ModelSet {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            high_noise: dir.join("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
            low_noise: dir.join("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"),
            text_encoder: dir.join("umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
            vae: dir.join("wan_2.1_vae.safetensors"),
            lora: dir.join("random_lora_rank64.safetensors"),
        }
    }

    /// Writes the LoRA unless it is there: `lora_down` / `lora_up` pairs and an `alpha` for
    /// each linear layer of the 40 blocks (440 layers, as LightX2V's LoRAs cover), with the
    /// `diffusion_model.` prefix, bf16. `alpha` is rank / 8, so a pair changes its weight by a
    /// few percent. Returns the bytes written.
    pub fn write_lora(&self) -> anyhow::Result<u64> {
        if self.lora.is_file() {
            return Ok(0);
        }
        let mut tensors = Vec::new();
        for (name, shape) in dit_shapes(&Config::i2v_a14b()) {
            let Some(base) = name.strip_suffix(".weight") else {
                continue;
            };
            if !name.starts_with("blocks.") || shape.len() != 2 {
                continue;
            }
            let (out, input) = (shape[0], shape[1]);
            for (part, shape) in [
                ("lora_down", vec![LORA_RANK, input]),
                ("lora_up", vec![out, LORA_RANK]),
            ] {
                let key = format!("diffusion_model.{base}.{part}.weight");
                let fill = Fill::Bf16Normal(seed_for(&key, 5));
                tensors.push((key, RandomTensor::new(shape, Dtype::BF16, fill)));
            }
            tensors.push((
                format!("diffusion_model.{base}.alpha"),
                RandomTensor::new(vec![], Dtype::F32, Fill::Constant(LORA_RANK as f32 / 8.0)),
            ));
        }
        write(&self.lora, tensors)
    }

    /// Writes every file that is not there yet; returns the bytes written.
    pub fn write_missing(&self, tokenizer_json: &str) -> anyhow::Result<u64> {
        let mut written = 0;
        let cfg = Config::i2v_a14b();
        for (path, seed) in [(&self.high_noise, 1), (&self.low_noise, 2)] {
            if !path.is_file() {
                let tensors = comfy_fp8_scaled(dit_shapes(&cfg), "model.diffusion_model.", seed);
                written += write(path, tensors)?;
            }
        }
        if !self.text_encoder.is_file() {
            let shapes = recorded_shapes(|vb| {
                umt5::Umt5Encoder::new(&umt5::Config::umt5_xxl(), vb).map(drop)
            })?;
            written += write(&self.text_encoder, comfy_fp8_scaled(shapes, "", 3))?;
            let tokenizer = self.text_encoder.with_file_name("tokenizer.json");
            std::fs::write(&tokenizer, tokenizer_json)
                .with_context(|| format!("writing {}", tokenizer.display()))?;
        }
        if !self.vae.is_file() {
            let shapes = recorded_shapes(|vb| {
                wan_vae::WanVae::new(&wan_vae::Config::wan21(), &vb).map(drop)
            })?;
            let tensors = shapes
                .into_iter()
                .map(|(name, shape)| {
                    let fill = Fill::for_name(&name, 4);
                    (name, RandomTensor::new(shape, Dtype::BF16, fill))
                })
                .collect();
            written += write(&self.vae, tensors)?;
        }
        Ok(written)
    }
}

/// ComfyUI's `fp8_scaled` layout: every 2-D `.weight` (a linear layer) as float8 e4m3 with a
/// `scale_weight`, other tensors bf16, and the `scaled_fp8` marker.
fn comfy_fp8_scaled(shapes: Shapes, prefix: &str, seed: u64) -> Vec<(String, RandomTensor)> {
    let mut tensors = Vec::with_capacity(2 * shapes.len() + 1);
    for (name, shape) in shapes {
        let linear = shape.len() == 2 && name.ends_with(".weight") && !is_embedding(&name);
        if linear {
            let base = name.trim_end_matches(".weight");
            tensors.push((
                format!("{prefix}{base}.scale_weight"),
                RandomTensor::new(vec![], Dtype::F32, Fill::Constant(WEIGHT_STD)),
            ));
            let fill = Fill::Fp8Normal(seed_for(&name, seed));
            tensors.push((
                format!("{prefix}{name}"),
                RandomTensor::new(shape, Dtype::F8_E4M3, fill),
            ));
        } else {
            let fill = Fill::for_name(&name, seed);
            tensors.push((
                format!("{prefix}{name}"),
                RandomTensor::new(shape, Dtype::BF16, fill),
            ));
        }
    }
    tensors.push((
        format!("{prefix}scaled_fp8"),
        RandomTensor::new(vec![0], Dtype::F8_E4M3, Fill::Constant(0.0)),
    ));
    tensors
}

/// Lookup tables, not linear layers: ComfyUI keeps them in bf16.
fn is_embedding(name: &str) -> bool {
    name == "shared.weight" || name.contains("relative_attention_bias")
}

fn write(path: &Path, tensors: Vec<(String, RandomTensor)>) -> anyhow::Result<u64> {
    let bytes: u64 = tensors.iter().map(|(_, t)| t.data_len() as u64).sum();
    let partial = path.with_extension("partial");
    safetensors::serialize_to_file(tensors, None, &partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(bytes)
}

/// The name and shape of every tensor a model constructor asks for, without real weights.
fn recorded_shapes(
    build: impl FnOnce(VarBuilder<'_>) -> candle_core::Result<()>,
) -> anyhow::Result<Shapes> {
    let recorder = Recorder::default();
    let names = std::sync::Arc::clone(&recorder.names);
    build(VarBuilder::from_backend(
        Box::new(recorder),
        DType::BF16,
        Device::Cpu,
    ))?;
    let mut shapes = names
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    shapes.sort();
    shapes.dedup();
    Ok(shapes)
}

/// Tensor names with their shapes.
type Shapes = Vec<(String, Vec<usize>)>;

/// A weight source that hands out zeros (calloc'd, so nothing is touched) and notes each request.
#[derive(Default)]
struct Recorder {
    names: std::sync::Arc<Mutex<Shapes>>,
}

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _hints: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut names) = self.names.lock() {
            names.push((name.to_owned(), shape.dims().to_vec()));
        }
        Tensor::zeros(shape, dtype, device)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the recorder needs a shape for {name}")
    }

    /// Only what a constructor asks for unconditionally exists: optional tensors (fp8 scales,
    /// GGUF markers) are absent, so every layer takes its plain path.
    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

fn seed_for(name: &str, seed: u64) -> u64 {
    let mut hasher = DefaultHasher::new();
    (name, seed).hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Copy)]
enum Fill {
    Constant(f32),
    Bf16Normal(u64),
    Fp8Normal(u64),
}

impl Fill {
    /// Norm scales (`*norm*.weight`, `gamma`) are 1, everything else random.
    fn for_name(name: &str, seed: u64) -> Self {
        if name.ends_with("gamma") || (name.contains("norm") && name.ends_with(".weight")) {
            Self::Constant(1.0)
        } else {
            Self::Bf16Normal(seed_for(name, seed))
        }
    }
}

/// A tensor whose bytes are made when the writer asks for them.
struct RandomTensor {
    shape: Vec<usize>,
    dtype: Dtype,
    fill: Fill,
}

impl RandomTensor {
    fn new(shape: Vec<usize>, dtype: Dtype, fill: Fill) -> Self {
        Self { shape, dtype, fill }
    }

    fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for RandomTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data_len(&self) -> usize {
        self.elements() * self.dtype.bitsize() / 8
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let n = self.elements();
        let bytes = match (self.fill, self.dtype) {
            (Fill::Constant(v), Dtype::F32) => v.to_le_bytes().repeat(n),
            (Fill::Constant(v), Dtype::BF16) => half::bf16::from_f32(v).to_le_bytes().repeat(n),
            (Fill::Constant(_), _) => vec![0; self.data_len()],
            (Fill::Bf16Normal(seed), _) => {
                let table: Vec<[u8; 2]> = normal_table(seed)
                    .into_iter()
                    .map(|v| half::bf16::from_f32(v * WEIGHT_STD).to_le_bytes())
                    .collect();
                from_table(n, seed, |bits| table[usize::from(bits)]).concat()
            }
            (Fill::Fp8Normal(seed), _) => {
                let codes = Fp8Codes::new();
                let table: Vec<u8> = normal_table(seed)
                    .into_iter()
                    .map(|v| codes.nearest(v))
                    .collect();
                from_table(n, seed, |bits| table[usize::from(bits)])
            }
        };
        Cow::Owned(bytes)
    }
}

/// 65,536 samples of N(0, 1).
fn normal_table(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let normal = Normal::new(0.0_f32, 1.0).unwrap_or_else(|_| unreachable!("valid parameters"));
    (0..1 << 16).map(|_| normal.sample(&mut rng)).collect()
}

/// `n` values, each the table entry for 16 random bits, generated on every core in chunks
/// that each have their own stream (so the result does not depend on the core count).
fn from_table<T: Copy + Default + Send>(
    n: usize,
    seed: u64,
    lookup: impl Fn(u16) -> T + Sync,
) -> Vec<T> {
    const CHUNK: usize = 1 << 22;
    let mut out = vec![T::default(); n];
    let chunks: Vec<(usize, &mut [T])> = out.chunks_mut(CHUNK).enumerate().collect();
    let workers = std::thread::available_parallelism().map_or(4, std::num::NonZero::get);
    let queue = Mutex::new(chunks);
    std::thread::scope(|scope| {
        for worker in 0..workers {
            let (queue, lookup) = (&queue, &lookup);
            let spawned = std::thread::Builder::new()
                .name(format!("random-weights-{worker}"))
                .spawn_scoped(scope, move || {
                    while let Some((index, chunk)) = queue.lock().ok().and_then(|mut q| q.pop()) {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64));
                        let mut bits = vec![0_u8; 2 * chunk.len()];
                        rng.fill_bytes(&mut bits);
                        for (value, pair) in chunk.iter_mut().zip(bits.chunks_exact(2)) {
                            *value = lookup(u16::from_le_bytes([pair[0], pair[1]]));
                        }
                    }
                });
            if spawned.is_err() {
                break;
            }
        }
    });
    // A chunk no worker took (thread creation failed) is filled here.
    if let Ok(mut rest) = queue.into_inner() {
        for (index, chunk) in rest.drain(..) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64));
            for value in chunk.iter_mut() {
                *value = lookup((rng.next_u32() & 0xffff) as u16);
            }
        }
    }
    out
}

/// Every finite float8 e4m3fn value with its byte, sorted by value.
struct Fp8Codes(Vec<(f32, u8)>);

impl Fp8Codes {
    fn new() -> Self {
        let mut codes: Vec<(f32, u8)> = (0_u8..=255)
            .filter(|b| b & 0x7f != 0x7f)
            .map(|b| (fp8_e4m3_value(b), b))
            .collect();
        codes.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self(codes)
    }

    /// The byte of the float8 value nearest to `v` (saturating at ±448).
    fn nearest(&self, v: f32) -> u8 {
        let i = self.0.partition_point(|(value, _)| *value < v);
        let above = self.0.get(i);
        let below = i.checked_sub(1).and_then(|j| self.0.get(j));
        match (below, above) {
            (Some(lo), Some(hi)) => {
                if v - lo.0 <= hi.0 - v {
                    lo.1
                } else {
                    hi.1
                }
            }
            (Some(only), None) | (None, Some(only)) => only.1,
            (None, None) => 0,
        }
    }
}

/// The value of a float8 e4m3fn byte: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no
/// infinities, 0x7f/0xff are NaN (excluded by the caller).
fn fp8_e4m3_value(byte: u8) -> f32 {
    let sign = if byte & 0x80 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((byte >> 3) & 0x0f);
    let mantissa = f32::from(byte & 0x07) / 8.0;
    let magnitude = if exponent == 0 {
        mantissa * 2_f32.powi(-6)
    } else {
        (1.0 + mantissa) * 2_f32.powi(exponent - 7)
    };
    sign * magnitude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_codes_decode_as_candle_does() {
        let codes = Fp8Codes::new();
        assert_eq!(codes.0.len(), 254);
        let bytes: Vec<u8> = [-500.0_f32, -1.0, -0.013, 0.0, 0.0021, 0.3, 1.0, 448.0]
            .iter()
            .map(|&v| codes.nearest(v))
            .collect();
        let tensor = Tensor::from_vec(bytes, 8, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::U8))
            .unwrap();
        // Reinterpret the bytes as float8 through a safetensors round trip, as the loader does.
        let file = tempfile_path("fp8_codes");
        let data: Vec<u8> = tensor.to_vec1().unwrap();
        let view = safetensors::tensor::TensorView::new(Dtype::F8_E4M3, vec![8], &data).unwrap();
        safetensors::serialize_to_file([("x", view)], None, &file).unwrap();
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let values: Vec<f32> = loaded["x"].to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        let ours: Vec<f32> = data.iter().map(|&b| fp8_e4m3_value(b)).collect();
        assert_eq!(values, ours);
        assert_eq!(values[0], -448.0);
        assert_eq!(values[3], 0.0);
        assert!((values[4] - 0.0021).abs() < 0.0003);
        assert_eq!(values[6], 1.0);
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn random_tensors_are_deterministic_and_scaled() {
        let tensor = RandomTensor::new(vec![3, 1 << 21], Dtype::BF16, Fill::Bf16Normal(9));
        let bytes = tensor.data();
        assert_eq!(bytes.len(), tensor.data_len());
        assert_eq!(bytes, tensor.data(), "the same bytes every time");
        let values: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let n = values.len() as f32;
        let mean = values.iter().sum::<f32>() / n;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - WEIGHT_STD).abs() < 1e-3, "std {std}");
    }

    /// The files load through the product's loaders (fp8 scales applied, config detected from
    /// shapes) and give finite outputs: a real-size run on the GPU machine is too dear to find
    /// a key-name slip.
    #[test]
    fn written_files_load_through_the_product_loaders() {
        let cfg = Config {
            dim: 256,
            ffn_dim: 512,
            num_heads: 2,
            num_layers: 2,
            ..Config::i2v_a14b()
        };
        let dit = tempfile_path("dit");
        write(
            &dit,
            comfy_fp8_scaled(dit_shapes(&cfg), "model.diffusion_model.", 1),
        )
        .unwrap();
        let model =
            stillmotion_engine::wan::WanModel::load(&dit, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(model.config().dim, 256);
        assert_eq!(model.config().in_dim, 36);
        let x = Tensor::randn(0_f32, 1.0, (1, 16, 1, 4, 4), &Device::Cpu).unwrap();
        let y = Tensor::randn(0_f32, 1.0, (1, 20, 1, 4, 4), &Device::Cpu).unwrap();
        let t = Tensor::new(&[500_f32], &Device::Cpu).unwrap();
        let context = Tensor::randn(0_f32, 1.0, (1, 8, 4096), &Device::Cpu).unwrap();
        let out = model.forward(&x, Some(&y), &t, &context).unwrap();
        assert_finite(&out);
        std::fs::remove_file(dit).unwrap();

        let t5 = umt5::Config {
            vocab_size: 300,
            d_model: 64,
            d_ff: 96,
            num_heads: 2,
            num_layers: 2,
            ..umt5::Config::umt5_xxl()
        };
        let shapes = recorded_shapes(|vb| umt5::Umt5Encoder::new(&t5, vb).map(drop)).unwrap();
        assert!(shapes.iter().any(|(n, _)| n == "shared.weight"));
        let dir = std::env::temp_dir().join(format!("stillmotion-bench-t5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("umt5.safetensors");
        write(&file, comfy_fp8_scaled(shapes, "", 3)).unwrap();
        let tokenizer = dir.join("tokenizer.json");
        std::fs::write(&tokenizer, crate::e2e::TOKENIZER_JSON).unwrap();
        let encoder =
            umt5::TextEncoder::load(&file, &tokenizer, Some(&t5), DType::F32, &Device::Cpu)
                .unwrap();
        assert_finite(&encoder.encode_prompt("a lighthouse at dusk").unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn assert_finite(t: &Tensor) {
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "non-finite output");
        assert!(values.iter().any(|v| *v != 0.0), "all zeros");
    }

    fn tempfile_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "stillmotion-bench-{name}-{}.safetensors",
            std::process::id()
        ))
    }
}
