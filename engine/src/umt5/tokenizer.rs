//! The umT5 tokenizer from any of the three files users have, built the way transformers 5.x
//! builds `T5Tokenizer` (the official pipeline's `AutoTokenizer`), so all three give the same
//! ids:
//!
//! - `tokenizer.json` (diffusers, the official `google/umt5-xxl` folder): transformers keeps
//!   only its vocabulary, precompiled charsmap and special tokens and rebuilds the rest, so we
//!   do too — an older file's own normaliser or byte fallback is not what the reference runs.
//! - `spiece.model`, and the same bytes as ComfyUI's `spiece_model` uint8 tensor: parsed
//!   ([`super::spm`]) into the pieces with scores plus `<extra_id_N>` sentinels.
//!
//! The rebuilt tokenizer: precompiled-charsmap normaliser, whitespace split then metaspace
//! (`▁`, always prepended), Unigram (unk id 2, no byte fallback), `</s>` appended, truncated to
//! `text_len` with a warning event.

use std::path::{Path, PathBuf};

use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::precompiled::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::clean::clean_prompt;
use super::spm::{PieceKind, SpmModel};
use super::weights::{SPIECE_TENSOR, safetensors_entries};
use crate::EngineError;

/// transformers' `T5Tokenizer` default when no `tokenizer_config.json` says otherwise.
pub const DEFAULT_EXTRA_IDS: usize = 100;
/// `T5Tokenizer` fixes the unknown token at id 2 (`<pad>`, `</s>`, `<unk>`).
const UNK_ID: usize = 2;

/// Token ids of one prompt: the real tokens, `</s>` last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    pub ids: Vec<u32>,
    /// Whether the prompt was cut to fit `text_len`.
    pub truncated: bool,
}

impl PromptTokens {
    /// `text_len` ids padded with `<pad>` (0), and the attention mask, as the pipeline has them.
    #[must_use]
    pub fn padded(&self, text_len: usize) -> (Vec<u32>, Vec<u32>) {
        let mut ids = self.ids.clone();
        ids.resize(text_len.max(ids.len()), 0);
        let mut mask = vec![1; self.ids.len()];
        mask.resize(ids.len(), 0);
        (ids, mask)
    }
}

/// The prompt tokenizer of the umT5 text encoder.
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: Tokenizer,
    text_len: usize,
    /// The file it was read from, for messages.
    source: PathBuf,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("text_len", &self.text_len)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, problem: impl std::fmt::Display) -> EngineError {
    EngineError::BadTokenizer {
        problem: problem.to_string(),
        path: path.to_owned(),
    }
}

impl PromptTokenizer {
    /// Finds the tokenizer in a file or folder: `tokenizer.json`, `spiece.model`, a
    /// `.safetensors` text encoder that embeds `spiece_model`, or a GGUF text encoder with
    /// `tokenizer.ggml.*` metadata.
    pub fn open(path: &Path, text_len: usize) -> Result<Self, EngineError> {
        if path.is_dir() {
            for name in ["tokenizer.json", "spiece.model"] {
                if path.join(name).is_file() {
                    return Self::open(&path.join(name), text_len);
                }
            }
            return Err(bad(
                path,
                "this folder has neither tokenizer.json nor spiece.model; choose the \
                 tokenizer folder or the text encoder's .safetensors file",
            ));
        }
        let name = path.to_string_lossy();
        if crate::gguf::is_gguf(path) {
            Self::from_gguf(path, text_len)
        } else if name.ends_with(".json") {
            Self::from_tokenizer_json(path, text_len)
        } else if name.ends_with(".safetensors") {
            Self::from_text_encoder_file(path, text_len)
        } else {
            let bytes = std::fs::read(path).map_err(|e| EngineError::io("reading", path, e))?;
            let extra_ids = extra_ids_beside(path)?;
            Self::from_spiece_bytes(&bytes, extra_ids, text_len, path)
        }
    }

    /// From the bytes of a SentencePiece model; `path` only names it in errors.
    pub fn from_spiece_bytes(
        bytes: &[u8],
        extra_ids: usize,
        text_len: usize,
        path: &Path,
    ) -> Result<Self, EngineError> {
        let model = SpmModel::parse(bytes).map_err(|p| bad(path, p))?;
        Self::from_spm(&model, extra_ids, text_len, path)
    }

    /// From the SentencePiece vocabulary in a GGUF text encoder's `tokenizer.ggml.*` metadata
    /// (llama.cpp's T5 layout, as city96's umt5-xxl GGUF files carry it): `tokens`, `scores`,
    /// `token_type` (SentencePiece piece types) and `precompiled_charsmap`. Trailing `[PAD…]`
    /// fillers (unused pieces padding the list to the embedding's rows) are dropped, and the
    /// `<extra_id_N>` sentinels are added as for `spiece.model` unless the list has them.
    pub fn from_gguf(path: &Path, text_len: usize) -> Result<Self, EngineError> {
        use candle_core::quantized::gguf_file::Value;

        let file = crate::gguf::GgufFile::open(path)?;
        let meta = file.metadata();
        let array = |key: &str| -> Result<&Vec<Value>, EngineError> {
            match meta.get(key) {
                Some(Value::Array(values)) => Ok(values),
                _ => Err(bad(
                    path,
                    format!(
                        "this GGUF file has no {key} (no tokenizer embedded); choose a \
                         tokenizer.json or spiece.model"
                    ),
                )),
            }
        };
        if let Some(model) = meta.get("tokenizer.ggml.model")
            && let Ok(model) = model.to_string()
            && !matches!(model.as_str(), "t5" | "t5encoder" | "umt5")
        {
            return Err(bad(
                path,
                format!("its tokenizer is {model:?}, not the T5 SentencePiece one umT5 needs"),
            ));
        }
        let tokens = array("tokenizer.ggml.tokens")?;
        let scores = array("tokenizer.ggml.scores")?;
        let types = meta.get("tokenizer.ggml.token_type");
        let charsmap = match meta.get("tokenizer.ggml.precompiled_charsmap") {
            Some(Value::Array(bytes)) => bytes
                .iter()
                .map(|b| {
                    crate::gguf::int_value(b)
                        .and_then(|b| u8::try_from(b & 0xff).ok())
                        .ok_or_else(|| bad(path, "its precompiled_charsmap is not bytes"))
                })
                .collect::<Result<Vec<u8>, _>>()?,
            _ => Vec::new(),
        };
        if scores.len() != tokens.len() {
            return Err(bad(
                path,
                "its tokenizer has a different number of tokens and scores: the file is damaged",
            ));
        }
        let mut pieces = Vec::with_capacity(tokens.len());
        for (i, (token, score)) in tokens.iter().zip(scores).enumerate() {
            let text = token
                .to_string()
                .map_err(|_| bad(path, "a tokenizer.ggml.tokens entry is not a string"))?
                .clone();
            let score = score
                .to_f32()
                .map_err(|_| bad(path, "a tokenizer.ggml.scores entry is not a float"))?;
            let kind = match types {
                Some(Value::Array(types)) => types
                    .get(i)
                    .and_then(crate::gguf::int_value)
                    .map_or(PieceKind::Normal, |t| {
                        PieceKind::from_proto(u64::try_from(t).unwrap_or(1))
                    }),
                _ => PieceKind::Normal,
            };
            pieces.push(super::spm::Piece { text, score, kind });
        }
        while pieces
            .last()
            .is_some_and(|p| p.kind == PieceKind::Unused && p.text.starts_with("[PAD"))
        {
            pieces.pop();
        }
        let extra_ids = if pieces.iter().any(|p| p.text.starts_with("<extra_id_")) {
            0
        } else {
            DEFAULT_EXTRA_IDS
        };
        let model = SpmModel {
            pieces,
            model_type: 1,
            precompiled_charsmap: charsmap,
        };
        Self::from_spm(&model, extra_ids, text_len, path)
    }

    fn from_spm(
        model: &SpmModel,
        extra_ids: usize,
        text_len: usize,
        path: &Path,
    ) -> Result<Self, EngineError> {
        if model.model_type != 1 {
            return Err(bad(
                path,
                "this SentencePiece model is not a Unigram model, which umT5 needs",
            ));
        }
        let mut vocab: Vec<(String, f64)> = model
            .pieces
            .iter()
            .map(|p| (p.text.clone(), f64::from(p.score)))
            .collect();
        let sentinels: Vec<String> = (0..extra_ids)
            .rev()
            .map(|i| format!("<extra_id_{i}>"))
            .collect();
        vocab.extend(sentinels.iter().map(|s| (s.clone(), 0.0)));
        let mut special: Vec<AddedToken> = model
            .pieces
            .iter()
            .filter(|p| p.kind == PieceKind::Control)
            .map(|p| AddedToken::from(p.text.clone(), true).normalized(false))
            .collect();
        special.push(AddedToken::from("<unk>", true).normalized(false));
        special.extend(
            sentinels
                .into_iter()
                .rev()
                .map(|s| AddedToken::from(s, true).normalized(false)),
        );
        let user: Vec<AddedToken> = model
            .pieces
            .iter()
            .filter(|p| p.kind == PieceKind::UserDefined)
            .map(|p| AddedToken::from(p.text.clone(), false).normalized(false))
            .collect();
        Self::build(
            vocab,
            &model.precompiled_charsmap,
            special,
            user,
            text_len,
            path,
        )
    }

    /// From a SentencePiece model stored as the `spiece_model` uint8 tensor of a text-encoder
    /// safetensors file (ComfyUI). Reads only that tensor, not the weights. Sentinels as for
    /// `spiece.model`: a `tokenizer_config.json` beside the file, else transformers' default.
    pub fn from_text_encoder_file(path: &Path, text_len: usize) -> Result<Self, EngineError> {
        let bytes = read_u8_tensor(path, SPIECE_TENSOR)?;
        let extra_ids = extra_ids_beside(path)?;
        Self::from_spiece_bytes(&bytes, extra_ids, text_len, path)
    }

    /// From a `tokenizer.json`, keeping what transformers keeps (see the module docs).
    pub fn from_tokenizer_json(path: &Path, text_len: usize) -> Result<Self, EngineError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| EngineError::io("reading", path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON ({e})")))?;
        let model = &json["model"];
        if model["type"].as_str() != Some("Unigram") {
            return Err(bad(
                path,
                "this tokenizer.json is not a Unigram (SentencePiece) tokenizer, which umT5 needs",
            ));
        }
        let vocab = model["vocab"]
            .as_array()
            .ok_or_else(|| bad(path, "tokenizer.json has no vocabulary"))?
            .iter()
            .map(|entry| match (entry[0].as_str(), entry[1].as_f64()) {
                (Some(piece), Some(score)) => Ok((piece.to_owned(), score)),
                _ => Err(bad(path, "a vocabulary entry is not [piece, score]")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let normalizer = &json["normalizer"];
        let charsmap = std::iter::once(normalizer)
            .chain(normalizer["normalizers"].as_array().into_iter().flatten())
            .find(|n| n["type"].as_str() == Some("Precompiled"))
            .and_then(|n| n["precompiled_charsmap"].as_str())
            .map(|b64| decode_base64(b64).ok_or_else(|| bad(path, "bad precompiled_charsmap")))
            .transpose()?
            .unwrap_or_default();
        let mut special = vec![
            AddedToken::from("<pad>", true).normalized(false),
            AddedToken::from("</s>", true).normalized(false),
            AddedToken::from("<unk>", true).normalized(false),
        ];
        let mut user = Vec::new();
        for token in json["added_tokens"].as_array().into_iter().flatten() {
            let Some(content) = token["content"].as_str() else {
                continue;
            };
            let is_special = token["special"].as_bool().unwrap_or(false);
            let added = AddedToken::from(content.to_owned(), is_special)
                .normalized(token["normalized"].as_bool().unwrap_or(!is_special))
                .lstrip(token["lstrip"].as_bool().unwrap_or(false))
                .rstrip(token["rstrip"].as_bool().unwrap_or(false))
                .single_word(token["single_word"].as_bool().unwrap_or(false));
            if is_special {
                special.push(added);
            } else {
                user.push(added);
            }
        }
        Self::build(vocab, &charsmap, special, user, text_len, path)
    }

    fn build(
        vocab: Vec<(String, f64)>,
        charsmap: &[u8],
        special: Vec<AddedToken>,
        user: Vec<AddedToken>,
        text_len: usize,
        path: &Path,
    ) -> Result<Self, EngineError> {
        let model = Unigram::from(vocab, Some(UNK_ID), false).map_err(|e| bad(path, e))?;
        let mut inner = Tokenizer::new(model);
        if !charsmap.is_empty() {
            let normalizer = Precompiled::from(charsmap).map_err(|e| bad(path, e))?;
            inner
                .with_normalizer(Some(normalizer))
                .map_err(|e| bad(path, e))?;
        }
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            WhitespaceSplit.into(),
            Metaspace::new('▁', PrependScheme::Always, true).into(),
        ])));
        let eos = inner
            .token_to_id("</s>")
            .ok_or_else(|| bad(path, "the vocabulary has no </s> token"))?;
        let post = TemplateProcessing::builder()
            .try_single("$A </s>")
            .and_then(|b| b.try_pair("$A </s> $B </s>"))
            .map_err(|e| bad(path, e))?
            .special_tokens(vec![("</s>", eos)])
            .build()
            .map_err(|e| bad(path, e))?;
        inner.with_post_processor(Some(post));
        inner
            .add_special_tokens(special)
            .map_err(|e| bad(path, e))?;
        inner.add_tokens(user).map_err(|e| bad(path, e))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: text_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| bad(path, e))?;
        Ok(Self {
            inner,
            text_len,
            source: path.to_owned(),
        })
    }

    #[must_use]
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Tokenizes `text` as it is (no cleaning).
    pub fn encode_raw(&self, text: &str) -> Result<PromptTokens, EngineError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::BadTokenizer {
                problem: format!("tokenizing the prompt failed ({e})"),
                path: self.source.clone(),
            })?;
        let truncated = !encoding.get_overflowing().is_empty();
        if truncated {
            tracing::warn!(
                text_len = self.text_len,
                "the prompt is longer than the text encoder's {} tokens; the rest is ignored",
                self.text_len
            );
        }
        Ok(PromptTokens {
            ids: encoding.get_ids().to_vec(),
            truncated,
        })
    }

    /// Cleans `prompt` as the official pipeline does, then tokenizes it.
    pub fn encode(&self, prompt: &str) -> Result<PromptTokens, EngineError> {
        self.encode_raw(&clean_prompt(prompt))
    }
}

/// `extra_ids` from a `tokenizer_config.json` beside `path`, else transformers' default.
fn extra_ids_beside(path: &Path) -> Result<usize, EngineError> {
    let config = path.with_file_name("tokenizer_config.json");
    if !config.is_file() {
        return Ok(DEFAULT_EXTRA_IDS);
    }
    let text =
        std::fs::read_to_string(&config).map_err(|e| EngineError::io("reading", &config, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&config, format!("not valid JSON ({e})")))?;
    Ok(json["extra_ids"]
        .as_u64()
        .map_or(DEFAULT_EXTRA_IDS, |n| n as usize))
}

/// Reads one uint8 tensor from a safetensors file without reading the rest.
fn read_u8_tensor(path: &Path, name: &str) -> Result<Vec<u8>, EngineError> {
    let entries = safetensors_entries(path).map_err(|_| bad(path, "not a safetensors file"))?;
    let Some(entry) = entries.iter().find(|e| e.name == name) else {
        return Err(bad(
            path,
            "this text encoder file does not embed its tokenizer (no spiece_model tensor); \
             choose a tokenizer.json or spiece.model",
        ));
    };
    if entry.dtype != Some(candle_core::DType::U8) {
        return Err(bad(path, "the spiece_model tensor is not uint8 bytes"));
    }
    Ok(entry.read(path)?.flatten_all()?.to_vec1::<u8>()?)
}

/// Standard base64 (with padding), as tokenizer.json stores the charsmap.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(
            match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            }
            .into(),
        )
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0_u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let produced = (chunk.len() * 6) / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..=produced]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_all_padding_lengths() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert!(decode_base64("T!==").is_none());
    }

    #[test]
    fn padding_and_mask_follow_the_pipeline() {
        let tokens = PromptTokens {
            ids: vec![5, 6, 1],
            truncated: false,
        };
        assert_eq!(tokens.padded(5), (vec![5, 6, 1, 0, 0], vec![1, 1, 1, 0, 0]));
    }

    #[test]
    fn a_text_encoder_without_spiece_model_says_what_to_choose() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("te.safetensors");
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        candle_core::safetensors::save(&std::collections::HashMap::from([("a", t)]), &path)
            .unwrap();
        let error = PromptTokenizer::open(&path, 512).unwrap_err().to_string();
        assert!(error.contains("spiece_model"), "{error}");
    }
}
