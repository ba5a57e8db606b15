//! The history of finished renders: path, recipe and date persist in eframe storage; the
//! thumbnails are the outputs' first frames, decoded on a named thread at start and after each
//! render (so storage stays small and a thumbnail always shows what the file holds).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use stillmotion_engine::image_input;
use stillmotion_engine::recipe::Recipe;

use super::UiAction;
use super::clip_frames::ClipFrames;
use crate::ui::theme;

/// Older entries beyond this many are forgotten (the files stay).
pub const MAX_ENTRIES: usize = 200;
/// Thumbnails fit in this box (pixels).
const THUMBNAIL_SIZE: (u32, u32) = (160, 96);

/// One finished render.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The finished file (or folder of PNG frames).
    pub path: PathBuf,
    /// The recipe as JSON text: an entry from another version that no longer parses as a
    /// [`Recipe`] then costs only its own restore button, never the rest of the saved state.
    pub recipe_json: String,
    /// When the render finished (seconds since the Unix epoch).
    pub finished_unix_secs: u64,
    /// The prompt and a one-line summary, kept so drawing the list never parses recipes.
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub summary: String,
}

impl HistoryEntry {
    /// An entry for `recipe`'s output at `path`, finished now.
    #[must_use]
    pub fn new(path: PathBuf, recipe: &Recipe) -> Self {
        Self {
            path,
            recipe_json: serde_json::to_string(recipe).unwrap_or_default(),
            prompt: recipe.prompt.clone(),
            summary: format!(
                "seed {} · {} steps · {} frames",
                recipe.seed, recipe.steps, recipe.num_frames
            ),
            finished_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
        }
    }

    /// The stored recipe, or why it cannot be used.
    pub fn recipe(&self) -> Result<Recipe, String> {
        serde_json::from_str(&self.recipe_json).map_err(|error| {
            format!(
                "The recipe of this render cannot be read by this version ({error}): {}",
                self.path.display()
            )
        })
    }
}

/// Every remembered render, newest first.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct History {
    entries: Vec<HistoryEntry>,
}

impl History {
    #[must_use]
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Adds `entry` first, replacing an older entry for the same file.
    pub fn add(&mut self, entry: HistoryEntry) {
        self.entries.retain(|old| old.path != entry.path);
        self.entries.insert(0, entry);
        self.entries.truncate(MAX_ENTRIES);
    }

    /// Forgets the entry for `path` (the file stays).
    pub fn remove(&mut self, path: &Path) {
        self.entries.retain(|entry| entry.path != path);
    }

    /// Forgets entries whose file is gone (deleted or moved since).
    pub fn drop_missing(&mut self) {
        self.entries.retain(|entry| entry.path.exists());
    }
}

/// A decoded first frame, on its way to the UI.
pub type Thumbnail = (PathBuf, image_input::RgbImage);

/// Decodes the first frame of each clip on a named thread and sends it, shrunk, to `sender`.
pub fn spawn_thumbnails(
    ctx: &egui::Context,
    paths: Vec<PathBuf>,
    sender: Sender<Thumbnail>,
) -> std::io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let wake = ctx.clone();
    std::thread::Builder::new()
        .name("history-thumbnails".to_owned())
        .spawn(move || {
            for path in paths {
                let Some(frame) = first_frame(&path) else {
                    continue; // A clip that cannot be decoded keeps the placeholder.
                };
                if sender.send((path, frame)).is_err() {
                    return; // The app closed.
                }
                wake.request_repaint();
            }
        })
        .map(drop)
}

fn first_frame(path: &Path) -> Option<image_input::RgbImage> {
    let result = ClipFrames::open(path, image_input::DEFAULT_MAX_PIXELS)
        .and_then(|mut reader| reader.next_frame());
    match result {
        Ok(Some(frame)) => Some(image::imageops::thumbnail(
            &frame,
            THUMBNAIL_SIZE
                .0
                .min(frame.width() * THUMBNAIL_SIZE.1 / frame.height().max(1))
                .max(1),
            THUMBNAIL_SIZE
                .1
                .min(frame.height() * THUMBNAIL_SIZE.0 / frame.width().max(1))
                .max(1),
        )),
        Ok(None) => None,
        Err(error) => {
            tracing::debug!("no thumbnail for {}: {error:#}", path.display());
            None
        }
    }
}

/// `unix_secs` as `YYYY-MM-DD HH:MM` and the zone's abbreviation in `zone` (the app passes
/// the system's time zone: people remember when they rendered in their own time).
#[must_use]
pub fn format_date(unix_secs: u64, zone: &TimeZone) -> String {
    match i64::try_from(unix_secs).map(Timestamp::from_second) {
        Ok(Ok(timestamp)) => timestamp
            .to_zoned_datetime(zone.clone())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string(),
        _ => "unknown date".to_owned(),
    }
}

/// Draws the history list; `playing` is the clip in the preview, if any.
#[must_use]
pub fn show(
    ui: &mut egui::Ui,
    history: &History,
    thumbnails: &HashMap<PathBuf, egui::TextureHandle>,
    playing: Option<&Path>,
) -> Option<UiAction> {
    let mut action = None;
    let zone = TimeZone::system();
    ui.heading("History");
    if history.entries.is_empty() {
        ui.colored_label(
            theme::WEAK_TEXT,
            "Finished renders appear here. Drop a Stillmotion clip on the window to restore its settings.",
        );
        return None;
    }
    for entry in &history.entries {
        ui.group(|ui| {
            ui.horizontal(|ui| {
                let (width, height) = THUMBNAIL_SIZE;
                let size = egui::vec2(width as f32, height as f32) * 0.6;
                match thumbnails.get(&entry.path) {
                    Some(texture) => {
                        ui.add(egui::Image::new(texture).max_size(size))
                            .on_hover_text("The first frame");
                    }
                    None => {
                        ui.allocate_exact_size(size, egui::Sense::hover());
                    }
                }
                ui.vertical(|ui| {
                    let name = entry.path.file_name().map_or_else(
                        || entry.path.display().to_string(),
                        |name| name.to_string_lossy().into_owned(),
                    );
                    let selected = playing == Some(entry.path.as_path());
                    if ui
                        .selectable_label(selected, name)
                        .on_hover_text(format!("Play in the preview: {}", entry.path.display()))
                        .clicked()
                    {
                        action = Some(UiAction::PreviewClip(entry.path.clone()));
                    }
                    ui.colored_label(
                        theme::WEAK_TEXT,
                        format_date(entry.finished_unix_secs, &zone),
                    );
                    let prompt: String = entry.prompt.chars().take(60).collect();
                    ui.label(prompt).on_hover_text(&entry.prompt);
                    ui.colored_label(theme::WEAK_TEXT, &entry.summary);
                    ui.horizontal(|ui| {
                        if ui
                            .button("Restore settings")
                            .on_hover_text(
                                "Set prompt, seed, steps, guidance, models and the source image \
                                 to this render's",
                            )
                            .clicked()
                        {
                            action = Some(UiAction::RestoreFromHistory(entry.path.clone()));
                        }
                        if ui
                            .button("Remove")
                            .on_hover_text("Remove from the history; the file stays where it is")
                            .clicked()
                        {
                            action = Some(UiAction::ForgetRender(entry.path.clone()));
                        }
                    });
                });
            });
        });
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_calendar_dates_in_the_given_time_zone() {
        assert_eq!(format_date(0, &TimeZone::UTC), "1970-01-01 00:00 UTC");
        assert_eq!(
            format_date(951_782_400, &TimeZone::UTC),
            "2000-02-29 00:00 UTC"
        );
        let tokyo = TimeZone::fixed(jiff::tz::offset(9));
        assert_eq!(
            format_date(1_795_631_400, &tokyo),
            "2026-11-26 03:30 +09",
            "the next day in Tokyo"
        );
        let new_york = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(
            format_date(1_795_631_400, &new_york),
            "2026-11-25 13:30 EST"
        );
        assert_eq!(
            format_date(1_782_405_000, &new_york),
            "2026-06-25 12:30 EDT",
            "summer time"
        );
    }

    #[test]
    fn newest_first_one_entry_per_file_and_missing_files_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("kept.mp4");
        std::fs::write(&kept, b"x").unwrap();
        let entry = |path: &Path, secs| HistoryEntry {
            path: path.to_owned(),
            recipe_json: String::new(),
            finished_unix_secs: secs,
            prompt: String::new(),
            summary: String::new(),
        };
        let mut history = History::default();
        history.add(entry(&kept, 1));
        history.add(entry(&dir.path().join("gone.mp4"), 2));
        history.add(entry(&kept, 3));
        let secs: Vec<u64> = history
            .entries()
            .iter()
            .map(|e| e.finished_unix_secs)
            .collect();
        assert_eq!(secs, [3, 2]);
        history.drop_missing();
        assert_eq!(history.entries().len(), 1);
        assert_eq!(history.entries()[0].path, kept);
        assert!(history.entries()[0].recipe().is_err());
    }
}
