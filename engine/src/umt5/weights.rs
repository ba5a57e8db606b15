//! Reads umT5 encoder checkpoints in the layouts users have and names every tensor as the
//! Hugging Face checkpoint does:
//!
//! - ComfyUI's `umt5_xxl_fp16.safetensors`: one file, HF naming, plus the tokenizer as a
//!   `spiece_model` uint8 tensor (left for [`super::tokenizer`]).
//! - diffusers' `text_encoder/` folder: `model.safetensors` or shards with
//!   `model.safetensors.index.json`, HF naming, and a `config.json`.
//! - the official `models_t5_umt5-xxl-enc-bf16.pth`: a PyTorch pickle (read as data by
//!   `candle_core::pickle`, never executed) in Wan-native naming, renamed by [`WAN_RENAMES`].
//!
//! Per-tensor fp8 scales (`scale_weight`, ComfyUI's `scaled_fp8` marker) are refused until the
//! fp8 path lands: ignoring them would silently produce garbage.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{Config, Umt5Encoder};
use crate::EngineError;

/// Wan-native key (inside `blocks.{i}.`) → HF key (inside `encoder.block.{i}.`).
pub const WAN_RENAMES: &[(&str, &str)] = &[
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    (
        "pos_embedding.embedding.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
];

/// Wan-native top-level keys → HF keys.
const WAN_TOP_RENAMES: &[(&str, &str)] = &[
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
];

/// The tensor in ComfyUI's text-encoder files that holds the SentencePiece model.
pub const SPIECE_TENSOR: &str = "spiece_model";

/// Where a checkpoint's files are: the file or folder the user named, resolved.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// What the user named (used in messages).
    pub path: PathBuf,
    /// The weight files to read.
    pub files: Vec<PathBuf>,
    /// `config.json` next to the weights, when there is one (diffusers).
    pub config_json: Option<PathBuf>,
}

impl Checkpoint {
    /// Resolves a `.safetensors` / `.pth` file, an `*.index.json`, or a diffusers folder.
    pub fn locate(path: &Path) -> Result<Self, EngineError> {
        let bad = |problem: &str| EngineError::BadTextEncoder {
            problem: problem.to_owned(),
            path: path.to_owned(),
        };
        let (index, dir) = if path.is_dir() {
            let sharded = path.join("model.safetensors.index.json");
            if sharded.is_file() {
                (Some(sharded), path.to_owned())
            } else if path.join("model.safetensors").is_file() {
                return Ok(Self {
                    path: path.to_owned(),
                    files: vec![path.join("model.safetensors")],
                    config_json: Some(path.join("config.json")).filter(|p| p.is_file()),
                });
            } else {
                return Err(bad(
                    "this folder has neither model.safetensors nor model.safetensors.index.json; \
                     choose the text encoder file or diffusers' text_encoder folder",
                ));
            }
        } else if path.to_string_lossy().ends_with(".json") {
            let dir = path.parent().map_or_else(PathBuf::new, Path::to_owned);
            (Some(path.to_owned()), dir)
        } else if path.is_file() {
            return Ok(Self {
                path: path.to_owned(),
                files: vec![path.to_owned()],
                config_json: None,
            });
        } else {
            return Err(bad("no text encoder file here; check the path"));
        };
        let index = index.unwrap_or_default();
        let text =
            std::fs::read_to_string(&index).map_err(|e| EngineError::io("reading", &index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::BadTextEncoder {
                problem: format!("the shard index is not valid JSON ({e})"),
                path: index.clone(),
            })?;
        let files: BTreeSet<&str> = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .map(|map| map.values().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        if files.is_empty() {
            return Err(EngineError::BadTextEncoder {
                problem: "the shard index has no weight_map".to_owned(),
                path: index,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            files: files.into_iter().map(|f| dir.join(f)).collect(),
            config_json: Some(dir.join("config.json")).filter(|p| p.is_file()),
        })
    }

    /// Every tensor, on the CPU, named as in the HF checkpoint.
    pub fn read_tensors(&self) -> Result<HashMap<String, Tensor>, EngineError> {
        let mut tensors = HashMap::new();
        for file in &self.files {
            let bad = |e: candle_core::Error| EngineError::BadTextEncoder {
                problem: format!("cannot read this checkpoint ({e})"),
                path: file.clone(),
            };
            let name = file.to_string_lossy();
            let read: Vec<(String, Tensor)> = if name.ends_with(".safetensors") {
                candle_core::safetensors::load(file, &Device::Cpu)
                    .map_err(bad)?
                    .into_iter()
                    .collect()
            } else {
                candle_core::pickle::read_all(file).map_err(bad)?
            };
            tensors.extend(read);
        }
        normalize_names(tensors, &self.path)
    }

    /// Loads the encoder onto `device` in `dtype`.
    pub fn load_encoder(
        &self,
        cfg: &Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Umt5Encoder, EngineError> {
        let tensors = self.read_tensors()?;
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Umt5Encoder::new(cfg, vb).map_err(|e| EngineError::BadTextEncoder {
            problem: format!(
                "this is not a umT5 encoder checkpoint matching the configuration ({e}); \
                 use umt5_xxl_fp16.safetensors, models_t5_umt5-xxl-enc-bf16.pth or a \
                 diffusers text_encoder folder"
            ),
            path: self.path.clone(),
        })
    }
}

/// Renames Wan-native keys to HF keys, drops what the encoder does not use, and refuses
/// fp8-scaled checkpoints.
fn normalize_names(
    tensors: HashMap<String, Tensor>,
    path: &Path,
) -> Result<HashMap<String, Tensor>, EngineError> {
    if let Some(scale) = tensors
        .iter()
        .find(|(name, t)| {
            name.ends_with("scale_weight")
                || name.ends_with("scale_input")
                || name.as_str() == "scaled_fp8"
                || t.dtype() == DType::F8E4M3
        })
        .map(|(name, _)| name.clone())
    {
        return Err(EngineError::BadTextEncoder {
            problem: format!(
                "fp8-scaled text encoders (tensor {scale}) are not supported yet; use \
                 umt5_xxl_fp16.safetensors or models_t5_umt5-xxl-enc-bf16.pth"
            ),
            path: path.to_owned(),
        });
    }
    let wan_layout = tensors.contains_key("token_embedding.weight");
    let mut out = HashMap::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let renamed = if wan_layout {
            wan_to_hf(&name)
        } else {
            Some(name.clone())
        };
        match renamed {
            Some(hf) if hf != SPIECE_TENSOR && !hf.starts_with("decoder.") => {
                out.insert(hf, tensor);
            }
            _ => tracing::debug!(tensor = %name, "unused by the umT5 encoder"),
        }
    }
    // transformers ties the input embedding; some exports keep only this copy.
    if !out.contains_key("shared.weight")
        && let Some(tied) = out.remove("encoder.embed_tokens.weight")
    {
        out.insert("shared.weight".to_owned(), tied);
    }
    Ok(out)
}

/// HF name of a Wan-native tensor, or `None` when the encoder does not use it.
#[must_use]
pub fn wan_to_hf(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = WAN_TOP_RENAMES.iter().find(|(wan, _)| *wan == name) {
        return Some(hf.to_owned());
    }
    let rest = name.strip_prefix("blocks.")?;
    let (index, inner) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let (_, hf) = WAN_RENAMES.iter().find(|(wan, _)| *wan == inner)?;
    Some(format!("encoder.block.{index}.{hf}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_names_map_onto_hf_names() {
        assert_eq!(
            wan_to_hf("blocks.23.ffn.gate.0.weight").as_deref(),
            Some("encoder.block.23.layer.1.DenseReluDense.wi_0.weight")
        );
        assert_eq!(
            wan_to_hf("token_embedding.weight").as_deref(),
            Some("shared.weight")
        );
        assert_eq!(wan_to_hf("blocks.x.norm1.weight"), None);
        assert_eq!(wan_to_hf("head.weight"), None);
    }

    #[test]
    fn fp8_scales_are_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("umt5_xxl_fp8_e4m3fn_scaled.safetensors");
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let tensors = HashMap::from([
            ("shared.weight".to_owned(), t.clone()),
            (
                "encoder.block.0.layer.0.SelfAttention.q.scale_weight".to_owned(),
                t,
            ),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let error = Checkpoint::locate(&path)
            .unwrap()
            .read_tensors()
            .unwrap_err()
            .to_string();
        assert!(error.contains("fp8-scaled"), "{error}");
        assert!(error.ends_with(&path.display().to_string()), "{error}");
    }

    #[test]
    fn a_folder_without_weights_says_what_to_choose() {
        let dir = tempfile::tempdir().unwrap();
        let error = Checkpoint::locate(dir.path()).unwrap_err().to_string();
        assert!(error.contains("text_encoder folder"), "{error}");
    }
}
