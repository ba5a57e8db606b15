//! The engine thread and the handle callers hold.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::cancel::CancelToken;
use super::context::{JobContext, drain_commands};
use super::messages::{Command, Event, JobId, JobKind, JobOutput};
use crate::EngineError;

/// Capacity of the command channel: callers rarely have more than a few commands in flight.
const COMMAND_CAPACITY: usize = 8;
/// Capacity of the event channel: a GUI drains it every frame, a CLI continuously. When a caller
/// stops draining, the engine waits (back-pressure) rather than growing memory.
const EVENT_CAPACITY: usize = 256;
#[cfg(test)]
pub(super) const EVENT_CAPACITY_FOR_TESTS: usize = EVENT_CAPACITY;

/// Does the work of a job. The engine thread owns one runner, which owns the loaded models, so
/// models stay loaded between jobs.
pub trait JobRunner: Send + 'static {
    /// Runs one job to completion, calling `ctx.check()` at every step boundary.
    fn run(&mut self, kind: &JobKind, ctx: &JobContext<'_>) -> Result<JobOutput, EngineError>;

    /// Frees loaded models.
    fn unload(&mut self);
}

/// The caller's side of the engine thread. Dropping it shuts the thread down and joins it.
pub struct EngineHandle {
    commands: Sender<Command>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread. `wake` is called after every event (a GUI passes
    /// `move || ctx.request_repaint()`). Jobs send no live previews.
    pub fn spawn(
        runner: impl JobRunner,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, EngineError> {
        Self::start(runner, wake, false)
    }

    /// Like [`spawn`](Self::spawn), and render jobs also send an [`Event::Preview`] per
    /// denoising step (dropped rather than waited for when the event channel is full).
    pub fn spawn_with_previews(
        runner: impl JobRunner,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, EngineError> {
        Self::start(runner, wake, true)
    }

    fn start(
        runner: impl JobRunner,
        wake: impl Fn() + Send + Sync + 'static,
        previews: bool,
    ) -> Result<Self, EngineError> {
        let (command_sender, command_receiver) = bounded(COMMAND_CAPACITY);
        let (event_sender, event_receiver) = bounded(EVENT_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("stillmotion-engine".to_owned())
            .spawn(move || {
                EngineLoop {
                    runner,
                    shared: Shared {
                        commands: command_receiver,
                        events: event_sender,
                        wake: Box::new(wake),
                        queue: RefCell::new(VecDeque::new()),
                        stopping: Cell::new(false),
                        previews,
                    },
                }
                .run();
            })
            .map_err(|error| EngineError::io("starting the engine thread", "", error))?;
        Ok(Self {
            commands: command_sender,
            events: event_receiver,
            thread: Some(thread),
        })
    }

    /// Sends a command, waiting if the engine has `COMMAND_CAPACITY` commands pending.
    pub fn send(&self, command: Command) -> Result<(), EngineError> {
        self.commands
            .send(command)
            .map_err(|_| EngineError::EngineStopped)
    }

    /// Sends a command without waiting; `Ok(false)` when the channel is full (try again later).
    /// A GUI uses this so its frame never blocks.
    pub fn try_send(&self, command: Command) -> Result<bool, EngineError> {
        match self.commands.try_send(command) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::EngineStopped),
        }
    }

    /// The events the engine sends.
    #[must_use]
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // The thread may already be gone (then the send fails, which is fine).
        let _ = self.commands.send(Command::Shutdown);
        // Drain events so a thread blocked on a full event channel can reach the shutdown.
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            let _ = self
                .events
                .recv_timeout(std::time::Duration::from_millis(10));
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

/// The engine thread's state. The runner is a separate field from the channels and queue so a
/// job can borrow the runner mutably while its context borrows the rest.
struct EngineLoop<R> {
    runner: R,
    shared: Shared,
}

struct Shared {
    commands: Receiver<Command>,
    events: Sender<Event>,
    wake: Box<dyn Fn() + Send + Sync>,
    queue: RefCell<VecDeque<(JobId, JobKind)>>,
    stopping: Cell<bool>,
    /// Whether jobs send live previews.
    previews: bool,
}

impl<R: JobRunner> EngineLoop<R> {
    fn run(mut self) {
        let _span = tracing::info_span!("engine").entered();
        while !self.shared.stopping.get() {
            let next = self.shared.queue.borrow_mut().pop_front();
            match next {
                Some((job_id, kind)) => self.run_job(job_id, &kind),
                None => match self.shared.commands.recv() {
                    Ok(command) => self.apply(command),
                    Err(_) => break, // Every handle is gone.
                },
            }
        }
        let remaining: Vec<_> = self.shared.queue.borrow_mut().drain(..).collect();
        for (job_id, _) in remaining {
            self.shared.emit(Event::Cancelled { job_id });
        }
    }

    /// Applies a command while no job runs (or after one finished).
    fn apply(&mut self, command: Command) {
        match command {
            Command::Unload => {
                self.runner.unload();
                self.shared.emit(Event::Unloaded);
            }
            other => self.shared.apply_between_steps(other),
        }
    }

    fn run_job(&mut self, job_id: JobId, kind: &JobKind) {
        let _span = tracing::info_span!("job", job_id).entered();
        let shared = &self.shared;
        shared.emit(Event::Started { job_id });
        let cancel = CancelToken::new();
        let deferred = RefCell::new(Vec::new());
        let started = Instant::now();
        let emit = |event: Event| shared.emit(event);
        let between_steps = |_: &JobContext<'_>| {
            for command in drain_commands(&shared.commands, job_id, &cancel) {
                match command {
                    Command::Unload => deferred.borrow_mut().push(Command::Unload),
                    other => shared.apply_between_steps(other),
                }
            }
        };
        let preview = |event: Event| shared.emit_disposable(event);
        let mut ctx = JobContext::new(job_id, cancel.clone(), &emit, Some(&between_steps));
        if shared.previews {
            ctx = ctx.with_previews(&preview);
        }
        // Commands that arrived before the job started (a cancel, a shutdown) apply first.
        let result = ctx.check().and_then(|()| self.runner.run(kind, &ctx));
        match result {
            Ok(output) => shared.emit(Event::Finished {
                job_id,
                output,
                elapsed_secs: started.elapsed().as_secs_f64(),
            }),
            Err(EngineError::Cancelled) => shared.emit(Event::Cancelled { job_id }),
            Err(error) => {
                // Any runner's GPU allocation failure is told as out of memory, not a crash.
                let error = error.classify_out_of_memory();
                if let EngineError::MemoryPlanRefused { problem } = &error {
                    shared.emit(Event::MemoryPlanRefused {
                        job_id,
                        message: problem.clone(),
                    });
                }
                let message = format!("{error:#}");
                let kind = error.kind();
                tracing::error!("job {job_id} failed ({}): {message}", kind.code());
                shared.emit(Event::Failed {
                    job_id,
                    kind,
                    message,
                });
            }
        }
        drop(ctx);
        for command in deferred.into_inner() {
            self.apply(command);
        }
    }
}

impl Shared {
    fn emit(&self, event: Event) {
        if self.events.send(event).is_ok() {
            (self.wake)();
        }
    }

    /// Sends an event that may be lost (a live preview): never waits for a full channel.
    fn emit_disposable(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => (self.wake)(),
            Err(TrySendError::Full(_)) => {
                tracing::debug!("the event channel is full: a live preview was dropped");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// What can be applied while a job runs: queue changes and shutdown.
    fn apply_between_steps(&self, command: Command) {
        match command {
            Command::Submit { job_id, kind } => {
                let position = {
                    let mut queue = self.queue.borrow_mut();
                    queue.push_back((job_id, kind));
                    queue.len() - 1
                };
                self.emit(Event::Queued { job_id, position });
            }
            Command::Cancel(job_id) => {
                let removed = {
                    let mut queue = self.queue.borrow_mut();
                    let before = queue.len();
                    queue.retain(|(id, _)| *id != job_id);
                    queue.len() != before
                };
                if removed {
                    self.emit(Event::Cancelled { job_id });
                }
            }
            Command::Shutdown => self.stopping.set(true),
            Command::Unload => {} // Deferred by the caller until the running job ends.
        }
    }
}
