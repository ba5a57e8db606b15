//! Decoded pixels to 8-bit RGB frames for the video writer.

use candle_core::{DType, Tensor};
use image::RgbImage;

use super::WanVae;
use super::blocks::from_frames;
use crate::EngineError;

impl WanVae {
    /// Decodes normalised latents `(z, t, h, w)` straight to RGB8 frames, handing `sink` each
    /// chunk (1 frame, then 4 at a time) as it is ready: memory stays that of one chunk, however
    /// long the clip.
    pub fn decode_rgb8_each(
        &self,
        latents: &Tensor,
        mut sink: impl FnMut(Vec<RgbImage>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut failure = None;
        self.decode_each(latents, |chunk| {
            if failure.is_some() {
                return Ok(());
            }
            let frames = from_frames(&chunk).map_err(EngineError::from);
            if let Err(error) = frames.and_then(|f| to_rgb8(&f)).and_then(&mut sink) {
                failure = Some(error);
            }
            Ok(())
        })?;
        failure.map_or(Ok(()), Err)
    }
}

/// `video` `(3, f, h, w)` in [-1, 1] → `f` RGB8 frames, as the official `save_video` makes
/// them: clamp to [-1, 1], map to [0, 1], times 255, truncated.
pub fn to_rgb8(video: &Tensor) -> Result<Vec<RgbImage>, EngineError> {
    let (c, f, h, w) = video.dims4()?;
    if c != 3 {
        return Err(EngineError::BadVideoShape {
            problem: format!("a decoded video needs 3 channels, this one has {c}"),
        });
    }
    let pixels = video
        .to_dtype(DType::F32)?
        .permute((1, 2, 3, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let frame_len = h * w * 3;
    pixels
        .chunks_exact(frame_len)
        .take(f)
        .map(|frame| {
            // Halving is exact, so this rounds as the reference's (x + 1) / 2 in f32.
            let bytes = frame
                .iter()
                .map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 0.5 * 255.0) as u8)
                .collect();
            RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| {
                EngineError::BadVideoShape {
                    problem: format!("a {w}×{h} frame does not fit an RGB image"),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::to_rgb8;

    #[test]
    fn maps_and_clamps_like_the_reference() {
        // One frame, 1×2 pixels: (-2, -1, 0) and (0.5, 1, 3).
        let v = Tensor::new(&[-2f32, 0.5, -1.0, 1.0, 0.0, 3.0], &Device::Cpu)
            .unwrap()
            .reshape((3, 1, 1, 2))
            .unwrap();
        let frames = to_rgb8(&v).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].get_pixel(0, 0).0, [0, 0, 127]);
        assert_eq!(frames[0].get_pixel(1, 0).0, [191, 255, 255]);
    }
}
