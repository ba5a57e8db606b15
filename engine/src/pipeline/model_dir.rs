//! `--model-dir DIR`: the model files a recipe needs, found in one folder. Three kinds of
//! folder: a diffusers-format Wan2.2 repository (`model_index.json`; `transformer/` is the
//! high-noise expert and `transformer_2/` the low-noise one, as diffusers'
//! `WanImageToVideoPipeline` uses them, with `text_encoder/`, `tokenizer/` and `vae/`); the
//! official release (`high_noise_model/`, `low_noise_model/`, `models_t5_umt5-xxl-enc-bf16.pth`,
//! `Wan2.1_VAE.pth`, the tokenizer in `google/umt5-xxl/`); or a models folder (ours, or
//! ComfyUI's `models/` with `diffusion_models/` or `unet/`, `text_encoders/` or `clip/`, `vae/`),
//! matched by [`crate::model_files::scan`]. Files given one by one take precedence.

use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::model_files::extra_paths;
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
        release(dir, family, &wanted, true)?
    } else if dir.join(OFFICIAL_T5).is_file() || dir.join("high_noise_model").is_dir() {
        release(dir, family, &wanted, false)?
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

/// The official release's text encoder, beside its experts.
const OFFICIAL_T5: &str = "models_t5_umt5-xxl-enc-bf16.pth";

/// The components of a release folder: diffusers (`model_index.json`) or official.
fn release(
    dir: &Path,
    family: ModelFamily,
    wanted: &Wanted,
    diffusers: bool,
) -> Result<ModelFiles, EngineError> {
    let (kind, repo, parts): (&str, &str, [(Part, &str); 4]) = match (diffusers, family) {
        (true, _) => (
            "a diffusers folder",
            match family {
                ModelFamily::Wan22I2vA14b => "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
                ModelFamily::Wan22Ti2v5b => "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            },
            [
                (Part::HighNoise, "transformer"),
                (Part::LowNoise, "transformer_2"),
                (Part::TextEncoder, "text_encoder"),
                (Part::Vae, "vae/diffusion_pytorch_model.safetensors"),
            ],
        ),
        (false, ModelFamily::Wan22I2vA14b) => (
            "an official release folder",
            "Wan-AI/Wan2.2-I2V-A14B",
            [
                (Part::HighNoise, "high_noise_model"),
                (Part::LowNoise, "low_noise_model"),
                (Part::TextEncoder, OFFICIAL_T5),
                (Part::Vae, "Wan2.1_VAE.pth"),
            ],
        ),
        // TI2V-5B's shards and config.json sit at the top of its release.
        (false, ModelFamily::Wan22Ti2v5b) => (
            "an official release folder",
            "Wan-AI/Wan2.2-TI2V-5B",
            [
                (Part::HighNoise, ""),
                (Part::LowNoise, ""),
                (Part::TextEncoder, OFFICIAL_T5),
                (Part::Vae, "Wan2.2_VAE.pth"),
            ],
        ),
    };
    let wanted_parts: Vec<(Part, PathBuf, &str)> = parts
        .iter()
        .filter(|(part, _)| wanted.has(*part))
        .map(|&(part, name)| (part, dir.join(name), name))
        .collect();
    let missing: Vec<&str> = wanted_parts
        .iter()
        .filter(|(_, path, _)| !path.exists())
        .map(|(_, _, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(refused(format!(
            "is {kind} without {}: download the whole {repo} repository into it, or give those files with --high-noise, --low-noise, --text-encoder, --vae: {}",
            missing.join(", "),
            dir.display()
        )));
    }
    let mut found = ModelFiles::default();
    for (part, path, _) in wanted_parts {
        let slot = match part {
            Part::HighNoise => &mut found.high_noise,
            Part::LowNoise => &mut found.low_noise,
            Part::TextEncoder => &mut found.text_encoder,
            Part::Vae => &mut found.vae,
        };
        *slot = Some(path);
    }
    Ok(found)
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
    for (need, status) in report.presets.iter().flat_map(|p| p.needs.clone()) {
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
        // What ComfyUI's extra_model_paths.yaml would have added may be why a file is missing.
        problems.extend(report.files.iter().filter_map(|f| {
            match &f.fingerprint {
                Err(reason)
                    if !f.path.exists()
                        || f.path
                            .file_name()
                            .is_some_and(|n| n == extra_paths::FILE_NAME) =>
                {
                    let path = f.path.display().to_string();
                    Some(if reason.ends_with(&path) {
                        reason.clone()
                    } else {
                        format!("{reason} ({path})")
                    })
                }
                _ => None,
            }
        }));
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
            error.contains("without transformer_2, vae/diffusion_pytorch_model.safetensors")
                && error.contains("Wan2.2-I2V-A14B-Diffusers"),
            "{error}"
        );
        let missing =
            resolve_model_files(&folder(&dir.path().join("nope")), ModelFamily::Wan22I2vA14b)
                .unwrap_err()
                .to_string();
        assert!(missing.contains("is not a folder"), "{missing}");
    }

    #[test]
    fn an_official_release_folder_gives_its_experts_t5_and_vae() {
        let dir = tempfile::tempdir().unwrap();
        for expert in ["high_noise_model", "low_noise_model"] {
            std::fs::create_dir(dir.path().join(expert)).unwrap();
        }
        std::fs::write(dir.path().join(OFFICIAL_T5), b"x").unwrap();
        let error = resolve_model_files(&folder(dir.path()), ModelFamily::Wan22I2vA14b)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("official release folder without Wan2.1_VAE.pth")
                && error.contains("Wan-AI/Wan2.2-I2V-A14B "),
            "{error}"
        );
        std::fs::write(dir.path().join("Wan2.1_VAE.pth"), b"x").unwrap();
        let files = resolve_model_files(&folder(dir.path()), ModelFamily::Wan22I2vA14b).unwrap();
        assert_eq!(files.high_noise, Some(dir.path().join("high_noise_model")));
        assert_eq!(files.low_noise, Some(dir.path().join("low_noise_model")));
        assert_eq!(files.text_encoder, Some(dir.path().join(OFFICIAL_T5)));
        assert_eq!(files.vae, Some(dir.path().join("Wan2.1_VAE.pth")));
    }

    #[test]
    fn a_refusal_names_the_extra_model_paths_yaml_problems_beside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        comfyui_tree(&models, false);
        let yaml = dir.path().join(extra_paths::FILE_NAME);
        std::fs::write(&yaml, "comfyui:\n  base_path: shared\n  vae: vae\n").unwrap();
        let error = resolve_model_files(&folder(&models), ModelFamily::Wan22I2vA14b)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the VAE is missing")
                && error.contains("lists this folder under `vae`, but it is not a folder")
                && error.contains(&dir.path().join("shared").join("vae").display().to_string()),
            "{error}"
        );
        // Once the listed folder holds the VAE, the folder is complete.
        comfyui_tree(&dir.path().join("shared"), true);
        std::fs::remove_dir_all(dir.path().join("shared").join("diffusion_models")).unwrap();
        let resolved = resolve_model_files(&folder(&models), ModelFamily::Wan22I2vA14b).unwrap();
        assert!(
            resolved
                .vae
                .unwrap()
                .starts_with(dir.path().join("shared").join("vae"))
        );
        std::fs::write(&yaml, "comfyui: [\n").unwrap();
        let error = resolve_model_files(
            &folder(dir.path().join("models").as_path()),
            ModelFamily::Wan22Ti2v5b,
        )
        .unwrap_err()
        .to_string();
        let yaml = yaml.display().to_string();
        assert!(
            error.contains("not valid YAML") && error.matches(&yaml).count() == 1,
            "{error}"
        );
    }
}
