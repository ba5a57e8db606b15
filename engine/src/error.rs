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

    /// The image cannot be fitted to the requested size; `problem` says what to change.
    #[error("{problem}")]
    BadFit { problem: String },

    /// A video could not be written; `problem` says what failed and what to do.
    #[error("{problem}: {path}")]
    VideoWrite { problem: String, path: PathBuf },

    /// A video could not be read; `problem` says why.
    #[error("{problem}: {path}")]
    VideoRead { problem: String, path: PathBuf },

    /// A recipe embedded in a video or its sidecar is missing or unreadable.
    #[error("{problem}: {path}")]
    BadEmbeddedRecipe { problem: String, path: PathBuf },

    /// Sampler settings or state are unusable; `problem` says what to change.
    #[error("sampler: {problem}")]
    Sampler { problem: String },

    /// A RIFE weights file is missing, unreadable or not a supported RIFE network.
    #[error("{problem}: {path}")]
    BadRifeWeights { problem: String, path: PathBuf },

    /// Frames handed to frame interpolation are unusable; `problem` says why.
    #[error("frame interpolation: {problem}")]
    BadInterpolationInput { problem: String },

    /// A text-encoder checkpoint is unusable (unknown layout, missing tensor, unsupported
    /// quantisation); `problem` says what to use instead.
    #[error("{problem}: {path}")]
    BadTextEncoder { problem: String, path: PathBuf },

    /// A tokenizer file (tokenizer.json, spiece.model, or the tensor embedding one) is unusable.
    #[error("{problem}: {path}")]
    BadTokenizer { problem: String, path: PathBuf },

    /// A model's weight file does not fit the model; `problem` says which and what to pick.
    #[error("{problem}: {path}")]
    BadWeights { problem: String, path: PathBuf },

    /// A video or latent tensor has a shape a model cannot take; `problem` says what fits.
    #[error("{problem}")]
    BadVideoShape { problem: String },

    /// A model file is unreadable as what it claims to be (truncated, wrong format, missing
    /// shard); `problem` says what is wrong and what to do.
    #[error("{problem}: {path}")]
    BadModelFile { problem: String, path: PathBuf },
    /// The render does not fit the device's memory budget under any placement; `problem`
    /// says what it needs and what to change.
    #[error("{problem}")]
    MemoryPlanRefused { problem: String },

    /// A render's save point (`<output>.latents.safetensors`) cannot be used to resume;
    /// `problem` says why and what to do.
    #[error("{problem}: {path}")]
    ResumeState { problem: String, path: PathBuf },

    /// The GPU ran out of memory during a job; `problem` says what to change.
    #[error("{problem}")]
    OutOfMemory { problem: String },

    /// ComfyUI's `extra_model_paths.yaml` cannot be read as ComfyUI reads it; `problem` says
    /// where.
    #[error("{problem}; fix it (ComfyUI would not start with it either) or move it away: {path}")]
    ExtraModelPaths { problem: String, path: PathBuf },
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
