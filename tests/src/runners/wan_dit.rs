//! `wan_dit`: the Wan2.2 diffusion transformer's forward pass.
//!
//! `[config]` holds the model's `config.json` keys (official or diffusers names; see
//! `engine::wan::Config`), plus `time_embedding` ("float64" official, "float32" diffusers) and
//! `pad_context` (pad the context to `text_len` in the model, official). With diffusers-layout
//! weights those two default to diffusers' behaviour. Weights are read as a user's file would be: any supported
//! key layout, with or without the `model.diffusion_model.` prefix. Inputs: `x`
//! `[B, C, F, H, W]`, optional `y` (concatenated to `x` along channels), `t` (`[B]` or
//! `[B, tokens]`, any dtype) and `context` `[B, L, text_dim]`. Output: `out`.
//!
//! In a bf16/f16 run the weights and `x`, `y`, `context` are in that dtype; `t` stays as given
//! (the model embeds it in f64/f32, as the pipeline passes it).

use std::collections::HashMap;

use anyhow::Context;
use candle_core::{DType, Device};
use stillmotion_engine::wan::weights::{self, Layout};
use stillmotion_engine::wan::{Config, TimeEmbedding, WanModel};

use super::{Outputs, in_dtype::float_to, inputs, take};
use crate::golden::Case;

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let mut config: Config = case.config()?;
    let mut tensors = HashMap::new();
    for file in &case.manifest.weights {
        let path = case.file(file);
        let loaded = candle_core::safetensors::load(&path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        tensors.extend(loaded);
    }
    // diffusers-layout weights come from diffusers' model: unless the case says otherwise,
    // reproduce its numerics (float32 time embedding, context used as given).
    let keys = tensors.keys().map(|k| weights::strip_prefix(k));
    if weights::detect_layout(keys) == Layout::Diffusers {
        let given = &case.manifest.config;
        if !given.contains_key("time_embedding") {
            config.time_embedding = TimeEmbedding::Float32;
        }
        if !given.contains_key("pad_context") {
            config.pad_context = false;
        }
    }
    let model = WanModel::from_state_dict(&config, tensors, dtype, device)?;

    let mut inputs = inputs(case, device)?;
    let x = float_to(&take(&mut inputs, "x")?, dtype)?;
    let y = inputs
        .remove("y")
        .map(|y| float_to(&y, dtype))
        .transpose()?;
    let t = take(&mut inputs, "t")?;
    let context = float_to(&take(&mut inputs, "context")?, dtype)?;
    let out = model.forward(&x, y.as_ref(), &t, &context)?;
    Ok(Outputs::from([("out".to_owned(), out)]))
}
