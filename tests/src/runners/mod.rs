//! Component runners: each computes a golden case's outputs with our implementation.
//!
//! A runner reads the case's `[config]`, weights and inputs, and returns named output tensors;
//! the harness compares each tensor named in `expected.safetensors`. To add a component, add a
//! module here and one arm to [`run`] (and to [`dtype_for`] if it can compute in bf16/f16).

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};

use crate::golden::Case;

mod image_fit;
mod in_dtype;
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

/// The dtype `component` computes in when a run asks for `requested` on `device`.
///
/// The model runners (DiT, VAE, umT5, RIFE) load their weights and float inputs in it, except
/// that the convolutional ones (VAE, RIFE) run bf16 as f16 on the CPU: candle 0.11's CPU
/// convolutions call its gemm directly, which has f16 but no bf16 kernel ("unsupported dtype
/// BF16 for op matmul"; plain matmuls widen bf16 to f32 and work). The render job picks its
/// own dtype from the device (bf16 on CUDA, f32 on the CPU), so a `pipeline` case runs on CUDA
/// only when bf16 is asked for there, and on the CPU in f32 otherwise. Everything else stays
/// f32: the samplers (schedules and steps are f32/f64 math in both references, and the engine
/// keeps latents in f32 between steps), the tokenizer and prompt cleaning (no tensors), the
/// image fit (pixels in f32 before the VAE), and the RIFE warp alone (its kernel is f32-only;
/// RIFE casts around it).
#[must_use]
pub fn dtype_for(component: &str, requested: DType, device: &Device) -> DType {
    match component {
        "wan_vae" | "rife" | "rife_clip" if requested == DType::BF16 && !device.is_cuda() => {
            DType::F16
        }
        "wan_dit" | "wan_dit_file" | "umt5" | "wan_vae" | "rife" | "rife_clip" => requested,
        "pipeline" if requested == DType::BF16 && device.is_cuda() => DType::BF16,
        _ => DType::F32,
    }
}

/// Runs `case` through the runner named by its `component`, in `dtype` where the component
/// computes in it (see [`dtype_for`]; the others ignore it).
pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let component = case.manifest.component.as_str();
    let dtype = dtype_for(component, dtype, device);
    match component {
        "wan_dit" => wan_dit::run(case, device, dtype),
        "image_fit" => image_fit::run(case, device),
        "flow_schedule" => sampling::flow_schedule(case, device),
        "flow_step" => sampling::flow_step(case, device),
        "denoise_loop" => sampling::denoise_loop(case, device),
        "rife" => rife::run(case, device, dtype),
        "rife_clip" => rife::run_clip(case, device, dtype),
        "rife_warp" => rife::run_warp(case, device),
        "prompt_clean" => prompt_clean::run(case, device),
        "tokenizer" => tokenizer::run(case, device),
        "umt5" => umt5::run(case, device, dtype),
        "wan_vae" => wan_vae::run(case, device, dtype),
        "pipeline" => pipeline::run(case, device, dtype),
        "wan_dit_file" => wan_dit_file::run(case, device, dtype),
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

/// Like [`inputs`], with every floating-point tensor in `dtype` (integer ones as they are).
pub fn inputs_in(
    case: &Case,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    inputs(case, device)?
        .into_iter()
        .map(|(name, tensor)| Ok((name, in_dtype::float_to(&tensor, dtype)?)))
        .collect()
}

/// Takes one named input, with a clear error if the case lacks it.
pub fn take(tensors: &mut BTreeMap<String, Tensor>, name: &str) -> anyhow::Result<Tensor> {
    tensors
        .remove(name)
        .with_context(|| format!("input tensor {name:?} is missing"))
}
