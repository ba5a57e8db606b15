//! The fingerprints of a render's model files, for the recipe stored in its output.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::EngineError;
use crate::model_files::fingerprint;
use crate::recipe::{Interpolation, Recipe};
use crate::video::ModelFileRecord;

/// Bytes of each sample hashed into a file's fingerprint.
const SAMPLE_BYTES: u64 = 1 << 20;

/// `Debug` names as snake case (`DitExpert` → `dit_expert`, `B1_3` → `b1_3`).
fn snake(value: impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    let mut out = String::with_capacity(text.len() + 4);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// SHA-256 of the file's length and 1 MiB samples at its start, middle and end (the whole
/// file when it is smaller than the samples).
fn sampled_sha256(path: &Path) -> Result<String, EngineError> {
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
    Ok(hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        }))
}

/// The record of one file used as `used_as`.
pub fn record(used_as: &str, path: &Path) -> Result<ModelFileRecord, EngineError> {
    let fp = fingerprint(path)?;
    Ok(ModelFileRecord {
        used_as: used_as.to_owned(),
        path: path.to_owned(),
        bytes: fp.bytes,
        format: snake(fp.format),
        dtype: fp.dtype,
        scaled_fp8: fp.scaled_fp8,
        detected_role: snake(fp.role),
        family: fp.family.map(snake),
        size: fp.size.map(snake),
        noise: fp.noise.map(snake),
        tensors: fp.tensors,
        sampled_sha256: sampled_sha256(path)?,
    })
}

/// The records of every model file `recipe` uses (RIFE's when it interpolates).
pub fn model_file_records(
    recipe: &Recipe,
    rife: Option<&Path>,
) -> Result<Vec<ModelFileRecord>, EngineError> {
    let files = &recipe.models;
    let mut records = Vec::new();
    for (used_as, path) in [
        ("high_noise", &files.high_noise),
        ("low_noise", &files.low_noise),
        ("text_encoder", &files.text_encoder),
        ("vae", &files.vae),
    ] {
        if let Some(path) = path.as_deref().filter(|p| p.is_file()) {
            records.push(record(used_as, path)?);
        }
    }
    for lora in &recipe.loras {
        records.push(record("lora", &lora.path)?);
    }
    // Missing weights are reported by the RIFE stage itself, with what to do.
    if recipe.interpolation != Interpolation::Off
        && let Some(path) = rife.filter(|p| p.is_file())
    {
        records.push(record("rife", path)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn debug_names_become_snake_case() {
        assert_eq!(snake(crate::model_files::Role::DitExpert), "dit_expert");
        assert_eq!(snake(crate::model_files::Size::B1_3), "b1_3");
        assert_eq!(snake(crate::model_files::Family::Wan21), "wan21");
        assert_eq!(
            snake(crate::model_files::Format::Safetensors),
            "safetensors"
        );
    }
}
