//! From recipe to denoised latents: text, image conditioning, noise and the two-expert loop,
//! with the save point after the high-noise phase (see [`super::resume`]).

use std::cell::RefCell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::better_preview::{LivePreviews, PreviewSetup};
use super::denoiser::WanDenoiser;
use super::resume::{self, Replay, SavedState};
use super::runner::{
    PipelineRunner, count, fitted_image, negative_prompt, read_noise, warn_if_truncated,
};
use crate::EngineError;
use crate::memory_plan::{DitPlacement, ExpertLoras, MemoryPlan, Placement};
use crate::recipe::Recipe;
use crate::runtime::{JobContext, Stage};
use crate::sampling::{
    Expert, InitialNoise, LoopConfig, UniPcConfig, default_schedule, denoise, initial_noise,
    new_scheduler,
};
use crate::wan_vae::i2v_condition_tiled;

/// What the denoising stage runs with.
pub(super) struct DenoiseStage<'a> {
    pub plan: &'a MemoryPlan,
    /// How each expert takes its LoRAs, resolved with the plan.
    pub loras: &'a ExpertLoras,
    pub device: &'a Device,
    pub dtype: DType,
    pub loop_cfg: &'a LoopConfig,
    /// Where the save point goes, and the recipe hash it carries.
    pub save_point: &'a Path,
    pub hash: &'a str,
}

impl PipelineRunner {
    /// The denoised latents `[1, z, t, h, w]` of `recipe`, continuing from `saved` when the
    /// high-noise phase was saved.
    pub(super) fn denoise_latents(
        &mut self,
        recipe: &Recipe,
        ctx: &JobContext<'_>,
        stage: &DenoiseStage<'_>,
        saved: Option<SavedState>,
    ) -> Result<Tensor, EngineError> {
        let device = stage.device;
        let loop_cfg = stage.loop_cfg;

        // Text.
        ctx.check()?;
        ctx.progress(Stage::LoadingWeights, 0, 3);
        let needs_negative = [Expert::HighNoise, Expert::LowNoise]
            .iter()
            .any(|&e| loop_cfg.guidance_scale(e).is_some());
        let (text_device, text_dtype) = match stage.plan.text_encoder {
            Placement::Device | Placement::DeviceThenFreed => (device.clone(), stage.dtype),
            Placement::Cpu => (Device::Cpu, DType::F32),
        };
        let text_total = if needs_negative { 2 } else { 1 };
        ctx.progress(Stage::EncodingText, 0, text_total);
        let mut prompts = vec![recipe.prompt.as_str()];
        if needs_negative {
            prompts.push(negative_prompt(recipe));
        }
        let then_free = stage.plan.text_encoder == Placement::DeviceThenFreed;
        let encodings =
            self.models
                .encode_prompts(recipe, &prompts, (text_dtype, &text_device), then_free)?;
        if needs_negative {
            // The second prompt's cancel point, as when the prompts were encoded one by one.
            ctx.check()?;
        }
        let mut contexts = Vec::with_capacity(encodings.len());
        for (encoding, what) in encodings.into_iter().zip(["prompt", "negative prompt"]) {
            warn_if_truncated(&encoding, what, ctx)?;
            contexts.push(encoding.context.to_device(device)?.unsqueeze(0)?);
        }
        ctx.progress(Stage::EncodingText, text_total, text_total);
        let mut contexts = contexts.into_iter();
        let context = contexts.next().ok_or_else(|| EngineError::BadModelInput {
            problem: "the prompt was not encoded".to_owned(),
        })?;
        let negative_context = contexts.next();

        // Image and its conditioning.
        ctx.check()?;
        let image = fitted_image(recipe, device)?;
        ctx.progress(Stage::LoadingWeights, 1, 3);
        let vae = self.models.vae(recipe, device)?;
        ctx.progress(Stage::EncodingImage, 0, 1);
        let tile = (stage.plan.vae_encode_tile).and_then(|t| usize::try_from(t).ok());
        // The condition joins the f32 latents in the DiT, whatever the VAE's dtype.
        let y = i2v_condition_tiled(vae, &image, recipe.num_frames as usize, tile)?
            .to_dtype(DType::F32)?
            .unsqueeze(0)?;
        ctx.progress(Stage::EncodingImage, 1, 1);
        let z_dim = vae.config().z_dim;
        // A handle (weights shared) for the live preview's decodes while the experts run.
        let preview_vae = vae.clone();
        // The encode's activations are freed on the stream; waiting returns them to the device
        // (the allocator's pool keeps freed memory until a synchronisation) before the experts
        // load, so the denoising starts from what the plan counts.
        device.synchronize()?;
        let (_, _, lat_t, lat_h, lat_w) = y.dims5()?;
        let (noise, replay) = if let Some(SavedState::HighNoiseDone { noise, predictions }) = saved
        {
            (noise.to_device(device)?, predictions)
        } else {
            let noise = match &recipe.init_noise {
                Some(path) => InitialNoise::Injected(read_noise(path)?),
                None => InitialNoise::Seeded(recipe.seed),
            };
            let noise = initial_noise(&noise, (1, z_dim, lat_t, lat_h, lat_w), device)?;
            (noise, Vec::new())
        };

        // Denoising.
        ctx.check()?;
        ctx.progress(Stage::LoadingWeights, 2, 3);
        // Both experts up front when they stay resident; else each at its phase.
        let keep_both = stage.plan.dit == DitPlacement::BothResident;
        if keep_both {
            let resumed = !replay.is_empty();
            for expert in [Expert::HighNoise, Expert::LowNoise] {
                if !(resumed && expert == Expert::HighNoise) {
                    let lora = stage.loras.get(expert).load;
                    self.models
                        .expert(recipe, expert, (stage.dtype, device), (None, lora))?;
                }
            }
        }
        for warning in self.models.take_warnings() {
            ctx.warn(warning);
        }
        ctx.progress(Stage::LoadingWeights, 3, 3);
        let recorded = RefCell::new(Some(Vec::new()));
        let warn = |message: String| ctx.warn(message);
        let mut denoiser = Replay {
            inner: WanDenoiser {
                models: &mut self.models,
                recipe,
                dtype: stage.dtype,
                device,
                keep_both,
                resident_blocks: match stage.plan.dit {
                    DitPlacement::BlockSwap {
                        resident_blocks, ..
                    } => Some(usize::try_from(resident_blocks).unwrap_or(usize::MAX)),
                    _ => None,
                },
                loras: stage.loras,
                y,
                context,
                negative_context,
                warn: &warn,
            },
            replay: replay.into_iter(),
            recorded: &recorded,
        };
        let mut scheduler = new_scheduler(
            recipe.sampler,
            default_schedule(recipe.sampler),
            UniPcConfig::wan22(),
            recipe.steps as usize,
            recipe.shift,
        )?;
        // The index of the last high-noise step: its predictions make the save point.
        let last_high = scheduler
            .timesteps()
            .iter()
            .rposition(|&t| loop_cfg.expert(t) == Expert::HighNoise);
        let has_low = scheduler
            .timesteps()
            .iter()
            .any(|&t| loop_cfg.expert(t) == Expert::LowNoise);
        let initial = noise.clone();
        let mut previews = LivePreviews::new(
            &PreviewSetup {
                mode: recipe.preview,
                device,
                plan: stage.plan,
                vae: &preview_vae,
                latent_shape: (lat_t, lat_h, lat_w),
                timesteps: scheduler.timesteps(),
                loop_cfg,
                fixed_every: self.preview_every,
            },
            ctx,
        );
        let latents = denoise(&mut denoiser, &mut *scheduler, noise, loop_cfg, |step| {
            let stage_now = match step.expert {
                Expert::HighNoise => Stage::DenoisingHighNoise,
                Expert::LowNoise => Stage::DenoisingLowNoise,
            };
            ctx.progress(stage_now, count(step.index + 1), count(step.total));
            previews.on_step(step, ctx)?;
            if has_low && Some(step.index) == last_high {
                // Recording stops here: the low-noise phase is saved as final latents.
                if let Some(predictions) = recorded.borrow_mut().take() {
                    resume::save(
                        stage.save_point,
                        stage.hash,
                        &SavedState::HighNoiseDone {
                            noise: initial.clone(),
                            predictions,
                        },
                    )?;
                }
            }
            ctx.check()
        })?;
        Ok(latents)
    }
}
