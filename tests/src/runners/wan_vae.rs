//! Runner for `wan_vae` cases: the Wan2.1 VAE (`engine::wan_vae`).
//!
//! `[config]`: the architecture as `engine::wan_vae::Config` names it (`base_dim`, `z_dim`,
//! `dim_mult`, `num_res_blocks`, `attn_scales`, `temporal_downsample`, `latents_mean`,
//! `latents_std`; missing keys take the released Wan2.1 values), `layout` ("original" or
//! "diffusers": informational, the loader detects it from the keys) and `num_frames` (the I2V
//! clip length, default: the frames of `video`), `encode_tiling` and `decode_tiling`
//! ([tile height, tile width, stride height, stride width], as diffusers' `enable_tiling` takes
//! them: encoder-input pixels for the encode, output pixels for the decode; `tiling` sets both).
//! Inputs, each optional: `video` `(3, f, h, w)`, `z` `(z, t, h/8, w/8)`, `image` `(3, h, w)`.
//! Outputs: `latent` (encode of `video`), `latent_short` (encode of its first 5 frames),
//! `latent_tiled` (tiled encode of `video`), `decoded` / `decoded_raw` (decode of `z`, clamped /
//! not), `decoded_tiled` (tiled decode of `z`), `y` (I2V conditioning of `image`). A bf16/f16
//! run loads the weights and float inputs in that dtype.

use anyhow::Context;
use candle_core::{DType, Device};
use stillmotion_engine::wan_vae::{self, Config, Tiling};

use super::{Outputs, in_dtype, inputs_in};
use crate::golden::Case;

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let cfg: Config = case.config()?;
    let weights = case
        .manifest
        .weights
        .first()
        .context("a wan_vae case needs one weight file")?;
    let vae = in_dtype::wan_vae(&cfg, &case.file(weights), device, dtype)?;
    let tensors = inputs_in(case, device, dtype)?;
    let mut out = Outputs::new();
    let mut num_frames = None;
    if let Some(video) = tensors.get("video") {
        let frames = video.dim(1)?;
        num_frames = Some(frames);
        out.insert("latent".into(), vae.encode(video)?);
        if let Some(tiling) = tiling(case, "encode_tiling")? {
            out.insert("latent_tiled".into(), vae.encode_tiled(video, tiling)?);
        }
        if frames >= 5 {
            out.insert("latent_short".into(), vae.encode(&video.narrow(1, 0, 5)?)?);
        }
    }
    if let Some(z) = tensors.get("z") {
        let raw = vae.decode_raw(z)?;
        out.insert("decoded".into(), raw.clamp(-1f32, 1f32)?);
        out.insert("decoded_raw".into(), raw);
        if let Some(tiling) = tiling(case, "decode_tiling")? {
            out.insert("decoded_tiled".into(), vae.decode_tiled(z, tiling)?);
        }
    }
    if let Some(image) = tensors.get("image") {
        let frames = match case.manifest.config.get("num_frames") {
            Some(value) => usize::try_from(
                value
                    .as_integer()
                    .context("config num_frames must be an integer")?,
            )?,
            None => num_frames.context("an I2V case needs config num_frames or a video")?,
        };
        out.insert("y".into(), wan_vae::i2v_condition(&vae, image, frames)?);
    }
    Ok(out)
}

/// `[key]` (`encode_tiling` or `decode_tiling`), else `tiling` (diffusers' `enable_tiling` sets
/// both at once).
fn tiling(case: &Case, key: &str) -> anyhow::Result<Option<Tiling>> {
    let config = &case.manifest.config;
    let Some(value) = config.get(key).or_else(|| config.get("tiling")) else {
        return Ok(None);
    };
    let sizes = value
        .as_array()
        .with_context(|| format!("config {key} must be an array"))?
        .iter()
        .map(|v| {
            v.as_integer()
                .and_then(|i| usize::try_from(i).ok())
                .with_context(|| format!("config {key} holds pixel counts"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let [tile_height, tile_width, stride_height, stride_width] = sizes[..] else {
        anyhow::bail!("config {key} is [tile height, tile width, stride height, stride width]");
    };
    Ok(Some(Tiling {
        tile_height,
        tile_width,
        stride_height,
        stride_width,
    }))
}
