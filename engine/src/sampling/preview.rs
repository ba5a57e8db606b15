//! Live previews of the denoising loop: after each step, the clean latent the step predicts is
//! projected to RGB by a fixed 16 → 3 linear map (no VAE), downscaled, and handed to whoever
//! listens, so a user can stop a bad seed at step one.
//!
//! The projection factors are the documented Wan2.1-VAE `latent_rgb_factors` (and bias) of
//! ComfyUI's `comfy/latent_formats.py` (class `Wan21`), which apply to the normalised latents the
//! DiT works on (ours are the same: `(z - mean) / std` per channel); the result maps −1..1 to
//! 0..255 as ComfyUI's `Latent2RGBPreviewer` does.
//!
//! How previews reach a listener: the denoising loop hands each step's latents, flow and sigma
//! to its callback ([`StepProgress`]); the pipeline passes [`LatentPreview::of_step`] to
//! [`JobContext::preview`](crate::runtime::JobContext::preview), which builds the preview only
//! when the job's caller asked for previews and sends it as an
//! [`Event::Preview`](crate::runtime::Event::Preview). Nothing is computed otherwise (the CLI,
//! the golden tests).

use candle_core::{DType, Device, Tensor};

use super::StepProgress;
use crate::EngineError;

/// Latent channel → (R, G, B) weights of the Wan2.1 VAE's 16 latent channels.
const LATENT_RGB_FACTORS: [[f32; 3]; 16] = [
    [-0.1299, -0.1692, 0.2932],
    [0.0671, 0.0406, 0.0442],
    [0.3568, 0.2548, 0.1747],
    [0.0372, 0.2344, 0.1420],
    [0.0313, 0.0189, -0.0328],
    [0.0296, -0.0956, -0.0665],
    [-0.3477, -0.4059, -0.2925],
    [0.0166, 0.1902, 0.1975],
    [-0.0412, 0.0267, -0.1364],
    [-0.1293, 0.0740, 0.1636],
    [0.0680, 0.3019, 0.1128],
    [0.0032, 0.0581, 0.0639],
    [-0.1251, 0.0927, 0.1699],
    [0.0060, -0.0633, 0.0005],
    [0.3477, 0.2275, 0.2950],
    [0.1984, 0.0913, 0.1861],
];
const LATENT_RGB_BIAS: [f32; 3] = [-0.1835, -0.0868, -0.3360];

/// The longest side of a preview frame, in pixels: the latent grid (image / 8) subsampled to fit.
pub const MAX_PREVIEW_SIDE: usize = 160;

/// How a preview's frames were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PreviewKind {
    /// The cheap linear projection of the latents: one frame per latent frame.
    #[default]
    Projection,
    /// The real VAE's decode of the clean-latent estimate (spatially pooled when large): one
    /// frame per video frame (`pipeline::better_preview`).
    VaeDecode,
}

/// One step's preview: every latent frame (each stands for 4 video frames, the first for 1) as
/// RGB8 at the latent grid's resolution or below, or, for a [`PreviewKind::VaeDecode`], every
/// video frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatentPreview {
    /// 0-based index of the step just taken.
    pub step: usize,
    pub total_steps: usize,
    pub width: usize,
    pub height: usize,
    /// Row-major RGB8 frames, `width × height × 3` bytes each.
    pub frames: Vec<Vec<u8>>,
    pub kind: PreviewKind,
}

/// Which preview a job sends and why, decided at its start and again once the first VAE
/// preview was timed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewChoice {
    /// The kind of the previews sent from now on between projections: `VaeDecode` when VAE
    /// previews go on, `Projection` when only the projection does.
    pub kind: PreviewKind,
    /// A VAE preview every this many steps (plus one at each expert switch); `None` with
    /// `Projection`, or before the first VAE preview was timed.
    pub every: Option<usize>,
    /// Why, in words for the user (sizes, seconds).
    pub reason: String,
}

impl LatentPreview {
    /// The preview of the step just taken: the projection of the clean latent it predicts
    /// (flow matching: `x0 = x − σ·v` at the step's sigma), downscaled to
    /// [`MAX_PREVIEW_SIDE`].
    ///
    /// # Errors
    /// [`EngineError::Sampler`] when the step has no sigma or the latents do not have 16
    /// channels; tensor errors.
    pub fn of_step(step: &StepProgress<'_>) -> Result<Self, EngineError> {
        let sigma = step.sigma.ok_or_else(|| EngineError::Sampler {
            problem: "the schedule has no sigma for this step".to_owned(),
        })?;
        let x0 = predicted_clean(step.previous, step.flow, sigma)?;
        let (width, height, frames) = project(&x0, MAX_PREVIEW_SIDE)?;
        Ok(Self {
            step: step.index,
            total_steps: step.total,
            width,
            height,
            frames,
            kind: PreviewKind::Projection,
        })
    }
}

fn predicted_clean(latents: &Tensor, flow: &Tensor, sigma: f32) -> Result<Tensor, EngineError> {
    Ok((latents.to_dtype(DType::F32)?
        - flow.to_dtype(DType::F32)?.affine(f64::from(sigma), 0.0)?)?)
}

/// Projects `(1, 16, T, H, W)` or `(16, T, H, W)` latents to RGB8 frames, subsampling the grid so
/// its longer side is at most `max_side`. Returns `(width, height, frames)`.
///
/// # Errors
/// [`EngineError::Sampler`] when the latents do not have 16 channels; tensor errors.
pub fn project(
    latents: &Tensor,
    max_side: usize,
) -> Result<(usize, usize, Vec<Vec<u8>>), EngineError> {
    let latents = if latents.rank() == 5 {
        latents.squeeze(0)?
    } else {
        latents.clone()
    };
    let (channels, frames, height, width) = latents.dims4()?;
    if channels != LATENT_RGB_FACTORS.len() {
        return Err(EngineError::Sampler {
            problem: format!(
                "a live preview needs 16 latent channels (Wan2.1 VAE), got {channels}"
            ),
        });
    }
    let stride = height.max(width).div_ceil(max_side.max(1)).max(1);
    let (out_h, out_w) = (height.div_ceil(stride), width.div_ceil(stride));
    let small = if stride > 1 {
        let row_index = index_tensor(height, stride, latents.device())?;
        let col_index = index_tensor(width, stride, latents.device())?;
        latents
            .index_select(&row_index, 2)?
            .index_select(&col_index, 3)?
    } else {
        latents
    };
    let pixels = frames * out_h * out_w;
    let flat = small
        .to_dtype(DType::F32)?
        .reshape((channels, pixels))?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let mut out = vec![vec![0_u8; out_h * out_w * 3]; frames];
    for (frame_index, frame) in out.iter_mut().enumerate() {
        for pixel in 0..out_h * out_w {
            let source = frame_index * out_h * out_w + pixel;
            for (colour, bias) in LATENT_RGB_BIAS.iter().enumerate() {
                let value: f32 = bias
                    + flat
                        .iter()
                        .zip(LATENT_RGB_FACTORS.iter())
                        .map(|(channel, factors)| channel[source] * factors[colour])
                        .sum::<f32>();
                frame[pixel * 3 + colour] = to_byte(value);
            }
        }
    }
    Ok((out_w, out_h, out))
}

/// −1..1 → 0..255 (clamped, truncated as ComfyUI's preview does).
fn to_byte(value: f32) -> u8 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to 0..=255 first"
    )]
    let byte = (f32::midpoint(value, 1.0).clamp(0.0, 1.0) * 255.0) as u8;
    byte
}

fn index_tensor(len: usize, stride: usize, device: &Device) -> Result<Tensor, EngineError> {
    let indices: Vec<u32> = (0..len)
        .step_by(stride)
        .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect();
    Ok(Tensor::new(indices, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_applies_the_factors_per_pixel_and_maps_minus_one_to_one_onto_bytes() {
        // Channel 2 at 1.0 everywhere in frame 0, channel 6 at 2.0 in frame 1.
        let mut data = vec![0.0_f32; 16 * 2 * 3 * 4];
        let plane = 3 * 4;
        for i in 0..plane {
            data[2 * 2 * plane + i] = 1.0;
            data[(6 * 2 + 1) * plane + i] = 2.0;
        }
        let latents = Tensor::from_vec(data, (1, 16, 2, 3, 4), &Device::Cpu).unwrap();
        let (width, height, frames) = project(&latents, 160).unwrap();
        assert_eq!((width, height, frames.len()), (4, 3, 2));
        let expect = |value: f32| to_byte(value);
        let first: Vec<u8> = (0..3)
            .map(|c| expect(LATENT_RGB_BIAS[c] + LATENT_RGB_FACTORS[2][c]))
            .collect();
        assert_eq!(&frames[0][..3], &first[..]);
        assert_eq!(first, [149, 148, 106], "computed by hand from the table");
        let second: Vec<u8> = (0..3)
            .map(|c| expect(LATENT_RGB_BIAS[c] + 2.0 * LATENT_RGB_FACTORS[6][c]))
            .collect();
        assert!(frames[1].chunks(3).all(|pixel| pixel == second));
        assert_eq!(to_byte(-3.0), 0);
        assert_eq!(to_byte(3.0), 255);
    }

    #[test]
    fn large_grids_are_subsampled_to_the_preview_size() {
        let latents = Tensor::zeros((16, 1, 90, 160), DType::F32, &Device::Cpu).unwrap();
        let (width, height, frames) = project(&latents, 64).unwrap();
        assert_eq!((width, height), (54, 30), "stride 3");
        assert_eq!(frames[0].len(), 54 * 30 * 3);
        let wrong = Tensor::zeros((48, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(
            project(&wrong, 64).is_err(),
            "Wan2.2 5B latents have 48 channels"
        );
    }

    #[test]
    fn each_step_previews_the_clean_latent_it_predicts() {
        use crate::sampling::{Denoiser, Expert, LoopConfig, ScheduleKind, denoise};

        /// Predicts the flow that leads to a clean latent of 1.0 in channel 14 from any sample.
        struct TowardsOne;
        impl Denoiser for TowardsOne {
            fn predict_flow(
                &mut self,
                latents: &Tensor,
                _timestep: f32,
                _expert: Expert,
                _branch: crate::sampling::Branch,
            ) -> Result<Tensor, EngineError> {
                let mut clean = vec![0.0_f32; 16 * 4];
                clean[14 * 4..15 * 4].fill(1.0);
                let clean = Tensor::from_vec(clean, (16, 1, 2, 2), &Device::Cpu)?;
                // x = (1 − σ) x0 + σ n and v = n − x0 give v = (x − x0) / σ; σ = 1 at step 0.
                Ok((latents - clean)?)
            }
        }
        let noise = Tensor::ones((16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let mut sampler = crate::sampling::FlowEuler::new(ScheduleKind::Simple, 2, 5.0).unwrap();
        let cfg = LoopConfig {
            cfg_high_noise: 1.0,
            cfg_low_noise: 1.0,
            ..LoopConfig::i2v_a14b()
        };
        let mut seen = Vec::new();
        denoise(&mut TowardsOne, &mut sampler, noise, &cfg, |step| {
            seen.push(LatentPreview::of_step(step)?);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2, "one preview per step");
        assert_eq!((seen[1].step, seen[1].total_steps), (1, 2));
        // Step 0 is at σ = 1: x0 = x − v is the clean latent exactly.
        let expected: Vec<u8> = (0..3)
            .map(|c| to_byte(LATENT_RGB_BIAS[c] + LATENT_RGB_FACTORS[14][c]))
            .collect();
        assert_eq!(&seen[0].frames[0][..3], &expected[..]);
        // The noise (all ones) projects elsewhere: the preview is x0, not the sample.
        let of_noise: Vec<u8> = (0..3)
            .map(|c| {
                to_byte(LATENT_RGB_BIAS[c] + LATENT_RGB_FACTORS.iter().map(|f| f[c]).sum::<f32>())
            })
            .collect();
        assert_ne!(expected, of_noise);
    }
}
