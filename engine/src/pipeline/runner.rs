//! [`PipelineRunner`]: one render job from recipe to file.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::decode_stage::FrameSink;
use super::denoise_stage::DenoiseStage;
use super::fingerprints::model_file_records;
use super::interpolate_job::{retime_into, target_rate, write_on_thread};
use super::models::ModelCache;
use super::output::format_for_recipe;
use super::plan::{JobPlan, plan_for, refuse_mismatched_files};
use super::resume::{self, SavedState, latents_path, recipe_hash};
use crate::EngineError;
use crate::device::select_device;
use crate::image_input::{self, LoadOptions, fit};
use crate::memory_plan::{DitPlacement, Placement};
use crate::preset::ModelFamily;
use crate::recipe::{ImageFit, Interpolation, Recipe, WAN_DEFAULT_NEGATIVE_PROMPT};
use crate::rife::{InterpolationContext, InterpolationSettings, Retiming, interpolate_stream};
use crate::runtime::{JobContext, JobKind, JobOutput, JobRunner, Stage};
use crate::sampling::{GuidanceRule, LoopConfig};
use crate::video::{EmbeddedRecipe, EncodeSettings, FrameRate, VideoWriter};

/// Renders recipes, keeping the models loaded between jobs.
#[derive(Default)]
pub struct PipelineRunner {
    pub(super) models: ModelCache,
    /// RIFE weights; `None` finds them where the app installs them.
    rife_weights: Option<PathBuf>,
    /// A memory budget in bytes that replaces the device's (tests plan CPU jobs against one).
    budget_override: Option<u64>,
    /// A DiT placement that replaces the plan's (tests).
    dit_override: Option<DitPlacement>,
    /// A text-encoder placement that replaces the plan's (tests).
    text_encoder_override: Option<Placement>,
    /// A VAE live preview every this many steps, whatever it costs (tests).
    pub(super) preview_every: Option<usize>,
}

impl PipelineRunner {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses the RIFE weights at `path` instead of the installed ones.
    #[must_use]
    pub fn with_rife_weights(mut self, path: PathBuf) -> Self {
        self.rife_weights = Some(path);
        self
    }

    /// Plans every job against `bytes` of device memory instead of the device's own (on the
    /// CPU, where there is no device budget, this makes the plan's decisions testable).
    #[must_use]
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.budget_override = Some(bytes);
        self
    }

    /// Runs the DiT as `placement` says whatever the plan decides. Tests use it to exercise
    /// one-expert-at-a-time on tiny models, whose VAE decode outweighs the DiT under any
    /// budget.
    #[must_use]
    pub fn with_dit_placement(mut self, placement: DitPlacement) -> Self {
        self.dit_override = Some(placement);
        self
    }

    /// Runs the text encoder as `placement` says whatever the plan decides (tests: the
    /// device-then-freed placement on the CPU).
    #[must_use]
    pub fn with_text_encoder_placement(mut self, placement: Placement) -> Self {
        self.text_encoder_override = Some(placement);
        self
    }

    /// Decodes a VAE live preview every `steps` steps (and at the expert switch) whatever it
    /// costs, instead of as often as a tenth of the denoising time allows (tests: tiny models'
    /// timings are noise). Only for jobs whose preview is Better (or Auto on a GPU).
    #[must_use]
    pub fn with_preview_every(mut self, steps: usize) -> Self {
        self.preview_every = Some(steps.max(1));
        self
    }

    /// The loaded models (for their load counter).
    #[must_use]
    pub fn models(&self) -> &ModelCache {
        &self.models
    }

    fn render(&mut self, recipe: &Recipe, ctx: &JobContext<'_>) -> Result<JobOutput, EngineError> {
        recipe.validate()?;
        let models = super::resolve_model_files(&recipe.models, recipe.model)?;
        let loras =
            super::resolve_preset_lora(recipe.preset_lora.as_deref(), &recipe.loras, &models)?;
        let recipe = &Recipe {
            models,
            loras,
            ..recipe.clone()
        };
        if recipe.model != ModelFamily::Wan22I2vA14b {
            return Err(EngineError::BadRecipe {
                field: "model",
                problem: "TI2V-5B rendering is not available yet: choose the I2V-A14B preset"
                    .to_owned(),
            });
        }
        let multiplier = match recipe.interpolation {
            Interpolation::Off => None,
            Interpolation::Multiplier { factor } => Some(factor.max(1) as usize),
            Interpolation::TargetFps { .. } => Some(1),
        };
        let target = match recipe.interpolation {
            Interpolation::TargetFps { fps } => Some(target_rate(fps)?),
            _ => None,
        };
        let device = select_device(recipe.device)?.device;
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        // The files checked and the plan made before any model is loaded; a refusal ends the
        // job here.
        refuse_mismatched_files(recipe)?;
        let JobPlan {
            memory: mut plan,
            loras: expert_loras,
        } = plan_for(recipe, &device, dtype, self.budget_override)?;
        if !device.is_cuda() && plan.text_encoder == Placement::Cpu {
            // Everything already runs on the CPU: there is nothing to move to it.
            plan.text_encoder = Placement::Device;
        }
        if let Some(placement) = self.dit_override {
            plan.dit = placement;
        }
        if let Some(placement) = self.text_encoder_override {
            plan.text_encoder = placement;
        }
        ctx.memory_plan(plan.clone());
        let loop_cfg = LoopConfig {
            boundary: recipe.boundary.unwrap_or(0.9),
            cfg_high_noise: recipe.cfg_high_noise,
            cfg_low_noise: recipe.cfg_low_noise,
            guidance: GuidanceRule::Official,
        };

        let save_point = latents_path(&recipe.output);
        let hash = recipe_hash(recipe)?;
        let saved = if recipe.resume {
            Some(resume::load(&save_point, &hash)?)
        } else {
            None
        };
        let latents = match saved {
            Some(SavedState::Denoised { latents }) => latents.to_device(&device)?,
            saved => {
                let stage = DenoiseStage {
                    plan: &plan,
                    loras: &expert_loras,
                    device: &device,
                    dtype,
                    loop_cfg: &loop_cfg,
                    save_point: &save_point,
                    hash: &hash,
                };
                let latents = self.denoise_latents(recipe, ctx, &stage, saved)?;
                self.models
                    .take_warnings()
                    .into_iter()
                    .for_each(|w| ctx.warn(w));
                resume::save(
                    &save_point,
                    &hash,
                    &SavedState::Denoised {
                        latents: latents.clone(),
                    },
                )?;
                latents
            }
        };
        let (_, _, _, lat_h, lat_w) = latents.dims5()?;
        let stride = self.models.vae(recipe, &device)?.config().spatial_stride();
        let (height, width) = (lat_h * stride, lat_w * stride);

        // Decoding, straight into the writer (or into RIFE first).
        ctx.check()?;
        let format = format_for_recipe(&recipe.output, recipe.codec)?;
        let fps = target.unwrap_or(FrameRate::whole(match recipe.interpolation {
            Interpolation::Multiplier { factor } => recipe.fps * factor.max(1),
            Interpolation::Off | Interpolation::TargetFps { .. } => recipe.fps,
        }));
        let settings = EncodeSettings {
            format,
            fps,
            ..EncodeSettings::default()
        };
        let rife_path = match recipe.interpolation {
            Interpolation::Off => None,
            _ => self.rife_weights_path().ok(),
        };
        let hashes =
            crate::model_files::content_hash::HashCache::in_folder(&crate::paths::cache_dir());
        let model_files = model_file_records(recipe, rife_path.as_deref(), &hashes)?;
        // The stored recipe restores the render itself, not its continuation.
        let stored = Recipe {
            resume: false,
            ..recipe.clone()
        };
        let embedded = serde_json::to_value(&stored)
            .map(|value| EmbeddedRecipe::new(value).with_model_files(model_files))
            .map_err(|e| EngineError::BadRecipe {
                field: "recipe",
                problem: format!("cannot be stored in the output ({e})"),
            })?;
        let new_writer = || {
            VideoWriter::create(
                &recipe.output,
                &settings,
                count(width),
                count(height),
                Some(embedded.clone()),
            )
        };
        let latents = latents.squeeze(0)?;
        let tile = plan
            .vae_tile
            .map(|t| usize::try_from(t).unwrap_or(usize::MAX));
        let sink = FrameSink {
            new_writer: &new_writer,
            keep: multiplier.is_some(),
        };
        let (mut writer, decoded) = self.decode_clip(recipe, ctx, &latents, tile, &sink)?;
        let cancel = ctx.cancel_token().flag();

        if let Some(target) = target {
            let path = self.rife_weights_path()?;
            let rife = self.models.rife(&path, &device)?;
            let rates = Retiming {
                source_fps: FrameRate::whole(recipe.fps).as_f64(),
                target_fps: target.as_f64(),
            };
            let budget = super::interpolate_job::rife_memory_budget(&plan);
            retime_into(rife, decoded, rates, budget, ctx, &mut writer)?;
        } else if let Some(multiplier) = multiplier {
            let path = self.rife_weights_path()?;
            let rife = self.models.rife(&path, &device)?;
            let mut settings = InterpolationSettings::with_multiplier(multiplier);
            settings.memory_budget = super::interpolate_job::rife_memory_budget(&plan);
            // `check` (not the bare token) also takes in Cancel commands sent meanwhile.
            let is_cancelled = || ctx.check().is_err();
            let mut on_progress = |p: crate::rife::PairProgress| {
                let total = p.pairs_total.unwrap_or(p.pairs_done);
                ctx.progress(Stage::Interpolating, count(p.pairs_done), count(total));
            };
            let mut rife_ctx = InterpolationContext {
                is_cancelled: &is_cancelled,
                on_progress: &mut on_progress,
                clock: None,
            };
            let frame_count = decoded.len();
            let frame_bytes = decoded.first().map_or(0, |f| f.as_raw().len());
            write_on_thread(&mut writer, frame_bytes, cancel, |emit| {
                interpolate_stream(
                    rife,
                    decoded.into_iter().map(Ok),
                    Some(frame_count),
                    &settings,
                    &mut rife_ctx,
                    emit,
                )
            })?;
        }
        ctx.check()?;
        let path = writer.finish()?;
        // The clip is complete: its save point has served.
        if let Err(error) = std::fs::remove_file(&save_point) {
            tracing::warn!("could not remove {}: {error}", save_point.display());
        }
        Ok(JobOutput { path })
    }
}

impl PipelineRunner {
    /// The RIFE weights: the path given to this runner, else the cached download.
    pub(super) fn rife_weights_path(&self) -> Result<PathBuf, EngineError> {
        match &self.rife_weights {
            Some(path) => Ok(path.clone()),
            None => crate::paths::rife_weights_path().map_err(|e| EngineError::BadRecipe {
                field: "interpolation",
                problem: format!("needs the RIFE weights, whose location is unreadable ({e})"),
            }),
        }
    }
}

impl JobRunner for PipelineRunner {
    fn run(&mut self, kind: &JobKind, ctx: &JobContext<'_>) -> Result<JobOutput, EngineError> {
        match kind {
            JobKind::Render(recipe) => self.render(recipe, ctx),
            JobKind::Interpolate(request) => self.interpolate_clip(request, ctx),
        }
        .map_err(EngineError::classify_out_of_memory)
    }

    fn unload(&mut self) {
        self.models.clear();
    }
}

/// The negative prompt to encode: an empty one means Wan's default, as in the official
/// `generate` (`if n_prompt == "": n_prompt = sample_neg_prompt`).
pub(super) fn negative_prompt(recipe: &Recipe) -> &str {
    if recipe.negative_prompt.is_empty() {
        WAN_DEFAULT_NEGATIVE_PROMPT
    } else {
        &recipe.negative_prompt
    }
}

/// Progress counts are small; saturate rather than fail on absurd ones.
pub(super) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The recipe's image, fitted as it asks, `[3, h, w]` in [-1, 1] on `device`.
pub(super) fn fitted_image(recipe: &Recipe, device: &Device) -> Result<Tensor, EngineError> {
    let loaded = image_input::load(&recipe.image, &LoadOptions::default())?;
    let mode = match recipe.image_fit {
        ImageFit::Official => fit::FitMode::Wan {
            max_area: recipe.width * recipe.height,
        },
        ImageFit::CenterCrop => fit::FitMode::CenterCrop {
            width: recipe.width,
            height: recipe.height,
        },
    };
    fit::fit_image(&loaded.rgb, mode)?.to_tensor(device)
}

/// The `noise` tensor of a safetensors file, `[z, t, h, w]` or with a batch dimension of 1.
pub(super) fn read_noise(path: &Path) -> Result<Tensor, EngineError> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let noise = tensors
        .remove("noise")
        .ok_or_else(|| EngineError::BadRecipe {
            field: "init_noise",
            problem: format!("file has no tensor named noise: {}", path.display()),
        })?;
    Ok(if noise.rank() == 4 {
        noise.unsqueeze(0)?
    } else {
        noise
    })
}

/// Tells the user (an event, not only a log line) when a prompt is cut to the encoder's length
/// (cached encodings remember it).
pub(super) fn warn_if_truncated(
    encoding: &crate::umt5::Encoding,
    what: &str,
    ctx: &JobContext<'_>,
) -> Result<(), EngineError> {
    if encoding.truncated {
        ctx.warn(format!(
            "the {what} is longer than the text encoder's {} tokens; the rest is ignored",
            encoding.context.dim(0)?
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset;
    use crate::recipe::RecipeChoices;

    #[test]
    fn an_empty_negative_prompt_means_the_official_default() {
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.negative_prompt = String::new();
        assert_eq!(negative_prompt(&recipe), WAN_DEFAULT_NEGATIVE_PROMPT);
        recipe.negative_prompt = "blurry".to_owned();
        assert_eq!(negative_prompt(&recipe), "blurry");
    }

    #[test]
    fn injected_noise_takes_the_batch_dimension_when_it_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noise.safetensors");
        let noise = Tensor::zeros((16, 2, 6, 8), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("noise", noise)]), &path)
            .unwrap();
        assert_eq!(read_noise(&path).unwrap().dims(), [1, 16, 2, 6, 8]);
        let other = dir.path().join("other.safetensors");
        let wrong = Tensor::zeros((1, 16, 2, 6, 8), DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("latents", wrong)]),
            &other,
        )
        .unwrap();
        assert!(matches!(
            read_noise(&other),
            Err(EngineError::BadRecipe {
                field: "init_noise",
                ..
            })
        ));
    }
}
