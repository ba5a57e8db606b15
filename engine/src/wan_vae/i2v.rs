//! The image-to-video conditioning of `wan/image2video.py`: `y = mask ++ latent`.

use candle_core::{DType, Device, Tensor};

use super::{Tiling, WanVae};
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
    i2v_condition_tiled(vae, image, num_frames, None)
}

/// [`i2v_condition`], encoding the clip in square tiles of at most `tile` latent pixels a side
/// when given (the memory plan's `vae_encode_tile`: [`Tiling::for_encode`] and
/// [`WanVae::encode_tiled_with`], diffusers' tiled encode).
pub fn i2v_condition_tiled(
    vae: &WanVae,
    image: &Tensor,
    num_frames: usize,
    tile: Option<usize>,
) -> Result<Tensor, EngineError> {
    check_frames(num_frames)?;
    let (c, h, w) = image.dims3()?;
    let s = vae.config().spatial_stride();
    let tiling = tile.map(|side| Tiling::for_encode(vae.config(), side, h / s, w / s));
    let first = image.unsqueeze(0)?;
    let frames = |start: usize, len: usize| {
        if start == 0 {
            Ok(first.clone())
        } else {
            Tensor::zeros((len, c, h, w), image.dtype(), image.device())
        }
    };
    let latent = match tiling {
        Some(tiling) => vae.encode_tiled_with(num_frames, (h, w), tiling, frames)?,
        None => vae.encode_with(num_frames, frames)?,
    };
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
