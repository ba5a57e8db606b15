//! Scanning a models folder (ours, or a ComfyUI `models/` tree with `diffusion_models/`,
//! `unet/`, `text_encoders/`, `clip/`, `vae/`, `loras/`, and the folders its
//! `extra_model_paths.yaml` adds) and matching it to presets.

use std::path::{Path, PathBuf};

use super::extra_paths;
use super::fingerprint::{
    Family, Fingerprint, Format, Noise, Role, Size, fingerprint, noise_from_name,
};
use crate::preset::{ModelFamily, Preset};

/// File extensions that can be model files.
const EXTENSIONS: [&str; 7] = ["safetensors", "gguf", "pt", "pth", "ckpt", "pkl", "bin"];
/// Nested folders deeper than this are not scanned (models trees are shallow).
const MAX_DEPTH: usize = 6;

/// One file found by a scan (or a problem with ComfyUI's `extra_model_paths.yaml`: then
/// `path` is that file or a folder it lists, and `fingerprint` the reason).
#[derive(Clone, Debug)]
pub struct FoundFile {
    pub path: PathBuf,
    /// The role its folder implies (`vae/` → VAE), if any.
    pub folder_role: Option<Role>,
    pub fingerprint: Result<Fingerprint, String>,
}

/// A file a preset needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// A14B: one expert; TI2V-5B: the single transformer (noise `None`).
    Dit {
        noise: Option<Noise>,
    },
    TextEncoder,
    Vae,
    /// The preset's LoRA by name, for one expert (or both).
    Lora {
        name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Present(PathBuf),
    Missing,
    /// A file that looks meant for this need but cannot serve it.
    Invalid {
        path: PathBuf,
        reason: String,
    },
}

/// What one preset has.
#[derive(Clone, Debug)]
pub struct PresetStatus {
    pub preset: String,
    pub needs: Vec<(Need, Status)>,
}

impl PresetStatus {
    pub fn ready(&self) -> bool {
        self.needs
            .iter()
            .all(|(_, s)| matches!(s, Status::Present(_)))
    }
}

#[derive(Clone, Debug)]
pub struct ScanReport {
    pub files: Vec<FoundFile>,
    pub presets: Vec<PresetStatus>,
}

fn folder_role(name: &str) -> Option<Role> {
    match name {
        "diffusion_models" | "unet" => Some(Role::DitExpert),
        "text_encoders" | "clip" => Some(Role::TextEncoder),
        "vae" => Some(Role::Vae),
        "loras" => Some(Role::Lora),
        "rife" => Some(Role::Rife),
        _ => None,
    }
}

fn walk(dir: &Path, role: Option<Role>, depth: usize, out: &mut Vec<FoundFile>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_lowercase();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, folder_role(&name).or(role), depth + 1, out);
            }
        } else if EXTENSIONS.iter().any(|e| name.ends_with(&format!(".{e}")))
            && !name.ends_with(".index.json")
        {
            // The report carries the path; keep the reason alone.
            let suffix = format!(": {}", path.display());
            let fingerprint =
                fingerprint(&path).map_err(|e| e.to_string().trim_end_matches(&suffix).to_owned());
            out.push(FoundFile {
                path,
                folder_role: role,
                fingerprint,
            });
        }
    }
}

/// Why `fp` cannot serve `need` for `preset`; `None` if it can.
fn mismatch(need: &Need, model: ModelFamily, fp: &Fingerprint) -> Option<String> {
    let gguf_ok = fp.format == Format::Gguf && matches!(need, Need::Dit { .. } | Need::TextEncoder);
    if fp.format != Format::Safetensors && !gguf_ok {
        return Some(match fp.format {
            Format::Gguf => {
                "GGUF is loaded for the diffusion transformer and the text encoder only: use the .safetensors file"
                    .to_owned()
            }
            _ => "PyTorch pickle files are not loaded: use the .safetensors file".to_owned(),
        });
    }
    let role = match need {
        Need::Dit { .. } => Role::DitExpert,
        Need::TextEncoder => Role::TextEncoder,
        Need::Vae => Role::Vae,
        Need::Lora { .. } => Role::Lora,
    };
    if fp.role != role {
        return Some(format!("it is a {:?} file, not a {role:?} file", fp.role));
    }
    let (channels, size, vae_family) = match model {
        ModelFamily::Wan22I2vA14b => (36, Size::B14, Family::Wan21),
        ModelFamily::Wan22Ti2v5b => (48, Size::B5, Family::Wan22),
    };
    match need {
        Need::Dit { noise } => {
            if fp.channels != Some(channels) || fp.size != Some(size) {
                return Some(format!(
                    "it is a {:?} transformer with {:?} input channels; this preset needs {size:?} with {channels}",
                    fp.size, fp.channels
                ));
            }
            if fp.family == Some(Family::Wan21) {
                return Some(
                    "it is a Wan2.1 model (it has a CLIP image branch); Wan2.2 is needed"
                        .to_owned(),
                );
            }
            if noise.is_some() && fp.noise != *noise {
                return Some(format!(
                    "its name or metadata does not say it is the {noise:?}-noise expert (found {:?})",
                    fp.noise
                ));
            }
        }
        Need::Vae if fp.family != Some(vae_family) => {
            return Some(format!(
                "it has {:?} latent channels; this preset needs the {vae_family:?} VAE",
                fp.channels
            ));
        }
        _ => {}
    }
    None
}

fn lora_name_matches(name: &str, path: &Path) -> bool {
    let file = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase();
    name.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .all(|t| file.contains(t))
}

fn needs(preset: &Preset) -> Vec<Need> {
    let mut v = match preset.model {
        ModelFamily::Wan22I2vA14b => vec![
            Need::Dit {
                noise: Some(Noise::High),
            },
            Need::Dit {
                noise: Some(Noise::Low),
            },
        ],
        ModelFamily::Wan22Ti2v5b => vec![Need::Dit { noise: None }],
    };
    v.push(Need::TextEncoder);
    v.push(Need::Vae);
    if let Some(name) = &preset.lora {
        v.push(Need::Lora { name: name.clone() });
    }
    v
}

fn status(need: &Need, model: ModelFamily, files: &[FoundFile]) -> Status {
    let wanted_role = match need {
        Need::Dit { .. } => Role::DitExpert,
        Need::TextEncoder => Role::TextEncoder,
        Need::Vae => Role::Vae,
        Need::Lora { .. } => Role::Lora,
    };
    let named = |f: &&FoundFile| match need {
        Need::Lora { name } => lora_name_matches(name, &f.path),
        _ => true,
    };
    if let Some(f) = files.iter().filter(named).find(|f| {
        f.fingerprint
            .as_ref()
            .is_ok_and(|fp| mismatch(need, model, fp).is_none())
    }) {
        return Status::Present(f.path.clone());
    }
    // Nothing fits: report a file meant for it (by its folder) that is broken, in a format we
    // cannot load, or something else. Files of another variant only make it missing.
    let other_expert = |f: &FoundFile| match need {
        // A name that says high or low noise is an A14B expert, never the 5B model.
        Need::Dit { noise } => {
            noise_from_name(&f.path.to_string_lossy()).is_some_and(|m| Some(m) != *noise)
        }
        _ => false,
    };
    let meant = files
        .iter()
        .filter(named)
        .filter(|f| f.folder_role == Some(wanted_role) && !other_expert(f))
        .find_map(|f| match &f.fingerprint {
            Err(reason) => Some((f, reason.clone())),
            Ok(fp)
                if mismatch(need, model, fp).is_some()
                    && (fp.format != Format::Safetensors || fp.role != wanted_role) =>
            {
                mismatch(need, model, fp).map(|r| (f, r))
            }
            Ok(_) => None,
        });
    match meant {
        Some((f, reason)) => Status::Invalid {
            path: f.path.clone(),
            reason,
        },
        None => Status::Missing,
    }
}

/// A problem with ComfyUI's `extra_model_paths.yaml`, reported as a file entry (`path` is the
/// YAML file or the folder it lists) whose fingerprint is the reason, so the report shows it.
fn extra_problem(path: &Path, reason: String) -> FoundFile {
    tracing::warn!(path = %path.display(), "{reason}");
    FoundFile {
        path: path.to_owned(),
        folder_role: None,
        fingerprint: Err(reason),
    }
}

/// The files of `root` and of the folders ComfyUI's `extra_model_paths.yaml` beside it lists
/// under a category the presets use, in ComfyUI's search order: folders from `is_default`
/// sections, then `root`, then the others. Each file once; problems with the YAML file or a
/// listed folder that does not exist come last, as entries whose fingerprint says why.
fn found_files(root: &Path) -> Vec<FoundFile> {
    let mut extras = Vec::new();
    let mut problems = Vec::new();
    if let Some(yaml) = extra_paths::beside(root) {
        match extra_paths::load(&yaml) {
            Ok(folders) => {
                for folder in folders {
                    let Some(role) = folder_role(&folder.category) else {
                        continue;
                    };
                    if folder.path.is_dir() {
                        extras.push((folder.is_default, folder.path, role));
                    } else if folder.listed {
                        problems.push(extra_problem(
                            &folder.path,
                            format!(
                                "{} lists this folder under `{}`, but it is not a folder",
                                yaml.display(),
                                folder.category
                            ),
                        ));
                    }
                }
            }
            Err(e) => problems.push(extra_problem(&yaml, e.to_string())),
        }
    }
    let mut files = Vec::new();
    // ComfyUI puts each `is_default` folder first, so the last one listed is searched first.
    for (_, dir, role) in extras.iter().filter(|(default, ..)| *default).rev() {
        walk(dir, Some(*role), 0, &mut files);
    }
    walk(root, None, 0, &mut files);
    for (_, dir, role) in extras.iter().filter(|(default, ..)| !*default) {
        walk(dir, Some(*role), 0, &mut files);
    }
    // A folder listed twice, or inside `root`, is searched once: keep its first appearance.
    let mut seen = std::collections::HashSet::new();
    files
        .retain(|f| seen.insert(std::fs::canonicalize(&f.path).unwrap_or_else(|_| f.path.clone())));
    files.extend(problems);
    files
}

/// Scans `root` (and the folders ComfyUI's `extra_model_paths.yaml` in `root`, or beside a
/// `models/` root, adds) and reports, for each preset, what is present, missing or invalid.
pub fn scan(root: &Path, presets: &[Preset]) -> ScanReport {
    let files = found_files(root);
    let presets = presets
        .iter()
        .map(|p| PresetStatus {
            preset: p.name.clone(),
            needs: needs(p)
                .into_iter()
                .map(|n| {
                    let s = status(&n, p.model, &files);
                    (n, s)
                })
                .collect(),
        })
        .collect();
    ScanReport { files, presets }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    use crate::model_files::fingerprint::fake_safetensors;

    fn dit(path: &Path, dim: usize, channels: usize) -> u64 {
        fake_safetensors(
            path,
            &[
                (
                    "model.diffusion_model.patch_embedding.weight",
                    "BF16",
                    &[dim, channels, 1, 2, 2],
                ),
                (
                    "model.diffusion_model.blocks.0.self_attn.q.weight",
                    "F8_E4M3",
                    &[dim, dim],
                ),
            ],
            &[],
        )
    }

    /// A umT5-XXL text encoder's header, its tables in `dtype`.
    fn text_encoder(path: &Path, dtype: &str) -> u64 {
        fake_safetensors(
            path,
            &[
                ("shared.weight", dtype, &[256_384, 4096]),
                (
                    "encoder.block.0.layer.0.SelfAttention.q.weight",
                    dtype,
                    &[4096, 4096],
                ),
            ],
            &[],
        )
    }

    /// A Wan2.1 VAE's header.
    fn wan21_vae(path: &Path) -> u64 {
        fake_safetensors(
            path,
            &[
                ("decoder.conv1.weight", "BF16", &[384, 16, 3, 3, 3]),
                ("encoder.conv1.weight", "BF16", &[96, 3, 3, 3, 3]),
            ],
            &[],
        )
    }

    fn preset(stem: &str) -> Preset {
        crate::preset::shipped()
            .unwrap()
            .into_iter()
            .find(|(s, _)| s == stem)
            .unwrap()
            .1
    }

    fn status_of<'a>(report: &'a ScanReport, need: &Need) -> &'a Status {
        &report.presets[0]
            .needs
            .iter()
            .find(|(n, _)| n == need)
            .unwrap()
            .1
    }

    #[test]
    fn a_comfyui_tree_reports_present_missing_and_invalid_per_preset() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        let dm = models.join("diffusion_models");
        dit(
            &dm.join("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors"),
            5120,
            36,
        );
        // The low-noise expert is cut short, as by an interrupted download.
        let low = dm.join("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors");
        let full = dit(&low, 5120, 36);
        File::options()
            .write(true)
            .open(&low)
            .unwrap()
            .set_len(full - 1000)
            .unwrap();
        // A T2V model is another variant: it makes nothing invalid.
        dit(
            &models
                .join("unet")
                .join("wan2.2_t2v_low_noise_14B.safetensors"),
            5120,
            16,
        );
        text_encoder(
            &models
                .join("text_encoders")
                .join("umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
            "F8_E4M3",
        );
        wan21_vae(&models.join("vae").join("wan_2.1_vae.safetensors"));
        // Mislabelled: a VAE saved under loras/ with the LoRA's name.
        fake_safetensors(
            &models
                .join("loras")
                .join("wan2.2_i2v_lightx2v_4steps_lora.safetensors"),
            &[
                ("decoder.conv1.weight", "BF16", &[384, 16, 3, 3, 3]),
                ("encoder.conv1.weight", "BF16", &[96, 3, 3, 3, 3]),
            ],
            &[],
        );
        std::fs::write(models.join("vae").join("notes.txt"), "not a model").unwrap();

        let report = scan(dir.path(), &[preset("wan22-i2v-a14b-lightx2v-4step-480p")]);
        assert_eq!(report.files.len(), 6);
        assert!(!report.presets[0].ready());
        assert!(matches!(
            status_of(&report, &Need::Dit { noise: Some(Noise::High) }),
            Status::Present(p) if p.ends_with("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
        ));
        match status_of(
            &report,
            &Need::Dit {
                noise: Some(Noise::Low),
            },
        ) {
            Status::Invalid { path, reason } => {
                assert_eq!(path, &low);
                assert!(reason.contains("truncated"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            status_of(&report, &Need::TextEncoder),
            Status::Present(_)
        ));
        assert!(matches!(status_of(&report, &Need::Vae), Status::Present(_)));
        match status_of(
            &report,
            &Need::Lora {
                name: "lightx2v-4step".to_owned(),
            },
        ) {
            Status::Invalid { reason, .. } => assert!(reason.contains("Vae"), "{reason}"),
            other => panic!("{other:?}"),
        }

        // The 5B preset finds neither its transformer nor its 48-channel VAE.
        let report = scan(dir.path(), &[preset("wan22-ti2v-5b-720p")]);
        assert_eq!(
            status_of(&report, &Need::Dit { noise: None }),
            &Status::Missing
        );
        assert_eq!(status_of(&report, &Need::Vae), &Status::Missing);
        dit(&dm.join("wan2.2_ti2v_5B_fp16.safetensors"), 3072, 48);
        fake_safetensors(
            &models.join("vae").join("wan2.2_vae.safetensors"),
            &[
                ("decoder.conv1.weight", "BF16", &[1024, 48, 3, 3, 3]),
                ("encoder.conv1.weight", "BF16", &[160, 12, 3, 3, 3]),
            ],
            &[],
        );
        let report = scan(dir.path(), &[preset("wan22-ti2v-5b-720p")]);
        assert!(report.presets[0].ready(), "{:?}", report.presets[0]);
    }

    fn lora(path: &Path) {
        fake_safetensors(
            path,
            &[(
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                "BF16",
                &[16, 5120],
            )],
            &[],
        );
    }

    /// A ComfyUI install whose `models/` has the high-noise expert, text encoder and VAE; the
    /// low-noise expert and the LoRA are in `shared/`, beside the install.
    fn comfyui_install(dir: &Path) -> PathBuf {
        let install = dir.join("ComfyUI");
        let models = install.join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(install.join("main.py"), "").unwrap();
        dit(
            &models
                .join("diffusion_models")
                .join("wan2.2_i2v_high_noise_14B_fp16.safetensors"),
            5120,
            36,
        );
        text_encoder(
            &models
                .join("text_encoders")
                .join("umt5_xxl_fp16.safetensors"),
            "F16",
        );
        wan21_vae(&models.join("vae").join("wan_2.1_vae.safetensors"));
        // Named neutrally: the folder it is listed under says what it is for.
        dit(
            &dir.join("shared")
                .join("wan")
                .join("wan2.2_i2v_low_noise_14B_fp16.safetensors"),
            5120,
            36,
        );
        lora(
            &dir.join("shared")
                .join("my loras")
                .join("wan2.2_i2v_lightx2v_4steps_lora.safetensors"),
        );
        install
    }

    #[test]
    fn extra_model_paths_yaml_adds_folders_beside_a_comfyui_install() {
        let dir = tempfile::tempdir().unwrap();
        let install = comfyui_install(dir.path());
        let models = install.join("models");
        let lightx2v = [preset("wan22-i2v-a14b-lightx2v-4step-480p")];
        // Without the YAML file the shared folder is not seen.
        let report = scan(&models, &lightx2v);
        assert_eq!(report.files.len(), 3);
        let low = Need::Dit {
            noise: Some(Noise::Low),
        };
        assert_eq!(status_of(&report, &low), &Status::Missing);

        std::fs::write(
            install.join(extra_paths::FILE_NAME),
            "\
comfyui:
    base_path: ../shared/
    diffusion_models: |
        wan
        not_there
    loras: my loras
    checkpoints: not_there_either
a111:
    base_path: /no/such/webui
    is_default: false
",
        )
        .unwrap();
        // Scanning `models/` or the install folder itself reads it.
        for root in [&models, &install] {
            let report = scan(root, &lightx2v);
            assert!(report.presets[0].ready(), "{:?}", report.presets[0]);
            assert!(matches!(
                status_of(&report, &low),
                Status::Present(p) if p.starts_with(dir.path().join("shared").join("wan"))
            ));
            assert!(matches!(
                status_of(&report, &Need::Lora { name: "lightx2v-4step".to_owned() }),
                Status::Present(p) if p.starts_with(dir.path().join("shared").join("my loras"))
            ));
            // The missing folder listed under a category we use is reported, not fatal; the one
            // under `checkpoints` is not ours to check.
            let problems: Vec<_> = report
                .files
                .iter()
                .filter_map(|f| f.fingerprint.as_ref().err().map(|e| (&f.path, e)))
                .collect();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].0.ends_with("shared/not_there"));
            assert!(problems[0].1.contains("extra_model_paths.yaml"));
            assert!(problems[0].1.contains("`diffusion_models`"));
            assert_eq!(report.files.len(), 6);
        }
        // The 5B preset gets nothing from it: its files are still missing.
        let report = scan(&models, &[preset("wan22-ti2v-5b-720p")]);
        assert_eq!(
            status_of(&report, &Need::Dit { noise: None }),
            &Status::Missing
        );

        // An extra folder inside the install is not counted twice.
        std::fs::write(
            install.join(extra_paths::FILE_NAME),
            "comfyui:\n  base_path: .\n  is_default: true\n  vae: models/vae\n",
        )
        .unwrap();
        assert_eq!(scan(&models, &lightx2v).files.len(), 3);
    }

    #[test]
    fn a_malformed_extra_model_paths_yaml_is_named_and_the_scan_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let install = comfyui_install(dir.path());
        let yaml = install.join(extra_paths::FILE_NAME);
        std::fs::write(
            &yaml,
            "comfyui:\n    base_path: ../shared\n  loras: [oops\n",
        )
        .unwrap();
        let report = scan(
            &install.join("models"),
            &[preset("wan22-i2v-a14b-lightx2v-4step-480p")],
        );
        let bad = report.files.last().unwrap();
        assert_eq!(bad.path, yaml);
        let reason = bad.fingerprint.as_ref().unwrap_err();
        assert!(reason.contains("not valid YAML"), "{reason}");
        assert!(reason.ends_with(&yaml.display().to_string()), "{reason}");
        // What `models/` holds is still reported.
        assert!(matches!(
            status_of(
                &report,
                &Need::Dit {
                    noise: Some(Noise::High)
                }
            ),
            Status::Present(_)
        ));
    }
}
