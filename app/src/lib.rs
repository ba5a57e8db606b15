//! Stillmotion's desktop app (eframe/egui) and command-line front end.
//!
//! The app never computes: it sends work to the engine thread and draws what comes back.
//! `gui::StillmotionApp::logic` drains events and runs queued actions; `ui` only draws, and
//! panels return [`gui::UiAction`] values instead of acting themselves (see `ARCHITECTURE.md`).

pub mod cli;
pub mod gui;
pub mod ui;
