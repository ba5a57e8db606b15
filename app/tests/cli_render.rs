//! `stillmotion render` end to end: the real binary renders the tiny reference pipeline case
//! (the official WanI2V.generate's frames, tests/golden/pipeline_i2v_official_tiny) from the
//! user's files and flags, and bad flags are refused with exit code 2 before any work.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn case_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/pipeline_i2v_official_tiny")
}

fn render(out: &Path, extra: &[&str]) -> std::process::Output {
    let case = case_dir();
    let file = |name: &str| case.join(name).display().to_string();
    let mut args: Vec<String> = [
        "render",
        "--preset",
        "wan22-i2v-a14b-official-480p",
        "--prompt",
        "a small red boat drifts across a calm lake at sunset",
        "--negative",
        "blurry, static, low quality",
        "--width",
        "64",
        "--height",
        "48",
        "--frames",
        "5",
        "--steps",
        "4",
        "--sampler",
        "unipc",
        "--shift",
        "5",
        "--cfg",
        "3.5,3.0",
        "--boundary",
        "0.9",
        "--device",
        "cpu",
        "--json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (flag, name) in [
        ("--image", "image.png"),
        ("--high-noise", "high_noise.safetensors"),
        ("--low-noise", "low_noise.safetensors"),
        ("--text-encoder", "umt5.safetensors"),
        ("--vae", "wan_2.1_vae.safetensors"),
        ("--init-noise", "inputs.safetensors"),
    ] {
        args.push(flag.to_owned());
        args.push(file(name));
    }
    args.push("--out".to_owned());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Command::new(env!("CARGO_BIN_EXE_stillmotion"))
        .args(&args)
        .output()
        .unwrap()
}

fn expected_frames() -> Vec<f32> {
    let tensors = candle_core::safetensors::load(
        case_dir().join("expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors["frames"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn renders_the_reference_case_to_png_frames_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("frames");
    let output = render(&out, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "progress" && e["stage"] == "high-noise expert")
    );
    // The memory plan comes before any model work (the first progress event).
    let plan_at = events
        .iter()
        .position(|e| e["event"] == "memory_plan")
        .unwrap();
    let first_progress = events
        .iter()
        .position(|e| e["event"] == "progress")
        .unwrap();
    assert!(plan_at < first_progress, "{events:?}");
    let plan = &events[plan_at]["plan"];
    assert_eq!(plan["dit"]["mode"], "both_resident", "{plan}");
    assert_eq!(plan["tokens"]["count"], 2 * 3 * 4, "{plan}");
    assert!(plan["predicted"]["peak"].as_u64().unwrap() > 0, "{plan}");
    let finished = events.last().unwrap();
    assert_eq!(finished["event"], "finished", "{events:?}");

    let expected = expected_frames();
    let mut actual = Vec::new();
    for index in 0..5 {
        let frame = image::open(out.join(format!("frame_{index:05}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(frame.dimensions(), (64, 48));
        actual.extend(frame.as_raw().iter().map(|&v| f32::from(v)));
    }
    assert!(!out.join("frame_00005.png").exists());
    let mse = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| f64::from(a - e).powi(2))
        .sum::<f64>()
        / expected.len() as f64;
    let psnr = 10.0 * (255.0_f64 * 255.0 / mse.max(1e-12)).log10();
    assert!(psnr >= 40.0, "PSNR {psnr:.1} dB against the reference");
}

#[test]
fn bad_flags_exit_with_code_two_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let output = render(&out, &["--interpolate", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--interpolate") && stderr.contains("1..=16"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn target_fps_renders_an_mp4_at_exactly_that_rate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let output = render(&out, &["--target-fps", "24"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let video = stillmotion_engine::video::read_video(&out, 100, 1 << 20).unwrap();
    assert_eq!((video.fps.numerator, video.fps.denominator), (24, 1));
    // 5 frames at 16 fps span 4/16 s: 7 frames at 24 fps.
    assert_eq!(video.frames.len(), 7);
    let recipe = stillmotion_engine::video::read_recipe(&out).unwrap();
    assert_eq!(recipe.recipe["interpolation"]["mode"], "target_fps");
}

#[test]
fn resume_needs_a_save_point_made_from_the_same_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let output = render(&out, &["--resume"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--resume has nothing to continue"),
        "{stderr}"
    );

    // A save point from another recipe is refused by the job, and kept.
    let save_point = stillmotion_engine::pipeline::resume::latents_path(&out);
    let latents = candle_core::Tensor::zeros(
        (1, 16, 2, 6, 8),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    stillmotion_engine::pipeline::resume::save(
        &save_point,
        "another recipe",
        &stillmotion_engine::pipeline::resume::SavedState::Denoised { latents },
    )
    .unwrap();
    let output = render(&out, &["--resume"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("different recipe"), "{stdout}");
    assert!(save_point.exists() && !out.exists());
}
