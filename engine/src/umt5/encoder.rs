//! Prompt in, context out: tokenizer + encoder, as the Wan pipeline uses them. Encodings are
//! cached outside the encoder ([`super::EncodingCache`], keyed by [`EncoderFingerprint`]), so
//! they outlive it.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{
    Checkpoint, Config, EncoderFingerprint, Encoding, PromptTokenizer, PromptTokens, Umt5Encoder,
    pad_context,
};
use crate::EngineError;

/// The loaded text encoder. It may run on the CPU when VRAM is short: pass that device.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    model: Umt5Encoder,
    fingerprint: EncoderFingerprint,
}

/// The config an encoder at `checkpoint` loads with: `cfg`, else a diffusers `config.json`
/// beside the weights, else umt5-xxl's.
fn resolve_config(checkpoint: &Checkpoint, cfg: Option<&Config>) -> Result<Config, EngineError> {
    Ok(match (cfg, &checkpoint.config_json) {
        (Some(cfg), _) => cfg.clone(),
        (None, Some(json)) => Config::from_json_file(json)?,
        (None, None) => Config::umt5_xxl(),
    })
}

fn fingerprint(
    checkpoint: &Checkpoint,
    cfg: &Config,
    dtype: DType,
) -> Result<EncoderFingerprint, EngineError> {
    let files: Vec<&Path> = checkpoint.files.iter().map(AsRef::as_ref).collect();
    EncoderFingerprint::of_files(&files, dtype, cfg.text_len)
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
        let cfg = resolve_config(&checkpoint, cfg)?;
        let tokenizer = PromptTokenizer::open(tokenizer, cfg.text_len)?;
        let model = checkpoint.load_encoder(&cfg, dtype, device)?;
        let fingerprint = fingerprint(&checkpoint, &cfg, dtype)?;
        Ok(Self {
            tokenizer,
            model,
            fingerprint,
        })
    }

    /// The fingerprint [`TextEncoder::load`] would give the encoder at `checkpoint` with `cfg`
    /// in `dtype`, from the files' metadata and config alone (no weights read): the key of
    /// its cached encodings before (or without) loading it.
    pub fn fingerprint_of(
        checkpoint: &Path,
        cfg: Option<&Config>,
        dtype: DType,
    ) -> Result<EncoderFingerprint, EngineError> {
        let checkpoint = Checkpoint::locate(checkpoint)?;
        let cfg = resolve_config(&checkpoint, cfg)?;
        fingerprint(&checkpoint, &cfg, dtype)
    }

    #[must_use]
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// What identifies this encoder's encodings.
    #[must_use]
    pub fn fingerprint(&self) -> &EncoderFingerprint {
        &self.fingerprint
    }

    /// `[text_len, d_model]` context for `prompt`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Tensor, EngineError> {
        Ok(self.encode(prompt)?.context)
    }

    /// The context for `prompt` and whether the prompt was cut to `text_len`.
    pub fn encode(&self, prompt: &str) -> Result<Encoding, EngineError> {
        let tokens = self.tokenizer.encode(prompt)?;
        Ok(Encoding {
            context: encode_tokens(&self.model, &tokens)?,
            truncated: tokens.truncated,
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
