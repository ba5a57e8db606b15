//! The image-to-video render pipeline: a [`Recipe`](crate::recipe::Recipe) in, a video file out.
//!
//! First, before any model is loaded, the job's [memory plan](crate::memory_plan) (reported as
//! an event; a render that cannot fit is refused there). Then the stages, as the official
//! `WanI2V.generate` (`wan/image2video.py`) runs them: encode the prompt
//! (and the negative prompt when a guidance scale needs it) with umT5; load and fit the image
//! (official: area ≈ width × height, sides multiples of 16, bicubic); encode it with the VAE into
//! the I2V condition `y` (mask ++ latent mean); draw the noise (seeded, or injected from a
//! file); run the two-expert flow-matching loop (high-noise expert while `t ≥ boundary × 1000`);
//! decode one latent chunk at a time (or in the plan's tiles) straight into the
//! [`VideoWriter`](crate::video::VideoWriter), through RIFE when the recipe interpolates (by a
//! multiplier, or to a target fps). After the high-noise phase and before decoding, a
//! [save point](resume) is written beside the output, for `--resume`. The output's stored
//! recipe carries the [`fingerprints`] of the model files.
//!
//! [`PipelineRunner`] is the engine thread's [`JobRunner`](crate::runtime::JobRunner): it keeps
//! the models of the last job loaded ([`ModelCache`], keyed by file path), so a second job with
//! another seed or prompt starts at once.
//!
//! Model configs: a `config.json` in a diffusers folder, a sidecar `<weights stem>.json` beside a
//! single file (the DiT keys of [`crate::wan::Config`], the VAE keys of
//! [`crate::wan_vae::Config`], the umT5 keys of [`crate::umt5::Config`]), otherwise the released
//! model's config (the DiT's is read from the tensor shapes).

pub mod better_preview;
mod decode_stage;
mod denoise_stage;
mod denoiser;
pub mod fingerprints;
mod interpolate_job;
mod model_dir;
mod models;
mod named_lora;
mod output;
mod plan;
pub mod resume;
mod runner;

pub use denoiser::WanDenoiser;
pub use model_dir::resolve_model_files;
pub use models::{ModelCache, sidecar_config};
pub use named_lora::{named_lora_files, resolve_preset_lora};
pub use output::{format_for_output, format_for_recipe};
pub use plan::{JobPlan, plan_for};
pub use runner::PipelineRunner;
