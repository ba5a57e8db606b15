//! The main window: state, per-frame logic, and drawing.

mod app;
mod clip_frames;
mod gpu_gauge;
mod history;
mod interpolate;
mod jobs;
mod live_preview;
mod loras;
mod memory_plan;
mod models_view;
mod player;
mod settings;
mod source_image;
mod token_count;
mod user_presets;

pub use app::{StartOptions, StillmotionApp, UiAction, run};
pub use gpu_gauge::GaugeReading;
pub use history::{History, HistoryEntry};
pub use interpolate::InterpolateForm;
pub use jobs::{JobEntry, JobList, JobState};
pub use loras::LoraEntry;
pub use models_view::ModelsView;
pub use player::ClipPlayer;
pub use settings::{ModelSlot, SamplerChoice, Settings, SizeChoice};
pub use source_image::{Framing, SourceImage};
pub use token_count::TokenCount;
