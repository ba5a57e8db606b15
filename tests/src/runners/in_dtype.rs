//! Loading in a reduced precision where the engine's own loader is f32-only.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use stillmotion_engine::wan_vae::{self, Config, WanVae, diffusers_key};

/// `tensor` in `dtype` if it holds floats; integer tensors (token ids, masks) as they are.
pub fn float_to(tensor: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    if tensor.dtype().is_float() {
        tensor.to_dtype(dtype)
    } else {
        Ok(tensor.clone())
    }
}

/// The VAE of `path` with its weights in `dtype`: `wan_vae::load` itself in f32, else the
/// same steps (the key layout detected from the keys, diffusers names mapped to the original
/// ones) with the weights converted as they are read.
pub fn wan_vae(cfg: &Config, path: &Path, device: &Device, dtype: DType) -> anyhow::Result<WanVae> {
    if dtype == DType::F32 {
        return Ok(wan_vae::load(cfg, path, device)?);
    }
    let is_pth = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"));
    let vb = if is_pth {
        VarBuilder::from_pth(path, dtype, device)?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        VarBuilder::from_buffered_safetensors(bytes, dtype, device)?
    };
    let vb = if vb.contains_tensor("encoder.conv_in.weight") {
        let (blocks, residual) = (cfg.num_res_blocks, cfg.residual_shortcuts);
        vb.rename_f(move |name| diffusers_key(name, blocks, residual))
    } else {
        vb
    };
    WanVae::new(cfg, &vb).with_context(|| format!("building the VAE of {}", path.display()))
}
