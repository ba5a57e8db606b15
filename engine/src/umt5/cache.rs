//! Prompt encodings kept per (prompt, encoder), so that rendering again with a new seed, or
//! the same negative prompt for every clip, does not run the 5.7 B-parameter encoder again.

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

/// A small least-recently-used map from (prompt, encoder) to the padded context.
#[derive(Debug)]
pub struct EncodingCache {
    capacity: usize,
    entries: VecDeque<((String, EncoderFingerprint), Tensor)>,
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

    /// The cached encoding, or `encode()`'s result, which is then cached.
    pub fn get_or_encode(
        &mut self,
        prompt: &str,
        encoder: &EncoderFingerprint,
        encode: impl FnOnce() -> Result<Tensor, EngineError>,
    ) -> Result<Tensor, EngineError> {
        let hit = self
            .entries
            .iter()
            .position(|((p, e), _)| p == prompt && e == encoder);
        if let Some(entry) = hit.and_then(|index| self.entries.remove(index)) {
            let tensor = entry.1.clone();
            self.entries.push_back(entry);
            tracing::debug!("prompt encoding reused from the cache");
            return Ok(tensor);
        }
        let tensor = encode()?;
        if self.capacity > 0 {
            if self.entries.len() == self.capacity {
                self.entries.pop_front();
            }
            self.entries
                .push_back(((prompt.to_owned(), encoder.clone()), tensor.clone()));
        }
        Ok(tensor)
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
                    Ok(Tensor::new(&[runs as f32], &Device::Cpu)?)
                })
                .unwrap()
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
