//! The image-to-video conditioning of `wan/image2video.py`: `y = mask ++ latent`.

use candle_core::{DType, Device, Tensor};

use super::WanVae;
use crate::EngineError;

/// The 4-channel mask `(4, t, h, w)` for `num_frames` pixel frames: ones on latent frame 0 (the
/// given image, pixel frame 0 repeated 4 times), zeros elsewhere.
pub fn i2v_mask(
    num_frames: usize,
    lat_h: usize,
    lat_w: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    check_frames(num_frames)?;
    let t = (num_frames - 1) / 4 + 1;
    let first = Tensor::ones((4, 1, lat_h, lat_w), DType::F32, device)?;
    let rest = Tensor::zeros((4, t - 1, lat_h, lat_w), DType::F32, device)?;
    Ok(Tensor::cat(&[first, rest], 1)?)
}

/// `y` `(4 + z, t, h/8, w/8)`: the mask, then the latent mean of the clip whose frame 0 is
/// `image` `(3, h, w)` (already fitted, in [-1, 1]) and whose other `num_frames - 1` frames are
/// zeros. The zero frames are made one chunk at a time.
pub fn i2v_condition(
    vae: &WanVae,
    image: &Tensor,
    num_frames: usize,
) -> Result<Tensor, EngineError> {
    check_frames(num_frames)?;
    let (c, h, w) = image.dims3()?;
    let first = image.unsqueeze(0)?;
    let latent = vae.encode_with(num_frames, |start, len| {
        if start == 0 {
            Ok(first.clone())
        } else {
            Tensor::zeros((len, c, h, w), image.dtype(), image.device())
        }
    })?;
    let (_, _, lat_h, lat_w) = latent.dims4()?;
    let mask = i2v_mask(num_frames, lat_h, lat_w, image.device())?.to_dtype(latent.dtype())?;
    Ok(Tensor::cat(&[mask, latent], 0)?)
}

fn check_frames(num_frames: usize) -> Result<(), EngineError> {
    if num_frames % 4 == 1 {
        Ok(())
    } else {
        Err(EngineError::BadVideoShape {
            problem: format!(
                "{num_frames} frames cannot be encoded: the Wan VAE needs 4k + 1 frames \
                 (for example 17, 49 or 81)"
            ),
        })
    }
}
