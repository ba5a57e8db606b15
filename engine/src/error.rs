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

    /// The requested device cannot be used.
    #[error("{0}")]
    DeviceUnavailable(String),

    /// A kernel rejected its input or failed.
    #[error(transparent)]
    Kernel(#[from] stillmotion_kernels::KernelError),

    /// A tensor operation failed (shape mismatch, device error).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A model's weight file does not fit the model; `problem` says which and what to pick.
    #[error("{problem}: {path}")]
    BadWeights { problem: String, path: PathBuf },

    /// A video or latent tensor has a shape a model cannot take; `problem` says what fits.
    #[error("{problem}")]
    BadVideoShape { problem: String },
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
