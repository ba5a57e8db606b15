//! The source image panel: shows the loaded image and its size, offers "Open…" and accepts
//! dropped files. It only draws and returns actions; loading happens in `App::logic`.

use std::path::PathBuf;

use stillmotion_engine::image_input::{FitPlan, RgbImage};
use stillmotion_engine::recipe::ImageFit;

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

/// How the image meets the chosen size: the user's fit choice, and what the engine will do
/// (or why it cannot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framing {
    pub fit: ImageFit,
    pub plan: Result<FitPlan, String>,
}

/// What the fitted clip is, in words (the rectangle drawn over the image shows the same).
#[must_use]
pub fn describe(plan: &FitPlan) -> String {
    let used = plan.used;
    let whole = used.width == plan.source_width && used.height == plan.source_height;
    if whole {
        format!(
            "{}×{} clip from the whole image, aspect kept",
            plan.width, plan.height
        )
    } else {
        format!(
            "{}×{} clip from the framed {}×{} part; the rest is cropped",
            plan.width, plan.height, used.width, used.height
        )
    }
}

/// The fit choice and what it does to the image.
fn framing_row(ui: &mut egui::Ui, framing: &mut Framing) {
    ui.horizontal_wrapped(|ui| {
        for (fit, name, tip) in [
            (
                ImageFit::Official,
                "Keep aspect",
                "The official Wan way: the whole image, its aspect kept, at about the chosen \
                 size's area (sides multiples of 16)",
            ),
            (
                ImageFit::CenterCrop,
                "Crop to fill",
                "The ComfyUI way: exactly the chosen size, the image's centre cropped to fill it",
            ),
        ] {
            ui.selectable_value(&mut framing.fit, fit, name)
                .on_hover_text(tip);
        }
        match &framing.plan {
            Ok(plan) => {
                ui.label(describe(plan))
                    .on_hover_text("The outlined rectangle on the image is what the model sees");
            }
            Err(problem) => {
                ui.colored_label(theme::ERROR_TEXT, problem);
            }
        }
    });
}

/// Draws the panel; `framing` is `None` until an image and a preset are chosen. Returns the
/// action the user asked for, if any.
#[must_use]
pub fn show(
    ui: &mut egui::Ui,
    source: Option<&SourceImage>,
    framing: &mut Option<Framing>,
) -> Option<UiAction> {
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
            if let Some(framing) = framing.as_mut() {
                framing_row(ui, framing);
            }
            let available = ui.available_size();
            let scale = (available.x / source.width as f32)
                .min(available.y / source.height as f32)
                .min(1.0);
            let size = egui::vec2(source.width as f32 * scale, source.height as f32 * scale);
            let image = ui
                .add(egui::Image::new(&source.texture).fit_to_exact_size(size))
                .on_hover_text(source.path.display().to_string());
            if let Some(Framing { plan: Ok(plan), .. }) = framing {
                outline(ui, image.rect, plan);
            }
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

/// Dims what the fit crops away and outlines what the model sees, over the drawn image.
fn outline(ui: &egui::Ui, image: egui::Rect, plan: &FitPlan) {
    let scale_x = image.width() / plan.source_width as f32;
    let scale_y = image.height() / plan.source_height as f32;
    let used = plan.used;
    let kept = egui::Rect::from_min_size(
        image.min + egui::vec2(used.x as f32 * scale_x, used.y as f32 * scale_y),
        egui::vec2(used.width as f32 * scale_x, used.height as f32 * scale_y),
    );
    let painter = ui.painter_at(image);
    // The cropped bands: above, below, left and right of the kept part.
    for band in [
        egui::Rect::from_x_y_ranges(image.x_range(), image.top()..=kept.top()),
        egui::Rect::from_x_y_ranges(image.x_range(), kept.bottom()..=image.bottom()),
        egui::Rect::from_x_y_ranges(image.left()..=kept.left(), kept.y_range()),
        egui::Rect::from_x_y_ranges(kept.right()..=image.right(), kept.y_range()),
    ] {
        if band.width() > 0.0 && band.height() > 0.0 {
            painter.rect_filled(band, 0.0, theme::CROPPED_SHADE);
        }
    }
    painter.rect_stroke(
        kept.shrink(1.0),
        0.0,
        egui::Stroke::new(2.0, theme::FRAME_OUTLINE),
        egui::StrokeKind::Inside,
    );
}
