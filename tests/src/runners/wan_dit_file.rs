//! `wan_dit_file`: the Wan2.2 diffusion transformer loaded from its files by
//! `WanModel::load` (memory-mapped; single files in any supported layout including ComfyUI's
//! float8 formats, or a sharded release folder with its `config.json`).
//!
//! `[config]`: `path` (a file or folder, relative to the case folder) and, optionally, the
//! model's config keys as in `wan_dit`; without them the files' own config is used. Inputs as
//! in `wan_dit`: `x`, optional `y`, `t`, `context`. Output: `out`.

use anyhow::Context;
use candle_core::{DType, Device};
use stillmotion_engine::wan::{Config, WanModel};

use super::{Outputs, inputs, take};
use crate::golden::Case;

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let given = &case.manifest.config;
    let path = given
        .get("path")
        .and_then(toml::Value::as_str)
        .context("[config] needs `path`, the model file or folder")?;
    let config: Option<Config> = if given.keys().any(|k| k != "path") {
        Some(case.config()?)
    } else {
        None
    };
    let model = WanModel::load_with_config(&case.file(path), config.as_ref(), device, DType::F32)?;

    let mut inputs = inputs(case, device)?;
    let x = take(&mut inputs, "x")?;
    let y = inputs.remove("y");
    let t = take(&mut inputs, "t")?;
    let context = take(&mut inputs, "context")?;
    let out = model.forward(&x, y.as_ref(), &t, &context)?;
    Ok(Outputs::from([("out".to_owned(), out)]))
}
