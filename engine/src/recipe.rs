//! The render recipe: one serde type that describes a render completely. The GUI, the CLI and
//! the tests all build one; it is embedded in every output so a render can be restored.
//!
//! A recipe is made in layers: a [`Preset`] (shipped or the user's) under the user's choices
//! ([`RecipeChoices`], every field optional). [`Recipe::validate`] rejects a bad recipe before any
//! GPU work with a message that names the field.

use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::device::DevicePreference;
use crate::preset::{ModelFamily, Preset, SamplerKind};

/// The recipe format version this build writes and reads.
pub const RECIPE_FORMAT_VERSION: u32 = 1;

/// The official Wan2.2 default negative prompt (`wan/configs/shared_config.py`), used when the
/// user gives none: the models were trained with it.
pub const WAN_DEFAULT_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// Default GPU memory kept free for the desktop and other programs (ComfyUI users pass 4).
pub const DEFAULT_RESERVE_VRAM_GB: f64 = 4.0;

/// Where the model weights come from: a diffusers-format folder, or individual files in the
/// original/ComfyUI layouts.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFiles {
    /// A folder holding the model files: a diffusers-format Wan2.2 folder (`model_index.json`)
    /// or a models folder (ComfyUI's `models/` layout); individual files override parts.
    pub model_dir: Option<PathBuf>,
    /// The high-noise expert (two-expert models) or the only DiT (TI2V-5B).
    pub high_noise: Option<PathBuf>,
    /// The low-noise expert (two-expert models only).
    pub low_noise: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub vae: Option<PathBuf>,
}

/// A LoRA and its strength on each expert.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraChoice {
    pub path: PathBuf,
    pub strength_high_noise: f64,
    pub strength_low_noise: f64,
}

/// Frame interpolation after decoding.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Interpolation {
    Off,
    /// Insert frames so the clip has (n−1)·factor+1 frames, at `fps × factor`.
    Multiplier {
        factor: u32,
    },
    /// Resample the clip to this frame rate with RIFE's arbitrary timesteps.
    TargetFps {
        fps: f64,
    },
}

/// The video codec of an output whose container offers more than one (MP4: H.264 or H.265).
/// Unset, the extension decides: `.mp4` is H.264, `.webm` is VP9.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoCodec {
    H264,
    H265,
    Vp9,
}

/// How the source image is fitted to the target size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFit {
    /// The official Wan way: keep the aspect, area ≈ width×height, sides multiples of 16, no crop.
    #[default]
    Official,
    /// The ComfyUI way: scale to cover width×height exactly and crop the centre.
    CenterCrop,
}

/// How the transformer's self-attention is computed on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionMode {
    /// 16-bit attention (cuDNN's, or our flash kernel without cuDNN): the reference's numbers
    /// to bf16 precision.
    #[default]
    Standard,
    /// Our 8-bit kernel (INT8 q·kᵀ, FP8 or 16-bit P·V): faster where 8-bit tensor cores are
    /// (RTX 40 and 50 series), slightly different pixels. The CPU ignores it.
    Int8,
}

/// How the transformer multiplies by float8 (fp8_scaled) weights on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulMode {
    /// Each float8 weight is dequantized to the compute dtype for its GEMM: the reference's
    /// arithmetic, to bf16 precision.
    #[default]
    Standard,
    /// FP8 GEMMs (cuBLASLt, float32 accumulation) on GPUs with FP8 tensor cores (RTX 40/50,
    /// H100, H200): each activation is quantized to e4m3 with a per-tensor scale first, as
    /// ComfyUI's fp8 fast mode does, so the pixels differ slightly. The CPU computes the same
    /// arithmetic (the definition the GPU kernel is checked against); GPUs without FP8 tensor
    /// cores, and weights that are not float8, keep the standard path.
    Fp8,
}

/// The live preview a render sends to a caller that asked for previews (the GUI; the CLI asks
/// for none). It never changes the rendered frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreviewMode {
    /// `Better` on a GPU, `Fast` on the CPU (where a VAE decode costs as much as a step).
    #[default]
    Auto,
    /// No live preview.
    Off,
    /// Every step, the cheap latent → RGB projection only.
    Fast,
    /// The projection every step, and every few steps (and at the expert switch) a VAE decode
    /// of the step's clean-latent estimate, when it fits beside the expert in memory and costs
    /// at most about a tenth of the denoising time (`pipeline::better_preview`).
    Better,
}

/// A complete render description.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub format_version: u32,
    /// Which preset the recipe started from (for display; the values below are what counts).
    pub preset_name: String,
    pub model: ModelFamily,
    pub models: ModelFiles,
    pub loras: Vec<LoraChoice>,
    /// The LoRA the preset names (e.g. `lightx2v-4step`): its files are found in the models
    /// folder and added to `loras` for each expert none of those covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset_lora: Option<String>,
    pub image: PathBuf,
    pub image_fit: ImageFit,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Initial latent noise from a safetensors file (tensor `noise`) instead of the seed.
    pub init_noise: Option<PathBuf>,
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub steps: u32,
    pub sampler: SamplerKind,
    pub shift: f64,
    pub cfg_high_noise: f64,
    pub cfg_low_noise: f64,
    pub boundary: Option<f64>,
    pub interpolation: Interpolation,
    /// The output file (`.mp4`, `.webm`, …) or a folder for PNG frames.
    pub output: PathBuf,
    /// The output's codec where its container offers a choice; unset, the extension's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codec: Option<VideoCodec>,
    pub reserve_vram_gb: f64,
    pub device: DevicePreference,
    /// Left out of stored recipes when standard, so those of earlier versions stay the same.
    #[serde(default, skip_serializing_if = "is_default")]
    pub attention: AttentionMode,
    /// Left out of stored recipes when standard, as `attention`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub matmul: MatmulMode,
    /// The live preview (see [`PreviewMode`]); not part of what the render produces.
    #[serde(default, skip_serializing_if = "is_default")]
    pub preview: PreviewMode,
    /// Whether float8 layers a LoRA changes go back to float8 (`wan/lora_requant.rs`); left out
    /// of stored recipes when `auto`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lora_requantize: crate::wan::LoraRequantize,
    /// Whether LoRA pairs are merged at load or applied on the fly (`wan/lora_mode.rs`); left
    /// out of stored recipes when `auto`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub lora_mode: crate::wan::LoraMode,
    /// Continue from the save point beside the output (`<output>.latents.safetensors`)
    /// instead of starting over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
}

/// The user's choices on top of a preset; `None` keeps the preset's value.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecipeChoices {
    pub models: ModelFiles,
    pub loras: Vec<LoraChoice>,
    pub image: Option<PathBuf>,
    pub image_fit: Option<ImageFit>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub seed: Option<u64>,
    pub init_noise: Option<PathBuf>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub num_frames: Option<u32>,
    pub steps: Option<u32>,
    pub sampler: Option<SamplerKind>,
    pub shift: Option<f64>,
    pub cfg_high_noise: Option<f64>,
    pub cfg_low_noise: Option<f64>,
    pub boundary: Option<f64>,
    pub interpolation: Option<Interpolation>,
    pub output: Option<PathBuf>,
    pub codec: Option<VideoCodec>,
    pub reserve_vram_gb: Option<f64>,
    pub device: Option<DevicePreference>,
    pub attention: Option<AttentionMode>,
    pub matmul: Option<MatmulMode>,
    pub lora_requantize: Option<crate::wan::LoraRequantize>,
    pub lora_mode: Option<crate::wan::LoraMode>,
    pub preview: Option<PreviewMode>,
}

impl Recipe {
    /// Layers the user's choices over a preset. Fields with no value anywhere get the product
    /// defaults (Wan's negative prompt, seed 0, `output.mp4`); call [`Recipe::validate`] next.
    #[must_use]
    pub fn from_layers(preset: &Preset, choices: RecipeChoices) -> Self {
        let interpolation = choices.interpolation.unwrap_or(
            match (preset.interpolation_target_fps, preset.interpolation_factor) {
                (Some(fps), _) => Interpolation::TargetFps { fps },
                (None, factor) if factor > 1 => Interpolation::Multiplier { factor },
                (None, _) => Interpolation::Off,
            },
        );
        Self {
            format_version: RECIPE_FORMAT_VERSION,
            preset_name: preset.name.clone(),
            model: preset.model,
            models: choices.models,
            loras: choices.loras,
            preset_lora: preset.lora.clone(),
            image: choices.image.unwrap_or_default(),
            image_fit: choices.image_fit.unwrap_or_default(),
            prompt: choices.prompt.unwrap_or_default(),
            negative_prompt: choices
                .negative_prompt
                .unwrap_or_else(|| WAN_DEFAULT_NEGATIVE_PROMPT.to_owned()),
            seed: choices.seed.unwrap_or(0),
            init_noise: choices.init_noise,
            width: choices.width.unwrap_or(preset.width),
            height: choices.height.unwrap_or(preset.height),
            num_frames: choices.num_frames.unwrap_or(preset.num_frames),
            fps: preset.fps,
            steps: choices.steps.unwrap_or(preset.steps),
            sampler: choices.sampler.unwrap_or(preset.sampler),
            shift: choices.shift.unwrap_or(preset.shift),
            cfg_high_noise: choices.cfg_high_noise.unwrap_or(preset.cfg_high_noise),
            cfg_low_noise: choices.cfg_low_noise.unwrap_or(preset.cfg_low_noise),
            boundary: choices.boundary.or(preset.boundary),
            interpolation,
            output: choices
                .output
                .unwrap_or_else(|| PathBuf::from("output.mp4")),
            codec: choices.codec,
            reserve_vram_gb: choices.reserve_vram_gb.unwrap_or(DEFAULT_RESERVE_VRAM_GB),
            attention: choices.attention.unwrap_or_default(),
            matmul: choices.matmul.unwrap_or_default(),
            preview: choices.preview.unwrap_or_default(),
            lora_requantize: choices.lora_requantize.unwrap_or_default(),
            lora_mode: choices.lora_mode.unwrap_or_default(),
            device: choices.device.unwrap_or_default(),
            resume: false,
        }
    }

    /// Latent frames for this clip: (F − 1) / 4 + 1.
    #[must_use]
    pub fn num_latent_frames(&self) -> u32 {
        (self.num_frames - 1) / 4 + 1
    }

    /// Frame rate of the exported clip, after interpolation.
    #[must_use]
    pub fn output_fps(&self) -> f64 {
        match self.interpolation {
            Interpolation::Off => f64::from(self.fps),
            Interpolation::Multiplier { factor } => f64::from(self.fps) * f64::from(factor),
            Interpolation::TargetFps { fps } => fps,
        }
    }

    /// Checks everything that can be checked before loading a model; the error names the field.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad =
            |field: &'static str, problem: String| Err(EngineError::BadRecipe { field, problem });
        if self.format_version != RECIPE_FORMAT_VERSION {
            return bad(
                "format_version",
                format!(
                    "is {}, this version reads {RECIPE_FORMAT_VERSION}",
                    self.format_version
                ),
            );
        }
        if self.num_frames == 0 || self.num_frames % 4 != 1 {
            return bad(
                "frames",
                format!("must be 4n+1 (e.g. 49, 81), got {}", self.num_frames),
            );
        }
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % 16 != 0 {
                return bad(
                    field,
                    format!("must be a positive multiple of 16, got {value}"),
                );
            }
        }
        if self.steps == 0 || self.steps > 1000 {
            return bad(
                "steps",
                format!("must be within 1..=1000, got {}", self.steps),
            );
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return bad(
                "shift",
                format!("must be a positive number, got {}", self.shift),
            );
        }
        for (field, value) in [
            ("cfg_high_noise", self.cfg_high_noise),
            ("cfg_low_noise", self.cfg_low_noise),
        ] {
            if !(value.is_finite() && (1.0..=30.0).contains(&value)) {
                return bad(field, format!("must be within 1..=30, got {value}"));
            }
        }
        match (self.model, self.boundary) {
            (ModelFamily::Wan22I2vA14b, None) => {
                return bad(
                    "boundary",
                    "is required for the two-expert A14B model (0.9)".to_owned(),
                );
            }
            (_, Some(b)) if !(0.0..=1.0).contains(&b) => {
                return bad("boundary", format!("must be within 0..=1, got {b}"));
            }
            _ => {}
        }
        match self.interpolation {
            Interpolation::Multiplier { factor } if !(1..=16).contains(&factor) => {
                return bad(
                    "interpolate",
                    format!("multiplier must be within 1..=16, got {factor}"),
                );
            }
            Interpolation::TargetFps { fps } => {
                let (lowest, highest) = crate::preset::target_fps_range(self.fps);
                if !(fps.is_finite() && (lowest..=highest).contains(&fps)) {
                    return bad(
                        "interpolate",
                        format!("target fps must be within {lowest}..={highest}, got {fps}"),
                    );
                }
            }
            _ => {}
        }
        if !(self.reserve_vram_gb.is_finite() && self.reserve_vram_gb >= 0.0) {
            return bad(
                "reserve_vram",
                format!("must be 0 or more GB, got {}", self.reserve_vram_gb),
            );
        }
        if self.prompt.trim().is_empty() {
            return bad(
                "prompt",
                "is empty; describe the motion you want".to_owned(),
            );
        }
        require_file("image", &self.image)?;
        if let Some(noise) = &self.init_noise {
            require_file("init_noise", noise)?;
        }
        let files = self.validate_model_files()?;
        for lora in &self.loras {
            require_file("lora", &lora.path)?;
            for value in [lora.strength_high_noise, lora.strength_low_noise] {
                if !(value.is_finite() && (-4.0..=4.0).contains(&value)) {
                    return bad(
                        "lora",
                        format!(
                            "strength must be within -4..=4, got {value}: {}",
                            lora.path.display()
                        ),
                    );
                }
            }
        }
        crate::pipeline::resolve_preset_lora(self.preset_lora.as_deref(), &self.loras, &files)?;
        if self.output.as_os_str().is_empty() {
            return bad("out", "needs a file or folder to write to".to_owned());
        }
        crate::pipeline::format_for_recipe(&self.output, self.codec)?;
        let save_point = crate::pipeline::resume::latents_path(&self.output);
        if self.resume && !save_point.is_file() {
            return bad(
                "resume",
                format!(
                    "has nothing to continue: no saved latents beside the output (run without --resume): {}",
                    save_point.display()
                ),
            );
        }
        Ok(())
    }

    /// The model files, resolved (a models folder fills in what was not given one by one).
    fn validate_model_files(&self) -> Result<ModelFiles, EngineError> {
        // A models folder fills in what was not given one by one (or names what it lacks).
        let files = crate::pipeline::resolve_model_files(&self.models, self.model)?;
        let two_experts = self.model == ModelFamily::Wan22I2vA14b;
        let needed: &[(&'static str, &Option<PathBuf>)] = if two_experts {
            &[
                ("high_noise", &files.high_noise),
                ("low_noise", &files.low_noise),
                ("text_encoder", &files.text_encoder),
                ("vae", &files.vae),
            ]
        } else {
            &[
                ("high_noise", &files.high_noise),
                ("text_encoder", &files.text_encoder),
                ("vae", &files.vae),
            ]
        };
        for (field, path) in needed {
            match path {
                // Diffusers components and official releases are folders.
                Some(path) if path.is_dir() => {}
                Some(path) => require_file(field, path)?,
                None => {
                    return Err(EngineError::BadRecipe {
                        field,
                        problem:
                            "is missing: give the file, or a models folder (ComfyUI's models/ or a diffusers folder) with --model-dir"
                                .to_owned(),
                    });
                }
            }
        }
        if !two_experts && files.low_noise.is_some() {
            return Err(EngineError::BadRecipe {
                field: "low_noise",
                problem: "is only used by the two-expert A14B models; this recipe is for TI2V-5B"
                    .to_owned(),
            });
        }
        Ok(files)
    }

    /// Reads a recipe from JSON (an output's sidecar or metadata).
    pub fn from_json(text: &str) -> Result<Self, EngineError> {
        serde_json::from_str(text).map_err(|error| EngineError::BadRecipe {
            field: "recipe",
            problem: format!("is not a valid Stillmotion recipe ({error})"),
        })
    }

    /// The recipe as pretty JSON (for sidecars and metadata).
    pub fn to_json(&self) -> Result<String, EngineError> {
        serde_json::to_string_pretty(self).map_err(|error| EngineError::BadRecipe {
            field: "recipe",
            problem: format!("cannot be written as JSON ({error})"),
        })
    }
}

/// Interpolating an existing clip with RIFE (`stillmotion interpolate`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpolateRequest {
    /// A video file (MP4, MOV, WebM, GIF) or a folder of PNG frames (sorted by name).
    pub input: PathBuf,
    /// Frame rate of a PNG-frame folder (video files carry their own).
    pub frames_fps: u32,
    /// Output frames per input pair: (n−1)·multiplier+1 frames at fps × multiplier.
    pub multiplier: u32,
    /// Resample to this frame rate instead of multiplying (RIFE at fractional timesteps;
    /// frames that fall on source frames are copied exactly).
    #[serde(default)]
    pub target_fps: Option<f64>,
    /// Also interpolate from the last frame back to the first (for loops).
    pub loop_clip: bool,
    /// A video file, or a folder (no extension) for PNG frames.
    pub output: PathBuf,
}

impl InterpolateRequest {
    /// Checks the request before any work; the error names the flag.
    pub fn validate(&self) -> Result<(), EngineError> {
        if !(self.input.is_file() || self.input.is_dir()) {
            return Err(EngineError::BadRecipe {
                field: "in",
                problem: format!("does not exist: {}", self.input.display()),
            });
        }
        if let Some(fps) = self.target_fps
            && !(fps.is_finite() && fps > 0.0 && fps <= 240.0)
        {
            return Err(EngineError::BadRecipe {
                field: "target-fps",
                problem: format!("must be within 0..=240 frames per second, got {fps}"),
            });
        }
        if self.target_fps.is_some() && self.loop_clip {
            return Err(EngineError::BadRecipe {
                field: "loop",
                problem: "works with --multiplier only, not with --target-fps".to_owned(),
            });
        }
        if self.target_fps.is_none() && !(2..=16).contains(&self.multiplier) {
            return Err(EngineError::BadRecipe {
                field: "multiplier",
                problem: format!("must be within 2..=16, got {}", self.multiplier),
            });
        }
        if self.frames_fps == 0 {
            return Err(EngineError::BadRecipe {
                field: "fps",
                problem: "must be at least 1".to_owned(),
            });
        }
        if self.output.as_os_str().is_empty() {
            return Err(EngineError::BadRecipe {
                field: "out",
                problem: "needs a file or folder to write to".to_owned(),
            });
        }
        Ok(())
    }
}

fn require_file(field: &'static str, path: &Path) -> Result<(), EngineError> {
    if path.as_os_str().is_empty() {
        return Err(EngineError::BadRecipe {
            field,
            problem: "is missing".to_owned(),
        });
    }
    if !path.is_file() {
        return Err(EngineError::BadRecipe {
            field,
            problem: format!("does not exist or is not a file: {}", path.display()),
        });
    }
    Ok(())
}

/// Whether `value` is its type's default: the recipe leaves such choices out when it is stored,
/// so recipes written before a choice existed, and their save points' hashes, stay the same.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(name: &str) -> Preset {
        Preset::load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../presets")
                .join(name),
        )
        .unwrap()
    }

    struct Files {
        _dir: tempfile::TempDir,
        choices: RecipeChoices,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            path
        };
        let choices = RecipeChoices {
            models: ModelFiles {
                high_noise: Some(touch("high.safetensors")),
                low_noise: Some(touch("low.safetensors")),
                text_encoder: Some(touch("umt5.safetensors")),
                vae: Some(touch("vae.safetensors")),
                model_dir: None,
            },
            image: Some(touch("in.png")),
            prompt: Some("a cat turns its head".to_owned()),
            ..RecipeChoices::default()
        };
        // The 4-step presets' LoRA, beside the experts.
        for noise in ["high", "low"] {
            touch(&format!(
                "wan2.2_i2v_lightx2v_4steps_lora_v1_{noise}_noise.safetensors"
            ));
        }
        Files { _dir: dir, choices }
    }

    #[test]
    fn choices_layer_over_the_preset() {
        let files = files();
        let preset = preset("wan22-i2v-a14b-lightx2v-4step-480p-rife2.toml");
        let recipe = Recipe::from_layers(
            &preset,
            RecipeChoices {
                steps: Some(6),
                seed: Some(42),
                ..files.choices.clone()
            },
        );
        recipe.validate().unwrap();
        assert_eq!(
            (recipe.steps, recipe.seed, recipe.width, recipe.num_frames),
            (6, 42, 832, 81)
        );
        assert_eq!(
            recipe.interpolation,
            Interpolation::Multiplier { factor: 2 }
        );
        assert_eq!(recipe.output_fps(), 32.0);
        assert_eq!(recipe.num_latent_frames(), 21);
        assert_eq!(recipe.negative_prompt, WAN_DEFAULT_NEGATIVE_PROMPT);
        assert_eq!(recipe.preset_lora.as_deref(), Some("lightx2v-4step"));
        let back = Recipe::from_json(&recipe.to_json().unwrap()).unwrap();
        assert_eq!(back, recipe);
    }

    #[test]
    fn the_lora_mode_round_trips_and_is_left_out_at_auto() {
        use crate::wan::LoraMode;

        let files = files();
        let preset = preset("wan22-i2v-a14b-lightx2v-4step-480p.toml");
        let auto = Recipe::from_layers(&preset, files.choices.clone());
        assert_eq!(auto.lora_mode, LoraMode::Auto);
        let json = auto.to_json().unwrap();
        assert!(!json.contains("lora_mode"), "{json}");
        assert_eq!(Recipe::from_json(&json).unwrap(), auto);
        for (mode, text) in [
            (LoraMode::Merge, "merge"),
            (LoraMode::OnTheFly, "on_the_fly"),
        ] {
            let choices = RecipeChoices {
                lora_mode: Some(mode),
                ..files.choices.clone()
            };
            let recipe = Recipe::from_layers(&preset, choices);
            assert_eq!(recipe.lora_mode, mode);
            recipe.validate().unwrap();
            let json = recipe.to_json().unwrap();
            assert!(
                json.contains(&format!(r#""lora_mode": "{text}""#)),
                "{json}"
            );
            assert_eq!(Recipe::from_json(&json).unwrap(), recipe);
        }
        let bad = auto
            .to_json()
            .unwrap()
            .replacen('{', r#"{"lora_mode": "sideways","#, 1);
        assert!(Recipe::from_json(&bad).is_err());
    }

    #[test]
    fn a_preset_lora_whose_files_are_missing_is_refused_before_any_model_work() {
        let files = files();
        let four_step = preset("wan22-i2v-a14b-lightx2v-4step-480p.toml");
        let high = files
            .choices
            .models
            .high_noise
            .as_ref()
            .unwrap()
            .with_file_name("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors");
        std::fs::remove_file(&high).unwrap();
        let recipe = Recipe::from_layers(&four_step, files.choices.clone());
        let message = recipe.validate().unwrap_err().to_string();
        assert!(
            message.starts_with("lora") && message.contains("lora_v1_high_noise"),
            "{message}"
        );
        // The official presets name no LoRA.
        Recipe::from_layers(
            &preset("wan22-i2v-a14b-official-480p.toml"),
            files.choices.clone(),
        )
        .validate()
        .unwrap();
        // The user's own file for the high-noise expert is enough.
        let recipe = Recipe::from_layers(
            &four_step,
            RecipeChoices {
                loras: vec![LoraChoice {
                    path: high.with_file_name("my_lightx2v_4step_high_noise.safetensors"),
                    strength_high_noise: 1.0,
                    strength_low_noise: 0.0,
                }],
                ..files.choices.clone()
            },
        );
        std::fs::write(&recipe.loras[0].path, b"x").unwrap();
        recipe.validate().unwrap();
    }

    #[test]
    fn bad_recipes_name_their_field() {
        let files = files();
        let preset = preset("wan22-i2v-a14b-official-480p.toml");
        let cases: Vec<(RecipeChoices, &str)> = vec![
            (
                RecipeChoices {
                    num_frames: Some(80),
                    ..files.choices.clone()
                },
                "frames",
            ),
            (
                RecipeChoices {
                    width: Some(840),
                    ..files.choices.clone()
                },
                "width",
            ),
            (
                RecipeChoices {
                    height: Some(0),
                    ..files.choices.clone()
                },
                "height",
            ),
            (
                RecipeChoices {
                    steps: Some(0),
                    ..files.choices.clone()
                },
                "steps",
            ),
            (
                RecipeChoices {
                    shift: Some(f64::NAN),
                    ..files.choices.clone()
                },
                "shift",
            ),
            (
                RecipeChoices {
                    cfg_low_noise: Some(0.5),
                    ..files.choices.clone()
                },
                "cfg_low_noise",
            ),
            (
                RecipeChoices {
                    boundary: Some(1.5),
                    ..files.choices.clone()
                },
                "boundary",
            ),
            (
                RecipeChoices {
                    prompt: Some("  ".to_owned()),
                    ..files.choices.clone()
                },
                "prompt",
            ),
            (
                RecipeChoices {
                    image: Some("/nonexistent/in.png".into()),
                    ..files.choices.clone()
                },
                "image",
            ),
            (
                RecipeChoices {
                    interpolation: Some(Interpolation::Multiplier { factor: 0 }),
                    ..files.choices.clone()
                },
                "interpolate",
            ),
            (
                RecipeChoices {
                    reserve_vram_gb: Some(-1.0),
                    ..files.choices.clone()
                },
                "reserve_vram",
            ),
            (
                RecipeChoices {
                    models: ModelFiles {
                        vae: None,
                        ..files.choices.models.clone()
                    },
                    ..files.choices.clone()
                },
                "vae",
            ),
            (
                RecipeChoices {
                    models: ModelFiles {
                        model_dir: Some("/nonexistent/models".into()),
                        ..files.choices.models.clone()
                    },
                    ..files.choices.clone()
                },
                "model_dir",
            ),
        ];
        for (choices, field) in cases {
            let error = Recipe::from_layers(&preset, choices)
                .validate()
                .unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(field),
                "expected a message about {field}, got: {message}"
            );
        }
    }

    #[test]
    fn the_attention_mode_is_stored_only_when_it_is_not_standard() {
        let files = files();
        let preset = preset("wan22-i2v-a14b-official-480p.toml");
        let standard = Recipe::from_layers(&preset, files.choices.clone());
        assert_eq!(standard.attention, AttentionMode::Standard);
        // Recipes stored before the field existed read back the same, and standard ones are
        // written as they were (their save points' hashes stay valid).
        let json = standard.to_json().unwrap();
        assert!(!json.contains("attention"), "{json}");
        assert_eq!(Recipe::from_json(&json).unwrap(), standard);
        let int8 = Recipe::from_layers(
            &preset,
            RecipeChoices {
                attention: Some(AttentionMode::Int8),
                ..files.choices.clone()
            },
        );
        let json = int8.to_json().unwrap();
        assert!(json.contains("\"attention\": \"int8\""), "{json}");
        assert_eq!(Recipe::from_json(&json).unwrap(), int8);
    }

    #[test]
    fn the_matmul_mode_is_stored_only_when_it_is_not_standard() {
        let files = files();
        let preset = preset("wan22-i2v-a14b-lightx2v-4step-480p.toml");
        let mut recipe = Recipe::from_layers(&preset, files.choices.clone());
        assert_eq!(recipe.matmul, MatmulMode::Standard);
        let json = recipe.to_json().unwrap();
        assert!(!json.contains("matmul"), "{json}");
        recipe.matmul = MatmulMode::Fp8;
        let json = recipe.to_json().unwrap();
        assert!(json.contains("\"matmul\": \"fp8\""), "{json}");
        assert_eq!(Recipe::from_json(&json).unwrap(), recipe);
    }

    #[test]
    fn unknown_json_fields_are_refused() {
        let files = files();
        let recipe = Recipe::from_layers(
            &preset("wan22-i2v-a14b-official-480p.toml"),
            files.choices.clone(),
        );
        let json = recipe
            .to_json()
            .unwrap()
            .replacen('{', "{\n  \"colour\": 1,", 1);
        let message = Recipe::from_json(&json).unwrap_err().to_string();
        assert!(message.contains("colour"), "{message}");
    }
}
