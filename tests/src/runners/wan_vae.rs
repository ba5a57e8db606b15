//! Runner for `wan_vae` cases: the Wan2.1 VAE (`engine::wan_vae`).
//!
//! `[config]`: `layout` ("original" or "diffusers": informational, the loader detects it),
//! `base_dim`, `z_dim`, `dim_mult`, `num_res_blocks`, `temporal_downsample` (the architecture),
//! `num_frames` (the I2V clip length). Inputs: `video` `(3, f, h, w)`, `z` `(z, t, h/8, w/8)`,
//! `image` `(3, h, w)`. Outputs (each only if expected): `latent` (encode of `video`),
//! `latent_short` (encode of its first 5 frames), `decoded` / `decoded_raw` (decode of `z`,
//! clamped / not), `y` (I2V conditioning of `image`).

use anyhow::Context;
use candle_core::Device;
use serde::Deserialize;
use stillmotion_engine::wan_vae::{self, Config};

use super::{Outputs, inputs, take};
use crate::golden::Case;

#[derive(Deserialize)]
struct RunnerConfig {
    #[allow(
        dead_code,
        reason = "the loader detects the layout; the key documents the case"
    )]
    layout: String,
    base_dim: usize,
    z_dim: usize,
    dim_mult: Vec<usize>,
    num_res_blocks: usize,
    temporal_downsample: Vec<bool>,
    num_frames: usize,
}

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let rc: RunnerConfig = case.config()?;
    let cfg = Config {
        base_dim: rc.base_dim,
        z_dim: rc.z_dim,
        dim_mult: rc.dim_mult,
        num_res_blocks: rc.num_res_blocks,
        temporal_downsample: rc.temporal_downsample,
        ..Config::wan21()
    };
    let weights = case
        .manifest
        .weights
        .first()
        .context("a wan_vae case needs one weight file")?;
    let vae = wan_vae::load(&cfg, &case.file(weights), device)?;
    let mut tensors = inputs(case, device)?;
    let video = take(&mut tensors, "video")?;
    let z = take(&mut tensors, "z")?;
    let image = take(&mut tensors, "image")?;
    let mut out = Outputs::new();
    out.insert("latent".into(), vae.encode(&video)?);
    out.insert("latent_short".into(), vae.encode(&video.narrow(1, 0, 5)?)?);
    let raw = vae.decode_raw(&z)?;
    out.insert("decoded".into(), raw.clamp(-1f32, 1f32)?);
    out.insert("decoded_raw".into(), raw);
    out.insert(
        "y".into(),
        wan_vae::i2v_condition(&vae, &image, rc.num_frames)?,
    );
    Ok(out)
}
