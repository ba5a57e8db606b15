//! The headless command line: `stillmotion render …` (and, as it lands, `stillmotion
//! interpolate …`). It builds the same [`Recipe`] the GUI builds and drives the same engine.

mod interpolate_args;
mod render;
mod render_args;

pub use interpolate_args::InterpolateArgs;
pub use render::{event_json, run as run_render, run_interpolate};
pub use render_args::{DEFAULT_PRESET, RenderArgs, parse_cfg, parse_lora};

/// Exit codes that let scripts tell bad input from a failure.
pub mod exit_code {
    /// The render finished.
    pub const OK: u8 = 0;
    /// The render started but failed (out of memory, a file that cannot be written, …).
    pub const FAILED: u8 = 1;
    /// The input was refused before any work: bad flags, bad recipe, missing or invalid files.
    pub const BAD_INPUT: u8 = 2;
    /// The user cancelled (Ctrl+C).
    pub const CANCELLED: u8 = 130;
}
