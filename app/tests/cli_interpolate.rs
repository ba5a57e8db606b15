//! `stillmotion interpolate` end to end with the real RIFE weights: a PNG-frame folder in, ×2
//! frames out with the originals kept bit-exact; bad flags refused with exit code 2.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::path::Path;
use std::process::Command;

/// Three frames of a real photo panned by a few pixels (a clip RIFE can interpolate).
fn write_clip(dir: &Path) -> Vec<image::RgbImage> {
    let photo =
        image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/rife/astronaut.png"))
            .unwrap()
            .to_rgb8();
    let frames: Vec<image::RgbImage> = (0..3)
        .map(|i| image::imageops::crop_imm(&photo, 4 * i, 2 * i, 64, 48).to_image())
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        frame.save(dir.join(format!("frame_{i:05}.png"))).unwrap();
    }
    frames
}

fn interpolate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stillmotion"))
        .arg("interpolate")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn doubles_a_png_clip_keeping_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let originals = write_clip(&input);
    let out = dir.path().join("out");
    let output = interpolate(&[
        "--in",
        input.to_str().unwrap(),
        "--multiplier",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"interpolating\""), "{stdout}");
    let written: Vec<_> = (0..5)
        .map(|i| {
            image::open(out.join(format!("frame_{i:05}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    assert!(!out.join("frame_00005.png").exists());
    for (i, original) in originals.iter().enumerate() {
        assert!(written[2 * i] == *original, "original frame {i} changed");
    }
    // The in-betweens are new pictures, not copies of either neighbour.
    assert!(written[1] != written[0] && written[1] != written[2]);
}

#[test]
fn bad_flags_exit_with_code_two() {
    let dir = tempfile::tempdir().unwrap();
    let output = interpolate(&[
        "--in",
        dir.path().join("missing").to_str().unwrap(),
        "--out",
        dir.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--in does not exist"), "{stderr}");
    let output = interpolate(&[
        "--in",
        dir.path().to_str().unwrap(),
        "--multiplier",
        "1",
        "--out",
        dir.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--multiplier"));
}

#[test]
fn target_fps_resamples_with_an_exact_rate_and_keeps_frames_on_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let originals = write_clip(&input);
    // 3 frames at 16 fps to 40 fps: source times 0, 0.4, 0.8, 1.2, 1.6, 2.0 (in frames).
    let frames_out = dir.path().join("frames");
    let output = interpolate(&[
        "--in",
        input.to_str().unwrap(),
        "--fps",
        "16",
        "--target-fps",
        "40",
        "--out",
        frames_out.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written: Vec<_> = (0..6)
        .map(|i| {
            image::open(frames_out.join(format!("frame_{i:05}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    assert!(!frames_out.join("frame_00006.png").exists());
    assert!(written[0] == originals[0] && written[5] == originals[2]);
    for middle in &written[1..5] {
        assert!(originals.iter().all(|o| o != middle), "a new frame");
    }

    // NTSC-style rates are written as exact fractions.
    for (target, numerator, denominator, frames) in [
        ("40", 40, 1, 6),
        ("29.97", 2997, 100, 4),
        ("23.976023976", 24000, 1001, 3),
    ] {
        let clip = dir.path().join(format!("clip-{target}.mp4"));
        let output = interpolate(&[
            "--in",
            input.to_str().unwrap(),
            "--target-fps",
            target,
            "--out",
            clip.to_str().unwrap(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let video = stillmotion_engine::video::read_video(&clip, 100, 1 << 20).unwrap();
        assert_eq!(
            (video.fps.numerator, video.fps.denominator),
            (numerator, denominator),
            "{target}"
        );
        assert_eq!(video.frames.len(), frames, "{target}");
    }
}

#[test]
fn target_fps_and_multiplier_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let output = interpolate(&[
        "--in",
        dir.path().to_str().unwrap(),
        "--multiplier",
        "3",
        "--target-fps",
        "30",
        "--out",
        dir.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let output = interpolate(&[
        "--in",
        dir.path().to_str().unwrap(),
        "--target-fps",
        "0",
        "--out",
        dir.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--target-fps"), "{stderr}");
    let output = interpolate(&[
        "--in",
        dir.path().to_str().unwrap(),
        "--target-fps",
        "30",
        "--loop",
        "--out",
        dir.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--loop works with --multiplier only"),
        "{stderr}"
    );
}
