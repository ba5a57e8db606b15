//! `JobKind::Interpolate`: RIFE over an existing clip (a video file or a folder of PNG frames),
//! streamed frame by frame from the reader into the writer.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use image::RgbImage;

use super::output::format_for_output;
use super::runner::PipelineRunner;
use crate::EngineError;
use crate::device::{DevicePreference, select_device};
use crate::image_input::DEFAULT_MAX_PIXELS;
use crate::memory_plan::{GIB, MemoryPlan};
use crate::recipe::{DEFAULT_RESERVE_VRAM_GB, InterpolateRequest};
use crate::rife::{
    InterpolationContext, InterpolationSettings, PairProgress, Retiming, Rife, interpolate_stream,
    retime_stream,
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
        let frame_bytes = first.as_raw().len();
        // Frames are decoded ahead on a named thread, as they are encoded behind on another:
        // neither waits for the other, nor for the GPU.
        let (sender, receiver) =
            crossbeam_channel::bounded((READ_AHEAD_BYTES / frame_bytes.max(1)).max(2));
        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name("rife-reader".to_owned())
                .spawn_scoped(scope, move || {
                    // Stops at the end, after an error, or once the receiver is gone.
                    while let Some(frame) = frames.next_frame() {
                        let failed = frame.is_err();
                        if sender.send(frame).is_err() || failed {
                            break;
                        }
                    }
                })
                .map_err(|e| EngineError::io("starting the reader thread", "", e))?;
            let result = write_on_thread(&mut writer, frame_bytes, cancel, |emit| {
                let frames = std::iter::once(Ok(first)).chain(receiver);
                match target {
                    // Loops are refused with a target rate (`validate`); the multiplier is
                    // unused.
                    Some(target) => retime_stream(
                        rife,
                        frames,
                        frame_count,
                        Retiming {
                            source_fps: fps.as_f64(),
                            target_fps: target.as_f64(),
                        },
                        &interpolation,
                        &mut rife_ctx,
                        emit,
                    )
                    .map(|summary| summary.emitted),
                    None => interpolate_stream(
                        rife,
                        frames,
                        frame_count,
                        &interpolation,
                        &mut rife_ctx,
                        emit,
                    ),
                }
            });
            // `receiver` went into the stream and is dropped: the reader stops at its next frame.
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result
        })?;
        ctx.check()?;
        let path = writer.finish()?;
        Ok(JobOutput { path })
    }
}

/// Host bytes of frames decoded ahead of the interpolation at most: about 100 frames at
/// 832×480, 5 at 4K.
const READ_AHEAD_BYTES: usize = 128 << 20;

/// Host bytes of frames queued for the writer thread at most ([`write_on_thread`]): about
/// 200 frames at 832×480, 10 at 4K.
const WRITER_QUEUE_BYTES: usize = 256 << 20;

/// Runs `body` with a sink that queues its frames for `writer`, which pushes them on a named
/// thread: encoding (or PNG writing) then overlaps the interpolation instead of holding the
/// GPU idle between batches. The queue is bounded ([`WRITER_QUEUE_BYTES`] of `frame_bytes`
/// frames, at least 2) and keeps the order. A failed or cancelled push stops the thread; the
/// sink then fails at the next frame, and the writer's error is returned rather than
/// `body`'s.
pub(super) fn write_on_thread<R>(
    writer: &mut VideoWriter,
    frame_bytes: usize,
    cancel: &AtomicBool,
    body: impl FnOnce(&mut dyn FnMut(RgbImage) -> Result<(), EngineError>) -> Result<R, EngineError>,
) -> Result<R, EngineError> {
    let capacity = (WRITER_QUEUE_BYTES / frame_bytes.max(1)).max(2);
    let (sender, receiver) = crossbeam_channel::bounded::<RgbImage>(capacity);
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("rife-writer".to_owned())
            .spawn_scoped(scope, move || {
                for frame in receiver {
                    writer.push(&frame, cancel)?;
                }
                Ok::<(), EngineError>(())
            })
            .map_err(|e| EngineError::io("starting the writer thread", "", e))?;
        let result = {
            let sender = sender;
            let mut queue = |frame: RgbImage| {
                sender
                    .send(frame)
                    .map_err(|_| EngineError::BadInterpolationInput {
                        problem: "internal: the writer thread stopped".to_owned(),
                    })
            };
            body(&mut queue)
        };
        // The sender is gone: the thread ends once it has pushed what is queued.
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        result
    })
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

/// `frames` at `source` resampled to `target` with RIFE ([`retime_stream`]) into `writer` on
/// its thread ([`write_on_thread`]), each frame dropped once no output needs it, passes
/// within `memory_budget` bytes, reporting progress per frame pair and stopping between
/// passes when cancelled.
pub(super) fn retime_into(
    rife: &Rife,
    frames: Vec<RgbImage>,
    rates: Retiming,
    memory_budget: Option<u64>,
    ctx: &JobContext<'_>,
    writer: &mut VideoWriter,
) -> Result<(), EngineError> {
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
    // The multiplier is unused by `retime_stream`; scene cuts, network scale, rounding and
    // the memory budget apply.
    let mut settings = InterpolationSettings::with_multiplier(2);
    settings.memory_budget = memory_budget;
    let frame_count = frames.len();
    let frame_bytes = frames.first().map_or(0, |f| f.as_raw().len());
    write_on_thread(writer, frame_bytes, ctx.cancel_token().flag(), |emit| {
        retime_stream(
            rife,
            frames.into_iter().map(Ok),
            Some(frame_count),
            rates,
            &settings,
            &mut rife_ctx,
            emit,
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::video::VideoFormat;

    fn frame(i: u32) -> RgbImage {
        RgbImage::from_fn(8, 6, |x, y| image::Rgb([i as u8, x as u8, y as u8]))
    }

    fn png_writer(dir: &Path) -> VideoWriter {
        let settings = EncodeSettings {
            format: VideoFormat::PngFrames,
            ..EncodeSettings::default()
        };
        VideoWriter::create(&dir.join("clip"), &settings, 8, 6, None).unwrap()
    }

    #[test]
    fn the_writer_thread_writes_every_frame_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = png_writer(dir.path());
        let cancel = AtomicBool::new(false);
        // A queue of 2 frames for 7: the sink waits for the writer.
        let sent = write_on_thread(&mut writer, WRITER_QUEUE_BYTES / 2, &cancel, |emit| {
            for i in 0..7 {
                emit(frame(i))?;
            }
            Ok(7)
        })
        .unwrap();
        assert_eq!(sent, 7);
        let path = writer.finish().unwrap();
        for i in 0..7 {
            let read = image::open(path.join(format!("frame_{i:05}.png")))
                .unwrap()
                .to_rgb8();
            assert_eq!(read, frame(i), "frame {i}");
        }
    }

    #[test]
    fn a_cancelled_writer_stops_the_sink_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = png_writer(dir.path());
        let cancel = AtomicBool::new(false);
        let mut emitted = 0;
        let result = write_on_thread(&mut writer, WRITER_QUEUE_BYTES / 2, &cancel, |emit| {
            emit(frame(0))?;
            cancel.store(true, Ordering::Relaxed);
            for i in 1..10_000 {
                emit(frame(i))?;
                emitted = i;
            }
            Ok(())
        });
        assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
        assert!(emitted < 9_999, "the sink kept accepting frames");
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
