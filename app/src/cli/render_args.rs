//! Flags of `stillmotion render`, and their translation into a recipe.

use std::path::PathBuf;

use anyhow::{Context, bail};
use stillmotion_engine::EngineError;
use stillmotion_engine::device::DevicePreference;
use stillmotion_engine::pipeline::PipelineRunner;
use stillmotion_engine::preset::{self, SamplerKind};
use stillmotion_engine::recipe::{
    AttentionMode, ImageFit, Interpolation, LoraChoice, MatmulMode, ModelFiles, Recipe,
    RecipeChoices, VideoCodec,
};
use stillmotion_engine::wan::{LoraMode, LoraRequantize};

/// The preset used when `--preset` is not given: what most users run.
pub const DEFAULT_PRESET: &str = "wan22-i2v-a14b-lightx2v-4step-480p";

/// `stillmotion render`: one recipe, rendered headless.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RenderArgs {
    /// The still image to animate.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// What should happen in the clip.
    #[arg(long)]
    pub prompt: Option<String>,
    /// What to avoid (default: Wan's own negative prompt).
    #[arg(long)]
    pub negative: Option<String>,
    /// A shipped preset (file stem or name) or a preset TOML file.
    #[arg(long, default_value = DEFAULT_PRESET)]
    pub preset: String,
    /// A diffusers-format Wan2.2 folder (with model_index.json).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// High-noise expert (or the only DiT for TI2V-5B), original/ComfyUI layout.
    #[arg(long)]
    pub high_noise: Option<PathBuf>,
    /// Low-noise expert, original/ComfyUI layout.
    #[arg(long)]
    pub low_noise: Option<PathBuf>,
    /// umT5 text encoder file.
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// Wan VAE file.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// A LoRA: FILE:STRENGTH (both experts) or FILE:HIGH:LOW. Repeatable.
    #[arg(long, value_parser = parse_lora)]
    pub lora: Vec<LoraChoice>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// Number of frames, 4n+1 (81 = 5 s at 16 fps).
    #[arg(long)]
    pub frames: Option<u32>,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    #[arg(long, allow_negative_numbers = true)]
    pub shift: Option<f64>,
    /// Guidance scale: one value for both experts, or HIGH,LOW.
    #[arg(long, value_parser = parse_cfg)]
    pub cfg: Option<(f64, f64)>,
    /// Timestep fraction where the low-noise expert takes over (0.9 for I2V).
    #[arg(long)]
    pub boundary: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Initial latent noise: a safetensors file with tensor `noise`.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// How the image is fitted: official (keep aspect, no crop) or crop (fill and centre-crop).
    #[arg(long, value_enum)]
    pub fit: Option<FitArg>,
    /// RIFE frame multiplier (1 = off).
    #[arg(long, conflicts_with = "interpolate_fps")]
    pub interpolate: Option<u32>,
    /// Interpolate to this frame rate (e.g. 24, 30, 29.97) instead of a multiplier.
    #[arg(long = "target-fps", visible_alias = "interpolate-fps")]
    pub interpolate_fps: Option<f64>,
    /// Output: a video file (.mp4, .webm, .webp, .gif) or a folder for PNG frames.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Video codec where the container offers a choice: h264 (the .mp4 default), h265 (.mp4,
    /// tagged hvc1 for Apple players), vp9 (.webm).
    #[arg(long, value_enum)]
    pub codec: Option<CodecArg>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Self-attention on the GPU: standard (16-bit, the reference's numbers) or int8 (our 8-bit
    /// kernel: faster on RTX 40/50 GPUs, slightly different pixels).
    #[arg(long, value_enum)]
    pub attention: Option<AttentionArg>,
    /// Float8 (fp8_scaled) weights on the GPU: standard (dequantized for each GEMM, the
    /// reference's numbers) or fp8 (FP8 GEMMs on RTX 40/50, H100 and H200: faster, slightly
    /// different pixels).
    #[arg(long, value_enum)]
    pub matmul: Option<MatmulArg>,
    /// A LoRA merged into float8 (fp8_scaled) layers: auto (back to float8 on a GPU, exact on
    /// the CPU), always (back to float8 with stochastic rounding: the file's memory), never
    /// (kept in the compute dtype: exact, twice the memory of those layers).
    #[arg(long, value_enum)]
    pub lora_requantize: Option<LoraRequantizeArg>,
    /// LoRA low-rank pairs: auto (applied on the fly on GGUF layers, and on float8 layers
    /// unless requantized; merged elsewhere), merge (into every weight at load), on-the-fly
    /// (no weight changes: the factors kept beside each layer, two small products more a call).
    #[arg(long, value_enum)]
    pub lora_mode: Option<LoraModeArg>,
    /// GPU memory to leave free for other programs, in GB.
    #[arg(long, allow_negative_numbers = true)]
    pub reserve_vram: Option<f64>,
    /// Plan the render as if the device had this much memory, in GB (to see what a smaller GPU
    /// would do; on the CPU, to get a plan at all). The reserve is not subtracted.
    #[arg(long, value_name = "GB")]
    pub plan_for_vram: Option<f64>,
    /// Continue an interrupted render from the latents saved beside --out
    /// (`<out>.latents.safetensors`), with the same settings.
    #[arg(long)]
    pub resume: bool,
    /// Print one JSON event per line on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SamplerArg {
    Euler,
    Unipc,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum CodecArg {
    H264,
    H265,
    Vp9,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FitArg {
    Official,
    Crop,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AttentionArg {
    Standard,
    Int8,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MatmulArg {
    Standard,
    Fp8,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LoraRequantizeArg {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LoraModeArg {
    Auto,
    Merge,
    OnTheFly,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl RenderArgs {
    /// The runner these flags ask for (`--plan-for-vram` replaces the device's memory).
    pub fn runner(&self) -> anyhow::Result<PipelineRunner> {
        let runner = PipelineRunner::new();
        Ok(match self.plan_for_vram {
            None => runner,
            Some(gb) if gb.is_finite() && gb > 0.0 => {
                // `as` saturates: absurd sizes plan as unlimited.
                let bytes = (gb * 1024.0 * 1024.0 * 1024.0) as u64;
                runner.with_memory_budget(bytes)
            }
            Some(gb) => bail!("--plan-for-vram must be a positive number of GB, got {gb}"),
        })
    }

    /// The validated recipe these flags describe.
    pub fn to_recipe(&self) -> anyhow::Result<Recipe> {
        let preset = preset::find(&self.preset)?;
        let interpolation = match (self.interpolate, self.interpolate_fps) {
            (Some(1), None) => Some(Interpolation::Off),
            (Some(factor), None) => Some(Interpolation::Multiplier { factor }),
            (None, Some(fps)) => Some(Interpolation::TargetFps { fps }),
            (None, None) => None,
            (Some(_), Some(_)) => bail!("give --interpolate or --target-fps, not both"),
        };
        let choices = RecipeChoices {
            models: ModelFiles {
                model_dir: self.model_dir.clone(),
                high_noise: self.high_noise.clone(),
                low_noise: self.low_noise.clone(),
                text_encoder: self.text_encoder.clone(),
                vae: self.vae.clone(),
            },
            loras: self.lora.clone(),
            image: self.image.clone(),
            image_fit: self.fit.map(|fit| match fit {
                FitArg::Official => ImageFit::Official,
                FitArg::Crop => ImageFit::CenterCrop,
            }),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative.clone(),
            seed: self.seed,
            init_noise: self.init_noise.clone(),
            width: self.width,
            height: self.height,
            num_frames: self.frames,
            steps: self.steps,
            sampler: self.sampler.map(|sampler| match sampler {
                SamplerArg::Euler => SamplerKind::Euler,
                SamplerArg::Unipc => SamplerKind::Unipc,
            }),
            shift: self.shift,
            cfg_high_noise: self.cfg.map(|(high, _)| high),
            cfg_low_noise: self.cfg.map(|(_, low)| low),
            boundary: self.boundary,
            interpolation,
            output: self.out.clone(),
            codec: self.codec.map(|codec| match codec {
                CodecArg::H264 => VideoCodec::H264,
                CodecArg::H265 => VideoCodec::H265,
                CodecArg::Vp9 => VideoCodec::Vp9,
            }),
            reserve_vram_gb: self.reserve_vram,
            device: self.device.map(|device| match device {
                DeviceArg::Auto => DevicePreference::Auto,
                DeviceArg::Cpu => DevicePreference::Cpu,
                DeviceArg::Cuda => DevicePreference::Cuda,
            }),
            attention: self.attention.map(|attention| match attention {
                AttentionArg::Standard => AttentionMode::Standard,
                AttentionArg::Int8 => AttentionMode::Int8,
            }),
            matmul: self.matmul.map(|matmul| match matmul {
                MatmulArg::Standard => MatmulMode::Standard,
                MatmulArg::Fp8 => MatmulMode::Fp8,
            }),
            lora_requantize: self.lora_requantize.map(|choice| match choice {
                LoraRequantizeArg::Auto => LoraRequantize::Auto,
                LoraRequantizeArg::Always => LoraRequantize::Always,
                LoraRequantizeArg::Never => LoraRequantize::Never,
            }),
            lora_mode: self.lora_mode.map(|choice| match choice {
                LoraModeArg::Auto => LoraMode::Auto,
                LoraModeArg::Merge => LoraMode::Merge,
                LoraModeArg::OnTheFly => LoraMode::OnTheFly,
            }),
            // A headless render sends no live previews.
            preview: None,
        };
        let mut recipe = Recipe::from_layers(&preset, choices);
        recipe.resume = self.resume;
        recipe.validate().map_err(|error| match error {
            EngineError::BadRecipe { field, problem } => {
                anyhow::anyhow!("--{} {problem}", flag_for_field(field))
            }
            other => anyhow::Error::new(other),
        })?;
        Ok(recipe)
    }
}

/// The command-line flag that sets a recipe field.
fn flag_for_field(field: &str) -> String {
    match field {
        "cfg_high_noise" | "cfg_low_noise" => "cfg".to_owned(),
        other => other.replace('_', "-"),
    }
}

/// `FILE:STRENGTH` or `FILE:HIGH:LOW` (the file name itself may contain colons).
pub fn parse_lora(text: &str) -> anyhow::Result<LoraChoice> {
    let number =
        |s: &str| -> Option<f64> { s.trim().parse::<f64>().ok().filter(|v| v.is_finite()) };
    let mut parts = text.rsplitn(3, ':');
    let last = parts.next().unwrap_or_default();
    let middle = parts.next();
    let rest = parts.next();
    let (path, high, low) = match (rest, middle.and_then(number), number(last)) {
        (Some(path), Some(high), Some(low)) => (path.to_owned(), high, low),
        (_, _, Some(strength)) if middle.is_some() => {
            let path = text.rsplit_once(':').map(|(p, _)| p).unwrap_or_default();
            (path.to_owned(), strength, strength)
        }
        _ => bail!("expected FILE:STRENGTH or FILE:HIGH:LOW, got {text:?}"),
    };
    if path.is_empty() {
        bail!("the LoRA file is missing in {text:?}");
    }
    Ok(LoraChoice {
        path: PathBuf::from(path),
        strength_high_noise: high,
        strength_low_noise: low,
    })
}

/// `SCALE` (both experts) or `HIGH,LOW`.
pub fn parse_cfg(text: &str) -> anyhow::Result<(f64, f64)> {
    let parse = |s: &str| {
        s.trim()
            .parse::<f64>()
            .with_context(|| format!("{s:?} is not a number"))
    };
    if let Some((high, low)) = text.split_once(',') {
        Ok((parse(high)?, parse(low)?))
    } else {
        let scale = parse(text)?;
        Ok((scale, scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Harness {
        #[command(flatten)]
        args: RenderArgs,
    }

    fn parse(args: &[&str]) -> RenderArgs {
        Harness::try_parse_from(std::iter::once("render").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn lora_and_cfg_forms() {
        let lora = parse_lora("/m/light:x.safetensors:1.5").unwrap();
        assert_eq!(lora.path, PathBuf::from("/m/light:x.safetensors"));
        assert_eq!(
            (lora.strength_high_noise, lora.strength_low_noise),
            (1.5, 1.5)
        );
        let lora = parse_lora("a.safetensors:1:0.5").unwrap();
        assert_eq!(lora.path, PathBuf::from("a.safetensors"));
        assert_eq!(
            (lora.strength_high_noise, lora.strength_low_noise),
            (1.0, 0.5)
        );
        assert!(parse_lora("a.safetensors").is_err());
        assert!(parse_lora(":1").is_err());
        assert_eq!(parse_cfg("3.5").unwrap(), (3.5, 3.5));
        assert_eq!(parse_cfg("4, 3").unwrap(), (4.0, 3.0));
        assert!(parse_cfg("high").is_err());
    }

    #[test]
    fn flags_override_the_preset_and_errors_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            path.display().to_string()
        };
        let (image, high, low, te, vae) =
            (file("i.png"), file("h"), file("l"), file("t"), file("v"));
        // Without the default preset's LoRA beside the experts, the render is refused.
        let lora =
            |noise: &str| format!("wan2.2_i2v_lightx2v_4steps_lora_v1_{noise}_noise.safetensors");
        file(&lora("high"));
        let base = [
            "--image",
            &image,
            "--prompt",
            "waves",
            "--high-noise",
            &high,
            "--low-noise",
            &low,
            "--text-encoder",
            &te,
            "--vae",
            &vae,
        ];
        let message = parse(&base).to_recipe().unwrap_err().to_string();
        assert!(
            message.starts_with("--lora the preset uses the LightX2V 4-step LoRA"),
            "{message}"
        );
        file(&lora("low"));
        let recipe = parse(
            &[
                &base[..],
                &["--steps", "6", "--cfg", "2,1", "--interpolate", "2"],
            ]
            .concat(),
        )
        .to_recipe()
        .unwrap();
        assert_eq!(
            (recipe.steps, recipe.cfg_high_noise, recipe.cfg_low_noise),
            (6, 2.0, 1.0)
        );
        assert_eq!(
            recipe.interpolation,
            Interpolation::Multiplier { factor: 2 }
        );
        assert_eq!(recipe.preset_name, "Wan2.2 14B · 4-step · 480p");
        assert_eq!(recipe.attention, AttentionMode::Standard);
        let int8 = parse(&[&base[..], &["--attention", "int8"]].concat())
            .to_recipe()
            .unwrap();
        assert_eq!(int8.attention, AttentionMode::Int8);
        assert_eq!(recipe.matmul, MatmulMode::Standard);
        let fp8 = parse(&[&base[..], &["--matmul", "fp8"]].concat())
            .to_recipe()
            .unwrap();
        assert_eq!(fp8.matmul, MatmulMode::Fp8);
        assert_eq!(recipe.lora_requantize, LoraRequantize::Auto);
        let exact = parse(&[&base[..], &["--lora-requantize", "never"]].concat())
            .to_recipe()
            .unwrap();
        assert_eq!(exact.lora_requantize, LoraRequantize::Never);
        assert_eq!(recipe.lora_mode, LoraMode::Auto);
        let on_the_fly = parse(&[&base[..], &["--lora-mode", "on-the-fly"]].concat())
            .to_recipe()
            .unwrap();
        assert_eq!(on_the_fly.lora_mode, LoraMode::OnTheFly);

        let message = parse(&[&base[..], &["--frames", "80"]].concat())
            .to_recipe()
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("--frames"), "{message}");
        let message = parse(&[&base[..], &["--cfg", "0.5"]].concat())
            .to_recipe()
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("--cfg"), "{message}");
        let message = parse(&[&base[..], &["--reserve-vram", "-2"]].concat())
            .to_recipe()
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("--reserve-vram"), "{message}");
        let message = parse(&base[2..]).to_recipe().unwrap_err().to_string();
        assert!(message.starts_with("--image"), "{message}");
        let message = parse(&[&base[..], &["--preset", "nope"]].concat())
            .to_recipe()
            .unwrap_err()
            .to_string();
        assert!(message.contains("shipped presets"), "{message}");
    }
}
