//! The job queue panel and the state behind it, kept up to date from engine events.

use std::fmt::Write as _;
use std::path::PathBuf;

use stillmotion_engine::runtime::{Event, JobId, Progress};

use super::UiAction;
use crate::ui::theme;

/// Where a job stands.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
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
}

impl JobEntry {
    #[must_use]
    pub fn is_active(&self) -> bool {
        matches!(
            self.state,
            JobState::Submitted | JobState::Queued { .. } | JobState::Running
        )
    }
}

/// Every job of this session, newest last.
#[derive(Debug, Default)]
pub struct JobList {
    entries: Vec<JobEntry>,
    next_id: JobId,
}

impl JobList {
    /// Registers a new job and returns its id.
    pub fn add(&mut self, title: String) -> JobId {
        self.next_id += 1;
        self.entries.push(JobEntry {
            id: self.next_id,
            title,
            state: JobState::Submitted,
            progress: None,
            secs_per_unit: None,
            eta_secs: None,
            warnings: Vec::new(),
        });
        self.next_id
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
            | Event::Failed { job_id, .. } => *job_id,
            Event::Unloaded | Event::MemoryPlan { .. } => return,
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
            Event::Failed { message, .. } => {
                entry.state = JobState::Failed {
                    message: message.clone(),
                };
            }
            Event::Unloaded | Event::MemoryPlan { .. } => {}
        }
    }
}

/// Draws the queue; returns the user's action (cancel a job).
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
    for entry in jobs.entries().iter().rev() {
        ui.group(|ui| {
            ui.horizontal(|ui| {
                ui.strong(format!("#{}", entry.id));
                ui.label(&entry.title);
                if entry.is_active()
                    && ui
                        .button("Cancel")
                        .on_hover_text("Stop this render; nothing is written")
                        .clicked()
                {
                    action = Some(UiAction::CancelJob(entry.id));
                }
            });
            match &entry.state {
                JobState::Submitted => {
                    ui.label("submitted");
                }
                JobState::Queued { position } => {
                    ui.label(format!("queued ({position} ahead)"));
                }
                JobState::Running => {
                    if let Some(progress) = entry.progress {
                        let fraction = if progress.total == 0 {
                            0.0
                        } else {
                            progress.done as f32 / progress.total as f32
                        };
                        let mut text = format!(
                            "{} {}/{}",
                            progress.stage.label(),
                            progress.done,
                            progress.total
                        );
                        if let Some(rate) = entry.secs_per_unit {
                            let _ = write!(text, " · {rate:.1} s each");
                        }
                        if let Some(eta) = entry.eta_secs {
                            let _ = write!(text, " · {eta:.0} s left");
                        }
                        ui.add(egui::ProgressBar::new(fraction).text(text));
                    } else {
                        ui.label("starting");
                    }
                }
                JobState::Finished { path, elapsed_secs } => {
                    ui.label(format!("done in {elapsed_secs:.1} s: {}", path.display()));
                }
                JobState::Cancelled => {
                    ui.colored_label(theme::WEAK_TEXT, "cancelled");
                }
                JobState::Failed { message } => {
                    ui.colored_label(theme::ERROR_TEXT, message);
                }
            }
            for warning in &entry.warnings {
                ui.colored_label(theme::WEAK_TEXT, warning);
            }
        });
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;
    use stillmotion_engine::runtime::{JobOutput, Stage};

    #[test]
    fn events_move_a_job_through_its_states() {
        let mut jobs = JobList::default();
        let id = jobs.add("waves".to_owned());
        let other = jobs.add("clouds".to_owned());
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
        jobs.apply(&Event::Finished {
            job_id: id,
            output: JobOutput {
                path: "out.mp4".into(),
            },
            elapsed_secs: 9.0,
        });
        assert!(!jobs.get(id).unwrap().is_active());
        assert!(jobs.get(other).unwrap().is_active());
        jobs.apply(&Event::Failed {
            job_id: other,
            message: "out of memory".to_owned(),
        });
        assert_eq!(
            jobs.get(other).unwrap().state,
            JobState::Failed {
                message: "out of memory".to_owned()
            }
        );
    }
}
