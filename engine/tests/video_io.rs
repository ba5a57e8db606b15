//! The video writer and reader against the real `ffprobe`/`ffmpeg`: codec, pixel format,
//! colour tags, frame count, fps and duration per format; a colour round trip; the recipe in
//! the file and beside it; cancelled and failed writes leaving nothing.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failure is the test failing"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use image::{Rgb, RgbImage};
use serde_json::{Value, json};
use stillmotion_engine::EngineError;
use stillmotion_engine::video::{
    EmbeddedRecipe, EncodeSettings, FrameRate, VideoFormat, VideoReader, VideoWriter, read_recipe,
    read_video,
};

static NOT_CANCELLED: AtomicBool = AtomicBool::new(false);

/// 75 % SMPTE-style bars plus black and white, 16 pixels wide each (chroma-aligned).
const BARS: [[u8; 3]; 8] = [
    [191, 191, 191],
    [191, 191, 0],
    [0, 191, 191],
    [0, 191, 0],
    [191, 0, 191],
    [191, 0, 0],
    [0, 0, 191],
    [16, 16, 16],
];

fn bars_frame(width: u32, height: u32, shift: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, _| {
        Rgb(BARS[(((x + shift) / 16) as usize) % BARS.len()])
    })
}

fn write(
    dir: &Path,
    name: &str,
    settings: &EncodeSettings,
    size: (u32, u32),
    frames: u32,
) -> PathBuf {
    let recipe = EmbeddedRecipe::new(json!({ "prompt": name, "seed": 42 }));
    let mut writer =
        VideoWriter::create(&dir.join(name), settings, size.0, size.1, Some(recipe)).unwrap();
    for i in 0..frames {
        writer
            .push(&bars_frame(size.0, size.1, i), &NOT_CANCELLED)
            .unwrap();
    }
    writer.finish().unwrap()
}

fn settings(format: VideoFormat, fps: FrameRate) -> EncodeSettings {
    EncodeSettings {
        format,
        fps,
        crf: 17,
        preset: "ultrafast".to_owned(),
    }
}

/// ffprobe's view of the first video stream (with counted frames) and the container.
fn probe(path: &Path) -> (Value, Value) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe must be installed for these tests");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut report: Value = serde_json::from_slice(&output.stdout).unwrap();
    (report["streams"][0].take(), report["format"].take())
}

fn field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

fn duration(stream: &Value, format: &Value) -> f64 {
    let text = stream["duration"]
        .as_str()
        .or(format["duration"].as_str())
        .unwrap();
    text.parse().unwrap()
}

/// Decodes an animated WebP or GIF with the image crate: frame count, 1/16 s delays, and the
/// colours of frame 0 (WebP's YUV is BT.601 by definition; GIF is a palette).
fn check_animation(path: &Path, format: image::ImageFormat, frames: usize) {
    use image::AnimationDecoder as _;
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let decoded: Vec<image::Frame> = match format {
        image::ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(file)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap(),
        _ => image::codecs::gif::GifDecoder::new(file)
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap(),
    };
    assert_eq!(decoded.len(), frames, "{}", path.display());
    let total_ms: f64 = decoded
        .iter()
        .map(|frame| {
            let (num, den) = frame.delay().numer_denom_ms();
            f64::from(num) / f64::from(den)
        })
        .sum();
    assert!(
        (total_ms - frames as f64 * 62.5).abs() <= 10.0,
        "{}: {total_ms} ms",
        path.display()
    );
    let first = image::DynamicImage::ImageRgba8(decoded[0].buffer().clone()).to_rgb8();
    let (width, height) = first.dimensions();
    let errors = bar_errors(first.as_raw(), width, height);
    println!("{format:?}: mean error per channel {errors:?}");
    assert!(
        errors.iter().all(|&e| e <= 3.0),
        "{format:?}: mean error per channel {errors:?}"
    );
}

#[test]
fn each_format_has_its_codec_tags_frames_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (VideoFormat::Mp4H264, "h264", "yuv420p", true),
        (VideoFormat::Mp4H265, "hevc", "yuv420p", true),
        (VideoFormat::WebmVp9, "vp9", "yuv420p", true),
        (VideoFormat::AnimatedWebp, "webp", "", false),
        (VideoFormat::Gif, "gif", "bgra", false),
    ];
    for (format, codec, pix_fmt, tagged) in cases {
        let path = write(
            dir.path(),
            "clip",
            &settings(format, FrameRate::WAN),
            (64, 48),
            17,
        );
        assert_eq!(path.extension().unwrap(), format.extension().unwrap());
        if format == VideoFormat::AnimatedWebp {
            // FFmpeg 5.1 cannot decode animated WebP; the image crate can.
            check_animation(&path, image::ImageFormat::WebP, 17);
            std::fs::remove_file(&path).unwrap();
            std::fs::remove_file(path.with_extension("json")).unwrap();
            continue;
        }
        if format == VideoFormat::Gif {
            check_animation(&path, image::ImageFormat::Gif, 17);
        }
        let (stream, container) = probe(&path);
        let what = format!("{format:?}: {stream:#}");
        assert_eq!(field(&stream, "codec_name"), codec, "{what}");
        if !pix_fmt.is_empty() {
            assert_eq!(field(&stream, "pix_fmt"), pix_fmt, "{what}");
        }
        assert_eq!(field(&stream, "nb_read_frames"), "17", "{what}");
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(64), Some(48))
        );
        if tagged {
            assert_eq!(field(&stream, "color_range"), "tv", "{what}");
            assert_eq!(field(&stream, "color_space"), "bt709", "{what}");
            assert_eq!(field(&stream, "color_transfer"), "bt709", "{what}");
            assert_eq!(field(&stream, "color_primaries"), "bt709", "{what}");
        }
        assert_eq!(field(&stream, "r_frame_rate"), "16/1", "{what}");
        // GIF delays are whole centiseconds (the muxer alternates 6 and 7 for 1/16 s).
        let tolerance = if format == VideoFormat::Gif {
            0.01
        } else {
            1e-3
        };
        assert!(
            (duration(&stream, &container) - 17.0 / 16.0).abs() <= tolerance,
            "{what}"
        );
        if format.extension() == Some("mp4") {
            let bytes = std::fs::read(&path).unwrap();
            let at = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).unwrap();
            assert!(
                at(b"moov") < at(b"mdat"),
                "{format:?}: index not at the front"
            );
        }
        let decoded = read_video(&path, 100, 1 << 20).unwrap();
        assert_eq!(decoded.frames.len(), 17, "{format:?}");
        // Read back at the written rate (a GIF's centisecond delays average 97/6 in FFmpeg).
        assert_eq!(decoded.fps, FrameRate::WAN, "{format:?}");
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(path.with_extension("json")).unwrap();
    }
}

/// The first `name=value` token of the encoder's settings string (x264 and x265 write theirs
/// into the stream as an SEI message: `... subme=8 ... crf=23.0 ...`).
fn encoder_setting(path: &Path, name: &str) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    text.split_whitespace().find_map(|token| {
        token
            .strip_prefix(name)?
            .strip_prefix('=')
            .map(str::to_owned)
    })
}

#[test]
fn crf_and_preset_reach_the_encoder() {
    let dir = tempfile::tempdir().unwrap();
    // `subme` is set by the preset: x264 0 (ultrafast) / 8 (slow), x265 0 / 3.
    let cases = [
        (VideoFormat::Mp4H264, 23, "ultrafast", "0"),
        (VideoFormat::Mp4H264, 30, "slow", "8"),
        (VideoFormat::Mp4H265, 23, "ultrafast", "0"),
        (VideoFormat::Mp4H265, 30, "slow", "3"),
    ];
    for (format, crf, preset, subme) in cases {
        let chosen = EncodeSettings {
            crf,
            preset: preset.to_owned(),
            ..settings(format, FrameRate::WAN)
        };
        let path = write(dir.path(), "settings", &chosen, (64, 48), 4);
        let what = format!("{format:?} crf {crf} {preset}");
        assert_eq!(
            encoder_setting(&path, "crf").as_deref(),
            Some(format!("{crf}.0").as_str()),
            "{what}"
        );
        assert_eq!(
            encoder_setting(&path, "subme").as_deref(),
            Some(subme),
            "{what}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(path.with_extension("json")).unwrap();
    }
    // libvpx and libwebp write no settings string: a lower CRF must give a larger stream.
    for format in [VideoFormat::WebmVp9, VideoFormat::AnimatedWebp] {
        let bytes = |crf: u8| {
            let chosen = EncodeSettings {
                crf,
                ..settings(format, FrameRate::WAN)
            };
            let path = write(dir.path(), "quality", &chosen, (128, 96), 4);
            let size = std::fs::metadata(&path).unwrap().len();
            std::fs::remove_file(&path).unwrap();
            std::fs::remove_file(path.with_extension("json")).unwrap();
            size
        };
        let (fine, coarse) = (bytes(4), bytes(50));
        println!("{format:?}: {fine} bytes at CRF 4, {coarse} at CRF 50");
        assert!(fine > coarse, "{format:?}: {fine} vs {coarse} bytes");
    }
}

#[test]
fn interpolated_rates_are_exact_and_odd_sizes_are_cropped() {
    let dir = tempfile::tempdir().unwrap();
    let ntsc = FrameRate {
        numerator: 30000,
        denominator: 1001,
    };
    for (fps, text) in [(FrameRate::whole(48), "48/1"), (ntsc, "30000/1001")] {
        let path = write(
            dir.path(),
            "fast",
            &settings(VideoFormat::Mp4H264, fps),
            (63, 47),
            25,
        );
        let (stream, container) = probe(&path);
        assert_eq!(field(&stream, "r_frame_rate"), text);
        assert_eq!(field(&stream, "avg_frame_rate"), text);
        assert_eq!(field(&stream, "nb_read_frames"), "25");
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(62), Some(46))
        );
        assert!((duration(&stream, &container) - 25.0 / fps.as_f64()).abs() < 1e-3);
        let decoded = read_video(&path, 100, 1 << 20).unwrap();
        assert_eq!(decoded.fps, fps);
    }
}

/// Mean absolute error per channel over the bars' interiors (edges blur with 4:2:0 chroma).
fn bar_errors(frame: &[u8], width: u32, height: u32) -> [f64; 3] {
    let mut sum = [0.0; 3];
    let mut count = 0.0;
    for y in 4..height - 4 {
        for x in 0..width {
            if x % 16 < 3 || x % 16 > 12 {
                continue;
            }
            let expected = BARS[(x / 16) as usize % BARS.len()];
            let at = ((y * width + x) * 3) as usize;
            for c in 0..3 {
                sum[c] += (f64::from(frame[at + c]) - f64::from(expected[c])).abs();
            }
            count += 1.0;
        }
    }
    sum.map(|s| s / count)
}

#[test]
fn colour_bars_survive_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (width, height) = (128, 32);
    let still = EncodeSettings {
        crf: 10,
        ..settings(VideoFormat::Mp4H264, FrameRate::WAN)
    };
    let recipe = None;
    let mut writer =
        VideoWriter::create(&dir.path().join("bars"), &still, width, height, recipe).unwrap();
    for _ in 0..3 {
        writer
            .push(&bars_frame(width, height, 0), &NOT_CANCELLED)
            .unwrap();
    }
    let path = writer.finish().unwrap();

    // The ffmpeg command line converts with the stream's own tags, as a player would.
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let errors = bar_errors(&output.stdout, width, height);
    println!("ffmpeg decode: mean error per channel {errors:?}");
    assert!(
        errors.iter().all(|&e| e <= 2.0),
        "ffmpeg decode: mean error per channel {errors:?}"
    );

    let decoded = read_video(&path, 10, 1 << 20).unwrap();
    let errors = bar_errors(decoded.frames[0].as_raw(), width, height);
    println!("our decode: mean error per channel {errors:?}");
    assert!(
        errors.iter().all(|&e| e <= 2.0),
        "our decode: mean error per channel {errors:?}"
    );
}

#[test]
fn stored_yuv_is_bt709_limited_range() {
    let dir = tempfile::tempdir().unwrap();
    let (width, height) = (128_u32, 16_u32);
    let near_lossless = EncodeSettings {
        crf: 4,
        ..settings(VideoFormat::Mp4H264, FrameRate::WAN)
    };
    let mut writer =
        VideoWriter::create(&dir.path().join("yuv"), &near_lossless, width, height, None).unwrap();
    writer
        .push(&bars_frame(width, height, 0), &NOT_CANCELLED)
        .unwrap();
    let path = writer.finish().unwrap();
    // The stream is yuv420p already, so ffmpeg hands back the stored samples unconverted.
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let yuv = output.stdout;
    let (w, h) = (width as usize, height as usize);
    for (bar, rgb) in BARS.iter().enumerate() {
        let [r, g, b] = rgb.map(|v| f64::from(v) / 255.0);
        let luma = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let expected = [
            16.0 + 219.0 * luma,
            128.0 + 224.0 * (b - luma) / 1.8556,
            128.0 + 224.0 * (r - luma) / 1.5748,
        ];
        let x = bar * 16 + 8;
        let y = h / 2;
        let actual = [
            yuv[y * w + x],
            yuv[w * h + (y / 2) * (w / 2) + x / 2],
            yuv[w * h * 5 / 4 + (y / 2) * (w / 2) + x / 2],
        ];
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (f64::from(*a) - e).abs() <= 1.0,
                "bar {bar} {rgb:?}: YCbCr {actual:?}, BT.709 tv {expected:?}"
            );
        }
    }
}

#[test]
fn recipe_round_trips_through_file_and_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    for format in [VideoFormat::Mp4H264, VideoFormat::WebmVp9, VideoFormat::Gif] {
        let path = write(
            dir.path(),
            "recipe",
            &settings(format, FrameRate::WAN),
            (32, 32),
            2,
        );
        let expected = EmbeddedRecipe::new(json!({ "prompt": "recipe", "seed": 42 }));
        assert_eq!(read_recipe(&path).unwrap(), expected, "{format:?}");
        let sidecar = path.with_extension("json");
        assert_eq!(read_recipe(&sidecar).unwrap(), expected, "{format:?}");
        std::fs::remove_file(&sidecar).unwrap();
        if format.embeds_recipe() {
            assert_eq!(
                read_recipe(&path).unwrap(),
                expected,
                "{format:?} without sidecar"
            );
            let (_, container) = probe(&path);
            // Matroska spells its tags in capitals.
            let tags = container["tags"].as_object().unwrap();
            let comment = tags
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("comment"))
                .and_then(|(_, value)| value.as_str())
                .unwrap();
            assert!(comment.contains("\"seed\":42"), "{comment}");
        } else {
            let message = read_recipe(&path).unwrap_err().to_string();
            assert!(message.contains("no Stillmotion recipe"), "{message}");
        }
    }
}

#[test]
fn a_large_recipe_survives_in_the_mp4() {
    // Well past MP4's 16-bit string atoms: the recipe must not be cut or lost.
    let dir = tempfile::tempdir().unwrap();
    let prompt = "a slow pan over a misty harbour at dawn, ".repeat(2000);
    let recipe = EmbeddedRecipe::new(
        json!({ "prompt": prompt, "loras": [{"file": "x.safetensors", "strength": 0.8}] }),
    );
    let h264 = settings(VideoFormat::Mp4H264, FrameRate::WAN);
    let mut writer = VideoWriter::create(
        &dir.path().join("long"),
        &h264,
        32,
        32,
        Some(recipe.clone()),
    )
    .unwrap();
    writer.push(&bars_frame(32, 32, 0), &NOT_CANCELLED).unwrap();
    let path = writer.finish().unwrap();
    std::fs::remove_file(path.with_extension("json")).unwrap();
    assert_eq!(read_recipe(&path).unwrap(), recipe);
}

#[test]
fn writers_can_move_to_the_engine_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<VideoWriter>();
}

#[test]
fn png_frames_are_numbered_in_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "frames.mp4",
        &settings(VideoFormat::PngFrames, FrameRate::WAN),
        (24, 16),
        3,
    );
    assert_eq!(path, dir.path().join("frames"));
    let frame = image::open(path.join("frame_00002.png")).unwrap().to_rgb8();
    assert_eq!(frame, bars_frame(24, 16, 2));
    assert!(!path.join("frame_00003.png").exists());
    assert!(read_recipe(&path).is_ok());
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn cancelled_failed_and_dropped_writes_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("gone.mp4");
    let h264 = settings(VideoFormat::Mp4H264, FrameRate::WAN);
    for format in [VideoFormat::Mp4H264, VideoFormat::PngFrames] {
        let settings = EncodeSettings {
            format,
            ..h264.clone()
        };
        let cancel = AtomicBool::new(false);
        let mut writer = VideoWriter::create(&target, &settings, 32, 32, None).unwrap();
        writer.push(&bars_frame(32, 32, 0), &cancel).unwrap();
        assert_eq!(
            names_in(dir.path()).len(),
            1,
            "a partial output exists while writing"
        );
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let error = writer.push(&bars_frame(32, 32, 1), &cancel).unwrap_err();
        assert!(matches!(error, EngineError::Cancelled), "{error}");
        drop(writer);
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );

        let mut writer = VideoWriter::create(&target, &settings, 32, 32, None).unwrap();
        writer.push(&bars_frame(32, 32, 0), &NOT_CANCELLED).unwrap();
        let error = writer
            .push(&bars_frame(16, 32, 0), &NOT_CANCELLED)
            .unwrap_err();
        assert!(error.to_string().contains("16×32"), "{error}");
        drop(writer);
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );

        let mut writer = VideoWriter::create(&target, &settings, 32, 32, None).unwrap();
        writer.push(&bars_frame(32, 32, 0), &NOT_CANCELLED).unwrap();
        drop(writer);
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }
    let bad_preset = EncodeSettings {
        preset: "warp-speed".to_owned(),
        ..h264.clone()
    };
    let error = VideoWriter::create(&target, &bad_preset, 32, 32, None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("preset"), "{error}");
    let bad_crf = EncodeSettings { crf: 52, ..h264 };
    let error = VideoWriter::create(&target, &bad_crf, 32, 32, None)
        .err()
        .unwrap();
    assert!(error.to_string().contains("CRF 52"), "{error}");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[test]
fn existing_files_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("take.mp4"), b"precious").unwrap();
    let h264 = settings(VideoFormat::Mp4H264, FrameRate::WAN);
    let first = write(dir.path(), "take.mp4", &h264, (32, 32), 2);
    let second = write(dir.path(), "take.mp4", &h264, (32, 32), 2);
    assert_eq!(first, dir.path().join("take-1.mp4"));
    assert_eq!(second, dir.path().join("take-2.mp4"));
    assert_eq!(
        std::fs::read(dir.path().join("take.mp4")).unwrap(),
        b"precious"
    );
    assert_eq!(
        names_in(dir.path()),
        [
            "take-1.json",
            "take-1.mp4",
            "take-2.json",
            "take-2.mp4",
            "take.mp4"
        ]
    );
}

#[test]
fn mov_from_elsewhere_decodes_with_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mov = dir.path().join("camera.mov");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=48x32:rate=24:duration=0.5",
        ])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&mov)
        .status()
        .unwrap();
    assert!(status.success());
    let decoded = read_video(&mov, 100, 1 << 20).unwrap();
    assert_eq!(decoded.fps, FrameRate::whole(24));
    assert_eq!(decoded.frames.len(), 12);
    assert_eq!((decoded.width, decoded.height), (48, 32));

    // Streaming gives the same frames one at a time.
    let mut reader = VideoReader::open(&mov, 1 << 20).unwrap();
    assert_eq!(
        (reader.fps(), reader.size()),
        (FrameRate::whole(24), (48, 32))
    );
    let mut last = None;
    let mut count = 0;
    while let Some(frame) = reader.next_frame().unwrap() {
        count += 1;
        last = Some(frame);
    }
    assert_eq!(count, 12);
    assert_eq!(last.unwrap(), decoded.frames[11]);
    assert!(reader.next_frame().unwrap().is_none());

    let error = read_video(&mov, 5, 1 << 20).unwrap_err().to_string();
    assert!(
        error.contains("more than 5 frames") && error.ends_with("camera.mov"),
        "{error}"
    );
    std::fs::write(dir.path().join("text.mp4"), b"not a video").unwrap();
    let error = read_video(&dir.path().join("text.mp4"), 5, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a video file"), "{error}");
}
