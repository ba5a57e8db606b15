//! The two-expert flow-matching loop of Wan2.2 A14B: the high-noise expert while
//! `t >= boundary × 1000`, the low-noise expert below, classifier-free guidance per expert.

use candle_core::Tensor;
use serde::Deserialize;

use super::{FlowScheduler, is_high_noise};
use crate::EngineError;

/// Which of the two experts runs a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expert {
    HighNoise,
    LowNoise,
}

/// The conditioned (prompt) or unconditioned (negative prompt) pass of guidance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Branch {
    Cond,
    Uncond,
}

/// The network side of the loop: predicts the flow for latents at a timestep.
pub trait Denoiser {
    /// Called before the first step of each expert's run of steps (once per switch), so that
    /// only the expert in use needs to be on the device.
    ///
    /// # Errors
    /// Whatever loading or moving the expert fails with.
    fn prepare_expert(&mut self, expert: Expert) -> Result<(), EngineError> {
        let _ = expert;
        Ok(())
    }

    /// The flow (velocity) prediction of `expert` for `latents` at `timestep` (0..1000),
    /// with the prompt (`Cond`) or the negative prompt (`Uncond`).
    ///
    /// # Errors
    /// Whatever the network fails with.
    fn predict_flow(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError>;
}

/// When the unconditioned pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuidanceRule {
    /// Per expert: skip the unconditioned pass when that expert's scale is exactly 1.0. The
    /// official code always runs both passes unless `lightning`; at scale 1.0 the results differ
    /// only by rounding.
    #[default]
    Official,
    /// diffusers: guidance runs for both experts only when `cfg_high_noise > 1`
    /// (`guidance_scale`), whatever `cfg_low_noise` (`guidance_scale_2`) is.
    Diffusers,
}

/// Settings of the loop.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LoopConfig {
    /// Expert switch: the high-noise expert runs while `t >= boundary × 1000` (0.9 for
    /// I2V-A14B, 0.875 for T2V-A14B; 0 makes every step high-noise, for single-model runs).
    pub boundary: f64,
    /// Guidance scale of the high-noise expert (official `guide_scale[1]`, diffusers
    /// `guidance_scale`).
    pub cfg_high_noise: f64,
    /// Guidance scale of the low-noise expert (official `guide_scale[0]`, diffusers
    /// `guidance_scale_2`).
    pub cfg_low_noise: f64,
    pub guidance: GuidanceRule,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self::i2v_a14b()
    }
}

impl LoopConfig {
    /// Wan2.2 I2V-A14B's official settings: boundary 0.9, guidance 3.5 for both experts.
    #[must_use]
    pub fn i2v_a14b() -> Self {
        Self {
            boundary: 0.9,
            cfg_high_noise: 3.5,
            cfg_low_noise: 3.5,
            guidance: GuidanceRule::Official,
        }
    }

    /// The expert for `timestep`.
    #[must_use]
    pub fn expert(&self, timestep: f32) -> Expert {
        if is_high_noise(timestep, self.boundary) {
            Expert::HighNoise
        } else {
            Expert::LowNoise
        }
    }

    /// The guidance scale of `expert`, or `None` when its unconditioned pass is skipped.
    #[must_use]
    pub fn guidance_scale(&self, expert: Expert) -> Option<f64> {
        let scale = match expert {
            Expert::HighNoise => self.cfg_high_noise,
            Expert::LowNoise => self.cfg_low_noise,
        };
        let guided = match self.guidance {
            #[allow(
                clippy::float_cmp,
                reason = "1.0 exactly is the documented no-guidance value"
            )]
            GuidanceRule::Official => scale != 1.0,
            GuidanceRule::Diffusers => self.cfg_high_noise > 1.0,
        };
        guided.then_some(scale)
    }
}

/// What the per-step callback sees, after each step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// 0-based index of the step just taken.
    pub index: usize,
    pub total: usize,
    pub timestep: f32,
    pub expert: Expert,
    /// Number of network passes this step took (1 or 2).
    pub model_calls: usize,
    /// The latents after this step.
    pub latents: &'a Tensor,
    /// The latents this step started from, the flow it applied and the step's sigma: together
    /// the clean latent the step predicts (`x0 = x − σ·v`), which live previews show.
    pub previous: &'a Tensor,
    pub flow: &'a Tensor,
    pub sigma: Option<f32>,
}

/// Runs every step of `scheduler`'s schedule from `noise` and returns the final latents.
///
/// `on_step` runs after each step; returning an error (e.g. [`EngineError::Cancelled`]) stops
/// the loop there and is returned.
///
/// # Errors
/// The denoiser's, the scheduler's or the callback's error.
pub fn denoise<D, S, F>(
    denoiser: &mut D,
    scheduler: &mut S,
    noise: Tensor,
    cfg: &LoopConfig,
    mut on_step: F,
) -> Result<Tensor, EngineError>
where
    D: Denoiser + ?Sized,
    S: FlowScheduler + ?Sized,
    F: FnMut(&StepProgress<'_>) -> Result<(), EngineError>,
{
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len();
    let mut latents = noise;
    let mut prepared = None;
    for (index, &timestep) in timesteps.iter().enumerate() {
        let expert = cfg.expert(timestep);
        if prepared != Some(expert) {
            denoiser.prepare_expert(expert)?;
            prepared = Some(expert);
        }
        let cond = denoiser.predict_flow(&latents, timestep, expert, Branch::Cond)?;
        let (flow, model_calls) = match cfg.guidance_scale(expert) {
            Some(scale) => {
                let uncond = denoiser.predict_flow(&latents, timestep, expert, Branch::Uncond)?;
                // uncond + scale × (cond - uncond), in this order as both references write it.
                let flow = ((cond - &uncond)?.affine(scale, 0.0)? + uncond)?;
                (flow, 2)
            }
            None => (cond, 1),
        };
        let sigma = scheduler
            .schedule()
            .sigmas
            .get(scheduler.step_index())
            .copied();
        let next = scheduler.step(&flow, &latents)?;
        tracing::debug!(step = index + 1, total, timestep, ?expert, "denoise step");
        on_step(&StepProgress {
            index,
            total,
            timestep,
            expert,
            model_calls,
            latents: &next,
            previous: &latents,
            flow: &flow,
            sigma,
        })?;
        latents = next;
    }
    Ok(latents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{FlowEuler, ScheduleKind};
    use Branch::{Cond, Uncond};
    use Expert::{HighNoise, LowNoise};
    use candle_core::Device;

    /// Flow = gain × x, with a different gain per expert and branch; counts its calls.
    struct Linear {
        calls: Vec<(Expert, Branch)>,
        prepared: Vec<Expert>,
    }

    impl Denoiser for Linear {
        fn prepare_expert(&mut self, expert: Expert) -> Result<(), EngineError> {
            self.prepared.push(expert);
            Ok(())
        }

        fn predict_flow(
            &mut self,
            latents: &Tensor,
            _timestep: f32,
            expert: Expert,
            branch: Branch,
        ) -> Result<Tensor, EngineError> {
            self.calls.push((expert, branch));
            let gain = match (expert, branch) {
                (HighNoise, Cond) => 1.0,
                (HighNoise, Uncond) => 0.5,
                (LowNoise, Cond) => 2.0,
                (LowNoise, Uncond) => 1.5,
            };
            Ok(latents.affine(gain, 0.0)?)
        }
    }

    fn run(cfg: &LoopConfig, cancel_after: Option<usize>) -> (Result<Tensor, EngineError>, Linear) {
        let mut model = Linear {
            calls: Vec::new(),
            prepared: Vec::new(),
        };
        // Simple 4 steps at shift 5: timesteps 1000, 937.5 (high noise) | 833.3, 625 (low).
        let mut sampler = FlowEuler::new(ScheduleKind::Simple, 4, 5.0).unwrap();
        let noise = Tensor::new(&[1.0_f32, -2.0], &Device::Cpu).unwrap();
        let result = denoise(&mut model, &mut sampler, noise, cfg, |p| {
            if cancel_after == Some(p.index) {
                return Err(EngineError::Cancelled);
            }
            Ok(())
        });
        (result, model)
    }

    #[test]
    fn experts_switch_at_the_boundary_and_guidance_skips_at_scale_one() {
        let cfg = LoopConfig {
            cfg_high_noise: 1.0,
            cfg_low_noise: 3.0,
            ..LoopConfig::i2v_a14b()
        };
        let (result, model) = run(&cfg, None);
        let latents = result.unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            model.calls,
            [
                (HighNoise, Cond),
                (HighNoise, Cond),
                (LowNoise, Cond),
                (LowNoise, Uncond),
                (LowNoise, Cond),
                (LowNoise, Uncond)
            ]
        );
        assert_eq!(
            model.prepared,
            [HighNoise, LowNoise],
            "each expert is prepared once"
        );
        // Linear flows make each Euler step a product: x ← x (1 + g dt) with the guided gain
        // (high: 1.0; low: 1.5 + 3 × (2 - 1.5) = 3.0).
        let s = [1.0_f64, 0.9375, 2.5 / 3.0, 0.625, 0.0];
        let factor: f64 = (0..4)
            .map(|i| 1.0 + if i < 2 { 1.0 } else { 3.0 } * (s[i + 1] - s[i]))
            .product();
        assert!(
            (f64::from(latents[0]) - factor).abs() < 1e-5,
            "{latents:?} vs {factor}"
        );

        let diffusers = LoopConfig {
            guidance: GuidanceRule::Diffusers,
            ..cfg
        };
        let (_, model) = run(&diffusers, None);
        assert_eq!(
            model.calls.len(),
            4,
            "diffusers gates guidance on the high-noise scale"
        );
    }

    #[test]
    fn a_callback_error_stops_the_loop_within_the_step() {
        let (result, model) = run(&LoopConfig::i2v_a14b(), Some(1));
        assert!(matches!(result, Err(EngineError::Cancelled)));
        assert_eq!(model.calls.len(), 4, "two guided steps, then nothing");
    }
}
