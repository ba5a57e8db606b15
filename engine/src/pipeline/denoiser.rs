//! The two Wan experts as the sampling loop's [`Denoiser`], loaded through the model cache so
//! that, when the memory plan says so, only the expert in use is loaded.

use candle_core::{DType, Device, Tensor};

use super::models::ModelCache;
use crate::EngineError;
use crate::recipe::Recipe;
use crate::sampling::{Branch, Denoiser, Expert};

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
    /// `[1, 4 + z, t, h, w]`: mask and image latent.
    pub y: Tensor,
    /// `[1, text_len, d]`.
    pub context: Tensor,
    /// `[1, text_len, d]`; `None` when no expert runs guidance.
    pub negative_context: Option<Tensor>,
}

impl Denoiser for WanDenoiser<'_> {
    fn prepare_expert(&mut self, expert: Expert) -> Result<(), EngineError> {
        if !self.keep_both {
            let other = match expert {
                Expert::HighNoise => Expert::LowNoise,
                Expert::LowNoise => Expert::HighNoise,
            };
            self.models.free_expert(other);
        }
        self.models.expert(
            self.recipe,
            expert,
            (self.dtype, self.device),
            self.resident_blocks,
        )?;
        Ok(())
    }

    fn predict_flow(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError> {
        let model = self.models.expert(
            self.recipe,
            expert,
            (self.dtype, self.device),
            self.resident_blocks,
        )?;
        let context = match branch {
            Branch::Cond => &self.context,
            Branch::Uncond => {
                self.negative_context
                    .as_ref()
                    .ok_or_else(|| EngineError::BadModelInput {
                        problem: "guidance asked for the negative prompt, which was not encoded"
                            .to_owned(),
                    })?
            }
        };
        // The official pipeline passes the scheduler's integer timestep (int64); the model's
        // sinusoid is built from it in float64, so an integral f64 carries it exactly.
        let t = Tensor::new(&[f64::from(timestep)], latents.device())?.to_dtype(DType::F64)?;
        model.forward(latents, Some(&self.y), &t, context)
    }
}
