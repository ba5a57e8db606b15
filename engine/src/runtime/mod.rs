//! The engine runtime: one named thread that owns the device and the loaded models, a job
//! queue, and the typed messages between it and its callers (GUI, CLI, tests).
//!
//! Callers hold an [`EngineHandle`]. They send [`Command`]s over a bounded channel and receive
//! [`Event`]s over another; the engine calls an injected `wake` closure after each event so a GUI
//! can repaint without the engine knowing about it. Jobs run one at a time in queue order.
//! Between steps a job calls [`JobContext::check`], which also reads pending commands, so a
//! cancel takes effect within one denoising step (or one VAE chunk, or one RIFE pair).

mod cancel;
mod context;
mod messages;
mod thread;

pub use cancel::CancelToken;
pub use context::{JobContext, Progress, Stage};
pub use messages::{Command, Event, JobId, JobKind, JobOutput};
pub use thread::{EngineHandle, JobRunner};
#[cfg(test)]
mod tests;
