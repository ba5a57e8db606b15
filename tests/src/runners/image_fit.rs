//! `image_fit`: fitting the source image to the model's size (engine `image_input::fit`).
//!
//! Config keys: `mode` = `"wan"` (with `max_area`), `"comfy"` (with `width`, `height`) or
//! `"wan_sizes"` (the size formula alone over the `shapes` input rows `[h, w, max_area]`).
//! Inputs: `image` (`[H, W, 3]` u8 values as f32). Outputs: `fitted` (`[3, h, w]`; [-1, 1] for
//! `wan`, [0, 1] for `comfy` as ComfyUI keeps images), `size` (`[h, w]`), `crop`
//! (`[x, y, w, h]`, comfy only), `sizes` (`[n, 2]`, wan_sizes only).

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use stillmotion_engine::image_input::RgbImage;
use stillmotion_engine::image_input::fit::{FitMode, fit_image, wan_output_size};

use super::{Outputs, inputs, take};
use crate::golden::Case;

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    max_area: u32,
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

pub fn run(case: &Case, device: &Device) -> anyhow::Result<Outputs> {
    let config: Config = case.config()?;
    let mut tensors = inputs(case, device)?;
    let mut outputs = Outputs::new();
    if config.mode == "wan_sizes" {
        let rows = take(&mut tensors, "shapes")?.to_vec2::<f32>()?;
        let mut sizes = Vec::with_capacity(rows.len() * 2);
        for row in rows {
            let [h, w, area] = [row[0], row[1], row[2]].map(|v| v as u32);
            let (out_w, out_h) = wan_output_size(w, h, area)
                .with_context(|| format!("no size for {w}x{h} at {area}"))?;
            sizes.extend([i64::from(out_h), i64::from(out_w)]);
        }
        let n = sizes.len() / 2;
        outputs.insert("sizes".into(), Tensor::from_vec(sizes, (n, 2), device)?);
        return Ok(outputs);
    }
    let image = take(&mut tensors, "image")?;
    let (h, w, _) = image.dims3()?;
    let bytes: Vec<u8> = image.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
    let image = RgbImage::from_raw(w as u32, h as u32, bytes).context("image buffer size")?;
    let mode = match config.mode.as_str() {
        "wan" => FitMode::Wan {
            max_area: config.max_area,
        },
        "comfy" => FitMode::CenterCrop {
            width: config.width,
            height: config.height,
        },
        other => bail!("unknown image_fit mode {other:?}"),
    };
    let fitted = fit_image(&image, mode)?;
    let plan = fitted.plan;
    let mut pixels = fitted.to_tensor(device)?;
    if matches!(mode, FitMode::CenterCrop { .. }) {
        pixels = ((pixels + 1.0)? / 2.0)?;
        let crop = [plan.used.x, plan.used.y, plan.used.width, plan.used.height].map(i64::from);
        outputs.insert("crop".into(), Tensor::new(&crop, device)?);
    }
    outputs.insert("fitted".into(), pixels);
    let size = [i64::from(plan.height), i64::from(plan.width)];
    outputs.insert("size".into(), Tensor::new(&size, device)?);
    Ok(outputs)
}
