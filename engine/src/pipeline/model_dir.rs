//! `--model-dir DIR`: the model files a recipe needs, found in one folder. Two kinds of folder:
//! a diffusers-format Wan2.2 repository (`model_index.json`; `transformer/` is the high-noise
//! expert and `transformer_2/` the low-noise one, as diffusers' `WanImageToVideoPipeline` uses
//! them, with `text_encoder/`, `tokenizer/` and `vae/`), or a models folder (ours, or ComfyUI's
//! `models/` with `diffusion_models/` or `unet/`, `text_encoders/` or `clip/`, `vae/`), matched
//! by [`crate::model_files::scan`]. Files given one by one take precedence over the folder's.

use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::model_files::fingerprint::Noise;
use crate::model_files::scan::{Need, Status, scan};
use crate::preset::{ModelFamily, Preset};
use crate::recipe::ModelFiles;

/// The recipe's model files with the folder's filling what was not given one by one. Without a
/// folder, `files` as they are. A folder that lacks a needed file is refused with the file named
/// and where to put it.
pub fn resolve_model_files(
    files: &ModelFiles,
    family: ModelFamily,
) -> Result<ModelFiles, EngineError> {
    let Some(dir) = &files.model_dir else {
        return Ok(files.clone());
    };
    if !dir.is_dir() {
        return Err(refused(format!("is not a folder: {}", dir.display())));
    }
    let two_experts = family == ModelFamily::Wan22I2vA14b;
    let wanted = Wanted(
        [
            (Part::HighNoise, files.high_noise.is_none()),
            (Part::LowNoise, two_experts && files.low_noise.is_none()),
            (Part::TextEncoder, files.text_encoder.is_none()),
            (Part::Vae, files.vae.is_none()),
        ]
        .into_iter()
        .filter_map(|(part, wanted)| wanted.then_some(part))
        .collect(),
    );
    if wanted.0.is_empty() {
        return Ok(files.clone());
    }
    let found = if dir.join("model_index.json").is_file() {
        diffusers(dir, family, &wanted)?
    } else {
        models_folder(dir, family, &wanted)?
    };
    Ok(ModelFiles {
        model_dir: Some(dir.clone()),
        high_noise: files.high_noise.clone().or(found.high_noise),
        low_noise: files.low_noise.clone().or(found.low_noise),
        text_encoder: files.text_encoder.clone().or(found.text_encoder),
        vae: files.vae.clone().or(found.vae),
    })
}

/// One of the files a render needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    HighNoise,
    LowNoise,
    TextEncoder,
    Vae,
}

/// Which files the folder must provide (those not given one by one).
struct Wanted(Vec<Part>);

impl Wanted {
    fn has(&self, part: Part) -> bool {
        self.0.contains(&part)
    }
}

fn refused(problem: String) -> EngineError {
    EngineError::BadRecipe {
        field: "model_dir",
        problem,
    }
}

/// The components of a diffusers-format folder.
fn diffusers(dir: &Path, family: ModelFamily, wanted: &Wanted) -> Result<ModelFiles, EngineError> {
    let vae_file = dir.join("vae").join("diffusion_pytorch_model.safetensors");
    let parts: [(bool, PathBuf, &str); 4] = [
        (
            wanted.has(Part::HighNoise),
            dir.join("transformer"),
            "transformer/",
        ),
        (
            wanted.has(Part::LowNoise),
            dir.join("transformer_2"),
            "transformer_2/",
        ),
        (
            wanted.has(Part::TextEncoder),
            dir.join("text_encoder"),
            "text_encoder/",
        ),
        (
            wanted.has(Part::Vae),
            vae_file.clone(),
            "vae/diffusion_pytorch_model.safetensors",
        ),
    ];
    let missing: Vec<&str> = parts
        .iter()
        .filter(|(want, path, _)| *want && !path.exists())
        .map(|(_, _, name)| *name)
        .collect();
    if !missing.is_empty() {
        let repo = match family {
            ModelFamily::Wan22I2vA14b => "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
            ModelFamily::Wan22Ti2v5b => "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        };
        return Err(refused(format!(
            "is a diffusers folder without {}: download the whole {repo} repository into it, or give those files with --high-noise, --low-noise, --text-encoder, --vae: {}",
            missing.join(", "),
            dir.display()
        )));
    }
    let pick = |want: bool, path: PathBuf| want.then_some(path);
    Ok(ModelFiles {
        model_dir: None,
        high_noise: pick(wanted.has(Part::HighNoise), dir.join("transformer")),
        low_noise: pick(wanted.has(Part::LowNoise), dir.join("transformer_2")),
        text_encoder: pick(wanted.has(Part::TextEncoder), dir.join("text_encoder")),
        vae: pick(wanted.has(Part::Vae), vae_file),
    })
}

/// What a need is called and where it goes in a models folder.
fn where_to_put(need: &Need, family: ModelFamily) -> (&'static str, &'static str) {
    match (need, family) {
        (
            Need::Dit {
                noise: Some(Noise::High),
            },
            _,
        ) => (
            "the high-noise expert",
            "diffusion_models/ (e.g. wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors)",
        ),
        (
            Need::Dit {
                noise: Some(Noise::Low),
            },
            _,
        ) => (
            "the low-noise expert",
            "diffusion_models/ (e.g. wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors)",
        ),
        (Need::Dit { .. }, _) => (
            "the diffusion transformer",
            "diffusion_models/ (e.g. wan2.2_ti2v_5B_fp16.safetensors)",
        ),
        (Need::TextEncoder, _) => (
            "the text encoder",
            "text_encoders/ (e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors)",
        ),
        (Need::Vae, ModelFamily::Wan22I2vA14b) => ("the VAE", "vae/ (wan_2.1_vae.safetensors)"),
        (Need::Vae, ModelFamily::Wan22Ti2v5b) => ("the VAE", "vae/ (wan2.2_vae.safetensors)"),
        (Need::Lora { .. }, _) => ("a LoRA", "loras/"),
    }
}

/// The files of a models folder, matched by their headers.
fn models_folder(
    dir: &Path,
    family: ModelFamily,
    wanted: &Wanted,
) -> Result<ModelFiles, EngineError> {
    // The files a preset needs depend only on its model family; LoRAs are the recipe's own.
    let preset = crate::preset::shipped()?
        .into_iter()
        .map(|(_, preset)| preset)
        .find(|preset| preset.model == family)
        .map(|preset| Preset {
            lora: None,
            ..preset
        })
        .ok_or_else(|| {
            refused(format!(
                "cannot be matched: no shipped preset is for {family:?}"
            ))
        })?;
    let report = scan(dir, std::slice::from_ref(&preset));
    let mut found = ModelFiles::default();
    let mut problems = Vec::new();
    for (need, status) in report.presets.into_iter().flat_map(|p| p.needs) {
        let slot = match need {
            Need::Dit {
                noise: Some(Noise::Low),
            } => (wanted.has(Part::LowNoise), &mut found.low_noise),
            Need::Dit { .. } => (wanted.has(Part::HighNoise), &mut found.high_noise),
            Need::TextEncoder => (wanted.has(Part::TextEncoder), &mut found.text_encoder),
            Need::Vae => (wanted.has(Part::Vae), &mut found.vae),
            Need::Lora { .. } => continue,
        };
        let (true, path) = slot else { continue };
        let (what, folder) = where_to_put(&need, family);
        match status {
            Status::Present(file) => *path = Some(file),
            Status::Missing => problems.push(format!("{what} is missing (put it in {folder})")),
            Status::Invalid { path: file, reason } => {
                problems.push(format!("{what} {} is unusable: {reason}", file.display()));
            }
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(refused(format!(
            "lacks what the preset needs: {}; or give the files with --high-noise, --low-noise, --text-encoder, --vae: {}",
            problems.join("; "),
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_files::fingerprint::fake_safetensors;

    fn dit(path: &Path) {
        fake_safetensors(
            path,
            &[
                ("patch_embedding.weight", "BF16", &[5120, 36, 1, 2, 2]),
                ("blocks.0.self_attn.q.weight", "BF16", &[5120, 5120]),
            ],
            &[],
        );
    }

    fn comfyui_tree(root: &Path, with_vae: bool) {
        let dm = root.join("diffusion_models");
        dit(&dm.join("wan2.2_i2v_high_noise_14B_fp16.safetensors"));
        dit(&dm.join("wan2.2_i2v_low_noise_14B_fp16.safetensors"));
        fake_safetensors(
            &root.join("clip").join("umt5_xxl_fp16.safetensors"),
            &[
                ("shared.weight", "BF16", &[256_384, 4096]),
                (
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    "BF16",
                    &[4096, 4096],
                ),
            ],
            &[],
        );
        if with_vae {
            fake_safetensors(
                &root.join("vae").join("wan_2.1_vae.safetensors"),
                &[
                    ("decoder.conv1.weight", "BF16", &[384, 16, 3, 3, 3]),
                    ("encoder.conv1.weight", "BF16", &[96, 3, 3, 3, 3]),
                ],
                &[],
            );
        }
    }

    fn folder(dir: &Path) -> ModelFiles {
        ModelFiles {
            model_dir: Some(dir.to_owned()),
            ..ModelFiles::default()
        }
    }

    #[test]
    fn a_comfyui_models_folder_gives_every_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        comfyui_tree(dir.path(), false);
        let error = resolve_model_files(&folder(dir.path()), ModelFamily::Wan22I2vA14b)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("model_dir")
                && error.contains("the VAE is missing (put it in vae/ (wan_2.1_vae.safetensors))")
                && !error.contains("expert"),
            "{error}"
        );
        // A VAE given by itself is enough.
        let vae = dir.path().join("elsewhere.safetensors");
        let files = ModelFiles {
            vae: Some(vae.clone()),
            ..folder(dir.path())
        };
        let resolved = resolve_model_files(&files, ModelFamily::Wan22I2vA14b).unwrap();
        assert_eq!(resolved.vae, Some(vae));

        comfyui_tree(dir.path(), true);
        let resolved = resolve_model_files(&folder(dir.path()), ModelFamily::Wan22I2vA14b).unwrap();
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(
            [
                name(&resolved.high_noise),
                name(&resolved.low_noise),
                name(&resolved.text_encoder),
                name(&resolved.vae)
            ],
            [
                "wan2.2_i2v_high_noise_14B_fp16.safetensors",
                "wan2.2_i2v_low_noise_14B_fp16.safetensors",
                "umt5_xxl_fp16.safetensors",
                "wan_2.1_vae.safetensors"
            ]
        );
    }

    #[test]
    fn a_diffusers_folder_names_the_components_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
        for part in ["transformer", "text_encoder", "vae"] {
            std::fs::create_dir(dir.path().join(part)).unwrap();
        }
        let error = resolve_model_files(&folder(dir.path()), ModelFamily::Wan22I2vA14b)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("without transformer_2/, vae/diffusion_pytorch_model.safetensors")
                && error.contains("Wan2.2-I2V-A14B-Diffusers"),
            "{error}"
        );
        let missing =
            resolve_model_files(&folder(&dir.path().join("nope")), ModelFamily::Wan22I2vA14b)
                .unwrap_err()
                .to_string();
        assert!(missing.contains("is not a folder"), "{missing}");
    }
}
