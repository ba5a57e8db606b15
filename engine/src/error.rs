//! The engine's typed error. Paths go last in messages; display with `{:#}` at the edges.

use std::path::PathBuf;

/// Everything the engine can fail with. Each variant carries what a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The job was cancelled by the user; nothing was written.
    #[error("cancelled")]
    Cancelled,

    /// A file could not be read or written.
    #[error("{action}: {source}: {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input image is unusable; `problem` says why and what to do.
    #[error("{problem}: {path}")]
    BadImage { problem: String, path: PathBuf },

    /// A preset or recipe file is invalid.
    #[error("{problem}: {path}")]
    BadPreset { problem: String, path: PathBuf },

    /// A render recipe is invalid; `field` is the recipe field (and CLI flag) at fault.
    #[error("{field} {problem}")]
    BadRecipe {
        field: &'static str,
        problem: String,
    },

    /// The engine thread has stopped (shut down or crashed); restart the app.
    #[error("the engine has stopped")]
    EngineStopped,

    /// The requested device cannot be used.
    #[error("{0}")]
    DeviceUnavailable(String),

    /// A kernel rejected its input or failed.
    #[error(transparent)]
    Kernel(#[from] stillmotion_kernels::KernelError),

    /// A tensor operation failed (shape mismatch, device error).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A model checkpoint or its config is not one we can run; `problem` says why.
    #[error("unusable model checkpoint: {problem}")]
    BadCheckpoint { problem: String },

    /// Tensors given to a model do not fit it (shape, channels, lengths); `problem` says how.
    #[error("model input does not fit: {problem}")]
    BadModelInput { problem: String },

    /// A model file is unreadable as what it claims to be (truncated, wrong format, missing
    /// shard); `problem` says what is wrong and what to do.
    #[error("{problem}: {path}")]
    BadModelFile { problem: String, path: PathBuf },
}

impl EngineError {
    /// Wraps an I/O error with the action that failed and the file it concerned.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
