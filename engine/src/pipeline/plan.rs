//! The memory plan of a render job, from its recipe, its model files' headers and the device.

use candle_core::{DType, Device};

use std::path::{Path, PathBuf};

use super::models::{expert_loras, vae_config};
use crate::EngineError;
use crate::image_input::fit::{self, FitMode};
use crate::memory_plan::sizes::ExpertFiles;
use crate::memory_plan::{GIB, MemoryPlan, ModelSizes, PlanInputs, Tokens, VaeSize};
use crate::recipe::{ImageFit, Recipe};
use crate::sampling::Expert;

fn required<'a>(path: Option<&'a PathBuf>, field: &'static str) -> Result<&'a Path, EngineError> {
    path.map(PathBuf::as_path)
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
    let lora_paths = |expert| -> Vec<PathBuf> {
        expert_loras(recipe, expert)
            .into_iter()
            .map(|spec| spec.path)
            .collect()
    };
    let (high_loras, low_loras) = (lora_paths(Expert::HighNoise), lora_paths(Expert::LowNoise));
    let lora = crate::wan::LoraLoad {
        mode: recipe.lora_mode,
        requantize: recipe.lora_requantize.resolve(device),
    };
    // The VAE runs in bf16 on CUDA, f32 on the CPU (`ModelCache::vae`): the DiT's compute dtype.
    let vae_bytes = compute_bytes;
    let sizes = ModelSizes::read(
        (
            ExpertFiles {
                weights: required(files.high_noise.as_ref(), "high_noise")?,
                loras: &high_loras,
                lora,
            },
            ExpertFiles {
                weights: required(files.low_noise.as_ref(), "low_noise")?,
                loras: &low_loras,
                lora,
            },
        ),
        required(files.text_encoder.as_ref(), "text_encoder")?,
        (vae, VaeSize::from_config(&vae_cfg), vae_bytes),
        compute_bytes,
    )?;
    let stride = u32::try_from(vae_cfg.spatial_stride()).unwrap_or(8);
    let (width, height) = fitted_size(recipe)?;
    let inputs = PlanInputs {
        sizes,
        tokens: Tokens::new(recipe.num_frames, width, height, stride),
        activation_bytes: compute_bytes,
        // The 8-bit kernels run on the GPU only; the CPU ignores the choice.
        int8_attention: device.is_cuda() && recipe.attention == crate::recipe::AttentionMode::Int8,
    };
    let budget = budget_override.or_else(|| {
        crate::gpu_memory::of_device(device).map(|memory| {
            let reserve = (recipe.reserve_vram_gb * GIB as f64) as u64;
            memory.total_bytes.saturating_sub(reserve)
        })
    });
    MemoryPlan::decide(&inputs, budget)
}

/// The size the recipe's image is fitted to, from the image file's header (its dimensions and
/// EXIF orientation; no pixels decoded): the official fit keeps the image's aspect at about
/// the recipe's area, so the clip (and every activation) may be taller or wider than the
/// recipe's `width`×`height`.
fn fitted_size(recipe: &Recipe) -> Result<(u32, u32), EngineError> {
    let mode = match recipe.image_fit {
        ImageFit::CenterCrop => return Ok((recipe.width, recipe.height)),
        ImageFit::Official => FitMode::Wan {
            max_area: recipe.width * recipe.height,
        },
    };
    let (source_width, source_height) = image_dimensions(&recipe.image)?;
    let plan = fit::plan(mode, source_width, source_height)?;
    Ok((plan.width, plan.height))
}

/// The image's width and height as displayed (EXIF orientation applied), from its header.
fn image_dimensions(path: &Path) -> Result<(u32, u32), EngineError> {
    use image::ImageDecoder as _;
    use image::metadata::Orientation;
    let bad = |problem: String| EngineError::BadImage {
        problem,
        path: path.to_owned(),
    };
    let mut decoder = image::ImageReader::open(path)
        .map_err(|e| EngineError::io("reading image", path, e))?
        .with_guessed_format()
        .map_err(|e| EngineError::io("reading image", path, e))?
        .into_decoder()
        .map_err(|e| bad(format!("cannot read the image ({e})")))?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .map_err(|e| bad(format!("cannot read the image's orientation ({e})")))?;
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    Ok(if turned {
        (height, width)
    } else {
        (width, height)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset;
    use crate::recipe::RecipeChoices;

    #[test]
    fn tokens_follow_the_size_the_image_is_fitted_to() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/pipeline_i2v_official_tiny");
        let dir = tempfile::tempdir().unwrap();
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(golden.join("high_noise.safetensors"));
        recipe.models.low_noise = Some(golden.join("low_noise.safetensors"));
        recipe.models.text_encoder = Some(golden.join("umt5.safetensors"));
        recipe.models.vae = Some(golden.join("wan_2.1_vae.safetensors"));
        // A portrait image for a landscape recipe: the official fit keeps the portrait.
        let image = dir.path().join("portrait.png");
        image::RgbImage::new(300, 600).save(&image).unwrap();
        recipe.image = image;
        let (w, h) = (recipe.width, recipe.height);
        assert!(w > h);
        let (fw, fh) = fit::wan_output_size(300, 600, w * h).unwrap();
        assert!(fh > fw);
        let plan = plan_for(&recipe, &Device::Cpu, DType::F32, None).unwrap();
        assert_eq!(plan.tokens, Tokens::new(recipe.num_frames, fw, fh, 8));
        assert_ne!(plan.tokens, Tokens::new(recipe.num_frames, w, h, 8));
        // ComfyUI's centre crop makes exactly the recipe's size.
        recipe.image_fit = ImageFit::CenterCrop;
        let plan = plan_for(&recipe, &Device::Cpu, DType::F32, None).unwrap();
        assert_eq!(plan.tokens, Tokens::new(recipe.num_frames, w, h, 8));
    }
}
