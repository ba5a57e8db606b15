//! The fingerprints of a render's model files, for the recipe stored in its output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::EngineError;
use crate::model_files::fingerprint;
use crate::model_files::fingerprint::from_header;
use crate::recipe::{Interpolation, Recipe};
use crate::video::ModelFileRecord;
use crate::weights::{Header, read_header};

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
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
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

/// The record of a model folder (a diffusers component such as `transformer/`, or an official
/// expert folder with its shards) used as `used_as`. Its `sampled_sha256` hashes, in a stable
/// order (by file name, so not by where the folder is), every `.json` file beside the shards
/// (`config.json`, the shard index) and each shard's sampled hash; the rest describes the
/// shards' headers taken together.
pub fn folder_record(used_as: &str, dir: &Path) -> Result<ModelFileRecord, EngineError> {
    let mut shards = crate::weights::model_files(dir)?;
    shards.sort_by_key(|shard| shard.file_name().map(std::ffi::OsStr::to_os_string));
    let mut merged = Header {
        path: dir.to_owned(),
        tensors: BTreeMap::new(),
        metadata: BTreeMap::new(),
        file_len: 0,
    };
    for shard in &shards {
        let header = read_header(shard)?;
        merged.tensors.extend(header.tensors);
        merged.metadata.extend(header.metadata);
        merged.file_len += header.file_len;
    }
    let fp = from_header(&merged);
    let mut configs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io("listing a model folder", dir, e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    configs.sort();
    let mut hasher = Sha256::new();
    for file in configs.iter().chain(&shards) {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(sampled_sha256(file)?.as_bytes());
    }
    Ok(ModelFileRecord {
        used_as: used_as.to_owned(),
        path: dir.to_owned(),
        bytes: fp.bytes,
        format: snake(fp.format),
        dtype: fp.dtype,
        scaled_fp8: fp.scaled_fp8,
        detected_role: snake(fp.role),
        family: fp.family.map(snake),
        size: fp.size.map(snake),
        noise: fp.noise.map(snake),
        tensors: fp.tensors,
        sampled_sha256: hex(&hasher.finalize()),
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
        match path.as_deref() {
            Some(path) if path.is_file() => records.push(record(used_as, path)?),
            Some(path) if path.is_dir() => records.push(folder_record(used_as, path)?),
            _ => {}
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
    fn a_sharded_folder_is_fingerprinted_from_its_configs_and_shards_in_a_stable_order() {
        use crate::model_files::fingerprint::fake_safetensors;
        let dir = tempfile::tempdir().unwrap();
        // An official expert folder: two shards, their index, and config.json.
        let folder = |name: &str| {
            let root = dir.path().join(name).join("high_noise_model");
            let shard = |n: usize| format!("diffusion_pytorch_model-0000{n}-of-00002.safetensors");
            fake_safetensors(
                &root.join(shard(1)),
                &[("patch_embedding.weight", "BF16", &[64, 36, 1, 2, 2])],
                &[],
            );
            fake_safetensors(
                &root.join(shard(2)),
                &[("blocks.0.self_attn.q.weight", "BF16", &[64, 64])],
                &[],
            );
            let index = serde_json::json!({"weight_map": {
                "patch_embedding.weight": shard(1),
                "blocks.0.self_attn.q.weight": shard(2),
            }});
            std::fs::write(
                root.join("diffusion_pytorch_model.safetensors.index.json"),
                index.to_string(),
            )
            .unwrap();
            std::fs::write(root.join("config.json"), r#"{"dim": 64}"#).unwrap();
            root
        };
        let a = folder("a");
        let first = folder_record("high_noise", &a).unwrap();
        assert_eq!(first.path, a);
        assert_eq!(first.tensors, 2);
        assert_eq!(first.detected_role, "dit_expert");
        assert_eq!(first.noise.as_deref(), Some("high"));
        let len = |name: &str| std::fs::metadata(a.join(name)).unwrap().len();
        assert_eq!(
            first.bytes,
            len("diffusion_pytorch_model-00001-of-00002.safetensors")
                + len("diffusion_pytorch_model-00002-of-00002.safetensors")
        );
        // A recipe whose expert is the folder stores its record.
        let preset = crate::preset::find("wan22-i2v-a14b-official-480p").unwrap();
        let mut recipe = Recipe::from_layers(&preset, crate::recipe::RecipeChoices::default());
        recipe.models.high_noise = Some(a.clone());
        assert_eq!(
            model_file_records(&recipe, None).unwrap(),
            std::slice::from_ref(&first)
        );
        // The same files in another place: the same print, again and again.
        let b = folder("b");
        for _ in 0..3 {
            assert_eq!(
                folder_record("high_noise", &b).unwrap().sampled_sha256,
                first.sampled_sha256
            );
        }
        // A changed shard (one byte of its data) or config changes it.
        let shard = b.join("diffusion_pytorch_model-00002-of-00002.safetensors");
        let mut bytes = std::fs::read(&shard).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let changed = folder_record("high_noise", &b).unwrap().sampled_sha256;
        assert_ne!(changed, first.sampled_sha256);
        std::fs::write(a.join("config.json"), r#"{"dim": 65}"#).unwrap();
        let reconfigured = folder_record("high_noise", &a).unwrap().sampled_sha256;
        assert_ne!(reconfigured, first.sampled_sha256);
        assert_ne!(reconfigured, changed);
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
