//! Loaded models, kept between jobs and reloaded only when a path, the device or (for a DiT
//! expert) its LoRAs change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};

use crate::EngineError;
use crate::preset::ModelFamily;
use crate::recipe::Recipe;
use crate::rife::Rife;
use crate::sampling::Expert;
use crate::umt5::{self, EncoderFingerprint, Encoding, EncodingCache, TextEncoder};
use crate::wan::model::ParkedModel;
use crate::wan::{self, LoraSpec, WanModel};
use crate::wan_vae::{self, WanVae};

/// What a loaded model was made from: its file or folder, the device and dtype, and (DiT
/// experts) the LoRAs merged into it with their strengths.
#[derive(Clone, Debug, PartialEq)]
struct ModelKey {
    path: PathBuf,
    device: String,
    loras: Vec<LoraSpec>,
    /// DiT experts under block swapping: the blocks kept on the device.
    resident_blocks: Option<usize>,
    /// DiT experts: float8 layers the LoRAs change were requantized to float8.
    requantize: bool,
    /// DiT experts: where the LoRAs' low-rank pairs went (merged or on the fly).
    lora_mode: wan::LoraMode,
}

impl ModelKey {
    fn plain(path: &Path, device: &Device, dtype: DType) -> Self {
        Self {
            path: path.to_owned(),
            device: device_key(device, dtype),
            loras: Vec::new(),
            resident_blocks: None,
            requantize: false,
            lora_mode: wan::LoraMode::default(),
        }
    }
}

/// One loaded model and what it was loaded from.
struct Slot<T> {
    key: ModelKey,
    model: T,
}

/// A DiT expert between uses: on its device, or parked in host memory while the other expert
/// runs (one at a time), so that bringing it back uploads from host memory instead of reading
/// its file again.
enum Held {
    OnDevice(WanModel),
    Parked(ParkedModel),
}

/// Host memory left free beside a parked expert: the OS, the decode's frames, RIFE.
const PARK_HOST_MARGIN: u64 = 4 << 30;

/// `MemAvailable` of `/proc/meminfo`, in bytes; `None` where it cannot be read.
fn host_memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Whether `bytes` more of host memory leave [`PARK_HOST_MARGIN`] of `available` free.
fn host_has_room(bytes: u64, available: Option<u64>) -> bool {
    available.is_some_and(|available| bytes.saturating_add(PARK_HOST_MARGIN) <= available)
}

/// The models of the last job. A job that names the same files reuses them.
#[derive(Default)]
pub struct ModelCache {
    high_noise: Option<Slot<Held>>,
    low_noise: Option<Slot<Held>>,
    text_encoder: Option<Slot<TextEncoder>>,
    vae: Option<Slot<WanVae>>,
    rife: Option<Slot<Rife>>,
    /// Prompt encodings, kept here rather than in the encoder so that they survive it being
    /// freed after encoding (or reloaded); keyed by the encoder's fingerprint.
    encodings: EncodingCache,
    loads: Arc<AtomicUsize>,
    /// What loading found that the user should hear about (LoRA keys that matched nothing),
    /// until the runner reports it.
    warnings: Vec<String>,
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
    key: ModelKey,
    load: impl FnOnce() -> Result<T, EngineError>,
) -> Result<&'a T, EngineError> {
    if slot.as_ref().is_none_or(|s| s.key != key) {
        // Free the old model before loading its replacement: both may not fit together.
        *slot = None;
        tracing::info!(path = %key.path.display(), loras = key.loras.len(), "loading model");
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

/// The LoRAs of `recipe` for one expert, with that expert's strength; a LoRA at strength 0
/// for this expert (one made for the other expert) is left out.
pub(super) fn expert_loras(recipe: &Recipe, expert: Expert) -> Vec<LoraSpec> {
    recipe
        .loras
        .iter()
        .filter_map(|lora| {
            let strength = match expert {
                Expert::HighNoise => lora.strength_high_noise,
                Expert::LowNoise => lora.strength_low_noise,
            };
            (strength != 0.0).then(|| LoraSpec {
                path: lora.path.clone(),
                strength,
            })
        })
        .collect()
}

/// Loads a DiT expert through the model loader (memory-mapped safetensors, official shards
/// with their index and `config.json`, diffusers folders, ComfyUI fp8_scaled, GGUF), merging
/// `loras`, with only `resident_blocks` transformer blocks on the device when block swapping
/// (GGUF files load whole: their quantized blocks cannot stream); a sidecar `<stem>.json`
/// beside a single file is its config. LoRA keys that matched nothing, and a swap that could
/// not be done, are returned as warnings.
fn load_dit(
    path: &Path,
    (loras, lora): (&[LoraSpec], wan::LoraLoad),
    resident_blocks: Option<usize>,
    (dtype, device): (DType, &Device),
) -> Result<(WanModel, Vec<String>), EngineError> {
    let cfg = match sidecar_config(path) {
        Some(json) => Some(wan::Config::from_json(&read_text(&json)?)?),
        None => None,
    };
    let mut warnings = Vec::new();
    let resident_blocks = match resident_blocks {
        Some(_) if crate::gguf::is_gguf(path) => {
            warnings.push(format!(
                "block swapping cannot stream a GGUF model's quantized blocks, so the whole expert is loaded: if the GPU runs out of memory, use the fp8_scaled or bf16 file, or lower the VRAM reserve (--reserve-vram): {}",
                path.display()
            ));
            None
        }
        other => other,
    };
    let (model, reports) = WanModel::load_merged(
        path,
        cfg.as_ref(),
        loras,
        lora,
        resident_blocks,
        device,
        dtype,
    )?;
    warnings.extend(loras.iter().zip(&reports).flat_map(|(spec, report)| {
        report.unmatched.iter().map(move |(reason, keys)| {
            let some = keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            format!(
                "LoRA {} keys ignored ({reason}), e.g. {some}: {}",
                keys.len(),
                spec.path.display()
            )
        })
    }));
    Ok((model, warnings))
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

/// The fingerprint of the text encoder at `path` (with its sidecar config) in `dtype`, without
/// loading it.
fn text_encoder_fingerprint(path: &Path, dtype: DType) -> Result<EncoderFingerprint, EngineError> {
    let cfg = match sidecar_config(path) {
        Some(json) => Some(umt5::Config::from_json_file(&json)?),
        None => None,
    };
    TextEncoder::fingerprint_of(path, cfg.as_ref(), dtype)
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
    // The tokenizer: a tokenizer.json beside the file, the official release's
    // `google/umt5-xxl/` beside its `.pth`, a diffusers folder's `tokenizer/` beside its
    // `text_encoder/`, the folder's own, or the one the file embeds.
    let beside = |name: &str| path.parent().map(|dir| dir.join(name));
    let tokenizer = match (beside("tokenizer.json"), beside("google/umt5-xxl")) {
        (Some(json), _) if path.is_file() && json.is_file() => json,
        (_, Some(official)) if path.is_file() && official.is_dir() => official,
        _ => match beside("tokenizer") {
            Some(dir) if path.is_dir() && dir.is_dir() => dir,
            _ => path.to_owned(),
        },
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

    /// Frees every model (prompt encodings, in host memory, are kept).
    pub fn clear(&mut self) {
        let loads = Arc::clone(&self.loads);
        let encodings = std::mem::take(&mut self.encodings);
        *self = Self::default();
        self.loads = loads;
        self.encodings = encodings;
    }

    /// One expert of `recipe`, loading it unless it is loaded (or bringing it back from host
    /// memory when it was parked: no file is read), with only `resident_blocks` transformer blocks on the
    /// device (block swapping) unless that is `None`, its LoRAs taken as `lora` says (the job
    /// plan's resolved choice, `pipeline::JobPlan::loras`).
    pub fn expert(
        &mut self,
        recipe: &Recipe,
        expert: Expert,
        (dtype, device): (DType, &Device),
        (resident_blocks, lora): (Option<usize>, wan::LoraLoad),
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
        let loras = expert_loras(recipe, expert);
        // Without LoRAs how they would be taken changes nothing loaded: such an expert is not
        // reloaded when only that setting changes.
        let lora = if loras.is_empty() {
            wan::LoraLoad::default()
        } else {
            lora
        };
        let key = ModelKey {
            loras: loras.clone(),
            resident_blocks,
            requantize: lora.requantize,
            lora_mode: lora.mode,
            ..ModelKey::plain(path, device, dtype)
        };
        if let Some(Slot {
            key: parked_key,
            model: Held::Parked(_),
        }) = slot
            && *parked_key == key
            && let Some(Slot {
                key,
                model: Held::Parked(parked),
            }) = slot.take()
        {
            tracing::info!(?expert, "expert back on the device from host memory");
            *slot = Some(Slot {
                key,
                model: Held::OnDevice(parked.restore()?),
            });
        }
        let warnings = &mut self.warnings;
        let held = get_or_load(slot, &self.loads, key, || {
            let (model, found) = load_dit(path, (&loras, lora), resident_blocks, (dtype, device))?;
            warnings.extend(found);
            Ok(Held::OnDevice(model))
        })?;
        match held {
            Held::OnDevice(model) => Ok(model),
            Held::Parked(_) => Err(EngineError::BadCheckpoint {
                problem: "the expert is still parked after loading".to_owned(),
            }),
        }
    }

    /// Moves `expert` off the device into host memory when host memory allows (bringing it
    /// back then reads no file), else frees it; the next phase or job that needs it gets it
    /// back through [`ModelCache::expert`].
    pub fn park_expert(&mut self, expert: Expert) {
        let slot = match expert {
            Expert::HighNoise => &mut self.high_noise,
            Expert::LowNoise => &mut self.low_noise,
        };
        if !slot
            .as_ref()
            .is_some_and(|s| matches!(s.model, Held::OnDevice(_)))
        {
            return;
        }
        let Some(Slot {
            key,
            model: Held::OnDevice(model),
        }) = slot.take()
        else {
            return;
        };
        // On the CPU parking moves nothing: the tensors already are in host memory.
        let needed = if key.device.starts_with("Cpu") {
            0
        } else {
            model.resident_bytes() as u64
        };
        let available = host_memory_available();
        if needed > 0 && !host_has_room(needed, available) {
            tracing::info!(
                ?expert,
                needed,
                ?available,
                margin = PARK_HOST_MARGIN,
                "expert freed, not parked: host memory is short (it will be read from its file again)"
            );
            return;
        }
        match model.park() {
            Ok(parked) => {
                tracing::info!(
                    ?expert,
                    host_bytes = parked.host_bytes(),
                    "expert parked in host memory"
                );
                *slot = Some(Slot {
                    key,
                    model: Held::Parked(parked),
                });
            }
            Err(error) => {
                tracing::info!(?expert, %error, "expert freed, not parked");
            }
        }
    }

    /// What loading found that the user should hear about since the last call.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// The number of transformer blocks of `expert` as loaded (`None` when it is not loaded).
    #[must_use]
    pub fn loaded_expert_layers(&self, expert: Expert) -> Option<usize> {
        let slot = match expert {
            Expert::HighNoise => &self.high_noise,
            Expert::LowNoise => &self.low_noise,
        };
        slot.as_ref().map(|s| match &s.model {
            Held::OnDevice(model) => model.config().num_layers,
            Held::Parked(parked) => parked.config().num_layers,
        })
    }

    /// Frees the DiT experts and the text encoder, keeping the VAE (and RIFE): room for a decode
    /// that ran out of memory.
    pub fn free_all_but_vae(&mut self) {
        self.high_noise = None;
        self.low_noise = None;
        self.text_encoder = None;
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
    ) -> Result<&TextEncoder, EngineError> {
        let path = required(recipe.models.text_encoder.as_ref(), "models.text_encoder")?;
        let key = ModelKey::plain(path, device, dtype);
        get_or_load(&mut self.text_encoder, &self.loads, key, || {
            load_text_encoder(path, dtype, device)
        })
    }

    /// Frees the text encoder (its encodings stay cached) and lets the device's allocator
    /// return its memory before the experts load.
    pub fn free_text_encoder(&mut self, device: &Device) -> Result<(), EngineError> {
        if self.text_encoder.take().is_some() {
            // Frees on the device are queued on its stream: wait for them, so the memory is
            // back before the next allocation asks for it.
            device.synchronize()?;
            tracing::info!("text encoder freed after encoding");
        }
        Ok(())
    }

    /// The encodings of `prompts` by the recipe's text encoder in `dtype` on `device`: cached
    /// ones as they are, the others encoded (loading the encoder only then) and cached.
    /// `then_free`: the encoder runs on the device alone, so the experts leave the device
    /// before it loads, and it is freed after encoding.
    pub fn encode_prompts(
        &mut self,
        recipe: &Recipe,
        prompts: &[&str],
        (dtype, device): (DType, &Device),
        then_free: bool,
    ) -> Result<Vec<Encoding>, EngineError> {
        let path = required(recipe.models.text_encoder.as_ref(), "models.text_encoder")?;
        let fingerprint = text_encoder_fingerprint(path, dtype)?;
        let mut found: Vec<Option<Encoding>> = prompts
            .iter()
            .map(|prompt| self.encodings.get(prompt, &fingerprint))
            .collect();
        if found.iter().all(Option::is_some) {
            if then_free {
                self.free_text_encoder(device)?;
            }
        } else {
            if then_free {
                self.make_room_for_text_encoder(device)?;
            }
            let encoder = self.text_encoder(recipe, dtype, device)?;
            let mut fresh = Vec::new();
            for (prompt, slot) in prompts.iter().zip(&mut found) {
                if slot.is_none() {
                    let encoding = encoder.encode(prompt)?;
                    // Kept in host memory: a handful of contexts should not hold device memory.
                    let encoding = Encoding {
                        context: encoding.context.to_device(&Device::Cpu)?,
                        ..encoding
                    };
                    fresh.push((*prompt, encoding.clone()));
                    *slot = Some(encoding);
                }
            }
            for (prompt, encoding) in fresh {
                self.encodings.insert(prompt, &fingerprint, encoding);
            }
            if then_free {
                self.free_text_encoder(device)?;
            }
        }
        found
            .into_iter()
            .map(|encoding| {
                encoding.ok_or_else(|| EngineError::BadCheckpoint {
                    problem: "a prompt was left unencoded".to_owned(),
                })
            })
            .collect()
    }

    /// Moves what of the DiT is on the device to host memory (or frees it), for the text
    /// encoder to run there alone.
    fn make_room_for_text_encoder(&mut self, device: &Device) -> Result<(), EngineError> {
        let on_device = |slot: &Option<Slot<Held>>| {
            slot.as_ref()
                .is_some_and(|s| matches!(s.model, Held::OnDevice(_)))
        };
        let loaded = on_device(&self.high_noise) || on_device(&self.low_noise);
        self.park_expert(Expert::HighNoise);
        self.park_expert(Expert::LowNoise);
        if loaded {
            device.synchronize()?;
        }
        Ok(())
    }

    /// The VAE of `recipe`: float32 on the CPU, as the references run it (the golden cases
    /// hold there); bfloat16 on the GPU, as ComfyUI runs it on recent GPUs, where float32
    /// convolutions cost 2.4 times bf16's (`bench/RESULTS.md`).
    pub fn vae(&mut self, recipe: &Recipe, device: &Device) -> Result<&WanVae, EngineError> {
        let path = required(recipe.models.vae.as_ref(), "models.vae")?;
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let key = ModelKey::plain(path, device, dtype);
        let family = recipe.model;
        get_or_load(&mut self.vae, &self.loads, key, || {
            wan_vae::load_in(&vae_config(path, family)?, path, device, dtype)
        })
    }

    /// The RIFE network from `path`.
    pub fn rife(&mut self, path: &Path, device: &Device) -> Result<&Rife, EngineError> {
        let key = ModelKey::plain(path, device, DType::F32);
        get_or_load(&mut self.rife, &self.loads, key, || {
            Rife::load(path, device)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Tensor;

    use super::*;
    use crate::preset;
    use crate::recipe::{LoraChoice, RecipeChoices};

    fn golden(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/pipeline_i2v_official_tiny")
            .join(name)
    }

    #[test]
    fn a_changed_lora_reloads_its_expert_and_an_unchanged_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let t = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as f32 + seed) * 0.37).sin() * 0.2)
                .collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let lora_path = dir.path().join("lora.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([
                (
                    "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                    t(&[4, 32], 1.0),
                ),
                (
                    "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                    t(&[32, 4], 2.0),
                ),
                (
                    "diffusion_model.blocks.0.k_img.lora_up.weight",
                    t(&[32, 4], 3.0),
                ),
            ]),
            &lora_path,
        )
        .unwrap();
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(golden("high_noise.safetensors"));
        recipe.models.low_noise = Some(golden("low_noise.safetensors"));
        let mut cache = ModelCache::default();
        let weight = |cache: &mut ModelCache, recipe: &Recipe| {
            cache
                .expert(
                    recipe,
                    Expert::HighNoise,
                    (DType::F32, &dev),
                    (None, recipe_lora(recipe)),
                )
                .unwrap();
            cache.loads()
        };
        assert_eq!(weight(&mut cache, &recipe), 1);
        assert_eq!(weight(&mut cache, &recipe), 1, "same files: reused");
        // Without LoRAs, how LoRAs would be taken loads nothing different.
        recipe.lora_mode = wan::LoraMode::OnTheFly;
        recipe.lora_requantize = wan::LoraRequantize::Always;
        assert_eq!(weight(&mut cache, &recipe), 1, "no LoRAs: mode ignored");
        recipe.lora_mode = wan::LoraMode::Auto;
        recipe.lora_requantize = wan::LoraRequantize::Auto;
        recipe.loras = vec![LoraChoice {
            path: lora_path.clone(),
            strength_high_noise: 1.0,
            strength_low_noise: 0.0,
        }];
        assert_eq!(weight(&mut cache, &recipe), 2, "a LoRA added: reloaded");
        let warnings = cache.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("k_img") && warnings[0].contains("Wan2.1 I2V LoRA"),
            "{warnings:?}"
        );
        assert_eq!(weight(&mut cache, &recipe), 2, "same LoRA: reused");
        recipe.loras[0].strength_low_noise = 0.5;
        assert_eq!(
            weight(&mut cache, &recipe),
            2,
            "only the other expert's strength changed"
        );
        recipe.loras[0].strength_high_noise = 0.5;
        assert_eq!(weight(&mut cache, &recipe), 3, "strength changed: reloaded");
        recipe.lora_mode = wan::LoraMode::OnTheFly;
        assert_eq!(
            weight(&mut cache, &recipe),
            4,
            "LoRA mode changed: reloaded"
        );
        assert_eq!(weight(&mut cache, &recipe), 4, "same mode: reused");
        recipe.loras.clear();
        assert_eq!(weight(&mut cache, &recipe), 5, "LoRA removed: reloaded");
        for mode in [wan::LoraMode::Merge, wan::LoraMode::QuantizedOnTheFly] {
            recipe.lora_mode = mode;
            assert_eq!(weight(&mut cache, &recipe), 5, "no LoRAs: {mode:?} ignored");
        }
    }

    /// The recipe's LoRA mode taken as it is, as a job plan passes a resolved one.
    fn recipe_lora(recipe: &Recipe) -> wan::LoraLoad {
        wan::LoraLoad {
            mode: recipe.lora_mode,
            requantize: recipe.lora_requantize.resolve(&Device::Cpu),
        }
    }

    #[test]
    fn cached_encodings_outlive_a_freed_encoder_and_never_serve_another_file() {
        let dev = Device::Cpu;
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.text_encoder = Some(golden("umt5.safetensors"));
        recipe.models.high_noise = Some(golden("high_noise.safetensors"));
        let mut cache = ModelCache::default();
        let prompts = ["a lighthouse at dusk", "blurry"];
        let encode = |cache: &mut ModelCache, recipe: &Recipe, prompts: &[&str]| {
            cache
                .encode_prompts(recipe, prompts, (DType::F32, &dev), true)
                .unwrap()
        };
        // An expert loaded by an earlier job leaves the device before the encoder loads.
        cache
            .expert(
                &recipe,
                Expert::HighNoise,
                (DType::F32, &dev),
                (None, recipe_lora(&recipe)),
            )
            .unwrap();
        let first = encode(&mut cache, &recipe, &prompts);
        assert_eq!(cache.loads(), 2, "the expert, then the text encoder");
        assert!(cache.text_encoder.is_none(), "freed after encoding");
        assert!(
            matches!(
                cache.high_noise,
                Some(Slot {
                    model: Held::Parked(_),
                    ..
                })
            ),
            "the expert left the device (parked in host memory) first"
        );
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| !e.truncated));

        // The next job, same prompts: nothing loads, the same contexts come back.
        let again = encode(&mut cache, &recipe, &prompts);
        assert_eq!(cache.loads(), 2, "cached: the encoder is not loaded again");
        for (a, b) in first.iter().zip(&again) {
            let diff = (&a.context - &b.context).unwrap().abs().unwrap();
            assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }

        // One new prompt: the encoder loads once, for it alone, and is freed again.
        encode(&mut cache, &recipe, &["a lighthouse at dawn", "blurry"]);
        assert_eq!(cache.loads(), 3);
        assert!(cache.text_encoder.is_none());

        // Another encoder file (same bytes, another path) never reuses those encodings.
        let dir = tempfile::tempdir().unwrap();
        for name in ["umt5.json", "tokenizer.json"] {
            std::fs::copy(golden(name), dir.path().join(name)).unwrap();
        }
        let other = dir.path().join("umt5.safetensors");
        std::fs::copy(golden("umt5.safetensors"), &other).unwrap();
        recipe.models.text_encoder = Some(other);
        let copied = encode(&mut cache, &recipe, &prompts);
        assert_eq!(cache.loads(), 4, "a different file is encoded afresh");
        assert_eq!(copied[0].context.dims(), first[0].context.dims());

        // Kept on the device (the placement that keeps it): loaded once, then reused.
        let kept = cache
            .encode_prompts(&recipe, &["a third prompt"], (DType::F32, &dev), false)
            .unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(cache.loads(), 5);
        assert!(cache.text_encoder.is_some());
        cache
            .encode_prompts(&recipe, &["a fourth prompt"], (DType::F32, &dev), false)
            .unwrap();
        assert_eq!(cache.loads(), 5, "a loaded encoder is reused");
    }

    /// The flow `expert` predicts for fixed inputs, through the cache as the denoiser asks.
    fn flow(
        cache: &mut ModelCache,
        recipe: &Recipe,
        expert: Expert,
        swap: Option<usize>,
    ) -> Tensor {
        let dev = Device::Cpu;
        let model = cache
            .expert(
                recipe,
                expert,
                (DType::F32, &dev),
                (swap, recipe_lora(recipe)),
            )
            .unwrap();
        let cfg = model.config().clone();
        let ramp = |shape: &[usize], phase: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let x = ramp(&[1, cfg.out_dim, 2, 4, 4], 0.0);
        let y = ramp(&[1, cfg.in_dim - cfg.out_dim, 2, 4, 4], 1.0);
        let context = ramp(&[1, 3, cfg.text_dim], 2.0);
        let t = Tensor::new(&[700.0_f64], &dev).unwrap();
        model.forward(&x, Some(&y), &t, &context).unwrap()
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn a_parked_expert_comes_back_without_reading_its_file_and_computes_the_same() {
        let preset = preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, RecipeChoices::default());
        recipe.models.high_noise = Some(golden("high_noise.safetensors"));
        recipe.models.low_noise = Some(golden("low_noise.safetensors"));
        // Whole experts, then every block streamed, then one of two.
        for swap in [None, Some(0), Some(1)] {
            let mut cache = ModelCache::default();
            let high = flow(&mut cache, &recipe, Expert::HighNoise, swap);
            // Two jobs' worth of phase switches, one expert on the device at a time.
            for _ in 0..2 {
                cache.park_expert(Expert::HighNoise);
                let low = flow(&mut cache, &recipe, Expert::LowNoise, swap);
                cache.park_expert(Expert::LowNoise);
                let again = flow(&mut cache, &recipe, Expert::HighNoise, swap);
                assert_eq!(max_abs(&again, &high), 0.0, "{swap:?}");
                assert!(max_abs(&low, &high) > 0.0, "the other expert ran");
            }
            assert_eq!(
                cache.loads(),
                2,
                "{swap:?}: each expert read from its file once"
            );
            // What the key holds still reloads: another block split.
            cache.park_expert(Expert::HighNoise);
            let other_split = swap.map_or(Some(1), |_| None);
            let reloaded = flow(&mut cache, &recipe, Expert::HighNoise, other_split);
            assert_eq!(cache.loads(), 3, "{swap:?}: another block split reloads");
            assert_eq!(max_abs(&reloaded, &high), 0.0);
        }
    }

    #[test]
    fn parking_needs_mem_available_beyond_the_margin() {
        let meminfo =
            "MemTotal:       131072000 kB\nMemFree:         1000 kB\nMemAvailable:   10485760 kB\n";
        let available = parse_mem_available(meminfo);
        assert_eq!(available, Some(10 << 30));
        assert!(host_has_room(6 << 30, available));
        assert!(!host_has_room((6 << 30) + 1, available));
        assert!(
            !host_has_room(1, None),
            "unknown host memory: free, do not park"
        );
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
