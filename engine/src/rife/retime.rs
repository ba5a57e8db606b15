//! Changing a clip's frame rate to a target fps with the network.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

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
/// not used; scene cuts, network scale, rounding and the memory budget are.
///
/// The in-between frames of consecutive pairs share network passes (as many items a pass as
/// the budget allows): a rate change puts one or two frames between most pairs, too few to
/// fill a pass on their own. Batching does not change the frames.
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
    let layout = FrameLayout::new(
        first.width() as usize,
        first.height() as usize,
        settings.network_scale,
    )?;
    let (plan, scene_cuts) = plan_outputs(frames, source_fps / target_fps, settings, ctx)?;
    let renders: Vec<(usize, f64)> = plan
        .iter()
        .filter_map(|output| match *output {
            Output::Render { pair, timestep } => Some((pair, timestep)),
            Output::Copy(_) => None,
        })
        .collect();
    let batch = rife.batch_for_budget(&layout, settings.memory_budget);
    let pairs_total = frames.len().saturating_sub(1);
    let mut reported = 0;
    let mut report = |up_to: usize, ctx: &mut InterpolationContext<'_>| {
        for (pair, &scene_cut) in scene_cuts.iter().enumerate().take(up_to).skip(reported) {
            (ctx.on_progress)(PairProgress {
                pairs_done: pair + 1,
                pairs_total: Some(pairs_total),
                scene_cut,
            });
        }
        reported = reported.max(up_to);
    };
    let mut rendered = Vec::with_capacity(renders.len());
    // Each frame is prepared once and kept while a later pass may still need it.
    let mut prepared: BTreeMap<usize, PreparedFrame> = BTreeMap::new();
    let chunks: Vec<&[(usize, f64)]> = renders.chunks(batch.max(1)).collect();
    for (index, chunk) in chunks.iter().enumerate() {
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let first_pair = chunk.first().map_or(0, |&(pair, _)| pair);
        report(first_pair, ctx);
        prepared.retain(|&frame, _| frame >= first_pair);
        for &(pair, _) in *chunk {
            for frame in [pair, pair + 1] {
                if let Entry::Vacant(slot) = prepared.entry(frame) {
                    slot.insert(rife.prepare(&frames[frame], &layout)?);
                }
            }
        }
        let items = chunk
            .iter()
            .map(
                |&(pair, timestep)| match (prepared.get(&pair), prepared.get(&(pair + 1))) {
                    (Some(a), Some(b)) => Ok((a, b, timestep)),
                    _ => Err(internal("a pair's frames were not prepared")),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        rendered.extend(rife.interpolate_batch_rgb8(&items, &layout, settings.rounding)?);
        // Pairs before the next pass's first one are complete.
        let done = chunks
            .get(index + 1)
            .and_then(|next| next.first())
            .map_or(pairs_total, |&(pair, _)| pair);
        report(done, ctx);
    }
    report(pairs_total, ctx);

    let mut rendered = rendered.into_iter();
    plan.iter()
        .map(|output| match *output {
            Output::Copy(frame) => Ok(frames[frame].clone()),
            Output::Render { .. } => rendered
                .next()
                .ok_or_else(|| internal("fewer frames than timesteps")),
        })
        .collect()
}

/// One output frame: a source frame copied, or rendered between `pair` and `pair + 1`.
#[derive(Clone, Copy, Debug)]
enum Output {
    Copy(usize),
    Render { pair: usize, timestep: f64 },
}

/// The output frames for a step of `step` source frames per output frame, and whether each
/// pair is a scene cut (asked only of pairs with a frame to render; their in-between frames
/// then repeat the pair's first frame).
fn plan_outputs(
    frames: &[RgbImage],
    step: f64,
    settings: &InterpolationSettings,
    ctx: &InterpolationContext<'_>,
) -> Result<(Vec<Output>, Vec<bool>), EngineError> {
    let last = (frames.len() - 1) as f64;
    let count = ((last / step) + ON_FRAME).floor() as usize + 1;
    let mut plan = Vec::with_capacity(count);
    let mut scene_cuts = Vec::with_capacity(frames.len());
    let mut k = 0;
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
            plan.extend(wanted.iter().map(|_| Output::Copy(pair)));
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
        scene_cuts.push(scene_cut);
        plan.extend(wanted.iter().map(|&timestep| {
            if needs_network && !scene_cut && timestep > ON_FRAME {
                Output::Render { pair, timestep }
            } else {
                Output::Copy(pair)
            }
        }));
    }
    Ok((plan, scene_cuts))
}

fn internal(problem: &str) -> EngineError {
    EngineError::BadInterpolationInput {
        problem: format!("internal: {problem}"),
    }
}
