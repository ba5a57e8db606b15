//! The user's own presets: TOML files in the same format as the shipped `presets/*.toml`, kept in
//! the user's preset folder (`<config dir>/stillmotion/presets`). They are listed after the
//! shipped ones; a shipped preset's file name or display name is never taken.

use std::path::{Path, PathBuf};

use stillmotion_engine::preset::{PRESET_FORMAT_VERSION, Preset};

use super::Settings;

/// `<config dir>/stillmotion/presets` (`~/.config/stillmotion/presets` on Linux), if the
/// platform has a config folder.
#[must_use]
pub fn default_dir() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("stillmotion").join("presets"))
}

/// Loads the presets in `dir` as (file stem, preset), sorted by file name. A missing folder is
/// no presets; a file that does not load is skipped and reported in the returned messages, and
/// so is one that would shadow a shipped preset.
#[must_use]
pub fn load(dir: &Path, shipped: &[(String, Preset)]) -> (Vec<(String, Preset)>, Vec<String>) {
    let mut presets = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (presets, problems); // No folder yet: the user has saved none.
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let stem = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Preset::load(&path) {
            Ok(preset) if shadows_shipped(&stem, &preset.name, shipped) => problems.push(format!(
                "Skipped your preset “{}”: a shipped preset has that name; rename the file \
                 and its name field: {}",
                preset.name,
                path.display()
            )),
            Ok(preset) => presets.push((stem, preset)),
            Err(error) => problems.push(format!("Skipped a preset: {error:#}")),
        }
    }
    (presets, problems)
}

fn shadows_shipped(stem: &str, name: &str, shipped: &[(String, Preset)]) -> bool {
    shipped.iter().any(|(shipped_stem, preset)| {
        shipped_stem == stem || preset.name.trim().eq_ignore_ascii_case(name.trim())
    })
}

/// A file stem for a display name: lowercase letters and digits, words joined by `-`.
#[must_use]
pub fn file_stem_for(name: &str) -> String {
    let mut stem = String::new();
    for c in name.chars() {
        if c.is_alphanumeric() {
            stem.extend(c.to_lowercase());
        } else if !stem.is_empty() && !stem.ends_with('-') {
            stem.push('-');
        }
    }
    stem.trim_end_matches('-').to_owned()
}

/// The preset the current settings describe: what the settings choose (the size too), and the
/// model, frame rate, LoRA and boundary of the preset they started from (`base`).
#[must_use]
pub fn preset_from(name: &str, settings: &Settings, base: &Preset) -> Preset {
    Preset {
        format_version: PRESET_FORMAT_VERSION,
        name: name.trim().to_owned(),
        description: format!("Saved from Stillmotion, based on “{}”.", base.name),
        model: base.model,
        lora: base.lora.clone(),
        width: settings.size_with(base).0,
        height: settings.size_with(base).1,
        num_frames: settings.num_frames,
        fps: base.fps,
        steps: settings.steps,
        sampler: settings.sampler.into(),
        shift: settings.shift,
        cfg_high_noise: settings.cfg_high_noise,
        cfg_low_noise: settings.cfg_low_noise,
        boundary: base.boundary,
        // A target rate replaces the multiplier, as in the recipe.
        interpolation_factor: if settings.interpolation_target_fps.is_some() {
            1
        } else {
            settings.interpolation_factor
        },
        interpolation_target_fps: settings.interpolation_target_fps,
    }
}

/// Writes `preset` as `<dir>/<stem>.toml` (replacing the user's own preset of that name) and
/// returns the stem. Refuses a shipped preset's name, and anything the loader would refuse.
pub fn save(dir: &Path, preset: &Preset, shipped: &[(String, Preset)]) -> Result<String, String> {
    let stem = file_stem_for(&preset.name);
    if stem.is_empty() {
        return Err("Type a name for the preset (letters or digits) first".to_owned());
    }
    if shadows_shipped(&stem, &preset.name, shipped) {
        return Err(format!(
            "“{}” is the name of a shipped preset; choose another name",
            preset.name.trim()
        ));
    }
    let path = dir.join(format!("{stem}.toml"));
    let body = toml::to_string(preset)
        .map_err(|error| format!("The preset could not be written ({error})"))?;
    let text =
        format!("# A Stillmotion preset (same format as the shipped presets/*.toml).\n{body}");
    // Refuse to write what the picker could not read back.
    Preset::from_toml(&text, &path)
        .map_err(|error| format!("This preset would not load: {error:#}"))?;
    std::fs::create_dir_all(dir).map_err(|error| {
        format!(
            "The preset folder could not be created ({error}): {}",
            dir.display()
        )
    })?;
    let partial = dir.join(format!("{stem}.toml.partial"));
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|error| {
            let _ = std::fs::remove_file(&partial);
            format!(
                "The preset could not be saved ({error}): {}",
                path.display()
            )
        })?;
    Ok(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_lowercase_words_joined_by_dashes() {
        assert_eq!(file_stem_for("  My Slow Pan!! v2 "), "my-slow-pan-v2");
        assert_eq!(file_stem_for("Wan2.2 14B · 4-step"), "wan2-2-14b-4-step");
        assert_eq!(file_stem_for("?!"), "");
    }

    #[test]
    fn saved_presets_load_back_and_shipped_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shipped = stillmotion_engine::preset::shipped().unwrap();
        let base = &shipped[0].1;
        let settings = Settings {
            steps: 7,
            ..Settings::default()
        };
        let preset = preset_from("Seven steps", &settings, base);
        assert_eq!(save(dir.path(), &preset, &shipped).unwrap(), "seven-steps");
        let (loaded, problems) = load(dir.path(), &shipped);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(loaded, [("seven-steps".to_owned(), preset)]);

        // A target frame rate is saved, and comes back when the preset is chosen.
        let settings = Settings {
            interpolation_factor: 3,
            interpolation_target_fps: Some(24.0),
            ..settings
        };
        let preset = preset_from("Smooth 24", &settings, base);
        assert_eq!(save(dir.path(), &preset, &shipped).unwrap(), "smooth-24");
        let (loaded, _) = load(dir.path(), &shipped);
        let (stem, smooth) = loaded.iter().find(|(stem, _)| stem == "smooth-24").unwrap();
        assert_eq!(smooth, &preset);
        assert_eq!(
            (smooth.interpolation_factor, smooth.interpolation_target_fps),
            (1, Some(24.0))
        );
        let mut chosen = Settings::default();
        chosen.apply_preset(stem, smooth);
        assert_eq!(chosen.interpolation_target_fps, Some(24.0));
        assert_eq!(
            chosen.interpolation(),
            stillmotion_engine::recipe::Interpolation::TargetFps { fps: 24.0 }
        );
        // Below the clip's own rate is refused before anything is written.
        let slow = preset_from(
            "Slow",
            &Settings {
                interpolation_target_fps: Some(8.0),
                ..settings.clone()
            },
            base,
        );
        let error = save(dir.path(), &slow, &shipped).unwrap_err();
        assert!(error.contains("16..=240"), "{error}");
        assert!(!dir.path().join("slow.toml").exists());

        for taken in [shipped[1].1.name.clone(), shipped[1].1.name.to_uppercase()] {
            let clash = preset_from(&taken, &settings, base);
            let error = save(dir.path(), &clash, &shipped).unwrap_err();
            assert!(error.contains("shipped preset"), "{error}");
        }
        // A file that takes a shipped name by hand is skipped with a message.
        std::fs::write(
            dir.path().join(format!("{}.toml", shipped[2].0)),
            std::fs::read_to_string(dir.path().join("seven-steps.toml")).unwrap(),
        )
        .unwrap();
        let (loaded, problems) = load(dir.path(), &shipped);
        assert_eq!(loaded.len(), 2, "seven-steps and smooth-24");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
