//! A model file's content hash (`sampled_sha256`, stored in outputs' recipes) and a cache of it,
//! so a render does not re-read samples of tens of gigabytes of unchanged files each time.
//!
//! The cache is one small JSON file in a folder the caller gives (the engine's cache folder,
//! [`crate::paths::cache_dir`]), keyed by canonical path with the file's length and modification
//! time. It is only an accelerator: a missing, unreadable or corrupt cache is recomputed and
//! rewritten, and a cache that cannot be written is skipped with a warning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EngineError;

/// Bytes of each sample hashed into a file's fingerprint.
pub const SAMPLE_BYTES: u64 = 1 << 20;

/// The cache file's name in the cache folder.
pub const CACHE_FILE: &str = "model-file-hashes.json";

/// Bumped when [`sampled_sha256`] changes meaning; a cache of another version is discarded.
const CACHE_VERSION: u32 = 1;

/// SHA-256 of the file's length and 1 MiB samples at its start, middle and end (the whole
/// file when it is smaller than the samples).
pub fn sampled_sha256(path: &Path) -> Result<String, EngineError> {
    let fail = |e| EngineError::io("fingerprinting a model file", path, e);
    let mut file = File::open(path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len();
    let mut hasher = Sha256::new();
    hasher.update(len.to_le_bytes());
    let (starts, sample) = if len <= 3 * SAMPLE_BYTES {
        (vec![0], len)
    } else {
        (
            vec![0, len / 2 - SAMPLE_BYTES / 2, len - SAMPLE_BYTES],
            SAMPLE_BYTES,
        )
    };
    let mut buffer = Vec::new();
    for start in starts {
        buffer.clear();
        file.seek(SeekFrom::Start(start)).map_err(fail)?;
        (&mut file)
            .take(sample)
            .read_to_end(&mut buffer)
            .map_err(fail)?;
        hasher.update(&buffer);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    modified_s: u64,
    modified_ns: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    stamp: Stamp,
    sampled_sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    files: BTreeMap<PathBuf, Entry>,
}

/// [`sampled_sha256`] remembered in `<folder>/model-file-hashes.json`.
#[derive(Clone, Debug)]
pub struct HashCache {
    file: Option<PathBuf>,
}

impl HashCache {
    /// A cache kept in `folder` (created when first written).
    #[must_use]
    pub fn in_folder(folder: &Path) -> Self {
        Self {
            file: Some(folder.join(CACHE_FILE)),
        }
    }

    /// No cache: every hash is computed.
    #[must_use]
    pub fn disabled() -> Self {
        Self { file: None }
    }

    /// The file's [`sampled_sha256`], from the cache when its length and modification time
    /// are those it was hashed with.
    pub fn sampled_sha256(&self, path: &Path) -> Result<String, EngineError> {
        let Some(cache) = &self.file else {
            return sampled_sha256(path);
        };
        let fail = |e| EngineError::io("fingerprinting a model file", path, e);
        let key = std::fs::canonicalize(path).map_err(fail)?;
        let Some(stamp) = stamp(&key) else {
            return sampled_sha256(path);
        };
        let mut entries = read(cache);
        if let Some(entry) = entries.files.get(&key)
            && entry.stamp == stamp
        {
            return Ok(entry.sampled_sha256.clone());
        }
        let hash = sampled_sha256(&key)?;
        // The file may have changed while it was read: cache only what is known to be current.
        if self::stamp(&key) == Some(stamp) {
            entries.files.insert(
                key,
                Entry {
                    stamp,
                    sampled_sha256: hash.clone(),
                },
            );
            // Forget files that are gone, so the cache stays small.
            entries.files.retain(|path, _| path.is_file());
            write(cache, &entries);
        }
        Ok(hash)
    }
}

/// The file's length and modification time; `None` where the system gives no usable time.
fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let since = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified_s: since.as_secs(),
        modified_ns: since.subsec_nanos(),
    })
}

/// The cache's entries; empty when it is missing, unreadable, corrupt or of another version.
fn read(cache: &Path) -> CacheFile {
    let text = match std::fs::read_to_string(cache) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheFile::default(),
        Err(e) => {
            tracing::warn!(path = %cache.display(), "model hash cache unreadable, rebuilding it: {e}");
            return CacheFile::default();
        }
    };
    match serde_json::from_str::<CacheFile>(&text) {
        Ok(file) if file.version == CACHE_VERSION => file,
        Ok(_) => CacheFile::default(),
        Err(e) => {
            tracing::warn!(path = %cache.display(), "model hash cache corrupt, rebuilding it: {e}");
            CacheFile::default()
        }
    }
}

/// Replaces the cache whole (a temporary file renamed over it), so a reader never sees half of
/// it; failures only cost the next render a re-hash.
fn write(cache: &Path, entries: &CacheFile) {
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        let folder = cache.parent().ok_or("the cache file has no folder")?;
        std::fs::create_dir_all(folder)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let temp = folder.join(format!(".{CACHE_FILE}.{}.{nanos}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(&CacheFile {
            version: CACHE_VERSION,
            files: entries.files.clone(),
        })?;
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, cache).inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(path = %cache.display(), "model hash cache not written: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn samples_tell_files_apart_anywhere_a_sample_falls() {
        let dir = tempfile::tempdir().unwrap();
        let big = usize::try_from(5 * SAMPLE_BYTES).unwrap();
        let write = |name: &str, flip: Option<usize>| {
            let mut bytes = vec![7_u8; big];
            if let Some(at) = flip {
                bytes[at] = 8;
            }
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            sampled_sha256(&path).unwrap()
        };
        let same = write("a", None);
        assert_eq!(same, write("b", None));
        assert_eq!(same.len(), 64);
        for at in [0, big / 2, big - 1] {
            assert_ne!(same, write("c", Some(at)), "a change at {at}");
        }
        // Between samples a change goes unseen: the price of not reading gigabytes.
        assert_eq!(same, write("d", Some(big / 4)));
    }

    /// Rewrites `path` with `bytes` and sets its modification time to `modified`.
    fn rewrite(path: &Path, bytes: &[u8], modified: std::time::SystemTime) {
        std::fs::write(path, bytes).unwrap();
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }

    #[test]
    fn an_unchanged_file_is_served_from_the_cache_and_a_changed_one_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = HashCache::in_folder(&cache_dir);
        let model = dir.path().join("model.safetensors");
        let when = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        rewrite(&model, b"first content", when);
        let first = cache.sampled_sha256(&model).unwrap();
        assert_eq!(first, sampled_sha256(&model).unwrap());
        assert!(cache_dir.join(CACHE_FILE).is_file());

        // Other bytes, same length and time: the cache answers, so it did not read the file.
        rewrite(&model, b"other content", when);
        assert_ne!(sampled_sha256(&model).unwrap(), first);
        assert_eq!(cache.sampled_sha256(&model).unwrap(), first);
        // Another handle on the same folder (the next render) too, by another path to the file.
        let dotted = dir.path().join(".").join("model.safetensors");
        assert_eq!(
            HashCache::in_folder(&cache_dir)
                .sampled_sha256(&dotted)
                .unwrap(),
            first
        );

        // A new modification time, or a new length, is a new file.
        let later = when + Duration::from_nanos(1);
        rewrite(&model, b"other content", later);
        let second = cache.sampled_sha256(&model).unwrap();
        assert_eq!(second, sampled_sha256(&model).unwrap());
        assert_ne!(second, first);
        rewrite(&model, b"other content!", later);
        assert_eq!(
            cache.sampled_sha256(&model).unwrap(),
            sampled_sha256(&model).unwrap()
        );
        assert_ne!(cache.sampled_sha256(&model).unwrap(), second);
    }

    #[test]
    fn a_corrupt_cache_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HashCache::in_folder(dir.path());
        let model = dir.path().join("model.gguf");
        let when = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        rewrite(&model, b"weights", when);
        let cache_file = dir.path().join(CACHE_FILE);
        for corrupt in ["{\"version\": 1, \"files\": {", "not json", ""] {
            std::fs::write(&cache_file, corrupt).unwrap();
            assert_eq!(
                cache.sampled_sha256(&model).unwrap(),
                sampled_sha256(&model).unwrap()
            );
            let text = std::fs::read_to_string(&cache_file).unwrap();
            let parsed: CacheFile = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed.version, CACHE_VERSION);
            assert_eq!(parsed.files.len(), 1);
        }
        // An entry with a wrong hash for the same stamp would be served: the replaced cache
        // holds the true one, proven by changing the bytes behind its back.
        rewrite(&model, b"WEIGHTS", when);
        assert_eq!(
            cache.sampled_sha256(&model).unwrap(),
            hex(&{
                let mut h = Sha256::new();
                h.update(7_u64.to_le_bytes());
                h.update(b"weights");
                h.finalize()
            })
        );
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_unwritable_cache_folder_does_not_fail_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.safetensors");
        std::fs::write(&model, b"weights").unwrap();
        // The "folder" is a file: nothing can be created in it.
        let cache = HashCache::in_folder(&model);
        assert_eq!(
            cache.sampled_sha256(&model).unwrap(),
            sampled_sha256(&model).unwrap()
        );
        assert_eq!(
            HashCache::disabled().sampled_sha256(&model).unwrap(),
            sampled_sha256(&model).unwrap()
        );
    }
}
