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
