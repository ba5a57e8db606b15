//! The memory plan: before a job's first GPU work, predict what each component needs on the
//! device and decide where it lives, or refuse the job with what to change.
//!
//! **Inputs.** Model sizes come from the file headers ([`sizes`]), never from loading: each
//! tensor counts at the dtype it is resident in (float8 weights of ComfyUI `fp8_scaled` files
//! stay float8 and GGUF blocks stay quantized, see `wan/linear.rs`; everything else is converted
//! to the compute dtype at load; a float8 or GGUF layer a LoRA changes is merged into a
//! compute-dtype weight, which the
//! LoRA file's header tells, unless the merge is requantized to float8, see `wan/lora_requant.rs`, or the layer applies the pairs on the fly: stored size plus the factors, see `wan/lora_mode.rs`). The token count is `latent frames × (h / 8 / 2) × (w / 8 / 2)` for
//! the Wan2.1 VAE (spatial stride 8) and the DiT's 1×2×2 patches, `w`×`h` the size the image is
//! fitted to (the official fit keeps the image's aspect, so it may differ from the recipe's). The budget is device memory minus the
//! user's reserve; on the CPU a plan is made against a given budget (tests) or none.
//!
//! **Predictions** (bytes; `a` = activation dtype size, 2 for bf16, `L` tokens, `d` model
//! width, `f` FFN width, `h` heads):
//! - DiT weights per expert: the header's resident bytes; one block is the largest
//!   `blocks.N.*` group.
//! - DiT activation peak, one transformer block at a time, batch 1 (guidance runs the
//!   conditional and unconditional passes one after the other, as `sampling::denoise` does):
//!   residual stream and its modulated copy in f32 (`2·L·d·4`, the official forward keeps
//!   the stream in float32 under autocast); q, k, v (`3·L·d·a`); the attention output
//!   (`L·d·a`); the score block of the chunked attention, f32 scores and their softmax
//!   (`2·4·min(h·L², MAX_SCORE_ELEMENTS)`, `wan/attention.rs`); the FFN hidden layer before
//!   and after GELU (`2·L·f·a`); for float8 weights, the FFN weight dequantized for its call
//!   (`f·d·a`, [`dequantized_weight`]); for LoRA pairs applied on the fly, the low-rank
//!   product and, on GGUF layers, one output-sized delta ([`lora_on_the_fly_transient`]). A
//!   fixed [`RUNTIME_OVERHEAD`] covers the CUDA context,
//!   cuBLAS workspace and the latents, condition and text context (tens of MB at 480p). The
//!   VAE's weights count too: it stays loaded from the image encode to the decode.
//! - VAE decode peak: [`VAE_LIVE_VALUES_PER_PIXEL_CHANNEL`] values per output pixel and
//!   decoder channel of one tile, plus the VAE weights, at [`VAE_PLANNING_BYTES`] a value on
//!   every device (the VAE runs in bf16 on CUDA, but its peak there is more than half the f32
//!   one).
//! - VAE encode peak (the conditioning clip): [`VAE_ENCODE_VALUES_PER_PIXEL_CHANNEL`] values
//!   per encoder-input pixel and channel of the encoder's first stage, for one tile, at
//!   [`VAE_PLANNING_BYTES`] a value.
//! - Text encoder: its resident weights plus [`TEXT_ENCODER_ACTIVATIONS`] (512 tokens).
//!
//! **Decisions**, cheapest in time first: both experts resident; one expert at a time
//! (swapped at the boundary); block swapping with `N` blocks resident plus two streaming
//! slots (one computing, one being filled from pinned host memory); refuse. The VAE decodes
//! whole frames when they fit next to what stays resident, else in the largest square tiles
//! that do (at least [`MIN_VAE_TILE`], below which the seams would show); the conditioning
//! clip encodes the same way, in its own tiles. The text encoder runs on the device when it
//! fits beside both (it stays loaded between jobs); else on the device alone (beside the VAE),
//! before the experts load, freed after encoding, when it fits there; else on the CPU.
//! LoRA `auto` is resolved per expert against the same budget before the final plan
//! ([`lora_choice`]): an expert whose merge grows its layers is merged while that swaps no more
//! blocks, else its growing layers take the pairs on the fly.

pub mod lora_choice;
pub mod sizes;

use serde::Serialize;

pub use lora_choice::{ExpertLora, ExpertLoras};
pub use sizes::{DitSize, ExpertSize, ModelSizes, OnTheFlyLoras, VaeSize};

use crate::EngineError;

/// One GiB: budgets and reserves are given in GB meaning GiB, as ComfyUI's `--reserve-vram`.
pub const GIB: u64 = 1 << 30;

/// Bytes per VAE activation value the plan sizes decode and encode tiles with, on every device
/// (see where it is used).
pub const VAE_PLANNING_BYTES: u64 = 4;

/// CUDA context, cuBLAS and cuDNN workspaces, module code, latents, condition and text
/// context, and what the allocator's pool holds beyond its live bytes.
///
/// Measured on an H100 at a 16 GiB budget (`bench/RESULTS.md`, run 33, the pool read with
/// `stillmotion_kernels::memory_pool`): device-wide use less the pool's reservation is
/// 0.83 GiB (what is not allocated through the pool), and after the first expert loads the pool
/// holds 1.28 GiB beyond its live bytes (load temporaries freed inside chunks that stay
/// partly used; 0.56 GiB after the second expert's load), while the activation prediction,
/// sized for the CPU's chunked attention, is about 1.1 GiB above the live peak on the GPU.
/// With 0.75 GiB here that render peaked at 16.22 GiB; 1 GiB covers the difference. Since
/// the block frees its inputs as it goes, CUDA plans count the live peak instead
/// ([`dit_activation_peak_fused`]) and the pool's slack with it ([`POOL_SLACK`]). Synchronising
/// does not return the held memory (the pool's release threshold is already 0): it is
/// fragmentation, not caching.
pub const RUNTIME_OVERHEAD: u64 = GIB;

/// umT5-XXL activations for 512 tokens (a few MB per layer), rounded up generously.
pub const TEXT_ENCODER_ACTIVATIONS: u64 = GIB / 4;

/// Values held at once per output pixel and per channel of the VAE decoder's last stage (at
/// the VAE's dtype).
/// Calibrated on the CPU (`examples/vae_decode_memory.rs`, base dim 16, 256×256): untiled peak
/// 500 MiB at 17 frames and 533 MiB at 49 (the difference is the output clip), tiled with
/// 17-latent tiles 183 MiB: about 120 values per pixel and channel. The diffusers-style tiled
/// decode at 512×512 (17 frames, base dim 16): untiled 1738 MiB peak RSS, in the pipeline's
/// smallest tiles (256 pixels every 128) 620 MiB, of which 480 MiB is this estimate for one
/// tile and the rest the assembled clip and the kept tile rows (2.8× the untiled time).
pub const VAE_LIVE_VALUES_PER_PIXEL_CHANNEL: u64 = 120;

/// f32 values held at once per encoder-input pixel and per channel of the VAE encoder's first
/// stage. Measured on the CPU (`examples/vae_decode_memory.rs --encode`, base dim 16, 17
/// frames): 256×256 untiled peaked 348 MiB above the weights (87 values), 128-pixel tiles
/// 94 MiB (94 values per tile pixel); rounded up.
pub const VAE_ENCODE_VALUES_PER_PIXEL_CHANNEL: u64 = 100;

/// Smallest VAE decode tile side, in latent pixels: `wan_vae::MIN_TILE`, the smallest tiles
/// whose seams were measured at 40 dB or more.
pub const MIN_VAE_TILE: u64 = crate::wan_vae::MIN_TILE as u64;

/// Smallest VAE encode tile side, in latent pixels: the same tiles as the decode's.
pub const MIN_VAE_ENCODE_TILE: u64 = MIN_VAE_TILE;

/// The shape of the clip the DiT sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Tokens {
    pub latent_frames: u64,
    pub latent_height: u64,
    pub latent_width: u64,
    /// `latent_frames × latent_height / 2 × latent_width / 2` (1×2×2 patches).
    pub count: u64,
}

impl Tokens {
    /// The tokens of a `width`×`height`, `num_frames` clip with a VAE of `spatial_stride`
    /// (8 for Wan2.1, 16 for Wan2.2) and temporal stride 4.
    #[must_use]
    pub fn new(num_frames: u32, width: u32, height: u32, spatial_stride: u32) -> Self {
        let latent_frames = u64::from((num_frames.max(1) - 1) / 4 + 1);
        let latent_height = u64::from(height / spatial_stride);
        let latent_width = u64::from(width / spatial_stride);
        Self {
            latent_frames,
            latent_height,
            latent_width,
            count: latent_frames * (latent_height / 2) * (latent_width / 2),
        }
    }
}

/// Where the DiT experts live while denoising.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum DitPlacement {
    /// Both experts on the device for the whole job (no reloads at the boundary).
    BothResident,
    /// One expert on the device at a time: the high-noise one is freed before the low-noise
    /// one is loaded.
    OneAtATime,
    /// Of each expert, `resident_blocks` of `total_blocks` transformer blocks stay on the
    /// device; the rest stream from pinned host memory through two device slots, one
    /// prefetched while one computes. One expert is on the device at a time.
    BlockSwap {
        resident_blocks: u64,
        total_blocks: u64,
    },
}

/// Where a component runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    Device,
    Cpu,
    /// On the device before the experts load (they go to host memory meanwhile), freed as
    /// soon as the prompts are encoded: for a component that fits the device alone but not
    /// beside the experts. Only a job whose prompts are not cached loads it.
    DeviceThenFreed,
}

/// The predicted sizes behind a plan, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Predictions {
    pub high_noise_weights: u64,
    pub low_noise_weights: u64,
    /// The largest transformer block of either expert.
    pub dit_block_weights: u64,
    /// An expert's weights outside its blocks (embeddings, head).
    pub dit_non_block_weights: u64,
    pub dit_activation_peak: u64,
    pub text_encoder: u64,
    pub vae_weights: u64,
    /// The VAE decode activations with the chosen tiling.
    pub vae_decode_peak: u64,
    /// The VAE encode activations (conditioning clip) with the chosen tiling.
    pub vae_encode_peak: u64,
    /// The largest device use of the job under this plan.
    pub peak: u64,
}

/// What goes where, decided before the job's first GPU work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryPlan {
    /// Device memory minus the reserve; `None` when unlimited (a CPU job).
    pub budget: Option<u64>,
    pub tokens: Tokens,
    pub dit: DitPlacement,
    pub text_encoder: Placement,
    /// Square VAE decode tiles of at most this many latent pixels a side (the decode's
    /// `wan_vae::Tiling::for_decode`); `None` decodes whole frames.
    pub vae_tile: Option<u64>,
    /// Square VAE encode tiles of this many latent pixels a side for the conditioning clip
    /// (`wan_vae::Tiling::for_encode`); `None` encodes whole frames.
    pub vae_encode_tile: Option<u64>,
    /// Pixels per latent pixel on a side (8 for the Wan2.1 VAE), for showing tile sizes.
    pub vae_stride: u64,
    pub predicted: Predictions,
}

/// Everything a plan is made from.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInputs {
    pub sizes: ModelSizes,
    pub tokens: Tokens,
    /// Bytes per activation element (2 for bf16 on CUDA, 4 for f32 on the CPU), the DiT's
    /// and the VAE's alike (`ModelCache::vae` runs the VAE in bf16 on CUDA, f32 on the CPU).
    pub activation_bytes: u64,
    /// The self-attention runs through the 8-bit kernels, whose pre-pass keeps quantized
    /// copies of q, k and v ([`int8_attention_buffers`]).
    pub int8_attention: bool,
    /// The attention is a fused kernel that never holds the scores (every CUDA backend), so
    /// the DiT's activations are [`dit_activation_peak_fused`]'s; otherwise the CPU's chunked
    /// attention and [`dit_activation_peak`].
    pub fused_attention: bool,
}

/// GiB with one decimal, for messages.
#[must_use]
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GIB as f64)
}

/// The DiT's activation peak for one block over `tokens` (see the module doc).
#[must_use]
pub fn dit_activation_peak(dit: &DitSize, tokens: u64, activation_bytes: u64) -> u64 {
    let (l, d, f, a) = (tokens, dit.dim, dit.ffn_dim, activation_bytes);
    let stream = 2 * l * d * 4;
    let qkv = 3 * l * d * a;
    let attention_out = l * d * a;
    let scores = 2
        * 4
        * (dit.num_heads * l * l)
            .min(stillmotion_kernels::attention::reference::MAX_SCORE_ELEMENTS as u64);
    let ffn_hidden = 2 * l * f * a;
    stream + qkv + attention_out + scores + ffn_hidden
}

/// What a CUDA denoise holds beyond [`dit_activation_peak_fused`]'s live tensors and the
/// planned weights, measured on an H100 with fp8_scaled experts at 16, 10 and 8 GiB budgets
/// (`bench/RESULTS.md`, run 43, the pool read with `stillmotion_kernels::memory_pool`):
/// - the allocator pool's slack beyond its live bytes, load temporaries freed inside chunks that
///   stay partly used: 1.76 GiB at 16 GiB (run 33: 1.19–1.42 GiB);
/// - live bytes beyond the plan's weights and the stages' tensors: 0.6–0.8 GiB, not yet
///   attributed (the conditioning, tables, library workspaces taken from the pool).
///
/// With 1.5 GiB here the three renders peaked 0.64–0.86 GiB over their budgets; 2.5 GiB
/// covers them with about 0.2 GiB to spare. [`dit_activation_peak`]'s overestimate on the GPU
/// used to absorb all of this.
pub const POOL_SLACK: u64 = 5 * GIB / 2;

/// The DiT's activation peak for one block over `tokens` where the attention is fused (no
/// scores held), as `wan/block.rs` frees each stage's inputs once used, plus [`POOL_SLACK`]
/// (the pool's slack and live bytes the stages do not account for):
/// the largest of
/// - a norm fused with the residual add before it: the previous stream (float32) and the
///   pending output, the new stream and its normed copy (`2·L·d·4 + 2·L·d·a`);
/// - the self-attention: the stream, q, k, v and the attention output (`L·d·4 + 4·L·d·a`);
/// - the FFN: the stream, the normed input (then the output) and the hidden layer
///   (`L·d·4 + L·d·a + L·f·a`).
///
/// At 480p on the A14B (bf16) that is 2.0 GB, where the live peak measured in a forward is
/// 32,549 MiB device-wide less the weights (`bench/RESULTS.md`, runs 39 and 41).
#[must_use]
pub fn dit_activation_peak_fused(dit: &DitSize, tokens: u64, activation_bytes: u64) -> u64 {
    let (l, d, f, a) = (tokens, dit.dim, dit.ffn_dim, activation_bytes);
    let stream = l * d * 4;
    let norm = 2 * stream + 2 * l * d * a;
    let attention = stream + 4 * l * d * a;
    let ffn = stream + l * d * a + l * f * a;
    norm.max(attention).max(ffn) + POOL_SLACK
}

/// The 8-bit attention's pre-pass output for `tokens` (`stillmotion_kernels` `gpu/sage.rs`):
/// INT8 q and k and FP8 v, one byte a value each, alive through the attention call. Their
/// per-group scales and channel statistics are a few MB and not counted.
#[must_use]
pub fn int8_attention_buffers(dit: &DitSize, tokens: u64) -> u64 {
    3 * tokens * dit.dim
}

/// The weight a float8 layer dequantizes to at each call (`wan/linear.rs`), alive beside the
/// FFN's hidden activations: the largest layer (the FFN's, `f·d`) in the activation dtype.
/// Nothing for a DiT whose weights are already in the compute dtype.
#[must_use]
pub fn dequantized_weight(dit: &DitSize, float8: bool, activation_bytes: u64) -> u64 {
    if float8 {
        dit.ffn_dim * dit.dim * activation_bytes
    } else {
        0
    }
}

/// What a layer that applies its LoRA pairs on the fly holds beyond its own product while it
/// runs (`wan/lora_side.rs`), for `tokens` at `activation_bytes` (the factors' dtype is the
/// compute dtype): the low-rank product `[L, R]` of the largest stacked rank, and for a GGUF
/// layer, whose quantized product cannot accumulate the delta, the output-sized delta
/// `[L, out]` of the widest such layer before it is added. Float and float8 layers accumulate
/// the delta into their product's output on CUDA, so they add no output-sized term. Nothing
/// when no layer is on the fly.
#[must_use]
pub fn lora_on_the_fly_transient(lora: &OnTheFlyLoras, tokens: u64, activation_bytes: u64) -> u64 {
    if lora.rank == 0 {
        return 0;
    }
    let low_rank = tokens * lora.rank * activation_bytes;
    let gguf_delta = tokens * lora.gguf_output * activation_bytes;
    low_rank + gguf_delta
}

/// The VAE decode activations for square tiles of `tile` latent pixels (`None`: whole frames),
/// `bytes` per value (the VAE's dtype).
#[must_use]
pub fn vae_decode_peak(vae: &VaeSize, tokens: &Tokens, tile: Option<u64>, bytes: u64) -> u64 {
    let (h, w) = match tile {
        Some(t) => (t.min(tokens.latent_height), t.min(tokens.latent_width)),
        None => (tokens.latent_height, tokens.latent_width),
    };
    VAE_LIVE_VALUES_PER_PIXEL_CHANNEL
        * vae.last_stage_channels
        * vae.spatial_stride
        * vae.spatial_stride
        * bytes
        * h
        * w
}

/// The VAE encode activations of the conditioning clip for square tiles of `tile` latent
/// pixels (`None`: whole frames), `bytes` per value (the VAE's dtype).
#[must_use]
pub fn vae_encode_peak(vae: &VaeSize, tokens: &Tokens, tile: Option<u64>, bytes: u64) -> u64 {
    let (h, w) = match tile {
        Some(t) => (t.min(tokens.latent_height), t.min(tokens.latent_width)),
        None => (tokens.latent_height, tokens.latent_width),
    };
    VAE_ENCODE_VALUES_PER_PIXEL_CHANNEL
        * vae.first_stage_channels
        * vae.encode_stride
        * vae.encode_stride
        * bytes
        * h
        * w
}

/// The largest square tile side (latent pixels) whose activations, `peak(Some(1))` per latent
/// pixel, fit `room`: `Ok(None)` when whole frames fit, `Err(needed)` (the activations of the
/// smallest tile, `min`) when not even those do.
///
/// # Errors
/// The smallest tile's activations, when they do not fit `room`.
pub fn tile_for(
    room: u64,
    min: u64,
    peak: impl Fn(Option<u64>) -> u64,
) -> Result<Option<u64>, u64> {
    if peak(None) <= room {
        return Ok(None);
    }
    let side = ((room / peak(Some(1)).max(1)) as f64).sqrt() as u64;
    if side < min {
        Err(peak(Some(min)))
    } else {
        Ok(Some(side))
    }
}

impl MemoryPlan {
    /// Decides placements for `inputs` within `budget` bytes (`None`: unlimited). Refuses with
    /// [`EngineError::MemoryPlanRefused`], naming what to change, when nothing fits.
    pub fn decide(inputs: &PlanInputs, budget: Option<u64>) -> Result<Self, EngineError> {
        let s = &inputs.sizes;
        let tokens = inputs.tokens;
        // The VAE computes in bf16 on CUDA, but its peak there is more than half the f32 one
        // (norms and upsampling keep float32 intermediates): sized at 2 bytes, the 10 GiB
        // render decoded in 67-latent tiles and peaked at 10.57 GiB (bench/RESULTS.md run 20);
        // sized at 4 (46-latent tiles) it held at 9.73 GiB (run 16). So the VAE is planned at
        // float32 size everywhere until its bf16 peaks are calibrated on a GPU.
        let vae_bytes = VAE_PLANNING_BYTES;
        let int8_buffers = if inputs.int8_attention {
            int8_attention_buffers(&s.dit, tokens.count)
        } else {
            0
        };
        let block_activations = if inputs.fused_attention {
            dit_activation_peak_fused(&s.dit, tokens.count, inputs.activation_bytes)
        } else {
            dit_activation_peak(&s.dit, tokens.count, inputs.activation_bytes)
        };
        let activations = block_activations
            + dequantized_weight(&s.dit, s.dit_dequantizes_at_use, inputs.activation_bytes)
            + lora_on_the_fly_transient(
                &s.dit.lora_on_the_fly,
                tokens.count,
                inputs.activation_bytes,
            )
            + int8_buffers;
        let expert = s.high_noise_weights.max(s.low_noise_weights);
        let both = s.high_noise_weights + s.low_noise_weights;
        let block = s.dit.block_weights;
        let non_block = s.dit.non_block_weights;
        // The VAE stays loaded from the image encode through denoising to the decode.
        let denoise_fixed = activations + RUNTIME_OVERHEAD + s.vae_weights;
        let limit = budget.unwrap_or(u64::MAX);

        // DiT placement and what of it stays on the device (during decode too).
        let (dit, dit_resident, dit_peak) = if both.saturating_add(denoise_fixed) <= limit {
            (DitPlacement::BothResident, both, both + denoise_fixed)
        } else if expert + denoise_fixed <= limit {
            (DitPlacement::OneAtATime, expert, expert + denoise_fixed)
        } else {
            // N resident blocks plus two streaming slots: one block computing while the next
            // one's weights arrive (`wan/streamed.rs`).
            if !s.dit_can_stream {
                let why = format!(
                    "one whole expert ({}) beside {} of activations: a GGUF expert's quantized blocks cannot stream from host memory, so block swapping needs its fp8_scaled or bf16 file",
                    gib(expert),
                    gib(activations)
                );
                return Err(refusal(inputs, budget, expert + denoise_fixed, &why));
            }
            let room = limit.saturating_sub(denoise_fixed + non_block);
            let slots = 2 * block;
            let total = s.dit.num_blocks;
            if room < slots {
                let needed = denoise_fixed + non_block + slots;
                let why = format!(
                    "{} of activations for {} tokens and two transformer blocks",
                    gib(activations),
                    tokens.count
                );
                return Err(refusal(inputs, budget, needed, &why));
            }
            let fit = (room - slots) / block.max(1);
            let resident_blocks = fit.min(total);
            let resident = non_block + resident_blocks * block + slots;
            (
                DitPlacement::BlockSwap {
                    resident_blocks,
                    total_blocks: total,
                },
                resident,
                resident + denoise_fixed,
            )
        };

        // VAE decode next to what of the DiT stays resident.
        let vae_room = limit.saturating_sub(dit_resident + s.vae_weights + RUNTIME_OVERHEAD);
        let vae_fixed = dit_resident + s.vae_weights + RUNTIME_OVERHEAD;
        let vae_tile = tile_for(vae_room, MIN_VAE_TILE, |t| {
            vae_decode_peak(&s.vae, &tokens, t, vae_bytes)
        })
        .map_err(|tile_peak| {
            let why = format!(
                "decoding the VAE in its smallest tiles beside the DiT's {}",
                gib(dit_resident)
            );
            refusal(inputs, budget, vae_fixed + tile_peak, &why)
        })?;
        let vae_peak = vae_decode_peak(&s.vae, &tokens, vae_tile, vae_bytes);
        let decode_total = vae_fixed + vae_peak;
        // The conditioning clip's encode, planned beside the same (experts stay loaded between
        // jobs, so they may be resident when the next job encodes its image).
        let vae_encode_tile = tile_for(vae_room, MIN_VAE_ENCODE_TILE, |t| {
            vae_encode_peak(&s.vae, &tokens, t, vae_bytes)
        })
        .map_err(|tile_peak| {
            let why = format!(
                "encoding the image with the VAE in its smallest tiles beside the DiT's {}",
                gib(dit_resident)
            );
            refusal(inputs, budget, vae_fixed + tile_peak, &why)
        })?;
        let encode_peak = vae_encode_peak(&s.vae, &tokens, vae_encode_tile, vae_bytes);
        let vae_total = decode_total.max(vae_fixed + encode_peak);

        // The text encoder stays loaded between jobs (encodings are cached, prompts change) when
        // it fits beside both the denoising and the decoding. Else it runs on the device alone,
        // next to the VAE (kept between jobs) before the experts load, and is freed after
        // encoding: the CPU's umT5-XXL takes 40 s or more where the device takes about one.
        let text_total = s.text_encoder + TEXT_ENCODER_ACTIVATIONS;
        let text_alone = text_total + s.vae_weights + RUNTIME_OVERHEAD;
        let (text_encoder, peak) = if dit_peak.max(vae_total).saturating_add(text_total) <= limit {
            (
                Placement::Device,
                (dit_peak + text_total).max(vae_total + text_total),
            )
        } else if text_alone <= limit {
            (
                Placement::DeviceThenFreed,
                dit_peak.max(vae_total).max(text_alone),
            )
        } else {
            (Placement::Cpu, dit_peak.max(vae_total))
        };
        Ok(Self {
            budget,
            tokens,
            dit,
            text_encoder,
            vae_tile,
            vae_encode_tile,
            vae_stride: s.vae.spatial_stride,
            predicted: Predictions {
                high_noise_weights: s.high_noise_weights,
                low_noise_weights: s.low_noise_weights,
                dit_block_weights: block,
                dit_non_block_weights: non_block,
                dit_activation_peak: activations,
                text_encoder: s.text_encoder,
                vae_weights: s.vae_weights,
                vae_decode_peak: vae_peak,
                vae_encode_peak: encode_peak,
                peak,
            },
        })
    }

    /// One line per decision, for the CLI and the log.
    #[must_use]
    pub fn summary(&self) -> String {
        let p = &self.predicted;
        let dit = match self.dit {
            DitPlacement::BothResident => format!(
                "both experts resident ({} + {})",
                gib(p.high_noise_weights),
                gib(p.low_noise_weights)
            ),
            DitPlacement::OneAtATime => format!(
                "one expert at a time ({} each)",
                gib(p.high_noise_weights.max(p.low_noise_weights))
            ),
            DitPlacement::BlockSwap {
                resident_blocks,
                total_blocks,
            } => format!(
                "block swapping, {resident_blocks} of {total_blocks} blocks resident ({} a block)",
                gib(p.dit_block_weights)
            ),
        };
        let text = match self.text_encoder {
            Placement::Device => "on the device",
            Placement::Cpu => "on the CPU",
            Placement::DeviceThenFreed => {
                "on the device before the experts load, freed after encoding"
            }
        };
        let tiles = |tile: Option<u64>| match tile {
            None => "whole frames".to_owned(),
            Some(t) => {
                let pixels = t * self.vae_stride;
                format!("{pixels}×{pixels} pixel tiles")
            }
        };
        let vae = tiles(self.vae_tile);
        let encode = tiles(self.vae_encode_tile);
        let budget = self.budget.map_or_else(|| "no limit".to_owned(), gib);
        format!(
            "memory plan ({} tokens, budget {budget}): DiT {dit}, activations {}; text encoder {text}; VAE decode {vae} ({}), image encode {encode} ({}); predicted peak {}",
            self.tokens.count,
            gib(p.dit_activation_peak),
            gib(p.vae_decode_peak),
            gib(p.vae_encode_peak),
            gib(p.peak)
        )
    }
}

/// The refusal: what is needed, what is available, and what to change.
fn refusal(inputs: &PlanInputs, budget: Option<u64>, needed: u64, why: &str) -> EngineError {
    let fp8 = if inputs.sizes.dit_dequantizes_at_use {
        ""
    } else {
        " or a float8 (fp8_scaled) or GGUF-quantized DiT file, which keep the weights at half their size or less,"
    };
    EngineError::MemoryPlanRefused {
        problem: format!(
            "this render needs at least {} on the device ({why}) but the budget is {}: choose a smaller resolution or fewer frames,{fp8} or lower the VRAM reserve (--reserve-vram)",
            gib(needed),
            budget.map_or_else(|| "unlimited".to_owned(), gib),
        ),
    }
}

#[cfg(test)]
mod lora_choice_tests;
#[cfg(test)]
mod tests;
