//! Changing a clip's frame rate to a target fps with the network, streamed: frames are read,
//! interpolated and handed on as they come, holding only what the next output frames need.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use image::RgbImage;

use super::interpolate::{InterpolationContext, InterpolationSettings, PairProgress};
use super::pair::{FrameLayout, PreparedFrame, Rife, check_size};
use super::scene_cut::FrameSignature;
use super::timing::{RifeStage, lap};
use crate::EngineError;

/// How close (in source frames) an output time must be to a source frame to copy it.
const ON_FRAME: f64 = 1e-9;

/// The two frame rates of a retime, in frames per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retiming {
    pub source_fps: f64,
    pub target_fps: f64,
}

/// What a streamed retime did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetimeSummary {
    /// Output frames handed to the sink.
    pub emitted: usize,
    /// The most source frames held at once (read and not yet released): never more than
    /// [`max_frames_held`] of the pass size.
    pub peak_frames_held: usize,
}

/// The most source frames [`retime_stream`] holds at once when its passes take `batch` items.
///
/// Between passes it holds the frames of the renders waiting for the next pass (at most
/// `batch - 1` pairs, two frames each), those of the copies among them (at most one between
/// two renders without scene cuts) and the newest frame: `3 × batch - 1` at most on a clip
/// without cuts, so the cap never cuts a pass short there. Scene-cut pairs only add copies;
/// a run of them long enough to reach the cap runs the waiting renders early (a shorter
/// pass) so that their frames can go.
#[must_use]
pub fn max_frames_held(batch: usize) -> usize {
    3 * batch.max(1) + 2
}

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
    let mut out = Vec::new();
    retime_stream(
        rife,
        frames.iter().cloned().map(Ok),
        Some(frames.len()),
        Retiming {
            source_fps,
            target_fps,
        },
        settings,
        ctx,
        &mut |frame| {
            out.push(frame);
            Ok(())
        },
    )?;
    Ok(out)
}

/// [`retime`] for clips too long to hold: reads frames one by one from `frames` and hands
/// each output frame to `emit` as soon as it is known, in order. Renders wait for a full pass
/// (the same passes as [`retime`] over the whole clip, so the same frames); a frame is
/// released once no waiting output needs it, so at most [`max_frames_held`] source frames
/// are held at once. `frame_count`, if known, fills [`PairProgress::pairs_total`]; progress
/// comes once per pair, in order, when the pair's frames are all out. Cancellation is asked
/// before each pair and each network pass.
pub fn retime_stream(
    rife: &Rife,
    frames: impl IntoIterator<Item = Result<RgbImage, EngineError>>,
    frame_count: Option<usize>,
    rates: Retiming,
    settings: &InterpolationSettings,
    ctx: &mut InterpolationContext<'_>,
    emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
) -> Result<RetimeSummary, EngineError> {
    let Retiming {
        source_fps,
        target_fps,
    } = rates;
    if !(source_fps.is_finite() && target_fps.is_finite() && source_fps > 0.0 && target_fps > 0.0) {
        return Err(EngineError::BadInterpolationInput {
            problem: format!("frame rates must be positive, got {source_fps} → {target_fps}"),
        });
    }
    let mut retimer: Option<Retimer<'_>> = None;
    for frame in frames {
        let frame = frame?;
        lap(&mut ctx.clock, RifeStage::Read)?;
        if let Some(retimer) = &mut retimer {
            retimer.push(frame, ctx, emit)?;
        } else {
            let state =
                Retimer::start(rife, settings, source_fps / target_fps, frame_count, frame)?;
            retimer = Some(state);
        }
    }
    match retimer {
        Some(retimer) => retimer.finish(ctx, emit),
        None => Ok(RetimeSummary::default()),
    }
}

/// One output frame: a source frame copied, or the next frame the network renders (the
/// renders come out of the passes in output order).
#[derive(Clone, Copy, Debug)]
enum Output {
    Copy(usize),
    Render,
}

/// A source frame still needed, with its network input and scene-cut signature once read.
struct Held {
    frame: RgbImage,
    prepared: Option<PreparedFrame>,
    signature: Option<FrameSignature>,
}

/// The state of [`retime_stream`] once the first frame is in.
struct Retimer<'r> {
    rife: &'r Rife,
    settings: &'r InterpolationSettings,
    layout: FrameLayout,
    /// Source frames per output frame.
    step: f64,
    /// Items (a pair at one timestep) per network pass.
    batch: usize,
    /// Source frames still needed, by index; the newest is always among them.
    held: BTreeMap<usize, Held>,
    newest: usize,
    /// The next output frame's index.
    next_output: usize,
    /// Output frames not handed on yet, in order; the first is a render still to come.
    pending: VecDeque<Output>,
    /// Renders waiting for the next pass, in output order.
    chunk: Vec<(usize, f64)>,
    /// Frames of the last pass, for the first `Render`s of `pending`.
    rendered: VecDeque<RgbImage>,
    /// Whether each pair whose outputs are planned but not reported was a scene cut.
    unreported: VecDeque<bool>,
    pairs_reported: usize,
    pairs_total: Option<usize>,
    summary: RetimeSummary,
}

impl<'r> Retimer<'r> {
    fn start(
        rife: &'r Rife,
        settings: &'r InterpolationSettings,
        step: f64,
        frame_count: Option<usize>,
        first: RgbImage,
    ) -> Result<Self, EngineError> {
        let layout = FrameLayout::new(
            first.width() as usize,
            first.height() as usize,
            settings.network_scale,
        )?;
        let mut retimer = Self {
            rife,
            settings,
            batch: rife
                .batch_for_budget(&layout, settings.memory_budget)
                .max(1),
            layout,
            step,
            held: BTreeMap::new(),
            newest: 0,
            next_output: 0,
            pending: VecDeque::new(),
            chunk: Vec::new(),
            rendered: VecDeque::new(),
            unreported: VecDeque::new(),
            pairs_reported: 0,
            pairs_total: frame_count.map(|n| n.saturating_sub(1)),
            summary: RetimeSummary::default(),
        };
        retimer.hold(0, first);
        Ok(retimer)
    }

    fn hold(&mut self, index: usize, frame: RgbImage) {
        self.held.insert(
            index,
            Held {
                frame,
                prepared: None,
                signature: None,
            },
        );
        self.newest = index;
        self.summary.peak_frames_held = self.summary.peak_frames_held.max(self.held.len());
    }

    /// Takes in the next source frame: plans the pair it closes, runs full passes, hands on
    /// what is ready and releases what is no longer needed.
    fn push(
        &mut self,
        frame: RgbImage,
        ctx: &mut InterpolationContext<'_>,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let layout = &self.layout;
        check_size(&frame, layout)?;
        let pair = self.newest;
        self.hold(pair + 1, frame);
        self.plan_pair(pair, ctx)?;
        self.hand_on(ctx, emit)?;
        if self.held.len() >= max_frames_held(self.batch) && !self.chunk.is_empty() {
            // A long run of scene cuts behind a waiting render: render now to let them go.
            self.run_pass(ctx)?;
            self.hand_on(ctx, emit)?;
        }
        Ok(())
    }

    /// The output frames whose source time is in `[pair, pair + 1)`, and whether the pair is
    /// a scene cut (asked only of pairs with a frame to render; their in-between frames then
    /// repeat the pair's first frame). Renders join the waiting pass, which runs when full.
    fn plan_pair(
        &mut self,
        pair: usize,
        ctx: &mut InterpolationContext<'_>,
    ) -> Result<(), EngineError> {
        let mut wanted = Vec::new();
        loop {
            let position = self.next_output as f64 * self.step;
            if position >= pair as f64 + 1.0 - ON_FRAME {
                break;
            }
            wanted.push(position - pair as f64);
            self.next_output += 1;
        }
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let needs_network = wanted.iter().any(|&t| t > ON_FRAME);
        let scene_cut = match self.settings.scene_cut_below {
            Some(below) if needs_network => self.similarity(pair)? < below,
            _ => false,
        };
        lap(&mut ctx.clock, RifeStage::SceneCuts)?;
        self.unreported.push_back(scene_cut);
        for timestep in wanted {
            if needs_network && !scene_cut && timestep > ON_FRAME {
                self.pending.push_back(Output::Render);
                self.chunk.push((pair, timestep));
                if self.chunk.len() == self.batch {
                    self.run_pass(ctx)?;
                }
            } else {
                self.pending.push_back(Output::Copy(pair));
            }
        }
        Ok(())
    }

    /// [`frame_similarity`](super::frame_similarity) of `pair`'s two frames, each frame's
    /// signature read once.
    fn similarity(&mut self, pair: usize) -> Result<f64, EngineError> {
        for index in [pair, pair + 1] {
            let held = self.held_mut(index)?;
            if held.signature.is_none() {
                held.signature = Some(FrameSignature::of(&held.frame));
            }
        }
        match (self.signature(pair), self.signature(pair + 1)) {
            (Some(a), Some(b)) => Ok(a.similarity(b)),
            _ => Err(internal("a frame's signature went missing")),
        }
    }

    fn signature(&self, index: usize) -> Option<&FrameSignature> {
        self.held.get(&index).and_then(|h| h.signature.as_ref())
    }

    fn held_mut(&mut self, index: usize) -> Result<&mut Held, EngineError> {
        self.held
            .get_mut(&index)
            .ok_or_else(|| internal("a needed frame was released"))
    }

    /// Renders the waiting items in one network pass; each frame is prepared once, alone,
    /// and kept while a later pass may still need it.
    fn run_pass(&mut self, ctx: &mut InterpolationContext<'_>) -> Result<(), EngineError> {
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let chunk = std::mem::take(&mut self.chunk);
        for &(pair, _) in &chunk {
            for index in [pair, pair + 1] {
                let (rife, layout) = (self.rife, self.layout);
                let held = self.held_mut(index)?;
                if held.prepared.is_none() {
                    let mut prepared =
                        rife.prepare_batch_clocked(&[&held.frame], &layout, &mut ctx.clock)?;
                    held.prepared = prepared.pop();
                }
            }
        }
        let prepared = |index: usize| self.held.get(&index).and_then(|h| h.prepared.as_ref());
        let items = chunk
            .iter()
            .map(
                |&(pair, timestep)| match (prepared(pair), prepared(pair + 1)) {
                    (Some(a), Some(b)) => Ok((a, b, timestep)),
                    _ => Err(internal("a pair's frames were not prepared")),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let frames = self.rife.interpolate_batch_rgb8_clocked(
            &items,
            &self.layout,
            self.settings.rounding,
            &mut ctx.clock,
        )?;
        if frames.len() != chunk.len() {
            return Err(internal("fewer frames than timesteps"));
        }
        self.rendered.extend(frames);
        Ok(())
    }

    /// Hands on the output frames that are ready, reports the pairs that are complete, and
    /// releases the frames no waiting output or render needs.
    fn hand_on(
        &mut self,
        ctx: &mut InterpolationContext<'_>,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        while let Some(&output) = self.pending.front() {
            let frame = match output {
                Output::Copy(index) => self.held_mut(index)?.frame.clone(),
                Output::Render => match self.rendered.pop_front() {
                    Some(frame) => frame,
                    None => break,
                },
            };
            self.pending.pop_front();
            emit(frame)?;
            self.summary.emitted += 1;
        }
        // A pair is complete once no render of it (or of an earlier pair) waits.
        let waiting_from = self.chunk.first().map_or(usize::MAX, |&(pair, _)| pair);
        while self.pairs_reported < waiting_from
            && let Some(scene_cut) = self.unreported.pop_front()
        {
            self.pairs_reported += 1;
            (ctx.on_progress)(PairProgress {
                pairs_done: self.pairs_reported,
                pairs_total: self.pairs_total,
                scene_cut,
            });
        }
        lap(&mut ctx.clock, RifeStage::Write)?;
        self.release();
        Ok(())
    }

    fn release(&mut self) {
        let rendering: BTreeSet<usize> = self
            .chunk
            .iter()
            .flat_map(|&(pair, _)| [pair, pair + 1])
            .collect();
        let copying: BTreeSet<usize> = self
            .pending
            .iter()
            .filter_map(|output| match *output {
                Output::Copy(index) => Some(index),
                Output::Render => None,
            })
            .collect();
        let newest = self.newest;
        self.held.retain(|index, held| {
            if *index != newest && !rendering.contains(index) {
                // No later pass reads it: later pairs start at the newest frame.
                held.prepared = None;
            }
            *index == newest || rendering.contains(index) || copying.contains(index)
        });
    }

    /// The clip has ended: the last frame's own outputs, the last pass, the rest handed on.
    fn finish(
        mut self,
        ctx: &mut InterpolationContext<'_>,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
    ) -> Result<RetimeSummary, EngineError> {
        let last = self.newest as f64;
        let count = ((last / self.step) + ON_FRAME).floor() as usize + 1;
        while self.next_output < count {
            self.pending.push_back(Output::Copy(self.newest));
            self.next_output += 1;
        }
        if !self.chunk.is_empty() {
            self.run_pass(ctx)?;
        }
        self.hand_on(ctx, emit)?;
        if !self.pending.is_empty() {
            return Err(internal("fewer frames than timesteps"));
        }
        Ok(self.summary)
    }
}

fn internal(problem: &str) -> EngineError {
    EngineError::BadInterpolationInput {
        problem: format!("internal: {problem}"),
    }
}
