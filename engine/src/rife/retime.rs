//! Changing a clip's frame rate to a target fps with the network.

use image::RgbImage;

use super::interpolate::{InterpolationContext, InterpolationSettings, PairProgress};
use super::pair::{FrameLayout, PreparedFrame, Rife};
use super::scene_cut::frame_similarity;
use crate::EngineError;

/// How close (in source frames) an output time must be to a source frame to copy it.
const ON_FRAME: f64 = 1e-9;

/// Retimes `frames` from `source_fps` to `target_fps` (either faster or slower): output frame
/// `k` shows source time `k / target_fps`. Where that falls on a source frame (within 1e-9 of
/// a frame), the frame is copied bit for bit; otherwise the network renders it between its
/// two neighbours at the fractional timestep. The clip's duration is kept: the last output
/// frame is at or before the last source frame. `settings.multiplier` and `loop_clip` are
/// not used; scene cuts, network scale, rounding and the memory budget (the timesteps of a
/// pair share passes) are.
pub fn retime(
    rife: &Rife,
    frames: &[RgbImage],
    source_fps: f64,
    target_fps: f64,
    settings: &InterpolationSettings,
    ctx: &mut InterpolationContext<'_>,
) -> Result<Vec<RgbImage>, EngineError> {
    if !(source_fps.is_finite() && target_fps.is_finite() && source_fps > 0.0 && target_fps > 0.0) {
        return Err(EngineError::BadInterpolationInput {
            problem: format!("frame rates must be positive, got {source_fps} → {target_fps}"),
        });
    }
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    let step = source_fps / target_fps;
    let last = (frames.len() - 1) as f64;
    let count = ((last / step) + ON_FRAME).floor() as usize + 1;
    let layout = FrameLayout::new(
        first.width() as usize,
        first.height() as usize,
        settings.network_scale,
    )?;
    let batch = rife.batch_for_budget(&layout, settings.memory_budget);
    let mut out = Vec::with_capacity(count);
    let mut k = 0;
    let mut previous: Option<PreparedFrame> = None;
    let pairs_total = frames.len().saturating_sub(1);
    for pair in 0..frames.len() {
        // Output frames whose source time is in [pair, pair + 1).
        let mut wanted = Vec::new();
        while k < count {
            let position = k as f64 * step;
            if position >= pair as f64 + 1.0 - ON_FRAME {
                break;
            }
            wanted.push(position - pair as f64);
            k += 1;
        }
        if pair + 1 == frames.len() {
            out.extend(wanted.iter().map(|_| frames[pair].clone()));
            break;
        }
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let needs_network = wanted.iter().any(|&t| t > ON_FRAME);
        let scene_cut = needs_network
            && settings
                .scene_cut_below
                .is_some_and(|below| frame_similarity(&frames[pair], &frames[pair + 1]) < below);
        if needs_network && !scene_cut {
            let frame0 = match previous.take() {
                Some(p) => p,
                None => rife.prepare(&frames[pair], &layout)?,
            };
            let frame1 = rife.prepare(&frames[pair + 1], &layout)?;
            // This pair's timesteps, as many per pass as the budget allows.
            let between: Vec<f64> = wanted.iter().copied().filter(|&t| t > ON_FRAME).collect();
            let mut rendered = Vec::with_capacity(between.len());
            for (index, chunk) in between.chunks(batch).enumerate() {
                if index > 0 && (ctx.is_cancelled)() {
                    return Err(EngineError::Cancelled);
                }
                let items: Vec<_> = chunk.iter().map(|&t| (&frame0, &frame1, t)).collect();
                rendered.extend(rife.interpolate_batch_rgb8(&items, &layout, settings.rounding)?);
            }
            let mut rendered = rendered.into_iter();
            for &t in &wanted {
                if t <= ON_FRAME {
                    out.push(frames[pair].clone());
                } else {
                    out.push(rendered.next().ok_or_else(|| {
                        EngineError::BadInterpolationInput {
                            problem: "internal: fewer frames than timesteps".to_owned(),
                        }
                    })?);
                }
            }
            previous = Some(frame1);
        } else {
            out.extend(wanted.iter().map(|_| frames[pair].clone()));
            previous = None;
        }
        (ctx.on_progress)(PairProgress {
            pairs_done: pair + 1,
            pairs_total: Some(pairs_total),
            scene_cut,
        });
    }
    Ok(out)
}
