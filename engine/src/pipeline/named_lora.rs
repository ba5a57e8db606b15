//! The LoRA a preset names (`lora = "lightx2v-4step"`), resolved to the files users have: the
//! high-noise file goes on the high-noise expert and the low-noise file on the low-noise one,
//! each at strength 1.0, as ComfyUI's Wan2.2 4-step template loads them. The files are looked
//! for in the models folder's `loras/` (ComfyUI layout), beside the experts, and in the
//! `loras/` beside the experts' folder (`models/diffusion_models/…` → `models/loras/`).
//!
//! LoRAs the user gave explicitly win: one whose file name carries the LoRA's name and that
//! acts on an expert (nonzero strength, and no other expert in its name) covers that expert, so
//! the preset's file for it is not added (no double load).

use std::path::{Path, PathBuf};

use crate::EngineError;
use crate::recipe::{LoraChoice, ModelFiles};

/// A LoRA a preset can name, and its two files.
struct NamedLora {
    name: &'static str,
    what: &'static str,
    high_noise: &'static str,
    low_noise: &'static str,
}

/// The LoRAs presets can name.
const NAMED_LORAS: [NamedLora; 1] = [NamedLora {
    name: "lightx2v-4step",
    what: "LightX2V 4-step",
    high_noise: "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
    low_noise: "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
}];

/// `loras/` folders are searched this deep (users sort LoRAs into subfolders).
const MAX_DEPTH: usize = 3;

/// The file names of the LoRA a preset names (high-noise, low-noise), if this build knows it.
#[must_use]
pub fn named_lora_files(name: &str) -> Option<(&'static str, &'static str)> {
    NAMED_LORAS
        .iter()
        .find(|lora| lora.name == name)
        .map(|lora| (lora.high_noise, lora.low_noise))
}

/// `loras` with the files of the preset's LoRA `name` added for each expert no LoRA of the
/// user's covers. `files` are the resolved model files (their folder and experts say where to
/// look). Refused, naming both files, where to put them and the alternatives, when a needed
/// file is not found.
pub fn resolve_preset_lora(
    name: Option<&str>,
    loras: &[LoraChoice],
    files: &ModelFiles,
) -> Result<Vec<LoraChoice>, EngineError> {
    let mut resolved = loras.to_vec();
    let Some(name) = name else {
        return Ok(resolved);
    };
    let Some(named) = NAMED_LORAS.iter().find(|lora| lora.name == name) else {
        let known: Vec<&str> = NAMED_LORAS.iter().map(|lora| lora.name).collect();
        return Err(EngineError::BadRecipe {
            field: "lora",
            problem: format!(
                "the preset names the LoRA “{name}”, which this version does not know (it knows {}): correct the preset's lora line, or remove it and give the files with --lora",
                known.join(", ")
            ),
        });
    };
    let places = search_places(files);
    let mut missing = Vec::new();
    for (expert, file, strengths) in [
        (Expert::High, named.high_noise, (1.0, 0.0)),
        (Expert::Low, named.low_noise, (0.0, 1.0)),
    ] {
        if loras.iter().any(|lora| covers(lora, name, expert)) {
            continue;
        }
        match places.iter().find_map(|place| find(place, file, 0)) {
            Some(path) => resolved.push(LoraChoice {
                path,
                strength_high_noise: strengths.0,
                strength_low_noise: strengths.1,
            }),
            None => missing.push(file),
        }
    }
    if missing.is_empty() {
        return Ok(resolved);
    }
    let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    Err(EngineError::BadRecipe {
        field: "lora",
        problem: format!(
            "the preset uses the {} LoRA ({name}), and {} not found. It needs {} (on the high-noise expert) and {} (on the low-noise expert): put them in the models folder's loras/ (ComfyUI layout) or beside the experts; or give them yourself with --lora FILE:HIGH:LOW (e.g. --lora {}:1:0 --lora {}:0:1); or choose a preset without the LoRA (the official ones, 40 steps). Looked in: {}",
            named.what,
            if missing.len() == 2 {
                "neither file was".to_owned()
            } else {
                format!("{} was", missing.join(", "))
            },
            named.high_noise,
            named.low_noise,
            named.high_noise,
            named.low_noise,
            if looked.is_empty() {
                "no folder (give the experts or a models folder)".to_owned()
            } else {
                looked.join(", ")
            }
        ),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expert {
    High,
    Low,
}

/// Whether the user's `lora` is the named LoRA acting on `expert`.
fn covers(lora: &LoraChoice, name: &str, expert: Expert) -> bool {
    let file = lora
        .path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase()
        .replace('-', "_");
    let named = name
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .all(|token| file.contains(token));
    let high = file.contains("high_noise") || file.contains("highnoise");
    let low = file.contains("low_noise") || file.contains("lownoise");
    let (strength, other_expert) = match expert {
        Expert::High => (lora.strength_high_noise, low && !high),
        Expert::Low => (lora.strength_low_noise, high && !low),
    };
    named && strength != 0.0 && !other_expert
}

/// Where the files may be, in order, each once: the models folder's `loras/` and the folder
/// itself, then beside each expert and the `loras/` beside the expert's folder.
fn search_places(files: &ModelFiles) -> Vec<PathBuf> {
    let mut places = Vec::new();
    let mut add = |place: PathBuf| {
        if place.is_dir() && !places.contains(&place) {
            places.push(place);
        }
    };
    if let Some(dir) = &files.model_dir {
        add(dir.join("loras"));
        add(dir.clone());
    }
    for expert in [&files.high_noise, &files.low_noise].into_iter().flatten() {
        if let Some(beside) = expert.parent() {
            add(beside.to_owned());
            if let Some(models) = beside.parent() {
                add(models.join("loras"));
            }
        }
    }
    places
}

/// `file` (case-insensitive) in `dir`, or in the subfolders of a `loras/` folder.
fn find(dir: &Path, file: &str, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    let named = |path: &PathBuf| {
        path.file_name()
            .is_some_and(|n| n.to_string_lossy().eq_ignore_ascii_case(file))
    };
    if let Some(path) = entries.iter().find(|p| named(p) && p.is_file()) {
        return Some(path.clone());
    }
    let in_loras = dir
        .ancestors()
        .any(|a| a.file_name().is_some_and(|n| n == "loras"));
    if !in_loras || depth >= MAX_DEPTH {
        return None;
    }
    entries
        .iter()
        .filter(|path| path.is_dir())
        .find_map(|sub| find(sub, file, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIGH: &str = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors";
    const LOW: &str = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors";

    fn touch(path: &Path) -> PathBuf {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
        path.to_owned()
    }

    /// A ComfyUI `models/` tree with both experts.
    fn comfyui(root: &Path) -> ModelFiles {
        ModelFiles {
            high_noise: Some(touch(&root.join(
                "diffusion_models/wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            ))),
            low_noise: Some(touch(&root.join(
                "diffusion_models/wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
            ))),
            ..ModelFiles::default()
        }
    }

    fn strengths(loras: &[LoraChoice]) -> Vec<(String, f64, f64)> {
        loras
            .iter()
            .map(|l| {
                (
                    l.path.file_name().unwrap().to_string_lossy().into_owned(),
                    l.strength_high_noise,
                    l.strength_low_noise,
                )
            })
            .collect()
    }

    #[test]
    fn the_files_in_loras_go_one_on_each_expert_at_strength_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = comfyui(dir.path());
        // In a subfolder of loras/, found from the experts alone and from the models folder.
        let high = touch(&dir.path().join("loras/wan").join(HIGH));
        let low = touch(&dir.path().join("loras").join(LOW));
        let folder = ModelFiles {
            model_dir: Some(dir.path().to_owned()),
            ..ModelFiles::default()
        };
        for files in [&files, &folder] {
            let loras = resolve_preset_lora(Some("lightx2v-4step"), &[], files).unwrap();
            assert_eq!(
                strengths(&loras),
                [(HIGH.to_owned(), 1.0, 0.0), (LOW.to_owned(), 0.0, 1.0)]
            );
            assert_eq!((&loras[0].path, &loras[1].path), (&high, &low));
        }
        assert_eq!(
            resolve_preset_lora(None, &[], &files).unwrap(),
            [],
            "no named LoRA: nothing added"
        );
    }

    #[test]
    fn files_beside_the_experts_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let files = comfyui(dir.path());
        touch(
            &dir.path()
                .join("diffusion_models")
                .join(HIGH.to_uppercase()),
        );
        touch(&dir.path().join("diffusion_models").join(LOW));
        let loras = resolve_preset_lora(Some("lightx2v-4step"), &[], &files).unwrap();
        assert_eq!(loras.len(), 2);
        assert!(
            loras
                .iter()
                .all(|l| l.path.parent().unwrap().ends_with("diffusion_models"))
        );
    }

    #[test]
    fn the_users_own_files_win_and_nothing_loads_twice() {
        let dir = tempfile::tempdir().unwrap();
        let files = comfyui(dir.path());
        touch(&dir.path().join("loras").join(HIGH));
        touch(&dir.path().join("loras").join(LOW));
        let mine = |name: &str, high: f64, low: f64| LoraChoice {
            path: dir.path().join("elsewhere").join(name),
            strength_high_noise: high,
            strength_low_noise: low,
        };
        // Both of the user's, at their strengths: nothing added.
        let given = [mine(HIGH, 0.8, 1.0), mine(LOW, 0.0, 0.7)];
        let loras = resolve_preset_lora(Some("lightx2v-4step"), &given, &files).unwrap();
        assert_eq!(loras, given);
        // Only the high-noise one (a name that says so covers only its expert), and a style
        // LoRA that covers nothing: the low-noise file is added.
        let given = [
            mine(HIGH, 1.0, 1.0),
            mine("film_grain.safetensors", 1.0, 1.0),
        ];
        let loras = resolve_preset_lora(Some("lightx2v-4step"), &given, &files).unwrap();
        assert_eq!(&loras[..2], given);
        assert_eq!(strengths(&loras[2..]), [(LOW.to_owned(), 0.0, 1.0)]);
        // One file for both experts.
        let given = [mine("Lightx2v-4step.safetensors", 1.0, 1.0)];
        let loras = resolve_preset_lora(Some("lightx2v-4step"), &given, &files).unwrap();
        assert_eq!(loras, given);
    }

    #[test]
    fn missing_files_are_refused_with_both_names_where_to_put_them_and_the_alternatives() {
        let dir = tempfile::tempdir().unwrap();
        let files = comfyui(dir.path());
        touch(&dir.path().join("loras").join(LOW));
        let message = resolve_preset_lora(Some("lightx2v-4step"), &[], &files)
            .unwrap_err()
            .to_string();
        for part in [
            "lora",
            HIGH,
            LOW,
            &format!("{HIGH} was not found"),
            "loras/ (ComfyUI layout) or beside the experts",
            "--lora",
            "a preset without the LoRA",
            &dir.path().join("diffusion_models").display().to_string(),
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let unknown = resolve_preset_lora(Some("turbo-2step"), &[], &files)
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("turbo-2step") && unknown.contains("lightx2v-4step"),
            "{unknown}"
        );
    }
}
