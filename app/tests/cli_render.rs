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
    let mut args: Vec<String> = Vec::new();
    for (flag, name) in [
        ("--high-noise", "high_noise.safetensors"),
        ("--low-noise", "low_noise.safetensors"),
        ("--text-encoder", "umt5.safetensors"),
        ("--vae", "wan_2.1_vae.safetensors"),
    ] {
        args.push(flag.to_owned());
        args.push(file(name));
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    render_with_models_from_flags(out, &args)
}

/// Renders the reference case's settings; the model files come from `extra`.
fn render_with_models_from_flags(out: &Path, extra: &[&str]) -> std::process::Output {
    let case = case_dir();
    let file = |name: &str| case.join(name).display().to_string();
    // The official preset unless the test names another.
    let preset = if extra.contains(&"--preset") {
        &[][..]
    } else {
        &["--preset", "wan22-i2v-a14b-official-480p"][..]
    };
    let mut args: Vec<String> = ["render"]
        .iter()
        .chain(preset)
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(
        [
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
        .map(|s| (*s).to_owned()),
    );
    for (flag, name) in [
        ("--image", "image.png"),
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

/// PSNR of the 5 PNG frames in `out` against the reference frames.
fn psnr_against_reference(out: &Path) -> f64 {
    let expected = expected_frames();
    let mut actual = Vec::new();
    for index in 0..5 {
        let frame = image::open(out.join(format!("frame_{index:05}.png")))
            .unwrap()
            .to_rgb8();
        actual.extend(frame.as_raw().iter().map(|&v| f32::from(v)));
    }
    assert_eq!(actual.len(), expected.len());
    let mse = actual
        .iter()
        .zip(&expected)
        .map(|(a, e)| f64::from(a - e).powi(2))
        .sum::<f64>()
        / expected.len() as f64;
    10.0 * (255.0_f64 * 255.0 / mse.max(1e-12)).log10()
}

fn json_events(output: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn a_render_the_memory_plan_refuses_exits_with_code_two_and_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let output = render(&out, &["--plan-for-vram", "0.001"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = json_events(&output);
    let failed = events.last().unwrap();
    assert_eq!(failed["event"], "failed", "{events:?}");
    assert_eq!(failed["code"], "plan_refused", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("smaller resolution"),
        "{failed}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn help_lists_the_exit_codes() {
    for args in [&["--help"][..], &["render", "--help"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_stillmotion"))
            .args(args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        for line in ["Exit codes:", "  2 ", "  130 ", "plan_refused"] {
            assert!(help.contains(line), "{args:?}: {help}");
        }
    }
}

/// The case's model files as a diffusers-format folder (`model_index.json`, `transformer/`,
/// `transformer_2/`, `text_encoder/`, `tokenizer/`, `vae/`). The tiny models keep their
/// configs: `config.json` for the experts and the text encoder, and a sidecar beside the VAE
/// (a real diffusers VAE is the released one and needs none).
fn diffusers_folder(root: &Path) {
    let case = case_dir();
    let put = |from: &str, to: &str| {
        let target = root.join(to);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(case.join(from), target).unwrap();
    };
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("model_index.json"), "{}").unwrap();
    put(
        "high_noise.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
    );
    put("high_noise.json", "transformer/config.json");
    put(
        "low_noise.safetensors",
        "transformer_2/diffusion_pytorch_model.safetensors",
    );
    put("low_noise.json", "transformer_2/config.json");
    put("umt5.safetensors", "text_encoder/model.safetensors");
    put("umt5.json", "text_encoder/config.json");
    put("tokenizer.json", "tokenizer/tokenizer.json");
    put("tokenizer_config.json", "tokenizer/tokenizer_config.json");
    put(
        "wan_2.1_vae.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    );
    put("wan_2.1_vae.json", "vae/diffusion_pytorch_model.json");
}

#[test]
fn model_dir_alone_finds_every_model_file_or_names_the_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("Wan2.2-I2V-A14B-Diffusers");
    diffusers_folder(&models);
    let out = dir.path().join("frames");
    let models_arg = models.display().to_string();
    let output = render_with_models_from_flags(&out, &["--model-dir", &models_arg]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let psnr = psnr_against_reference(&out);
    assert!(psnr >= 40.0, "PSNR {psnr:.1} dB against the reference");

    // A ComfyUI-style models folder with nothing in it: each file is named with its place.
    let empty = dir.path().join("models");
    std::fs::create_dir_all(empty.join("diffusion_models")).unwrap();
    let empty_arg = empty.display().to_string();
    let output =
        render_with_models_from_flags(&dir.path().join("none"), &["--model-dir", &empty_arg]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for missing in [
        "the high-noise expert is missing (put it in diffusion_models/",
        "the low-noise expert is missing",
        "the text encoder is missing (put it in text_encoders/",
        "the VAE is missing (put it in vae/ (wan_2.1_vae.safetensors))",
    ] {
        assert!(stderr.contains(missing), "{stderr}");
    }
}

fn probe(path: &Path) -> String {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=codec_name,codec_tag_string")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn codec_h265_writes_an_hvc1_mp4_and_mp4_stays_h264_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let h265 = dir.path().join("h265.mp4");
    let output = render(&h265, &["--codec", "h265"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let streams = probe(&h265);
    assert!(
        streams.contains("codec_name=hevc") && streams.contains("codec_tag_string=hvc1"),
        "{streams}"
    );
    let video = stillmotion_engine::video::read_video(&h265, 100, 1 << 20).unwrap();
    assert_eq!(video.frames.len(), 5);
    let recipe = stillmotion_engine::video::read_recipe(&h265).unwrap();
    assert_eq!(recipe.recipe["codec"], "h265");

    // Without --codec, .mp4 means H.264.
    let h264 = dir.path().join("h264.mp4");
    let output = render(&h264, &[]);
    assert_eq!(output.status.code(), Some(0));
    let streams = probe(&h264);
    assert!(
        streams.contains("codec_name=h264") && streams.contains("codec_tag_string=avc1"),
        "{streams}"
    );

    let output = render(&dir.path().join("vp9.mp4"), &["--codec", "vp9"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--codec vp9 is written to .webm"),
        "{stderr}"
    );
}

/// A LoRA for the tiny DiT's first self-attention query (dim 32), rank 2, filled with `value`.
fn tiny_lora(path: &Path, value: f32) {
    let device = candle_core::Device::Cpu;
    let tensor = |shape: (usize, usize)| {
        candle_core::Tensor::full(value, shape, &device)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    };
    let tensors = std::collections::HashMap::from([
        (
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight".to_owned(),
            tensor((2, 32)),
        ),
        (
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight".to_owned(),
            tensor((32, 2)),
        ),
    ]);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

#[test]
fn the_4_step_presets_lora_is_found_in_loras_and_applied_or_its_absence_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let out = dir.path().join("frames");
    let models_arg = models.display().to_string();
    let flags = [
        "--preset",
        "wan22-i2v-a14b-lightx2v-4step-480p",
        "--model-dir",
        &models_arg,
    ];
    let output = render(&out, &flags);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
        "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
        "loras/",
        "--lora",
        "a preset without the LoRA",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    assert!(!out.exists());

    let loras = models.join("loras");
    std::fs::create_dir(&loras).unwrap();
    let high = loras.join("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors");
    let low = loras.join("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors");
    tiny_lora(&high, 0.5);
    tiny_lora(&low, -0.5);
    let output = render(&out, &flags);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let warnings: Vec<_> = json_events(&output)
        .into_iter()
        .filter(|e| e["event"] == "warning")
        .collect();
    assert!(warnings.is_empty(), "every LoRA key applies: {warnings:?}");
    let stored = stillmotion_engine::video::read_recipe(&out).unwrap();
    let used: Vec<(&str, &Path)> = stored
        .model_files
        .iter()
        .filter(|f| f.used_as == "lora")
        .map(|f| (f.used_as.as_str(), f.path.as_path()))
        .collect();
    assert_eq!(used, [("lora", high.as_path()), ("lora", low.as_path())]);
    let recipe: stillmotion_engine::recipe::Recipe = serde_json::from_value(stored.recipe).unwrap();
    let strengths: Vec<(f64, f64)> = recipe
        .loras
        .iter()
        .map(|l| (l.strength_high_noise, l.strength_low_noise))
        .collect();
    assert_eq!(strengths, [(1.0, 0.0), (0.0, 1.0)]);
    // The LoRAs changed the experts' weights, so the frames leave the reference's.
    let psnr = psnr_against_reference(&out);
    eprintln!("PSNR with the tiny LoRAs against the reference without: {psnr:.1} dB");
    assert!(psnr < 40.0, "PSNR {psnr:.1} dB: the LoRAs had no effect");
}
