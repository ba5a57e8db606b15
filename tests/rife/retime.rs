//! Retiming to a target fps, streamed: the same frames as the in-memory retime this replaced,
//! in bounded memory, handed on while the clip is still being read.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use image::RgbImage;
use stillmotion_engine::EngineError;
use stillmotion_engine::rife::{
    FrameLayout, InterpolationContext, InterpolationSettings, PairProgress, PreparedFrame,
    RetimeSummary, Retiming, Rife, frame_similarity, max_frames_held, retime_stream,
};

use super::{budget_for, crop, photo, rife};

/// One output frame of [`retime_in_memory`].
enum Output {
    Copy(usize),
    Render { pair: usize, timestep: f64 },
}

/// The retime the streamed one replaced (engine/src/rife/retime.rs before it streamed), kept
/// as the reference: it plans every output of the whole clip first, then renders the
/// in-between frames in passes of `batch` items, preparing each frame once, alone. Returns
/// the frames and each pair's scene-cut decision.
fn retime_in_memory(
    rife: &Rife,
    frames: &[RgbImage],
    step: f64,
    settings: &InterpolationSettings,
) -> (Vec<RgbImage>, Vec<bool>) {
    const ON_FRAME: f64 = 1e-9;
    let layout = FrameLayout::new(
        frames[0].width() as usize,
        frames[0].height() as usize,
        settings.network_scale,
    )
    .unwrap();
    let last = (frames.len() - 1) as f64;
    let count = ((last / step) + ON_FRAME).floor() as usize + 1;
    let mut plan = Vec::new();
    let mut scene_cuts = Vec::new();
    let mut k = 0;
    for pair in 0..frames.len() {
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
    let renders: Vec<(usize, f64)> = plan
        .iter()
        .filter_map(|output| match *output {
            Output::Render { pair, timestep } => Some((pair, timestep)),
            Output::Copy(_) => None,
        })
        .collect();
    let batch = rife.batch_for_budget(&layout, settings.memory_budget);
    let mut rendered = Vec::new();
    let mut prepared: BTreeMap<usize, PreparedFrame> = BTreeMap::new();
    for chunk in renders.chunks(batch.max(1)) {
        let first_pair = chunk[0].0;
        prepared.retain(|&frame, _| frame >= first_pair);
        for &(pair, _) in chunk {
            for frame in [pair, pair + 1] {
                if let Entry::Vacant(slot) = prepared.entry(frame) {
                    slot.insert(rife.prepare(&frames[frame], &layout).unwrap());
                }
            }
        }
        let items: Vec<_> = chunk
            .iter()
            .map(|&(pair, t)| (&prepared[&pair], &prepared[&(pair + 1)], t))
            .collect();
        rendered.extend(
            rife.interpolate_batch_rgb8(&items, &layout, settings.rounding)
                .unwrap(),
        );
    }
    let mut rendered = rendered.into_iter();
    let out = plan
        .iter()
        .map(|output| match *output {
            Output::Copy(frame) => frames[frame].clone(),
            Output::Render { .. } => rendered.next().unwrap(),
        })
        .collect();
    (out, scene_cuts)
}

/// What a streamed retime of `frames` gave: the frames, the progress reports, the summary,
/// and for each output frame how many source frames had been read when it was handed on.
struct Streamed {
    frames: Vec<RgbImage>,
    progress: Vec<PairProgress>,
    summary: RetimeSummary,
    read_when_emitted: Vec<usize>,
}

fn streamed(
    rife: &Rife,
    frames: &[RgbImage],
    rates: (f64, f64),
    settings: &InterpolationSettings,
) -> Streamed {
    let read = Cell::new(0);
    let source = frames.iter().map(|frame| {
        read.set(read.get() + 1);
        Ok(frame.clone())
    });
    let mut progress = Vec::new();
    let mut record = |p: PairProgress| progress.push(p);
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut record,
        clock: None,
    };
    let mut out = Vec::new();
    let mut read_when_emitted = Vec::new();
    let summary = retime_stream(
        rife,
        source,
        Some(frames.len()),
        Retiming {
            source_fps: rates.0,
            target_fps: rates.1,
        },
        settings,
        &mut ctx,
        &mut |frame| {
            out.push(frame);
            read_when_emitted.push(read.get());
            Ok(())
        },
    )
    .unwrap();
    Streamed {
        frames: out,
        progress,
        summary,
        read_when_emitted,
    }
}

/// A camera panning over `name` for `count` frames of `w`×`h`, `dx` pixels a frame.
fn panning(name: &str, count: u32, dx: u32, w: u32, h: u32) -> Vec<RgbImage> {
    let image = photo(name);
    (0..count)
        .map(|k| crop(&image, 8 + dx * k, 40, w, h))
        .collect()
}

fn assert_same_frames(streamed: &[RgbImage], reference: &[RgbImage], what: &str) {
    assert_eq!(streamed.len(), reference.len(), "{what}: frame count");
    for (i, (s, r)) in streamed.iter().zip(reference).enumerate() {
        assert_eq!(s.as_raw(), r.as_raw(), "{what}: frame {i}");
    }
}

#[test]
fn streamed_retiming_gives_the_in_memory_frames_and_progress() {
    let rife = rife();
    // Two shots (a cut between frames 3 and 4), 60×40: padded to 64×64 and cropped back.
    let mut clip = panning("coffee", 4, 3, 60, 40);
    clip.extend(panning("astronaut", 3, 2, 60, 40));
    let layout = FrameLayout::new(60, 40, None).unwrap();
    // Rate changes up and down, with passes of one item, of items spanning pairs, and of
    // the timesteps of one pair split across passes.
    for ((source, target), items) in [
        ((16.0, 24.0), 1),
        ((16.0, 24.0), 3),
        ((16.0, 56.0), 2),
        ((24.0, 10.0), 2),
    ] {
        let what = format!("{source} → {target} fps, {items} items a pass");
        let settings = InterpolationSettings {
            memory_budget: Some(budget_for(&rife, &layout, items)),
            ..InterpolationSettings::with_multiplier(2)
        };
        let (reference, cuts) = retime_in_memory(&rife, &clip, source / target, &settings);
        let run = streamed(&rife, &clip, (source, target), &settings);
        assert_same_frames(&run.frames, &reference, &what);
        assert_eq!(run.summary.emitted, reference.len(), "{what}");
        // Once per pair, in order, with the same scene-cut decisions.
        let expected: Vec<PairProgress> = cuts
            .iter()
            .enumerate()
            .map(|(pair, &scene_cut)| PairProgress {
                pairs_done: pair + 1,
                pairs_total: Some(clip.len() - 1),
                scene_cut,
            })
            .collect();
        assert_eq!(run.progress, expected, "{what}");
        if target > source {
            assert!(cuts[3], "{what}: the cut between the shots");
        }
        assert!(
            run.summary.peak_frames_held <= max_frames_held(items as usize),
            "{what}: held {} frames",
            run.summary.peak_frames_held
        );
    }
}

#[test]
fn a_long_clip_streams_through_a_bounded_number_of_frames() {
    let rife = rife();
    // 40 frames of 32×32: a pan, then a run of scene cuts (each frame from another photo or
    // far away on it) behind a waiting render, then a pan again.
    let mut clip = panning("chelsea", 12, 2, 32, 32);
    let shots = [photo("astronaut"), photo("coffee"), photo("chelsea")];
    clip.extend((0..16).map(|k| {
        let shot = &shots[k % 3];
        crop(shot, 10 + 11 * k as u32, 170 - 9 * k as u32, 32, 32)
    }));
    clip.extend(panning("coffee", 12, 3, 32, 32));
    let layout = FrameLayout::new(32, 32, None).unwrap();
    let settings = InterpolationSettings {
        memory_budget: Some(budget_for(&rife, &layout, 2)),
        ..InterpolationSettings::with_multiplier(2)
    };
    let cap = max_frames_held(2);
    let run = streamed(&rife, &clip, (16.0, 24.0), &settings);
    let (reference, cuts) = retime_in_memory(&rife, &clip, 16.0 / 24.0, &settings);
    assert!(
        cuts.iter().filter(|&&cut| cut).count() >= 10,
        "the middle shots must be cuts: {cuts:?}"
    );
    assert_same_frames(&run.frames, &reference, "16 → 24 fps over 40 frames");
    // The frames held at once stay under the cap (the run of cuts reaches it), far below
    // the clip's 40.
    println!(
        "peak frames held {} (cap {cap}) of {}",
        run.summary.peak_frames_held,
        clip.len()
    );
    assert!(run.summary.peak_frames_held <= cap);
    assert!(run.summary.peak_frames_held >= 3);
    // Frames go out while the clip is read: output k by source frame ⌈2k/3⌉ + a pass or so.
    for (k, &read) in run.read_when_emitted.iter().enumerate() {
        let needed = (2 * k).div_ceil(3) + 1;
        assert!(
            read <= needed + cap,
            "output {k} waited for {read} frames to be read"
        );
    }
    // The first frame goes out with its pair: once the second frame is read.
    assert_eq!(run.read_when_emitted[0], 2);
}

#[test]
fn streamed_retiming_cancels_between_passes_and_refuses_mixed_sizes() {
    let rife = rife();
    let clip = panning("astronaut", 6, 2, 32, 32);
    let layout = FrameLayout::new(32, 32, None).unwrap();
    let settings = InterpolationSettings {
        memory_budget: Some(budget_for(&rife, &layout, 2)),
        ..InterpolationSettings::with_multiplier(2)
    };
    let reports = Cell::new(0);
    let mut progress = |_: PairProgress| reports.set(reports.get() + 1);
    let cancel_after_two = || reports.get() >= 2;
    let mut ctx = InterpolationContext {
        is_cancelled: &cancel_after_two,
        on_progress: &mut progress,
        clock: None,
    };
    let mut emitted = 0;
    let rates = Retiming {
        source_fps: 16.0,
        target_fps: 24.0,
    };
    let result = retime_stream(
        &rife,
        clip.iter().cloned().map(Ok),
        None,
        rates,
        &settings,
        &mut ctx,
        &mut |_| {
            emitted += 1;
            Ok(())
        },
    );
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    assert_eq!(reports.get(), 2);
    assert!(emitted < 8, "emitted {emitted} of 8 frames");

    let mut mixed = clip.clone();
    mixed[3] = crop(&photo("astronaut"), 0, 0, 40, 32);
    let mut progress = |_: PairProgress| {};
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    let result = retime_stream(
        &rife,
        mixed.into_iter().map(Ok),
        None,
        rates,
        &settings,
        &mut ctx,
        &mut |_| Ok(()),
    );
    assert!(
        matches!(&result, Err(EngineError::BadInterpolationInput { problem }) if problem.contains("same size")),
        "{result:?}"
    );
}

#[test]
fn the_interpolate_job_retimes_an_mp4_as_it_decodes() {
    use std::sync::atomic::AtomicBool;
    use stillmotion_engine::pipeline::PipelineRunner;
    use stillmotion_engine::recipe::InterpolateRequest;
    use stillmotion_engine::runtime::{CancelToken, Event, JobContext, JobKind, JobRunner, Stage};
    use stillmotion_engine::video::{
        EncodeSettings, FrameRate, VideoFormat, VideoWriter, read_video,
    };

    let dir = tempfile::tempdir().unwrap();
    let settings = EncodeSettings {
        format: VideoFormat::Mp4H264,
        fps: FrameRate::whole(16),
        ..EncodeSettings::default()
    };
    let mut writer =
        VideoWriter::create(&dir.path().join("in.mp4"), &settings, 64, 48, None).unwrap();
    for frame in panning("chelsea", 4, 3, 64, 48) {
        writer.push(&frame, &AtomicBool::new(false)).unwrap();
    }
    let input = writer.finish().unwrap();
    // The job sees the decoded frames (H.264 is lossy): the library's retime of those is
    // what it must write.
    let decoded = read_video(&input, 100, 1 << 20).unwrap().frames;
    assert_eq!(decoded.len(), 4);

    let request = InterpolateRequest {
        input,
        frames_fps: 16,
        multiplier: 2,
        target_fps: Some(24.0),
        loop_clip: false,
        output: dir.path().join("out"),
    };
    let events = std::cell::RefCell::new(Vec::new());
    let sink = |event: Event| {
        if let Event::Progress { progress, .. } = event
            && progress.stage == Stage::Interpolating
        {
            events.borrow_mut().push((progress.done, progress.total));
        }
    };
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let mut runner = PipelineRunner::new()
        .with_rife_weights(stillmotion_engine::paths::rife_weights_path().unwrap());
    let output = runner
        .run(&JobKind::Interpolate(Box::new(request)), &ctx)
        .unwrap();
    let mut written: Vec<_> = std::fs::read_dir(&output.path)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    written.sort();
    let frames: Vec<RgbImage> = written
        .iter()
        .map(|path| image::open(path).unwrap().to_rgb8())
        .collect();

    let rife = rife();
    let library = streamed(
        &rife,
        &decoded,
        (16.0, 24.0),
        &InterpolationSettings::with_multiplier(2),
    );
    // 16 → 24 fps over 4 frames: source times 0, 2/3, 4/3, 2, 8/3.
    assert_eq!(frames.len(), 5);
    assert_same_frames(&frames, &library.frames, "the job against the library");
    assert_eq!(frames[3].as_raw(), decoded[2].as_raw());
    // A video's length is not known ahead: each pair reports itself as the total so far.
    assert_eq!(*events.borrow(), [(1, 1), (2, 2), (3, 3)]);
}

#[test]
fn each_frame_is_encoded_once_for_both_its_pairs() {
    let rife = rife();
    let clip = panning("coffee", 6, 2, 32, 32);
    let layout = FrameLayout::new(32, 32, None).unwrap();
    let settings = InterpolationSettings {
        memory_budget: Some(budget_for(&rife, &layout, 2)),
        ..InterpolationSettings::with_multiplier(3)
    };
    // ×3 in a loop, passes of two items: 6 pairs (the closing one included) over windows
    // of frames, every frame read by two pairs.
    let before = rife.frames_encoded();
    let looped = InterpolationSettings {
        loop_clip: true,
        ..settings.clone()
    };
    assert_eq!(super::run(&rife, &clip, &looped).len(), 18);
    assert_eq!(rife.frames_encoded() - before, 6, "×3 in a loop");
    // 16 → 24 fps: renders in every pair, passes of two spanning pairs.
    let before = rife.frames_encoded();
    let run = streamed(&rife, &clip, (16.0, 24.0), &settings);
    assert_eq!(run.frames.len(), 8);
    assert_eq!(rife.frames_encoded() - before, 6, "16 → 24 fps");
}
