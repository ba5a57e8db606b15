//! RIFE interpolation with the real weights: clip structure (frame count, originals kept bit
//! for bit, scene cuts, loops, cancellation), checkpoint formats, and quality on known motion.
//!
//! Quality: triplets cut from real photographs (`tests/data/rife/`) by whole-pixel camera pans
//! and zooms at several speeds; the network's middle frame, from the two ends, must beat the
//! linear blend of the ends by at least 3 dB PSNR on average. Run with `--nocapture` for the
//! per-triplet table.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers unwrap: a failure is the test failing"
)]

use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use image::RgbImage;
use image::imageops::{self, FilterType};
use stillmotion_engine::EngineError;
use stillmotion_engine::rife::{
    DEFAULT_SCENE_CUT_BELOW, FrameLayout, InterpolationContext, InterpolationSettings,
    PairProgress, Rife, interpolate, interpolate_stream, retime,
};
use stillmotion_tests::compare::max_abs_diff;

#[path = "rife/retime.rs"]
mod retime_stream;

const FRAME_W: u32 = 160;
const FRAME_H: u32 = 128;

fn rife() -> Rife {
    let path = stillmotion_engine::paths::rife_weights_path().unwrap();
    Rife::load(&path, &Device::Cpu).unwrap()
}

fn photo(name: &str) -> RgbImage {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "data",
        "rife",
        &format!("{name}.png"),
    ]
    .iter()
    .collect();
    stillmotion_engine::image_input::load_rgb8(&path, 1 << 24).unwrap()
}

fn crop(image: &RgbImage, x: u32, y: u32, w: u32, h: u32) -> RgbImage {
    imageops::crop_imm(image, x, y, w, h).to_image()
}

/// Three frames of a camera panning by `(dx, dy)` pixels per frame.
fn pan(image: &RgbImage, dx: i32, dy: i32) -> [RgbImage; 3] {
    let x0 = (image.width() - FRAME_W) / 2;
    let y0 = (image.height() - FRAME_H) / 2;
    let at = |k: i32| {
        let x = (x0 as i32 + (k - 1) * dx) as u32;
        let y = (y0 as i32 + (k - 1) * dy) as u32;
        crop(image, x, y, FRAME_W, FRAME_H)
    };
    [at(0), at(1), at(2)]
}

/// Three frames of a camera zooming in: the crop shrinks by `step` pixels per side per frame
/// (its aspect kept), each resized to the frame size with the same filter.
fn zoom(image: &RgbImage, step: u32) -> [RgbImage; 3] {
    let (cx, cy) = (image.width() / 2, image.height() / 2);
    let at = |k: u32| {
        let half_w = FRAME_W / 2 + (2 - k) * step;
        let half_h = half_w * FRAME_H / FRAME_W;
        let c = crop(image, cx - half_w, cy - half_h, 2 * half_w, 2 * half_h);
        imageops::resize(&c, FRAME_W, FRAME_H, FilterType::Triangle)
    };
    [at(0), at(1), at(2)]
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-10)).log10()
}

fn blend(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let data = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&p, &q)| (u16::from(p) + u16::from(q)).div_ceil(2) as u8)
        .collect();
    RgbImage::from_raw(a.width(), a.height(), data).unwrap()
}

fn run(rife: &Rife, frames: &[RgbImage], settings: &InterpolationSettings) -> Vec<RgbImage> {
    let mut progress = |_: PairProgress| {};
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    interpolate(rife, frames, settings, &mut ctx).unwrap()
}

/// The quality triplets: pans and zooms of three photographs at several speeds.
fn triplets() -> Vec<(String, [RgbImage; 3])> {
    let mut all = Vec::new();
    for name in ["astronaut", "chelsea", "coffee"] {
        let image = photo(name);
        all.extend([
            (format!("{name} pan 2,0"), pan(&image, 2, 0)),
            (format!("{name} pan 5,3"), pan(&image, 5, 3)),
            (format!("{name} pan -10,4"), pan(&image, -10, 4)),
            (format!("{name} pan 16,-8"), pan(&image, 16, -8)),
            (format!("{name} zoom 3"), zoom(&image, 3)),
            (format!("{name} zoom 8"), zoom(&image, 8)),
        ]);
    }
    all
}

/// f16 (what CUDA runs) against f32 on the CPU, on the quality triplets: the middle frames'
/// PSNR against each other and against the truth. Six of the eighteen (each motion once,
/// from rotating photos) keep it quick: candle's CPU f16 convolutions are slow. On all
/// eighteen (2026-11-26): f16 vs f32 56.7–61.9 dB, mean 59.4; against the truth both 35.06.
#[test]
fn half_precision_keeps_the_quality_of_the_middle_frames() {
    let path = stillmotion_engine::paths::rife_weights_path().unwrap();
    let f32_net = rife();
    let f16_net = Rife::load_in(&path, &Device::Cpu, candle_core::DType::F16).unwrap();
    let mut settings = InterpolationSettings::with_multiplier(2);
    settings.memory_budget = Some(u64::MAX);
    println!("triplet | f16 vs f32 PSNR dB | f32 vs truth | f16 vs truth");
    let mut rows = Vec::new();
    let some = triplets()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == (i / 6) % 3)
        .map(|(_, t)| t);
    for (label, [first, truth, last]) in some {
        let ends = [first, last];
        let full = run(&f32_net, &ends, &settings);
        let half = run(&f16_net, &ends, &settings);
        assert_eq!(half[0].as_raw(), ends[0].as_raw());
        assert_eq!(half[2].as_raw(), ends[1].as_raw());
        let row = (
            psnr(&half[1], &full[1]),
            psnr(&full[1], &truth),
            psnr(&half[1], &truth),
        );
        println!("{label} | {:.2} | {:.2} | {:.2}", row.0, row.1, row.2);
        rows.push(row);
    }
    let n = rows.len() as f64;
    let mean = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(f).sum::<f64>() / n;
    let (agreement, full, half) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2));
    println!("mean: f16 vs f32 {agreement:.2} dB; vs truth f32 {full:.2} dB, f16 {half:.2} dB");
    assert!(agreement >= 40.0, "f16 strays from f32: {agreement:.2} dB");
    assert!(half >= full - 0.1, "f16 loses {:.2} dB", full - half);
}

#[test]
fn middle_frames_beat_the_linear_blend_on_known_motion() {
    let rife = rife();
    let settings = InterpolationSettings::with_multiplier(2);
    let mut rows = Vec::new();
    for (label, [first, truth, last]) in triplets() {
        let similarity = stillmotion_engine::rife::frame_similarity(&first, &last);
        let out = run(&rife, &[first.clone(), last.clone()], &settings);
        assert_eq!(out.len(), 3);
        let net = psnr(&out[1], &truth);
        let linear = psnr(&blend(&first, &last), &truth);
        rows.push((label, net, linear, similarity));
    }
    println!("triplet | RIFE PSNR dB | blend PSNR dB | gain dB | end-frame similarity");
    for (label, net, linear, similarity) in &rows {
        println!(
            "{label} | {net:.2} | {linear:.2} | {:+.2} | {similarity:.3}",
            net - linear
        );
    }
    for (label, _, _, similarity) in &rows {
        assert!(
            *similarity >= DEFAULT_SCENE_CUT_BELOW,
            "{label} would be taken for a scene cut (similarity {similarity:.3})"
        );
    }
    let mean_gain = rows.iter().map(|(_, n, l, _)| n - l).sum::<f64>() / rows.len() as f64;
    println!("mean gain {mean_gain:+.2} dB over {} triplets", rows.len());
    assert!(
        mean_gain >= 3.0,
        "RIFE beats the linear blend by only {mean_gain:.2} dB on average"
    );
}

#[test]
fn clip_keeps_originals_bit_exact_and_has_the_right_length() {
    let rife = rife();
    let image = photo("chelsea");
    // 70×50: not a multiple of 64, so frames are padded and cropped back.
    let frames: Vec<RgbImage> = (0..4)
        .map(|k| crop(&image, 40 + 3 * k, 60 + k, 70, 50))
        .collect();
    for multiplier in [1, 2, 3, 5] {
        let settings = InterpolationSettings::with_multiplier(multiplier);
        let out = run(&rife, &frames, &settings);
        assert_eq!(out.len(), (frames.len() - 1) * multiplier + 1);
        assert_eq!(out.len(), settings.output_len(frames.len()));
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(
                out[i * multiplier].as_raw(),
                frame.as_raw(),
                "frame {i} ×{multiplier}"
            );
        }
        assert!(out.iter().all(|f| f.dimensions() == (70, 50)));
    }
    let mut looped = InterpolationSettings::with_multiplier(3);
    looped.loop_clip = true;
    let out = run(&rife, &frames, &looped);
    assert_eq!(out.len(), frames.len() * 3);
    assert_eq!(out[9].as_raw(), frames[3].as_raw());
    // The last two frames morph from frame 3 back towards frame 0.
    assert_ne!(out[10].as_raw(), frames[3].as_raw());
}

#[test]
fn in_between_frames_match_pairwise_calls_so_features_are_reused_correctly() {
    let rife = rife();
    let image = photo("coffee");
    let frames: Vec<RgbImage> = (0..3)
        .map(|k| crop(&image, 60 + 4 * k, 50, 64, 64))
        .collect();
    let out = run(&rife, &frames, &InterpolationSettings::with_multiplier(2));
    let layout = FrameLayout::new(64, 64, None).unwrap();
    let a = rife.prepare(&frames[1], &layout).unwrap();
    let b = rife.prepare(&frames[2], &layout).unwrap();
    let middle = rife.interpolate_pair(&a, &b, 0.5, &layout).unwrap();
    let expected = stillmotion_engine::rife::to_rgb8(
        &middle,
        stillmotion_engine::rife::PixelRounding::default(),
    )
    .unwrap();
    assert_eq!(out[3].as_raw(), expected.as_raw());
}

#[test]
fn scene_cuts_repeat_the_first_frame_instead_of_morphing() {
    let rife = rife();
    let a = crop(&photo("astronaut"), 20, 20, 96, 80);
    let b = crop(&photo("coffee"), 20, 20, 96, 80);
    let reports = Cell::new(0);
    let cut_seen = Cell::new(false);
    let mut progress = |p: PairProgress| {
        reports.set(reports.get() + 1);
        cut_seen.set(cut_seen.get() | p.scene_cut);
    };
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    let settings = InterpolationSettings::with_multiplier(3);
    let out = interpolate(&rife, &[a.clone(), b.clone()], &settings, &mut ctx).unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[1].as_raw(), a.as_raw());
    assert_eq!(out[2].as_raw(), a.as_raw());
    assert_eq!(out[3].as_raw(), b.as_raw());
    assert_eq!(reports.get(), 1);
    assert!(cut_seen.get());

    // In a loop the closing pair (last → first) is a cut too: it repeats the last frame.
    let mut cuts = Vec::new();
    let mut record = |p: PairProgress| cuts.push(p.scene_cut);
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut record,
        clock: None,
    };
    let looped = InterpolationSettings {
        loop_clip: true,
        ..settings.clone()
    };
    let out = interpolate(&rife, &[a.clone(), b.clone()], &looped, &mut ctx).unwrap();
    assert_eq!(out, [&a, &a, &a, &b, &b, &b].map(Clone::clone));
    assert_eq!(cuts, [true, true]);

    // Every pairing of the three photos is a cut, at several crops.
    let names = ["astronaut", "chelsea", "coffee"];
    for (i, first) in names.iter().enumerate() {
        for second in &names[i + 1..] {
            for (x, y) in [(0, 0), (40, 60), (80, 30)] {
                let p = crop(&photo(first), x, y, FRAME_W, FRAME_H);
                let q = crop(&photo(second), 80 - x, 60 - y.min(60), FRAME_W, FRAME_H);
                let similarity = stillmotion_engine::rife::frame_similarity(&p, &q);
                assert!(
                    similarity < DEFAULT_SCENE_CUT_BELOW,
                    "{first} vs {second} at ({x}, {y}): similarity {similarity:.3}"
                );
            }
        }
    }

    // With cut detection off, the same pair is morphed.
    let mut morph = settings.clone();
    morph.scene_cut_below = None;
    let out = run(&rife, &[a.clone(), b], &morph);
    assert_ne!(out[1].as_raw(), a.as_raw());
}

#[test]
fn batched_windows_decide_scene_cuts_as_pair_by_pair() {
    // Two shots of two frames each: a pan, a cut, a pan. In one batched window the
    // signatures are read by several threads while the frames are encoded; pair by pair,
    // one frame at a time: the decisions and the frames must not differ.
    let rife = rife();
    let [a0, a1, _] = pan(&photo("astronaut"), 4, 0);
    let [b0, b1, _] = pan(&photo("coffee"), 0, 3);
    let clip = [a0, a1.clone(), b0, b1];
    let outputs = |budget: Option<u64>| {
        let mut cuts = Vec::new();
        let mut progress = |p: PairProgress| cuts.push(p.scene_cut);
        let mut ctx = InterpolationContext {
            is_cancelled: &|| false,
            on_progress: &mut progress,
            clock: None,
        };
        let settings = InterpolationSettings {
            memory_budget: budget,
            ..InterpolationSettings::with_multiplier(2)
        };
        let frames = interpolate(&rife, &clip, &settings, &mut ctx).unwrap();
        (frames, cuts)
    };
    let (batched, batched_cuts) = outputs(Some(u64::MAX));
    let (single, single_cuts) = outputs(None);
    assert_eq!(batched_cuts, [false, true, false]);
    assert_eq!(single_cuts, batched_cuts);
    assert_eq!(batched.len(), 7);
    assert_eq!(
        batched[3].as_raw(),
        a1.as_raw(),
        "the cut repeats its first frame"
    );
    for (i, (b, s)) in batched.iter().zip(&single).enumerate() {
        assert_eq!(b.as_raw(), s.as_raw(), "frame {i}");
    }
}

#[test]
fn cancellation_stops_between_pairs() {
    let rife = rife();
    let image = photo("astronaut");
    let frames: Vec<RgbImage> = (0..4)
        .map(|k| crop(&image, 10 + 2 * k, 10, 64, 64))
        .collect();
    let pairs_done = Cell::new(0);
    let mut progress = |p: PairProgress| pairs_done.set(p.pairs_done);
    let cancel_after_one = || pairs_done.get() >= 1;
    let mut ctx = InterpolationContext {
        is_cancelled: &cancel_after_one,
        on_progress: &mut progress,
        clock: None,
    };
    let result = interpolate(
        &rife,
        &frames,
        &InterpolationSettings::with_multiplier(2),
        &mut ctx,
    );
    assert!(matches!(result, Err(EngineError::Cancelled)));
    assert_eq!(pairs_done.get(), 1);
}

#[test]
fn streaming_emits_the_same_frames_and_refuses_mixed_sizes() {
    let rife = rife();
    let image = photo("astronaut");
    let frames: Vec<RgbImage> = (0..3)
        .map(|k| crop(&image, 30, 20 + 3 * k, 72, 64))
        .collect();
    let mut settings = InterpolationSettings::with_multiplier(2);
    settings.loop_clip = true;
    let whole = run(&rife, &frames, &settings);
    assert_eq!(whole.len(), 6);
    // The loop's last in-between frame reuses frame 0's features from the first pair.
    let layout = FrameLayout::new(72, 64, None).unwrap();
    let last = rife.prepare(&frames[2], &layout).unwrap();
    let first = rife.prepare(&frames[0], &layout).unwrap();
    let wrap = rife.interpolate_pair(&last, &first, 0.5, &layout).unwrap();
    let wrap = stillmotion_engine::rife::to_rgb8(&wrap, settings.rounding).unwrap();
    assert_eq!(whole[5], wrap);
    let mut streamed = Vec::new();
    let totals = Cell::new(None);
    let mut progress = |p: PairProgress| totals.set(p.pairs_total);
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    let count = interpolate_stream(
        &rife,
        frames.iter().cloned().map(Ok),
        None,
        &settings,
        &mut ctx,
        &mut |frame| {
            streamed.push(frame);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(count, 6);
    assert_eq!(streamed, whole);
    assert_eq!(totals.get(), None);

    let mixed = [frames[0].clone(), crop(&image, 0, 0, 64, 64)];
    let error = interpolate(&rife, &mixed, &settings, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(error.contains("same size"), "{error}");
}

#[test]
fn comfyui_safetensors_naming_loads_the_same_network() {
    let path = stillmotion_engine::paths::rife_weights_path().unwrap();
    let pickle = stillmotion_engine::rife::read_checkpoint(&path, &Device::Cpu).unwrap();
    assert!(pickle.version.contains("v4.25/v4.26"), "{}", pickle.version);
    // ComfyUI's `blocks.N.` layout under a `module.` prefix, with the training-only tensors.
    let renamed: std::collections::HashMap<String, candle_core::Tensor> = pickle
        .tensors
        .iter()
        .map(|(k, v)| {
            let k = match k.strip_prefix("block") {
                Some(rest) => format!("blocks.{}.{}", &rest[..1], &rest[2..]),
                None => k.clone(),
            };
            (format!("module.{k}"), v.clone())
        })
        .chain([(
            "teacher.conv0.0.0.bias".to_owned(),
            candle_core::Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
        )])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rife_v4.26.safetensors");
    candle_core::safetensors::save(&renamed, &file).unwrap();
    let from_pickle = Rife::load(&path, &Device::Cpu).unwrap();
    let from_comfy = Rife::load(&file, &Device::Cpu).unwrap();
    assert_eq!(from_comfy.version(), from_pickle.version());

    let image = photo("chelsea");
    let frames = [crop(&image, 0, 0, 64, 64), crop(&image, 4, 2, 64, 64)];
    let settings = InterpolationSettings::with_multiplier(2);
    assert_eq!(
        run(&from_pickle, &frames, &settings)[1].as_raw(),
        run(&from_comfy, &frames, &settings)[1].as_raw()
    );
}

#[test]
fn unsupported_checkpoints_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.safetensors");
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = [(
        "encode.cnn0.weight".to_owned(),
        candle_core::Tensor::zeros((16, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let error = Rife::load(&file, &Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("unsupported RIFE version"), "{error}");
    assert!(error.ends_with(&file.display().to_string()), "{error}");
    let _ = Path::new("");
}

#[test]
fn retiming_to_a_target_fps_keeps_frames_on_the_grid_and_interpolates_between() {
    let rife = rife();
    let image = photo("coffee");
    let frames: Vec<RgbImage> = (0..4)
        .map(|k| crop(&image, 40 + 3 * k, 30, 64, 64))
        .collect();
    let settings = InterpolationSettings::with_multiplier(1);
    let mut progress = |_: PairProgress| {};
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    // 16 → 24 fps: source times 0, 2/3, 4/3, 2, 8/3; 10/3 is past the last frame (3).
    let out = retime(&rife, &frames, 16.0, 24.0, &settings, &mut ctx).unwrap();
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].as_raw(), frames[0].as_raw());
    assert_eq!(out[3].as_raw(), frames[2].as_raw());
    let layout = FrameLayout::new(64, 64, None).unwrap();
    let a = rife.prepare(&frames[1], &layout).unwrap();
    let b = rife.prepare(&frames[2], &layout).unwrap();
    let at = rife
        .interpolate_pair(&a, &b, 4.0 / 3.0 - 1.0, &layout)
        .unwrap();
    let expected = stillmotion_engine::rife::to_rgb8(&at, settings.rounding).unwrap();
    assert_eq!(out[2].as_raw(), expected.as_raw());
    // Doubling the rate equals ×2 interpolation; halving it drops every other frame.
    let doubled = retime(&rife, &frames, 12.0, 24.0, &settings, &mut ctx).unwrap();
    let multiplied = run(&rife, &frames, &InterpolationSettings::with_multiplier(2));
    assert_eq!(doubled, multiplied);
    let halved = retime(&rife, &frames, 24.0, 12.0, &settings, &mut ctx).unwrap();
    assert_eq!(halved, vec![frames[0].clone(), frames[2].clone()]);
    // 16 → 56 fps: up to four timesteps a pair, in passes of two, as one at a time.
    let alone = retime(&rife, &frames, 16.0, 56.0, &settings, &mut ctx).unwrap();
    let mut batched = settings.clone();
    batched.memory_budget = Some(budget_for(&rife, &layout, 2));
    let together = retime(&rife, &frames, 16.0, 56.0, &batched, &mut ctx).unwrap();
    assert_eq!(alone.len(), 11);
    assert_eq!(together, alone);
    // 16 → 24 fps puts at most one frame between two source frames: passes of three items span
    // pairs, and give the frames of one at a time; progress still comes once per pair, in order.
    let mut spanning = settings.clone();
    spanning.memory_budget = Some(budget_for(&rife, &layout, 3));
    let mut reports = Vec::new();
    let mut record = |p: PairProgress| reports.push((p.pairs_done, p.pairs_total));
    let mut recording = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut record,
        clock: None,
    };
    let shared = retime(&rife, &frames, 16.0, 24.0, &spanning, &mut recording).unwrap();
    assert_eq!(shared, out);
    assert_eq!(reports, vec![(1, Some(3)), (2, Some(3)), (3, Some(3))]);
}

/// A budget of exactly `items` network items per pass at `layout`.
fn budget_for(rife: &Rife, layout: &FrameLayout, items: u64) -> u64 {
    rife.bytes_per_item(layout) * items
}

#[test]
fn batched_passes_match_one_pair_per_pass() {
    let rife = rife();
    let image = photo("chelsea");
    // 70×50 pads to 128×64; five frames panning, ×3 in a loop: 5 pairs of 2 timesteps.
    let frames: Vec<RgbImage> = (0..5)
        .map(|k| crop(&image, 40 + 3 * k, 60 + k, 70, 50))
        .collect();
    let layout = FrameLayout::new(70, 50, None).unwrap();

    // Float outputs: one pass of four items (two pairs, two timesteps each) against four
    // single passes.
    let prepared = rife
        .prepare_batch(&frames.iter().collect::<Vec<_>>(), &layout)
        .unwrap();
    let alone: Vec<_> = frames
        .iter()
        .map(|f| rife.prepare(f, &layout).unwrap())
        .collect();
    let items = [
        (&prepared[0], &prepared[1], 1.0 / 3.0),
        (&prepared[0], &prepared[1], 2.0 / 3.0),
        (&prepared[3], &prepared[4], 1.0 / 3.0),
        (&prepared[3], &prepared[4], 2.0 / 3.0),
    ];
    let batched = rife.interpolate_batch(&items, &layout).unwrap();
    let mut worst = 0.0_f32;
    for (i, &(a, b, t)) in items.iter().enumerate() {
        let index = |p: &stillmotion_engine::rife::PreparedFrame| {
            prepared.iter().position(|q| std::ptr::eq(q, p)).unwrap()
        };
        let single = rife
            .interpolate_pair(&alone[index(a)], &alone[index(b)], t, &layout)
            .unwrap();
        let diff = max_abs_diff(&batched.narrow(0, i, 1).unwrap(), &single).unwrap();
        worst = worst.max(diff);
    }
    println!("batched vs single passes: max abs {worst:e}");
    assert!(worst <= 1e-6, "batched output differs by {worst}");

    // Whole clips: one item per pass, three items per pass (pairs split across passes) and
    // everything at once give the same frames.
    let mut settings = InterpolationSettings::with_multiplier(3);
    settings.loop_clip = true;
    let single = run(&rife, &frames, &settings);
    assert_eq!(single.len(), 15);
    for items in [3, 64] {
        settings.memory_budget = Some(budget_for(&rife, &layout, items));
        let batched = run(&rife, &frames, &settings);
        assert_eq!(batched.len(), single.len());
        for (i, (a, b)) in batched.iter().zip(&single).enumerate() {
            assert_eq!(
                a.as_raw(),
                b.as_raw(),
                "frame {i} with {items} items per pass"
            );
        }
    }
}

#[test]
fn batches_report_each_pair_and_cancel_between_passes() {
    let rife = rife();
    let image = photo("astronaut");
    let frames: Vec<RgbImage> = (0..6)
        .map(|k| crop(&image, 10 + 2 * k, 10, 64, 64))
        .collect();
    let layout = FrameLayout::new(64, 64, None).unwrap();
    let mut settings = InterpolationSettings::with_multiplier(2);
    settings.memory_budget = Some(budget_for(&rife, &layout, 2));
    let reports = std::cell::RefCell::new(Vec::new());
    let mut progress = |p: PairProgress| reports.borrow_mut().push(p.pairs_done);
    let cancel_after_three = || reports.borrow().len() >= 3;
    let mut ctx = InterpolationContext {
        is_cancelled: &cancel_after_three,
        on_progress: &mut progress,
        clock: None,
    };
    let result = interpolate(&rife, &frames, &settings, &mut ctx);
    assert!(matches!(result, Err(EngineError::Cancelled)));
    // Two pairs per pass: the first two passes report pairs 1 to 4, one at a time; the
    // check before the third pass stops it.
    assert_eq!(*reports.borrow(), vec![1, 2, 3, 4]);

    // The batch follows the budget, never more than the cap, at least one item.
    assert_eq!(rife.batch_for_budget(&layout, None), 1);
    assert_eq!(rife.batch_for_budget(&layout, Some(0)), 1);
    assert_eq!(
        rife.batch_for_budget(&layout, Some(budget_for(&rife, &layout, 5))),
        5
    );
    assert_eq!(
        rife.batch_for_budget(&layout, Some(u64::MAX)),
        stillmotion_engine::rife::MAX_BATCH
    );
    // 4K: the largest column buffer would pass 2^31 elements beyond 4 items.
    let uhd = FrameLayout::new(3840, 2160, None).unwrap();
    assert_eq!(rife.batch_for_budget(&uhd, Some(u64::MAX)), 4);
}

#[test]
fn the_interpolate_job_reads_and_writes_png_folders_on_its_threads() {
    use stillmotion_engine::pipeline::PipelineRunner;
    use stillmotion_engine::recipe::InterpolateRequest;
    use stillmotion_engine::runtime::{CancelToken, Event, JobContext, JobKind, JobRunner, Stage};

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let [a, b, c] = pan(&photo("chelsea"), 3, 1);
    let clip = [a, b, c];
    for (i, frame) in clip.iter().enumerate() {
        frame.save(input.join(format!("f{i}.png"))).unwrap();
    }
    let request = InterpolateRequest {
        input,
        frames_fps: 16,
        multiplier: 2,
        target_fps: None,
        loop_clip: false,
        output: dir.path().join("out"),
    };
    let sink = |_event: Event| {};
    let ctx = JobContext::new(1, CancelToken::new(), &sink, None);
    let mut runner = PipelineRunner::new()
        .with_rife_weights(stillmotion_engine::paths::rife_weights_path().unwrap());
    let output = runner
        .run(&JobKind::Interpolate(Box::new(request.clone())), &ctx)
        .unwrap();
    let mut written: Vec<_> = std::fs::read_dir(&output.path)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    written.sort();
    let frames: Vec<RgbImage> = written
        .iter()
        .map(|path| image::open(path).unwrap().to_rgb8())
        .collect();
    // The job's frames are the library's: originals in place, the network's in between.
    let rife = rife();
    assert_eq!(
        frames,
        run(&rife, &clip, &InterpolationSettings::with_multiplier(2))
    );

    // To a target rate, streamed the same way: 16 → 24 fps, progress once per pair.
    let retimed = JobKind::Interpolate(Box::new(InterpolateRequest {
        target_fps: Some(24.0),
        output: dir.path().join("out24"),
        ..request
    }));
    let events = std::cell::RefCell::new(Vec::new());
    let sink = |event: Event| {
        if let Event::Progress { progress, .. } = event {
            events
                .borrow_mut()
                .push((progress.stage, progress.done, progress.total));
        }
    };
    let ctx = JobContext::new(2, CancelToken::new(), &sink, None);
    let output = runner.run(&retimed, &ctx).unwrap();
    let mut written: Vec<_> = std::fs::read_dir(&output.path)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "png"))
        .collect();
    written.sort();
    let frames: Vec<RgbImage> = written
        .iter()
        .map(|path| image::open(path).unwrap().to_rgb8())
        .collect();
    let mut progress = |_: PairProgress| {};
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    let settings = InterpolationSettings::with_multiplier(2);
    let expected = retime(&rife, &clip, 16.0, 24.0, &settings, &mut ctx).unwrap();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames, expected);
    let pairs: Vec<_> = events
        .borrow()
        .iter()
        .filter(|(stage, _, _)| *stage == Stage::Interpolating)
        .map(|&(_, done, total)| (done, total))
        .collect();
    assert_eq!(pairs, [(1, 2), (2, 2)]);
}
