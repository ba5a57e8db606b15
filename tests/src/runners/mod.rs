//! Component runners: each computes a golden case's outputs with our implementation.
//!
//! A runner reads the case's `[config]`, weights and inputs, and returns named output tensors;
//! the harness compares each tensor named in `expected.safetensors`. To add a component, add a
//! module here and one arm to [`run`].

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};

use crate::golden::Case;

mod image_fit;
pub mod pipeline;
mod prompt_clean;
mod rife;
mod sampling;
mod tokenizer;
mod umt5;
mod wan_dit;
mod wan_dit_file;
mod wan_vae;

/// Named output tensors of one case.
pub type Outputs = BTreeMap<String, Tensor>;

/// Runs `case` through the runner named by its `component`.
pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let component = case.manifest.component.as_str();
    match component {
        "wan_dit" => wan_dit::run(case, device),
        "image_fit" => image_fit::run(case, device),
        "flow_schedule" => sampling::flow_schedule(case, device),
        "flow_step" => sampling::flow_step(case, device),
        "denoise_loop" => sampling::denoise_loop(case, device),
        "rife" => rife::run(case, device),
        "rife_clip" => rife::run_clip(case, device),
        "rife_warp" => rife::run_warp(case, device),
        "prompt_clean" => prompt_clean::run(case, device),
        "tokenizer" => tokenizer::run(case, device),
        "umt5" => umt5::run(case, device),
        "wan_vae" => wan_vae::run(case, device),
        "pipeline" => pipeline::run(case, device),
        "wan_dit_file" => wan_dit_file::run(case, device),
        _ => bail!(
            "no runner for component {component:?} (case {}); add one in tests/src/runners/",
            case.dir.display()
        ),
    }
}

/// Loads the case's `inputs.safetensors` onto `device`.
pub fn inputs(case: &Case, device: &Device) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let name = case
        .manifest
        .inputs
        .as_deref()
        .with_context(|| format!("case {} has no inputs file", case.name))?;
    let path = case.file(name);
    let tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok(tensors.into_iter().collect())
}

/// Takes one named input, with a clear error if the case lacks it.
pub fn take(tensors: &mut BTreeMap<String, Tensor>, name: &str) -> anyhow::Result<Tensor> {
    tensors
        .remove(name)
        .with_context(|| format!("input tensor {name:?} is missing"))
}
