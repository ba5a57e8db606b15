//! The job queue panel and the state behind it, kept up to date from engine events.
//!
//! Jobs wait in the app, not in the engine: the engine gets the next one only when the one
//! before it has ended, so the user can reorder and remove waiting jobs freely.

use std::fmt::Write as _;
use std::path::PathBuf;

use stillmotion_engine::failure::FailureKind;
use stillmotion_engine::memory_plan::MemoryPlan;
use stillmotion_engine::runtime::{Event, JobId, JobKind, Progress, Stage};

use super::UiAction;
use super::memory_plan;
use crate::ui::theme;

/// Where a job stands.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    /// Waiting in the app's queue; `position` jobs wait before it.
    Waiting {
        position: usize,
    },
    /// Sent to the engine, not yet acknowledged.
    Submitted,
    Queued {
        position: usize,
    },
    Running,
    Finished {
        path: PathBuf,
        elapsed_secs: f64,
    },
    Cancelled,
    Failed {
        /// The engine's stable failure code: it decides the wording and the advice.
        kind: FailureKind,
        message: String,
    },
}

/// One job as the UI shows it.
#[derive(Clone, Debug)]
pub struct JobEntry {
    pub id: JobId,
    pub title: String,
    pub state: JobState,
    pub progress: Option<Progress>,
    pub secs_per_unit: Option<f64>,
    pub eta_secs: Option<f64>,
    pub warnings: Vec<String>,
    /// Where the job's components live and its predicted peak (renders, once planned).
    pub memory_plan: Option<Box<MemoryPlan>>,
    /// Why the memory plan refused the job, and what to change.
    pub memory_refusal: Option<String>,
}

impl JobEntry {
    #[must_use]
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            JobState::Waiting { .. }
                | JobState::Submitted
                | JobState::Queued { .. }
                | JobState::Running
        )
    }

    /// Whether the engine has this job (it is not waiting in the app, and has not ended).
    #[must_use]
    pub fn is_at_engine(&self) -> bool {
        matches!(
            self.state,
            JobState::Submitted | JobState::Queued { .. } | JobState::Running
        )
    }
}

/// Every job of this session, newest last, and the jobs waiting for the engine, in order.
#[derive(Debug, Default)]
pub struct JobList {
    entries: Vec<JobEntry>,
    waiting: Vec<(JobId, JobKind)>,
    next_id: JobId,
}

impl JobList {
    /// Queues a new job at the end of the waiting list and returns its id.
    pub fn add(&mut self, title: String, kind: JobKind) -> JobId {
        self.next_id += 1;
        self.entries.push(JobEntry {
            id: self.next_id,
            title,
            state: JobState::Waiting { position: 0 },
            progress: None,
            secs_per_unit: None,
            eta_secs: None,
            warnings: Vec::new(),
            memory_plan: None,
            memory_refusal: None,
        });
        self.waiting.push((self.next_id, kind));
        self.renumber();
        self.next_id
    }

    /// The next waiting job, when the engine has none: it is then marked submitted and the
    /// caller sends it.
    pub fn next_for_engine(&mut self) -> Option<(JobId, JobKind)> {
        if self.waiting.is_empty() || self.entries.iter().any(JobEntry::is_at_engine) {
            return None;
        }
        let (id, kind) = self.waiting.remove(0);
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == id) {
            entry.state = JobState::Submitted;
        }
        self.renumber();
        Some((id, kind))
    }

    /// The waiting jobs' ids, first to run first.
    #[must_use]
    pub fn waiting(&self) -> Vec<JobId> {
        self.waiting.iter().map(|(id, _)| *id).collect()
    }

    /// Moves a waiting job one place earlier (`earlier`) or later; others do nothing.
    pub fn move_waiting(&mut self, id: JobId, earlier: bool) {
        let Some(index) = self.waiting.iter().position(|(job, _)| *job == id) else {
            return;
        };
        let other = if earlier {
            index.checked_sub(1)
        } else {
            Some(index + 1).filter(|&next| next < self.waiting.len())
        };
        if let Some(other) = other {
            self.waiting.swap(index, other);
            self.renumber();
        }
    }

    /// Cancels a waiting job (it stays listed as cancelled). Returns whether it was waiting;
    /// a job at the engine must be cancelled there.
    pub fn cancel_waiting(&mut self, id: JobId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|(job, _)| *job != id);
        if self.waiting.len() == before {
            return false;
        }
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == id) {
            entry.state = JobState::Cancelled;
        }
        self.renumber();
        true
    }

    /// Forgets a waiting or ended job (a job at the engine stays).
    pub fn remove(&mut self, id: JobId) {
        self.waiting.retain(|(job, _)| *job != id);
        self.entries
            .retain(|entry| entry.id != id || entry.is_at_engine());
        self.renumber();
    }

    fn renumber(&mut self) {
        let busy = usize::from(self.entries.iter().any(JobEntry::is_at_engine));
        for (index, (id, _)) in self.waiting.iter().enumerate() {
            if let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == *id) {
                entry.state = JobState::Waiting {
                    position: busy + index,
                };
            }
        }
    }

    #[must_use]
    pub fn entries(&self) -> &[JobEntry] {
        &self.entries
    }

    #[must_use]
    pub fn get(&self, id: JobId) -> Option<&JobEntry> {
        self.entries.iter().find(|entry| entry.id == id)
    }

    /// Updates the list from one engine event.
    pub fn apply(&mut self, event: &Event) {
        let id = match event {
            Event::Queued { job_id, .. }
            | Event::Started { job_id }
            | Event::Progress { job_id, .. }
            | Event::Warning { job_id, .. }
            | Event::Finished { job_id, .. }
            | Event::Cancelled { job_id }
            | Event::Failed { job_id, .. }
            | Event::MemoryPlan { job_id, .. }
            | Event::MemoryPlanRefused { job_id, .. } => *job_id,
            _ => return,
        };
        let Some(entry) = self.entries.iter_mut().find(|entry| entry.id == id) else {
            return;
        };
        match event {
            Event::Queued { position, .. } => {
                entry.state = JobState::Queued {
                    position: *position,
                }
            }
            Event::Started { .. } => entry.state = JobState::Running,
            Event::Progress {
                progress,
                secs_per_unit,
                eta_secs,
                ..
            } => {
                entry.progress = Some(*progress);
                entry.secs_per_unit = *secs_per_unit;
                entry.eta_secs = *eta_secs;
            }
            Event::Warning { message, .. } => entry.warnings.push(message.clone()),
            Event::MemoryPlan { plan, .. } => entry.memory_plan = Some(plan.clone()),
            Event::MemoryPlanRefused { message, .. } => {
                entry.memory_refusal = Some(message.clone());
            }
            Event::Finished {
                output,
                elapsed_secs,
                ..
            } => {
                entry.state = JobState::Finished {
                    path: output.path.clone(),
                    elapsed_secs: *elapsed_secs,
                };
            }
            Event::Cancelled { .. } => entry.state = JobState::Cancelled,
            Event::Failed { kind, message, .. } => {
                entry.state = JobState::Failed {
                    kind: *kind,
                    message: message.clone(),
                };
            }
            _ => {}
        }
        self.renumber();
    }
}

/// Draws the queue: the job at the engine, then the waiting jobs in order, then the ended
/// ones, newest first. Returns the user's action (cancel, move or remove a job).
#[must_use]
pub fn show(ui: &mut egui::Ui, jobs: &JobList) -> Option<UiAction> {
    let mut action = None;
    ui.heading("Queue");
    if jobs.entries().is_empty() {
        ui.colored_label(
            theme::WEAK_TEXT,
            "No renders yet. Press Render or Ctrl+Enter.",
        );
        return None;
    }
    let waiting = jobs.waiting();
    let at_engine = jobs.entries().iter().filter(|entry| entry.is_at_engine());
    let queued = waiting.iter().filter_map(|id| jobs.get(*id));
    let ended = jobs
        .entries()
        .iter()
        .rev()
        .filter(|entry| !entry.is_active());
    for entry in at_engine.chain(queued).chain(ended) {
        ui.group(|ui| {
            if let Some(chosen) = row(ui, entry, &waiting) {
                action = Some(chosen);
            }
        });
    }
    action
}

fn row(ui: &mut egui::Ui, entry: &JobEntry, waiting: &[JobId]) -> Option<UiAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.strong(format!("#{}", entry.id));
        ui.label(&entry.title);
    });
    ui.horizontal(|ui| {
        let place = waiting.iter().position(|id| *id == entry.id);
        if let Some(place) = place {
            if ui
                .add_enabled(place > 0, egui::Button::new("Move up"))
                .on_hover_text("Run this job earlier")
                .clicked()
            {
                action = Some(UiAction::MoveJobUp(entry.id));
            }
            if ui
                .add_enabled(place + 1 < waiting.len(), egui::Button::new("Move down"))
                .on_hover_text("Run this job later")
                .clicked()
            {
                action = Some(UiAction::MoveJobDown(entry.id));
            }
        }
        if entry.is_active()
            && ui
                .button("Cancel")
                .on_hover_text("Stop this job; nothing is written")
                .clicked()
        {
            action = Some(UiAction::CancelJob(entry.id));
        }
        if !entry.is_at_engine()
            && ui
                .button("Remove from queue")
                .on_hover_text("Take this job off the list (a finished clip stays on disk)")
                .clicked()
        {
            action = Some(UiAction::RemoveJob(entry.id));
        }
    });
    match &entry.state {
        JobState::Waiting { position } => {
            ui.label(format!("waiting ({position} ahead)"));
        }
        JobState::Submitted => {
            ui.label("submitted");
        }
        JobState::Queued { position } => {
            ui.label(format!("queued ({position} ahead)"));
        }
        JobState::Running => match entry.progress {
            Some(progress) => {
                let fraction = if progress.total == 0 {
                    0.0
                } else {
                    progress.done as f32 / progress.total as f32
                };
                ui.add(egui::ProgressBar::new(fraction).text(progress_text(entry, progress)));
            }
            None => {
                ui.label("starting");
            }
        },
        JobState::Finished { path, elapsed_secs } => {
            ui.label(format!("done in {elapsed_secs:.1} s: {}", path.display()));
        }
        JobState::Cancelled => {
            ui.colored_label(theme::WEAK_TEXT, "cancelled");
        }
        JobState::Failed { kind, message } => show_failure(ui, entry, *kind, message),
    }
    if let Some(plan) = &entry.memory_plan {
        memory_plan::show(ui, entry.id, plan, entry.is_active());
    }
    for warning in &entry.warnings {
        ui.colored_label(theme::WEAK_TEXT, warning);
    }
    action
}

/// What a failure of `kind` is called in the queue, and what the user can do about it (the
/// engine's message above it names the field, file or size).
#[must_use]
pub fn failure_wording(kind: FailureKind) -> (&'static str, Option<&'static str>) {
    match kind {
        FailureKind::InvalidRequest => (
            "Cannot start: a setting or file needs fixing",
            Some(
                "Change the setting or file the message names (the Models view lists what \
                 each preset needs), then render again.",
            ),
        ),
        // The plan's own message says what to change, with its numbers.
        FailureKind::PlanRefused => (memory_plan::REFUSAL_HEADLINE, None),
        FailureKind::OutOfMemory => (
            "Out of GPU memory",
            // The engine's message lists the changes that free memory.
            Some("Nothing was written: make one of the changes above, then render again."),
        ),
        FailureKind::Cancelled => ("Cancelled", None),
        FailureKind::Failed => ("Failed", None),
    }
}

/// Draws a failed job: a refusal with the memory plan's wording (its message says what to
/// change), any other failure with its kind's headline, the engine's message and the advice.
fn show_failure(ui: &mut egui::Ui, entry: &JobEntry, kind: FailureKind, message: &str) {
    if kind == FailureKind::PlanRefused {
        memory_plan::show_refusal(ui, entry.memory_refusal.as_deref().unwrap_or(message));
        return;
    }
    let (headline, advice) = failure_wording(kind);
    ui.colored_label(theme::ERROR_TEXT, headline);
    ui.colored_label(theme::ERROR_TEXT, message);
    if let Some(advice) = advice {
        ui.label(advice);
    }
}

/// "high-noise expert · step 2/4 · 3.1 s/step · ETA 6 s".
fn progress_text(entry: &JobEntry, progress: Progress) -> String {
    let unit = match progress.stage {
        Stage::DenoisingHighNoise | Stage::DenoisingLowNoise => "step",
        Stage::Decoding => "chunk",
        Stage::Interpolating => "pair",
        _ => "part",
    };
    let mut text = format!(
        "{} · {unit} {}/{}",
        progress.stage.label(),
        progress.done,
        progress.total
    );
    if let Some(rate) = entry.secs_per_unit {
        let _ = write!(text, " · {rate:.1} s/{unit}");
    }
    if let Some(eta) = entry.eta_secs {
        let _ = write!(text, " · ETA {eta:.0} s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use stillmotion_engine::runtime::JobOutput;

    fn interpolation() -> JobKind {
        // Through serde, so fields the engine adds with defaults need no change here.
        let request = serde_json::json!({
            "input": "in.mp4",
            "frames_fps": 16,
            "multiplier": 2,
            "loop_clip": false,
            "output": "out.mp4",
        });
        JobKind::Interpolate(Box::new(serde_json::from_value(request).unwrap()))
    }

    #[test]
    fn waiting_jobs_move_and_go_without_reaching_the_engine() {
        let mut jobs = JobList::default();
        let first = jobs.add("a".to_owned(), interpolation());
        let b = jobs.add("b".to_owned(), interpolation());
        let c = jobs.add("c".to_owned(), interpolation());
        assert_eq!(jobs.next_for_engine().unwrap().0, first);
        jobs.move_waiting(c, true);
        assert_eq!(jobs.waiting(), [c, b]);
        assert_eq!(
            jobs.get(c).unwrap().state,
            JobState::Waiting { position: 1 }
        );
        jobs.move_waiting(c, true);
        jobs.move_waiting(b, false);
        assert_eq!(jobs.waiting(), [c, b], "no move past either end");
        jobs.remove(first);
        assert!(jobs.get(first).is_some(), "the job at the engine stays");
        assert!(jobs.cancel_waiting(b));
        assert_eq!(jobs.get(b).unwrap().state, JobState::Cancelled);
        jobs.remove(b);
        assert!(jobs.get(b).is_none());
        assert!(
            !jobs.cancel_waiting(first),
            "cancelled at the engine instead"
        );
        jobs.apply(&Event::Cancelled { job_id: first });
        assert_eq!(
            jobs.get(c).unwrap().state,
            JobState::Waiting { position: 0 }
        );
        assert_eq!(jobs.next_for_engine().unwrap().0, c);
        assert!(jobs.waiting().is_empty());
    }

    #[test]
    fn each_failure_kind_has_its_own_headline_and_advice() {
        let kinds = [
            FailureKind::InvalidRequest,
            FailureKind::PlanRefused,
            FailureKind::OutOfMemory,
            FailureKind::Failed,
        ];
        let headlines: std::collections::HashSet<_> =
            kinds.iter().map(|kind| failure_wording(*kind).0).collect();
        assert_eq!(headlines.len(), kinds.len());
        assert!(
            failure_wording(FailureKind::OutOfMemory)
                .1
                .unwrap()
                .contains("Nothing was written")
        );
    }

    #[test]
    fn events_move_a_job_through_its_states() {
        let mut jobs = JobList::default();
        let id = jobs.add("waves".to_owned(), interpolation());
        assert_eq!(jobs.next_for_engine().unwrap().0, id);
        let other = jobs.add("clouds".to_owned(), interpolation());
        assert_eq!(
            jobs.get(other).unwrap().state,
            JobState::Waiting { position: 1 }
        );
        assert!(jobs.next_for_engine().is_none(), "one job at the engine");
        jobs.apply(&Event::Queued {
            job_id: id,
            position: 0,
        });
        assert_eq!(
            jobs.get(id).unwrap().state,
            JobState::Queued { position: 0 }
        );
        jobs.apply(&Event::Started { job_id: id });
        jobs.apply(&Event::Progress {
            job_id: id,
            progress: Progress {
                stage: Stage::DenoisingLowNoise,
                done: 3,
                total: 4,
            },
            secs_per_unit: Some(2.0),
            eta_secs: Some(2.0),
        });
        let entry = jobs.get(id).unwrap();
        assert_eq!(entry.state, JobState::Running);
        assert_eq!(entry.progress.unwrap().done, 3);
        // The row shows the stage, step k/n, seconds per step and the time left.
        assert_eq!(
            progress_text(entry, entry.progress.unwrap()),
            format!(
                "{} · step 3/4 · 2.0 s/step · ETA 2 s",
                Stage::DenoisingLowNoise.label()
            )
        );
        jobs.apply(&Event::Finished {
            job_id: id,
            output: JobOutput {
                path: "out.mp4".into(),
            },
            elapsed_secs: 9.0,
        });
        assert!(!jobs.get(id).unwrap().is_active());
        assert!(jobs.get(other).unwrap().is_active());
        assert_eq!(jobs.next_for_engine().unwrap().0, other);
        jobs.apply(&Event::Failed {
            job_id: other,
            kind: FailureKind::OutOfMemory,
            message: "out of memory".to_owned(),
        });
        assert_eq!(
            jobs.get(other).unwrap().state,
            JobState::Failed {
                kind: FailureKind::OutOfMemory,
                message: "out of memory".to_owned()
            }
        );
    }
}
