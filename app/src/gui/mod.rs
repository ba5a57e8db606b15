//! The main window: state, per-frame logic, and drawing.

mod app;
mod source_image;

pub use app::{StartOptions, StillmotionApp, UiAction, run};
pub use source_image::SourceImage;
