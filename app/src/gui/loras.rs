//! The LoRA list: the user's LoRAs with a strength per expert, and the files of the LoRA the
//! chosen preset names (`lightx2v-4step`), found beside the model files and listed like the
//! user's own, so what a render applies is what the list shows.

use std::path::PathBuf;

use stillmotion_engine::pipeline::{named_lora_files, resolve_preset_lora};
use stillmotion_engine::preset::Preset;
use stillmotion_engine::recipe::{LoraChoice, ModelFiles};

use super::UiAction;
use super::settings::Settings;
use crate::ui::theme;

/// One LoRA of the list.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraEntry {
    pub choice: LoraChoice,
    /// Added because the preset names it (found beside the model files); it goes when the
    /// preset or the model files change.
    #[serde(default)]
    pub from_preset: bool,
}

impl LoraEntry {
    /// A LoRA the user added, at strength 1 on both experts.
    #[must_use]
    pub fn added(path: PathBuf) -> Self {
        Self {
            choice: LoraChoice {
                path,
                strength_high_noise: 1.0,
                strength_low_noise: 1.0,
            },
            from_preset: false,
        }
    }
}

/// What the preset's LoRAs depend on: when it changes they are looked for again.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraKey {
    preset: String,
    models: ModelFiles,
    users: Vec<LoraChoice>,
}

impl LoraKey {
    #[must_use]
    pub fn of(settings: &Settings) -> Self {
        Self {
            preset: settings.preset.clone(),
            models: search_files(settings),
            users: settings
                .loras
                .iter()
                .filter(|entry| !entry.from_preset)
                .map(|entry| entry.choice.clone())
                .collect(),
        }
    }
}

/// Where the preset's LoRA files are looked for: the models folder and beside the experts.
fn search_files(settings: &Settings) -> ModelFiles {
    ModelFiles {
        model_dir: settings.models_folder.clone(),
        high_noise: settings.high_noise.clone(),
        low_noise: settings.low_noise.clone(),
        ..ModelFiles::default()
    }
}

/// Replaces the preset's LoRAs in the list with those `preset` names now (for each expert the
/// user's own LoRAs do not cover). Returns why they are missing, if they are.
pub fn refresh(settings: &mut Settings, preset: Option<&Preset>) -> Option<String> {
    settings.loras.retain(|entry| !entry.from_preset);
    let name = preset.and_then(|preset| preset.lora.as_deref());
    let users: Vec<LoraChoice> = settings
        .loras
        .iter()
        .map(|entry| entry.choice.clone())
        .collect();
    match resolve_preset_lora(name, &users, &search_files(settings)) {
        Ok(resolved) => {
            settings.loras.extend(
                resolved
                    .into_iter()
                    .skip(users.len())
                    .map(|choice| LoraEntry {
                        choice,
                        from_preset: true,
                    }),
            );
            None
        }
        // Until model files are chosen there is nowhere to look; a render names those first.
        Err(_) if search_files(settings) == ModelFiles::default() => None,
        // The engine's message speaks in command-line flags; the list says it in the app's
        // words (an unknown name keeps the engine's message, which names the preset's line).
        Err(error) => Some(
            name.and_then(named_lora_files)
                .map_or_else(|| format!("{error:#}"), |(high, low)| missing(high, low)),
        ),
    }
}

/// What to do when the preset's LoRA files are not found.
fn missing(high: &str, low: &str) -> String {
    format!(
        "Put {high} and {low} in loras/ or beside the experts, add them with Add LoRA…, or \
         choose an official preset (no LoRA)."
    )
}

/// Draws the list with its strength fields, "Add LoRA…", and why the preset's LoRA is missing.
#[must_use]
pub fn show(ui: &mut egui::Ui, settings: &mut Settings, problem: Option<&str>) -> Option<UiAction> {
    let mut action = None;
    ui.strong("LoRAs");
    if settings.loras.is_empty() && problem.is_none() {
        ui.colored_label(theme::WEAK_TEXT, "none");
    }
    for (index, entry) in settings.loras.iter_mut().enumerate() {
        let name = entry.choice.path.file_name().map_or_else(
            || entry.choice.path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        ui.horizontal_wrapped(|ui| {
            ui.label(&name)
                .on_hover_text(entry.choice.path.display().to_string());
            for (expert, strength) in [
                ("high-noise", &mut entry.choice.strength_high_noise),
                ("low-noise", &mut entry.choice.strength_low_noise),
            ] {
                ui.label(format!("{expert} strength"));
                let field = ui
                    .add(egui::DragValue::new(strength).range(-4.0..=4.0).speed(0.05))
                    .on_hover_text(format!(
                        "How strongly this LoRA acts on the {expert} expert (0 = not at all)"
                    ));
                // Every LoRA has these fields: the name says whose.
                super::settings::name_for_screen_readers(
                    ui,
                    &field,
                    &format!("{name} {expert} strength"),
                );
            }
            if entry.from_preset {
                ui.colored_label(theme::WEAK_TEXT, "from the preset")
                    .on_hover_text(
                        "The preset needs this LoRA; it was found beside your model files. Choose \
                     a preset without a LoRA to render without it.",
                    );
            } else if ui
                .button(format!("Remove {name}"))
                .on_hover_text("Render without this LoRA")
                .clicked()
            {
                action = Some(UiAction::RemoveLora(index));
            }
        });
    }
    if let Some(problem) = problem {
        ui.colored_label(theme::ERROR_TEXT, "The preset's LoRA is missing");
        ui.colored_label(theme::ERROR_TEXT, problem);
    }
    if ui
        .button("Add LoRA…")
        .on_hover_text("A LoRA .safetensors file (ComfyUI loras/), at strength 1 on both experts")
        .clicked()
    {
        action = Some(UiAction::ChooseLora);
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIGH: &str = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors";
    const LOW: &str = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors";

    #[test]
    fn the_presets_lora_is_listed_and_follows_the_preset_and_the_users_own() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            path
        };
        let presets = stillmotion_engine::preset::shipped().unwrap();
        let find = |stem: &str| &presets.iter().find(|(s, _)| s == stem).unwrap().1;
        let four_step = find("wan22-i2v-a14b-lightx2v-4step-480p");
        let official = find("wan22-i2v-a14b-official-480p");
        let mut settings = Settings::default();
        assert_eq!(
            refresh(&mut settings, Some(four_step)),
            None,
            "no model files yet: nowhere to look"
        );
        let mut settings = Settings {
            high_noise: Some(touch("high.safetensors")),
            low_noise: Some(touch("low.safetensors")),
            ..Settings::default()
        };
        let problem = refresh(&mut settings, Some(four_step)).unwrap();
        assert!(
            problem.contains(HIGH) && problem.contains(LOW) && problem.contains("Add LoRA"),
            "{problem}"
        );
        assert!(settings.loras.is_empty());

        let (high, low) = (touch(HIGH), touch(LOW));
        assert_eq!(refresh(&mut settings, Some(four_step)), None);
        let listed: Vec<_> = settings
            .loras
            .iter()
            .map(|e| {
                (
                    e.choice.path.clone(),
                    e.choice.strength_high_noise,
                    e.choice.strength_low_noise,
                    e.from_preset,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [(high, 1.0, 0.0, true), (low.clone(), 0.0, 1.0, true)]
        );

        // The user's own LoRA stays; the preset's go with a preset that names none.
        settings
            .loras
            .insert(0, LoraEntry::added(touch("grain.safetensors")));
        assert_eq!(refresh(&mut settings, Some(official)), None);
        assert_eq!(settings.loras.len(), 1);
        assert!(!settings.loras[0].from_preset);

        // The user's own copy of a file wins: only the other expert's file is added.
        settings.loras[0] = LoraEntry {
            choice: LoraChoice {
                path: touch("my_lightx2v_4step_high_noise.safetensors"),
                strength_high_noise: 0.8,
                strength_low_noise: 0.0,
            },
            from_preset: false,
        };
        assert_eq!(refresh(&mut settings, Some(four_step)), None);
        assert_eq!(settings.loras.len(), 2);
        assert_eq!(settings.loras[1].choice.path, low);
    }
}
