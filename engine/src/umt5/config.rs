//! Encoder settings, named as in Hugging Face's `UMT5Config` so a diffusers `config.json` reads
//! directly.

use std::path::Path;

use serde::Deserialize;

use crate::EngineError;

/// Shape of a umT5 encoder. The defaults are umt5-xxl as Wan2.2 uses it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head; heads × `d_kv` need not equal `d_model`.
    pub d_kv: usize,
    /// Hidden width of the gated-GELU feed-forward.
    pub d_ff: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// Tokens per prompt the DiT receives: the context is zero-padded (or truncated) to this.
    pub text_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::umt5_xxl()
    }
}

impl Config {
    /// umt5-xxl: 24 layers, d_model 4096, 64 heads of 64, FFN 10240, 32 buckets up to 128.
    #[must_use]
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10_240,
            num_heads: 64,
            num_layers: 24,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            text_len: 512,
        }
    }

    /// Reads a Hugging Face `config.json` (diffusers' `text_encoder/config.json`); missing keys
    /// keep the umt5-xxl values.
    pub fn from_json_file(path: &Path) -> Result<Self, EngineError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| EngineError::io("reading", path, e))?;
        serde_json::from_str(&text).map_err(|e| EngineError::BadTextEncoder {
            problem: format!("the encoder config is not valid UMT5Config JSON ({e})"),
            path: path.to_owned(),
        })
    }

    /// Width of the attention projections (heads × head width).
    #[must_use]
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_json_fills_missing_keys_with_xxl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"architectures":["UMT5EncoderModel"],"d_model":32,"num_layers":2,"feed_forward_proj":"gated-gelu"}"#,
        )
        .unwrap();
        let cfg = Config::from_json_file(&path).unwrap();
        assert_eq!((cfg.d_model, cfg.num_layers, cfg.num_heads), (32, 2, 64));
        assert_eq!(Config::default().inner_dim(), 4096);
        std::fs::write(&path, "not json").unwrap();
        let error = Config::from_json_file(&path).unwrap_err().to_string();
        assert!(error.contains("UMT5Config"), "{error}");
    }
}
