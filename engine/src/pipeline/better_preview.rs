//! The live preview of a render, and its better kind: every few steps (and at each expert
//! switch) the step's clean-latent estimate (flow matching: `x0 = x − σ·v`, what the cheap
//! projection of [`crate::sampling::LatentPreview`] shows too) is decoded by the real Wan VAE,
//! at reduced cost: latents larger than [`POOL_ABOVE`] latent pixels a side are 2×2
//! average-pooled first (a quarter of the pixels), all frames are decoded, in tiles when the
//! memory left beside the expert in use asks for them.
//!
//! **Affordable, decided.** Memory: from the job's plan, the VAE decode of the preview size must
//! fit beside what stays on the device while denoising (the expert(s) or their resident blocks,
//! the VAE, a text encoder kept loaded, the runtime's overhead), whole or in tiles of at least
//! [`MIN_VAE_TILE`]; otherwise only the projection is sent (nothing is evicted for a preview).
//! Time: the first VAE preview (after the first step) is timed, and from then on one is decoded
//! every `n` steps with `n` the smallest interval keeping their cost at most
//! [`MAX_PREVIEW_SHARE`] of the denoising time (against the fastest step seen, re-decided each
//! step); when even one more would cost more than that over the whole run, VAE previews stop.
//! Each decision is sent as an [`Event::PreviewChoice`](crate::runtime::Event::PreviewChoice)
//! with its reason, and logged. The last step gets no VAE preview: the real decode follows.
//!
//! A preview only reads the step's tensors: the sampler, its state and the RNG are untouched,
//! so the rendered frames are the same with previews on or off. The decode checks for a cancel
//! after each latent frame's chunk (tiles decode whole: a cancel waits for the tile pass).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::EngineError;
use crate::memory_plan::{
    DitPlacement, MIN_VAE_TILE, MemoryPlan, Placement, RUNTIME_OVERHEAD, Tokens,
    VAE_PLANNING_BYTES, VaeSize, gib, tile_for, vae_decode_peak,
};
use crate::recipe::PreviewMode;
use crate::runtime::JobContext;
use crate::sampling::{
    Expert, LatentPreview, LoopConfig, PreviewChoice, PreviewKind, StepProgress,
};
use crate::wan_vae::{Tiling, WanVae, to_rgb8};

/// The largest share of the denoising time VAE previews may take.
pub const MAX_PREVIEW_SHARE: f64 = 0.1;

/// Latents with a side longer than this (latent pixels; 256 video pixels with the Wan2.1 VAE)
/// are 2×2 average-pooled before the preview decode.
pub const POOL_ABOVE: usize = 32;

/// The clean latent a step predicts, `x0 = x − σ·v` in f32 (`LatentPreview::of_step`'s too).
///
/// # Errors
/// [`EngineError::Sampler`] when the step has no sigma; tensor errors.
pub fn clean_estimate(step: &StepProgress<'_>) -> Result<Tensor, EngineError> {
    let sigma = step.sigma.ok_or_else(|| EngineError::Sampler {
        problem: "the schedule has no sigma for this step".to_owned(),
    })?;
    Ok((step.previous.to_dtype(DType::F32)?
        - step
            .flow
            .to_dtype(DType::F32)?
            .affine(f64::from(sigma), 0.0)?)?)
}

/// The latents `(1, z, t, h, w)` or `(z, t, h, w)` the preview decodes: `(z, t, h, w)`, 2×2
/// average-pooled when a side is longer than [`POOL_ABOVE`] (odd edges dropped).
///
/// # Errors
/// Tensor errors.
pub fn preview_latents(x0: &Tensor) -> Result<Tensor, EngineError> {
    let x0 = if x0.rank() == 5 {
        x0.squeeze(0)?
    } else {
        x0.clone()
    };
    let (_, _, h, w) = x0.dims4()?;
    if h.max(w) > POOL_ABOVE {
        // (z, t, h, w) pools as (batch, channels, h, w): each frame and channel on its own.
        Ok(x0.avg_pool2d((2, 2))?)
    } else {
        Ok(x0)
    }
}

/// Decodes preview latents `(z, t, h, w)` to RGB8 frames (as the output's frames are made),
/// whole or in `tile`s, calling `check` before each latent frame's chunk so a cancel stops it.
/// Returns `(width, height, frames)`.
///
/// # Errors
/// `check`'s error; the VAE's.
pub fn decode_preview(
    vae: &WanVae,
    latents: &Tensor,
    tile: Option<usize>,
    check: &dyn Fn() -> Result<(), EngineError>,
) -> Result<(usize, usize, Vec<Vec<u8>>), EngineError> {
    check()?;
    let frames = if let Some(side) = tile {
        let (_, _, h, w) = latents.dims4()?;
        to_rgb8(&vae.decode_tiled(latents, Tiling::for_decode(vae.config(), side, h, w))?)?
    } else {
        let mut chunks = Vec::new();
        let mut stopped = None;
        let decoded = vae.decode_each(latents, |chunk| {
            chunks.push(chunk);
            if let Err(error) = check() {
                stopped = Some(error);
                return Err(candle_core::Error::Msg("the preview decode stopped".into()));
            }
            Ok(())
        });
        if let Some(error) = stopped {
            return Err(error);
        }
        decoded?;
        // Chunks are frames-first `(n, 3, h, w)`; `to_rgb8` takes `(3, f, h, w)`.
        to_rgb8(&Tensor::cat(&chunks, 0)?.transpose(0, 1)?.contiguous()?)?
    };
    let (width, height) = frames
        .first()
        .map_or((0, 0), |f| (f.width() as usize, f.height() as usize));
    Ok((
        width,
        height,
        frames.into_iter().map(image::RgbImage::into_raw).collect(),
    ))
}

/// Device bytes that stay in use while denoising under `plan`, beside which a preview decodes.
fn resident_while_denoising(plan: &MemoryPlan) -> u64 {
    let p = &plan.predicted;
    let dit = match plan.dit {
        DitPlacement::BothResident => p.high_noise_weights + p.low_noise_weights,
        DitPlacement::OneAtATime => p.high_noise_weights.max(p.low_noise_weights),
        // The resident blocks and the two streaming slots (`memory_plan`).
        DitPlacement::BlockSwap {
            resident_blocks, ..
        } => p.dit_non_block_weights + (resident_blocks + 2) * p.dit_block_weights,
    };
    let text = if plan.text_encoder == Placement::Device {
        p.text_encoder
    } else {
        0
    };
    dit + text + p.vae_weights + RUNTIME_OVERHEAD
}

/// Whether the VAE decode of `tokens` (the preview's latent size) fits beside what `plan` keeps
/// on the device while denoising: `Ok(None)` whole frames, `Ok(Some(side))` in tiles of `side`
/// latent pixels, `Err(reason)` not at all. A plan with no budget (the CPU) always fits.
///
/// # Errors
/// The reason, in words for the user, when even the smallest tiles do not fit.
pub fn memory_fit(
    plan: &MemoryPlan,
    vae: &VaeSize,
    tokens: &Tokens,
) -> Result<Option<u64>, String> {
    let Some(budget) = plan.budget else {
        return Ok(None);
    };
    let resident = resident_while_denoising(plan);
    let room = budget.saturating_sub(resident);
    tile_for(room, MIN_VAE_TILE, |tile| {
        vae_decode_peak(vae, tokens, tile, VAE_PLANNING_BYTES)
    })
    .map_err(|needed| {
        format!(
            "the VAE preview would need {} beside the {} that stay on the GPU while denoising, over the {} budget: showing the fast preview (lower the VRAM reserve to allow it)",
            gib(needed),
            gib(resident),
            gib(budget)
        )
    })
}

/// One VAE preview every this many steps keeps them at most [`MAX_PREVIEW_SHARE`] of the
/// denoising time (`decode ≤ share · n · step`); `None` when even one more over the run's
/// `steps` would cost more.
#[must_use]
pub fn interval_for(decode_secs: f64, step_secs: f64, steps: usize) -> Option<usize> {
    let steps_per_preview = decode_secs / (MAX_PREVIEW_SHARE * step_secs.max(f64::EPSILON));
    if !steps_per_preview.is_finite() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a finite, non-negative count of steps, checked against `steps` next"
    )]
    let n = (steps_per_preview.ceil() as usize).max(1);
    (n < steps).then_some(n)
}

/// Whether step `index` of `total` gets a VAE preview: the first step that can (to time it),
/// each expert's last step before a switch, and every `every` steps after the last one; never
/// the last step (the real decode follows).
#[must_use]
pub fn vae_due(
    index: usize,
    total: usize,
    last: Option<usize>,
    every: Option<usize>,
    switches: &[usize],
) -> bool {
    if index + 1 >= total {
        return false;
    }
    match last {
        None => true,
        Some(last) => {
            switches.contains(&index) || every.is_some_and(|n| index.saturating_sub(last) >= n)
        }
    }
}

/// The steps after which the expert changes (the last step of each expert's run but the last).
fn switch_steps(timesteps: &[f32], loop_cfg: &LoopConfig) -> Vec<usize> {
    let experts: Vec<Expert> = timesteps.iter().map(|&t| loop_cfg.expert(t)).collect();
    experts
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] != pair[1])
        .map(|(index, _)| index)
        .collect()
}

/// The VAE side of the live preview while it is on.
struct VaeSide {
    vae: WanVae,
    tile: Option<usize>,
    switches: Vec<usize>,
    /// Fixed by the runner (tests), instead of the time rule.
    fixed_every: Option<usize>,
    every: Option<usize>,
    last: Option<usize>,
    decode_secs: Option<f64>,
    fastest_step_secs: Option<f64>,
}

/// What a render's denoising loop sends as live previews, step by step.
pub(super) struct LivePreviews {
    /// Nothing at all (previews off, or nobody listens).
    off: bool,
    vae: Option<VaeSide>,
    step_started: Instant,
}

/// What [`LivePreviews::new`] decides from.
pub(super) struct PreviewSetup<'a> {
    pub mode: PreviewMode,
    pub device: &'a Device,
    pub plan: &'a MemoryPlan,
    pub vae: &'a WanVae,
    /// The latents' `(t, h, w)`.
    pub latent_shape: (usize, usize, usize),
    pub timesteps: &'a [f32],
    pub loop_cfg: &'a LoopConfig,
    /// A VAE preview every this many steps whatever they cost (tests).
    pub fixed_every: Option<usize>,
}

impl LivePreviews {
    /// Decides the previews of a job and tells its caller (when it listens) which and why.
    pub fn new(setup: &PreviewSetup<'_>, ctx: &JobContext<'_>) -> Self {
        let off = !ctx.wants_previews() || setup.mode == PreviewMode::Off;
        let mut previews = Self {
            off,
            vae: None,
            step_started: Instant::now(),
        };
        if off {
            return previews;
        }
        let fast = |reason: String| PreviewChoice {
            kind: PreviewKind::Projection,
            every: None,
            reason,
        };
        let choice = match setup.mode {
            PreviewMode::Off => return previews,
            PreviewMode::Fast => fast("the fast preview (latent projection) was chosen".to_owned()),
            PreviewMode::Auto if !setup.device.is_cuda() => fast(
                "on the CPU the fast preview (latent projection) is the default: a VAE decode costs about as much as a step there (choose Better to have it anyway)".to_owned(),
            ),
            PreviewMode::Auto | PreviewMode::Better => previews.start_vae(setup),
        };
        ctx.preview_choice(choice);
        previews
    }

    /// Turns the VAE preview on when it fits in memory; the choice to report.
    fn start_vae(&mut self, setup: &PreviewSetup<'_>) -> PreviewChoice {
        let (t, h, w) = setup.latent_shape;
        let (ph, pw) = if h.max(w) > POOL_ABOVE {
            (h / 2, w / 2)
        } else {
            (h, w)
        };
        let tokens = Tokens {
            latent_frames: t as u64,
            latent_height: ph as u64,
            latent_width: pw as u64,
            count: (t * (ph / 2) * (pw / 2)) as u64,
        };
        let size = VaeSize::from_config(setup.vae.config());
        let tile = match memory_fit(setup.plan, &size, &tokens) {
            Ok(tile) => tile.map(|side| usize::try_from(side).unwrap_or(usize::MAX)),
            Err(reason) => {
                return PreviewChoice {
                    kind: PreviewKind::Projection,
                    every: None,
                    reason,
                };
            }
        };
        let stride = setup.vae.config().spatial_stride();
        let frames = (t.max(1) - 1) * setup.vae.config().temporal_stride() + 1;
        let tiles = tile.map_or_else(String::new, |side| {
            format!(", in tiles of {} pixels", side * stride)
        });
        let when = setup.fixed_every.map_or_else(
            || {
                format!(
                    "after the first step, then as often as costs at most {:.0} % of the denoising time",
                    MAX_PREVIEW_SHARE * 100.0
                )
            },
            |n| format!("every {n} steps"),
        );
        self.vae = Some(VaeSide {
            vae: setup.vae.clone(),
            tile,
            switches: switch_steps(setup.timesteps, setup.loop_cfg),
            fixed_every: setup.fixed_every,
            every: setup.fixed_every,
            last: None,
            decode_secs: None,
            fastest_step_secs: None,
        });
        PreviewChoice {
            kind: PreviewKind::VaeDecode,
            every: setup.fixed_every,
            reason: format!(
                "VAE preview ({}×{}, {frames} frames{tiles}) {when}, and at the expert switch",
                pw * stride,
                ph * stride
            ),
        }
    }

    /// Sends the preview of the step just taken. Only a cancel (seen while decoding) fails;
    /// a VAE preview that fails otherwise turns VAE previews off for the job.
    pub fn on_step(
        &mut self,
        step: &StepProgress<'_>,
        ctx: &JobContext<'_>,
    ) -> Result<(), EngineError> {
        if self.off {
            return Ok(());
        }
        let step_secs = self.step_started.elapsed().as_secs_f64();
        let result = self.send(step, step_secs, ctx);
        self.step_started = Instant::now();
        result
    }

    fn send(
        &mut self,
        step: &StepProgress<'_>,
        step_secs: f64,
        ctx: &JobContext<'_>,
    ) -> Result<(), EngineError> {
        let Some(side) = &mut self.vae else {
            ctx.preview(|| LatentPreview::of_step(step));
            return Ok(());
        };
        side.fastest_step_secs = Some(
            side.fastest_step_secs
                .map_or(step_secs, |s| s.min(step_secs)),
        );
        if !vae_due(
            step.index,
            step.total,
            side.last,
            side.every,
            &side.switches,
        ) {
            ctx.preview(|| LatentPreview::of_step(step));
            return Ok(());
        }
        let started = Instant::now();
        match vae_preview(side, step, ctx) {
            Ok(preview) => {
                side.last = Some(step.index);
                side.decode_secs = Some(started.elapsed().as_secs_f64());
                ctx.preview(|| Ok(preview));
                self.redecide(step.total, ctx);
                Ok(())
            }
            Err(EngineError::Cancelled) => Err(EngineError::Cancelled),
            Err(error) => {
                tracing::warn!("the VAE preview failed: {error}");
                self.vae = None;
                ctx.preview_choice(PreviewChoice {
                    kind: PreviewKind::Projection,
                    every: None,
                    reason: format!("the VAE preview failed ({error}): showing the fast preview"),
                });
                ctx.preview(|| LatentPreview::of_step(step));
                Ok(())
            }
        }
    }

    /// The interval from the latest decode time and the fastest step, reported when it changes.
    fn redecide(&mut self, steps: usize, ctx: &JobContext<'_>) {
        let Some(side) = &mut self.vae else {
            return;
        };
        if side.fixed_every.is_some() {
            return;
        }
        let (Some(decode), Some(step)) = (side.decode_secs, side.fastest_step_secs) else {
            return;
        };
        let every = interval_for(decode, step, steps);
        if every.is_some() && every == side.every {
            return;
        }
        side.every = every;
        let costs = format!("a VAE preview takes {decode:.2} s, a step {step:.2} s");
        let choice = if let Some(n) = every {
            PreviewChoice {
                kind: PreviewKind::VaeDecode,
                every: Some(n),
                reason: format!(
                    "{costs}: a VAE preview every {n} steps (and at the expert switch) keeps them within {:.0} % of the denoising time",
                    MAX_PREVIEW_SHARE * 100.0
                ),
            }
        } else {
            self.vae = None;
            PreviewChoice {
                kind: PreviewKind::Projection,
                every: None,
                reason: format!(
                    "{costs}: more VAE previews would cost over {:.0} % of the {steps}-step denoising, so the fast preview goes on alone",
                    MAX_PREVIEW_SHARE * 100.0
                ),
            }
        };
        ctx.preview_choice(choice);
    }
}

/// The VAE preview of `step`.
fn vae_preview(
    side: &VaeSide,
    step: &StepProgress<'_>,
    ctx: &JobContext<'_>,
) -> Result<LatentPreview, EngineError> {
    let latents = preview_latents(&clean_estimate(step)?)?;
    let device = latents.device().clone();
    // The step's freed activations go back to the device before the decode asks for memory,
    // and the decode's before the next step.
    device.synchronize()?;
    let check = || ctx.check();
    let (width, height, frames) = decode_preview(&side.vae, &latents, side.tile, &check)?;
    device.synchronize()?;
    Ok(LatentPreview {
        step: step.index,
        total_steps: step.total,
        width,
        height,
        frames,
        kind: PreviewKind::VaeDecode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_previews_come_first_every_n_steps_after_the_last_and_at_the_switch_never_last() {
        let due_steps = |total: usize, every: Option<usize>, switches: &[usize]| {
            let mut last = None;
            let mut due = Vec::new();
            for index in 0..total {
                if vae_due(index, total, last, every, switches) {
                    due.push(index);
                    last = Some(index);
                }
            }
            due
        };
        assert_eq!(due_steps(12, Some(3), &[4]), [0, 3, 4, 7, 10]);
        assert_eq!(due_steps(4, Some(3), &[1]), [0, 1]);
        assert_eq!(
            due_steps(4, Some(1), &[1]),
            [0, 1, 2],
            "never the last step"
        );
        assert_eq!(
            due_steps(40, None, &[13]),
            [0, 13],
            "timed off: only the switch"
        );
        assert_eq!(due_steps(1, Some(1), &[]), Vec::<usize>::new());
    }

    #[test]
    fn the_interval_keeps_previews_within_a_tenth_of_the_denoising_time() {
        // 1 s a decode, 4 s a step: one every 3 steps costs 1 / 12 of the time (every 2: 1 / 8).
        assert_eq!(interval_for(1.0, 4.0, 40), Some(3));
        assert_eq!(interval_for(0.1, 4.0, 40), Some(1));
        // 4 steps of 10 s: a 3 s decode needs 30 s of denoising, within the 40 s run once more;
        // a 4 s one needs the whole run.
        assert_eq!(interval_for(3.0, 10.0, 4), Some(3));
        assert_eq!(interval_for(4.0, 10.0, 4), None);
        assert_eq!(
            interval_for(1.0, 0.0, 4),
            None,
            "a step too fast to measure"
        );
    }

    #[test]
    fn switches_are_the_last_steps_of_each_experts_run() {
        let cfg = LoopConfig::i2v_a14b();
        assert_eq!(switch_steps(&[999.0, 937.0, 833.0, 624.0], &cfg), [1]);
        assert_eq!(switch_steps(&[999.0, 950.0], &cfg), Vec::<usize>::new());
    }

    #[test]
    fn large_latents_are_average_pooled_two_by_two_small_ones_kept() {
        let values: Vec<f32> = (0..2 * 34 * 36).map(|v| v as f32).collect();
        let x0 = Tensor::from_vec(values, (1, 1, 2, 34, 36), &Device::Cpu).unwrap();
        let pooled = preview_latents(&x0).unwrap();
        assert_eq!(pooled.dims(), [1, 2, 17, 18]);
        let first = pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((first - (0.0 + 1.0 + 36.0 + 37.0) / 4.0).abs() < 1e-6);
        let small = Tensor::zeros((16, 2, 6, 8), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(preview_latents(&small).unwrap().dims(), [16, 2, 6, 8]);
    }

    #[test]
    fn the_preview_choice_is_stored_only_when_chosen_and_never_blocks_a_resume() {
        use crate::recipe::{Recipe, RecipeChoices};
        let preset = crate::preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let auto = Recipe::from_layers(&preset, RecipeChoices::default());
        assert_eq!(auto.preview, PreviewMode::Auto);
        assert!(!auto.to_json().unwrap().contains("preview"));
        let better = Recipe {
            preview: PreviewMode::Better,
            ..auto.clone()
        };
        let json = better.to_json().unwrap();
        assert!(json.contains(r#""preview": "better""#), "{json}");
        assert_eq!(Recipe::from_json(&json).unwrap(), better);
        assert_eq!(
            super::super::resume::recipe_hash(&better).unwrap(),
            super::super::resume::recipe_hash(&auto).unwrap()
        );
    }

    fn plan_with(budget: Option<u64>, dit: DitPlacement) -> MemoryPlan {
        use crate::memory_plan::{GIB, Predictions};
        MemoryPlan {
            budget,
            tokens: Tokens::new(81, 832, 480, 8),
            dit,
            text_encoder: Placement::Cpu,
            vae_tile: None,
            vae_encode_tile: None,
            vae_stride: 8,
            predicted: Predictions {
                high_noise_weights: 14 * GIB,
                low_noise_weights: 14 * GIB,
                dit_block_weights: GIB / 3,
                dit_non_block_weights: GIB / 10,
                dit_activation_peak: 2 * GIB,
                text_encoder: 6 * GIB,
                vae_weights: GIB / 4,
                vae_decode_peak: 0,
                vae_encode_peak: 0,
                peak: 0,
            },
        }
    }

    #[test]
    fn the_preview_decode_must_fit_beside_the_expert_in_use() {
        use crate::memory_plan::GIB;
        let vae = VaeSize::from_config(&crate::wan_vae::Config::wan21());
        // 480p, 81 frames, pooled: 21 latent frames of 30×52.
        let tokens = Tokens {
            latent_frames: 21,
            latent_height: 30,
            latent_width: 52,
            count: 21 * 15 * 26,
        };
        let whole = vae_decode_peak(&vae, &tokens, None, VAE_PLANNING_BYTES);
        let one = plan_with(Some(40 * GIB), DitPlacement::OneAtATime);
        assert_eq!(
            memory_fit(&one, &vae, &tokens),
            Ok(None),
            "whole frames: {whole}"
        );
        // Both experts resident at 30 GiB leave too little for whole frames, enough for tiles.
        let both = plan_with(Some(29 * GIB), DitPlacement::BothResident);
        assert!(memory_fit(&both, &vae, &tokens).is_err());
        let tight = 14 * GIB + GIB / 4 + RUNTIME_OVERHEAD + whole * 3 / 4;
        let tiled = memory_fit(
            &plan_with(Some(tight), DitPlacement::OneAtATime),
            &vae,
            &tokens,
        );
        assert!(
            matches!(tiled, Ok(Some(side)) if side >= MIN_VAE_TILE),
            "{tiled:?}"
        );
        assert!(
            memory_fit(&plan_with(None, DitPlacement::BothResident), &vae, &tokens).is_ok(),
            "no budget (the CPU): always fits"
        );
    }
}
