//! The transformer's hyper-parameters: named presets, a checkpoint's `config.json` (official or
//! diffusers keys), and detection from tensor shapes when a file carries no config.

use std::collections::HashMap;
use std::hash::BuildHasher;

use serde::Deserialize;

use crate::EngineError;

/// Which task a checkpoint was trained for. It changes nothing in the forward pass except
/// what the caller must give (i2v wants the conditioning `y`, ti2v per-token timesteps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    #[default]
    T2v,
    I2v,
    Ti2v,
}

/// How the sinusoidal timestep embedding is computed.
///
/// The official code embeds (integer) timesteps in float64 before casting to float32; diffusers
/// computes the same formula in float32. The difference is about 1e-5 relative at t ≈ 1000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeEmbedding {
    #[default]
    Float64,
    Float32,
}

/// Hyper-parameters of a Wan2.x diffusion transformer. Field names are the official
/// `config.json` keys; deserializing also accepts diffusers' keys (`in_channels`,
/// `num_attention_heads` + `attention_head_dim`, `qk_norm = "rms_norm_across_heads"`, …),
/// and absent keys keep the T2V-A14B values.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub model_type: ModelType,
    /// (frames, height, width) of one patch.
    pub patch_size: [usize; 3],
    /// Text tokens the context is zero-padded to before the text MLP (the official forward
    /// attends over all of them with no mask).
    pub text_len: usize,
    pub in_dim: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub freq_dim: usize,
    pub text_dim: usize,
    pub out_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub qk_norm: bool,
    pub cross_attn_norm: bool,
    pub eps: f64,
    pub time_embedding: TimeEmbedding,
    /// Zero-pad the context to `text_len` rows inside the forward (official). diffusers'
    /// transformer uses the context as given (its pipeline pads before); pipelines that pass
    /// `text_len` rows get the same result either way.
    pub pad_context: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self::t2v_a14b()
    }
}

/// Head size shared by every released Wan model; shapes alone do not give the head count.
const HEAD_DIM: usize = 128;

impl Config {
    /// Wan2.2-I2V-A14B (each of the two experts): noise 16 + mask 4 + image latent 16 in.
    pub fn i2v_a14b() -> Self {
        Self {
            model_type: ModelType::I2v,
            in_dim: 36,
            ..Self::t2v_a14b()
        }
    }

    /// Wan2.2-T2V-A14B (each of the two experts).
    pub fn t2v_a14b() -> Self {
        Self {
            model_type: ModelType::T2v,
            patch_size: [1, 2, 2],
            text_len: 512,
            in_dim: 16,
            dim: 5120,
            ffn_dim: 13824,
            freq_dim: 256,
            text_dim: 4096,
            out_dim: 16,
            num_heads: 40,
            num_layers: 40,
            qk_norm: true,
            cross_attn_norm: true,
            eps: 1e-6,
            time_embedding: TimeEmbedding::Float64,
            pad_context: true,
        }
    }

    /// Wan2.2-TI2V-5B (48-channel Wan2.2 VAE latents, per-token timesteps).
    pub fn ti2v_5b() -> Self {
        Self {
            model_type: ModelType::Ti2v,
            in_dim: 48,
            out_dim: 48,
            dim: 3072,
            ffn_dim: 14336,
            num_heads: 24,
            num_layers: 30,
            ..Self::t2v_a14b()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Parses a checkpoint's `config.json`: the official `WanModel` keys or diffusers'
    /// `WanTransformer3DModel` keys. Keys absent from the file keep the T2V-A14B values.
    pub fn from_json(text: &str) -> Result<Self, EngineError> {
        serde_json::from_str(text).map_err(|e| EngineError::BadCheckpoint {
            problem: format!("config.json is not a usable Wan transformer config ({e})"),
        })
    }

    /// Derives the config from tensor shapes in the original key layout (see
    /// [`super::weights::to_original_layout`]), for files that carry no `config.json`.
    pub fn detect<S: BuildHasher>(
        shapes: &HashMap<String, Vec<usize>, S>,
    ) -> Result<Self, EngineError> {
        let get = |name: &str| -> Result<&[usize], EngineError> {
            shapes
                .get(name)
                .map(Vec::as_slice)
                .ok_or_else(|| EngineError::BadCheckpoint {
                    problem: format!(
                        "tensor {name} is missing: this is not a Wan2.x diffusion transformer file"
                    ),
                })
        };
        let patch = get("patch_embedding.weight")?;
        let [dim, in_dim, pt, ph, pw] = *patch else {
            return Err(EngineError::BadCheckpoint {
                problem: format!("patch_embedding.weight has shape {patch:?}, expected 5 dims"),
            });
        };
        let dim2 = |name: &str| -> Result<[usize; 2], EngineError> {
            match *get(name)? {
                [a, b] => Ok([a, b]),
                ref other => Err(EngineError::BadCheckpoint {
                    problem: format!("{name} has shape {other:?}, expected 2 dims"),
                }),
            }
        };
        let [head_out, _] = dim2("head.head.weight")?;
        let [ffn_dim, _] = dim2("blocks.0.ffn.0.weight")?;
        let [_, text_dim] = dim2("text_embedding.0.weight")?;
        let [_, freq_dim] = dim2("time_embedding.0.weight")?;
        let num_layers = (0..shapes.len())
            .take_while(|i| shapes.contains_key(&format!("blocks.{i}.self_attn.q.weight")))
            .count();
        if dim % HEAD_DIM != 0 {
            return Err(EngineError::BadCheckpoint {
                problem: format!(
                    "hidden size {dim} is not a multiple of {HEAD_DIM}: give the head count in a config.json"
                ),
            });
        }
        let out_dim = head_out / (pt * ph * pw).max(1);
        let model_type = match (in_dim, out_dim) {
            (48, 48) => ModelType::Ti2v,
            (i, o) if i > o => ModelType::I2v,
            _ => ModelType::T2v,
        };
        Ok(Self {
            model_type,
            patch_size: [pt, ph, pw],
            in_dim,
            dim,
            ffn_dim,
            freq_dim,
            text_dim,
            out_dim,
            num_heads: dim / HEAD_DIM,
            num_layers,
            qk_norm: shapes.contains_key("blocks.0.self_attn.norm_q.weight"),
            cross_attn_norm: shapes.contains_key("blocks.0.norm3.weight"),
            ..Self::t2v_a14b()
        })
    }
}

/// `config.json` as either library writes it.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    model_type: Option<ModelType>,
    patch_size: Option<[usize; 3]>,
    text_len: Option<usize>,
    in_dim: Option<usize>,
    in_channels: Option<usize>,
    dim: Option<usize>,
    attention_head_dim: Option<usize>,
    ffn_dim: Option<usize>,
    freq_dim: Option<usize>,
    text_dim: Option<usize>,
    out_dim: Option<usize>,
    out_channels: Option<usize>,
    num_heads: Option<usize>,
    num_attention_heads: Option<usize>,
    num_layers: Option<usize>,
    qk_norm: Option<serde_json::Value>,
    cross_attn_norm: Option<bool>,
    eps: Option<f64>,
    image_dim: Option<usize>,
    time_embedding: Option<TimeEmbedding>,
    pad_context: Option<bool>,
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

impl TryFrom<RawConfig> for Config {
    type Error = EngineError;

    fn try_from(raw: RawConfig) -> Result<Self, EngineError> {
        raw.resolve()
    }
}

impl RawConfig {
    fn resolve(self) -> Result<Config, EngineError> {
        if self.image_dim.is_some() {
            return Err(EngineError::BadCheckpoint {
                problem: "this transformer has a CLIP image branch (Wan2.1 I2V); Stillmotion runs Wan2.2 models".to_owned(),
            });
        }
        // A config written with diffusers' key names describes diffusers' model, whose
        // numerics differ in two places (see `TimeEmbedding` and `Config::pad_context`).
        let diffusers = self.class_name.as_deref() == Some("WanTransformer3DModel")
            || self.attention_head_dim.is_some()
            || self.num_attention_heads.is_some()
            || self.in_channels.is_some()
            || self.out_channels.is_some();
        let base = Config::t2v_a14b();
        let num_heads = self
            .num_heads
            .or(self.num_attention_heads)
            .unwrap_or(base.num_heads);
        let dim = match (self.dim, self.attention_head_dim) {
            (Some(dim), _) => dim,
            (None, Some(head_dim)) => head_dim * num_heads,
            (None, None) => base.dim,
        };
        let qk_norm = match self.qk_norm {
            None => base.qk_norm,
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) if s == "rms_norm_across_heads" => true,
            Some(other) => {
                return Err(EngineError::BadCheckpoint {
                    problem: format!(
                        "qk_norm {other} is not supported (only rms_norm_across_heads)"
                    ),
                });
            }
        };
        let in_dim = self.in_dim.or(self.in_channels).unwrap_or(base.in_dim);
        let out_dim = self.out_dim.or(self.out_channels).unwrap_or(base.out_dim);
        let model_type = self.model_type.unwrap_or(match (in_dim, out_dim) {
            (48, 48) => ModelType::Ti2v,
            (i, o) if i > o => ModelType::I2v,
            _ => ModelType::T2v,
        });
        let config = Config {
            model_type,
            patch_size: self.patch_size.unwrap_or(base.patch_size),
            text_len: self.text_len.unwrap_or(base.text_len),
            in_dim,
            dim,
            ffn_dim: self.ffn_dim.unwrap_or(base.ffn_dim),
            freq_dim: self.freq_dim.unwrap_or(base.freq_dim),
            text_dim: self.text_dim.unwrap_or(base.text_dim),
            out_dim,
            num_heads,
            num_layers: self.num_layers.unwrap_or(base.num_layers),
            qk_norm,
            cross_attn_norm: self.cross_attn_norm.unwrap_or(base.cross_attn_norm),
            eps: self.eps.unwrap_or(base.eps),
            time_embedding: self.time_embedding.unwrap_or(if diffusers {
                TimeEmbedding::Float32
            } else {
                TimeEmbedding::Float64
            }),
            pad_context: self.pad_context.unwrap_or(!diffusers),
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Checks the divisibility rules the architecture relies on.
    pub fn validate(&self) -> Result<(), EngineError> {
        let problem = if self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            Some(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ))
        } else if !self.head_dim().is_multiple_of(2) {
            Some(format!(
                "head size {} must be even for rotary embeddings",
                self.head_dim()
            ))
        } else if !self.freq_dim.is_multiple_of(2) {
            Some(format!("freq_dim {} must be even", self.freq_dim))
        } else if self.patch_size.contains(&0) {
            Some(format!("patch_size {:?} has a zero", self.patch_size))
        } else {
            None
        };
        problem.map_or(Ok(()), |problem| {
            Err(EngineError::BadCheckpoint { problem })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_official_configs() {
        let i2v = Config::i2v_a14b();
        assert_eq!(
            (i2v.in_dim, i2v.out_dim, i2v.dim, i2v.num_heads),
            (36, 16, 5120, 40)
        );
        assert_eq!(
            (i2v.num_layers, i2v.ffn_dim, i2v.head_dim()),
            (40, 13824, 128)
        );
        assert_eq!(Config::t2v_a14b().in_dim, 16);
        let ti2v = Config::ti2v_5b();
        assert_eq!(
            (ti2v.in_dim, ti2v.out_dim, ti2v.dim, ti2v.num_heads),
            (48, 48, 3072, 24)
        );
        assert_eq!(
            (ti2v.num_layers, ti2v.ffn_dim, ti2v.head_dim()),
            (30, 14336, 128)
        );
    }

    #[test]
    fn official_and_diffusers_config_json_give_the_same_config() {
        let official = r#"{"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": 5120,
            "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36, "model_type": "i2v",
            "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512}"#;
        let diffusers = r#"{"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": null,
            "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06, "ffn_dim": 13824,
            "freq_dim": 256, "image_dim": null, "in_channels": 36, "num_attention_heads": 40,
            "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        assert_eq!(Config::from_json(official).unwrap(), Config::i2v_a14b());
        let diffusers_numerics = Config {
            time_embedding: TimeEmbedding::Float32,
            pad_context: false,
            ..Config::i2v_a14b()
        };
        assert_eq!(Config::from_json(diffusers).unwrap(), diffusers_numerics);
        let ti2v = r#"{"dim": 3072, "ffn_dim": 14336, "in_dim": 48, "out_dim": 48,
            "num_heads": 24, "num_layers": 30}"#;
        assert_eq!(Config::from_json(ti2v).unwrap(), Config::ti2v_5b());
        let clip = r#"{"image_dim": 1280}"#;
        assert!(
            Config::from_json(clip)
                .unwrap_err()
                .to_string()
                .contains("CLIP")
        );
    }

    #[test]
    fn detection_from_shapes_recovers_the_presets() {
        for cfg in [Config::i2v_a14b(), Config::t2v_a14b(), Config::ti2v_5b()] {
            let mut shapes = HashMap::new();
            shapes.insert(
                "patch_embedding.weight".to_owned(),
                vec![cfg.dim, cfg.in_dim, 1, 2, 2],
            );
            shapes.insert(
                "head.head.weight".to_owned(),
                vec![cfg.out_dim * 4, cfg.dim],
            );
            shapes.insert(
                "text_embedding.0.weight".to_owned(),
                vec![cfg.dim, cfg.text_dim],
            );
            shapes.insert(
                "time_embedding.0.weight".to_owned(),
                vec![cfg.dim, cfg.freq_dim],
            );
            for i in 0..cfg.num_layers {
                shapes.insert(
                    format!("blocks.{i}.self_attn.q.weight"),
                    vec![cfg.dim, cfg.dim],
                );
            }
            shapes.insert(
                "blocks.0.ffn.0.weight".to_owned(),
                vec![cfg.ffn_dim, cfg.dim],
            );
            shapes.insert("blocks.0.self_attn.norm_q.weight".to_owned(), vec![cfg.dim]);
            shapes.insert("blocks.0.norm3.weight".to_owned(), vec![cfg.dim]);
            assert_eq!(Config::detect(&shapes).unwrap(), cfg);
        }
        assert!(Config::detect(&HashMap::new()).is_err());
    }
}
