//! Flow-matching samplers for the Wan2.2 models: sigma schedules with shift, Euler and UniPC
//! steps, and the two-expert denoising loop with classifier-free guidance.
//!
//! References (the spec; their differences are listed in `tests/golden/README.md`):
//! - official Wan2.2: `wan/utils/fm_solvers_unipc.py` (`FlowUniPCMultistepScheduler`) driven by
//!   `WanI2V.generate` in `wan/image2video.py` (<https://github.com/Wan-Video/Wan2.2>);
//! - diffusers: `UniPCMultistepScheduler` (flow sigmas, `flow_shift`) and
//!   `FlowMatchEulerDiscreteScheduler`, driven by `WanImageToVideoPipeline`;
//! - ComfyUI: the "simple" scheduler over `ModelSamplingDiscreteFlow`.
//!
//! Samplers know nothing about networks: the loop ([`denoise`]) asks a [`Denoiser`] for the flow
//! and hands it to a [`FlowScheduler`]. Everything is computed in f32, as the references do.

mod denoise;
mod euler;
mod noise;
mod preview;
mod schedule;
mod unipc;

use candle_core::Tensor;

pub use denoise::{Branch, Denoiser, Expert, GuidanceRule, LoopConfig, StepProgress, denoise};
pub use euler::FlowEuler;
pub use noise::{InitialNoise, initial_noise};
pub use preview::{
    LatentPreview, MAX_PREVIEW_SIDE, PreviewChoice, PreviewKind, project as project_latents,
};
pub use schedule::{NUM_TRAIN_TIMESTEPS, Schedule, ScheduleKind, is_high_noise};
pub use unipc::{FlowUniPc, SolverType, UniPcConfig};

use crate::EngineError;
use crate::preset::SamplerKind;

/// A flow-matching sampler: a schedule, and a step that moves a sample one sigma down.
pub trait FlowScheduler {
    /// Recomputes the schedule for `steps` steps at `shift` and resets the solver's state.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] for invalid `steps` or `shift`.
    fn set_timesteps(&mut self, steps: usize, shift: f64) -> Result<(), EngineError>;

    /// Replaces the schedule (custom sigmas) and resets the solver's state.
    fn set_schedule(&mut self, schedule: Schedule);

    /// The current schedule.
    fn schedule(&self) -> &Schedule;

    /// The timesteps the model is evaluated at, one per step.
    fn timesteps(&self) -> &[f32] {
        &self.schedule().timesteps
    }

    /// The index of the next step.
    fn step_index(&self) -> usize;

    /// Advances `sample` (at the current step's sigma) to the next sigma, given the model's
    /// flow prediction at this step.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] past the last step; tensor errors on shape mismatch.
    fn step(&mut self, flow: &Tensor, sample: &Tensor) -> Result<Tensor, EngineError>;
}

/// The schedule a preset's sampler runs on when nothing else is asked for: the official Wan2.2
/// schedule for UniPC (the official pipeline's solver), ComfyUI's "simple" for Euler (the
/// LightX2V ComfyUI templates' sampler, whose 4 steps at shift 5 are 1.0, 0.9375 | 0.8333, 0.625).
#[must_use]
pub fn default_schedule(sampler: SamplerKind) -> ScheduleKind {
    match sampler {
        SamplerKind::Unipc => ScheduleKind::Official,
        SamplerKind::Euler => ScheduleKind::Simple,
    }
}

/// A sampler of kind `sampler` on `schedule`'s sigmas for `steps` steps at `shift` (UniPC with
/// `unipc`'s settings).
///
/// # Errors
/// [`EngineError::Sampler`] for invalid steps, shift or UniPC order.
pub fn new_scheduler(
    sampler: SamplerKind,
    schedule: ScheduleKind,
    unipc: UniPcConfig,
    steps: usize,
    shift: f64,
) -> Result<Box<dyn FlowScheduler + Send>, EngineError> {
    Ok(match sampler {
        SamplerKind::Euler => Box::new(FlowEuler::new(schedule, steps, shift)?),
        SamplerKind::Unipc => Box::new(FlowUniPc::new(schedule, unipc, steps, shift)?),
    })
}

/// The index of the step to take, or an error when the schedule is used up.
fn check_step(schedule: &Schedule, index: usize) -> Result<usize, EngineError> {
    if index >= schedule.steps() {
        return Err(EngineError::Sampler {
            problem: format!(
                "step {} requested but the schedule has {} steps: call set_timesteps before sampling again",
                index + 1,
                schedule.steps()
            ),
        });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::load_presets_in;

    #[test]
    fn shipped_presets_get_their_reference_schedules() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets");
        for preset in load_presets_in(&dir).unwrap() {
            let kind = default_schedule(preset.sampler);
            let steps = usize::try_from(preset.steps).unwrap();
            let sampler = new_scheduler(
                preset.sampler,
                kind,
                UniPcConfig::wan22(),
                steps,
                preset.shift,
            )
            .unwrap();
            let schedule = sampler.schedule();
            if preset.name.contains("LightX2V") || preset.sampler == SamplerKind::Euler {
                // The LightX2V ComfyUI template: 2 high-noise + 2 low-noise steps.
                #[allow(clippy::cast_possible_truncation, reason = "the sigmas as f32")]
                let expected = [1.0, 0.9375, (2.5_f64 / 3.0) as f32, 0.625, 0.0];
                assert_eq!(schedule.sigmas, expected, "{}", preset.name);
                assert_eq!(schedule.high_noise_steps(preset.boundary.unwrap()), 2);
            } else {
                assert_eq!(kind, ScheduleKind::Official, "{}", preset.name);
                assert_eq!(schedule.steps(), steps);
            }
        }
    }
}
