//! `JobKind::Interpolate`: RIFE over an existing clip (a video file or a folder of PNG frames),
//! streamed frame by frame from the reader into the writer.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::output::format_for_output;
use super::runner::PipelineRunner;
use crate::EngineError;
use crate::device::{DevicePreference, select_device};
use crate::image_input::DEFAULT_MAX_PIXELS;
use crate::memory_plan::{GIB, MemoryPlan};
use crate::recipe::{DEFAULT_RESERVE_VRAM_GB, InterpolateRequest};
use crate::rife::{
    InterpolationContext, InterpolationSettings, PairProgress, Rife, interpolate_stream, retime,
};
use crate::runtime::{JobContext, JobOutput, Stage};
use crate::video::{EncodeSettings, FrameRate, VideoReader, VideoWriter};

/// Where the input frames come from.
enum Frames {
    Video(VideoReader),
    Pngs(std::vec::IntoIter<PathBuf>),
}

impl Frames {
    fn next_frame(&mut self) -> Option<Result<RgbImage, EngineError>> {
        match self {
            Self::Video(reader) => reader.next_frame().transpose(),
            Self::Pngs(paths) => paths
                .next()
                .map(|path| crate::image_input::load_rgb8(&path, DEFAULT_MAX_PIXELS)),
        }
    }
}

/// The PNG files of a folder, sorted by name; at least two.
fn png_frames(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| EngineError::io("listing frames", dir, error))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| EngineError::io("listing frames", dir, error))?
            .path();
        if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("png"))
        {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.len() < 2 {
        return Err(EngineError::BadInterpolationInput {
            problem: format!(
                "a folder to interpolate needs at least 2 PNG frames, found {}: {}",
                paths.len(),
                dir.display()
            ),
        });
    }
    Ok(paths)
}

impl PipelineRunner {
    /// Interpolates `request.input` into `request.output`.
    pub(super) fn interpolate_clip(
        &mut self,
        request: &InterpolateRequest,
        ctx: &JobContext<'_>,
    ) -> Result<JobOutput, EngineError> {
        request.validate()?;
        let format = format_for_output(&request.output)?;
        let (mut frames, fps, frame_count) = if request.input.is_dir() {
            let paths = png_frames(&request.input)?;
            let count = paths.len();
            (
                Frames::Pngs(paths.into_iter()),
                FrameRate::whole(request.frames_fps),
                Some(count),
            )
        } else {
            let reader = VideoReader::open(&request.input, DEFAULT_MAX_PIXELS)?;
            let fps = reader.fps();
            (Frames::Video(reader), fps, None)
        };
        let first = frames
            .next_frame()
            .ok_or_else(|| EngineError::BadInterpolationInput {
                problem: format!("the clip has no frames: {}", request.input.display()),
            })??;
        ctx.progress(Stage::LoadingWeights, 0, 1);
        // The GPU when there is one (RIFE in f16 there), else the CPU.
        let device = select_device(DevicePreference::Auto)?.device;
        let weights = self.rife_weights_path()?;
        let rife = self.models.rife(&weights, &device)?;
        ctx.progress(Stage::LoadingWeights, 1, 1);
        // Batches fill what the device has free once the weights are in, less the reserve.
        let memory_budget = crate::gpu_memory::of_device(&device)
            .map(|memory| memory.free_bytes)
            .map(|free| free.saturating_sub((DEFAULT_RESERVE_VRAM_GB * GIB as f64) as u64));
        let target = request.target_fps.map(target_rate).transpose()?;
        let settings = EncodeSettings {
            format,
            fps: target.unwrap_or(FrameRate {
                numerator: fps.numerator * request.multiplier,
                denominator: fps.denominator,
            }),
            ..EncodeSettings::default()
        };
        let mut writer = VideoWriter::create(
            &request.output,
            &settings,
            first.width(),
            first.height(),
            None,
        )?;
        let cancel = ctx.cancel_token().flag();
        if let Some(target) = target {
            let mut all = vec![first];
            while let Some(frame) = frames.next_frame() {
                ctx.check()?;
                all.push(frame?);
            }
            for frame in retime_frames(rife, &all, fps, target, memory_budget, ctx)? {
                writer.push(&frame, cancel)?;
            }
            ctx.check()?;
            let path = writer.finish()?;
            return Ok(JobOutput { path });
        }
        let mut interpolation = InterpolationSettings::with_multiplier(request.multiplier as usize);
        interpolation.loop_clip = request.loop_clip;
        interpolation.memory_budget = memory_budget;
        // `check` (not the bare token) also takes in Cancel commands sent meanwhile.
        let is_cancelled = || ctx.check().is_err();
        let mut on_progress = |p: PairProgress| {
            let total = p.pairs_total.unwrap_or(p.pairs_done);
            ctx.progress(
                Stage::Interpolating,
                u32::try_from(p.pairs_done).unwrap_or(u32::MAX),
                u32::try_from(total).unwrap_or(u32::MAX),
            );
        };
        let mut rife_ctx = InterpolationContext {
            is_cancelled: &is_cancelled,
            on_progress: &mut on_progress,
            clock: None,
        };
        let rest = std::iter::from_fn(|| frames.next_frame());
        interpolate_stream(
            rife,
            std::iter::once(Ok(first)).chain(rest),
            frame_count,
            &interpolation,
            &mut rife_ctx,
            &mut |frame| writer.push(&frame, cancel),
        )?;
        ctx.check()?;
        let path = writer.finish()?;
        Ok(JobOutput { path })
    }
}

/// Device bytes RIFE's batches may take in a render: the plan's budget less the VAE, which
/// stays loaded through interpolation (the DiT and text encoder are gone by then). `None`
/// (a CPU job) runs one pair per pass.
pub(super) fn rife_memory_budget(plan: &MemoryPlan) -> Option<u64> {
    plan.budget
        .map(|budget| budget.saturating_sub(plan.predicted.vae_weights))
}

/// The exact output rate for a target given in frames per second.
pub(super) fn target_rate(fps: f64) -> Result<FrameRate, EngineError> {
    FrameRate::from_fps(fps).ok_or_else(|| EngineError::BadRecipe {
        field: "interpolation",
        problem: format!("target fps must be a positive frame rate, got {fps}"),
    })
}

/// `frames` at `source` resampled to `target` with RIFE (see [`retime`]), each pair's
/// timesteps batched within `memory_budget` bytes, reporting progress per frame pair and
/// stopping between passes when cancelled.
pub(super) fn retime_frames(
    rife: &Rife,
    frames: &[RgbImage],
    source: FrameRate,
    target: FrameRate,
    memory_budget: Option<u64>,
    ctx: &JobContext<'_>,
) -> Result<Vec<RgbImage>, EngineError> {
    let is_cancelled = || ctx.check().is_err();
    let mut on_progress = |p: PairProgress| {
        let total = p.pairs_total.unwrap_or(p.pairs_done);
        ctx.progress(
            Stage::Interpolating,
            u32::try_from(p.pairs_done).unwrap_or(u32::MAX),
            u32::try_from(total).unwrap_or(u32::MAX),
        );
    };
    let mut rife_ctx = InterpolationContext {
        is_cancelled: &is_cancelled,
        on_progress: &mut on_progress,
        clock: None,
    };
    // The multiplier is unused by `retime`; scene cuts, network scale, rounding and the
    // memory budget apply.
    let mut settings = InterpolationSettings::with_multiplier(2);
    settings.memory_budget = memory_budget;
    retime(
        rife,
        frames,
        source.as_f64(),
        target.as_f64(),
        &settings,
        &mut rife_ctx,
    )
}
