//! Runtime behaviour: ordering, cancellation, shutdown, deferred unload. The runner here stands
//! in for the pipeline and only counts steps; the real pipeline is tested end to end elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::thread::EVENT_CAPACITY_FOR_TESTS;
use super::*;
use crate::EngineError;
use crate::preset::Preset;
use crate::recipe::{Recipe, RecipeChoices};

struct StepRunner {
    steps: u32,
    step_time: Duration,
    unloads: Arc<AtomicUsize>,
}

impl JobRunner for StepRunner {
    fn run(&mut self, kind: &JobKind, ctx: &JobContext<'_>) -> Result<JobOutput, EngineError> {
        let JobKind::Render(recipe) = kind else {
            return Err(EngineError::BadInterpolationInput {
                problem: "this test runner only renders".to_owned(),
            });
        };
        for step in 0..self.steps {
            ctx.check()?;
            std::thread::sleep(self.step_time);
            ctx.progress(Stage::DenoisingHighNoise, step + 1, self.steps);
        }
        Ok(JobOutput {
            path: recipe.output.clone(),
        })
    }

    fn unload(&mut self) {
        self.unloads.fetch_add(1, Ordering::SeqCst);
    }
}

fn render(output: &str) -> JobKind {
    let preset = Preset::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../presets/wan22-i2v-a14b-lightx2v-4step-480p.toml"),
    )
    .unwrap();
    JobKind::Render(Box::new(Recipe::from_layers(
        &preset,
        RecipeChoices {
            output: Some(output.into()),
            ..RecipeChoices::default()
        },
    )))
}

fn spawn(steps: u32, step_ms: u64) -> (EngineHandle, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let unloads = Arc::new(AtomicUsize::new(0));
    let wakes = Arc::new(AtomicUsize::new(0));
    let counter = wakes.clone();
    let handle = EngineHandle::spawn(
        StepRunner {
            steps,
            step_time: Duration::from_millis(step_ms),
            unloads: unloads.clone(),
        },
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
    )
    .unwrap();
    (handle, unloads, wakes)
}

fn next(handle: &EngineHandle) -> Event {
    handle
        .events()
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
}

fn until_terminal(handle: &EngineHandle, job_id: JobId) -> (Vec<Event>, Event) {
    let mut seen = Vec::new();
    loop {
        let event = next(handle);
        match &event {
            Event::Finished { job_id: id, .. }
            | Event::Cancelled { job_id: id }
            | Event::Failed { job_id: id, .. }
                if *id == job_id =>
            {
                return (seen, event);
            }
            _ => seen.push(event),
        }
    }
}

#[test]
fn jobs_run_in_order_with_progress_and_wake_the_caller() {
    let (handle, _, wakes) = spawn(3, 1);
    handle
        .send(Command::Submit {
            job_id: 1,
            kind: render("a.mp4"),
        })
        .unwrap();
    handle
        .send(Command::Submit {
            job_id: 2,
            kind: render("b.mp4"),
        })
        .unwrap();
    let (seen, done) = until_terminal(&handle, 1);
    assert!(seen.contains(&Event::Started { job_id: 1 }));
    let steps: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                job_id: 1,
                progress,
                ..
            } => Some(progress.done),
            _ => None,
        })
        .collect();
    assert_eq!(steps, [1, 2, 3]);
    let Event::Finished { output, .. } = done else {
        panic!("{done:?}")
    };
    assert_eq!(output.path, std::path::Path::new("a.mp4"));
    let (_, done) = until_terminal(&handle, 2);
    assert!(matches!(done, Event::Finished { job_id: 2, .. }));
    assert!(wakes.load(Ordering::SeqCst) >= 10);
}

#[test]
fn cancel_stops_the_running_job_within_a_step_and_skips_a_queued_one() {
    let (handle, _, _) = spawn(1000, 5);
    handle
        .send(Command::Submit {
            job_id: 1,
            kind: render("long.mp4"),
        })
        .unwrap();
    handle
        .send(Command::Submit {
            job_id: 2,
            kind: render("queued.mp4"),
        })
        .unwrap();
    handle
        .send(Command::Submit {
            job_id: 3,
            kind: render("after.mp4"),
        })
        .unwrap();
    // Wait until job 1 is visibly running, then cancel the queued job 2 and the running job 1.
    loop {
        if let Event::Progress { job_id: 1, .. } = next(&handle) {
            break;
        }
    }
    handle.send(Command::Cancel(2)).unwrap();
    handle.send(Command::Cancel(1)).unwrap();
    let (seen, done) = until_terminal(&handle, 1);
    assert_eq!(done, Event::Cancelled { job_id: 1 });
    assert!(seen.contains(&Event::Cancelled { job_id: 2 }));
    let steps_after_cancel = seen
        .iter()
        .skip_while(|e| **e != Event::Cancelled { job_id: 2 })
        .filter(|e| matches!(e, Event::Progress { job_id: 1, .. }))
        .count();
    assert!(
        steps_after_cancel <= 2,
        "{steps_after_cancel} steps ran after the cancel"
    );
    // Job 2 never starts; job 3 does (and is cancelled in turn).
    let mut seen = Vec::new();
    loop {
        let event = next(&handle);
        if event == (Event::Started { job_id: 3 }) {
            break;
        }
        seen.push(event);
    }
    assert!(!seen.contains(&Event::Started { job_id: 2 }));
    handle.send(Command::Cancel(3)).unwrap();
    let (_, done) = until_terminal(&handle, 3);
    assert_eq!(done, Event::Cancelled { job_id: 3 });
}

#[test]
fn unload_waits_for_the_running_job_and_drop_joins_the_thread() {
    let (handle, unloads, _) = spawn(20, 2);
    handle
        .send(Command::Submit {
            job_id: 1,
            kind: render("a.mp4"),
        })
        .unwrap();
    handle.send(Command::Unload).unwrap();
    let (_, done) = until_terminal(&handle, 1);
    assert!(
        matches!(done, Event::Finished { .. }),
        "unload must not cancel: {done:?}"
    );
    assert_eq!(next(&handle), Event::Unloaded);
    assert_eq!(unloads.load(Ordering::SeqCst), 1);
    handle
        .send(Command::Submit {
            job_id: 2,
            kind: render("b.mp4"),
        })
        .unwrap();
    drop(handle); // Shutdown cancels job 2 and joins; must not hang.
}

/// Sends `count` previews as fast as it can, counting how often a preview was built.
struct PreviewRunner {
    count: usize,
    built: Arc<AtomicUsize>,
}

impl JobRunner for PreviewRunner {
    fn run(&mut self, _kind: &JobKind, ctx: &JobContext<'_>) -> Result<JobOutput, EngineError> {
        for step in 0..self.count {
            ctx.preview(|| {
                self.built.fetch_add(1, Ordering::SeqCst);
                Ok(crate::sampling::LatentPreview {
                    step,
                    total_steps: self.count,
                    width: 1,
                    height: 1,
                    frames: vec![vec![0, 0, 0]],
                    kind: crate::sampling::PreviewKind::Projection,
                })
            });
        }
        Ok(JobOutput {
            path: "p.mp4".into(),
        })
    }

    fn unload(&mut self) {}
}

#[test]
fn previews_are_dropped_rather_than_block_and_are_built_only_when_asked_for() {
    let built = Arc::new(AtomicUsize::new(0));
    let runner = PreviewRunner {
        count: 300,
        built: built.clone(),
    };
    let handle = EngineHandle::spawn_with_previews(runner, || {}).unwrap();
    handle
        .send(Command::Submit {
            job_id: 1,
            kind: render("p.mp4"),
        })
        .unwrap();
    // Nobody drains while the job runs: the channel fills with the first previews.
    while built.load(Ordering::SeqCst) < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (seen, done) = until_terminal(&handle, 1);
    assert!(
        matches!(done, Event::Finished { job_id: 1, .. }),
        "{done:?}"
    );
    let steps: Vec<usize> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Preview { job_id: 1, preview } => Some(preview.step),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        (0..EVENT_CAPACITY_FOR_TESTS - 2).collect::<Vec<_>>(),
        "Queued and Started take two slots; previews past a full channel are dropped, in order"
    );
    drop(handle);

    let built = Arc::new(AtomicUsize::new(0));
    let runner = PreviewRunner {
        count: 3,
        built: built.clone(),
    };
    let handle = EngineHandle::spawn(runner, || {}).unwrap();
    handle
        .send(Command::Submit {
            job_id: 2,
            kind: render("p.mp4"),
        })
        .unwrap();
    let (seen, _) = until_terminal(&handle, 2);
    assert!(!seen.iter().any(|e| matches!(e, Event::Preview { .. })));
    assert_eq!(built.load(Ordering::SeqCst), 0, "no preview is built");
}

/// Fails every job with the error its output path names.
struct FailingRunner;

impl JobRunner for FailingRunner {
    fn run(&mut self, kind: &JobKind, _ctx: &JobContext<'_>) -> Result<JobOutput, EngineError> {
        let JobKind::Render(recipe) = kind else {
            unreachable!("only renders here")
        };
        Err(match recipe.output.to_str().unwrap() {
            "bad.mp4" => EngineError::BadRecipe {
                field: "frames",
                problem: "must be 4n+1".to_owned(),
            },
            "refused.mp4" => EngineError::MemoryPlanRefused {
                problem: "needs 30 GB; lower the resolution".to_owned(),
            },
            // What candle says when cudarc's allocation fails; only the thread classifies it.
            "oom.mp4" => EngineError::Candle(candle_core::Error::Msg(
                r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#.to_owned(),
            )),
            _ => EngineError::Candle(candle_core::Error::Msg("shape mismatch".to_owned())),
        })
    }

    fn unload(&mut self) {}
}

#[test]
fn a_failed_job_carries_its_stable_failure_kind() {
    use crate::failure::FailureKind;
    let handle = EngineHandle::spawn(FailingRunner, || {}).unwrap();
    let cases = [
        ("bad.mp4", FailureKind::InvalidRequest, "frames"),
        ("refused.mp4", FailureKind::PlanRefused, "needs 30 GB"),
        ("oom.mp4", FailureKind::OutOfMemory, "ran out of memory"),
        ("other.mp4", FailureKind::Failed, "shape mismatch"),
    ];
    for (job_id, (output, expected, words)) in (1..).zip(cases) {
        handle
            .send(Command::Submit {
                job_id,
                kind: render(output),
            })
            .unwrap();
        let (seen, done) = until_terminal(&handle, job_id);
        let Event::Failed { kind, message, .. } = &done else {
            panic!("{done:?}")
        };
        assert_eq!(*kind, expected, "{output}: {message}");
        assert!(message.contains(words), "{output}: {message}");
        let refusal = seen
            .iter()
            .any(|e| matches!(e, Event::MemoryPlanRefused { job_id: id, .. } if *id == job_id));
        assert_eq!(refusal, expected == FailureKind::PlanRefused, "{seen:?}");
    }
}
