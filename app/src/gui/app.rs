//! `StillmotionApp`: the eframe application. `logic` runs actions and drains background results;
//! `ui` only draws and queues [`UiAction`]s.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender, bounded};
use stillmotion_engine::image_input;
use stillmotion_engine::preset::{self, Preset};
use stillmotion_engine::recipe::Recipe;
use stillmotion_engine::runtime::{Command, EngineHandle, Event, JobId, JobKind, JobRunner};
use stillmotion_engine::sampling::{LatentPreview, PreviewChoice};

use super::gpu_gauge::{GaugeReading, GpuGauge};
use super::history::{self, History, HistoryEntry, Thumbnail};
use super::interpolate::{self, InterpolateForm};
use super::jobs::{self, JobList};
use super::live_preview::{self, LivePreview};
use super::loras::{self, LoraEntry, LoraKey};
use super::models_view::{self, ModelsView};
use super::player::{self, ClipPlayer};
use super::settings::{self, ModelSlot, Settings};
use super::source_image::{self, Framing, SourceImage};
use super::token_count::TokenCounter;
use super::user_presets;
use crate::ui::theme;

/// Image file extensions offered by the open dialog.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];
/// Dropped files with these extensions are clips (or recipe sidecars) whose recipe is restored.
const CLIP_EXTENSIONS: &[&str] = &["mp4", "m4v", "mov", "webm", "mkv", "json"];
/// Clips offered by the "Interpolate a clip" dialog.
const CLIP_EXTENSIONS_TO_INTERPOLATE: &[&str] = &["mp4", "m4v", "mov", "webm", "mkv", "gif"];

/// What the user asked for; produced by panels, executed by `App::logic`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum UiAction {
    /// Restore the settings of the history entry for this file.
    RestoreFromHistory(PathBuf),
    /// Remove the history entry for this file (the file stays).
    ForgetRender(PathBuf),
    /// Restore the settings from the recipe stored in (or beside) this clip.
    RestoreFromClip(PathBuf),
    /// Save the current choices as the user's preset with this name.
    SavePreset(String),
    /// Show the "Interpolate a clip" form.
    OpenInterpolate,
    /// Choose the clip to interpolate with the native dialog.
    ChooseInterpolateInput,
    /// Choose where the interpolated clip goes with the native dialog.
    ChooseInterpolateOutput,
    /// Validate the interpolation form and queue it.
    SubmitInterpolation,
    /// Show the native file dialog to choose a source image.
    OpenImageDialog,
    /// Ask the window for the clipboard's content (an image arrives as a paste event).
    PasteFromClipboard,
    /// Show the Models view.
    OpenModels,
    /// Choose the models folder with the native dialog (then scan it).
    ChooseModelsFolder,
    /// Scan the models folder again.
    ScanModels,
    /// Use the files the last scan found for the preset at this index of the picker.
    UseScannedModels(usize),
    /// Load this file as the source image.
    LoadImage(PathBuf),
    /// Hide the error banner.
    DismissError,
    /// Switch to the shipped preset with this file stem.
    ApplyPreset(String),
    /// Pick a new random seed.
    RerollSeed,
    /// Choose a model file with the native dialog.
    ChooseModelFile(ModelSlot),
    /// Choose the output folder with the native dialog.
    ChooseOutputFolder,
    /// Choose a LoRA file to add with the native dialog.
    ChooseLora,
    /// Take the LoRA at this index off the list.
    RemoveLora(usize),
    /// Validate the current settings and queue a render.
    Render,
    /// Cancel a queued or running job.
    CancelJob(JobId),
    /// Run this waiting job one place earlier.
    MoveJobUp(JobId),
    /// Run this waiting job one place later.
    MoveJobDown(JobId),
    /// Take a waiting or ended job off the queue.
    RemoveJob(JobId),
    /// Load this clip into the preview player and play it.
    PreviewClip(PathBuf),
    /// Open this file with the system's default program.
    OpenFile(PathBuf),
    /// Open the folder holding this file in the file manager.
    ShowInFolder(PathBuf),
}

/// What an open native dialog is choosing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialogPurpose {
    SourceImage,
    ModelFile(ModelSlot),
    Lora,
    OutputFolder,
    ModelsFolder,
    InterpolateInput,
    InterpolateOutput,
}

/// How the app was started (from the command line).
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub image: Option<PathBuf>,
    /// The folder of the user's own presets; `None` means
    /// `<config dir>/stillmotion/presets`.
    pub preset_dir: Option<PathBuf>,
    /// Whether a CUDA GPU can render; `None` asks the driver (this build must have CUDA too).
    pub gpu_available: Option<bool>,
    /// Where pasted images are saved (a render's recipe names its image by path); `None`
    /// means `<cache dir>/pasted`.
    pub paste_dir: Option<PathBuf>,
    /// Whether the Models view opens at start; `None`: when no usable model files are known
    /// (first start).
    pub models_view_at_start: Option<bool>,
}

/// What persists between runs (eframe storage).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct UiState {
    last_image_dir: Option<PathBuf>,
    settings: Settings,
    history: History,
}

const STORAGE_KEY: &str = "stillmotion.ui_state";

/// The application.
pub struct StillmotionApp {
    state: UiState,
    /// The shipped presets, then the user's own (file stem, preset).
    presets: Vec<(String, Preset)>,
    shipped_count: usize,
    preset_dir: Option<PathBuf>,
    new_preset_name: String,
    /// A confirmation shown until the next action (not an error).
    notice: Option<String>,
    source: Option<SourceImage>,
    compute_description: String,
    gpu_available: bool,
    interpolate: InterpolateForm,
    /// The display adapter's short name, and its full description for the tooltip.
    display_adapter: Option<(String, String)>,
    error: Option<String>,
    pending: Vec<UiAction>,
    dialog: Option<(DialogPurpose, Receiver<Option<PathBuf>>)>,
    engine: Option<EngineHandle>,
    outbox: VecDeque<Command>,
    jobs: JobList,
    player: Option<ClipPlayer>,
    /// The recipes of render jobs not yet finished, for their history entries.
    render_recipes: HashMap<JobId, Recipe>,
    thumbnails: HashMap<PathBuf, egui::TextureHandle>,
    /// Interpolation jobs not yet finished, and their multipliers.
    interpolation_jobs: HashMap<JobId, u32>,
    /// Clips known to be interpolated ×m that are not render-history entries.
    clip_factors: HashMap<PathBuf, u32>,
    thumbnail_sender: Sender<Thumbnail>,
    thumbnail_receiver: Receiver<Thumbnail>,
    /// The latest denoising step's preview (shown while its job runs).
    live_preview: Option<LivePreview>,
    /// Which live preview the running job sends and why (its `Event::PreviewChoice`).
    preview_choice: Option<(JobId, PreviewChoice)>,
    models: ModelsView,
    gpu_gauge: GpuGauge,
    paste_dir: PathBuf,
    /// An image pasted this frame, saved and loaded by `logic`.
    pasted: Option<std::sync::Arc<egui::ColorImage>>,
    /// Open the Models view when the start-up scan finds nothing usable.
    models_check_pending: bool,
    /// What the preset's LoRAs in the list were found for; looked for again when it changes.
    lora_key: Option<LoraKey>,
    /// Why the preset's LoRA is not in the list (its files were not found).
    lora_problem: Option<String>,
    /// Counts the prompt's tokens with the chosen text encoder's tokenizer.
    tokens: TokenCounter,
}

impl StillmotionApp {
    /// Creates the app, restoring persisted state, starting the engine thread with `runner`
    /// (which owns the models), and queueing the start-up image, if any.
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        options: StartOptions,
        runner: impl JobRunner,
    ) -> Self {
        theme::apply(&cc.egui_ctx);
        let mut state: UiState = cc
            .storage
            .and_then(|storage| eframe::get_value(storage, STORAGE_KEY))
            .unwrap_or_default();
        let mut error = None;
        let mut presets = preset::shipped().unwrap_or_else(|e| {
            error = Some(format!("{e:#}"));
            Vec::new()
        });
        let shipped_count = presets.len();
        let preset_dir = options
            .preset_dir
            .clone()
            .or_else(user_presets::default_dir);
        if let Some(dir) = &preset_dir {
            let (own, problems) = user_presets::load(dir, &presets);
            presets.extend(own);
            if !problems.is_empty() {
                error = Some(problems.join("\n"));
            }
        }
        if !presets
            .iter()
            .any(|(stem, _)| *stem == state.settings.preset)
            && let Some((stem, preset)) = presets
                .iter()
                .find(|(stem, _)| stem == crate::cli::DEFAULT_PRESET)
                .or_else(|| presets.first())
        {
            state.settings.apply_preset(stem, preset);
        }
        state.history.drop_missing();
        let (thumbnail_sender, thumbnail_receiver) = bounded(8);
        let paths = state
            .history
            .entries()
            .iter()
            .map(|e| e.path.clone())
            .collect();
        if let Err(e) = history::spawn_thumbnails(&cc.egui_ctx, paths, thumbnail_sender.clone()) {
            tracing::warn!("history thumbnails are unavailable: {e}");
        }
        let wake_ctx = cc.egui_ctx.clone();
        let engine = match EngineHandle::spawn_with_previews(runner, move || {
            wake_ctx.request_repaint();
        }) {
            Ok(engine) => Some(engine),
            Err(e) => {
                error = Some(format!("The engine could not start: {e:#}"));
                None
            }
        };
        let display_adapter = cc.wgpu_render_state.as_ref().map(|render_state| {
            let info = render_state.adapter.get_info();
            // Software renderers append build details ("llvmpipe (LLVM 15.0.6, 256 bits)").
            let short = info.name.split(" (").next().unwrap_or(&info.name);
            (
                format!("{short} ({:?})", info.backend),
                format!(
                    "{} ({:?}, driver {})",
                    info.name, info.backend, info.driver_info
                ),
            )
        });
        let gpu_available = options
            .gpu_available
            .unwrap_or_else(stillmotion_engine::device::cuda_available);
        let mut app = Self {
            state,
            presets,
            shipped_count,
            preset_dir,
            new_preset_name: String::new(),
            notice: None,
            source: None,
            compute_description: stillmotion_engine::device::availability_summary(),
            gpu_available,
            interpolate: InterpolateForm::default(),
            display_adapter,
            error,
            pending: options.image.map(UiAction::LoadImage).into_iter().collect(),
            dialog: None,
            engine,
            outbox: VecDeque::new(),
            jobs: JobList::default(),
            player: None,
            render_recipes: HashMap::new(),
            thumbnails: HashMap::new(),
            interpolation_jobs: HashMap::new(),
            clip_factors: HashMap::new(),
            thumbnail_sender,
            thumbnail_receiver,
            live_preview: None,
            preview_choice: None,
            models: ModelsView::default(),
            gpu_gauge: GpuGauge::start(&cc.egui_ctx, gpu_available),
            paste_dir: options
                .paste_dir
                .clone()
                .unwrap_or_else(|| stillmotion_engine::paths::cache_dir().join("pasted")),
            pasted: None,
            models_check_pending: false,
            lora_key: None,
            lora_problem: None,
            tokens: TokenCounter::default(),
        };
        app.check_models_at_start(&cc.egui_ctx, options.models_view_at_start);
        app
    }

    /// First start: open the Models view when no usable model files are known (after scanning
    /// the models folder, when one was chosen before).
    fn check_models_at_start(&mut self, ctx: &egui::Context, at_start: Option<bool>) {
        let files_known = self.settings_files_exist();
        match (at_start, self.state.settings.models_folder.clone()) {
            (Some(open), folder) => {
                self.models.open = open;
                if let Some(folder) = folder {
                    self.scan_models(ctx, folder);
                }
            }
            (None, Some(folder)) => {
                self.models_check_pending = !files_known;
                self.scan_models(ctx, folder);
            }
            (None, None) => self.models.open = !files_known,
        }
    }

    /// Whether every model file the settings name exists.
    fn settings_files_exist(&self) -> bool {
        let settings = &self.state.settings;
        [
            &settings.high_noise,
            &settings.low_noise,
            &settings.text_encoder,
            &settings.vae,
        ]
        .iter()
        .all(|file| file.as_ref().is_some_and(|path| path.is_file()))
    }

    fn scan_models(&mut self, ctx: &egui::Context, folder: PathBuf) {
        if let Err(message) = self.models.start_scan(ctx, folder, &self.presets) {
            self.error = Some(message);
        }
    }

    /// What the GPU memory gauge shows.
    #[must_use]
    pub fn gpu_memory(&self) -> GaugeReading {
        self.gpu_gauge.reading()
    }

    /// The Models view's state (its last scan), for tests.
    #[must_use]
    pub fn models_view(&self) -> &ModelsView {
        &self.models
    }

    /// The latest live preview of a render's denoising, and its job (kept after the job ends).
    #[must_use]
    pub fn live_preview(&self) -> Option<(JobId, &LatentPreview)> {
        self.live_preview
            .as_ref()
            .map(|live| (live.job_id, &live.preview))
    }

    /// Which live preview the latest job sends and why (its `Event::PreviewChoice`).
    #[must_use]
    pub fn preview_choice(&self) -> Option<&(JobId, PreviewChoice)> {
        self.preview_choice.as_ref()
    }

    /// The render settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.state.settings
    }

    /// The render settings, for tests and scripted use.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.state.settings
    }

    /// The jobs of this session.
    #[must_use]
    pub fn jobs(&self) -> &JobList {
        &self.jobs
    }

    /// The loaded source image, if any.
    #[must_use]
    pub fn source(&self) -> Option<&SourceImage> {
        self.source.as_ref()
    }

    /// Queues `action` as if a panel had produced it (scripted use and tests); it runs at the
    /// start of the next frame.
    pub fn perform(&mut self, action: UiAction) {
        self.pending.push(action);
    }

    /// The finished renders remembered across runs.
    #[must_use]
    pub fn history(&self) -> &History {
        &self.state.history
    }

    /// Whether the history entry for `path` has its thumbnail yet.
    #[must_use]
    pub fn has_thumbnail(&self, path: &std::path::Path) -> bool {
        self.thumbnails.contains_key(path)
    }

    /// The clip in the preview player, if any.
    #[must_use]
    pub fn player(&self) -> Option<&ClipPlayer> {
        self.player.as_ref()
    }

    /// The preview player, for tests and scripted use.
    pub fn player_mut(&mut self) -> Option<&mut ClipPlayer> {
        self.player.as_mut()
    }

    /// The folder the last image came from (where "Open…" starts); persisted.
    #[must_use]
    pub fn last_image_dir(&self) -> Option<&std::path::Path> {
        self.state.last_image_dir.as_deref()
    }

    /// The error currently shown to the user, if any.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn run_action(&mut self, ctx: &egui::Context, action: UiAction) {
        self.notice = None;
        match action {
            UiAction::RestoreFromHistory(path) => {
                let entry = self.state.history.entries().iter().find(|e| e.path == path);
                match entry.map(HistoryEntry::recipe) {
                    Some(Ok(recipe)) => self.restore(ctx, &recipe),
                    Some(Err(message)) => self.error = Some(message),
                    None => {}
                }
            }
            UiAction::RestoreFromClip(path) => self.restore_from_clip(ctx, path),
            UiAction::ForgetRender(path) => {
                self.state.history.remove(&path);
                self.thumbnails.remove(&path);
            }
            UiAction::OpenInterpolate => self.interpolate.open = true,
            UiAction::ChooseInterpolateInput => {
                self.open_dialog(ctx, DialogPurpose::InterpolateInput);
            }
            UiAction::ChooseInterpolateOutput => {
                self.open_dialog(ctx, DialogPurpose::InterpolateOutput);
            }
            UiAction::SubmitInterpolation => self.submit_interpolation(),
            UiAction::SavePreset(name) => self.save_preset(&name),
            UiAction::OpenImageDialog => self.open_dialog(ctx, DialogPurpose::SourceImage),
            UiAction::PasteFromClipboard => {
                ctx.send_viewport_cmd(egui::ViewportCommand::RequestPaste);
            }
            UiAction::LoadImage(path) => self.load_image(ctx, path),
            UiAction::DismissError => {
                self.error = None;
                self.notice = None;
            }
            UiAction::ApplyPreset(stem) => {
                if let Some((stem, preset)) = self.presets.iter().find(|(s, _)| *s == stem) {
                    self.state.settings.apply_preset(stem, preset);
                }
            }
            UiAction::RerollSeed => self.state.settings.seed = random_seed(),
            UiAction::ChooseModelFile(slot) => {
                self.open_dialog(ctx, DialogPurpose::ModelFile(slot));
            }
            UiAction::ChooseOutputFolder => self.open_dialog(ctx, DialogPurpose::OutputFolder),
            UiAction::ChooseLora => self.open_dialog(ctx, DialogPurpose::Lora),
            UiAction::RemoveLora(index) => {
                if index < self.state.settings.loras.len() {
                    self.state.settings.loras.remove(index);
                }
            }
            UiAction::OpenModels => self.models.open = true,
            UiAction::ChooseModelsFolder => self.open_dialog(ctx, DialogPurpose::ModelsFolder),
            UiAction::ScanModels => {
                self.refresh_preset_loras(true);
                if let Some(folder) = self.state.settings.models_folder.clone() {
                    self.scan_models(ctx, folder);
                }
            }
            UiAction::UseScannedModels(index) => self.use_scanned_models(index),
            UiAction::Render => self.submit_render(),
            UiAction::CancelJob(job_id) => {
                if self.jobs.cancel_waiting(job_id) {
                    self.render_recipes.remove(&job_id);
                    self.interpolation_jobs.remove(&job_id);
                } else {
                    self.outbox.push_back(Command::Cancel(job_id));
                }
            }
            UiAction::MoveJobUp(job_id) => self.jobs.move_waiting(job_id, true),
            UiAction::MoveJobDown(job_id) => self.jobs.move_waiting(job_id, false),
            UiAction::RemoveJob(job_id) => {
                if self.jobs.get(job_id).is_some_and(|job| !job.is_at_engine()) {
                    self.render_recipes.remove(&job_id);
                    self.interpolation_jobs.remove(&job_id);
                    self.jobs.remove(job_id);
                }
            }
            UiAction::PreviewClip(path) => {
                let factor = self.interpolation_factor_of(&path);
                let mut player = ClipPlayer::open(ctx, path, true);
                player.set_interpolation_factor(factor);
                self.player = Some(player);
            }
            UiAction::OpenFile(path) => self.open_with_system(&path),
            UiAction::ShowInFolder(path) => {
                let folder = path
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), PathBuf::from);
                self.open_with_system(&folder);
            }
        }
    }

    /// Writes the current choices as the user's preset `name`, lists it, and selects it.
    fn save_preset(&mut self, name: &str) {
        let Some(dir) = self.preset_dir.clone() else {
            self.error = Some("This system has no configuration folder to keep presets in".into());
            return;
        };
        let Some((_, base)) = self
            .presets
            .iter()
            .find(|(stem, _)| *stem == self.state.settings.preset)
        else {
            self.error = Some("Choose a preset to start from first".to_owned());
            return;
        };
        let preset = user_presets::preset_from(name, &self.state.settings, base);
        match user_presets::save(&dir, &preset, &self.presets[..self.shipped_count]) {
            Ok(stem) => {
                let (own, problems) = user_presets::load(&dir, &self.presets[..self.shipped_count]);
                self.presets.truncate(self.shipped_count);
                self.presets.extend(own);
                self.state.settings.preset.clone_from(&stem);
                self.new_preset_name.clear();
                self.error = (!problems.is_empty()).then(|| problems.join("\n"));
                self.notice = Some(format!(
                    "Saved your preset “{}”: {}",
                    preset.name,
                    dir.join(format!("{stem}.toml")).display()
                ));
            }
            Err(message) => self.error = Some(message),
        }
    }

    /// The presets in the picker: shipped first, then the user's own.
    #[must_use]
    pub fn presets(&self) -> &[(String, Preset)] {
        &self.presets
    }

    /// A confirmation shown to the user, if any.
    #[must_use]
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// How many times the clip at `path` was interpolated, when the app knows: from its render
    /// recipe in the history, or from the interpolation or restore that produced it.
    fn interpolation_factor_of(&self, path: &std::path::Path) -> Option<u32> {
        let from_history = self
            .state
            .history
            .entries()
            .iter()
            .find(|entry| entry.path == path)
            .and_then(|entry| entry.recipe().ok())
            .and_then(|recipe| multiplier_of(&recipe));
        from_history.or_else(|| self.clip_factors.get(path).copied())
    }

    /// Takes a finished render's settings, and its source image when it is still there.
    fn restore(&mut self, ctx: &egui::Context, recipe: &Recipe) {
        let preset_found = self.state.settings.restore(recipe, &self.presets);
        self.error = None;
        if recipe.image.is_file() {
            // Now rather than queued: a successful load clears the error line, and the warnings
            // below must stay.
            self.load_image(ctx, recipe.image.clone());
        } else {
            self.error = Some(format!(
                "Settings restored, but the render's source image is gone; open it again: {}",
                recipe.image.display()
            ));
        }
        if !preset_found {
            let current = self
                .presets
                .iter()
                .find(|(stem, _)| *stem == self.state.settings.preset)
                .map_or("none", |(_, preset)| preset.name.as_str());
            self.error = Some(format!(
                "Settings restored, but the render's preset “{}” is not installed here, so the \
                 model and its frame rate come from “{current}”",
                recipe.preset_name
            ));
        }
    }

    /// Restores the recipe stored in a dropped clip (or its sidecar) and previews the clip.
    fn restore_from_clip(&mut self, ctx: &egui::Context, path: PathBuf) {
        let embedded = match stillmotion_engine::video::read_recipe(&path) {
            Ok(embedded) => embedded,
            Err(error) => {
                self.error = Some(format!(
                    "No settings to restore (only clips rendered by Stillmotion carry them): \
                     {error:#}"
                ));
                return;
            }
        };
        match serde_json::from_value::<Recipe>(embedded.recipe) {
            Ok(recipe) => {
                self.restore(ctx, &recipe);
                let is_clip = !path
                    .extension()
                    .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
                if is_clip {
                    if let Some(factor) = multiplier_of(&recipe) {
                        self.clip_factors.insert(path.clone(), factor);
                    }
                    self.pending.push(UiAction::PreviewClip(path));
                }
            }
            Err(error) => {
                self.error = Some(format!(
                    "This clip's recipe was written by Stillmotion {} and this version cannot \
                     read it ({error}): {}",
                    embedded.app_version,
                    path.display()
                ));
            }
        }
    }

    /// Hands `path` to the desktop's default program (it returns at once; the program runs on).
    fn open_with_system(&mut self, path: &std::path::Path) {
        if let Err(error) = opener::open(path) {
            self.error = Some(format!(
                "Could not open it ({error}); open it from your file manager: {}",
                path.display()
            ));
        }
    }

    fn open_dialog(&mut self, ctx: &egui::Context, purpose: DialogPurpose) {
        if self.dialog.is_some() {
            return; // One dialog at a time.
        }
        let (sender, receiver) = bounded(1);
        let start_dir = match purpose {
            DialogPurpose::SourceImage => self.state.last_image_dir.clone(),
            DialogPurpose::InterpolateInput | DialogPurpose::InterpolateOutput => self
                .interpolate
                .input
                .as_deref()
                .and_then(std::path::Path::parent)
                .map(PathBuf::from),
            DialogPurpose::ModelFile(_)
            | DialogPurpose::Lora
            | DialogPurpose::OutputFolder
            | DialogPurpose::ModelsFolder => None,
        };
        let default_output = self.interpolate.input.as_deref().map(|input| {
            self.interpolate
                .output_for(input)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let ctx = ctx.clone();
        // The native dialog blocks its thread until the user answers; keep the UI live meanwhile.
        let spawned = std::thread::Builder::new()
            .name("file-dialog".to_owned())
            .spawn(move || {
                let mut dialog = rfd::FileDialog::new();
                if let Some(dir) = start_dir {
                    dialog = dialog.set_directory(dir);
                }
                let picked = match purpose {
                    DialogPurpose::SourceImage => dialog
                        .set_title("Open source image")
                        .add_filter("Images", IMAGE_EXTENSIONS)
                        .pick_file(),
                    DialogPurpose::ModelFile(slot) => dialog
                        .set_title(slot.label())
                        .add_filter("Model files", &["safetensors", "gguf", "pth"])
                        .pick_file(),
                    DialogPurpose::Lora => dialog
                        .set_title("Add a LoRA")
                        .add_filter("LoRA files", &["safetensors"])
                        .pick_file(),
                    DialogPurpose::OutputFolder => dialog.set_title("Output folder").pick_folder(),
                    DialogPurpose::ModelsFolder => dialog
                        .set_title("Models folder (ours or ComfyUI's models/)")
                        .pick_folder(),
                    DialogPurpose::InterpolateInput => dialog
                        .set_title("Clip to interpolate")
                        .add_filter("Videos", CLIP_EXTENSIONS_TO_INTERPOLATE)
                        .pick_file(),
                    DialogPurpose::InterpolateOutput => dialog
                        .set_title("Save the interpolated clip as")
                        .set_file_name(default_output.unwrap_or_default())
                        .add_filter("Videos", &["mp4", "webm", "webp", "gif"])
                        .save_file(),
                };
                // The receiver may be gone if the app closed meanwhile; nothing to do then.
                let _ = sender.send(picked);
                ctx.request_repaint();
            });
        match spawned {
            Ok(_) => self.dialog = Some((purpose, receiver)),
            Err(error) => self.error = Some(format!("Could not open the file dialog: {error}")),
        }
    }

    fn dialog_answered(&mut self, purpose: DialogPurpose, path: PathBuf) {
        match purpose {
            DialogPurpose::SourceImage => self.pending.push(UiAction::LoadImage(path)),
            DialogPurpose::ModelFile(slot) => self.state.settings.set_model_path(slot, path),
            DialogPurpose::Lora => self.state.settings.loras.push(LoraEntry::added(path)),
            DialogPurpose::OutputFolder => self.state.settings.output_dir = Some(path),
            DialogPurpose::ModelsFolder => {
                self.state.settings.models_folder = Some(path);
                self.pending.push(UiAction::ScanModels);
            }
            DialogPurpose::InterpolateInput => self.interpolate.input = Some(path),
            DialogPurpose::InterpolateOutput => self.interpolate.output = Some(path),
        }
    }

    /// Takes the files the last scan found for the preset at `index`, and switches to it.
    fn use_scanned_models(&mut self, index: usize) {
        let Some((_, report)) = &self.models.report else {
            return;
        };
        let (Some(status), Some((stem, preset))) =
            (report.presets.get(index), self.presets.get(index))
        else {
            return;
        };
        let [high_noise, low_noise, text_encoder, vae] = models_view::files_of(status);
        let settings = &mut self.state.settings;
        settings.apply_preset(stem, preset);
        settings.high_noise = high_noise;
        settings.low_noise = low_noise;
        settings.text_encoder = text_encoder;
        settings.vae = vae;
        self.notice = Some(format!("Using the model files found for “{}”", preset.name));
        self.models.open = false;
    }

    /// Queues RIFE over an existing clip (no video model needed).
    fn submit_interpolation(&mut self) {
        match self.interpolate.request() {
            Ok(request) => {
                let name = request.input.file_name().map_or_else(
                    || request.input.display().to_string(),
                    |name| name.to_string_lossy().into_owned(),
                );
                let multiplier = request.multiplier;
                let job_id = self.jobs.add(
                    format!("Interpolate {name} ×{multiplier}"),
                    JobKind::Interpolate(Box::new(request)),
                );
                self.interpolation_jobs.insert(job_id, multiplier);
                self.interpolate.open = false;
                self.error = None;
            }
            Err(message) => self.error = Some(message),
        }
    }

    /// The "Interpolate a clip" form, for tests and scripted use.
    pub fn interpolate_form_mut(&mut self) -> &mut InterpolateForm {
        &mut self.interpolate
    }

    /// Lists the preset's LoRA files (or why they are missing) when the preset, the model
    /// files or the user's LoRAs changed, or when `force`d (files may have appeared on disk).
    fn refresh_preset_loras(&mut self, force: bool) {
        let key = LoraKey::of(&self.state.settings);
        if !force && self.lora_key.as_ref() == Some(&key) {
            return;
        }
        let preset = self
            .presets
            .iter()
            .find(|(stem, _)| *stem == self.state.settings.preset)
            .map(|(_, preset)| preset);
        self.lora_problem = loras::refresh(&mut self.state.settings, preset);
        self.lora_key = Some(LoraKey::of(&self.state.settings));
    }

    /// Builds the recipe from the settings, validates it, and queues it on the engine.
    fn submit_render(&mut self) {
        // The list shows what the render applies: files may have appeared since it was made.
        self.refresh_preset_loras(true);
        let Some(source) = &self.source else {
            self.error =
                Some("Open an image first (drop it on the window or press Open…)".to_owned());
            return;
        };
        let Some((_, preset)) = self
            .presets
            .iter()
            .find(|(stem, _)| *stem == self.state.settings.preset)
        else {
            self.error = Some("Choose a preset first".to_owned());
            return;
        };
        if !self.state.settings.seed_locked {
            self.state.settings.seed = random_seed();
        }
        let output_stem = format!("stillmotion-{}", self.state.settings.seed);
        let recipe = Recipe::from_layers(
            preset,
            self.state
                .settings
                .choices(source.path.clone(), &output_stem),
        );
        if let Err(error) = recipe.validate() {
            self.error = Some(format!("Cannot render: {error:#}"));
            return;
        }
        let title: String = recipe.prompt.chars().take(48).collect();
        let job_id = self
            .jobs
            .add(title, JobKind::Render(Box::new(recipe.clone())));
        self.render_recipes.insert(job_id, recipe);
        self.error = None;
    }

    /// Sends queued commands without blocking the frame; what does not fit waits a frame.
    fn flush_outbox(&mut self) {
        let Some(engine) = &self.engine else {
            return;
        };
        if let Some((job_id, kind)) = self.jobs.next_for_engine() {
            self.outbox.push_back(Command::Submit { job_id, kind });
        }
        while let Some(command) = self.outbox.pop_front() {
            match engine.try_send(command.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    self.outbox.push_front(command);
                    break;
                }
                Err(error) => {
                    self.error = Some(format!("{error:#}"));
                    self.outbox.clear();
                    break;
                }
            }
        }
    }

    /// How the loaded image meets the chosen size: the fit choice and the engine's plan of it.
    fn framing(&self) -> Option<Framing> {
        let source = self.source.as_ref()?;
        let (_, preset) = self
            .presets
            .iter()
            .find(|(stem, _)| *stem == self.state.settings.preset)?;
        let mode = self.state.settings.fit_mode(preset);
        Some(Framing {
            fit: self.state.settings.image_fit,
            plan: image_input::fit::plan(mode, source.width, source.height)
                .map_err(|error| format!("{error:#}")),
        })
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
        if let Some((purpose, receiver)) = &self.dialog
            && let Ok(picked) = receiver.try_recv()
        {
            let purpose = *purpose;
            self.dialog = None;
            if let Some(path) = picked {
                self.dialog_answered(purpose, path);
            }
        }
        if let Some(image) = self.pasted.take() {
            match save_pasted(&self.paste_dir, &image) {
                Ok(path) => self.load_image(ctx, path),
                Err(message) => self.error = Some(message),
            }
        }
        self.refresh_preset_loras(false);
        self.tokens
            .follow(ctx, self.state.settings.text_encoder.as_deref());
        self.tokens.poll();
        for action in std::mem::take(&mut self.pending) {
            self.run_action(ctx, action);
        }
        self.flush_outbox();
        // Only the newest preview is uploaded: a UI that fell behind skips steps.
        let mut newest = None;
        if let Some(engine) = &self.engine {
            for event in engine.events().try_iter() {
                if let Event::Preview { job_id, preview } = event {
                    let shown = newest
                        .as_ref()
                        .map(|(id, p): &(JobId, LatentPreview)| (*id, p.kind))
                        .or_else(|| self.live_preview.as_ref().map(LivePreview::shows));
                    if live_preview::replaces(shown, job_id, preview.kind) {
                        newest = Some((job_id, preview));
                    }
                    continue;
                }
                if let Event::PreviewChoice { job_id, choice } = event {
                    self.preview_choice = Some((job_id, choice));
                    continue;
                }
                self.jobs.apply(&event);
                match &event {
                    Event::Finished { job_id, output, .. } => {
                        if let Some(recipe) = self.render_recipes.remove(job_id) {
                            let path = output.path.clone();
                            self.state
                                .history
                                .add(HistoryEntry::new(path.clone(), &recipe));
                            let sender = self.thumbnail_sender.clone();
                            if let Err(e) = history::spawn_thumbnails(ctx, vec![path], sender) {
                                tracing::warn!("no thumbnail for the new render: {e}");
                            }
                        }
                        if let Some(factor) = self.interpolation_jobs.remove(job_id) {
                            self.clip_factors.insert(output.path.clone(), factor);
                        }
                        self.pending
                            .push(UiAction::PreviewClip(output.path.clone()));
                        ctx.request_repaint();
                    }
                    Event::Cancelled { job_id } | Event::Failed { job_id, .. } => {
                        self.render_recipes.remove(job_id);
                        self.interpolation_jobs.remove(job_id);
                    }
                    _ => {}
                }
            }
        }
        if let Some((job_id, preview)) = newest {
            self.live_preview = Some(LivePreview::new(ctx, job_id, preview));
        }
        for (path, frame) in self.thumbnail_receiver.try_iter() {
            let (width, height) = frame.dimensions();
            let image =
                egui::ColorImage::from_rgb([width as usize, height as usize], frame.as_raw());
            let texture = ctx.load_texture(
                format!("thumbnail {}", path.display()),
                image,
                egui::TextureOptions::LINEAR,
            );
            self.thumbnails.insert(path, texture);
        }
        if let Some(player) = &mut self.player {
            player.poll(ctx);
        }
        if self.models.poll() && std::mem::take(&mut self.models_check_pending) {
            self.models.open |= !self.models.any_preset_ready();
        }
        // A job that just ended lets the next waiting one go now, not on the next input.
        self.flush_outbox();
        if !self.outbox.is_empty() {
            ctx.request_repaint_after(std::time::Duration::from_millis(50));
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
        actions.extend(dropped.into_iter().take(1).map(|path| {
            if dropped_is_clip(&path) {
                UiAction::RestoreFromClip(path)
            } else {
                UiAction::LoadImage(path)
            }
        }));

        // Images paste anywhere; text only when no text field has focus (it takes the paste
        // itself), and only when it names an image file (a file manager's copy).
        let text_focused = ui.memory(|memory| memory.focused().is_some());
        ui.input(|input| {
            for event in &input.events {
                match event {
                    egui::Event::PasteImage(image) => self.pasted = Some(image.clone()),
                    egui::Event::Paste(text) if !text_focused => {
                        if let Some(path) = pasted_image_path(text) {
                            actions.push(UiAction::LoadImage(path));
                        }
                    }
                    _ => {}
                }
            }
        });
        if self.pasted.is_some() {
            ui.ctx().request_repaint();
        }
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.strong("Stillmotion");
                ui.separator();
                if self.gpu_available {
                    ui.label(&self.compute_description)
                        .on_hover_text("Where rendering runs");
                } else {
                    ui.colored_label(
                        theme::WARNING_TEXT,
                        "No GPU: rendering runs on the CPU and takes hours. Interpolating \
                         existing clips works well without one.",
                    )
                    .on_hover_text(&self.compute_description);
                }
                ui.separator();
                if ui
                    .button("Interpolate a clip…")
                    .on_hover_text(
                        "Smooth an existing clip with RIFE frame interpolation (no video model \
                         or GPU needed)",
                    )
                    .clicked()
                {
                    actions.push(UiAction::OpenInterpolate);
                }
                if ui
                    .button("Models…")
                    .on_hover_text(
                        "Which model files each preset needs, which are present, missing or \
                         unusable, and where to get them",
                    )
                    .clicked()
                {
                    actions.push(UiAction::OpenModels);
                }
                if let Some((adapter, details)) = &self.display_adapter {
                    ui.separator();
                    ui.colored_label(theme::WEAK_TEXT, format!("Display: {adapter}"))
                        .on_hover_text(details);
                }
            });
        });
        let message = self
            .error
            .as_deref()
            .map(|error| (theme::ERROR_TEXT, error))
            .or_else(|| {
                self.notice
                    .as_deref()
                    .map(|notice| (theme::NOTICE_TEXT, notice))
            });
        if let Some((colour, message)) = message {
            egui::Panel::bottom("error_bar").show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.colored_label(colour, message);
                    if ui
                        .button("Dismiss")
                        .on_hover_text("Hide this message")
                        .clicked()
                    {
                        actions.push(UiAction::DismissError);
                    }
                });
            });
        }
        // Escape closes the open windows (Models, Interpolate) from the keyboard.
        if ui.input(|input| input.key_pressed(egui::Key::Escape)) {
            self.models.open = false;
            self.interpolate.open = false;
        }
        if ui.input(|input| input.modifiers.command && input.key_pressed(egui::Key::Enter)) {
            actions.push(UiAction::Render);
        }
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(360.0)
            .show(ui, |ui| {
                // Render stays in view at the bottom however long the settings get; it is
                // drawn after them so Tab reaches it after the last setting.
                let prompt_tokens = self.tokens.count(&self.state.settings.prompt);
                let spacing = ui.spacing().item_spacing.y;
                let render_bar = settings::RENDER_BUTTON_HEIGHT + 3.0 * spacing + 10.0;
                egui::ScrollArea::vertical()
                    .id_salt("settings_scroll")
                    .auto_shrink([false, false])
                    .max_height((ui.available_height() - render_bar).max(0.0))
                    .show(ui, |ui| {
                        actions.extend(settings::show(
                            ui,
                            &mut self.state.settings,
                            &self.presets,
                            self.shipped_count,
                            &mut self.new_preset_name,
                            self.gpu_gauge.reading(),
                            prompt_tokens,
                        ));
                        ui.separator();
                        actions.extend(loras::show(
                            ui,
                            &mut self.state.settings,
                            self.lora_problem.as_deref(),
                        ));
                    });
                ui.separator();
                actions.extend(settings::render_button(ui));
            });
        egui::Panel::right("queue")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    actions.extend(jobs::show(ui, &self.jobs));
                    ui.separator();
                    let playing = self.player.as_ref().map(ClipPlayer::path);
                    actions.extend(history::show(
                        ui,
                        &self.state.history,
                        &self.thumbnails,
                        playing,
                    ));
                });
            });
        let mut framing = self.framing();
        egui::CentralPanel::default().show(ui, |ui| {
            let live = self.live_preview.as_ref().filter(|live| {
                self.jobs
                    .get(live.job_id)
                    .is_some_and(jobs::JobEntry::is_active)
            });
            if let Some(live) = live {
                let source_height = (ui.available_height() * 0.35).max(120.0);
                let width = ui.available_width();
                ui.allocate_ui(egui::vec2(width, source_height), |ui| {
                    ui.set_max_height(source_height);
                    actions.extend(source_image::show(ui, self.source.as_ref(), &mut framing));
                });
                ui.separator();
                let choice = self
                    .preview_choice
                    .as_ref()
                    .filter(|(id, _)| *id == live.job_id)
                    .map(|(_, choice)| choice);
                live_preview::show(ui, live, choice);
                return;
            }
            let Some(player) = &mut self.player else {
                actions.extend(source_image::show(ui, self.source.as_ref(), &mut framing));
                return;
            };
            // The clip gets most of the room; the source image stays in view above it.
            let source_height = (ui.available_height() * 0.35).max(120.0);
            let width = ui.available_width();
            ui.allocate_ui(egui::vec2(width, source_height), |ui| {
                ui.set_max_height(source_height);
                actions.extend(source_image::show(ui, self.source.as_ref(), &mut framing));
            });
            ui.separator();
            actions.extend(player::show(ui, player));
        });

        if let Some(framing) = framing {
            self.state.settings.image_fit = framing.fit;
        }
        actions.extend(interpolate::show(ui.ctx(), &mut self.interpolate));
        let chosen = self
            .presets
            .iter()
            .position(|(stem, _)| *stem == self.state.settings.preset);
        actions.extend(models_view::show(
            ui.ctx(),
            &mut self.models,
            self.state.settings.models_folder.as_deref(),
            chosen,
        ));
        if !actions.is_empty() {
            self.pending.extend(actions);
            ui.ctx().request_repaint();
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.state);
    }
}

/// The RIFE multiplier a render used, when it used one (a target frame rate keeps no originals
/// at a fixed stride).
fn multiplier_of(recipe: &Recipe) -> Option<u32> {
    match recipe.interpolation {
        stillmotion_engine::recipe::Interpolation::Multiplier { factor } if factor > 1 => {
            Some(factor)
        }
        _ => None,
    }
}

/// Whether a dropped file is a clip whose recipe is restored rather than an image to animate:
/// a video (or a recipe sidecar), or an animated GIF or WebP that Stillmotion wrote (its
/// recipe sidecar, `<name>.json`, beside it; those formats cannot carry it inside).
fn dropped_is_clip(path: &std::path::Path) -> bool {
    let has = |extensions: &[&str]| {
        path.extension().is_some_and(|ext| {
            extensions
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
    };
    has(CLIP_EXTENSIONS) || (has(&["gif", "webp"]) && path.with_extension("json").is_file())
}

/// Saves a pasted image as PNG in `dir` under a new name, for the recipe to name.
fn save_pasted(dir: &std::path::Path, image: &egui::ColorImage) -> Result<PathBuf, String> {
    let [width, height] = image.size;
    let rgb: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|pixel| [pixel.r(), pixel.g(), pixel.b()])
        .collect();
    let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err("The pasted image is too large".to_owned());
    };
    let Some(buffer) = image::RgbImage::from_raw(width, height, rgb) else {
        return Err("The pasted image is malformed".to_owned());
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let path = dir.join(format!("pasted-{stamp}.png"));
    std::fs::create_dir_all(dir)
        .map_err(|error| error.to_string())
        .and_then(|()| buffer.save(&path).map_err(|error| error.to_string()))
        .map_err(|error| {
            format!(
                "Could not keep the pasted image (check the folder is writable): {error}: {}",
                path.display()
            )
        })?;
    Ok(path)
}

/// The image file a pasted text names (a path, or a `file://` URI as file managers copy),
/// when it exists and has an image extension.
fn pasted_image_path(text: &str) -> Option<PathBuf> {
    let line = text.lines().next()?.trim();
    let path = PathBuf::from(
        line.strip_prefix("file://")
            .unwrap_or(line)
            .replace("%20", " "),
    );
    let is_image = path.extension().is_some_and(|ext| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    });
    (is_image && path.is_file()).then_some(path)
}

/// A fresh random seed (from the OS's randomly keyed hasher: no extra dependency needed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
    );
    hasher.finish() & ((1 << 53) - 1) // Exactly representable in JSON numbers.
}

/// Opens the main window and runs until it is closed; `runner` does the engine's work.
pub fn run(options: StartOptions, runner: impl JobRunner) -> anyhow::Result<()> {
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
        Box::new(|cc| Ok(Box::new(StillmotionApp::new(cc, options, runner)))),
    )
    .map_err(|error| anyhow::anyhow!("the window could not open: {error}"))
}
