//! Save points of a render, so a crash, a cancel or a decode failure can continue
//! (`stillmotion render --resume`) instead of starting over.
//!
//! Beside the output, `<output>.latents.safetensors` is written after the high-noise phase and
//! again after the last step (a temporary name, then a rename, so a save point is whole or
//! absent). It is removed when the job finishes.
//!
//! **Exactness.** A multistep sampler (UniPC) carries state between steps, so latents alone
//! cannot continue it. The first save point therefore holds the initial noise and every flow
//! prediction the network made so far, in call order; resuming re-runs the sampling loop with
//! those predictions in place of the network ([`Replay`]), which rebuilds the sampler's state and
//! the latents bit for bit without a single network pass, and then carries on with the
//! network. The second save point holds the final latents, which decoding needs alone.
//!
//! **Same recipe.** The file stores a SHA-256 of the recipe fields that shape the latents
//! (everything but the output path, interpolation, device, memory reserve and live preview); resuming with
//! a different recipe is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::EngineError;
use crate::recipe::Recipe;
use crate::sampling::{Branch, Denoiser, Expert};

const HASH_KEY: &str = "stillmotion.recipe_sha256";
const PHASE_KEY: &str = "stillmotion.phase";
const HIGH_NOISE_DONE: &str = "high_noise_done";
const DENOISED: &str = "denoised";

/// The save point of `output`: `<output>.latents.safetensors` beside it.
#[must_use]
pub fn latents_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".latents.safetensors");
    PathBuf::from(name)
}

/// SHA-256 (hex) of the recipe fields that decide the latents.
pub fn recipe_hash(recipe: &Recipe) -> Result<String, EngineError> {
    let mut value = serde_json::to_value(recipe).map_err(|e| EngineError::BadRecipe {
        field: "recipe",
        problem: format!("cannot be hashed ({e})"),
    })?;
    if let Some(fields) = value.as_object_mut() {
        for field in [
            "output",
            "codec",
            "interpolation",
            "device",
            "reserve_vram_gb",
            "resume",
            "preset_name",
            "preview",
        ] {
            fields.remove(field);
        }
    }
    // serde_json maps are ordered by key, so the text is canonical.
    let digest = Sha256::digest(value.to_string().as_bytes());
    Ok(digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    }))
}

/// What a save point holds.
#[derive(Debug)]
pub enum SavedState {
    /// The high-noise phase is done: the initial noise and every prediction so far.
    HighNoiseDone {
        noise: Tensor,
        predictions: Vec<Tensor>,
    },
    /// Denoising is done: the final latents, ready to decode.
    Denoised { latents: Tensor },
}

/// Writes `state` to `path` (a temporary name beside it, then a rename).
pub fn save(path: &Path, hash: &str, state: &SavedState) -> Result<(), EngineError> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let phase = match state {
        SavedState::HighNoiseDone { noise, predictions } => {
            tensors.push(("noise".to_owned(), noise.clone()));
            for (i, p) in predictions.iter().enumerate() {
                tensors.push((format!("prediction_{i:05}"), p.clone()));
            }
            HIGH_NOISE_DONE
        }
        SavedState::Denoised { latents } => {
            tensors.push(("latents".to_owned(), latents.clone()));
            DENOISED
        }
    };
    // Save from host memory, contiguous.
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    let metadata = HashMap::from([
        (HASH_KEY.to_owned(), hash.to_owned()),
        (PHASE_KEY.to_owned(), phase.to_owned()),
    ]);
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &partial,
    )
    .map_err(|e| EngineError::ResumeState {
        problem: format!("the save point could not be written ({e}); check the disk"),
        path: partial.clone(),
    })?;
    std::fs::rename(&partial, path).map_err(|e| EngineError::io("saving the latents", path, e))
}

/// Reads the save point at `path` into host memory, refusing one made from another recipe.
pub fn load(path: &Path, hash: &str) -> Result<SavedState, EngineError> {
    let bad = |problem: String| EngineError::ResumeState {
        problem,
        path: path.to_owned(),
    };
    if !path.is_file() {
        return Err(bad(
            "there is nothing to resume: no saved latents beside the output (run without --resume)"
                .to_owned(),
        ));
    }
    let header = crate::weights::read_header(path)?;
    match header.metadata.get(HASH_KEY) {
        Some(saved) if saved == hash => {}
        Some(_) => {
            return Err(bad(
                "the saved latents were made with a different recipe (prompt, seed, models, size, steps, sampler or guidance changed): resume with the same settings, or run without --resume to start over"
                    .to_owned(),
            ));
        }
        None => return Err(bad("this is not a Stillmotion save point".to_owned())),
    }
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .ok_or_else(|| bad(format!("the save point has no tensor {name}")))
    };
    match header.metadata.get(PHASE_KEY).map(String::as_str) {
        Some(HIGH_NOISE_DONE) => {
            let noise = take("noise")?;
            let count = header
                .tensors
                .keys()
                .filter(|k| k.starts_with("prediction_"))
                .count();
            let predictions = (0..count)
                .map(|i| take(&format!("prediction_{i:05}")))
                .collect::<Result<_, _>>()?;
            Ok(SavedState::HighNoiseDone { noise, predictions })
        }
        Some(DENOISED) => Ok(SavedState::Denoised {
            latents: take("latents")?,
        }),
        other => Err(bad(format!("unknown save point phase {other:?}"))),
    }
}

/// A denoiser that first hands back recorded predictions (in call order), then runs the real
/// network; while `recorded` holds a list, every prediction it returns is added to it. Both
/// lists live in host memory, so the save point costs no device memory.
pub struct Replay<'a, D> {
    pub inner: D,
    pub replay: std::vec::IntoIter<Tensor>,
    pub recorded: &'a RefCell<Option<Vec<Tensor>>>,
}

impl<D: Denoiser> Denoiser for Replay<'_, D> {
    fn prepare_expert(&mut self, expert: Expert) -> Result<(), EngineError> {
        // A phase answered from the save point needs no network (a resumed job never loads
        // the high-noise expert).
        if self.replay.len() > 0 {
            return Ok(());
        }
        self.inner.prepare_expert(expert)
    }

    fn predict_flow(
        &mut self,
        latents: &Tensor,
        timestep: f32,
        expert: Expert,
        branch: Branch,
    ) -> Result<Tensor, EngineError> {
        let flow = match self.replay.next() {
            Some(saved) => saved.to_device(latents.device())?,
            None => self.inner.predict_flow(latents, timestep, expert, branch)?,
        };
        if let Some(recorded) = self.recorded.borrow_mut().as_mut() {
            recorded.push(flow.to_device(&Device::Cpu)?);
        }
        Ok(flow)
    }
}
