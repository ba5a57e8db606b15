//! Developer commands for Stillmotion, run as `cargo xtask <command>`.
//!
//! - `run [-- ARGS]`: install what is missing, build the app in release mode (with CUDA where an
//!   NVIDIA driver answers) and open it.
//! - `test`: install what is missing, then run every check CI runs: formatting, clippy, the
//!   engine's dependency rule, the CUDA compile check (where a CUDA toolkit is present) and the
//!   whole test suite.
//! - `setup`: only install what is missing (system packages, RIFE weights).
//! - `check-deps`: only check that the engine does not depend on GUI crates.
//! - `cuda-check`: only the `cuda` feature's compile check (clippy with the kernels built by nvcc).
//! - `smoke`: open the built debug app under Xvfb and keep a screenshot.
//! - `bench-gpu`: build the GPU benchmark with CUDA and stage it for `bench/run-gpu.sh`.
//!
//! Builds use a target folder under the user's cache directory (`$CARGO_TARGET_DIR` wins), so
//! a fresh clone of the repository reuses earlier builds.

mod bench_gpu;
mod cargo;
mod cuda;
mod deps_rule;
mod paths;
mod rife_weights;
mod smoke;
mod system_packages;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <run [-- ARGS] | test | setup | check-deps | cuda-check | smoke | bench-gpu>";

fn main() -> std::process::ExitCode {
    match run(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let root = paths::workspace_root()?;
    std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match command.as_str() {
        "setup" => setup().map(|_| ()),
        "run" => run_app(rest),
        "test" => test(),
        "check-deps" => deps_rule::check(),
        "cuda-check" => cuda::compile_check(),
        "bench-gpu" => bench_gpu::stage(),
        "smoke" => {
            let target = cargo::target_dir();
            let shot = smoke::run(&target.join("debug/stillmotion"), &target.join("smoke"))?;
            println!("xtask: screenshot at {}", shot.display());
            Ok(())
        }
        other => bail!("unknown command {other:?}; {USAGE}"),
    }
}

/// Installs the system packages and fetches the RIFE weights; returns the weights' path.
fn setup() -> anyhow::Result<std::path::PathBuf> {
    system_packages::ensure(system_packages::REQUIRED)?;
    rife_weights::ensure()
}

fn run_app(args: &[String]) -> anyhow::Result<()> {
    let weights = setup()?;
    let app_args: Vec<&str> = match args.split_first() {
        Some((first, rest)) if first == "--" => rest.iter().map(String::as_str).collect(),
        _ => args.iter().map(String::as_str).collect(),
    };
    let gpu = cuda::detect_nvidia_gpu();
    let mut build = cargo::command(&["build", "--release", "-p", "stillmotion-app"]);
    match &gpu {
        Some(gpu) => {
            println!("xtask: NVIDIA GPU found ({gpu}); building with CUDA");
            let toolchain = cuda::ensure_toolchain()?;
            toolchain.apply(&mut build, gpu)?;
            build.args(["--features", "cuda"]);
        }
        None => println!("xtask: no NVIDIA driver answered (`nvidia-smi`); building for the CPU"),
    }
    let lock = std::fs::read("Cargo.lock").context("reading Cargo.lock")?;
    let built = cargo::run(&mut build);
    // A CUDA build patches candle-core, which rewrites Cargo.lock; keep the committed one.
    std::fs::write("Cargo.lock", lock).context("restoring Cargo.lock")?;
    built?;
    let binary = cargo::target_dir().join("release").join("stillmotion");
    let mut app = std::process::Command::new(&binary);
    app.args(app_args).env("STILLMOTION_RIFE_WEIGHTS", &weights);
    if let Some(gpu) = &gpu {
        cuda::ensure_toolchain()?.apply_runtime(&mut app, gpu);
    }
    cargo::run(&mut app)
}

fn test() -> anyhow::Result<()> {
    let weights = setup()?;
    println!("xtask: checking formatting");
    cargo::run(&mut cargo::command(&["fmt", "--all", "--check"]))?;
    println!("xtask: clippy (warnings are errors)");
    cargo::run(&mut cargo::command(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The engine without libav (the GPU benchmark's build): its own cfg branches are linted too.
    cargo::run(&mut cargo::command(&[
        "clippy",
        "-p",
        "stillmotion-engine",
        "--no-default-features",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    deps_rule::check()?;
    cuda::compile_check()?;
    // Build everything the tests need (the app binary included, with the tests' feature set so
    // nothing builds twice), then the GUI smoke test on that binary, then the tests: cargo's
    // own summary is the last thing printed, so a run that executed no test stays visible.
    println!("xtask: building the test suite");
    cargo::run(&mut cargo::command(&[
        "test",
        "--workspace",
        "--all-targets",
        "--no-run",
    ]))?;
    println!("xtask: GUI smoke test under Xvfb");
    let target = cargo::target_dir();
    let screenshot = smoke::run(
        &target.join("debug").join("stillmotion"),
        &target.join("smoke"),
    )?;
    println!(
        "xtask: the window opened; screenshot at {}",
        screenshot.display()
    );
    println!("xtask: running the test suite");
    let mut tests = cargo::command(&["test", "--workspace", "--all-targets"]);
    tests.env("STILLMOTION_RIFE_WEIGHTS", &weights);
    cargo::run(&mut tests)
}
