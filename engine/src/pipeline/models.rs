//! Loaded models, kept between jobs and reloaded only when a path (or device) changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};

use crate::EngineError;
use crate::preset::ModelFamily;
use crate::recipe::Recipe;
use crate::rife::Rife;
use crate::sampling::Expert;
use crate::umt5::{self, TextEncoder};
use crate::wan::{self, WanModel};
use crate::wan_vae::{self, WanVae};

/// One loaded model and what it was loaded from.
struct Slot<T> {
    key: (PathBuf, String),
    model: T,
}

/// The models of the last job. A job that names the same files reuses them.
#[derive(Default)]
pub struct ModelCache {
    high_noise: Option<Slot<WanModel>>,
    low_noise: Option<Slot<WanModel>>,
    text_encoder: Option<Slot<TextEncoder>>,
    vae: Option<Slot<WanVae>>,
    rife: Option<Slot<Rife>>,
    loads: Arc<AtomicUsize>,
}

/// The sidecar config of a single weights file: `<stem>.json` beside it, when present.
#[must_use]
pub fn sidecar_config(weights: &Path) -> Option<PathBuf> {
    let json = weights.with_extension("json");
    (weights.is_file() && json.is_file()).then_some(json)
}

fn required<'a>(path: Option<&'a PathBuf>, field: &'static str) -> Result<&'a Path, EngineError> {
    path.map(PathBuf::as_path)
        .ok_or_else(|| EngineError::BadRecipe {
            field,
            problem: "is not set: choose the model file".to_owned(),
        })
}

fn read_text(path: &Path) -> Result<String, EngineError> {
    std::fs::read_to_string(path).map_err(|e| EngineError::io("reading a model config", path, e))
}

/// Returns the slot's model, loading it first unless `key` matches what is loaded.
fn get_or_load<'a, T>(
    slot: &'a mut Option<Slot<T>>,
    loads: &AtomicUsize,
    key: (PathBuf, String),
    load: impl FnOnce() -> Result<T, EngineError>,
) -> Result<&'a T, EngineError> {
    if slot.as_ref().is_none_or(|s| s.key != key) {
        // Free the old model before loading its replacement: both may not fit together.
        *slot = None;
        tracing::info!(path = %key.0.display(), "loading model");
        let model = load()?;
        loads.fetch_add(1, Ordering::Relaxed);
        *slot = Some(Slot { key, model });
    }
    slot.as_ref()
        .map(|s| &s.model)
        .ok_or_else(|| EngineError::BadCheckpoint {
            problem: "model slot empty after loading".to_owned(),
        })
}

fn device_key(device: &Device, dtype: DType) -> String {
    format!("{:?}/{dtype:?}", device.location())
}

/// Loads a DiT expert from one safetensors file (any supported key layout).
fn load_dit(path: &Path, dtype: DType, device: &Device) -> Result<WanModel, EngineError> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let cfg = if let Some(json) = sidecar_config(path) {
        wan::Config::from_json(&read_text(&json)?)?
    } else {
        let original = wan::weights::to_original_layout(tensors.clone())?;
        let shapes = original
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect::<HashMap<_, _>>();
        wan::Config::detect(&shapes)?
    };
    WanModel::from_state_dict(&cfg, tensors, dtype, device)
}

pub(super) fn vae_config(path: &Path, family: ModelFamily) -> Result<wan_vae::Config, EngineError> {
    match sidecar_config(path) {
        Some(json) => {
            serde_json::from_str(&read_text(&json)?).map_err(|e| EngineError::BadWeights {
                problem: format!("the VAE config beside the weights is unusable ({e})"),
                path: json,
            })
        }
        None => Ok(match family {
            ModelFamily::Wan22I2vA14b => wan_vae::Config::wan21(),
            ModelFamily::Wan22Ti2v5b => wan_vae::Config::wan22(),
        }),
    }
}

fn load_text_encoder(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<TextEncoder, EngineError> {
    let cfg = match sidecar_config(path) {
        Some(json) => Some(umt5::Config::from_json_file(&json)?),
        None => None,
    };
    // The tokenizer: the folder's, a tokenizer.json beside the file, or the one the file embeds.
    let beside = path.parent().map(|dir| dir.join("tokenizer.json"));
    let tokenizer = match beside {
        Some(json) if path.is_file() && json.is_file() => json,
        _ => path.to_owned(),
    };
    TextEncoder::load(path, &tokenizer, cfg.as_ref(), dtype, device)
}

impl ModelCache {
    /// How many models have been loaded since this cache was made (reuse does not count).
    #[must_use]
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::Relaxed)
    }

    /// A handle on the load count that stays readable after the runner moves to the engine
    /// thread.
    #[must_use]
    pub fn load_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.loads)
    }

    /// Frees every model.
    pub fn clear(&mut self) {
        let loads = Arc::clone(&self.loads);
        *self = Self::default();
        self.loads = loads;
    }

    /// One expert of `recipe`, loading it unless it is loaded.
    pub fn expert(
        &mut self,
        recipe: &Recipe,
        expert: Expert,
        dtype: DType,
        device: &Device,
    ) -> Result<&WanModel, EngineError> {
        let (slot, path) = match expert {
            Expert::HighNoise => (
                &mut self.high_noise,
                required(recipe.models.high_noise.as_ref(), "models.high_noise")?,
            ),
            Expert::LowNoise => (
                &mut self.low_noise,
                required(recipe.models.low_noise.as_ref(), "models.low_noise")?,
            ),
        };
        let key = (path.to_owned(), device_key(device, dtype));
        get_or_load(slot, &self.loads, key, || load_dit(path, dtype, device))
    }

    /// Frees one expert (the next job or phase that needs it reloads it).
    pub fn free_expert(&mut self, expert: Expert) {
        match expert {
            Expert::HighNoise => self.high_noise = None,
            Expert::LowNoise => self.low_noise = None,
        }
    }

    /// The text encoder of `recipe`.
    pub fn text_encoder(
        &mut self,
        recipe: &Recipe,
        dtype: DType,
        device: &Device,
    ) -> Result<&mut TextEncoder, EngineError> {
        let path = required(recipe.models.text_encoder.as_ref(), "models.text_encoder")?;
        let key = (path.to_owned(), device_key(device, dtype));
        get_or_load(&mut self.text_encoder, &self.loads, key, || {
            load_text_encoder(path, dtype, device)
        })?;
        self.text_encoder
            .as_mut()
            .map(|s| &mut s.model)
            .ok_or_else(|| EngineError::BadCheckpoint {
                problem: "the text encoder is missing after loading".to_owned(),
            })
    }

    /// The VAE of `recipe` (always float32, as the reference runs it).
    pub fn vae(&mut self, recipe: &Recipe, device: &Device) -> Result<&WanVae, EngineError> {
        let path = required(recipe.models.vae.as_ref(), "models.vae")?;
        let key = (path.to_owned(), device_key(device, DType::F32));
        let family = recipe.model;
        get_or_load(&mut self.vae, &self.loads, key, || {
            wan_vae::load(&vae_config(path, family)?, path, device)
        })
    }

    /// The RIFE network from `path`.
    pub fn rife(&mut self, path: &Path, device: &Device) -> Result<&Rife, EngineError> {
        let key = (path.to_owned(), device_key(device, DType::F32));
        get_or_load(&mut self.rife, &self.loads, key, || {
            Rife::load(path, device)
        })
    }
}
