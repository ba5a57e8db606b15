//! The headless command line: `stillmotion render …` (and, as it lands, `stillmotion
//! interpolate …`). It builds the same [`Recipe`] the GUI builds and drives the same engine.

mod interpolate_args;
mod render;
mod render_args;

pub use interpolate_args::InterpolateArgs;
pub use render::{event_json, run as run_render, run_interpolate};
pub use render_args::{DEFAULT_PRESET, RenderArgs, parse_cfg, parse_lora};

/// The exit codes, as `stillmotion --help` and `stillmotion render --help` list them.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0    the job finished
  1    the job failed while it ran (GPU out of memory, a file that cannot be written, ...)
  2    the request cannot be done as asked: bad flags or recipe, a missing or unusable input
       or model file, or a render the memory plan refuses (the message says what to change)
  130  cancelled (Ctrl+C); nothing was written
With --json the failed event carries a stable code: invalid_request, plan_refused,
out_of_memory, cancelled or failed.";

/// Exit codes that let scripts tell bad input from a failure.
pub mod exit_code {
    /// The render finished.
    pub const OK: u8 = 0;
    /// The job started but failed (out of memory, a file that cannot be written, …).
    pub const FAILED: u8 = 1;
    /// The request cannot be done as asked: bad flags, bad recipe, missing or invalid files,
    /// a memory-plan refusal.
    pub const BAD_INPUT: u8 = 2;
    /// The user cancelled (Ctrl+C).
    pub const CANCELLED: u8 = 130;
}
