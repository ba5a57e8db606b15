//! The two Wan experts as the sampling loop's [`Denoiser`], loaded through the model cache so
//! that, when the memory plan says so, only the expert in use is on the device (the other one
//! parked in host memory, see `ModelCache::park_expert`).
//!
//! A GPU out-of-memory error while loading an expert or computing a step deepens the placement
//! and retries the step: both experts → one at a time → half the transformer blocks streamed
//! from host memory → … → every block streamed. Only when even that fails does the job fail.

use candle_core::{DType, Device, Tensor};

use super::models::ModelCache;
use crate::EngineError;
use crate::memory_plan::ExpertLoras;
use crate::recipe::{AttentionMode, MatmulMode, Recipe};
use crate::sampling::{Branch, Denoiser, Expert};
use crate::wan::WanModel;
use stillmotion_kernels::AttentionChoice;

/// Predicts the flow with the high- or low-noise expert, conditioned on the I2V `y` and on the
/// prompt's or the negative prompt's context.
pub struct WanDenoiser<'a> {
    pub models: &'a mut ModelCache,
    pub recipe: &'a Recipe,
    pub dtype: DType,
    pub device: &'a Device,
    /// Keep both experts loaded; otherwise one is freed before the other loads.
    pub keep_both: bool,
    /// Block swapping: the transformer blocks of an expert kept on the device.
    pub resident_blocks: Option<usize>,
    /// How each expert takes its LoRAs, as the job's plan resolved it.
    pub loras: &'a ExpertLoras,
    /// `[1, 4 + z, t, h, w]`: mask and image latent.
    pub y: Tensor,
    /// `[1, text_len, d]`.
    pub context: Tensor,
    /// `[1, text_len, d]`; `None` when no expert runs guidance.
    pub negative_context: Option<Tensor>,
    /// Tells the user how the placement was deepened after running out of memory.
    pub warn: &'a dyn Fn(String),
}

/// The placement after an out-of-memory error under `keep_both` / `resident_blocks` with
/// `num_layers` blocks an expert, or `None` when every block already streams.
fn deeper(
    keep_both: bool,
    resident_blocks: Option<usize>,
    num_layers: usize,
) -> Option<(bool, Option<usize>)> {
    if keep_both {
        return Some((false, resident_blocks));
    }
    match resident_blocks {
        None => Some((false, Some(num_layers / 2))),
        Some(0) => None,
        Some(n) => Some((false, Some(n / 2))),
    }
}

impl WanDenoiser<'_> {
    /// Deepens the placement after an out-of-memory error (freeing what must reload), or
    /// `false` when nothing deeper is left.
    fn deepen(&mut self, expert: Expert) -> bool {
        let num_layers = self.models.loaded_expert_layers(expert).unwrap_or(0);
        let Some((keep_both, resident_blocks)) =
            deeper(self.keep_both, self.resident_blocks, num_layers)
        else {
            return false;
        };
        let how = match resident_blocks {
            Some(n) if self.resident_blocks != resident_blocks => {
                format!("block swapping, {n} of {num_layers} transformer blocks kept on the GPU")
            }
            _ => "one expert at a time".to_owned(),
        };
        (self.warn)(format!(
            "the GPU ran out of memory: retrying the step with {how} (raise the VRAM reserve (--reserve-vram) to plan this from the start)"
        ));
        tracing::warn!(
            ?expert,
            keep_both,
            ?resident_blocks,
            "out of memory: deepening the placement"
        );
        self.keep_both = keep_both;
        if self.resident_blocks != resident_blocks {
            self.resident_blocks = resident_blocks;
            self.models.free_expert(expert);
        }
        for other in [Expert::HighNoise, Expert::LowNoise] {
            if other != expert {
                self.models.free_expert(other);
            }
        }
        true
    }

    /// `expert`, loading it unless it is loaded (the other expert parked in host memory first
    /// unless both stay).
    fn load_expert(&mut self, expert: Expert) -> Result<&WanModel, EngineError> {
        if !self.keep_both {
            let other = match expert {
                Expert::HighNoise => Expert::LowNoise,
                Expert::LowNoise => Expert::HighNoise,
            };
            self.models.park_expert(other);
        }
        self.models.expert(
            self.recipe,
            expert,
            (self.dtype, self.device),
            (self.resident_blocks, self.loras.get(expert).load),
        )
    }

    fn flow_once(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError> {
        // Handles on the inputs (tensors share their storage), so the model can be borrowed.
        let context = match branch {
            Branch::Cond => self.context.clone(),
            Branch::Uncond => {
                self.negative_context
                    .clone()
                    .ok_or_else(|| EngineError::BadModelInput {
                        problem: "guidance asked for the negative prompt, which was not encoded"
                            .to_owned(),
                    })?
            }
        };
        let y = self.y.clone();
        // The official pipeline passes the scheduler's integer timestep (int64); the model's
        // sinusoid is built from it in float64, so an integral f64 carries it exactly.
        let t = Tensor::new(&[f64::from(timestep)], latents.device())?.to_dtype(DType::F64)?;
        let (attention, matmul) = (self.recipe.attention, self.recipe.matmul);
        let model = self.load_expert(expert)?;
        if (attention, matmul) == (AttentionMode::Standard, MatmulMode::Standard) {
            return model.forward(latents, Some(&y), &t, &context);
        }
        // A clone shares every weight: only the kernels' choices differ.
        let mut kernels = model.kernels().clone();
        if attention == AttentionMode::Int8 {
            kernels = kernels.with_attention(AttentionChoice::Int8);
        }
        if matmul == MatmulMode::Fp8 {
            kernels = kernels.with_fp8_matmul(true);
        }
        model
            .clone()
            .with_kernels(kernels)
            .forward(latents, Some(&y), &t, &context)
    }

    /// `attempt` until it succeeds, deepening the placement after each out-of-memory error.
    fn retrying_out_of_memory<T>(
        &mut self,
        expert: Expert,
        mut attempt: impl FnMut(&mut Self) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        loop {
            match attempt(self).map_err(EngineError::classify_out_of_memory) {
                Err(EngineError::OutOfMemory { problem }) => {
                    if !self.deepen(expert) {
                        return Err(EngineError::OutOfMemory { problem });
                    }
                }
                other => return other,
            }
        }
    }
}

impl Denoiser for WanDenoiser<'_> {
    fn prepare_expert(&mut self, expert: Expert) -> Result<(), EngineError> {
        self.retrying_out_of_memory(expert, |d| d.load_expert(expert).map(|_| ()))
    }

    fn predict_flow(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError> {
        self.retrying_out_of_memory(expert, |d| d.flow_once(latents, timestep, expert, branch))
    }
}

#[cfg(test)]
mod tests {
    use super::deeper;

    #[test]
    fn out_of_memory_deepens_step_by_step_down_to_every_block_streamed() {
        let mut placement = (true, None);
        let mut seen = vec![placement];
        while let Some(next) = deeper(placement.0, placement.1, 40) {
            placement = next;
            seen.push(placement);
        }
        assert_eq!(
            seen,
            [
                (true, None),
                (false, None),
                (false, Some(20)),
                (false, Some(10)),
                (false, Some(5)),
                (false, Some(2)),
                (false, Some(1)),
                (false, Some(0)),
            ]
        );
        // A plan that already swaps blocks starts from there.
        assert_eq!(deeper(false, Some(7), 40), Some((false, Some(3))));
    }
}
