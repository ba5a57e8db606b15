//! Running a headless job (`stillmotion render`, `stillmotion interpolate`): submit it to the
//! engine thread and report its events, as a one-line progress display on a terminal or as JSON
//! lines with `--json`.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use stillmotion_engine::failure::FailureKind;
use stillmotion_engine::runtime::{Command, EngineHandle, Event, JobKind, JobRunner};

use super::{InterpolateArgs, RenderArgs, exit_code};

/// Renders `args` with `runner`, returning the process exit code. Ctrl+C cancels the job.
pub fn run(args: &RenderArgs, runner: impl JobRunner) -> u8 {
    match args.to_recipe() {
        Ok(recipe) => run_job(
            "render",
            JobKind::Render(Box::new(recipe)),
            runner,
            args.json,
        ),
        Err(error) => {
            eprintln!("stillmotion render: {error:#}");
            exit_code::BAD_INPUT
        }
    }
}

/// Interpolates a clip as `args` says, returning the process exit code.
pub fn run_interpolate(args: &InterpolateArgs, runner: impl JobRunner) -> u8 {
    match args.to_request() {
        Ok(request) => run_job(
            "interpolate",
            JobKind::Interpolate(Box::new(request)),
            runner,
            args.json,
        ),
        Err(error) => {
            eprintln!("stillmotion interpolate: {error:#}");
            exit_code::BAD_INPUT
        }
    }
}

/// The exit code for a job that failed as `kind`.
fn failure_exit_code(kind: FailureKind) -> u8 {
    match kind {
        kind if kind.is_request_problem() => exit_code::BAD_INPUT,
        FailureKind::Cancelled => exit_code::CANCELLED,
        _ => exit_code::FAILED,
    }
}

/// Runs one job on a fresh engine thread and reports it; Ctrl+C cancels it.
fn run_job(name: &str, kind: JobKind, runner: impl JobRunner, json: bool) -> u8 {
    let engine = match EngineHandle::spawn(runner, || {}) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("stillmotion {name}: {error:#}");
            return exit_code::FAILED;
        }
    };
    let job_id = 1;
    if let Err(error) = engine.send(Command::Submit { job_id, kind }) {
        eprintln!("stillmotion {name}: {error:#}");
        return exit_code::FAILED;
    }
    let (interrupt_sender, interrupt) = crossbeam_channel::bounded::<()>(1);
    if let Err(error) = ctrlc::set_handler(move || {
        let _ = interrupt_sender.try_send(());
    }) {
        tracing::warn!("Ctrl+C will not cancel cleanly: {error}");
    }
    let terminal = std::io::stderr().is_terminal() && !json;
    loop {
        crossbeam_channel::select! {
            recv(interrupt) -> _ => {
                let _ = engine.send(Command::Cancel(job_id));
            }
            recv(engine.events()) -> event => {
                let Ok(event) = event else {
                    eprintln!("stillmotion {name}: the engine stopped unexpectedly");
                    return exit_code::FAILED;
                };
                if json {
                    println!("{}", event_json(&event));
                    let _ = std::io::stdout().flush();
                } else {
                    show(&event, terminal);
                }
                match event {
                    Event::Finished { .. } => return exit_code::OK,
                    Event::Cancelled { .. } => return exit_code::CANCELLED,
                    Event::Failed { kind, .. } => return failure_exit_code(kind),
                    _ => {}
                }
            }
        }
    }
}

/// Human-readable progress on standard error (standard output stays clean for scripts).
fn show(event: &Event, terminal: bool) {
    let line = match event {
        Event::Progress {
            progress,
            secs_per_unit,
            eta_secs,
            ..
        } => {
            let mut line = format!(
                "{} {}/{}",
                progress.stage.label(),
                progress.done,
                progress.total
            );
            if let Some(rate) = secs_per_unit {
                let _ = write!(line, ", {rate:.2} s each");
            }
            if let Some(eta) = eta_secs {
                let _ = write!(line, ", {eta:.0} s left");
            }
            if terminal {
                eprint!("\r\x1b[2K{line}");
                return;
            }
            line
        }
        Event::Warning { message, .. } => format!("warning: {message}"),
        Event::MemoryPlan { plan, .. } => plan.summary(),
        Event::Finished {
            output,
            elapsed_secs,
            ..
        } => format!("done in {elapsed_secs:.1} s: {}", output.path.display()),
        Event::Cancelled { .. } => "cancelled; nothing was written".to_owned(),
        Event::Failed { message, .. } => format!("failed: {message}"),
        Event::Queued { .. }
        | Event::Started { .. }
        | Event::Unloaded
        | Event::Preview { .. }
        | Event::PreviewChoice { .. }
        | Event::MemoryPlanRefused { .. } => return,
    };
    if terminal {
        eprintln!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// One event as a JSON object with an `event` tag.
#[must_use]
pub fn event_json(event: &Event) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::Queued { job_id, position } => {
            json!({"event": "queued", "job_id": job_id, "position": position})
        }
        Event::Started { job_id } => json!({"event": "started", "job_id": job_id}),
        Event::Progress {
            job_id,
            progress,
            secs_per_unit,
            eta_secs,
        } => json!({
            "event": "progress",
            "job_id": job_id,
            "stage": progress.stage.label(),
            "done": progress.done,
            "total": progress.total,
            "secs_per_unit": secs_per_unit,
            "eta_secs": eta_secs,
        }),
        Event::Warning { job_id, message } => {
            json!({"event": "warning", "job_id": job_id, "message": message})
        }
        Event::Finished {
            job_id,
            output,
            elapsed_secs,
        } => json!({
            "event": "finished",
            "job_id": job_id,
            "path": output.path,
            "elapsed_secs": elapsed_secs,
        }),
        Event::Cancelled { job_id } => json!({"event": "cancelled", "job_id": job_id}),
        Event::Failed {
            job_id,
            kind,
            message,
        } => json!({
            "event": "failed",
            "job_id": job_id,
            "code": kind.code(),
            "message": message,
        }),
        Event::Unloaded => json!({"event": "unloaded"}),
        Event::Preview { job_id, preview } => {
            json!({"event": "preview", "job_id": job_id, "step": preview.step})
        }
        Event::MemoryPlanRefused { job_id, message } => {
            json!({"event": "memory_plan_refused", "job_id": job_id, "message": message})
        }
        Event::PreviewChoice { job_id, choice } => json!({
            "event": "preview_choice",
            "job_id": job_id,
            "vae": choice.kind == stillmotion_engine::sampling::PreviewKind::VaeDecode,
            "every": choice.every,
            "reason": choice.reason,
        }),
        Event::MemoryPlan { job_id, plan } => json!({
            "event": "memory_plan",
            "job_id": job_id,
            "summary": plan.summary(),
            "plan": serde_json::to_value(plan).unwrap_or_default(),
        }),
    }
}
