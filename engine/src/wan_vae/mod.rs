//! The Wan video VAEs: Wan2.1 (16 latent channels, stride 4×8×8 in time, height, width) and
//! Wan2.2 (48 channels, 4×16×16: a 2×2 patchify around the same kind of network, see
//! [`Config::wan22`]).
//!
//! A causal 3D convolutional autoencoder: residual blocks of channel-wise RMS norm, SiLU and
//! causal 3×3×3 convolutions; one single-head spatial attention block in each middle stage;
//! stride-2 spatial resampling and causal ×2 temporal resampling (`time_conv`). Encoding runs
//! over chunks of 1, 4, 4, … frames and decoding over one latent frame at a time, each layer
//! carrying its last frames to the next chunk, so memory does not grow with the clip length and
//! the result equals the reference's chunked result (the only result it defines: its temporal
//! resampling exists only in the chunked path).
//!
//! Reference: `wan/modules/vae2_1.py` (`WanVAE_`, `Wan2_1_VAE`) and `vae2_2.py` of the official
//! Wan2.2 code, and diffusers' `AutoencoderKLWan` (same Wan2.1 network, keys renamed by
//! [`diffusers_key`]).
//! Latents are normalised as the reference does: `(mean − latents_mean) · (1 / latents_std)`.
//!
//! The references run the VAE in f32, and so does the engine on the CPU. It runs in the dtype
//! of its weights, converting f32 pixels and latents on the way in (the pipeline loads it in
//! bf16 on the GPU): in f16 on the CPU a tiny random model lands at 8.8e-4 rel L2 (encode) and
//! 3.5e-3 (decode, 62 dB) from f32 (`precision_tests.rs`); bf16 cannot run on the CPU (candle's
//! CPU convolutions have no bf16 kernel).

mod blocks;
mod conv;
mod decoder;
mod encoder;
mod frames;
mod i2v;
#[cfg(test)]
mod precision_tests;
mod profile;
#[cfg(test)]
mod test_support;
mod tiled_decode;
mod tiled_encode;
mod tiling;
mod wan22;
mod weights;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use frames::to_rgb8;
pub use i2v::{i2v_condition, i2v_condition_tiled, i2v_mask};
pub use profile::StageTimes;
pub use tiling::{MIN_TILE, MIN_TILE_OVERLAP, Tiling};
pub use weights::{WeightLayout, diffusers_key, load, load_in};

use blocks::{ChunkState, from_frames, to_frames};
use conv::CausalConv3d;
use decoder::Decoder3d;
use encoder::Encoder3d;
use wan22::{Decoder22, Encoder22, unpatchify};

/// The Wan2.1 latent statistics (per channel), as `Wan2_1_VAE` hard-codes them.
pub const WAN21_LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// See [`WAN21_LATENTS_MEAN`].
pub const WAN21_LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// The Wan2.2 latent statistics (per channel), as `Wan2_2_VAE` hard-codes them.
pub const WAN22_LATENTS_MEAN: [f32; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667,
];
/// See [`WAN22_LATENTS_MEAN`].
pub const WAN22_LATENTS_STD: [f32; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
];

/// The architecture. Defaults are the released Wan2.1 VAE (`_video_vae` in the reference).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Spatial scales (1, 1/2, 1/4, …) that get an attention block after each residual block.
    pub attn_scales: Vec<f64>,
    pub temporal_downsample: Vec<bool>,
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
    /// The decoder's base width where it differs from the encoder's (Wan2.2: 256 vs 160).
    pub decoder_base_dim: Option<usize>,
    /// Pixels folded into channels on each side before encoding (Wan2.2: 2).
    pub patch_size: usize,
    /// Wan2.2's residual down/up blocks with parameter-free shortcuts (diffusers' `is_residual`).
    pub residual_shortcuts: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::wan21()
    }
}

impl Config {
    /// The released Wan2.1 VAE (`Wan2.1_VAE.pth`, `wan_2.1_vae.safetensors`).
    pub fn wan21() -> Self {
        Self {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temporal_downsample: vec![false, true, true],
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
            decoder_base_dim: None,
            patch_size: 1,
            residual_shortcuts: false,
        }
    }

    /// The released Wan2.2 VAE (`Wan2.2_VAE.pth`, `wan2.2_vae.safetensors`; TI2V-5B).
    pub fn wan22() -> Self {
        Self {
            base_dim: 160,
            z_dim: 48,
            latents_mean: WAN22_LATENTS_MEAN.to_vec(),
            latents_std: WAN22_LATENTS_STD.to_vec(),
            decoder_base_dim: Some(256),
            patch_size: 2,
            residual_shortcuts: true,
            ..Self::wan21()
        }
    }

    /// Pixel frames per latent frame after the first.
    pub fn temporal_stride(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent pixel along each side.
    pub fn spatial_stride(&self) -> usize {
        (1 << self.dim_mult.len().saturating_sub(1)) * self.patch_size.max(1)
    }
}

/// The VAE. Tensors at its edges are `(channels, frames, height, width)` in f32.
#[derive(Clone, Debug)]
enum Encoder {
    Wan21(Encoder3d),
    Wan22(Encoder22),
}

#[derive(Clone, Debug)]
enum Decoder {
    Wan21(Decoder3d),
    Wan22(Decoder22),
}

#[derive(Clone, Debug)]
pub struct WanVae {
    cfg: Config,
    encoder: Encoder,
    decoder: Decoder,
    conv1: CausalConv3d,
    conv2: CausalConv3d,
    mean: Tensor,
    inv_std: Tensor,
    /// The device's kernels: with cuDNN, convolutions run fused (see [`conv`]).
    kernels: Option<stillmotion_kernels::Kernels>,
}

impl WanVae {
    /// Builds the VAE from weights in the original key layout (see [`load`] for files).
    pub fn new(cfg: &Config, vb: &VarBuilder<'_>) -> Result<Self> {
        let z = cfg.z_dim;
        let device = vb.device();
        let stats = |values: &[f32]| {
            Tensor::new(values, device)?
                .reshape((1, z, 1, 1))?
                .to_dtype(vb.dtype())
        };
        let inv_std = stats(&cfg.latents_std)?.recip()?;
        let (encoder, decoder) = if cfg.residual_shortcuts {
            (
                Encoder::Wan22(Encoder22::new(cfg, &vb.pp("encoder"))?),
                Decoder::Wan22(Decoder22::new(cfg, &vb.pp("decoder"))?),
            )
        } else {
            (
                Encoder::Wan21(Encoder3d::new(cfg, &vb.pp("encoder"))?),
                Decoder::Wan21(Decoder3d::new(cfg, &vb.pp("decoder"))?),
            )
        };
        Ok(Self {
            encoder,
            decoder,
            conv1: CausalConv3d::new(2 * z, 2 * z, (1, 1), 1, 0, &vb.pp("conv1"))?,
            conv2: CausalConv3d::new(z, z, (1, 1), 1, 0, &vb.pp("conv2"))?,
            mean: stats(&cfg.latents_mean)?,
            inv_std,
            cfg: cfg.clone(),
            kernels: Some(
                stillmotion_kernels::Kernels::for_device(device, &crate::device::kernel_options())
                    .map_err(candle_core::Error::wrap)?,
            ),
        })
    }

    /// Runs the convolutions through `kernels` where they can (cuDNN on CUDA); without, or on
    /// the CPU, candle's convolutions run.
    #[must_use]
    pub fn with_kernels(mut self, kernels: stillmotion_kernels::Kernels) -> Self {
        self.kernels = Some(kernels);
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Encodes `video` `(3, f, h, w)` in [-1, 1] to the normalised posterior mean
    /// `(z, 1 + (f-1)/4, h/s, w/s)` (`s` = [`Config::spatial_stride`]). As in the reference, frames past the last whole chunk of 4
    /// are ignored.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let num_frames = video.dim(1)?;
        self.encode_with(num_frames, |start, len| {
            to_frames(&video.narrow(1, start, len)?)
        })
    }

    /// Encodes a clip whose frames `(len, 3, h, w)` come from `frames(start, len)`, one chunk at
    /// a time (1 frame, then 4 at a time), so the whole clip never has to be in memory.
    pub fn encode_with(
        &self,
        num_frames: usize,
        frames: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mu = self.encode_moments(num_frames, frames)?;
        from_frames(&self.normalise(&mu)?)
    }

    /// The posterior moments `(t, 2z, h/s, w/s)` of a clip, chunk by chunk (see
    /// [`Self::encode_with`]).
    fn encode_raw(
        &self,
        num_frames: usize,
        mut frames: impl FnMut(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let stride = self.cfg.temporal_stride();
        let chunks = 1 + num_frames.saturating_sub(1) / stride;
        let mut state = ChunkState::with_kernels(self.kernels.clone());
        let mut moments = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let (start, len) = if i == 0 {
                (0, 1)
            } else {
                (1 + stride * (i - 1), stride)
            };
            // Pixels arrive in f32; the network runs in its weights' dtype.
            let x = self.patchify_input(frames(start, len)?.to_dtype(self.mean.dtype())?)?;
            let out = match &self.encoder {
                Encoder::Wan21(encoder) => encoder.forward(&x, &mut state)?,
                Encoder::Wan22(encoder) => encoder.forward(&x, &mut state)?,
            };
            moments.push(self.conv1.forward_frames(&out)?);
        }
        Tensor::cat(&moments, 0)
    }

    /// `(mu − latents_mean) · (1 / latents_std)` on frames-first `(t, z, h, w)`.
    fn normalise(&self, mu: &Tensor) -> Result<Tensor> {
        mu.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)
    }

    /// Decodes normalised latents `(z, t, h, w)` to pixels `(3, 1 + 4(t-1), 8h, 8w)` clamped to
    /// [-1, 1], as `Wan2_1_VAE.decode` and diffusers return them.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_raw(latents)?.clamp(-1f32, 1f32)
    }

    /// [`Self::decode`] without the final clamp (`WanVAE_.decode`).
    pub fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        let mut chunks = Vec::with_capacity(latents.dim(1)?);
        self.decode_each(latents, |frames| {
            chunks.push(frames);
            Ok(())
        })?;
        from_frames(&Tensor::cat(&chunks, 0)?)
    }

    /// Decodes one latent frame at a time and hands each chunk of pixel frames
    /// `(n, 3, 8h, 8w)` (1 frame, then 4 at a time; not clamped) to `sink` as it is ready.
    pub fn decode_each(
        &self,
        latents: &Tensor,
        sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        self.decode_chunks(latents, true, sink)
    }

    /// [`Self::decode_each`], leaving the Wan2.2 decoder's output patchified (12 channels at
    /// half the pixels a side) unless `unpatch`: diffusers blends decoded tiles there.
    fn decode_chunks(
        &self,
        latents: &Tensor,
        unpatch: bool,
        sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let state = ChunkState::with_kernels(self.kernels.clone());
        self.decode_chunks_in(latents, unpatch, state, sink)
            .map(|_| ())
    }

    /// [`Self::decode`] with the time spent in each kind of layer (for the benchmark; the
    /// timing waits for the device around each layer).
    pub fn decode_profiled(&self, latents: &Tensor) -> Result<(Tensor, StageTimes)> {
        let mut chunks = Vec::with_capacity(latents.dim(1)?);
        let state = ChunkState::with_kernels(self.kernels.clone()).with_profile();
        let times = self.decode_chunks_in(latents, true, state, |frames| {
            chunks.push(frames);
            Ok(())
        })?;
        let frames = from_frames(&Tensor::cat(&chunks, 0)?)?.clamp(-1f32, 1f32)?;
        Ok((frames, times.unwrap_or_default()))
    }

    /// [`Self::decode_chunks`] in `state`, returning its profile if it kept one.
    fn decode_chunks_in(
        &self,
        latents: &Tensor,
        unpatch: bool,
        mut state: ChunkState,
        mut sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<Option<StageTimes>> {
        let z = to_frames(latents)?.to_dtype(self.mean.dtype())?;
        let z = z.broadcast_div(&self.inv_std)?.broadcast_add(&self.mean)?;
        let x = self.conv2.forward_frames(&z)?;
        for i in 0..x.dim(0)? {
            let latent = x.narrow(0, i, 1)?;
            let pixels = match &self.decoder {
                Decoder::Wan21(decoder) => decoder.forward(&latent, &mut state)?,
                Decoder::Wan22(decoder) => decoder.forward(&latent, &mut state, i == 0)?,
            };
            sink(if unpatch && self.cfg.patch_size == 2 {
                unpatchify(&pixels)?
            } else {
                pixels
            })?;
        }
        Ok(state.take_profile())
    }
}
