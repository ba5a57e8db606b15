//! Prompt encodings kept per (prompt, encoder), so that rendering again with a new seed, or
//! the same negative prompt for every clip, does not run the 5.7 B-parameter encoder again.
//!
//! The cache lives beside the loaded models (`pipeline::ModelCache`), not inside the encoder:
//! an encoder freed after encoding (the memory plan's "device, then freed" placement) or
//! reloaded keeps its encodings, and the [`EncoderFingerprint`] key, computed from the files
//! without loading them, keeps another encoder file from ever reusing them.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::Path;

use candle_core::Tensor;

use crate::EngineError;

/// Identifies one encoder as loaded: its files (path, size, modification time), dtype and
/// `text_len`. Two loads of the same files in the same precision share encodings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EncoderFingerprint(String);

impl EncoderFingerprint {
    pub fn of_files(
        files: &[&Path],
        dtype: candle_core::DType,
        text_len: usize,
    ) -> Result<Self, EngineError> {
        let mut id = format!("{dtype:?}/{text_len}");
        for file in files {
            let meta = std::fs::metadata(file).map_err(|e| EngineError::io("reading", *file, e))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let _ = write!(id, "|{}:{}:{modified}", file.display(), meta.len());
        }
        Ok(Self(id))
    }
}

/// One prompt's encoding: the padded context and whether the prompt was cut to `text_len`
/// (so a cached prompt still gets its warning).
#[derive(Clone, Debug)]
pub struct Encoding {
    /// `[text_len, d_model]`.
    pub context: Tensor,
    pub truncated: bool,
}

/// A small least-recently-used map from (prompt, encoder) to the padded context.
#[derive(Debug)]
pub struct EncodingCache {
    capacity: usize,
    entries: VecDeque<((String, EncoderFingerprint), Encoding)>,
}

/// Encodings kept by default: a positive and a negative prompt for a handful of recipes.
pub const CACHED_PROMPTS: usize = 8;

impl Default for EncodingCache {
    fn default() -> Self {
        Self::new(CACHED_PROMPTS)
    }
}

impl EncodingCache {
    /// Keeps at most `capacity` encodings (each is `text_len × d_model`, 8 MiB in f32 for
    /// umt5-xxl).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: VecDeque::with_capacity(capacity),
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached encoding of `prompt` by `encoder`, now the most recently used.
    pub fn get(&mut self, prompt: &str, encoder: &EncoderFingerprint) -> Option<Encoding> {
        let index = self
            .entries
            .iter()
            .position(|((p, e), _)| p == prompt && e == encoder)?;
        let entry = self.entries.remove(index)?;
        let encoding = entry.1.clone();
        self.entries.push_back(entry);
        tracing::debug!("prompt encoding reused from the cache");
        Some(encoding)
    }

    /// Keeps `encoding` of `prompt` by `encoder`, evicting the least recently used one when
    /// full.
    pub fn insert(&mut self, prompt: &str, encoder: &EncoderFingerprint, encoding: Encoding) {
        if self.capacity == 0 {
            return;
        }
        if let Some(index) = self
            .entries
            .iter()
            .position(|((p, e), _)| p == prompt && e == encoder)
        {
            self.entries.remove(index);
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries
            .push_back(((prompt.to_owned(), encoder.clone()), encoding));
    }

    /// The cached encoding, or `encode()`'s result, which is then cached.
    pub fn get_or_encode(
        &mut self,
        prompt: &str,
        encoder: &EncoderFingerprint,
        encode: impl FnOnce() -> Result<Encoding, EngineError>,
    ) -> Result<Encoding, EngineError> {
        if let Some(hit) = self.get(prompt, encoder) {
            return Ok(hit);
        }
        let encoding = encode()?;
        self.insert(prompt, encoder, encoding.clone());
        Ok(encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reuses_per_prompt_and_encoder_and_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("te.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let a = EncoderFingerprint::of_files(&[&file], candle_core::DType::F32, 512).unwrap();
        let b = EncoderFingerprint::of_files(&[&file], candle_core::DType::BF16, 512).unwrap();
        assert_ne!(a, b);
        let mut cache = EncodingCache::new(2);
        let mut runs = 0;
        let mut encode = |prompt: &str, fp: &EncoderFingerprint, cache: &mut EncodingCache| {
            cache
                .get_or_encode(prompt, fp, || {
                    runs += 1;
                    Ok(Encoding {
                        context: Tensor::new(&[runs as f32], &Device::Cpu)?,
                        truncated: false,
                    })
                })
                .unwrap()
                .context
                .to_vec1::<f32>()
                .unwrap()[0]
        };
        assert_eq!(encode("cat", &a, &mut cache), 1.0);
        assert_eq!(encode("cat", &a, &mut cache), 1.0);
        assert_eq!(encode("cat", &b, &mut cache), 2.0);
        assert_eq!(encode("dog", &a, &mut cache), 3.0);
        assert_eq!(cache.len(), 2);
        // "cat"/a was the least recently used and is gone.
        assert_eq!(encode("cat", &a, &mut cache), 4.0);
    }
}
