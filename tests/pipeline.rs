//! End to end: the `pipeline` golden case rendered through the engine thread and compared by
//! PSNR; a second job reusing the loaded models; a cancel during decoding leaving nothing.
#![allow(clippy::unwrap_used, reason = "test helpers unwrap")]

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use candle_core::Tensor;
use stillmotion_engine::EngineError;
use stillmotion_engine::pipeline::PipelineRunner;
use stillmotion_engine::recipe::Interpolation;
use stillmotion_engine::runtime::{
    CancelToken, Command, EngineHandle, Event, JobContext, JobKind, JobOutput, JobRunner, Stage,
};
use stillmotion_tests::golden::{self, Case};
use stillmotion_tests::runners::pipeline::{read_frames, recipe};

const CASE: &str = "pipeline_i2v_official_tiny";

fn case() -> Case {
    golden::load_case(&golden::committed_dir().join(CASE)).unwrap()
}

fn expected_frames(case: &Case) -> Tensor {
    let mut expected = candle_core::safetensors::load(
        case.file(&case.manifest.expected),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    expected.remove("frames").unwrap()
}

fn psnr(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let mse = f64::from(
        (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    );
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// Waits for the job's end and returns its output.
fn wait(engine: &EngineHandle, job_id: u64) -> Result<JobOutput, String> {
    loop {
        match engine
            .events()
            .recv_timeout(Duration::from_mins(1))
            .unwrap()
        {
            Event::Finished {
                job_id: id, output, ..
            } if id == job_id => return Ok(output),
            Event::Failed {
                job_id: id,
                message,
            } if id == job_id => return Err(message),
            Event::Cancelled { job_id: id } if id == job_id => return Err("cancelled".to_owned()),
            _ => {}
        }
    }
}

#[test]
fn renders_the_reference_frames_and_reuses_models_for_the_next_job() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let runner = PipelineRunner::new();
    let loads = runner.models().load_counter();
    let engine = EngineHandle::spawn(runner, || {}).unwrap();

    let first = recipe(&case, &dir.path().join("first")).unwrap();
    engine
        .send(Command::Submit {
            job_id: 1,
            kind: JobKind::Render(Box::new(first.clone())),
        })
        .unwrap();
    let output = wait(&engine, 1).unwrap();
    let frames = read_frames(&output.path).unwrap();
    let db = psnr(&frames, &expected_frames(&case));
    eprintln!("PSNR vs the official WanI2V.generate frames: {db:.2} dB");
    assert!(db >= 40.0, "PSNR {db:.2} dB < 40 dB");
    assert_eq!(
        loads.load(Ordering::Relaxed),
        4,
        "two experts, text encoder, VAE"
    );

    // Another seed and prompt: nothing reloads.
    let mut second = first;
    second.init_noise = None;
    second.seed = 7;
    second.prompt = "a different prompt".to_owned();
    second.output = dir.path().join("second");
    engine
        .send(Command::Submit {
            job_id: 2,
            kind: JobKind::Render(Box::new(second)),
        })
        .unwrap();
    let output = wait(&engine, 2).unwrap();
    assert_eq!(read_frames(&output.path).unwrap().dims(), frames.dims());
    assert_eq!(
        loads.load(Ordering::Relaxed),
        4,
        "the second job reused every model"
    );
}

/// Cancels the job at its `n`-th `check()` (a deterministic point, unlike a racing command);
/// returns the result and the stages that reported progress.
fn run_cancelled_at(
    n: usize,
    output: &Path,
    interpolation: Interpolation,
) -> (Result<JobOutput, EngineError>, Vec<Stage>) {
    let case = case();
    let mut recipe = recipe(&case, output).unwrap();
    recipe.interpolation = interpolation;
    let checks = Cell::new(0);
    let hook = |ctx: &JobContext<'_>| {
        checks.set(checks.get() + 1);
        if checks.get() == n {
            ctx.cancel_token().cancel();
        }
    };
    let stages = RefCell::new(Vec::new());
    let sink = |event: Event| {
        if let Event::Progress { progress, .. } = event {
            stages.borrow_mut().push(progress.stage);
        }
    };
    let ctx = JobContext::new(1, CancelToken::new(), &sink, Some(&hook));
    let result = PipelineRunner::new().run(&JobKind::Render(Box::new(recipe)), &ctx);
    (result, stages.into_inner())
}

#[test]
fn cancel_while_denoising_or_decoding_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    // Checks: prompt, negative prompt, image, before denoising, 4 steps, before decoding,
    // then one per decoded chunk: 6 and 7 are steps 2 and 3 (timesteps 937, high noise, and
    // 833, low noise), 10 is the first decoded chunk (the writer's partial folder exists then).
    for (n, last_stage) in [
        (6, Stage::DenoisingHighNoise),
        (7, Stage::DenoisingLowNoise),
        (10, Stage::Decoding),
    ] {
        let (result, stages) = run_cancelled_at(n, &dir.path().join("frames"), Interpolation::Off);
        assert!(
            matches!(result, Err(EngineError::Cancelled)),
            "check {n}: {result:?}"
        );
        assert_eq!(stages.last(), Some(&last_stage), "check {n}: {stages:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "check {n} left {left:?}");
    }
}

#[test]
fn cancel_while_interpolating_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    // 9 checks before decoding, 2 decoded chunks, then one per frame pair: 13 is pair 2.
    let x2 = Interpolation::Multiplier { factor: 2 };
    let (result, stages) = run_cancelled_at(13, &dir.path().join("frames"), x2);
    assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    assert_eq!(stages.last(), Some(&Stage::Interpolating), "{stages:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left {left:?}");
}

#[test]
fn interpolation_doubles_the_clip_keeping_the_rendered_frames() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("x2")).unwrap();
    recipe.interpolation = Interpolation::Multiplier { factor: 2 };
    let sink = |_event: Event| {};
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let output = PipelineRunner::new()
        .run(&JobKind::Render(Box::new(recipe)), &ctx)
        .unwrap();
    let frames = read_frames(&output.path).unwrap();
    let expected = expected_frames(&case);
    assert_eq!(frames.dim(0).unwrap(), 9, "(5 - 1) × 2 + 1 frames");
    // RIFE keeps input frame i as output frame 2i, bit for bit.
    let originals = frames
        .index_select(
            &Tensor::new(&[0u32, 2, 4, 6, 8], &candle_core::Device::Cpu).unwrap(),
            0,
        )
        .unwrap();
    let db = psnr(&originals, &expected);
    assert!(
        db >= 40.0,
        "rendered frames inside the interpolated clip: {db:.2} dB"
    );
}

#[test]
fn a_prompt_over_the_token_limit_is_rendered_with_a_warning_event() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let engine = EngineHandle::spawn(PipelineRunner::new(), || {}).unwrap();
    let mut long = recipe(&case, &dir.path().join("long")).unwrap();
    long.prompt = "a small red boat drifts across a calm lake at sunset, ".repeat(80);
    engine
        .send(Command::Submit {
            job_id: 1,
            kind: JobKind::Render(Box::new(long)),
        })
        .unwrap();
    let mut warnings = Vec::new();
    loop {
        match engine
            .events()
            .recv_timeout(Duration::from_mins(1))
            .unwrap()
        {
            Event::Warning { message, .. } => warnings.push(message),
            Event::Finished { .. } => break,
            Event::Failed { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("prompt is longer"), "{warnings:?}");
}

#[test]
fn a_job_over_its_memory_budget_is_refused_before_loading_anything() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let runner = PipelineRunner::new().with_memory_budget(1 << 20);
    let loads = runner.models().load_counter();
    let recipe = recipe(&case, &dir.path().join("frames")).unwrap();
    let events = RefCell::new(Vec::new());
    let sink = |event: Event| events.borrow_mut().push(event);
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let mut runner = runner;
    let error = runner
        .run(&JobKind::Render(Box::new(recipe)), &ctx)
        .unwrap_err();
    let EngineError::MemoryPlanRefused { problem } = &error else {
        panic!("{error:?}");
    };
    assert!(
        problem.contains("smaller resolution") && problem.contains("budget is 0.0 GB"),
        "{problem}"
    );
    assert_eq!(loads.load(Ordering::Relaxed), 0, "nothing was loaded");
    assert!(events.borrow().is_empty(), "{:?}", events.borrow());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_target_fps_resamples_the_render_keeping_frames_on_the_grid() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("fps24")).unwrap();
    // 5 frames at 16 fps to 24 fps: source times 0, 2/3, 4/3, 2, 8/3, 10/3, 4 (in frames).
    recipe.interpolation = Interpolation::TargetFps { fps: 24.0 };
    let sink = |_event: Event| {};
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let output = PipelineRunner::new()
        .run(&JobKind::Render(Box::new(recipe)), &ctx)
        .unwrap();
    let frames = read_frames(&output.path).unwrap();
    assert_eq!(frames.dim(0).unwrap(), 7);
    let on_grid = frames
        .index_select(
            &Tensor::new(&[0u32, 3, 6], &candle_core::Device::Cpu).unwrap(),
            0,
        )
        .unwrap();
    let expected = expected_frames(&case)
        .index_select(
            &Tensor::new(&[0u32, 2, 4], &candle_core::Device::Cpu).unwrap(),
            0,
        )
        .unwrap();
    let db = psnr(&on_grid, &expected);
    assert!(db >= 40.0, "frames on the source grid: {db:.2} dB");
    // (The tiny random model's frames differ like scene cuts, so the off-grid frames here are
    // duplicates; app/tests/cli_interpolate.rs checks new frames on a real photo.)
}
