//! `wan_dit`: the Wan2.2 diffusion transformer's forward pass.
//!
//! `[config]` holds the model's `config.json` keys (official names; see
//! `engine::wan::Config`), including `time_embedding` ("float64", the official default, or
//! "float32" for diffusers parity). Weights are read as a user's file would be: any supported
//! key layout, with or without the `model.diffusion_model.` prefix. Inputs: `x`
//! `[B, C, F, H, W]`, optional `y` (concatenated to `x` along channels), `t` (`[B]` or
//! `[B, tokens]`, any dtype) and `context` `[B, L, text_dim]`. Output: `out`.

use std::collections::HashMap;

use anyhow::Context;
use candle_core::{DType, Device};
use stillmotion_engine::wan::{Config, WanModel};

use super::{Outputs, inputs, take};
use crate::golden::Case;

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let config: Config = case.config()?;
    let mut tensors = HashMap::new();
    for file in &case.manifest.weights {
        let path = case.file(file);
        let loaded = candle_core::safetensors::load(&path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        tensors.extend(loaded);
    }
    let model = WanModel::from_state_dict(&config, tensors, DType::F32, device)?;

    let mut inputs = inputs(case, device)?;
    let x = take(&mut inputs, "x")?;
    let y = inputs.remove("y");
    let t = take(&mut inputs, "t")?;
    let context = take(&mut inputs, "context")?;
    let out = model.forward(&x, y.as_ref(), &t, &context)?;
    Ok(Outputs::from([("out".to_owned(), out)]))
}
