//! `StillmotionApp`: the eframe application. `logic` runs actions and drains background results;
//! `ui` only draws and queues [`UiAction`]s.

use std::path::PathBuf;

use crossbeam_channel::{Receiver, bounded};
use stillmotion_engine::image_input;

use super::source_image::{self, SourceImage};
use crate::ui::theme;

/// Image file extensions offered by the open dialog.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];

/// What the user asked for; produced by panels, executed by `App::logic`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum UiAction {
    /// Show the native file dialog to choose a source image.
    OpenImageDialog,
    /// Load this file as the source image.
    LoadImage(PathBuf),
    /// Hide the error banner.
    DismissError,
}

/// How the app was started (from the command line).
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub image: Option<PathBuf>,
}

/// What persists between runs (eframe storage).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct UiState {
    last_image_dir: Option<PathBuf>,
}

const STORAGE_KEY: &str = "stillmotion.ui_state";

/// The application.
pub struct StillmotionApp {
    state: UiState,
    source: Option<SourceImage>,
    compute_description: String,
    display_adapter: Option<String>,
    error: Option<String>,
    pending: Vec<UiAction>,
    dialog_result: Option<Receiver<Option<PathBuf>>>,
}

impl StillmotionApp {
    /// Creates the app, restoring persisted state and queueing the start-up image, if any.
    pub fn new(cc: &eframe::CreationContext<'_>, options: StartOptions) -> Self {
        theme::apply(&cc.egui_ctx);
        let state = cc
            .storage
            .and_then(|storage| eframe::get_value(storage, STORAGE_KEY))
            .unwrap_or_default();
        let display_adapter = cc.wgpu_render_state.as_ref().map(|render_state| {
            let info = render_state.adapter.get_info();
            format!("{} ({:?})", info.name, info.backend)
        });
        Self {
            state,
            source: None,
            compute_description: stillmotion_engine::device::availability_summary(),
            display_adapter,
            error: None,
            pending: options.image.map(UiAction::LoadImage).into_iter().collect(),
            dialog_result: None,
        }
    }

    /// The loaded source image, if any.
    #[must_use]
    pub fn source(&self) -> Option<&SourceImage> {
        self.source.as_ref()
    }

    /// The error currently shown to the user, if any.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn run_action(&mut self, ctx: &egui::Context, action: UiAction) {
        match action {
            UiAction::OpenImageDialog => self.open_image_dialog(ctx),
            UiAction::LoadImage(path) => self.load_image(ctx, path),
            UiAction::DismissError => self.error = None,
        }
    }

    fn open_image_dialog(&mut self, ctx: &egui::Context) {
        if self.dialog_result.is_some() {
            return; // One dialog at a time.
        }
        let (sender, receiver) = bounded(1);
        let start_dir = self.state.last_image_dir.clone();
        let ctx = ctx.clone();
        // The native dialog blocks its thread until the user answers; keep the UI live meanwhile.
        let spawned = std::thread::Builder::new()
            .name("open-image-dialog".to_owned())
            .spawn(move || {
                let mut dialog = rfd::FileDialog::new()
                    .set_title("Open source image")
                    .add_filter("Images", IMAGE_EXTENSIONS);
                if let Some(dir) = start_dir {
                    dialog = dialog.set_directory(dir);
                }
                // The receiver may be gone if the app closed meanwhile; nothing to do then.
                let _ = sender.send(dialog.pick_file());
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.dialog_result = Some(receiver),
            Err(error) => self.error = Some(format!("Could not open the file dialog: {error}")),
        }
    }

    fn load_image(&mut self, ctx: &egui::Context, path: PathBuf) {
        match image_input::load_rgb8(&path, image_input::DEFAULT_MAX_PIXELS) {
            Ok(image) => {
                self.state.last_image_dir = path.parent().map(PathBuf::from);
                self.source = Some(SourceImage::new(ctx, path, &image));
                self.error = None;
            }
            Err(error) => self.error = Some(format!("{error:#}")),
        }
    }
}

impl eframe::App for StillmotionApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        if let Some(receiver) = &self.dialog_result
            && let Ok(picked) = receiver.try_recv()
        {
            self.dialog_result = None;
            if let Some(path) = picked {
                self.pending.push(UiAction::LoadImage(path));
            }
        }
        for action in std::mem::take(&mut self.pending) {
            self.run_action(ctx, action);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let mut actions = Vec::new();
        let dropped: Vec<PathBuf> = ui.input(|input| {
            input
                .raw
                .dropped_files
                .iter()
                .map(|file| file.path().to_owned())
                .collect()
        });
        actions.extend(dropped.into_iter().take(1).map(UiAction::LoadImage));

        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("Stillmotion");
                ui.separator();
                ui.label(&self.compute_description)
                    .on_hover_text("Where rendering runs");
                if let Some(adapter) = &self.display_adapter {
                    ui.separator();
                    ui.colored_label(theme::WEAK_TEXT, format!("Display: {adapter}"));
                }
            });
        });
        if let Some(error) = &self.error {
            egui::Panel::bottom("error_bar").show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.colored_label(theme::ERROR_TEXT, error);
                    if ui.button("Dismiss").clicked() {
                        actions.push(UiAction::DismissError);
                    }
                });
            });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            actions.extend(source_image::show(ui, self.source.as_ref()));
        });

        if !actions.is_empty() {
            self.pending.extend(actions);
            ui.ctx().request_repaint();
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.state);
    }
}

/// Opens the main window and runs until it is closed.
pub fn run(options: StartOptions) -> anyhow::Result<()> {
    let native_options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Stillmotion")
            .with_app_id("stillmotion")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([720.0, 480.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "Stillmotion",
        native_options,
        Box::new(|cc| Ok(Box::new(StillmotionApp::new(cc, options)))),
    )
    .map_err(|error| anyhow::anyhow!("the window could not open: {error}"))
}
