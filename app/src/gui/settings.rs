//! The render settings panel: preset, prompt, size, frames, sampler, guidance, seed, models,
//! interpolation and output. Its state persists between runs; it turns into the user's
//! [`RecipeChoices`] layered over the chosen preset.

use std::path::PathBuf;

use stillmotion_engine::image_input::fit::{FitMode, SIDE_MULTIPLE};
use stillmotion_engine::preset::{Preset, SamplerKind, target_fps_range};
use stillmotion_engine::recipe::{
    AttentionMode, ImageFit, Interpolation, MatmulMode, ModelFiles, PreviewMode, Recipe,
    RecipeChoices, VideoCodec, WAN_DEFAULT_NEGATIVE_PROMPT,
};
use stillmotion_engine::video::VideoFormat;
use stillmotion_engine::wan::{LoraMode, LoraRequantize};

use super::UiAction;
use super::gpu_gauge::GaugeReading;
use super::loras::LoraEntry;
use super::token_count::TokenCount;
use crate::ui::theme;

/// Which model file a "Choose…" button is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelSlot {
    HighNoise,
    LowNoise,
    TextEncoder,
    Vae,
}

impl ModelSlot {
    pub const ALL: [Self; 4] = [
        Self::HighNoise,
        Self::LowNoise,
        Self::TextEncoder,
        Self::Vae,
    ];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::HighNoise => "High-noise expert",
            Self::LowNoise => "Low-noise expert",
            Self::TextEncoder => "Text encoder",
            Self::Vae => "VAE",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Self::HighNoise => {
                "wan2.2_i2v_high_noise_14B_*.safetensors (ComfyUI diffusion_models/)"
            }
            Self::LowNoise => "wan2.2_i2v_low_noise_14B_*.safetensors (ComfyUI diffusion_models/)",
            Self::TextEncoder => "umt5_xxl_*.safetensors (ComfyUI text_encoders/)",
            Self::Vae => "wan_2.1_vae.safetensors (ComfyUI vae/)",
        }
    }
}

/// The live preview choices, with their button text and tooltip.
const PREVIEW_MODES: [(PreviewMode, &str, &str); 4] = [
    (
        PreviewMode::Auto,
        "Auto",
        "Better on a GPU when it fits and costs little, Fast on the CPU",
    ),
    (
        PreviewMode::Fast,
        "Fast",
        "A rough colour projection of every step (no VAE decode)",
    ),
    (
        PreviewMode::Better,
        "Better",
        "Also a real VAE decode every few steps, when it fits beside the model in GPU memory \
         and takes at most a tenth of the denoising time",
    ),
    (PreviewMode::Off, "Off", "No live preview"),
];

/// The attention kernels, with button text and tooltip.
const ATTENTION_MODES: [(AttentionMode, &str, &str); 2] = [
    (
        AttentionMode::Standard,
        "Standard",
        "16-bit, the reference implementation's numbers",
    ),
    (
        AttentionMode::Int8,
        "8-bit",
        "Our 8-bit attention kernel: faster on RTX 40 and 50 series GPUs, slightly different \
         pixels",
    ),
];

/// How float8 weights are multiplied, with button text and tooltip.
const MATMUL_MODES: [(MatmulMode, &str, &str); 2] = [
    (
        MatmulMode::Standard,
        "Standard",
        "fp8_scaled models: each weight dequantized for its product, the reference \
         implementation's numbers",
    ),
    (
        MatmulMode::Fp8,
        "FP8",
        "fp8_scaled models multiply in FP8 on RTX 40/50, H100 and H200: about 15% faster \
         steps, slightly different pixels",
    ),
];

/// How a LoRA merges into float8 layers, with button text and tooltip.
const LORA_REQUANTIZE: [(LoraRequantize, &str, &str); 3] = [
    (
        LoraRequantize::Auto,
        "Auto",
        "Back to float8 on a GPU (the file's memory), exact on the CPU",
    ),
    (
        LoraRequantize::Always,
        "Float8",
        "The merged layers go back to float8 with stochastic rounding, as ComfyUI does: \
         the model keeps its file's memory",
    ),
    (
        LoraRequantize::Never,
        "Exact",
        "The merged layers stay in 16 bits: exact, but those layers take twice the memory",
    ),
];

/// Whether LoRAs merge into the weights at load or apply at each product, with button text and
/// tooltip.
const LORA_MODES: [(LoraMode, &str, &str); 3] = [
    (
        LoraMode::Auto,
        "Auto",
        "Merged at load where the model still fits this GPU as planned; where merging would \
         grow a quantized layer (GGUF, or float8 not merged back to float8) and that would not \
         fit, those layers apply the LoRA at each product instead",
    ),
    (
        LoraMode::Merge,
        "Merge",
        "Every LoRA merges into its weights at load: the fastest steps, but quantized layers \
         a LoRA changes grow to 16 bits",
    ),
    (
        LoraMode::OnTheFly,
        "On the fly",
        "No weight changes at load: each changed layer does two small products more per step, \
         and the model keeps its file's memory",
    ),
];

/// The user's settings; persisted with eframe storage.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// File stem of the chosen shipped preset.
    pub preset: String,
    pub prompt: String,
    pub negative_prompt: String,
    /// Empty negative prompt means Wan's default one.
    pub steps: u32,
    pub num_frames: u32,
    pub cfg_high_noise: f64,
    pub cfg_low_noise: f64,
    pub shift: f64,
    pub sampler: SamplerChoice,
    pub seed: u64,
    pub seed_locked: bool,
    pub interpolation_factor: u32,
    /// Resample to this frame rate with RIFE instead of multiplying the frame count (then
    /// `interpolation_factor` is ignored).
    pub interpolation_target_fps: Option<f64>,
    pub high_noise: Option<PathBuf>,
    pub low_noise: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub reserve_vram_gb: f64,
    /// Standard (16-bit) or our 8-bit self-attention on the GPU.
    pub attention: AttentionMode,
    /// Float8 weights dequantized for each product (standard) or multiplied in FP8.
    pub matmul: MatmulMode,
    /// Whether a LoRA merged into float8 layers goes back to float8.
    pub lora_requantize: LoraRequantize,
    /// Whether LoRAs merge at load or apply on the fly.
    pub lora_mode: LoraMode,
    /// The live preview while rendering: auto (the VAE's every few steps on a GPU when
    /// affordable, the projection on the CPU), off, fast or better.
    pub preview: PreviewMode,
    /// The folder the Models view scans (ours, or a ComfyUI `models/` folder).
    pub models_folder: Option<PathBuf>,
    /// The LoRAs to apply: the user's, and those the preset names.
    pub loras: Vec<LoraEntry>,
    /// The clip's size: the preset's, or the user's own.
    pub size: SizeChoice,
    /// How the image meets the size: whole with its aspect kept (official), or cropped to fill.
    pub image_fit: ImageFit,
    /// The container and codec of the finished clip.
    pub output_format: VideoFormat,
}

/// The clip's size. With the official fit the size gives the area and the image its aspect;
/// cropped, it is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SizeChoice {
    /// The chosen preset's width × height.
    #[default]
    Preset,
    /// The user's own, each side a multiple of 16.
    Custom { width: u32, height: u32 },
}

/// The output formats offered, with their names and tooltips.
const OUTPUT_FORMATS: [(VideoFormat, &str, &str); 6] = [
    (
        VideoFormat::Mp4H264,
        "MP4 (H.264)",
        "Plays everywhere; carries the recipe (drop it on the window to restore its settings)",
    ),
    (
        VideoFormat::Mp4H265,
        "MP4 (H.265)",
        "Smaller files, tagged for Apple players; carries the recipe",
    ),
    (
        VideoFormat::WebmVp9,
        "WebM (VP9)",
        "For the web; carries the recipe",
    ),
    (
        VideoFormat::AnimatedWebp,
        "Animated WebP",
        "Looping, for sharing (the recipe goes in a .json beside it)",
    ),
    (
        VideoFormat::Gif,
        "GIF",
        "Looping, for sharing; one palette, so colours band (recipe in a .json beside it)",
    ),
    (
        VideoFormat::PngFrames,
        "PNG frames",
        "A folder of lossless PNG images, one per frame (recipe in a .json beside it)",
    ),
];

/// Rounds a side to the nearest multiple of 16 (at least 16), as the model needs.
#[must_use]
pub fn snap_side(side: u32) -> u32 {
    ((side + SIDE_MULTIPLE / 2) / SIDE_MULTIPLE).max(1) * SIDE_MULTIPLE
}

/// Serializable mirror of the engine's sampler kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SamplerChoice {
    Euler,
    UniPc,
}

impl From<SamplerKind> for SamplerChoice {
    fn from(kind: SamplerKind) -> Self {
        match kind {
            SamplerKind::Euler => Self::Euler,
            SamplerKind::Unipc => Self::UniPc,
        }
    }
}

impl From<SamplerChoice> for SamplerKind {
    fn from(choice: SamplerChoice) -> Self {
        match choice {
            SamplerChoice::Euler => Self::Euler,
            SamplerChoice::UniPc => Self::Unipc,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            preset: String::new(),
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 4,
            num_frames: 81,
            cfg_high_noise: 1.0,
            cfg_low_noise: 1.0,
            shift: 5.0,
            sampler: SamplerChoice::Euler,
            seed: 0,
            seed_locked: false,
            interpolation_factor: 1,
            interpolation_target_fps: None,
            high_noise: None,
            low_noise: None,
            text_encoder: None,
            vae: None,
            output_dir: None,
            reserve_vram_gb: stillmotion_engine::recipe::DEFAULT_RESERVE_VRAM_GB,
            attention: AttentionMode::Standard,
            matmul: MatmulMode::Standard,
            lora_requantize: LoraRequantize::Auto,
            lora_mode: LoraMode::Auto,
            preview: PreviewMode::Auto,
            models_folder: None,
            loras: Vec::new(),
            size: SizeChoice::Preset,
            image_fit: ImageFit::Official,
            output_format: VideoFormat::Mp4H264,
        }
    }
}

impl Settings {
    /// Takes the preset's values for everything a preset decides (one-click switching).
    pub fn apply_preset(&mut self, stem: &str, preset: &Preset) {
        stem.clone_into(&mut self.preset);
        self.steps = preset.steps;
        self.num_frames = preset.num_frames;
        self.cfg_high_noise = preset.cfg_high_noise;
        self.cfg_low_noise = preset.cfg_low_noise;
        self.shift = preset.shift;
        self.sampler = preset.sampler.into();
        self.interpolation_factor = preset.interpolation_factor;
        self.interpolation_target_fps = preset.interpolation_target_fps;
        self.size = SizeChoice::Preset;
    }

    /// The width × height a render with `preset` asks for.
    #[must_use]
    pub fn size_with(&self, preset: &Preset) -> (u32, u32) {
        match self.size {
            SizeChoice::Preset => (preset.width, preset.height),
            SizeChoice::Custom { width, height } => (width, height),
        }
    }

    /// How the engine will fit the image for a render with `preset` (as the pipeline does).
    #[must_use]
    pub fn fit_mode(&self, preset: &Preset) -> FitMode {
        let (width, height) = self.size_with(preset);
        match self.image_fit {
            ImageFit::Official => FitMode::Wan {
                max_area: width * height,
            },
            ImageFit::CenterCrop => FitMode::CenterCrop { width, height },
        }
    }

    /// The output's file name: `stem` with the format's extension (none for PNG frames).
    #[must_use]
    pub fn output_name(&self, stem: &str) -> String {
        match self.output_format.extension() {
            Some(ext) => format!("{stem}.{ext}"),
            None => stem.to_owned(),
        }
    }

    /// Takes every value a finished render's `recipe` used that these settings can hold, so the
    /// next render repeats it: the seed is locked, and the preset is the one the recipe named
    /// (by its display name) when it is among `presets`. Returns whether it was.
    pub fn restore(&mut self, recipe: &Recipe, presets: &[(String, Preset)]) -> bool {
        let preset = presets
            .iter()
            .find(|(_, preset)| preset.name == recipe.preset_name);
        if let Some((stem, _)) = preset {
            stem.clone_into(&mut self.preset);
        }
        recipe.prompt.clone_into(&mut self.prompt);
        self.negative_prompt = if recipe.negative_prompt == WAN_DEFAULT_NEGATIVE_PROMPT {
            String::new()
        } else {
            recipe.negative_prompt.clone()
        };
        self.steps = recipe.steps;
        self.num_frames = recipe.num_frames;
        self.cfg_high_noise = recipe.cfg_high_noise;
        self.cfg_low_noise = recipe.cfg_low_noise;
        self.shift = recipe.shift;
        self.sampler = recipe.sampler.into();
        self.seed = recipe.seed;
        self.seed_locked = true;
        (self.interpolation_factor, self.interpolation_target_fps) = match recipe.interpolation {
            Interpolation::Multiplier { factor } => (factor, None),
            Interpolation::TargetFps { fps } => (1, Some(fps)),
            Interpolation::Off => (1, None),
        };
        self.high_noise.clone_from(&recipe.models.high_noise);
        self.low_noise.clone_from(&recipe.models.low_noise);
        self.text_encoder.clone_from(&recipe.models.text_encoder);
        self.vae.clone_from(&recipe.models.vae);
        // The preset's own files are marked so, and follow the preset from now on.
        let named = recipe
            .preset_lora
            .as_deref()
            .and_then(stillmotion_engine::pipeline::named_lora_files);
        self.loras = recipe
            .loras
            .iter()
            .map(|choice| LoraEntry {
                choice: choice.clone(),
                from_preset: named.is_some_and(|(high, low)| {
                    choice
                        .path
                        .file_name()
                        .is_some_and(|name| name == high || name == low)
                }),
            })
            .collect();
        if let Some(dir) = recipe
            .output
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
        {
            self.output_dir = Some(dir.to_owned());
        }
        self.reserve_vram_gb = recipe.reserve_vram_gb;
        self.attention = recipe.attention;
        self.matmul = recipe.matmul;
        self.lora_requantize = recipe.lora_requantize;
        self.lora_mode = recipe.lora_mode;
        self.preview = recipe.preview;
        self.size = match preset {
            Some((_, preset)) if (preset.width, preset.height) == (recipe.width, recipe.height) => {
                SizeChoice::Preset
            }
            _ => SizeChoice::Custom {
                width: recipe.width,
                height: recipe.height,
            },
        };
        self.image_fit = recipe.image_fit;
        self.output_format =
            stillmotion_engine::pipeline::format_for_recipe(&recipe.output, recipe.codec)
                .unwrap_or_default();
        preset.is_some()
    }

    /// The user's choices for a render of `image`, written as `output_stem` (the format adds
    /// its extension) into `output_dir` (or beside the image when no folder was chosen).
    #[must_use]
    pub fn choices(&self, image: PathBuf, output_stem: &str) -> RecipeChoices {
        let output_name = self.output_name(output_stem);
        let output_dir = self
            .output_dir
            .clone()
            .or_else(|| image.parent().map(PathBuf::from))
            .unwrap_or_default();
        RecipeChoices {
            models: ModelFiles {
                model_dir: None,
                high_noise: self.high_noise.clone(),
                low_noise: self.low_noise.clone(),
                text_encoder: self.text_encoder.clone(),
                vae: self.vae.clone(),
            },
            loras: self
                .loras
                .iter()
                .map(|entry| entry.choice.clone())
                .collect(),
            image: Some(image),
            image_fit: Some(self.image_fit),
            width: match self.size {
                SizeChoice::Preset => None,
                SizeChoice::Custom { width, .. } => Some(width),
            },
            height: match self.size {
                SizeChoice::Preset => None,
                SizeChoice::Custom { height, .. } => Some(height),
            },
            // Only H.265 needs naming: the extension decides the rest.
            codec: (self.output_format == VideoFormat::Mp4H265).then_some(VideoCodec::H265),
            prompt: Some(self.prompt.clone()),
            negative_prompt: (!self.negative_prompt.trim().is_empty())
                .then(|| self.negative_prompt.clone()),
            seed: Some(self.seed),
            num_frames: Some(self.num_frames),
            steps: Some(self.steps),
            sampler: Some(self.sampler.into()),
            shift: Some(self.shift),
            cfg_high_noise: Some(self.cfg_high_noise),
            cfg_low_noise: Some(self.cfg_low_noise),
            interpolation: Some(self.interpolation()),
            output: Some(output_dir.join(output_name)),
            reserve_vram_gb: Some(self.reserve_vram_gb),
            attention: Some(self.attention),
            matmul: Some(self.matmul),
            lora_requantize: Some(self.lora_requantize),
            lora_mode: Some(self.lora_mode),
            preview: Some(self.preview),
            ..RecipeChoices::default()
        }
    }

    /// The interpolation these settings ask for.
    #[must_use]
    pub fn interpolation(&self) -> Interpolation {
        match self.interpolation_target_fps {
            Some(fps) => Interpolation::TargetFps { fps },
            None if self.interpolation_factor > 1 => Interpolation::Multiplier {
                factor: self.interpolation_factor,
            },
            None => Interpolation::Off,
        }
    }

    fn model_path_mut(&mut self, slot: ModelSlot) -> &mut Option<PathBuf> {
        match slot {
            ModelSlot::HighNoise => &mut self.high_noise,
            ModelSlot::LowNoise => &mut self.low_noise,
            ModelSlot::TextEncoder => &mut self.text_encoder,
            ModelSlot::Vae => &mut self.vae,
        }
    }

    /// Sets a model path (from a file dialog).
    pub fn set_model_path(&mut self, slot: ModelSlot, path: PathBuf) {
        *self.model_path_mut(slot) = Some(path);
    }
}

/// Frame rate offered when the user switches to a target frame rate.
const DEFAULT_TARGET_FPS: f64 = 30.0;

/// Off, ×2, ×3, ×4, or a target frame rate with its field, which takes only the rates a render
/// accepts: from the clip's own rate `clip_fps` up to 240.
fn interpolation_choice(ui: &mut egui::Ui, settings: &mut Settings, clip_fps: u32) {
    let (lowest, highest) = target_fps_range(clip_fps);
    for (factor, label) in [(1, "Off"), (2, "×2"), (3, "×3"), (4, "×4")] {
        let selected =
            settings.interpolation_target_fps.is_none() && settings.interpolation_factor == factor;
        if ui
            .selectable_label(selected, label)
            .on_hover_text("RIFE frame interpolation after decoding")
            .clicked()
        {
            settings.interpolation_factor = factor;
            settings.interpolation_target_fps = None;
        }
    }
    if ui
        .selectable_label(settings.interpolation_target_fps.is_some(), "Target fps")
        .on_hover_text("Resample the clip to a frame rate of your choice with RIFE")
        .clicked()
        && settings.interpolation_target_fps.is_none()
    {
        settings.interpolation_target_fps = Some(DEFAULT_TARGET_FPS.max(lowest));
    }
    if let Some(fps) = &mut settings.interpolation_target_fps {
        // A rate from elsewhere (a restored render, another preset) comes into range here,
        // so what Render sends is what the field shows.
        *fps = fps.clamp(lowest, highest);
        let label = ui.label("Target frame rate");
        ui.add(
            egui::DragValue::new(fps)
                .range(lowest..=highest)
                .suffix(" fps"),
        )
        .labelled_by(label.id)
        .on_hover_text(format!(
            "The frame rate of the interpolated clip: {lowest}–{highest} fps (the clip is \
             made at {clip_fps} fps)"
        ));
        ui.colored_label(theme::WEAK_TEXT, format!("{lowest}–{highest}"));
    }
}

/// Names a control for screen readers (AccessKit) where its visible text alone is ambiguous
/// ("Choose…" beside each file) or absent (a number field beside "×").
pub fn name_for_screen_readers(ui: &egui::Ui, response: &egui::Response, name: &str) {
    ui.ctx()
        .accesskit_node_builder(response.id, |node| node.set_label(name));
}

/// "Preset" (its size, shown) or "Custom" with width and height fields that keep each side a
/// multiple of 16.
fn size_choice(ui: &mut egui::Ui, size: &mut SizeChoice, preset: Option<&Preset>) {
    let (preset_width, preset_height) = preset.map_or((832, 480), |p| (p.width, p.height));
    if ui
        .selectable_label(
            *size == SizeChoice::Preset,
            format!("{preset_width}×{preset_height}"),
        )
        .on_hover_text(
            "The preset's size. Keeping the aspect, the clip follows the image's shape at about \
             this many pixels",
        )
        .clicked()
    {
        *size = SizeChoice::Preset;
    }
    let custom = matches!(size, SizeChoice::Custom { .. });
    if ui
        .selectable_label(custom, "Custom")
        .on_hover_text("Your own width × height, each a multiple of 16")
        .clicked()
        && !custom
    {
        *size = SizeChoice::Custom {
            width: preset_width,
            height: preset_height,
        };
    }
    if let SizeChoice::Custom { width, height } = size {
        for (name, side) in [("Width", width), ("Height", height)] {
            // An invisible label names the field for screen readers (and tests) without
            // taking room in the row: the "×" between the fields says which is which.
            let mut value = *side;
            let response = ui
                .add(
                    egui::DragValue::new(&mut value)
                        .range(SIDE_MULTIPLE..=2048)
                        .speed(SIDE_MULTIPLE),
                )
                .on_hover_text(format!("{name} in pixels, a multiple of 16"));
            name_for_screen_readers(ui, &response, name);
            *side = snap_side(value);
            if name == "Width" {
                ui.label("×");
            }
        }
    }
}

/// Draws the settings. `presets` are (file stem, preset) pairs, the first `shipped_count` of
/// them shipped and the rest the user's; `new_preset_name` is the "save as preset" name field.
#[must_use]
pub fn show(
    ui: &mut egui::Ui,
    settings: &mut Settings,
    presets: &[(String, Preset)],
    shipped_count: usize,
    new_preset_name: &mut String,
    gauge: GaugeReading,
    prompt_tokens: Option<TokenCount>,
) -> Option<UiAction> {
    let mut action = None;
    let chosen = presets
        .iter()
        .find(|(stem, _)| *stem == settings.preset)
        .map(|(_, preset)| preset);
    let current = chosen
        .map_or("Choose a preset", |preset| preset.name.as_str())
        .to_owned();
    // No preset chosen yet: the A14B models make 16 fps clips.
    let clip_fps = chosen.map_or(16, |preset| preset.fps);
    // The heading shares the preset's row: the column must fit the window without scrolling.
    ui.horizontal(|ui| {
        ui.heading("Settings");
        egui::ComboBox::from_label("Preset")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for (index, (stem, preset)) in presets.iter().enumerate() {
                    if index == shipped_count {
                        ui.separator();
                        ui.colored_label(theme::WEAK_TEXT, "Your presets");
                    }
                    if ui
                        .selectable_label(settings.preset == *stem, &preset.name)
                        .on_hover_text(&preset.description)
                        .clicked()
                    {
                        action = Some(UiAction::ApplyPreset(stem.clone()));
                    }
                }
            })
            .response
            .on_hover_text(
                "One click sets the size, steps, frames, sampler, guidance and interpolation",
            );
    });
    ui.horizontal(|ui| {
        let label = ui.label("New preset name");
        ui.add(
            egui::TextEdit::singleline(new_preset_name)
                .hint_text("e.g. Slow pan, 6 steps")
                .desired_width(140.0),
        )
        .labelled_by(label.id)
        .on_hover_text("The name your preset gets in the picker");
        if ui
            .add_enabled(
                !new_preset_name.trim().is_empty(),
                egui::Button::new("Save as preset"),
            )
            .on_hover_text(
                "Save the size, steps, frames, sampler, shift, guidance and interpolation as \
                 your own preset (the model comes from the chosen preset)",
            )
            .on_disabled_hover_text("Type a name for the preset first")
            .clicked()
        {
            action = Some(UiAction::SavePreset(new_preset_name.clone()));
        }
    });

    let label = ui
        .horizontal(|ui| {
            let label = ui.label("Prompt");
            let characters = format!("{} characters", settings.prompt.chars().count());
            match prompt_tokens {
                Some(count) => {
                    let colour = if count.truncated {
                        theme::ERROR_TEXT
                    } else {
                        theme::WEAK_TEXT
                    };
                    ui.colored_label(
                        colour,
                        format!("{characters} · {} of {} tokens", count.tokens, count.limit),
                    )
                    .on_hover_text(
                        "Tokens as the chosen text encoder reads the prompt; past the limit the \
                         rest is ignored",
                    );
                }
                None => {
                    ui.colored_label(theme::WEAK_TEXT, characters)
                        .on_hover_text("The token count shows once a text encoder is chosen");
                }
            }
            label
        })
        .inner;
    ui.add(
        egui::TextEdit::multiline(&mut settings.prompt)
            .hint_text("What should move, and how")
            .desired_rows(3)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id)
    .on_hover_text("Describe the motion; Ctrl+Enter renders");
    let label = ui.label("Negative prompt");
    ui.add(
        egui::TextEdit::multiline(&mut settings.negative_prompt)
            .hint_text("Empty: Wan's default negative prompt")
            .desired_rows(2)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id)
    .on_hover_text("What to avoid; only used when guidance (CFG) is above 1");

    egui::Grid::new("settings_grid")
        .num_columns(2)
        .show(ui, |ui| {
            ui.label("Size");
            ui.horizontal(|ui| {
                size_choice(ui, &mut settings.size, chosen);
            });
            ui.end_row();

            let label = ui.label("Frames");
            ui.horizontal(|ui| {
                let mut frames = settings.num_frames;
                ui.add(egui::DragValue::new(&mut frames).range(5..=321).speed(4))
                    .labelled_by(label.id)
                    .on_hover_text(format!(
                        "4n+1 frames, made at {clip_fps} fps (81 frames are about 5 s at 16 fps)"
                    ));
                settings.num_frames = (frames.saturating_sub(1) / 4) * 4 + 1;
                ui.colored_label(
                    theme::WEAK_TEXT,
                    format!(
                        "{:.2} s at {clip_fps} fps",
                        f64::from(settings.num_frames) / f64::from(clip_fps)
                    ),
                );
            });
            ui.end_row();

            let label = ui.label("Steps");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut settings.steps).range(1..=100))
                    .labelled_by(label.id)
                    .on_hover_text("Denoising steps (4 with the LightX2V LoRA, 40 official)");
                // On the steps' row: the column must fit the window without scrolling.
                let label = ui.label("Shift");
                ui.add(
                    egui::DragValue::new(&mut settings.shift)
                        .range(0.5..=20.0)
                        .speed(0.1),
                )
                .labelled_by(label.id)
                .on_hover_text("Flow shift of the sigma schedule (5.0 for Wan2.2)");
            });
            ui.end_row();

            ui.label("Sampler");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut settings.sampler, SamplerChoice::Euler, "Euler")
                    .on_hover_text("Flow-matching Euler (ComfyUI's default for 4-step LoRAs)");
                ui.selectable_value(&mut settings.sampler, SamplerChoice::UniPc, "UniPC")
                    .on_hover_text("The official Wan2.2 solver");
            });
            ui.end_row();

            ui.label("CFG");
            ui.horizontal(|ui| {
                // Each field is named for screen readers by its own label.
                let high = ui.label("high noise");
                ui.add(
                    egui::DragValue::new(&mut settings.cfg_high_noise)
                        .range(1.0..=20.0)
                        .speed(0.1),
                )
                .labelled_by(high.id)
                .on_hover_text("Guidance of the high-noise expert (1 = off, faster)");
                let low = ui.label("low noise");
                ui.add(
                    egui::DragValue::new(&mut settings.cfg_low_noise)
                        .range(1.0..=20.0)
                        .speed(0.1),
                )
                .labelled_by(low.id)
                .on_hover_text("Guidance of the low-noise expert (1 = off, faster)");
            });
            ui.end_row();

            let label = ui.label("Seed");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut settings.seed))
                    .labelled_by(label.id)
                    .on_hover_text("The same seed and settings give the same clip");
                ui.checkbox(&mut settings.seed_locked, "Lock")
                    .on_hover_text("Unlocked: a new random seed for every render");
                if ui
                    .button("Re-roll")
                    .on_hover_text("Pick a new random seed")
                    .clicked()
                {
                    action = Some(UiAction::RerollSeed);
                }
            });
            ui.end_row();

            ui.label("Interpolation");
            ui.horizontal(|ui| {
                interpolation_choice(ui, settings, clip_fps);
            });
            ui.end_row();

            let label = ui.label("Output format");
            let current = OUTPUT_FORMATS
                .iter()
                .find(|(format, _, _)| *format == settings.output_format)
                .map_or("MP4 (H.264)", |(_, name, _)| name);
            egui::ComboBox::from_id_salt("output_format")
                .selected_text(current)
                .show_ui(ui, |ui| {
                    for (format, name, tip) in OUTPUT_FORMATS {
                        ui.selectable_value(&mut settings.output_format, format, name)
                            .on_hover_text(tip);
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("The container and codec of the finished clip");
            ui.end_row();

            let label = ui.label("VRAM reserve");
            ui.add(
                egui::DragValue::new(&mut settings.reserve_vram_gb)
                    .range(0.0..=64.0)
                    .speed(0.25)
                    .suffix(" GB"),
            )
            .labelled_by(label.id)
            .on_hover_text("GPU memory left free for the desktop and other programs");
            ui.end_row();

            ui.label("GPU memory");
            super::gpu_gauge::show(ui, gauge, settings.reserve_vram_gb);
            ui.end_row();
        });
    // Speed and memory trade-offs most renders leave alone: folded, so the column fits.
    egui::CollapsingHeader::new("Advanced")
        .id_salt("advanced_settings")
        .show(ui, |ui| advanced(ui, settings))
        .header_response
        .on_hover_text("Attention kernel, float8 arithmetic, LoRA merging and the live preview");
    if let Some(chosen) = files(ui, settings) {
        action = Some(chosen);
    }
    action
}

/// The rows under "Advanced".
fn advanced(ui: &mut egui::Ui, settings: &mut Settings) {
    egui::Grid::new("advanced_grid")
        .num_columns(2)
        .show(ui, |ui| {
            choice_row(ui, "Attention", &mut settings.attention, &ATTENTION_MODES);
            choice_row(ui, "Float8 weights", &mut settings.matmul, &MATMUL_MODES);
            choice_row(
                ui,
                "LoRA on float8",
                &mut settings.lora_requantize,
                &LORA_REQUANTIZE,
            );
            choice_row(ui, "LoRA mode", &mut settings.lora_mode, &LORA_MODES);
            choice_row(ui, "Preview", &mut settings.preview, &PREVIEW_MODES);
        });
}

/// A grid row of mutually exclusive choices, each (value, button text, tooltip). Screen readers
/// hear each button with its row ("Preview: Off"), as the same words recur between rows.
fn choice_row<T: PartialEq + Copy>(
    ui: &mut egui::Ui,
    row: &str,
    value: &mut T,
    choices: &[(T, &str, &str)],
) {
    ui.label(row);
    ui.horizontal(|ui| {
        for &(choice, name, tip) in choices {
            let button = ui.selectable_value(value, choice, name).on_hover_text(tip);
            name_for_screen_readers(ui, &button, &format!("{row}: {name}"));
        }
    });
    ui.end_row();
}

/// The model files and the output folder.
fn files(ui: &mut egui::Ui, settings: &mut Settings) -> Option<UiAction> {
    let mut action = None;
    ui.separator();
    ui.strong("Model files");
    for slot in ModelSlot::ALL {
        ui.horizontal(|ui| {
            ui.label(slot.label());
            let path = settings.model_path_mut(slot).clone();
            let name = path.as_ref().and_then(|p| p.file_name()).map_or_else(
                || "not chosen".to_owned(),
                |name| name.to_string_lossy().into_owned(),
            );
            ui.colored_label(theme::WEAK_TEXT, name);
            let button = ui.button("Choose…").on_hover_text(slot.hint());
            name_for_screen_readers(
                ui,
                &button,
                &format!("Choose the {} file", slot.label().to_lowercase()),
            );
            if button.clicked() {
                action = Some(UiAction::ChooseModelFile(slot));
            }
        });
    }
    ui.horizontal(|ui| {
        ui.label("Output folder");
        let shown = settings.output_dir.as_ref().map_or_else(
            || "beside the image".to_owned(),
            |dir| dir.display().to_string(),
        );
        ui.colored_label(theme::WEAK_TEXT, shown);
        let button = ui
            .button("Choose…")
            .on_hover_text("Where finished clips are saved");
        name_for_screen_readers(ui, &button, "Choose the output folder");
        if button.clicked() {
            action = Some(UiAction::ChooseOutputFolder);
        }
    });
    action
}

/// The Render button's height.
pub const RENDER_BUTTON_HEIGHT: f32 = 28.0;

/// The Render button (kept out of the settings' scroll area so it is always in view).
#[must_use]
pub fn render_button(ui: &mut egui::Ui) -> Option<UiAction> {
    ui.add(egui::Button::new("Render").min_size(egui::vec2(120.0, RENDER_BUTTON_HEIGHT)))
        .on_hover_text("Add this render to the queue (Ctrl+Enter)")
        .clicked()
        .then_some(UiAction::Render)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_a_recipe_gives_back_the_settings_that_made_it() {
        let presets = stillmotion_engine::preset::shipped().unwrap();
        let (stem, preset) = &presets[3];
        let mut made = Settings::default();
        made.apply_preset(stem, preset);
        made.prompt = "a heron takes off".to_owned();
        made.negative_prompt = "blur".to_owned();
        made.seed = 99;
        made.seed_locked = true;
        made.steps = 12;
        made.cfg_low_noise = 2.0;
        made.interpolation_factor = 3;
        made.vae = Some(PathBuf::from("/models/vae.safetensors"));
        made.output_dir = Some(PathBuf::from("/clips"));
        made.reserve_vram_gb = 6.0;
        made.matmul = MatmulMode::Fp8;
        made.lora_requantize = LoraRequantize::Never;
        made.lora_mode = LoraMode::OnTheFly;
        made.size = SizeChoice::Custom {
            width: 640,
            height: 352,
        };
        made.image_fit = ImageFit::CenterCrop;
        made.output_format = VideoFormat::Mp4H265;
        let recipe = Recipe::from_layers(
            preset,
            made.choices(PathBuf::from("/images/heron.png"), "out"),
        );
        assert_eq!(
            (recipe.matmul, recipe.lora_requantize, recipe.lora_mode),
            (MatmulMode::Fp8, LoraRequantize::Never, LoraMode::OnTheFly)
        );
        assert_eq!((recipe.width, recipe.height), (640, 352));
        assert_eq!(recipe.output, PathBuf::from("/clips/out.mp4"));
        assert_eq!(recipe.codec, Some(VideoCodec::H265));

        let mut restored = Settings::default();
        assert!(restored.restore(&recipe, &presets));
        assert_eq!(restored, made);

        // Wan's default negative prompt comes back as the empty field that stands for it; the
        // preset's own size as the preset's; a PNG-frame folder as such.
        made.negative_prompt.clear();
        made.size = SizeChoice::Preset;
        made.output_format = VideoFormat::PngFrames;
        let recipe = Recipe::from_layers(
            preset,
            made.choices(PathBuf::from("/images/heron.png"), "out"),
        );
        assert!(restored.restore(&recipe, &presets));
        assert_eq!(restored, made);

        // A preset this installation lacks keeps the current one, and says so.
        let mut foreign = recipe;
        foreign.preset_name = "Someone else's preset".to_owned();
        assert!(!restored.restore(&foreign, &presets));
        assert_eq!(restored.preset, *stem);
    }

    #[test]
    fn custom_sides_snap_to_the_nearest_multiple_of_16() {
        assert_eq!(
            [0, 7, 8, 23, 24, 650, 832].map(snap_side),
            [16, 16, 16, 16, 32, 656, 832]
        );
    }

    #[test]
    fn a_target_frame_rate_survives_a_restore_and_a_preset_switch_clears_it() {
        let presets = stillmotion_engine::preset::shipped().unwrap();
        let (stem, preset) = &presets[0];
        let mut made = Settings::default();
        made.apply_preset(stem, preset);
        made.prompt = "waves".to_owned();
        made.interpolation_factor = 3;
        made.interpolation_target_fps = Some(24.0);
        assert_eq!(made.interpolation(), Interpolation::TargetFps { fps: 24.0 });
        let recipe = Recipe::from_layers(
            preset,
            made.choices(PathBuf::from("/images/sea.png"), "out"),
        );
        assert_eq!(recipe.interpolation, Interpolation::TargetFps { fps: 24.0 });

        let mut restored = Settings::default();
        assert!(restored.restore(&recipe, &presets));
        assert_eq!(restored.interpolation_target_fps, Some(24.0));
        assert_eq!(
            restored.interpolation(),
            Interpolation::TargetFps { fps: 24.0 }
        );
        assert_eq!(
            restored.interpolation_factor, 1,
            "a target rate has no multiplier"
        );

        restored.apply_preset(stem, preset);
        assert_eq!(restored.interpolation_target_fps, None);
        assert_eq!(
            restored.interpolation(),
            Settings {
                interpolation_factor: preset.interpolation_factor,
                ..Settings::default()
            }
            .interpolation()
        );
    }
}
