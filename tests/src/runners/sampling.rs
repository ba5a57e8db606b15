//! Runners for the samplers: `flow_schedule`, `flow_step` and `denoise_loop`.
//!
//! Config keys:
//! - `flow_schedule`: `schedule` ("official" | "diffusers" | "simple" | "diffusers_euler"),
//!   `steps` (list),
//!   `shifts` (list), `boundary`. Outputs `sigmas` and `timesteps` concatenated shift-major then
//!   step-count order, and `high_noise_steps` `[shifts, steps]`.
//! - `flow_step`: `solver` ("euler" | "unipc"), `schedule`, `steps`, `shift`, optional `unipc`
//!   table (`solver_order`, `solver_type` "bh1" | "bh2", `lower_order_final`,
//!   `disable_corrector`; Wan2.2's settings when absent); inputs `sample` and `flows`
//!   `[n, ...]` (n <= steps: the first n steps are taken); output `samples` `[n, ...]` (the
//!   sample after each step).
//! - `denoise_loop`: `flow_step`'s keys plus `guidance` ("official" | "diffusers"), `boundary`,
//!   `cfg_high_noise`, `cfg_low_noise` and the analytic model's `gains` (high cond, high uncond,
//!   low cond, low uncond) and `tanh_coef`; inputs `noise` and `anchors` `[4, ...]`; outputs
//!   `latents`, `trajectory`, `timesteps`, `high_noise`, `model_calls`.

use anyhow::{Context, ensure};
use candle_core::{DType, Device, Tensor};
use stillmotion_engine::EngineError;
use stillmotion_engine::preset::SamplerKind;
use stillmotion_engine::sampling::{
    Branch, Denoiser, Expert, FlowScheduler, GuidanceRule, LoopConfig, Schedule, ScheduleKind,
    UniPcConfig, denoise, new_scheduler,
};

use super::{Outputs, inputs, take};
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct ScheduleConfig {
    schedule: ScheduleKind,
    steps: Vec<usize>,
    shifts: Vec<f64>,
    boundary: f64,
}

/// Timesteps as the references store them: int64 where they are integers, f32 otherwise.
fn timesteps_tensor(kind: ScheduleKind, values: &[f32], device: &Device) -> anyhow::Result<Tensor> {
    let t = Tensor::new(values, device)?;
    Ok(match kind {
        ScheduleKind::Simple | ScheduleKind::DiffusersEuler => t,
        ScheduleKind::Official | ScheduleKind::Diffusers => t.to_dtype(DType::I64)?,
    })
}

pub fn flow_schedule(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let cfg: ScheduleConfig = case.config()?;
    let mut sigmas = Vec::new();
    let mut timesteps = Vec::new();
    let mut high = Vec::new();
    for &shift in &cfg.shifts {
        for &steps in &cfg.steps {
            let schedule = Schedule::new(cfg.schedule, steps, shift)?;
            high.push(i64::try_from(schedule.high_noise_steps(cfg.boundary))?);
            sigmas.extend_from_slice(&schedule.sigmas);
            timesteps.extend_from_slice(&schedule.timesteps);
        }
    }
    let mut out = Outputs::new();
    out.insert("sigmas".into(), Tensor::new(sigmas.as_slice(), device)?);
    out.insert(
        "timesteps".into(),
        timesteps_tensor(cfg.schedule, &timesteps, device)?,
    );
    out.insert(
        "high_noise_steps".into(),
        Tensor::from_vec(high, (cfg.shifts.len(), cfg.steps.len()), device)?,
    );
    Ok(out)
}

#[derive(serde::Deserialize)]
struct StepConfig {
    solver: SamplerKind,
    schedule: ScheduleKind,
    steps: usize,
    shift: f64,
    /// Optional UniPC settings (`solver_order`, `solver_type`, `lower_order_final`,
    /// `disable_corrector`); Wan2.2's when absent.
    #[serde(default)]
    unipc: UniPcConfig,
}

fn scheduler(cfg: &StepConfig) -> anyhow::Result<Box<dyn FlowScheduler + Send>> {
    Ok(new_scheduler(
        cfg.solver,
        cfg.schedule,
        cfg.unipc.clone(),
        cfg.steps,
        cfg.shift,
    )?)
}

pub fn flow_step(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let cfg: StepConfig = case.config()?;
    let mut tensors = inputs(case, device)?;
    let mut sample = take(&mut tensors, "sample")?;
    let flows = take(&mut tensors, "flows")?;
    // The case may stop before the last step (see the bh1 case in sched.py).
    let taken = flows.dim(0)?;
    ensure!(
        taken <= cfg.steps,
        "flows holds more predictions than there are steps"
    );
    let mut sampler = scheduler(&cfg)?;
    let mut samples = Vec::with_capacity(taken);
    for i in 0..taken {
        sample = sampler.step(&flows.get(i)?, &sample)?;
        samples.push(sample.clone());
    }
    let mut out = Outputs::new();
    out.insert("samples".into(), Tensor::stack(&samples, 0)?);
    Ok(out)
}

#[derive(serde::Deserialize)]
struct LoopCaseConfig {
    #[serde(flatten)]
    step: StepConfig,
    guidance: GuidanceRule,
    boundary: f64,
    cfg_high_noise: f64,
    cfg_low_noise: f64,
    gains: [f64; 4],
    tanh_coef: f64,
}

/// The analytic stand-in for the DiT that `tests/reference/cases/sched.py` also implements:
/// `gain × (x - anchor) + tanh_coef × (t / 1000) × tanh(x)`, per expert and branch.
struct AnalyticModel {
    gains: [f64; 4],
    anchors: Vec<Tensor>,
    tanh_coef: f32,
}

impl Denoiser for AnalyticModel {
    fn predict_flow(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError> {
        let k = match expert {
            Expert::HighNoise => 0,
            Expert::LowNoise => 2,
        } + match branch {
            Branch::Cond => 0,
            Branch::Uncond => 1,
        };
        let pull = (latents - &self.anchors[k])?.affine(self.gains[k], 0.0)?;
        let swirl = latents
            .tanh()?
            .affine(f64::from(self.tanh_coef * (timestep / 1000.0)), 0.0)?;
        Ok((pull + swirl)?)
    }
}

pub fn denoise_loop(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let cfg: LoopCaseConfig = case.config()?;
    let mut tensors = inputs(case, device)?;
    let noise = take(&mut tensors, "noise")?;
    let anchors = take(&mut tensors, "anchors")?;
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the reference multiplies in f32"
    )]
    let mut model = AnalyticModel {
        gains: cfg.gains,
        anchors: (0..4).map(|k| anchors.get(k)).collect::<Result<_, _>>()?,
        tanh_coef: cfg.tanh_coef as f32,
    };
    let loop_cfg = LoopConfig {
        boundary: cfg.boundary,
        cfg_high_noise: cfg.cfg_high_noise,
        cfg_low_noise: cfg.cfg_low_noise,
        guidance: cfg.guidance,
    };
    let mut sampler = scheduler(&cfg.step)?;
    let mut trajectory = Vec::new();
    let mut timesteps = Vec::new();
    let mut high = Vec::new();
    let mut calls = Vec::new();
    let latents = denoise(&mut model, sampler.as_mut(), noise, &loop_cfg, |p| {
        trajectory.push(p.latents.clone());
        timesteps.push(p.timestep);
        high.push(i64::from(p.expert == Expert::HighNoise));
        calls.push(i64::try_from(p.model_calls).unwrap_or(i64::MAX));
        Ok(())
    })
    .context("denoise loop")?;
    let mut out = Outputs::new();
    out.insert("latents".into(), latents);
    out.insert("trajectory".into(), Tensor::stack(&trajectory, 0)?);
    out.insert(
        "timesteps".into(),
        timesteps_tensor(cfg.step.schedule, &timesteps, device)?,
    );
    out.insert("high_noise".into(), Tensor::new(high.as_slice(), device)?);
    out.insert("model_calls".into(), Tensor::new(calls.as_slice(), device)?);
    Ok(out)
}
