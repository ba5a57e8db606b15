//! `e2e DIR WIDTH HEIGHT FRAMES`: a whole render through the product's engine thread, as the
//! app and the CLI run it: the LightX2V 4-step recipe (Euler, 2 + 2 steps, CFG 1) with RIFE ×2,
//! on the A14B experts at their real size (random weights in ComfyUI's fp8_scaled files, see
//! [`crate::model_files`]), written as PNG frames (this build has no libav).
//!
//! Without budgets, two jobs run back to back: the first loads every model, the second (another
//! seed) reuses them, so its time is what a user waits for each render after the first. With
//! budgets (GiB; 0 for the device's whole memory), each budget gets a fresh engine planning
//! against it (as `--plan-for-vram` does) and one job: the memory plan decides block swapping,
//! the text encoder's and the VAE's placement, and the measured peak shows whether the plan
//! held. Each stage's time, the seconds per denoising step and the peak GPU memory of each
//! stage and job (device-wide, polled every 50 ms) are printed as JSON lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stillmotion_engine::device::DevicePreference;
use stillmotion_engine::gpu_memory::GpuMemoryReader;
use stillmotion_engine::pipeline::PipelineRunner;
use stillmotion_engine::preset;
use stillmotion_engine::recipe::{
    AttentionMode, LoraChoice, MatmulMode, ModelFiles, Recipe, RecipeChoices,
};
use stillmotion_engine::runtime::{Command, EngineHandle, Event, JobKind, Stage};
use stillmotion_engine::wan::LoraMode;

use crate::model_files::ModelSet;
use crate::report::Line;

/// The golden cases' small SentencePiece tokenizer (ids under 100; the table is real-size).
pub const TOKENIZER_JSON: &str =
    include_str!("../../tests/golden/tokenizer_spm_identity_plain/tokenizer.json");

const PRESET: &str = "wan22-i2v-a14b-lightx2v-4step-480p-rife2";

pub fn run(
    dir: &Path,
    width: u32,
    height: u32,
    frames: u32,
    rife: Option<&Path>,
    budgets_gib: &[f64],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let models = ModelSet::in_dir(dir);
    let start = Instant::now();
    let written = models.write_missing(TOKENIZER_JSON)?;
    Line::new("e2e-files")
        .num("gb_written", written as f64 / 1e9)
        .num("secs", start.elapsed().as_secs_f64())
        .print();

    let image = dir.join("source.png");
    write_source_image(&image, width, height)?;
    let preset = preset::find(PRESET)?;
    // Random weights: the preset's LoRA files are not written, so none is looked for.
    let recipe = |seed: u64, name: &str| Recipe {
        preset_lora: None,
        ..Recipe::from_layers(
            &preset,
            RecipeChoices {
                models: ModelFiles {
                    model_dir: None,
                    high_noise: Some(models.high_noise.clone()),
                    low_noise: Some(models.low_noise.clone()),
                    text_encoder: Some(models.text_encoder.clone()),
                    vae: Some(models.vae.clone()),
                },
                image: Some(image.clone()),
                prompt: Some("a lighthouse on a cliff at dusk, waves below".to_owned()),
                seed: Some(seed),
                width: Some(width),
                height: Some(height),
                num_frames: Some(frames),
                output: Some(dir.join(name)),
                device: Some(DevicePreference::Cuda),
                ..RecipeChoices::default()
            },
        )
    };

    let runner = |budget_gib: f64| {
        let mut runner = PipelineRunner::new();
        if let Some(rife) = rife {
            runner = runner.with_rife_weights(rife.to_path_buf());
        }
        if budget_gib > 0.0 {
            runner = runner.with_memory_budget((budget_gib * f64::from(1 << 30)) as u64);
        }
        runner
    };
    // `STILLMOTION_BENCH_BALLAST_GIB` takes that much GPU memory away for the whole run, while
    // the engine plans against the device's total: it must recover from running out of memory.
    let ballast = match std::env::var("STILLMOTION_BENCH_BALLAST_GIB") {
        Ok(gib) => {
            let gib: f64 = gib.parse().context("STILLMOTION_BENCH_BALLAST_GIB")?;
            let values = (gib * f64::from(1 << 30) / 4.0) as usize;
            let device = candle_core::Device::new_cuda(0)?;
            Line::new("e2e-ballast").num("gib", gib).print();
            Some(candle_core::Tensor::zeros(
                values,
                candle_core::DType::F32,
                &device,
            )?)
        }
        Err(_) => None,
    };
    let peak = Arc::new(AtomicU64::new(0));
    let step_peak = Arc::new(AtomicU64::new(0));
    let pool_peaks = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_memory_poller(
        [Arc::clone(&peak), Arc::clone(&step_peak)],
        [Arc::clone(&pool_peaks[0]), Arc::clone(&pool_peaks[1])],
        Arc::clone(&stop),
    )?;
    let jobs: Vec<(f64, Vec<(u64, String)>)> = if budgets_gib.is_empty() {
        vec![(0.0, vec![(1, "cold".to_owned()), (2, "warm".to_owned())])]
    } else {
        budgets_gib
            .iter()
            .zip(1..)
            .map(|(&gib, id)| (gib, vec![(id, format!("budget-{gib}gib"))]))
            .collect()
    };
    // `STILLMOTION_BENCH_MATMUL=fp8`: each engine's last job again with FP8 GEMMs (same seed,
    // models already loaded), and its frames' PSNR against that job's.
    let fp8_too = std::env::var("STILLMOTION_BENCH_MATMUL").is_ok_and(|m| m == "fp8");
    // `STILLMOTION_BENCH_ATTENTION=int8`: the same with the 8-bit attention.
    let int8_too = std::env::var("STILLMOTION_BENCH_ATTENTION").is_ok_and(|m| m == "int8");
    // `STILLMOTION_BENCH_LORA=1`: the same with a rank-64 LoRA on every block's linear layers,
    // merged at load (float8 layers requantized), then on the fly; their frames' PSNR.
    let lora_too = std::env::var("STILLMOTION_BENCH_LORA").is_ok_and(|m| m == "1");
    if lora_too {
        let start = Instant::now();
        let written = models.write_lora()?;
        Line::new("e2e-files")
            .text("file", "lora")
            .num("gb_written", written as f64 / 1e9)
            .num("secs", start.elapsed().as_secs_f64())
            .print();
    }
    for (budget_gib, engine_jobs) in jobs {
        let engine = EngineHandle::spawn(runner(budget_gib), || {})?;
        let mut last = None;
        for (job_id, label) in engine_jobs {
            peak.store(0, Ordering::Relaxed);
            let job = recipe(job_id, &format!("frames-{label}"));
            job.validate()?;
            engine.send(Command::Submit {
                job_id,
                kind: JobKind::Render(Box::new(job)),
            })?;
            let output = watch(&engine, job_id, &label, [&peak, &step_peak], &pool_peaks)?;
            last = Some((job_id, label, output));
        }
        if let Some((seed, label, standard)) = &last {
            let variants: [(bool, &str, RecipeChange); 2] = [
                (fp8_too, "fp8-matmul", |job| job.matmul = MatmulMode::Fp8),
                (int8_too, "int8-attention", |job| {
                    job.attention = AttentionMode::Int8;
                }),
            ];
            for (job_id, (_, name, change)) in (seed + 1000..).zip(variants.iter().filter(|v| v.0))
            {
                peak.store(0, Ordering::Relaxed);
                let label = format!("{label}-{name}");
                let mut job = recipe(*seed, &format!("frames-{label}"));
                change(&mut job);
                engine.send(Command::Submit {
                    job_id,
                    kind: JobKind::Render(Box::new(job)),
                })?;
                let output = watch(&engine, job_id, &label, [&peak, &step_peak], &pool_peaks)?;
                Line::new(&format!("e2e-{name}"))
                    .text("job", &label)
                    .num("psnr_db_vs_standard", frames_psnr(standard, &output)?)
                    .print();
            }
        }
        if let Some((seed, label, _)) = last.as_ref().filter(|_| lora_too) {
            let mut merged = None;
            for (job_id, mode, name) in [
                (seed + 2000, LoraMode::Merge, "lora-merge"),
                (seed + 3000, LoraMode::OnTheFly, "lora-on-the-fly"),
            ] {
                peak.store(0, Ordering::Relaxed);
                let label = format!("{label}-{name}");
                let mut job = recipe(*seed, &format!("frames-{label}"));
                job.loras = vec![LoraChoice {
                    path: models.lora.clone(),
                    strength_high_noise: 1.0,
                    strength_low_noise: 1.0,
                }];
                job.lora_mode = mode;
                engine.send(Command::Submit {
                    job_id,
                    kind: JobKind::Render(Box::new(job)),
                })?;
                let output = watch(&engine, job_id, &label, [&peak, &step_peak], &pool_peaks)?;
                match &merged {
                    None => merged = Some(output),
                    Some(merged) => Line::new("e2e-lora")
                        .text("job", &label)
                        .num("psnr_db_vs_merged", frames_psnr(merged, &output)?)
                        .print(),
                }
            }
        }
        // Dropping the handle shuts the engine down and frees its models before the next one.
        drop(engine);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    drop(ballast);
    Ok(())
}

/// A variant of a render, for its PSNR against the standard one.
type RecipeChange = fn(&mut Recipe);

/// Prints each stage's time as it ends and a summary when the job does.
fn watch(
    engine: &EngineHandle,
    job_id: u64,
    label: &str,
    [peak, step_peak]: [&AtomicU64; 2],
    pool_peaks: &[Arc<AtomicU64>; 2],
) -> anyhow::Result<PathBuf> {
    let start = Instant::now();
    // The peak between two progress reports (one denoising step, one VAE chunk, ...), to find
    // which step of a phase holds its peak.
    let mut step: Option<(Stage, u32, Instant)> = None;
    let mut stage: Option<(Stage, Instant)> = None;
    let mut secs_per_step: Vec<f64> = Vec::new();
    // Each stage reports its own peak (the poller's value is reset as a stage ends); the job's
    // peak is the largest of them.
    let job_peak = std::cell::Cell::new(0_u64);
    let end_stage = |stage: Option<(Stage, Instant)>| {
        if let Some((stage, since)) = stage {
            let stage_peak = peak.swap(0, Ordering::Relaxed);
            job_peak.set(job_peak.get().max(stage_peak));
            Line::new("e2e-stage")
                .text("job", label)
                .text("stage", stage.label())
                .num("secs", since.elapsed().as_secs_f64())
                .num("peak_gib", stage_peak as f64 / f64::from(1 << 30))
                .print();
        }
    };
    loop {
        let event = engine
            .events()
            .recv_timeout(Duration::from_mins(10))
            .context("no event from the engine for 10 minutes")?;
        match event {
            Event::Progress {
                job_id: id,
                progress,
                secs_per_unit,
                ..
            } if id == job_id => {
                if step.is_none_or(|(s, done, _)| (s, done) != (progress.stage, progress.done)) {
                    if let Some((s, done, since)) = step.take() {
                        Line::new("e2e-step")
                            .text("job", label)
                            .text("stage", s.label())
                            .int("done", done as usize)
                            .num("secs", since.elapsed().as_secs_f64())
                            .num(
                                "peak_gib",
                                step_peak.swap(0, Ordering::Relaxed) as f64 / f64::from(1 << 30),
                            )
                            .num(
                                "pool_reserved_gib",
                                pool_peaks[0].swap(0, Ordering::Relaxed) as f64
                                    / f64::from(1 << 30),
                            )
                            .num(
                                "pool_used_gib",
                                pool_peaks[1].swap(0, Ordering::Relaxed) as f64
                                    / f64::from(1 << 30),
                            )
                            .print();
                    }
                    step = Some((progress.stage, progress.done, Instant::now()));
                }
                if stage.is_none_or(|(s, _)| s != progress.stage) {
                    end_stage(stage.take());
                    stage = Some((progress.stage, Instant::now()));
                }
                if matches!(
                    progress.stage,
                    Stage::DenoisingHighNoise | Stage::DenoisingLowNoise
                ) && progress.done > 0
                    && let Some(secs) = secs_per_unit
                {
                    secs_per_step.push(secs);
                }
            }
            Event::MemoryPlan { job_id: id, plan } if id == job_id => {
                Line::new("e2e-plan")
                    .text("job", label)
                    .text("plan", &format!("{plan:?}"))
                    .print();
            }
            Event::Warning {
                job_id: id,
                message,
            } if id == job_id => {
                Line::new("e2e-warning").text("message", &message).print();
            }
            Event::Finished {
                job_id: id,
                output,
                elapsed_secs,
            } if id == job_id => {
                end_stage(stage.take());
                Line::new("e2e")
                    .text("job", label)
                    .num("secs", elapsed_secs)
                    .num("wall_secs", start.elapsed().as_secs_f64())
                    .num(
                        "last_secs_per_step",
                        secs_per_step.last().copied().unwrap_or(0.0),
                    )
                    .num("peak_gib", job_peak.get() as f64 / f64::from(1 << 30))
                    .text("output", &output.path.display().to_string())
                    .print();
                return Ok(output.path);
            }
            Event::Failed {
                job_id: id,
                message,
                ..
            } if id == job_id => {
                end_stage(stage.take());
                bail!("the {label} render failed: {message}");
            }
            Event::Cancelled { job_id: id } if id == job_id => {
                bail!("the {label} render was cancelled")
            }
            _ => {}
        }
    }
}

/// Device-wide peaks (the job's stage and step), and the step's peaks of what the allocator's
/// pool holds from the driver and of its live bytes: where device-wide use exceeds the plan,
/// these say whether live tensors or the pool's kept memory make the difference.
fn spawn_memory_poller(
    peaks: [Arc<AtomicU64>; 2],
    pool_peaks: [Arc<AtomicU64>; 2],
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let reader = GpuMemoryReader::open().context("no GPU memory reading")?;
    let device = candle_core::Device::new_cuda(0)?;
    Ok(std::thread::Builder::new()
        .name("gpu-memory-poller".to_owned())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(memory) = reader.read() {
                    for peak in &peaks {
                        peak.fetch_max(memory.used_bytes(), Ordering::Relaxed);
                    }
                }
                if let Ok(Some(pool)) = stillmotion_kernels::memory_pool::usage(&device) {
                    pool_peaks[0].fetch_max(pool.reserved, Ordering::Relaxed);
                    pool_peaks[1].fetch_max(pool.used, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })?)
}

/// PSNR over every 8-bit value of two frame folders (PNG frames, the same names in both).
fn frames_psnr(a: &Path, b: &Path) -> anyhow::Result<f64> {
    let mut names: Vec<_> = std::fs::read_dir(a)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let (mut squares, mut count) = (0_f64, 0_u64);
    for name in names
        .iter()
        .filter(|n| n.to_string_lossy().ends_with(".png"))
    {
        let x = image::open(a.join(name))?.into_rgb8();
        let y = image::open(b.join(name))?.into_rgb8();
        anyhow::ensure!(
            x.dimensions() == y.dimensions(),
            "{} differs in size",
            name.display()
        );
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            squares += (f64::from(*p) - f64::from(*q)).powi(2);
        }
        count += x.as_raw().len() as u64;
    }
    anyhow::ensure!(count > 0, "no PNG frames in {}", a.display());
    Ok(10.0 * (255.0_f64.powi(2) / (squares / count as f64).max(1e-12)).log10())
}

/// A smooth colour field with a few edges, so the VAE and RIFE see structure.
fn write_source_image(path: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let stripe = if (x / 48 + y / 48) % 2 == 0 {
            40.0
        } else {
            0.0
        };
        image::Rgb([
            (fx * 200.0 + stripe) as u8,
            (fy * 200.0 + stripe) as u8,
            ((1.0 - fx) * 150.0 + 50.0) as u8,
        ])
    });
    image
        .save(path)
        .with_context(|| format!("writing {}", path.display()))
}
