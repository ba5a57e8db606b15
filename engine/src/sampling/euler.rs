//! The flow-matching Euler step: `x + (sigma_next - sigma) × flow`, in f32 as diffusers'
//! `FlowMatchEulerDiscreteScheduler.step` (and ComfyUI's `euler` on a flow model) compute it.

use candle_core::Tensor;

use super::{FlowScheduler, Schedule, ScheduleKind, check_step};
use crate::EngineError;

/// First-order flow-matching sampler.
#[derive(Clone, Debug)]
pub struct FlowEuler {
    kind: ScheduleKind,
    schedule: Schedule,
    step_index: usize,
}

impl FlowEuler {
    /// An Euler sampler on `kind`'s schedule for `steps` steps at `shift`.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] for invalid `steps` or `shift`.
    pub fn new(kind: ScheduleKind, steps: usize, shift: f64) -> Result<Self, EngineError> {
        Ok(Self::with_schedule(
            kind,
            Schedule::new(kind, steps, shift)?,
        ))
    }

    /// An Euler sampler on a ready schedule (`kind` is used by later `set_timesteps` calls).
    #[must_use]
    pub fn with_schedule(kind: ScheduleKind, schedule: Schedule) -> Self {
        Self {
            kind,
            schedule,
            step_index: 0,
        }
    }
}

impl FlowScheduler for FlowEuler {
    fn set_timesteps(&mut self, steps: usize, shift: f64) -> Result<(), EngineError> {
        self.set_schedule(Schedule::new(self.kind, steps, shift)?);
        Ok(())
    }

    fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
        self.step_index = 0;
    }

    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, flow: &Tensor, sample: &Tensor) -> Result<Tensor, EngineError> {
        let index = check_step(&self.schedule, self.step_index)?;
        let sigmas = &self.schedule.sigmas;
        // The difference is taken in f32, as the reference subtracts two f32 tensors.
        let dt = sigmas[index + 1] - sigmas[index];
        let next = (flow.affine(f64::from(dt), 0.0)? + sample)?;
        self.step_index += 1;
        Ok(next)
    }
}
