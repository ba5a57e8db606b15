//! `wan_dit_file`: the Wan2.2 diffusion transformer loaded from its files by
//! `WanModel::load` (memory-mapped; single files in any supported layout including ComfyUI's
//! float8 formats, or a sharded release folder with its `config.json`).
//!
//! `[config]`: `path` (a file or folder, relative to the case folder) and, optionally, the
//! model's config keys as in `wan_dit`; without them the files' own config is used. `lora`
//! (a LoRA file merged at load), `lora_strength` (default 1) and `lora_unmatched` (how many
//! LoRA keys must be reported unmatched), `lora_mode` (`"merge"`, the default here, `"auto"` or
//! `"on_the_fly"`: where the LoRA's low-rank pairs go, see `engine/src/wan/lora_mode.rs`),
//! `quantized_matmul` (`"dequantize"`, the default, or
//! `"native"`: how GGUF layers kept quantized multiply). Inputs as
//! in `wan_dit`: `x`, optional `y`, `t`, `context`. Output: `out`. A bf16/f16 run loads in that
//! dtype (float8 and GGUF weights convert to it at use) and casts `x`, `y`, `context` to it.

use anyhow::Context;
use candle_core::{DType, Device};
use stillmotion_engine::wan::{Config, LoraMode, LoraSpec, QuantizedMatmul, WanModel};

use super::{Outputs, in_dtype::float_to, inputs, take};
use crate::golden::Case;

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let given = &case.manifest.config;
    let path = given
        .get("path")
        .and_then(toml::Value::as_str)
        .context("[config] needs `path`, the model file or folder")?;
    let runner_keys = [
        "path",
        "lora",
        "lora_strength",
        "lora_unmatched",
        "lora_mode",
        "quantized_matmul",
    ];
    let lora_mode = match given.get("lora_mode").and_then(toml::Value::as_str) {
        None | Some("merge") => LoraMode::Merge,
        Some("auto") => LoraMode::Auto,
        Some("on_the_fly") => LoraMode::OnTheFly,
        Some(other) => {
            anyhow::bail!("lora_mode {other:?}: use \"merge\", \"auto\" or \"on_the_fly\"")
        }
    };
    let matmul = match given.get("quantized_matmul").and_then(toml::Value::as_str) {
        None | Some("dequantize") => QuantizedMatmul::DequantizeAtUse,
        Some("native") => QuantizedMatmul::Native,
        Some(other) => {
            anyhow::bail!("quantized_matmul {other:?}: use \"dequantize\" or \"native\"")
        }
    };
    let config: Option<Config> = if given.keys().any(|k| !runner_keys.contains(&k.as_str())) {
        Some(case.config()?)
    } else {
        None
    };
    let loras: Vec<LoraSpec> = match given.get("lora").and_then(toml::Value::as_str) {
        Some(lora) => vec![LoraSpec {
            path: case.file(lora),
            strength: given
                .get("lora_strength")
                .and_then(toml::Value::as_float)
                .unwrap_or(1.0),
        }],
        None => Vec::new(),
    };
    let (model, reports) = WanModel::load_with_lora_mode(
        &case.file(path),
        config.as_ref(),
        &loras,
        lora_mode,
        matmul,
        device,
        dtype,
    )?;
    if let Some(expected) = given
        .get("lora_unmatched")
        .and_then(toml::Value::as_integer)
    {
        let unmatched: usize = reports
            .iter()
            .flat_map(|r| r.unmatched.values())
            .map(Vec::len)
            .sum();
        anyhow::ensure!(
            i64::try_from(unmatched)? == expected,
            "LoRA unmatched keys: {unmatched}, expected {expected}: {reports:?}"
        );
    }

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
