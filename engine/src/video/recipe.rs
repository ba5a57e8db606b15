//! The recipe stored in every output: inside MP4/WebM as the `comment` tag and beside any
//! output as a sidecar `.json`, so dropping a clip (or its sidecar) restores its settings.
//!
//! The recipe body is opaque here (`serde_json::Value`); the job runtime owns its type.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::paths::sidecar_path;
use crate::EngineError;

/// The container tag the recipe is stored under (`©cmt` in MP4, `COMMENT` in WebM).
pub const METADATA_KEY: &str = "comment";

/// What Stillmotion stores in and beside each output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedRecipe {
    /// Marks the document as ours, so another program's comment is not taken for a recipe.
    pub stillmotion: String,
    /// The version of the app that rendered the clip.
    pub app_version: String,
    /// The full recipe (model files, LoRAs, prompt, seed, sizes, sampler, …).
    pub recipe: serde_json::Value,
    /// What each model file of the render was, read from its header when rendering, so a
    /// restored recipe can tell whether the files at those paths are still the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_files: Vec<ModelFileRecord>,
}

/// One model file's fingerprint as stored with the recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFileRecord {
    /// What the render used it as: `high_noise`, `low_noise`, `text_encoder`, `vae`, `lora`,
    /// `rife`.
    pub used_as: String,
    pub path: std::path::PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// `safetensors`, `gguf` or `pickle`.
    pub format: String,
    /// The dtype holding most of the bytes (`BF16`, `F8_E4M3`, `Q8_0`, …).
    pub dtype: Option<String>,
    pub scaled_fp8: bool,
    /// What the header says the file is (`dit_expert`, `text_encoder`, `vae`, `lora`, …).
    pub detected_role: String,
    /// `wan21`/`wan22`, `b14`/`b5`/`b1_3`, `high`/`low`, when the header tells.
    pub family: Option<String>,
    pub size: Option<String>,
    pub noise: Option<String>,
    pub tensors: usize,
    /// SHA-256 of the file's size and three 1 MiB samples (its start, which holds the header,
    /// its middle and its end; the whole file when under 3 MiB): tells a swapped file (another
    /// release, quantisation or fine-tune) from the same one without hashing gigabytes.
    pub sampled_sha256: String,
}

impl EmbeddedRecipe {
    /// Wraps `recipe` with this engine's version.
    pub fn new(recipe: serde_json::Value) -> Self {
        Self {
            stillmotion: "recipe/1".to_owned(),
            app_version: crate::VERSION.to_owned(),
            recipe,
            model_files: Vec::new(),
        }
    }

    /// Adds the fingerprints of the render's model files.
    #[must_use]
    pub fn with_model_files(mut self, model_files: Vec<ModelFileRecord>) -> Self {
        self.model_files = model_files;
        self
    }

    /// Compact JSON, as stored in the container.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and a JSON value cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored document; `None` when it is not a Stillmotion recipe.
    pub fn from_json(text: &str) -> Option<Self> {
        serde_json::from_str::<Self>(text)
            .ok()
            .filter(|recipe| recipe.stillmotion.starts_with("recipe/"))
    }
}

/// Writes the sidecar of `output` (temporary name, then rename; never over an existing file).
pub(super) fn write_sidecar(output: &Path, recipe: &EmbeddedRecipe) -> Result<(), EngineError> {
    let sidecar = sidecar_path(output);
    let partial = super::paths::partial_path(&sidecar);
    let text = serde_json::to_string_pretty(recipe).unwrap_or_default();
    std::fs::write(&partial, text + "\n")
        .map_err(|error| EngineError::io("writing the recipe sidecar", &partial, error))?;
    std::fs::hard_link(&partial, &sidecar)
        .or_else(|_| std::fs::rename(&partial, &sidecar))
        .map_err(|error| EngineError::io("writing the recipe sidecar", &sidecar, error))?;
    let _ = std::fs::remove_file(&partial);
    Ok(())
}

/// Reads the recipe of a Stillmotion output: from the file's metadata when it has one, else
/// from its sidecar; `path` may also be the sidecar itself.
pub fn read_recipe(path: &Path) -> Result<EmbeddedRecipe, EngineError> {
    let bad = |problem: &str| EngineError::BadEmbeddedRecipe {
        problem: problem.to_owned(),
        path: path.to_owned(),
    };
    if path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
    {
        let text = std::fs::read_to_string(path)
            .map_err(|error| EngineError::io("reading the recipe", path, error))?;
        return EmbeddedRecipe::from_json(&text)
            .ok_or_else(|| bad("this JSON file is not a Stillmotion recipe"));
    }
    if path.is_file()
        && let Some(recipe) = super::reader::metadata_tag(path, METADATA_KEY)?
            .as_deref()
            .and_then(EmbeddedRecipe::from_json)
    {
        return Ok(recipe);
    }
    let sidecar = sidecar_path(path);
    if sidecar.is_file() {
        return read_recipe(&sidecar);
    }
    Err(bad(
        "no Stillmotion recipe in this file and no sidecar .json beside it",
    ))
}
