//! The live preview end to end on the tiny pipeline case (CPU, f32): VAE previews come at the
//! expected steps and equal a direct VAE decode of the same clean-latent estimate; the rendered
//! frames are bit-identical with previews on or off; a cancel during a preview's decode stops
//! the job there.
#![allow(clippy::unwrap_used, reason = "test helpers unwrap")]

use std::cell::{Cell, RefCell};
use std::path::Path;

use candle_core::{Device, Tensor};
use stillmotion_engine::EngineError;
use stillmotion_engine::pipeline::resume::{self, SavedState};
use stillmotion_engine::pipeline::{PipelineRunner, sidecar_config};
use stillmotion_engine::recipe::{PreviewMode, Recipe};
use stillmotion_engine::runtime::{
    CancelToken, Event, JobContext, JobKind, JobOutput, JobRunner, Stage,
};
use stillmotion_engine::sampling::{
    Branch, Denoiser, Expert, GuidanceRule, LatentPreview, LoopConfig, PreviewChoice, PreviewKind,
    UniPcConfig, default_schedule, denoise, new_scheduler,
};
use stillmotion_tests::golden::{self, Case};
use stillmotion_tests::runners::pipeline::{read_frames, recipe};

const CASE: &str = "pipeline_i2v_official_tiny";

fn case() -> Case {
    golden::load_case(&golden::committed_dir().join(CASE)).unwrap()
}

/// What a job sent and how it ended.
struct Run {
    result: Result<JobOutput, EngineError>,
    previews: Vec<LatentPreview>,
    choices: Vec<PreviewChoice>,
    /// The highest denoising step reported done.
    steps_done: u32,
}

/// Runs `recipe` on `runner` with previews when `with_previews`; `cancel_when` sees each event
/// (and may cancel with the token), `at_check` runs at every `ctx.check()`.
fn run(
    runner: PipelineRunner,
    recipe: Recipe,
    with_previews: bool,
    cancel_when: &dyn Fn(&Event, &CancelToken),
    at_check: Option<&dyn Fn(&JobContext<'_>)>,
) -> Run {
    let token = CancelToken::new();
    let previews = RefCell::new(Vec::new());
    let choices = RefCell::new(Vec::new());
    let steps_done = Cell::new(0);
    let sink = |event: Event| {
        cancel_when(&event, &token);
        match event {
            Event::Preview { preview, .. } => previews.borrow_mut().push(preview),
            Event::PreviewChoice { choice, .. } => choices.borrow_mut().push(choice),
            Event::Progress { progress, .. }
                if matches!(
                    progress.stage,
                    Stage::DenoisingHighNoise | Stage::DenoisingLowNoise
                ) =>
            {
                steps_done.set(steps_done.get().max(progress.done));
            }
            _ => {}
        }
    };
    let mut ctx = JobContext::new(1, token.clone(), &sink, at_check);
    if with_previews {
        ctx = ctx.with_previews(&sink);
    }
    let mut runner = runner;
    let result = runner.run(&JobKind::Render(Box::new(recipe)), &ctx);
    drop(ctx);
    Run {
        result,
        previews: previews.into_inner(),
        choices: choices.into_inner(),
        steps_done: steps_done.get(),
    }
}

fn better(case: &Case, output: &Path) -> Recipe {
    let mut recipe = recipe(case, output).unwrap();
    recipe.preview = PreviewMode::Better;
    recipe
}

fn kinds(previews: &[LatentPreview]) -> Vec<(usize, PreviewKind)> {
    previews.iter().map(|p| (p.step, p.kind)).collect()
}

/// Hands out a save point's predictions in call order; fails when they run out.
struct Saved(std::vec::IntoIter<Tensor>);

impl Denoiser for Saved {
    fn predict_flow(
        &mut self,
        _latents: &Tensor,
        _timestep: f32,
        _expert: Expert,
        _branch: Branch,
    ) -> Result<Tensor, EngineError> {
        self.0.next().ok_or(EngineError::Cancelled)
    }
}

/// The direct VAE decode (RGB8, as the output's frames) of each high-noise step's clean latent
/// `x − σ·v`, rebuilt from the save point's noise and predictions.
fn direct_decodes(case: &Case, recipe: &Recipe, save_point: &Path) -> Vec<Vec<Vec<u8>>> {
    let hash = resume::recipe_hash(recipe).unwrap();
    let SavedState::HighNoiseDone { noise, predictions } = resume::load(save_point, &hash).unwrap()
    else {
        panic!("the save point after the high-noise phase");
    };
    let vae_path = case.file("wan_2.1_vae.safetensors");
    let cfg =
        serde_json::from_str(&std::fs::read_to_string(sidecar_config(&vae_path).unwrap()).unwrap())
            .unwrap();
    let vae = stillmotion_engine::wan_vae::load(&cfg, &vae_path, &Device::Cpu).unwrap();
    let loop_cfg = LoopConfig {
        boundary: recipe.boundary.unwrap(),
        cfg_high_noise: recipe.cfg_high_noise,
        cfg_low_noise: recipe.cfg_low_noise,
        guidance: GuidanceRule::Official,
    };
    let mut scheduler = new_scheduler(
        recipe.sampler,
        default_schedule(recipe.sampler),
        UniPcConfig::wan22(),
        recipe.steps as usize,
        recipe.shift,
    )
    .unwrap();
    let mut decoded = Vec::new();
    let replayed = denoise(
        &mut Saved(predictions.into_iter()),
        &mut *scheduler,
        noise,
        &loop_cfg,
        |step| {
            let sigma = f64::from(step.sigma.unwrap());
            let x0 = (step.previous - step.flow.affine(sigma, 0.0)?)?.squeeze(0)?;
            let mut frames = Vec::new();
            vae.decode_rgb8_each(&x0, |chunk| {
                frames.extend(chunk.into_iter().map(image::RgbImage::into_raw));
                Ok(())
            })?;
            decoded.push(frames);
            Ok(())
        },
    );
    assert!(
        matches!(replayed, Err(EngineError::Cancelled)),
        "the predictions end with the high-noise phase"
    );
    decoded
}

#[test]
fn vae_previews_come_at_the_expected_steps_and_equal_a_direct_decode_of_the_steps_x0() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();

    // 4 UniPC steps at shift 5, boundary 0.9: timesteps 999, 937 | 833, 624. With a VAE preview
    // every 3 steps: step 0 (the first), step 1 (the switch); step 2 is 1 after the last, step 3
    // is the last (the real decode follows).
    let on = run(
        PipelineRunner::new().with_preview_every(3),
        better(&case, &dir.path().join("on")),
        true,
        &|_, _| {},
        None,
    );
    let rendered = read_frames(&on.result.unwrap().path).unwrap();
    assert_eq!(
        kinds(&on.previews),
        [
            (0, PreviewKind::VaeDecode),
            (1, PreviewKind::VaeDecode),
            (2, PreviewKind::Projection),
            (3, PreviewKind::Projection),
        ]
    );
    assert_eq!(on.choices.len(), 1, "{:?}", on.choices);
    assert_eq!(
        (on.choices[0].kind, on.choices[0].every),
        (PreviewKind::VaeDecode, Some(3))
    );
    let vae_preview = &on.previews[0];
    let (frames, height, width, _) = rendered.dims4().unwrap();
    assert_eq!(
        (
            vae_preview.frames.len(),
            vae_preview.height,
            vae_preview.width
        ),
        (frames, height, width),
        "a small latent decodes whole: the output's frame count and size"
    );

    // The same render without previews writes the same frames, bit for bit.
    let off = run(
        PipelineRunner::new(),
        recipe(&case, &dir.path().join("off")).unwrap(),
        false,
        &|_, _| {},
        None,
    );
    let plain = read_frames(&off.result.unwrap().path).unwrap();
    let difference = stillmotion_tests::compare::max_abs_diff(&rendered, &plain).unwrap();
    assert_eq!(difference, 0.0, "previews must not change the render");
    assert!(off.previews.is_empty() && off.choices.is_empty());

    // Stopped after the high-noise phase, the job leaves its save point: its noise and
    // predictions rebuild each step's x0, whose direct decode is the VAE preview exactly.
    let output = dir.path().join("stopped");
    let stopped = run(
        PipelineRunner::new().with_preview_every(3),
        better(&case, &output),
        true,
        &|event, token| {
            if matches!(event, Event::Preview { preview, .. } if preview.step == 1) {
                token.cancel();
            }
        },
        None,
    );
    assert!(matches!(stopped.result, Err(EngineError::Cancelled)));
    let direct = direct_decodes(
        &case,
        &better(&case, &output),
        &resume::latents_path(&output),
    );
    assert_eq!(direct.len(), 2, "two high-noise steps");
    for (step, expected) in direct.iter().enumerate() {
        assert_eq!(&stopped.previews[step].frames, expected, "step {step}");
        assert_eq!(&on.previews[step].frames, expected, "step {step}");
    }
    assert_ne!(direct[0], direct[1], "the steps' estimates differ");
}

#[test]
fn a_cancel_during_a_vae_preview_stops_its_decode_and_the_job_within_the_step() {
    let case = case();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    // Armed once step 1 of 4 is reported done (its preview comes next); the second check after
    // that is the decode's, after its first latent frame: the cancel lands mid-decode.
    let armed = Cell::new(false);
    let checks = Cell::new(0);
    let hook = |ctx: &JobContext<'_>| {
        if armed.get() {
            checks.set(checks.get() + 1);
            if checks.get() == 2 {
                ctx.cancel_token().cancel();
            }
        }
    };
    let cancelled = run(
        PipelineRunner::new().with_preview_every(1),
        better(&case, &output),
        true,
        &|event, _| {
            if let Event::Progress { progress, .. } = event
                && progress.stage == Stage::DenoisingHighNoise
                && progress.done == 1
            {
                armed.set(true);
            }
        },
        Some(&hook),
    );
    assert!(matches!(cancelled.result, Err(EngineError::Cancelled)));
    assert_eq!(checks.get(), 2, "no check ran after the decode's");
    assert!(cancelled.previews.is_empty(), "the preview was not sent");
    assert_eq!(cancelled.steps_done, 1, "no second step");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
}
