//! The source image panel: shows the loaded image and its size, offers "Open…" and accepts
//! dropped files. It only draws and returns actions; loading happens in `App::logic`.

use std::path::PathBuf;

use stillmotion_engine::image_input::RgbImage;

use super::UiAction;
use crate::ui::theme;

/// A loaded source image: its path, pixel size, and the texture drawing it.
pub struct SourceImage {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub texture: egui::TextureHandle,
}

impl SourceImage {
    /// Uploads an RGB8 image as a texture.
    pub fn new(ctx: &egui::Context, path: PathBuf, image: &RgbImage) -> Self {
        let (width, height) = image.dimensions();
        let color_image =
            egui::ColorImage::from_rgb([width as usize, height as usize], image.as_raw());
        let texture = ctx.load_texture("source-image", color_image, egui::TextureOptions::LINEAR);
        Self {
            path,
            width,
            height,
            texture,
        }
    }
}

/// Draws the panel. Returns the action the user asked for, if any.
#[must_use]
pub fn show(ui: &mut egui::Ui, source: Option<&SourceImage>) -> Option<UiAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.heading("Source image");
        if ui
            .button("Open…")
            .on_hover_text("Choose the still image to animate (PNG, JPEG, WebP, BMP, TIFF, GIF)")
            .clicked()
        {
            action = Some(UiAction::OpenImageDialog);
        }
        if ui
            .button("Paste image")
            .on_hover_text("Use the image on the clipboard (or press Ctrl+V)")
            .clicked()
        {
            action = Some(UiAction::PasteFromClipboard);
        }
    });
    match source {
        Some(source) => {
            let name = source.path.file_name().map_or_else(
                || source.path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            );
            ui.label(format!("{name} · {}×{}", source.width, source.height));
            let available = ui.available_size();
            let scale = (available.x / source.width as f32)
                .min(available.y / source.height as f32)
                .min(1.0);
            let size = egui::vec2(source.width as f32 * scale, source.height as f32 * scale);
            ui.add(egui::Image::new(&source.texture).fit_to_exact_size(size))
                .on_hover_text(source.path.display().to_string());
        }
        None => {
            // A real label (not painted text) so screen readers and tests can find it.
            egui::Frame::new()
                .fill(theme::DROP_ZONE_FILL)
                .corner_radius(8.0)
                .show(ui, |ui| {
                    ui.set_min_size(egui::vec2(
                        ui.available_width(),
                        240.0_f32.min(ui.available_height()),
                    ));
                    ui.centered_and_justified(|ui| {
                        ui.colored_label(
                            theme::WEAK_TEXT,
                            "Drop an image here, paste one (Ctrl+V), or press Open…",
                        );
                    });
                });
        }
    }
    action
}
