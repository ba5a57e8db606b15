//! The memory plan of a render job, from its recipe, its model files' headers and the device.

use candle_core::{DType, Device};

use super::models::vae_config;
use crate::EngineError;
use crate::memory_plan::{GIB, MemoryPlan, ModelSizes, PlanInputs, Tokens, VaeSize};
use crate::recipe::Recipe;

fn required<'a>(
    path: Option<&'a std::path::PathBuf>,
    field: &'static str,
) -> Result<&'a std::path::Path, EngineError> {
    path.map(std::path::PathBuf::as_path)
        .ok_or_else(|| EngineError::BadRecipe {
            field,
            problem: "is not set: choose the model file".to_owned(),
        })
}

/// The plan for `recipe` on `device` computing in `dtype`. On CUDA the budget is the device's
/// memory minus the recipe's reserve; on the CPU there is no budget (the plan only reports).
/// `budget_override` replaces the device's budget (tests).
pub fn plan_for(
    recipe: &Recipe,
    device: &Device,
    dtype: DType,
    budget_override: Option<u64>,
) -> Result<MemoryPlan, EngineError> {
    let files = &super::resolve_model_files(&recipe.models, recipe.model)?;
    let vae = required(files.vae.as_ref(), "vae")?;
    let vae_cfg = vae_config(vae, recipe.model)?;
    let compute_bytes = dtype.size_in_bytes() as u64;
    let sizes = ModelSizes::read(
        required(files.high_noise.as_ref(), "high_noise")?,
        required(files.low_noise.as_ref(), "low_noise")?,
        required(files.text_encoder.as_ref(), "text_encoder")?,
        vae,
        VaeSize::from_config(&vae_cfg),
        compute_bytes,
    )?;
    let stride = u32::try_from(vae_cfg.spatial_stride()).unwrap_or(8);
    let inputs = PlanInputs {
        sizes,
        tokens: Tokens::new(recipe.num_frames, recipe.width, recipe.height, stride),
        activation_bytes: compute_bytes,
    };
    let budget = budget_override.or_else(|| {
        device_memory(device).map(|total| {
            let reserve = (recipe.reserve_vram_gb * GIB as f64) as u64;
            total.saturating_sub(reserve)
        })
    });
    MemoryPlan::decide(&inputs, budget)
}

/// Total memory of a CUDA device, `None` on the CPU.
#[cfg(feature = "cuda")]
fn device_memory(device: &Device) -> Option<u64> {
    match device {
        Device::Cuda(cuda) => cuda
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(_, total)| total as u64),
        _ => None,
    }
}

/// Total memory of a CUDA device, `None` on the CPU (this build has no CUDA).
#[cfg(not(feature = "cuda"))]
fn device_memory(_device: &Device) -> Option<u64> {
    None
}
