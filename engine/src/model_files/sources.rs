//! Where to get each model file a preset needs: one table of download sources, for the Models
//! view's links (no GUI types here; nothing is fetched).
//!
//! The first source of each need is the file ComfyUI's Wan2.2 templates use, from the Comfy-Org
//! repackaged releases on Hugging Face (original Wan key names, one file a model: what
//! `product.md` lists as the files users have); the others are alternatives (fp16, GGUF
//! quantizations, the official Wan-AI release). Each says which folder of a models tree
//! (ours or ComfyUI's `models/`) it goes in, which is where [`super::scan`] looks for its role.

use super::fingerprint::Noise;
use super::scan::Need;
use crate::preset::ModelFamily;

const WAN22_REPACK: &str = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged";
const WAN21_REPACK: &str = "Comfy-Org/Wan_2.1_ComfyUI_repackaged";

/// One place to get a file for a need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file's name once downloaded; for a repository page, what to pick there.
    pub file: &'static str,
    /// The folder of the models tree it goes in (`diffusion_models`, `text_encoders`, `vae`,
    /// `loras`).
    pub folder: &'static str,
    /// The Hugging Face repository.
    pub repo: &'static str,
    /// The file's path in the repository, or `None` for a repository to choose a file from.
    pub path: Option<&'static str>,
    /// What it is, in a few words (precision, size on disk).
    pub note: &'static str,
}

impl Source {
    /// The https link: the file's download address, or the repository's page.
    #[must_use]
    pub fn url(&self) -> String {
        match self.path {
            Some(path) => format!("https://huggingface.co/{}/resolve/main/{path}", self.repo),
            None => format!("https://huggingface.co/{}", self.repo),
        }
    }
}

/// What a row of the table serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serves {
    Dit(Option<Noise>),
    TextEncoder,
    Vae,
    /// The named LoRA's file for one expert.
    Lora(&'static str, Noise),
}

const fn file(
    folder: &'static str,
    repo: &'static str,
    path: &'static str,
    file: &'static str,
    note: &'static str,
) -> Source {
    Source {
        file,
        folder,
        repo,
        path: Some(path),
        note,
    }
}

const fn page(
    folder: &'static str,
    repo: &'static str,
    file: &'static str,
    note: &'static str,
) -> Source {
    Source {
        file,
        folder,
        repo,
        path: None,
        note,
    }
}

use ModelFamily::{Wan22I2vA14b as A14B, Wan22Ti2v5b as TI2V5B};
use Noise::{High, Low};

/// Every source, in order of preference per model and need.
const SOURCES: &[(ModelFamily, Serves, Source)] = &[
    (
        A14B,
        Serves::Dit(Some(High)),
        file(
            "diffusion_models",
            WAN22_REPACK,
            "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            "fp8 scaled, about 15 GB: ComfyUI's template",
        ),
    ),
    (
        A14B,
        Serves::Dit(Some(High)),
        file(
            "diffusion_models",
            WAN22_REPACK,
            "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors",
            "wan2.2_i2v_high_noise_14B_fp16.safetensors",
            "fp16, about 29 GB",
        ),
    ),
    (
        A14B,
        Serves::Dit(Some(High)),
        page(
            "diffusion_models",
            "QuantStack/Wan2.2-I2V-A14B-GGUF",
            "HighNoise/Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf (or Q5…Q8_0)",
            "GGUF, 9 to 15 GB",
        ),
    ),
    (
        A14B,
        Serves::Dit(Some(Low)),
        file(
            "diffusion_models",
            WAN22_REPACK,
            "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
            "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
            "fp8 scaled, about 15 GB: ComfyUI's template",
        ),
    ),
    (
        A14B,
        Serves::Dit(Some(Low)),
        file(
            "diffusion_models",
            WAN22_REPACK,
            "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp16.safetensors",
            "wan2.2_i2v_low_noise_14B_fp16.safetensors",
            "fp16, about 29 GB",
        ),
    ),
    (
        A14B,
        Serves::Dit(Some(Low)),
        page(
            "diffusion_models",
            "QuantStack/Wan2.2-I2V-A14B-GGUF",
            "LowNoise/Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf (or Q5…Q8_0)",
            "GGUF, 9 to 15 GB",
        ),
    ),
    (
        TI2V5B,
        Serves::Dit(None),
        file(
            "diffusion_models",
            WAN22_REPACK,
            "split_files/diffusion_models/wan2.2_ti2v_5B_fp16.safetensors",
            "wan2.2_ti2v_5B_fp16.safetensors",
            "fp16, about 10 GB",
        ),
    ),
    (
        TI2V5B,
        Serves::Dit(None),
        page(
            "diffusion_models",
            "Wan-AI/Wan2.2-TI2V-5B",
            "the official release (a folder with config.json)",
            "official, sharded",
        ),
    ),
    (
        A14B,
        Serves::TextEncoder,
        file(
            "text_encoders",
            WAN22_REPACK,
            "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "fp8 scaled, about 7 GB: ComfyUI's template",
        ),
    ),
    (
        A14B,
        Serves::TextEncoder,
        file(
            "text_encoders",
            WAN21_REPACK,
            "split_files/text_encoders/umt5_xxl_fp16.safetensors",
            "umt5_xxl_fp16.safetensors",
            "fp16, about 11 GB",
        ),
    ),
    (
        TI2V5B,
        Serves::TextEncoder,
        file(
            "text_encoders",
            WAN22_REPACK,
            "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "fp8 scaled, about 7 GB: ComfyUI's template",
        ),
    ),
    (
        TI2V5B,
        Serves::TextEncoder,
        file(
            "text_encoders",
            WAN21_REPACK,
            "split_files/text_encoders/umt5_xxl_fp16.safetensors",
            "umt5_xxl_fp16.safetensors",
            "fp16, about 11 GB",
        ),
    ),
    (
        A14B,
        Serves::Vae,
        file(
            "vae",
            WAN22_REPACK,
            "split_files/vae/wan_2.1_vae.safetensors",
            "wan_2.1_vae.safetensors",
            "the Wan2.1 VAE, about 250 MB (the A14B models use it)",
        ),
    ),
    (
        TI2V5B,
        Serves::Vae,
        file(
            "vae",
            WAN22_REPACK,
            "split_files/vae/wan2.2_vae.safetensors",
            "wan2.2_vae.safetensors",
            "the Wan2.2 VAE, about 1.4 GB (TI2V-5B only)",
        ),
    ),
    (
        A14B,
        Serves::Lora("lightx2v-4step", High),
        file(
            "loras",
            WAN22_REPACK,
            "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
            "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
            "LightX2V 4-step, high-noise expert, about 1.2 GB",
        ),
    ),
    (
        A14B,
        Serves::Lora("lightx2v-4step", Low),
        file(
            "loras",
            WAN22_REPACK,
            "split_files/loras/wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
            "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
            "LightX2V 4-step, low-noise expert, about 1.2 GB",
        ),
    ),
];

/// The upstream release of each model, for users who want the official files (sharded, with a
/// `config.json`; load the folder with `--model-dir`).
#[must_use]
pub fn official_release(model: ModelFamily) -> Source {
    match model {
        A14B => page(
            "",
            "Wan-AI/Wan2.2-I2V-A14B",
            "the official release",
            "official, sharded",
        ),
        TI2V5B => page(
            "",
            "Wan-AI/Wan2.2-TI2V-5B",
            "the official release",
            "official, sharded",
        ),
    }
}

/// Where to get the files `need` of a `model` preset asks for, preferred first: one file per
/// choice for a model, text encoder or VAE; each expert's file for a LoRA. Empty for a LoRA
/// name the table does not know.
#[must_use]
pub fn sources(model: ModelFamily, need: &Need) -> Vec<Source> {
    SOURCES
        .iter()
        .filter(|(family, serves, _)| {
            *family == model
                && match (need, serves) {
                    (Need::Dit { noise }, Serves::Dit(n)) => noise == n,
                    (Need::TextEncoder, Serves::TextEncoder) | (Need::Vae, Serves::Vae) => true,
                    (Need::Lora { name }, Serves::Lora(n, _)) => name == n,
                    _ => false,
                }
        })
        .map(|(_, _, source)| *source)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_files::fingerprint::noise_from_name;

    fn every_need() -> Vec<(String, ModelFamily, Need)> {
        let presets: Vec<_> = crate::preset::shipped()
            .unwrap()
            .into_iter()
            .map(|(_, preset)| preset)
            .collect();
        assert!(presets.len() >= 10, "every shipped preset");
        // An empty folder: the scan lists every need of every preset, all missing.
        let empty = tempfile::tempdir().unwrap();
        let report = crate::model_files::scan(empty.path(), &presets);
        report
            .presets
            .into_iter()
            .zip(&presets)
            .flat_map(|(status, preset)| {
                let model = preset.model;
                status
                    .needs
                    .into_iter()
                    .map(move |(need, _)| (status.preset.clone(), model, need))
            })
            .collect()
    }

    #[test]
    fn every_file_of_every_shipped_preset_has_a_source_in_the_folder_the_scan_reads() {
        for (stem, model, need) in every_need() {
            let found = sources(model, &need);
            assert!(!found.is_empty(), "{stem}: no source for {need:?}");
            let folder = match need {
                Need::Dit { .. } => "diffusion_models",
                Need::TextEncoder => "text_encoders",
                Need::Vae => "vae",
                Need::Lora { .. } => "loras",
            };
            for source in &found {
                assert_eq!(source.folder, folder, "{stem}: {source:?}");
            }
            // The preferred source is a file the scan and the loaders recognise by name.
            let first = found[0];
            let path = first.path.unwrap();
            assert!(path.ends_with(first.file), "{first:?}");
            if let Need::Dit { noise: Some(noise) } = need {
                assert_eq!(noise_from_name(first.file), Some(noise), "{first:?}");
            }
            if let Need::Lora { name } = &need {
                assert_eq!(found.len(), 2, "{stem}: one file per expert");
                let noises: Vec<_> = found.iter().map(|s| noise_from_name(s.file)).collect();
                assert_eq!(noises, [Some(High), Some(Low)]);
                let (high, low) = crate::pipeline::named_lora_files(name).unwrap();
                assert_eq!((found[0].file, found[1].file), (high, low));
            }
        }
    }

    #[test]
    fn the_14b_presets_get_the_files_users_have() {
        let names =
            |need: Need| -> Vec<&str> { sources(A14B, &need).iter().map(|s| s.file).collect() };
        // product.md, "Files users have".
        assert!(
            names(Need::Dit { noise: Some(High) })
                .contains(&"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
        );
        assert!(
            names(Need::Dit { noise: Some(Low) })
                .contains(&"wan2.2_i2v_low_noise_14B_fp16.safetensors")
        );
        assert_eq!(
            names(Need::TextEncoder),
            [
                "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
                "umt5_xxl_fp16.safetensors"
            ]
        );
        assert_eq!(names(Need::Vae), ["wan_2.1_vae.safetensors"]);
        assert_eq!(
            sources(TI2V5B, &Need::Vae)[0].file,
            "wan2.2_vae.safetensors"
        );
        assert!(
            sources(
                A14B,
                &Need::Lora {
                    name: "turbo".to_owned()
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn every_link_is_a_well_formed_hugging_face_https_url() {
        let mut all: Vec<Source> = SOURCES.iter().map(|(_, _, s)| *s).collect();
        all.extend([official_release(A14B), official_release(TI2V5B)]);
        for source in all {
            let url = source.url();
            let rest = url
                .strip_prefix("https://huggingface.co/")
                .unwrap_or_else(|| panic!("{url}"));
            assert!(
                url.chars().all(|c| c.is_ascii_graphic()),
                "no spaces or non-ASCII: {url}"
            );
            let parts: Vec<&str> = rest.split('/').collect();
            assert!(
                parts.len() >= 2 && parts.iter().all(|p| !p.is_empty()),
                "{url}"
            );
            match source.path {
                Some(path) => {
                    assert_eq!(parts[2..4], ["resolve", "main"], "{url}");
                    assert!(
                        path.starts_with("split_files/") || !path.contains(' '),
                        "{url}"
                    );
                    assert!(
                        std::path::Path::new(path)
                            .extension()
                            .is_some_and(|e| e == "safetensors" || e == "gguf"),
                        "{url}"
                    );
                }
                None => assert_eq!(parts.len(), 2, "a repository page: {url}"),
            }
        }
    }
}
