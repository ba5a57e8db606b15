//! What a running job receives: its cancel token and its progress reporting.

use std::time::Instant;

use crossbeam_channel::Receiver;

use super::cancel::CancelToken;
use super::messages::{Command, Event, JobId};
use crate::EngineError;
use crate::sampling::LatentPreview;

/// The stages of a job, in the order a render goes through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    LoadingWeights,
    EncodingText,
    EncodingImage,
    DenoisingHighNoise,
    DenoisingLowNoise,
    Decoding,
    Interpolating,
    EncodingVideo,
}

impl Stage {
    /// A short name for the UI.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::LoadingWeights => "loading models",
            Self::EncodingText => "encoding prompt",
            Self::EncodingImage => "encoding image",
            Self::DenoisingHighNoise => "high-noise expert",
            Self::DenoisingLowNoise => "low-noise expert",
            Self::Decoding => "decoding",
            Self::Interpolating => "interpolating",
            Self::EncodingVideo => "writing video",
        }
    }
}

/// `done` of `total` units of `stage` are complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u32,
    pub total: u32,
}

/// Handed to a job: checks for cancellation and reports progress and warnings.
pub struct JobContext<'a> {
    job_id: JobId,
    cancel: CancelToken,
    events: &'a dyn Fn(Event),
    /// Commands that arrived while the job runs; the runtime handles them between steps.
    pending: Option<&'a dyn Fn(&JobContext<'_>)>,
    /// Where live previews go, when the caller wants them; never blocks.
    previews: Option<&'a dyn Fn(Event)>,
    stage_started: std::cell::Cell<Option<(Stage, Instant, u32)>>,
}

impl<'a> JobContext<'a> {
    /// A context that reports events through `events`. `between_steps` runs at every check
    /// (the runtime uses it to read commands that arrive mid-job).
    pub fn new(
        job_id: JobId,
        cancel: CancelToken,
        events: &'a dyn Fn(Event),
        between_steps: Option<&'a dyn Fn(&JobContext<'_>)>,
    ) -> Self {
        Self {
            job_id,
            cancel,
            events,
            pending: between_steps,
            previews: None,
            stage_started: std::cell::Cell::new(None),
        }
    }

    /// The same context, sending live previews through `previews`, which must not block (the
    /// runtime drops a preview when its event channel is full).
    #[must_use]
    pub fn with_previews(mut self, previews: &'a dyn Fn(Event)) -> Self {
        self.previews = Some(previews);
        self
    }

    /// Whether anyone listens to live previews (building one costs a little).
    #[must_use]
    pub fn wants_previews(&self) -> bool {
        self.previews.is_some()
    }

    /// Sends the live preview `make` builds, when anyone listens (`make` runs only then). A
    /// preview never fails a job: one that cannot be built is logged and skipped.
    pub fn preview(&self, make: impl FnOnce() -> Result<LatentPreview, EngineError>) {
        let Some(previews) = self.previews else {
            return;
        };
        match make() {
            Ok(preview) => previews(Event::Preview {
                job_id: self.job_id,
                preview,
            }),
            Err(error) => tracing::warn!(job_id = self.job_id, "no live preview: {error}"),
        }
    }

    /// Tells a caller that asked for previews which preview it gets and why (also logged).
    pub fn preview_choice(&self, choice: crate::sampling::PreviewChoice) {
        if self.previews.is_none() {
            return;
        }
        tracing::info!(job_id = self.job_id, every = ?choice.every, "live preview: {}", choice.reason);
        // Not disposable (unlike the previews): it is rare and tells what the previews mean.
        (self.events)(Event::PreviewChoice {
            job_id: self.job_id,
            choice,
        });
    }

    #[must_use]
    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    #[must_use]
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// Call at every step boundary: `Err(Cancelled)` once the job was cancelled.
    pub fn check(&self) -> Result<(), EngineError> {
        if let Some(pending) = self.pending {
            pending(self);
        }
        self.cancel.check()
    }

    /// Reports that `done` of `total` units of `stage` are complete, with s/unit and ETA
    /// measured from the moment this stage was first reported.
    pub fn progress(&self, stage: Stage, done: u32, total: u32) {
        let now = Instant::now();
        let (started, first_done) = match self.stage_started.get() {
            Some((current, started, first_done)) if current == stage => (started, first_done),
            _ => {
                self.stage_started.set(Some((stage, now, done)));
                (now, done)
            }
        };
        let units = done.saturating_sub(first_done);
        let elapsed = now.duration_since(started).as_secs_f64();
        let secs_per_unit = (units > 0).then(|| elapsed / f64::from(units));
        let eta_secs = secs_per_unit.map(|s| s * f64::from(total.saturating_sub(done)));
        (self.events)(Event::Progress {
            job_id: self.job_id,
            progress: Progress { stage, done, total },
            secs_per_unit,
            eta_secs,
        });
    }

    /// Reports the job's memory plan (before its first GPU work).
    pub fn memory_plan(&self, plan: crate::memory_plan::MemoryPlan) {
        tracing::info!(job_id = self.job_id, "{}", plan.summary());
        (self.events)(Event::MemoryPlan {
            job_id: self.job_id,
            plan: Box::new(plan),
        });
    }

    /// Tells the user something that does not stop the job.
    pub fn warn(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(job_id = self.job_id, "{message}");
        (self.events)(Event::Warning {
            job_id: self.job_id,
            message,
        });
    }
}

/// Drains commands that arrived mid-job. Returns the commands the runtime must act on later
/// (new submissions), after applying cancels to the running job.
pub(crate) fn drain_commands(
    commands: &Receiver<Command>,
    running: JobId,
    cancel: &CancelToken,
) -> Vec<Command> {
    let mut later = Vec::new();
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Cancel(job_id) if job_id == running => cancel.cancel(),
            Command::Shutdown => {
                cancel.cancel();
                later.push(Command::Shutdown);
            }
            other => later.push(other),
        }
    }
    later
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn progress_reports_rate_and_eta_after_the_first_unit() {
        let events = RefCell::new(Vec::new());
        let sink = |event: Event| events.borrow_mut().push(event);
        let ctx = JobContext::new(7, CancelToken::new(), &sink, None);
        ctx.progress(Stage::DenoisingHighNoise, 0, 4);
        std::thread::sleep(std::time::Duration::from_millis(20));
        ctx.progress(Stage::DenoisingHighNoise, 1, 4);
        ctx.progress(Stage::Decoding, 0, 21);
        let events = events.into_inner();
        let Event::Progress {
            secs_per_unit: None,
            eta_secs: None,
            ..
        } = events[0]
        else {
            panic!("no rate before the first unit: {:?}", events[0]);
        };
        let Event::Progress {
            secs_per_unit: Some(rate),
            eta_secs: Some(eta),
            ..
        } = events[1]
        else {
            panic!("rate after one unit: {:?}", events[1]);
        };
        assert!(rate >= 0.015, "{rate}");
        assert!((eta - 3.0 * rate).abs() < 1e-9);
        let Event::Progress {
            progress,
            secs_per_unit: None,
            ..
        } = events[2]
        else {
            panic!("a new stage restarts the clock: {:?}", events[2]);
        };
        assert_eq!(progress.stage, Stage::Decoding);
    }

    #[test]
    fn cancel_for_the_running_job_trips_its_token_and_keeps_other_commands() {
        let (sender, receiver) = crossbeam_channel::bounded(8);
        let token = CancelToken::new();
        sender.send(Command::Cancel(99)).unwrap();
        sender.send(Command::Unload).unwrap();
        sender.send(Command::Cancel(3)).unwrap();
        let later = drain_commands(&receiver, 3, &token);
        assert!(token.is_cancelled());
        assert_eq!(later, [Command::Cancel(99), Command::Unload]);
    }
}
