//! Prompt in, context out: tokenizer + encoder + cache, as the Wan pipeline uses them.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{
    Checkpoint, Config, EncoderFingerprint, EncodingCache, PromptTokenizer, PromptTokens,
    Umt5Encoder, pad_context,
};
use crate::EngineError;

/// Encodings kept by default: a positive and a negative prompt for a handful of recipes.
const CACHED_PROMPTS: usize = 8;

/// The loaded text encoder. It may run on the CPU when VRAM is short: pass that device.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    model: Umt5Encoder,
    fingerprint: EncoderFingerprint,
    cache: EncodingCache,
}

impl TextEncoder {
    /// `checkpoint`: encoder file or folder ([`Checkpoint::locate`]); `tokenizer`: a
    /// tokenizer file or folder, or the encoder's own `.safetensors` when it embeds one.
    /// `cfg`: `None` reads a diffusers `config.json` beside the weights, else umt5-xxl.
    pub fn load(
        checkpoint: &Path,
        tokenizer: &Path,
        cfg: Option<&Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let checkpoint = Checkpoint::locate(checkpoint)?;
        let cfg = match (cfg, &checkpoint.config_json) {
            (Some(cfg), _) => cfg.clone(),
            (None, Some(json)) => Config::from_json_file(json)?,
            (None, None) => Config::umt5_xxl(),
        };
        let tokenizer = PromptTokenizer::open(tokenizer, cfg.text_len)?;
        let model = checkpoint.load_encoder(&cfg, dtype, device)?;
        let files: Vec<&Path> = checkpoint.files.iter().map(AsRef::as_ref).collect();
        let fingerprint = EncoderFingerprint::of_files(&files, dtype, cfg.text_len)?;
        Ok(Self {
            tokenizer,
            model,
            fingerprint,
            cache: EncodingCache::new(CACHED_PROMPTS),
        })
    }

    #[must_use]
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// How many prompt encodings are cached.
    #[must_use]
    pub fn cached_prompts(&self) -> usize {
        self.cache.len()
    }

    /// `[text_len, d_model]` context for `prompt`, from the cache when it was encoded before.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<Tensor, EngineError> {
        let Self {
            tokenizer,
            model,
            fingerprint,
            cache,
        } = self;
        cache.get_or_encode(prompt, fingerprint, || {
            let tokens = tokenizer.encode(prompt)?;
            encode_tokens(model, &tokens)
        })
    }
}

/// The real tokens' states zero-padded to `text_len`. Encoding only the real tokens equals the
/// pipeline's masked forward over 512: masked keys get zero weight and the position bias
/// depends only on offsets.
pub fn encode_tokens(model: &Umt5Encoder, tokens: &PromptTokens) -> Result<Tensor, EngineError> {
    let ids = Tensor::new(tokens.ids.as_slice(), model.device())?.unsqueeze(0)?;
    let states = model.forward(&ids, None)?.squeeze(0)?;
    Ok(pad_context(&states, model.config().text_len)?)
}
