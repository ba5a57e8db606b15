//! Flow-matching sigma schedules with shift, as each reference computes them.
//!
//! Every schedule is `steps` decreasing sigmas in (0, 1] followed by a final 0, and one timestep
//! per step. The arithmetic (f64 or f32, operation order, truncation) follows each reference so
//! that timesteps come out bit-identical: the expert switch compares them with a boundary.

use serde::Deserialize;

use crate::EngineError;

/// The number of training timesteps of every Wan2.2 model (`num_train_timesteps`).
pub const NUM_TRAIN_TIMESTEPS: f64 = 1000.0;

/// Which reference's schedule to reproduce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The official Wan2.2 code (`FlowUniPCMultistepScheduler.set_timesteps` as
    /// `wan/image2video.py` calls it): `linspace(f32(0.999), 0, steps + 1)`, shifted in f64,
    /// timesteps `trunc(sigma × 1000)`. 4 steps at shift 5: [999, 937, 833, 624].
    #[default]
    Official,
    /// diffusers' `UniPCMultistepScheduler` with `use_flow_sigmas` and `flow_shift`, as the
    /// Wan2.2 diffusers repositories configure it: `linspace(1, 1/1000, steps + 1)`, shifted,
    /// a first sigma of exactly 1 lowered by 1e-6, timesteps `trunc(sigma × 1000)`.
    /// 4 steps at shift 5: [999, 937, 833, 625].
    Diffusers,
    /// ComfyUI's "simple" scheduler over `ModelSamplingDiscreteFlow` (the shift of
    /// `ModelSamplingSD3`), in f32: every (1000/steps)-th entry of the shifted table of
    /// t/1000, t = 1000..1; timesteps are `sigma × 1000` in f32, not truncated. 4 steps at
    /// shift 5 give the LightX2V sigmas 1.0, 0.9375, 0.8333, 0.625.
    Simple,
    /// diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` with its own
    /// `set_timesteps(steps)`: `steps` points from 1 down to the shifted 1/1000, shifted again;
    /// timesteps `sigma × 1000` in f32, not truncated. 4 steps at shift 5: 1.0, 0.9097, 0.7173,
    /// 0.0244.
    DiffusersEuler,
}

/// Sigmas (`steps + 1`, ending in 0) and timesteps (`steps`) of one sampling run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub sigmas: Vec<f32>,
    /// Integral for the official and diffusers schedules (stored exactly in f32).
    pub timesteps: Vec<f32>,
}

impl Schedule {
    /// The schedule of `kind` for `steps` steps at `shift`.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] when `steps` is 0 or `shift` is not a positive finite number.
    pub fn new(kind: ScheduleKind, steps: usize, shift: f64) -> Result<Self, EngineError> {
        if steps == 0 {
            return Err(EngineError::Sampler {
                problem: "the number of sampling steps is 0: use at least 1".to_owned(),
            });
        }
        if !(shift.is_finite() && shift > 0.0) {
            return Err(EngineError::Sampler {
                problem: format!(
                    "the schedule shift {shift} is invalid: use a positive number (Wan2.2 uses 5.0)"
                ),
            });
        }
        Ok(match kind {
            ScheduleKind::Official => official(steps, shift),
            ScheduleKind::Diffusers => diffusers(steps, shift),
            ScheduleKind::Simple => simple(steps, shift),
            ScheduleKind::DiffusersEuler => diffusers_euler(steps, shift),
        })
    }

    /// A schedule from explicit sigmas (the final 0 is appended); timesteps are `sigma × 1000`.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] when `sigmas` is empty or not strictly decreasing in (0, 1].
    pub fn from_sigmas(sigmas: &[f32]) -> Result<Self, EngineError> {
        let decreasing = sigmas.windows(2).all(|w| w[0] > w[1]);
        let in_range = sigmas.iter().all(|s| *s > 0.0 && *s <= 1.0);
        if sigmas.is_empty() || !decreasing || !in_range {
            return Err(EngineError::Sampler {
                problem: format!(
                    "custom sigmas {sigmas:?} are unusable: give at least one, strictly decreasing, in (0, 1]"
                ),
            });
        }
        #[allow(clippy::cast_possible_truncation, reason = "1000 is exact in f32")]
        let scale = NUM_TRAIN_TIMESTEPS as f32;
        let timesteps = sigmas.iter().map(|s| s * scale).collect();
        let mut all = sigmas.to_vec();
        all.push(0.0);
        Ok(Self {
            sigmas: all,
            timesteps,
        })
    }

    /// The number of steps.
    #[must_use]
    pub fn steps(&self) -> usize {
        self.timesteps.len()
    }

    /// How many leading steps go to the high-noise expert (`t >= boundary × 1000`).
    #[must_use]
    pub fn high_noise_steps(&self, boundary: f64) -> usize {
        self.timesteps
            .iter()
            .filter(|t| is_high_noise(**t, boundary))
            .count()
    }
}

/// Both pipelines pick the high-noise expert while `t >= boundary × num_train_timesteps`.
#[must_use]
pub fn is_high_noise(timestep: f32, boundary: f64) -> bool {
    f64::from(timestep) >= boundary * NUM_TRAIN_TIMESTEPS
}

/// `numpy.linspace(start, stop, num)[:num - 1]`, element for element as numpy computes it.
fn linspace_without_end(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let step = (stop - start) / div;
    (0..num - 1).map(|i| i as f64 * step + start).collect()
}

fn shifted(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

#[allow(
    clippy::cast_possible_truncation,
    reason = "the references cast f64 sigmas to f32 and truncate timesteps to integers"
)]
fn from_f64(sigmas: &[f64]) -> Schedule {
    // torch's float-to-int64 conversion truncates toward zero; sigma × 1000 < 1000 fits f32.
    let timesteps = sigmas
        .iter()
        .map(|s| (s * NUM_TRAIN_TIMESTEPS).trunc() as f32)
        .collect();
    let mut all: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
    all.push(0.0);
    Schedule {
        sigmas: all,
        timesteps,
    }
}

fn official(steps: usize, shift: f64) -> Schedule {
    // The scheduler's training table is 1 - linspace(1, 1/1000, 1000) reversed, stored in f32:
    // its first entry, f32(0.999), is `sigma_max`; its last, 0, is `sigma_min`.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the reference stores the table in f32"
    )]
    let sigma_max = f64::from((1.0 - 1.0 / NUM_TRAIN_TIMESTEPS) as f32);
    let sigmas: Vec<f64> = linspace_without_end(sigma_max, 0.0, steps + 1)
        .into_iter()
        .map(|s| shifted(shift, s))
        .collect();
    from_f64(&sigmas)
}

fn diffusers(steps: usize, shift: f64) -> Schedule {
    const EPS: f64 = 1e-6;
    let mut sigmas: Vec<f64> = linspace_without_end(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1)
        .into_iter()
        .map(|s| shifted(shift, s))
        .collect();
    // diffusers keeps log(1 - sigma) finite by lowering a first sigma of 1.
    if (sigmas[0] - 1.0).abs() < EPS {
        sigmas[0] -= EPS;
    }
    from_f64(&sigmas)
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "ComfyUI computes its table in f32 and picks entries with int()"
)]
fn simple(steps: usize, shift: f64) -> Schedule {
    const TABLE_LEN: usize = 1000;
    let multiplier = NUM_TRAIN_TIMESTEPS as f32;
    let scale = shift as f32;
    let scale_minus_one = (shift - 1.0) as f32;
    let table = |index: usize| -> f32 {
        let t = (index + 1) as f32 / 1000.0 * multiplier / multiplier;
        if shift == 1.0 {
            t
        } else {
            scale * t / (1.0 + scale_minus_one * t)
        }
    };
    let stride = TABLE_LEN as f64 / steps as f64;
    let mut sigmas: Vec<f32> = (0..steps)
        .map(|x| table(TABLE_LEN - 1 - (x as f64 * stride) as usize))
        .collect();
    let timesteps = sigmas.iter().map(|s| s * multiplier).collect();
    sigmas.push(0.0);
    Schedule { sigmas, timesteps }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "the reference's training table is f32; its set_timesteps works in f64"
)]
fn diffusers_euler(steps: usize, shift: f64) -> Schedule {
    let multiplier = NUM_TRAIN_TIMESTEPS as f32;
    let (scale, scale_minus_one) = (shift as f32, (shift - 1.0) as f32);
    let train_sigma = |t: f32| {
        let sigma = t / multiplier;
        scale * sigma / (1.0 + scale_minus_one * sigma)
    };
    // The shifted training table's ends (t = 1000 and t = 1), read back as f64.
    let sigma_max = f64::from(train_sigma(multiplier));
    let sigma_min = f64::from(train_sigma(1.0));
    let (start, stop) = (
        sigma_max * NUM_TRAIN_TIMESTEPS,
        sigma_min * NUM_TRAIN_TIMESTEPS,
    );
    let points: Vec<f64> = if steps == 1 {
        vec![start]
    } else {
        let step = (stop - start) / (steps - 1) as f64;
        (0..steps)
            .map(|i| {
                if i == steps - 1 {
                    stop
                } else {
                    i as f64 * step + start
                }
            })
            .collect()
    };
    let mut sigmas: Vec<f32> = points
        .iter()
        .map(|t| shifted(shift, t / NUM_TRAIN_TIMESTEPS) as f32)
        .collect();
    let timesteps = sigmas.iter().map(|s| s * multiplier).collect();
    sigmas.push(0.0);
    Schedule { sigmas, timesteps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_steps_at_shift_five_match_each_reference() {
        let official = Schedule::new(ScheduleKind::Official, 4, 5.0).unwrap();
        assert_eq!(official.timesteps, [999.0, 937.0, 833.0, 624.0]);
        let diffusers = Schedule::new(ScheduleKind::Diffusers, 4, 5.0).unwrap();
        assert_eq!(diffusers.timesteps, [999.0, 937.0, 833.0, 625.0]);
        let simple = Schedule::new(ScheduleKind::Simple, 4, 5.0).unwrap();
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the LightX2V sigmas as f32"
        )]
        let lightx2v = [1.0, 0.9375, (2.5_f64 / 3.0) as f32, 0.625, 0.0];
        assert_eq!(simple.sigmas, lightx2v);
        assert_eq!(simple.high_noise_steps(0.9), 2);
        for schedule in [official, diffusers, simple] {
            assert_eq!(schedule.sigmas.len(), 5);
            assert_eq!(schedule.sigmas[4], 0.0);
        }
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(Schedule::new(ScheduleKind::Official, 0, 5.0).is_err());
        assert!(Schedule::new(ScheduleKind::Official, 4, 0.0).is_err());
        assert!(Schedule::new(ScheduleKind::Official, 4, f64::NAN).is_err());
        assert!(Schedule::from_sigmas(&[0.5, 0.7]).is_err());
        let custom = Schedule::from_sigmas(&[1.0, 0.5]).unwrap();
        assert_eq!(custom.sigmas, [1.0, 0.5, 0.0]);
        assert_eq!(custom.timesteps, [1000.0, 500.0]);
    }
}
