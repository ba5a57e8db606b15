//! Generation presets: versioned TOML files (`presets/*.toml` shipped, the user's own in the
//! config folder). A preset is the part of a render recipe that a user switches in one click.

use std::path::Path;

use crate::EngineError;

/// The preset file format version this build reads.
pub const PRESET_FORMAT_VERSION: u32 = 1;

/// Which model family a preset is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ModelFamily {
    /// Wan2.2-I2V-A14B: two 14B experts (high and low noise), Wan2.1 VAE.
    #[serde(rename = "wan22-i2v-a14b")]
    Wan22I2vA14b,
    /// Wan2.2-TI2V-5B: one 5B model, Wan2.2 VAE.
    #[serde(rename = "wan22-ti2v-5b")]
    Wan22Ti2v5b,
}

/// The sampler used for denoising.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    Euler,
    Unipc,
}

/// A generation preset. Every field is required so that a preset means the same thing in every
/// version that reads it; `format_version` guards against silently misreading newer files.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub format_version: u32,
    /// Shown in the preset picker.
    pub name: String,
    pub description: String,
    pub model: ModelFamily,
    /// LoRA the preset expects (a file role, e.g. "lightx2v-4step"), if any.
    #[serde(default)]
    pub lora: Option<String>,
    pub width: u32,
    pub height: u32,
    /// Pixel frames; must be 4n+1.
    pub num_frames: u32,
    /// Frame rate of the generated clip, before interpolation.
    pub fps: u32,
    pub steps: u32,
    pub sampler: SamplerKind,
    pub shift: f64,
    /// Classifier-free guidance scale of the high-noise expert (or the only model).
    pub cfg_high_noise: f64,
    /// Classifier-free guidance scale of the low-noise expert.
    pub cfg_low_noise: f64,
    /// Timestep fraction at which the low-noise expert takes over (two-expert models only).
    #[serde(default)]
    pub boundary: Option<f64>,
    /// RIFE frame multiplier; 1 means no interpolation.
    pub interpolation_factor: u32,
    /// Resample the clip to this frame rate with RIFE instead (then `interpolation_factor` is
    /// 1). Optional, so presets written before it read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation_target_fps: Option<f64>,
}

impl Preset {
    /// Parses and validates a preset from TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, EngineError> {
        let preset: Self = toml::from_str(text).map_err(|error| EngineError::BadPreset {
            problem: format!("not a valid preset ({})", error.message()),
            path: path.to_owned(),
        })?;
        preset
            .validate()
            .map_err(|problem| EngineError::BadPreset {
                problem,
                path: path.to_owned(),
            })?;
        Ok(preset)
    }

    /// Reads one preset file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| EngineError::io("reading preset", path, error))?;
        Self::from_toml(&text, path)
    }

    /// Checks the constraints the models impose; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != PRESET_FORMAT_VERSION {
            return Err(format!(
                "format_version is {}, this version of Stillmotion reads {PRESET_FORMAT_VERSION}",
                self.format_version
            ));
        }
        if self.num_frames == 0 || self.num_frames % 4 != 1 {
            return Err(format!(
                "num_frames must be 4n+1 (e.g. 81), got {}",
                self.num_frames
            ));
        }
        for (field, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % 16 != 0 {
                return Err(format!(
                    "{field} must be a positive multiple of 16, got {value}"
                ));
            }
        }
        if self.fps == 0 || self.steps == 0 || self.interpolation_factor == 0 {
            return Err("fps, steps and interpolation_factor must be at least 1".to_owned());
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(format!("shift must be positive, got {}", self.shift));
        }
        for (field, value) in [
            ("cfg_high_noise", self.cfg_high_noise),
            ("cfg_low_noise", self.cfg_low_noise),
        ] {
            if !(value.is_finite() && value >= 1.0) {
                return Err(format!("{field} must be at least 1.0, got {value}"));
            }
        }
        if let Some(fps) = self.interpolation_target_fps {
            let (lowest, highest) = target_fps_range(self.fps);
            if !(fps.is_finite() && (lowest..=highest).contains(&fps)) {
                return Err(format!(
                    "interpolation_target_fps must be within {lowest}..={highest} (from the clip's fps up), got {fps}"
                ));
            }
            if self.interpolation_factor != 1 {
                return Err(
                    "interpolation_factor must be 1 when interpolation_target_fps is set"
                        .to_owned(),
                );
            }
        }
        match (self.model, self.boundary) {
            (ModelFamily::Wan22I2vA14b, None) => {
                Err("boundary is required for the two-expert A14B model (0.9 for I2V)".to_owned())
            }
            (_, Some(boundary)) if !(0.0..=1.0).contains(&boundary) => {
                Err(format!("boundary must be within 0..=1, got {boundary}"))
            }
            _ => Ok(()),
        }
    }

    /// Duration of the generated clip before interpolation.
    #[must_use]
    pub fn duration_secs(&self) -> f64 {
        f64::from(self.num_frames) / f64::from(self.fps)
    }
}

/// The frame rates interpolation to a target rate accepts for a clip made at `fps`: from the
/// clip's own rate (RIFE adds frames, it does not drop them) up to 240.
#[must_use]
pub fn target_fps_range(fps: u32) -> (f64, f64) {
    (f64::from(fps), MAX_TARGET_FPS)
}

/// The highest frame rate interpolation produces.
pub const MAX_TARGET_FPS: f64 = 240.0;

/// The presets shipped in `presets/`, compiled into the binary so an installed app has them.
/// (file stem, TOML text); a test checks this list matches the folder.
const SHIPPED: &[(&str, &str)] = &[
    (
        "wan22-i2v-a14b-lightx2v-4step-480p-rife2",
        include_str!("../../presets/wan22-i2v-a14b-lightx2v-4step-480p-rife2.toml"),
    ),
    (
        "wan22-i2v-a14b-lightx2v-4step-480p",
        include_str!("../../presets/wan22-i2v-a14b-lightx2v-4step-480p.toml"),
    ),
    (
        "wan22-i2v-a14b-lightx2v-4step-720p-rife2",
        include_str!("../../presets/wan22-i2v-a14b-lightx2v-4step-720p-rife2.toml"),
    ),
    (
        "wan22-i2v-a14b-lightx2v-4step-720p",
        include_str!("../../presets/wan22-i2v-a14b-lightx2v-4step-720p.toml"),
    ),
    (
        "wan22-i2v-a14b-official-480p-rife2",
        include_str!("../../presets/wan22-i2v-a14b-official-480p-rife2.toml"),
    ),
    (
        "wan22-i2v-a14b-official-480p",
        include_str!("../../presets/wan22-i2v-a14b-official-480p.toml"),
    ),
    (
        "wan22-i2v-a14b-official-720p-rife2",
        include_str!("../../presets/wan22-i2v-a14b-official-720p-rife2.toml"),
    ),
    (
        "wan22-i2v-a14b-official-720p",
        include_str!("../../presets/wan22-i2v-a14b-official-720p.toml"),
    ),
    (
        "wan22-ti2v-5b-720p-rife2",
        include_str!("../../presets/wan22-ti2v-5b-720p-rife2.toml"),
    ),
    (
        "wan22-ti2v-5b-720p",
        include_str!("../../presets/wan22-ti2v-5b-720p.toml"),
    ),
];

/// The shipped presets, parsed. They are checked by tests, so a failure here is a build defect;
/// it is still reported as an error rather than a panic.
pub fn shipped() -> Result<Vec<(String, Preset)>, EngineError> {
    SHIPPED
        .iter()
        .map(|(stem, text)| {
            let path = Path::new("presets").join(format!("{stem}.toml"));
            Preset::from_toml(text, &path).map(|preset| ((*stem).to_owned(), preset))
        })
        .collect()
}

/// Finds a preset by file stem or display name among the shipped ones, or loads it from a path.
pub fn find(name_or_path: &str) -> Result<Preset, EngineError> {
    let as_path = Path::new(name_or_path);
    if as_path.extension().is_some_and(|ext| ext == "toml") && as_path.is_file() {
        return Preset::load(as_path);
    }
    let shipped = shipped()?;
    if let Some((_, preset)) = shipped
        .iter()
        .find(|(stem, preset)| stem == name_or_path || preset.name == name_or_path)
    {
        return Ok(preset.clone());
    }
    let known: Vec<&str> = shipped.iter().map(|(stem, _)| stem.as_str()).collect();
    Err(EngineError::BadPreset {
        problem: format!("no such preset; shipped presets are: {}", known.join(", ")),
        path: as_path.to_owned(),
    })
}

/// Loads every `*.toml` preset in `dir`, sorted by file name.
pub fn load_presets_in(dir: &Path) -> Result<Vec<Preset>, EngineError> {
    let entries =
        std::fs::read_dir(dir).map_err(|error| EngineError::io("listing presets", dir, error))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|error| EngineError::io("listing presets", dir, error))?
            .path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|path| Preset::load(path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../presets")
    }

    #[test]
    fn every_shipped_preset_loads_and_validates() {
        let presets = load_presets_in(&shipped_dir()).unwrap();
        assert!(
            presets.len() >= 10,
            "expected the shipped presets, found {}",
            presets.len()
        );
        let mut names: Vec<_> = presets.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), presets.len(), "preset names must be unique");
    }

    #[test]
    fn compiled_in_presets_match_the_folder() {
        let on_disk = load_presets_in(&shipped_dir()).unwrap();
        let compiled: Vec<Preset> = shipped().unwrap().into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            compiled, on_disk,
            "update SHIPPED in preset.rs when presets/ changes"
        );
        let by_stem = find("wan22-i2v-a14b-official-720p").unwrap();
        assert_eq!((by_stem.width, by_stem.steps), (1280, 40));
        assert_eq!(find("Wan2.2 14B · 4-step · 480p").unwrap().steps, 4);
        let message = find("nope").unwrap_err().to_string();
        assert!(message.contains("wan22-ti2v-5b-720p"), "{message}");
    }

    #[test]
    fn lightx2v_preset_matches_the_comfyui_template() {
        let preset =
            Preset::load(&shipped_dir().join("wan22-i2v-a14b-lightx2v-4step-480p.toml")).unwrap();
        assert_eq!(preset.sampler, SamplerKind::Euler);
        assert_eq!((preset.steps, preset.num_frames, preset.fps), (4, 81, 16));
        assert_eq!((preset.cfg_high_noise, preset.cfg_low_noise), (1.0, 1.0));
        assert_eq!(preset.boundary, Some(0.9));
        assert!((preset.duration_secs() - 5.0625).abs() < 1e-12);
    }

    #[test]
    fn invalid_presets_name_the_field() {
        let good = std::fs::read_to_string(shipped_dir().join("wan22-i2v-a14b-official-480p.toml"))
            .unwrap();
        let path = Path::new("bad.toml");
        for (from, to, field) in [
            ("num_frames = 81", "num_frames = 80", "num_frames"),
            ("width = 832", "width = 830", "width"),
            ("shift = 5.0", "shift = -1.0", "shift"),
            ("format_version = 1", "format_version = 2", "format_version"),
            ("boundary = 0.9", "", "boundary"),
            (
                "interpolation_factor = 1",
                "interpolation_factor = 1\ninterpolation_target_fps = 12.0",
                "interpolation_target_fps must be within 16..=240",
            ),
            (
                "interpolation_factor = 1",
                "interpolation_factor = 2\ninterpolation_target_fps = 24.0",
                "interpolation_factor must be 1",
            ),
            ("steps = 40", "steps = 40\ncolour = \"red\"", "colour"),
        ] {
            assert!(good.contains(from), "{from}");
            let error = Preset::from_toml(&good.replace(from, to), path).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(field), "{message}");
            assert!(message.ends_with("bad.toml"), "{message}");
        }
    }
}
