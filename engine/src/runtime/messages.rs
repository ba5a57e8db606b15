//! Commands to the engine thread and the events it sends back. Both are plain data.

use std::path::PathBuf;

use super::context::Progress;

/// Identifies a job for its whole life; chosen by the caller (unique per handle).
pub type JobId = u64;

/// What a job does.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// Render a recipe from image and prompt to a video file.
    Render(Box<crate::recipe::Recipe>),
    /// Interpolate an existing clip with RIFE.
    Interpolate(Box<crate::recipe::InterpolateRequest>),
}

/// What a finished job produced.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOutput {
    /// The finished file (or folder of frames).
    pub path: PathBuf,
}

/// Sent by callers to the engine thread.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Queue a job; it starts when the jobs before it are done.
    Submit { job_id: JobId, kind: JobKind },
    /// Cancel a queued or running job. Cancelling an unknown or finished job does nothing.
    Cancel(JobId),
    /// Free the loaded models (they reload on the next job).
    Unload,
    /// Cancel everything and end the engine thread.
    Shutdown,
}

/// Sent by the engine thread to its caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The job is in the queue at this position (0 = next).
    Queued {
        job_id: JobId,
        position: usize,
    },
    Started {
        job_id: JobId,
    },
    /// Progress within the job's current stage, with timing derived from it.
    Progress {
        job_id: JobId,
        progress: Progress,
        /// Seconds per unit of the current stage (e.g. per denoising step), once measurable.
        secs_per_unit: Option<f64>,
        /// Estimated seconds left in the current stage.
        eta_secs: Option<f64>,
    },
    /// Something the user should know that does not stop the job (e.g. a prompt was truncated).
    Warning {
        job_id: JobId,
        message: String,
    },
    Finished {
        job_id: JobId,
        output: JobOutput,
        elapsed_secs: f64,
    },
    /// The job was cancelled; nothing was written.
    Cancelled {
        job_id: JobId,
    },
    /// The job failed; `kind` is its stable failure code (the CLI's exit code and JSON `code`
    /// come from it), `message` the full error chain, for the user.
    Failed {
        job_id: JobId,
        kind: crate::failure::FailureKind,
        message: String,
    },
    /// Loaded models were freed.
    Unloaded,
    /// Where the job's components will live and the predicted peak, sent before its first GPU
    /// work.
    MemoryPlan {
        job_id: JobId,
        plan: Box<crate::memory_plan::MemoryPlan>,
    },
    /// The live preview of the denoising step just taken (only to callers that asked for
    /// previews). Disposable: the engine drops one rather than wait when the event channel is
    /// full, so a caller may miss steps.
    Preview {
        job_id: JobId,
        preview: crate::sampling::LatentPreview,
    },
    /// The job's memory plan found no placement that fits the device's budget; `message` says
    /// what it needs and what to change. A `Failed` with the same message follows.
    MemoryPlanRefused {
        job_id: JobId,
        message: String,
    },
    /// Which live preview the job sends and why (only to callers that asked for previews):
    /// at the start of denoising, and whenever timing the VAE preview changes the choice.
    PreviewChoice {
        job_id: JobId,
        choice: crate::sampling::PreviewChoice,
    },
}
