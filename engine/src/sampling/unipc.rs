//! UniPC (predictor UniP + corrector UniC, B(h) variants) for flow matching, predicting x0, as
//! the official `FlowUniPCMultistepScheduler` and diffusers' `UniPCMultistepScheduler`
//! (`flow_prediction`) compute it; the two differ only in their schedules.
//!
//! Paper: Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
//! Diffusion Models" (arXiv 2302.04867). In flow matching alpha = 1 - sigma, and the model's
//! flow `v` gives x0 = x - sigma × v.
//!
//! The scalar coefficients are computed in f32 like the references' 0-dim f32 tensors, so the
//! results agree to rounding of `ln`/`expm1` (about 1e-7 relative).

use candle_core::Tensor;
use serde::Deserialize;

use super::{FlowScheduler, Schedule, ScheduleKind, check_step};
use crate::EngineError;

/// The B(h) function of UniPC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    /// B(h) = h; recommended by the paper for unconditional sampling with few steps.
    Bh1,
    /// B(h) = e^h - 1; the default of both references.
    #[default]
    Bh2,
}

/// UniPC settings; the defaults are those of both references' Wan2.2 configurations.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct UniPcConfig {
    /// Multistep order (2 in Wan2.2).
    pub solver_order: usize,
    pub solver_type: SolverType,
    /// Lower the order on the final steps (keeps the last step, to sigma 0, first order).
    pub lower_order_final: bool,
    /// Step indices after which the corrector is skipped (`disable_corrector`).
    pub disable_corrector: Vec<usize>,
}

impl Default for UniPcConfig {
    fn default() -> Self {
        Self::wan22()
    }
}

impl UniPcConfig {
    /// Wan2.2's settings in both references: order 2, bh2, lower-order final steps.
    #[must_use]
    pub fn wan22() -> Self {
        Self {
            solver_order: 2,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
        }
    }
}

/// Multistep UniPC sampler state.
#[derive(Clone, Debug)]
pub struct FlowUniPc {
    kind: ScheduleKind,
    cfg: UniPcConfig,
    schedule: Schedule,
    step_index: usize,
    /// Converted model outputs (x0 predictions), oldest first; `None` until filled.
    model_outputs: Vec<Option<Tensor>>,
    /// The sample the last predictor started from (the corrector's `x`).
    last_sample: Option<Tensor>,
    /// The order the last predictor used (the corrector repeats it).
    this_order: usize,
    lower_order_nums: usize,
}

impl FlowUniPc {
    /// A UniPC sampler on `kind`'s schedule for `steps` steps at `shift`.
    ///
    /// # Errors
    /// [`EngineError::Sampler`] for invalid `steps`, `shift` or order.
    pub fn new(
        kind: ScheduleKind,
        cfg: UniPcConfig,
        steps: usize,
        shift: f64,
    ) -> Result<Self, EngineError> {
        Self::with_schedule(kind, cfg, Schedule::new(kind, steps, shift)?)
    }

    /// A UniPC sampler on a ready schedule (`kind` is used by later `set_timesteps` calls).
    ///
    /// # Errors
    /// [`EngineError::Sampler`] when the order is 0.
    pub fn with_schedule(
        kind: ScheduleKind,
        cfg: UniPcConfig,
        schedule: Schedule,
    ) -> Result<Self, EngineError> {
        if cfg.solver_order == 0 {
            return Err(EngineError::Sampler {
                problem: "UniPC solver_order is 0: use 1, 2 (Wan2.2's) or 3".to_owned(),
            });
        }
        let model_outputs = vec![None; cfg.solver_order];
        Ok(Self {
            kind,
            cfg,
            schedule,
            step_index: 0,
            model_outputs,
            last_sample: None,
            this_order: 0,
            lower_order_nums: 0,
        })
    }

    fn sigma(&self, index: usize) -> f32 {
        self.schedule.sigmas[index]
    }

    /// log-SNR of a flow sigma: ln(alpha) - ln(sigma) with alpha = 1 - sigma (+inf at sigma 0).
    fn lambda(&self, index: usize) -> f32 {
        let sigma = self.sigma(index);
        (1.0 - sigma).ln() - sigma.ln()
    }

    /// The i-th most recent stored model output (0 = newest).
    fn output(&self, back: usize) -> Result<&Tensor, EngineError> {
        let len = self.model_outputs.len();
        self.model_outputs
            .get(len - 1 - back)
            .and_then(Option::as_ref)
            .ok_or_else(|| EngineError::Sampler {
                problem: format!(
                    "UniPC needs {} earlier model outputs it does not have",
                    back + 1
                ),
            })
    }

    /// UniP: predicts the sample at sigma[k + 1] from the stored outputs.
    fn predict(&self, sample: &Tensor, order: usize) -> Result<Tensor, EngineError> {
        let k = self.step_index;
        let (sigma_t, sigma_s0) = (self.sigma(k + 1), self.sigma(k));
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = self.lambda(k);
        let h = self.lambda(k + 1) - lambda_s0;
        let m0 = self.output(0)?;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let rk = (self.lambda(k - i) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(div_scalar(&(self.output(i)? - m0)?, rk)?);
        }
        rks.push(1.0);
        let coeffs = Coefficients::new(h, &rks, order, self.cfg.solver_type);
        let base = (sample.affine(f64::from(sigma_t / sigma_s0), 0.0)?
            - m0.affine(f64::from(alpha_t * coeffs.h_phi_1), 0.0)?)?;
        if d1s.is_empty() {
            return Ok(base);
        }
        let rhos = if order == 2 {
            // Both references hard-code 0.5 for order 2 instead of solving.
            vec![0.5]
        } else {
            let n = order - 1;
            let r: Vec<Vec<f32>> = coeffs.r[..n].iter().map(|row| row[..n].to_vec()).collect();
            solve(r, coeffs.b[..n].to_vec())?
        };
        let residual = weighted_sum(&rhos, &d1s)?;
        Ok((base - residual.affine(f64::from(alpha_t * coeffs.b_h), 0.0)?)?)
    }

    /// UniC: corrects `this_sample` (at sigma[k]) with the model output `model_t` there.
    fn correct(
        &self,
        model_t: &Tensor,
        last_sample: &Tensor,
        order: usize,
    ) -> Result<Tensor, EngineError> {
        let k = self.step_index;
        let (sigma_t, sigma_s0) = (self.sigma(k), self.sigma(k - 1));
        let alpha_t = 1.0 - sigma_t;
        let lambda_s0 = self.lambda(k - 1);
        let h = self.lambda(k) - lambda_s0;
        let m0 = self.output(0)?;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for i in 1..order {
            let rk = (self.lambda(k - (i + 1)) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(div_scalar(&(self.output(i)? - m0)?, rk)?);
        }
        rks.push(1.0);
        let coeffs = Coefficients::new(h, &rks, order, self.cfg.solver_type);
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            solve(coeffs.r.clone(), coeffs.b.clone())?
        };
        let base = (last_sample.affine(f64::from(sigma_t / sigma_s0), 0.0)?
            - m0.affine(f64::from(alpha_t * coeffs.h_phi_1), 0.0)?)?;
        let (last_rho, rest) = rhos.split_last().ok_or_else(|| EngineError::Sampler {
            problem: "UniPC corrector has no coefficients".to_owned(),
        })?;
        let d1_t = (model_t - m0)?;
        let mut correction = d1_t.affine(f64::from(*last_rho), 0.0)?;
        if !d1s.is_empty() {
            correction = (weighted_sum(rest, &d1s)? + correction)?;
        }
        Ok((base - correction.affine(f64::from(alpha_t * coeffs.b_h), 0.0)?)?)
    }
}

impl FlowScheduler for FlowUniPc {
    fn set_timesteps(&mut self, steps: usize, shift: f64) -> Result<(), EngineError> {
        self.set_schedule(Schedule::new(self.kind, steps, shift)?);
        Ok(())
    }

    fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
        self.step_index = 0;
        self.model_outputs = vec![None; self.cfg.solver_order];
        self.last_sample = None;
        self.this_order = 0;
        self.lower_order_nums = 0;
    }

    fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, flow: &Tensor, sample: &Tensor) -> Result<Tensor, EngineError> {
        let k = check_step(&self.schedule, self.step_index)?;
        // x0 prediction from the flow: x - sigma × v.
        let x0 = (sample - flow.affine(f64::from(self.sigma(k)), 0.0)?)?;
        let use_corrector = k > 0 && !self.cfg.disable_corrector.contains(&(k - 1));
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => self.correct(&x0, last, self.this_order)?,
            _ => sample.clone(),
        };
        self.model_outputs.remove(0);
        self.model_outputs.push(Some(x0));
        let mut order = self.cfg.solver_order;
        if self.cfg.lower_order_final {
            order = order.min(self.schedule.steps() - k);
        }
        // Warm-up: the order grows with the number of outputs stored so far.
        self.this_order = order.min(self.lower_order_nums + 1);
        let next = self.predict(&sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < self.cfg.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(next)
    }
}

/// The B(h) scalars shared by the predictor and the corrector.
struct Coefficients {
    h_phi_1: f32,
    b_h: f32,
    /// R[i][j] = rks[j]^i.
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

impl Coefficients {
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "small factorials and orders"
    )]
    fn new(h: f32, rks: &[f32], order: usize, solver_type: SolverType) -> Self {
        // predict_x0: the exponential integrator runs over -h.
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b_h = match solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut factorial: u64 = 1;
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect());
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            // The reference subtracts a Python float (f64) 1/i! from an f32 tensor: f32 result.
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        Self { h_phi_1, b_h, r, b }
    }
}

/// `t / rk`, dividing (not multiplying by the reciprocal) as the reference does.
fn div_scalar(t: &Tensor, rk: f32) -> Result<Tensor, EngineError> {
    let divisor = Tensor::new(rk, t.device())?.to_dtype(t.dtype())?;
    Ok(t.broadcast_div(&divisor)?)
}

/// Σ weights[i] × tensors[i].
fn weighted_sum(weights: &[f32], tensors: &[Tensor]) -> Result<Tensor, EngineError> {
    let mut terms = weights
        .iter()
        .zip(tensors)
        .map(|(w, t)| t.affine(f64::from(*w), 0.0));
    let first = terms.next().ok_or_else(|| EngineError::Sampler {
        problem: "UniPC weighted sum of nothing".to_owned(),
    })??;
    terms.try_fold(first, |acc, term| Ok((acc + term?)?))
}

/// Solves the small dense system `a x = b` by Gaussian elimination with partial pivoting, in f32
/// like the reference's `torch.linalg.solve` on f32 tensors.
fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Result<Vec<f32>, EngineError> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col] == 0.0 || !a[pivot][col].is_finite() {
            return Err(EngineError::Sampler {
                problem: "UniPC coefficient system is singular: use fewer steps or order 2"
                    .to_owned(),
            });
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (pivot_row, pivot_b) = (a[col].clone(), b[col]);
        for (row, rhs) in a[col + 1..].iter_mut().zip(&mut b[col + 1..]) {
            let factor = row[col] / pivot_row[col];
            for (value, pivot) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *value -= factor * pivot;
            }
            *rhs -= factor * pivot_b;
        }
    }
    let mut x = vec![0.0_f32; n];
    for row in (0..n).rev() {
        let tail: f32 = (row + 1..n).map(|j| a[row][j] * x[j]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn solve_matches_a_known_system() {
        let x = solve(vec![vec![1.0, 1.0], vec![-2.0, 1.0]], vec![3.0, 0.0]).unwrap();
        assert!(
            (x[0] - 1.0).abs() < 1e-6 && (x[1] - 2.0).abs() < 1e-6,
            "{x:?}"
        );
        assert!(solve(vec![vec![1.0, 1.0], vec![1.0, 1.0]], vec![1.0, 2.0]).is_err());
    }

    #[test]
    fn exact_flow_lands_on_its_target() {
        // A straight-line flow x_t = (1 - s) x0 + s n has constant velocity n - x0; every
        // step of a consistent solver must then end exactly on x0 at sigma 0.
        let device = Device::Cpu;
        let x0 = Tensor::new(&[0.5_f32, -1.0, 2.0], &device).unwrap();
        let noise = Tensor::new(&[1.0_f32, 0.25, -0.5], &device).unwrap();
        let flow = (&noise - &x0).unwrap();
        let mut sampler =
            FlowUniPc::new(ScheduleKind::Official, UniPcConfig::wan22(), 8, 5.0).unwrap();
        let s0 = f64::from(sampler.schedule().sigmas[0]);
        let mut x = (x0.affine(1.0 - s0, 0.0).unwrap() + noise.affine(s0, 0.0).unwrap()).unwrap();
        for _ in 0..8 {
            x = sampler.step(&flow, &x).unwrap();
        }
        let error: f32 = (x - &x0)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(error < 1e-5, "{error}");
        assert!(
            sampler.step(&flow, &x0).is_err(),
            "stepping past the end must fail"
        );
    }

    #[test]
    fn every_variant_ends_finite_on_its_x0_estimate() {
        // The references return NaN on bh1's final step (-inf × 0); ours returns x0 = x - σ v.
        let device = Device::Cpu;
        let flow = Tensor::new(&[0.3_f32, -0.7], &device).unwrap();
        for (order, solver_type) in [
            (1, SolverType::Bh1),
            (2, SolverType::Bh1),
            (3, SolverType::Bh2),
        ] {
            let cfg = UniPcConfig {
                solver_order: order,
                solver_type,
                ..UniPcConfig::wan22()
            };
            let mut sampler = FlowUniPc::new(ScheduleKind::Diffusers, cfg, 5, 3.0).unwrap();
            let mut x = Tensor::new(&[1.0_f32, 2.0], &device).unwrap();
            for _ in 0..4 {
                x = sampler.step(&flow, &x).unwrap();
            }
            let sigma = f64::from(sampler.schedule().sigmas[4]);
            let expected = (&x - flow.affine(sigma, 0.0).unwrap()).unwrap();
            let last = sampler.step(&flow, &x).unwrap();
            let error: f32 = (last - expected)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(error < 1e-6, "order {order} {solver_type:?}: {error}");
        }
    }
}
