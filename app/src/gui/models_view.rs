//! The Models view: the models folder (ours, or an existing ComfyUI `models/` tree), what each
//! preset needs, what is present, missing or invalid and why, with sizes and where to get each
//! file. The scan reads file headers only, on a named helper thread.

use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, bounded};
use stillmotion_engine::model_files::scan::FoundFile;
use stillmotion_engine::model_files::sources::{official_release, sources};
use stillmotion_engine::model_files::{
    Format, Need, Noise, PresetStatus, ScanReport, Status, scan,
};
use stillmotion_engine::preset::{ModelFamily, Preset};

use super::UiAction;
use crate::ui::theme;

/// The window's id (tests find its area by it).
pub const WINDOW_ID: &str = "models_window";

/// The view's state: whether it is open, the last scan, and a scan in progress.
#[derive(Default)]
pub struct ModelsView {
    pub open: bool,
    /// The folder the last scan looked at, and what it found.
    pub report: Option<(PathBuf, ScanReport)>,
    /// The families of the presets the report lists, in the same order.
    families: Vec<ModelFamily>,
    scanning: Option<Receiver<(PathBuf, ScanReport)>>,
}

impl ModelsView {
    /// Starts scanning `folder` for `presets` on a helper thread; the result arrives in
    /// [`ModelsView::poll`].
    pub fn start_scan(
        &mut self,
        ctx: &egui::Context,
        folder: PathBuf,
        presets: &[(String, Preset)],
    ) -> Result<(), String> {
        let (sender, receiver) = bounded(1);
        let presets: Vec<Preset> = presets.iter().map(|(_, preset)| preset.clone()).collect();
        self.families = presets.iter().map(|preset| preset.model).collect();
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("models-scan".to_owned())
            .spawn(move || {
                let report = scan(&folder, &presets);
                // The app may have closed meanwhile; nothing to do then.
                let _ = sender.send((folder, report));
                ctx.request_repaint();
            })
            .map_err(|error| format!("Could not scan the models folder: {error}"))?;
        self.scanning = Some(receiver);
        Ok(())
    }

    /// Takes a finished scan; returns whether one arrived.
    pub fn poll(&mut self) -> bool {
        let Some(receiver) = &self.scanning else {
            return false;
        };
        match receiver.try_recv() {
            Ok(report) => {
                self.report = Some(report);
                self.scanning = None;
                true
            }
            Err(crossbeam_channel::TryRecvError::Empty) => false,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                self.scanning = None;
                false
            }
        }
    }

    #[must_use]
    pub fn is_scanning(&self) -> bool {
        self.scanning.is_some()
    }

    /// Whether the last scan found every file of at least one preset.
    #[must_use]
    pub fn any_preset_ready(&self) -> bool {
        self.report
            .as_ref()
            .is_some_and(|(_, report)| report.presets.iter().any(PresetStatus::ready))
    }
}

/// The model files a ready preset's scan found, for the settings' model slots:
/// (high-noise, low-noise, text encoder, VAE).
#[must_use]
pub fn files_of(status: &PresetStatus) -> [Option<PathBuf>; 4] {
    let mut files = [None, None, None, None];
    for (need, found) in &status.needs {
        let Status::Present(path) = found else {
            continue;
        };
        let slot = match need {
            Need::Dit {
                noise: Some(Noise::High) | None,
            } => 0,
            Need::Dit {
                noise: Some(Noise::Low),
            } => 1,
            Need::TextEncoder => 2,
            Need::Vae => 3,
            Need::Lora { .. } => continue,
        };
        files[slot] = Some(path.clone());
    }
    files
}

/// The order the view lists the report's presets in: what needs the user first. The chosen
/// preset (index `chosen`), then those with missing or unusable files (with their download
/// links), then the ready ones; otherwise the picker's order.
#[must_use]
pub fn display_order(report: &ScanReport, chosen: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..report.presets.len()).collect();
    order.sort_by_key(|&index| (Some(index) != chosen, report.presets[index].ready()));
    order
}

/// One line on what the scan means for the user: whether the chosen preset can render, and
/// how many presets are ready or need files.
#[must_use]
pub fn summary(report: &ScanReport, chosen: Option<usize>) -> (String, bool) {
    let ready = report.presets.iter().filter(|p| p.ready()).count();
    let total = report.presets.len();
    let counts = format!(
        "{ready} of {total} presets ready, {} need files",
        total - ready
    );
    match chosen.and_then(|index| report.presets.get(index)) {
        Some(status) if status.ready() => (
            format!("Your preset “{}” is ready. {counts}.", status.preset),
            false,
        ),
        Some(status) => (
            format!(
                "Your preset “{}” needs files (first below, with where to get them). {counts}.",
                status.preset
            ),
            true,
        ),
        None => (
            format!("{counts}: those that need files come first."),
            ready == 0,
        ),
    }
}

/// Draws the view as a window; `chosen` is the index of the settings' preset in the picker
/// (and the report). Returns the user's action.
#[must_use]
pub fn show(
    ctx: &egui::Context,
    view: &mut ModelsView,
    folder: Option<&Path>,
    chosen: Option<usize>,
) -> Option<UiAction> {
    let mut action = None;
    let mut open = view.open;
    egui::Window::new("Models")
        .id(egui::Id::unique(WINDOW_ID))
        .collapsible(false)
        .open(&mut open)
        .default_size([640.0, 520.0])
        .vscroll(true)
        .show(ctx, |ui| {
            ui.horizontal(|ui| {
                ui.label("Models folder:");
                match folder {
                    Some(folder) => ui.monospace(folder.display().to_string()),
                    None => ui.colored_label(theme::WARNING_TEXT, "none chosen"),
                };
            });
            ui.horizontal(|ui| {
                if ui
                    .button("Choose models folder…")
                    .on_hover_text(
                        "Our own models folder, or an existing ComfyUI models/ folder \
                         (diffusion_models/, text_encoders/, vae/, loras/)",
                    )
                    .clicked()
                {
                    action = Some(UiAction::ChooseModelsFolder);
                }
                if folder.is_some()
                    && ui
                        .add_enabled(!view.is_scanning(), egui::Button::new("Rescan"))
                        .on_hover_text("Look at the folder again (reads file headers only)")
                        .clicked()
                {
                    action = Some(UiAction::ScanModels);
                }
                if view.is_scanning() {
                    ui.spinner();
                    ui.label("scanning…");
                }
            });
            ui.separator();
            let Some((scanned, report)) = &view.report else {
                ui.label(
                    "Choose the folder that holds your Wan2.2 model files. Nothing is copied \
                     or moved; the app reads the files where they are.",
                );
                return;
            };
            ui.colored_label(
                theme::WEAK_TEXT,
                format!(
                    "{} model files found in {}",
                    report.files.len(),
                    scanned.display()
                ),
            );
            let (line, needs_action) = summary(report, chosen);
            ui.colored_label(
                if needs_action {
                    theme::WARNING_TEXT
                } else {
                    theme::NOTICE_TEXT
                },
                line,
            );
            for index in display_order(report, chosen) {
                let (Some(status), Some(family)) =
                    (report.presets.get(index), view.families.get(index))
                else {
                    continue;
                };
                ui.separator();
                let is_chosen = chosen == Some(index);
                if let Some(picked) =
                    preset_section(ui, index, status, *family, &report.files, is_chosen)
                {
                    action = Some(picked);
                }
            }
        });
    view.open = open;
    action
}

fn preset_section(
    ui: &mut egui::Ui,
    index: usize,
    status: &PresetStatus,
    family: ModelFamily,
    files: &[FoundFile],
    is_chosen: bool,
) -> Option<UiAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.strong(&status.preset);
        if is_chosen {
            ui.colored_label(theme::WEAK_TEXT, "(your preset)")
                .on_hover_text("The preset chosen in the settings");
        }
        if status.ready() {
            ui.colored_label(theme::NOTICE_TEXT, "ready");
            if ui
                .button(format!("Use these files for {}", status.preset))
                .on_hover_text("Fill the model file choices in the settings with these files")
                .clicked()
            {
                action = Some(UiAction::UseScannedModels(index));
            }
        } else {
            ui.colored_label(theme::WARNING_TEXT, "files missing");
        }
    });
    egui::Grid::new(("models", index))
        .num_columns(2)
        .striped(true)
        .show(ui, |ui| {
            for (need, found) in &status.needs {
                ui.label(need_label(need));
                match found {
                    Status::Present(path) => {
                        ui.label(format!(
                            "present: {} ({})",
                            path.file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                            describe(path, files)
                        ))
                        .on_hover_text(path.display().to_string());
                    }
                    Status::Missing => {
                        ui.vertical(|ui| {
                            ui.colored_label(
                                theme::WARNING_TEXT,
                                format!("missing. {}", where_to_get(need, family)),
                            );
                            source_links(ui, need, family);
                        });
                    }
                    Status::Invalid { path, reason } => {
                        ui.vertical(|ui| {
                            ui.colored_label(
                                theme::ERROR_TEXT,
                                format!("unusable: {reason}: {}", path.display()),
                            );
                            ui.label(format!("Replace it. {}", where_to_get(need, family)));
                            source_links(ui, need, family);
                        });
                    }
                }
                ui.end_row();
            }
        });
    action
}

fn need_label(need: &Need) -> String {
    match need {
        Need::Dit {
            noise: Some(Noise::High),
        } => "High-noise expert".to_owned(),
        Need::Dit {
            noise: Some(Noise::Low),
        } => "Low-noise expert".to_owned(),
        Need::Dit { noise: None } => "Video model".to_owned(),
        Need::TextEncoder => "Text encoder".to_owned(),
        Need::Vae => "VAE".to_owned(),
        Need::Lora { name } => format!("LoRA {name}"),
    }
}

/// Which file to get and which folder it goes in, from the engine's table of sources
/// (the first is the file ComfyUI's Wan2.2 template uses).
#[must_use]
pub fn where_to_get(need: &Need, family: ModelFamily) -> String {
    let found = sources(family, need);
    let Some(first) = found.first() else {
        return match need {
            Need::Lora { name } => {
                format!("No known download for the {name} LoRA: put its files in loras/")
            }
            _ => "No known download for this file".to_owned(),
        };
    };
    match need {
        Need::Lora { name } => format!(
            "Get the {name} LoRA, one file per expert, into {}/:",
            first.folder
        ),
        _ if found.len() > 1 => format!(
            "Get {} (or another choice below) into {}/:",
            first.file, first.folder
        ),
        _ => format!("Get {} into {}/:", first.file, first.folder),
    }
}

/// The download links of `need`, each opening the browser, with what the file is.
fn source_links(ui: &mut egui::Ui, need: &Need, family: ModelFamily) {
    for source in sources(family, need) {
        let url = source.url();
        ui.horizontal_wrapped(|ui| {
            ui.hyperlink_to(source.file, &url).on_hover_text(format!(
                "Opens {url} in the browser. Put the file in {}/",
                source.folder
            ));
            ui.colored_label(theme::WEAK_TEXT, source.note);
        });
    }
    if matches!(need, Need::Dit { .. }) {
        let official = official_release(family);
        let url = official.url();
        ui.horizontal_wrapped(|ui| {
            ui.hyperlink_to(format!("{} ({})", official.repo, official.file), &url)
                .on_hover_text(format!(
                    "Opens {url} in the browser: the sharded release with config.json, loaded \
                     as a folder (--model-dir)"
                ));
        });
    }
}

/// "14.3 GB · safetensors · F8_E4M3 scaled", from the scan's fingerprint of `path`.
fn describe(path: &Path, files: &[FoundFile]) -> String {
    let Some(Ok(fingerprint)) = files
        .iter()
        .find(|file| file.path == path)
        .map(|file| file.fingerprint.as_ref())
    else {
        return "size unknown".to_owned();
    };
    let format = match fingerprint.format {
        Format::Safetensors => "safetensors",
        Format::Gguf => "GGUF",
        Format::Pickle => "PyTorch pickle",
    };
    let mut text = format!("{} · {format}", human_size(fingerprint.bytes));
    if let Some(dtype) = &fingerprint.dtype {
        text.push_str(" · ");
        text.push_str(dtype);
    }
    if fingerprint.scaled_fp8 {
        text.push_str(" scaled");
    }
    text
}

/// "12.3 GB", "540 MB", "12 KB".
#[must_use]
pub fn human_size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss, reason = "a size shown to one decimal")]
    let value = bytes as f64;
    if value >= 1e9 {
        format!("{:.1} GB", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.0} MB", value / 1e6)
    } else {
        format!("{:.0} KB", value / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, vae: Status) -> PresetStatus {
        PresetStatus {
            preset: name.to_owned(),
            needs: vec![
                (Need::TextEncoder, Status::Present(PathBuf::from("t5"))),
                (Need::Vae, vae),
            ],
        }
    }

    #[test]
    fn what_needs_the_user_comes_first_and_the_summary_says_so() {
        let present = || Status::Present(PathBuf::from("vae"));
        let report = ScanReport {
            files: Vec::new(),
            presets: vec![
                status("A", present()),
                status("B", Status::Missing),
                status("C", present()),
                status(
                    "D",
                    Status::Invalid {
                        path: PathBuf::from("vae"),
                        reason: "truncated".to_owned(),
                    },
                ),
                status("E", Status::Missing),
            ],
        };
        // No preset chosen: those that need files (in the picker's order), then the ready.
        assert_eq!(display_order(&report, None), [1, 3, 4, 0, 2]);
        // The chosen one leads, ready or not.
        assert_eq!(display_order(&report, Some(4)), [4, 1, 3, 0, 2]);
        assert_eq!(display_order(&report, Some(2)), [2, 1, 3, 4, 0]);

        let (line, needs_action) = summary(&report, Some(4));
        assert!(needs_action);
        assert_eq!(
            line,
            "Your preset “E” needs files (first below, with where to get them). 2 of 5 presets \
             ready, 3 need files."
        );
        let (line, needs_action) = summary(&report, Some(0));
        assert!(!needs_action);
        assert!(line.starts_with("Your preset “A” is ready."), "{line}");
    }

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(human_size(14_300_000_000), "14.3 GB");
        assert_eq!(human_size(254_000_000), "254 MB");
        assert_eq!(human_size(12_000), "12 KB");
    }

    #[test]
    fn each_need_says_which_file_and_which_folder() {
        let high = where_to_get(
            &Need::Dit {
                noise: Some(Noise::High),
            },
            ModelFamily::Wan22I2vA14b,
        );
        assert_eq!(
            high,
            "Get wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors (or another choice below) into diffusion_models/:"
        );
        assert!(where_to_get(&Need::Vae, ModelFamily::Wan22Ti2v5b).contains("wan2.2_vae"));
        assert!(where_to_get(&Need::Vae, ModelFamily::Wan22I2vA14b).contains("wan_2.1_vae"));
        let lora = Need::Lora {
            name: "lightx2v-4step".to_owned(),
        };
        assert_eq!(
            where_to_get(&lora, ModelFamily::Wan22I2vA14b),
            "Get the lightx2v-4step LoRA, one file per expert, into loras/:"
        );
    }
}
