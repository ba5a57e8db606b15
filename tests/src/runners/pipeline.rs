//! `pipeline`: a whole render through `engine::pipeline::PipelineRunner`, from the case's PNG
//! and model files to PNG frames.
//!
//! `[config]`: `prompt`, `negative_prompt`, `image` (file in the case), `width`, `height`
//! (official fit: max area = width × height), `num_frames`, `steps`, `shift`,
//! `cfg_high_noise`, `cfg_low_noise`, `boundary` (0.9), `sampler` (unipc). Weights, in this
//! order: high-noise expert, low-noise expert, VAE, text encoder (each with its sidecar
//! `<stem>.json` config; `tokenizer.json` beside the text encoder). `inputs`: `noise`, injected.
//! Output: `frames` `[F, H, W, 3]`, the written uint8 frames as f32.
//!
//! The render job picks its dtype from its device (bf16 on CUDA, f32 on the CPU): a bf16 run
//! on CUDA renders there; every other run renders on the CPU in f32 (`runners::dtype_for`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use stillmotion_engine::device::DevicePreference;
use stillmotion_engine::pipeline::PipelineRunner;
use stillmotion_engine::preset::{self, SamplerKind};
use stillmotion_engine::recipe::{Interpolation, ModelFiles, Recipe, RecipeChoices};
use stillmotion_engine::runtime::{CancelToken, Event, JobContext, JobKind, JobRunner};

use super::Outputs;
use crate::golden::Case;

/// The shipped preset whose model family and fps the cases render with.
pub const PRESET: &str = "wan22-i2v-a14b-official-480p";

#[derive(Deserialize)]
struct RenderConfig {
    prompt: String,
    /// Empty (the default) means Wan's default negative prompt, as `generate(n_prompt="")`.
    #[serde(default)]
    negative_prompt: String,
    #[serde(default = "default_image")]
    image: String,
    width: u32,
    height: u32,
    num_frames: u32,
    steps: u32,
    shift: f64,
    cfg_high_noise: f64,
    cfg_low_noise: f64,
    #[serde(default = "default_boundary")]
    boundary: f64,
    #[serde(default = "default_sampler")]
    sampler: SamplerKind,
}

fn default_image() -> String {
    "image.png".to_owned()
}

fn default_boundary() -> f64 {
    0.9
}

fn default_sampler() -> SamplerKind {
    SamplerKind::Unipc
}

/// The case's model files: as the manifest lists them (high-noise expert, low-noise expert,
/// VAE, text encoder), else the generator's names.
fn model_files(case: &Case) -> ModelFiles {
    let listed = &case.manifest.weights;
    let names: [&str; 4] = if listed.len() == 4 {
        [&listed[0], &listed[1], &listed[2], &listed[3]]
    } else {
        [
            "high_noise.safetensors",
            "low_noise.safetensors",
            "wan_2.1_vae.safetensors",
            "umt5.safetensors",
        ]
    };
    ModelFiles {
        model_dir: None,
        high_noise: Some(case.file(names[0])),
        low_noise: Some(case.file(names[1])),
        vae: Some(case.file(names[2])),
        text_encoder: Some(case.file(names[3])),
    }
}

/// The recipe a `pipeline` case describes, writing to `output` (no extension: PNG frames), on
/// the CPU.
pub fn recipe(case: &Case, output: &Path) -> anyhow::Result<Recipe> {
    recipe_on(case, output, DevicePreference::Cpu)
}

fn recipe_on(case: &Case, output: &Path, device: DevicePreference) -> anyhow::Result<Recipe> {
    let cfg: RenderConfig = case.config()?;
    let preset = preset::find(PRESET)?;
    let file = |name: &str| Some(case.file(name));
    let noise = case
        .manifest
        .inputs
        .as_deref()
        .map(|inputs| case.file(inputs));
    let choices = RecipeChoices {
        models: model_files(case),
        image: file(&cfg.image),
        prompt: Some(cfg.prompt),
        negative_prompt: Some(cfg.negative_prompt),
        init_noise: noise,
        width: Some(cfg.width),
        height: Some(cfg.height),
        num_frames: Some(cfg.num_frames),
        steps: Some(cfg.steps),
        sampler: Some(cfg.sampler),
        shift: Some(cfg.shift),
        cfg_high_noise: Some(cfg.cfg_high_noise),
        cfg_low_noise: Some(cfg.cfg_low_noise),
        boundary: Some(cfg.boundary),
        interpolation: Some(Interpolation::Off),
        output: Some(output.to_owned()),
        device: Some(device),
        ..RecipeChoices::default()
    };
    Ok(Recipe::from_layers(&preset, choices))
}

/// The PNG frames of a folder the writer made, as `[F, H, W, 3]` f32.
pub fn read_frames(dir: &Path) -> anyhow::Result<Tensor> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "png"));
    files.sort();
    let mut values = Vec::new();
    let (mut width, mut height) = (0, 0);
    for file in &files {
        let frame = stillmotion_engine::image_input::load_rgb8(file, 1 << 24)?;
        (width, height) = (frame.width() as usize, frame.height() as usize);
        values.extend(frame.as_raw().iter().map(|&v| f32::from(v)));
    }
    Ok(Tensor::from_vec(
        values,
        (files.len(), height, width, 3),
        &Device::Cpu,
    )?)
}

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let out_dir = std::env::temp_dir().join(format!(
        "stillmotion-golden-{}-{}",
        case.name,
        std::process::id()
    ));
    std::fs::create_dir_all(&out_dir)?;
    let on = if device.is_cuda() && dtype == DType::BF16 {
        DevicePreference::Cuda
    } else {
        DevicePreference::Cpu
    };
    let recipe = recipe_on(case, &out_dir.join("frames"), on)?;
    let sink = |_event: Event| {};
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let result = PipelineRunner::new().run(&JobKind::Render(Box::new(recipe)), &ctx);
    let frames = result
        .map_err(anyhow::Error::from)
        .and_then(|output| read_frames(&output.path));
    std::fs::remove_dir_all(&out_dir)?;
    Ok(Outputs::from([("frames".to_owned(), frames?)]))
}
