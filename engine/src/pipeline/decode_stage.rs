//! Latents to frames: the VAE decode, straight into the video writer (or kept for RIFE), whole
//! frames or in the plan's tiles.
//!
//! A GPU out-of-memory error while decoding restarts the decode (with a fresh writer: the
//! failed attempt's temporary file is removed) on a deeper plan: first without the DiT experts
//! and the text encoder on the device, then in smaller tiles, down to the smallest tile whose
//! seams stay invisible ([`MIN_TILE`]). Only then does the job fail.

use candle_core::Tensor;
use image::RgbImage;

use super::runner::{PipelineRunner, count};
use crate::EngineError;
use crate::recipe::Recipe;
use crate::runtime::{JobContext, Stage};
use crate::video::VideoWriter;
use crate::wan_vae::{MIN_TILE, Tiling, to_rgb8};

/// The next smaller decode tile after running out of memory with `tile` (`None`: whole
/// frames) on latents of `lat_h`×`lat_w`, or `None` when the smallest tile failed.
fn smaller_tile(tile: Option<usize>, lat_h: usize, lat_w: usize) -> Option<usize> {
    let side = lat_h.max(lat_w);
    let next = match tile {
        None => side / 2,
        Some(t) if t <= MIN_TILE => return None,
        Some(t) => t * 2 / 3,
    };
    Some(next.max(MIN_TILE)).filter(|&t| t < side)
}

/// Where decoded frames go.
pub(super) struct FrameSink<'a> {
    /// Makes the job's writer (again, after a failed attempt).
    pub new_writer: &'a dyn Fn() -> Result<VideoWriter, EngineError>,
    /// Keep the frames for RIFE instead of writing them.
    pub keep: bool,
}

impl PipelineRunner {
    /// Decodes `latents` `(z, t, h, w)` in `tile`s (`None`: whole frames), retrying deeper
    /// after running out of GPU memory. Returns the writer, holding the frames unless
    /// `sink.keep`, and the kept frames.
    pub(super) fn decode_clip(
        &mut self,
        recipe: &Recipe,
        ctx: &JobContext<'_>,
        latents: &Tensor,
        mut tile: Option<usize>,
        sink: &FrameSink<'_>,
    ) -> Result<(VideoWriter, Vec<RgbImage>), EngineError> {
        let (_, _, lat_h, lat_w) = latents.dims4()?;
        let mut others_freed = false;
        loop {
            let mut writer = (sink.new_writer)()?;
            let mut kept = Vec::new();
            let attempt = self.decode_once(
                recipe,
                ctx,
                latents,
                tile,
                sink.keep,
                &mut writer,
                &mut kept,
            );
            let problem = match attempt.map_err(EngineError::classify_out_of_memory) {
                Ok(()) => return Ok((writer, kept)),
                Err(EngineError::OutOfMemory { problem }) => problem,
                Err(other) => return Err(other),
            };
            // Removes the attempt's temporary file.
            drop(writer);
            let how = if others_freed {
                match smaller_tile(tile, lat_h, lat_w) {
                    Some(next) => {
                        tile = Some(next);
                        format!("in tiles of {next} latent pixels")
                    }
                    None => return Err(EngineError::OutOfMemory { problem }),
                }
            } else {
                others_freed = true;
                self.models.free_all_but_vae();
                "the transformer and the text encoder unloaded".to_owned()
            };
            ctx.warn(format!(
                "the GPU ran out of memory while decoding: decoding again with {how} (raise the VRAM reserve (--reserve-vram) to plan this from the start)"
            ));
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one attempt of decode_clip, with the attempt's own writer and frames"
    )]
    fn decode_once(
        &mut self,
        recipe: &Recipe,
        ctx: &JobContext<'_>,
        latents: &Tensor,
        tile: Option<usize>,
        keep: bool,
        writer: &mut VideoWriter,
        kept: &mut Vec<RgbImage>,
    ) -> Result<(), EngineError> {
        let (_, lat_t, lat_h, lat_w) = latents.dims4()?;
        let device = latents.device().clone();
        let vae = self.models.vae(recipe, &device)?;
        let cancel = ctx.cancel_token().flag();
        let mut chunks_done = 0;
        ctx.progress(Stage::Decoding, 0, count(lat_t));
        let mut take_frames = |frames: Vec<RgbImage>, chunks: u32| {
            ctx.check()?;
            if keep {
                kept.extend(frames);
            } else {
                for frame in &frames {
                    writer.push(frame, cancel)?;
                }
            }
            chunks_done += chunks;
            ctx.progress(Stage::Decoding, chunks_done, count(lat_t));
            Ok::<(), EngineError>(())
        };
        match tile {
            // Tiles decode over the whole clip each, so frames come out at the end.
            Some(tile) => {
                let tiling = Tiling::for_decode(vae.config(), tile, lat_h, lat_w);
                let video = vae.decode_tiled(latents, tiling)?;
                take_frames(to_rgb8(&video)?, count(lat_t))
            }
            None => vae.decode_rgb8_each(latents, |frames| take_frames(frames, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retry_decodes_in_smaller_tiles_down_to_the_smallest() {
        let (h, w) = (60, 104);
        let mut tile = None;
        let mut seen = Vec::new();
        while let Some(next) = smaller_tile(tile, h, w) {
            seen.push(next);
            tile = Some(next);
        }
        assert_eq!(seen, [52, 34, MIN_TILE]);
        // Latents no larger than the smallest tile have no smaller tiling to try.
        assert_eq!(smaller_tile(None, 40, 40), Some(MIN_TILE));
        assert_eq!(smaller_tile(None, 30, 30), None);
        assert_eq!(smaller_tile(Some(MIN_TILE), h, w), None);
    }
}
