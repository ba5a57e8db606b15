//! The app's colours and spacing. Every colour the app draws with is named here, so the look
//! can change in one place and stays consistent between panels.

use egui::Color32;

/// Text and icons that report a problem the user must act on.
pub const ERROR_TEXT: Color32 = Color32::from_rgb(0xE5, 0x53, 0x4B);
/// Limitations the user should know about (no GPU).
pub const WARNING_TEXT: Color32 = Color32::from_rgb(0xE0, 0xB0, 0x4C);
/// Confirmations (a preset was saved).
pub const NOTICE_TEXT: Color32 = Color32::from_rgb(0x7C, 0xC4, 0x7F);
/// Secondary information (sizes, hints).
pub const WEAK_TEXT: Color32 = Color32::from_rgb(0x9A, 0x9A, 0x9A);
/// Background of the empty drop zone.
pub const DROP_ZONE_FILL: Color32 = Color32::from_rgb(0x20, 0x22, 0x26);

/// The outline of the part of the source image the model sees.
pub const FRAME_OUTLINE: Color32 = Color32::from_rgb(0x5C, 0xB8, 0xE6);
/// Over the parts of the source image a crop leaves out.
pub const CROPPED_SHADE: Color32 = Color32::from_black_alpha(150);

/// Applies the app's visuals to a context.
pub fn apply(ctx: &egui::Context) {
    ctx.set_theme(egui::Theme::Dark);
    // Solid bars stay visible, so a panel taller than the window shows that it scrolls
    // (egui's floating bars are invisible until hovered).
    ctx.all_styles_mut(|style| style.spacing.scroll = egui::style::ScrollStyle::solid());
}
