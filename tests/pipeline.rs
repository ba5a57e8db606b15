//! End to end: the `pipeline` golden case rendered through the engine thread and compared by
//! PSNR; a second job reusing the loaded models; a cancel during decoding leaving nothing.
#![allow(clippy::unwrap_used, reason = "test helpers unwrap")]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use candle_core::{DType, Tensor};
use stillmotion_engine::EngineError;
use stillmotion_engine::memory_plan::{DitPlacement, Placement};
use stillmotion_engine::pipeline::PipelineRunner;
use stillmotion_engine::recipe::{Interpolation, Recipe};
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
                ..
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
    let mut recipe = recipe(&case(), output).unwrap();
    recipe.interpolation = interpolation;
    run_recipe_cancelled_at(n, recipe)
}

fn run_recipe_cancelled_at(
    n: usize,
    recipe: Recipe,
) -> (Result<JobOutput, EngineError>, Vec<Stage>) {
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

/// What a cancelled job left in `dir`: nothing, or only its save point.
fn left_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn cancel_while_denoising_or_decoding_leaves_no_output_only_a_save_point() {
    let dir = tempfile::tempdir().unwrap();
    // Checks: prompt, negative prompt, image, before denoising, 4 steps, before decoding,
    // then one per decoded chunk: 5 and 6 are steps 1 and 2 (timesteps 999 and 937, high
    // noise), 7 is step 3 (833, low noise), 10 is the first decoded chunk (the writer's partial
    // folder exists then). From the end of the high-noise phase on, the save point stays.
    let save_point = "frames.latents.safetensors".to_owned();
    for (n, last_stage, left) in [
        (5, Stage::DenoisingHighNoise, vec![]),
        (6, Stage::DenoisingHighNoise, vec![save_point.clone()]),
        (7, Stage::DenoisingLowNoise, vec![save_point.clone()]),
        (10, Stage::Decoding, vec![save_point.clone()]),
    ] {
        let (result, stages) = run_cancelled_at(n, &dir.path().join("frames"), Interpolation::Off);
        assert!(
            matches!(result, Err(EngineError::Cancelled)),
            "check {n}: {result:?}"
        );
        assert_eq!(stages.last(), Some(&last_stage), "check {n}: {stages:?}");
        assert_eq!(left_in(dir.path()), left, "check {n}");
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
    assert_eq!(left_in(dir.path()), ["frames.latents.safetensors"]);
}

/// Runs `recipe` to the end on a fresh runner.
fn render_to_end(recipe: &Recipe) -> Result<JobOutput, EngineError> {
    render_counting_loads(recipe).0
}

/// Runs `recipe` to the end on a fresh runner; also returns how many models it loaded.
fn render_counting_loads(recipe: &Recipe) -> (Result<JobOutput, EngineError>, usize) {
    let sink = |_event: Event| {};
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let mut runner = PipelineRunner::new();
    let result = runner.run(&JobKind::Render(Box::new(recipe.clone())), &ctx);
    (result, runner.models().loads())
}

#[test]
fn a_cancelled_job_resumes_to_the_same_frames_as_an_uninterrupted_run() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let whole = render_to_end(&recipe(&case, &dir.path().join("whole")).unwrap()).unwrap();
    let expected = read_frames(&whole.path).unwrap();
    assert!(!dir.path().join("whole.latents.safetensors").exists());

    // Cancelled in the low-noise phase (check 7) and during decoding (check 10). The noise
    // file is then zeroed: only a real resume (not a restart) still gives the same frames.
    // Resuming loads only what is left to run: text encoder, VAE and the low-noise expert
    // after the high-noise phase; the VAE alone after denoising.
    for (n, loads_on_resume) in [(7, 3), (10, 1)] {
        let out = dir.path().join(format!("resumed-{n}"));
        let noise_file = dir.path().join(format!("noise-{n}.safetensors"));
        std::fs::copy(case.file("inputs.safetensors"), &noise_file).unwrap();
        let mut first = recipe(&case, &out).unwrap();
        first.init_noise = Some(noise_file.clone());
        let (result, _) = run_recipe_cancelled_at(n, first.clone());
        assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
        let noise = candle_core::safetensors::load(&noise_file, &candle_core::Device::Cpu)
            .unwrap()
            .remove("noise")
            .unwrap();
        candle_core::safetensors::save(
            &HashMap::from([("noise", noise.zeros_like().unwrap())]),
            &noise_file,
        )
        .unwrap();
        let mut again = first;
        again.resume = true;
        let (output, loads) = render_counting_loads(&again);
        let output = output.unwrap();
        assert_eq!(loads, loads_on_resume, "check {n}");
        let frames = read_frames(&output.path).unwrap();
        let diff = max_abs_diff(&frames, &expected);
        assert_eq!(diff, 0.0, "check {n}: resumed frames differ");
        assert!(
            !dir.path()
                .join(format!("resumed-{n}.latents.safetensors"))
                .exists(),
            "the save point is removed on success"
        );
        // The stored recipe restores the render, not a resume of it.
        let stored = stillmotion_engine::video::read_recipe(&output.path).unwrap();
        assert!(stored.recipe.get("resume").is_none(), "{}", stored.recipe);
    }
}

#[test]
fn resume_refuses_another_recipe_and_a_missing_save_point() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let mut missing = recipe(&case, &out).unwrap();
    missing.resume = true;
    let message = render_to_end(&missing).unwrap_err().to_string();
    assert!(message.contains("nothing to continue"), "{message}");

    let (result, _) = run_cancelled_at(7, &out, Interpolation::Off);
    assert!(matches!(result, Err(EngineError::Cancelled)));
    let mut other = recipe(&case, &out).unwrap();
    other.resume = true;
    other.prompt = "another prompt".to_owned();
    let error = render_to_end(&other).unwrap_err();
    assert!(
        matches!(error, EngineError::ResumeState { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("different recipe"), "{message}");
    // The output path and interpolation may change: they do not touch the latents.
    let mut same = recipe(&case, &out).unwrap();
    same.resume = true;
    same.interpolation = Interpolation::Multiplier { factor: 2 };
    let frames = read_frames(&render_to_end(&same).unwrap().path).unwrap();
    assert_eq!(frames.dim(0).unwrap(), 9);
}

#[test]
fn interpolation_doubles_the_clip_keeping_the_rendered_frames() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("x2")).unwrap();
    recipe.interpolation = Interpolation::Multiplier { factor: 2 };
    let output = render_to_end(&recipe).unwrap();
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

    // The stored recipe restores the render and fingerprints every model file it used.
    let embedded = stillmotion_engine::video::read_recipe(&output.path).unwrap();
    let restored = Recipe::from_json(&embedded.recipe.to_string()).unwrap();
    assert_eq!(restored, recipe);
    let used: Vec<&str> = embedded
        .model_files
        .iter()
        .map(|f| f.used_as.as_str())
        .collect();
    assert_eq!(
        used,
        ["high_noise", "low_noise", "text_encoder", "vae", "rife"]
    );
    let high = &embedded.model_files[0];
    assert_eq!(high.detected_role, "dit_expert");
    assert_eq!(high.format, "safetensors");
    assert_eq!(
        high.bytes,
        std::fs::metadata(recipe.models.high_noise.as_ref().unwrap())
            .unwrap()
            .len()
    );
    assert_eq!(high.sampled_sha256.len(), 64);
    assert_ne!(high.sampled_sha256, embedded.model_files[1].sampled_sha256);
    assert_eq!(embedded.model_files[3].detected_role, "vae");
    assert_eq!(embedded.model_files[4].format, "pickle");
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

/// Two jobs on one runner with `placement` for the experts and `text` for the text encoder:
/// their frames and the models loaded.
fn two_jobs(
    case: &Case,
    dir: &Path,
    placement: Option<DitPlacement>,
    text: Option<Placement>,
) -> (Vec<Tensor>, usize) {
    let mut runner = PipelineRunner::new();
    if let Some(placement) = placement {
        runner = runner.with_dit_placement(placement);
    }
    if let Some(text) = text {
        runner = runner.with_text_encoder_placement(text);
    }
    let loads = runner.models().load_counter();
    let engine = EngineHandle::spawn(runner, || {}).unwrap();
    let mut frames = Vec::new();
    for job_id in 1..=2 {
        let recipe = recipe(case, &dir.join(format!("job{job_id}"))).unwrap();
        engine
            .send(Command::Submit {
                job_id,
                kind: JobKind::Render(Box::new(recipe)),
            })
            .unwrap();
        let output = wait(&engine, job_id).unwrap();
        frames.push(read_frames(&output.path).unwrap());
    }
    (frames, loads.load(Ordering::Relaxed))
}

#[test]
fn one_expert_at_a_time_reads_each_expert_once_and_gives_the_same_frames() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let plain = read_frames(
        &render_to_end(&recipe(&case, &dir.path().join("plain")).unwrap())
            .unwrap()
            .path,
    )
    .unwrap();
    let db = psnr(&plain, &expected_frames(&case));
    assert!(db >= 40.0, "PSNR {db:.2} dB");
    let swap = DitPlacement::BlockSwap {
        resident_blocks: 1,
        total_blocks: 2,
    };
    for placement in [DitPlacement::OneAtATime, swap] {
        let (frames, loads) = two_jobs(&case, dir.path(), Some(placement), None);
        for (job, frames) in frames.iter().enumerate() {
            assert_eq!(
                max_abs_diff(frames, &plain),
                0.0,
                "{placement:?}, job {job}"
            );
        }
        // Text encoder, VAE, high, low: the expert not in use waits in host memory, so
        // neither phase switch nor the second job reads an expert file again.
        assert_eq!(loads, 4, "{placement:?}");
    }
}

#[test]
fn a_text_encoder_freed_after_encoding_is_not_loaded_again_for_the_same_prompts() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let plain = read_frames(
        &render_to_end(&recipe(&case, &dir.path().join("plain")).unwrap())
            .unwrap()
            .path,
    )
    .unwrap();
    let (frames, loads) = two_jobs(
        &case,
        dir.path(),
        Some(DitPlacement::OneAtATime),
        Some(Placement::DeviceThenFreed),
    );
    for frames in &frames {
        assert_eq!(max_abs_diff(frames, &plain), 0.0);
    }
    // The second job's prompts come from the cache: the encoder, freed after the first job's
    // encoding, is not loaded again.
    assert_eq!(loads, 4, "text encoder, VAE, two experts, each once");
}

/// The case's expert weights, by name.
fn expert_tensors(case: &Case, name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(case.file(name), &candle_core::Device::Cpu).unwrap()
}

/// Writes `tensors` as one f32 safetensors file with the case expert's sidecar config beside it.
fn write_plain(case: &Case, sidecar_of: &str, tensors: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(tensors, path).unwrap();
    copy_sidecar(case, sidecar_of, path);
}

/// Copies the case expert's `<stem>.json` config beside `path` (GGUF and single files carry no
/// head count the loader could read).
fn copy_sidecar(case: &Case, expert: &str, path: &Path) {
    let json = case.file(expert).with_extension("json");
    std::fs::copy(json, path.with_extension("json")).unwrap();
}

/// Whether ComfyUI's fp8_scaled files store this weight as float8: the linear layers of the
/// blocks.
fn is_block_linear(name: &str) -> bool {
    name.starts_with("blocks.")
        && name.ends_with(".weight")
        && [".q.", ".k.", ".v.", ".o.", ".ffn.0.", ".ffn.2."]
            .iter()
            .any(|part| name.contains(part))
}

/// The expert as a ComfyUI fp8_scaled file (float8 e4m3 block weights with a per-tensor
/// `scale_weight`, marked by `scaled_fp8`), and the same weights dequantized to f32.
fn fp8_scaled(
    tensors: &HashMap<String, Tensor>,
) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let mut fp8 = HashMap::new();
    let mut dequantized = HashMap::new();
    for (name, weight) in tensors {
        if !is_block_linear(name) {
            fp8.insert(name.clone(), weight.clone());
            dequantized.insert(name.clone(), weight.clone());
            continue;
        }
        let max = weight
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = max / 448.0;
        let stored = (weight / f64::from(scale))
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap();
        let back = stored
            .to_dtype(DType::F32)
            .unwrap()
            .affine(f64::from(scale), 0.0)
            .unwrap();
        let prefix = name.trim_end_matches(".weight");
        fp8.insert(
            format!("{prefix}.scale_weight"),
            Tensor::new(&[scale], &candle_core::Device::Cpu).unwrap(),
        );
        fp8.insert(name.clone(), stored);
        dequantized.insert(name.clone(), back);
    }
    fp8.insert(
        "scaled_fp8".to_owned(),
        Tensor::zeros(0, DType::F8E4M3, &candle_core::Device::Cpu).unwrap(),
    );
    (fp8, dequantized)
}

/// The expert as a city96-style GGUF file at `path` (`general.architecture = wan`, Q8_0 where
/// rows are whole blocks, F32 elsewhere, the 5-D patch embedding flattened with its
/// `comfy.gguf.orig_shape`); returns the weights the file dequantizes to.
fn write_gguf(tensors: &HashMap<String, Tensor>, path: &Path) -> HashMap<String, Tensor> {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut quantized = Vec::new();
    let mut dequantized = HashMap::new();
    let mut orig_shapes = Vec::new();
    for name in names {
        let tensor = &tensors[name];
        let dims = tensor.dims().to_vec();
        let stored = if dims.len() > 4 {
            orig_shapes.push((
                format!("comfy.gguf.orig_shape.{name}"),
                gguf_file::Value::Array(
                    dims.iter()
                        .map(|&d| gguf_file::Value::U32(u32::try_from(d).unwrap()))
                        .collect(),
                ),
            ));
            tensor
                .reshape((dims[0], dims[1], dims[2..].iter().product::<usize>()))
                .unwrap()
        } else {
            tensor.clone()
        };
        let ggml = if dims.len() == 2 && dims[1].is_multiple_of(32) {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        let q = QTensor::quantize(&stored, ggml).unwrap();
        let back = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .reshape(dims)
            .unwrap();
        dequantized.insert(name.clone(), back);
        quantized.push((name.clone(), q));
    }
    let arch = gguf_file::Value::String("wan".to_owned());
    let mut metadata: Vec<(&str, &gguf_file::Value)> = vec![("general.architecture", &arch)];
    metadata.extend(orig_shapes.iter().map(|(k, v)| (k.as_str(), v)));
    let tensors: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, q)| (k.as_str(), q)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
    dequantized
}

/// The expert as an official sharded release: two shards, their index and `config.json`.
fn write_sharded(case: &Case, expert: &str, tensors: &HashMap<String, Tensor>, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let shard: HashMap<&str, Tensor> = half
            .iter()
            .map(|k| (k.as_str(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(&file)).unwrap();
        for name in half {
            weight_map.insert((*name).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(
        case.file(expert).with_extension("json"),
        dir.join("config.json"),
    )
    .unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    stillmotion_tests::compare::max_abs_diff(a, b).unwrap()
}

#[test]
fn quantized_and_sharded_expert_files_render_the_frames_of_their_dequantized_weights() {
    // fp8_scaled (high noise) and GGUF Q8_0 (low noise) against the weights they dequantize
    // to, written as f32: one as a single file, one as a sharded official folder. The loader
    // dequantizes exactly as written here, so the frames must be identical.
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let (high, low) = ("high_noise.safetensors", "low_noise.safetensors");
    let (fp8, fp8_dequantized) = fp8_scaled(&expert_tensors(&case, high));
    let fp8_path = dir.path().join("high_fp8_scaled.safetensors");
    candle_core::safetensors::save(&fp8, &fp8_path).unwrap();
    copy_sidecar(&case, high, &fp8_path);
    let gguf_path = dir.path().join("low_Q8_0.gguf");
    let gguf_dequantized = write_gguf(&expert_tensors(&case, low), &gguf_path);
    copy_sidecar(&case, low, &gguf_path);

    let mut quantized = recipe(&case, &dir.path().join("quantized")).unwrap();
    quantized.models.high_noise = Some(fp8_path);
    quantized.models.low_noise = Some(gguf_path);
    let frames = read_frames(&render_to_end(&quantized).unwrap().path).unwrap();

    let sharded = dir.path().join("high_sharded");
    write_sharded(&case, high, &fp8_dequantized, &sharded);
    let plain_low = dir.path().join("low_dequantized.safetensors");
    write_plain(&case, low, &gguf_dequantized, &plain_low);
    let mut plain = recipe(&case, &dir.path().join("plain")).unwrap();
    plain.models.high_noise = Some(sharded);
    plain.models.low_noise = Some(plain_low);
    let expected = read_frames(&render_to_end(&plain).unwrap().path).unwrap();

    assert_eq!(max_abs_diff(&frames, &expected), 0.0);
    // Quantizing changed the weights enough to show: a loader that dropped the scales or read
    // the original files would not pass the check above by accident.
    let original = expected_frames(&case);
    let moved = max_abs_diff(&expected, &original);
    eprintln!("quantized weights moved the frames by up to {moved} levels");
    assert!(moved > 0.0);
}

#[test]
fn block_swapping_renders_the_frames_of_resident_experts() {
    // Every block of both experts streams through the two device slots (fp8_scaled high-noise
    // expert, so each streamed layer brings its own scale); the low-noise expert is GGUF, which
    // cannot stream and loads whole with a warning.
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let (high, low) = ("high_noise.safetensors", "low_noise.safetensors");
    let (fp8, _) = fp8_scaled(&expert_tensors(&case, high));
    let fp8_path = dir.path().join("high_fp8_scaled.safetensors");
    candle_core::safetensors::save(&fp8, &fp8_path).unwrap();
    copy_sidecar(&case, high, &fp8_path);
    let gguf_path = dir.path().join("low_Q8_0.gguf");
    write_gguf(&expert_tensors(&case, low), &gguf_path);
    copy_sidecar(&case, low, &gguf_path);
    let mut recipe = recipe(&case, &dir.path().join("resident")).unwrap();
    recipe.models.high_noise = Some(fp8_path);
    recipe.models.low_noise = Some(gguf_path);
    let expected = read_frames(&render_to_end(&recipe).unwrap().path).unwrap();

    let swap = DitPlacement::BlockSwap {
        resident_blocks: 0,
        total_blocks: 2,
    };
    let engine =
        EngineHandle::spawn(PipelineRunner::new().with_dit_placement(swap), || {}).unwrap();
    recipe.output = dir.path().join("swapped");
    engine
        .send(Command::Submit {
            job_id: 1,
            kind: JobKind::Render(Box::new(recipe)),
        })
        .unwrap();
    let mut warnings = Vec::new();
    let output = loop {
        match engine
            .events()
            .recv_timeout(Duration::from_mins(2))
            .unwrap()
        {
            Event::Warning { message, .. } => warnings.push(message),
            Event::Finished { output, .. } => break output,
            Event::Failed { message, .. } => panic!("{message}"),
            _ => {}
        }
    };
    assert_eq!(
        max_abs_diff(&read_frames(&output.path).unwrap(), &expected),
        0.0
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("GGUF") && w.contains("low_Q8_0.gguf")),
        "{warnings:?}"
    );
}

/// Renders `recipe` on the CPU, planned against `budget`: its frames and the job's memory plan.
fn render_planned(
    recipe: &Recipe,
    budget: Option<u64>,
) -> (Tensor, stillmotion_engine::memory_plan::MemoryPlan) {
    let plans = RefCell::new(Vec::new());
    let sink = |event: Event| {
        if let Event::MemoryPlan { plan, .. } = event {
            plans.borrow_mut().push(*plan);
        }
    };
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let mut runner = PipelineRunner::new();
    if let Some(bytes) = budget {
        runner = runner.with_memory_budget(bytes);
    }
    let output = runner
        .run(&JobKind::Render(Box::new(recipe.clone())), &ctx)
        .unwrap();
    let plan = plans.borrow_mut().pop().unwrap();
    (read_frames(&output.path).unwrap(), plan)
}

/// A budget under the whole-frame image encode makes the plan tile it (and the decode), and the
/// render encodes the conditioning clip in those tiles: its frames against the untiled render's.
///
/// Three renders of the case's tiny models at 384×320 (48×40 latents), the VAE's attention off:
/// untiled; the decode alone tiled (room for the whole encode only); encode and decode tiled.
/// The bounds are the VAE's own seams: the decode's, asserted at 40 dB or more at these tile
/// sizes (`wan_vae/tiled_decode.rs`), measured 47.1 dB here; the encode's change reaches the
/// frames through the conditioning, and the pipeline's smallest encode tiles give 36.0 dB in a
/// decoded round trip of a white-noise clip (`wan_vae/tiled_encode.rs`), measured 39.4 dB here:
/// 35 dB leaves margin yet fails a misplaced tile or blend (per-tile attention alone, with the
/// case's VAE as it is, brought the frames to 29 dB in quarter-overlap encode tiles). The tiled render must also differ from the
/// decode-only one, or the encode was not tiled.
#[test]
fn a_budget_that_tiles_the_image_encode_renders_the_untiled_frames_within_the_seams() {
    use stillmotion_engine::memory_plan::RUNTIME_OVERHEAD;
    use stillmotion_engine::recipe::ImageFit;

    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("whole")).unwrap();
    // 384×320 (48×40 latents): the smallest decode tiles (32 latents) fit where the whole-frame
    // encode does not.
    recipe.init_noise = None;
    recipe.seed = 5;
    recipe.width = 384;
    recipe.height = 320;
    recipe.image_fit = ImageFit::CenterCrop;
    // The case's VAE without its attention (output projections zeroed): a tile's attention
    // sees only its tile, which no overlap can make up for.
    let vae_name = "wan_2.1_vae.safetensors";
    let vae = expert_tensors(&case, vae_name)
        .into_iter()
        .map(|(k, v)| {
            let v = if k.ends_with("proj.weight") {
                v.zeros_like().unwrap()
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let vae_path = dir.path().join(vae_name);
    write_plain(&case, vae_name, &vae, &vae_path);
    recipe.models.vae = Some(vae_path);
    let (whole, whole_plan) = render_planned(&recipe, None);
    assert_eq!(
        (whole_plan.vae_tile, whole_plan.vae_encode_tile),
        (None, None)
    );
    let p = &whole_plan.predicted;
    let fixed = p.high_noise_weights + p.low_noise_weights + p.vae_weights + RUNTIME_OVERHEAD;
    // Room for the whole-frame encode but not the whole-frame decode: the decode alone tiles.
    recipe.output = dir.path().join("decode_tiled");
    let (decode_tiled, plan) = render_planned(&recipe, Some(fixed + p.vae_encode_peak));
    assert!(
        plan.vae_tile.is_some() && plan.vae_encode_tile.is_none(),
        "{}",
        plan.summary()
    );
    // A quarter less: the encode tiles too.
    recipe.output = dir.path().join("tiled");
    let (tiled, plan) = render_planned(&recipe, Some(fixed + p.vae_encode_peak * 3 / 4));
    assert!(
        plan.vae_encode_tile.is_some() && plan.vae_tile.is_some(),
        "{}",
        plan.summary()
    );
    let decode_db = psnr(&decode_tiled, &whole);
    let encode_db = psnr(&tiled, &decode_tiled);
    eprintln!(
        "tiled decode vs untiled render: PSNR {decode_db:.2} dB; tiled encode and decode vs tiled decode: {encode_db:.2} dB; vs untiled: {:.2} dB",
        psnr(&tiled, &whole)
    );
    assert!(decode_db >= 40.0, "tiled decode: PSNR {decode_db:.2} dB");
    assert!(encode_db.is_finite(), "the image encode was not tiled");
    assert!(encode_db >= 35.0, "tiled encode: PSNR {encode_db:.2} dB");
}

/// A LoRA for `tensors` (rank 4 on every block linear, up @ down entries up to a fifth of the
/// weight's largest value, about an e4m3 step of the stored values), in ComfyUI's key style.
fn lora_for(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let dev = candle_core::Device::Cpu;
    let rank = 4;
    let ramp = |n: usize, phase: f32| -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + phase) * 0.737).sin()).collect()
    };
    let mut lora = HashMap::new();
    let mut phase = 0.0;
    let mut names: Vec<&String> = tensors.keys().filter(|n| is_block_linear(n)).collect();
    names.sort();
    for name in names {
        let (out, inp) = tensors[name].dims2().unwrap();
        let amax = tensors[name]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Entries of up @ down are sums of `rank` products of values in [-1, 1] × [-s, s].
        let s = f64::from(amax) / 5.0 / rank as f64;
        let down = Tensor::from_vec(ramp(rank * inp, phase), (rank, inp), &dev).unwrap();
        let up = (Tensor::from_vec(ramp(out * rank, phase + 0.5), (out, rank), &dev).unwrap() * s)
            .unwrap();
        phase += 1.0;
        let module = name.trim_end_matches(".weight");
        lora.insert(format!("diffusion_model.{module}.lora_down.weight"), down);
        lora.insert(format!("diffusion_model.{module}.lora_up.weight"), up);
    }
    lora
}

/// fp8_scaled experts with a LoRA on every block linear, requantized to float8 (stochastic
/// rounding) against the same LoRA merged into compute-dtype (f32 here) layers. Stochastic
/// rounding keeps each weight's expectation but adds noise of up to a quarter step² per weight
/// (more than round to nearest's twelfth): at the tiny case's widths (few terms per dot
/// product to average it) the frames stay 29.5 dB from the exact merge (max 141 levels), about
/// what quantizing the original weights to fp8 costs (31.0 dB), and far closer than without
/// the LoRA (its effect: 21.5 dB). Bounds: 26 dB, and 5 dB better than dropping the LoRA. The
/// plan counts the requantized layers at one byte a weight. Applied on the fly instead
/// (`lora_mode`), the LoRA gives the exact merge's frames (float32 rounding apart) with the
/// layers float8 plus the factors.
#[test]
fn a_lora_requantized_into_fp8_layers_renders_close_to_the_exact_merge() {
    use stillmotion_engine::recipe::LoraChoice;
    use stillmotion_engine::wan::{LoraMode, LoraRequantize};

    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("none")).unwrap();
    let mut original = recipe.clone();
    let mut loras = Vec::new();
    for (expert, name) in [
        ("high", "high_noise.safetensors"),
        ("low", "low_noise.safetensors"),
    ] {
        let tensors = expert_tensors(&case, name);
        let (fp8, _) = fp8_scaled(&tensors);
        let path = dir.path().join(format!("{expert}_fp8_scaled.safetensors"));
        candle_core::safetensors::save(&fp8, &path).unwrap();
        copy_sidecar(&case, name, &path);
        let lora_path = dir.path().join(format!("{expert}_lora.safetensors"));
        candle_core::safetensors::save(&lora_for(&tensors), &lora_path).unwrap();
        let high = f64::from(u8::from(expert == "high"));
        loras.push(LoraChoice {
            path: lora_path,
            strength_high_noise: high,
            strength_low_noise: 1.0 - high,
        });
        if expert == "high" {
            recipe.models.high_noise = Some(path);
        } else {
            recipe.models.low_noise = Some(path);
        }
    }
    // The case's own (f32) experts with the LoRA: what quantizing to fp8 costs.
    original.loras.clone_from(&loras);
    original.output = dir.path().join("original");
    let (original_frames, _) = render_planned(&original, None);
    let (without, _) = render_planned(&recipe, None);
    recipe.loras = loras;
    recipe.lora_mode = LoraMode::Merge;
    recipe.lora_requantize = LoraRequantize::Never;
    recipe.output = dir.path().join("exact");
    let (exact, exact_plan) = render_planned(&recipe, None);
    recipe.lora_requantize = LoraRequantize::Always;
    recipe.output = dir.path().join("requantized");
    let (requantized, plan) = render_planned(&recipe, None);
    // Auto on the CPU keeps the exact merge.
    recipe.lora_requantize = LoraRequantize::Auto;
    recipe.output = dir.path().join("auto");
    let (auto, _) = render_planned(&recipe, None);
    assert_eq!(max_abs_diff(&auto, &exact), 0.0);

    let db = psnr(&requantized, &exact);
    let lora_db = psnr(&without, &exact);
    let fp8_db = psnr(&exact, &original_frames);
    eprintln!(
        "fp8 + LoRA requantized vs exact merge: PSNR {db:.2} dB (max {} levels); fp8 vs original weights (both with the LoRA): {fp8_db:.2} dB; without the LoRA vs with: {lora_db:.2} dB",
        max_abs_diff(&requantized, &exact)
    );
    assert!(db >= 26.0, "requantized: PSNR {db:.2} dB");
    assert!(db > lora_db + 5.0, "{db:.2} vs {lora_db:.2} dB");

    // The merged float8 layers: four bytes a weight in the exact f32 merge, one requantized.
    let block_linears: u64 = expert_tensors(&case, "high_noise.safetensors")
        .iter()
        .filter(|(n, _)| is_block_linear(n))
        .map(|(_, t)| t.elem_count() as u64)
        .sum();
    let (e, r) = (&exact_plan.predicted, &plan.predicted);
    assert_eq!(
        e.high_noise_weights - r.high_noise_weights,
        3 * block_linears
    );

    recipe.lora_mode = LoraMode::OnTheFly;
    recipe.output = dir.path().join("on_the_fly");
    let (on_the_fly, fly_plan) = render_planned(&recipe, None);
    let levels = max_abs_diff(&on_the_fly, &exact);
    eprintln!("fp8 + LoRA on the fly vs exact merge: max {levels} levels");
    assert!(levels <= 1.0, "{levels}");
    // Rank-4 float32 factors beside each float8 block linear.
    let factors: u64 = expert_tensors(&case, "high_noise.safetensors")
        .iter()
        .filter(|(n, _)| is_block_linear(n))
        .map(|(_, t)| {
            let (out, inp) = t.dims2().unwrap();
            4 * (out + inp) as u64
        })
        .sum();
    assert_eq!(
        fly_plan.predicted.high_noise_weights - r.high_noise_weights,
        4 * factors
    );
}

/// `matmul = fp8` on fp8_scaled experts: every float8 block linear multiplies in FP8 with its
/// input quantized per tensor (on the CPU, the arithmetic the GPU's FP8 GEMM is checked
/// against), so the frames move away from the dequantized render, but not far; the option is
/// stored in the recipe and changes nothing on experts without float8 weights.
#[test]
fn fp8_matmul_on_fp8_scaled_experts_renders_close_to_the_dequantized_product() {
    use stillmotion_engine::recipe::MatmulMode;

    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = recipe(&case, &dir.path().join("plain")).unwrap();
    let (plain_experts, _) = render_planned(&recipe, None);
    recipe.matmul = MatmulMode::Fp8;
    recipe.output = dir.path().join("plain_fp8");
    let (plain_fp8, _) = render_planned(&recipe, None);
    assert_eq!(max_abs_diff(&plain_fp8, &plain_experts), 0.0);

    for (expert, name) in [
        ("high", "high_noise.safetensors"),
        ("low", "low_noise.safetensors"),
    ] {
        let (fp8, _) = fp8_scaled(&expert_tensors(&case, name));
        let path = dir.path().join(format!("{expert}_fp8_scaled.safetensors"));
        candle_core::safetensors::save(&fp8, &path).unwrap();
        copy_sidecar(&case, name, &path);
        if expert == "high" {
            recipe.models.high_noise = Some(path);
        } else {
            recipe.models.low_noise = Some(path);
        }
    }
    recipe.matmul = MatmulMode::Standard;
    recipe.output = dir.path().join("dequantized");
    let (dequantized, _) = render_planned(&recipe, None);
    recipe.matmul = MatmulMode::Fp8;
    recipe.output = dir.path().join("fp8");
    let (fp8, _) = render_planned(&recipe, None);
    let db = psnr(&fp8, &dequantized);
    let weights_db = psnr(&dequantized, &plain_experts);
    eprintln!(
        "fp8 matmul vs dequantized: PSNR {db:.2} dB (max {} levels); fp8 weights vs the f32 experts: {weights_db:.2} dB",
        max_abs_diff(&fp8, &dequantized)
    );
    assert!(
        max_abs_diff(&fp8, &dequantized) > 0.0,
        "the FP8 product was not used"
    );
    assert!(db >= 25.0, "fp8 matmul: PSNR {db:.2} dB");
}
