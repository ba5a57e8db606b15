//! The fingerprints of a render's model files, for the recipe stored in its output.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::EngineError;
use crate::model_files::content_hash::{HashCache, hex};
use crate::model_files::fingerprint;
use crate::model_files::fingerprint::from_header;
use crate::recipe::{Interpolation, Recipe};
use crate::video::ModelFileRecord;
use crate::weights::{Header, read_header};

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

/// The record of one file used as `used_as`; its content hash comes from `hashes` when the file
/// is unchanged since it was last hashed.
pub fn record(
    used_as: &str,
    path: &Path,
    hashes: &HashCache,
) -> Result<ModelFileRecord, EngineError> {
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
        sampled_sha256: hashes.sampled_sha256(path)?,
    })
}

/// The record of a model folder (a diffusers component such as `transformer/`, or an official
/// expert folder with its shards) used as `used_as`. Its `sampled_sha256` hashes, in a stable
/// order (by file name, so not by where the folder is), every `.json` file beside the shards
/// (`config.json`, the shard index) and each shard's sampled hash; the rest describes the
/// shards' headers taken together.
pub fn folder_record(
    used_as: &str,
    dir: &Path,
    hashes: &HashCache,
) -> Result<ModelFileRecord, EngineError> {
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
        hasher.update(hashes.sampled_sha256(file)?.as_bytes());
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

/// The records of every model file `recipe` uses (RIFE's when it interpolates), with content
/// hashes from `hashes` where the files are unchanged.
pub fn model_file_records(
    recipe: &Recipe,
    rife: Option<&Path>,
    hashes: &HashCache,
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
            Some(path) if path.is_file() => records.push(record(used_as, path, hashes)?),
            Some(path) if path.is_dir() => records.push(folder_record(used_as, path, hashes)?),
            _ => {}
        }
    }
    for lora in &recipe.loras {
        records.push(record("lora", &lora.path, hashes)?);
    }
    // Missing weights are reported by the RIFE stage itself, with what to do.
    if recipe.interpolation != Interpolation::Off
        && let Some(path) = rife.filter(|p| p.is_file())
    {
        records.push(record("rife", path, hashes)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let first = folder_record("high_noise", &a, &HashCache::disabled()).unwrap();
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
            model_file_records(&recipe, None, &HashCache::disabled()).unwrap(),
            std::slice::from_ref(&first)
        );
        // With a cache, the same records: once hashed, and again from the cache.
        let cache = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            assert_eq!(
                model_file_records(&recipe, None, &HashCache::in_folder(cache.path())).unwrap(),
                std::slice::from_ref(&first)
            );
        }
        assert!(
            cache
                .path()
                .join(crate::model_files::content_hash::CACHE_FILE)
                .is_file()
        );
        // The same files in another place: the same print, again and again.
        let b = folder("b");
        for _ in 0..3 {
            assert_eq!(
                folder_record("high_noise", &b, &HashCache::disabled())
                    .unwrap()
                    .sampled_sha256,
                first.sampled_sha256
            );
        }
        // A changed shard (one byte of its data) or config changes it.
        let shard = b.join("diffusion_pytorch_model-00002-of-00002.safetensors");
        let mut bytes = std::fs::read(&shard).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let changed = folder_record("high_noise", &b, &HashCache::disabled())
            .unwrap()
            .sampled_sha256;
        assert_ne!(changed, first.sampled_sha256);
        std::fs::write(a.join("config.json"), r#"{"dim": 65}"#).unwrap();
        let reconfigured = folder_record("high_noise", &a, &HashCache::disabled())
            .unwrap()
            .sampled_sha256;
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
