//! Model sizes for the memory plan, read from file headers (safetensors, shards, GGUF) without
//! loading any tensor data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::EngineError;
use crate::wan::LoraLoad;
use crate::wan::lora_mode::{LayerStorage, LoraMode};
use crate::weights::Header;

/// Head size shared by every released Wan model.
const WAN_HEAD_DIM: u64 = 128;

/// The DiT's shape and how its resident bytes split between blocks and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DitSize {
    pub dim: u64,
    pub ffn_dim: u64,
    pub num_heads: u64,
    pub num_blocks: u64,
    /// The largest `blocks.N.*` group, resident bytes.
    pub block_weights: u64,
    /// Everything outside the blocks (embeddings, time MLP, head), resident bytes.
    pub non_block_weights: u64,
    /// The LoRA pairs it applies on the fly, for the activations their forward adds.
    pub lora_on_the_fly: OnTheFlyLoras,
}

/// What of an expert's LoRAs is applied on the fly (`wan/lora_side.rs`), for the transient its
/// layers' forward adds ([`super::lora_on_the_fly_transient`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OnTheFlyLoras {
    /// The largest stacked rank on one layer (the ranks of every LoRA on it summed); 0 when no
    /// layer takes its pairs on the fly.
    pub rank: u64,
    /// The widest output of a GGUF layer that takes its pairs on the fly (its delta is added
    /// after the quantized product, not accumulated in it); 0 when none does.
    pub gguf_output: u64,
}

impl OnTheFlyLoras {
    /// The larger of each term: what either of two experts needs.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        Self {
            rank: self.rank.max(other.rank),
            gguf_output: self.gguf_output.max(other.gguf_output),
        }
    }
}

impl DitSize {
    /// The shape of a Wan DiT from its architecture: `dim`, `ffn_dim`, `num_blocks`, the text
    /// width `text_dim`, `in_dim` channels, at `bytes_per_param` (for planning without a file).
    #[must_use]
    pub fn from_architecture(
        dim: u64,
        ffn_dim: u64,
        num_blocks: u64,
        text_dim: u64,
        in_dim: u64,
        bytes_per_param: u64,
    ) -> Self {
        // Self- and cross-attention (q, k, v, o with biases, q/k norms), FFN, modulation, norm3.
        let attention = 4 * (dim * dim + dim) + 2 * dim;
        let block = 2 * attention + (dim * ffn_dim + ffn_dim) + (ffn_dim * dim + dim) + 8 * dim;
        // Patch embedding, text MLP, time MLP and projection, head.
        let freq_dim = 256;
        let non_block = in_dim * 4 * dim
            + dim
            + (text_dim * dim + dim)
            + (dim * dim + dim)
            + (freq_dim * dim + dim)
            + (dim * dim + dim)
            + (dim * 6 * dim + 6 * dim)
            + (dim * 64 + 64)
            + 2 * dim;
        Self {
            dim,
            ffn_dim,
            num_heads: dim / WAN_HEAD_DIM,
            num_blocks,
            block_weights: block * bytes_per_param,
            non_block_weights: non_block * bytes_per_param,
            lora_on_the_fly: OnTheFlyLoras::default(),
        }
    }

    /// Resident bytes of the whole expert.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.non_block_weights + self.block_weights * self.num_blocks
    }
}

/// The VAE's shape, for its decode and encode peaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VaeSize {
    /// Channels of the decoder's full-resolution stage (96 for the Wan2.1 VAE).
    pub last_stage_channels: u64,
    /// Pixels per latent pixel on a side (8 for Wan2.1, 16 for Wan2.2).
    pub spatial_stride: u64,
    /// Channels of the encoder's full-resolution stage (96 for Wan2.1, 160 for Wan2.2).
    pub first_stage_channels: u64,
    /// Encoder-input pixels per latent pixel on a side (8 for both: Wan2.2 patchifies first).
    pub encode_stride: u64,
}

impl VaeSize {
    #[must_use]
    pub fn from_config(cfg: &crate::wan_vae::Config) -> Self {
        let base = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let mult = cfg.dim_mult.first().copied().unwrap_or(1);
        Self {
            last_stage_channels: (base * mult) as u64,
            spatial_stride: cfg.spatial_stride() as u64,
            first_stage_channels: (cfg.base_dim * mult) as u64,
            encode_stride: (cfg.spatial_stride() / cfg.patch_size.max(1)) as u64,
        }
    }
}

/// Every model of a render, as resident bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelSizes {
    pub high_noise_weights: u64,
    pub low_noise_weights: u64,
    /// The larger expert's shape.
    pub dit: DitSize,
    /// Whether the DiT's weights stay stored as float8 (`fp8_scaled`) or GGUF blocks and are
    /// dequantized layer by layer at use: no cheaper file to suggest, and the largest layer's
    /// dequantized copy counts in the activations.
    pub dit_dequantizes_at_use: bool,
    /// Whether the DiT's blocks can stream from host memory (block swapping): not GGUF's
    /// quantized blocks, which load whole (`wan/linear.rs`).
    pub dit_can_stream: bool,
    pub text_encoder: u64,
    pub vae_weights: u64,
    pub vae: VaeSize,
}

/// The headers of a model file or folder (shards, a diffusers component folder, GGUF).
pub fn headers(path: &Path) -> Result<Vec<Header>, EngineError> {
    if path.is_file() && crate::gguf::is_gguf(path) {
        return Ok(vec![crate::gguf::GgufFile::open(path)?.header()]);
    }
    crate::weights::model_files(path)?
        .iter()
        .map(|file| crate::weights::read_header(file))
        .collect()
}

/// Bytes a tensor takes once loaded: float8 stays float8 in `fp8_scaled` files (the linear
/// layer dequantizes at use); everything else becomes the compute dtype.
fn resident_bytes(dtype: &str, shape: &[usize], scaled_fp8: bool, compute_bytes: u64) -> u64 {
    let numel = shape.iter().product::<usize>() as u64;
    if scaled_fp8 && dtype.starts_with("F8") {
        numel
    } else {
        numel * compute_bytes
    }
}

/// Whether any tensor is GGUF block-quantized (`Q8_0`, `Q4_K`, …: the header's GGML type name).
fn has_gguf_blocks(headers: &[Header]) -> bool {
    headers
        .iter()
        .flat_map(|h| h.tensors.values())
        .any(|entry| entry.dtype.starts_with('Q'))
}

fn is_scaled_fp8(headers: &[Header]) -> bool {
    headers.iter().flat_map(|h| h.tensors.keys()).any(|k| {
        k.ends_with("scaled_fp8") || k.ends_with(".scale_weight") || k.ends_with(".weight_scale")
    })
}

/// The block index of a DiT key (`blocks.12.self_attn.q.weight` → 12), any prefix.
fn block_index(key: &str) -> Option<u64> {
    let rest = crate::wan::weights::strip_prefix(key).strip_prefix("blocks.")?;
    rest.split('.').next()?.parse().ok()
}

/// A DiT expert's size from its headers at `compute_bytes` per converted element, and whether
/// its weights are dequantized at use (float8 or GGUF blocks).
pub fn dit_size(headers: &[Header], compute_bytes: u64) -> Result<(DitSize, bool), EngineError> {
    dit_size_with_loras(headers, &[], compute_bytes)
}

/// The expert's tensor names in the original layout, by header key.
fn original_names(headers: &[Header]) -> BTreeMap<&str, String> {
    use crate::wan::weights::{Layout, detect_layout, rename, strip_prefix};
    let keys = || {
        headers
            .iter()
            .flat_map(|h| h.tensors.keys().map(String::as_str))
    };
    let layout = detect_layout(keys().map(strip_prefix));
    keys()
        .map(|key| {
            let bare = strip_prefix(key);
            let name = match layout {
                Layout::Original => bare.to_owned(),
                Layout::Diffusers => rename(bare, Layout::Diffusers),
            };
            (key, name)
        })
        .collect()
}

/// As [`dit_size`], with `loras` merged at load: a float8 layer a LoRA changes is kept in the
/// compute dtype (`wan/linear.rs`), twice or more the bytes. Which layers that is comes from
/// the LoRA files' headers; no tensor data is read.
pub fn dit_size_with_loras(
    headers: &[Header],
    loras: &[PathBuf],
    compute_bytes: u64,
) -> Result<(DitSize, bool), EngineError> {
    let merge = LoraLoad {
        mode: LoraMode::Merge,
        requantize: false,
    };
    dit_size_with_merges(headers, loras, compute_bytes, merge)
}

/// As [`dit_size_with_loras`], the LoRAs taken as `lora` says: with `requantize`, float8 layers
/// a merge changes are rounded back to float8 at load (`wan/lora_requant.rs`) and count one
/// byte a weight again; a layer whose pairs its [`LoraMode`] applies on the fly keeps its
/// stored size and adds the pairs' factors at `compute_bytes` (`wan/lora_side.rs`).
pub fn dit_size_with_merges(
    headers: &[Header],
    loras: &[PathBuf],
    compute_bytes: u64,
    lora: LoraLoad,
) -> Result<(DitSize, bool), EngineError> {
    let scaled_fp8 = is_scaled_fp8(headers);
    // GGUF block-quantized layers stay quantized (`wan/linear.rs`) unless a merge changes them.
    let gguf = has_gguf_blocks(headers);
    let names = original_names(headers);
    let mut changed = HashSet::new();
    let mut factors: HashMap<String, u64> = HashMap::new();
    if !loras.is_empty() {
        let model_names: HashSet<String> = names.values().cloned().collect();
        for path in loras {
            if scaled_fp8 || gguf {
                changed.extend(crate::wan::lora::changed_tensors(path, &model_names)?);
            }
            for (target, n) in crate::wan::lora::low_rank_elements(path, &model_names)? {
                *factors.entry(target).or_default() += n;
            }
        }
    }
    let mut blocks: BTreeMap<u64, u64> = BTreeMap::new();
    let mut non_block = 0;
    let mut dim = None;
    let mut ffn_dim = 0;
    let mut lora_on_the_fly = OnTheFlyLoras::default();
    for (key, entry) in headers.iter().flat_map(|h| h.tensors.iter()) {
        let name = names.get(key.as_str());
        let storage = match entry.dtype.as_str() {
            d if scaled_fp8 && d.starts_with("F8") => LayerStorage::Float8,
            d if d.starts_with('Q') => LayerStorage::Gguf,
            _ => LayerStorage::Plain,
        };
        let on_the_fly = name
            .and_then(|n| factors.get(n))
            .filter(|_| lora.mode.on_the_fly(storage, lora.requantize));
        let merged = name.is_some_and(|n| changed.contains(n));
        let stored = match storage {
            LayerStorage::Gguf => entry.bytes,
            _ => resident_bytes(&entry.dtype, &entry.shape, scaled_fp8, compute_bytes),
        };
        let bytes = if let Some(&factor_elements) = on_the_fly {
            // Factors `[R, in]` and `[out, R]`; a patch embedding's `in` is its kernel's
            // product.
            if let Some((&out, kernel)) = entry.shape.split_first() {
                let inp: usize = kernel.iter().product();
                let rank = factor_elements / (out + inp).max(1) as u64;
                lora_on_the_fly.rank = lora_on_the_fly.rank.max(rank);
                if storage == LayerStorage::Gguf {
                    lora_on_the_fly.gguf_output = lora_on_the_fly.gguf_output.max(out as u64);
                }
            }
            stored + factor_elements * compute_bytes
        } else if merged && !(lora.requantize && entry.dtype.starts_with("F8")) {
            entry.shape.iter().product::<usize>() as u64 * compute_bytes
        } else {
            stored
        };
        let bare = crate::wan::weights::strip_prefix(key);
        if bare == "patch_embedding.weight" {
            dim = entry.shape.first().map(|&d| d as u64);
        }
        match block_index(key) {
            Some(index) => {
                *blocks.entry(index).or_default() += bytes;
                if index == 0 && entry.shape.len() == 2 {
                    ffn_dim = ffn_dim.max(entry.shape[0] as u64);
                }
            }
            None => non_block += bytes,
        }
    }
    let path = headers.first().map(|h| h.path.clone()).unwrap_or_default();
    let Some(dim) = dim else {
        return Err(EngineError::BadModelFile {
            problem: "this is not a Wan diffusion transformer (no patch_embedding.weight): choose the DiT expert file".to_owned(),
            path,
        });
    };
    Ok((
        DitSize {
            dim,
            ffn_dim,
            num_heads: dim / WAN_HEAD_DIM,
            num_blocks: blocks.len() as u64,
            block_weights: blocks.values().copied().max().unwrap_or(0),
            non_block_weights: non_block,
            lora_on_the_fly,
        },
        scaled_fp8 || gguf,
    ))
}

/// Resident bytes of a whole model (text encoder, VAE): its encoder-side tensors at
/// `compute_bytes` each (a full T5 file's `decoder.*` is never loaded).
#[must_use]
pub fn model_bytes(headers: &[Header], compute_bytes: u64) -> u64 {
    let scaled_fp8 = is_scaled_fp8(headers);
    headers
        .iter()
        .flat_map(|h| h.tensors.iter())
        .filter(|(key, _)| !key.starts_with("decoder.block"))
        .map(|(_, e)| resident_bytes(&e.dtype, &e.shape, scaled_fp8, compute_bytes))
        .sum()
}

/// Resident bytes of a text encoder or VAE: from its headers, or, for a PyTorch checkpoint
/// (`.pth`, which those loaders also read), from its file size, taken as 16-bit weights
/// converted to `compute_bytes` (never less than the file).
pub fn model_bytes_at(path: &Path, compute_bytes: u64) -> Result<u64, EngineError> {
    match headers(path) {
        Ok(headers) => Ok(model_bytes(&headers, compute_bytes)),
        Err(error) => {
            let fingerprint = crate::model_files::fingerprint(path)?;
            if fingerprint.format == crate::model_files::Format::Pickle {
                Ok(fingerprint.bytes.max(fingerprint.bytes / 2 * compute_bytes))
            } else {
                Err(error)
            }
        }
    }
}

/// One DiT expert as it will be loaded: its shape and resident bytes (its LoRAs taken as the
/// load takes them), whether it dequantizes at use, whether its blocks can stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertSize {
    pub dit: DitSize,
    /// Float8 (`fp8_scaled`) or GGUF-quantized weights, dequantized layer by layer at use.
    pub dequantizes_at_use: bool,
    /// Not GGUF: its blocks can stream from host memory (block swapping).
    pub can_stream: bool,
}

impl ExpertSize {
    /// The expert of `headers` with `loras` taken as `lora` says, at `compute_bytes` per
    /// converted element.
    pub fn of(
        headers: &[Header],
        loras: &[PathBuf],
        compute_bytes: u64,
        lora: LoraLoad,
    ) -> Result<Self, EngineError> {
        let (dit, dequantizes_at_use) = dit_size_with_merges(headers, loras, compute_bytes, lora)?;
        Ok(Self {
            dit,
            dequantizes_at_use,
            can_stream: !has_gguf_blocks(headers),
        })
    }

    /// ComfyUI `fp8_scaled` weights (float8 kept resident, not GGUF blocks).
    #[must_use]
    pub fn is_float8(&self) -> bool {
        self.can_stream && self.dequantizes_at_use
    }

    /// What kind of weights it keeps, for messages: "GGUF", "float8" or "plain".
    #[must_use]
    pub fn storage_name(&self) -> &'static str {
        if !self.can_stream {
            "GGUF"
        } else if self.is_float8() {
            "float8"
        } else {
            "plain"
        }
    }
}

impl ModelSizes {
    /// The sizes of a two-expert render: the experts as they will load, the text encoder's and
    /// the VAE's read from their files, the VAE's weights at `vae_bytes` per element (its
    /// dtype: f32 on the CPU, bf16 on CUDA, as `ModelCache::vae` loads it).
    pub fn read(
        (high_noise, low_noise): (&ExpertSize, &ExpertSize),
        text_encoder: &Path,
        (vae, vae_size, vae_bytes): (&Path, VaeSize, u64),
        compute_bytes: u64,
    ) -> Result<Self, EngineError> {
        let sizes = Self {
            high_noise_weights: 0,
            low_noise_weights: 0,
            dit: high_noise.dit,
            dit_dequantizes_at_use: false,
            dit_can_stream: false,
            text_encoder: model_bytes_at(text_encoder, compute_bytes)?,
            vae_weights: model_bytes_at(vae, vae_bytes)?,
            vae: vae_size,
        };
        Ok(sizes.with_experts(high_noise, low_noise))
    }

    /// These sizes with the experts' replaced by `high` and `low` (the plan's shape is the
    /// larger one's; the on-the-fly LoRA terms are the larger of each).
    #[must_use]
    pub fn with_experts(&self, high: &ExpertSize, low: &ExpertSize) -> Self {
        let mut dit = if low.dit.total() > high.dit.total() {
            low.dit
        } else {
            high.dit
        };
        dit.lora_on_the_fly = high.dit.lora_on_the_fly.max(low.dit.lora_on_the_fly);
        Self {
            high_noise_weights: high.dit.total(),
            low_noise_weights: low.dit.total(),
            dit,
            dit_dequantizes_at_use: high.dequantizes_at_use && low.dequantizes_at_use,
            dit_can_stream: high.can_stream && low.can_stream,
            ..self.clone()
        }
    }
}
