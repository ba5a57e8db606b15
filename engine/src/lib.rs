//! Stillmotion's engine: everything between a recipe and a finished video file.
//!
//! The engine is a library with no GUI dependency (CI checks its dependency tree). It owns the
//! models (Wan2.2 DiT, Wan VAE, umT5 text encoder, RIFE), the samplers, image and video I/O, and
//! the job runtime that the GUI, the CLI and the tests all drive through the same recipe type.
//! See `ARCHITECTURE.md` at the repository root for where each stage lives.
//!
//! Errors are typed ([`EngineError`]); the engine never prints, it emits `tracing` events.

pub mod device;
pub mod error;
pub mod failure;
pub mod gguf;
pub mod gpu_memory;
pub mod image_input;
pub mod memory_plan;
pub mod model_files;
pub mod paths;
pub mod pipeline;
pub mod preset;
pub mod recipe;
pub mod rife;
pub mod runtime;
pub mod sampling;
pub mod umt5;
pub mod video;
pub mod wan;
pub mod wan_vae;
pub mod weights;

pub use error::EngineError;

/// The version of the engine, recorded in every output's recipe.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
